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

from dataclasses import dataclass
from typing import Hashable, Iterable, Mapping

from lb.model import Stats

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


class Estimator:
    """Rate estimators for any number of counter sets, keyed by the caller (service, destination)."""

    def __init__(self) -> None:
        self._entries: dict[Hashable, _Entry] = {}

    def tick(self, samples: Mapping[Hashable, Stats]) -> None:
        """One 2-second step: update every key in `samples`; forget keys that are gone."""
        for key in [k for k in self._entries if k not in samples]:
            del self._entries[key]
        for key, counters in samples.items():
            entry = self._entries.get(key)
            if entry is None:
                entry = self._entries[key] = _Entry(Stats())
            entry.tick(counters)

    def read(self, key: Hashable) -> Rates:
        entry = self._entries.get(key)
        return entry.read() if entry is not None else Rates()

    def zero(self, key: Hashable, counters: Stats) -> None:
        """ip_vs_zero_estimator: rates 0, the current counters are the new reference."""
        self._entries[key] = _Entry(counters)

    def keys(self) -> list[Hashable]:
        return list(self._entries)

    def forget(self, keys: Iterable[Hashable]) -> None:
        for key in keys:
            self._entries.pop(key, None)

    def __len__(self) -> int:
        return len(self._entries)
