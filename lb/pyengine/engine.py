"""PyEngine: the pure-Python executable specification of docs/fastpath.md.

The C core (lb.fastpath.CEngine) must agree with it packet for packet; the public
methods are CEngine's, one for one. Time is only ever the caller's `now_ms`; the
engine never reads a clock.

Scope: direct routing, IPIP tunnelling, NAT (masquerading) and FULLNAT (local address pools,
TOA, MSS lowering), ICMP errors about connections (forwarded or translated), the
director's own ICMP answers, persistence templates, SYN-proxy (lb/pyengine/
synproxy.py), every scheduler of the registry (lb/pyengine/sched_<name>.py), one-packet scheduling
(-o), per-instance timeouts, the stalled-handshake counters.

Choices where docs/fastpath.md is silent (kernel IPVS behaviour unless noted):
- Expiry is exact: an entry dies at expires_at_ms (now_ms >= expires_at_ms) and is
  released before the packet (or timer run) at that time is looked at, as a kernel
  timer would have fired; due entries go in expiry-time order, connections before
  templates at equal times; a template that still controls connections at its
  expiry time is re-armed at that time + its timeout.
- A connection keeps the forwarding method it was created with (the kernel binds
  cp->packet_xmit at creation); editing the destination's method affects new
  connections only.
- Packets count in the stats only while their destination is AVAILABLE (the
  kernel's ip_vs_in_stats / ip_vs_out_stats): a deleted destination's entries
  (ICMP errors, FULLNAT replies) count nowhere. A deleted destination belongs to
  no service: its entries get no TOA / MSS lowering and the default SYN-proxy
  settings, until it is revived.
- Deleted destinations still referenced by entries go to a trash keyed by
  (proto, vaddr, vport, daddr, dport); adding that destination to a service with
  that key again revives the same object (connection counts and forwarding state
  kept), inserted at the list head. Its stats are kept when it returns to the same
  service object and zeroed when that service was deleted and re-created meanwhile
  (__ip_vs_update_dest). A deleted destination without entries is gone.
- OVERLOAD follows Debian 6.1.192 (conn.Destination): re-evaluated when add/edit
  changes a threshold, when a bind makes the connection total equal the upper
  threshold, and when an unbind leaves the lower threshold value. Templates count
  in `persist` only and never touch it.
- zero() zeroes the stats of services and their listed destinations, not of
  trashed ones (ip_vs_zero_service), nor the stalled-handshake counters, nor the
  per-reason packet counters, nor the SYN-proxy counters.
- Errors: the service is looked up first (ESRCH before parameter errors, as
  ip_vs_genl_set_cmd), then the parameters, then the existence of the
  destination / local address (EEXIST, ENOENT); adding an existing service is
  EEXIST whatever its parameters (ip_vs_genl_set_cmd). l_threshold > u_threshold
  is EINVAL (the kernel's ERANGE).
- SYN-proxy packets count in the stats as any other (the ACK that validates a
  cookie, and every packet after the real server's handshake; not the held ones).
"""

from __future__ import annotations

import collections
import errno
import os
import socket
import threading
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from lb import consts as C
from lb.engine import FWD_IDS, Action, ConnState, EngineError, FwdState, Reason, Verdict
from lb.model import (
    FWMARK_PROTO,
    PROTO_TCP,
    TEMPLATE_ASSURED,
    ConnInfo,
    DestInfo,
    DestSpec,
    LaddrInfo,
    ServiceInfo,
    ServiceKey,
    ServiceSpec,
    Stats,
    SynproxyConf,
)
from lb.pyengine import proxyproto as px
from lb.pyengine import synproxy as sp
from lb.pyengine import xmit_fnat
from lb.pyengine.conn import (
    DIR_IN,
    DIR_OUT,
    Connection,
    ConnectionTable,
    ConnKey,
    Counters,
    Destination,
    DestKey,
    TemplateKey,
)
from lb.pyengine.csum import internet_checksum
from lb.pyengine.frag import fit_path_mtu
from lb.pyengine.icmp import port_unreachable, related_connection_key
from lb.pyengine.l2q import HeldPackets
from lb.pyengine.parse import IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, TCP_ACK, TCP_RST, TCP_SYN, ParsedPacket, Rejection, parse_packet
from lb.pyengine.proto_tcp import (
    ACTIVE_STATES,
    INPUT_ONLY_TABLE,
    INPUT_TABLE,
    OUTPUT_TABLE,
    REUSABLE_STATES,
    TCP_STATES,
    TCP_TIMEOUTS_MS,
    UDP_TIMEOUT_MS,
    is_new_conn,
    is_plain_syn,
    tcp_event,
)
from lb.pyengine.sched import Scheduler, find_scheduler
from lb.pyengine.xmit import NO_L2, XmitMethod, find_method, fwd_is_valid, l2_header, methods, xmit_l2
from lb.pyengine.xmit_fnat import toa_option

if TYPE_CHECKING:
    from lb.pyengine.nfq import NfqAdapter

DEFAULT_CONN_MAX = C.LB_DEFAULT_CONN_MAX  # entries
HASH_BUCKETS_MIN = C.LB_HASH_BUCKETS_MIN  # table_size() reports the C core's bucket count; Python uses dicts
MAX_TIMEOUT_S = 0xFFFFFFFF // 1000  # timeouts are kept in 32-bit milliseconds (as the C core)
M64 = (1 << 64) - 1


def default_hash_buckets(conn_max: int) -> int:
    """The C core's bucket count when lb_config leaves it 0: the next power of two >= conn_max, at
    least LB_HASH_BUCKETS_MIN (native/src/conn.c)."""
    buckets = HASH_BUCKETS_MIN
    while buckets < conn_max:
        buckets <<= 1
    return buckets

SEED1_MUL = 0xD6E8FEB86659FD93  # seed1 = seed0 * SEED1_MUL + 1 (native/src/conn.c)

DEST_F_AVAILABLE = C.LB_DEST_F_AVAILABLE
DEST_F_OVERLOAD = C.LB_DEST_F_OVERLOAD
DEST_F_FWD_VALID = C.LB_DEST_F_FWD_VALID

# (proto, virtual addr (4 bytes), virtual port)
SvcKey = tuple[int, bytes, int]

_ESTABLISHED = int(ConnState.ESTABLISHED)
_SYN_SENT = int(ConnState.SYN_SENT)
_SYN_RECV = int(ConnState.SYN_RECV)
_FIN_WAIT = int(ConnState.FIN_WAIT)
_NONE = int(ConnState.NONE)
_UDP = int(ConnState.UDP)
_NO_SERVICE = Action(Verdict.ACCEPT, Reason.NO_SERVICE)
_NO_CONN = Action(Verdict.ACCEPT, Reason.NO_CONN)
_TABLE_FULL = Action(Verdict.DROP, Reason.TABLE_FULL)
_NO_LADDR = Action(Verdict.DROP, Reason.NO_LADDR)
_DEST_UNAVAILABLE = Action(Verdict.DROP, Reason.DEST_UNAVAILABLE)

