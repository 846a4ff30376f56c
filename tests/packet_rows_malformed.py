"""Packet-table rows (tests/packet_table.py's format) of malformed and unusual input: not IPv4,
truncated at every offset of the IPv4, TCP and UDP headers, inconsistent header fields, bad IPv4
header checksums, fragments, protocols the director does not balance; and well-formed oddities
(IP and TCP options, link padding, DF) that are forwarded unchanged. Hostile and unlucky packets
(martians, bad transport checksums, ...) are tests/packet_rows_faults.py's.
"""

from __future__ import annotations

import packet_table as t
from packet_table import (
    RS1,
    T_SR,
    TCP80,
    UDP53,
    DestExpect,
    Row,
    ServiceExpect,
)


def _set_byte(packet: bytes, offset: int, value: int) -> bytes:
    return packet[:offset] + bytes([value]) + packet[offset + 1:]


def _flip_checksum(packet: bytes) -> bytes:
    """Flip the low bit of the IPv4 header checksum: wrong afterwards (only 0x0000 and 0xffff are
    equivalent in one's complement, and flipping bit 0 never maps one to the other)."""
    return packet[:11] + bytes([packet[11] ^ 0x01]) + packet[12:]


def _fix_ip_checksum(packet: bytes) -> bytes:
    s = t._scapy()
    ihl = (packet[0] & 0x0F) * 4
    header = bytearray(packet[:ihl])
    header[10:12] = b"\0\0"
    csum = s.checksum(bytes(header))
    header[10:12] = csum.to_bytes(2, "big")
    return bytes(header) + packet[ihl:]


