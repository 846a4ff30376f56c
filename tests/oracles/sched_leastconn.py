"""The least-connection family: lc, wlc, sed, nq (ip_vs_lc.c, ip_vs_wlc.c, ip_vs_sed.c,
ip_vs_nq.c). None of them keeps state or has add/del/upd hooks; all walk the list from its
head and keep the FIRST destination among equals (every comparison is strict).

Overheads (6.1.192):
- lc, wlc: ip_vs_dest_conn_overhead() = (activeconns << 8) + totalconns, i.e. 257 per active
  and 1 per inactive connection. (Kernels before Debian's 6.1.187 used inactconns instead of
  totalconns: 256 per active. See README.)
- sed, nq: activeconns + 1 (inactive connections do not count at all).

- lc: skip overloaded and weight-0 destinations; the smallest overhead wins, compared as
  *unsigned* ints; weights play no other part.
- wlc, sed: the weighted_least() two-stage loop: smallest overhead / weight.
- nq: skip overloaded and weight-0 destinations; the first one with activeconns == 0 wins at
  once (idle servers need no queue, whatever their weight); otherwise as sed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from .hashing import U32
from .sched_base import Scheduler, weighted_least

if TYPE_CHECKING:
    from .model import Dest, PacketInfo, Service


def sed_overhead(dest: Dest) -> int:
    """ip_vs_sed_dest_overhead() / ip_vs_nq_dest_overhead(): activeconns + 1."""
    return dest.activeconns + 1


class LcScheduler(Scheduler):
    name: ClassVar[str] = "lc"

    def schedule(self, svc: Service, pkt: PacketInfo) -> Dest | None:
        least: Dest | None = None
        loh = 0
        for dest in svc.destinations:
            if dest.overloaded or dest.weight == 0:
                continue
            doh = dest.conn_overhead & U32  # `unsigned int doh`
            if least is None or doh < loh:
                least, loh = dest, doh
        return least


class WlcScheduler(Scheduler):
    name: ClassVar[str] = "wlc"

    def schedule(self, svc: Service, pkt: PacketInfo) -> Dest | None:
        return weighted_least(svc.destinations, lambda d: d.conn_overhead)


class SedScheduler(Scheduler):
    name: ClassVar[str] = "sed"

    def schedule(self, svc: Service, pkt: PacketInfo) -> Dest | None:
        return weighted_least(svc.destinations, sed_overhead)


class NqScheduler(Scheduler):
    name: ClassVar[str] = "nq"

    def schedule(self, svc: Service, pkt: PacketInfo) -> Dest | None:
        least: Dest | None = None
        loh = 0
        for dest in svc.destinations:
            if dest.overloaded or not dest.weight:
                continue
            doh = sed_overhead(dest)
            if dest.activeconns == 0:
                return dest
            if least is None or loh * dest.weight > doh * least.weight:
                least, loh = dest, doh
        return least
