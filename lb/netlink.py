"""Per-destination forwarding state from the kernel's own tables (pyroute2), never guessed.

`resolve_fwd(ipr, daddr)` asks the kernel what it would do with a packet to `daddr`:

1. `ip route get DADDR` (RTM_GETROUTE): the full output lookup, so policy rules, `src` hints,
   multipath choice and learned path MTUs all apply. Gives the output interface, the gateway
   (the next hop; on-link destinations are their own next hop), RTA_PREFSRC (the source address
   the kernel would use) and RTAX_MTU when the route or a PMTU exception sets one.
2. RTM_GETLINK on the output interface: its MAC (our source MAC), its MTU, whether it is up.
3. RTM_GETNEIGH for (next hop, interface): the MAC is trusted only in REACHABLE, STALE, DELAY,
   PROBE, PERMANENT or NOARP. Otherwise nothing is returned but a reason, and - the kernel's own
   way - the entry is "used" (RTM_NEWNEIGH with NTF_USE, like `ip neigh replace A dev D use`), so
   the kernel sends the ARP requests itself and keeps its retry/failure bookkeeping. STALE entries
   are used as well (the kernel then re-confirms them through DELAY/PROBE): lbd's DR frames leave
   on an AF_PACKET socket the neighbour code never sees, so without this a STALE MAC would never
   be re-checked. We never send a packet ourselves.

The result is complete or it is a reason; there is no partly filled state.

Threading/asyncio: pyroute2 0.9's synchronous IPRoute drives its own private asyncio loop with
run_until_complete(), so it cannot be called from a thread whose event loop is running, and its
AsyncIPRoute cannot run on uvloop at all ("cannot open a UDP handle, invalid family 16": uvloop
refuses AF_NETLINK datagram endpoints). Hence:
- `Resolver` runs resolve_fwd in one dedicated worker thread owning one IPRoute bound to a plain
  SelectorEventLoop (never the loop policy's, which may be uvloop's);
- lb.netmonitor's `NetlinkMonitor` uses pyroute2's threadless IPRSocket, bound to the multicast
  groups, and reads it with loop.add_reader(), which works on any loop including uvloop.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

log = logging.getLogger(__name__)

# Neighbour states (include/uapi/linux/neighbour.h).
NUD_INCOMPLETE = 0x01
NUD_REACHABLE = 0x02
NUD_STALE = 0x04
NUD_DELAY = 0x08
NUD_PROBE = 0x10
NUD_FAILED = 0x20
NUD_NOARP = 0x40
NUD_PERMANENT = 0x80
NUD_NONE = 0x00
NUD_VALID = NUD_REACHABLE | NUD_STALE | NUD_DELAY | NUD_PROBE | NUD_PERMANENT | NUD_NOARP
_NUD_NAMES = {
    NUD_INCOMPLETE: "INCOMPLETE",
    NUD_REACHABLE: "REACHABLE",
    NUD_STALE: "STALE",
    NUD_DELAY: "DELAY",
    NUD_PROBE: "PROBE",
    NUD_FAILED: "FAILED",
    NUD_NOARP: "NOARP",
    NUD_PERMANENT: "PERMANENT",
}
NTF_USE = 0x01

# Route types (rtm_type) and scopes.
RTN_UNICAST = 1
_RTN_NAMES = {2: "local", 3: "broadcast", 4: "anycast", 5: "multicast", 6: "blackhole",
              7: "unreachable", 8: "prohibit", 9: "throw", 10: "nat", 11: "xresolve"}
RT_SCOPE_LINK = 253
IFF_UP = 0x1
IFA_F_SECONDARY = 0x01
ETH_ALEN = 6

BLOCKING_TIMEOUT_S = 5.0  # Resolver.resolve_blocking: a few netlink round trips take milliseconds


RT_TABLE_LOCAL = 255
RTN_LOCAL = 2
RTN_BROADCAST = 3


def local_addresses(ipr: IPRoute | None = None) -> list[str]:
    """The host's own IPv4 addresses as fib_validate_source sees them: every /32 of the kernel's local
    routing table whose type is local or broadcast (interface addresses, subnet broadcasts). A packet
    arriving from one of them is a martian source."""
    own = ipr is None
    ipr = ipr or IPRoute()
    try:
        found: set[str] = set()
        for msg in ipr.get_routes(family=socket.AF_INET, table=RT_TABLE_LOCAL):
            if msg["type"] in (RTN_LOCAL, RTN_BROADCAST) and msg["dst_len"] == 32:
                dst = msg.get_attr("RTA_DST")
                if dst:
                    found.add(dst)
        return sorted(found, key=lambda a: socket.inet_aton(a))
    finally:
        if own:
            ipr.close()


class NetlinkResolveError(RuntimeError):
    """The kernel refused a query for a reason that is not a fact about the destination."""


def nud_name(state: int) -> str:
    if state == NUD_NONE:
        return "NONE"
    names = [name for bit, name in _NUD_NAMES.items() if state & bit]
    return "|".join(names) if names else f"0x{state:x}"


def mac_bytes(text: str | None) -> bytes | None:
    """'aa:bb:cc:dd:ee:ff' -> 6 bytes; None for anything that is not an Ethernet address."""
    if not text:
        return None
    try:
        raw = bytes(int(part, 16) for part in text.split(":"))
    except ValueError:
        return None
    return raw if len(raw) == ETH_ALEN else None


def _ipv4(text: str) -> str:
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError as exc:
        raise ValueError(f"invalid IPv4 address {text!r}") from exc


@dataclass(frozen=True)
class Fwd:
    """Complete forwarding state: exactly the fields of lb.engine.FwdState (FwdState(**asdict(fwd)))."""

    ifindex: int
    dst_mac: bytes
    src_mac: bytes
    saddr: str
    mtu: int

    def __post_init__(self) -> None:
        if self.ifindex <= 0:
            raise ValueError(f"ifindex {self.ifindex} invalid")
        if len(self.dst_mac) != ETH_ALEN or len(self.src_mac) != ETH_ALEN:
            raise ValueError("MACs must be 6 bytes")
        if not 68 <= self.mtu <= 65535:
            raise ValueError(f"mtu {self.mtu} out of range")
        _ipv4(self.saddr)


@dataclass(frozen=True)
class FwdResult:
    """Either `fwd` (complete) or `reason` (why not), plus what was learned for diagnostics."""

    daddr: str
    fwd: Fwd | None = None
    reason: str | None = None
    ifname: str | None = None
    nexthop: str | None = None
    neigh_state: str | None = None

    def __post_init__(self) -> None:
        if (self.fwd is None) == (self.reason is None):
            raise ValueError("FwdResult needs exactly one of fwd and reason")

    @property
    def ok(self) -> bool:
        return self.fwd is not None


@dataclass(frozen=True)
class _Route:
    oif: int
    nexthop: str
    gateway: str | None
    prefsrc: str | None
    mtu: int | None


@dataclass(frozen=True)
class _Link:
    index: int
    name: str
    mac: bytes | None
    mtu: int
    up: bool


# --------------------------------------------------------------------------- lookups


def _route(ipr: IPRoute, daddr: str) -> _Route | str:
    try:
        msgs = ipr.route("get", dst=daddr)
    except NetlinkError as exc:
        if exc.code in (errno.ENETUNREACH, errno.EHOSTUNREACH):
            return f"no route to {daddr}"
        if exc.code == errno.EACCES:
            return f"no route to {daddr} (prohibited)"
        if exc.code == errno.EINVAL:
            return f"no route to {daddr} (blackhole)"
        raise NetlinkResolveError(f"route get {daddr}: {exc}") from exc
    if not msgs:
        raise NetlinkResolveError(f"route get {daddr}: empty answer")
    msg = msgs[0]
    rtype = msg.get("type")
    if rtype != RTN_UNICAST:
        name = _RTN_NAMES.get(rtype, str(rtype))
        if rtype == 2:
            return f"{daddr} is a local address"
        return f"route to {daddr} is {name}, not unicast"
    if msg.get("RTA_VIA") is not None:
        return f"route to {daddr} has an IPv6 next hop (unsupported)"
    oif = msg.get("RTA_OIF")
    if not oif:
        return f"route to {daddr} has no output interface"
    gateway = msg.get("RTA_GATEWAY")
    return _Route(
        oif=int(oif),
        nexthop=gateway or daddr,
        gateway=gateway,
        prefsrc=msg.get("RTA_PREFSRC"),
        mtu=msg.get(("RTA_METRICS", "RTAX_MTU")) or None,
    )


def _link(ipr: IPRoute, ifindex: int) -> _Link | None:
    try:
        msgs = ipr.link("get", index=ifindex)
    except NetlinkError as exc:
        if exc.code == errno.ENODEV:
            return None
        raise NetlinkResolveError(f"link get {ifindex}: {exc}") from exc
    if not msgs:
        return None
    msg = msgs[0]
    return _Link(
        index=ifindex,
        name=msg.get("IFLA_IFNAME") or f"if{ifindex}",
        mac=mac_bytes(msg.get("IFLA_ADDRESS")),
        mtu=int(msg.get("IFLA_MTU") or 0),
        up=bool(msg.get("flags", 0) & IFF_UP),
    )


def _fallback_source(ipr: IPRoute, route: _Route, link: _Link) -> str | None:
    """The kernel gave no RTA_PREFSRC: pick as inet_select_addr() would, primary addresses only.

    Scope at most link (never host-scoped addresses), preferring the one whose subnet holds the
    next hop, else the first primary address of the interface.
    """
    candidates: list[tuple[str, int]] = []
    for msg in ipr.get_addr(family=socket.AF_INET, index=link.index):
        flags = msg.get("IFA_FLAGS") or msg.get("flags", 0)
        if flags & IFA_F_SECONDARY or msg.get("scope", 0) > RT_SCOPE_LINK:
            continue
        addr = msg.get("IFA_LOCAL") or msg.get("IFA_ADDRESS")
        if addr:
            candidates.append((addr, int(msg.get("prefixlen", 32))))
    nexthop = ipaddress.IPv4Address(route.nexthop)
    for addr, plen in candidates:
        if nexthop in ipaddress.IPv4Network(f"{addr}/{plen}", strict=False):
            return addr
    return candidates[0][0] if candidates else None


def _use_neighbour(ipr: IPRoute, nexthop: str, link: _Link) -> str | None:
    """NTF_USE: have the kernel (re)resolve the entry, creating it if needed. Error text or None.

    Never on PERMANENT/NOARP entries (callers guarantee it): since Linux 5.16 NTF_USE strips
    NUD_PERMANENT. state=NUD_NONE so a newly created entry stays garbage-collectable.
    """
    try:
        ipr.neigh("replace", dst=nexthop, ifindex=link.index, flags=NTF_USE, state=NUD_NONE)
    except NetlinkError as exc:
        log.warning("neighbour %s on %s: resolution request refused: %s", nexthop, link.name, exc)
        return f"resolution request refused: {exc}"
    return None


def _neighbour(ipr: IPRoute, nexthop: str, link: _Link, trigger: bool) -> tuple[bytes | None, str]:
    """(MAC or None, state name). Triggers resolution when the MAC is missing or STALE."""
    try:
        msgs = ipr.neigh("get", dst=nexthop, ifindex=link.index)
    except NetlinkError as exc:
        if exc.code != errno.ENOENT:
            raise NetlinkResolveError(f"neigh get {nexthop} dev {link.name}: {exc}") from exc
        msgs = []
    if not msgs:
        state, mac = None, None
    else:
        state = int(msgs[0].get("state", NUD_NONE))
        mac = mac_bytes(msgs[0].get("NDA_LLADDR"))
    valid = state is not None and bool(state & NUD_VALID)
    if trigger and (not valid or state == NUD_STALE) and state != NUD_INCOMPLETE:
        _use_neighbour(ipr, nexthop, link)
    name = "no entry" if state is None else nud_name(state)
    return (mac if valid else None), name


def _neigh_reason(nexthop: str, link: _Link, state: str, daddr: str) -> str:
    via = "" if nexthop == daddr else f" (next hop to {daddr})"
    if state == "FAILED":
        return f"neighbour {nexthop} on {link.name} FAILED{via}"
    if state in ("REACHABLE", "STALE", "DELAY", "PROBE", "PERMANENT", "NOARP"):
        return f"neighbour {nexthop} on {link.name} is {state} without a link-layer address{via}"
    return f"neighbour {nexthop} on {link.name} unresolved ({state}){via}"


def resolve_fwd(ipr: IPRoute, daddr: str, *, trigger: bool = True, l2: bool = True) -> FwdResult:
    """Complete forwarding state for `daddr`, or the reason there is none.

    `ipr` is a pyroute2 IPRoute in the director's namespace; call from a thread with no running
    event loop (see Resolver). `trigger` asks the kernel to resolve a missing/stale neighbour.
    `l2=False` (IPIP/FULLNAT: the kernel routes the packet and resolves the MAC itself) skips the
    neighbour step and returns all-zero MACs, which such modes never read.
    Raises ValueError for a malformed address, NetlinkResolveError for unexpected kernel errors.
    """
    daddr = _ipv4(daddr)
    route = _route(ipr, daddr)
    if isinstance(route, str):
        return FwdResult(daddr, reason=route)
    link = _link(ipr, route.oif)
    if link is None:
        return FwdResult(daddr, reason=f"output interface {route.oif} for {daddr} vanished", nexthop=route.nexthop)
    info: dict[str, Any] = {"ifname": link.name, "nexthop": route.nexthop}
    if not link.up:
        return FwdResult(daddr, reason=f"interface {link.name} (route to {daddr}) is down", **info)
    saddr = route.prefsrc or _fallback_source(ipr, route, link)
    if saddr is None:
        return FwdResult(daddr, reason=f"no source address on {link.name} for {daddr}", **info)
    mtu = route.mtu or link.mtu
    if l2:
        if link.mac is None:
            return FwdResult(daddr, reason=f"interface {link.name} has no Ethernet address", **info)
        dst_mac, state = _neighbour(ipr, route.nexthop, link, trigger)
        if dst_mac is None:
            return FwdResult(daddr, reason=_neigh_reason(route.nexthop, link, state, daddr), neigh_state=state, **info)
        src_mac = link.mac
    else:
        dst_mac = src_mac = b"\0" * ETH_ALEN
        state = None
    fwd = Fwd(ifindex=link.index, dst_mac=dst_mac, src_mac=src_mac, saddr=saddr, mtu=mtu)
    return FwdResult(daddr, fwd=fwd, neigh_state=state, **info)


def interface_name(ifindex: int, ipr: IPRoute | None = None) -> str | None:
    """Name of an interface: via `ipr` (any namespace) or, without it, in the current namespace."""
    if ipr is None:
        try:
            return socket.if_indextoname(ifindex)
        except OSError:
            return None
    link = _link(ipr, ifindex)
    return link.name if link else None


# --------------------------------------------------------------------------- asyncio: Resolver


class Resolver:
    """resolve_fwd in one worker thread that owns one IPRoute, for asyncio code (uvloop included)
    and for synchronous callers (lbd's Director): the project's one netlink resolver.

    `resolve()` retries a destination until it resolves or `timeout` passes; between attempts the
    kernel does the ARP work that the first attempt requested. `resolve_blocking()` is one attempt
    for a synchronous caller (lbd retries unresolved destinations every second itself). The last
    result per destination is kept for reporting (`last_reason`).
    """

    def __init__(self, *, netns: str | None = None, l2: bool = True) -> None:
        self.netns = netns
        self.l2 = l2
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lb-netlink")
        self._local = threading.local()
        self._last: dict[str, FwdResult] = {}
        self._closed = False

    # runs in the worker thread only
    def _ipr(self) -> IPRoute:
        ipr = getattr(self._local, "ipr", None)
        if ipr is None:
            loop = asyncio.SelectorEventLoop()
            try:
                # flags=0: never create a namespace by accident (pyroute2 defaults to O_CREAT).
                ipr = IPRoute(netns=self.netns, flags=0, groups=0, use_event_loop=loop)
            except Exception:
                loop.close()
                raise
            self._local.loop, self._local.ipr = loop, ipr
        return ipr

    def _close_worker(self) -> None:
        ipr = getattr(self._local, "ipr", None)
        if ipr is not None:
            ipr.close()
            self._local.loop.close()
            self._local.ipr = None

    def resolve_blocking(self, daddr: str, *, timeout_s: float = BLOCKING_TIMEOUT_S) -> FwdResult:
        """One attempt, waited for (at most `timeout_s`: TimeoutError), from synchronous code."""
        if self._closed:
            raise RuntimeError("Resolver is closed")
        future = self._executor.submit(lambda: resolve_fwd(self._ipr(), daddr, l2=self.l2))
        result: FwdResult = future.result(timeout=timeout_s)
        self._last[result.daddr] = result
        return result

    def close_blocking(self, *, timeout_s: float = BLOCKING_TIMEOUT_S) -> None:
        """close() for synchronous code."""
        if self._closed:
            return
        try:
            self._executor.submit(self._close_worker).result(timeout=timeout_s)
        finally:
            self._closed = True
            self._executor.shutdown(wait=True)

    async def _call(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if self._closed:
            raise RuntimeError("Resolver is closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: func(self._ipr(), *args, **kwargs))

    async def resolve_once(self, daddr: str, *, trigger: bool = True) -> FwdResult:
        result: FwdResult = await self._call(resolve_fwd, daddr, trigger=trigger, l2=self.l2)
        self._last[result.daddr] = result
        return result

    async def resolve(self, daddr: str, *, timeout: float = 3.0, interval: float = 0.1) -> FwdResult:
        """Retry until resolved; after `timeout` seconds return the last (failed) result."""
        if interval <= 0 or timeout < 0:
            raise ValueError("interval must be > 0 and timeout >= 0")
        deadline = time.monotonic() + timeout
        max_attempts = int(timeout / interval) + 2  # bound by count as well as by time
        result = await self.resolve_once(daddr)
        for _ in range(max_attempts):
            if result.ok or time.monotonic() >= deadline:
                break
            await asyncio.sleep(min(interval, max(0.0, deadline - time.monotonic())))
            result = await self.resolve_once(daddr)
        if not result.ok:
            log.info("forwarding state for %s unresolved: %s", daddr, result.reason)
        return result

    def last_result(self, daddr: str) -> FwdResult | None:
        return self._last.get(_ipv4(daddr))

    def last_reason(self, daddr: str) -> str | None:
        result = self.last_result(daddr)
        return None if result is None else result.reason

    def forget(self, daddr: str | None = None) -> None:
        """Drop remembered results (all of them without an argument), e.g. on invalidation."""
        if daddr is None:
            self._last.clear()
        else:
            self._last.pop(_ipv4(daddr), None)

    async def interface_name(self, ifindex: int) -> str | None:
        name: str | None = await self._call(lambda ipr, idx: interface_name(idx, ipr), ifindex)
        return name

    async def close(self) -> None:
        if self._closed:
            return
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, self._close_worker)
        finally:
            self._closed = True
            self._executor.shutdown(wait=True)

    async def __aenter__(self) -> Resolver:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
