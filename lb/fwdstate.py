"""Per-destination forwarding state: resolving it (route, neighbour, source address through a
Resolver, lb.netlink's in lbd) and installing it into the engine, and what lbd knows about it
for `list` and the logs.

A destination whose state cannot be resolved is installed as invalid (its packets are dropped
and counted as no_l2); lbd retries every second and warns once the problem lasts.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from lb.engine import Engine, EngineError, FwdState
from lb.model import DestSpec, ServiceKey

log = logging.getLogger("lbd")

UNRESOLVED_WARN_AFTER_S = 3.0
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


Resolver = Callable[[str], Resolution]


def _mac(b: bytes) -> str:
    return ":".join(f"{x:02x}" for x in b)


class ForwardingStates:
    """The forwarding state of every destination of `engine`, resolved by `resolver` (None: an
    engine driven directly, without one: every destination is "n/a")."""

    def __init__(self, engine: Engine, resolver: Resolver | None) -> None:
        self.engine = engine
        self.resolver = resolver
        self.status: dict[DestKey, FwdStatus] = {}

    def resolve(self, key: ServiceKey, dest: DestSpec) -> None:
        """Resolve and install one destination's forwarding state, or invalidate it."""
        ident = (key, dest.addr, dest.port)
        if self.resolver is None:
            self.status[ident] = FwdStatus("n/a", reason="no resolver (engine driven directly)")
            return
        res = self.resolver(dest.addr)
        previous = self.status.get(ident)
        now = time.monotonic()
        if res.fwd is None:
            self.engine.set_fwd(key, dest.addr, dest.port, None)
            if previous is not None and previous.state == "unresolved":
                status = FwdStatus("unresolved", ifname=res.ifname, reason=res.reason,
                                   since=previous.since, warned=previous.warned)
            else:
                status = FwdStatus("unresolved", ifname=res.ifname, reason=res.reason, since=now)
                log.info("destination %s:%d of %s: resolving forwarding state (%s)", dest.addr, dest.port, key, res.reason)
            if not status.warned and now - status.since >= UNRESOLVED_WARN_AFTER_S:
                status.warned = True
                log.warning("destination %s:%d of %s: forwarding state unresolved for %.0f s: %s; "
                            "its packets are dropped and counted as no_l2",
                            dest.addr, dest.port, key, now - status.since, res.reason)
        else:
            self.engine.set_fwd(key, dest.addr, dest.port, res.fwd)
            status = FwdStatus("resolved", ifname=res.ifname, mac=_mac(res.fwd.dst_mac), since=now)
            if previous is None or previous.state != "resolved" or previous.mac != status.mac or previous.ifname != status.ifname:
                log.info("destination %s:%d of %s: via %s, MAC %s, source %s, mtu %d",
                         dest.addr, dest.port, key, res.ifname, status.mac, res.fwd.saddr, res.fwd.mtu)
            else:
                status.since = previous.since
        self.status[ident] = status

    def refresh(self, only_unresolved: bool = False) -> int:
        """Re-resolve every destination (or only unresolved ones); returns how many remain unresolved."""
        unresolved = 0
        for svc in self.engine.services():
            for d in svc.dests:
                ident = (svc.spec.key, d.spec.addr, d.spec.port)
                st = self.status.get(ident)
                if only_unresolved and st is not None and st.state == "resolved":
                    continue
                try:
                    self.resolve(svc.spec.key, d.spec)
                except EngineError as exc:  # destination deleted meanwhile
                    log.debug("refresh of %s skipped: %s", ident, exc)
                    continue
                if self.status[ident].state == "unresolved":
                    unresolved += 1
        return unresolved

    def resolve_safely(self, key: ServiceKey, dest: DestSpec) -> None:
        """After a committed change: resolution problems leave the destination unresolved, never fail the change."""
        try:
            self.resolve(key, dest)
        except EngineError as exc:
            log.debug("resolving %s:%d of %s skipped: %s", dest.addr, dest.port, key, exc)
        except Exception:  # the refresh loop retries
            log.exception("resolving %s:%d of %s failed", dest.addr, dest.port, key)
