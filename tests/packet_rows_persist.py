"""Packet-table rows (tests/packet_table.py's format) of persistence and of the services built on it:
persistence templates (netmask granularity, weight 0, deleted destinations, a full table,
re-arming, their NONE / ASSURED state), port-zero services and fwmark services (which service a
packet finds; one template covering every port or address the service gathers).
"""

from __future__ import annotations

import packet_table as t
from packet_table import (
    CLIENT1,
    CLIENT2,
    FWM1,
    PROTO_TCP,
    PROTO_UDP,
    RS1,
    RS2,
    T_CL,
    T_ES,
    T_FW,
    T_SR,
    T_TW,
    T_UDP,
    TCP0,
    TCP80,
    UDP0,
    UDP53,
    VIP,
    VIP2,
    ConfigStep,
    ConnExpect,
    DestExpect,
    DestSetup,
    Row,
    ServiceExpect,
    ServiceSetup,
    Setup,
)


def persistence_rows() -> list[Row]:
    rows: list[Row] = []
    net24 = Setup((ServiceSetup(TCP80, "rr", (DestSetup(RS1), DestSetup(RS2)), persistent=300,
                                netmask="255.255.255.0"),))
    a, b, c = t.tcp(sport=47000), t.tcp(sport=47001), t.tcp(sport=47002, src=CLIENT2)
    size = t.ip_total_length(a)
    template24 = ConnExpect(PROTO_TCP, "192.0.2.0", 0, VIP, 80, RS2, 80, "NONE", 300_000)
    rows.append(Row(
        "persist-client-network", "a persistent service (/24) sends every client of the network to the destination "
        "its template names; the template's timer restarts with each new connection; rr does not move",
        net24, (t.fwd(a, 0, RS2), t.fwd(b, 1000, RS2), t.fwd(c, 2000, RS2)),
        (DestExpect(TCP80, RS2, active=3, conns=3, inpkts=3, inbytes=3 * size, persist=1), DestExpect(TCP80, RS1)),
        (ServiceExpect(TCP80, 3, 3, 3 * size),),
        (t.conn("SYN_RECV", T_SR - 2000, RS2, cport=47000), t.conn("SYN_RECV", T_SR - 1000, RS2, cport=47001),
         t.conn("SYN_RECV", T_SR, RS2, cport=47002, caddr=CLIENT2), template24), check_ms=2000, tags=("persist",)))

    net32 = Setup((ServiceSetup(TCP80, "rr", (DestSetup(RS1), DestSetup(RS2)), persistent=300),))
    rows.append(Row(
        "persist-per-address", "with netmask /32 another client gets its own template (and rr moves on)",
        net32, (t.fwd(a, 0, RS2), t.fwd(b, 1, RS2), t.fwd(c, 2, RS1)),
        (DestExpect(TCP80, RS2, active=2, conns=2, inpkts=2, inbytes=2 * size, persist=1),
         DestExpect(TCP80, RS1, active=1, conns=1, inpkts=1, inbytes=size, persist=1)),
        (ServiceExpect(TCP80, 3, 3, 3 * size),),
        (t.conn("SYN_RECV", T_SR - 2, RS2, cport=47000), t.conn("SYN_RECV", T_SR - 1, RS2, cport=47001),
         t.conn("SYN_RECV", T_SR, RS1, cport=47002, caddr=CLIENT2),
         ConnExpect(PROTO_TCP, CLIENT1, 0, VIP, 80, RS2, 80, "NONE", 300_000 - 1),
         ConnExpect(PROTO_TCP, CLIENT2, 0, VIP, 80, RS1, 80, "NONE", 300_000)), check_ms=2, tags=("persist",)))

    weight0 = Setup((ServiceSetup(TCP80, "rr", (DestSetup(RS1), DestSetup(RS2)), persistent=300),))
    rows.append(Row(
        "persist-weight0-still-named", "a template keeps naming its destination after its weight drops to 0 "
        "(expire_quiescent_template=0)",
        weight0, (t.fwd(a, 0, RS2), ConfigStep("edit_dest", TCP80, DestSetup(RS2, weight=0), 1), t.fwd(b, 2, RS2)),
        (DestExpect(TCP80, RS2, active=2, conns=2, inpkts=2, inbytes=2 * size, persist=1), DestExpect(TCP80, RS1)),
        (ServiceExpect(TCP80, 2, 2, 2 * size),),
        (t.conn("SYN_RECV", T_SR - 2, RS2, cport=47000), t.conn("SYN_RECV", T_SR, RS2, cport=47001),
         ConnExpect(PROTO_TCP, CLIENT1, 0, VIP, 80, RS2, 80, "NONE", 300_000)), check_ms=2, tags=("persist",)))

    rows.append(Row(
        "persist-dest-deleted", "a template whose destination was deleted stops matching (kept while it controls a "
        "connection, timer not restarted); the next connection is scheduled afresh with a new template",
        net32, (t.fwd(a, 0, RS2), ConfigStep("del_dest", TCP80, DestSetup(RS2), 1), t.fwd(b, 2, RS1)),
        (DestExpect(TCP80, RS1, active=1, conns=1, inpkts=1, inbytes=size, persist=1),),
        (ServiceExpect(TCP80, 2, 2, 2 * size),),
        (t.conn("SYN_RECV", T_SR - 2, RS2, cport=47000), t.conn("SYN_RECV", T_SR, RS1, cport=47001),
         ConnExpect(PROTO_TCP, CLIENT1, 0, VIP, 80, RS2, 80, "NONE", 300_000 - 2),
         ConnExpect(PROTO_TCP, CLIENT1, 0, VIP, 80, RS1, 80, "NONE", 300_000)), check_ms=2, tags=("persist", "deleted")))

    full = Setup((ServiceSetup(TCP80, "rr", (DestSetup(RS1), DestSetup(RS2)), persistent=300),), conn_max=2)
    a_ack = t.tcp(sport=47000, flags="A", seq=1001, ack=1, src=CLIENT1)
    rows.append(Row(
        "persist-table-full", "templates take table slots: with conn_max 2 the template and the first (established) "
        "connection fill it; the next connection and a new template are refused",
        full, (t.fwd(a, 0, RS2), t.fwd(a_ack, 1, RS2),
               t.verdict(b, 2, "DROP", "TABLE_FULL", "template found, no slot for the connection"),
               t.verdict(c, 3, "DROP", "TABLE_FULL", "no slot for the template")),
        (DestExpect(TCP80, RS2, active=1, conns=1, inpkts=2, inbytes=2 * size, persist=1, handshakes=1),
         DestExpect(TCP80, RS1)),
        (ServiceExpect(TCP80, 1, 2, 2 * size),),
        (t.conn("ESTABLISHED", T_ES - 2, RS2, cport=47000),
         ConnExpect(PROTO_TCP, CLIENT1, 0, VIP, 80, RS2, 80, "ASSURED", 300_000 - 1)), check_ms=3,
        tags=("persist", "table-full")))
    rows.append(Row(
        "persist-early-drop", "templates are never early-dropped, their half-open connections are: b (template "
        "found) takes a's slot; c needs a template, which takes b's slot, and then finds no room for itself",
        full, (t.fwd(a, 0, RS2), t.fwd(b, 1, RS2),
               t.verdict(c, 2, "DROP", "TABLE_FULL", "the new template evicted b; no droppable entry is left")),
        (DestExpect(TCP80, RS2, active=0, conns=2, inpkts=2, inbytes=2 * size, persist=1),
         DestExpect(TCP80, RS1, persist=1)),
        (ServiceExpect(TCP80, 2, 2, 2 * size),),
        (ConnExpect(PROTO_TCP, CLIENT1, 0, VIP, 80, RS2, 80, "NONE", 300_000 - 1),
         ConnExpect(PROTO_TCP, CLIENT2, 0, VIP, 80, RS1, 80, "NONE", 300_000)), check_ms=2,
        tags=("persist", "table-full", "early-drop")))

    short = Setup((ServiceSetup(TCP80, "rr", (DestSetup(RS1),), persistent=10),))
    rows.append(Row(
        "persist-template-rearmed", "a template whose time is up while its connection lives is re-armed for another "
        "period (at its expiry time), then released after the connection; its connection was established, so it "
        "shows ASSURED",
        short, (t.fwd(a, 0, RS1), t.fwd(t.tcp(sport=47000, flags="A", seq=1001, ack=1), 0, RS1),
                t.fwd(t.tcp(sport=47000, flags="R", seq=1001), 25_000, RS1)),
        (DestExpect(TCP80, RS1, inactive=1, conns=1, inpkts=3, inbytes=3 * size, persist=1, handshakes=1),),
        (ServiceExpect(TCP80, 1, 3, 3 * size),),
        (t.conn("CLOSE", T_CL, RS1, cport=47000),
         ConnExpect(PROTO_TCP, CLIENT1, 0, VIP, 80, RS1, 80, "ASSURED", 30_000 - 25_000)), check_ms=25_000,
        tags=("persist", "expiry")))

    # A template's state in ipvsadm -Lnc: NONE until one of its connections is established (TCP:
    # set_tcp_state -> ip_vs_control_assure_ct on ESTABLISHED) or gets a reply (UDP: udp_state_transition
    # in the OUTPUT direction), ASSURED from then on, whatever its connections do next.
    fin = t.tcp(sport=47000, flags="FA", seq=1001, ack=1)
    ack = t.tcp(sport=47000, flags="A", seq=1001, ack=1)
    rows.append(Row(
        "persist-template-none", "a template whose connection is still in its handshake shows NONE",
        net32, (t.fwd(a, 0, RS2),),
        (DestExpect(TCP80, RS2, active=1, conns=1, inpkts=1, inbytes=size, persist=1), DestExpect(TCP80, RS1)),
        (ServiceExpect(TCP80, 1, 1, size),),
        (t.conn("SYN_RECV", T_SR, RS2, cport=47000), ConnExpect(PROTO_TCP, CLIENT1, 0, VIP, 80, RS2, 80, "NONE", 300_000)),
        tags=("persist", "template-state")))
    rows.append(Row(
        "persist-template-assured", "a template whose connection reached ESTABLISHED shows ASSURED, and stays so "
        "after the connection closes",
        net32, (t.fwd(a, 0, RS2), t.fwd(ack, 1, RS2), t.fwd(fin, 2, RS2)),
        (DestExpect(TCP80, RS2, inactive=1, conns=1, inpkts=3, inbytes=3 * size, persist=1, handshakes=1),
         DestExpect(TCP80, RS1)),
        (ServiceExpect(TCP80, 1, 3, 3 * size),),
        (t.conn("FIN_WAIT", T_FW, RS2, cport=47000),
         ConnExpect(PROTO_TCP, CLIENT1, 0, VIP, 80, RS2, 80, "ASSURED", 300_000 - 2)), check_ms=2,
        tags=("persist", "template-state")))
    rows.append(Row(
        "persist-template-closed-in-handshake", "a connection that closes before ESTABLISHED (SYN_RECV -> TIME_WAIT) "
        "leaves its template NONE",
        net32, (t.fwd(a, 0, RS2), t.fwd(fin, 1, RS2)),
        (DestExpect(TCP80, RS2, inactive=1, conns=1, inpkts=2, inbytes=2 * size, persist=1), DestExpect(TCP80, RS1)),
        (ServiceExpect(TCP80, 1, 2, 2 * size),),
        (t.conn("TIME_WAIT", T_TW, RS2, cport=47000),
         ConnExpect(PROTO_TCP, CLIENT1, 0, VIP, 80, RS2, 80, "NONE", 300_000 - 1)), check_ms=1,
        tags=("persist", "template-state")))
    udp_net32 = Setup((ServiceSetup(UDP53, "rr", (DestSetup(RS1, 53),), persistent=300),))
    query = t.udp(sport=47100)
    qsize = t.ip_total_length(query)
    rows.append(Row(
        "persist-template-udp-dr", "a DR director never sees the replies: a UDP service's template stays NONE",
        udp_net32, (t.fwd(query, 0, RS1), t.fwd(query, 5, RS1)),
        (DestExpect(UDP53, RS1, 53, inactive=1, conns=1, inpkts=2, inbytes=2 * qsize, persist=1),),
        (ServiceExpect(UDP53, 1, 2, 2 * qsize),),
        (t.conn("UDP", T_UDP, RS1, cport=47100, svc=UDP53, dport=53),
         ConnExpect(PROTO_UDP, CLIENT1, 0, VIP, 53, RS1, 53, "NONE", 300_000 - 5)), check_ms=5,
        tags=("persist", "template-state", "udp")))
    return rows