_ICMP_UNRELATED = Action(Verdict.ACCEPT, Reason.NOT_LB_PROTO)
_ICMP_BAD_CSUM = Action(Verdict.DROP, Reason.BAD_CSUM)
_TTL_EXCEEDED = Action(Verdict.DROP, Reason.TTL_EXCEEDED)
_SP_HELD = Action(Verdict.DROP, Reason.SP_HELD)
_SP_BAD_COOKIE = Action(Verdict.DROP, Reason.SP_BAD_COOKIE)
_MARTIAN_SRC = Action(Verdict.DROP, Reason.MARTIAN_SRC)
_LOCAL_SRC = Action(Verdict.DROP, Reason.LOCAL_SRC)
_BAD_L4_CSUM = Action(Verdict.DROP, Reason.BAD_L4_CSUM)
_L2_QUEUED = Action(Verdict.DROP, Reason.L2_QUEUED)


def is_martian_source(saddr: bytes) -> bool:
    """A source the kernel's routing drops whatever its tables say (ip_route_input_slow): 0.0.0.0/8,
    127.0.0.0/8, multicast 224.0.0.0/4, the limited broadcast 255.255.255.255 (class E is routed)."""
    first = saddr[0]
    return first in (0, 127) or 224 <= first < 240 or saddr == b"\xff\xff\xff\xff"


class Service:
    """A virtual service: its destinations in kernel order (most recently added first), its scheduler
    and that scheduler's state for it, and each forwarding method's state for it (FULLNAT: the local
    address pool)."""

    __slots__ = ("key", "spec", "dests", "scheduler", "sched_data", "stats", "xmit_data", "netmask", "sp_conf",
                 "seed0", "sched_now_ms", "stats_seen")

    def __init__(self, key: SvcKey, spec: ServiceSpec, scheduler: Scheduler, seed0: int) -> None:
        self.key = key
        self.seed0 = seed0  # the engine's seed (lb/pyengine/sched.py SchedService)
        self.sched_now_ms = 0  # the time of the schedule() call in progress
        self.spec = spec
        self.netmask = socket.inet_aton(spec.netmask)
        self.dests: list[Destination] = []
        self.scheduler = scheduler
        self.sched_data: Any = None  # the scheduler's own (lb/pyengine/sched.py)
        self.stats = Counters()
        self.stats_seen = Stats()  # stats as changed_services() last reported them
        self.xmit_data: dict[str, Any] = {}  # by method name (lb/pyengine/xmit.py)
        self.sp_conf: SynproxyConf | None = None  # own SYN-proxy settings (None: the engine's default)
        scheduler.init_service(self)

    def find_dest(self, daddr: bytes, dport: int) -> int | None:
        for index, dest in enumerate(self.dests):
            if dest.key[3] == daddr and dest.key[4] == dport:
                return index
        return None

    def client_network(self, caddr: bytes) -> bytes:
        """The persistence granule of a client: its address & the service's netmask."""
        return bytes(a & m for a, m in zip(caddr, self.netmask, strict=True))


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


def _service_of(dest: Destination) -> Service | None:
    """The service a destination is in (None once deleted)."""
    owner = dest.owner
    return owner if dest.available and isinstance(owner, Service) else None


def _assure_template(conn: Connection) -> None:
    """ip_vs_control_assure_ct: the connection's persistence template, if any, becomes ASSURED."""
    if conn.controller is not None:
        conn.controller.assured = True


def _toa(dest: Destination) -> bool:
    service = _service_of(dest)
    return service is not None and service.spec.toa


def _method(dest: Destination) -> XmitMethod:
    """The method a destination's connections are bound to (its forwarding method was checked when set)."""
    method = find_method(dest.spec.fwd)
    assert method is not None, dest.spec.fwd
    return method


def _ops_refuses(spec: ServiceSpec, method: XmitMethod) -> bool:
    """svc.c's ops_refuses: a method that must find the entry again for the replies (FULLNAT) cannot
    serve a one-packet UDP service, which keeps none. (-o on TCP is stored and changes nothing.)"""
    return spec.ops and spec.key.proto == IPPROTO_UDP and method.sees_replies


class _BindContext:
    """What a method's conn_bind may ask the engine (xmit.BindContext)."""

    def __init__(self, conns: ConnectionTable, lport_min: int, lport_max: int) -> None:
        self._conns = conns
        self.lport_min, self.lport_max = lport_min, lport_max

    def reply_in_use(self, proto: int, dest: Destination, reply_addr: bytes, reply_port: int) -> bool:
        return self._conns.lookup((proto, dest.addr, dest.port, reply_addr, reply_port)) is not None


