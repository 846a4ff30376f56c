"""The common model: a virtual service with its destination list, driven as ip_vs_ctl.c does.

What matters most and is easy to get wrong:

- List order. __ip_vs_update_dest() links a new destination with list_add_rcu(), i.e. at the
  HEAD: Service.destinations[0] is the most recently added destination, and every scheduler
  walks the list from there. Editing (-e) does not move a destination. `ipvsadm -Ln` sorts its
  output; `ipvsadm -Ln --nosort` shows the kernel's list order.
- Weight and last_weight. Any add sets last_weight; an edit sets it only to a non-zero weight
  (so last_weight is "the latest non-zero weight"). Only mh reads last_weight.
- Trash. A deleted destination goes to the netns's trash with its counters, flags, thresholds
  and last_weight; adding the same address:port to the same service again takes it back from
  the trash (ip_vs_trash_get_dest) instead of making a new one. Connections still bound to it
  keep counting on it meanwhile. The kernel frees a trash entry once nothing references it and
  it has been idle for a while (ip_vs_dest_trash_expire, 60-180 s): Service.expire_trash() is
  the test's way to say "that time has passed".
- Overload. Dest.update_overload() is __ip_vs_dest_update_overload(), run only at three points:
  a threshold change on add/edit (mode 0), a new connection bringing totalconns to exactly the
  upper threshold (mode +1), and an expiring connection leaving totalconns one below the lower
  threshold value (mode -1). See conn.py for the connection side.
"""

from __future__ import annotations

import heapq
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from .conn import IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP, Connection, TcpEvent, tcp_next_state
from .flags import IP_VS_DEST_F_OVERLOAD, IP_VS_SVC_F_ONEPACKET
from .hashing import IPAddress
from .kernel_config import HZ
from .sched_base import Scheduler, s32

INT_MAX: Final = 0x7FFFFFFF


class IpvsError(Exception):
    """A refusal of the kernel's control path, by errno name (ERANGE, EINVAL, EEXIST, ENOENT)."""

    def __init__(self, errno_name: str, reason: str) -> None:
        super().__init__(f"{errno_name}: {reason}")
        self.errno_name = errno_name
        self.reason = reason


def as_address(value: str | IPAddress) -> IPAddress:
    return value if isinstance(value, (ipaddress.IPv4Address, ipaddress.IPv6Address)) else ipaddress.ip_address(value)


@dataclass(frozen=True)
class PacketInfo:
    """What a scheduler may look at in the packet that opens a connection."""

    saddr: IPAddress
    daddr: IPAddress
    sport: int
    dport: int
    protocol: int = IPPROTO_TCP

    @classmethod
    def of(cls, saddr: str | IPAddress, daddr: str | IPAddress, sport: int, dport: int,
           protocol: int = IPPROTO_TCP) -> PacketInfo:
        return cls(as_address(saddr), as_address(daddr), sport, dport, protocol)


@dataclass(eq=False)
class Dest:
    """struct ip_vs_dest, the fields schedulers and the overload logic use. Identity matters
    (a destination back from the trash is the same object); compare with `is`."""

    addr: IPAddress
    port: int
    weight: int = 0
    last_weight: int = 0
    u_threshold: int = 0
    l_threshold: int = 0
    l_threshold_val: int = 0  # the lower threshold in force: l_threshold, or u - u/4
    activeconns: int = 0
    totalconns: int = 0  # 6.1.187+: all connections; inactconns is derived
    flags: int = 0  # IP_VS_DEST_F_OVERLOAD
    available: bool = False  # IP_VS_DEST_CF_AVAILABLE: linked in its service's list
    refconns: int = 0  # live connections bound to it (keeps it in the trash)
    unlinked_next: Dest | None = field(default=None, repr=False)  # list successor at unlink

    @property
    def family(self) -> int:
        return self.addr.version

    @property
    def inactconns(self) -> int:
        """ip_vs_dest_inactconns(): max(totalconns - activeconns, 0), what -L shows."""
        return max(self.totalconns - self.activeconns, 0)

    @property
    def overloaded(self) -> bool:
        return bool(self.flags & IP_VS_DEST_F_OVERLOAD)

    @property
    def conn_overhead(self) -> int:
        """ip_vs_dest_conn_overhead() in 6.1.192: (activeconns << 8) + totalconns, an int.
        Since totalconns includes the active ones this is 257*active + inactive."""
        return s32((self.activeconns << 8) + self.totalconns)

    def update_overload(self, mode: int) -> None:
        """__ip_vs_dest_update_overload(): with an upper threshold u and lower value l, set the
        flag when totalconns >= u (>= l for mode +1), keep it as it is while l <= totalconns
        (mode 0 only), clear it otherwise; no upper threshold clears it."""
        u = self.u_threshold
        if not u:
            self.flags &= ~IP_VS_DEST_F_OVERLOAD
            return
        lower = self.l_threshold_val
        conns = self.totalconns
        if conns >= (lower if mode > 0 else u):
            self.flags |= IP_VS_DEST_F_OVERLOAD
            return
        if conns >= (u if mode < 0 else lower):
            return
        self.flags &= ~IP_VS_DEST_F_OVERLOAD