def rows() -> list[Row]:
    s = t._scapy()
    rows: list[Row] = []
    syn = t.tcp(payload=b"")
    syn_data = t.tcp(payload=b"0123456789")
    query = t.udp()

    rows.append(t.untouched("ipv6", "an IPv6 packet passes through",
                            bytes(s.IPv6(src="2001:db8::10", dst="2001:db8::1") / s.TCP(sport=40000, dport=80, flags="S")),
                            "ACCEPT", "NOT_IPV4", tags=("bad",)))
    rows.append(t.untouched("ipv6-short", "a 1-byte packet with version 6 passes through as IPv6",
                            b"\x60", "ACCEPT", "NOT_IPV4", tags=("bad",)))
    rows.append(t.untouched("empty", "an empty packet is malformed", b"", "DROP", "MALFORMED", tags=("bad",)))
    for version in (0, 5, 15):
        rows.append(t.untouched(f"version-{version}", f"IP version {version} is malformed",
                                _fix_ip_checksum(_set_byte(syn, 0, (version << 4) | 5)), "DROP", "MALFORMED",
                                tags=("bad",)))

    # Raw truncation at every offset inside the IPv4 + TCP / UDP headers (total length still says more).
    for n in range(0, 40):
        rows.append(t.untouched(f"trunc-tcp-{n:02d}", f"TCP SYN cut to {n} bytes", syn[:n], "DROP", "MALFORMED",
                                tags=("bad", "trunc")))
    for n in range(0, 28):
        rows.append(t.untouched(f"trunc-udp-{n:02d}", f"UDP datagram cut to {n} bytes", query[:n], "DROP", "MALFORMED",
                                tags=("bad", "trunc")))
    with_options = t.tcp(options=t._router_alert())
    for n in range(20, 24):
        rows.append(t.untouched(f"trunc-ipopt-{n:02d}", f"IP header with options (IHL 6) cut to {n} bytes",
                                with_options[:n], "DROP", "MALFORMED", tags=("bad", "trunc")))

    # Transport header truncated with a consistent IP header (total length and checksum correct).
    tcp_header = s.raw(s.TCP(sport=40000, dport=80, flags="S", seq=1000, window=64240))
    for k in range(0, 20):
        packet = bytes(t.ip_header(proto=6) / s.Raw(tcp_header[:k]))
        rows.append(t.untouched(f"short-tcp-{k:02d}", f"TCP header of {k} bytes inside a consistent IP packet",
                                packet, "DROP", "MALFORMED", tags=("bad", "trunc")))
    udp_header = s.raw(s.UDP(sport=50000, dport=53, len=8))
    for k in range(0, 8):
        packet = bytes(t.ip_header(proto=17) / s.Raw(udp_header[:k]))
        rows.append(t.untouched(f"short-udp-{k}", f"UDP header of {k} bytes inside a consistent IP packet",
                                packet, "DROP", "MALFORMED", tags=("bad", "trunc")))
    tcp_with_options = s.raw(s.TCP(sport=40000, dport=80, flags="S", seq=1000, window=64240,
                                   options=[("MSS", 1460), ("NOP", None), ("WScale", 7), ("SAckOK", b"")]))
    assert len(tcp_with_options) == 32
    for k in range(20, 32):
        packet = bytes(t.ip_header(proto=6) / s.Raw(tcp_with_options[:k]))
        rows.append(t.untouched(f"short-tcpopt-{k}", f"TCP data offset 8 but only {k} bytes of TCP in the IP packet",
                                packet, "DROP", "MALFORMED", tags=("bad", "trunc")))

    def ip_field(packet: bytes, offset: int, value: int, fix: bool = True) -> bytes:
        changed = _set_byte(packet, offset, value)
        return _fix_ip_checksum(changed) if fix else changed

    ihl4 = _set_byte(syn, 0, 0x44)
    rows += [
        t.untouched("ihl-4", "IHL 4 (< 5) is malformed", ihl4, "DROP", "MALFORMED", tags=("bad",)),
        t.untouched("ihl-15", "IHL 15 (60 bytes) in a 40-byte packet is malformed", _set_byte(syn, 0, 0x4F), "DROP",
                    "MALFORMED", tags=("bad",)),
        t.untouched("ihl-6-no-options", "IHL 6 on a 40-byte packet: header fits, TCP then has 16 bytes -> malformed",
                    ip_field(syn, 0, 0x46), "DROP", "MALFORMED", tags=("bad",)),
        t.untouched("totlen-below-ihl", "total length 19 (< IHL*4) is malformed",
                    _fix_ip_checksum(syn[:2] + (19).to_bytes(2, "big") + syn[4:]), "DROP", "MALFORMED", tags=("bad",)),
        t.untouched("totlen-beyond-packet", "total length larger than the packet is malformed",
                    _fix_ip_checksum(syn[:2] + (len(syn) + 1).to_bytes(2, "big") + syn[4:]), "DROP", "MALFORMED",
                    tags=("bad",)),
        t.untouched("tcp-doff-4", "TCP data offset 4 is malformed", _set_byte(syn, 32, 0x40), "DROP", "MALFORMED",
                    tags=("bad",)),
        t.untouched("tcp-doff-0", "TCP data offset 0 is malformed", _set_byte(syn, 32, 0x00), "DROP", "MALFORMED",
                    tags=("bad",)),
        t.untouched("tcp-doff-beyond", "TCP data offset 15 beyond the IP payload is malformed",
                    _set_byte(syn_data, 32, 0xF0), "DROP", "MALFORMED", tags=("bad",)),
        t.untouched("bad-ip-csum", "a wrong IPv4 header checksum drops the packet",
                    _flip_checksum(syn), "DROP", "BAD_CSUM", tags=("bad",)),
        t.untouched("bad-ip-csum-options", "the checksum covers the IP options too",
                    _set_byte(with_options, 21, with_options[21] ^ 0x01), "DROP", "BAD_CSUM", tags=("bad",)),
        t.untouched("frag-first", "a first fragment (MF set, offset 0) is dropped",
                    bytes(t.ip_header(flags="MF", frag=0) / s.TCP(sport=40000, dport=80, flags="S")),
                    "DROP", "FRAGMENT", tags=("bad", "frag")),
        t.untouched("frag-middle", "a middle fragment (MF set, offset 185) is dropped",
                    bytes(t.ip_header(flags="MF", frag=185, proto=6) / s.Raw(b"m" * 64)), "DROP", "FRAGMENT",
                    tags=("bad", "frag")),
        t.untouched("frag-last", "a last fragment (MF clear, offset 185) is dropped",
                    bytes(t.ip_header(frag=185, proto=17) / s.Raw(b"l" * 3)), "DROP", "FRAGMENT", tags=("bad", "frag")),
        t.untouched("frag-icmp", "the fragment check comes before the protocol check",
                    bytes(t.ip_header(flags="MF") / s.ICMP() / s.Raw(b"p" * 16)), "DROP", "FRAGMENT",
                    tags=("bad", "frag")),
        t.untouched("frag-before-transport", "a fragment with a truncated TCP header is FRAGMENT, not MALFORMED",
                    bytes(t.ip_header(flags="MF", proto=6) / s.Raw(b"\x9c\x40")), "DROP", "FRAGMENT",
                    tags=("bad", "frag")),
        t.untouched("csum-before-frag", "a bad checksum on a fragment is BAD_CSUM (checksum first)",
                    _flip_checksum(bytes(t.ip_header(frag=185, proto=6) / s.Raw(b"x" * 8))), "DROP",
                    "BAD_CSUM", tags=("bad", "frag")),
        t.untouched("icmp-echo", "ICMP to the VIP passes through", bytes(t.ip_header() / s.ICMP() / s.Raw(b"ping")),
                    "ACCEPT", "NOT_LB_PROTO", tags=("bad",)),
        t.untouched("gre", "another protocol (GRE) passes through", bytes(t.ip_header(proto=47) / s.Raw(b"\0" * 4)),
                    "ACCEPT", "NOT_LB_PROTO", tags=("bad",)),
        t.untouched("ipproto-255-empty", "a protocol other than TCP/UDP/ICMP is not parsed further, even with 0 "
                    "payload bytes", bytes(t.ip_header(proto=255)), "ACCEPT", "NOT_LB_PROTO", tags=("bad",)),
    ]

    # Well-formed oddities that must be forwarded unchanged.
    setup = t.one_dest()

    def forwarded_row(row_id: str, description: str, packet: bytes, total: int) -> Row:
        return Row(row_id, description, setup, (t.fwd(packet, 0, RS1),),
                   (DestExpect(TCP80, RS1, active=1, conns=1, inpkts=1, inbytes=total), DestExpect(UDP53, RS1, 53)),
                   (ServiceExpect(TCP80, 1, 1, total), ServiceExpect(UDP53)),
                   (t.conn("SYN_RECV", T_SR, RS1),), tags=("dr", "odd"))

    rows.append(forwarded_row("ip-options", "a SYN with IP options (router alert) is forwarded unchanged",
                              with_options, t.ip_total_length(with_options)))
    many_options = t.tcp(options=[s.IPOption_NOP()] * 3 + [s.IPOption_RR(routers=["0.0.0.0"] * 8)])
    rows.append(forwarded_row("ip-options-long", "IP options filling a long header are forwarded unchanged",
                              many_options, t.ip_total_length(many_options)))
    rows.append(forwarded_row("padding", "bytes after the IP total length (link padding) are ignored: forwarded as "
                              "received, inbytes counts the total length only", syn + b"\0" * 6, len(syn)))
    rows.append(forwarded_row("df-set", "DF alone is not a fragment", t.tcp(flags="S", flags_ip="DF"), 40))
    with_tcp_options = t.tcp(tcp_options=[("MSS", 1460), ("NOP", None), ("WScale", 7), ("SAckOK", b"")])
    rows.append(forwarded_row("tcp-options", "TCP options are forwarded unchanged", with_tcp_options, 52))
    return rows
