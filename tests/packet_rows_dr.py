"""Packet-table rows (tests/packet_table.py's format) of a DR (direct routing) connection's life: the
flow from SYN to FIN or RST, UDP entries and their expiry, no destination (ICMP port unreachable
from the VIP), lookups that find no service or no connection, the TCP state machine's edges (flag
combinations, expiry at the boundary, reuse of CLOSE and TIME_WAIT entries), SYN retransmissions
and set_timeouts.
"""

from __future__ import annotations

import packet_table as t
from packet_table import (
    RS1,
    RS2,
    T_CL,
    T_ES,
    T_FW,
    T_SR,
    T_UDP,
    TCP80,
    UDP53,
    VIP2,
    DestExpect,
    DestSetup,
    PacketStep,
    Row,
    ServiceExpect,
    ServiceSetup,
    Setup,
    Step,
)


def dr_flow_rows() -> list[Row]:
    setup = t.one_dest()
    syn = t.tcp(flags="S")
    ack = t.tcp(flags="A", seq=1001, ack=5001)
    data = t.tcp(flags="PA", payload=b"G" * 100, seq=1001, ack=5001)
    fin = t.tcp(flags="FA", seq=1101, ack=5001)
    rst = t.tcp(flags="RA", seq=1001, ack=5001)
    n = {name: t.ip_total_length(p) for name, p in (("syn", syn), ("ack", ack), ("data", data), ("fin", fin), ("rst", rst))}
    udp_svc = ServiceExpect(UDP53)
    udp_dest = DestExpect(UDP53, RS1, 53)

    def row(row_id: str, description: str, steps: tuple[Step, ...], state: str, timeout: int,
            names: tuple[str, ...]) -> Row:
        inbytes = sum(n[x] for x in names)
        last = steps[-1].now_ms
        return Row(
            row_id, description, setup, steps,
            (DestExpect(TCP80, RS1, active=t.active_in(state), inactive=1 - t.active_in(state), conns=1,
                        inpkts=len(names), inbytes=inbytes, handshakes=int("ack" in names)),
             udp_dest),
            (ServiceExpect(TCP80, 1, len(names), inbytes), udp_svc),
            (t.conn(state, timeout, RS1),), check_ms=last, tags=("dr",))

    return [
        row("dr-syn", "SYN to the VIP creates an entry (SYN_RECV, active) and leaves unchanged with the real "
            "server's MAC", (t.fwd(syn, 0, RS1),), "SYN_RECV", T_SR, ("syn",)),
        row("dr-ack", "the handshake's ACK makes the entry ESTABLISHED (active) and is forwarded unchanged",
            (t.fwd(syn, 0, RS1), t.fwd(ack, 10, RS1)), "ESTABLISHED", T_ES, ("syn", "ack")),
        row("dr-data", "data on an established flow is forwarded unchanged; inbytes counts IP total length",
            (t.fwd(syn, 0, RS1), t.fwd(ack, 10, RS1), t.fwd(data, 20, RS1)), "ESTABLISHED", T_ES, ("syn", "ack", "data")),
        row("dr-fin", "the client's FIN moves ESTABLISHED to FIN_WAIT (INPUT-ONLY) and makes it inactive",
            (t.fwd(syn, 0, RS1), t.fwd(ack, 10, RS1), t.fwd(data, 20, RS1), t.fwd(fin, 30, RS1)), "FIN_WAIT", T_FW,
            ("syn", "ack", "data", "fin")),
        row("dr-rst", "the client's RST moves ESTABLISHED to CLOSE and is still forwarded",
            (t.fwd(syn, 0, RS1), t.fwd(ack, 10, RS1), t.fwd(rst, 20, RS1)), "CLOSE", T_CL, ("syn", "ack", "rst")),
    ]


def udp_rows() -> list[Row]:
    setup = t.one_dest()
    first, second = t.udp(payload=b"query-01"), t.udp(payload=b"query-02-longer")
    b1, b2 = t.ip_total_length(first), t.ip_total_length(second)
    rows = [
        Row("udp-flow", "a UDP flow: the first datagram creates an inactive UDP entry, the second reuses it",
            setup, (t.fwd(first, 0, RS1), t.fwd(second, 5000, RS1)),
            (DestExpect(TCP80, RS1), DestExpect(UDP53, RS1, 53, inactive=1, conns=1, inpkts=2, inbytes=b1 + b2)),
            (ServiceExpect(TCP80), ServiceExpect(UDP53, 1, 2, b1 + b2)),
            (t.conn("UDP", T_UDP, RS1, cport=50000, svc=UDP53, dport=53),), check_ms=5000, tags=("udp",)),
        Row("udp-expiry", "a UDP entry dies 300 s after its last packet; the next datagram is a new connection",
            setup, (t.fwd(first, 0, RS1), t.fwd(second, 300_000, RS1)),
            (DestExpect(TCP80, RS1), DestExpect(UDP53, RS1, 53, inactive=1, conns=2, inpkts=2, inbytes=b1 + b2)),
            (ServiceExpect(TCP80), ServiceExpect(UDP53, 2, 2, b1 + b2)),
            (t.conn("UDP", T_UDP, RS1, cport=50000, svc=UDP53, dport=53),), check_ms=300_000, tags=("udp", "expiry")),
    ]
    return rows


