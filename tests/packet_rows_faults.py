"""Packet-table rows (tests/packet_table.py's format) of hostile and unlucky packets (issue 16):
what the kernel drops before or inside IPVS and lbd must drop too.

- Martian sources: the kernel's routing (ip_route_input_slow) drops packets from 0.0.0.0/8,
  127.0.0.0/8, multicast 224.0.0.0/4 and 255.255.255.255 before IPVS sees them; class E
  (240.0.0.0/4) is routed like unicast. fib_validate_source drops a source that is one of the
  host's own addresses: a VIP, or an address the control plane installed (Setup.local_addrs).
- Malformed transport headers: a UDP length below 8 or beyond the IP payload is malformed (the
  real server's udp_rcv drops it; no entry is made for it). TCP checksums are not verified on
  the forwarding path, as the kernel's IPVS does not (tcp_dnat_handler checks them only for an
  application helper, which lbd does not have; incremental updates keep a bad checksum bad), but
  SYN-proxy terminates the handshake and verifies the SYN and the cookie ACK as the kernel's TCP.
- Packets of a destination whose MAC is not resolved yet are held (L2_QUEUED), as the kernel's
  neighbour queue holds them, and leave from the timers, in order and through the connection's
  method, once the forwarding state is installed; after LB_L2Q_TIMEOUT_MS (3 s) without it they are
  dropped (NO_L2); beyond LB_L2Q_BYTES_MAX (64 KiB) per destination, the oldest are dropped (NO_L2)
  to hold the newest.
- TTL: every method decrements it, DR and the inner header of IPIP included (the kernel's
  __ip_vs_get_out_rt -> decrement_ttl); at TTL <= 1 the sender gets ICMP time exceeded (from the
  VIP; a real server's NAT reply from the director's route source address, a FULLNAT reply from
  the local address) and the packet is dropped; an ICMP error is dropped without an answer.
"""

from __future__ import annotations

import packet_table as t
from packet_table import (
    CLIENT1,
    RS1,
    T_SR,
    TCP80,
    UDP53,
    VIP,
    VIP2,
    DestExpect,
    Row,
    ServiceExpect,
    Setup,
)

DIRECTOR_ADDR = "192.0.2.250"  # one of the director's own interface addresses (Setup.local_addrs)


