"""Weighted round robin, exactly as kernel ip_vs_wrr.c (Linux 6.1; native/src/sched_wrr.c).

Per-service state (struct ip_vs_wrr_mark): the cursor `cl` (the last chosen destination, or
None: the list head), `di` = gcd of the positive weights (1 without any), `mw` = the highest
weight - (di - 1), and `cw`, the weight a destination must reach in the current pass.

schedule: walk on from the cursor; the first destination not OVERLOADED whose weight >= cw is
chosen and becomes the cursor. At the end of the list cw drops by di and the walk goes on from
the head; at 0 or below cw restarts at mw. The walk gives up once every destination was checked
in the last pass (cw <= di): from the head, or up to and including the destination it started
after (`stop`: the cursor then rests there; else on the head). No positive weight: nothing, the
cursor stays.

add_dest/del_dest/upd_dest (ip_vs_wrr_dest_changed, every edit, even one that changes nothing):
the cursor goes back to the head, di and mw are recomputed, cw becomes mw when it was above it
or 0, else (di > 1) it is rounded down to a multiple of di plus 1.

As in C, a run of passes that cannot find anything (cw above every eligible weight, before the
last pass) is taken in one subtraction instead of one pass at a time: the same cw results,
without the kernel's ~2^31 passes when an overloaded destination has weight 2^31 - 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from lb.pyengine.conn import Destination
from lb.pyengine.parse import ParsedPacket
from lb.pyengine.sched import SchedService, Scheduler, index_of, state_of


@dataclass(slots=True)
class _Mark:
    cl: Destination | None = None  # None = the list head
    cw: int = 0
    mw: int = 0
    di: int = 1


def _weights(dests: list[Destination]) -> tuple[int, int]:
    """(di, mw): ip_vs_wrr_gcd_weight() and ip_vs_wrr_max_weight() - (di - 1)."""
    g = 0
    highest = 0
    for dest in dests:
        if dest.weight > 0:
            g = math.gcd(dest.weight, g) if g > 0 else dest.weight
        highest = max(highest, dest.weight)
    di = g or 1
    return di, highest - (di - 1)


class WeightedRoundRobin(Scheduler):
    name = "wrr"

    def init_service(self, service: SchedService) -> None:
        di, mw = _weights(service.dests)
        service.sched_data = _Mark(None, mw, mw, di)

    def add_dest(self, service: SchedService, dest: Destination, index: int) -> None:
        self._dest_changed(service)

    def del_dest(self, service: SchedService, dest: Destination, index: int) -> None:
        self._dest_changed(service)

    def upd_dest(self, service: SchedService, dest: Destination) -> None:
        self._dest_changed(service)

    @staticmethod
    def _dest_changed(service: SchedService) -> None:
        mark = state_of(service, _Mark)
        mark.cl = None
        mark.di, mark.mw = _weights(service.dests)
        if mark.cw > mark.mw or not mark.cw:
            mark.cw = mark.mw
        elif mark.di > 1:
            mark.cw = (mark.cw // mark.di) * mark.di + 1  # cw > 0 here: // truncates as C's /

    def schedule(self, service: SchedService, parsed: ParsedPacket) -> Destination | None:
        mark = state_of(service, _Mark)
        dests = service.dests
        if mark.mw == 0:
            return None
        reach = max((d.weight for d in dests if not d.overloaded), default=0)
        last = mark.cl
        start = 0 if last is None else index_of(dests, last) + 1
        stop: Destination | None = None
        last_pass = restarted = False
        while True:
            for dest in dests[start:]:
                if not dest.overloaded and dest.weight >= mark.cw:
                    mark.cl = dest
                    return dest
                if dest is stop:
                    mark.cl = dest  # all overloaded: the cursor rests on `last`
                    return None
            start = 0
            floor = max(reach, mark.di)
            if stop is None and mark.cw - mark.di > floor:  # empty passes, taken at once
                mark.cw -= ((mark.cw - floor - 1) // mark.di) * mark.di
            mark.cw -= mark.di
            if mark.cw <= 0:
                mark.cw = mark.mw
                if last_pass or last is None:
                    mark.cl = None
                    return None
                restarted = True
            last_pass = mark.cw <= mark.di
            if last_pass and restarted and last is not None:
                stop = last


SCHEDULER = WeightedRoundRobin()