def no_dest_rows() -> list[Row]:
    setup = Setup((ServiceSetup(TCP80, "rr"), ServiceSetup(UDP53, "wlc")))
    dests, services = t.idle_expectations(setup)
    from_rows = [
        ("no-dest-tcp", "SYN to a service without destinations: ICMP port unreachable from the VIP",
         t.tcp(sport=45000, payload=b"early-data")),
        ("no-dest-udp", "UDP to a service without destinations: ICMP port unreachable quoting the UDP header",
         t.udp(sport=45001, payload=b"x" * 40)),
        ("no-dest-ip-options", "the quote keeps the original IP options (IHL 6) and 8 bytes of TCP header",
         t.tcp(sport=45002, options=t._router_alert())),
    ]
    rows = [Row(i, d, setup, (t.answer(p, 0),), dests, services, (), tags=("no-dest",)) for i, d, p in from_rows]
    # ANSWER wins over a full table: scheduling comes first.
    setup_full = Setup((ServiceSetup(TCP80, "rr", (DestSetup(RS1),)), ServiceSetup(UDP53, "rr")), conn_max=1)
    syn = t.tcp(sport=45010)
    query = t.udp(sport=45011)
    size = t.ip_total_length(syn)
    rows.append(Row(
        "no-dest-before-table-full", "with the table full, a packet for a service without destinations still gets "
        "the ICMP answer (no destination is decided before the table is consulted)",
        setup_full, (t.fwd(syn, 0, RS1), t.answer(query, 1)),
        (DestExpect(TCP80, RS1, active=1, conns=1, inpkts=1, inbytes=size),),
        (ServiceExpect(TCP80, 1, 1, size), ServiceExpect(UDP53)),
        (t.conn("SYN_RECV", T_SR - 1, RS1, cport=45010),), check_ms=1, tags=("no-dest", "table-full")))
    return rows


def lookup_rows() -> list[Row]:
    setup = t.one_dest()
    rows = [
        t.untouched("no-service-port", "SYN to the VIP on a port without a service passes through",
                    t.tcp(dport=8080), "ACCEPT", "NO_SERVICE"),
        t.untouched("no-service-addr", "SYN to another address passes through", t.tcp(dst=VIP2), "ACCEPT", "NO_SERVICE"),
        t.untouched("no-service-proto", "UDP to a port that only has a TCP service passes through",
                    t.udp(dport=80), "ACCEPT", "NO_SERVICE"),
        t.untouched("no-service-nonsyn", "an ACK to a port without a service is NO_SERVICE (service lookup comes first)",
                    t.tcp(dport=8080, flags="A"), "ACCEPT", "NO_SERVICE"),
    ]
    for flags, name in (("A", "ack"), ("PA", "data"), ("FA", "fin"), ("R", "rst"), ("", "noflags")):
        rows.append(t.untouched(f"no-conn-{name}", f"TCP {name} without an entry passes through (the local stack answers)",
                                t.tcp(flags=flags, seq=1001, ack=1 if "A" in flags else 0), "ACCEPT", "NO_CONN",
                                setup, tags=("no-conn",)))
    return rows


