"""Direct routing (ipvsadm -g): the IP packet leaves unchanged, framed for the real server (native/src/xmit_dr.c).

The action is XMIT_L2 on the destination's interface with
l2hdr = real server's MAC (6) + director interface's MAC (6) + ethertype 0x0800,
and reason FORWARDED. No TTL decrement, no checksum change (IPVS DR does neither).
Without valid forwarding state (none installed, or ifindex 0) the packet is
dropped with R_NO_L2 rather than black-holed. ICMP errors from the client's side go
to the real server the same way (R_ICMP). The director never sees the replies.
"""

from __future__ import annotations

from lb.engine import Action, Reason
from lb.pyengine.conn import Connection
from lb.pyengine.parse import ParsedPacket
from lb.pyengine.xmit import NO_L2, XmitMethod, xmit_l2


class DirectRouting(XmitMethod):
    name = "route"

    def xmit_in(self, conn: Connection, packet: bytes, parsed: ParsedPacket) -> Action:
        action = xmit_l2(conn.dest, Reason.FORWARDED)
        return NO_L2 if action is None else action

    def icmp_in(self, conn: Connection, packet: bytes, parsed: ParsedPacket) -> Action:
        action = xmit_l2(conn.dest, Reason.ICMP)
        return NO_L2 if action is None else action


METHOD = DirectRouting()
