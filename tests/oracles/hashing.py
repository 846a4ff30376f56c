"""The hash functions IPVS's hashing schedulers use, as the 6.1 kernel computes them on x86_64.

- hash_32(): include/linux/hash.h. x86 has no arch-specific hash, so it is the generic
  multiplicative hash: the 32-bit product with 0x61C88647 (the golden ratio constant), keeping
  the top `bits` bits.
- fold_address(): sh, dh, mh, lblc and lblcr reduce an address to one 32-bit word first. The
  kernel reads the address as a union of four big-endian words; for an IPv4 service only the
  first word counts, for an IPv6 service the four words are XORed. The word is then converted
  to host order (ntohl), which is the same as reading it as a big-endian integer (a byte swap
  commutes with XOR). The *service's* family decides, even for a destination of the other
  family (mixed-family tunnel destinations): an IPv4 address sits in the first word with the
  other three zero, so for IPv4 addresses both ways give the same word.
- hsiphash(): lib/siphash.c. On 64-bit kernels the "half" SipHash is not HalfSipHash: it is
  SipHash-1-3 on 64-bit words with a 128-bit key made of the two `unsigned long` key words,
  returning the low 32 bits of the usual v0^v1^v2^v3 finalisation. x86_64 has efficient
  unaligned access, so hsiphash() always takes the byte-stream path (__hsiphash_unaligned):
  full little-endian 8-byte words, then the tail bytes little-endian in the final word whose top
  byte is the total length.
"""

from __future__ import annotations

import ipaddress
from typing import Final

from .kernel_config import IPV6_BUILT

U32: Final = 0xFFFFFFFF
U64: Final = 0xFFFFFFFFFFFFFFFF
GOLDEN_RATIO_32: Final = 0x61C88647

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def hash_32(value: int, bits: int) -> int:
    """The kernel's hash_32(val, bits): (val * GOLDEN_RATIO_32 mod 2**32) >> (32 - bits)."""
    return ((value & U32) * GOLDEN_RATIO_32 & U32) >> (32 - bits)


def address_words(addr: IPAddress) -> tuple[int, int, int, int]:
    """The address as the kernel's union nf_inet_addr holds it: four 32-bit words, each read
    big-endian (i.e. already ntohl'ed); an IPv4 address fills the first word only."""
    raw = addr.packed
    if len(raw) == 4:
        return (int.from_bytes(raw, "big"), 0, 0, 0)
    return (
        int.from_bytes(raw[0:4], "big"),
        int.from_bytes(raw[4:8], "big"),
        int.from_bytes(raw[8:12], "big"),
        int.from_bytes(raw[12:16], "big"),
    )


def fold_address(service_family: int, addr: IPAddress) -> int:
    """ntohl(addr_fold) of ip_vs_{sh,dh,mh,lblc,lblcr}_hashkey(): the first word for an IPv4
    service, the XOR of the four words for an IPv6 one (service_family is 4 or 6)."""
    words = address_words(addr)
    if service_family == 6 and IPV6_BUILT:
        return words[0] ^ words[1] ^ words[2] ^ words[3]
    return words[0]


def _rotl64(x: int, n: int) -> int:
    return ((x << n) | (x >> (64 - n))) & U64


def _sipround(v0: int, v1: int, v2: int, v3: int) -> tuple[int, int, int, int]:
    # One SipRound on 64-bit lanes (the SIPHASH_PERMUTATION of include/linux/siphash.h).
    v0 = (v0 + v1) & U64
    v1 = _rotl64(v1, 13) ^ v0
    v0 = _rotl64(v0, 32)
    v2 = (v2 + v3) & U64
    v3 = _rotl64(v3, 16) ^ v2
    v0 = (v0 + v3) & U64
    v3 = _rotl64(v3, 21) ^ v0
    v2 = (v2 + v1) & U64
    v1 = _rotl64(v1, 17) ^ v2
    v2 = _rotl64(v2, 32)
    return v0, v1, v2, v3


def siphash_c_d(data: bytes, key0: int, key1: int, c_rounds: int, d_rounds: int) -> int:
    """Generic SipHash-c-d over bytes, 64-bit result (key0/key1 are the little-endian halves of
    the 128-bit key). hsiphash() on 64-bit kernels is c=1, d=3 truncated to 32 bits; c=2, d=4 is
    the reference SipHash, used by the tests to check the permutation against published vectors."""
    v0 = 0x736F6D6570736575 ^ key0
    v1 = 0x646F72616E646F6D ^ key1
    v2 = 0x6C7967656E657261 ^ key0
    v3 = 0x7465646279746573 ^ key1
    full = len(data) - len(data) % 8
    for off in range(0, full, 8):
        m = int.from_bytes(data[off : off + 8], "little")
        v3 ^= m
        for _ in range(c_rounds):
            v0, v1, v2, v3 = _sipround(v0, v1, v2, v3)
        v0 ^= m
    b = ((len(data) & 0xFF) << 56) | int.from_bytes(data[full:], "little")
    v3 ^= b
    for _ in range(c_rounds):
        v0, v1, v2, v3 = _sipround(v0, v1, v2, v3)
    v0 ^= b
    v2 ^= 0xFF
    for _ in range(d_rounds):
        v0, v1, v2, v3 = _sipround(v0, v1, v2, v3)
    return (v0 ^ v1 ^ v2 ^ v3) & U64


def hsiphash(data: bytes, key: tuple[int, int]) -> int:
    """The kernel's hsiphash(data, len, key) on x86_64: SipHash-1-3, low 32 bits."""
    return siphash_c_d(data, key[0] & U64, key[1] & U64, 1, 3) & U32


def hsiphash_u32_native(value: int, key: tuple[int, int]) -> int:
    """hsiphash(&v, sizeof(v), key) for a 32-bit `unsigned int v` in x86_64 memory: its four
    bytes are little-endian, so the hashed message is value.to_bytes(4, "little")."""
    return hsiphash((value & U32).to_bytes(4, "little"), key)
