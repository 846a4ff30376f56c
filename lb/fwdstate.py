"""Per-destination forwarding state: resolving it (route, neighbour, source address through a
Resolver, lb.netlink's in lbd) and installing it into the engine, and what lbd knows about it
for `list` and the logs.

A destination whose state cannot be resolved is installed as invalid (its packets are dropped
and counted as no_l2); lbd retries, and warns once the problem lasts.

Cost (issue 15: thousands of services, idle CPU below 1 % of a core). Resolution depends on the
real server's address only, so it is done once per address and installed into every destination
that has it. A lookup costs milliseconds of pyroute2 work, so:
- a change resolves its new or edited addresses at once when they are few (SYNC_RESOLVE_MAX:
  `lbadm -a` leaves a usable destination, as before); beyond that (a restore, a reload of
  thousands) known results are installed at once and the addresses wait in `pending`, which
  lbd's resolve loop works off a time budget at a time (`resolve_pending`) between requests;
- unresolved addresses are retried with a backoff (RETRY_FIRST_S doubling to RETRY_MAX_S; at
  most RETRY_MAX_PER_S retries a second in all), each retry asking the kernel to resolve the
  neighbour (NTF_USE), as it does when a packet waits; a neighbour that becomes valid meanwhile
  is picked up from its event at once;
- resolved addresses are re-checked periodically (every REFRESH_EVERY_S while there are few,
  at most REFRESH_MAX_PER_S lookups a second when there are many): the re-check uses STALE
  neighbours as traffic would (NTF_USE), so the kernel re-confirms them;
- neighbour events (lb.netmonitor) are targeted: an event about a next hop whose state stays
  valid with the MAC already installed costs nothing; anything else re-resolves exactly the
  addresses behind that next hop. Route, address, link changes re-resolve every address (pending).
Nothing here scans every destination on a timer.
"""

from __future__ import annotations

import heapq
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from lb.engine import Engine, EngineError, FwdState
from lb.model import DestSpec, ServiceKey

log = logging.getLogger("lbd")

UNRESOLVED_WARN_AFTER_S = 3.0
SYNC_RESOLVE_MAX = 8  # distinct addresses a change resolves before it returns; more: in the background
RETRY_FIRST_S = 1.0  # an unresolved address is retried after this, then twice as long each time ...
RETRY_MAX_S = 30.0  # ... up to this
# Resolved addresses are re-checked this often (NTF_USE keeps the kernel's neighbour entry in use:
# lbd's frames never touch it), well inside the kernel's gc_stale_time (60 s) ... A MAC that changes
# meanwhile arrives as a neighbour event at once; this is the safety net, and it is not free: a lookup
# is ~3 pyroute2 round trips (ms on a host, ~0.1 s of CPU in the emulated guest, issue 19), so 30 s
# rather than the 15 s it was.
REFRESH_EVERY_S = 30.0
REFRESH_MAX_PER_S = 1.0  # ... but at most this many lookups a second (a full round takes longer)
RETRY_MAX_PER_S = 20.0  # retries of unresolved addresses, all of them together
LOG_EACH_MAX = 20  # per resolution round, more destination lines than this become one summary

DestKey = tuple[ServiceKey, str, int]  # a destination of a service: (service, address, port)


@dataclass
class FwdStatus:
    """What lbd knows about one destination's forwarding state."""

    state: str  # "resolved", "unresolved" or "n/a"
    ifname: str = ""
    mac: str = ""
    reason: str = ""
    since: float = 0.0  # monotonic time the state was entered
    warned: bool = False


@dataclass(frozen=True)
class Resolution:
    """Outcome of resolving a destination: a complete FwdState, or why not."""

    fwd: FwdState | None
    ifname: str = ""
    reason: str = ""
    nexthop: str = ""  # the neighbour the kernel sends to ("" when unknown)


Resolver = Callable[[str], Resolution]


@dataclass
class _Address:
    """One real-server address: its last resolution, shared by every destination that has it."""

    dests: dict[DestKey, DestSpec] = field(default_factory=dict)
    result: Resolution | None = None
    checked: float = 0.0  # monotonic time of the last lookup
    retry_at: float = 0.0  # unresolved: when to try again
    backoff: float = RETRY_FIRST_S