def _martian_rows() -> list[Row]:
    rows: list[Row] = []
    setup = t.one_dest()
    for src, what in (("0.0.0.0", "the unspecified address"), ("0.1.2.3", "0.0.0.0/8"),
                      ("127.0.0.1", "loopback"), ("127.9.9.9", "127.0.0.0/8"),
                      ("224.0.0.1", "all-hosts multicast"), ("239.255.255.250", "multicast"),
                      ("255.255.255.255", "the limited broadcast")):
        rows.append(t.untouched(f"martian-syn-{src}", f"a SYN from {what} ({src}) is a martian source: dropped before "
                                "anything is scheduled", t.tcp(flags="S", src=src), "DROP", "MARTIAN_SRC", setup,
                                tags=("martian", "bad")))
    rows.append(t.untouched("martian-udp", "a UDP datagram from a multicast source is a martian: no entry",
                            t.udp(src="224.0.0.1"), "DROP", "MARTIAN_SRC", setup, tags=("martian", "bad")))
    rows.append(t.untouched("martian-no-service", "a martian to an address without a service is dropped too (the "
                            "kernel's routing would)", t.tcp(flags="S", src="127.0.0.1", dst=VIP2), "DROP",
                            "MARTIAN_SRC", setup, tags=("martian", "bad")))
    quote = t.reply_quote()
    rows.append(t.untouched("martian-icmp", "an ICMP error from a loopback source is a martian", t.icmp_error(
        quote, src="127.0.0.1"), "DROP", "MARTIAN_SRC", setup, tags=("martian", "bad")))
    rows.append(t.untouched("martian-ack", "a segment of an established-looking flow from 0.0.0.0 is dropped, not "
                            "passed as no_conn", t.tcp(flags="A", src="0.0.0.0", seq=1001, ack=1), "DROP",
                            "MARTIAN_SRC", setup, tags=("martian", "bad")))
    rows.append(t.untouched("local-src-vip", "a SYN whose source is the VIP itself (a LAND attack) is a martian: the "
                            "VIP is the director's own address", t.tcp(flags="S", src=VIP), "DROP", "LOCAL_SRC",
                            setup, tags=("martian", "bad")))
    rows.append(t.untouched("local-src-udp-vip", "a UDP datagram from a VIP of another service is a martian too",
                            t.udp(src=VIP), "DROP", "LOCAL_SRC", setup, tags=("martian", "bad")))
    local = Setup(setup.services, local_addrs=(DIRECTOR_ADDR,))
    rows.append(t.untouched("local-src-host", "a SYN from one of the director's interface addresses (installed by "
                            "the control plane) is a martian", t.tcp(flags="S", src=DIRECTOR_ADDR), "DROP",
                            "LOCAL_SRC", local, tags=("martian", "bad")))
    syn = t.tcp(flags="S", src="240.0.0.1")
    total = t.ip_total_length(syn)
    rows.append(Row("class-e-src", "a source in class E (240.0.0.0/4) is routed by the kernel like unicast: "
                    "forwarded", setup, (t.fwd(syn, 0, RS1),),
                    (DestExpect(TCP80, RS1, active=1, conns=1, inpkts=1, inbytes=total), DestExpect(UDP53, RS1, 53)),
                    (ServiceExpect(TCP80, 1, 1, total), ServiceExpect(UDP53)),
                    (t.conn("SYN_RECV", T_SR, RS1, caddr="240.0.0.1"),), tags=("martian", "dr")))
    sp = t._sp_setup()
    rows.append(t.untouched("martian-sp-syn", "SYN-proxy answers no SYN from a multicast source (its SYN-ACK would "
                            "go to a group)", t.tcp(flags="S", src="224.0.0.1", seq=t.SP_ISN,
                                                   tcp_options=t.SYN_OPTS), "DROP", "MARTIAN_SRC", sp,
                            tags=("martian", "synproxy", "bad")))
    rows.append(t.untouched("local-sp-syn", "SYN-proxy answers no SYN from the VIP itself", t.tcp(
        flags="S", src=VIP, seq=t.SP_ISN, tcp_options=t.SYN_OPTS), "DROP", "LOCAL_SRC", sp,
        tags=("martian", "synproxy", "bad")))
    return rows


def _set_udp_length(packet: bytes, length: int) -> bytes:
    return packet[:24] + length.to_bytes(2, "big") + packet[26:]


def _bad_tcp_csum(packet: bytes) -> bytes:
    """Flip a bit of the TCP checksum (IP header 20 bytes): wrong afterwards."""
    return packet[:37] + bytes([packet[37] ^ 0x01]) + packet[38:]


