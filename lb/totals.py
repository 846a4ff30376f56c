"""The director's totals over every service: IPVS's tot_stats (/proc/net/ip_vs_stats).

The kernel counts every packet and connection three times: for the destination, for the
service and in one per-namespace total. node_exporter's node_ipvs_connections_total,
..._incoming_bytes_total and friends are that total, so its semantics are what dashboards
and alerts built on them assume:

- deleting a service (ipvsadm -D, -C) takes nothing away from the total;
- zeroing one service (ipvsadm -Z -t VIP:PORT) does not change it either;
- zeroing everything (ipvsadm -Z) restarts it at 0 (a counter reset, as Prometheus knows them).

lbd's engines keep counters per service and destination only (no third increment on the
packet path). The director derives the same total from them: the live services' counters
since their last zero, plus what services had counted when they were deleted or zeroed one
by one ("retired"). `Director.execute` retires a service's counters as it removes it, so the
total never goes down between two reads, whatever the scrape interval.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import fields

from lb.model import Stats

STAT_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Stats))


def add_stats(a: Stats, b: Stats) -> Stats:
    return Stats(**{name: getattr(a, name) + getattr(b, name) for name in STAT_FIELDS})


class TotalStats:
    """Counters of services that are gone or were zeroed alone; `total()` adds the live ones."""

    def __init__(self) -> None:
        self._retired = Stats()

    def retire(self, stats: Stats) -> None:
        """A service is deleted, or zeroed alone: keep what it counted in the total."""
        self._retired = add_stats(self._retired, stats)

    def zero(self) -> None:
        """ipvsadm -Z (every service): the total restarts at 0, as the kernel's does."""
        self._retired = Stats()

    def total(self, live: Iterable[Stats]) -> Stats:
        """The total, given each live service's counters since its last zero."""
        result = self._retired
        for stats in live:
            result = add_stats(result, stats)
        return result
