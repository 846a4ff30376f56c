"""Packet-table rows (tests/packet_table.py's format) of IPIP tunnelling: the outer header (TOS, ID,
DF, TTL, route source; packet_table.ipip), the path MTU (fragmentation needed with DF, fragments
without), no route source, no forwarding state, UDP, ICMP errors encapsulated, and a destination's
method changed under its connections.
"""

from __future__ import annotations

import packet_table as t
from packet_table import (
    IFINDEX,
    RS1,
    T_ES,
    T_SR,
    T_UDP,
    TCP80,
    TUN_SRC,
    UDP53,
    ConfigStep,
    DestExpect,
    DestSetup,
    Row,
    ServiceExpect,
    ServiceSetup,
    Setup,
    Step,
    TimerStep,
)


def rows() -> list[Row]:
    rows: list[Row] = []
    setup = t._tun_setup()
    udp_dest, udp_svc = DestExpect(UDP53, RS1, 53), ServiceExpect(UDP53)
    syn = t.tcp(flags="S", tos=0x10)
    syn_df = t.tcp(flags="S", flags_ip="DF")
    ack = t.tcp(flags="A", seq=1001, ack=5001, flags_ip="DF")
    big_df = t.tcp(flags="PA", seq=1001, ack=5001, payload=b"b" * 1441, flags_ip="DF")  # 1481 + 20 > 1500
    big = t.tcp(flags="PA", seq=1001, ack=5001, payload=b"b" * 1441)
    fits = t.tcp(flags="PA", seq=1001, ack=5001, payload=b"b" * 1440, flags_ip="DF")  # 1480 + 20 = 1500
    sz = t.ip_total_length

    def one(row_id: str, description: str, steps: tuple[Step, ...], state: str, timeout: int,
            pkts: tuple[bytes, ...], row_setup: Setup = setup, tags: tuple[str, ...] = ()) -> Row:
        inb = sum(sz(p) for p in pkts)
        return Row(row_id, description, row_setup, steps,
                   (DestExpect(TCP80, RS1, active=t.active_in(state), inactive=1 - t.active_in(state), conns=1,
                               inpkts=len(pkts), inbytes=inb, handshakes=int(state == "ESTABLISHED")), udp_dest),
                   (ServiceExpect(TCP80, 1, len(pkts), inb), udp_svc),
                   (t.conn(state, timeout, RS1),), check_ms=steps[-1].now_ms, tags=("tun",) + tags)

    rows.append(one("tun-syn", "IPIP: outer header 0x45, TOS = inner TOS, ID = inner ID (no DF), TTL 64, proto 4, "
                    "from the route source to the real server; the inner packet unchanged; INPUT-ONLY states",
                    (t.xmit(syn, t.ipip(syn), 0, RS1),), "SYN_RECV", T_SR, (syn,)))
    rows.append(one("tun-df", "IPIP: an inner DF gives the outer header DF and ID 0",
                    (t.xmit(syn_df, t.ipip(syn_df), 0, RS1), t.xmit(ack, t.ipip(ack), 1, RS1)), "ESTABLISHED", T_ES,
                    (syn_df, ack)))
    rows.append(one("tun-mtu-fits", "IPIP: a packet of MTU - 20 bytes still fits",
                    (t.xmit(syn_df, t.ipip(syn_df), 0, RS1), t.xmit(fits, t.ipip(fits), 1, RS1)), "ESTABLISHED", T_ES,
                    (syn_df, fits), tags=("mtu",)))
    rows.append(one("tun-frag-needed", "IPIP: too big after encapsulation with DF: ICMP fragmentation needed "
                    "(next-hop MTU = MTU - 20) to the client (ANSWER, R_FRAG_NEEDED); state and stats as forwarded",
                    (t.xmit(syn_df, t.ipip(syn_df), 0, RS1), t.answered(big_df, t.director_icmp(big_df, 4, 1480), 1,
                                                                       "FRAG_NEEDED")), "ESTABLISHED", T_ES, (syn_df, big_df),
                    tags=("mtu",)))
    rows.append(one("tun-frag-no-df", "IPIP: too big without DF: the outer packet (DF clear) leaves as fragments "
                    "of the path MTU (frag_mtu 1500), as ip_vs_tunnel_xmit's output fragments it",
                    (t.xmit(syn, t.ipip(syn), 0, RS1), t.xmit(big, t.ipip(big), 1, RS1, frag_mtu=1500)), "ESTABLISHED", T_ES,
                    (syn, big), tags=("mtu", "frag")))
    small = t._tun_setup(mtu=600)
    mid = t.tcp(flags="PA", seq=1001, ack=5001, payload=b"m" * 541, flags_ip="DF")  # 581 + 20 > 600
    rows.append(one("tun-path-mtu", "IPIP: the destination's path MTU (600) decides; next-hop MTU 580",
                    (t.xmit(syn_df, t.ipip(syn_df), 0, RS1), t.answered(mid, t.director_icmp(mid, 4, 580), 1, "FRAG_NEEDED")),
                    "ESTABLISHED", T_ES, (syn_df, mid), row_setup=small, tags=("mtu",)))
    rows.append(one("tun-no-source", "IPIP without a route source address: never an outer source 0.0.0.0: "
                    "DROP/R_NO_L2", (t.verdict(syn, 0, "DROP", "NO_L2"),), "SYN_RECV", T_SR, (syn,),
                    row_setup=t._tun_setup(saddr="0.0.0.0"), tags=("l2",)))
    rows.append(one("tun-no-l2", "IPIP without forwarding state: held (R_L2_QUEUED)", (t.verdict(syn, 0, "DROP", "L2_QUEUED"),),
                    "SYN_RECV", T_SR, (syn,), row_setup=t._tun_setup(l2=False), tags=("l2",)))
    query = t.udp(sport=50000)
    qn = sz(query)
    rows.append(Row("tun-udp", "IPIP carries UDP the same way", setup, (t.xmit(query, t.ipip(query), 0, RS1),),
                    (DestExpect(TCP80, RS1), DestExpect(UDP53, RS1, 53, inactive=1, conns=1, inpkts=1, inbytes=qn)),
                    (ServiceExpect(TCP80), ServiceExpect(UDP53, 1, 1, qn)),
                    (t.conn("UDP", T_UDP, RS1, cport=50000, svc=UDP53, dport=53),), tags=("tun", "udp")))
    error = t.icmp_error(t.reply_quote(), 3, 4, nexthopmtu=1400)
    rows.append(Row("tun-icmp", "an ICMP error about a tunnelled connection is encapsulated to its real server "
                    "(R_ICMP), in-stats counted", setup,
                    (t.xmit(syn, t.ipip(syn), 0, RS1), t.xmit(error, t.ipip(error), 5, RS1, "ICMP")),
                    (DestExpect(TCP80, RS1, active=1, conns=1, inpkts=2, inbytes=sz(syn) + sz(error)), udp_dest),
                    (ServiceExpect(TCP80, 1, 2, sz(syn) + sz(error)), udp_svc),
                    (t.conn("SYN_RECV", T_SR - 5, RS1),), check_ms=5, tags=("tun", "icmp")))
    no_src = t._tun_setup(saddr="0.0.0.0")
    rows.append(Row("tun-icmp-no-source", "an ICMP error about a tunnelled connection whose destination has no "
                    "route source address is dropped (R_NO_L2), as the connection's own packets: never an outer "
                    "source 0.0.0.0", no_src, (t.verdict(syn, 0, "DROP", "NO_L2"), t.verdict(error, 5, "DROP", "NO_L2")),
                    (DestExpect(TCP80, RS1, active=1, conns=1, inpkts=2, inbytes=sz(syn) + sz(error)), udp_dest),
                    (ServiceExpect(TCP80, 1, 2, sz(syn) + sz(error)), udp_svc),
                    (t.conn("SYN_RECV", T_SR - 5, RS1),), check_ms=5, tags=("tun", "icmp", "l2")))

    # A connection keeps the method it was created with (the kernel binds cp->packet_xmit at creation).
    dr = Setup((ServiceSetup(TCP80, "rr", (DestSetup(RS1),)),))
    as_tun = DestSetup(RS1, fwd="tunnel", saddr=TUN_SRC)
    syn2 = t.tcp(sport=40001)
    rows.append(Row(
        "method-change-keeps-entries", "editing a destination's method (route -> tunnel) drops its forwarding "
        "state; once new state is installed, existing entries keep their method (DR: the held ACK leaves from "
        "the timers unencapsulated) and new ones use the new one (IPIP)", dr,
        (t.fwd(syn, 0, RS1), ConfigStep("edit_dest", TCP80, as_tun, 1), t.verdict(ack, 2, "DROP", "L2_QUEUED"),
         ConfigStep("set_fwd", TCP80, as_tun, 3),
         TimerStep(3, (("XMIT_L2", "FORWARDED", t.ttl_dec(ack), IFINDEX, t.expected_frame(RS1, ack)[:14]),)),
         t.fwd(ack, 4, RS1), t.xmit(syn2, t.ipip(syn2), 5, RS1)),
        (DestExpect(TCP80, RS1, active=2, conns=2, inpkts=4, inbytes=2 * sz(syn) + 2 * sz(ack),
                    handshakes=1),),
        (ServiceExpect(TCP80, 2, 4, 2 * sz(syn) + 2 * sz(ack)),),
        (t.conn("ESTABLISHED", T_ES - 1, RS1), t.conn("SYN_RECV", T_SR, RS1, cport=40001)), check_ms=5,
        tags=("tun", "dr", "method")))
    return rows
