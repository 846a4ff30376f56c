"""mh: Maglev hashing (ip_vs_mh.c), a lookup table of 4093 entries (CONFIG_IP_VS_MH_TAB_INDEX=12).

Keys are fixed, so every kernel (and lbd) builds the same table from the same destination list:
hash1 = (2654435761, 2654435761), hash2 = (2654446892, 2654446892), each a pair of 64-bit key
words for hsiphash (SipHash-1-3 on x86_64, see hashing.py).

hashkey(addr, port, key, offset) = hsiphash of the 32-bit value offset + port + fold(addr)
(32-bit wrap-around), hashed as its 4 little-endian bytes.

Weights: mh uses last_weight (the latest NON-ZERO weight), not weight. g = gcd of the positive
last_weights; rshift = max(0, fls(max_last_weight / g) - 6); a destination's turns per round =
(last_weight / g) >> rshift, or 1 when that is 0 but last_weight is not, or 0 for
last_weight 0 (a destination ADDED with weight 0, which takes no entry at all).
Editing a weight to 0 keeps the destination's entries (its last_weight is unchanged); it is
only unavailable at lookup time. No positive last_weight at all: the table is emptied.

Population (ip_vs_mh_permutate + ip_vs_mh_populate, on init and every add/del/upd): each
destination, in list order, gets offset = hashkey(dest addr, dest port, hash1) % 4093 and
skip = hashkey(dest addr, dest port, hash2) % 4092 + 1, and a cursor perm = offset. Rounds go
through the list in order; each destination with turns >= 1 takes `turns` entries, each
time the next free entry of its sequence perm, perm + skip, ... (mod 4093), until the table is
full. Every entry is rewritten on every rebuild. More than 4093 destinations: the rebuild is
refused (-EINVAL) and the old table stays (the add/edit itself still succeeds).

Lookup: entry hashkey(saddr, port, hash1) % 4093 with port = source port only with mh-port
(TCP/UDP/SCTP), else 0; unavailable (weight <= 0 or overloaded) means no destination, unless
mh-fallback: then offsets 0..4092 are tried with roffset = (offset + ihash) % 4093 and entry
hashkey(saddr, port, hash1, roffset) % 4093 (a fresh hash per offset, not a linear probe).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, ClassVar, Final

from .flags import IP_VS_SVC_F_SCHED_MH_FALLBACK, IP_VS_SVC_F_SCHED_MH_PORT
from .hashing import U32, IPAddress, fold_address, hsiphash_u32_native
from .kernel_config import MH_TAB_BITS, MH_TAB_SIZE
from .sched_base import Scheduler, c_div
from .sched_sh import is_unavailable, packet_port

if TYPE_CHECKING:
    from .model import Dest, PacketInfo, Service

MH_HASH1: Final = (2654435761, 2654435761)
MH_HASH2: Final = (2654446892, 2654446892)


def mh_hashkey(family: int, addr: IPAddress, port: int, key: tuple[int, int], offset: int = 0) -> int:
    """ip_vs_mh_hashkey(): a 32-bit hsiphash value."""
    value = (offset + port + fold_address(family, addr)) & U32
    return hsiphash_u32_native(value, key)


def fls(x: int) -> int:
    """The kernel's fls(): 1-based index of the highest set bit, 0 for 0."""
    return x.bit_length()


def gcd_last_weight(dests: list[Dest]) -> int:
    """ip_vs_mh_gcd_weight(): gcd of the positive last_weights, 0 when there are none."""
    g = 0
    for dest in dests:
        if dest.last_weight > 0:
            g = math.gcd(dest.last_weight, g) if g > 0 else dest.last_weight
    return g


def shift_weight(dests: list[Dest], g: int) -> int:
    """ip_vs_mh_shift_weight(): how far to shift weights so the largest fits in 6 bits."""
    if g < 1:
        return 0
    mw = c_div(max((d.last_weight for d in dests), default=0), g)
    return max(fls(mw) - MH_TAB_BITS, 0)


class MhScheduler(Scheduler):
    name: ClassVar[str] = "mh"

    def __init__(self) -> None:
        self.lookup: list[Dest | None] = [None] * MH_TAB_SIZE
        self.gcd = 0
        self.rshift = 0

    def turns(self, dest: Dest) -> int:
        lw = dest.last_weight
        return (c_div(lw, self.gcd) >> self.rshift) or int(lw != 0)

    def reassign(self, svc: Service) -> bool:
        """ip_vs_mh_reassign(); False when refused (more destinations than entries)."""
        dests = svc.destinations
        if len(dests) > MH_TAB_SIZE:
            return False
        if self.gcd < 1:
            self.lookup = [None] * MH_TAB_SIZE
            return True
        setups = []
        for dest in dests:
            offset = mh_hashkey(svc.family, dest.addr, dest.port, MH_HASH1) % MH_TAB_SIZE
            skip = mh_hashkey(svc.family, dest.addr, dest.port, MH_HASH2) % (MH_TAB_SIZE - 1) + 1
            setups.append([offset, skip, self.turns(dest)])  # perm starts at offset
        taken = [False] * MH_TAB_SIZE
        filled = 0
        while True:
            for index, dest in enumerate(dests):
                perm, skip, turns = setups[index]
                for _ in range(turns):
                    while taken[perm]:
                        perm += skip
                        if perm >= MH_TAB_SIZE:
                            perm -= MH_TAB_SIZE
                    taken[perm] = True
                    self.lookup[perm] = dest
                    setups[index][0] = perm
                    filled += 1
                    if filled == MH_TAB_SIZE:
                        return True

    def _dest_changed(self, svc: Service) -> None:
        self.gcd = gcd_last_weight(svc.destinations)
        self.rshift = shift_weight(svc.destinations, self.gcd)
        self.reassign(svc)

    def init_service(self, svc: Service) -> None:
        from .model import IpvsError

        self.gcd = gcd_last_weight(svc.destinations)
        self.rshift = shift_weight(svc.destinations, self.gcd)
        if not self.reassign(svc):
            raise IpvsError("EINVAL", f"mh: more than {MH_TAB_SIZE} destinations")

    def done_service(self, svc: Service) -> None:
        self.lookup = [None] * MH_TAB_SIZE

    def add_dest(self, svc: Service, dest: Dest) -> None:
        self._dest_changed(svc)

    def del_dest(self, svc: Service, dest: Dest) -> None:
        self._dest_changed(svc)

    def upd_dest(self, svc: Service, dest: Dest) -> None:
        self._dest_changed(svc)

    def schedule(self, svc: Service, pkt: PacketInfo) -> Dest | None:
        port = packet_port(pkt, bool(svc.flags & IP_VS_SVC_F_SCHED_MH_PORT))
        ihash = mh_hashkey(svc.family, pkt.saddr, port, MH_HASH1) % MH_TAB_SIZE
        dest = self.lookup[ihash]
        if not svc.flags & IP_VS_SVC_F_SCHED_MH_FALLBACK:
            return None if dest is None or is_unavailable(dest) else dest
        if dest is None:
            return None
        if not is_unavailable(dest):
            return dest
        for offset in range(MH_TAB_SIZE):
            roffset = (offset + ihash) % MH_TAB_SIZE
            dest = self.lookup[mh_hashkey(svc.family, pkt.saddr, port, MH_HASH1, roffset) % MH_TAB_SIZE]
            if dest is None:
                break
            if not is_unavailable(dest):
                return dest
        return None
