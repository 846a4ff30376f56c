"""The PROXY protocol on FULLNAT TCP connections, as native/src/proxyproto.c (byte for byte).

A service with `proxy_protocol` "v1" or "v2" sends the real server a PROXY header
(haproxy's proxy-protocol.txt) before the client's first byte, naming the client's
address and port and the VIP:vport it connected to:

  v1: b"PROXY TCP4 <client> <vip> <cport> <vport>\\r\\n" (dotted quads, decimal ports)
  v2: signature 0D 0A 0D 0A 00 0D 0A 51 55 49 54 0A, 0x21 (version 2, PROXY), 0x11
      (AF_INET, STREAM), length 12 (network order), client address, VIP, client port,
      VIP port: 28 bytes.

The header sits in the real server's sequence space at the client's ISN + 1; every
client byte sits `length` further on (state ProxyState, per connection):

- client -> server, after the method's rewrite: a SYN passes (a SYN without ACK whose
  sequence number is not the ISN restarts the state with it); a segment at ISN + 1
  with ACK and without RST carries the header in front of its payload when it has a
  payload or FIN or the header is not acknowledged yet (cut to the path MTU, FIN
  cleared, R_PROXY_CUT; dropped with R_PROXY_CUT when not even the header fits); a
  RST at ISN + 1 before any header went is left alone; every other segment's
  sequence number moves by `length` (checksum updated incrementally).
- server -> client, after the method's rewrite: the acknowledgment number (when ACK
  is set) and SACK edges at or past ISN + 1 + length move back by `length` (the
  acknowledgment then marks the header acknowledged); those inside the header
  become ISN + 1.
- Under SYN-proxy the director's own handshake ACK carries the header, then as much
  held data as fits the path MTU (less 40 bytes of headers), with PSH.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

from lb import consts as C
from lb.engine import Action, Reason, Verdict
from lb.pyengine.csum import ip_header_checksum, put16, tcp_checksum_full
from lb.pyengine.parse import TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, ParsedPacket, tcp_options
from lb.pyengine.synproxy import M32, add32

V1_MAX_LEN = C.LB_PROXY_V1_MAX_LEN  # bytes
V2_LEN = C.LB_PROXY_V2_LEN  # bytes
TOA_LEN = C.LB_TOA_LEN  # bytes
V2_SIGNATURE = bytes((0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A))
VERSIONS = ("v1", "v2")
DEFAULT_MTU = 1500
PKT_MAX = C.LB_PKT_MAX


def header(version: str, caddr: bytes, cport: int, vaddr: bytes, vport: int) -> bytes:
    """The PROXY header of a connection from caddr:cport to vaddr:vport."""
    if version == "v2":
        return (V2_SIGNATURE + bytes((0x21, 0x11)) + (12).to_bytes(2, "big") + caddr + vaddr
                + cport.to_bytes(2, "big") + vport.to_bytes(2, "big"))
    text = f"PROXY TCP4 {socket.inet_ntoa(caddr)} {socket.inet_ntoa(vaddr)} {cport} {vport}\r\n"
    return text.encode("ascii")


def room(toa: bool, proxy_protocol: str | None) -> int:
    """Bytes a service's client segments must leave free (lb_svc_room): the MSS is lowered by it."""
    if toa:
        return TOA_LEN
    if proxy_protocol == "v1":
        return V1_MAX_LEN
    if proxy_protocol == "v2":
        return V2_LEN
    return 0


@dataclass(slots=True, eq=False)
class ProxyState:
    version: str  # fixed when the connection is created
    client_isn: int
    length: int  # header bytes
    sent: bool = False  # the header went to the real server at least once
    acked: bool = False  # the real server acknowledged every header byte


def new_state(version: str, caddr: bytes, cport: int, vaddr: bytes, vport: int, isn: int) -> ProxyState:
    return ProxyState(version, isn & M32, len(header(version, caddr, cport, vaddr, vport)))


