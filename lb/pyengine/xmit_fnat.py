"""FULLNAT (DPVS conventions): both addresses rewritten; local address/port allocation; TOA; MSS.

  IN  (client -> VIP):  CIP:cport -> VIP:vport  becomes  LIP:lport -> RIP:rport, XMIT_L2.
  OUT (server -> LIP):  RIP:rport -> LIP:lport  becomes  VIP:vport -> CIP:cport, ANSWER.

The director routes these packets itself: TTL - 1, and a TTL <= 1 drops the packet
(R_TTL_EXCEEDED). The IP and L4 checksums are updated incrementally (RFC 1624) in
exactly native/src/xmit_fnat.c's steps (TTL word; source, destination address;
source, destination port), so both engines emit identical bytes; a UDP checksum of
0 (none) stays 0 and an updated one that comes out 0 is sent as 0xffff.

TOA (service flag `toa`): TCP option 254, length 8 (client port, client address)
appended after the TCP options of the first client segment with ACK and neither
SYN nor RST of an entry without TOA yet (data offset + 2, total length + 8, IP and
TCP checksums recomputed), if the TCP header stays <= 60 bytes and the packet fits
the path MTU; otherwise R_TOA_NO_ROOM and the next such segment tries again. On the
way out, a SYN's MSS option (2, 4) is lowered by 8 when it is > 544 (by the longest PROXY
header, 56 for v1 and 28 for v2, on a PROXY protocol service: lb/pyengine/proxyproto.py).

Local addresses (docs/fastpath.md): FULLNAT's per-service state is the service's pool
(service.xmit_data["fullnat"], created with the first address). It is a ring; starting at
the ring cursor, each address tries up to 4096 ports from its own cursor (wrapping in
lport_min..lport_max) and takes the first whose reply tuple is not a live entry's tuple;
the ring cursor then moves past the address used. An address's cursor starts at
lport_min + ((addr * 0x9E3779B1 + (seed0 mod 2**32)) mod 2**32) mod range (native/src/
xmit_fnat.c lb_laddr_add), so restarts do not reuse the previous tuples. A connection's
reply tuple is RIP:rport -> LIP:lport; it holds its local address (xmit_priv), which lives
on after its deletion until its last connection goes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lb import consts as C
from lb.engine import TOA_LEN, Action, Reason, Verdict
from lb.pyengine import proxyproto
from lb.pyengine.conn import Connection, Destination, rport_is_client
from lb.pyengine.csum import csum_replace2, csum_replace4, get16, ip_header_checksum, put16, tcp_checksum_full
from lb.pyengine.parse import IPPROTO_TCP, IPPROTO_UDP, TCP_ACK, TCP_RST, TCP_SYN, ParsedPacket, tcp_options
from lb.pyengine.xmit import NO_L2, Bind, BindContext, MethodService, XmitMethod, icmp_to_client, icmp_to_dest, ttl_exceeded, xmit_l2

TOA_KIND = 254
MSS_FLOOR = 536  # an MSS is lowered only when it stays above this
DEFAULT_MTU = 1500
PKT_MAX = C.LB_PKT_MAX

_TTL_EXCEEDED = Action(Verdict.DROP, Reason.TTL_EXCEEDED)
_NO_LADDR = Action(Verdict.DROP, Reason.NO_LADDR)


@dataclass(slots=True, eq=False)
class LocalAddress:
    """A local address of a service; connections using it keep it after its deletion."""

    addr: bytes  # 4 bytes, network order
    next_port: int  # allocation cursor
    conns: int = 0  # connections currently using it


@dataclass(slots=True)
class Pool:
    """FULLNAT's per-service state: the local addresses, in the order added, and the ring cursor."""

    laddrs: list[LocalAddress] = field(default_factory=list)
    ring: int = 0  # pool index tried first

    def find(self, addr: bytes) -> int | None:
        for index, la in enumerate(self.laddrs):
            if la.addr == addr:
                return index
        return None


def pool_of(service: MethodService) -> Pool | None:
    pool: Any = service.xmit_data.get(FullNat.name)
    return pool if isinstance(pool, Pool) else None


def initial_port_cursor(addr: bytes, seed0: int, lport_min: int, lport_max: int) -> int:
    span = lport_max - lport_min + 1
    host = int.from_bytes(addr, "big")
    return lport_min + ((host * 0x9E3779B1 + (seed0 & 0xFFFFFFFF)) & 0xFFFFFFFF) % span


