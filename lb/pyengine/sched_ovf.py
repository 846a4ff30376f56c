"""Weighted overflow, exactly as kernel ip_vs_ovf.c (Linux 6.1; native/src/sched_ovf.c).

As fo, the destination of the highest weight, the first in list order among equals, skipping
OVERLOADED ones, weight 0, and those whose active connections EXCEED their weight (still
eligible at active == weight: weight 3 takes a 4th). The heaviest fills up, then the next. No
per-service state.
"""

from __future__ import annotations

from lb.pyengine.conn import Destination
from lb.pyengine.parse import ParsedPacket
from lb.pyengine.sched import SchedService, Scheduler


class WeightedOverflow(Scheduler):
    name = "ovf"

    def schedule(self, service: SchedService, parsed: ParsedPacket) -> Destination | None:
        best: Destination | None = None
        best_weight = 0
        for dest in service.dests:
            weight = dest.weight
            if dest.overloaded or dest.active > weight or weight == 0:
                continue
            if best is None or weight > best_weight:
                best, best_weight = dest, weight
        return best


SCHEDULER = WeightedOverflow()