class Clock:
    """jiffies and kernel timers (lblc/lblcr's periodic garbage collection). Timers fire in due
    order when the test advances the clock; a callback sees `jiffies` equal to its due time."""

    def __init__(self, hz: int = HZ, start: int = 0) -> None:
        self.hz = hz
        self.jiffies = start
        self._timers: list[tuple[int, int, Callable[[], None]]] = []
        self._seq = 0
        self._cancelled: set[int] = set()

    def add_timer(self, due: int, callback: Callable[[], None]) -> int:
        self._seq += 1
        heapq.heappush(self._timers, (due, self._seq, callback))
        return self._seq

    def cancel(self, handle: int) -> None:
        self._cancelled.add(handle)

    def advance(self, seconds: float = 0.0, jiffies: int = 0) -> None:
        target = self.jiffies + jiffies + round(seconds * self.hz)
        while self._timers and self._timers[0][0] <= target:
            due, seq, callback = heapq.heappop(self._timers)
            if seq in self._cancelled:
                self._cancelled.discard(seq)
                continue
            self.jiffies = due
            callback()
        self.jiffies = target


SchedulerFactory = Callable[[], Scheduler]


class Service:
    """A virtual service: its flags, destination list (kernel order), trash and scheduler.

    `scheduler` is a scheduler name ("wrr", ...) or an instance (to pass options, e.g.
    TwosScheduler(rng=...)). `family` is the service's address family (4 or 6), which decides
    how sh/dh/mh/lblc/lblcr fold addresses.
    """

    def __init__(
        self,
        scheduler: str | Scheduler = "wlc",
        *,
        family: int = 4,
        protocol: int = IPPROTO_TCP,
        port: int = 80,
        flags: int = 0,
        clock: Clock | None = None,
    ) -> None:
        self.family = family
        self.protocol = protocol
        self.port = port
        self.flags = flags
        self.clock = clock if clock is not None else Clock()
        self.destinations: list[Dest] = []
        self.trash: list[Dest] = []
        self.scheduler = _instantiate(scheduler)
        self.scheduler.init_service(self)

    # -- control path (ip_vs_ctl.c) ---------------------------------------------------------

    def find_dest(self, addr: str | IPAddress, port: int) -> Dest | None:
        address = as_address(addr)
        for dest in self.destinations:
            if dest.addr == address and dest.port == port:
                return dest
        return None

    def add_dest(self, addr: str | IPAddress, port: int | None = None, weight: int = 1,
                 u_threshold: int = 0, l_threshold: int = 0) -> Dest:
        """ip_vs_add_dest(); port None means the service's port (ipvsadm's default)."""
        dport = self.port if port is None else port
        _check_dest_args(weight, u_threshold, l_threshold)
        address = as_address(addr)
        if self.find_dest(address, dport) is not None:
            raise IpvsError("EEXIST", f"destination {address}:{dport} already exists")
        dest = next((d for d in self.trash if d.addr == address and d.port == dport), None)
        if dest is not None:
            self.trash.remove(dest)
        else:
            dest = Dest(addr=address, port=dport)
        self._update_dest(dest, weight, u_threshold, l_threshold, add=True)
        return dest

    def edit_dest(self, addr: str | IPAddress, port: int | None = None, weight: int = 1,
                  u_threshold: int = 0, l_threshold: int = 0) -> Dest:
        """ip_vs_edit_dest(): ipvsadm -e sends every field (weight defaults to 1)."""
        dport = self.port if port is None else port
        _check_dest_args(weight, u_threshold, l_threshold)
        dest = self.find_dest(addr, dport)
        if dest is None:
            raise IpvsError("ENOENT", f"destination {addr}:{dport} does not exist")
        self._update_dest(dest, weight, u_threshold, l_threshold, add=False)
        return dest

    def del_dest(self, addr: str | IPAddress, port: int | None = None) -> Dest:
        """ip_vs_del_dest(): unlink (remembering the successor, as the unlinked node's `next`
        stays valid for rr's hook), call del_dest, then put the destination in the trash."""
        dport = self.port if port is None else port
        dest = self.find_dest(addr, dport)
        if dest is None:
            raise IpvsError("ENOENT", f"destination {addr}:{dport} does not exist")
        dest.available = False
        index = self.destinations.index(dest)
        dest.unlinked_next = self.destinations[index + 1] if index + 1 < len(self.destinations) else None
        del self.destinations[index]
        self.scheduler.del_dest(self, dest)
        self.trash.insert(0, dest)
        return dest

    def edit_service(self, scheduler: str | Scheduler | None = None, flags: int | None = None) -> None:
        """ip_vs_edit_service(): a *different* scheduler is unbound (done_service) and the new
        one bound (init_service, with the current list); the same scheduler keeps its state.
        Then the flags are replaced (they take effect at the next schedule())."""
        if scheduler is not None:
            new = _instantiate(scheduler)
            if type(new) is not type(self.scheduler):
                self.scheduler.done_service(self)
                new.init_service(self)
                self.scheduler = new
        if flags is not None:
            self.flags = flags

    def expire_trash(self) -> list[Dest]:
        """Free the trash entries nothing references any more (no live connection, no
        scheduler cache entry): what ip_vs_dest_trash_expire() does once they have been idle
        for IP_VS_DEST_TRASH_PERIOD. Returns the freed destinations."""
        freed = [d for d in self.trash if d.refconns == 0 and not self.scheduler.holds(d)]
        self.trash = [d for d in self.trash if d not in freed]
        return freed

    def _update_dest(self, dest: Dest, weight: int, u_threshold: int, l_threshold: int, add: bool) -> None:
        # __ip_vs_update_dest()
        if add or weight != 0:
            dest.last_weight = weight
        dest.weight = weight
        dest.available = True
        if dest.u_threshold != u_threshold or dest.l_threshold != l_threshold:
            dest.u_threshold = u_threshold
            dest.l_threshold = l_threshold
            dest.l_threshold_val = l_threshold or (u_threshold - (u_threshold >> 2))
            dest.update_overload(0)
        if add:
            self.destinations.insert(0, dest)
            self.scheduler.add_dest(self, dest)
        else:
            self.scheduler.upd_dest(self, dest)

    # -- packet path --------------------------------------------------------------------------

    def schedule(self, pkt: PacketInfo) -> Dest | None:
        """The scheduler's choice for a packet that opens a connection (no side effect on the
        counters; use new_flow() for the whole path)."""
        return self.scheduler.schedule(self, pkt)

    def bind_connection(self, dest: Dest, protocol: int | None = None, one_packet: bool = False) -> Connection:
        """ip_vs_bind_dest() for a normal (non-template) connection: inactive, totalconns + 1,
        overload re-evaluated when the new total is exactly the upper threshold."""
        conn = Connection(dest=dest, protocol=self.protocol if protocol is None else protocol,
                          one_packet=one_packet)
        dest.refconns += 1
        dest.totalconns += 1
        if dest.totalconns == dest.u_threshold:
            dest.update_overload(1)
        return conn

    def new_flow(self, pkt: PacketInfo, tcp: TcpEvent | None = "syn") -> Connection | None:
        """ip_vs_schedule() plus the first packet's state transition: schedule, bind, then for
        TCP apply `tcp` (default: a SYN, NONE -> SYN_RECV, active) in the client direction
        (INPUT and INPUT_ONLY agree on every transition from NONE). With -o on a UDP service
        the connection is one-packet: it is expired right after its packet, as
        ip_vs_conn_put() does, so it leaves no count behind. Returns None when the scheduler
        finds no destination."""
        dest = self.schedule(pkt)
        if dest is None:
            return None
        one_packet = bool(self.flags & IP_VS_SVC_F_ONEPACKET) and pkt.protocol == IPPROTO_UDP
        conn = self.bind_connection(dest, pkt.protocol, one_packet=one_packet)
        if pkt.protocol == IPPROTO_TCP:
            conn.set_state(tcp_next_state("INPUT", tcp, conn.state))
        elif pkt.protocol == IPPROTO_SCTP:
            conn.set_state("INIT1")  # the client's INIT; never active before ESTABLISHED
        if one_packet:
            conn.expire()
        return conn

    def open_connections(self, dest: Dest, active: int = 0, inactive: int = 0) -> list[Connection]:
        """Test helper: bind `active` TCP connections moved to ESTABLISHED and `inactive` UDP
        ones to `dest`, through the kernel's own counting path (so OVERLOAD follows)."""
        conns: list[Connection] = []
        for _ in range(active):
            conn = self.bind_connection(dest, IPPROTO_TCP)
            conn.set_state("ESTABLISHED")
            conns.append(conn)
        for _ in range(inactive):
            conns.append(self.bind_connection(dest, IPPROTO_UDP))
        return conns


def _check_dest_args(weight: int, u_threshold: int, l_threshold: int) -> None:
    # The checks ip_vs_add_dest() and ip_vs_edit_dest() make, in their order.
    if weight < 0:
        raise IpvsError("ERANGE", "server weight less than zero")
    if l_threshold > u_threshold:
        raise IpvsError("ERANGE", "lower threshold is higher than upper threshold")
    if u_threshold > INT_MAX:
        raise IpvsError("EINVAL", "upper threshold above INT_MAX")


def _instantiate(scheduler: str | Scheduler) -> Scheduler:
    if isinstance(scheduler, Scheduler):
        return scheduler
    from .registry import make_scheduler  # the registry imports every scheduler module

    return make_scheduler(scheduler)


__all__ = [
    "Clock",
    "Dest",
    "INT_MAX",
    "IPPROTO_SCTP",
    "IPPROTO_TCP",
    "IPPROTO_UDP",
    "IpvsError",
    "PacketInfo",
    "Service",
    "as_address",
]
