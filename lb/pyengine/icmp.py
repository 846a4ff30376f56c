"""ICMP: the port unreachable the director originates, and ICMP errors about its connections.

1. ICMP errors about a connection (docs/fastpath.md "ICMP"; IPVS ip_vs_in_icmp):
`related_connection_key` finds the entry an ICMP error refers to. Only errors
(type 3, 4, 11, 12) quoting an IPv4 header (version 4, IHL >= 5) followed by at
least 8 transport bytes of TCP or UDP, not a later fragment (offset != 0; MF
alone is fine), qualify. The quote is the ICMP payload after its 8-byte header,
up to the outer total length; its own total length and checksum are not checked.
The quoted packet travelled VIP:vport -> CIP:cport (a reply), so the entry's key
is its reverse: (proto, quoted daddr, quoted dport, quoted saddr, quoted sport).

2. The port unreachable answer for R_NO_DEST (IPVS ip_vs_leave -> icmp_send).

Exact bytes (the C core builds the same, byte for byte):

  IPv4 header, 20 bytes, no options:
    version 4, IHL 5, TOS 0, total length = 20 + 8 + len(quote),
    identification 0, flags 0 (DF clear), fragment offset 0, TTL 64,
    protocol 1 (ICMP), header checksum (RFC 1071 over these 20 bytes),
    source = the original packet's destination (the VIP),
    destination = the original packet's source (the client).
  ICMP, 8 bytes: type 3 (destination unreachable), code 3 (port unreachable),
    checksum (RFC 1071 over the ICMP header and quote), 4 unused bytes = 0.
  quote: the original IP header exactly as received (IHL*4 bytes, options
    included) followed by the first 8 bytes of its IP payload (always present:
    the transport header was already parsed). Link padding is never quoted.

When sent through a raw IPPROTO_RAW socket Linux fills in a zero IP id; that
happens after the engine and is not part of this contract.
"""

from __future__ import annotations

import struct

from lb.pyengine.parse import IPPROTO_ICMP, internet_checksum

ICMP_DEST_UNREACH = 3
ICMP_PORT_UNREACH = 3
ANSWER_TTL = 64
QUOTED_PAYLOAD_LEN = 8  # bytes of the original IP payload quoted after its header (RFC 792)

ICMP_ERROR_TYPES = frozenset({3, 4, 11, 12})  # dest unreachable, source quench, time exceeded, parameter problem
_QUOTED_PROTOS = frozenset({6, 17})  # TCP, UDP
_MIN_QUOTED_TRANSPORT = 8  # bytes: both ports (and the TCP sequence number / UDP length+checksum)

_IPV4_HEADER = struct.Struct("!BBHHHBBH4s4s")
_ICMP_HEADER = struct.Struct("!BBHI")


def port_unreachable(packet: bytes, ip_header_len: int, total_length: int) -> bytes:
    """The answer to `packet` (a parsed IPv4 packet whose header is `ip_header_len` bytes)."""
    quote_len = ip_header_len + min(QUOTED_PAYLOAD_LEN, total_length - ip_header_len)
    quote = packet[:quote_len]
    client, vip = packet[12:16], packet[16:20]

    icmp = _ICMP_HEADER.pack(ICMP_DEST_UNREACH, ICMP_PORT_UNREACH, 0, 0) + quote
    icmp = icmp[:2] + struct.pack("!H", internet_checksum(icmp)) + icmp[4:]

    total = _IPV4_HEADER.size + len(icmp)
    header = _IPV4_HEADER.pack(0x45, 0, total, 0, 0, ANSWER_TTL, IPPROTO_ICMP, 0, vip, client)
    header = header[:10] + struct.pack("!H", internet_checksum(header)) + header[12:]
    return header + icmp


def related_connection_key(packet: bytes, ip_header_len: int, total_length: int) -> tuple[int, bytes, int, bytes, int] | None:
    """The connection key (proto, caddr, cport, vaddr, vport) an ICMP error is about, or None
    when the packet is not an ICMP error quoting a TCP/UDP packet we could know."""
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
