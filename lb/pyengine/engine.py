"""PyEngine: the pure-Python executable specification of docs/fastpath.md.

The C core (lb.fastpath.CEngine) must agree with it packet for packet. Time is
only ever the caller's `now_ms`; the engine never reads a clock.

Scope: direct routing (`route`): the TCP/UDP packet path, persistence templates,
ICMP errors about DR connections, the stalled-handshake counters, rr and wlc,
per-instance timeouts. Destinations with the `tunnel`, `masq` or `fullnat`
methods and SYN-proxy services are refused with EOPNOTSUPP; FULLNAT local
addresses are only recorded and listed.

Choices where docs/fastpath.md is silent (kernel IPVS behaviour unless noted):
- Expiry is exact: an entry dies at expires_at_ms (now_ms >= expires_at_ms) and is
  released before the packet at that time is looked at, as a kernel timer would
  have fired; dead entries never count against the table size or in a
  scheduler's active/inactive numbers. Due entries are released in expiry-time
  order (connections before templates on ties); a template that still controls
  connections at its expiry time is re-armed at that time + its timeout.
- Deleted destinations still referenced by entries go to a trash keyed by
  (proto, vaddr, vport, daddr, dport); adding that destination to a service with
  that key again revives the same object (connection counts and forwarding state
  kept), inserted at the list head. Its stats are kept when it returns to the same
  service object and zeroed when that service was deleted and re-created meanwhile
  (__ip_vs_update_dest). A deleted destination without entries is gone.
- Add/edit of a destination clears OVERLOAD when the new upper threshold is 0 or
  higher than the old one (__ip_vs_update_dest); a lowered threshold applies at
  the next bind. Binding a template checks the upper threshold against
  active + inactive (which a template does not change), as ip_vs_bind_dest.
- An ICMP error about a DR connection counts in the destination's and service's
  in-stats (ip_vs_in_icmp calls ip_vs_in_stats), also when it is then dropped
  for lack of forwarding state.
- zero() zeroes the stats of services and their listed destinations, not of
  trashed ones (ip_vs_zero_service), nor the stalled-handshake counters, nor the
  per-reason packet counters.
- Errors: the service is looked up first (ESRCH before parameter errors, as
  ip_vs_genl_set_cmd); l_threshold > u_threshold is EINVAL (the kernel's ERANGE).
"""

from __future__ import annotations

import socket
import threading
from typing import TYPE_CHECKING

from lb.engine import Action, ConnState, EngineError, FwdState, Reason, Verdict
from lb.model import (
    PROTO_TCP,
    ConnInfo,
    DestInfo,
    DestSpec,
    LaddrInfo,
    ServiceInfo,
    ServiceKey,
    ServiceSpec,
    Stats,
    parse_ipv4,
)
from lb.pyengine.conn import Connection, ConnectionTable, ConnKey, Counters, DestKey, Destination, TemplateKey
from lb.pyengine.icmp import port_unreachable, related_connection_key
from lb.pyengine.parse import IPPROTO_ICMP, IPPROTO_TCP, TCP_SYN, ParsedPacket, Rejection, parse_packet
from lb.pyengine.proto_tcp import (
    INPUT_ONLY_TABLE,
    REUSABLE_STATES,
    TCP_STATES,
    TCP_TIMEOUTS_MS,
    UDP_TIMEOUT_MS,
    is_reuse_syn,
    tcp_event,
)
from lb.pyengine.sched import Scheduler, new_scheduler
from lb.pyengine.xmit_dr import dr_action, fwd_is_valid, transmit_dr

if TYPE_CHECKING:
    from lb.pyengine.nfq import NfqAdapter

DEFAULT_CONN_MAX = 1048576  # entries; LB_DEFAULT_CONN_MAX in native/include/lb_api.h
SUPPORTED_FWD = frozenset({"route"})
MAX_TIMEOUT_S = 0xFFFFFFFF // 1000  # timeouts are kept in 32-bit milliseconds (as the C core)

# (proto, virtual addr (4 bytes), virtual port)
SvcKey = tuple[int, bytes, int]