def add_laddr(service: MethodService, addr: bytes, seed0: int, lport_min: int, lport_max: int) -> bool:
    """Add a local address to the service's pool (lb_laddr_add); False when it is there already."""
    pool = pool_of(service)
    if pool is not None and pool.find(addr) is not None:
        return False
    if pool is None:
        pool = service.xmit_data[FullNat.name] = Pool()  # kept until the service goes
    pool.laddrs.append(LocalAddress(addr, initial_port_cursor(addr, seed0, lport_min, lport_max)))
    return True


def del_laddr(service: MethodService, addr: bytes) -> bool:
    """Remove a local address from the pool (its connections keep it); False when it is not there."""
    pool = pool_of(service)
    index = None if pool is None else pool.find(addr)
    if pool is None or index is None:
        return False
    del pool.laddrs[index]
    if not pool.laddrs or pool.ring >= len(pool.laddrs):
        pool.ring = 0
    return True


def laddr_list(service: MethodService) -> list[LocalAddress]:
    pool = pool_of(service)
    return [] if pool is None else list(pool.laddrs)


def _toa(dest: Destination) -> bool:
    """Does the destination's service put the client's address in TOA? (a deleted one: no)"""
    return dest.available and dest.owner.spec.toa


def rewrite(o: bytearray, parsed: ParsedPacket, saddr: bytes, sport: int, daddr: bytes, dport: int) -> bool:
    """Rewrite the copy `o` in place (lb xmit_fnat.c rewrite()); False when the TTL runs out."""
    if o[8] <= 1:
        return False
    old_word = get16(o, 8)
    o[8] -= 1
    csum_replace2(o, 10, old_word, get16(o, 8))
    old_s, old_d = bytes(o[12:16]), bytes(o[16:20])
    o[12:16] = saddr
    o[16:20] = daddr
    csum_replace4(o, 10, old_s, saddr)
    csum_replace4(o, 10, old_d, daddr)
    l4 = parsed.ip_header_len
    csum: int | None = None
    if parsed.proto == IPPROTO_TCP:
        csum = l4 + 16
    elif parsed.proto == IPPROTO_UDP and (o[l4 + 6] | o[l4 + 7]):
        csum = l4 + 6
    old_sp, old_dp = get16(o, l4), get16(o, l4 + 2)
    put16(o, l4, sport)
    put16(o, l4 + 2, dport)
    if csum is not None:
        csum_replace4(o, csum, old_s, saddr)
        csum_replace4(o, csum, old_d, daddr)
        csum_replace2(o, csum, old_sp, sport)
        csum_replace2(o, csum, old_dp, dport)
        if parsed.proto == IPPROTO_UDP and o[csum] == 0 and o[csum + 1] == 0:
            o[csum] = o[csum + 1] = 0xFF  # 0 means "no checksum" in UDP
    return True


def toa_option(cport: int, caddr: bytes) -> bytes:
    return bytes((TOA_KIND, TOA_LEN)) + cport.to_bytes(2, "big") + caddr


