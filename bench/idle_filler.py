"""Keep the DUT CPU from idling during a bench, so its softirq time is counted.

This kernel accounts CPU time by ticks (CONFIG_TICK_CPU_ACCOUNTING, no IRQ_TIME_ACCOUNTING) with
NO_HZ_IDLE: when the DUT CPU idles, its tick stops, and the softirq work an interrupt brings (an
RPS IPI: the director's whole receive path) runs in the idle task's interrupt exit with no tick to
see it. /proc/stat then counts that work as idle: kernel forwarding at 1 Mpps showed 0.07 us of
softirq per packet, the same path with another task on the CPU 0.74 us (bench/results/
2026-12-05-afxdp-cost.md). A SCHED_IDLE spinner pinned to the DUT CPU means the CPU never idles:
every softirq interrupts a task and ticks land in it, while the spinner yields to any other task
(weight 3 against lbd's 9548 at nice -10); its own ticks are taken out of the CPU's busy time
(bench/pps.py), which stays the cap of the DUT figure.
A loaded director does not halt either; what changes is that an IPI to the DUT CPU no longer wakes a
halted vCPU.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

MAX_S = 3600  # bound: the spinner ends by itself after this long even if we do not stop it


def _spinner(pid: int, timeout: float = 3.0) -> int | None:
    """The busy loop's PID: `timeout`'s child once chrt and taskset have exec'd into it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError, IndexError):
            child = int(Path(f"/proc/{pid}/task/{pid}/children").read_text().split()[0])
            if os.sched_getscheduler(child) == os.SCHED_IDLE and Path(f"/proc/{child}/comm").read_text().strip() == "sh":
                return child
        time.sleep(0.02)
    return None


@contextlib.contextmanager
def filler(cpu: int | None, enabled: bool = True, max_s: int = MAX_S) -> Iterator[int | None]:
    """A SCHED_IDLE busy loop on `cpu` for the length of the block. Yields the loop's PID (its CPU
    time is subtracted from the DUT CPU's busy time: bench/pps.py cpu_ticks), None when disabled."""
    if not enabled or cpu is None or not shutil.which("chrt"):
        yield None
        return
    proc = subprocess.Popen(["timeout", str(max_s), "chrt", "--idle", "0", "taskset", "-c", str(cpu),
                             "sh", "-c", "while :; do :; done"], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        spinner = _spinner(proc.pid)
        if spinner is None:
            raise RuntimeError(f"the SCHED_IDLE spinner on CPU {cpu} did not start")
        yield spinner
    finally:
        proc.terminate()  # timeout passes SIGTERM on to the loop
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def user_ticks(pid: int) -> int:
    """The spinner's user time in clock ticks: its own work. (Its system time is the interrupts and
    softirqs that ran while it was current, the DUT's work: tick accounting charges them to it.)"""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[11])
    except (OSError, IndexError, ValueError):
        return 0
