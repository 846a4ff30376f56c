"""The director's control logic, independent of any transport.

It owns one packet engine, the iptables rules that feed it and the
per-destination forwarding state, and executes control-protocol operations
(docs/control-protocol.md). Every operation either completes entirely or
leaves engine and rules as they were.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from lb import __version__
from lb.engine import Engine, EngineError, FwdState
from lb.model import ConfigError, DestSpec, ServiceKey, ServiceSpec, parse_ipv4

log = logging.getLogger("lbd")

UNRESOLVED_WARN_AFTER_S = 3.0


class Rules(Protocol):
    def sync(self, services: list[tuple[int, str, int]], extra: list[str] = ...) -> object: ...


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


class Director:
    def __init__(self, engine: Engine, rules: Rules | None, resolver: Resolver | None) -> None:
        self.engine = engine
        self.rules = rules
        self.resolver = resolver
        self.fwd_status: dict[tuple[ServiceKey, str, int], FwdStatus] = {}
        self._ops: dict[str, Callable[[dict[str, Any]], Any]] = {
            "ping": self._ping,
            "add_service": self._add_service,
            "edit_service": self._edit_service,
            "del_service": self._del_service,
            "add_dest": self._add_dest,
            "edit_dest": self._edit_dest,
            "del_dest": self._del_dest,
            "clear": self._clear,
            "zero": self._zero,
            "list": self._list,
            "connections": self._connections,
            "counters": self._counters,
            "add_laddr": self._add_laddr,
            "del_laddr": self._del_laddr,
        }

    # ------------------------------------------------------------ dispatch
    def handle(self, op: str, args: dict[str, Any]) -> Any:
        handler = self._ops.get(op)
        if handler is None:
            raise EngineError("EINVAL", f"unknown operation {op!r}")
        try:
            return handler(args)
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, (EngineError, ConfigError)):
                raise
            raise EngineError("EINVAL", f"{op}: bad arguments: {exc}") from exc

    # ------------------------------------------------------------ rules
    def _service_keys(self) -> list[tuple[int, str, int]]:
        return [(s.spec.key.proto, s.spec.key.addr, s.spec.key.port) for s in self.engine.services()]

    def _reply_matches(self) -> list[str]:
        """FULLNAT: replies from each real server to each local address are queued too."""
        from lb.iptables import reply_match

        matches: list[str] = []
        for s in self.engine.services():
            fullnat = [d for d in s.dests if d.spec.fwd == "fullnat"]
            for laddr in s.laddrs:
                for d in fullnat:
                    m = reply_match(s.spec.key.proto, d.spec.addr, d.spec.port, laddr.addr)
                    if m not in matches:
                        matches.append(m)
        return matches

    def sync_rules(self) -> None:
        if self.rules is not None:
            self.rules.sync(self._service_keys(), extra=self._reply_matches())

    # ------------------------------------------------------------ forwarding state
    def resolve_dest(self, key: ServiceKey, dest: DestSpec) -> None:
        """Resolve and install one destination's forwarding state, or invalidate it."""
        ident = (key, dest.addr, dest.port)
        if self.resolver is None:
            self.fwd_status[ident] = FwdStatus("n/a", reason="no resolver (engine driven directly)")
            return
        res = self.resolver(dest.addr)
        previous = self.fwd_status.get(ident)
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
        self.fwd_status[ident] = status

    def refresh_all(self, only_unresolved: bool = False) -> int:
        """Re-resolve every destination (or only unresolved ones); returns how many remain unresolved."""
        unresolved = 0
        for svc in self.engine.services():
            for d in svc.dests:
                ident = (svc.spec.key, d.spec.addr, d.spec.port)
                st = self.fwd_status.get(ident)
                if only_unresolved and st is not None and st.state == "resolved":
                    continue
                try:
                    self.resolve_dest(svc.spec.key, d.spec)
                except EngineError as exc:  # destination deleted meanwhile
                    log.debug("refresh of %s skipped: %s", ident, exc)
                    continue
                if self.fwd_status[ident].state == "unresolved":
                    unresolved += 1
        return unresolved

    def invalidate_all(self) -> None:
        """Drop every destination's forwarding state (e.g. after a route change) and re-resolve."""
        self.refresh_all(only_unresolved=False)

    # ------------------------------------------------------------ operations
    def _ping(self, _args: dict[str, Any]) -> dict[str, Any]:
        return {"version": __version__, "engine": self.engine.name}

    def _add_service(self, args: dict[str, Any]) -> None:
        spec = ServiceSpec.from_json(args)
        self.engine.add_service(spec)
        try:
            self.sync_rules()
        except Exception:
            self.engine.del_service(spec.key)
            raise
        log.info("added service %s scheduler %s", spec.key, spec.sched)

    def _edit_service(self, args: dict[str, Any]) -> None:
        spec = ServiceSpec.from_json(args)
        self.engine.edit_service(spec)
        log.info("edited service %s scheduler %s", spec.key, spec.sched)

    def _del_service(self, args: dict[str, Any]) -> None:
        key = ServiceKey.from_json(args)
        self.engine.del_service(key)
        for ident in [i for i in self.fwd_status if i[0] == key]:
            del self.fwd_status[ident]
        self.sync_rules()
        log.info("deleted service %s", key)

    def _add_dest(self, args: dict[str, Any]) -> None:
        key = ServiceKey.from_json(args["service"])
        dest = DestSpec.from_json(args["dest"])
        self.engine.add_dest(key, dest)
        try:
            self.sync_rules()
        except Exception:
            self.engine.del_dest(key, dest.addr, dest.port)
            raise
        self.resolve_dest(key, dest)
        log.info("added destination %s:%d (%s, weight %d) to %s", dest.addr, dest.port, dest.fwd, dest.weight, key)

    def _edit_dest(self, args: dict[str, Any]) -> None:
        key = ServiceKey.from_json(args["service"])
        dest = DestSpec.from_json(args["dest"])
        self.engine.edit_dest(key, dest)
        self.resolve_dest(key, dest)
        log.info("edited destination %s:%d (%s, weight %d) of %s", dest.addr, dest.port, dest.fwd, dest.weight, key)

    def _del_dest(self, args: dict[str, Any]) -> None:
        key = ServiceKey.from_json(args["service"])
        d = args["dest"]
        addr, port = str(d["addr"]), int(d["port"])
        probe = DestSpec(addr=addr, port=port)  # validates the address and port
        self.engine.del_dest(key, probe.addr, probe.port)
        self.fwd_status.pop((key, probe.addr, probe.port), None)
        self.sync_rules()
        log.info("deleted destination %s:%d of %s", probe.addr, probe.port, key)

    def _clear(self, _args: dict[str, Any]) -> None:
        self.engine.clear()
        self.fwd_status.clear()
        self.sync_rules()
        log.info("cleared all services")

    def _zero(self, _args: dict[str, Any]) -> None:
        self.engine.zero()

    def _add_laddr(self, args: dict[str, Any]) -> None:
        key = ServiceKey.from_json(args["service"])
        addr = parse_ipv4(str(args["addr"]))
        self.engine.add_laddr(key, addr)
        try:
            self.sync_rules()
        except Exception:
            self.engine.del_laddr(key, addr)
            raise
        log.info("added local address %s to %s", addr, key)

    def _del_laddr(self, args: dict[str, Any]) -> None:
        key = ServiceKey.from_json(args["service"])
        addr = parse_ipv4(str(args["addr"]))
        self.engine.del_laddr(key, addr)
        self.sync_rules()
        log.info("deleted local address %s of %s", addr, key)

    def _list(self, args: dict[str, Any]) -> dict[str, Any]:
        only = ServiceKey.from_json(args["service"]) if args.get("service") else None
        services = self.engine.services()
        if only is not None and all(s.spec.key != only for s in services):
            raise EngineError("ESRCH", f"no such service {only}")
        table_size = getattr(self.engine, "table_size", lambda: 4096)()
        out = []
        for s in services:
            if only is not None and s.spec.key != only:
                continue
            dests = []
            for d in s.dests:
                st = self.fwd_status.get((s.spec.key, d.spec.addr, d.spec.port), FwdStatus("unresolved", reason="not resolved yet"))
                dests.append({
                    **d.spec.to_json(),
                    "active": d.active,
                    "inactive": d.inactive,
                    "persist": d.persist,
                    "stats": d.stats.to_json(),
                    "syn_retrans": d.syn_retrans,
                    "handshakes": d.handshakes,
                    "l2": {"state": st.state, "ifname": st.ifname, "mac": st.mac, "reason": st.reason},
                })
            laddrs = [{"addr": la.addr, "conns": la.conns} for la in s.laddrs]
            out.append({**s.spec.to_json(), "stats": s.stats.to_json(), "dests": dests, "laddrs": laddrs})
        return {"version": "1.2.1", "conn_tab_size": table_size, "services": out}

    def _connections(self, _args: dict[str, Any]) -> dict[str, Any]:
        now_ms = int(time.monotonic() * 1000)
        return {"connections": [c.to_json() for c in self.engine.connections(now_ms)]}

    def _counters(self, _args: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = {"reasons": self.engine.counters()}
        nfq_stats = getattr(self.engine, "nfq_stats", None)
        if nfq_stats is not None:
            result["nfq"] = nfq_stats()
        return result
