"""Destinations, FULLNAT local addresses, connection entries (and persistence templates), the table.

Invariants (docs/fastpath.md):
- An entry is live while now_ms < expires_at_ms. At its expiry time it is dead: it
  never matches and is released (unbound from its destination, its template and
  its local address) before anything else happens at that time, exactly as a
  kernel timer would fire. The engine pops every due entry, in expiry-time order
  (connections before templates at equal times), at the start of each call, so
  destination counts and the table size always describe live entries only.
- Every live connection is counted in its destination's `total`, and in `active` too
  while its state is active (the kernel's totalconns/activeconns, Debian 6.1.187+);
  `inactive` is total - active; every template is counted in `persist` only.
- Every live TCP connection in SYN_SENT, SYN_RECV, ESTABLISHED or SYNACK counts as
  active, in any other state (and every UDP connection) as inactive: the kernel's
  tcp_state_active (lb/pyengine/proto_tcp.py ACTIVE_STATES).
- A connection keeps the forwarding method it was created with (the kernel binds
  cp->packet_xmit at creation); only those whose method sees replies have a reply (OUT)
  tuple, (proto, RIP, RPORT, reply_addr, reply_port), chosen by the method (lb/pyengine/xmit.py).
- `now_ms` never decreases between calls (it is CLOCK_MONOTONIC).
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol

from lb.engine import FwdState
from lb.model import DestSpec, ServiceSpec

if TYPE_CHECKING:
    from lb.pyengine.proxyproto import ProxyState
    from lb.pyengine.synproxy import SynproxyState
    from lb.pyengine.xmit import XmitMethod

# (proto, client addr (4 bytes), client port, virtual addr (4 bytes), virtual port)
ConnKey = tuple[int, bytes, int, bytes, int]
# (proto, virtual addr (4 bytes), virtual port, dest addr (4 bytes), dest port)
DestKey = tuple[int, bytes, int, bytes, int]
# (proto, client network (4 bytes, address & netmask), virtual addr (4 bytes), virtual port)
TemplateKey = tuple[int, bytes, bytes, int]

DIR_IN = 0  # client -> VIP
DIR_OUT = 1  # real server -> director: the reply tuple


@dataclass(slots=True)
class Counters:
    """IPVS per-service / per-destination stats."""

    conns: int = 0
    inpkts: int = 0
    inbytes: int = 0
    outpkts: int = 0
    outbytes: int = 0

    def zero(self) -> None:
        self.conns = self.inpkts = self.inbytes = self.outpkts = self.outbytes = 0


class DestOwner(Protocol):
    """What a destination sees of the service it is (or was last) in."""

    spec: ServiceSpec
    stats: Counters


@dataclass(slots=True, eq=False)
class Destination:
    """A real server inside a service (or in the trash after deletion while still referenced).

    Identity matters: entries point at this object, and re-adding a deleted
    destination to its service revives the same object (IPVS `ip_vs_trash_get_dest`).
    """

    key: DestKey
    spec: DestSpec
    owner: DestOwner  # the Service this destination belongs (or last belonged) to
    available: bool = True  # False once deleted (in the trash)
    overloaded: bool = False
    # Counts as the kernel keeps them since Debian's 6.1.187 (totalconns): every connection (not
    # template) in `total`, the active ones also in `active`; `inactive` is derived.
    active: int = 0
    total: int = 0
    persist: int = 0  # persistence templates naming this destination
    l_threshold_val: int = 0  # the lower threshold in force: l_threshold, or u - u/4
    sched_refs: int = 0  # references its service's scheduler holds (lblc/lblcr cache entries; C: refcnt)
    stats: Counters = field(default_factory=Counters)
    syn_retrans: int = 0  # client SYNs repeating an entry's first SYN while it waits in SYN_RECV
    handshakes: int = 0  # entries that went SYN_RECV -> ESTABLISHED
    fwd: FwdState | None = None  # valid forwarding state (ifindex != 0), or None
    l2hdr: bytes = b""  # next-hop MAC + director MAC + 0x0800, while `fwd` is valid
    fwd_saddr: bytes = b"\0\0\0\0"  # tunnel: outer source (network order)
    # The kernel's last_weight: the weight of the last add, or of the last edit to a non-zero weight
    # (__ip_vs_update_dest); mh sizes a destination's share of its table by it.
    last_weight: int = -1

    def __post_init__(self) -> None:
        if self.last_weight < 0:
            self.last_weight = self.spec.weight

    @classmethod
    def new(cls, key: DestKey, spec: DestSpec, owner: DestOwner) -> Destination:
        """A new destination (ip_vs_new_dest): zeroed, then the add's parameters applied
        (__ip_vs_update_dest), thresholds included."""
        dest = cls(key, replace(spec, u_threshold=0, l_threshold=0), owner)
        dest.update_spec(spec, adding=True)
        return dest

    @property
    def addr(self) -> bytes:
        return self.key[3]

    @property
    def port(self) -> int:
        return self.key[4]

    @property
    def weight(self) -> int:
        return self.spec.weight

    def eligible(self) -> bool:
        """May a scheduler pick it? (weight > 0 and not OVERLOADED)"""
        return self.spec.weight > 0 and not self.overloaded

    @property
    def inactive(self) -> int:
        """InActConn as ipvsadm shows it (ip_vs_dest_inactconns): max(total - active, 0)."""
        return max(self.total - self.active, 0)

    @property
    def conn_overhead(self) -> int:
        """ip_vs_dest_conn_overhead() of Debian's 6.1.192: (active << 8) + total, i.e. 257 per
        active and 1 per inactive connection, wrapped to the kernel's `int` (lc, wlc, lblc,
        lblcr and twos weigh destinations with it)."""
        return s32((self.active << 8) + self.total)

    @property
    def referenced(self) -> bool:
        """Does any entry (connection or template) or scheduler state still point here? (An
        unreferenced deleted destination is gone: C frees it.)"""
        return self.total + self.persist + self.sched_refs > 0

    def bind(self, entry: Connection) -> None:
        """An entry starts pointing here (ip_vs_bind_dest). A template counts in `persist` only; a
        connection in `total` (and `active` unless inactive, which a new one always is), and when
        that makes total equal the upper threshold OVERLOAD is re-evaluated (mode +1)."""
        if entry.is_template:
            self.persist += 1
            return
        if not entry.inactive:
            self.active += 1
        self.total += 1
        if self.total == self.spec.u_threshold:
            self._update_overload(1)

    def unbind(self, entry: Connection) -> None:
        """An entry pointing here is released (ip_vs_unbind_dest): uncount it; when the total was
        the lower threshold value, OVERLOAD is re-evaluated (mode -1)."""
        if entry.is_template:
            self.persist -= 1
            return
        if not entry.inactive:
            self.active -= 1
        total_before = self.total
        self.total -= 1
        if total_before == self.l_threshold_val:
            self._update_overload(-1)

    def update_spec(self, spec: DestSpec, adding: bool = False) -> None:
        """Apply add/edit parameters (__ip_vs_update_dest): only a change of either threshold sets
        the lower value in force and re-evaluates OVERLOAD (mode 0); a weight edit leaves it.
        last_weight follows every add and every edit to a non-zero weight (mh reads it)."""
        if adding or spec.weight != 0:
            self.last_weight = spec.weight
        if (spec.u_threshold, spec.l_threshold) != (self.spec.u_threshold, self.spec.l_threshold):
            upper = spec.u_threshold
            self.l_threshold_val = spec.l_threshold or upper - (upper >> 2)
            self.spec = spec
            self._update_overload(0)
        self.spec = spec

    def _update_overload(self, mode: int) -> None:
        """__ip_vs_dest_update_overload: with an upper threshold u and the lower value l, set the
        flag when total reaches u (mode 0, -1) or l (mode +1); between l and u keep it (mode 0,
        -1); below l clear it. No upper threshold: clear it."""
        upper = self.spec.u_threshold
        if upper:
            lower = self.l_threshold_val
            if self.total >= (lower if mode > 0 else upper):
                self.overloaded = True
                return
            if self.total >= (upper if mode < 0 else lower):
                return
        self.overloaded = False


def s32(value: int) -> int:
    """Wrap to a C `int`, as the kernel's arithmetic on ints does (-fno-strict-overflow)."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value


