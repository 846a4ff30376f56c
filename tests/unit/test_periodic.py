"""lb/periodic.py: lbd's periodic loops share one grid and end when cancelled."""

from __future__ import annotations

import asyncio
import logging

import pytest

from lb import periodic


def test_next_tick_is_the_next_multiple_of_the_period() -> None:
    assert periodic.to_next_tick(10.2, 0.5) == pytest.approx(0.3)
    assert periodic.to_next_tick(10.0, 2.0) == pytest.approx(2.0)  # on a grid point: the next one
    assert periodic.to_next_tick(11.0, 2.0) == pytest.approx(1.0)


def test_a_timer_that_fired_a_little_early_does_not_tick_twice() -> None:
    # woken 0.3 ms before the grid point (timer rounding): this wake-up is that tick; sleep a period on
    assert periodic.to_next_tick(9.9997, 1.0) == pytest.approx(1.0003)


def test_loops_whose_periods_divide_each_other_wake_together() -> None:
    for now in (0.0, 0.37, 5.123, 1234.9):
        half = now + periodic.to_next_tick(now, 0.5)
        whole = now + periodic.to_next_tick(now, 1.0)
        two = now + periodic.to_next_tick(now, 2.0)
        assert round(whole / 0.5, 6).is_integer() and round(two / 0.5, 6).is_integer()
        assert half <= whole <= two  # every 1 s and 2 s tick falls on a 0.5 s tick


def test_run_every_logs_a_failing_tick_and_goes_on_until_cancelled(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[float] = []

    def work() -> None:
        calls.append(asyncio.get_running_loop().time())
        if len(calls) == 1:
            raise RuntimeError("boom")

    async def main() -> None:
        task = asyncio.ensure_future(periodic.run_every(0.02, work, "the test's work", logging.getLogger("t")))
        await asyncio.sleep(0.13)
        await periodic.cancel_all([task])
        assert task.cancelled()

    asyncio.run(main())
    assert len(calls) >= 3  # the failure did not end the loop
    assert any("the test's work failed" in r.getMessage() for r in caplog.records)
    # never twice for one tick: no more calls than grid points in the time it ran (not the gaps
    # between calls: a tick made late by a loaded machine is followed by an on-grid one sooner)
    assert len(calls) <= (calls[-1] - calls[0]) / 0.02 + 1.5, calls


def test_sleep_on_grid_ends_on_a_grid_point_at_least_the_delay_ahead_or_when_woken() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        woken = asyncio.Event()
        t0 = loop.time()
        await periodic.sleep_on_grid(0.05, 0.02, woken)  # 0.05 s on, up to the 0.02 s grid
        t1 = loop.time()
        assert t1 - t0 >= 0.05 - 0.005 and round(t1 / 0.02) * 0.02 == pytest.approx(t1, abs=0.01)
        loop.call_later(0.03, woken.set)  # woken long before the 10 s delay
        await periodic.sleep_on_grid(10.0, 1.0, woken)
        assert loop.time() - t1 < 1.0
        woken.clear()
        loop.call_later(0.02, woken.set)
        await periodic.sleep_on_grid(None, 1.0, woken)  # no delay at all: only the event ends it
        assert woken.is_set()
        assert len(asyncio.all_tasks()) == 1  # no waiter task left behind

    asyncio.run(main())
