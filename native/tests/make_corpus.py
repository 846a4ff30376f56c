"""Write the fuzz/replay seed corpus for native/tests/harness.c.

Each file is one fuzzer input: byte 0 advances the harness clock (x 50 ms),
the rest is an IPv4 packet aimed at the harness's standard configuration
(VIP 10.0.0.100: TCP/UDP 80 DR, 81 IPIP, 82 FULLNAT with TOA, 83 FULLNAT
with SYN-proxy, 84 DR with sh (TCP) and mh one-packet (UDP), 85 NAT to
10.1.0.11-12:8080, 86 FULLNAT with PROXY v1, 87 FULLNAT with SYN-proxy and
PROXY v2, 90 lblc, 91 lblcr, 92 twos; FULLNAT real servers
10.1.0.11-12:80, local address 10.1.0.1). The
harness also schedules every input on the 90-92 services whatever its
destination address (lblc/lblcr key their caches on it). For `harness replay`,
the same files are fed without byte 0
stripped, which is harmless: the packet is then malformed and must be
handled as such.

    python native/tests/make_corpus.py native/tests/corpus
"""

from __future__ import annotations

import sys
from pathlib import Path

from scapy.all import ICMP, IP, TCP, UDP, Raw, raw  # type: ignore[import-untyped]

VIP = "10.0.0.100"
VIP0 = "10.0.0.101"  # the port-zero service's address
VIP0F = "10.0.0.102"  # the port-zero FULLNAT service's address
CLIENT = "192.0.2.7"
RS = "10.1.0.11"
LIP = "10.1.0.1"


