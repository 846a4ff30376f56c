"""lbd's periodic work on one grid of its event loop's clock.

Every periodic loop of lbd (steering watch 0.5 s, 1 s under --packet-source afxdp, forwarding-state
re-checks when due on the 1 s grid, rate estimation and state snapshots 2 s) sleeps to the next
multiple of its period on `loop.time()`. The periods divide each other, so the loops that are due together wake together: one
event-loop wake-up per 0.5 s (per second under afxdp) instead of one per loop and tick. Each wake-up
has a fixed cost that has nothing to do with the work (the poll system call, timer reprogramming, a
context switch, the event loop's bookkeeping): small on a host, ~ms in an emulated guest, where it was
most of lbd's CPU when idle (issue 19).

The loops sleep with a plain `asyncio.sleep` and are cancelled at shutdown: the previous
`asyncio.wait_for(stop.wait(), timeout=...)` created a task, a timeout handle and a cancellation per
tick, which cost more than most ticks' work.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any

EARLY_FRACTION = 0.05  # a wake-up this close before a grid point (timer rounding) counts as on it


def to_next_tick(now: float, period_s: float) -> float:
    """Seconds from `now` to the next multiple of `period_s` that lies more than a sliver ahead (a timer
    that fired a little early must not run the same tick twice)."""
    delay = period_s - now % period_s
    if delay < EARLY_FRACTION * period_s:
        delay += period_s
    return delay


async def grid_sleep(period_s: float) -> None:
    """Sleep until the next multiple of `period_s` on the running loop's clock."""
    loop = asyncio.get_running_loop()
    await asyncio.sleep(to_next_tick(loop.time(), period_s))


async def sleep_on_grid(delay_s: float | None, period_s: float, woken: asyncio.Event) -> None:
    """Sleep until the first multiple of `period_s` at least `delay_s` ahead (None: until woken), or
    until `woken` is set, whichever comes first (lbd's resolve loop: work that is due only now and
    then still wakes on the shared grid, with the other loops)."""
    if woken.is_set():
        return
    loop = asyncio.get_running_loop()
    if delay_s is None:
        await woken.wait()
        return
    now = loop.time()
    at = now + delay_s
    at += (period_s - at % period_s) % period_s  # up to the grid (a point already on it stays)
    if at - now < EARLY_FRACTION * period_s:
        at += period_s
    waiter = loop.create_task(woken.wait())
    try:
        await asyncio.wait((waiter,), timeout=at - now)
    finally:
        waiter.cancel()


async def run_every(period_s: float, work: Callable[[], object], what: str, log: logging.Logger) -> None:
    """Call `work` on every multiple of `period_s` until cancelled; an exception is logged (with `what`)
    and the next tick tries again."""
    while True:
        await grid_sleep(period_s)
        try:
            work()
        except Exception:  # keep the daemon up; the next tick retries
            log.exception("%s failed", what)


async def cancel_all(tasks: Sequence[asyncio.Future[Any]]) -> None:
    """Cancel periodic loops and wait until they have ended (a tick in progress finishes first: ticks
    are synchronous, so cancellation only lands in their sleep)."""
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
