"""Packet-table rows (tests/packet_table.py's format) of FULLNAT: the IN and OUT rewrites (local
address and port from the seeded cursors: packet_table.local_port), TTL, UDP checksum 0, TOA
(held, no room, path MTU) and MSS lowering, port-zero and persistent services, local ports
exhausted, freed and local addresses used in turn, no forwarding state, deleted destinations.
ICMP errors about FULLNAT connections are tests/packet_rows_icmp.py's, SYN-proxy
tests/packet_rows_synproxy.py's, the PROXY protocol tests/packet_rows_proxy.py's.
"""

from __future__ import annotations

import packet_table as t
from packet_table import (
    CLIENT1,
    IFINDEX,
    LIP1,
    LIP2,
    LPORT_MAX,
    LPORT_MIN,
    PROTO_TCP,
    PROTO_UDP,
    RS1,
    T_ES,
    T_FW,
    T_SR,
    T_UDP,
    TCP0,
    TCP80,
    UDP53,
    VIP,
    ConfigStep,
    ConnExpect,
    DestExpect,
    DestSetup,
    PacketStep,
    Row,
    ServiceExpect,
    ServiceSetup,
    Setup,
    Step,
    TimerStep,
)


def rows() -> list[Row]:
    rows: list[Row] = []
    lp = t.local_port(LIP1)
    syn = t.tcp(flags="S", tcp_options=[("MSS", 1460), ("SAckOK", b"")])
    synack = t.tcp(sport=80, dport=lp, src=RS1, dst=LIP1, flags="SA", seq=5000, ack=1001,
                   tcp_options=[("MSS", 1460), ("SAckOK", b"")])
    ack = t.tcp(flags="A", seq=1001, ack=5001)
    data = t.tcp(flags="PA", seq=1001, ack=5001, payload=b"GET / HTTP/1.0\r\n\r\n")
    reply = t.tcp(sport=80, dport=lp, src=RS1, dst=LIP1, flags="PA", seq=5001, ack=1019, payload=b"HTTP/1.0 200 OK\r\n")
    rs_fin = t.tcp(sport=80, dport=lp, src=RS1, dst=LIP1, flags="FA", seq=5018, ack=1019)
    n = {k: t.ip_total_length(v) for k, v in (("syn", syn), ("synack", synack), ("ack", ack), ("data", data),
                                              ("reply", reply), ("rs_fin", rs_fin))}
    to_rs = {k: t.nat(v, LIP1, lp, RS1, 80) for k, v in (("syn", syn), ("ack", ack), ("data", data))}
    to_client = {k: t.nat(v, VIP, 80, CLIENT1, 40000) for k, v in (("synack", synack), ("reply", reply),
                                                                    ("rs_fin", rs_fin))}
    setup = t._fnat_setup()
    udp_dest, udp_svc = DestExpect(UDP53, RS1, 53), ServiceExpect(UDP53)

    def flow_row(row_id: str, description: str, steps: tuple[Step, ...], state: str, timeout: int,
                 ins: tuple[str, ...], outs: tuple[str, ...], tags: tuple[str, ...] = ()) -> Row:
        inb, outb = sum(n[k] for k in ins), sum(n[k] for k in outs)
        last = steps[-1].now_ms
        active = t.active_in(state)
        return Row(row_id, description, setup, steps,
                   (DestExpect(TCP80, RS1, active=active, inactive=1 - active, conns=1, inpkts=len(ins), inbytes=inb,
                               handshakes=int("ack" in ins), outpkts=len(outs), outbytes=outb), udp_dest),
                   (ServiceExpect(TCP80, 1, len(ins), inb, len(outs), outb), udp_svc),
                   (t.conn(state, timeout, RS1, laddr=LIP1, lport=lp),), check_ms=last, tags=("fnat",) + tags,
                   laddrs=((TCP80, LIP1, 1), (UDP53, LIP1, 0)))

    rows.append(flow_row(
        "fnat-in-syn", "FULLNAT IN: the SYN leaves as LIP:lport -> RIP:rport (TTL - 1, checksums updated); the "
        "entry uses the INPUT table (NONE -> SYN_RECV) and its local port comes from the address's seeded cursor",
        (t.xmit(syn, to_rs["syn"], 0, RS1),), "SYN_RECV", T_SR, ("syn",), ()))
    rows.append(flow_row(
        "fnat-out-synack", "FULLNAT OUT: the real server's SYN-ACK to LIP:lport goes back as VIP:vport -> CIP:cport "
        "through the kernel (ANSWER); OUTPUT syn keeps SYN_RECV; out-stats count it",
        (t.xmit(syn, to_rs["syn"], 0, RS1), t.answered(synack, to_client["synack"], 5)), "SYN_RECV", T_SR,
        ("syn",), ("synack",)))
    rows.append(flow_row(
        "fnat-flow", "FULLNAT both ways: ACK (ESTABLISHED), data in, data out; the real server's FIN moves "
        "ESTABLISHED to FIN_WAIT (OUTPUT table)",
        (t.xmit(syn, to_rs["syn"], 0, RS1), t.answered(synack, to_client["synack"], 5), t.xmit(ack, to_rs["ack"], 10, RS1),
         t.xmit(data, to_rs["data"], 20, RS1), t.answered(reply, to_client["reply"], 30),
         t.answered(rs_fin, to_client["rs_fin"], 40)), "FIN_WAIT", T_FW,
        ("syn", "ack", "data"), ("synack", "reply", "rs_fin")))

    # TOA: the client's first ACK without SYN/RST carries option 254; the server's SYN MSS is lowered by 8.
    toa_setup = t._fnat_setup(toa=True)
    ack2 = t.tcp(flags="A", seq=1019, ack=5018)
    toa_ack = t.nat(ack, LIP1, lp, RS1, 80, toa=(40000, CLIENT1))
    big_opts = t.tcp(flags="A", seq=1001, ack=5001, tcp_options=[("NOP", None)] * 40)  # data offset 15: no room
    row_steps = (t.xmit(syn, to_rs["syn"], 0, RS1),
                 t.answered(synack, t.nat(synack, VIP, 80, CLIENT1, 40000, mss=1452), 5, note="MSS 1460 -> 1452"),
                 t.xmit(ack, toa_ack, 10, RS1, note="TOA appended"),
                 t.xmit(data, to_rs["data"], 20, RS1, note="only once"))
    size_toa = n["syn"] + n["ack"] + n["data"]
    rows.append(Row(
        "fnat-toa", "TOA: the client's first ACK (no SYN/RST) gets option 254 (client port and address) after its "
        "options, data offset + 2, total length + 8; later segments go without; the server's SYN-ACK MSS is lowered "
        "by 8", toa_setup, row_steps,
        (DestExpect(TCP80, RS1, active=1, conns=1, inpkts=3, inbytes=size_toa, handshakes=1, outpkts=1,
                    outbytes=n["synack"]), udp_dest),
        (ServiceExpect(TCP80, 1, 3, size_toa, 1, n["synack"]), udp_svc),
        (t.conn("ESTABLISHED", T_ES, RS1, laddr=LIP1, lport=lp),), check_ms=20, tags=("fnat", "toa")))
    unresolved, resolved = DestSetup(RS1, fwd="fullnat", l2=False), DestSetup(RS1, fwd="fullnat")
    rows.append(Row(
        "fnat-toa-held", "TOA on a held segment: the client's first ACK, held while the real server's MAC is "
        "re-resolved, leaves from the timers with option 254 as it would have unheld; the next goes without",
        toa_setup, row_steps[:2] + (
            ConfigStep("set_fwd", TCP80, unresolved, 6), t.verdict(ack, 10, "DROP", "L2_QUEUED"),
            ConfigStep("set_fwd", TCP80, resolved, 11),
            TimerStep(11, (("XMIT_L2", "FORWARDED", toa_ack, IFINDEX, t.expected_frame(RS1, toa_ack)[:14]),)),
            row_steps[3]),
        (DestExpect(TCP80, RS1, active=1, conns=1, inpkts=3, inbytes=size_toa, handshakes=1, outpkts=1,
                    outbytes=n["synack"]), udp_dest),
        (ServiceExpect(TCP80, 1, 3, size_toa, 1, n["synack"]), udp_svc),
        (t.conn("ESTABLISHED", T_ES, RS1, laddr=LIP1, lport=lp),), check_ms=20, tags=("fnat", "toa", "held")))
    rows.append(Row(
        "fnat-toa-no-room", "TOA: a segment whose TCP header is already 60 bytes goes without it (R_TOA_NO_ROOM); "
        "the next ACK gets it", toa_setup,
        (t.xmit(syn, to_rs["syn"], 0, RS1),
         t.xmit(big_opts, t.nat(big_opts, LIP1, lp, RS1, 80), 10, RS1, "TOA_NO_ROOM"),
         t.xmit(ack2, t.nat(ack2, LIP1, lp, RS1, 80, toa=(40000, CLIENT1)), 20, RS1)),
        (DestExpect(TCP80, RS1, active=1, conns=1, inpkts=3, inbytes=n["syn"] + t.ip_total_length(big_opts)
                    + t.ip_total_length(ack2), handshakes=1), udp_dest),
        (ServiceExpect(TCP80, 1, 3, n["syn"] + t.ip_total_length(big_opts) + t.ip_total_length(ack2)), udp_svc),
        (t.conn("ESTABLISHED", T_ES, RS1, laddr=LIP1, lport=lp),), check_ms=20, tags=("fnat", "toa")))
    mtu_setup = t._fnat_setup(toa=True, mtu=100)
    full = t.tcp(flags="PA", seq=1001, ack=5001, payload=b"x" * 60)  # 100 bytes: + 8 > MTU 100
    rows.append(Row(
        "fnat-toa-mtu", "TOA: a segment that would exceed the path MTU with the option goes without it "
        "(R_TOA_NO_ROOM)", mtu_setup,
        (t.xmit(syn, to_rs["syn"], 0, RS1), t.xmit(full, t.nat(full, LIP1, lp, RS1, 80), 10, RS1, "TOA_NO_ROOM")),
        (DestExpect(TCP80, RS1, active=1, conns=1, inpkts=2, inbytes=n["syn"] + 100, handshakes=1), udp_dest),
        (ServiceExpect(TCP80, 1, 2, n["syn"] + 100), udp_svc),
        (t.conn("ESTABLISHED", T_ES, RS1, laddr=LIP1, lport=lp),), check_ms=10, tags=("fnat", "toa")))

    # UDP: checksum updated, a zero checksum stays zero.
    ulp = t.local_port(LIP1)
    query = t.udp(sport=50000)
    nocsum = bytes(t._scapy().IP(query))
    nocsum = nocsum[:26] + b"\0\0" + nocsum[28:]
    answer_udp = t.udp(sport=53, dport=ulp, src=RS1, dst=LIP1, payload=b"answer-01")
    qn, an = t.ip_total_length(query), t.ip_total_length(answer_udp)
    rows.append(Row(
        "fnat-udp", "FULLNAT UDP both ways (UDP entries: no states); a datagram without checksum (0) keeps 0",
        setup, (t.xmit(query, t.nat(query, LIP1, ulp, RS1, 53), 0, RS1),
                t.answered(answer_udp, t.nat(answer_udp, VIP, 53, CLIENT1, 50000), 5),
                t.xmit(nocsum, t.nat(nocsum, LIP1, ulp, RS1, 53), 6, RS1, note="checksum 0 stays 0")),
        (DestExpect(TCP80, RS1), DestExpect(UDP53, RS1, 53, inactive=1, conns=1, inpkts=2, inbytes=2 * qn, outpkts=1,
                                            outbytes=an)),
        (ServiceExpect(TCP80), ServiceExpect(UDP53, 1, 2, 2 * qn, 1, an)),
        (t.conn("UDP", T_UDP, RS1, cport=50000, svc=UDP53, dport=53, laddr=LIP1, lport=ulp),), check_ms=6,
        tags=("fnat", "udp"), laddrs=((TCP80, LIP1, 0), (UDP53, LIP1, 1))))

    # FULLNAT under a persistent port-zero service, destination without a port: the connection reaches the
    # real server on the client's port (443, 8443) from the local address's next ports; the replies from
    # RIP:443 / RIP:8443 to LIP:lport are found by that reply tuple.
    p0_setup = Setup((ServiceSetup(TCP0, "rr", (DestSetup(RS1, 0, fwd="fullnat"),), laddrs=(LIP1,), persistent=300),),
                     lport_min=LPORT_MIN, lport_max=LPORT_MAX)
    s443, s8443 = t.tcp(flags="S", sport=47000, dport=443), t.tcp(flags="S", sport=47001, dport=8443)
    a443 = t.tcp(sport=443, dport=lp, src=RS1, dst=LIP1, flags="SA", seq=5000, ack=1001)
    a8443 = t.tcp(sport=8443, dport=lp + 1, src=RS1, dst=LIP1, flags="SA", seq=6000, ack=1001)
    p0_in, p0_out = 2 * t.ip_total_length(s443), t.ip_total_length(a443) + t.ip_total_length(a8443)
    rows.append(Row(
        "fnat-port0-client-port", "FULLNAT under a persistent TCP port-0 service, destination without a port: "
        "LIP:lport -> RIP:443 and LIP:lport+1 -> RIP:8443 (the client's ports; one template), the real server's "
        "SYN-ACKs from RIP:443 / RIP:8443 go back as VIP:443 / VIP:8443 -> CIP", p0_setup,
        (t.xmit(s443, t.nat(s443, LIP1, lp, RS1, 443), 0, RS1), t.answered(a443, t.nat(a443, VIP, 443, CLIENT1, 47000), 1),
         t.xmit(s8443, t.nat(s8443, LIP1, lp + 1, RS1, 8443), 2, RS1),
         t.answered(a8443, t.nat(a8443, VIP, 8443, CLIENT1, 47001), 3)),
        (DestExpect(TCP0, RS1, 0, active=2, conns=2, inpkts=2, inbytes=p0_in, outpkts=2, outbytes=p0_out,
                    persist=1),),
        (ServiceExpect(TCP0, 2, 2, p0_in, 2, p0_out),),
        (t.conn("SYN_RECV", T_SR - 2, RS1, cport=47000, svc=(PROTO_TCP, VIP, 443), dport=443, laddr=LIP1, lport=lp),
         t.conn("SYN_RECV", T_SR, RS1, cport=47001, svc=(PROTO_TCP, VIP, 8443), dport=8443, laddr=LIP1, lport=lp + 1),
         ConnExpect(PROTO_TCP, CLIENT1, 0, VIP, 0, RS1, 0, "NONE", 300_000 - 1)), check_ms=3,
        tags=("fnat", "port0", "persist"), laddrs=((TCP0, LIP1, 2),)))

    # A persistent UDP service whose director sees the replies (FULLNAT): the first reply assures the template
    # (udp_state_transition in the OUTPUT direction -> ip_vs_control_assure_ct).
    persist_udp = Setup((ServiceSetup(UDP53, "rr", (DestSetup(RS1, 53, fwd="fullnat"),), laddrs=(LIP1,),
                                      persistent=300),), lport_min=LPORT_MIN, lport_max=LPORT_MAX)
    rows.append(Row(
        "fnat-udp-template-assured", "FULLNAT UDP on a persistent service: the real server's reply makes the "
        "template ASSURED in the connection listing", persist_udp,
        (t.xmit(query, t.nat(query, LIP1, ulp, RS1, 53), 0, RS1),
         t.answered(answer_udp, t.nat(answer_udp, VIP, 53, CLIENT1, 50000), 5)),
        (DestExpect(UDP53, RS1, 53, inactive=1, conns=1, inpkts=1, inbytes=qn, persist=1, outpkts=1, outbytes=an),),
        (ServiceExpect(UDP53, 1, 1, qn, 1, an),),
        (t.conn("UDP", T_UDP, RS1, cport=50000, svc=UDP53, dport=53, laddr=LIP1, lport=ulp),
         ConnExpect(PROTO_UDP, CLIENT1, 0, VIP, 53, RS1, 53, "ASSURED", 300_000 - 5)), check_ms=5,
        tags=("fnat", "udp", "persist", "template-state"), laddrs=((UDP53, LIP1, 1),)))

    # TTL: the director routes FULLNAT packets, so a TTL of 1 cannot be forwarded.
    syn_ttl1 = t._with_ttl(syn, 1)
    synack_ttl1 = t._with_ttl(synack, 1)
    rows.append(Row(
        "fnat-ttl-exceeded", "FULLNAT: a TTL of 1 cannot be decremented: ICMP time exceeded both ways "
        "(R_TTL_EXCEEDED), to the client from the VIP, to the real server from the local address; the entry is "
        "made and the packets counted before the rewrite", setup,
        (PacketStep(syn_ttl1, 0, "ANSWER", "TTL_EXCEEDED", out=t.time_exceeded(syn_ttl1, VIP)),
         PacketStep(synack_ttl1, 5, "ANSWER", "TTL_EXCEEDED", out=t.time_exceeded(synack_ttl1, LIP1))),
        (DestExpect(TCP80, RS1, active=1, conns=1, inpkts=1, inbytes=n["syn"], outpkts=1, outbytes=n["synack"]),
         udp_dest),
        (ServiceExpect(TCP80, 1, 1, n["syn"], 1, n["synack"]), udp_svc),
        (t.conn("SYN_RECV", T_SR, RS1, laddr=LIP1, lport=lp),), check_ms=5, tags=("fnat", "ttl")))

    no_laddr = t._fnat_setup(laddrs=())
    dests, services = t.idle_expectations(no_laddr)
    rows.append(Row("fnat-no-laddr", "FULLNAT without local addresses: no entry, DROP/R_NO_LADDR", no_laddr,
                    (t.verdict(syn, 0, "DROP", "NO_LADDR"),), dests, services, (), tags=("fnat",),
                    laddrs=()))
    one_port = t._fnat_setup(lport_min=20000, lport_max=20000)
    syn_b = t.tcp(sport=40001)
    rows.append(Row(
        "fnat-ports-exhausted", "FULLNAT with one local port: the second connection to the same real server finds "
        "no free OUT tuple (R_NO_LADDR)", one_port,
        (t.xmit(syn, t.nat(syn, LIP1, 20000, RS1, 80), 0, RS1), t.verdict(syn_b, 1, "DROP", "NO_LADDR")),
        (DestExpect(TCP80, RS1, active=1, conns=1, inpkts=1, inbytes=n["syn"]), udp_dest),
        (ServiceExpect(TCP80, 1, 1, n["syn"]), udp_svc),
        (t.conn("SYN_RECV", T_SR - 1, RS1, laddr=LIP1, lport=20000),), check_ms=1, tags=("fnat",),
        laddrs=((TCP80, LIP1, 1), (UDP53, LIP1, 0))))
    two = n["syn"] + t.ip_total_length(syn_b)
    rows.append(Row(
        "fnat-port-freed", "a local port is free again once its entry expired", one_port,
        (t.xmit(syn, t.nat(syn, LIP1, 20000, RS1, 80), 0, RS1),
         t.xmit(syn_b, t.nat(syn_b, LIP1, 20000, RS1, 80), T_SR, RS1)),
        (DestExpect(TCP80, RS1, active=1, conns=2, inpkts=2, inbytes=two), udp_dest),
        (ServiceExpect(TCP80, 2, 2, two), udp_svc),
        (t.conn("SYN_RECV", T_SR, RS1, cport=40001, laddr=LIP1, lport=20000),), check_ms=T_SR, tags=("fnat", "expiry")))
    ring = t._fnat_setup(laddrs=(LIP1, LIP2))
    syns = [t.tcp(sport=41000 + i) for i in range(3)]
    used = [(LIP1, t.local_port(LIP1)), (LIP2, t.local_port(LIP2)), (LIP1, t.local_port(LIP1, 1))]
    rows.append(Row(
        "fnat-laddr-ring", "local addresses are used in turn (ring cursor), each with its own port cursor", ring,
        tuple(t.xmit(p, t.nat(p, la, port, RS1, 80), i, RS1) for i, (p, (la, port)) in enumerate(zip(syns, used, strict=True))),
        (DestExpect(TCP80, RS1, active=3, conns=3, inpkts=3, inbytes=3 * t.ip_total_length(syns[0])), udp_dest),
        (ServiceExpect(TCP80, 3, 3, 3 * t.ip_total_length(syns[0])), udp_svc),
        tuple(t.conn("SYN_RECV", T_SR - (2 - i), RS1, cport=41000 + i, laddr=la, lport=port)
              for i, (la, port) in enumerate(used)), check_ms=2, tags=("fnat",),
        laddrs=((TCP80, LIP1, 2), (TCP80, LIP2, 1), (UDP53, LIP1, 0), (UDP53, LIP2, 0))))
    no_l2 = t._fnat_setup(l2=False)
    rows.append(Row(
        "fnat-no-l2", "FULLNAT without forwarding state: entry made and counted, packet dropped (R_NO_L2); a reply "
        "still goes back (the kernel routes it)", no_l2,
        (t.verdict(syn, 0, "DROP", "L2_QUEUED"), t.answered(synack, to_client["synack"], 5)),
        (DestExpect(TCP80, RS1, active=1, conns=1, inpkts=1, inbytes=n["syn"], outpkts=1, outbytes=n["synack"]),
         udp_dest),
        (ServiceExpect(TCP80, 1, 1, n["syn"], 1, n["synack"]), udp_svc),
        (t.conn("SYN_RECV", T_SR, RS1, laddr=LIP1, lport=lp),), check_ms=5, tags=("fnat", "l2")))
    rows.append(Row(
        "fnat-deleted-dest-reply", "replies of a deleted destination's entry are still translated (no availability "
        "check on OUT) but not counted (AVAILABLE only); its client's packets are dropped", setup,
        (t.xmit(syn, to_rs["syn"], 0, RS1), ConfigStep("del_dest", TCP80, DestSetup(RS1, fwd="fullnat"), 1),
         t.answered(synack, to_client["synack"], 5), t.verdict(ack, 6, "DROP", "DEST_UNAVAILABLE")),
        (udp_dest,), (ServiceExpect(TCP80, 1, 1, n["syn"]), udp_svc),
        (t.conn("SYN_RECV", T_SR - 1, RS1, laddr=LIP1, lport=lp),), check_ms=6, tags=("fnat", "deleted")))
    return rows