def _transport_rows() -> list[Row]:
    rows: list[Row] = []
    setup = t.one_dest()
    query = t.udp()  # 8 bytes of payload: IP payload 16
    for length, what in ((0, "0"), (1, "1"), (7, "7 (shorter than its header)"),
                         (17, "17 (one byte beyond the IP payload)"), (0xFFFF, "65535")):
        rows.append(t.untouched(f"udp-len-{length}", f"a UDP datagram whose length field is {what} is malformed: "
                                "dropped, no entry", _set_udp_length(query, length), "DROP", "MALFORMED", setup,
                                tags=("bad", "udp")))
    short = _set_udp_length(query, 12)
    total = t.ip_total_length(short)
    rows.append(Row("udp-len-short", "a UDP length shorter than the IP payload (trailing bytes) is valid: forwarded "
                    "unchanged (the receiver trims)", setup, (t.fwd(short, 0, RS1),),
                    (DestExpect(TCP80, RS1), DestExpect(UDP53, RS1, 53, inactive=1, conns=1, inpkts=1, inbytes=total)),
                    (ServiceExpect(TCP80), ServiceExpect(UDP53, 1, 1, total)),
                    (t.conn("UDP", t.T_UDP, RS1, cport=50000, svc=UDP53, dport=53),), tags=("udp",)))
    syn = _bad_tcp_csum(t.tcp(flags="S"))
    total = t.ip_total_length(syn)
    rows.append(Row("dr-bad-tcp-csum", "DR forwards a SYN with a wrong TCP checksum unchanged, as IPVS (it verifies "
                    "TCP checksums only for an application helper): the real server drops it", setup,
                    (t.fwd(syn, 0, RS1),),
                    (DestExpect(TCP80, RS1, active=1, conns=1, inpkts=1, inbytes=total), DestExpect(UDP53, RS1, 53)),
                    (ServiceExpect(TCP80, 1, 1, total), ServiceExpect(UDP53)),
                    (t.conn("SYN_RECV", T_SR, RS1),), tags=("dr",)))
    sp = t._sp_setup()
    sp_syn = t.tcp(flags="S", seq=t.SP_ISN, tcp_options=t.SYN_OPTS)
    rows.append(t.untouched("sp-syn-bad-csum", "SYN-proxy answers no SYN whose TCP checksum is wrong (no SYN-ACK "
                            "for a corrupted or forged segment)", _bad_tcp_csum(sp_syn), "DROP", "BAD_L4_CSUM", sp,
                            tags=("synproxy", "bad")))
    cookie = t.syn_cookie(CLIENT1, VIP, 40000, 80, t.SP_ISN, 0, 3 | 4)
    ack = t.tcp(flags="A", seq=t.SP_ISN + 1, ack=cookie + 1)
    synack = t.tcp_segment(VIP, 80, CLIENT1, 40000, "SA", cookie, t.SP_ISN + 1, 65535, t.SP_SYN_OPTS)
    dests, services = t.idle_expectations(sp)
    rows.append(Row("sp-ack-bad-csum", "SYN-proxy opens nothing for a cookie ACK whose TCP checksum is wrong, even "
                    "with a valid cookie", sp,
                    (t.answered(sp_syn, synack, 0, "SP_COOKIE"),
                     t.verdict(_bad_tcp_csum(ack), 10, "DROP", "BAD_L4_CSUM")),
                    dests, services, (), check_ms=10, tags=("synproxy", "bad")))
    return rows


L2Q_TIMEOUT_MS = 3000  # LB_L2Q_TIMEOUT_MS, stated here (docs/fastpath.md), not read from an engine
L2Q_BYTES_MAX = 65536  # LB_L2Q_BYTES_MAX


