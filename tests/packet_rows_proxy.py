"""Packet-table rows (tests/packet_table.py's format) of the PROXY protocol on FULLNAT TCP services.

What the rows hold the engines to (docs/fastpath.md "PROXY protocol"): the header (haproxy's
proxy-protocol.txt; built here from the spec, not by an engine) goes to the real server before
the client's first byte, at the client's ISN + 1, in every client segment that starts there
(the handshake's last ACK, the first data, its retransmissions: identical each time); every later
client segment's sequence number moves by the header's length; the real server's
acknowledgment numbers and SACK edges move back by it (inside the header: ISN + 1); the MSS the
client is told is lowered by the service's longest header; a first segment that no longer fits
the path MTU is cut (FIN cleared, R_PROXY_CUT). With SYN-proxy, the director's own handshake ACK
carries the header, and the two translations compose.

Expected bytes are built by scapy with full checksums.
"""

from __future__ import annotations

import socket
import struct

import packet_table as t
from packet_table import (
    CLIENT1,
    LIP1,
    RS1,
    RS_ISN,
    SP_ISN,
    SP_SYN_OPTS,
    T_ES,
    TCP80,
    VIP,
    DestExpect,
    DestSetup,
    Row,
    ServiceExpect,
    ServiceSetup,
    Setup,
    Step,
)

M32 = 0xFFFFFFFF
CPORT = 40000
ISN = 1000  # the client's ISN (packet_table.tcp's default sequence number)
SERVER_ISN = 5000
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def proxy_header(version: str, caddr: str = CLIENT1, cport: int = CPORT, vaddr: str = VIP, vport: int = 80) -> bytes:
    """The header from the spec: v1 text, or v2 (signature, 0x21 PROXY, 0x11 TCP over IPv4, length 12)."""
    if version == "v1":
        return f"PROXY TCP4 {caddr} {vaddr} {cport} {vport}\r\n".encode("ascii")
    return (V2_SIGNATURE + bytes((0x21, 0x11)) + struct.pack("!H", 12) + socket.inet_aton(caddr)
            + socket.inet_aton(vaddr) + struct.pack("!HH", cport, vport))


ROOM = {"v1": 56, "v2": 28}  # the MSS is lowered by the longest header of the version (IPv4)


def to_rs(packet: bytes, lport: int, *, hdr: bytes = b"", seq_delta: int = 0, ack_delta: int = 0,
          keep: int | None = None, clear_fin: bool = False) -> bytes:
    """`packet` as FULLNAT sends it to RS1 (TTL - 1, LIP1:lport -> RS1:80), with the header in front of
    its payload (first `keep` payload bytes only), its sequence / ACK numbers moved."""
    s = t._scapy()
    p = s.IP(packet)
    p.ttl -= 1
    p.src, p.dst = LIP1, RS1
    del p.chksum
    del p.len
    l4 = p[s.TCP]
    l4.sport, l4.dport = lport, 80
    del l4.chksum
    l4.seq = (l4.seq + seq_delta) & M32
    if l4.flags.A:
        l4.ack = (l4.ack + ack_delta) & M32
    if clear_fin:
        l4.flags = int(l4.flags) & ~0x01
    data = bytes(l4.payload)
    if keep is not None:
        data = data[:keep]
    l4.remove_payload()
    if hdr + data:
        l4.add_payload(s.Raw(hdr + data))
    return bytes(p)


def to_client(packet: bytes, *, ack_delta: int = 0, seq_delta: int = 0, sack_delta: int = 0,
              mss: int | None = None) -> bytes:
    return t.nat(packet, VIP, 80, CLIENT1, CPORT, ack_delta=ack_delta, seq_delta=seq_delta, sack_delta=sack_delta,
                 mss=mss)


def _setup(version: str, *, mtu: int = 1500, synproxy: bool = False) -> Setup:
    return Setup((ServiceSetup(TCP80, "rr", (DestSetup(RS1, fwd="fullnat", mtu=mtu),), laddrs=(LIP1,),
                               synproxy=synproxy, proxy_protocol=version),))


