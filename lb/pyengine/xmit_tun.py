"""IP-in-IP tunnelling (ipvsadm -i), as native/src/xmit_tun.c and docs/fastpath.md "Transmit".

The client's packet (up to its IP total length) is carried unchanged inside an
outer IPv4 header: 0x45, TOS = inner TOS, total length, ID = 0 if the inner DF is
set else the inner ID, flags DF = inner DF, TTL 64, protocol 4, source = the route
source address of the destination's forwarding state, destination = the real
server, header checksum. No forwarding state or source address 0: DROP/R_NO_L2.
Too big for the path MTU (0 = 1500) after the 20 bytes: with DF an ICMP
fragmentation needed (next-hop MTU = MTU - 20, quoting the packet with its TTL
already decremented, as the kernel's) is the ANSWER, R_FRAG_NEEDED; without DF the
outer packet leaves as fragments (the engine's path-MTU check), or is dropped
(R_FRAG_NEEDED) when it would exceed 65,535 bytes. ICMP errors from the client's side
are encapsulated the same way (R_ICMP), without the MTU check. The director never sees the
replies.
"""

from __future__ import annotations

from lb import consts as C
from lb.engine import IPIP_OVERHEAD, Action, Reason, Verdict
from lb.pyengine.conn import Connection, Destination
from lb.pyengine.csum import internet_checksum, put16
from lb.pyengine.icmp import frag_needed
from lb.pyengine.parse import ParsedPacket
from lb.pyengine.xmit import NO_L2, XmitMethod, ttl_decremented, ttl_exceeded, xmit_l2

IPPROTO_IPIP = 4
OUTER_TTL = 64
DEFAULT_MTU = 1500
PKT_MAX = C.LB_PKT_MAX  # the largest IPv4 packet (and the C core's output buffer)

_FRAG_DROP = Action(Verdict.DROP, Reason.FRAG_NEEDED)


def encapsulate(dest: Destination, inner: bytes) -> bytes | None:
    """Outer header + inner, or None when it cannot be built (no state, too big)."""
    total = len(inner) + IPIP_OVERHEAD
    if dest.fwd is None or total > PKT_MAX or len(inner) < 20:
        return None
    df = inner[6] & 0x40
    outer = bytearray(20)
    outer[0] = 0x45
    outer[1] = inner[1]
    put16(outer, 2, total)
    if not df:
        outer[4:6] = inner[4:6]
    outer[6] = 0x40 if df else 0
    outer[8] = OUTER_TTL
    outer[9] = IPPROTO_IPIP
    outer[12:16] = dest.fwd_saddr
    outer[16:20] = dest.addr
    put16(outer, 10, internet_checksum(bytes(outer)))
    return bytes(outer) + inner


_ICMP_TTL_DROP = Action(Verdict.DROP, Reason.TTL_EXCEEDED)


class Tunnel(XmitMethod):
    name = "tunnel"
    mtu_overhead = IPIP_OVERHEAD

    def xmit_in(self, conn: Connection, packet: bytes, parsed: ParsedPacket) -> Action:
        dest = conn.dest
        fwd = dest.fwd
        if fwd is None or dest.fwd_saddr == b"\0\0\0\0":
            return NO_L2
        if packet[8] <= 1:
            return ttl_exceeded(packet, parsed, parsed.daddr)  # decrement_ttl comes before the MTU check
        mtu = fwd.mtu or DEFAULT_MTU
        if parsed.total_length + IPIP_OVERHEAD > mtu:
            if packet[6] & 0x40:
                answer = frag_needed(packet, parsed.ip_header_len, parsed.total_length,
                                     (mtu - IPIP_OVERHEAD) & 0xFFFF)
                return Action(Verdict.ANSWER, Reason.FRAG_NEEDED, out=answer)
            if parsed.total_length + IPIP_OVERHEAD > PKT_MAX:
                return _FRAG_DROP
            # DF clear: the outer packet (DF clear too) leaves as fragments of the path MTU, as
            # ip_vs_tunnel_xmit's ip_local_out cuts it; the engine's path-MTU check says so.
        return self._encapsulated(dest, packet, parsed, Reason.FORWARDED)

    def icmp_in(self, conn: Connection, packet: bytes, parsed: ParsedPacket) -> Action:
        dest = conn.dest
        if dest.fwd is None or dest.fwd_saddr == b"\0\0\0\0":
            return NO_L2  # as for the connection's own packets: never an outer source 0.0.0.0
        if packet[8] <= 1:
            return _ICMP_TTL_DROP  # no ICMP error about an ICMP error
        return self._encapsulated(dest, packet, parsed, Reason.ICMP)

    @staticmethod
    def _encapsulated(dest: Destination, packet: bytes, parsed: ParsedPacket, reason: Reason) -> Action:
        out = encapsulate(dest, bytes(ttl_decremented(packet, parsed.total_length)))
        action = None if out is None else xmit_l2(dest, reason, out)
        return NO_L2 if action is None else action


METHOD = Tunnel()
