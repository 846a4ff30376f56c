"""What lblc and lblcr share, exactly as native/src/locality.c (native/include/lb_locality.h says why).

A per-service cache keyed by the packet's DESTINATION address: 1024 buckets (hash_32 of the
address, 10 bits), a new entry at the head of its bucket, at most 24576 entries (6.1.192's bound).
A timer runs every 60 s (armed the first time the scheduler sees the clock): every 30th run drops
the entries unused for at least the expiration (24 h); otherwise, above 16384 entries, it drops
entries unused for 6 min, whole buckets at a time from the one after the rover, until
min((entries - 16384) * 4 / 3, 8192) have gone. tick() runs every run due by now_ms, each as of
its own due time. Entries hold references on their destinations (Destination.sched_refs).

Kernel periods in jiffies (HZ 250) convert exactly to ms: 15000 jiffies = 60 s, 90000 = 6 min,
21600000 = 24 h.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, Generic, TypeVar

from lb.pyengine.conn import Destination
from lb.pyengine.sched import SchedService, Scheduler, conn_overhead, least_weighted, state_of

TAB_BITS: Final = 10  # the files' CONFIG_IP_VS_LBLC(R)_TAB_BITS default (no Kconfig symbol)
TAB_SIZE: Final = 1 << TAB_BITS
TAB_MASK: Final = TAB_SIZE - 1
MAX_SIZE: Final = TAB_SIZE * 16  # 16384 entries: above it the timer collects
MAX_ENTRIES: Final = MAX_SIZE * 3 // 2  # 24576: no new entry at this size
CHECK_INTERVAL_MS: Final = 60_000  # CHECK_EXPIRE_INTERVAL, 60*HZ
ENTRY_TIMEOUT_MS: Final = 360_000  # ENTRY_TIMEOUT, 6*60*HZ
EXPIRATION_MS: Final = 86_400_000  # DEFAULT_EXPIRATION, 24*60*60*HZ (sysctl lblc_expiration)
COUNT_FOR_FULL: Final = 30  # COUNT_FOR_FULL_EXPIRATION
GOLDEN_RATIO_32: Final = 0x61C88647
U32: Final = 0xFFFFFFFF


def hashkey(addr: bytes) -> int:
    """hash_32(ntohl(addr), 10)."""
    return ((int.from_bytes(addr, "big") * GOLDEN_RATIO_32) & U32) >> (32 - TAB_BITS)


def is_overloaded(dest: Destination, service: SchedService) -> bool:
    """is_overloaded() of both files (not the OVERLOAD flag): more active connections than its weight,
    while some destination of the service has fewer than half its weight active (strictly)."""
    if dest.active > dest.weight:
        return any(d.active * 2 < d.weight for d in service.dests)
    return False


def least_loaded(service: SchedService) -> Destination | None:
    """__ip_vs_lblc_schedule / __ip_vs_lblcr_schedule: wlc's loop (sched.least_weighted with
    conn_overhead)."""
    return least_weighted(service.dests, conn_overhead)


class Entry:
    """struct lb_loc_entry: the packets' destination address (4 bytes) and when it was last used."""

    __slots__ = ("addr", "lastuse_ms")

    def __init__(self, addr: bytes, lastuse_ms: int) -> None:
        self.addr = addr
        self.lastuse_ms = lastuse_ms

    def release(self) -> None:
        """Drop the destination references the entry holds (it is being freed)."""


E = TypeVar("E", bound=Entry)


class Table(Generic[E]):
    """struct lb_loc_table: the buckets (each newest first), the count and the collector's state."""

    def __init__(self) -> None:
        self.buckets: list[list[E]] = [[] for _ in range(TAB_SIZE)]
        self.entries = 0
        self.rover = 0
        self.counter = 1
        self.next_check_ms: int | None = None  # None: not armed yet
        self.expiration_ms = EXPIRATION_MS

    def get(self, addr: bytes) -> E | None:
        for entry in self.buckets[hashkey(addr)]:
            if entry.addr == addr:
                return entry
        return None

    def link(self, entry: E) -> None:
        self.buckets[hashkey(entry.addr)].insert(0, entry)
        self.entries += 1

    def delete(self, entry: E) -> None:
        """Unlink, count out (6.1.192's missing decrement), free."""
        self.buckets[hashkey(entry.addr)].remove(entry)
        self.entries -= 1
        entry.release()

    @property
    def full(self) -> bool:
        return self.entries >= MAX_ENTRIES

    def flush(self) -> None:
        for bucket in self.buckets:
            for entry in bucket:
                entry.release()
            bucket.clear()
        self.entries = 0

    def now(self, service: SchedService) -> int:
        """The time of the schedule() call in progress; arms the timer if first seen."""
        if self.next_check_ms is None:
            self.next_check_ms = service.sched_now_ms + CHECK_INTERVAL_MS
        return service.sched_now_ms

    def tick(self, now_ms: int) -> None:
        if self.next_check_ms is None:
            self.next_check_ms = now_ms + CHECK_INTERVAL_MS
            return
        while self.next_check_ms <= now_ms:
            self._check_expire(self.next_check_ms)
            self.next_check_ms += CHECK_INTERVAL_MS

    def _check_expire(self, now_ms: int) -> None:
        if self.counter % COUNT_FOR_FULL == 0:
            self._sweep(lambda e: now_ms >= e.lastuse_ms + self.expiration_ms, None)
            self.counter = 1
        elif self.entries <= MAX_SIZE:
            self.counter += 1
        else:
            goal = min((self.entries - MAX_SIZE) * 4 // 3, MAX_SIZE // 2)
            self._sweep(lambda e: now_ms >= e.lastuse_ms + ENTRY_TIMEOUT_MS, goal)

    def _sweep(self, stale: Callable[[E], bool], goal: int | None) -> None:
        j = self.rover
        for _ in range(TAB_SIZE):
            j = (j + 1) & TAB_MASK
            bucket = self.buckets[j]
            if bucket:
                kept: list[E] = []
                for entry in bucket:
                    if stale(entry):
                        entry.release()
                    else:
                        kept.append(entry)
                gone = len(bucket) - len(kept)
                self.entries -= gone
                bucket[:] = kept
                if goal is not None:
                    goal -= gone
            if goal is not None and goal <= 0:
                break
        self.rover = j


class LocalityScheduler(Scheduler, Generic[E]):
    """The hooks lblc and lblcr share (native/src/locality.c's lb_loc_init, lb_loc_done and
    lb_loc_tick): the per-service table, flushed when the scheduler lets go, and its timer; each
    subclass brings its own schedule() and entries."""

    def init_service(self, service: SchedService) -> None:
        service.sched_data = Table[E]()

    def done_service(self, service: SchedService) -> None:
        self.table(service).flush()
        service.sched_data = None

    def tick(self, service: SchedService, now_ms: int) -> None:
        self.table(service).tick(now_ms)

    def table(self, service: SchedService) -> Table[E]:
        """The service's table (set by init_service)."""
        table: Table[E] = state_of(service, Table)
        return table