def toa_insert(o: bytearray, parsed: ParsedPacket, conn: Connection, limit: int) -> bytearray | None:
    """The packet with the TOA option after its TCP options, or None when there is no room."""
    ihl, doff = parsed.ip_header_len, parsed.tcp_doff
    new_len = len(o) + TOA_LEN
    if doff + TOA_LEN > 60 or new_len > limit:
        return None
    opt_end = ihl + doff
    n = o[:opt_end] + toa_option(conn.cport, conn.caddr) + o[opt_end:]
    n[ihl + 12] = (((doff + TOA_LEN) // 4) << 4) | (n[ihl + 12] & 0x0F)
    put16(n, 2, new_len)
    ip_header_checksum(n, ihl)
    tcp_checksum_full(n, ihl, new_len)
    return n


def mss_lower(o: bytearray, parsed: ParsedPacket, by: int) -> None:
    """Lower the MSS option of the SYN in `o` by `by` when it stays above 536 (checksum updated)."""
    th = parsed.ip_header_len
    doff = parsed.tcp_doff
    for kind, length, i in tcp_options(o, th, doff):
        if kind == 2 and length == 4:
            mss = get16(o, th + i + 2)
            if mss > by + MSS_FLOOR:
                put16(o, th + i + 2, mss - by)
                csum_replace2(o, th + 16, mss, mss - by)
            return


def fnat_in(conn: Connection, packet: bytes, parsed: ParsedPacket) -> Action:
    dest = conn.dest
    fwd = dest.fwd
    if fwd is None:
        return NO_L2
    o = bytearray(packet[: parsed.total_length])
    if not rewrite(o, parsed, conn.reply_addr, conn.reply_port, dest.addr, conn.rport):
        return ttl_exceeded(packet, parsed, parsed.daddr)  # from the VIP
    reason = Reason.FORWARDED
    if (_toa(dest) and parsed.proto == IPPROTO_TCP and not conn.toa_done
            and parsed.tcp_flags & (TCP_SYN | TCP_RST | TCP_ACK) == TCP_ACK):
        limit = min(fwd.mtu or DEFAULT_MTU, PKT_MAX)
        with_toa = toa_insert(o, parsed, conn, limit)
        if with_toa is not None:
            o = with_toa
            conn.toa_done = True
        else:
            reason = Reason.TOA_NO_ROOM
    action = xmit_l2(dest, reason, bytes(o))
    assert action is not None
    return action


def _room(dest: Destination) -> int:
    """Bytes the client's segments must leave free for what the service adds (TOA, PROXY header)."""
    if not dest.available:
        return 0
    spec = dest.owner.spec
    return proxyproto.room(spec.toa, spec.proxy_protocol)


def fnat_out(conn: Connection, packet: bytes, parsed: ParsedPacket) -> Action:
    o = bytearray(packet[: parsed.total_length])
    room = _room(conn.dest)
    if room and parsed.proto == IPPROTO_TCP and parsed.tcp_flags & TCP_SYN:
        mss_lower(o, parsed, room)
    if not rewrite(o, parsed, conn.vaddr, conn.vport, conn.caddr, conn.cport):
        return ttl_exceeded(packet, parsed, parsed.daddr)  # to the real server, from the LIP
    return Action(Verdict.ANSWER, Reason.FORWARDED, out=bytes(o))


class FullNat(XmitMethod):
    name = "fullnat"
    sees_replies = True
    synproxy_ok = True
    needs_entry = True

    def xmit_in(self, conn: Connection, packet: bytes, parsed: ParsedPacket) -> Action:
        return fnat_in(conn, packet, parsed)

    def xmit_out(self, conn: Connection, packet: bytes, parsed: ParsedPacket) -> Action:
        return fnat_out(conn, packet, parsed)

    def icmp_in(self, conn: Connection, packet: bytes, parsed: ParsedPacket) -> Action:
        """To the real server as LIP -> RIP, quoting RIP:rport -> LIP:lport."""
        return icmp_to_dest(conn, packet, parsed, conn.reply_addr, conn.reply_addr, conn.reply_port)

    def icmp_out(self, conn: Connection, packet: bytes, parsed: ParsedPacket) -> Action:
        """To the client as VIP -> CIP, quoting CIP:cport -> VIP:vport."""
        return icmp_to_client(conn, packet, parsed)

    def conn_bind(self, ctx: BindContext, service: MethodService, dest: Destination,
                  parsed: ParsedPacket) -> Bind | Action:
        """A local address and port whose reply tuple is free: from the ring cursor, each address's
        first free port at or after its own cursor (wrapping in the range); an address with none is
        passed over, its cursor unchanged (C: a bitmap per tuple answers in O(1); this scans)."""
        pool = pool_of(service)
        laddrs = [] if pool is None else pool.laddrs
        n = len(laddrs)
        lport_min, lport_max = ctx.lport_min, ctx.lport_max
        probes = lport_max - lport_min + 1
        # the real server's port of this connection: the client's under a port-zero or fwmark service
        rport = parsed.dport if rport_is_client(dest) else dest.port
        for k in range(n):
            assert pool is not None
            la = laddrs[(pool.ring + k) % n]
            for _ in range(probes):
                port = la.next_port
                if port < lport_min or port > lport_max:
                    port = lport_min
                la.next_port = lport_min if port == lport_max else port + 1
                if not ctx.reply_in_use(parsed.proto, dest, rport, la.addr, port):
                    pool.ring = (pool.ring + k + 1) % n
                    la.conns += 1
                    return Bind(la.addr, port, la)
        return _NO_LADDR

    def release(self, priv: Any) -> None:
        assert isinstance(priv, LocalAddress)
        priv.conns -= 1

    def listing_laddr(self, conn: Connection) -> tuple[bytes, int]:
        return conn.reply_addr, conn.reply_port


METHOD = FullNat()
