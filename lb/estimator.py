"""IPVS's rate estimator (net/netfilter/ipvs/ip_vs_est.c), the same fixed-point arithmetic.

Every 2 seconds (ESTIMATOR_TICK_S) lbd feeds each service's and destination's cumulative
counters in; `read` returns the rates `ipvsadm -L --rate` prints. Per counter the kernel keeps

    avg += (rate - avg) >> 2          avg = avg*(1-W) + rate*W with W = 2^-2

where `rate` is the increase over the last tick, per second, in fixed point: connections and
packets scaled by 2^10 (delta << 9 = delta * 2^10 / 2 s), bytes by 2^5 (delta << 4). The shift
of a negative difference is arithmetic (s64 >> 2), as Python's >> on ints is. Reading rounds:
(avg + 0x1FF) >> 10 for cps/pps, (avg + 0xF) >> 5 for bps (ip_vs_read_estimator). Zeroing
(`ipvsadm -Z`) takes the current counters as the new "last" values and clears the averages
(ip_vs_zero_estimator).

A key seen for the first time starts from "last" = 0, as the kernel's zero-allocated
estimator does, so a new service's first interval is counted. One difference, about something
the kernel never sees: a counter that goes backwards (an engine that reset it underneath)
contributes no rate for that interval instead of a huge unsigned delta.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

from lb.model import Stats

K = TypeVar("K", bound=Hashable)  # what a counter set is keyed by (lbd: a service or a destination)

ESTIMATOR_TICK_S = 2.0  # the kernel's estimation_timer period (2 * HZ)

RATE_FIELDS = ("cps", "inpps", "outpps", "inbps", "outbps")
# (counter, rate field, shift applied to the per-tick delta, read rounding, read shift)
_SCALES = (
    ("conns", "cps", 9, 0x1FF, 10),
    ("inpkts", "inpps", 9, 0x1FF, 10),
    ("outpkts", "outpps", 9, 0x1FF, 10),
    ("inbytes", "inbps", 4, 0xF, 5),
    ("outbytes", "outbps", 4, 0xF, 5),
)


@dataclass(frozen=True)
class Rates:
    cps: int = 0
    inpps: int = 0
    outpps: int = 0
    inbps: int = 0
    outbps: int = 0

    def to_json(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in RATE_FIELDS}


class _Entry:
    """One ip_vs_estimator: last counters and scaled averages."""

    __slots__ = ("last", "avg")

    def __init__(self, counters: Stats) -> None:
        self.last = {name: getattr(counters, name) for name, *_ in _SCALES}
        self.avg = {rate: 0 for _, rate, *_ in _SCALES}

    def tick(self, counters: Stats) -> None:
        for name, rate_name, shift, _, _ in _SCALES:
            now = getattr(counters, name)
            delta = now - self.last[name]
            self.last[name] = now
            if delta < 0:  # reset underneath us: no meaningful rate for this interval
                delta = 0
            rate = delta << shift
            avg = self.avg[rate_name]
            self.avg[rate_name] = avg + ((rate - avg) >> 2)

    def read(self) -> Rates:
        return Rates(**{rate: (self.avg[rate] + rnd) >> out for _, rate, _, rnd, out in _SCALES})


class Estimator(Generic[K]):
    """Rate estimators for any number of counter sets, keyed by the caller (service, destination)."""

    def __init__(self) -> None:
        self._entries: dict[K, _Entry] = {}
        self._moving: set[K] = set()  # keys whose averages were not all 0 after their last tick

    def tick(self, samples: Mapping[K, Stats]) -> None:
        """One 2-second step: update every key in `samples`; forget keys that are gone."""
        self.forget([k for k in self._entries if k not in samples])
        self.update(samples)

    def update(self, samples: Mapping[K, Stats]) -> None:
        """One 2-second step of the keys in `samples` only. A key left out keeps its values, which
        is exactly what a tick would give it when its counters did not move and its averages are
        all 0 (not in `moving()`): the caller may leave those out (lbd ticks what moved)."""
        for key, counters in samples.items():
            entry = self._entries.get(key)
            if entry is None:
                entry = self._entries[key] = _Entry(Stats())
            entry.tick(counters)
            if any(entry.avg.values()):
                self._moving.add(key)
            else:
                self._moving.discard(key)

    def settled(self) -> bool:
        """Every rate was 0 after the last tick: ticks on unchanged counters would change nothing."""
        return not self._moving

    def moving(self) -> list[K]:
        """The keys whose rates are not all 0 yet: they must be ticked even when their counters stand still."""
        return list(self._moving)

    def read(self, key: K) -> Rates:
        entry = self._entries.get(key)
        return entry.read() if entry is not None else Rates()

    def zero(self, key: K, counters: Stats) -> None:
        """ip_vs_zero_estimator: rates 0, the current counters are the new reference."""
        self._entries[key] = _Entry(counters)
        self._moving.discard(key)

    def keys(self) -> list[K]:
        return list(self._entries)

    def forget(self, keys: Iterable[K]) -> None:
        for key in keys:
            self._entries.pop(key, None)
            self._moving.discard(key)

    def __len__(self) -> int:
        return len(self._entries)


# ---------------------------------------------------------------------------- stalled handshakes

STALL_WINDOW_S = 10.0  # issue 7: "N handshakes stalled in 10 s"


@dataclass(frozen=True)
class HandshakeSample:
    """A destination's cumulative handshake counters at one instant (lb.model.DestInfo)."""

    syn_retrans: int  # client SYNs repeated (same sequence number) on connections forwarded here
    handshakes: int  # connections whose handshake completed (client ACK seen)
    conns: int = 0  # connections scheduled to it


