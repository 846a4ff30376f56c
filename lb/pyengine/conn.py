"""Destinations, connection entries (and persistence templates) and the connection table.

Invariants (docs/fastpath.md):
- An entry is live while now_ms < expires_at_ms. At its expiry time it is dead: it
  never matches and is released (unbound from its destination) before anything
  else happens at that time, exactly as a kernel timer would fire. The engine
  pops every due entry, in expiry-time order, at the start of each call, so
  destination counts and the table size always describe live entries only.
- Every live connection is counted in exactly one of its destination's `active`
  (state ESTABLISHED) or `inactive` counts; every template in `persist`.
- `now_ms` never decreases between calls (it is CLOCK_MONOTONIC). Entries that
  share a timeout value sit in one FIFO in refresh order, which is then also
  expiry order.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Hashable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from lb.engine import FwdState
from lb.model import DestSpec

if TYPE_CHECKING:
    from lb.engine import Action

# (proto, client addr (4 bytes), client port, virtual addr (4 bytes), virtual port)
ConnKey = tuple[int, bytes, int, bytes, int]
# (proto, virtual addr (4 bytes), virtual port, dest addr (4 bytes), dest port)
DestKey = tuple[int, bytes, int, bytes, int]
# (proto, client network (4 bytes, address & netmask), virtual addr (4 bytes), virtual port)
TemplateKey = tuple[int, bytes, bytes, int]


@dataclass(slots=True)
class Counters:
    """IPVS per-service / per-destination stats (DR sees no output packets)."""

    conns: int = 0
    inpkts: int = 0
    inbytes: int = 0
    outpkts: int = 0
    outbytes: int = 0

    def zero(self) -> None:
        self.conns = self.inpkts = self.inbytes = self.outpkts = self.outbytes = 0


@dataclass(slots=True, eq=False)
class Destination:
    """A real server inside a service (or in the trash after deletion while still referenced).

    Identity matters: entries point at this object, and re-adding a deleted
    destination to its service revives the same object (IPVS `ip_vs_trash_get_dest`).
    """

    key: DestKey
    spec: DestSpec
    owner: object  # the Service whose stats this destination's packets add to
    available: bool = True  # False once deleted (in the trash)
    overloaded: bool = False
    active: int = 0
    inactive: int = 0
    persist: int = 0  # persistence templates naming this destination
    stats: Counters = field(default_factory=Counters)
    syn_retrans: int = 0  # client SYNs repeating an entry's first SYN while it waits in SYN_RECV
    handshakes: int = 0  # entries that went SYN_RECV -> ESTABLISHED
    fwd: FwdState | None = None
    xmit_action: Action | None = None  # cached XMIT_L2 action while `fwd` is valid

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
        """An entry starts pointing here (ip_vs_bind_dest): count it, maybe set OVERLOAD."""
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

    def update_spec(self, spec: DestSpec) -> None:
        """Apply add/edit parameters (__ip_vs_update_dest): OVERLOAD clears when the upper
        threshold is removed or raised; lowering it takes effect at the next bind."""
        if spec.u_threshold == 0 or spec.u_threshold > self.spec.u_threshold:
            self.overloaded = False
        self.spec = spec


@dataclass(slots=True, eq=False)
class Connection:
    """A connection entry, or (is_template) a persistence template."""

    key: Hashable  # ConnKey for connections; a unique ("template", serial) for templates
    dest: Destination
    state: int  # lb.engine.ConnState value; NONE for templates
    inactive: bool
    timeout_ms: int
    expires_at_ms: int
    syn_seq: int = 0  # sequence number of the TCP packet that created the entry
    is_template: bool = False
    template_key: TemplateKey | None = None  # what a template matches (None once invalidated)
    client_network: bytes | None = None  # a template's client address & netmask
    controller: Connection | None = None  # a connection's persistence template
    n_control: int = 0  # a template's live controlled connections


class ConnectionTable:
    """Entries by key, plus one FIFO per timeout value so expiry costs O(expired)."""

    def __init__(self, max_entries: int) -> None:
        if max_entries < 1:
            raise ValueError(f"connection table size must be >= 1, got {max_entries}")
        self.max_entries = max_entries
        self._entries: dict[Hashable, Connection] = {}
        self._queues: dict[int, OrderedDict[Hashable, Connection]] = {}
        self._serials = itertools.count(1)

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def full(self) -> bool:
        return len(self._entries) >= self.max_entries

    def template_key(self) -> tuple[str, int]:
        """A fresh table key for a template (never equal to a connection's 5-tuple)."""
        return ("template", next(self._serials))

    def get(self, key: Hashable) -> Connection | None:
        """The entry for `key`; only live entries exist once due entries were popped for the current time."""
        return self._entries.get(key)

    def insert(self, conn: Connection) -> None:
        if conn.key in self._entries:
            raise KeyError(f"entry {conn.key} already in the table")
        self._entries[conn.key] = conn
        self._queue(conn.timeout_ms)[conn.key] = conn

    def set_timer(self, conn: Connection, timeout_ms: int, now_ms: int) -> None:
        """Restart the entry's timer: it dies at now_ms + timeout_ms."""
        if timeout_ms != conn.timeout_ms:
            del self._queues[conn.timeout_ms][conn.key]
            conn.timeout_ms = timeout_ms
            self._queue(timeout_ms)[conn.key] = conn
        else:
            self._queues[timeout_ms].move_to_end(conn.key)
        conn.expires_at_ms = now_ms + timeout_ms

    def remove(self, conn: Connection) -> None:
        del self._entries[conn.key]
        del self._queues[conn.timeout_ms][conn.key]

    def pop_due(self, now_ms: int) -> Connection | None:
        """Remove and return the entry that died first, if one is dead at now_ms.

        Ties go to connections before templates, so a template whose connections
        die at the same time as it does no longer controls anything.
        """
        best: Connection | None = None
        best_queue: OrderedDict[Hashable, Connection] | None = None
        for queue in self._queues.values():
            if not queue:
                continue
            conn = next(iter(queue.values()))
            if conn.expires_at_ms > now_ms:
                continue
            if best is None or (conn.expires_at_ms, conn.is_template) < (best.expires_at_ms, best.is_template):
                best, best_queue = conn, queue
        if best is None or best_queue is None:
            return None
        best_queue.popitem(last=False)
        del self._entries[best.key]
        return best

    def clear(self) -> list[Connection]:
        removed = list(self._entries.values())
        self._entries.clear()
        self._queues.clear()
        return removed

    def __iter__(self) -> Iterator[Connection]:
        return iter(self._entries.values())

    def _queue(self, timeout_ms: int) -> OrderedDict[Hashable, Connection]:
        queue = self._queues.get(timeout_ms)
        if queue is None:
            queue = self._queues[timeout_ms] = OrderedDict()
        return queue

