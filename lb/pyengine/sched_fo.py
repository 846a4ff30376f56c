"""Weighted failover, exactly as kernel ip_vs_fo.c (Linux 6.1; native/src/sched_fo.c).

The destination with the highest weight (> 0) that is not OVERLOADED, the first in list order
among equals; connection counts play no part. No per-service state.
"""

from __future__ import annotations

from lb.pyengine.conn import Destination
from lb.pyengine.parse import ParsedPacket
from lb.pyengine.sched import SchedService, Scheduler


class WeightedFailover(Scheduler):
    name = "fo"

    def schedule(self, service: SchedService, parsed: ParsedPacket) -> Destination | None:
        best: Destination | None = None
        best_weight = 0
        for dest in service.dests:
            if not dest.overloaded and dest.weight > best_weight:
                best, best_weight = dest, dest.weight
        return best


SCHEDULER = WeightedFailover()
