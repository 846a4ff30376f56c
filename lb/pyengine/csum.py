"""Internet checksums (RFC 1071) and incremental updates (RFC 1624), as native/src/csum.c.

The incremental updates are reproduced step by step, not replaced by a full
recomputation: one's-complement arithmetic has two zeros (0x0000 and 0xffff),
and which one a rewritten packet carries depends on how the checksum was
obtained. Both engines must emit the same bytes.
"""

from __future__ import annotations

import struct


def csum_partial(data: bytes | bytearray | memoryview, start: int = 0) -> int:
    """The one's-complement sum of `data` as 16-bit big-endian words (odd byte padded right), folded to 16
    bits with end-around carry, plus `start` (not yet complemented)."""
    n = len(data)
    total = start
    if n >= 2:
        total += sum(struct.unpack_from(f"!{n // 2}H", data, 0))
    if n % 2:
        total += data[n - 1] << 8
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def csum_fold(total: int) -> int:
    """Fold a sum to 16 bits and complement it (lb_csum_fold)."""
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def internet_checksum(data: bytes | bytearray | memoryview) -> int:
    """RFC 1071 checksum of `data`; 0 over a header whose checksum field is right."""
    return csum_fold(csum_partial(data))


def get16(buf: bytes | bytearray, off: int) -> int:
    return (buf[off] << 8) | buf[off + 1]


def put16(buf: bytearray, off: int, value: int) -> None:
    buf[off] = (value >> 8) & 0xFF
    buf[off + 1] = value & 0xFF


def csum_replace2(buf: bytearray, field: int, old_word: int, new_word: int) -> None:
    """RFC 1624 eqn. 3 on the checksum at buf[field:field+2]: HC' = ~(~HC + ~m + m') (lb_csum_replace2)."""
    total = (~get16(buf, field) & 0xFFFF) + (~old_word & 0xFFFF) + new_word
    put16(buf, field, csum_fold(total))


def csum_replace4(buf: bytearray, field: int, old4: bytes, new4: bytes) -> None:
    """The same for a 32-bit value given as 4 bytes in network order (lb_csum_replace4)."""
    total = (~get16(buf, field) & 0xFFFF)
    total += ~((old4[0] << 8) | old4[1]) & 0xFFFF
    total += ~((old4[2] << 8) | old4[3]) & 0xFFFF
    total += (new4[0] << 8) | new4[1]
    total += (new4[2] << 8) | new4[3]
    put16(buf, field, csum_fold(total))


def ip_header_checksum(buf: bytearray, ihl: int, off: int = 0) -> None:
    """Recompute the IPv4 header checksum of the header at buf[off:off+ihl] in place."""
    buf[off + 10] = buf[off + 11] = 0
    put16(buf, off + 10, internet_checksum(bytes(buf[off : off + ihl])))


def tcp_checksum_full(buf: bytearray, ihl: int, total_len: int) -> None:
    """Recompute the TCP checksum (pseudo-header + segment) of the IPv4 packet in buf (tcp_csum_full)."""
    th = ihl
    tcp_len = total_len - ihl
    buf[th + 16] = buf[th + 17] = 0
    total = csum_partial(bytes(buf[12:20])) + 6 + tcp_len
    total = csum_partial(bytes(buf[th : th + tcp_len]), total)
    put16(buf, th + 16, csum_fold(total))