def _insert(state: ProxyState, hdr: bytes, action: Action, ihl: int, hdrs: int, mtu: int) -> Action:
    o = bytearray(action.out)
    h = len(hdr)
    limit = min(mtu or DEFAULT_MTU, PKT_MAX)
    if hdrs + h > limit:
        return Action(Verdict.DROP, Reason.PROXY_CUT)
    reason = action.reason
    payload = bytes(o[hdrs:])
    if len(o) + h > limit:
        payload = payload[: limit - hdrs - h]
        o[ihl + 13] &= ~TCP_FIN & 0xFF  # the FIN follows bytes not sent yet
        reason = Reason.PROXY_CUT
    n = o[:hdrs] + hdr + payload
    put16(n, 2, len(n))
    ip_header_checksum(n, ihl)
    tcp_checksum_full(n, ihl, len(n))
    state.sent = True
    return Action(action.verdict, reason, bytes(n), action.ifindex, action.l2hdr)


def translate_in(state: ProxyState, hdr: bytes, action: Action, parsed: ParsedPacket, mtu: int,
                 synproxied: bool) -> Action:
    """A client segment after the method's rewrite (action.out): insert the header or shift past it."""
    if action.verdict != Verdict.XMIT_L2 or not action.out:
        return action
    ihl = parsed.ip_header_len
    o = bytearray(action.out)
    fl = o[ihl + 13]
    seq = int.from_bytes(o[ihl + 4 : ihl + 8], "big")
    if fl & TCP_SYN:
        if not fl & TCP_ACK and not synproxied and seq != state.client_isn:
            state.client_isn = seq  # a new ISN: the header starts over
            state.sent = state.acked = False
        return action
    first = (state.client_isn + 1) & M32
    hdrs = ihl + parsed.tcp_doff
    payload = len(o) - hdrs
    if seq == first and fl & TCP_ACK and not fl & TCP_RST and (payload or fl & TCP_FIN or not state.acked):
        return _insert(state, hdr, action, ihl, hdrs, mtu)
    if seq == first and fl & TCP_RST and not state.sent:
        return action  # the real server never saw the header: its next byte is still ISN + 1
    add32(o, ihl + 4, state.length, ihl + 16)
    return Action(action.verdict, action.reason, bytes(o), action.ifindex, action.l2hdr)


def _back(state: ProxyState, value: int) -> tuple[int, bool]:
    first = (state.client_isn + 1) & M32
    if ((value - first - state.length) & M32) < 0x80000000:
        return (value - state.length) & M32, True
    if 0 < ((value - first) & M32) < 0x80000000:
        return first, False  # inside the header: none of the client's bytes yet
    return value, False


def translate_out(state: ProxyState, action: Action, parsed: ParsedPacket) -> Action:
    """A real server's segment after the method's rewrite: ACK and SACK edges back before the header."""
    if action.verdict != Verdict.ANSWER or not action.out:
        return action
    ihl = parsed.ip_header_len
    o = bytearray(action.out)
    if o[ihl + 13] & TCP_ACK:
        ack = int.from_bytes(o[ihl + 8 : ihl + 12], "big")
        back, acked = _back(state, ack)
        if back != ack:
            add32(o, ihl + 8, back - ack, ihl + 16)
        if acked:
            state.acked = True
    for kind, length, i in tcp_options(o, ihl, parsed.tcp_doff):
        if kind == 5 and length >= 10 and (length - 2) % 8 == 0:
            for e in range(i + 2, i + length - 3, 4):
                edge = int.from_bytes(o[ihl + e : ihl + e + 4], "big")
                back, _ = _back(state, edge)
                if back != edge:
                    add32(o, ihl + e, back - edge, ihl + 16)
    return Action(action.verdict, action.reason, bytes(o), action.ifindex, action.l2hdr)


def first_payload(state: ProxyState, hdr: bytes, held: bytes, mtu: int) -> bytes:
    """SYN-proxy's handshake ACK payload: the header, then as much held data as the MTU leaves room for."""
    cap = min(max((mtu or DEFAULT_MTU) - 40, 0), V1_MAX_LEN + C.LB_SP_DATA_MAX_BYTES_MAX)
    if len(hdr) > cap:
        return b""
    state.sent = True
    return hdr + held[: cap - len(hdr)]
