"""Keep the DUT CPU from idling during a bench, so its softirq time is counted.

This kernel accounts CPU time by ticks (CONFIG_TICK_CPU_ACCOUNTING, no IRQ_TIME_ACCOUNTING) with
NO_HZ_IDLE: when the DUT CPU idles, its tick stops, and the softirq work an interrupt brings (an
RPS IPI: the director's whole receive path) runs in the idle task's interrupt exit with no tick to
see it. /proc/stat then counts that work as idle: kernel forwarding at 1 Mpps showed 0.07 us of
softirq per packet, the same path with another task on the CPU 0.74 us (bench/results/
2026-12-05-afxdp-cost.md). A SCHED_IDLE spinner pinned to the DUT CPU means the CPU never idles:
every softirq interrupts a task and ticks land in it, while the spinner yields to any other task
(weight 3 against lbd's 9548 at nice -10) and its own ticks are user time of no system under test.
A loaded director does not halt either; what changes is that an IPI to the DUT CPU no longer wakes a
halted vCPU.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import Iterator

MAX_S = 3600  # bound: the spinner ends by itself after this long even if we do not stop it


@contextlib.contextmanager
def filler(cpu: int | None, enabled: bool = True, max_s: int = MAX_S) -> Iterator[int | None]:
    """A SCHED_IDLE busy loop on `cpu` for the length of the block (its PID; None when disabled)."""
    if not enabled or cpu is None or not shutil.which("chrt"):
        yield None
        return
    proc = subprocess.Popen(["timeout", str(max_s), "chrt", "--idle", "0", "taskset", "-c", str(cpu),
                             "sh", "-c", "while :; do :; done"], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield proc.pid
    finally:
        proc.terminate()  # timeout passes SIGTERM on to the loop
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
