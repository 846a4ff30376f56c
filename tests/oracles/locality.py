"""What lblc and lblcr share (ip_vs_lblc.c, ip_vs_lblcr.c): a per-service cache keyed by the
packet's DESTINATION address, its hash buckets, and its periodic garbage collection.

Cache: 1024 hash buckets (hash_32(fold(daddr), 10)); a new entry goes to the head of its
bucket. An entry records `lastuse` (jiffies), refreshed on every lookup hit, valid or not.
At most max_size * 3 / 2 = 24576 entries: beyond that no entry is created (the chosen
destination is still used). max_size = 1024 * 16 = 16384.

Timer (ip_vs_lblc_check_expire / ip_vs_lblcr_check_expire): first 60 s after the scheduler
is bound, then 60 s after each run. `counter` starts at 1. A run with counter % 30 == 0 does a
FULL check (drop every entry unused for at least the sysctl expiration, 24 h by default:
lblc_expiration / lblcr_expiration) and sets counter = 1, so full checks happen every 30 min.
Otherwise, with at most max_size entries the run only increments counter; above max_size it
drops entries unused for >= 6 min, bucket by bucket from the one after `rover`, until it has
dropped goal = min((entries - max_size) * 4 / 3, max_size / 2) entries (whole buckets at a
time), and the rover stays at the last bucket visited. Deleting or re-adding destinations does
not touch the cache (neither scheduler has add/del/upd hooks).

Overload test (is_overloaded, both files): a destination is "overloaded" for the cache when
its activeconns exceed its weight AND some destination of the service (any, including itself,
including ones with the OVERLOAD flag) has activeconns * 2 < weight. This is unrelated to
the OVERLOAD flag and its thresholds, which the schedulers check separately.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Final, Generic, TypeVar

from .hashing import IPAddress, fold_address, hash_32
from .sched_base import Scheduler

if TYPE_CHECKING:
    from .model import Dest, Service

CHECK_EXPIRE_INTERVAL_S: Final = 60
ENTRY_TIMEOUT_S: Final = 6 * 60
DEFAULT_EXPIRATION_S: Final = 24 * 60 * 60
COUNT_FOR_FULL_EXPIRATION: Final = 30


def is_overloaded(dest: Dest, svc: Service) -> bool:
    if dest.activeconns > dest.weight:
        return any(d.activeconns * 2 < d.weight for d in svc.destinations)
    return False


class CacheEntry:
    """An entry of either cache; lblc keeps one destination in `value`, lblcr a set."""

    def __init__(self, addr: IPAddress, lastuse: int) -> None:
        self.addr = addr
        self.lastuse = lastuse


E = TypeVar("E", bound=CacheEntry)


class LocalityCache(Scheduler, Generic[E]):
    """The hash table, its size accounting and its timer; subclasses schedule."""

    tab_bits: int = 10

    def __init__(self, expiration_s: int = DEFAULT_EXPIRATION_S) -> None:
        self.expiration_s = expiration_s
        self.tab_size = 1 << self.tab_bits
        self.buckets: list[list[E]] = [[] for _ in range(self.tab_size)]
        self.max_size = self.tab_size * 16
        self.entries = 0
        self.rover = 0
        self.counter = 1
        self.dead = False
        self.svc: Service | None = None
        self._timer: int | None = None

    # -- clock ------------------------------------------------------------------------------

    def now(self) -> int:
        assert self.svc is not None, "scheduler not bound to a service"
        return self.svc.clock.jiffies

    def _hz(self) -> int:
        assert self.svc is not None
        return self.svc.clock.hz

    def _arm(self) -> None:
        assert self.svc is not None
        self._timer = self.svc.clock.add_timer(self.now() + CHECK_EXPIRE_INTERVAL_S * self._hz(), self.check_expire)

    def init_service(self, svc: Service) -> None:
        self.svc = svc
        self._arm()

    def done_service(self, svc: Service) -> None:
        if self._timer is not None:
            svc.clock.cancel(self._timer)
            self._timer = None
        self.dead = True
        for bucket in self.buckets:
            bucket.clear()

    # -- table ------------------------------------------------------------------------------

    def hashkey(self, addr: IPAddress) -> int:
        assert self.svc is not None
        return hash_32(fold_address(self.svc.family, addr), self.tab_bits)

    def get(self, addr: IPAddress) -> E | None:
        for entry in self.buckets[self.hashkey(addr)]:
            if entry.addr == addr:
                return entry
        return None

    def link(self, entry: E) -> None:
        self.buckets[self.hashkey(entry.addr)].insert(0, entry)
        self.entries += 1

    def unlink(self, entry: E) -> None:
        self.buckets[self.hashkey(entry.addr)].remove(entry)
        self.entries -= 1

    def full(self) -> bool:
        """No new entry when the table already holds max_size * 3 / 2 entries."""
        return self.entries >= self.max_size * 3 // 2

    def all_entries(self) -> Iterator[E]:
        for bucket in self.buckets:
            yield from bucket

    # -- garbage collection ---------------------------------------------------------------------

    def _sweep(self, stale: Callable[[E], bool], goal: int | None) -> None:
        j = self.rover
        for _ in range(self.tab_size):
            j = (j + 1) & (self.tab_size - 1)
            for entry in list(self.buckets[j]):
                if stale(entry):
                    self.unlink(entry)
                    if goal is not None:
                        goal -= 1
            if goal is not None and goal <= 0:
                break
        self.rover = j

    def check_expire(self) -> None:
        now = self.now()
        hz = self._hz()
        if self.counter % COUNT_FOR_FULL_EXPIRATION == 0:
            expiration = self.expiration_s * hz
            self._sweep(lambda e: not now < e.lastuse + expiration, None)
            self.counter = 1
        elif self.entries <= self.max_size:
            self.counter += 1
        else:
            goal = min((self.entries - self.max_size) * 4 // 3, self.max_size // 2)
            timeout = ENTRY_TIMEOUT_S * hz
            self._sweep(lambda e: not now < e.lastuse + timeout, goal)
        self._arm()
