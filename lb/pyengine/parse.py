"""Bounds-checked IPv4/TCP/UDP/ICMP parsing: checks 1-6 of docs/fastpath.md ("Order of checks").

`parse_packet` either returns a `ParsedPacket` (everything the connection and
service lookups need; for ICMP only the addresses, the engine examines the rest)
or a `Rejection` naming the verdict and reason the document prescribes. Nothing
here reads past `len(packet)` or past the IPv4 total length: bytes after the
total length (link padding) are ignored.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

from lb.engine import Action, Reason, Verdict
from lb.pyengine.csum import internet_checksum

IPV4_MIN_HEADER_LEN = 20  # bytes (IHL 5)
TCP_MIN_HEADER_LEN = 20  # bytes (data offset 5)
UDP_HEADER_LEN = 8  # bytes
ICMP_HEADER_LEN = 8  # bytes: type, code, checksum, 4 bytes depending on the type

IPPROTO_ICMP = 1
IPPROTO_TCP = 6
IPPROTO_UDP = 17

IP_FLAG_MF = 0x2000  # "more fragments" bit of the flags/fragment-offset word
IP_FRAGMENT_OFFSET_MASK = 0x1FFF  # in units of 8 bytes

TCP_FIN = 0x01
TCP_SYN = 0x02
TCP_RST = 0x04
TCP_ACK = 0x10

_IPV4_FIXED = struct.Struct("!BBHHHBBH4s4s")
_PORTS = struct.Struct("!HH")
_TCP_FIXED = struct.Struct("!HHIIBBH")  # ports, seq, ack, data offset, flags, window


@dataclass(frozen=True, slots=True)
class ParsedPacket:
    """The fields of a well-formed, unfragmented IPv4 TCP, UDP or ICMP packet."""

    proto: int  # IPPROTO_TCP, IPPROTO_UDP or IPPROTO_ICMP (>= 8 ICMP bytes present)
    saddr: bytes  # 4 bytes, network order
    daddr: bytes  # 4 bytes, network order
    sport: int  # 0 for ICMP
    dport: int  # 0 for ICMP
    tcp_flags: int  # TCP flags byte (FIN/SYN/RST/PSH/ACK/URG/...); 0 otherwise
    tcp_seq: int  # TCP sequence number; 0 otherwise
    ip_header_len: int  # IHL * 4, bytes
    total_length: int  # IPv4 total length, bytes (what IPVS counts in inbytes)
    tcp_ack: int = 0  # TCP acknowledgment number
    tcp_win: int = 0  # TCP window (unscaled)
    tcp_doff: int = 0  # TCP header length, bytes
    payload_len: int = 0  # TCP/UDP payload bytes (up to the IP total length)


@dataclass(frozen=True, slots=True)
class Rejection:
    """A packet that never reaches the connection table, and what to do with it."""

    action: Action


def _reject(verdict: Verdict, reason: Reason) -> Rejection:
    return Rejection(Action(verdict, reason))


NOT_IPV4 = _reject(Verdict.ACCEPT, Reason.NOT_IPV4)
MALFORMED = _reject(Verdict.DROP, Reason.MALFORMED)
BAD_CSUM = _reject(Verdict.DROP, Reason.BAD_CSUM)
FRAGMENT = _reject(Verdict.DROP, Reason.FRAGMENT)
NOT_LB_PROTO = _reject(Verdict.ACCEPT, Reason.NOT_LB_PROTO)


def parse_packet(packet: bytes) -> ParsedPacket | Rejection:
    """Apply checks 1-6 of docs/fastpath.md to `packet` (an IPv4 packet without L2 header)."""
    length = len(packet)
    if length < 1:
        return MALFORMED
    version = packet[0] >> 4
    if length < IPV4_MIN_HEADER_LEN or version != 4:
        return NOT_IPV4 if version == 6 else MALFORMED

    (ver_ihl, _tos, total_length, _ident, frag_word, _ttl, proto, _csum, saddr, daddr) = (
        _IPV4_FIXED.unpack_from(packet, 0)
    )
    header_len = (ver_ihl & 0x0F) * 4
    if (
        header_len < IPV4_MIN_HEADER_LEN
        or header_len > length
        or total_length < header_len
        or total_length > length
    ):
        return MALFORMED
    if internet_checksum(packet[:header_len]) != 0:
        return BAD_CSUM
    if frag_word & (IP_FLAG_MF | IP_FRAGMENT_OFFSET_MASK):
        return FRAGMENT

    payload_len = total_length - header_len
    if proto == IPPROTO_TCP:
        if payload_len < TCP_MIN_HEADER_LEN:
            return MALFORMED
        data_offset = packet[header_len + 12] >> 4
        if data_offset < 5 or data_offset * 4 > payload_len:
            return MALFORMED
        sport, dport, seq, ack, _doff, flags, win = _TCP_FIXED.unpack_from(packet, header_len)
        return ParsedPacket(proto, saddr, daddr, sport, dport, flags, seq, header_len, total_length, ack, win,
                            data_offset * 4, payload_len - data_offset * 4)
    if proto == IPPROTO_UDP:
        if payload_len < UDP_HEADER_LEN:
            return MALFORMED
        udp_length = int.from_bytes(packet[header_len + 4:header_len + 6], "big")
        if udp_length < UDP_HEADER_LEN or udp_length > payload_len:
            return MALFORMED  # RFC 768: the length covers header and data (the receiver drops it: short_packet)
        sport, dport = _PORTS.unpack_from(packet, header_len)
        return ParsedPacket(proto, saddr, daddr, sport, dport, 0, 0, header_len, total_length,
                            payload_len=payload_len - UDP_HEADER_LEN)
    if proto == IPPROTO_ICMP:
        if payload_len < ICMP_HEADER_LEN:
            return MALFORMED
        return ParsedPacket(proto, saddr, daddr, 0, 0, 0, 0, header_len, total_length)
    return NOT_LB_PROTO


def tcp_options(buf: bytes | bytearray, th: int, doff: int) -> Iterator[tuple[int, int, int]]:
    """(kind, length, offset from th) of each TCP option of the header at buf[th:th+doff], as
    the C core's lb_tcp_opt_next: NOPs skipped, stop at EOL or a malformed length."""
    i = 20
    while i < doff:
        kind = buf[th + i]
        if kind == 0:
            return
        if kind == 1:
            i += 1
            continue
        if i + 1 >= doff:
            return
        length = buf[th + i + 1]
        if length < 2 or i + length > doff:
            return
        yield kind, length, i
        i += length