class PyEngine:
    """Tables and packet path of one director, in Python (see the module docstring)."""

    name = "python"

    def __init__(
        self,
        conn_max: int = 0,
        hash_buckets: int = 0,
        hash_seed: int = 0,
        lport_min: int = 0,
        lport_max: int = 0,
    ) -> None:
        conn_max = conn_max or DEFAULT_CONN_MAX  # as struct lb_config: 0 = the default
        hash_buckets = hash_buckets or default_hash_buckets(conn_max)
        lport_min = lport_min or C.LB_DEFAULT_LPORT_MIN
        lport_max = lport_max or C.LB_DEFAULT_LPORT_MAX
        if (conn_max > C.LB_CONN_MAX_LIMIT or hash_buckets & (hash_buckets - 1)
                or not 0 < lport_min <= lport_max <= 65535 or conn_max < 0):
            raise EngineError("EINVAL", f"bad engine configuration (conn_max={conn_max}, hash_buckets={hash_buckets}, "
                                        f"lport {lport_min}..{lport_max})")
        if hash_seed:
            seed0 = hash_seed & M64
            seed1 = (seed0 * SEED1_MUL + 1) & M64
            sp_key = sp.master_key(seed0, seed1)
        else:
            seed0, seed1 = (int.from_bytes(os.urandom(8), "little") for _ in range(2))
            sp_key = (int.from_bytes(os.urandom(8), "little"), int.from_bytes(os.urandom(8), "little"))
        self._seed0 = seed0
        self._hash_buckets = hash_buckets
        self._lport_min, self._lport_max = lport_min, lport_max
        self._lock = threading.RLock()
        self._services: dict[SvcKey, Service] = {}  # insertion order = listing order
        # The director's own addresses (native/src/local.c): the control plane's set, and the
        # services' virtual addresses, counted per service (fwmark services have none).
        self._host_addrs: frozenset[bytes] = frozenset()
        self._vips: collections.Counter[bytes] = collections.Counter()
        self._trash: dict[DestKey, Destination] = {}
        self._conns = ConnectionTable(conn_max)
        self._bind_ctx = _BindContext(self._conns, lport_min, lport_max)
        self._timeouts_ms: list[int] = [TCP_TIMEOUTS_MS[s] for s in TCP_STATES] + [UDP_TIMEOUT_MS]
        assert len(self._timeouts_ms) == _UDP + 1
        self._reason_counts = [0] * len(Reason)
        self._cookies = sp.Cookies(sp_key)
        self._sp_default = sp.BUILTIN_CONF
        self._sp_stats = dict.fromkeys(sp.STAT_NAMES, 0)
        self._sp_timers = sp.TimerHeap()
        self._held = HeldPackets()  # packets waiting for their destination's forwarding state
        self._nfq: NfqAdapter | None = None

    # ---- packet path -------------------------------------------------------------

    def process(self, packet: bytes, now_ms: int, mark: int = 0, loopback: bool = False) -> Action:
        """One packet; `mark` is its firewall mark (fwmark services are looked up by it first); `loopback`:
        it came in on lo (the director's own: exempt from the martian-source checks)."""
        with self._lock:
            action = self._process(packet, now_ms, mark, loopback)
            self._reason_counts[action.reason] += 1
            return action

    def _process(self, packet: bytes, now_ms: int, mark: int = 0, loopback: bool = False) -> Action:
        self._expire(now_ms)
        parsed = parse_packet(packet)
        if isinstance(parsed, Rejection):
            return parsed.action

        proto, flags = parsed.proto, parsed.tcp_flags
        if proto == IPPROTO_ICMP:
            if not loopback and is_martian_source(parsed.saddr):
                return _MARTIAN_SRC  # the kernel's routing drops it before IPVS (ip_route_input_slow)
            return self._icmp(packet, parsed)
        key: ConnKey = (proto, parsed.saddr, parsed.sport, parsed.daddr, parsed.dport)
        hit = self._conns.lookup(key)
        conn, direction = hit if hit is not None else (None, DIR_IN)
        if (conn is not None and direction == DIR_IN and proto == IPPROTO_TCP and conn.state in REUSABLE_STATES
                and is_new_conn(flags)):
            # conn_reuse_mode=1: a SYN on a TIME_WAIT/CLOSE entry expires it now; the packet is a miss.
            self._release_now(conn)
            conn = None

        if conn is not None and conn.sp is not None:
            if direction == DIR_OUT:
                return self._sp_out(conn, packet, parsed, now_ms)
            if not conn.dest.available:
                return _DEST_UNAVAILABLE
            return self._sp_in(conn, packet, parsed, now_ms)

        if conn is not None and direction == DIR_OUT:
            # A reply from a real server, found by its connection's reply tuple: no availability check.
            if proto == IPPROTO_TCP:
                self._tcp_transition(conn, DIR_OUT, flags)
            else:
                _assure_template(conn)  # UDP: a reply assures the template (udp_state_transition)
            self._refresh(conn, now_ms)
            self._count_out(conn.dest, parsed.total_length)
            action = conn.xmit.xmit_out(conn, packet, parsed)
            if conn.px is not None:
                action = px.translate_out(conn.px, action, parsed)  # acknowledgments back before the header
            return action

        if conn is not None:
            if not conn.dest.available:
                return _DEST_UNAVAILABLE  # the timer is not restarted
        else:
            if not loopback and is_martian_source(parsed.saddr):
                # The kernel's routing drops it before IPVS (ip_route_input_slow). On a miss only: no
                # entry can have such a source. A looped-back packet never met input routing.
                return _MARTIAN_SRC
            # ip_vs_service_find's order: the fwmark service of the packet's mark, the exact
            # <protocol, VIP, port>, then the VIP's port-zero ("all ports") service, which receives
            # every port of the VIP without an exact service.
            service = self._services.get((FWMARK_PROTO, mark.to_bytes(4, "big"), 0)) if mark else None
            if service is None:
                service = self._services.get((proto, parsed.daddr, parsed.dport))
            if service is None and parsed.dport:
                service = self._services.get((proto, parsed.daddr, 0))
            if service is None:
                return _NO_SERVICE
            if not loopback and (parsed.saddr in self._host_addrs or self._vips[parsed.saddr]):
                return _LOCAL_SRC  # a source that is the director's own (fib_validate_source)
            if service.spec.synproxy and proto == IPPROTO_TCP:
                return self._sp_miss(service, packet, parsed, now_ms)
            if service.spec.ops and proto == IPPROTO_UDP:
                return self._ops_datagram(service, packet, parsed, now_ms)
            if proto == IPPROTO_TCP and (not flags & TCP_SYN or flags & TCP_RST):
                return _NO_CONN  # tcp_conn_schedule never schedules those
            scheduled = self._schedule_conn(service, packet, parsed, now_ms)
            if isinstance(scheduled, Action):
                return scheduled
            conn = scheduled
            if service.spec.proxy_protocol is not None and proto == IPPROTO_TCP:
                conn.px = px.new_state(service.spec.proxy_protocol, conn.caddr, conn.cport, conn.vaddr, conn.vport,
                                       parsed.tcp_seq)

        dest = conn.dest
        if proto == IPPROTO_TCP:
            old_state = conn.state
            self._tcp_transition(conn, DIR_IN, flags)
            if old_state == _SYN_RECV:
                if is_plain_syn(flags) and parsed.tcp_seq == conn.syn_seq:
                    dest.syn_retrans += 1  # the client is still waiting for the server's SYN+ACK
                elif conn.state == _ESTABLISHED:
                    dest.handshakes += 1
        self._refresh(conn, now_ms)
        self._count_in(dest, parsed.total_length)
        action = conn.xmit.xmit_in(conn, packet, parsed)
        if action.reason == Reason.NO_L2 and dest.fwd is None and self._held.hold(dest, packet[:parsed.total_length], now_ms):
            return _L2_QUEUED  # sent by the timers once the destination is resolved (lb/pyengine/l2q.py)
        if conn.px is not None:
            action = self._px_in(conn, conn.px, action, parsed)  # the PROXY header, or the shift past it
        return fit_path_mtu(action, dest, packet, parsed)

    @staticmethod
    def _px_header(conn: Connection, state: px.ProxyState) -> bytes:
        return px.header(state.version, conn.caddr, conn.cport, conn.vaddr, conn.vport)

    def _px_in(self, conn: Connection, state: px.ProxyState, action: Action, parsed: ParsedPacket) -> Action:
        fwd = conn.dest.fwd
        mtu = fwd.mtu if fwd is not None else 0
        return px.translate_in(state, self._px_header(conn, state), action, parsed, mtu, conn.sp is not None)

    def _send_held(self, dest: Destination, packet: bytes) -> Action | None:
        """A held packet leaves through its connection's method (native/src/l2q.c send_one), or None."""
        parsed = parse_packet(packet)
        if isinstance(parsed, Rejection):
            return None
        hit = self._conns.lookup((parsed.proto, parsed.saddr, parsed.sport, parsed.daddr, parsed.dport))
        if hit is None or hit[1] != DIR_IN or hit[0].dest is not dest or hit[0].sp is not None:
            return None
        action = hit[0].xmit.xmit_in(hit[0], packet, parsed)
        if action.verdict == Verdict.DROP:
            return None
        if not action.out:  # sent unchanged (DR): a timer action has no original, so it carries the bytes
            return Action(action.verdict, action.reason, packet, action.ifindex, action.l2hdr)
        return action

    def _count_held_drop(self) -> None:
        self._reason_counts[Reason.NO_L2] += 1


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
                        return _TABLE_FULL
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
        method = _method(dest)
        bound = method.conn_bind(self._bind_ctx, service, dest, parsed)
        if isinstance(bound, Action):
            return bound
        if self._conns.full and not self._early_drop():
            method.release(bound.priv)
            return _TABLE_FULL
        state = _NONE if parsed.proto == IPPROTO_TCP else _UDP
        conn = Connection(parsed.proto, parsed.saddr, parsed.sport, parsed.daddr, parsed.dport, dest, method, state,
                          now_ms + self._timeouts_ms[state], noout=not method.sees_replies, syn_seq=parsed.tcp_seq,
                          reply_addr=bound.reply_addr, reply_port=bound.reply_port, xmit_priv=bound.priv)
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
        method = _method(dest)
        conn = Connection(parsed.proto, parsed.saddr, parsed.sport, parsed.daddr, parsed.dport, dest, method, _UDP,
                          now_ms, noout=True)
        dest.bind(conn)
        dest.stats.conns += 1
        service.stats.conns += 1
        self._count_in(dest, parsed.total_length)
        action = fit_path_mtu(method.xmit_in(conn, packet, parsed), dest, packet, parsed)
        dest.unbind(conn)
        return action

    def _new_template(self, key: TemplateKey, dest: Destination, timeout_ms: int, now_ms: int) -> Connection:
        proto, network, vaddr, vport = key
        template = Connection(proto, network, 0, vaddr, vport, dest, _method(dest), _NONE, now_ms + timeout_ms,
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

    def _icmp(self, packet: bytes, parsed: ParsedPacket) -> Action:
        """An ICMP error about one of our connections (docs/fastpath.md "ICMP"; ip_vs_in_icmp): the
        connection's method passes it on. The entry's state and timer are untouched; the destination's
        availability is not checked.
        """
        key = related_connection_key(packet, parsed.ip_header_len, parsed.total_length)
        hit = None if key is None else self._conns.lookup(key)
        if hit is None:
            return _ICMP_UNRELATED
        if internet_checksum(packet[parsed.ip_header_len : parsed.total_length]) != 0:
            return _ICMP_BAD_CSUM
        conn, direction = hit
        if direction == DIR_OUT:
            self._count_out(conn.dest, parsed.total_length)
            return conn.xmit.icmp_out(conn, packet, parsed)
        self._count_in(conn.dest, parsed.total_length)
        return conn.xmit.icmp_in(conn, packet, parsed)

    # ---- SYN-proxy (lb/pyengine/synproxy.py describes the protocol) ------------------

    def _sp_conf(self, service: Service | None) -> SynproxyConf:
        if service is None or service.sp_conf is None:
            return self._sp_default
        return service.sp_conf

    def _sp_miss(self, service: Service, packet: bytes, parsed: ParsedPacket, now_ms: int) -> Action:
        conf = self._sp_conf(service)
        fl = sp.first_flags(parsed.tcp_flags)
        minute = (now_ms // 60000) & sp.M32
        if fl in (TCP_SYN, TCP_ACK) and not sp.tcp_checksum_ok(packet, parsed):
            return _BAD_L4_CSUM  # the handshake is ours: a corrupted segment is neither answered nor opened
        if fl == TCP_SYN:
            cmss, csack = sp.parse_syn_options(packet, parsed.ip_header_len, parsed.tcp_doff)
            idx = 0
            for i, value in enumerate(sp.MSSTAB):
                if value <= cmss:
                    idx = i
            sack = csack and conf.sack
            cookie = self._cookies.make(parsed.saddr, parsed.daddr, parsed.sport, parsed.dport, parsed.tcp_seq, minute,
                                        idx | (int(sack) << 2))
            mss = conf.mss - px.room(service.spec.toa, service.spec.proxy_protocol)
            out = sp.build_tcp(parsed.daddr, parsed.dport, parsed.saddr, parsed.sport, cookie, parsed.tcp_seq + 1,
                               TCP_SYN | TCP_ACK, sp.SP_WINDOW, sp.syn_options(mss, sack))
            self._sp_stats["cookies_sent"] += 1
            if out is None:
                return Action(Verdict.DROP, Reason.SP_COOKIE)
            return Action(Verdict.ANSWER, Reason.SP_COOKIE, out=out)
        if fl != TCP_ACK:
            return _NO_CONN  # as IPVS for non-SYN without a connection
        cookie = (parsed.tcp_ack - 1) & sp.M32
        client_isn = (parsed.tcp_seq - 1) & sp.M32
        data = self._cookies.check(parsed.saddr, parsed.daddr, parsed.sport, parsed.dport, cookie, client_isn, minute)
        if data < 0:
            self._sp_stats["cookies_invalid"] += 1
            return _SP_BAD_COOKIE
        self._sp_stats["cookies_valid"] += 1
        scheduled = self._schedule_conn(service, packet, parsed, now_ms)
        if isinstance(scheduled, Action):
            return scheduled
        conn = scheduled
        state = sp.SynproxyState(cookie, client_isn, sp.MSSTAB[data & 3], bool(data >> 2 & 1), parsed.tcp_win)
        conn.sp = state
        conn.toa_done = True  # TOA rides on the director's own handshake ACK
        if service.spec.proxy_protocol is not None:  # and so does the PROXY header
            conn.px = px.new_state(service.spec.proxy_protocol, conn.caddr, conn.cport, conn.vaddr, conn.vport,
                                   client_isn)
        self._set_state(conn, _SYN_SENT)
        self._refresh(conn, now_ms)
        self._count_in(conn.dest, parsed.total_length)
        if parsed.payload_len and parsed.payload_len <= conf.data_max_bytes:
            start = parsed.ip_header_len + parsed.tcp_doff
            state.held = packet[start : start + parsed.payload_len]
        if conf.defer and not state.held:
            state.phase = sp.PHASE_WAIT_DATA
            return _SP_HELD
        return self._sp_first_syn(conn, conf, now_ms)

    def _sp_first_syn(self, conn: Connection, conf: SynproxyConf, now_ms: int) -> Action:
        state = conn.sp
        assert state is not None
        state.phase = sp.PHASE_SYN_SENT
        state.rto_ms = conf.init_rto_ms
        self._sp_arm(conn, now_ms + state.rto_ms)
        self._sp_stats["syns_to_rs"] += 1
        out = self._sp_rs_syn(conn)
        action = None if out is None else xmit_l2(conn.dest, Reason.FORWARDED, out)
        return NO_L2 if action is None else action  # the timer retries once forwarding state exists

    def _sp_arm(self, conn: Connection, due_ms: int) -> None:
        assert conn.sp is not None
        conn.sp.due_ms = due_ms
        self._sp_timers.push(due_ms, conn)

    @staticmethod
    def _sp_rs_syn(conn: Connection) -> bytes | None:
        """The SYN to the real server from the reply tuple's director side (FULLNAT: LIP:lport)."""
        state = conn.sp
        assert state is not None
        return sp.build_tcp(conn.reply_addr, conn.reply_port, conn.dest.addr, conn.dest.port, state.client_isn, 0,
                            TCP_SYN, state.client_win, sp.syn_options(state.mss, state.sack))

    @staticmethod
    def _sp_client_rst(conn: Connection) -> bytes | None:
        state = conn.sp
        assert state is not None
        return sp.build_tcp(conn.vaddr, conn.vport, conn.caddr, conn.cport, state.cookie_isn + 1, state.client_isn + 1,
                            TCP_RST | TCP_ACK, 0)

    def _sp_in(self, conn: Connection, packet: bytes, parsed: ParsedPacket, now_ms: int) -> Action:
        state = conn.sp
        assert state is not None
        conf = self._sp_conf(_service_of(conn.dest))
        self._refresh(conn, now_ms)
        if state.phase in (sp.PHASE_WAIT_DATA, sp.PHASE_SYN_SENT):
            if parsed.tcp_flags & (TCP_RST | sp.TCP_FIN):
                self._release_now(conn)  # the client gave up first
                return _SP_HELD
            if parsed.payload_len == 0:
                action = _SP_HELD
                state.pure_acks += 1
                if state.pure_acks > conf.ack_storm_max:
                    # ACK-storm guard: reset the client, forget the connection.
                    rst = self._sp_client_rst(conn)
                    self._sp_stats["give_ups"] += 1
                    self._release_now(conn)
                    if rst is not None:
                        action = Action(Verdict.ANSWER, Reason.SP_HELD, out=rst)
                self._sp_stats["held_dropped"] += 1
                return action
            if (not state.held and parsed.tcp_seq == (state.client_isn + 1) & sp.M32
                    and parsed.payload_len <= conf.data_max_bytes):
                start = parsed.ip_header_len + parsed.tcp_doff
                state.held = packet[start : start + parsed.payload_len]
            else:
                self._sp_stats["held_dropped"] += 1  # the client retransmits it
            if state.phase == sp.PHASE_WAIT_DATA and state.held:
                return self._sp_first_syn(conn, conf, now_ms)
            return _SP_HELD
        # Established: FULLNAT rewrite, then the client's ACK and SACK edges into the server's space.
        self._tcp_transition(conn, DIR_IN, parsed.tcp_flags)
        self._refresh(conn, now_ms)
        self._count_in(conn.dest, parsed.total_length)
        action = conn.xmit.xmit_in(conn, packet, parsed)
        if action.verdict == Verdict.XMIT_L2 and action.out:
            o = bytearray(action.out)
            th = parsed.ip_header_len
            if o[th + 13] & TCP_ACK:
                sp.add32(o, th + 8, state.d_in, th + 16)
            sp.sack_shift(o, th, (o[th + 12] >> 4) * 4, state.d_in)
            action = Action(action.verdict, action.reason, bytes(o), action.ifindex, action.l2hdr)
        if conn.px is not None:
            action = self._px_in(conn, conn.px, action, parsed)  # the client's own numbers past the header
        return action

    def _sp_out(self, conn: Connection, packet: bytes, parsed: ParsedPacket, now_ms: int) -> Action:
        state = conn.sp
        assert state is not None
        self._refresh(conn, now_ms)
        dest = conn.dest
        if state.phase != sp.PHASE_DONE:
            fl = parsed.tcp_flags & (TCP_SYN | TCP_ACK | TCP_RST)
            if (state.phase == sp.PHASE_SYN_SENT and fl == TCP_SYN | TCP_ACK
                    and parsed.tcp_ack == (state.client_isn + 1) & sp.M32):
                rs_isn = parsed.tcp_seq
                state.d_in = (rs_isn - state.cookie_isn) & sp.M32
                state.phase = sp.PHASE_DONE
                state.due_ms = 0  # disarms the pending retransmission
                self._sp_stats["handshakes"] += 1
                self._set_state(conn, _ESTABLISHED)
                dest.handshakes += 1
                self._refresh(conn, now_ms)
                opts = toa_option(conn.cport, conn.caddr) if _toa(dest) else b""
                held, state.held = state.held, b""
                if conn.px is not None:  # the PROXY header first, then what of the held data fits
                    mtu = dest.fwd.mtu if dest.fwd is not None else 0
                    held = px.first_payload(conn.px, self._px_header(conn, conn.px), held, mtu)
                out = sp.build_tcp(conn.reply_addr, conn.reply_port, dest.addr, dest.port, state.client_isn + 1,
                                   rs_isn + 1, TCP_ACK | (sp.TCP_PSH if held else 0), state.client_win, opts, held)
                action = None if out is None else xmit_l2(dest, Reason.SP_HANDSHAKE, out)
                return NO_L2 if action is None else action
            if state.phase == sp.PHASE_SYN_SENT and fl & TCP_ACK and not fl & TCP_RST:
                # An ACK that does not answer our SYN (e.g. a TIME_WAIT's challenge ACK): reset it
                # with SEQ = its ACK (RFC 793, a client in SYN-SENT); the next SYN finds a clean slate.
                out = sp.build_tcp(conn.reply_addr, conn.reply_port, dest.addr, dest.port, parsed.tcp_ack, 0, TCP_RST, 0)
                action = None if out is None else xmit_l2(dest, Reason.SP_HELD, out)
                return _SP_HELD if action is None else action
            if fl & TCP_RST:
                # The server refused: reset the client and forget the connection.
                rst = self._sp_client_rst(conn)
                self._sp_stats["rs_resets"] += 1
                self._release_now(conn)
                if rst is None:
                    return Action(Verdict.DROP, Reason.FORWARDED)
                return Action(Verdict.ANSWER, Reason.FORWARDED, out=rst)
            return _SP_HELD
        self._tcp_transition(conn, DIR_OUT, parsed.tcp_flags)
        self._refresh(conn, now_ms)
        self._count_out(dest, parsed.total_length)
        action = conn.xmit.xmit_out(conn, packet, parsed)
        if action.verdict == Verdict.ANSWER and action.out:
            o = bytearray(action.out)
            th = parsed.ip_header_len
            sp.add32(o, th + 4, -state.d_in, th + 16)
            action = Action(action.verdict, action.reason, bytes(o))
        if conn.px is not None:
            action = px.translate_out(conn.px, action, parsed)  # its ACK and SACK edges back before the header
        return action

    def timers(self, now_ms: int) -> list[Action]:
        """Run due SYN-proxy timers: SYN retransmissions to real servers (XMIT_L2) and give-ups
        (ANSWER: a RST to the client). Dead entries are released first, as for packets."""
        with self._lock:
            self._expire(now_ms)
            actions = self._held.drain(now_ms, self._send_held, self._count_held_drop)
            timers = self._sp_timers
            while (due := timers.due()) is not None and due <= now_ms:
                conn: Connection = timers.pop()  # type: ignore[assignment]
                state = conn.sp
                assert state is not None
                conf = self._sp_conf(_service_of(conn.dest))
                if state.retries < conf.max_retries:
                    # Exponential backoff: init, 2*init, 4*init, ... capped at max_rto.
                    state.retries += 1
                    state.rto_ms = min(state.rto_ms * 2, conf.max_rto_ms)
                    self._sp_arm(conn, now_ms + state.rto_ms)
                    out = self._sp_rs_syn(conn)
                    action = None if out is None else xmit_l2(conn.dest, Reason.FORWARDED, out)
                    if action is None:
                        continue  # no forwarding state: nothing can leave; the next round retries
                    self._sp_stats["syn_retransmits"] += 1
                    actions.append(action)
                    continue
                rst = self._sp_client_rst(conn)
                self._sp_stats["give_ups"] += 1
                self._release_now(conn)
                if rst is not None:
                    actions.append(Action(Verdict.ANSWER, Reason.FORWARDED, out=rst))
            return actions

    def timer_due(self) -> int | None:
        """When the next SYN-proxy timer is due (None: none pending); the NFQUEUE adapter polls by it."""
        with self._lock:
            dues = [d for d in (self._sp_timers.due(), self._held.due()) if d is not None]
            return min(dues) if dues else None

    def set_synproxy(self, key: ServiceKey | None, conf: SynproxyConf | None) -> None:
        """The global default (key None), or one service's own settings (conf None: the default)."""
        with self._lock:
            if key is None:
                if conf is None:
                    raise ValueError("the global SYN-proxy default needs settings")
                self._check_sp_conf(conf)
                self._sp_default = conf
                return
            service = self._service(key)
            if conf is not None:
                self._check_sp_conf(conf)
            service.sp_conf = conf

    @staticmethod
    def _check_sp_conf(conf: SynproxyConf) -> None:
        """lb_sp_check_conf (SynproxyConf validates most of it already)."""
        if conf.wscale or conf.timestamps:
            raise EngineError("EOPNOTSUPP", "SYN-proxy supports neither window scaling nor timestamps")
        if (conf.init_rto_ms < 1 or conf.max_rto_ms < conf.init_rto_ms or conf.max_rto_ms > C.LB_SP_RTO_MS_MAX
                or conf.max_retries > C.LB_SP_MAX_RETRIES_MAX or not C.LB_SP_MSS_MIN <= conf.mss <= C.LB_SP_MSS_MAX
                or conf.data_max_bytes > C.LB_SP_DATA_MAX_BYTES_MAX):
            raise EngineError("EINVAL", f"SYN-proxy settings out of range: {conf}")

    def synproxy_stats(self) -> dict[str, int]:
        with self._lock:
            return dict(self._sp_stats)

    # ---- entries -------------------------------------------------------------------

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
            if new_state == _ESTABLISHED:
                _assure_template(conn)
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
        timeout = self._timeouts_ms[_UDP if conn.proto != IPPROTO_TCP else conn.state]
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

    def expire(self, now_ms: int) -> int:
        """Release every entry dead at now_ms, then run the schedulers' periodic work (lb_expire);
        returns how many entries were released."""
        with self._lock:
            released = self._expire(now_ms)
            for service in list(self._services.values()):
                service.scheduler.tick(service, now_ms)
            return released

    # ---- configuration -----------------------------------------------------------

    def add_service(self, spec: ServiceSpec) -> None:
        with self._lock:
            key = _svc_key(spec.key)
            if key in self._services:
                raise EngineError("EEXIST", f"service {spec.key} already exists")
            scheduler = self._checked_service_spec(spec)
            self._services[key] = Service(key, spec, scheduler, self._seed0)
            if key[0] != FWMARK_PROTO:
                self._vips[key[1]] += 1

    def edit_service(self, spec: ServiceSpec) -> None:
        with self._lock:
            service = self._service(spec.key)
            scheduler = self._checked_service_spec(spec)
            if spec.synproxy and not all(_method(d).synproxy_ok for d in service.dests):
                raise EngineError("EOPNOTSUPP", f"service {spec.key}: only FULLNAT destinations can be SYN-proxied")
            if spec.proxy_protocol is not None and not all(_method(d).synproxy_ok for d in service.dests):
                raise EngineError("EOPNOTSUPP", f"service {spec.key}: only FULLNAT destinations get a PROXY header")
            if any(_ops_refuses(spec, _method(d)) for d in service.dests):
                raise EngineError("EOPNOTSUPP", f"service {spec.key}: one-packet scheduling (-o) keeps no entry, "
                                                "and its FULLNAT destinations need one")
            if scheduler is not service.scheduler:
                # The old scheduler's state goes, the new one's starts (rr: at the head); the same
                # scheduler keeps its state. The new state is built first (lb_sched_switch), so a
                # scheduler that refuses the list (mh: more destinations than table entries)
                # leaves the service as it was.
                old_data = service.sched_data
                try:
                    scheduler.init_service(service)
                finally:
                    new_data, service.sched_data = service.sched_data, old_data
                service.scheduler.done_service(service)
                service.sched_data = new_data
                service.scheduler = scheduler
            service.spec = spec
            service.netmask = socket.inet_aton(spec.netmask)

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
            if revived is not None and not revived.referenced:
                revived = None  # its last reference went (a scheduler's): C has freed it
            if revived is not None:
                if revived.owner is not service:
                    # The service was deleted and re-created meanwhile: the kernel rebinds the
                    # destination to the new service object and zeroes its stats.
                    revived.stats.zero()
                revived.update_spec(dest, adding=True)
                revived.available = True
                revived.owner = service
                added = revived
            else:
                added = Destination.new(dest_key, dest, service)
            service.dests.insert(0, added)
            service.scheduler.add_dest(service, added, 0)

    def edit_dest(self, key: ServiceKey, dest: DestSpec) -> None:
        with self._lock:
            service = self._service(key)
            self._check_dest_spec(service, dest)
            index = self._dest_index(service, dest.addr, dest.port)
            target = service.dests[index]
            if target.spec.fwd != dest.fwd:
                self._set_fwd_state(target, None)  # a new method needs new forwarding state
            target.update_spec(dest)
            service.scheduler.upd_dest(service, target)

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
            l2hdr = b""
            if fwd_is_valid(fwd):
                assert fwd is not None
                try:
                    l2hdr = l2_header(fwd)
                    socket.inet_aton(fwd.saddr)
                except (ValueError, OSError) as exc:
                    raise EngineError("EINVAL", f"forwarding state for {addr}:{port} in {key}: {exc}") from exc
            target = service.dests[self._dest_index(service, addr, port)]
            self._set_fwd_state(target, fwd if l2hdr else None, l2hdr)

    @staticmethod
    def _set_fwd_state(dest: Destination, fwd: FwdState | None, l2hdr: bytes = b"") -> None:
        dest.fwd = fwd
        dest.l2hdr = l2hdr
        dest.fwd_saddr = socket.inet_aton(fwd.saddr) if fwd is not None else b"\0\0\0\0"

    def add_laddr(self, key: ServiceKey, addr: str) -> None:
        with self._lock:
            service = self._service(key)
            packed = self._laddr_bytes(key, addr)
            if packed in (b"\0\0\0\0", b"\xff\xff\xff\xff"):
                raise EngineError("EINVAL", f"local address {addr} for {key} is not a unicast address")
            if not xmit_fnat.add_laddr(service, packed, self._seed0, self._lport_min, self._lport_max):
                raise EngineError("EEXIST", f"local address {addr} already exists in {key}")

    def del_laddr(self, key: ServiceKey, addr: str) -> None:
        with self._lock:
            service = self._service(key)
            if not xmit_fnat.del_laddr(service, self._laddr_bytes(key, addr)):  # its connections keep it
                raise EngineError("ENOENT", f"no local address {addr} in {key}")

    @staticmethod
    def _laddr_bytes(key: ServiceKey, addr: str) -> bytes:
        try:
            return socket.inet_aton(addr)
        except OSError:
            raise EngineError("EINVAL", f"local address {addr!r} for {key} is not an IPv4 address") from None

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

    def set_local_addrs(self, addrs: Sequence[str]) -> None:
        """The director's own addresses: a new connection from one is a martian (LOCAL_SRC)."""
        packed = frozenset(socket.inet_aton(a) for a in addrs)
        with self._lock:
            self._host_addrs = packed

    def get_timeouts(self) -> tuple[int, int, int]:
        with self._lock:
            t = self._timeouts_ms
            return t[_ESTABLISHED] // 1000, t[_FIN_WAIT] // 1000, t[_UDP] // 1000

    def _checked_service_spec(self, spec: ServiceSpec) -> Scheduler:
        if spec.persistent is not None and spec.persistent > MAX_TIMEOUT_S:
            raise EngineError("EINVAL", f"service {spec.key}: persistence timeout {spec.persistent} s > {MAX_TIMEOUT_S}")
        if spec.synproxy and spec.key.proto != PROTO_TCP:
            raise EngineError("EINVAL", f"service {spec.key}: SYN-proxy is a TCP feature")
        if spec.proxy_protocol is not None and spec.key.proto != PROTO_TCP:
            raise EngineError("EINVAL", f"service {spec.key}: the PROXY protocol is for TCP services only")
        if spec.proxy_protocol is not None and spec.toa:
            raise EngineError("EINVAL", f"service {spec.key}: TOA and the PROXY protocol both carry the client's "
                                        "address: choose one")
        try:
            return find_scheduler(spec.sched)
        except KeyError as exc:
            raise EngineError("ENOENT", f"service {spec.key}: {exc.args[0]}") from None

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
        where = f"destination {dest.addr}:{dest.port} in {service.spec.key}"
        if not 0 <= dest.weight <= C.LB_DEST_WEIGHT_MAX:
            raise EngineError("EINVAL", f"{where}: weight {dest.weight} out of range 0..{C.LB_DEST_WEIGHT_MAX}")
        method = find_method(dest.fwd)
        if method is None:
            raise EngineError(
                "EOPNOTSUPP",
                f"{where}: forwarding method {dest.fwd!r} is not implemented (supported: {', '.join(sorted(methods()))})",
            )
        if dest.l_threshold > dest.u_threshold:
            raise EngineError("EINVAL", f"{where}: lower threshold {dest.l_threshold} is higher than upper threshold "
                                        f"{dest.u_threshold}")
        if service.spec.synproxy and not method.synproxy_ok:
            raise EngineError("EOPNOTSUPP", f"{where}: a SYN-proxy service takes FULLNAT destinations only")
        if service.spec.proxy_protocol is not None and not method.synproxy_ok:
            raise EngineError("EOPNOTSUPP", f"{where}: a PROXY protocol service takes FULLNAT destinations only")
        if _ops_refuses(service.spec, method):
            raise EngineError("EOPNOTSUPP", f"{where}: a one-packet UDP service (-o) keeps no entry to translate "
                                            "replies with")
        if service.spec.key.port == 0 and method.sees_replies:
            raise EngineError("EOPNOTSUPP", f"{where}: a port-zero service forwards to the client's port; FULLNAT "
                                            "needs a fixed real-server port")

    def _unlink_dest(self, service: Service, index: int, tell_scheduler: bool = True) -> None:
        dest = service.dests.pop(index)
        if tell_scheduler:
            service.scheduler.del_dest(service, dest, index)
        dest.available = False
        if dest.referenced:
            self._trash[dest.key] = dest  # its entries stay; their packets are dropped

    def _unlink_service(self, service: Service) -> None:
        """As __ip_vs_del_service: the scheduler goes first, then the destinations (without del_dest),
        then each method's per-service state (FULLNAT's pool; connections keep their addresses)."""
        service.scheduler.done_service(service)
        while service.dests:
            self._unlink_dest(service, len(service.dests) - 1, tell_scheduler=False)
        for method in methods().values():
            method.svc_done(service)
        del self._services[service.key]
        if service.key[0] != FWMARK_PROTO:
            self._vips[service.key[1]] -= 1
            if not self._vips[service.key[1]]:
                del self._vips[service.key[1]]

    # ---- observation -------------------------------------------------------------

    def services(self) -> list[ServiceInfo]:
        with self._lock:
            return [_service_info(service) for service in self._services.values()]

    def changed_services(self) -> list[ServiceKey]:
        """The services whose counters moved since the last call, each once (lb_svc_list_changed)."""
        with self._lock:
            out = []
            for service in self._services.values():
                now = _stats(service.stats)
                if now != service.stats_seen:
                    service.stats_seen = now
                    out.append(service.spec.key)
            return out

    def service(self, key: ServiceKey) -> ServiceInfo:
        """One service (O(1)); EngineError ESRCH when there is none."""
        with self._lock:
            return _service_info(self._service(key))

    def dest_flags(self, key: ServiceKey) -> dict[tuple[str, int], int]:
        """LB_DEST_F_* flags per destination (availability, overload, forwarding state valid)."""
        with self._lock:
            service = self._service(key)
            return {
                (socket.inet_ntoa(d.addr), d.port): DEST_F_AVAILABLE | (DEST_F_OVERLOAD if d.overloaded else 0)
                | (DEST_F_FWD_VALID if d.fwd is not None else 0)
                for d in service.dests
            }

    def connections(self, now_ms: int) -> list[ConnInfo]:
        """Live entries at now_ms, templates included (client port 0, state NONE or ASSURED), as
        ipvsadm -Lnc. Nothing is released here: that is expire's job."""
        with self._lock:
            result = []
            for conn in self._conns:
                if conn.expires_at_ms <= now_ms:
                    continue
                dest = conn.dest
                laddr, lport = (b"\0\0\0\0", 0) if conn.is_template else conn.xmit.listing_laddr(conn)
                result.append(
                    ConnInfo(
                        proto=conn.proto,
                        caddr=socket.inet_ntoa(conn.caddr),
                        cport=conn.cport,
                        vaddr=socket.inet_ntoa(conn.vaddr),
                        vport=conn.vport,
                        daddr=socket.inet_ntoa(dest.addr),
                        # a port-zero service: the real server's port is the client's; templates: 0
                        dport=dest.port if dest.port and (dest.owner.spec.key.port or
                                                          dest.owner.spec.persistent is None) else
                        (0 if conn.is_template else conn.vport),
                        state=TEMPLATE_ASSURED if conn.assured else ConnState(conn.state).name,
                        expires_ms=conn.expires_at_ms - now_ms,
                        laddr=socket.inet_ntoa(laddr),
                        lport=lport,
                    )
                )
            return result

    def dump_connections_raw(self, now_ms: int, reset_changes: bool = False) -> bytes | None:
        """None: the restart snapshot's records are the C core's struct lb_conn_info, which this
        engine does not produce (lbd --engine python saves and restores the configuration only)."""
        return None

    def dump_connections_chunks(self, now_ms: int, reset_changes: bool = False) -> Iterator[bytes] | None:
        """None, as dump_connections_raw."""
        return None

    def dump_changes_raw(self, now_ms: int) -> bytes | None:
        """None, as dump_connections_raw."""
        return None

    def restore_connections_raw(self, blob: bytes, now_ms: int) -> dict[str, int]:
        raise EngineError("EOPNOTSUPP", "the Python engine cannot restore a C connection dump")

    def count_xmit_failed(self, reason: Reason) -> None:
        """lb_count_xmit_failed: the packet counted under `reason` could not be sent."""
        with self._lock:
            if self._reason_counts[reason]:
                self._reason_counts[reason] -= 1
            self._reason_counts[Reason.XMIT_FAILED] += 1

    def counters(self) -> dict[str, int]:
        """Packets per reason since the engine started, keyed by reason name in lower case."""
        with self._lock:
            return {reason.name.lower(): self._reason_counts[reason] for reason in Reason}

    def conn_count(self) -> int:
        with self._lock:
            return len(self._conns)

    def conn_max(self) -> int:
        """Connection table size: entries beyond it are refused (reason table_full) unless early drop
        makes room."""
        return self._conns.max_entries

    def conn_stats(self) -> dict[str, int]:
        """The table's figures, as C's lb_conn_stats: entries, max, buckets, droppable, early_drops."""
        with self._lock:
            table = self._conns
            return {"entries": len(table), "max": table.max_entries, "buckets": self._hash_buckets,
                    "droppable": table.droppable_count(), "early_drops": table.early_drops}

    def table_size(self) -> int:
        return self._hash_buckets

    # ---- packet source -------------------------------------------------------------

    def start(self, queue_num: int, fail_open: bool = False, qdisc_bypass: bool = False, *,
              queues: Sequence[int] | None = None, cpus: Sequence[int | None] | None = None,
              gso_mtu: int | None = None, queue_maxlen: int | None = None) -> None:
        """Serve NFQUEUE `queue_num` from a thread (lbd --engine python): one queue, no GSO."""
        from lb.pyengine.nfq import NfqAdapter

        if self._nfq is not None:
            raise RuntimeError("NFQUEUE adapter already running")
        if fail_open:
            raise OSError(errno.EOPNOTSUPP, "the Python NFQUEUE adapter cannot set fail-open (netfilterqueue)")
        if queues is not None and list(queues) != [queue_num]:
            raise OSError(errno.EOPNOTSUPP, "the Python NFQUEUE adapter serves one queue (no --queue-balance)")
        if gso_mtu is not None:
            raise OSError(errno.EOPNOTSUPP, "the Python NFQUEUE adapter cannot take GSO packets (no --gso)")
        if cpus is not None and any(c is not None for c in cpus):
            raise OSError(errno.EOPNOTSUPP, "the Python NFQUEUE adapter does not pin its thread (no --queue-cpus)")
        adapter = NfqAdapter(self, qdisc_bypass=qdisc_bypass, queue_maxlen=queue_maxlen)
        adapter.start(queue_num)
        self._nfq = adapter

    def stop(self) -> None:
        if self._nfq is not None:
            self._nfq.stop()
            self._nfq = None

    def nfq_stats(self) -> dict[str, int]:
        if self._nfq is None:
            return {}
        return self._nfq.stats_dict()

    def nfq_queue_stats(self) -> list[dict[str, int]]:
        """Per queue, as CEngine's: this adapter serves one queue."""
        return [self._nfq.stats_dict()] if self._nfq is not None else []


assert PROTO_TCP == IPPROTO_TCP
assert set(FWD_IDS) >= set(methods())


def _service_info(service: Any) -> ServiceInfo:
    return ServiceInfo(
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
        laddrs=[LaddrInfo(socket.inet_ntoa(la.addr), la.conns) for la in xmit_fnat.laddr_list(service)],
    )
