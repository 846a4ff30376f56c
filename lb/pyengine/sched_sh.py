"""Source hashing, exactly as kernel ip_vs_sh.c (native/src/sched_sh.c).

Per-service state: 2^LB_SH_TAB_BITS = 256 buckets, rebuilt on every change (init, add, delete,
edit), never per packet: walking the list cyclically from its head, each destination takes
`weight` consecutive buckets and at least one (the kernel moves on when ++count >= weight), until
every bucket is filled; an empty list empties the table.

A client's bucket is hash_32(port + ntohl(saddr), 8) with port its source port only with sh-port
(flag-2), else 0 (a 32-bit sum). The bucket's destination is the choice unless unavailable
(weight 0 or OVERLOADED): then none, or with sh-fallback (flag-1) the first available one of the
buckets (offset + 2 * hash) & 255 for offset 0..255, stopping at an empty bucket.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lb import consts as C
from lb.pyengine.conn import Destination
from lb.pyengine.parse import ParsedPacket
from lb.pyengine.sched import SchedService, Scheduler, state_of
from lb.pyengine.schedhash import FLAG_FALLBACK, FLAG_PORT, U32, addr_value, client_port, flags_of, hash_32, hash_pick

SH_TAB_BITS = C.LB_SH_TAB_BITS
SH_TAB_SIZE = 1 << SH_TAB_BITS
SH_TAB_MASK = SH_TAB_SIZE - 1


@dataclass(slots=True)
class _Buckets:
    dests: list[Destination | None] = field(default_factory=lambda: [None] * SH_TAB_SIZE)


def sh_hashkey(addr: int, port: int, offset: int) -> int:
    """ip_vs_sh_hashkey() of an IPv4 address value (ntohl) and a host-order port."""
    return (offset + hash_32((port + addr) & U32, SH_TAB_BITS)) & SH_TAB_MASK


class SourceHashing(Scheduler):
    name = "sh"

    def init_service(self, service: SchedService) -> None:
        service.sched_data = _Buckets()
        self._reassign(service)

    def add_dest(self, service: SchedService, dest: Destination, index: int) -> None:
        self._reassign(service)

    def del_dest(self, service: SchedService, dest: Destination, index: int) -> None:
        self._reassign(service)

    def upd_dest(self, service: SchedService, dest: Destination) -> None:
        self._reassign(service)

    @staticmethod
    def _reassign(service: SchedService) -> None:
        buckets = state_of(service, _Buckets).dests
        dests = service.dests
        if not dests:
            buckets[:] = [None] * SH_TAB_SIZE
            return
        index = count = 0
        for bucket in range(SH_TAB_SIZE):
            dest = dests[index]
            buckets[bucket] = dest
            count += 1
            if count >= dest.weight:
                index = (index + 1) % len(dests)
                count = 0

    def schedule(self, service: SchedService, parsed: ParsedPacket) -> Destination | None:
        flags = flags_of(service)
        addr = addr_value(parsed.saddr)
        port = client_port(parsed, bool(flags & FLAG_PORT))
        return hash_pick(state_of(service, _Buckets).dests, lambda offset: sh_hashkey(addr, port, offset),
                         bool(flags & FLAG_FALLBACK))


SCHEDULER = SourceHashing()
