"""Weighted least-connection, exactly as kernel ip_vs_wlc.c of Debian 6.1.192 (native/src/sched_wlc.c).

overhead = Destination.conn_overhead (257 per active, 1 per inactive connection, the kernel's
int). The first eligible destination (weight > 0, not OVERLOADED) in list order is the
candidate; every later non-overloaded destination d replaces it when
cand_overhead * d.weight > d_overhead * cand.weight (the kernel's 64-bit cross-multiplication
of two ints: it cannot overflow). A later destination with weight 0 never wins because the
left side is then 0. No per-service state.
"""

from __future__ import annotations

from lb.pyengine.conn import Destination
from lb.pyengine.parse import ParsedPacket
from lb.pyengine.sched import SchedService, Scheduler, conn_overhead, least_weighted


class WeightedLeastConnection(Scheduler):
    name = "wlc"

    def schedule(self, service: SchedService, parsed: ParsedPacket) -> Destination | None:
        return least_weighted(service.dests, conn_overhead)


SCHEDULER = WeightedLeastConnection()
