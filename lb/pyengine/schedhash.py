"""What the hashing schedulers (sh, dh, mh) share, as native/include/lb_sched.h and sched_mh.c
compute it: the kernel's hash_32() and hsiphash(), the client's port, and the flag bits.

Values and table sizes come from lb_api.h (lb.consts). Addresses are IPv4 (lbd's services):
the kernel folds an IPv4 address to ntohl(addr), its big-endian value.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from lb import consts as C
from lb.pyengine.conn import Destination
from lb.pyengine.parse import IPPROTO_TCP, IPPROTO_UDP, ParsedPacket
from lb.pyengine.sched import SchedService
from lb.pyengine.siphash import siphash_words

U32: Final = 0xFFFFFFFF
GOLDEN_RATIO_32: Final = 0x61C88647

# ServiceSpec.sched_flags bits (flag-1, flag-2: lb.model), as sh and mh read them.
FLAG_FALLBACK: Final = 1  # the kernel's IP_VS_SVC_F_SCHED1: sh-fallback / mh-fallback
FLAG_PORT: Final = 2  # IP_VS_SVC_F_SCHED2: sh-port / mh-port

MH_HASH1: Final = (C.LB_MH_HASH1_KEY, C.LB_MH_HASH1_KEY)
MH_HASH2: Final = (C.LB_MH_HASH2_KEY, C.LB_MH_HASH2_KEY)


def hash_32(value: int, bits: int) -> int:
    """include/linux/hash.h's hash_32(): the top `bits` bits of the 32-bit product with GOLDEN_RATIO_32."""
    return ((value & U32) * GOLDEN_RATIO_32 & U32) >> (32 - bits)


def addr_value(addr: bytes) -> int:
    """ntohl() of a 4-byte network-order address."""
    return int.from_bytes(addr, "big")


def flags_of(service: SchedService) -> int:
    flags: int = service.spec.sched_flags
    return flags


def client_port(parsed: ParsedPacket, use_port: bool) -> int:
    """ip_vs_{sh,mh}_get_port(): the source port (TCP/UDP) when the port flag is set, else 0."""
    if use_port and parsed.proto in (IPPROTO_TCP, IPPROTO_UDP):
        return parsed.sport
    return 0


def hash_pick(table: list[Destination | None], slot: Callable[[int], int], fallback: bool) -> Destination | None:
    """The choice of sh and mh (ip_vs_{sh,mh}_schedule + _get_fallback), as lb_sched_hash_pick in
    native/include/lb_sched.h: the client's entry ihash = slot(0) if its destination is available;
    none if the entry is empty, or unavailable without `fallback`; with it, the first available one
    of the entries slot((k + ihash) % len(table)) for every k, stopping at an empty entry. slot(offset)
    is the scheduler's hash of the client at that offset, an index into the table."""
    ihash = slot(0)
    dest = table[ihash]
    if dest is None:
        return None
    if dest.eligible():
        return dest
    if not fallback:
        return None
    size = len(table)
    for offset in range(size):
        dest = table[slot((offset + ihash) % size)]
        if dest is None:
            break
        if dest.eligible():
            return dest
    return None


def hsiphash_u32(value: int, key: tuple[int, int]) -> int:
    """The kernel's hsiphash(&v, 4, key) for a u32 v on x86_64: SipHash-1-3 (64-bit lanes; the
    "half" variant is only used on 32-bit kernels) over v's four little-endian bytes, low 32 bits:
    one message word, the length 4 in its top byte."""
    return siphash_words(key[0], key[1], ((4 << 56) | (value & U32),), 1, 3) & U32
