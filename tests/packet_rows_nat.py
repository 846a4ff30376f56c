"""Packet-table rows (tests/packet_table.py's format) of NAT, masquerading (ipvsadm -m).

The kernel's NAT (ip_vs_nat_xmit on the way in, handle_response / the protocol's snat_handler on
the way back, ip_vs_nat_icmp for ICMP errors): the client's packet leaves as CIP:cport ->
RIP:rport, the real server's reply RIP:rport -> CIP:cport goes back as VIP:vport -> CIP:cport.
Both directions drive the TCP state machine: the client's packets with the INPUT table, the real
server's with the OUTPUT table (a NAT connection is not NOOUTPUT), which is what makes NAT's
state sequences differ from DR's (INPUT-ONLY). The TCP service translates its port (-r RIP:8080
under VIP:80); the UDP one keeps it.

Expected bytes are built by scapy with full checksums: packet_table.nat() with the addresses and
ports that do not change passed as they are.
"""

from __future__ import annotations

import packet_table as t
from packet_table import (
    CLIENT1,
    CLIENT2,
    RS1,
    T_CL,
    T_ES,
    T_FW,
    T_SR,
    T_TW,
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
    Step,
)

RPORT = 8080  # the TCP service's real-server port: port translation


def setup(*, l2: bool = True) -> Setup:
    return Setup((ServiceSetup(TCP80, "rr", (DestSetup(RS1, RPORT, fwd="masq", l2=l2),)),
                  ServiceSetup(UDP53, "rr", (DestSetup(RS1, 53, fwd="masq"),))))


def to_rs(packet: bytes, rport: int = RPORT) -> bytes:
    """The client's packet as the director sends it to the real server: destination RIP:rport, TTL - 1."""
    p = t._scapy().IP(packet)
    return t.nat(packet, p.src, p.payload.sport, RS1, rport)


def to_client(packet: bytes, vport: int = 80) -> bytes:
    """The real server's reply as the director sends it to the client: source VIP:vport, TTL - 1."""
    p = t._scapy().IP(packet)
    return t.nat(packet, VIP, vport, p.dst, p.payload.dport)


def from_rs(flags: str, seq: int, ack: int, payload: bytes = b"", *, dport: int = 40000, dst: str = CLIENT1) -> bytes:
    """A segment of the real server RS1:8080 to the client (routed through the director)."""
    return t.tcp(sport=RPORT, dport=dport, src=RS1, dst=dst, flags=flags, seq=seq, ack=ack, payload=payload)


def udp_quote(dst: str) -> bytes:
    """The first 28 bytes of the client's datagram CIP:50000 -> dst:53, as an ICMP error quotes them. Its UDP
    checksum is fixed: the quoted transport checksum is left alone by the translation (as IPVS does)."""
    s = t._scapy()
    return bytes(s.IP(src=CLIENT1, dst=dst, id=7, ttl=55) / s.UDP(sport=50000, dport=53, chksum=0x1234)
                 / s.Raw(b"q" * 32))[:28]


