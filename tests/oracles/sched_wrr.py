"""wrr: weighted round-robin (net/netfilter/ipvs/ip_vs_wrr.c, the 6.1 version).

State (struct ip_vs_wrr_mark): cl, a cursor on the list (None: the head); di, the gcd of the
positive weights (1 when there are none); mw, the maximum weight minus (di - 1); cw, the
weight a destination must reach in the current pass.

schedule: from the cursor, walk the list; a destination that is not overloaded and has
weight >= cw wins (and becomes the cursor). Reaching the end of the list lowers cw by di and
starts again from the head; when cw drops to 0 or below it restarts at mw. The walk gives up
("all destinations are overloaded") once every destination was checked in the last pass
(cw <= di, i.e. against weight >= 1 when di == 1). Overloaded destinations are skipped, weight-0
ones never reach cw >= 1. When mw is 0 (no positive weight) nothing is chosen.

add_dest/del_dest/upd_dest (ip_vs_wrr_dest_changed, every edit, even one that changes nothing):
the cursor goes back to the head; di and mw are recomputed; cw becomes mw when it was above it
or 0, otherwise (di > 1) it is rounded to a multiple of di plus one. So an edit restarts the
round from the head of the list but generally not from the top weight.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, ClassVar

from .sched_base import Scheduler, c_div

if TYPE_CHECKING:
    from .model import Dest, PacketInfo, Service


def gcd_weight(dests: list[Dest]) -> int:
    """ip_vs_wrr_gcd_weight(): gcd of the weights > 0, or 1 when there are none."""
    g = 0
    for dest in dests:
        if dest.weight > 0:
            g = math.gcd(dest.weight, g) if g > 0 else dest.weight
    return g or 1


def max_weight(dests: list[Dest]) -> int:
    return max((d.weight for d in dests if d.weight > 0), default=0)


class WrrScheduler(Scheduler):
    name: ClassVar[str] = "wrr"

    def __init__(self) -> None:
        self.cl: Dest | None = None
        self.cw = 0
        self.mw = 0
        self.di = 1

    def init_service(self, svc: Service) -> None:
        self.cl = None
        self.di = gcd_weight(svc.destinations)
        self.mw = max_weight(svc.destinations) - (self.di - 1)
        self.cw = self.mw

    def _dest_changed(self, svc: Service) -> None:
        self.cl = None
        self.di = gcd_weight(svc.destinations)
        self.mw = max_weight(svc.destinations) - (self.di - 1)
        if self.cw > self.mw or not self.cw:
            self.cw = self.mw
        elif self.di > 1:
            self.cw = c_div(self.cw, self.di) * self.di + 1

    def add_dest(self, svc: Service, dest: Dest) -> None:
        self._dest_changed(svc)

    def del_dest(self, svc: Service, dest: Dest) -> None:
        self._dest_changed(svc)

    def upd_dest(self, svc: Service, dest: Dest) -> None:
        self._dest_changed(svc)

    def schedule(self, svc: Service, pkt: PacketInfo) -> Dest | None:
        dests = svc.destinations
        if self.mw == 0:
            return None  # err_noavail; the cursor stays where it was
        last = self.cl
        stop: Dest | None = None
        last_pass = restarted = False
        position = self.cl
        while True:
            start = 0 if position is None else dests.index(position) + 1
            for dest in dests[start:]:
                if not dest.overloaded and dest.weight >= self.cw:
                    self.cl = dest
                    return dest
                if dest is stop:
                    self.cl = dest  # err_over leaves the cursor on `stop`
                    return None
            position = None  # the walk reached the list head
            self.cw -= self.di
            if self.cw <= 0:
                self.cw = self.mw
                if last_pass or last is None:
                    self.cl = None  # err_over at the head
                    return None
                restarted = True
            last_pass = self.cw <= self.di
            if last_pass and restarted and last is not None:
                # The first walk from `last` covered only the destinations after it at
                # weight >= 1; this pass must also check those up to and including `last`.
                stop = last
