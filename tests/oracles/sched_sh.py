"""sh: source hashing (ip_vs_sh.c), 256 buckets (CONFIG_IP_VS_SH_TAB_BITS=8).

Table (ip_vs_sh_reassign, on init and on every add/del/upd): walk the destination list
cyclically from its head, giving each destination `weight` consecutive buckets, and at least
ONE bucket even with weight 0 (the "next destination" test is ++count >= weight), until all
256 buckets are filled. An empty list leaves every bucket empty.

Key: bucket = (offset + hash_32(port + fold(saddr), 8)) & 255, where the sum is 32-bit and
port is the packet's source port only with sh-port (IP_VS_SVC_F_SCHED2) and only for TCP, UDP
and SCTP, else 0.

Lookup without sh-fallback: the bucket's destination, unless it is unavailable (weight <= 0 or
overloaded): then no destination. With sh-fallback (IP_VS_SVC_F_SCHED1): if the first bucket's
destination is unavailable, probe offsets 0..255 with roffset = (offset + ihash) % 256 and
bucket = key(roffset) = (roffset + ihash) & 255. The original hash is added TWICE, so the probe
sequence starts at bucket (2 * ihash) & 255 and walks up from there, not from ihash + 1.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from .conn import IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP
from .flags import IP_VS_SVC_F_SCHED_SH_FALLBACK, IP_VS_SVC_F_SCHED_SH_PORT
from .hashing import U32, IPAddress, fold_address, hash_32
from .kernel_config import SH_TAB_BITS, SH_TAB_SIZE
from .sched_base import Scheduler

if TYPE_CHECKING:
    from .model import Dest, PacketInfo, Service

SH_TAB_MASK = SH_TAB_SIZE - 1


def is_unavailable(dest: Dest) -> bool:
    """sh's and mh's is_unavailable(): weight <= 0 or the OVERLOAD flag."""
    return dest.weight <= 0 or dest.overloaded


def packet_port(pkt: PacketInfo, use_port: bool) -> int:
    """ip_vs_{sh,mh}_get_port(): the source port for TCP/UDP/SCTP when asked for, else 0."""
    if use_port and pkt.protocol in (IPPROTO_TCP, IPPROTO_UDP, IPPROTO_SCTP):
        return pkt.sport
    return 0


def sh_hashkey(family: int, addr: IPAddress, port: int, offset: int) -> int:
    """ip_vs_sh_hashkey()."""
    return (offset + hash_32((port + fold_address(family, addr)) & U32, SH_TAB_BITS)) & SH_TAB_MASK


class ShScheduler(Scheduler):
    name: ClassVar[str] = "sh"

    def __init__(self) -> None:
        self.buckets: list[Dest | None] = [None] * SH_TAB_SIZE

    def reassign(self, svc: Service) -> None:
        dests = svc.destinations
        if not dests:
            self.buckets = [None] * SH_TAB_SIZE
            return
        index = 0
        count = 0
        for bucket in range(SH_TAB_SIZE):
            dest = dests[index]
            self.buckets[bucket] = dest
            count += 1
            if count >= dest.weight:
                index = (index + 1) % len(dests)
                count = 0

    def init_service(self, svc: Service) -> None:
        self.reassign(svc)

    def done_service(self, svc: Service) -> None:
        self.buckets = [None] * SH_TAB_SIZE

    def add_dest(self, svc: Service, dest: Dest) -> None:
        self.reassign(svc)

    def del_dest(self, svc: Service, dest: Dest) -> None:
        self.reassign(svc)

    def upd_dest(self, svc: Service, dest: Dest) -> None:
        self.reassign(svc)

    def probe_order(self, svc: Service, pkt: PacketInfo) -> list[int]:
        """The buckets the fallback lookup reads, in order (first the home bucket)."""
        port = packet_port(pkt, bool(svc.flags & IP_VS_SVC_F_SCHED_SH_PORT))
        ihash = sh_hashkey(svc.family, pkt.saddr, port, 0)
        order = [ihash]
        for offset in range(SH_TAB_SIZE):
            roffset = (offset + ihash) % SH_TAB_SIZE
            order.append(sh_hashkey(svc.family, pkt.saddr, port, roffset))
        return order

    def schedule(self, svc: Service, pkt: PacketInfo) -> Dest | None:
        port = packet_port(pkt, bool(svc.flags & IP_VS_SVC_F_SCHED_SH_PORT))
        ihash = sh_hashkey(svc.family, pkt.saddr, port, 0)
        dest = self.buckets[ihash]
        if not svc.flags & IP_VS_SVC_F_SCHED_SH_FALLBACK:
            return None if dest is None or is_unavailable(dest) else dest
        if dest is None:
            return None
        if not is_unavailable(dest):
            return dest
        for offset in range(SH_TAB_SIZE):
            roffset = (offset + ihash) % SH_TAB_SIZE
            dest = self.buckets[sh_hashkey(svc.family, pkt.saddr, port, roffset)]
            if dest is None:
                break
            if not is_unavailable(dest):
                return dest
        return None