def rows() -> list[Row]:
    out: list[Row] = []
    sz = t.ip_total_length
    syn = t.tcp(flags="S", tcp_options=[("MSS", 1460), ("SAckOK", b"")])
    synack = from_rs("SA", 5000, 1001)
    ack = t.tcp(flags="A", seq=1001, ack=5001)
    data = t.tcp(flags="PA", seq=1001, ack=5001, payload=b"GET / HTTP/1.0\r\n\r\n")
    reply = from_rs("PA", 5001, 1019, b"HTTP/1.0 200 OK\r\n")
    rs_fin = from_rs("FA", 5018, 1019)
    c_ack = t.tcp(flags="A", seq=1019, ack=5019)
    c_fin = t.tcp(flags="FA", seq=1019, ack=5019)
    rs_last = from_rs("A", 5019, 1020)
    nat_setup = setup()
    udp_dest, udp_svc = DestExpect(UDP53, RS1, 53), ServiceExpect(UDP53)

    def xin(packet: bytes, now: int, reason: str = "FORWARDED") -> PacketStep:
        return t.xmit(packet, to_rs(packet), now, RS1, reason)

    def xout(packet: bytes, now: int) -> PacketStep:
        return t.answered(packet, to_client(packet), now, note="VIP:80 -> CIP")

    def flow(row_id: str, description: str, steps: tuple[Step, ...], state: str, timeout: int,
             tags: tuple[str, ...] = (), handshakes: int = 1) -> Row:
        ins = [s.packet for s in steps if isinstance(s, PacketStep) and t._scapy().IP(s.packet).src == CLIENT1]
        outs = [s.packet for s in steps if isinstance(s, PacketStep) and t._scapy().IP(s.packet).src == RS1]
        inb, outb = sum(sz(p) for p in ins), sum(sz(p) for p in outs)
        active = t.active_in(state)
        return Row(row_id, description, nat_setup, steps,
                   (DestExpect(TCP80, RS1, RPORT, active=active, inactive=1 - active, conns=1, inpkts=len(ins),
                               inbytes=inb, handshakes=handshakes, outpkts=len(outs), outbytes=outb), udp_dest),
                   (ServiceExpect(TCP80, 1, len(ins), inb, len(outs), outb), udp_svc),
                   (t.conn(state, timeout, RS1, dport=RPORT),), check_ms=steps[-1].now_ms, tags=("nat",) + tags)

    out.append(flow(
        "nat-in-syn", "NAT IN: the SYN leaves as CIP:cport -> RIP:8080 (destination and port rewritten, TTL - 1, "
        "checksums updated) on the real server's L2 path; the entry uses the INPUT table (NONE -> SYN_RECV)",
        (xin(syn, 0),), "SYN_RECV", T_SR, handshakes=0))
    out.append(flow(
        "nat-out-synack", "NAT OUT: the real server's SYN-ACK RIP:8080 -> CIP:cport, found by the reply tuple, goes "
        "back as VIP:80 -> CIP:cport through the kernel (ANSWER); OUTPUT syn keeps SYN_RECV; out-stats count it",
        (xin(syn, 0), xout(synack, 5)), "SYN_RECV", T_SR, handshakes=0))
    out.append(flow(
        "nat-flow-server-closes", "NAT both ways with the kernel's tables for a NAT entry: ACK in (ESTABLISHED), data "
        "in and out; the real server's FIN (OUTPUT) makes FIN_WAIT, the client's ACK keeps it, the client's FIN "
        "(INPUT) makes TIME_WAIT, the server's last ACK (OUTPUT) keeps it",
        (xin(syn, 0), xout(synack, 5), xin(ack, 10), xin(data, 20), xout(reply, 30), xout(rs_fin, 40),
         xin(c_ack, 41), xin(c_fin, 50), xout(rs_last, 51)), "TIME_WAIT", T_TW, ("states",)))
    s_fin = t.tcp(flags="FA", seq=1019, ack=5018)
    out.append(flow(
        "nat-flow-client-closes", "NAT: the client's FIN first is CLOSE_WAIT with the INPUT table (DR's INPUT-ONLY "
        "table would say FIN_WAIT); the real server's FIN then makes TIME_WAIT (OUTPUT)",
        (xin(syn, 0), xout(synack, 5), xin(ack, 10), xin(s_fin, 20), xout(from_rs("FA", 5001, 1020), 30)),
        "TIME_WAIT", T_TW, ("states",)))
    out.append(flow(
        "nat-client-fin-close-wait", "NAT: after the client's FIN the entry waits in CLOSE_WAIT (60 s), inactive",
        (xin(syn, 0), xout(synack, 5), xin(ack, 10), xin(s_fin, 20)), "CLOSE_WAIT", 60_000, ("states",)))
    out.append(flow(
        "nat-server-rst", "NAT: the real server's RST (OUTPUT) closes an established entry (CLOSE, 10 s)",
        (xin(syn, 0), xout(synack, 5), xin(ack, 10), xout(from_rs("R", 5001, 0), 20)), "CLOSE", T_CL, ("states",)))
    out.append(flow(
        "nat-server-fin-wait", "NAT: the real server's FIN on an established entry is FIN_WAIT (OUTPUT), 120 s",
        (xin(syn, 0), xout(synack, 5), xin(ack, 10), xout(rs_fin, 20)), "FIN_WAIT", T_FW, ("states",)))
    out.append(flow(
        "nat-established", "NAT: the three-way handshake seen both ways leaves ESTABLISHED, active, 900 s",
        (xin(syn, 0), xout(synack, 5), xin(ack, 10)), "ESTABLISHED", T_ES, ("states",)))

    # UDP: the port stays (53), a zero checksum stays zero, the reply is translated back.
    query = t.udp(sport=50000)
    nocsum = query[:26] + b"\0\0" + query[28:]
    answer = t.udp(sport=53, dport=50000, src=RS1, dst=CLIENT1, payload=b"answer-01")
    qn, an = sz(query), sz(answer)
    out.append(Row(
        "nat-udp", "NAT UDP both ways: CIP -> RIP:53 and RIP:53 -> CIP answered as VIP:53 -> CIP; a datagram "
        "without checksum (0) keeps 0", nat_setup,
        (t.xmit(query, to_rs(query, 53), 0, RS1), t.answered(answer, to_client(answer, 53), 5),
         t.xmit(nocsum, to_rs(nocsum, 53), 6, RS1, note="checksum 0 stays 0")),
        (DestExpect(TCP80, RS1, RPORT), DestExpect(UDP53, RS1, 53, inactive=1, conns=1, inpkts=2, inbytes=2 * qn,
                                                   outpkts=1, outbytes=an)),
        (ServiceExpect(TCP80), ServiceExpect(UDP53, 1, 2, 2 * qn, 1, an)),
        (t.conn("UDP", T_UDP, RS1, cport=50000, svc=UDP53, dport=53),), check_ms=6, tags=("nat", "udp")))

    # A real server's packet that belongs to no entry is not the director's business: the kernel's
    # ip_vs_out lets it pass (nat_icmp_send off), and so does the fast path.
    stray = from_rs("A", 1, 1, dport=40001, dst=CLIENT2)
    out.append(t.untouched("nat-stray-reply", "a packet from a real server that matches no NAT entry passes "
                           "untouched (ACCEPT, R_NO_SERVICE), as with the kernel's ip_vs_out", stray, "ACCEPT",
                           "NO_SERVICE", setup=nat_setup, tags=("nat",)))

    syn_ttl1, synack_ttl1 = t._with_ttl(syn, 1), t._with_ttl(synack, 1)
    out.append(Row(
        "nat-ttl-exceeded", "NAT: the director routes both ways, so a TTL of 1 runs out both ways (R_TTL_EXCEEDED): "
        "the client gets ICMP time exceeded from the VIP, its entry made and the packet counted first "
        "(decrement_ttl in ip_vs_nat_xmit); the real server's reply is answered by ip_forward before "
        "ip_vs_out sees it (entry and stats untouched), from its destination's route source address, here "
        "0.0.0.0: the kernel's raw output fills that in from its route to the real server", nat_setup,
        (PacketStep(syn_ttl1, 0, "ANSWER", "TTL_EXCEEDED", out=t.time_exceeded(syn_ttl1, VIP)),
         PacketStep(synack_ttl1, 5, "ANSWER", "TTL_EXCEEDED", out=t.time_exceeded(synack_ttl1, "0.0.0.0"))),
        (DestExpect(TCP80, RS1, RPORT, active=1, conns=1, inpkts=1, inbytes=sz(syn)), udp_dest),
        (ServiceExpect(TCP80, 1, 1, sz(syn)), udp_svc),
        (t.conn("SYN_RECV", T_SR - 5, RS1, dport=RPORT),), check_ms=5, tags=("nat", "ttl")))
    rs_fin_ttl1 = t._with_ttl(from_rs("FA", 5001, 1001), 1)
    out.append(Row(
        "nat-out-ttl-unresolved", "a NAT reply with TTL 1 leaves its entry as it was: a real server's FIN that runs "
        "out does not move ESTABLISHED to CLOSE_WAIT nor refresh the timer (the kernel's ip_vs_out never sees it); "
        "with the destination's forwarding state gone (a neighbour being re-resolved), the time exceeded is still "
        "sent, from 0.0.0.0, which the adapters' IPPROTO_RAW socket has the kernel fill in (raw_send_hdrinc) with "
        "the source of its route to the real server: what ip_forward's icmp_send would choose", nat_setup,
        (xin(syn, 0), xout(synack, 1), xin(ack, 2), ConfigStep("set_fwd", TCP80, DestSetup(RS1, RPORT, fwd="masq",
                                                                                           l2=False), 3),
         PacketStep(rs_fin_ttl1, 4, "ANSWER", "TTL_EXCEEDED", out=t.time_exceeded(rs_fin_ttl1, "0.0.0.0"))),
        (DestExpect(TCP80, RS1, RPORT, active=1, conns=1, inpkts=2, inbytes=sz(syn) + sz(ack), handshakes=1,
                    outpkts=1, outbytes=sz(synack)), udp_dest),
        (ServiceExpect(TCP80, 1, 2, sz(syn) + sz(ack), 1, sz(synack)), udp_svc),
        (t.conn("ESTABLISHED", T_ES - 2, RS1, dport=RPORT),), check_ms=4, tags=("nat", "ttl")))

    no_l2 = setup(l2=False)
    out.append(Row(
        "nat-no-l2", "NAT without forwarding state: entry made and counted, packet dropped (R_NO_L2); a reply still "
        "goes back (the kernel routes it)", no_l2,
        (t.verdict(syn, 0, "DROP", "L2_QUEUED"), xout(synack, 5)),
        (DestExpect(TCP80, RS1, RPORT, active=1, conns=1, inpkts=1, inbytes=sz(syn), outpkts=1,
                    outbytes=sz(synack)), udp_dest),
        (ServiceExpect(TCP80, 1, 1, sz(syn), 1, sz(synack)), udp_svc),
        (t.conn("SYN_RECV", T_SR, RS1, dport=RPORT),), check_ms=5, tags=("nat", "l2")))

    out.append(Row(
        "nat-deleted-dest-reply", "replies of a deleted NAT destination's entry are still translated but not "
        "counted; its client's packets are dropped (DEST_UNAVAILABLE)", nat_setup,
        (xin(syn, 0), ConfigStep("del_dest", TCP80, DestSetup(RS1, RPORT, fwd="masq"), 1), xout(synack, 5),
         t.verdict(ack, 6, "DROP", "DEST_UNAVAILABLE")),
        (udp_dest,), (ServiceExpect(TCP80, 1, 1, sz(syn)), udp_svc),
        (t.conn("SYN_RECV", T_SR - 1, RS1, dport=RPORT),), check_ms=6, tags=("nat", "deleted")))

    out += _icmp_rows()
    out += _portless_rows()
    return out