def port_zero_rows() -> list[Row]:
    """Port-zero services (ip_vs_service_find: the exact <protocol, VIP, port> first, then the
    VIP's port 0; ip_vs_sched_persist: one template <protocol, client, 0, VIP, 0> for every port,
    the connection goes to the real server on the client's port)."""
    rows: list[Row] = []
    p0 = (DestSetup(RS1, 0), DestSetup(RS2, 0))
    a, b = t.tcp(sport=47000, dport=80), t.tcp(sport=47001, dport=443)
    c = t.tcp(sport=47002, dport=8080, src=CLIENT2)
    size = t.ip_total_length(a)
    rows.append(Row(
        "port0-tcp-every-port", "a persistent TCP port-0 service takes every port of the VIP; one template per "
        "client covers all of them (80 and 443 of one client go to the same real server), another client gets "
        "its own", Setup((ServiceSetup(TCP0, "rr", p0, persistent=300),)),
        (t.fwd(a, 0, RS2), t.fwd(b, 1, RS2), t.fwd(c, 2, RS1)),
        (DestExpect(TCP0, RS2, 0, active=2, conns=2, inpkts=2, inbytes=2 * size, persist=1),
         DestExpect(TCP0, RS1, 0, active=1, conns=1, inpkts=1, inbytes=size, persist=1)),
        (ServiceExpect(TCP0, 3, 3, 3 * size),),
        (t.conn("SYN_RECV", T_SR - 2, RS2, cport=47000, svc=(PROTO_TCP, VIP, 80), dport=80),
         t.conn("SYN_RECV", T_SR - 1, RS2, cport=47001, svc=(PROTO_TCP, VIP, 443), dport=443),
         t.conn("SYN_RECV", T_SR, RS1, cport=47002, caddr=CLIENT2, svc=(PROTO_TCP, VIP, 8080), dport=8080),
         ConnExpect(PROTO_TCP, CLIENT1, 0, VIP, 0, RS2, 0, "NONE", 300_000 - 1),
         ConnExpect(PROTO_TCP, CLIENT2, 0, VIP, 0, RS1, 0, "NONE", 300_000)), check_ms=2, tags=("port0", "persist")))

    exact = Setup((ServiceSetup(TCP80, "rr", (DestSetup(RS1),)), ServiceSetup(TCP0, "rr", (DestSetup(RS2, 0),),
                                                                               persistent=300)))
    d = t.tcp(sport=47003, dport=22)
    rows.append(Row(
        "port0-exact-service-first", "the exact service VIP:80 wins over the VIP's port-0 service; port 22, which "
        "has no exact service, goes to the port-0 service", exact, (t.fwd(a, 0, RS1), t.fwd(d, 1, RS2)),
        (DestExpect(TCP80, RS1, active=1, conns=1, inpkts=1, inbytes=size),
         DestExpect(TCP0, RS2, 0, active=1, conns=1, inpkts=1, inbytes=size, persist=1)),
        (ServiceExpect(TCP80, 1, 1, size), ServiceExpect(TCP0, 1, 1, size)),
        (t.conn("SYN_RECV", T_SR - 1, RS1, cport=47000),
         t.conn("SYN_RECV", T_SR, RS2, cport=47003, svc=(PROTO_TCP, VIP, 22), dport=22),
         ConnExpect(PROTO_TCP, CLIENT1, 0, VIP, 0, RS2, 0, "NONE", 300_000)), check_ms=1, tags=("port0",)))

    u1, u2 = t.udp(sport=50000, dport=53), t.udp(sport=50001, dport=5353)
    usize = t.ip_total_length(u1)
    rows.append(Row(
        "port0-udp-every-port", "a persistent UDP port-0 service: datagrams to two ports of the VIP from one client "
        "go to one real server (a TCP packet to the VIP finds no service)",
        Setup((ServiceSetup(UDP0, "rr", p0, persistent=300),)),
        (t.fwd(u1, 0, RS2), t.fwd(u2, 1, RS2), t.verdict(t.tcp(sport=47009), 2, "ACCEPT", "NO_SERVICE")),
        (DestExpect(UDP0, RS2, 0, inactive=2, conns=2, inpkts=2, inbytes=2 * usize, persist=1),
         DestExpect(UDP0, RS1, 0)),
        (ServiceExpect(UDP0, 2, 2, 2 * usize),),
        (t.conn("UDP", T_UDP - 2, RS2, cport=50000, svc=(PROTO_UDP, VIP, 53), dport=53),
         t.conn("UDP", T_UDP - 1, RS2, cport=50001, svc=(PROTO_UDP, VIP, 5353), dport=5353),
         ConnExpect(PROTO_UDP, CLIENT1, 0, VIP, 0, RS2, 0, "NONE", 300_000 - 1)), check_ms=2, tags=("port0",)))

    rows.append(Row(
        "port0-not-persistent-unreachable", "a port-0 service that is not persistent (ipvsadm refuses it; the API "
        "does not) schedules nothing: ip_vs_schedule's \"port zero only supported in persistent services\", "
        "answered with ICMP port unreachable as ip_vs_leave does",
        Setup((ServiceSetup(TCP0, "rr", (DestSetup(RS1, 0),)),)), (t.answer(a, 0),),
        (DestExpect(TCP0, RS1, 0),), (ServiceExpect(TCP0),), (), tags=("port0",)))
    return rows