def _held_rows() -> list[Row]:
    rows: list[Row] = []
    cold = Setup((t.ServiceSetup(UDP53, "rr", (t.DestSetup(RS1, 53, l2=False),)),))
    resolved = t.DestSetup(RS1, 53)
    queries = [t.udp(payload=f"query-{i:02d}".encode()) for i in range(4)]
    size = t.ip_total_length(queries[0])
    frame = t.expected_frame(RS1, queries[0])[:14]

    def udp_row(row_id: str, description: str, steps: tuple[t.Step, ...], n: int, *,
                live: bool = True, timer_counts: tuple[tuple[str, int], ...] = (), check_ms: int = 0,
                dests: tuple[DestExpect, ...] | None = None) -> Row:
        check = check_ms or steps[-1].now_ms
        expires = max(s.now_ms for s in steps if isinstance(s, t.PacketStep)) + t.T_UDP - check
        return Row(row_id, description, cold, steps,
                   dests if dests is not None else
                   (DestExpect(UDP53, RS1, 53, inactive=int(live), conns=1, inpkts=n, inbytes=n * size),),
                   (ServiceExpect(UDP53, 1, n, n * size),),
                   (t.conn("UDP", expires, RS1, cport=50000, svc=UDP53, dport=53),) if live else (),
                   check_ms=check, tags=("l2", "held"), timer_counts=timer_counts)

    rows.append(udp_row(
        "held-sent-in-order", "datagrams to a real server whose MAC is being resolved are held, and leave from the "
        "timers in their order once the state is installed; later ones go straight out",
        (t.verdict(queries[0], 0, "DROP", "L2_QUEUED"), t.verdict(queries[1], 5, "DROP", "L2_QUEUED"),
         t.verdict(queries[2], 9, "DROP", "L2_QUEUED"), t.TimerStep(20), t.ConfigStep("set_fwd", UDP53, resolved, 30),
         t.TimerStep(30, tuple(("XMIT_L2", "FORWARDED", t.ttl_dec(q), t.IFINDEX, frame) for q in queries[:3])),
         t.TimerStep(31), t.fwd(queries[3], 40, RS1)), 4))
    rows.append(udp_row(
        "held-not-overtaken", "a datagram that arrives after the forwarding state but before the timers sent the "
        "held ones joins their queue (L2_QUEUED) rather than overtake them: they leave in arrival order, as the "
        "kernel's neighbour queue is flushed before anything newer; once the queue is gone, packets go straight out",
        (t.verdict(queries[0], 0, "DROP", "L2_QUEUED"), t.ConfigStep("set_fwd", UDP53, resolved, 1),
         t.verdict(queries[1], 2, "DROP", "L2_QUEUED"),
         t.TimerStep(3, tuple(("XMIT_L2", "FORWARDED", t.ttl_dec(q), t.IFINDEX, frame) for q in queries[:2])),
         t.fwd(queries[2], 4, RS1)), 3))
    rows.append(udp_row(
        "held-timeout", "held datagrams whose destination is not resolved within 3 s are dropped, counted no_l2 "
        "(the kernel's ARP gives up after 3 probes 1 s apart)",
        (t.verdict(queries[0], 0, "DROP", "L2_QUEUED"), t.verdict(queries[1], 2000, "DROP", "L2_QUEUED"),
         t.TimerStep(L2Q_TIMEOUT_MS - 1), t.TimerStep(L2Q_TIMEOUT_MS),
         t.ConfigStep("set_fwd", UDP53, resolved, L2Q_TIMEOUT_MS + 1), t.TimerStep(L2Q_TIMEOUT_MS + 1)), 2,
        timer_counts=(("NO_L2", 2),)))
    rows.append(udp_row(
        "held-dest-deleted", "held datagrams of a destination deleted before it was resolved are dropped, counted "
        "no_l2", (t.verdict(queries[0], 0, "DROP", "L2_QUEUED"), t.ConfigStep("del_dest", UDP53, resolved, 1),
                  t.TimerStep(2)), 1, live=True, timer_counts=(("NO_L2", 1),), dests=()))
    big = [t.udp(sport=50000, payload=bytes([i]) * 1400) for i in range(50)]
    fits = L2Q_BYTES_MAX // t.ip_total_length(big[0])  # 45 datagrams of 1428 bytes
    steps: list[t.Step] = [t.verdict(b, i, "DROP", "L2_QUEUED") for i, b in enumerate(big[:fits + 1])]
    bframe = t.expected_frame(RS1, big[0])[:14]
    steps += [t.ConfigStep("set_fwd", UDP53, resolved, fits + 1),
              t.TimerStep(fits + 1, tuple(("XMIT_L2", "FORWARDED", t.ttl_dec(b), t.IFINDEX, bframe)
                                          for b in big[1:fits + 1]))]
    n = fits + 1
    bsize = t.ip_total_length(big[0])
    rows.append(Row("held-bounded", "at most 64 KiB are held per destination; a full queue drops its oldest datagram "
                    "(no_l2) to hold the newest, as the kernel's neighbour queue (__neigh_event_send): the newest 45 "
                    "leave once resolved", cold, tuple(steps),
                    (DestExpect(UDP53, RS1, 53, inactive=1, conns=1, inpkts=n, inbytes=n * bsize),),
                    (ServiceExpect(UDP53, 1, n, n * bsize),),
                    (t.conn("UDP", t.T_UDP, RS1, cport=50000, svc=UDP53, dport=53),), check_ms=fits,
                    tags=("l2", "held"), timer_counts=(("NO_L2", 1),)))
    tun = t._tun_setup(l2=False)
    syn = t.tcp(flags="S")
    tun_resolved = t.DestSetup(RS1, fwd="tunnel", saddr=t.TUN_SRC)
    outer = t.ipip(syn)
    rows.append(Row("held-tunnel", "a held SYN leaves through its connection's method: encapsulated (IPIP) once the "
                    "tunnel's forwarding state is installed", tun,
                    (t.verdict(syn, 0, "DROP", "L2_QUEUED"), t.ConfigStep("set_fwd", TCP80, tun_resolved, 100),
                     t.TimerStep(100, (("XMIT_L2", "FORWARDED", outer, t.IFINDEX, t.expected_frame(RS1, outer)[:14]),))),
                    (DestExpect(TCP80, RS1, active=1, conns=1, inpkts=1, inbytes=t.ip_total_length(syn)),
                     DestExpect(UDP53, RS1, 53)),
                    (ServiceExpect(TCP80, 1, 1, t.ip_total_length(syn)), ServiceExpect(UDP53)),
                    (t.conn("SYN_RECV", T_SR, RS1),), check_ms=0, tags=("l2", "held", "tun")))
    rows += _held_mtu_rows()
    return rows