def _row(row_id: str, description: str, setup: Setup, steps: tuple[Step, ...], *, state: str, timeout: int,
         ins: tuple[bytes, ...], outs: tuple[bytes, ...], handshakes: int, lport: int,
         tags: tuple[str, ...] = (), sp_stats: dict[str, int] | None = None) -> Row:
    sz = t.ip_total_length
    inb, outb = sum(sz(p) for p in ins), sum(sz(p) for p in outs)
    active = t.active_in(state)
    return Row(row_id, description, setup, steps,
               (DestExpect(TCP80, RS1, active=active, inactive=1 - active, conns=1, inpkts=len(ins), inbytes=inb,
                           handshakes=handshakes, outpkts=len(outs), outbytes=outb),),
               (ServiceExpect(TCP80, 1, len(ins), inb, len(outs), outb),),
               (t.conn(state, timeout, RS1, laddr=LIP1, lport=lport),), check_ms=steps[-1].now_ms,
               tags=("fnat", "proxy") + tags,
               sp_stats=None if sp_stats is None else tuple(sorted(sp_stats.items())))


def _flow_rows(version: str) -> list[Row]:
    lp = t.local_port(LIP1)
    hdr = proxy_header(version)
    h = len(hdr)
    setup = _setup(version)
    request = b"GET / HTTP/1.0\r\nHost: x\r\n\r\n"
    response = b"HTTP/1.0 200 OK\r\n\r\nhello"
    syn = t.tcp(flags="S", seq=ISN, tcp_options=[("MSS", 1460), ("SAckOK", b"")])
    synack = t.tcp(sport=80, dport=lp, src=RS1, dst=LIP1, flags="SA", seq=SERVER_ISN, ack=ISN + 1,
                   tcp_options=[("MSS", 1460), ("SAckOK", b"")])
    ack = t.tcp(flags="A", seq=ISN + 1, ack=SERVER_ISN + 1)
    data = t.tcp(flags="PA", seq=ISN + 1, ack=SERVER_ISN + 1, payload=request)
    reply = t.tcp(sport=80, dport=lp, src=RS1, dst=LIP1, flags="PA", seq=SERVER_ISN + 1,
                  ack=ISN + 1 + h + len(request), payload=response)
    fin = t.tcp(flags="FA", seq=ISN + 1 + len(request), ack=SERVER_ISN + 1 + len(response))
    opened: tuple[Step, ...] = (
        t.xmit(syn, to_rs(syn, lp), 0, RS1, note="the SYN passes unchanged (FULLNAT rewrite only)"),
        t.answered(synack, to_client(synack, mss=1460 - ROOM[version]), 5,
                   note=f"MSS lowered by {ROOM[version]}: room for the header in the first segment"),
        t.xmit(ack, to_rs(ack, lp, hdr=hdr), 10, RS1, note="the handshake's last ACK carries the header"))
    rows = [_row(
        f"proxy-{version}-flow", f"PROXY {version}: the header ({h} bytes) rides on the client's handshake ACK at "
        "ISN + 1; the first data at ISN + 1 carries it again in front of the request (identical bytes: the real "
        "server trims the overlap); the real server's ACK moves back by the header; the client's FIN moves on by it",
        setup, opened + (
            t.xmit(data, to_rs(data, lp, hdr=hdr), 20, RS1, note="header + request at ISN + 1"),
            t.answered(reply, to_client(reply, ack_delta=-h), 30, note="ACK back before the header"),
            t.xmit(fin, to_rs(fin, lp, seq_delta=h), 40, RS1, note="sequence number past the header")),
        state="CLOSE_WAIT", timeout=60_000, ins=(syn, ack, data, fin), outs=(synack, reply), handshakes=1, lport=lp)]

    def held(packet: bytes, out: bytes) -> tuple[str, str, bytes, int, bytes]:
        return ("XMIT_L2", "FORWARDED", out, t.IFINDEX, t.expected_frame(RS1, out)[:14])

    rows.append(_row(
        f"proxy-{version}-held", f"PROXY {version}: segments held while the real server's MAC is re-resolved leave "
        "from the timers exactly as they would have: the handshake ACK and the first data with the header, and the "
        "sequence translation after it goes on as if they had never waited",
        setup, opened[:2] + (
            t.ConfigStep("set_fwd", TCP80, DestSetup(RS1, fwd="fullnat", l2=False), 6),
            t.verdict(ack, 10, "DROP", "L2_QUEUED"), t.verdict(data, 20, "DROP", "L2_QUEUED"),
            t.ConfigStep("set_fwd", TCP80, DestSetup(RS1, fwd="fullnat"), 21),
            t.TimerStep(21, (held(ack, to_rs(ack, lp, hdr=hdr)), held(data, to_rs(data, lp, hdr=hdr)))),
            t.answered(reply, to_client(reply, ack_delta=-h), 30, note="ACK back before the header"),
            t.xmit(fin, to_rs(fin, lp, seq_delta=h), 40, RS1, note="sequence number past the header")),
        state="CLOSE_WAIT", timeout=60_000, ins=(syn, ack, data, fin), outs=(synack, reply), handshakes=1, lport=lp,
        tags=("held",)))
    if version == "v1":
        return rows
    # Retransmissions, SACK, an ACK inside the header, and a pure ACK once the header is acknowledged.
    second = t.tcp(flags="PA", seq=ISN + 1 + len(request), ack=SERVER_ISN + 1, payload=b"more")
    partial = t.tcp(sport=80, dport=lp, src=RS1, dst=LIP1, flags="A", seq=SERVER_ISN + 1, ack=ISN + 1 + 10)
    sack_edges = (ISN + 1 + h + len(request), ISN + 1 + h + len(request) + 4)
    sacked = t.tcp(sport=80, dport=lp, src=RS1, dst=LIP1, flags="A", seq=SERVER_ISN + 1, ack=ISN + 1 + h,
                   tcp_options=[("NOP", None), ("NOP", None), ("SAck", sack_edges)])
    pure = t.tcp(flags="A", seq=ISN + 1, ack=SERVER_ISN + 1)
    steps = opened + (
        t.xmit(data, to_rs(data, lp, hdr=hdr), 20, RS1),
        t.xmit(second, to_rs(second, lp, seq_delta=h), 21, RS1, note="a later segment: shifted by the header"),
        t.answered(partial, to_client(partial, ack_delta=-10), 22,
                   note="an ACK inside the header acknowledges none of the client's bytes: ISN + 1"),
        t.xmit(data, to_rs(data, lp, hdr=hdr), 25, RS1, note="the first segment retransmitted: the header again"),
        t.answered(sacked, to_client(sacked, ack_delta=-h, sack_delta=-h), 30,
                   note="header acknowledged; SACK edges back by the header"),
        t.xmit(pure, to_rs(pure, lp, seq_delta=h), 35, RS1,
               note="a pure ACK at ISN + 1 once the header is acknowledged: shifted, no header"))
    rows.append(_row(
        "proxy-v2-retransmit-sack", "PROXY v2: a retransmitted first segment gets the header again, identically; "
        "later segments are shifted; an ACK inside the header becomes ISN + 1; SACK edges move back; once the "
        "header is acknowledged a pure ACK at ISN + 1 goes shifted without it",
        setup, steps, state="ESTABLISHED", timeout=T_ES, ins=(syn, ack, data, second, data, pure),
        outs=(synack, partial, sacked), handshakes=1, lport=lp, tags=("retransmit",)))
    # The path MTU: header + first segment too big -> cut, FIN cleared (R_PROXY_CUT).
    small = _setup("v2", mtu=200)
    big = t.tcp(flags="FPA", seq=ISN + 1, ack=SERVER_ISN + 1, payload=b"y" * 140)  # 180 bytes; + 28 > 200
    rows.append(_row(
        "proxy-cut", "PROXY: a first segment that no longer fits the path MTU with the header is cut to fit "
        "(here 132 of 140 bytes), its FIN cleared (the client resends the rest): R_PROXY_CUT",
        small, (t.xmit(syn, to_rs(syn, lp), 0, RS1),
                t.xmit(big, to_rs(big, lp, hdr=hdr, keep=200 - 40 - h, clear_fin=True), 10, RS1, "PROXY_CUT")),
        state="TIME_WAIT", timeout=120_000, ins=(syn, big), outs=(), handshakes=0, lport=lp, tags=("mtu",)))
    # A RST at ISN + 1 before any header went keeps its sequence number.
    rst = t.tcp(flags="R", seq=ISN + 1)
    rows.append(_row(
        "proxy-rst-before-header", "PROXY: a client RST at ISN + 1 before any header went is forwarded unshifted "
        "(the real server's next byte is still ISN + 1); IPVS keeps SYN_RECV on a client RST",
        setup, (t.xmit(syn, to_rs(syn, lp), 0, RS1), t.xmit(rst, to_rs(rst, lp), 10, RS1)),
        state="SYN_RECV", timeout=t.T_SR, ins=(syn, rst), outs=(), handshakes=0, lport=lp))
    rows.append(_row(
        "proxy-rst-after-header", "PROXY: once the header went (on the handshake ACK), a client RST at ISN + 1 "
        "moves on by the header like every other segment: it lands on the real server's next byte",
        setup, opened[:1] + opened[2:] + (t.xmit(rst, to_rs(rst, lp, seq_delta=h), 20, RS1),),
        state="CLOSE", timeout=t.T_CL, ins=(syn, ack, rst), outs=(), handshakes=1, lport=lp))
    return rows


