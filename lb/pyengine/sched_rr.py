"""Round robin, exactly as kernel ip_vs_rr.c (native/src/sched_rr.c).

Per-service state: the cursor, the last chosen destination, or the list head (None)
initially. A schedule walks the destinations after the cursor to the end, then (if the
cursor is not the head) from the start up to and including the cursor, and takes the first
one with weight > 0 and not OVERLOADED. Deleting the cursor moves it to its predecessor
(the head if it was first), as ip_vs_rr_del_dest does.
"""

from __future__ import annotations

from dataclasses import dataclass

from lb.pyengine.conn import Destination
from lb.pyengine.parse import ParsedPacket
from lb.pyengine.sched import SchedService, Scheduler, index_of, state_of


@dataclass(slots=True)
class _Cursor:
    last: Destination | None = None  # None = the list head


class RoundRobin(Scheduler):
    name = "rr"

    def init_service(self, service: SchedService) -> None:
        service.sched_data = _Cursor()

    def schedule(self, service: SchedService, parsed: ParsedPacket) -> Destination | None:
        cursor = state_of(service, _Cursor)
        dests = service.dests
        if cursor.last is None:
            order: list[Destination] = dests
        else:
            start = index_of(dests, cursor.last) + 1
            order = [*dests[start:], *dests[:start]]
        for dest in order:
            if dest.eligible():
                cursor.last = dest
                return dest
        return None

    def del_dest(self, service: SchedService, dest: Destination, index: int) -> None:
        cursor = state_of(service, _Cursor)
        if cursor.last is dest:
            cursor.last = service.dests[index - 1] if index > 0 else None


SCHEDULER = RoundRobin()
