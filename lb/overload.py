"""lbd's overload guard: when the kernel drops packets at lbd's full queue, shed the excess at the
first hook instead (lbd --overload-guard, on by default with nftables steering; issue 15 item 5).

A packet the kernel drops because lbd's queue is full has already cost the director's CPU most of
what a queued packet costs (the receive path, the hook, nfnetlink_queue's copy of it: lb.nftguard).
Offered much more than lbd takes, that work grows with the offered rate and starves lbd's own
thread: it delivers less than at its zero-loss rate (receive livelock). Kernel IPVS does not meet
this (it runs in the receive path, and excess is dropped at the NIC's ring); a userspace director
must shed the excess itself, as early and as cheaply as it can.

The control loop, once a second (every quarter second while armed), reads what lbd took from its
queue(s) and what the kernel dropped at them (lb_nfq_stats: packets, kernel_queue_dropped,
kernel_user_dropped). `best` is the most lbd has taken in a second (over the ticks of at least the
last BEST_WINDOW_S) since it started, fading with a half-life of PEAK_HALF_LIFE_S: under livelock lbd
takes far less than it can, and over a shorter interval it may take much more than it can sustain
(measured: 140k packets/s over a quarter second where it sustains 100k), which would arm the guard
far above what lbd takes and leave the queue overflowing while the rate comes down.

The C adapter's packet thread also says when it took a run of full receive batches (16 in a row:
a default queue's worth drained without catching up; lb_nfq_overload_fd, an eventfd). Unless the
guard is armed or already confirming, that starts the confirmation at once: the interval begins
with the signal and ends CONFIRM_TICK_S later. The guard then arms within about a tenth of a second
of the overload's start instead of up to 1.25 s (a 1 s poll, then a quarter second to confirm),
while an idle lbd still pays one poll a second (no signal comes while its thread keeps up).

- It arms when the kernel dropped at least ARM_MIN_DROPS packets and OVERFLOW_SHARE of what lbd
  took in an interval, and again in the next, short one (a burst the queue could not hold is not
  overload; a long interval may hold a second of load and a second of nothing): a token bucket at
  BACKOFF of the most lbd took, now or at best; `burst` the queue's length at most (what the queue
  absorbs anyway).
- Armed, what lbd's receive batches hold tells how busy its thread is (the C adapter takes up to
  64 packets per recvmmsg): the queue overflowing while batches are full (FULL_BATCH) lowers the
  rate to BACKOFF of what lbd took, by STEP_DOWN at most per tick (what lbd takes in one short
  interval swings widely: the receive work and its thread share the CPU unevenly), and holds it
  HOLD_TICKS ticks while they stay well filled; an overflow with small batches is a burst (lbd's
  thread off the CPU for a moment) and changes nothing. The bucket binding (lbd took at least
  BINDING_SHARE of the rate) with no overflow raises it: by PROBE_IDLE at once while batches are
  tiny (IDLE_BATCH: lbd mostly waits, the rate is far below what it takes); by PROBE_UP per tick
  while they are small (ROOM_BATCH: lbd keeps up with room to spare, hold or not: its capacity
  swings with what else the CPU does, and a rate held low after a dip loses what came back; by
  PROBE_FAST until the queue first overflows in the episode); by PROBE_UP after the hold while they
  are well filled but not full (lbd is near what it takes).
- lbd taking clearly less than the rate (the offered load fell below it) for QUIET_TICKS ticks in
  a row, or less than IDLE_SHARE of it once, disarms it.

Drops are counted where they happen: the kernel's at the queue (`nfq` in lbd's `counters` answer), the guard's
in its nftables counter (`overload` in that answer, lbd_overload_guard_dropped_total, `lbadm doctor`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Protocol

from lb import periodic
from lb.nftguard import Limit

log = logging.getLogger("lbd.overload")

IDLE_TICK_S = 1.0  # what an idle lbd pays: one poll a second (a wake-up costs ~ms in an emulated guest)
ARMED_TICK_S = 0.25
CONFIRM_TICK_S = 0.1  # after a packet thread's signal: the interval that confirms an overflow (or not)
BEST_WINDOW_S = 0.9  # `best` is measured over at least this long (a 1 s idle tick, or 4 armed ones)
ARM_MIN_DROPS = 64  # per tick: a short burst the queue could not hold is not overload
OVERFLOW_SHARE = 0.01  # of what lbd took in the tick
BACKOFF = 0.95
PROBE_UP = 1.05
PROBE_FAST = 1.25  # before the first overflow of an episode, while lbd keeps up with room
PROBE_IDLE = 2.0  # while lbd's thread mostly waits: the rate is far below what it takes (armed from a
                  # livelocked interval, with no best yet), each tick at 25 % left it starved for seconds
FULL_BATCH = 32.0  # packets per receive batch (the C adapter takes up to 64): lbd's thread saturated
IDLE_BATCH = 4.0  # packets per receive batch: lbd's thread mostly waits for packets
ROOM_BATCH = 16.0  # packets per receive batch: lbd's thread keeps up with room to spare
HOLD_TICKS = 4  # after an overflow, the rate stays this many ticks before it probes up again (unless room)
BINDING_SHARE = 0.85
QUIET_TICKS = 2
IDLE_SHARE = 0.25  # lbd took less than this share of the rate, no overflow: the load is gone, disarmed at once
STEP_DOWN = 0.85  # the most one tick lowers the rate: one interval in which lbd's thread got little CPU must
                  # not throw the rate far below what it can take
PEAK_HALF_LIFE_S = 600.0
MIN_RATE = 1000
MIN_BURST = 64
REWRITE_MIN = 0.02  # a rate this close to the written one is not written again


class QueueSample(NamedTuple):
    """Monotonic counts over lbd's queues: packets lbd took, packets the kernel dropped at them, the
    receive batches lbd took them in."""

    taken: int
    dropped: int
    batches: int = 0


class GuardWriter(Protocol):
    """Where the guard lives (lb.nftsteer.NftManager's chain, or lb.xdpshed.XdpShed's XDP program)."""

    table: str
    guard: Limit | None  # as last written (None also after a failed restore: written again on the next tick)

    def write_guard(self, limit: Limit | None) -> None: ...

    def guard_dropped(self) -> int | None: ...


def queue_sample(nfq_stats: Callable[[], dict[str, int]]) -> Callable[[], QueueSample]:
    """A sampler over an engine's nfq_stats() (lb.engine: summed over its queues)."""
    def sample() -> QueueSample:
        s = nfq_stats()
        return QueueSample(int(s.get("packets", 0)),
                           int(s.get("kernel_queue_dropped", 0)) + int(s.get("kernel_user_dropped", 0)),
                           int(s.get("batches", 0)))
    return sample