def _synproxy_rows() -> list[Row]:
    lp = t.local_port(LIP1)
    hdr = proxy_header("v2")
    h = len(hdr)
    cookie = t.syn_cookie(CLIENT1, VIP, CPORT, 80, SP_ISN, 0, 3 | 4)
    d_in = (RS_ISN - cookie) & M32
    syn = t.tcp(flags="S", seq=SP_ISN, tcp_options=[("MSS", 1460), ("SAckOK", b"")])
    ack = t.tcp(flags="A", seq=SP_ISN + 1, ack=cookie + 1)
    rs_syn = t.tcp_segment(LIP1, lp, RS1, 80, "S", SP_ISN, 0, 64240, SP_SYN_OPTS)
    rs_synack = t.tcp(sport=80, dport=lp, src=RS1, dst=LIP1, flags="SA", seq=RS_ISN, ack=SP_ISN + 1,
                      tcp_options=[("MSS", 1400)])
    request = b"GET / HTTP/1.0\r\n\r\n"
    data = t.tcp(flags="PA", seq=SP_ISN + 1, ack=cookie + 1, payload=request)
    reply = t.tcp(sport=80, dport=lp, src=RS1, dst=LIP1, flags="PA", seq=RS_ISN + 1,
                  ack=SP_ISN + 1 + h + len(request), payload=b"HTTP/1.0 200 OK\r\n")
    cookie_opts = [("MSS", 1460 - ROOM["v2"]), ("NOP", None), ("NOP", None), ("SAckOK", b"")]
    steps = (
        t.answered(syn, t.tcp_segment(VIP, 80, CLIENT1, CPORT, "SA", cookie, SP_ISN + 1, 65535, cookie_opts), 0,
                   "SP_COOKIE", note="the cookie SYN-ACK announces MSS 1460 - 28"),
        t.xmit(ack, rs_syn, 10, RS1),
        t.xmit(rs_synack, t.tcp_segment(LIP1, lp, RS1, 80, "PA", SP_ISN + 1, RS_ISN + 1, 64240, payload=hdr), 20,
               RS1, "SP_HANDSHAKE", note="the director's handshake ACK carries the header (PSH)"),
        t.xmit(data, to_rs(data, lp, hdr=hdr, ack_delta=d_in), 30, RS1,
               note="first data: the header again, ACK into the server's space"),
        t.answered(reply, to_client(reply, seq_delta=-d_in, ack_delta=-h), 40,
                   note="sequence into the cookie's space, ACK back before the header"))
    return [_row(
        "proxy-synproxy", "PROXY v2 with SYN-proxy: the cookie MSS leaves room for the header, the handshake ACK "
        "to the real server carries it, and SYN-proxy's translation (the server's numbers) composes with the "
        "PROXY one (the client's)", _setup("v2", synproxy=True), steps, state="ESTABLISHED", timeout=T_ES,
        ins=(ack, data), outs=(reply,), handshakes=1, lport=lp, tags=("synproxy",),
        sp_stats={"cookies_sent": 1, "cookies_valid": 1, "syns_to_rs": 1, "handshakes": 1})]


def rows() -> list[Row]:
    return _flow_rows("v1") + _flow_rows("v2") + _synproxy_rows()