def tcp_flag_rows() -> list[Row]:
    setup = t.one_dest()
    rows = []
    syn = t.tcp(flags="S")
    size = t.ip_total_length(syn)

    def single_conn(row_id: str, description: str, steps: tuple[Step, ...], state: str, timeout: int,
                    handshakes: int, conns: int = 1, tags: tuple[str, ...] = ()) -> Row:
        pkts = [s for s in steps if isinstance(s, PacketStep)]
        inbytes = sum(t.ip_total_length(p.packet) for p in pkts)
        last = pkts[-1].now_ms
        return Row(row_id, description, setup, steps,
                   (DestExpect(TCP80, RS1, active=t.active_in(state), inactive=1 - t.active_in(state), conns=conns,
                               inpkts=len(pkts), inbytes=inbytes, handshakes=handshakes), DestExpect(UDP53, RS1, 53)),
                   (ServiceExpect(TCP80, conns, len(pkts), inbytes), ServiceExpect(UDP53)),
                   (t.conn(state, timeout, RS1),), check_ms=last, tags=("tcp-state",) + tags)

    rows.append(single_conn("synack-creates", "a SYN+ACK without an entry has SYN: it is scheduled (syn event)",
                            (t.fwd(t.tcp(flags="SA", ack=1), 0, RS1),), "SYN_RECV", T_SR, handshakes=0))
    rows.append(t.untouched("synrst-no-conn", "a SYN+RST without an entry is never scheduled (tcp_conn_schedule): "
                            "the local stack answers", t.tcp(flags="SR"), "ACCEPT", "NO_CONN", setup, tags=("tcp-state",)))
    rows.append(single_conn("synfin-creates", "a SYN+FIN without an entry: syn wins over fin -> SYN_RECV",
                            (t.fwd(t.tcp(flags="SF"), 0, RS1),), "SYN_RECV", T_SR, handshakes=0))
    ack = t.tcp(flags="A", seq=1001, ack=1)
    rows.append(single_conn("syn-on-established", "a SYN on an ESTABLISHED entry keeps it (no reuse), same server",
                            (t.fwd(syn, 0, RS1), t.fwd(ack, 1, RS1), t.fwd(syn, 2, RS1)), "ESTABLISHED", T_ES,
                            handshakes=1))
    rows.append(Row("noflags-closes", "a TCP segment without SYN/FIN/ACK/RST moves the entry to CLOSE (the kernel's "
                    "set_tcp_state starts from CLOSE) and restarts the timer with CLOSE's timeout", setup,
                    (t.fwd(syn, 0, RS1), t.fwd(ack, 1, RS1), t.fwd(t.tcp(flags="", seq=1001), 5000, RS1)),
                    (DestExpect(TCP80, RS1, inactive=1, conns=1, inpkts=3, inbytes=3 * size, handshakes=1),
                     DestExpect(UDP53, RS1, 53)),
                    (ServiceExpect(TCP80, 1, 3, 3 * size), ServiceExpect(UDP53)),
                    (t.conn("CLOSE", T_CL, RS1),), check_ms=5000, tags=("tcp-state",)))
    rows.append(single_conn("expiry-boundary-alive", "an entry is alive 1 ms before its expiry time",
                            (t.fwd(syn, 0, RS1), t.fwd(ack, T_SR - 1, RS1)), "ESTABLISHED", T_ES, handshakes=1,
                            tags=("expiry",)))
    # At exactly its expiry time the SYN_RECV entry is dead: the ACK finds no entry.
    dests = (DestExpect(TCP80, RS1, conns=1, inpkts=1, inbytes=size), DestExpect(UDP53, RS1, 53))
    rows.append(Row("expiry-boundary-dead", "an entry is dead at its expiry time (now >= expires): ACK -> NO_CONN",
                    setup, (t.fwd(syn, 0, RS1), t.verdict(ack, T_SR, "ACCEPT", "NO_CONN")), dests,
                    (ServiceExpect(TCP80, 1, 1, size), ServiceExpect(UDP53)), (), check_ms=T_SR,
                    tags=("tcp-state", "expiry")))

    # conn_reuse_mode=1: SYN on CLOSE / TIME_WAIT reschedules (rr moves on to the next destination).
    setup2 = Setup((ServiceSetup(TCP80, "rr", (DestSetup(RS1), DestSetup(RS2))),))
    rst = t.tcp(flags="R", seq=1001)
    fin = t.tcp(flags="F", seq=1001)
    reuse_cases = (
        ("reuse-close", "CLOSE", (t.fwd(syn, 0, RS2), t.fwd(ack, 1, RS2), t.fwd(rst, 2, RS2)), t.fwd(syn, 3, RS1)),
        ("reuse-time-wait", "TIME_WAIT", (t.fwd(syn, 0, RS2), t.fwd(fin, 1, RS2)), t.fwd(syn, 2, RS1)),
    )
    for row_id, state, closing, new_syn in reuse_cases:
        old = len(closing)
        handshakes = int(state == "CLOSE")  # that path went through ESTABLISHED
        rows.append(Row(
            row_id, f"a new SYN on a {state} entry expires it and schedules afresh (conn_reuse_mode=1)",
            setup2, closing + (new_syn,),
            (DestExpect(TCP80, RS2, conns=1, inpkts=old, inbytes=old * size, handshakes=handshakes),
             DestExpect(TCP80, RS1, active=1, conns=1, inpkts=1, inbytes=size)),
            (ServiceExpect(TCP80, 2, old + 1, (old + 1) * size),), (t.conn("SYN_RECV", T_SR, RS1),),
            check_ms=new_syn.now_ms, tags=("tcp-state", "reuse")))
    synack = t.tcp(flags="SA", ack=1)
    rows.append(Row(
        "reuse-synack", "a SYN+ACK on a TIME_WAIT entry is a new connection too (is_new_conn looks at SYN only): "
        "the entry expires and the SYN+ACK is scheduled afresh",
        setup2, (t.fwd(syn, 0, RS2), t.fwd(fin, 1, RS2), t.fwd(synack, 2, RS1)),
        (DestExpect(TCP80, RS2, conns=1, inpkts=2, inbytes=2 * size),
         DestExpect(TCP80, RS1, active=1, conns=1, inpkts=1, inbytes=size)),
        (ServiceExpect(TCP80, 2, 3, 3 * size),), (t.conn("SYN_RECV", T_SR, RS1),), check_ms=2,
        tags=("tcp-state", "reuse")))
    rows.append(Row(
        "reuse-synrst", "a SYN+RST on a CLOSE entry expires it; as a miss it is never scheduled (NO_CONN)",
        setup2, (t.fwd(syn, 0, RS2), t.fwd(ack, 1, RS2), t.fwd(rst, 2, RS2), t.verdict(t.tcp(flags="SR"), 3, "ACCEPT", "NO_CONN")),
        (DestExpect(TCP80, RS2, conns=1, inpkts=3, inbytes=3 * size, handshakes=1), DestExpect(TCP80, RS1)),
        (ServiceExpect(TCP80, 1, 3, 3 * size),), (), check_ms=3, tags=("tcp-state", "reuse")))
    return rows


