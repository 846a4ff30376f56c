"""dh: destination hashing (ip_vs_dh.c), 256 buckets (no Kconfig symbol; source default 8 bits).

Table (ip_vs_dh_reassign, on init, add and del only: dh has NO upd_dest hook): one bucket per
destination in list order, cyclically, until all 256 are filled; weights play no part in it.
Key: hash_32(fold(daddr), 8), the packet's destination address (no port, no flags).
Lookup: the bucket's destination, or none when it is unavailable: deleted (not in the list),
weight <= 0 or overloaded. There is no fallback.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from .hashing import IPAddress, fold_address, hash_32
from .kernel_config import DH_TAB_BITS, DH_TAB_SIZE
from .sched_base import Scheduler

if TYPE_CHECKING:
    from .model import Dest, PacketInfo, Service


def dh_hashkey(family: int, addr: IPAddress) -> int:
    return hash_32(fold_address(family, addr), DH_TAB_BITS)


class DhScheduler(Scheduler):
    name: ClassVar[str] = "dh"

    def __init__(self) -> None:
        self.buckets: list[Dest | None] = [None] * DH_TAB_SIZE

    def reassign(self, svc: Service) -> None:
        dests = svc.destinations
        self.buckets = [dests[i % len(dests)] if dests else None for i in range(DH_TAB_SIZE)]

    def init_service(self, svc: Service) -> None:
        self.reassign(svc)

    def done_service(self, svc: Service) -> None:
        self.buckets = [None] * DH_TAB_SIZE

    def add_dest(self, svc: Service, dest: Dest) -> None:
        self.reassign(svc)

    def del_dest(self, svc: Service, dest: Dest) -> None:
        self.reassign(svc)

    def schedule(self, svc: Service, pkt: PacketInfo) -> Dest | None:
        dest = self.buckets[dh_hashkey(svc.family, pkt.daddr)]
        if dest is None or not dest.available or dest.weight <= 0 or dest.overloaded:
            return None
        return dest
