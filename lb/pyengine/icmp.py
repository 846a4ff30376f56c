"""ICMP: the port unreachable the director originates, and ICMP errors about its connections.

1. ICMP errors about a connection (docs/fastpath.md "ICMP"; IPVS ip_vs_in_icmp):
`related_connection_key` finds the entry an ICMP error refers to. Only errors
(type 3, 4, 11, 12) quoting an IPv4 header (version 4, IHL >= 5) followed by at
least 8 transport bytes of TCP or UDP, not a later fragment (offset != 0; MF
alone is fine), qualify. The quote is the ICMP payload after its 8-byte header,
up to the outer total length; its own total length and checksum are not checked.
The quoted packet travelled VIP:vport -> CIP:cport (a reply), so the entry's key
is its reverse: (proto, quoted daddr, quoted dport, quoted saddr, quoted sport).

2. The errors the director originates: port unreachable for R_NO_DEST (IPVS
ip_vs_leave -> icmp_send) and fragmentation needed for R_FRAG_NEEDED (tunnel).

3. The translation of ICMP errors about FULLNAT connections (`translate`).

Exact bytes (the C core builds the same, byte for byte):

  IPv4 header, 20 bytes, no options:
    version 4, IHL 5, TOS = (original TOS & 0x1e) | 0xc0 (the kernel's __icmp_send:
    RT_TOS | IPTOS_PREC_INTERNETCONTROL), total length = 20 + 8 + len(quote),
    identification 0, flags 0 (DF clear), fragment offset 0, TTL 64,
    protocol 1 (ICMP), header checksum (RFC 1071 over these 20 bytes),
    source = the original packet's destination (the VIP),
    destination = the original packet's source (the client).
  ICMP, 8 bytes: type 3 (destination unreachable), code 3 (port unreachable)
    or 4 (fragmentation needed), checksum (RFC 1071 over the ICMP header and
    quote), 2 unused bytes = 0, 2 bytes next-hop MTU (code 4; 0 for code 3).
  quote: the original packet exactly as received, IP header (options included)
    first, as much of it as keeps the error within 576 bytes: its first 548
    bytes, all of it when shorter (__icmp_send: "return as much as we can
    without exceeding 576 bytes", RFC 1812 4.3.2.3). Link padding is never quoted.

When sent through a raw IPPROTO_RAW socket Linux fills in a zero IP id; that
happens after the engine and is not part of this contract.
"""

from __future__ import annotations

import struct

from lb.pyengine.csum import csum_replace2, get16, internet_checksum, ip_header_checksum, put16
from lb.pyengine.parse import IPPROTO_ICMP

ICMP_DEST_UNREACH = 3
ICMP_PORT_UNREACH = 3
ICMP_FRAG_NEEDED = 4
ICMP_TIME_EXCEEDED = 11
ANSWER_TTL = 64
ICMP_ERROR_MAX = 576  # bytes: an error quotes as much of the packet as fits in this (__icmp_send)
QUOTE_MAX = ICMP_ERROR_MAX - 20 - 8
TOS_MASK = 0x1E  # RT_TOS
PREC_INTERNETCONTROL = 0xC0

ICMP_ERROR_TYPES = frozenset({3, 4, 11, 12})  # dest unreachable, source quench, time exceeded, parameter problem
_QUOTED_PROTOS = frozenset({6, 17})  # TCP, UDP
_MIN_QUOTED_TRANSPORT = 8  # bytes: both ports (and the TCP sequence number / UDP length+checksum)

_IPV4_HEADER = struct.Struct("!BBHHHBBH4s4s")
_ICMP_HEADER = struct.Struct("!BBHI")


def _unreachable(packet: bytes, ip_header_len: int, total_length: int, code: int, mtu: int,
                 quote_ttl_dec: bool = False) -> bytes:
    return _error(packet, ip_header_len, total_length, ICMP_DEST_UNREACH, code, mtu, packet[16:20], quote_ttl_dec)


