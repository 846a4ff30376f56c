"""Direct routing (ipvsadm -g): the IP packet leaves with TTL - 1, framed for the real server (native/src/xmit_dr.c).

The action is XMIT_L2 on the destination's interface with
l2hdr = real server's MAC (6) + director interface's MAC (6) + ethertype 0x0800,
out = the packet with its TTL decremented and header checksum updated (IPVS DR does
so too: __ip_vs_get_out_rt -> decrement_ttl), reason FORWARDED; at TTL <= 1 the
client gets ICMP time exceeded from the VIP (TTL_EXCEEDED). Without valid forwarding
state (none installed, or ifindex 0) the packet is dropped with R_NO_L2 rather than
black-holed. ICMP errors from the client's side go to the real server the same way
(R_ICMP; at TTL <= 1 dropped: no ICMP error about an ICMP error). The director never
sees the replies.
"""

from __future__ import annotations

from lb.engine import Action, Reason, Verdict
from lb.pyengine.conn import Connection
from lb.pyengine.parse import ParsedPacket
from lb.pyengine.xmit import NO_L2, XmitMethod, ttl_decremented, ttl_exceeded, xmit_l2

_ICMP_TTL_DROP = Action(Verdict.DROP, Reason.TTL_EXCEEDED)


class DirectRouting(XmitMethod):
    name = "route"

    def xmit_in(self, conn: Connection, packet: bytes, parsed: ParsedPacket) -> Action:
        if conn.dest.fwd is None:
            return NO_L2
        if packet[8] <= 1:
            return ttl_exceeded(packet, parsed, parsed.daddr)
        action = xmit_l2(conn.dest, Reason.FORWARDED, bytes(ttl_decremented(packet, parsed.total_length)))
        return NO_L2 if action is None else action

    def icmp_in(self, conn: Connection, packet: bytes, parsed: ParsedPacket) -> Action:
        if conn.dest.fwd is None:
            return NO_L2
        if packet[8] <= 1:
            return _ICMP_TTL_DROP
        action = xmit_l2(conn.dest, Reason.ICMP, bytes(ttl_decremented(packet, parsed.total_length)))
        return NO_L2 if action is None else action


METHOD = DirectRouting()
