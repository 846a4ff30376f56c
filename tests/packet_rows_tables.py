"""Packet-table rows (tests/packet_table.py's format) of the tables' edges: a destination without
forwarding state (packets held, L2_QUEUED, until it is installed), a full connection table
(conn_max) and early drop, and deleted destinations and services (their entries' packets dropped,
a re-added destination revived).
"""

from __future__ import annotations

import packet_table as t
from packet_table import (
    IFINDEX,
    RS1,
    RS2,
    T_ES,
    T_SR,
    T_UDP,
    TCP80,
    UDP53,
    ConfigStep,
    DestExpect,
    DestSetup,
    Row,
    ServiceExpect,
    ServiceSetup,
    Setup,
    TimerStep,
)


def l2_and_table_rows() -> list[Row]:
    rows = []
    setup = Setup((ServiceSetup(TCP80, "rr", (DestSetup(RS1, l2=False),)),))
    syn = t.tcp()
    size = t.ip_total_length(syn)
    rows.append(Row(
        "no-l2", "a destination without forwarding state: the entry is made and counted, the packet held until "
        "the state is installed (L2_QUEUED; tests/packet_rows_faults.py has what becomes of it)",
        setup, (t.verdict(syn, 0, "DROP", "L2_QUEUED"),),
        (DestExpect(TCP80, RS1, active=1, conns=1, inpkts=1, inbytes=size),), (ServiceExpect(TCP80, 1, 1, size),),
        (t.conn("SYN_RECV", T_SR, RS1),), tags=("l2",)))
    rows.append(Row(
        "no-l2-then-resolved", "once forwarding state is installed the held SYN leaves from the timers and the "
        "same entry's packets are forwarded",
        setup, (t.verdict(syn, 0, "DROP", "L2_QUEUED"), ConfigStep("set_fwd", TCP80, DestSetup(RS1), 1),
                TimerStep(1, (("XMIT_L2", "FORWARDED", t.ttl_dec(syn), IFINDEX, t.expected_frame(RS1, syn)[:14]),)),
                t.fwd(t.tcp(flags="A", seq=1001, ack=1), 2, RS1)),
        (DestExpect(TCP80, RS1, active=1, conns=1, inpkts=2, inbytes=2 * size, handshakes=1),),
        (ServiceExpect(TCP80, 1, 2, 2 * size),),
        (t.conn("ESTABLISHED", T_ES, RS1),), check_ms=2, tags=("l2",)))
    rows.append(Row(
        "l2-invalidated", "invalidating a destination's forwarding state holds its packets until it is resolved "
        "again (L2_QUEUED)",
        Setup((ServiceSetup(TCP80, "rr", (DestSetup(RS1),)),)),
        (t.fwd(syn, 0, RS1), ConfigStep("set_fwd", TCP80, DestSetup(RS1, l2=False), 1),
         t.verdict(t.tcp(flags="A", seq=1001, ack=1), 2, "DROP", "L2_QUEUED")),
        (DestExpect(TCP80, RS1, active=1, conns=1, inpkts=2, inbytes=2 * size, handshakes=1),),
        (ServiceExpect(TCP80, 1, 2, 2 * size),),
        (t.conn("ESTABLISHED", T_ES, RS1),), check_ms=2, tags=("l2",)))

    # When the table is full, early drop releases the droppable entry (half-open or finished TCP)
    # that expires first, the older at equal times; without one the new connection is refused.
    full = Setup((ServiceSetup(TCP80, "rr", (DestSetup(RS1),)),), conn_max=1)
    a, b = t.tcp(sport=46000), t.tcp(sport=46001)
    a_ack = t.tcp(sport=46000, flags="A", seq=1001, ack=1)
    rows.append(Row(
        "table-full", "with conn_max=1 and an ESTABLISHED entry (not droppable) a second connection is dropped; "
        "after the first expires it gets in",
        full, (t.fwd(a, 0, RS1), t.fwd(a_ack, 1, RS1), t.verdict(b, 1000, "DROP", "TABLE_FULL"), t.fwd(b, T_ES + 1, RS1)),
        (DestExpect(TCP80, RS1, active=1, conns=2, inpkts=3, inbytes=3 * size, handshakes=1),),
        (ServiceExpect(TCP80, 2, 3, 3 * size),),
        (t.conn("SYN_RECV", T_SR, RS1, cport=46001),), check_ms=T_ES + 1, tags=("table-full",)))
    rows.append(Row(
        "table-full-existing-flow", "a full table still forwards packets of existing entries",
        full, (t.fwd(a, 0, RS1), t.fwd(a_ack, 1, RS1), t.verdict(b, 2, "DROP", "TABLE_FULL"),
               t.fwd(t.tcp(sport=46000, flags="PA", seq=1001, ack=1), 3, RS1)),
        (DestExpect(TCP80, RS1, active=1, conns=1, inpkts=3, inbytes=3 * size, handshakes=1),),
        (ServiceExpect(TCP80, 1, 3, 3 * size),),
        (t.conn("ESTABLISHED", T_ES, RS1, cport=46000),), check_ms=3, tags=("table-full",)))
    rows.append(Row(
        "table-full-early-drop", "a half-open (SYN_RECV) entry makes room for a new connection (early drop, as "
        "kernel IPVS's drop_entry and conntrack's early_drop): the new SYN is forwarded, the dropped entry's "
        "next segment finds no connection",
        full, (t.fwd(a, 0, RS1), t.fwd(b, 1000, RS1), t.verdict(a_ack, 1001, "ACCEPT", "NO_CONN")),
        (DestExpect(TCP80, RS1, active=1, conns=2, inpkts=2, inbytes=2 * size),),
        (ServiceExpect(TCP80, 2, 2, 2 * size),),
        (t.conn("SYN_RECV", T_SR - 1, RS1, cport=46001),), check_ms=1001, tags=("table-full", "early-drop")))
    full_rr = Setup((ServiceSetup(TCP80, "rr", (DestSetup(RS1), DestSetup(RS2))),), conn_max=1)
    c = t.tcp(sport=46002)
    rows.append(Row(
        "table-full-advances-rr", "scheduling happens before the table-full check, so a dropped SYN still moved "
        "the rr cursor (RS2, [RS1 dropped], RS2)",
        full_rr, (t.fwd(a, 0, RS2), t.fwd(a_ack, 1, RS2), t.verdict(b, 2, "DROP", "TABLE_FULL"), t.fwd(c, T_ES + 2, RS2)),
        (DestExpect(TCP80, RS2, active=1, conns=2, inpkts=3, inbytes=3 * size, handshakes=1), DestExpect(TCP80, RS1)),
        (ServiceExpect(TCP80, 2, 3, 3 * size),), (t.conn("SYN_RECV", T_SR, RS2, cport=46002),),
        check_ms=T_ES + 2, tags=("table-full", "sched")))
    two = Setup((ServiceSetup(TCP80, "rr", (DestSetup(RS1),)),), conn_max=2)
    c_ack = t.tcp(sport=46002, flags="A", seq=1001, ack=1)
    b_ack = t.tcp(sport=46001, flags="A", seq=1001, ack=1)
    rows.append(Row(
        "early-drop-first-to-expire", "early drop takes the droppable entry that expires first: of two SYN_RECV "
        "entries the older goes, the newer completes its handshake",
        two, (t.fwd(a, 0, RS1), t.fwd(b, 10, RS1), t.fwd(c, 20, RS1), t.verdict(a_ack, 21, "ACCEPT", "NO_CONN"),
              t.fwd(b_ack, 22, RS1)),
        (DestExpect(TCP80, RS1, active=2, conns=3, inpkts=4, inbytes=4 * size, handshakes=1),),
        (ServiceExpect(TCP80, 3, 4, 4 * size),),
        (t.conn("ESTABLISHED", T_ES, RS1, cport=46001), t.conn("SYN_RECV", T_SR - 2, RS1, cport=46002)),
        check_ms=22, tags=("table-full", "early-drop")))
    rows.append(Row(
        "early-drop-ties-older-first", "at equal expiry times early drop takes the entry created first",
        two, (t.fwd(a, 5, RS1), t.fwd(b, 5, RS1), t.fwd(c, 5, RS1), t.verdict(a_ack, 6, "ACCEPT", "NO_CONN"),
              t.fwd(b_ack, 7, RS1)),
        (DestExpect(TCP80, RS1, active=2, conns=3, inpkts=4, inbytes=4 * size, handshakes=1),),
        (ServiceExpect(TCP80, 3, 4, 4 * size),),
        (t.conn("ESTABLISHED", T_ES, RS1, cport=46001), t.conn("SYN_RECV", T_SR - 2, RS1, cport=46002)),
        check_ms=7, tags=("table-full", "early-drop")))
    rows.append(Row(
        "early-drop-spares-established", "an ESTABLISHED entry is never dropped, even when it expires first: the "
        "half-open one goes",
        two, (t.fwd(a, 0, RS1), t.fwd(a_ack, 1, RS1), t.fwd(b, 2, RS1), t.fwd(c, 3, RS1), t.verdict(b_ack, 4, "ACCEPT", "NO_CONN"),
              t.fwd(c_ack, 5, RS1)),
        (DestExpect(TCP80, RS1, active=2, conns=3, inpkts=5, inbytes=5 * size, handshakes=2),),
        (ServiceExpect(TCP80, 3, 5, 5 * size),),
        (t.conn("ESTABLISHED", T_ES - 4, RS1, cport=46000), t.conn("ESTABLISHED", T_ES, RS1, cport=46002)),
        check_ms=5, tags=("table-full", "early-drop")))
    a_rst = t.tcp(sport=46000, flags="R", seq=1001)
    rows.append(Row(
        "early-drop-closed-entry", "a finished entry (CLOSE after a RST) is droppable too, and it expires before a "
        "SYN_RECV one: it goes first",
        two, (t.fwd(a, 0, RS1), t.fwd(a_ack, 1, RS1), t.fwd(a_rst, 2, RS1), t.fwd(b, 3, RS1), t.fwd(c, 4, RS1),
              t.fwd(b_ack, 5, RS1)),
        (DestExpect(TCP80, RS1, active=2, conns=3, inpkts=6, inbytes=6 * size, handshakes=2),),
        (ServiceExpect(TCP80, 3, 6, 6 * size),),
        (t.conn("ESTABLISHED", T_ES, RS1, cport=46001), t.conn("SYN_RECV", T_SR - 1, RS1, cport=46002)),
        check_ms=5, tags=("table-full", "early-drop")))
    udp_full = Setup((ServiceSetup(UDP53, "rr", (DestSetup(RS1, port=53),)),), conn_max=1)
    q1, q2 = t.udp(sport=46000), t.udp(sport=46001)
    usize = t.ip_total_length(q1)
    rows.append(Row(
        "early-drop-not-udp", "UDP entries are never early-dropped (the director cannot tell a spoofed one)",
        udp_full, (t.fwd(q1, 0, RS1), t.verdict(q2, 1, "DROP", "TABLE_FULL")),
        (DestExpect(UDP53, RS1, port=53, inactive=1, conns=1, inpkts=1, inbytes=usize),),
        (ServiceExpect(UDP53, 1, 1, usize),),
        (t.conn("UDP", T_UDP - 1, RS1, cport=46000, svc=UDP53, dport=53),), check_ms=1, tags=("table-full", "early-drop")))
    return rows


