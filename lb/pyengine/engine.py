"""PyEngine: the pure-Python executable specification of docs/fastpath.md.

The C core (lb.fastpath.CEngine) must agree with it packet for packet; the public
methods are CEngine's, one for one. Time is only ever the caller's `now_ms`; the
engine never reads a clock.

Layout (one part a C file, each a mixin over the shared tables of lb/pyengine/state.py):
this module is the packet path (native/src/core.c lb_process_pkt: parse, lookup, the director's
own ICMP, held packets, timers) and the packet source; entries.py the entry lifecycle (conn.c);
svc.py the service table and configuration calls (svc.c); schedule.py scheduling new connections
(core.c); synproxy_path.py SYN-proxy and PROXY protocol glue (synproxy.c, proxyproto.c);
listing.py the listings and counters.

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
import threading
from collections.abc import Sequence
from dataclasses import replace

from lb import consts as C
from lb.engine import FWD_IDS, Action, EngineError, Reason, Verdict
from lb.model import FWMARK_PROTO, PROTO_TCP
from lb.pyengine import proxyproto as px
from lb.pyengine import synproxy as sp
from lb.pyengine.conn import DIR_IN, DIR_OUT, Connection, ConnectionTable, ConnKey, Destination
from lb.pyengine.csum import internet_checksum
from lb.pyengine.entries import assure_template
from lb.pyengine.frag import fit_path_mtu
from lb.pyengine.icmp import related_connection_key
from lb.pyengine.l2q import HeldPackets
from lb.pyengine.listing import Listing
from lb.pyengine.parse import IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, TCP_RST, TCP_SYN, ParsedPacket, Rejection, parse_packet
from lb.pyengine.proto_tcp import REUSABLE_STATES, TCP_STATES, TCP_TIMEOUTS_MS, UDP_TIMEOUT_MS, is_new_conn, is_plain_syn
from lb.pyengine.schedule import BindContextImpl
from lb.pyengine.state import ESTABLISHED, NO_CONN, SYN_RECV, UDP
from lb.pyengine.xmit import methods

DEFAULT_CONN_MAX = C.LB_DEFAULT_CONN_MAX  # entries
HASH_BUCKETS_MIN = C.LB_HASH_BUCKETS_MIN  # table_size() reports the C core's bucket count; Python uses dicts
M64 = (1 << 64) - 1


def default_hash_buckets(conn_max: int) -> int:
    """The C core's bucket count when lb_config leaves it 0: the next power of two >= conn_max, at
    least LB_HASH_BUCKETS_MIN (native/src/conn.c)."""
    buckets = HASH_BUCKETS_MIN
    while buckets < conn_max:
        buckets <<= 1
    return buckets


SEED1_MUL = 0xD6E8FEB86659FD93  # seed1 = seed0 * SEED1_MUL + 1 (native/src/conn.c)

_NO_SERVICE = Action(Verdict.ACCEPT, Reason.NO_SERVICE)
_DEST_UNAVAILABLE = Action(Verdict.DROP, Reason.DEST_UNAVAILABLE)
_ICMP_FORWARD_TTL_DROP = Action(Verdict.DROP, Reason.TTL_EXCEEDED)
_HELD_FIRST = Action(Verdict.DROP, Reason.NO_L2)  # the destination's held packets have not all left yet
_ICMP_UNRELATED = Action(Verdict.ACCEPT, Reason.NOT_LB_PROTO)
_ICMP_BAD_CSUM = Action(Verdict.DROP, Reason.BAD_CSUM)
_MARTIAN_SRC = Action(Verdict.DROP, Reason.MARTIAN_SRC)
_LOCAL_SRC = Action(Verdict.DROP, Reason.LOCAL_SRC)
_L2_QUEUED = Action(Verdict.DROP, Reason.L2_QUEUED)


def is_martian_source(saddr: bytes) -> bool:
    """A source the kernel's routing drops whatever its tables say (ip_route_input_slow): 0.0.0.0/8,
    127.0.0.0/8, multicast 224.0.0.0/4, the limited broadcast 255.255.255.255 (class E is routed)."""
    first = saddr[0]
    return first in (0, 127) or 224 <= first < 240 or saddr == b"\xff\xff\xff\xff"


class PyEngine(Listing):
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
        self._services = {}  # insertion order = listing order
        # The director's own addresses (native/src/local.c): the control plane's set, and the
        # services' virtual addresses, counted per service (fwmark services have none).
        self._host_addrs = frozenset()
        self._vips = collections.Counter()
        self._trash = {}
        self._conns = ConnectionTable(conn_max)
        self._bind_ctx = BindContextImpl(self._conns, lport_min, lport_max)
        self._timeouts_ms: list[int] = [TCP_TIMEOUTS_MS[s] for s in TCP_STATES] + [UDP_TIMEOUT_MS]
        assert len(self._timeouts_ms) == UDP + 1
        self._reason_counts = [0] * len(Reason)
        self._cookies = sp.Cookies(sp_key)
        self._sp_default = sp.BUILTIN_CONF
        self._sp_stats = dict.fromkeys(sp.STAT_NAMES, 0)
        self._sp_timers = sp.TimerHeap()
        self._held = HeldPackets()  # packets waiting for their destination's forwarding state
        self._nfq = None

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
            if packet[8] <= 1 and conn.xmit.forwards_replies:
                return conn.xmit.xmit_out(conn, packet, parsed)  # ip_forward's TTL check precedes ip_vs_out
            if proto == IPPROTO_TCP:
                self._tcp_transition(conn, DIR_OUT, flags)
            else:
                assure_template(conn)  # UDP: a reply assures the template (udp_state_transition)
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
                return NO_CONN  # tcp_conn_schedule never schedules those
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
            if old_state == SYN_RECV:
                if is_plain_syn(flags) and parsed.tcp_seq == conn.syn_seq:
                    dest.syn_retrans += 1  # the client is still waiting for the server's SYN+ACK
                elif conn.state == ESTABLISHED:
                    dest.handshakes += 1
        self._refresh(conn, now_ms)
        self._count_in(dest, parsed.total_length)
        queued = bool(self._held.queues) and self._held.holds(dest)  # held packets of dest go first: join them
        action = _HELD_FIRST if queued else conn.xmit.xmit_in(conn, packet, parsed)
        if (action.reason == Reason.NO_L2 and (dest.fwd is None or queued)
                and self._held.hold(dest, packet[:parsed.total_length], now_ms, self._count_held_drop)):
            return _L2_QUEUED  # the timers send it once the destination is resolved (lb/pyengine/l2q.py)
        return self._xmit_in_finish(conn, packet, parsed, action)

    def _send_held(self, dest: Destination, packet: bytes) -> Action | None:
        """A held packet leaves as the packet path would have sent it (native/src/l2q.c send_one): its
        connection's method, then the PROXY header (or the shift past it) and the path-MTU check; None
        when it cannot."""
        parsed = parse_packet(packet)
        if isinstance(parsed, Rejection):
            return None
        hit = self._conns.lookup((parsed.proto, parsed.saddr, parsed.sport, parsed.daddr, parsed.dport))
        if hit is None or hit[1] != DIR_IN or hit[0].dest is not dest or hit[0].sp is not None:
            return None
        action = self._xmit_in_finish(hit[0], packet, parsed, hit[0].xmit.xmit_in(hit[0], packet, parsed))
        if action.verdict == Verdict.DROP:
            return None
        if not action.out:  # sent unchanged (DR): a timer action has no original, so it carries the bytes
            return replace(action, out=packet)
        return action

    def _xmit_in_finish(self, conn: Connection, packet: bytes, parsed: ParsedPacket, action: Action) -> Action:
        """What follows the method's xmit_in for a client's packet, held or not (lb_xmit.h lb_xmit_in_finish)."""
        if conn.px is not None:
            action = self._px_in(conn, conn.px, action, parsed)  # the PROXY header, or the shift past it
        return fit_path_mtu(action, conn.dest, packet, parsed)

    def _count_held_drop(self) -> None:
        self._reason_counts[Reason.NO_L2] += 1

    def _icmp(self, packet: bytes, parsed: ParsedPacket) -> Action:
        """An ICMP error about one of our connections (docs/fastpath.md "ICMP"; ip_vs_in_icmp): the
        connection's method passes it on. The entry's state and timer are untouched; the destination's
        availability is not checked.
        """
        key = related_connection_key(packet, parsed.ip_header_len, parsed.total_length)
        hit = None if key is None else self._conns.lookup(key)
        if hit is None:
            return _ICMP_UNRELATED
        if packet[8] <= 1 and hit[1] == DIR_OUT and hit[0].xmit.forwards_replies:
            return _ICMP_FORWARD_TTL_DROP  # dies in ip_forward, before ip_vs_out_icmp: not counted
        if internet_checksum(packet[parsed.ip_header_len : parsed.total_length]) != 0:
            return _ICMP_BAD_CSUM
        conn, direction = hit
        if direction == DIR_OUT:
            self._count_out(conn.dest, parsed.total_length)
            return conn.xmit.icmp_out(conn, packet, parsed)
        self._count_in(conn.dest, parsed.total_length)
        return conn.xmit.icmp_in(conn, packet, parsed)

    def timers(self, now_ms: int) -> list[Action]:
        """Run due SYN-proxy timers: SYN retransmissions to real servers (XMIT_L2) and give-ups
        (ANSWER: a RST to the client). Dead entries are released first, as for packets."""
        with self._lock:
            self._expire(now_ms)
            actions = self._held.drain(now_ms, self._send_held, self._count_held_drop)
            self._sp_run_timers(now_ms, actions)
            return actions

    def timer_due(self) -> int | None:
        """When the next SYN-proxy timer is due (None: none pending); the NFQUEUE adapter polls by it."""
        with self._lock:
            dues = [d for d in (self._sp_timers.due(), self._held.due()) if d is not None]
            return min(dues) if dues else None

    def expire(self, now_ms: int) -> int:
        """Release every entry dead at now_ms, then run the schedulers' periodic work (lb_expire);
        returns how many entries were released."""
        with self._lock:
            released = self._expire(now_ms)
            for service in list(self._services.values()):
                service.scheduler.tick(service, now_ms)
            return released

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

    def nfq_overload_fds(self) -> list[int]:
        return []  # its adapter reads one packet at a time: the guard polls (lb/overload.py)

    def start_natrx(self, ifindex: int, mark_queue: int, qdisc_bypass: bool = False, cpu: int | None = None) -> None:
        raise EngineError("EOPNOTSUPP", "--nat-replies ingress needs the C engine (its reader is native/src/natrx.c)")

    def stop_natrx(self) -> None:
        pass

    def natrx_stats(self) -> dict[str, int]:
        return {}

    def nfq_queue_stats(self) -> list[dict[str, int]]:
        """Per queue, as CEngine's: this adapter serves one queue."""
        return [self._nfq.stats_dict()] if self._nfq is not None else []


assert PROTO_TCP == IPPROTO_TCP
assert set(FWD_IDS) >= set(methods())
