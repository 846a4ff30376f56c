"""Destination hashing, exactly as kernel ip_vs_dh.c (native/src/sched_dh.c).

Per-service state: 2^LB_DH_TAB_BITS = 256 buckets, rebuilt when a destination is added or deleted
(the kernel's dh has no upd_dest hook: a weight edit changes no bucket): one bucket per destination
in list order, cyclically, weights playing no part; an empty list empties the table.

A packet's bucket is hash_32(ntohl(daddr), 8), its destination address only (no port, no flag);
its destination is the choice unless unavailable (weight 0 or OVERLOADED): then none, there is no
fallback.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lb import consts as C
from lb.pyengine.conn import Destination
from lb.pyengine.parse import ParsedPacket
from lb.pyengine.sched import SchedService, Scheduler, state_of
from lb.pyengine.schedhash import addr_value, hash_32

DH_TAB_BITS = C.LB_DH_TAB_BITS
DH_TAB_SIZE = 1 << DH_TAB_BITS


@dataclass(slots=True)
class _Buckets:
    dests: list[Destination | None] = field(default_factory=lambda: [None] * DH_TAB_SIZE)


class DestinationHashing(Scheduler):
    name = "dh"

    def init_service(self, service: SchedService) -> None:
        service.sched_data = _Buckets()
        self._reassign(service)

    def add_dest(self, service: SchedService, dest: Destination, index: int) -> None:
        self._reassign(service)

    def del_dest(self, service: SchedService, dest: Destination, index: int) -> None:
        self._reassign(service)

    @staticmethod
    def _reassign(service: SchedService) -> None:
        dests = service.dests
        state_of(service, _Buckets).dests[:] = [dests[b % len(dests)] if dests else None for b in range(DH_TAB_SIZE)]

    def schedule(self, service: SchedService, parsed: ParsedPacket) -> Destination | None:
        dest = state_of(service, _Buckets).dests[hash_32(addr_value(parsed.daddr), DH_TAB_BITS)]
        return dest if dest is not None and dest.eligible() else None


SCHEDULER = DestinationHashing()