def deleted_dest_rows() -> list[Row]:
    rows = []
    setup = Setup((ServiceSetup(TCP80, "rr", (DestSetup(RS1), DestSetup(RS2))),))
    syn = t.tcp()
    ack = t.tcp(flags="A", seq=1001, ack=1)
    data = t.tcp(flags="PA", payload=b"d" * 20, seq=1001, ack=1)
    size, dsize = t.ip_total_length(syn), t.ip_total_length(data)
    established = (t.fwd(syn, 0, RS2), t.fwd(ack, 1, RS2))
    rows.append(Row(
        "deleted-dest-drops", "after its destination is deleted, an entry's packets are dropped and its timer is "
        "not restarted; the entry still counts in the deleted destination (not listed)",
        setup, established + (ConfigStep("del_dest", TCP80, DestSetup(RS2), 2), t.verdict(data, 5000, "DROP", "DEST_UNAVAILABLE"),
                              t.verdict(syn, 6000, "DROP", "DEST_UNAVAILABLE", "SYN on ESTABLISHED is no reuse")),
        (DestExpect(TCP80, RS1),), (ServiceExpect(TCP80, 1, 2, 2 * size),),
        (t.conn("ESTABLISHED", T_ES + 1 - 6000, RS2),), check_ms=6000, tags=("deleted",)))
    rows.append(Row(
        "deleted-dest-revived", "re-adding the deleted destination revives it: the entry works again and the "
        "destination keeps its counts and stats",
        setup, established + (ConfigStep("del_dest", TCP80, DestSetup(RS2), 2), t.verdict(data, 5000, "DROP", "DEST_UNAVAILABLE"),
                              ConfigStep("add_dest", TCP80, DestSetup(RS2), 6000),
                              ConfigStep("set_fwd", TCP80, DestSetup(RS2), 6000), t.fwd(data, 7000, RS2)),
        (DestExpect(TCP80, RS2, active=1, conns=1, inpkts=3, inbytes=2 * size + dsize, handshakes=1),
         DestExpect(TCP80, RS1)),
        (ServiceExpect(TCP80, 1, 3, 2 * size + dsize),), (t.conn("ESTABLISHED", T_ES, RS2),), check_ms=7000,
        tags=("deleted",)))
    rows.append(Row(
        "deleted-dest-new-client", "new connections after a deletion go to the remaining destination",
        setup, established + (ConfigStep("del_dest", TCP80, DestSetup(RS2), 2), t.fwd(t.tcp(sport=40001), 3, RS1)),
        (DestExpect(TCP80, RS1, active=1, conns=1, inpkts=1, inbytes=size),), (ServiceExpect(TCP80, 2, 3, 3 * size),),
        (t.conn("ESTABLISHED", T_ES - 2, RS2), t.conn("SYN_RECV", T_SR, RS1, cport=40001)), check_ms=3,
        tags=("deleted",)))
    rst = t.tcp(flags="R", seq=1001)
    rows.append(Row(
        "deleted-dest-reuse", "a new SYN on a CLOSE entry of a deleted destination expires it and is scheduled "
        "to a listed destination (reuse is checked before availability)",
        setup, established + (t.fwd(rst, 2, RS2), ConfigStep("del_dest", TCP80, DestSetup(RS2), 3), t.fwd(syn, 4, RS1)),
        (DestExpect(TCP80, RS1, active=1, conns=1, inpkts=1, inbytes=size),), (ServiceExpect(TCP80, 2, 4, 4 * size),),
        (t.conn("SYN_RECV", T_SR, RS1),), check_ms=4, tags=("deleted", "reuse")))
    rows.append(Row(
        "deleted-service", "after the service is deleted its entries' packets are dropped, new SYNs pass through",
        setup, established + (ConfigStep("del_service", TCP80, None, 2), t.verdict(data, 3, "DROP", "DEST_UNAVAILABLE"),
                              t.verdict(t.tcp(sport=40001), 4, "ACCEPT", "NO_SERVICE")),
        (), (), (t.conn("ESTABLISHED", T_ES - 3, RS2),), check_ms=4, tags=("deleted",)))
    return rows
