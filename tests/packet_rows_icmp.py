"""Packet-table rows (tests/packet_table.py's format) of ICMP errors: about DR connections (forwarded
to the entry's real server; which quotes are examined at all), and about FULLNAT connections
(translated both ways), with the ICMP checksum check. ICMP errors about tunnelled connections are
tests/packet_rows_tun.py's, about NAT connections tests/packet_rows_nat.py's.
"""

from __future__ import annotations

import packet_table as t
from packet_table import (
    CLIENT1,
    LIP1,
    RS1,
    RS2,
    T_ES,
    T_SR,
    T_UDP,
    TCP80,
    UDP53,
    VIP,
    ConfigStep,
    DestExpect,
    DestSetup,
    PacketStep,
    Row,
    ServiceExpect,
    ServiceSetup,
    Setup,
)


def icmp_rows() -> list[Row]:
    rows: list[Row] = []
    setup = t.one_dest()
    syn, ack = t.tcp(flags="S"), t.tcp(flags="A", seq=1001, ack=5001)
    size = t.ip_total_length(syn)
    flow = (t.fwd(syn, 0, RS1), t.fwd(ack, 10, RS1))

    def about_flow(row_id: str, description: str, packet: bytes, step: PacketStep, counted: bool,
                   row_setup: Setup = setup) -> Row:
        extra = t.ip_total_length(packet) if counted else 0
        return Row(row_id, description, row_setup, flow + (step,),
                   (DestExpect(TCP80, RS1, active=1, conns=1, inpkts=2 + counted, inbytes=2 * size + extra,
                               handshakes=1), DestExpect(UDP53, RS1, 53)),
                   (ServiceExpect(TCP80, 1, 2 + counted, 2 * size + extra), ServiceExpect(UDP53)),
                   (t.conn("ESTABLISHED", T_ES - 10, RS1),), check_ms=20, tags=("icmp",))

    def icmp_fwd(packet: bytes) -> PacketStep:
        return t.fwd(packet, 20, RS1, "ICMP error forwarded to the entry's real server, TTL - 1", reason="ICMP")

    frag_needed = t.icmp_error(t.reply_quote(), 3, 4, nexthopmtu=1400)
    rows.append(about_flow("icmp-frag-needed-dr", "an ICMP fragmentation-needed about a DR connection's reply goes "
                           "unchanged to its real server; state and timer untouched, in-stats counted",
                           frag_needed, icmp_fwd(frag_needed), True))
    for icmp_type, code, name in ((3, 1, "host-unreach"), (4, 0, "source-quench"), (11, 0, "time-exceeded"),
                                  (12, 0, "param-problem")):
        packet = t.icmp_error(t.reply_quote(60), icmp_type, code)
        rows.append(about_flow(f"icmp-{name}-dr", f"ICMP type {icmp_type} (an error) about a DR connection is "
                               "forwarded", packet, icmp_fwd(packet), True))
    with_options = t.icmp_error(t.reply_quote(32, options=t._router_alert()))
    rows.append(about_flow("icmp-quote-ip-options", "the quoted header's IHL (6) locates the quoted ports",
                           with_options, icmp_fwd(with_options), True))
    first_fragment = t.icmp_error(t.reply_quote(28, flags="MF"))
    rows.append(about_flow("icmp-quote-first-fragment", "a quoted first fragment (MF, offset 0) has its ports",
                           first_fragment, icmp_fwd(first_fragment), True))

    not_examined = [
        ("icmp-redirect", "ICMP redirect (type 5) is not an error IPVS examines", t.icmp_error(t.reply_quote(), 5, 1)),
        ("icmp-echo-request", "an echo request passes through", t.icmp_error(t.reply_quote(), 8, 0)),
        ("icmp-quote-7-bytes", "a quote with only 7 transport bytes is not examined", t.icmp_error(t.reply_quote(27))),
        ("icmp-quote-short-ip", "a quote shorter than an IP header is not examined", t.icmp_error(t.reply_quote(19))),
        ("icmp-quote-later-fragment", "a quoted later fragment has no ports: not examined",
         t.icmp_error(t.reply_quote(28, frag=1))),
        ("icmp-quote-icmp", "a quoted ICMP packet is not examined", t.icmp_error(
            bytes(t._scapy().IP(src=VIP, dst=CLIENT1) / t._scapy().ICMP(type=0)))),
        ("icmp-quote-ipv6", "a quote that is not IPv4 is not examined", t.icmp_error(b"\x60" + t.reply_quote()[1:])),
        ("icmp-quote-other-port", "a quote of a flow without entry passes through",
         t.icmp_error(t.reply_quote(dport=40001))),
        ("icmp-quote-forward-direction", "a quote of the client's own packet (CIP -> VIP) matches no entry",
         t.icmp_error(t.reply_quote(src=CLIENT1, dst=VIP, sport=40000, dport=80))),
    ]
    for row_id, description, packet in not_examined:
        rows.append(about_flow(row_id, description, packet, t.verdict(packet, 20, "ACCEPT", "NOT_LB_PROTO"), False))

    udp_setup = t.one_dest()
    query = t.udp(sport=50000)
    udp_error = t.icmp_error(t.reply_quote(28, proto="udp", sport=53, dport=50000), 3, 3)
    qsize, esize = t.ip_total_length(query), t.ip_total_length(udp_error)
    rows.append(Row("icmp-udp-flow", "an ICMP port unreachable about a UDP flow's reply goes to its real server",
                    udp_setup, (t.fwd(query, 0, RS1), t.fwd(udp_error, 5, RS1, reason="ICMP")),
                    (DestExpect(TCP80, RS1), DestExpect(UDP53, RS1, 53, inactive=1, conns=1, inpkts=2,
                                                        inbytes=qsize + esize)),
                    (ServiceExpect(TCP80), ServiceExpect(UDP53, 1, 2, qsize + esize)),
                    (t.conn("UDP", T_UDP - 5, RS1, cport=50000, svc=UDP53, dport=53),), check_ms=5, tags=("icmp",)))

    no_l2 = Setup((ServiceSetup(TCP80, "rr", (DestSetup(RS1, l2=False),)),))
    rows.append(Row("icmp-no-l2", "an ICMP error about an entry whose destination has no forwarding state is dropped "
                    "(and counted)", no_l2, (t.verdict(syn, 0, "DROP", "L2_QUEUED"), t.verdict(frag_needed, 20, "DROP", "NO_L2")),
                    (DestExpect(TCP80, RS1, active=1, conns=1, inpkts=2, inbytes=size + t.ip_total_length(frag_needed)),),
                    (ServiceExpect(TCP80, 1, 2, size + t.ip_total_length(frag_needed)),),
                    (t.conn("SYN_RECV", T_SR - 20, RS1),), check_ms=20, tags=("icmp", "l2")))
    two = Setup((ServiceSetup(TCP80, "rr", (DestSetup(RS1), DestSetup(RS2))),))
    rows.append(Row("icmp-deleted-dest", "an ICMP error about an entry of a deleted destination still follows the "
                    "entry (no availability check for ICMP) but counts nowhere (ip_vs_in_stats: AVAILABLE only)", two,
                    (t.fwd(syn, 0, RS2), ConfigStep("del_dest", TCP80, DestSetup(RS2), 1),
                     t.fwd(frag_needed, 20, RS2, reason="ICMP")),
                    (DestExpect(TCP80, RS1),), (ServiceExpect(TCP80, 1, 1, size),),
                    (t.conn("SYN_RECV", T_SR - 20, RS2),), check_ms=20, tags=("icmp", "deleted")))
    for k in range(0, 8):
        packet = bytes(t.ip_header(proto=1) / t._scapy().Raw(bytes(t._scapy().ICMP(type=3, code=3))[:k]))
        rows.append(t.untouched(f"icmp-short-{k}", f"ICMP with {k} bytes (< 8) is malformed", packet, "DROP",
                                "MALFORMED", tags=("bad", "icmp")))
    return rows


