"""Maglev hashing, exactly as kernel ip_vs_mh.c (native/src/sched_mh.c).

Per-service state: a lookup table of LB_MH_TAB_SIZE = 4093 entries, rebuilt on every change
(init, add, delete, edit), never per packet, with ip_vs_mh.c's fixed hsiphash keys, so that every
kernel and lbd director with the same destination list builds the same table.

Rebuild: g = gcd of the positive last_weights (a destination's latest non-zero weight),
rshift = max(0, fls(max last_weight / g) - LB_MH_TAB_BITS), turns = (last_weight / g) >> rshift or,
when that is 0, 1 for a non-zero last_weight (0: a destination added with weight 0 takes no entry).
Each destination's sequence starts at hash1(addr, port) % 4093 and steps by
hash2(addr, port) % 4092 + 1; rounds walk the list in order, each destination taking `turns` entries
(the next free one of its sequence each time) until all are taken. No positive last_weight: the
table is empty. More destinations than entries: the rebuild is refused and the old table kept (the
kernel's -EINVAL, ignored by add/edit/delete, returned by init_service).

Lookup: entry hash1(ntohl(saddr) + port) % 4093, port being the source port only with mh-port
(flag-2); unavailable (weight 0 or OVERLOADED) means none, unless mh-fallback (flag-1): then the
entries hash1(..., offset (k + h) % 4093) for k = 0..4092, the first available, stopping at an
empty entry.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from lb import consts as C
from lb.engine import EngineError
from lb.pyengine.conn import Destination
from lb.pyengine.parse import ParsedPacket
from lb.pyengine.sched import SchedService, Scheduler, state_of
from lb.pyengine.schedhash import (
    FLAG_FALLBACK,
    FLAG_PORT,
    MH_HASH1,
    MH_HASH2,
    U32,
    addr_value,
    client_port,
    flags_of,
    hash_pick,
    hsiphash_u32,
)

MH_TAB_SIZE = C.LB_MH_TAB_SIZE
MH_TAB_BITS = C.LB_MH_TAB_BITS


@dataclass(slots=True)
class _Table:
    lookup: list[Destination | None] = field(default_factory=lambda: [None] * MH_TAB_SIZE)


def mh_hashkey(addr: int, port: int, key: tuple[int, int], offset: int = 0) -> int:
    """ip_vs_mh_hashkey() of an IPv4 address value (ntohl) and a host-order port: a 32-bit sum."""
    return hsiphash_u32((offset + port + addr) & U32, key)


def _rebuild(service: SchedService) -> bool:
    """ip_vs_mh_reassign(); False (table unchanged) when there are more destinations than entries."""
    dests = service.dests
    if len(dests) > MH_TAB_SIZE:
        return False
    lookup = state_of(service, _Table).lookup
    positive = [d.last_weight for d in dests if d.last_weight > 0]
    if not positive:
        lookup[:] = [None] * MH_TAB_SIZE
        return True
    g = math.gcd(*positive)
    rshift = max((max(d.last_weight for d in dests) // g).bit_length() - MH_TAB_BITS, 0)
    setups = []  # [perm, skip, turns] per destination, in list order
    for dest in dests:
        addr, port = addr_value(dest.addr), dest.port
        turns = (dest.last_weight // g) >> rshift or int(dest.last_weight != 0)
        setups.append([mh_hashkey(addr, port, MH_HASH1) % MH_TAB_SIZE,
                       mh_hashkey(addr, port, MH_HASH2) % (MH_TAB_SIZE - 1) + 1, turns])
    taken = [False] * MH_TAB_SIZE
    filled = 0
    while True:
        for dest, setup in zip(dests, setups, strict=True):
            perm, skip, turns = setup
            for _ in range(turns):
                while taken[perm]:
                    perm += skip
                    if perm >= MH_TAB_SIZE:
                        perm -= MH_TAB_SIZE
                taken[perm] = True
                lookup[perm] = dest
                filled += 1
                if filled == MH_TAB_SIZE:
                    return True
            setup[0] = perm


class MaglevHashing(Scheduler):
    name = "mh"

    def init_service(self, service: SchedService) -> None:
        service.sched_data = _Table()
        if not _rebuild(service):
            service.sched_data = None
            raise EngineError("EINVAL", f"mh: more than {MH_TAB_SIZE} destinations")

    def add_dest(self, service: SchedService, dest: Destination, index: int) -> None:
        _rebuild(service)

    def del_dest(self, service: SchedService, dest: Destination, index: int) -> None:
        if not _rebuild(service):
            # The old table stays, but must not name the deleted destination (sched_mh.c).
            lookup = state_of(service, _Table).lookup
            lookup[:] = [None if entry is dest else entry for entry in lookup]

    def upd_dest(self, service: SchedService, dest: Destination) -> None:
        _rebuild(service)

    def schedule(self, service: SchedService, parsed: ParsedPacket) -> Destination | None:
        flags = flags_of(service)
        addr = addr_value(parsed.saddr)
        port = client_port(parsed, bool(flags & FLAG_PORT))
        return hash_pick(state_of(service, _Table).lookup,
                         lambda offset: mh_hashkey(addr, port, MH_HASH1, offset) % MH_TAB_SIZE,
                         bool(flags & FLAG_FALLBACK))


def table_of(service: SchedService) -> list[Destination | None]:
    """The lookup table (tests compare it with tests/oracles')."""
    return list(state_of(service, _Table).lookup)


SCHEDULER = MaglevHashing()
