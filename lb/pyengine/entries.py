"""The life of connection entries and templates (native/src/conn.c's lifecycle, the state
accounting of native/src/proto_tcp.c, the stats of ip_vs_in_stats/ip_vs_out_stats).

One job: an entry's state moves, timer restarts, per-destination counting, templates made and
invalidated, early drop, release and expiry; lb/pyengine/conn.py holds the table itself.
"""

from __future__ import annotations

from lb.engine import ConnState
from lb.pyengine.conn import DIR_OUT, Connection, Destination, TemplateKey
from lb.pyengine.parse import IPPROTO_TCP
from lb.pyengine.proto_tcp import ACTIVE_STATES, INPUT_ONLY_TABLE, INPUT_TABLE, OUTPUT_TABLE, tcp_event
from lb.pyengine.state import ESTABLISHED, NONE, UDP, EngineState
from lb.pyengine.xmit import XmitMethod, find_method


def method_of(dest: Destination) -> XmitMethod:
    """The method a destination's connections are bound to (its forwarding method was checked when set)."""
    method = find_method(dest.spec.fwd)
    assert method is not None, dest.spec.fwd
    return method


def assure_template(conn: Connection) -> None:
    """ip_vs_control_assure_ct: the connection's persistence template, if any, becomes ASSURED."""
    if conn.controller is not None:
        conn.controller.assured = True


class EntryOps(EngineState):
    """PyEngine's entry lifecycle (see the module docstring)."""

    @staticmethod
    def _set_state(conn: Connection, new_state: int) -> None:
        """Move to a state with IPVS's active/inactive accounting (set_tcp_state): active in
        ACTIVE_STATES; reaching ESTABLISHED assures the connection's persistence template."""
        if new_state != conn.state:
            dest = conn.dest
            active = new_state in ACTIVE_STATES
            if not conn.inactive and not active:
                dest.active -= 1  # `total` counts it either way
                conn.inactive = True
            elif conn.inactive and active:
                dest.active += 1
                conn.inactive = False
            if new_state == ESTABLISHED:
                assure_template(conn)
        conn.state = new_state

    def _tcp_transition(self, conn: Connection, direction: int, flags: int) -> None:
        if direction == DIR_OUT:
            table = OUTPUT_TABLE
            conn.noout = False
        else:
            table = INPUT_ONLY_TABLE if conn.noout else INPUT_TABLE
        event = tcp_event(flags)
        # No RST/SYN/FIN/ACK: CLOSE (the kernel's set_tcp_state starts from CLOSE).
        new_state = int(ConnState.CLOSE) if event < 0 else int(table[event][conn.state])
        self._set_state(conn, new_state)

    def _refresh(self, conn: Connection, now_ms: int) -> None:
        """Restart the entry's timer: now + the timeout of its current state."""
        timeout = self._timeouts_ms[UDP if conn.proto != IPPROTO_TCP else conn.state]
        self._conns.set_expiry(conn, now_ms + timeout)

    @staticmethod
    def _count_in(dest: Destination, total_length: int) -> None:
        """ip_vs_in_stats: the destination's and its service's in-stats, while it is AVAILABLE."""
        if not dest.available:
            return
        for stats in (dest.stats, dest.owner.stats):
            stats.inpkts += 1
            stats.inbytes += total_length

    @staticmethod
    def _count_out(dest: Destination, total_length: int) -> None:
        """ip_vs_out_stats: the same for packets from the real server."""
        if not dest.available:
            return
        for stats in (dest.stats, dest.owner.stats):
            stats.outpkts += 1
            stats.outbytes += total_length

    def _new_template(self, key: TemplateKey, dest: Destination, timeout_ms: int, now_ms: int) -> Connection:
        proto, network, vaddr, vport = key
        template = Connection(proto, network, 0, vaddr, vport, dest, method_of(dest), NONE, now_ms + timeout_ms,
                              is_template=True, tmpl_timeout_ms=timeout_ms)
        self._conns.insert(template)
        dest.bind(template)
        return template

    def _invalidate_template(self, template: Connection) -> None:
        """Its destination left: it stops matching, and goes now unless it still controls connections."""
        template.tmpl_dead = True
        self._conns.unmatch_template(template)
        if template.n_control == 0:
            self._release_now(template)

    def _early_drop(self) -> bool:
        """The table is full and a packet needs an entry: release the droppable entry that expires
        first, the older at equal times (docs/fastpath.md "When the table is full"). False: none."""
        victim = self._conns.early_drop_victim()
        if victim is None:
            return False
        self._release_now(victim)
        self._conns.early_drops += 1
        return True

    def _release_now(self, entry: Connection) -> None:
        self._conns.remove(entry)
        self._release(entry)

    def _release(self, entry: Connection) -> None:
        """The entry left the table: unbind it from its destination, template and local address."""
        if not entry.is_template:
            if entry.controller is not None:
                entry.controller.n_control -= 1
            entry.xmit.release(entry.xmit_priv)
        entry.sp = None
        dest = entry.dest
        dest.unbind(entry)
        if not dest.available and not dest.referenced:
            self._trash.pop(dest.key, None)

    def _expire(self, now_ms: int) -> int:
        released = 0
        table = self._conns
        while (entry := table.pop_due(now_ms)) is not None:
            if entry.is_template and entry.n_control:
                # "do not expire a template with controlled connections": another period from its expiry
                table.set_expiry(entry, entry.expires_at_ms + entry.tmpl_timeout_ms)
                continue
            table.remove(entry)
            self._release(entry)
            released += 1
        return released
