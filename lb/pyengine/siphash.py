"""SipHash (Aumasson & Bernstein) on Python ints, as native/include/lb_siphash.h: one copy of the
rounds for both users, SipHash-2-4 of the SYN cookies (synproxy) and the kernel's hsiphash() on
x86_64, SipHash-1-3 (mh, through schedhash)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

U64: Final = 0xFFFFFFFFFFFFFFFF


def _rotl(x: int, b: int) -> int:
    return ((x << b) | (x >> (64 - b))) & U64


def siphash_words(k0: int, k1: int, words: Iterable[int], c_rounds: int, d_rounds: int) -> int:
    """SipHash-c-d under the key (k0, k1) of a message given as its 64-bit little-endian words, the
    last one holding the tail bytes and the message length in its top byte; the 64-bit hash."""
    v0 = 0x736F6D6570736575 ^ k0
    v1 = 0x646F72616E646F6D ^ k1
    v2 = 0x6C7967656E657261 ^ k0
    v3 = 0x7465646279746573 ^ k1

    def rounds(n: int) -> None:
        nonlocal v0, v1, v2, v3
        for _ in range(n):
            v0 = (v0 + v1) & U64
            v1 = _rotl(v1, 13) ^ v0
            v0 = _rotl(v0, 32)
            v2 = (v2 + v3) & U64
            v3 = _rotl(v3, 16) ^ v2
            v0 = (v0 + v3) & U64
            v3 = _rotl(v3, 21) ^ v0
            v2 = (v2 + v1) & U64
            v1 = _rotl(v1, 17) ^ v2
            v2 = _rotl(v2, 32)

    for m in words:
        v3 ^= m
        rounds(c_rounds)
        v0 ^= m
    v2 ^= 0xFF
    rounds(d_rounds)
    return v0 ^ v1 ^ v2 ^ v3


def message_words(data: bytes) -> list[int]:
    """data as SipHash's 64-bit words: every whole 8 bytes little-endian, then the tail bytes with
    the length (mod 256) in the top byte."""
    n = len(data)
    end = n - n % 8
    words = [int.from_bytes(data[i : i + 8], "little") for i in range(0, end, 8)]
    words.append(((n & 0xFF) << 56) | int.from_bytes(data[end:], "little"))
    return words


def siphash24(k0: int, k1: int, data: bytes) -> int:
    """SipHash-2-4 of data (native/src/synproxy.c's lb_siphash)."""
    return siphash_words(k0, k1, message_words(data), 2, 4)
