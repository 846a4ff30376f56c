"""Scheduling a new connection (native/src/core.c: schedule_persist, schedule_dest,
lb_schedule_conn, ops_datagram; lb_sched_probe).

One job: for a packet that opens a connection, persistence first (the template of the client's
network), else the service's scheduler; then the destination's method binds the new entry.
"""

from __future__ import annotations

from lb.engine import Action, EngineError, Reason, Verdict
from lb.model import ServiceKey
from lb.pyengine.conn import Connection, ConnectionTable, Destination, TemplateKey, rport_is_client
from lb.pyengine.entries import method_of
from lb.pyengine.frag import fit_path_mtu
from lb.pyengine.icmp import port_unreachable
from lb.pyengine.parse import IPPROTO_ICMP, IPPROTO_TCP, ParsedPacket, parse_packet
from lb.pyengine.state import NONE, TABLE_FULL, UDP
from lb.pyengine.svc import Service, ServiceTable


class BindContextImpl:
    """What a method's conn_bind may ask the engine (xmit.BindContext)."""

    def __init__(self, conns: ConnectionTable, lport_min: int, lport_max: int) -> None:
        self._conns = conns
        self.lport_min, self.lport_max = lport_min, lport_max

    def reply_in_use(self, proto: int, dest: Destination, rport: int, reply_addr: bytes, reply_port: int) -> bool:
        return self._conns.lookup((proto, dest.addr, rport, reply_addr, reply_port)) is not None


class Scheduling(ServiceTable):
    """PyEngine's scheduling of new connections (see the module docstring)."""

    def _schedule_dest(self, service: Service, packet: bytes, parsed: ParsedPacket,
                       now_ms: int) -> tuple[Destination, Connection | None] | Action:
        """The destination for a new connection of `parsed` and its persistence template (ip_vs_schedule:
        persistence, else the scheduler), or the action that ends the packet here."""
        template: Connection | None = None
        service.sched_now_ms = now_ms  # the schedulers' clock
        if service.spec.persistent is None:
            # ip_vs_schedule: a non-persistent port-zero service schedules nothing (unreachable)
            dest = (service.scheduler.schedule(service, parsed)
                    if parsed.dport == service.spec.key.port or service.spec.key.fwmark else None)
        else:
            # The template's virtual port is the service's: 0 for a port-zero service, whose template
            # covers every port of the VIP (ip_vs_sched_persist: <protocol, caddr, 0, vaddr, 0>).
            # A fwmark service's template is <IPPROTO_IP, caddr, 0, fwmark, 0>: every protocol,
            # address and port the mark gathers.
            fwm = service.spec.key.fwmark
            tkey: TemplateKey = (0 if fwm else parsed.proto, service.client_network(parsed.saddr),
                                 fwm.to_bytes(4, "big") if fwm else parsed.daddr, service.spec.key.port)
            template = self._conns.template(tkey)
            if template is not None and not template.dest.available:
                self._invalidate_template(template)  # its destination left: schedule afresh
                template = None
            if template is None:
                dest = service.scheduler.schedule(service, parsed)
                if dest is not None:
                    if self._conns.full and not self._early_drop():
                        return TABLE_FULL
                    template = self._new_template(tkey, dest, service.spec.persistent * 1000, now_ms)
            else:
                dest = template.dest
            if template is not None:
                self._conns.set_expiry(template, now_ms + template.tmpl_timeout_ms)
        if dest is None:
            return Action(Verdict.ANSWER, Reason.NO_DEST,
                          out=port_unreachable(packet, parsed.ip_header_len, parsed.total_length))
        return dest, template

    def _schedule_conn(self, service: Service, packet: bytes, parsed: ParsedPacket,
                       now_ms: int) -> Connection | Action:
        """Bind a new connection for `parsed` (scheduling, persistence, what the destination's method
        needs), or the action that ends the packet here."""
        scheduled = self._schedule_dest(service, packet, parsed, now_ms)
        if isinstance(scheduled, Action):
            return scheduled
        dest, template = scheduled
        method = method_of(dest)
        bound = method.conn_bind(self._bind_ctx, service, dest, parsed)
        if isinstance(bound, Action):
            return bound
        if self._conns.full and not self._early_drop():
            method.release(bound.priv)
            return TABLE_FULL
        state = NONE if parsed.proto == IPPROTO_TCP else UDP
        conn = Connection(parsed.proto, parsed.saddr, parsed.sport, parsed.daddr, parsed.dport, dest, method, state,
                          now_ms + self._timeouts_ms[state], noout=not method.sees_replies, syn_seq=parsed.tcp_seq,
                          reply_addr=bound.reply_addr, reply_port=bound.reply_port, xmit_priv=bound.priv,
                          rport_client=rport_is_client(dest))
        self._conns.insert(conn)
        dest.bind(conn)
        if template is not None:
            conn.controller = template
            template.n_control += 1
        dest.stats.conns += 1
        service.stats.conns += 1
        return conn

    def _ops_datagram(self, service: Service, packet: bytes, parsed: ParsedPacket, now_ms: int) -> Action:
        """One-packet scheduling (-o on a UDP service; core.c's ops_datagram): the datagram is scheduled
        afresh, and its connection exists only while it is sent, as the kernel's IP_VS_CONN_F_ONE_PACKET
        entries (never hashed, expired at once by ip_vs_conn_put): counted (conns, inpkts, inbytes; the
        InActConn and OVERLOAD on the way), refreshing a persistence template, leaving no entry."""
        scheduled = self._schedule_dest(service, packet, parsed, now_ms)
        if isinstance(scheduled, Action):
            return scheduled
        dest, _ = scheduled
        method = method_of(dest)
        conn = Connection(parsed.proto, parsed.saddr, parsed.sport, parsed.daddr, parsed.dport, dest, method, UDP,
                          now_ms, noout=True, rport_client=rport_is_client(dest))
        dest.bind(conn)
        dest.stats.conns += 1
        service.stats.conns += 1
        self._count_in(dest, parsed.total_length)
        action = fit_path_mtu(method.xmit_in(conn, packet, parsed), dest, packet, parsed)
        dest.unbind(conn)
        return action

    def sched_probe(self, key: ServiceKey, packet: bytes, now_ms: int) -> tuple[str, int] | None:
        """Tests and diagnostics (C: lb_sched_probe): the real server (address, port) the service's scheduler
        picks for a new connection of `packet` at now_ms, None when none is available, without persistence
        and without creating a connection. The packet's addresses need not be the service's (a fwmark
        service's lookup, issue 14, gives one service many destination addresses: lblc/lblcr's keys); the
        scheduler's state moves as for a real packet; entries due by now_ms expire first."""
        with self._lock:
            parsed = parse_packet(packet)
            if not isinstance(parsed, ParsedPacket) or parsed.proto == IPPROTO_ICMP or parsed.proto != key.proto:
                raise EngineError("EINVAL", f"sched_probe: not a complete IPv4 packet of protocol {key.proto}")
            service = self._service(key)
            self._expire(now_ms)
            service.sched_now_ms = now_ms
            dest = service.scheduler.schedule(service, parsed)
            return None if dest is None else (dest.spec.addr, dest.spec.port)
