"""NAT (masquerading, ipvsadm -m): the destination rewritten in, the source rewritten back (native/src/xmit_nat.c).

  IN  (client -> VIP):  CIP:cport -> VIP:vport  becomes  CIP:cport -> RIP:rport, XMIT_L2.
  OUT (server -> CIP):  RIP:rport -> CIP:cport  becomes  VIP:vport -> CIP:cport, ANSWER.

The real server routes its replies through the director, so the director sees both directions:
a connection's reply tuple is (proto, RIP, RPORT, CIP, CPORT), the client's own address and port
(conn_bind). Port translation (-r RIP:8080 under VIP:80) is the same rewrite.

The director routes these packets itself: TTL - 1 both ways; a TTL <= 1 is answered with ICMP time
exceeded (R_TTL_EXCEEDED): to the client from the VIP, to the real server from the director's route
source towards it. Such a reply never reaches the kernel's ip_vs_out (ip_forward answers and drops it
first), so it leaves its connection's state, timer and stats alone (forwards_replies). The IP and L4
checksums are updated incrementally (RFC 1624) for the words that change (TTL word, one address, one
port); a UDP checksum of 0 (none) stays 0 and an updated one
that comes out 0 is sent as 0xffff. Both engines emit identical bytes.

ICMP errors (the kernel's ip_vs_nat_icmp): from the client's side, quoting VIP:vport -> CIP:cport,
to the real server as <sender> -> RIP quoting RIP:rport -> CIP:cport; from the real server's side,
quoting CIP:cport -> RIP:rport, to the client as VIP -> CIP quoting CIP:cport -> VIP:vport.
No per-service state, no reference per connection; no FTP helper.
"""

from __future__ import annotations

from lb.engine import Action, Reason, Verdict
from lb.pyengine.conn import Connection, Destination
from lb.pyengine.csum import csum_replace2, csum_replace4, get16, put16
from lb.pyengine.parse import IPPROTO_TCP, IPPROTO_UDP, ParsedPacket
from lb.pyengine.xmit import NO_L2, Bind, BindContext, MethodService, XmitMethod, icmp_to_client, icmp_to_dest, ttl_exceeded, xmit_l2


def nat_rewrite(o: bytearray, parsed: ParsedPacket, source: bool, addr: bytes, port: int) -> bool:
    """Rewrite the source (or destination) address and port of the copy `o` in place, TTL - 1;
    False when the TTL runs out."""
    if o[8] <= 1:
        return False
    old_word = get16(o, 8)
    o[8] -= 1
    csum_replace2(o, 10, old_word, get16(o, 8))
    at = 12 if source else 16
    old_addr = bytes(o[at:at + 4])
    o[at:at + 4] = addr
    csum_replace4(o, 10, old_addr, addr)
    l4 = parsed.ip_header_len
    csum: int | None = None
    if parsed.proto == IPPROTO_TCP:
        csum = l4 + 16
    elif parsed.proto == IPPROTO_UDP and (o[l4 + 6] | o[l4 + 7]):
        csum = l4 + 6
    port_at = l4 if source else l4 + 2
    old_port = get16(o, port_at)
    put16(o, port_at, port)
    if csum is not None:
        csum_replace4(o, csum, old_addr, addr)
        csum_replace2(o, csum, old_port, port)
        if parsed.proto == IPPROTO_UDP and o[csum] == 0 and o[csum + 1] == 0:
            o[csum] = o[csum + 1] = 0xFF  # 0 means "no checksum" in UDP
    return True


class Masquerading(XmitMethod):
    name = "masq"
    sees_replies = True
    forwards_replies = True

    def xmit_in(self, conn: Connection, packet: bytes, parsed: ParsedPacket) -> Action:
        dest = conn.dest
        if dest.fwd is None:
            return NO_L2
        o = bytearray(packet[: parsed.total_length])
        if not nat_rewrite(o, parsed, False, dest.addr, conn.rport):
            return ttl_exceeded(packet, parsed, parsed.daddr)  # from the VIP, as decrement_ttl
        action = xmit_l2(dest, Reason.FORWARDED, bytes(o))
        assert action is not None
        return action

    def xmit_out(self, conn: Connection, packet: bytes, parsed: ParsedPacket) -> Action:
        o = bytearray(packet[: parsed.total_length])
        if not nat_rewrite(o, parsed, True, conn.vaddr, conn.vport):
            # Forwarded by the director: ip_forward's icmp_send answers from the source of the route back
            # to the real server (the forwarding state's saddr); without forwarding state from 0.0.0.0,
            # which the adapters' IPPROTO_RAW socket has the kernel fill in from that same route
            # (native/src/xmit_nat.c nat_xmit_out).
            fwd = conn.dest.fwd
            return ttl_exceeded(packet, parsed, conn.dest.fwd_saddr if fwd is not None else b"\0\0\0\0")
        return Action(Verdict.ANSWER, Reason.FORWARDED, out=bytes(o))

    def icmp_in(self, conn: Connection, packet: bytes, parsed: ParsedPacket) -> Action:
        """To the real server (the sender keeps its address), quoting RIP:rport -> CIP:cport."""
        return icmp_to_dest(conn, packet, parsed, parsed.saddr, conn.caddr, conn.cport)

    def icmp_out(self, conn: Connection, packet: bytes, parsed: ParsedPacket) -> Action:
        """To the client as VIP -> CIP, quoting CIP:cport -> VIP:vport."""
        return icmp_to_client(conn, packet, parsed)

    def conn_bind(self, ctx: BindContext, service: MethodService, dest: Destination,
                  parsed: ParsedPacket) -> Bind:
        """The reply tuple's director side is the client's own address and port."""
        return Bind(parsed.saddr, parsed.sport)


METHOD = Masquerading()