_ESTABLISHED = int(ConnState.ESTABLISHED)
_SYN_RECV = int(ConnState.SYN_RECV)
_FIN_WAIT = int(ConnState.FIN_WAIT)
_NONE = int(ConnState.NONE)
_UDP = int(ConnState.UDP)
_NO_SERVICE = Action(Verdict.ACCEPT, Reason.NO_SERVICE)
_NO_CONN = Action(Verdict.ACCEPT, Reason.NO_CONN)
_TABLE_FULL = Action(Verdict.DROP, Reason.TABLE_FULL)
_DEST_UNAVAILABLE = Action(Verdict.DROP, Reason.DEST_UNAVAILABLE)
_ICMP_UNRELATED = Action(Verdict.ACCEPT, Reason.NOT_LB_PROTO)
_ICMP_NO_L2 = Action(Verdict.DROP, Reason.NO_L2)


class Service:
    """A virtual service: its destinations in kernel order (most recently added first)."""

    __slots__ = ("key", "spec", "dests", "scheduler", "stats", "laddrs", "netmask")

    def __init__(self, key: SvcKey, spec: ServiceSpec, scheduler: Scheduler) -> None:
        self.key = key
        self.spec = spec
        self.netmask = socket.inet_aton(spec.netmask)
        self.dests: list[Destination] = []
        self.scheduler = scheduler
        self.stats = Counters()
        self.laddrs: list[str] = []  # FULLNAT local addresses, in the order added (unused by DR)

    def find_dest(self, daddr: bytes, dport: int) -> int | None:
        for index, dest in enumerate(self.dests):
            if dest.key[3] == daddr and dest.key[4] == dport:
                return index
        return None

    def client_network(self, caddr: bytes) -> bytes:
        """The persistence granule of a client: its address & the service's netmask."""
        return bytes(a & m for a, m in zip(caddr, self.netmask))


def _svc_key(key: ServiceKey) -> SvcKey:
    return (key.proto, socket.inet_aton(key.addr), key.port)


def _stats(counters: Counters) -> Stats:
    return Stats(
        conns=counters.conns,
        inpkts=counters.inpkts,
        outpkts=counters.outpkts,
        inbytes=counters.inbytes,
        outbytes=counters.outbytes,
    )


