"""Packet-table rows (tests/packet_table.py's format) of SYN-proxy on FULLNAT: the cookie
(packet_table.syn_cookie; its age, the MSS index), the real server's handshake, sequence and SACK
translation, held data, defer mode, the ACK-storm guard, RSTs both ways, TOA, no forwarding state,
and the timers (TimerStep: retransmissions, give-up). The PROXY protocol with SYN-proxy is
tests/packet_rows_proxy.py's.
"""

from __future__ import annotations

import packet_table as t
from packet_table import (
    CLIENT1,
    LIP1,
    RS1,
    RS_ISN,
    SP_ISN,
    SP_SYN_OPTS,
    SYN_OPTS,
    T_ES,
    TCP80,
    VIP,
    DestExpect,
    Row,
    ServiceExpect,
    Setup,
    Step,
    TimerStep,
)


def rows() -> list[Row]:
    rows: list[Row] = []
    lp = t.local_port(LIP1)
    cookie = t.syn_cookie(CLIENT1, VIP, 40000, 80, SP_ISN, 0, 3 | 4)  # MSS 1460 (index 3), SACK
    d_in = (RS_ISN - cookie) & 0xFFFFFFFF
    syn = t.tcp(flags="S", seq=SP_ISN, tcp_options=SYN_OPTS)
    synack_cookie = t.tcp_segment(VIP, 80, CLIENT1, 40000, "SA", cookie, SP_ISN + 1, 65535, SP_SYN_OPTS)
    ack = t.tcp(flags="A", seq=SP_ISN + 1, ack=cookie + 1)
    rs_syn = t.tcp_segment(LIP1, lp, RS1, 80, "S", SP_ISN, 0, 64240, SP_SYN_OPTS)
    rs_synack = t.tcp(sport=80, dport=lp, src=RS1, dst=LIP1, flags="SA", seq=RS_ISN, ack=SP_ISN + 1,
                      tcp_options=[("MSS", 1400)])
    rs_ack = t.tcp_segment(LIP1, lp, RS1, 80, "A", SP_ISN + 1, RS_ISN + 1, 64240)
    request = b"GET / HTTP/1.0\r\n\r\n"
    data = t.tcp(flags="PA", seq=SP_ISN + 1, ack=cookie + 1, payload=request)
    reply = t.tcp(sport=80, dport=lp, src=RS1, dst=LIP1, flags="PA", seq=RS_ISN + 1, ack=SP_ISN + 1 + len(request),
                  payload=b"HTTP/1.0 200 OK\r\n")
    client_rst = t.tcp_segment(VIP, 80, CLIENT1, 40000, "RA", cookie + 1, SP_ISN + 1, 0)
    sz = t.ip_total_length
    setup = t._sp_setup()
    opened = (t.answered(syn, synack_cookie, 0, "SP_COOKIE"), t.xmit(ack, rs_syn, 10, RS1, note="SYN to the real server"))

    def row(row_id: str, description: str, steps: tuple[Step, ...], *, state: str | None, timeout: int = 0,
            ins: tuple[bytes, ...] = (), outs: tuple[bytes, ...] = (), handshakes: int = 0,
            conns: int = 1, stats: dict[str, int], row_setup: Setup = setup, tags: tuple[str, ...] = ()) -> Row:
        inb, outb = sum(sz(p) for p in ins), sum(sz(p) for p in outs)
        last = steps[-1].now_ms
        live = () if state is None else (t.conn(state, timeout, RS1, laddr=LIP1, lport=lp),)
        active = 0 if state is None else t.active_in(state)
        return Row(row_id, description, row_setup, steps,
                   (DestExpect(TCP80, RS1, active=active, inactive=0 if state is None else 1 - active, conns=conns,
                               inpkts=len(ins), inbytes=inb, handshakes=handshakes, outpkts=len(outs),
                               outbytes=outb),),
                   (ServiceExpect(TCP80, conns, len(ins), inb, len(outs), outb),),
                   live, check_ms=last, tags=("synproxy",) + tags,
                   laddrs=((TCP80, LIP1, 0 if state is None else 1),), sp_stats=tuple(sorted(stats.items())))

    rows.append(row("sp-cookie", "SYN-proxy: a SYN is answered with a SYN-ACK carrying the cookie (MSS 1460, SACK "
                    "permitted, window 65535, ID 0, DF, TTL 64); no entry", (opened[0],), state=None, conns=0,
                    stats={"cookies_sent": 1}))
    rows.append(row("sp-ack-opens", "SYN-proxy: the ACK with a valid cookie creates the entry (SYN_SENT), counts in "
                    "the stats and sends the SYN to the real server (client's ISN, MSS and SACK from the cookie, "
                    "client's window)", opened, state="SYN_SENT", timeout=120_000, ins=(ack,),
                    stats={"cookies_sent": 1, "cookies_valid": 1, "syns_to_rs": 1}))
    rows.append(row("sp-bad-cookie", "SYN-proxy: an ACK whose cookie does not validate is dropped",
                    (opened[0], t.verdict(t.tcp(flags="A", seq=SP_ISN + 1, ack=cookie + 2), 10, "DROP", "SP_BAD_COOKIE")),
                    state=None, conns=0, stats={"cookies_sent": 1, "cookies_invalid": 1}))
    late = t.tcp(flags="A", seq=SP_ISN + 1, ack=cookie + 1)
    rows.append(row("sp-cookie-age", "SYN-proxy: a cookie is valid in its minute and the 2 after; in the third it "
                    "is refused", (opened[0], t.verdict(late, 180_000, "DROP", "SP_BAD_COOKIE")), state=None, conns=0,
                    stats={"cookies_sent": 1, "cookies_invalid": 1}))
    rows.append(row("sp-cookie-2-minutes", "SYN-proxy: a cookie made at minute 0 still validates at minute 2",
                    (opened[0], t.xmit(late, rs_syn, 179_999, RS1)), state="SYN_SENT", timeout=120_000, ins=(late,),
                    stats={"cookies_sent": 1, "cookies_valid": 1, "syns_to_rs": 1}))
    rows.append(row("sp-not-syn-no-conn", "SYN-proxy: a segment that is neither SYN nor ACK without an entry passes "
                    "through (NO_CONN)", (t.verdict(t.tcp(flags="FA", seq=5, ack=5), 0, "ACCEPT", "NO_CONN"),),
                    state=None, conns=0, stats={}))
    handshake = opened + (t.xmit(rs_synack, rs_ack, 20, RS1, "SP_HANDSHAKE"),)
    rows.append(row("sp-handshake", "SYN-proxy: the real server's SYN-ACK is consumed and answered with the ACK "
                    "that completes its handshake; the entry becomes ESTABLISHED", handshake, state="ESTABLISHED",
                    timeout=T_ES, ins=(ack,), handshakes=1,
                    stats={"cookies_sent": 1, "cookies_valid": 1, "syns_to_rs": 1, "handshakes": 1}))
    rows.append(row("sp-translate", "SYN-proxy: after both handshakes the client's ACK numbers move into the "
                    "server's sequence space and the server's sequence numbers into the cookie's (FULLNAT rewrite "
                    "too)", handshake + (
                        t.xmit(data, t.nat(data, LIP1, lp, RS1, 80, ack_delta=d_in), 30, RS1),
                        t.answered(reply, t.nat(reply, VIP, 80, CLIENT1, 40000, seq_delta=-d_in), 40)),
                    state="ESTABLISHED", timeout=T_ES, ins=(ack, data), outs=(reply,), handshakes=1,
                    stats={"cookies_sent": 1, "cookies_valid": 1, "syns_to_rs": 1, "handshakes": 1}))
    sack = t.tcp(flags="A", seq=SP_ISN + 1, ack=cookie + 1,
                 tcp_options=[("NOP", None), ("NOP", None), ("SAck", (cookie + 100, cookie + 200))])
    rows.append(row("sp-sack", "SYN-proxy: SACK block edges from the client are translated like its ACK number",
                    handshake + (t.xmit(sack, t.nat(sack, LIP1, lp, RS1, 80, ack_delta=d_in, sack_delta=d_in), 30, RS1),),
                    state="ESTABLISHED", timeout=T_ES, ins=(ack, sack), handshakes=1,
                    stats={"cookies_sent": 1, "cookies_valid": 1, "syns_to_rs": 1, "handshakes": 1}))
    ack_data = t.tcp(flags="PA", seq=SP_ISN + 1, ack=cookie + 1, payload=request)
    rows.append(row("sp-held-data", "SYN-proxy: data on the cookie's ACK is held and delivered with the ACK that "
                    "completes the real server's handshake (PSH)",
                    (opened[0], t.xmit(ack_data, rs_syn, 10, RS1),
                     t.xmit(rs_synack, t.tcp_segment(LIP1, lp, RS1, 80, "PA", SP_ISN + 1, RS_ISN + 1, 64240,
                                                     payload=request), 20, RS1, "SP_HANDSHAKE")),
                    state="ESTABLISHED", timeout=T_ES, ins=(ack_data,), handshakes=1,
                    stats={"cookies_sent": 1, "cookies_valid": 1, "syns_to_rs": 1, "handshakes": 1}))
    rows.append(row("sp-held-later", "SYN-proxy: the client's first data while the real server is pending is held "
                    "(DROP/R_SP_HELD) and delivered with the handshake ACK",
                    opened + (t.verdict(data, 15, "DROP", "SP_HELD"),
                              t.xmit(rs_synack, t.tcp_segment(LIP1, lp, RS1, 80, "PA", SP_ISN + 1, RS_ISN + 1, 64240,
                                                              payload=request), 20, RS1, "SP_HANDSHAKE")),
                    state="ESTABLISHED", timeout=T_ES, ins=(ack,), handshakes=1,
                    stats={"cookies_sent": 1, "cookies_valid": 1, "syns_to_rs": 1, "handshakes": 1}))
    defer = t._sp_setup(conf=(("defer", True),))
    rows.append(row("sp-defer", "SYN-proxy defer mode: the real server is only contacted when the client's first "
                    "data arrives", (opened[0], t.verdict(ack, 10, "DROP", "SP_HELD"), t.xmit(data, rs_syn, 15, RS1),
                                     t.xmit(rs_synack, t.tcp_segment(LIP1, lp, RS1, 80, "PA", SP_ISN + 1, RS_ISN + 1,
                                                                     64240, payload=request), 20, RS1, "SP_HANDSHAKE")),
                    state="ESTABLISHED", timeout=T_ES, ins=(ack,), handshakes=1, row_setup=defer,
                    stats={"cookies_sent": 1, "cookies_valid": 1, "syns_to_rs": 1, "handshakes": 1}))
    storm = t._sp_setup(conf=(("ack_storm_max", 2),))
    pure = t.tcp(flags="A", seq=SP_ISN + 1, ack=cookie + 1)
    rows.append(row("sp-ack-storm", "SYN-proxy ACK-storm guard: more than ack_storm_max pure ACKs while pending "
                    "reset the client and forget the entry",
                    opened + (t.verdict(pure, 11, "DROP", "SP_HELD"), t.verdict(pure, 12, "DROP", "SP_HELD"),
                              t.answered(pure, client_rst, 13, "SP_HELD")), state=None, ins=(ack,), row_setup=storm,
                    stats={"cookies_sent": 1, "cookies_valid": 1, "syns_to_rs": 1, "give_ups": 1,
                           "held_dropped": 3}))
    rows.append(row("sp-client-rst", "SYN-proxy: the client's RST while the real server is pending forgets the entry",
                    opened + (t.verdict(t.tcp(flags="R", seq=SP_ISN + 1), 11, "DROP", "SP_HELD"),), state=None, ins=(ack,),
                    stats={"cookies_sent": 1, "cookies_valid": 1, "syns_to_rs": 1}))
    rows.append(row("sp-rs-rst", "SYN-proxy: the real server's RST resets the client (ANSWER) and forgets the entry",
                    opened + (t.answered(t.tcp(sport=80, dport=lp, src=RS1, dst=LIP1, flags="RA", seq=0, ack=SP_ISN + 1),
                                         client_rst, 20),), state=None, ins=(ack,),
                    stats={"cookies_sent": 1, "cookies_valid": 1, "syns_to_rs": 1, "rs_resets": 1}))
    stray = t.tcp(sport=80, dport=lp, src=RS1, dst=LIP1, flags="A", seq=31337, ack=123456)
    rows.append(row("sp-rs-unexpected-ack", "SYN-proxy: an ACK from the real server that does not answer our SYN "
                    "gets a RST with SEQ = its ACK (RFC 793 SYN-SENT)",
                    opened + (t.xmit(stray, t.tcp_segment(LIP1, lp, RS1, 80, "R", 123456, 0, 0), 20, RS1, "SP_HELD"),),
                    state="SYN_SENT", timeout=120_000, ins=(ack,),
                    stats={"cookies_sent": 1, "cookies_valid": 1, "syns_to_rs": 1}))
    retransmit = t.timer_frame(rs_syn, RS1)
    rows.append(row("sp-timers", "SYN-proxy: the SYN to the real server is retransmitted after 200, 400, 800 ms "
                    "(doubling, capped at 3000), then the client gets a RST (give-up) and the entry goes",
                    opened + (TimerStep(209), TimerStep(210, (retransmit,)), TimerStep(609),
                              TimerStep(610, (retransmit,)), TimerStep(1410, (retransmit,)), TimerStep(3009),
                              TimerStep(3010, (("ANSWER", "FORWARDED", client_rst, 0, b""),))),
                    state=None, ins=(ack,),
                    stats={"cookies_sent": 1, "cookies_valid": 1, "syns_to_rs": 1, "syn_retransmits": 3,
                           "give_ups": 1}, tags=("timers",)))
    rows.append(row("sp-timers-answered", "SYN-proxy: once the real server answered, no retransmission is due",
                    handshake + (TimerStep(10_000),), state="ESTABLISHED", timeout=T_ES - 9980, ins=(ack,),
                    handshakes=1, stats={"cookies_sent": 1, "cookies_valid": 1, "syns_to_rs": 1, "handshakes": 1},
                    tags=("timers",)))
    toa = t._sp_setup(toa=True)
    toa_cookie = t.syn_cookie(CLIENT1, VIP, 40000, 80, SP_ISN, 0, 3 | 4)
    toa_ack = t.tcp_segment(LIP1, lp, RS1, 80, "A", SP_ISN + 1, RS_ISN + 1, 64240,
                            [(254, (40000).to_bytes(2, "big") + bytes(map(int, CLIENT1.split("."))))])
    rows.append(row("sp-toa", "SYN-proxy with TOA: the cookie SYN-ACK announces MSS 1452; the handshake ACK to the "
                    "real server carries the TOA option",
                    (t.answered(syn, t.tcp_segment(VIP, 80, CLIENT1, 40000, "SA", toa_cookie, SP_ISN + 1, 65535,
                                                   [("MSS", 1452), ("NOP", None), ("NOP", None), ("SAckOK", b"")]), 0,
                                "SP_COOKIE"),
                     t.xmit(ack, rs_syn, 10, RS1), t.xmit(rs_synack, toa_ack, 20, RS1, "SP_HANDSHAKE")),
                    state="ESTABLISHED", timeout=T_ES, ins=(ack,), handshakes=1, row_setup=toa,
                    stats={"cookies_sent": 1, "cookies_valid": 1, "syns_to_rs": 1, "handshakes": 1}))
    small_syn = t.tcp(flags="S", seq=SP_ISN, tcp_options=[("MSS", 1300)])
    small_cookie = t.syn_cookie(CLIENT1, VIP, 40000, 80, SP_ISN, 0, 1)
    rows.append(row("sp-cookie-mss-index", "SYN-proxy: the client's MSS is kept as the largest table entry not above "
                    "it (1300), without SACK; the real server's SYN announces that",
                    (t.answered(small_syn, t.tcp_segment(VIP, 80, CLIENT1, 40000, "SA", small_cookie, SP_ISN + 1, 65535,
                                                         [("MSS", 1460)]), 0, "SP_COOKIE"),
                     t.xmit(t.tcp(flags="A", seq=SP_ISN + 1, ack=small_cookie + 1),
                            t.tcp_segment(LIP1, lp, RS1, 80, "S", SP_ISN, 0, 64240, [("MSS", 1300)]), 10, RS1)),
                    state="SYN_SENT", timeout=120_000, ins=(ack,),
                    stats={"cookies_sent": 1, "cookies_valid": 1, "syns_to_rs": 1}))
    no_l2 = t._sp_setup(l2=False)
    rows.append(row("sp-no-l2", "SYN-proxy without forwarding state: the SYN cannot leave (R_NO_L2); the timer "
                    "keeps trying without sending", (opened[0], t.verdict(ack, 10, "DROP", "NO_L2"), TimerStep(210)),
                    state="SYN_SENT", timeout=120_000 - 200, ins=(ack,), row_setup=no_l2,
                    stats={"cookies_sent": 1, "cookies_valid": 1, "syns_to_rs": 1}, tags=("timers",)))
    return rows