def _error(packet: bytes, ip_header_len: int, total_length: int, icmp_type: int, code: int, mtu: int,
           source: bytes, quote_ttl_dec: bool = False) -> bytes:
    quote = packet[:min(total_length, QUOTE_MAX)]
    if quote_ttl_dec and quote[8] > 1:
        q = bytearray(quote)
        old_word = get16(q, 8)
        q[8] -= 1
        csum_replace2(q, 10, old_word, get16(q, 8))
        quote = bytes(q)
    client, vip = packet[12:16], source

    icmp = _ICMP_HEADER.pack(icmp_type, code, 0, mtu & 0xFFFF) + quote
    icmp = icmp[:2] + struct.pack("!H", internet_checksum(icmp)) + icmp[4:]

    total = _IPV4_HEADER.size + len(icmp)
    tos = (packet[1] & TOS_MASK) | PREC_INTERNETCONTROL
    header = _IPV4_HEADER.pack(0x45, tos, total, 0, 0, ANSWER_TTL, IPPROTO_ICMP, 0, vip, client)
    header = header[:10] + struct.pack("!H", internet_checksum(header)) + header[12:]
    return header + icmp


def port_unreachable(packet: bytes, ip_header_len: int, total_length: int) -> bytes:
    """The answer to `packet` (a parsed IPv4 packet whose header is `ip_header_len` bytes)."""
    return _unreachable(packet, ip_header_len, total_length, ICMP_PORT_UNREACH, 0)


def frag_needed(packet: bytes, ip_header_len: int, total_length: int, mtu: int) -> bytes:
    """ICMP fragmentation needed (next-hop MTU `mtu`) answering `packet`, from its destination (the VIP),
    quoting it with its TTL already decremented: the kernel's __ip_vs_get_out_rt runs decrement_ttl
    before ensure_mtu_is_adequate's icmp_send (native/src/icmp.c lb_icmp_frag_needed). Callers
    checked TTL > 1."""
    return _unreachable(packet, ip_header_len, total_length, ICMP_FRAG_NEEDED, mtu, quote_ttl_dec=True)


def time_exceeded(packet: bytes, ip_header_len: int, total_length: int, source: bytes) -> bytes:
    """ICMP time exceeded in transit (type 11, code 0) answering `packet`, from `source` (4 bytes): what
    the kernel's decrement_ttl sends when a packet's TTL runs out on the director."""
    return _error(packet, ip_header_len, total_length, ICMP_TIME_EXCEEDED, 0, 0, source)


def related_connection_key(packet: bytes, ip_header_len: int, total_length: int) -> tuple[int, bytes, int, bytes, int] | None:
    """The connection tuple (proto, saddr, sport, daddr, dport) an ICMP error is about (the quoted
    packet's reverse: an IN or a FULLNAT OUT tuple), or None when the packet is not an ICMP error
    quoting a TCP/UDP packet we could know."""
    icmp_type = packet[ip_header_len]
    if icmp_type not in ICMP_ERROR_TYPES:
        return None
    quote = packet[ip_header_len + 8 : total_length]
    if len(quote) < 20 or quote[0] >> 4 != 4:
        return None
    quoted_header_len = (quote[0] & 0x0F) * 4
    if quoted_header_len < 20 or quoted_header_len + _MIN_QUOTED_TRANSPORT > len(quote):
        return None
    if struct.unpack_from("!H", quote, 6)[0] & 0x1FFF:  # a later fragment carries no ports
        return None
    proto = quote[9]
    if proto not in _QUOTED_PROTOS:
        return None
    sport, dport = struct.unpack_from("!HH", quote, quoted_header_len)
    return (proto, quote[16:20], dport, quote[12:16], sport)


def translate(packet: bytes, ip_header_len: int, total_length: int, outer_src: bytes, outer_dst: bytes,
              q_src: bytes, q_sport: int, q_dst: bytes, q_dport: int) -> bytes | None:
    """A copy of the ICMP error with outer TTL - 1, new outer addresses, new quoted addresses and
    ports, the outer and quoted IP header checksums and the ICMP checksum recomputed (the quoted
    transport checksum is left alone, as IPVS does). None when the TTL runs out."""
    o = bytearray(packet[:total_length])
    if o[8] <= 1:
        return None
    o[8] -= 1
    o[12:16] = outer_src
    o[16:20] = outer_dst
    ip_header_checksum(o, ip_header_len)
    icmp = ip_header_len
    q = icmp + 8
    q_ihl = (o[q] & 0x0F) * 4
    o[q + 12 : q + 16] = q_src
    o[q + 16 : q + 20] = q_dst
    ip_header_checksum(o, q_ihl, q)
    put16(o, q + q_ihl, q_sport)
    put16(o, q + q_ihl + 2, q_dport)
    o[icmp + 2] = o[icmp + 3] = 0
    put16(o, icmp + 2, internet_checksum(bytes(o[icmp:total_length])))
    return bytes(o)
