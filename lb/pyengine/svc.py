"""The service table and its configuration calls (native/src/svc.c).

One job: services and destinations added, edited and removed with the kernel's checks and error
order (ESRCH, then the parameters, then EEXIST/ENOENT), the trash of deleted destinations,
forwarding state, FULLNAT local addresses, zeroing, timeouts and the director's own addresses.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from typing import Any

from lb import consts as C
from lb.engine import EngineError, FwdState
from lb.model import FWMARK_PROTO, PROTO_TCP, DestSpec, ServiceKey, ServiceSpec, Stats, SynproxyConf
from lb.pyengine import xmit_fnat
from lb.pyengine.conn import Counters, Destination, DestKey
from lb.pyengine.entries import EntryOps, method_of
from lb.pyengine.parse import IPPROTO_UDP
from lb.pyengine.sched import Scheduler, find_scheduler
from lb.pyengine.state import ESTABLISHED, FIN_WAIT, UDP
from lb.pyengine.xmit import XmitMethod, find_method, fwd_is_valid, l2_header, methods

MAX_TIMEOUT_S = 0xFFFFFFFF // 1000  # timeouts are kept in 32-bit milliseconds (as the C core)

# (proto, virtual addr (4 bytes), virtual port)
SvcKey = tuple[int, bytes, int]


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


def svc_key(key: ServiceKey) -> SvcKey:
    return (key.proto, socket.inet_aton(key.addr), key.port)


def service_of(dest: Destination) -> Service | None:
    """The service a destination is in (None once deleted)."""
    owner = dest.owner
    return owner if dest.available and isinstance(owner, Service) else None


def toa_wanted(dest: Destination) -> bool:
    service = service_of(dest)
    return service is not None and service.spec.toa


def ops_refuses(spec: ServiceSpec, method: XmitMethod) -> bool:
    """svc.c's ops_refuses: a method whose replies are addressed to the director (FULLNAT) cannot
    serve a one-packet UDP service, which keeps no entry. NAT can: its replies pass untranslated,
    as the kernel's. (-o on TCP is stored and changes nothing.)"""
    return spec.ops and spec.key.proto == IPPROTO_UDP and method.needs_entry


class ServiceTable(EntryOps):
    """PyEngine's configuration calls (see the module docstring)."""

    def add_service(self, spec: ServiceSpec) -> None:
        with self._lock:
            key = svc_key(spec.key)
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
            if spec.synproxy and not all(method_of(d).synproxy_ok for d in service.dests):
                raise EngineError("EOPNOTSUPP", f"service {spec.key}: only FULLNAT destinations can be SYN-proxied")
            if spec.proxy_protocol is not None and not all(method_of(d).synproxy_ok for d in service.dests):
                raise EngineError("EOPNOTSUPP", f"service {spec.key}: only FULLNAT destinations get a PROXY header")
            if any(ops_refuses(spec, method_of(d)) for d in service.dests):
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
            for state, value in ((ESTABLISHED, tcp_s), (FIN_WAIT, tcpfin_s), (UDP, udp_s)):
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
            return t[ESTABLISHED] // 1000, t[FIN_WAIT] // 1000, t[UDP] // 1000

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
        service = self._services.get(svc_key(key))
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
        if ops_refuses(service.spec, method):
            raise EngineError("EOPNOTSUPP", f"{where}: a one-packet UDP service (-o) keeps no entry to translate "
                                            "replies with")

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