def _portless_rows() -> list[Row]:
    """NAT destinations reached on the client's port (the kernel's cp->dport: a destination without a
    port, or any destination of a persistent port-zero or fwmark service), and NAT under one-packet
    scheduling, whose entries are never looked up (the kernel never hashes OPS connections)."""
    rows: list[Row] = []
    sz = t.ip_total_length
    syn_a = t.tcp(flags="S", sport=47000, dport=443)
    syn_b = t.tcp(flags="S", sport=47001, dport=8443)
    synack_a = t.tcp(flags="SA", sport=443, dport=47000, src=RS1, dst=CLIENT1, seq=5000, ack=1001)
    synack_b = t.tcp(flags="SA", sport=8443, dport=47001, src=RS1, dst=CLIENT1, seq=6000, ack=1001)
    ins, outs = sz(syn_a) + sz(syn_b), sz(synack_a) + sz(synack_b)
    steps = (t.xmit(syn_a, to_rs(syn_a, 443), 0, RS1), t.answered(synack_a, to_client(synack_a, 443), 1),
             t.xmit(syn_b, to_rs(syn_b, 8443), 2, RS1), t.answered(synack_b, to_client(synack_b, 8443), 3))
    for row_id, dest_port, what in (("nat-port0-dest-without-port", 0, "-r RIP (no port)"),
                                    ("nat-port0-dest-with-port", 8080, "-r RIP:8080, whose port a persistent "
                                                                      "port-zero service ignores (ip_vs_sched_persist)")):
        rows.append(Row(
            row_id, f"NAT under a persistent TCP port-0 service, {what}: the client's 443 and 8443 reach the real "
            "server on 443 and 8443 (one template), and its replies from RIP:443 / RIP:8443 are found by the reply "
            "tuple and go back as VIP:443 / VIP:8443",
            Setup((ServiceSetup(t.TCP0, "rr", (DestSetup(RS1, dest_port, fwd="masq"),), persistent=300),)), steps,
            (DestExpect(t.TCP0, RS1, dest_port, active=2, conns=2, inpkts=2, inbytes=ins, outpkts=2, outbytes=outs,
                        persist=1),),
            (ServiceExpect(t.TCP0, 2, 2, ins, 2, outs),),
            (t.conn("SYN_RECV", T_SR - 2, RS1, cport=47000, svc=(t.PROTO_TCP, VIP, 443), dport=443),
             t.conn("SYN_RECV", T_SR, RS1, cport=47001, svc=(t.PROTO_TCP, VIP, 8443), dport=8443),
             t.ConnExpect(t.PROTO_TCP, CLIENT1, 0, VIP, 0, RS1, 0, "NONE", 300_000 - 1)),
            check_ms=3, tags=("nat", "port0", "persist")))

    q = t.udp(sport=50000, dport=5353)
    answer = t.udp(sport=5353, dport=50000, src=RS1, dst=CLIENT1, payload=b"answer-01")
    rows.append(Row(
        "nat-fwmark-dest-without-port", "NAT under a non-persistent fwmark service, destination without a port: the "
        "marked datagram to VIP:5353 reaches RIP:5353 (dest->port ? dest->port : vport), and the answer from "
        "RIP:5353 goes back as VIP:5353",
        Setup((ServiceSetup(t.FWM1, "rr", (DestSetup(RS1, 0, fwd="masq"),)),)),
        (t._marked(t.xmit(q, to_rs(q, 5353), 0, RS1), 1), t.answered(answer, to_client(answer, 5353), 1)),
        (DestExpect(t.FWM1, RS1, 0, inactive=1, conns=1, inpkts=1, inbytes=sz(q), outpkts=1, outbytes=sz(answer)),),
        (ServiceExpect(t.FWM1, 1, 1, sz(q), 1, sz(answer)),),
        (t.conn("UDP", T_UDP, RS1, cport=50000, svc=(t.PROTO_UDP, VIP, 5353), dport=5353),),
        check_ms=1, tags=("nat", "fwmark", "udp")))

    query = t.udp(sport=50000)
    ops_answer = t.udp(sport=53, dport=50000, src=RS1, dst=CLIENT1, payload=b"answer-01")
    rows.append(Row(
        "nat-ops-udp", "NAT under one-packet scheduling (-o): the datagram is rewritten to RIP:53 and no entry "
        "stays (the kernel never hashes an OPS connection), so the real server's answer finds none and passes "
        "untranslated (ACCEPT, NO_SERVICE), as through kernel IPVS",
        Setup((ServiceSetup(UDP53, "rr", (DestSetup(RS1, 53, fwd="masq"),), ops=True),)),
        (t.xmit(query, to_rs(query, 53), 0, RS1), t.verdict(ops_answer, 1, "ACCEPT", "NO_SERVICE")),
        (DestExpect(UDP53, RS1, 53, conns=1, inpkts=1, inbytes=sz(query)),),
        (ServiceExpect(UDP53, 1, 1, sz(query)),), (), check_ms=1, tags=("nat", "ops", "udp")))
    return rows