_serials = itertools.count(1)


@dataclass(slots=True, eq=False)
class Connection:
    """A connection entry, or (is_template) a persistence template."""

    proto: int
    caddr: bytes  # templates: the client network
    cport: int  # templates: 0
    vaddr: bytes
    vport: int
    dest: Destination
    xmit: XmitMethod  # forwarding method at creation (templates: their destination's; never used)
    state: int  # lb.engine.ConnState value; NONE for templates
    expires_at_ms: int
    inactive: bool = True
    noout: bool = False  # NOOUTPUT: the director sees only the client's side (no reply tuple)
    syn_seq: int = 0  # sequence number of the TCP packet that created the entry
    reply_addr: bytes = b"\0\0\0\0"  # the reply tuple's director side, chosen by the method (FULLNAT: LIP)
    reply_port: int = 0  # (FULLNAT: lport)
    xmit_priv: Any = None  # the method's reference (FULLNAT: its LocalAddress), released with the entry
    rport_client: bool = False  # the real server's port is the client's (vport): C's LB_CF_RPORT_CLIENT
    toa_done: bool = False
    is_template: bool = False
    tmpl_timeout_ms: int = 0  # a template's own timeout
    tmpl_dead: bool = False  # a template whose destination left: never matches again
    assured: bool = False  # a template one of whose connections was established (TCP) or answered (UDP)
    controller: Connection | None = None  # a connection's persistence template
    n_control: int = 0  # a template's live controlled connections
    sp: SynproxyState | None = None  # SYN-proxied connection: sequence translation state
    px: ProxyState | None = None  # PROXY protocol: the header's state (its sequence translation)
    released: bool = False
    serial: int = field(default_factory=lambda: next(_serials))
    timer_seq: int = 0  # which heap item is current

    @property
    def rport(self) -> int:
        """The real server's port of this connection (what NAT writes in, the reply tuple's server side)."""
        return self.vport if self.rport_client else self.dest.port

    @property
    def in_key(self) -> ConnKey:
        return (self.proto, self.caddr, self.cport, self.vaddr, self.vport)

    @property
    def out_key(self) -> ConnKey | None:
        """The reply tuple, when the connection's method sees replies (never for templates)."""
        if self.is_template or not self.xmit.sees_replies:
            return None
        return (self.proto, self.dest.addr, self.rport, self.reply_addr, self.reply_port)

    @property
    def template_key(self) -> TemplateKey:
        return (self.proto, self.caddr, self.vaddr, self.vport)


