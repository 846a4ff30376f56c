"""Least-connection, exactly as kernel ip_vs_lc.c of Debian 6.1.192 (native/src/sched_lc.c).

Every destination neither OVERLOADED nor of weight 0, in list order; the smallest overhead
wins (Destination.conn_overhead: 257 per active, 1 per inactive connection), compared as the
kernel's `unsigned int`, the first one among equals. Weights play no other part. No
per-service state.
"""

from __future__ import annotations

from lb.pyengine.conn import Destination
from lb.pyengine.parse import ParsedPacket
from lb.pyengine.sched import SchedService, Scheduler


class LeastConnection(Scheduler):
    name = "lc"

    def schedule(self, service: SchedService, parsed: ParsedPacket) -> Destination | None:
        least: Destination | None = None
        least_overhead = 0
        for dest in service.dests:
            if dest.overloaded or dest.weight == 0:
                continue
            overhead = dest.conn_overhead & 0xFFFFFFFF  # `unsigned int doh`
            if least is None or overhead < least_overhead:
                least, least_overhead = dest, overhead
        return least


SCHEDULER = LeastConnection()