class OverloadGuard:
    """The control loop (module doc); `tick` is called on the periodic grid every `period()` seconds."""

    def __init__(self, sample: Callable[[], QueueSample], writer: GuardWriter, queue_maxlen: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._sample = sample
        self._writer = writer
        self._queue_maxlen = max(1, queue_maxlen)
        self._clock = clock
        self._last: tuple[float, QueueSample] | None = None
        self.best = 0.0  # the highest rate lbd was seen to take since start, fading (packets/s)
        self.limit: Limit | None = None  # as written, while armed
        self._quiet = 0
        self._hold = 0
        self._overflowed = False  # the queue overflowed again while armed, this episode
        self._watching = False  # the last tick saw an overflow: this one, short, confirms it or not
        self._armed_at = 0.0
        self._episode_drops = 0  # the kernel's queue drops while armed, this episode
        self.episodes = 0
        self.armed_s = 0.0
        self._dropped_base = 0  # guard drops of counters that are gone (the table re-created)
        self._dropped_seen = 0
        self._history: deque[tuple[float, int]] = deque()  # (time, taken) of recent ticks, for `best`
        self.signals = 0  # packet threads' overload signals received
        self.signals_used = 0  # of them, those that started a confirmation

    def period(self) -> float:
        return ARMED_TICK_S if self.limit is not None or self._watching else IDLE_TICK_S

    def signalled(self) -> bool:
        """A packet thread took a run of full receive batches (lb_nfq_overload_fd). Unless armed or
        already confirming, the confirming interval starts now: True when the caller is to tick in
        CONFIRM_TICK_S (instead of at the next grid point)."""
        self.signals += 1
        if self.limit is not None or self._watching:
            return False
        self._last = (self._clock(), self._sample())
        self._watching = True
        self.signals_used += 1
        log.debug("overload guard: a packet thread's receive batches are full; confirming over %.2f s",
                  CONFIRM_TICK_S)
        return True

    def _sustained(self, now: float, taken: int) -> float:
        """What lbd took per second over the recent ticks spanning at least BEST_WINDOW_S (0 until they do)."""
        history = self._history
        history.append((now, taken))
        while len(history) > 2 and now - history[1][0] >= BEST_WINDOW_S:
            history.popleft()
        t0, n0 = history[0]
        return (taken - n0) / (now - t0) if now - t0 >= BEST_WINDOW_S else 0.0

    @property
    def writer(self) -> GuardWriter:
        return self._writer

    def _refresh(self) -> None:
        """A writer that matches packets by keys of its own (lb.xdpshed) brings them up to date while armed."""
        refresh = getattr(self._writer, "refresh", None)
        if refresh is None:
            return
        try:
            refresh()
        except OSError as exc:
            log.warning("overload guard: updating what %s matches: %s", self._writer.table, exc)

    def _burst(self, rate: int) -> int:
        return max(MIN_BURST, min(self._queue_maxlen, rate // 20))

    def _write(self, rate: float) -> None:
        rate_i = max(MIN_RATE, int(rate))
        if (self.limit is not None and self._writer.guard == self.limit
                and abs(rate_i - self.limit.rate) < REWRITE_MIN * self.limit.rate):
            return
        limit = Limit(rate_i, self._burst(rate_i))
        self._writer.write_guard(limit)
        self.limit = limit
        # What happened while the tick ran and the guard was written belongs to no interval:
        # measure the next one from here.
        self._last = (self._clock(), self._sample())

    def tick(self) -> None:
        now, sample = self._clock(), self._sample()
        last, self._last = self._last, (now, sample)
        if last is None or now <= last[0]:
            return
        dt = now - last[0]
        taken = max(0, sample.taken - last[1].taken)
        dropped = max(0, sample.dropped - last[1].dropped)
        rate = taken / dt
        self.best = max(self._sustained(now, sample.taken), self.best * 0.5 ** (dt / PEAK_HALF_LIFE_S))
        overflow = dropped >= ARM_MIN_DROPS and dropped >= OVERFLOW_SHARE * taken
        batches = max(0, sample.batches - last[1].batches)
        per_batch = taken / batches if batches else None  # None: the engine does not count batches
        if self.limit is not None or dropped:
            log.debug("overload guard: %.2f s: lbd took %d (%.1f per batch), the kernel dropped %d; %s", dt, taken,
                      per_batch or 0.0, dropped, self.limit.describe() if self.limit else "not armed")
        if self.limit is None:
            # An overflow seen over a long idle tick is confirmed over a short one first: a burst the
            # queue could not hold is not overload, and what lbd takes is measured where it is
            # overloaded (a long tick may hold a second of load and a second of nothing).
            if overflow and self._watching:
                self._arm(rate, dropped, dt)
            self._watching = overflow and self.limit is None
            return
        self.armed_s += dt
        self._episode_drops += dropped
        self._refresh()
        if overflow and (per_batch is None or per_batch >= FULL_BATCH):
            # lbd's thread was saturated and still the queue overflowed: the rate is above what it takes
            self._quiet = 0
            self._hold = HOLD_TICKS
            self._overflowed = True
            self._write(max(BACKOFF * rate, STEP_DOWN * self.limit.rate))
        elif overflow:
            self._quiet = 0  # lbd was not saturated: a burst (its thread off the CPU a moment), not the rate
        elif rate >= BINDING_SHARE * self.limit.rate:
            self._quiet = 0
            if per_batch is not None and per_batch < IDLE_BATCH:
                self._hold = 0  # lbd waits for packets most of the time: the rate is far below what it takes
                self._write(self.limit.rate * PROBE_IDLE)
            elif per_batch is not None and per_batch < ROOM_BATCH:
                self._hold = 0  # lbd keeps up with room to spare: what held it back (a dip) is gone
                self._write(self.limit.rate * (PROBE_UP if self._overflowed else PROBE_FAST))
            elif self._hold:
                self._hold -= 1
            elif per_batch is None:  # an engine that does not count batches
                self._write(self.limit.rate * (PROBE_UP if self._overflowed else PROBE_FAST))
            elif per_batch < FULL_BATCH:  # busy, not saturated: near what it takes, it may take a little more
                self._write(self.limit.rate * PROBE_UP)
        else:
            self._quiet += 1
            if self._quiet >= QUIET_TICKS or rate < IDLE_SHARE * self.limit.rate:
                self._disarm(now)

    def _arm(self, rate: float, dropped: int, dt: float) -> None:
        try:
            self._write(BACKOFF * max(rate, self.best))
        except OSError as exc:
            log.error("overload: the kernel dropped %d packets at lbd's full queue in %.1f s, and the guard could "
                      "not be armed: %s", dropped, dt, exc)
            return
        self.episodes += 1
        self._quiet = self._hold = 0
        self._overflowed = False
        self._armed_at = self._clock()
        self._episode_drops = 0
        assert self.limit is not None
        log.warning("overload: the kernel dropped %d packets at lbd's full queue in %.1f s while lbd took %.0f "
                    "packets/s (%.0f at best); shedding the excess before the queue: nft ip %s chain guard, %s",
                    dropped, dt, rate, self.best, self._writer.table, self.limit.describe())

    def _disarm(self, now: float) -> None:
        limit, self.limit = self.limit, None
        try:
            self._writer.write_guard(None)
        except OSError as exc:
            log.error("overload over, but removing the guard failed (it stays: %s): %s",
                      limit.describe() if limit else "", exc)
            self.limit = limit
            return
        log.info("overload over after %.1f s: the guard dropped %d packets in all so far; the kernel dropped %d at "
                 "the full queue while it was armed", now - self._armed_at, self.dropped(), self._episode_drops)

    def dropped(self) -> int:
        """Packets the guard has dropped since lbd started (its counters survive re-created tables)."""
        if not self.episodes:
            return 0
        try:
            now = self._writer.guard_dropped()
        except OSError:
            now = None
        if now is None or now < self._dropped_seen:  # the counter went with the table
            self._dropped_base += self._dropped_seen
            self._dropped_seen = 0
        if now is not None:
            self._dropped_seen = now
        return self._dropped_base + self._dropped_seen

    def stop(self) -> None:
        """Remove the guard (lbd's exit; also at start, for one a previous lbd left)."""
        self.limit = None
        try:
            self._writer.write_guard(None)
        except OSError as exc:
            log.warning("removing the overload guard of %s: %s", self._writer.table, exc)

    def counters(self) -> dict[str, Any]:
        return {"armed": int(self.limit is not None), "rate_pps": self.limit.rate if self.limit else 0,
                "dropped": self.dropped(), "episodes": self.episodes, "armed_s": round(self.armed_s, 1),
                "best_pps": round(self.best), "signals": self.signals, "signals_used": self.signals_used,
                "at": self._writer.table}  # where it sheds: lbd's nftables table, or "XDP on <interfaces>"


async def run(guard: OverloadGuard, signal_fds: Sequence[int] = ()) -> None:
    """Tick the guard on the periodic grid every `guard.period()` seconds until cancelled (an exception
    is logged, the next tick retries). A packet thread's signal (readable on one of `signal_fds`,
    lb_nfq_overload_fd; read here to clear it) that starts a confirmation moves the next tick to
    CONFIRM_TICK_S from now. Timer handles, not a task per sleep: an idle lbd pays one wake-up a second."""
    loop = asyncio.get_running_loop()
    timer: asyncio.TimerHandle | None = None

    def schedule(delay: float | None = None) -> None:
        nonlocal timer
        if timer is not None:
            timer.cancel()
        now = loop.time()
        timer = loop.call_at(now + (periodic.to_next_tick(now, guard.period()) if delay is None else delay), tick)

    def tick() -> None:
        try:
            guard.tick()
        except Exception:  # keep the daemon up
            log.exception("the overload guard's tick failed")
        schedule()

    def signalled(fd: int) -> None:
        try:
            os.read(fd, 8)
        except BlockingIOError:
            return  # nothing there after all
        except OSError as exc:
            log.error("reading a packet thread's overload signal (fd %d): %s; the guard polls instead", fd, exc)
            loop.remove_reader(fd)
            return
        try:
            confirm = guard.signalled()
        except Exception:
            log.exception("the overload guard's signal failed")
            return
        if confirm:
            schedule(CONFIRM_TICK_S)

    watched: list[int] = []
    try:
        for fd in signal_fds:
            loop.add_reader(fd, signalled, fd)
            watched.append(fd)
        schedule()
        await loop.create_future()  # ticks and signals run as callbacks until cancelled
    finally:
        if timer is not None:
            timer.cancel()
        for fd in watched:
            loop.remove_reader(fd)
