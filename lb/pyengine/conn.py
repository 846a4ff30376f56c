"""Destinations, FULLNAT local addresses, connection entries (and persistence templates), the table.

Invariants (docs/fastpath.md):
- An entry is live while now_ms < expires_at_ms. At its expiry time it is dead: it
  never matches and is released (unbound from its destination, its template and
  its local address) before anything else happens at that time, exactly as a
  kernel timer would fire. The engine pops every due entry, in expiry-time order
  (connections before templates at equal times), at the start of each call, so
  destination counts and the table size always describe live entries only.
- Every live connection is counted in exactly one of its destination's `active`
  (state ESTABLISHED) or `inactive` counts; every template in `persist`.
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
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from lb.engine import FwdState
from lb.model import DestSpec, ServiceSpec

if TYPE_CHECKING:
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
    active: int = 0
    inactive: int = 0
    persist: int = 0  # persistence templates naming this destination
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
    def total_conns(self) -> int:
        """What the thresholds compare with: active + inactive (templates excluded, as the kernel)."""
        return self.active + self.inactive

    @property
    def referenced(self) -> bool:
        """Does any entry (connection or template) still point here?"""
        return self.active + self.inactive + self.persist > 0

    def bind(self, entry: Connection) -> None:
        """An entry starts pointing here (ip_vs_bind_dest): count it (a template in `persist`, never as a
        connection); then OVERLOAD is set when the connections reach the upper threshold (for a
        template too, as the kernel: a threshold lowered since the last bind takes effect)."""
        if entry.is_template:
            self.persist += 1
        elif entry.inactive:
            self.inactive += 1
        else:
            self.active += 1
        upper = self.spec.u_threshold
        if upper and self.total_conns >= upper:
            self.overloaded = True

    def unbind(self, entry: Connection) -> None:
        """An entry pointing here is released (ip_vs_unbind_dest): uncount it, maybe clear OVERLOAD."""
        if entry.is_template:
            self.persist -= 1
        elif entry.inactive:
            self.inactive -= 1
        else:
            self.active -= 1
        upper, lower = self.spec.u_threshold, self.spec.l_threshold
        total = self.total_conns
        if lower:
            if total < lower:
                self.overloaded = False
        elif upper:
            if total * 4 < upper * 3:
                self.overloaded = False
        else:
            self.overloaded = False

    def update_spec(self, spec: DestSpec, adding: bool = False) -> None:
        """Apply add/edit parameters (__ip_vs_update_dest): OVERLOAD clears when the upper
        threshold is removed or raised; lowering it takes effect at the next bind. last_weight
        follows every add and every edit to a non-zero weight."""
        if spec.u_threshold == 0 or spec.u_threshold > self.spec.u_threshold:
            self.overloaded = False
        if adding or spec.weight != 0:
            self.last_weight = spec.weight
        self.spec = spec


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
    toa_done: bool = False
    is_template: bool = False
    tmpl_timeout_ms: int = 0  # a template's own timeout
    tmpl_dead: bool = False  # a template whose destination left: never matches again
    assured: bool = False  # a template one of whose connections was established (TCP) or answered (UDP)
    controller: Connection | None = None  # a connection's persistence template
    n_control: int = 0  # a template's live controlled connections
    sp: SynproxyState | None = None  # SYN-proxied connection: sequence translation state
    released: bool = False
    serial: int = field(default_factory=lambda: next(_serials))
    timer_seq: int = 0  # which heap item is current

    @property
    def in_key(self) -> ConnKey:
        return (self.proto, self.caddr, self.cport, self.vaddr, self.vport)

    @property
    def out_key(self) -> ConnKey | None:
        """The reply tuple, when the connection's method sees replies (never for templates)."""
        if self.is_template or not self.xmit.sees_replies:
            return None
        return (self.proto, self.dest.addr, self.dest.port, self.reply_addr, self.reply_port)

    @property
    def template_key(self) -> TemplateKey:
        return (self.proto, self.caddr, self.vaddr, self.vport)


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