def _held_mtu_rows() -> list[Row]:
    """A held packet leaves as it would have, had the forwarding state been there when it came: the path MTU
    of the state installed later decides (fragmentation needed to the client with DF, frag_mtu without)."""
    rows: list[Row] = []
    small = t.DestSetup(RS1, mtu=1000)
    cold = Setup((t.ServiceSetup(TCP80, "rr", (t.DestSetup(RS1, l2=False),)),))
    syn = t.tcp(flags="S")
    big_df = t.tcp(flags="PA", seq=1001, ack=1, payload=b"d" * 1200, flags_ip="DF")
    sizes = t.ip_total_length(syn) + t.ip_total_length(big_df)
    frame = t.expected_frame(RS1, syn)[:14]
    rows.append(Row("held-frag-needed", "a held segment with DF too big for the path MTU (1000) that comes with the "
                    "forwarding state is answered from the timers with ICMP fragmentation needed (next-hop MTU 1000), "
                    "as it would have been had it not waited", cold,
                    (t.verdict(syn, 0, "DROP", "L2_QUEUED"), t.verdict(big_df, 1, "DROP", "L2_QUEUED"),
                     t.ConfigStep("set_fwd", TCP80, small, 2),
                     t.TimerStep(2, (("XMIT_L2", "FORWARDED", t.ttl_dec(syn), t.IFINDEX, frame),
                                     ("ANSWER", "FRAG_NEEDED", t.director_icmp(big_df, 4, 1000), 0, b""))),
                     t.answered(big_df, t.director_icmp(big_df, 4, 1000), 3, "FRAG_NEEDED",
                                note="the same segment again, not held: the same answer")),
                    (DestExpect(TCP80, RS1, active=1, conns=1, inpkts=3, handshakes=1,
                                inbytes=sizes + t.ip_total_length(big_df)),),
                    (ServiceExpect(TCP80, 1, 3, sizes + t.ip_total_length(big_df)),),
                    (t.conn("ESTABLISHED", t.T_ES, RS1),), check_ms=3, tags=("l2", "held", "mtu")))
    big = t.udp(payload=b"u" * 1200)
    ucold = Setup((t.ServiceSetup(UDP53, "rr", (t.DestSetup(RS1, 53, l2=False),)),))
    rows.append(Row("held-frag-mtu", "a held datagram without DF too big for the path MTU (1000) leaves from the "
                    "timers marked to go as fragments of 1000 bytes (frag_mtu), as it would have unheld", ucold,
                    (t.verdict(big, 0, "DROP", "L2_QUEUED"), t.ConfigStep("set_fwd", UDP53, t.DestSetup(RS1, 53, mtu=1000), 1),
                     t.TimerStep(1, (("XMIT_L2", "FORWARDED", t.ttl_dec(big), t.IFINDEX,
                                      t.expected_frame(RS1, big)[:14], 1000),)),
                     t.xmit(big, t.ttl_dec(big), 2, RS1, frag_mtu=1000, note="unheld: the same")),
                    (DestExpect(UDP53, RS1, 53, inactive=1, conns=1, inpkts=2, inbytes=2 * t.ip_total_length(big)),),
                    (ServiceExpect(UDP53, 1, 2, 2 * t.ip_total_length(big)),),
                    (t.conn("UDP", t.T_UDP, RS1, cport=50000, svc=UDP53, dport=53),), check_ms=2,
                    tags=("l2", "held", "mtu", "frag")))
    return rows