def translation_rows() -> list[Row]:
    rows: list[Row] = []
    lp = t.local_port(LIP1)
    setup = t._fnat_setup()
    syn = t.tcp(flags="S")
    to_rs = t.nat(syn, LIP1, lp, RS1, 80)
    udp_dest, udp_svc = DestExpect(UDP53, RS1, 53), ServiceExpect(UDP53)
    sz = t.ip_total_length
    # From the client's side, about a reply VIP:80 -> CIP:40000.
    from_client = t.icmp_error(t.reply_quote(), 3, 4, nexthopmtu=1400)
    to_rs_error = t.icmp_error(t.reply_quote(src=RS1, dst=LIP1, sport=80, dport=lp), 3, 4, nexthopmtu=1400, src=LIP1,
                               dst=RS1, ttl=60)
    # From the real server's side, about LIP:lport -> RIP:80.
    from_rs = t.icmp_error(t.reply_quote(src=LIP1, dst=RS1, sport=lp, dport=80), 3, 4, nexthopmtu=1400, src=RS1,
                           dst=LIP1)
    to_client_error = t.icmp_error(t.reply_quote(src=CLIENT1, dst=VIP, sport=40000, dport=80), 3, 4, nexthopmtu=1400,
                                   src=VIP, dst=CLIENT1, ttl=60)

    def row(row_id: str, description: str, step: PacketStep, ins: int, outs: int, tags: tuple[str, ...] = (),
            row_setup: Setup = setup, first: PacketStep | None = None) -> Row:
        first = first or t.xmit(syn, to_rs, 0, RS1)
        inb = sz(syn) + (sz(step.packet) if ins else 0)
        outb = sz(step.packet) if outs else 0
        return Row(row_id, description, row_setup, (first, step),
                   (DestExpect(TCP80, RS1, active=1, conns=1, inpkts=1 + ins, inbytes=inb, outpkts=outs,
                               outbytes=outb), udp_dest),
                   (ServiceExpect(TCP80, 1, 1 + ins, inb, outs, outb), udp_svc),
                   (t.conn("SYN_RECV", T_SR - 5, RS1, laddr=LIP1, lport=lp),), check_ms=5, tags=("icmp", "fnat") + tags)

    rows.append(row("icmp-fnat-in", "an ICMP error from the client's side about a FULLNAT reply is translated "
                    "towards the real server: outer LIP -> RIP (TTL - 1), quoting RIP:rport -> LIP:lport; quoted IP "
                    "and ICMP checksums recomputed; in-stats", t.xmit(from_client, to_rs_error, 5, RS1, "ICMP"), 1, 0))
    rows.append(row("icmp-fnat-out", "an ICMP error from the real server's side about LIP:lport -> RIP:rport is "
                    "translated to the client: outer VIP -> CIP, quoting CIP:cport -> VIP:vport (ANSWER); out-stats",
                    t.answered(from_rs, to_client_error, 5, "ICMP"), 0, 1))
    rows.append(row("icmp-fnat-ttl", "an ICMP error with TTL 1 cannot be translated (R_TTL_EXCEEDED); still counted",
                    t.verdict(t._with_ttl(from_rs, 1), 5, "DROP", "TTL_EXCEEDED"), 0, 1))
    rows.append(row("icmp-fnat-no-l2", "an ICMP error towards a real server without forwarding state is dropped "
                    "(R_NO_L2), counted", t.verdict(from_client, 5, "DROP", "NO_L2"), 1, 0,
                    row_setup=t._fnat_setup(l2=False), first=t.verdict(syn, 0, "DROP", "L2_QUEUED")))
    bad = t._fix_icmp_checksum(from_rs, good=False)
    rows.append(row("icmp-bad-csum-out", "an ICMP error about a connection with a wrong ICMP checksum is dropped "
                    "(R_BAD_CSUM, ip_vs_in_icmp) and not counted", t.verdict(bad, 5, "DROP", "BAD_CSUM"), 0, 0,
                    tags=("bad",)))
    dr = t.one_dest()
    dr_syn = t.tcp(flags="S")
    dr_error = t._fix_icmp_checksum(t.icmp_error(t.reply_quote(), 3, 4, nexthopmtu=1400), good=False)
    rows.append(Row("icmp-bad-csum-dr", "a wrong ICMP checksum on an error about a DR connection: DROP/R_BAD_CSUM",
                    dr, (t.fwd(dr_syn, 0, RS1), t.verdict(dr_error, 5, "DROP", "BAD_CSUM")),
                    (DestExpect(TCP80, RS1, active=1, conns=1, inpkts=1, inbytes=sz(dr_syn)), udp_dest),
                    (ServiceExpect(TCP80, 1, 1, sz(dr_syn)), udp_svc),
                    (t.conn("SYN_RECV", T_SR - 5, RS1),), check_ms=5, tags=("icmp", "bad")))
    unrelated = t._fix_icmp_checksum(t.icmp_error(t.reply_quote(dport=40001)), good=False)
    rows.append(Row("icmp-bad-csum-unrelated", "the ICMP checksum is only checked for errors about a connection: "
                    "unrelated ones pass through", dr, (t.verdict(unrelated, 5, "ACCEPT", "NOT_LB_PROTO"),),
                    *t.idle_expectations(dr), (), check_ms=5, tags=("icmp", "bad")))
    return rows
