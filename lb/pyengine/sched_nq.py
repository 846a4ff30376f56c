"""Never queue, exactly as kernel ip_vs_nq.c (Linux 6.1; native/src/sched_nq.c).

In list order, skipping OVERLOADED and weight-0 destinations: the first one without an active
connection is chosen at once, whatever its weight; failing that, the smallest
(active + 1) / weight as sed, by cross-multiplication, the first among equals. No per-service
state.
"""

from __future__ import annotations

from lb.pyengine.conn import Destination
from lb.pyengine.parse import ParsedPacket
from lb.pyengine.sched import SchedService, Scheduler


class NeverQueue(Scheduler):
    name = "nq"

    def schedule(self, service: SchedService, parsed: ParsedPacket) -> Destination | None:
        least: Destination | None = None
        least_overhead = 0
        for dest in service.dests:
            if dest.overloaded or not dest.weight:
                continue
            if dest.active == 0:
                return dest  # idle: no queue to wait in
            overhead = dest.active + 1
            if least is None or least_overhead * dest.weight > overhead * least.weight:
                least, least_overhead = dest, overhead
        return least


SCHEDULER = NeverQueue()