def _ttl_rows() -> list[Row]:
    rows: list[Row] = []
    setup = t.one_dest()
    udp_dest, udp_svc = DestExpect(UDP53, RS1, 53), ServiceExpect(UDP53)
    syn2, syn1 = t._with_ttl(t.tcp(flags="S"), 2), t._with_ttl(t.tcp(flags="S", sport=40001), 1)
    n = t.ip_total_length(syn2)

    def two(row_id: str, description: str, row_setup: Setup, steps: tuple[t.Step, ...], conns: tuple[t.ConnExpect, ...],
            tags: tuple[str, ...]) -> Row:
        return Row(row_id, description, row_setup, steps,
                   (DestExpect(TCP80, RS1, active=2, conns=2, inpkts=2, inbytes=2 * n), udp_dest),
                   (ServiceExpect(TCP80, 2, 2, 2 * n), udp_svc), conns, tags=("ttl",) + tags)

    conns = (t.conn("SYN_RECV", T_SR, RS1), t.conn("SYN_RECV", T_SR, RS1, cport=40001))
    rows.append(two("dr-ttl", "DR decrements the TTL like the kernel's decrement_ttl: TTL 2 leaves as 1; at TTL 1 the "
                    "client gets ICMP time exceeded from the VIP (the entry is made and counted first)", setup,
                    (t.fwd(syn2, 0, RS1),
                     t.PacketStep(syn1, 0, "ANSWER", "TTL_EXCEEDED", out=t.time_exceeded(syn1, VIP))), conns, ("dr",)))
    tun = t._tun_setup()
    rows.append(two("tun-ttl", "IPIP decrements the inner TTL before encapsulating (outer TTL 64); at TTL 1: ICMP time "
                    "exceeded from the VIP", tun,
                    (t.xmit(syn2, t.ipip(syn2), 0, RS1),
                     t.PacketStep(syn1, 0, "ANSWER", "TTL_EXCEEDED", out=t.time_exceeded(syn1, VIP))), conns, ("tun",)))
    syn = t.tcp(flags="S")
    size = t.ip_total_length(syn)
    error = t._with_ttl(t.icmp_error(t.reply_quote(), 3, 4, nexthopmtu=1400), 1)
    rows.append(Row("dr-icmp-ttl", "an ICMP error with TTL 1 about a DR connection is dropped (R_TTL_EXCEEDED): no "
                    "ICMP error about an ICMP error; still counted", setup,
                    (t.fwd(syn, 0, RS1), t.verdict(error, 5, "DROP", "TTL_EXCEEDED")),
                    (DestExpect(TCP80, RS1, active=1, conns=1, inpkts=2, inbytes=size + t.ip_total_length(error)),
                     udp_dest),
                    (ServiceExpect(TCP80, 1, 2, size + t.ip_total_length(error)), udp_svc),
                    (t.conn("SYN_RECV", T_SR - 5, RS1),), check_ms=5, tags=("ttl", "icmp", "dr")))
    route_src = "203.0.113.2"  # the director's address on the route to the real server
    nat = Setup((t.ServiceSetup(TCP80, "rr", (t.DestSetup(RS1, 8080, fwd="masq", saddr=route_src),)),))
    synack = t._with_ttl(t.tcp(sport=8080, dport=40000, src=RS1, dst=CLIENT1, flags="SA", seq=5000, ack=1001), 1)
    rows.append(Row("nat-out-ttl", "a NAT reply with TTL 1 is forwarded by the director: ip_forward answers it with ICMP "
                    "time exceeded to the real server from the director's route source address towards it, and "
                    "drops it before the FORWARD hook where ip_vs_out would see it: the entry's state, timer and "
                    "out-stats stay as they were", nat,
                    (t.xmit(syn, t.nat(syn, CLIENT1, 40000, RS1, 8080), 0, RS1),
                     t.PacketStep(synack, 5, "ANSWER", "TTL_EXCEEDED", out=t.time_exceeded(synack, route_src))),
                    (DestExpect(TCP80, RS1, 8080, active=1, conns=1, inpkts=1, inbytes=size),),
                    (ServiceExpect(TCP80, 1, 1, size),),
                    (t.conn("SYN_RECV", T_SR - 5, RS1, dport=8080),), check_ms=5, tags=("ttl", "nat")))
    return rows


def rows() -> list[Row]:
    return _martian_rows() + _transport_rows() + _held_rows() + _ttl_rows()