def fwmark_rows() -> list[Row]:
    """fwmark services (ip_vs_service_find: the packet's mark first, then <protocol, VIP, port>, then
    port 0; ip_vs_sched_persist: one template <IPPROTO_IP, client, 0, fwmark, 0> for every protocol,
    address and port the mark gathers; the real server is reached on the client's port)."""
    rows: list[Row] = []
    a = t.tcp(sport=47000, dport=80)
    b = t.tcp(sport=47001, dport=443, dst=VIP2)
    c = t.tcp(sport=47002, dport=443, dst=VIP2, src=CLIENT2)
    size = t.ip_total_length(a)
    rows.append(Row(
        "fwm-two-vips-one-service", "a persistent fwmark service gathers two VIPs and ports (the operator's MARK "
        "rules): one template per client covers them all, the connection goes to the port asked for",
        Setup((ServiceSetup(FWM1, "rr", (DestSetup(RS1, 0), DestSetup(RS2, 0)), persistent=300),)),
        (t._marked(t.fwd(a, 0, RS2), 1), t._marked(t.fwd(b, 1, RS2), 1), t._marked(t.fwd(c, 2, RS1), 1)),
        (DestExpect(FWM1, RS2, 0, active=2, conns=2, inpkts=2, inbytes=2 * size, persist=1),
         DestExpect(FWM1, RS1, 0, active=1, conns=1, inpkts=1, inbytes=size, persist=1)),
        (ServiceExpect(FWM1, 3, 3, 3 * size),),
        (t.conn("SYN_RECV", T_SR - 2, RS2, cport=47000, svc=(PROTO_TCP, VIP, 80), dport=80),
         t.conn("SYN_RECV", T_SR - 1, RS2, cport=47001, svc=(PROTO_TCP, VIP2, 443), dport=443),
         t.conn("SYN_RECV", T_SR, RS1, cport=47002, caddr=CLIENT2, svc=(PROTO_TCP, VIP2, 443), dport=443),
         ConnExpect(0, CLIENT1, 0, "0.0.0.1", 0, RS2, 0, "NONE", 300_000 - 1),
         ConnExpect(0, CLIENT2, 0, "0.0.0.1", 0, RS1, 0, "NONE", 300_000)), check_ms=2, tags=("fwmark", "persist")))

    both = Setup((ServiceSetup(TCP80, "rr", (DestSetup(RS1),)), ServiceSetup(FWM1, "rr", (DestSetup(RS2),))))
    d, e = t.tcp(sport=47003, dport=80), t.tcp(sport=47004, dport=80)
    u = t.udp(sport=50000, dport=53)
    rows.append(Row(
        "fwm-mark-first", "the fwmark service of the packet's mark is looked up before VIP:80; an unmarked packet "
        "and one with a mark no service has go to VIP:80; a marked UDP datagram goes to the fwmark service too "
        "(any protocol); the real server's own port is used (non-persistent)",
        both, (t._marked(t.fwd(a, 0, RS2), 1), t.fwd(d, 1, RS1), t._marked(t.fwd(e, 2, RS1), 2), t._marked(t.fwd(u, 3, RS2), 1)),
        (DestExpect(TCP80, RS1, active=2, conns=2, inpkts=2, inbytes=2 * size),
         DestExpect(FWM1, RS2, 80, active=1, inactive=1, conns=2, inpkts=2, inbytes=size + t.ip_total_length(u))),
        (ServiceExpect(TCP80, 2, 2, 2 * size), ServiceExpect(FWM1, 2, 2, size + t.ip_total_length(u))),
        (t.conn("SYN_RECV", T_SR - 3, RS2, cport=47000), t.conn("SYN_RECV", T_SR - 2, RS1, cport=47003),
         t.conn("SYN_RECV", T_SR - 1, RS1, cport=47004),
         t.conn("UDP", T_UDP, RS2, cport=50000, svc=(PROTO_UDP, VIP, 53), dport=80)), check_ms=3, tags=("fwmark",)))
    return rows
