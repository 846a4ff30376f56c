"""Weighted least-connection, exactly as kernel ip_vs_wlc.c (native/src/sched_wlc.c).

overhead = active * 256 + inactive. The first eligible destination (weight > 0, not
OVERLOADED) in list order is the candidate; every later non-overloaded destination d
replaces it when cand_overhead * d.weight > d_overhead * cand.weight (the kernel's 64-bit
cross-multiplication; Python integers do not overflow, and the operands are < 2**63). A
later destination with weight 0 never wins because the left side is then 0. No
per-service state.
"""

from __future__ import annotations

from lb.pyengine.conn import Destination
from lb.pyengine.parse import ParsedPacket
from lb.pyengine.sched import SchedService, Scheduler

ACTIVE_CONN_COST = 256  # an active connection weighs 256 inactive ones (ip_vs_dest_conn_overhead)


def conn_overhead(dest: Destination) -> int:
    return dest.active * ACTIVE_CONN_COST + dest.inactive


class WeightedLeastConnection(Scheduler):
    name = "wlc"

    def schedule(self, service: SchedService, parsed: ParsedPacket) -> Destination | None:
        least: Destination | None = None
        least_overhead = 0
        for dest in service.dests:
            if least is None:
                if dest.eligible():
                    least, least_overhead = dest, conn_overhead(dest)
                continue
            if dest.overloaded:
                continue
            overhead = conn_overhead(dest)
            if least_overhead * dest.weight > overhead * least.weight:
                least, least_overhead = dest, overhead
        return least


SCHEDULER = WeightedLeastConnection()