def _icmp_rows() -> list[Row]:
    rows: list[Row] = []
    sz = t.ip_total_length
    nat_setup = setup()
    syn = t.tcp(flags="S")
    udp_dest, udp_svc = DestExpect(UDP53, RS1, 53), ServiceExpect(UDP53)
    # From the client's side, about a reply VIP:80 -> CIP:40000: to the real server, quoting RIP:8080 -> CIP.
    from_client = t.icmp_error(t.reply_quote(), 3, 4, nexthopmtu=1400)
    to_rs_error = t.icmp_error(t.reply_quote(src=RS1, dst=CLIENT1, sport=RPORT, dport=40000), 3, 4, nexthopmtu=1400,
                               src=CLIENT1, dst=RS1, ttl=60)
    # From the real server's side, about CIP:40000 -> RIP:8080: to the client as VIP -> CIP quoting CIP -> VIP:80.
    from_rs_error = t.icmp_error(t.reply_quote(src=CLIENT1, dst=RS1, sport=40000, dport=RPORT), 3, 4,
                                 nexthopmtu=1400, src=RS1, dst=CLIENT1)
    to_client_error = t.icmp_error(t.reply_quote(src=CLIENT1, dst=VIP, sport=40000, dport=80), 3, 4,
                                   nexthopmtu=1400, src=VIP, dst=CLIENT1, ttl=60)

    def row(row_id: str, description: str, step: PacketStep, ins: int, outs: int,
            tags: tuple[str, ...] = ()) -> Row:
        inb = sz(syn) + (sz(step.packet) if ins else 0)
        outb = sz(step.packet) if outs else 0
        return Row(row_id, description, nat_setup, (t.xmit(syn, to_rs(syn), 0, RS1), step),
                   (DestExpect(TCP80, RS1, RPORT, active=1, conns=1, inpkts=1 + ins, inbytes=inb, outpkts=outs,
                               outbytes=outb), udp_dest),
                   (ServiceExpect(TCP80, 1, 1 + ins, inb, outs, outb), udp_svc),
                   (t.conn("SYN_RECV", T_SR - 5, RS1, dport=RPORT),), check_ms=5, tags=("icmp", "nat") + tags)

    rows.append(row("icmp-nat-in", "an ICMP error from the client's side about a NAT reply goes to the real server: "
                    "outer destination RIP (the sender keeps its address, TTL - 1), quoting RIP:8080 -> CIP:cport; "
                    "quoted IP and ICMP checksums recomputed; in-stats",
                    t.xmit(from_client, to_rs_error, 5, RS1, "ICMP"), 1, 0))
    rows.append(row("icmp-nat-out", "an ICMP error from the real server about CIP:cport -> RIP:8080 goes to the "
                    "client as VIP -> CIP, quoting CIP:cport -> VIP:80 (ANSWER); out-stats",
                    t.answered(from_rs_error, to_client_error, 5, "ICMP"), 0, 1))
    rows.append(row("icmp-nat-out-ttl", "an ICMP error from the real server with TTL 1 dies in the director's "
                    "ip_forward (R_TTL_EXCEEDED, no ICMP error about an ICMP error) before ip_vs_out_icmp sees it: "
                    "not counted", t.verdict(t._with_ttl(from_rs_error, 1), 5, "DROP", "TTL_EXCEEDED"), 0, 0))
    bad_ttl1 = t._fix_icmp_checksum(t._with_ttl(from_rs_error, 1), good=False)
    rows.append(row("icmp-nat-out-ttl-bad-csum", "the TTL of a forwarded error is checked before its checksum "
                    "(ip_forward comes before ip_vs_out_icmp): R_TTL_EXCEEDED, not counted",
                    t.verdict(bad_ttl1, 5, "DROP", "TTL_EXCEEDED"), 0, 0, ("bad",)))
    bad = t._fix_icmp_checksum(from_rs_error, good=False)
    rows.append(row("icmp-nat-bad-csum-out", "an ICMP error from the real server with a wrong ICMP checksum is "
                    "dropped (R_BAD_CSUM) and not counted", t.verdict(bad, 5, "DROP", "BAD_CSUM"), 0, 0, ("bad",)))

    # UDP: the real server's port unreachable about CIP:50000 -> RIP:53.
    query = t.udp(sport=50000)
    unreach = t.icmp_error(udp_quote(RS1), 3, 3, src=RS1, dst=CLIENT1)
    unreach_out = t.icmp_error(udp_quote(VIP), 3, 3, src=VIP, dst=CLIENT1, ttl=60)
    rows.append(Row(
        "icmp-nat-udp-port-unreach", "the real server's port unreachable about a NAT UDP datagram goes to the client "
        "as VIP -> CIP quoting CIP:50000 -> VIP:53", nat_setup,
        (t.xmit(query, to_rs(query, 53), 0, RS1), t.answered(unreach, unreach_out, 5, "ICMP")),
        (DestExpect(TCP80, RS1, RPORT), DestExpect(UDP53, RS1, 53, inactive=1, conns=1, inpkts=1, inbytes=sz(query),
                                                   outpkts=1, outbytes=sz(unreach))),
        (ServiceExpect(TCP80), ServiceExpect(UDP53, 1, 1, sz(query), 1, sz(unreach))),
        (t.conn("UDP", T_UDP - 5, RS1, cport=50000, svc=UDP53, dport=53),), check_ms=5, tags=("icmp", "nat", "udp")))
    return rows
