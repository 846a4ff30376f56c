"""Native XDP on veth, accounted on the DUT CPU: the interface's NAPI in a kthread pinned there.

A veth with an XDP program in native mode receives through its own NAPI instance, which the
SENDING side schedules: without more, the director's XDP work (and the copy into the AF_XDP
socket) runs in the softirq of the generator's CPU, and the DUT CPU never sees it. Threaded NAPI
(/sys/class/net/<dev>/threaded = 1) moves the poll into a kthread named napi/<dev>-<napi id>;
pinned to the DUT CPU (SCHED_FIFO, as an interrupt's work), it is what a NIC's interrupt and NAPI poll are on a
real director: the sender only wakes it (an IPI, as a NIC's interrupt), and its CPU time (system
time of the kthread, not softirq time: the poll runs in process context) is counted with the DUT's
(bench/pps.py cpu_ticks "napi").

The NAPI instance exists only while XDP (or GRO) is enabled on the veth, so this runs after lbd has
attached its program, every time: the kthread goes with the program.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from lb import napibelow

# A NIC's NAPI poll runs in softirq, ahead of every task; as a SCHED_OTHER kthread it would wait for
# lbd and for other tenants of the CPU (EEVDF need not preempt on wakeup: probes took 1-2 ms).
# SCHED_FIFO 1, as the kernel's own threaded interrupt handlers are real-time; RT throttling (95 %)
# still bounds it under overload.
RT_PRIO = 1


def napi_kthreads(dev: str) -> list[int]:
    """PIDs of the NAPI kthreads of interface `dev` (by name: kthreads are global; lb/napibelow.py)."""
    return napibelow.threads_by_name(dev)


def thread_and_pin(host: Any, dev: str, cpu: int, rt_prio: int = RT_PRIO, timeout: float = 3.0) -> list[int]:
    """Threaded NAPI on `host`'s interface `dev`, its kthread(s) pinned to `cpu` under SCHED_FIFO
    `rt_prio` (0: left SCHED_OTHER). Returns the kthreads' PIDs; raises RuntimeError when the interface
    has no NAPI to thread."""
    r = host.exec(["sh", "-c", f"echo 1 > /sys/class/net/{dev}/threaded"], check=False)
    if r.returncode != 0:
        raise RuntimeError(f"{dev}: cannot thread its NAPI (no native XDP attached?): {r.stderr.strip()}")
    deadline = time.monotonic() + timeout
    pids = napi_kthreads(dev)
    while not pids and time.monotonic() < deadline:
        time.sleep(0.05)
        pids = napi_kthreads(dev)
    if not pids:
        raise RuntimeError(f"{dev}: threaded NAPI set, but no napi/{dev}-* kthread appeared")
    for pid in pids:
        os.sched_setaffinity(pid, {cpu})
        if rt_prio:
            os.sched_setscheduler(pid, os.SCHED_FIFO, os.sched_param(rt_prio))
    return pids


def kthread_ticks(pids: list[int]) -> int:
    """user + system clock ticks of the kthreads (0 for one that is gone)."""
    total = 0
    for pid in pids:
        try:
            f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(f[11]) + int(f[12])
        except (OSError, IndexError, ValueError):
            continue
    return total