def _mac(b: bytes) -> str:
    return ":".join(f"{x:02x}" for x in b)


class ForwardingStates:
    """The forwarding state of every destination of `engine`, resolved by `resolver` (None: an
    engine driven directly, without one: every destination is "n/a")."""

    def __init__(self, engine: Engine, resolver: Resolver | None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.engine = engine
        self.resolver = resolver
        self.clock = clock
        self.status: dict[DestKey, FwdStatus] = {}
        self._addrs: dict[str, _Address] = {}
        self._by_service: dict[ServiceKey, dict[tuple[str, int], None]] = {}
        self._by_nexthop: dict[str, dict[str, None]] = {}
        self.pending: dict[str, None] = {}  # addresses waiting for the background (an ordered set)
        self._unresolved: dict[str, None] = {}  # addresses whose last lookup failed
        self._retry_queue: list[tuple[float, str]] = []  # their retries, a heap by time
        self._refresh_order: list[str] = []  # the current periodic round, consumed from the end
        self._refresh_credit = 0.0
        self._retry_credit = 0.0
        self._last_tick: float | None = None
        self._logged = 0  # destination lines logged in the current round
        self._suppressed_warnings = 0  # of them, warnings turned into DEBUG lines
        # Called when work appears that may be due before what next_due() said (lbd's resolve loop
        # sleeps until then): pending addresses, a retry scheduled, a new address to re-check.
        self.wake: Callable[[], None] | None = None

    def _wake(self) -> None:
        if self.wake is not None:
            self.wake()

    # ------------------------------------------------------------ bookkeeping of destinations
    def _register(self, key: ServiceKey, dest: DestSpec) -> _Address:
        ident = (key, dest.addr, dest.port)
        addr = self._addrs.get(dest.addr)
        if addr is None:
            addr = self._addrs[dest.addr] = _Address()
            self._wake()  # the periodic re-check's rate grew
        addr.dests[ident] = dest
        self._by_service.setdefault(key, {})[(dest.addr, dest.port)] = None
        return addr

    def remove(self, key: ServiceKey, addr: str, port: int) -> None:
        """A destination was deleted."""
        ident = (key, addr, port)
        self.status.pop(ident, None)
        dests = self._by_service.get(key)
        if dests is not None:
            dests.pop((addr, port), None)
            if not dests:
                del self._by_service[key]
        entry = self._addrs.get(addr)
        if entry is not None:
            entry.dests.pop(ident, None)
            if not entry.dests:
                self._forget_address(addr)

    def remove_service(self, key: ServiceKey) -> list[tuple[str, int]]:
        """A service was deleted: its destinations go; returns their (address, port)."""
        gone = list(self._by_service.get(key, {}))
        for addr, port in gone:
            self.remove(key, addr, port)
        return gone

    def clear(self) -> None:
        self.status.clear()
        self._addrs.clear()
        self._by_service.clear()
        self._by_nexthop.clear()
        self.pending.clear()
        self._unresolved.clear()
        self._retry_queue.clear()
        self._refresh_order.clear()

    def _forget_address(self, addr: str) -> None:
        entry = self._addrs.pop(addr)
        self.pending.pop(addr, None)
        self._unresolved.pop(addr, None)
        if entry.result is not None and entry.result.nexthop:
            behind = self._by_nexthop.get(entry.result.nexthop)
            if behind is not None:
                behind.pop(addr, None)
                if not behind:
                    del self._by_nexthop[entry.result.nexthop]

    # ------------------------------------------------------------ resolving
    def resolve(self, key: ServiceKey, dest: DestSpec) -> None:
        """Resolve one destination's address now and install the outcome into every destination
        that has it."""
        self._register(key, dest)
        self._lookup(dest.addr)

    def resolve_changed(self, dests: Iterable[tuple[ServiceKey, DestSpec]]) -> None:
        """After a committed change: its added or edited destinations. A few addresses are resolved
        at once; more are installed from what is known and re-resolved in the background. A
        resolution problem leaves a destination unresolved, never fails the change."""
        addrs: dict[str, None] = {}
        for key, dest in dests:
            entry = self._register(key, dest)
            addrs[dest.addr] = None
            if entry.result is not None or self.resolver is None:
                self._install_one((key, dest.addr, dest.port), dest, entry.result)
        if len(addrs) <= SYNC_RESOLVE_MAX:
            for addr in addrs:
                self._lookup_safely(addr)
        else:
            for addr in addrs:
                entry = self._addrs[addr]
                if entry.result is None:  # nothing known yet: invalid until the background resolves it
                    for ident, dest in entry.dests.items():
                        if ident not in self.status:
                            self._install_one(ident, dest, None, pending=True)
                self.pending[addr] = None
            log.info("%d addresses to resolve in the background", len(self.pending))
            self._wake()

    def resolve_safely(self, key: ServiceKey, dest: DestSpec) -> None:
        """resolve(), with problems logged instead of raised."""
        self._register(key, dest)
        self._lookup_safely(dest.addr)

    def _lookup_safely(self, addr: str) -> None:
        try:
            self._lookup(addr)
        except Exception:  # the refresh retries
            log.exception("resolving %s failed", addr)

    def _lookup(self, addr: str) -> None:
        entry = self._addrs.get(addr)
        if entry is None:
            return
        self.pending.pop(addr, None)
        if self.resolver is None:
            for ident, dest in entry.dests.items():
                self._install_one(ident, dest, None)
            return
        self._take(addr, entry, self.resolver(addr))

    def _take(self, addr: str, entry: _Address, res: Resolution) -> None:
        """Install the result of one lookup of `addr` into every destination that has it."""
        now = self.clock()
        old_hop = entry.result.nexthop if entry.result is not None else ""
        if old_hop != res.nexthop:
            behind = self._by_nexthop.get(old_hop)
            if behind is not None:
                behind.pop(addr, None)
                if not behind:
                    del self._by_nexthop[old_hop]
            if res.nexthop:
                self._by_nexthop.setdefault(res.nexthop, {})[addr] = None
        entry.result, entry.checked = res, now
        if res.fwd is None:
            entry.retry_at = now + entry.backoff
            entry.backoff = min(entry.backoff * 2, RETRY_MAX_S)
            self._unresolved[addr] = None
            heapq.heappush(self._retry_queue, (entry.retry_at, addr))
            self._wake()
        else:
            entry.backoff = RETRY_FIRST_S
            self._unresolved.pop(addr, None)
        for ident, dest in list(entry.dests.items()):
            try:
                self._install_one(ident, dest, res)
            except EngineError as exc:  # destination deleted meanwhile
                log.debug("forwarding state of %s skipped: %s", ident, exc)

    def _install_one(self, ident: DestKey, dest: DestSpec, res: Resolution | None, pending: bool = False) -> None:
        key = ident[0]
        if self.resolver is None:
            self.status[ident] = FwdStatus("n/a", reason="no resolver (engine driven directly)")
            return
        previous = self.status.get(ident)
        now = self.clock()
        if res is None or res.fwd is None:
            reason = res.reason if res is not None else ("waiting to be resolved" if pending else "not resolved yet")
            ifname = res.ifname if res is not None else ""
            if previous is None or previous.state != "unresolved" or previous.reason != reason or res is not None:
                self.engine.set_fwd(key, dest.addr, dest.port, None)
            if previous is not None and previous.state == "unresolved":
                status = FwdStatus("unresolved", ifname=ifname, reason=reason,
                                   since=previous.since, warned=previous.warned)
            else:
                status = FwdStatus("unresolved", ifname=ifname, reason=reason, since=now)
                self._log(logging.INFO, "destination %s:%d of %s: resolving forwarding state (%s)",
                          dest.addr, dest.port, key, reason)
            if res is not None and not status.warned and now - status.since >= UNRESOLVED_WARN_AFTER_S:
                status.warned = True
                self._log(logging.WARNING, "destination %s:%d of %s: forwarding state unresolved for %.0f s: %s; "
                          "its packets are dropped and counted as no_l2",
                          dest.addr, dest.port, key, now - status.since, reason)
        else:
            fwd = res.fwd
            status = FwdStatus("resolved", ifname=res.ifname, mac=_mac(fwd.dst_mac), since=now)
            self.engine.set_fwd(key, dest.addr, dest.port, fwd)
            if previous is None or previous.state != "resolved" or previous.mac != status.mac or previous.ifname != status.ifname:
                self._log(logging.INFO, "destination %s:%d of %s: via %s, MAC %s, source %s, mtu %d",
                          dest.addr, dest.port, key, res.ifname, status.mac, fwd.saddr, fwd.mtu)
            else:
                status.since = previous.since
        self.status[ident] = status

    def _log(self, level: int, msg: str, *args: object) -> None:
        """Per-destination lines: at most LOG_EACH_MAX per round, the rest at DEBUG and counted in
        one summary line (20,000 unresolved real servers must not be 20,000 warnings a round)."""
        self._logged += 1
        if self._logged > LOG_EACH_MAX:
            if level >= logging.WARNING:
                self._suppressed_warnings += 1
            level = logging.DEBUG
        log.log(level, msg, *args)

    # ------------------------------------------------------------ lbd's resolve loop
    def resolve_pending(self, budget_s: float) -> int:
        """Resolve pending addresses for about `budget_s` seconds; returns how many remain."""
        deadline = self.clock() + budget_s
        while self.pending:
            addr = next(iter(self.pending))
            self._lookup_safely(addr)
            self.pending.pop(addr, None)
            if self.clock() >= deadline:
                break
        if not self.pending:
            self._end_round()
        return len(self.pending)

    async def resolve_pending_async(self, lookup: Callable[[str], Awaitable[Resolution]], count: int) -> int:
        """resolve_pending() for lbd's event loop: up to `count` pending addresses, each lookup
        awaited (it runs in the resolver's worker thread) instead of waited for. Requests are
        served during every lookup: with resolve_pending's 20 ms slices a request that needs a
        few loop iterations (accept, read, execute, answer) waited a slice for each, 90-240 ms at
        10,000 services while 20,000 addresses were resolved. Results are installed here, on the
        loop's thread; an address deleted meanwhile is skipped. Returns how many remain."""
        for _ in range(count):
            if not self.pending:
                break
            addr = next(iter(self.pending))
            self.pending.pop(addr, None)
            if addr not in self._addrs:
                continue
            try:
                res = await lookup(addr)
                entry = self._addrs.get(addr)
                if entry is not None:
                    self._take(addr, entry, res)
            except Exception:  # the retry or the refresh tries again
                log.exception("resolving %s failed", addr)
        if not self.pending:
            self._end_round()
        return len(self.pending)

    def _end_round(self) -> None:
        if self._logged > LOG_EACH_MAX:
            resolved = sum(1 for st in self.status.values() if st.state == "resolved")
            log.log(logging.WARNING if self._suppressed_warnings else logging.INFO,
                    "forwarding state: %d of %d destinations resolved (%d addresses, %d unresolved); %d more "
                    "lines at DEBUG, %d of them warnings of destinations unresolved for %.0f s or more",
                    resolved, len(self.status), len(self._addrs), len(self._unresolved),
                    self._logged - LOG_EACH_MAX, self._suppressed_warnings, UNRESOLVED_WARN_AFTER_S)
        self._logged = 0
        self._suppressed_warnings = 0

    def tick(self) -> None:
        """Once a second from lbd's resolve loop: retries of unresolved addresses that are due, and a
        slice of the periodic re-check. Pending addresses are resolve_pending's."""
        now = self.clock()
        elapsed = 1.0 if self._last_tick is None else max(0.0, now - self._last_tick)
        self._last_tick = now
        # Due retries, the longest-waiting first, at most RETRY_MAX_PER_S a second (each asks the
        # kernel to resolve the neighbour; thousands of dead real servers must not cost a core).
        self._retry_credit = min(self._retry_credit + RETRY_MAX_PER_S * elapsed, RETRY_MAX_PER_S)
        queue = self._retry_queue  # (retry_at, address), a heap: O(retries) a tick, not O(unresolved)
        while queue and queue[0][0] <= now and self._retry_credit >= 1.0:
            retry_at, addr = heapq.heappop(queue)
            entry = self._addrs.get(addr)
            if entry is None or addr not in self._unresolved or entry.retry_at != retry_at or addr in self.pending:
                continue  # stale: gone, resolved, rescheduled, or already waiting for the background
            self._retry_credit -= 1.0
            self._lookup_safely(addr)
        n = len(self._addrs)
        if n == 0:
            return
        rate = min(n / REFRESH_EVERY_S, REFRESH_MAX_PER_S)
        self._refresh_credit = min(self._refresh_credit + rate * elapsed, max(1.0, rate))
        while self._refresh_credit >= 1.0:
            if not self._refresh_order:
                self._refresh_order = list(self._addrs)
            addr = self._refresh_order.pop()
            self._refresh_credit -= 1.0
            entry = self._addrs.get(addr)
            if entry is not None and entry.result is not None and entry.result.fwd is not None and addr not in self.pending:
                self._lookup_safely(addr)
        self._end_round()

    def next_due(self) -> float | None:
        """When tick() has work next, on self.clock(): the first scheduled retry, or the moment the
        periodic re-check's credit reaches one lookup; None with no address at all. lbd's resolve loop
        sleeps until then instead of ticking every second (issue 19: under an emulated guest each
        wake-up of lbd's event loop costs ~ms; with one destination a re-check is due every 30 s).
        Pending addresses are not covered: the loop works them off before sleeping (and wake() ends
        a sleep when they appear)."""
        due: list[float] = []
        if self._retry_queue:  # may be stale (resolved since): an early tick finds nothing, harmless
            due.append(self._retry_queue[0][0])
        n = len(self._addrs)
        if n:
            rate = min(n / REFRESH_EVERY_S, REFRESH_MAX_PER_S)
            last = self._last_tick if self._last_tick is not None else self.clock()
            due.append(last + max(0.0, 1.0 - self._refresh_credit) / rate)
        return min(due) if due else None

    def refresh(self, only_unresolved: bool = False) -> int:
        """Re-resolve every address now (or only the unresolved ones); returns how many destinations
        remain unresolved. Synchronous: for tests and tools; lbd itself uses tick/resolve_pending."""
        for addr, entry in list(self._addrs.items()):
            if only_unresolved and entry.result is not None and entry.result.fwd is not None:
                continue
            self._lookup_safely(addr)
        self._end_round()
        return sum(1 for st in self.status.values() if st.state == "unresolved")

    def invalidate(self) -> None:
        """Routes, addresses or links changed: every address is re-resolved (in the background)."""
        for addr in self._addrs:
            self.pending[addr] = None
        self._wake()

    def neighbour_changed(self, ip: str, mac: bytes | None) -> int:
        """The kernel's neighbour entry for `ip` changed (mac: its link-layer address while the
        entry is valid, else None). Re-resolves the addresses behind it whose installed MAC that
        changes; returns how many were queued."""
        queued = 0
        behind = dict(self._by_nexthop.get(ip, {}))
        if ip in self._addrs:
            behind[ip] = None
        for addr in behind:
            entry = self._addrs.get(addr)
            if entry is None or addr in self.pending:
                continue
            res = entry.result
            if res is not None and res.fwd is not None and mac is not None and res.fwd.dst_mac == mac:
                continue  # still valid, same MAC: nothing to do (STALE/REACHABLE transitions)
            if res is not None and res.fwd is None and mac is None:
                continue  # still unresolved: the retries go on
            self.pending[addr] = None
            queued += 1
        if queued:
            self._wake()
        return queued

    def unresolved_addresses(self) -> int:
        return len(self._unresolved)

    def addresses(self) -> int:
        return len(self._addrs)