# Early drop (C: lb_conn_droppable, LB_DROPPABLE_STATES): TCP connections, neither templates nor
# SYN-proxied, in a half-open state or a finished one. Values of lb.engine.ConnState.
DROPPABLE_STATES = frozenset((0, 2, 3, 10, 5, 6))  # NONE, SYN_SENT, SYN_RECV, SYNACK, TIME_WAIT, CLOSE


def droppable(conn: Connection) -> bool:
    """May early drop release this entry to make room for a new one?"""
    return (conn.proto == 6 and not conn.is_template and conn.sp is None and not conn.released
            and conn.state in DROPPABLE_STATES)


def rport_is_client(dest: Destination) -> bool:
    """C's lb_dest_rport_is_client: does a new connection to `dest` reach the real server on the
    client's port? As the kernel's cp->dport: the destination's port, or the client's when it has
    none (ip_vs_schedule); every connection of a persistent port-zero or fwmark service takes the
    client's (ip_vs_sched_persist)."""
    spec = dest.owner.spec
    return not dest.port or (not spec.key.port and spec.persistent is not None)


class ConnectionTable:
    """Entries by tuple (IN tuples of connections, reply tuples of those that have one, matching templates),
    and an expiry heap so exact expiry costs O(log n) per timer restart."""

    def __init__(self, max_entries: int) -> None:
        if max_entries < 1:
            raise ValueError(f"connection table size must be >= 1, got {max_entries}")
        self.max_entries = max_entries
        self._in: dict[ConnKey, Connection] = {}
        self._out: dict[ConnKey, Connection] = {}
        self._templates: dict[TemplateKey, Connection] = {}
        self._all: dict[int, Connection] = {}  # by serial, in creation order
        self._heap: list[tuple[int, bool, int, Connection]] = []
        self._push_seq = itertools.count(1)
        self.early_drops = 0  # entries released to make room (C: lb_conn_stats.early_drops)

    def __len__(self) -> int:
        return len(self._all)

    def __iter__(self) -> Iterator[Connection]:
        return iter(list(self._all.values()))

    @property
    def full(self) -> bool:
        return len(self._all) >= self.max_entries

    # ---- lookups -------------------------------------------------------------------

    def lookup(self, key: ConnKey) -> tuple[Connection, int] | None:
        """The connection whose IN tuple or reply (OUT) tuple is `key`, with the direction matched."""
        conn = self._in.get(key)
        if conn is not None:
            return conn, DIR_IN
        conn = self._out.get(key)
        if conn is not None:
            return conn, DIR_OUT
        return None

    def template(self, key: TemplateKey) -> Connection | None:
        return self._templates.get(key)

    def early_drop_victim(self) -> Connection | None:
        """The droppable entry that expires first, the one created first at equal times (the C core
        keeps these in their own expiry heap; the specification scans)."""
        candidates = [c for c in self._all.values() if droppable(c)]
        return min(candidates, key=lambda c: (c.expires_at_ms, c.serial)) if candidates else None

    def droppable_count(self) -> int:
        return sum(1 for c in self._all.values() if droppable(c))

    # ---- changes -------------------------------------------------------------------

    def insert(self, conn: Connection) -> None:
        if conn.is_template:
            self._templates[conn.template_key] = conn
        else:
            self._in[conn.in_key] = conn
            out_key = conn.out_key
            if out_key is not None:
                self._out[out_key] = conn
        self._all[conn.serial] = conn
        self._arm(conn)

    def set_expiry(self, conn: Connection, expires_at_ms: int) -> None:
        conn.expires_at_ms = expires_at_ms
        self._arm(conn)

    def unmatch_template(self, template: Connection) -> None:
        """An invalidated template stops matching (it stays in the table while it controls connections)."""
        if self._templates.get(template.template_key) is template:
            del self._templates[template.template_key]

    def remove(self, conn: Connection) -> None:
        """Take the entry out of every index (the caller releases its references)."""
        if conn.is_template:
            self.unmatch_template(conn)
        else:
            if self._in.get(conn.in_key) is conn:
                del self._in[conn.in_key]
            out_key = conn.out_key
            if out_key is not None and self._out.get(out_key) is conn:
                del self._out[out_key]
        del self._all[conn.serial]
        conn.released = True
        conn.timer_seq = 0

    def pop_due(self, now_ms: int) -> Connection | None:
        """Remove from the heap and return the entry that died first, if one is dead at now_ms
        (connections before templates at equal times). It stays indexed: the caller releases
        it or re-arms it."""
        heap = self._heap
        while heap:
            expires, _is_tmpl, seq, conn = heap[0]
            if conn.timer_seq != seq:
                heapq.heappop(heap)  # superseded by a later timer restart, or released
                continue
            if expires > now_ms:
                return None
            heapq.heappop(heap)
            conn.timer_seq = 0
            return conn
        return None

    def _arm(self, conn: Connection) -> None:
        seq = next(self._push_seq)
        conn.timer_seq = seq
        heapq.heappush(self._heap, (conn.expires_at_ms, conn.is_template, seq, conn))
        if len(self._heap) > 4 * len(self._all) + 1024:
            self._heap = [(c.expires_at_ms, c.is_template, c.timer_seq, c) for c in self._all.values()
                          if c.timer_seq]
            heapq.heapify(self._heap)