def seeds() -> dict[str, bytes]:
    s: dict[str, bytes] = {}
    opts = [("MSS", 1460), ("SAckOK", b""), ("WScale", 7), ("Timestamp", (1, 0))]
    for port in (80, 81, 82, 83, 84, 86, 87):
        s[f"tcp{port}_syn"] = raw(IP(src=CLIENT, dst=VIP) / TCP(sport=40000, dport=port, flags="S", options=opts))
        s[f"tcp{port}_ack"] = raw(IP(src=CLIENT, dst=VIP) / TCP(sport=40000, dport=port, flags="A", seq=1, ack=1))
        s[f"tcp{port}_data"] = raw(IP(src=CLIENT, dst=VIP) / TCP(sport=40000, dport=port, flags="PA") / Raw(b"GET / HTTP/1.1\r\n\r\n"))
        s[f"tcp{port}_fin"] = raw(IP(src=CLIENT, dst=VIP) / TCP(sport=40000, dport=port, flags="FA"))
        s[f"tcp{port}_rst"] = raw(IP(src=CLIENT, dst=VIP) / TCP(sport=40000, dport=port, flags="R"))
        s[f"udp{port}"] = raw(IP(src=CLIENT, dst=VIP) / UDP(sport=5353, dport=port) / Raw(b"x" * 32))
    for port in (90, 91, 92):
        s[f"tcp{port}_syn"] = raw(IP(src=CLIENT, dst=VIP) / TCP(sport=40000, dport=port, flags="S", options=opts))
        s[f"udp{port}"] = raw(IP(src=CLIENT, dst=VIP) / UDP(sport=5353, dport=port) / Raw(b"x" * 32))
    s["tcp90_syn_other_daddr"] = raw(IP(src=CLIENT, dst="10.64.0.9") / TCP(sport=40000, dport=90, flags="S"))
    s["fnat_reply_synack"] = raw(IP(src=RS, dst=LIP) / TCP(sport=80, dport=1024, flags="SA", options=[("MSS", 1460)]))
    s["fnat_reply_data"] = raw(IP(src=RS, dst=LIP) / TCP(sport=80, dport=1024, flags="PA") / Raw(b"HTTP/1.1 200 OK\r\n"))
    s["icmp_frag_needed_rs"] = raw(IP(src=RS, dst=LIP) / ICMP(type=3, code=4, nexthopmtu=1400)
                                   / raw(IP(src=LIP, dst=RS) / TCP(sport=1024, dport=80))[:28])
    s["icmp_unreach_client"] = raw(IP(src=CLIENT, dst=VIP) / ICMP(type=3, code=3)
                                   / raw(IP(src=VIP, dst=CLIENT) / TCP(sport=80, dport=40000))[:28])
    # NAT (VIP:85 -> RS:8080): the client's packets, the real server's replies to the client's own
    # address (the reply tuple), ICMP errors both ways.
    # NAT real servers without a port under a persistent port-zero service (VIP0:0): reached on the
    # client's port, their replies come from it; a one-packet UDP NAT service (VIP:88): no entry.
    for port in (443, 8443):
        s[f"nat0_syn_{port}"] = raw(IP(src=CLIENT, dst=VIP0) / TCP(sport=41000, dport=port, flags="S", options=opts))
        s[f"nat0_reply_synack_{port}"] = raw(IP(src=RS, dst=CLIENT) / TCP(sport=port, dport=41000, flags="SA"))
        s[f"nat0_udp_{port}"] = raw(IP(src=CLIENT, dst=VIP0) / UDP(sport=41001, dport=port) / Raw(b"x" * 16))
        s[f"nat0_udp_reply_{port}"] = raw(IP(src=RS, dst=CLIENT) / UDP(sport=port, dport=41001) / Raw(b"y" * 16))
    s["nat0_icmp_from_rs"] = raw(IP(src=RS, dst=CLIENT) / ICMP(type=3, code=3)
                                 / raw(IP(src=CLIENT, dst=RS) / UDP(sport=41001, dport=443))[:28])
    # FULLNAT without a port under a persistent port-zero service (VIP0F:0): LIP:lport -> RIP:<client's port>.
    s["fnat0_syn_443"] = raw(IP(src=CLIENT, dst=VIP0F) / TCP(sport=41003, dport=443, flags="S", options=opts))
    s["fnat0_reply_synack_443"] = raw(IP(src=RS, dst=LIP) / TCP(sport=443, dport=1024, flags="SA"))
    s["ops_nat_udp"] = raw(IP(src=CLIENT, dst=VIP) / UDP(sport=41002, dport=88) / Raw(b"x" * 16))
    s["ops_nat_udp_reply"] = raw(IP(src=RS, dst=CLIENT) / UDP(sport=88, dport=41002) / Raw(b"y" * 16))
    s["nat_syn"] = raw(IP(src=CLIENT, dst=VIP) / TCP(sport=40000, dport=85, flags="S", options=opts))
    s["nat_ack"] = raw(IP(src=CLIENT, dst=VIP) / TCP(sport=40000, dport=85, flags="A", seq=1, ack=1))
    s["nat_reply_synack"] = raw(IP(src=RS, dst=CLIENT) / TCP(sport=8080, dport=40000, flags="SA",
                                                              options=[("MSS", 1460)]))
    s["nat_reply_data"] = raw(IP(src=RS, dst=CLIENT) / TCP(sport=8080, dport=40000, flags="PA")
                              / Raw(b"HTTP/1.1 200 OK\r\n"))
    s["nat_reply_fin"] = raw(IP(src=RS, dst=CLIENT) / TCP(sport=8080, dport=40000, flags="FA"))
    s["nat_reply_rst"] = raw(IP(src=RS, dst=CLIENT) / TCP(sport=8080, dport=40000, flags="R"))
    s["nat_udp"] = raw(IP(src=CLIENT, dst=VIP) / UDP(sport=5353, dport=85) / Raw(b"x" * 32))
    s["nat_udp_reply"] = raw(IP(src=RS, dst=CLIENT) / UDP(sport=8080, dport=5353) / Raw(b"y" * 32))
    s["nat_udp_reply_nocsum"] = raw(IP(src=RS, dst=CLIENT) / UDP(sport=8080, dport=5353, chksum=0) / Raw(b"y" * 8))
    s["nat_icmp_from_rs"] = raw(IP(src=RS, dst=CLIENT) / ICMP(type=3, code=3)
                                / raw(IP(src=CLIENT, dst=RS) / UDP(sport=5353, dport=8080))[:28])
    s["nat_icmp_from_client"] = raw(IP(src=CLIENT, dst=VIP) / ICMP(type=3, code=4, nexthopmtu=1400)
                                    / raw(IP(src=VIP, dst=CLIENT) / TCP(sport=85, dport=40000))[:28])
    s["nat_reply_ttl1"] = raw(IP(src=RS, dst=CLIENT, ttl=1) / TCP(sport=8080, dport=40000, flags="A"))
    # PROXY protocol (VIP:86 v1, VIP:87 SYN-proxy + v2): the first data at ISN + 1 gets the header, a
    # full-sized one is cut; the real server's ACKs and SACK edges move back before it.
    s["px_data_isn1"] = raw(IP(src=CLIENT, dst=VIP) / TCP(sport=40000, dport=86, flags="PA", seq=1001, ack=1)
                            / Raw(b"GET / HTTP/1.1\r\n\r\n"))
    s["px_data_full"] = raw(IP(src=CLIENT, dst=VIP, flags="DF") / TCP(sport=40000, dport=86, flags="FPA", seq=1001,
                                                                     ack=1) / Raw(b"q" * 1460))
    s["px_reply_sack"] = raw(IP(src=RS, dst=LIP) / TCP(sport=80, dport=1024, flags="A", seq=1, ack=1030,
                                                       options=[("NOP", None), ("NOP", None),
                                                                ("SAck", (1100, 1200, 1300, 1400))]))
    s["px_reply_synack"] = raw(IP(src=RS, dst=LIP) / TCP(sport=80, dport=1024, flags="SA", seq=5000, ack=1001,
                                                         options=[("MSS", 1460), ("SAckOK", b"")]))
    s["icmp_echo"] = raw(IP(src=CLIENT, dst=VIP) / ICMP())
    s["ip_options"] = raw(IP(src=CLIENT, dst=VIP, options=b"\x94\x04\x00\x00") / TCP(sport=40001, dport=80, flags="S"))
    s["fragment_first"] = raw(IP(src=CLIENT, dst=VIP, flags="MF") / TCP(sport=40002, dport=80, flags="S"))
    s["fragment_later"] = raw(IP(src=CLIENT, dst=VIP, frag=100) / Raw(b"y" * 16))
    s["ttl1"] = raw(IP(src=CLIENT, dst=VIP, ttl=1) / TCP(sport=40003, dport=82, flags="S"))
    s["big_df"] = raw(IP(src=CLIENT, dst=VIP, flags="DF") / TCP(sport=40004, dport=81, flags="A") / Raw(b"z" * 1470))
    s["syn_fin"] = raw(IP(src=CLIENT, dst=VIP) / TCP(sport=40005, dport=80, flags="SF"))
    s["no_flags"] = raw(IP(src=CLIENT, dst=VIP) / TCP(sport=40006, dport=80, flags=0))
    s["ipv6_header"] = bytes([0x60]) + bytes(39)
    # Datagrams the kernel reassembled before the queue, larger than the 1,500-byte path MTU: DF clear
    # leaves as fragments (frag_mtu), DF set earns ICMP fragmentation needed; replies through NAT.
    big = bytes(range(256)) * 12
    for port in (80, 81, 82, 85):
        s[f"big_udp{port}"] = raw(IP(src=CLIENT, dst=VIP) / UDP(sport=5354, dport=port) / Raw(big))
        s[f"big_udp{port}_df"] = raw(IP(src=CLIENT, dst=VIP, flags="DF") / UDP(sport=5355, dport=port) / Raw(big))
    s["big_tcp80"] = raw(IP(src=CLIENT, dst=VIP) / TCP(sport=40000, dport=80, flags="PA", seq=1, ack=1) / Raw(big))
    s["nat_big_udp_reply"] = raw(IP(src=RS, dst=CLIENT) / UDP(sport=8080, dport=5354) / Raw(big))
    s["big_udp_options"] = raw(IP(src=CLIENT, dst=VIP, options=b"\x07\x07\x04" + bytes(5) + b"\x82\x0b" + bytes(10))
                               / UDP(sport=5356, dport=80) / Raw(big))
    s["big_fragment_mf"] = raw(IP(src=CLIENT, dst=VIP, flags="MF", frag=64) / Raw(big))
    # Hostile input (issue 16): martian and local sources, bad UDP lengths, bad TCP checksums on the
    # SYN-proxy service.
    for name, src in (("zeronet", "0.0.0.0"), ("loopback", "127.0.0.1"), ("multicast", "224.0.0.1"),
                      ("bcast", "255.255.255.255"), ("vip", VIP), ("class_e", "240.0.0.1")):
        s[f"martian_{name}_syn"] = raw(IP(src=src, dst=VIP) / TCP(sport=40007, dport=80, flags="S"))
    s["martian_sp_syn"] = raw(IP(src="224.0.0.1", dst=VIP) / TCP(sport=40008, dport=83, flags="S", options=opts))
    s["martian_icmp"] = raw(IP(src="127.0.0.1", dst=VIP) / ICMP(type=3, code=3)
                            / raw(IP(src=VIP, dst=CLIENT) / TCP(sport=80, dport=40000))[:28])
    for length in (0, 1, 7, 41, 0xFFFF):
        udp = bytearray(raw(IP(src=CLIENT, dst=VIP) / UDP(sport=5354, dport=80) / Raw(b"x" * 32)))
        udp[24:26] = length.to_bytes(2, "big")
        s[f"udp_len_{length}"] = bytes(udp)
    for port, flags in ((83, "S"), (83, "A"), (80, "S")):
        seg = bytearray(raw(IP(src=CLIENT, dst=VIP) / TCP(sport=40009, dport=port, flags=flags, seq=1, ack=1)))
        seg[37] ^= 0x01
        s[f"bad_tcp_csum_{port}_{flags}"] = bytes(seg)
    # GSO super-packets as NFQA_CFG_F_GSO hands them over (lbd --gso): cut by lb_tcp_segment.
    ts = [("NOP", None), ("NOP", None), ("Timestamp", (7, 9))]
    for port in (80, 82):
        s[f"gso_tcp{port}"] = raw(IP(src=CLIENT, dst=VIP, flags="DF") / TCP(sport=40000, dport=port, flags="PAC",
                                  seq=1, ack=1, options=ts) / Raw(bytes(range(256)) * 17))
    return s


def main(argv: list[str]) -> int:
    out = Path(argv[1] if len(argv) > 1 else "native/tests/corpus")
    out.mkdir(parents=True, exist_ok=True)
    for name, pkt in seeds().items():
        # Byte 0: clock advance for the fuzz target (1 = 50 ms).
        (out / name).write_bytes(b"\x01" + pkt)
    print(f"wrote {len(seeds())} seeds to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