def syn_retrans_rows() -> list[Row]:
    setup = t.one_dest()
    syn = t.tcp(flags="S", seq=1000)
    other_seq = t.tcp(flags="S", seq=777)
    ack = t.tcp(flags="A", seq=1001, ack=5001)
    size = t.ip_total_length(syn)
    steps = (t.fwd(syn, 0, RS1), t.fwd(syn, 1000, RS1, "retransmitted SYN: same sequence number"),
             t.fwd(syn, 3000, RS1, "again"), t.fwd(other_seq, 4000, RS1, "different sequence number: not counted"),
             t.fwd(ack, 5000, RS1), t.fwd(syn, 6000, RS1, "on ESTABLISHED: not counted"))
    return [Row("syn-retrans-handshake", "SYNs repeating the first SYN's sequence number while in SYN_RECV count "
                "syn_retrans; SYN_RECV -> ESTABLISHED counts a handshake", setup, steps,
                (DestExpect(TCP80, RS1, active=1, conns=1, inpkts=6, inbytes=6 * size, syn_retrans=2, handshakes=1),
                 DestExpect(UDP53, RS1, 53)),
                (ServiceExpect(TCP80, 1, 6, 6 * size), ServiceExpect(UDP53)),
                (t.conn("ESTABLISHED", T_ES, RS1),), check_ms=6000, tags=("tcp-state", "signals"))]


def timeout_rows() -> list[Row]:
    setup = Setup(t.one_dest().services, timeouts=(100, 7, 30))
    syn, ack = t.tcp(), t.tcp(flags="A", seq=1001, ack=1)
    query = t.udp()
    size, qsize = t.ip_total_length(syn), t.ip_total_length(query)
    return [Row(
        "timeouts-set", "set_timeouts(100, 7, 30): ESTABLISHED, FIN_WAIT and UDP entries use them; others keep theirs",
        setup, (t.fwd(syn, 0, RS1), t.fwd(ack, 10, RS1), t.fwd(query, 20, RS1), t.fwd(t.tcp(sport=40001), 30, RS1),
                t.fwd(t.tcp(sport=40001, flags="A", seq=1001, ack=1), 40, RS1),
                t.fwd(t.tcp(sport=40001, flags="FA", seq=1001, ack=1), 50, RS1)),
        (DestExpect(TCP80, RS1, active=1, inactive=1, conns=2, inpkts=5, inbytes=5 * size, handshakes=2),
         DestExpect(UDP53, RS1, 53, inactive=1, conns=1, inpkts=1, inbytes=qsize)),
        (ServiceExpect(TCP80, 2, 5, 5 * size), ServiceExpect(UDP53, 1, 1, qsize)),
        (t.conn("ESTABLISHED", 100_000 - 40, RS1), t.conn("FIN_WAIT", 7_000, RS1, cport=40001),
         t.conn("UDP", 30_000 - 30, RS1, cport=50000, svc=UDP53, dport=53)), check_ms=50, tags=("timeouts",))]
