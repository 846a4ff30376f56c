"""Forwarding-method operations and their registry, as native/include/lb_xmit.h.

A connection is bound to its method when it is created (Connection.xmit: the kernel's
cp->packet_xmit; editing a destination's method affects new connections only), and the
packet path, the ICMP relation and the connection table call through it, never asking which
method it is. Each method owns what is specific to it:

- its reply tuple: a method that sees the real server's replies (`sees_replies`) gives each
  connection a second key (proto, RIP, RPORT, reply_addr, reply_port), whose director side
  conn_bind chooses (FULLNAT: a local address and port; NAT: the client's own);
  the table indexes it and replies and ICMP errors from the real server find the connection
  by it. The others have none, and their connections are NOOUTPUT (INPUT-ONLY state table).
- a reference per connection (Connection.xmit_priv, FULLNAT: its local address), dropped by
  release(); per-service state (service.xmit_data[name], FULLNAT: the local address pool),
  dropped by svc_done() with the service.
- whether a SYN-proxy service may use it (`synproxy_ok`), its encapsulation overhead
  (`mtu_overhead`), its ICMP handling both ways, its fields in the connection listing.

Registry: every module lb/pyengine/xmit_<x>.py defines METHOD, an instance whose `name` is a
forwarding method's name as lb.engine.FWD_IDS spells it (route, tunnel, masq, fullnat), as each
native/src/xmit_<x>.c defines lb_xmit_<x> listed in native/include/lb_xmit_list.h. A name
without a module is refused with EOPNOTSUPP.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

from lb.engine import FWD_IDS, Action, FwdState, Reason, Verdict
from lb.pyengine.conn import Connection, Destination
from lb.pyengine.csum import csum_replace2, get16
from lb.pyengine.icmp import time_exceeded, translate
from lb.pyengine.parse import ParsedPacket

NO_L2 = Action(Verdict.DROP, Reason.NO_L2)


def ttl_exceeded(packet: bytes, parsed: ParsedPacket, source: bytes) -> Action:
    """A packet whose TTL runs out on the director (decrement_ttl, ip_forward): ICMP time exceeded back
    to its source from `source` (0.0.0.0: the kernel's raw output fills in the source of its route to
    the destination, raw_send_hdrinc; see xmit_nat.py), reason TTL_EXCEEDED."""
    out = time_exceeded(packet, parsed.ip_header_len, parsed.total_length, source)
    return Action(Verdict.ANSWER, Reason.TTL_EXCEEDED, out=out)


def ttl_decremented(packet: bytes, total_length: int) -> bytearray:
    """A copy of the packet (up to its total length) with TTL - 1 and its header checksum updated
    (the kernel's ip_decrease_ttl; the caller checked TTL > 1)."""
    o = bytearray(packet[:total_length])
    old_word = get16(o, 8)
    o[8] -= 1
    csum_replace2(o, 10, old_word, get16(o, 8))
    return o
ETHERTYPE_IPV4 = b"\x08\x00"
MAC_LEN = 6  # bytes


def fwd_is_valid(fwd: FwdState | None) -> bool:
    return fwd is not None and fwd.ifindex != 0


def l2_header(fwd: FwdState) -> bytes:
    """next-hop MAC + director MAC + 0x0800 (ValueError for MACs that are not 6 bytes)."""
    if len(fwd.dst_mac) != MAC_LEN or len(fwd.src_mac) != MAC_LEN:
        raise ValueError(f"MAC addresses must be {MAC_LEN} bytes: dst {fwd.dst_mac!r} src {fwd.src_mac!r}")
    return bytes(fwd.dst_mac) + bytes(fwd.src_mac) + ETHERTYPE_IPV4


def xmit_l2(dest: Destination, reason: Reason, out: bytes = b"") -> Action | None:
    """XMIT_L2 on the destination's L2 path, or None without valid forwarding state."""
    fwd = dest.fwd
    if fwd is None:
        return None
    return Action(Verdict.XMIT_L2, reason, out=out, ifindex=fwd.ifindex, l2hdr=dest.l2hdr)


class MethodService(Protocol):
    """What a method sees of a service."""

    xmit_data: dict[str, Any]


class BindContext(Protocol):
    """What conn_bind may ask the engine."""

    lport_min: int
    lport_max: int

    def reply_in_use(self, proto: int, dest: Destination, rport: int, reply_addr: bytes, reply_port: int) -> bool:
        """Is (proto, dest's address, rport) -> (reply_addr, reply_port) a live connection's reply tuple?"""
        ...


@dataclass(frozen=True, slots=True)
class Bind:
    """What a method binds to a new connection (lb_conn_bind)."""

    reply_addr: bytes = b"\0\0\0\0"
    reply_port: int = 0
    priv: Any = None


NOTHING = Bind()


class XmitMethod:
    """Base class of a forwarding method (struct lb_xmit_ops)."""

    name: ClassVar[str]
    sees_replies: ClassVar[bool] = False  # xmit_out / icmp_out exist; connections have a reply tuple
    synproxy_ok: ClassVar[bool] = False
    # its replies are addressed to the director itself (FULLNAT): a one-packet service cannot use it
    needs_entry: ClassVar[bool] = False
    mtu_overhead: ClassVar[int] = 0  # bytes added in front of the client's packet
    # its replies are forwarded by the director (NAT): ip_forward answers one whose TTL runs out before
    # ip_vs_out sees it, so such a reply leaves its connection alone and goes to xmit_out only
    # (lb_xmit.h LB_XMIT_F_FORWARDS_REPLIES)
    forwards_replies: ClassVar[bool] = False

    def xmit_in(self, conn: Connection, packet: bytes, parsed: ParsedPacket) -> Action:
        """Client -> real server."""
        raise NotImplementedError

    def xmit_out(self, conn: Connection, packet: bytes, parsed: ParsedPacket) -> Action:
        """Real server -> client (sees_replies only)."""
        raise NotImplementedError

    def icmp_in(self, conn: Connection, packet: bytes, parsed: ParsedPacket) -> Action:
        """An ICMP error about `conn` from the client's side (checksum checked, stats counted)."""
        raise NotImplementedError

    def icmp_out(self, conn: Connection, packet: bytes, parsed: ParsedPacket) -> Action:
        """The same from the real server's side (sees_replies only)."""
        raise NotImplementedError

    def conn_bind(self, ctx: BindContext, service: MethodService, dest: Destination,
                  parsed: ParsedPacket) -> Bind | Action:
        """What a new connection of `parsed` to `dest` needs (taking its references), or the action that
        drops the packet (FULLNAT: NO_LADDR)."""
        return NOTHING

    def release(self, priv: Any) -> None:
        """Drop the reference conn_bind took (the connection's xmit_priv)."""

    def listing_laddr(self, conn: Connection) -> tuple[bytes, int]:
        """The connection's local address and port in the listing (FULLNAT's), else zero."""
        return b"\0\0\0\0", 0

    def svc_done(self, service: MethodService) -> None:
        """The service goes: drop the method's per-service state."""
        service.xmit_data.pop(self.name, None)


@functools.cache
def methods() -> dict[str, XmitMethod]:
    """Every method module's METHOD, by forwarding method name."""
    found: dict[str, XmitMethod] = {}
    for info in pkgutil.iter_modules([str(Path(__file__).parent)]):
        if not info.name.startswith("xmit_"):
            continue
        module = importlib.import_module(f"{__package__}.{info.name}")
        method = getattr(module, "METHOD", None)
        if not isinstance(method, XmitMethod) or method.name not in FWD_IDS:
            raise ImportError(f"{module.__name__} must define METHOD, an XmitMethod named as one of {sorted(FWD_IDS)}")
        found[method.name] = method
    return found


def find_method(name: str) -> XmitMethod | None:
    """The registered method of that name, or None (not implemented)."""
    return methods().get(name)


_ICMP_TTL_EXCEEDED = Action(Verdict.DROP, Reason.TTL_EXCEEDED)


def icmp_to_dest(conn: Connection, packet: bytes, parsed: ParsedPacket, outer_src: bytes, quoted_dst: bytes,
                 quoted_dport: int) -> Action:
    """An ICMP error from the client's side, for methods that rewrite addresses (NAT, FULLNAT): to
    the connection's real server as outer_src -> RIP, quoting RIP:rport -> quoted_dst:quoted_dport."""
    dest = conn.dest
    out = translate(packet, parsed.ip_header_len, parsed.total_length, outer_src, dest.addr, dest.addr,
                    conn.rport, quoted_dst, quoted_dport)
    if out is None:
        return _ICMP_TTL_EXCEEDED
    action = xmit_l2(dest, Reason.ICMP, out)
    return NO_L2 if action is None else action


def icmp_to_client(conn: Connection, packet: bytes, parsed: ParsedPacket) -> Action:
    """An ICMP error from the real server's side: to the client as VIP -> CIP, quoting CIP:cport -> VIP:vport."""
    out = translate(packet, parsed.ip_header_len, parsed.total_length, conn.vaddr, conn.caddr, conn.caddr,
                    conn.cport, conn.vaddr, conn.vport)
    return _ICMP_TTL_EXCEEDED if out is None else Action(Verdict.ANSWER, Reason.ICMP, out=out)