@dataclass(frozen=True)
class StallEvent(Generic[K]):
    """An episode of stalled handshakes at one destination began (`started`) or ended."""

    key: K
    started: bool
    stalled: int  # handshakes stalled over the window (SYN retransmissions, bounded by new connections)
    syn_retrans: int  # deltas over the window
    handshakes: int
    window_s: float


class _History:
    __slots__ = ("samples", "stalled", "episodes")

    def __init__(self) -> None:
        self.samples: list[tuple[float, HandshakeSample]] = []
        self.stalled = False
        self.episodes = 0


class StallWatch(Generic[K]):
    """Per destination: is a stalled-handshake episode going on? (lbadm doctor's check, live in lbd.)

    In DR and IPIP the director sees only the client's side of a connection. A client that repeats
    its SYN with the same sequence number on a connection already forwarded, while the destination
    completes no handshake, means the forwarded frames never got an answer. Each tick (every
    ESTIMATOR_TICK_S) compares a destination's counters with the oldest sample inside the last
    `window_s` seconds: stalled = syn_retrans grew and handshakes did not. An episode starts on the
    first stalled tick (one event, `episodes` + 1) and ends on the first tick that is not stalled
    (one event); the caller logs them, so a long stall is reported once, not every 2 s.
    """

    def __init__(self, window_s: float = STALL_WINDOW_S) -> None:
        self.window_s = window_s
        self._hist: dict[K, _History] = {}

    def any_stalled(self) -> bool:
        """Whether an episode is going on somewhere (its end must be seen by a tick)."""
        return any(h.stalled for h in self._hist.values())

    def keys(self) -> list[K]:
        return list(self._hist)

    def forget(self, keys: Iterable[K]) -> None:
        """Destinations that are gone: their history and episode counters go too."""
        for key in keys:
            self._hist.pop(key, None)

    def stalled_keys(self) -> list[K]:
        return [k for k, h in self._hist.items() if h.stalled]

    def tick(self, now: float, samples: Mapping[K, HandshakeSample]) -> list[StallEvent[K]]:
        """One step of every destination: those not in `samples` are gone (their history and
        episode counter go too)."""
        self.forget([k for k in self._hist if k not in samples])
        return self.update(now, samples)

    def update(self, now: float, samples: Mapping[K, HandshakeSample]) -> list[StallEvent[K]]:
        """One step of the destinations in `samples` only. One left out must not be stalled and
        must have had the same counters for longer than the window: a step would then find it
        not stalled again and change nothing that matters (its baseline, when it moves again, is
        the same sample either way)."""
        events: list[StallEvent] = []
        for key, sample in samples.items():
            h = self._hist.get(key)
            if h is None:
                h = self._hist[key] = _History()
            if h.samples and (sample.syn_retrans < h.samples[-1][1].syn_retrans
                              or sample.handshakes < h.samples[-1][1].handshakes):
                h.samples.clear()  # counters reset underneath (object re-created): start over
            h.samples.append((now, sample))
            # Baseline: the latest sample at least a window old, else the oldest one we have.
            while len(h.samples) >= 2 and h.samples[1][0] <= now - self.window_s:
                h.samples.pop(0)
            base = h.samples[0][1]
            d_retrans = sample.syn_retrans - base.syn_retrans
            d_hs = sample.handshakes - base.handshakes
            d_conns = sample.conns - base.conns
            stalled = d_retrans > 0 and d_hs <= 0
            if stalled != h.stalled:
                h.stalled = stalled
                if stalled:
                    h.episodes += 1
                count = min(d_retrans, d_conns) if d_conns > 0 else d_retrans
                events.append(StallEvent(key, stalled, max(count, 0), d_retrans, d_hs, self.window_s))
        return events

    def episodes(self, key: K) -> int:
        h = self._hist.get(key)
        return h.episodes if h is not None else 0

    def stalled(self, key: K) -> bool:
        h = self._hist.get(key)
        return h.stalled if h is not None else False
