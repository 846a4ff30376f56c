"""Shortest expected delay, exactly as kernel ip_vs_sed.c (Linux 6.1; native/src/sched_sed.c).

overhead = active + 1 (inactive connections do not count). wlc's two stages: the first
destination neither OVERLOADED nor of weight 0 is the candidate; every later one not OVERLOADED
replaces it when cand_overhead * d.weight > d_overhead * cand.weight (the kernel's 64-bit
products). A later weight-0 destination never wins. No per-service state.
"""

from __future__ import annotations

from lb.pyengine.conn import Destination
from lb.pyengine.parse import ParsedPacket
from lb.pyengine.sched import SchedService, Scheduler, least_weighted


def _sed_overhead(dest: Destination) -> int:
    """ip_vs_sed_dest_overhead(): active connections + 1."""
    return dest.active + 1


class ShortestExpectedDelay(Scheduler):
    name = "sed"

    def schedule(self, service: SchedService, parsed: ParsedPacket) -> Destination | None:
        return least_weighted(service.dests, _sed_overhead)


SCHEDULER = ShortestExpectedDelay()