class PyEngine:
    """Tables and packet path of one director, in Python (see the module docstring)."""

    name = "python"

    def __init__(self, conn_max: int = DEFAULT_CONN_MAX) -> None:
        if conn_max == 0:
            conn_max = DEFAULT_CONN_MAX  # as struct lb_config: 0 = the default
        self._lock = threading.Lock()
        self._services: dict[SvcKey, Service] = {}  # insertion order = listing order
        self._trash: dict[DestKey, Destination] = {}
        self._conns = ConnectionTable(conn_max)
        self._templates: dict[TemplateKey, Connection] = {}  # live, matching templates
        self._timeouts_ms: list[int] = [TCP_TIMEOUTS_MS[s] for s in TCP_STATES] + [UDP_TIMEOUT_MS]
        assert len(self._timeouts_ms) == _UDP + 1
        self._reason_counts = [0] * len(Reason)
        self._nfq: NfqAdapter | None = None

    # ---- packet path -------------------------------------------------------------

    def process(self, packet: bytes, now_ms: int) -> Action:
        with self._lock:
            action = self._process(packet, now_ms)
            self._reason_counts[action.reason] += 1
            return action

    def _process(self, packet: bytes, now_ms: int) -> Action:
        self._expire(now_ms)
        parsed = parse_packet(packet)
        if isinstance(parsed, Rejection):
            return parsed.action

        proto, flags = parsed.proto, parsed.tcp_flags
        if proto == IPPROTO_ICMP:
            return self._icmp(packet, parsed)
        key: ConnKey = (proto, parsed.saddr, parsed.sport, parsed.daddr, parsed.dport)
        conn = self._conns.get(key)
        if (
            conn is not None
            and proto == IPPROTO_TCP
            and conn.state in REUSABLE_STATES
            and is_reuse_syn(flags)
        ):
            # conn_reuse_mode=1: a fresh SYN on a TIME_WAIT/CLOSE entry expires it now.
            self._conns.remove(conn)
            self._release(conn)
            conn = None

        if conn is not None:
            dest = conn.dest
            if not dest.available:
                return _DEST_UNAVAILABLE  # the timer is not restarted
        else:
            service = self._services.get((proto, parsed.daddr, parsed.dport))
            if service is None:
                return _NO_SERVICE
            if proto == IPPROTO_TCP and not flags & TCP_SYN:
                return _NO_CONN
            scheduled = self._schedule(service, parsed, packet, now_ms)
            if isinstance(scheduled, Action):
                return scheduled
            dest, template = scheduled
            if self._conns.full:
                return _TABLE_FULL
            conn = self._new_connection(key, dest, now_ms)
            conn.syn_seq = parsed.tcp_seq
            if template is not None:
                conn.controller = template
                template.n_control += 1

        self._count_in_packet(dest, parsed.total_length)
        if proto == IPPROTO_TCP:
            old_state = conn.state
            self._tcp_transition(conn, flags, now_ms)
            if old_state == _SYN_RECV:
                if is_reuse_syn(flags) and parsed.tcp_seq == conn.syn_seq:
                    dest.syn_retrans += 1  # the client is still waiting for the server's SYN+ACK
                elif conn.state == _ESTABLISHED:
                    dest.handshakes += 1
        else:
            self._conns.set_timer(conn, self._timeouts_ms[_UDP], now_ms)
        return transmit_dr(dest)

    def _schedule(
        self, service: Service, parsed: ParsedPacket, packet: bytes, now_ms: int
    ) -> tuple[Destination, Connection | None] | Action:
        """Pick the destination for a new connection (through a persistence template when the
        service is persistent), or the action that ends the packet here."""
        if service.spec.persistent is None:
            dest = service.scheduler.schedule(service.dests)
            return self._no_dest(packet, parsed) if dest is None else (dest, None)

        template_key: TemplateKey = (parsed.proto, service.client_network(parsed.saddr), parsed.daddr, parsed.dport)
        template = self._templates.get(template_key)
        if template is not None and not template.dest.available:
            self._invalidate_template(template)  # its destination left: schedule afresh
            template = None
        if template is None:
            dest = service.scheduler.schedule(service.dests)
            if dest is None:
                return self._no_dest(packet, parsed)
            if self._conns.full:
                return _TABLE_FULL
            template = self._new_template(template_key, dest, service.spec.persistent * 1000, now_ms)
        self._conns.set_timer(template, template.timeout_ms, now_ms)
        return template.dest, template

    @staticmethod
    def _no_dest(packet: bytes, parsed: ParsedPacket) -> Action:
        answer = port_unreachable(packet, parsed.ip_header_len, parsed.total_length)
        return Action(Verdict.ANSWER, Reason.NO_DEST, out=answer)

    def _icmp(self, packet: bytes, parsed: ParsedPacket) -> Action:
        """An ICMP error about one of our connections goes where the connection goes (ip_vs_in_icmp).

        DR: the error leaves unchanged towards the entry's real server with reason ICMP.
        The entry's state and timer are untouched; the destination's availability is not
        checked; the packet counts in the in-stats as in the kernel (ip_vs_in_stats).
        """
        key = related_connection_key(packet, parsed.ip_header_len, parsed.total_length)
        conn = None if key is None else self._conns.get(key)
        if conn is None:
            return _ICMP_UNRELATED
        dest = conn.dest
        self._count_in_packet(dest, parsed.total_length)
        forward = dest.xmit_action
        if forward is None:
            return _ICMP_NO_L2
        return Action(Verdict.XMIT_L2, Reason.ICMP, ifindex=forward.ifindex, l2hdr=forward.l2hdr)

    def _new_connection(self, key: ConnKey, dest: Destination, now_ms: int) -> Connection:
        state = _NONE if key[0] == IPPROTO_TCP else _UDP
        timeout = self._timeouts_ms[state]
        conn = Connection(key, dest, state, True, timeout, now_ms + timeout)
        self._conns.insert(conn)
        dest.bind(conn)
        dest.stats.conns += 1
        dest.owner.stats.conns += 1  # type: ignore[attr-defined]
        return conn

    def _new_template(self, key: TemplateKey, dest: Destination, timeout_ms: int, now_ms: int) -> Connection:
        template = Connection(self._conns.template_key(), dest, _NONE, False, timeout_ms, now_ms + timeout_ms,
                              is_template=True, template_key=key, client_network=key[1])
        self._conns.insert(template)
        self._templates[key] = template
        dest.bind(template)
        return template

    def _invalidate_template(self, template: Connection) -> None:
        """Its destination left: it stops matching, and goes now unless it still controls connections."""
        if template.template_key is not None and self._templates.get(template.template_key) is template:
            del self._templates[template.template_key]
        template.template_key = None
        if template.n_control == 0:
            self._conns.remove(template)
            self._release(template)

    @staticmethod
    def _count_in_packet(dest: Destination, total_length: int) -> None:
        stats = dest.stats
        stats.inpkts += 1
        stats.inbytes += total_length
        stats = dest.owner.stats  # type: ignore[attr-defined]
        stats.inpkts += 1
        stats.inbytes += total_length

    def _tcp_transition(self, conn: Connection, flags: int, now_ms: int) -> None:
        """INPUT-ONLY table: a DR director never sees the server's side (NOOUTPUT)."""
        event = tcp_event(flags)
        new_state = conn.state if event < 0 else INPUT_ONLY_TABLE[event][conn.state]
        if new_state != conn.state:
            dest = conn.dest
            if not conn.inactive and new_state != _ESTABLISHED:
                dest.active -= 1
                dest.inactive += 1
                conn.inactive = True
            elif conn.inactive and new_state == _ESTABLISHED:
                dest.inactive -= 1
                dest.active += 1
                conn.inactive = False
            conn.state = new_state
        self._conns.set_timer(conn, self._timeouts_ms[new_state], now_ms)

    def _release(self, entry: Connection) -> None:
        """The entry left the table: unbind it from its destination and its template."""
        if entry.is_template:
            if entry.template_key is not None and self._templates.get(entry.template_key) is entry:
                del self._templates[entry.template_key]
        elif entry.controller is not None:
            entry.controller.n_control -= 1
        dest = entry.dest
        dest.unbind(entry)
        if not dest.available and not dest.referenced:
            self._trash.pop(dest.key, None)

    def _expire(self, now_ms: int) -> int:
        released = 0
        while (entry := self._conns.pop_due(now_ms)) is not None:
            if entry.is_template and entry.n_control:
                # "do not expire a template with controlled connections": another period
                entry.expires_at_ms += entry.timeout_ms
                self._conns.insert(entry)
                continue
            self._release(entry)
            released += 1
        return released

    def expire(self, now_ms: int) -> int:
        """Release every entry dead at now_ms; returns how many were released."""
        with self._lock:
            return self._expire(now_ms)

    # ---- configuration -----------------------------------------------------------

    def add_service(self, spec: ServiceSpec) -> None:
        with self._lock:
            key = _svc_key(spec.key)
            if key in self._services:
                raise EngineError("EEXIST", f"service {spec.key} already exists")
            scheduler = self._checked_service_spec(spec)
            self._services[key] = Service(key, spec, scheduler)

    def edit_service(self, spec: ServiceSpec) -> None:
        with self._lock:
            service = self._service(spec.key)
            scheduler = self._checked_service_spec(spec)
            if spec.sched == service.spec.sched:
                scheduler = service.scheduler  # unchanged: keeps its state (the rr cursor)
            service.spec = spec
            service.netmask = socket.inet_aton(spec.netmask)
            service.scheduler = scheduler  # a changed scheduler starts fresh (rr: at the head)

    def del_service(self, key: ServiceKey) -> None:
        with self._lock:
            service = self._service(key)
            self._unlink_service(service)

    def clear(self) -> None:
        with self._lock:
            for service in list(self._services.values()):
                self._unlink_service(service)

    def add_dest(self, key: ServiceKey, dest: DestSpec) -> None:
        with self._lock:
            service = self._service(key)
            self._check_dest_spec(service, dest)
            daddr = socket.inet_aton(dest.addr)
            if service.find_dest(daddr, dest.port) is not None:
                raise EngineError("EEXIST", f"destination {dest.addr}:{dest.port} already exists in {key}")
            dest_key: DestKey = (*service.key, daddr, dest.port)
            revived = self._trash.pop(dest_key, None)
            if revived is not None:
                if revived.owner is not service:
                    # The service was deleted and re-created meanwhile: the kernel rebinds the
                    # destination to the new service object and zeroes its stats.
                    revived.stats.zero()
                revived.update_spec(dest)
                revived.available = True
                revived.owner = service
                service.dests.insert(0, revived)
            else:
                service.dests.insert(0, Destination(dest_key, dest, service))

    def edit_dest(self, key: ServiceKey, dest: DestSpec) -> None:
        with self._lock:
            service = self._service(key)
            self._check_dest_spec(service, dest)
            index = self._dest_index(service, dest.addr, dest.port)
            service.dests[index].update_spec(dest)

    def del_dest(self, key: ServiceKey, addr: str, port: int) -> None:
        with self._lock:
            service = self._service(key)
            index = self._dest_index(service, addr, port)
            self._unlink_dest(service, index)

    def set_fwd(self, key: ServiceKey, addr: str, port: int, fwd: FwdState | None) -> None:
        with self._lock:
            service = self._service(key)
            if fwd is not None and fwd.ifindex < 0:
                raise EngineError("EINVAL", f"forwarding state for {addr}:{port} in {key}: ifindex {fwd.ifindex} < 0")
            dest = service.dests[self._dest_index(service, addr, port)]
            if not fwd_is_valid(fwd):
                dest.fwd, dest.xmit_action = None, None
                return
            assert fwd is not None
            try:
                action = dr_action(fwd)
            except ValueError as exc:
                raise EngineError("EINVAL", f"forwarding state for {addr}:{port} in {key}: {exc}") from exc
            dest.fwd, dest.xmit_action = fwd, action

    def add_laddr(self, key: ServiceKey, addr: str) -> None:
        """Record a FULLNAT local address (kept and listed; DR never uses it)."""
        addr = parse_ipv4(addr)
        with self._lock:
            service = self._service(key)
            if addr in ("0.0.0.0", "255.255.255.255"):
                raise EngineError("EINVAL", f"local address {addr} for {key} is not a unicast address")
            if addr in service.laddrs:
                raise EngineError("EEXIST", f"local address {addr} already exists in {key}")
            service.laddrs.append(addr)

    def del_laddr(self, key: ServiceKey, addr: str) -> None:
        addr = parse_ipv4(addr)
        with self._lock:
            service = self._service(key)
            if addr not in service.laddrs:
                raise EngineError("ENOENT", f"no local address {addr} in {key}")
            service.laddrs.remove(addr)

    def zero(self) -> None:
        with self._lock:
            for service in self._services.values():
                self._zero_service(service)

    def zero_service(self, key: ServiceKey) -> None:
        with self._lock:
            self._zero_service(self._service(key))

    @staticmethod
    def _zero_service(service: Service) -> None:
        service.stats.zero()
        for dest in service.dests:
            dest.stats.zero()

    def set_timeouts(self, tcp_s: int, tcpfin_s: int, udp_s: int) -> None:
        """ipvsadm --set: ESTABLISHED, FIN_WAIT and UDP timeouts in seconds; 0 keeps a value.
        Entries keep their expiry until a packet touches them."""
        for name, value in (("tcp", tcp_s), ("tcpfin", tcpfin_s), ("udp", udp_s)):
            if not 0 <= value <= MAX_TIMEOUT_S:
                raise EngineError("EINVAL", f"{name} timeout {value} s out of range 0..{MAX_TIMEOUT_S}")
        with self._lock:
            for state, value in ((_ESTABLISHED, tcp_s), (_FIN_WAIT, tcpfin_s), (_UDP, udp_s)):
                if value:
                    self._timeouts_ms[state] = value * 1000

    def get_timeouts(self) -> tuple[int, int, int]:
        with self._lock:
            t = self._timeouts_ms
            return t[_ESTABLISHED] // 1000, t[_FIN_WAIT] // 1000, t[_UDP] // 1000

    def _checked_service_spec(self, spec: ServiceSpec) -> Scheduler:
        try:
            scheduler = new_scheduler(spec.sched)
        except KeyError as exc:
            raise EngineError("ENOENT", f"service {spec.key}: {exc.args[0]}") from None
        if spec.persistent is not None and spec.persistent > MAX_TIMEOUT_S:
            raise EngineError("EINVAL", f"service {spec.key}: persistence timeout {spec.persistent} s > {MAX_TIMEOUT_S}")
        if spec.synproxy:
            raise EngineError("EOPNOTSUPP", f"service {spec.key}: SYN-proxy (FULLNAT only) is not in the Python engine")
        return scheduler

    def _service(self, key: ServiceKey) -> Service:
        service = self._services.get(_svc_key(key))
        if service is None:
            raise EngineError("ESRCH", f"no service {key}")
        return service

    @staticmethod
    def _dest_index(service: Service, addr: str, port: int) -> int:
        index = service.find_dest(socket.inet_aton(addr), port)
        if index is None:
            raise EngineError("ENOENT", f"no destination {addr}:{port} in {service.spec.key}")
        return index

    @staticmethod
    def _check_dest_spec(service: Service, dest: DestSpec) -> None:
        if dest.l_threshold > dest.u_threshold:
            raise EngineError(
                "EINVAL",
                f"destination {dest.addr}:{dest.port} in {service.spec.key}: lower threshold "
                f"{dest.l_threshold} is higher than upper threshold {dest.u_threshold}",
            )
        if dest.fwd not in SUPPORTED_FWD:
            raise EngineError(
                "EOPNOTSUPP",
                f"destination {dest.addr}:{dest.port} in {service.spec.key}: forwarding method "
                f"{dest.fwd!r} is not in the Python engine (supported: {', '.join(sorted(SUPPORTED_FWD))})",
            )

    def _unlink_dest(self, service: Service, index: int) -> None:
        service.scheduler.dest_removed(service.dests, index)
        dest = service.dests.pop(index)
        dest.available = False
        if dest.referenced:
            self._trash[dest.key] = dest  # its entries stay; their packets are dropped

    def _unlink_service(self, service: Service) -> None:
        while service.dests:
            self._unlink_dest(service, 0)
        del self._services[service.key]

    # ---- observation -------------------------------------------------------------

    def services(self) -> list[ServiceInfo]:
        with self._lock:
            return [
                ServiceInfo(
                    spec=service.spec,
                    dests=[
                        DestInfo(
                            spec=dest.spec,
                            active=dest.active,
                            inactive=dest.inactive,
                            persist=dest.persist,
                            stats=_stats(dest.stats),
                            syn_retrans=dest.syn_retrans,
                            handshakes=dest.handshakes,
                        )
                        for dest in service.dests
                    ],
                    stats=_stats(service.stats),
                    laddrs=[LaddrInfo(addr, 0) for addr in service.laddrs],
                )
                for service in self._services.values()
            ]

    def connections(self, now_ms: int) -> list[ConnInfo]:
        """Live entries at now_ms, templates included (client port 0, state NONE), as ipvsadm -Lnc.
        Nothing is released here: that is expire's job."""
        with self._lock:
            result = []
            for conn in self._conns:
                if conn.expires_at_ms <= now_ms:
                    continue
                if conn.is_template:
                    proto, caddr, cport, vaddr, vport = self._template_tuple(conn)
                else:
                    proto, caddr, cport, vaddr, vport = conn.key  # type: ignore[misc]
                dkey = conn.dest.key
                result.append(
                    ConnInfo(
                        proto=proto,
                        caddr=socket.inet_ntoa(caddr),
                        cport=cport,
                        vaddr=socket.inet_ntoa(vaddr),
                        vport=vport,
                        daddr=socket.inet_ntoa(dkey[3]),
                        dport=dkey[4],
                        state=ConnState(conn.state).name,
                        expires_ms=conn.expires_at_ms - now_ms,
                    )
                )
            return result

    @staticmethod
    def _template_tuple(template: Connection) -> ConnKey:
        proto, vaddr, vport = template.dest.key[:3]
        network = template.client_network if template.client_network is not None else b"\0\0\0\0"
        return (proto, network, 0, vaddr, vport)

    def counters(self) -> dict[str, int]:
        """Packets per reason since the engine started, keyed by reason name in lower case."""
        with self._lock:
            return {reason.name.lower(): self._reason_counts[reason] for reason in Reason}

    def conn_count(self) -> int:
        with self._lock:
            return len(self._conns)

    # ---- packet source -------------------------------------------------------------

    def start(self, queue_num: int) -> None:
        """Serve NFQUEUE `queue_num` from a thread (lbd --engine python)."""
        from lb.pyengine.nfq import NfqAdapter

        if self._nfq is not None:
            raise RuntimeError("the NFQUEUE adapter is already running")
        adapter = NfqAdapter(self)
        adapter.start(queue_num)
        self._nfq = adapter

    def stop(self) -> None:
        if self._nfq is not None:
            self._nfq.stop()
            self._nfq = None


assert PROTO_TCP == IPPROTO_TCP
