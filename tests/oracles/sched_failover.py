"""fo and ovf: highest-weight choices (ip_vs_fo.c, ip_vs_ovf.c). No state, no hooks.

- fo: the non-overloaded destination with the highest weight (> 0); the first in list order
  among equals. Connection counts play no part.
- ovf: the same, but a destination is also skipped while its activeconns EXCEED its weight
  (`activeconns > weight`): it stays eligible at activeconns == weight. So with weights 3 and
  2, ovf sends to the first until it has 4 active connections.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from .sched_base import Scheduler

if TYPE_CHECKING:
    from .model import Dest, PacketInfo, Service


class FoScheduler(Scheduler):
    name: ClassVar[str] = "fo"

    def schedule(self, svc: Service, pkt: PacketInfo) -> Dest | None:
        best: Dest | None = None
        best_weight = 0
        for dest in svc.destinations:
            if not dest.overloaded and dest.weight > best_weight:
                best, best_weight = dest, dest.weight
        return best


class OvfScheduler(Scheduler):
    name: ClassVar[str] = "ovf"

    def schedule(self, svc: Service, pkt: PacketInfo) -> Dest | None:
        best: Dest | None = None
        best_weight = 0
        for dest in svc.destinations:
            w = dest.weight
            if dest.overloaded or dest.activeconns > w or w == 0:
                continue
            if best is None or w > best_weight:
                best, best_weight = dest, w
        return best
