"""The director's control logic, independent of any transport.

It owns one packet engine, the iptables rules that feed it and the
per-destination forwarding state, and executes control-protocol operations
(docs/control-protocol.md). Every operation either completes entirely or
leaves engine and rules as they were.

Every table change - one lbadm command, a `batch` (lbadm -R), a reload - goes through
`execute()`: the commands are first applied to a copy of the running state (lb/reconcile.py's
model, which refuses exactly what the engines refuse), so an invalid request changes nothing;
then they go to the engine one by one, and if the engine still refuses one, the ones already
applied are undone in reverse order; the iptables rules are synced once at the end.

Counters: `zero` (ipvsadm -Z, for all services or one) uses the engine's zero/zero_service
and restarts the rate estimators (lb/estimator.py) from the zeroed counters.

The engine is used through lb.engine.Engine only: both engines implement all of it.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from lb import __version__, unimplemented
from lb.engine import Engine, EngineError
from lb.estimator import Estimator, HandshakeSample, StallEvent, StallWatch
from lb.fwdstate import DestKey, ForwardingStates, FwdStatus, Resolver
from lb.ipsets import Steering
from lb.model import ConfigError, DestSpec, ServiceInfo, ServiceKey, Stats, SynproxyConf
from lb.reconcile import (
    COMMAND_TYPES,
    AddDest,
    AddLaddr,
    AddService,
    Clear,
    Command,
    DelDest,
    DelLaddr,
    DelService,
    EditDest,
    EditService,
    SetSynproxy,
    SetTimeout,
    State,
    StateError,
    Timeouts,
    Zero,
    inverse,
    plan,
    synproxy_to_json,
)
from lb.requests import parse_command, parse_key
from lb.totals import TotalStats

log = logging.getLogger("lbd")

LOG_EACH_MAX = 50  # a change of more commands is logged as one summary line (details at DEBUG)


class Rules(Protocol):
    def sync(self, steering: Steering) -> object: ...


class BatchError(EngineError):
    """A refused request inside a `batch`: `index` is its position (0-based), `op` its operation."""

    def __init__(self, errno_name: str, message: str, index: int, op: str, reason: str = "") -> None:
        super().__init__(errno_name, message)
        self.index = index
        self.op = op
        self.reason = reason or message  # without the "request N (...)" prefix


# Keys of the rate estimators.
StatsKey = tuple[object, ...]  # ("svc", ServiceKey) | ("dest", ServiceKey, addr, port)



def _nat_protos(key: ServiceKey) -> tuple[int, ...]:
    """The protocols a NAT real server of this service answers with: a fwmark service's mark may
    gather TCP and UDP (its key has no protocol)."""
    return (6, 17) if key.fwmark else (key.proto,)


def _svc_stats_key(key: ServiceKey) -> StatsKey:
    return ("svc", key)


def _dest_stats_key(key: ServiceKey, addr: str, port: int) -> StatsKey:
    return ("dest", key, addr, port)


def _of_service(key: ServiceKey, skey: StatsKey) -> bool:
    """Whether estimator key `skey` is service `key`'s or one of its destinations'."""
    return skey[1] == key


class Director:
    def __init__(self, engine: Engine, rules: Rules | None, resolver: Resolver | None,
                 config_path: str | None = None, *, queue_num: int | None = None,
                 conntrack: bool = False, down_policy: str = "open") -> None:
        self.engine = engine
        self.rules = rules
        self.config_path = config_path  # what `reload` re-reads (lbd --config)
        self.queue_num = queue_num  # reported by `ping` (lbadm doctor finds lbd's chains by it)
        self.conntrack = conntrack  # lbd --conntrack: the IPVS conntrack sysctl analogue
        self.down_policy = down_policy  # lbd --down-policy: what packets do while no lbd runs
        self.fwd = ForwardingStates(engine, resolver)
        self.timeouts: Timeouts = Timeouts(*engine.get_timeouts())
        self.estimator: Estimator[StatsKey] = Estimator()
        self.stalls: StallWatch[DestKey] = StallWatch()
        # SYN-proxy settings as last applied (the engines cannot report them): the global default
        # and the services that have their own.
        self.synproxy_default = SynproxyConf()
        self.synproxy_confs: dict[ServiceKey, SynproxyConf] = {}
        self._last_refusals: dict[str, int] = {}  # REFUSAL_LOGS counters at the previous tick
        self.totals = TotalStats()  # IPVS's tot_stats: every service's counters, deleted ones included
        self._ops: dict[str, Callable[[dict[str, Any]], Any]] = {
            "ping": self._ping,
            "list": self._list,
            "connections": self._connections,
            "counters": self._counters,
            "get_timeout": self._get_timeout,
            "get_daemon": self._get_daemon,
            "start_daemon": self._start_daemon,
            "stop_daemon": self._stop_daemon,
            "batch": self._batch,
            "reload": self._reload,
        }
        for op in COMMAND_TYPES:  # add_service ... set_timeout: one command each
            self._ops[op] = functools.partial(self._single, op)

    # ------------------------------------------------------------ dispatch
    def handle(self, op: str, args: dict[str, Any]) -> Any:
        handler = self._ops.get(op)
        if handler is None:
            raise EngineError("EOPNOTSUPP", f"unknown operation {op!r}")
        try:
            return handler(args if args is not None else {})
        except StateError as exc:
            raise EngineError(exc.errno_name, f"{op}: {exc}") from exc
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, (EngineError, ConfigError)):
                raise
            raise EngineError("EINVAL", f"{op}: bad arguments: {exc!r}") from exc

    # ------------------------------------------------------------ rules
    def _service_keys(self) -> list[tuple[int, str, int]]:
        return [(s.spec.key.proto, s.spec.key.addr, s.spec.key.port) for s in self.engine.services()]

    def steering(self, state: State | None = None) -> Steering:
        """What the raw-table sets must hold: every service, and FULLNAT replies from each real
        server to each local address. ICMP to every VIP and local address is queued too (the
        address set): errors about balanced connections (e.g. fragmentation needed, port
        unreachable from a real server) must reach the fast path, which relates them to their
        connection entry as IPVS's ip_vs_in_icmp does. From `state` (the model a change just
        produced: plain Python, no engine call) or else from the engine."""
        st = Steering()
        if state is not None:
            for key, svc in state.services.items():
                st.nat_replies.update((proto, spec.addr, spec.port) for spec in svc.dests.values()
                                      if spec.fwd == "masq" for proto in _nat_protos(key))
                if key.fwmark:
                    st.fwmarks.add(key.fwmark)
                    continue
                st.services.add((key.proto, key.addr, key.port))
                st.addrs.update(svc.laddrs)
                for spec in svc.dests.values():
                    if spec.fwd == "fullnat":
                        st.fnat_replies.update((key.proto, spec.addr, spec.port, la) for la in svc.laddrs)
            return st
        for s in self.engine.services():
            key = s.spec.key
            st.nat_replies.update((proto, d.spec.addr, d.spec.port) for d in s.dests if d.spec.fwd == "masq"
                                  for proto in _nat_protos(key))
            if key.fwmark:
                st.fwmarks.add(key.fwmark)
                continue
            st.services.add((key.proto, key.addr, key.port))
            fullnat = [d for d in s.dests if d.spec.fwd == "fullnat"]
            for laddr in s.laddrs:
                st.addrs.add(laddr.addr)
                for d in fullnat:
                    st.fnat_replies.add((key.proto, d.spec.addr, d.spec.port, laddr.addr))
        return st

    def sync_rules(self, state: State | None = None) -> None:
        if self.rules is not None:
            self.rules.sync(self.steering(state))

    # ------------------------------------------------------------ forwarding state (lb.fwdstate)
    @property
    def fwd_status(self) -> dict[DestKey, FwdStatus]:
        return self.fwd.status

    def resolve_dest(self, key: ServiceKey, dest: DestSpec) -> None:
        """Resolve and install one destination's forwarding state, or invalidate it."""
        self.fwd.resolve(key, dest)

    def refresh_all(self, only_unresolved: bool = False) -> int:
        """Re-resolve every destination (or only unresolved ones); returns how many remain unresolved."""
        return self.fwd.refresh(only_unresolved)

    def invalidate_all(self) -> None:
        """Drop every destination's forwarding state (e.g. after a route change) and re-resolve."""
        self.fwd.refresh(only_unresolved=False)

    # ------------------------------------------------------------ state
    def running_state(self) -> State:
        """What the engine holds now, plus the timeouts and SYN-proxy settings, as a reconcile.State."""
        state = State.from_services(self.engine.services(), self.timeouts)
        state.synproxy_default = self.synproxy_default
        for key, conf in self.synproxy_confs.items():
            if key in state.services:
                state.services[key].synproxy_conf = conf
        return state

    # ------------------------------------------------------------ changing the tables
    def execute(self, cmds: list[Command], batch: bool = False, log_level: int = logging.INFO) -> None:
        """Apply `cmds` all or nothing (see the module docstring). Raises EngineError (BatchError if `batch`).

        Each applied command is logged at `log_level` (a reload has logged its plan already);
        beyond LOG_EACH_MAX commands (a large restore) one summary line replaces them at INFO.
        """
        running = self.running_state()
        model = running.copy()
        for i, cmd in enumerate(cmds):
            try:
                model.apply(cmd)
            except StateError as exc:
                raise self._refusal(exc.errno_name, str(exc), i, cmd, batch) from exc
        live = running  # follows the engine command by command: the inverses are computed from it
        done: list[list[Command]] = []
        # Counters of services this change may delete: they stay in the totals (lb/totals.py).
        removing = self._service_counters() if any(isinstance(c, (DelService, Clear)) for c in cmds) else {}
        for i, cmd in enumerate(cmds):
            undo = inverse(live, cmd)
            try:
                self._engine_apply(cmd)
            except EngineError as exc:
                self._rollback(done)
                raise self._refusal(exc.errno_name, str(exc), i, cmd, batch) from exc
            except Exception as exc:  # a bug below us: still leave the tables as they were
                log.exception("engine failed on %s", cmd.describe())
                self._rollback(done)
                raise self._refusal("EIO", f"engine failed: {exc!r}", i, cmd, batch) from exc
            done.append(undo)
            live.apply(cmd)
            if isinstance(cmd, (DelService, Clear)):
                for key in [cmd.key] if isinstance(cmd, DelService) else list(removing):
                    self.totals.retire(removing.pop(key, Stats()))
        try:
            self.sync_rules(live)  # the model these commands produced: no second walk of the engine
        except Exception as exc:
            self._rollback(done)
            try:
                self.sync_rules()
            except Exception:
                log.exception("restoring the iptables rules after a failed change failed")
            raise EngineError("EIO", f"iptables rules could not be updated, nothing was changed: {exc}") from exc
        self.synproxy_default = live.synproxy_default or SynproxyConf()
        self.synproxy_confs = {k: s.synproxy_conf for k, s in live.services.items() if s.synproxy_conf is not None}
        self._committed(cmds, live, log_level if len(cmds) <= LOG_EACH_MAX else logging.DEBUG)
        if len(cmds) > LOG_EACH_MAX:
            n_svc, n_dest, n_laddr = live.counts()
            log.info("applied %d commands: now %d services, %d destinations, %d local addresses",
                     len(cmds), n_svc, n_dest, n_laddr)

    @staticmethod
    def _refusal(errno_name: str, message: str, index: int, cmd: Command, batch: bool) -> EngineError:
        if batch:
            return BatchError(errno_name, f"request {index + 1} ({cmd.describe()}): {message}", index, cmd.op, message)
        return EngineError(errno_name, message)

    def _engine_apply(self, cmd: Command) -> None:
        e = self.engine
        if isinstance(cmd, AddService):
            e.add_service(cmd.spec)
        elif isinstance(cmd, EditService):
            e.edit_service(cmd.spec)
        elif isinstance(cmd, DelService):
            e.del_service(cmd.key)
        elif isinstance(cmd, AddDest):
            e.add_dest(cmd.key, cmd.dest)
        elif isinstance(cmd, EditDest):
            e.edit_dest(cmd.key, cmd.dest)
        elif isinstance(cmd, DelDest):
            e.del_dest(cmd.key, cmd.addr, cmd.port)
        elif isinstance(cmd, AddLaddr):
            e.add_laddr(cmd.key, cmd.addr)
        elif isinstance(cmd, DelLaddr):
            e.del_laddr(cmd.key, cmd.addr)
        elif isinstance(cmd, Clear):
            e.clear()
        elif isinstance(cmd, SetTimeout):
            new = self.timeouts.merged(cmd.timeouts)
            e.set_timeouts(new.tcp, new.tcpfin, new.udp)
            self.timeouts = new
        elif isinstance(cmd, SetSynproxy):
            e.set_synproxy(cmd.key, cmd.conf if cmd.key is not None or cmd.conf is not None else SynproxyConf())
        elif isinstance(cmd, Zero):
            pass  # counters only: applied in _committed, after everything else succeeded
        else:  # pragma: no cover
            raise EngineError("EOPNOTSUPP", f"cannot apply {cmd!r}")

    def _rollback(self, done: list[list[Command]]) -> None:
        for undo in reversed(done):
            for cmd in undo:
                try:
                    self._engine_apply(cmd)
                except Exception as exc:  # keep undoing the rest; this one is reported
                    log.error("rollback step %s failed: %s", cmd.describe(), exc)

    def _committed(self, cmds: list[Command], final: State, log_level: int) -> None:
        """Bookkeeping after a change went through: logs, counters, forwarding state."""
        to_resolve: dict[tuple[ServiceKey, str, int], None] = {}
        for cmd in cmds:
            log.log(log_level, "applied: %s", cmd.describe())
            if isinstance(cmd, Clear):
                self.fwd_status.clear()
                self._forget_stats(lambda k: True)
                to_resolve.clear()
            elif isinstance(cmd, DelService):
                for ident in [i for i in self.fwd_status if i[0] == cmd.key]:
                    del self.fwd_status[ident]
                self._forget_stats(functools.partial(_of_service, cmd.key))
                to_resolve = {i: None for i in to_resolve if i[0] != cmd.key}
            elif isinstance(cmd, DelDest):
                ident = (cmd.key, cmd.addr, cmd.port)
                self.fwd_status.pop(ident, None)
                self._forget_stats(_dest_stats_key(*ident).__eq__)
                to_resolve.pop(ident, None)
            elif isinstance(cmd, (AddDest, EditDest)):
                to_resolve[(cmd.key, cmd.dest.addr, cmd.dest.port)] = None
            elif isinstance(cmd, EditService):
                # A service edit invalidates its destinations' forwarding state too (issue 3, as
                # IPVS resets its per-destination route cache): resolve each afresh.
                svc = final.services.get(cmd.spec.key)
                for addr, port in (svc.dests if svc is not None else {}):
                    to_resolve[(cmd.spec.key, addr, port)] = None
            elif isinstance(cmd, Zero):
                self._zero(cmd.key)
        for key, addr, port in to_resolve:
            svc = final.services.get(key)
            dest = svc.dests.get((addr, port)) if svc is not None else None
            if dest is not None:
                self.fwd.resolve_safely(key, dest)

    # ------------------------------------------------------------ operations
    def _ping(self, _args: dict[str, Any]) -> dict[str, Any]:
        return {"version": __version__, "engine": self.engine.name, "queue_num": self.queue_num,
                "conntrack": self.conntrack, "down_policy": self.down_policy}

    def _single(self, op: str, args: dict[str, Any]) -> None:
        self.execute([parse_command(op, args)])

    def _batch(self, args: dict[str, Any]) -> dict[str, Any]:
        requests = args.get("requests")
        if not isinstance(requests, list):
            raise EngineError("EINVAL", "batch: 'requests' must be a list of {\"op\", \"args\"} objects")
        cmds: list[Command] = []
        for i, req in enumerate(requests):
            op = req.get("op") if isinstance(req, dict) else None
            if not isinstance(op, str):
                raise BatchError("EINVAL", f"request {i + 1}: not an object with a string 'op'", i, "")
            if op not in COMMAND_TYPES:
                known = op in self._ops
                raise BatchError("EINVAL" if known else "EOPNOTSUPP",
                                 f"request {i + 1}: {op!r} " + ("cannot be part of a batch" if known else "is not an operation"),
                                 i, op)
            try:
                cmds.append(parse_command(op, req.get("args") or {}))
            except StateError as exc:
                raise BatchError(exc.errno_name, f"request {i + 1} ({op}): {exc}", i, op) from exc
        self.execute(cmds, batch=True)
        return {"applied": len(cmds)}

    def _get_timeout(self, _args: dict[str, Any]) -> dict[str, int]:
        return self.timeouts.to_json()

    # The IPVS connection sync daemon (lb.unimplemented): none ever runs, as on a kernel director
    # where none was started: `ipvsadm -L --daemon` lists nothing, --stop-daemon finds none.
    def _get_daemon(self, _args: dict[str, Any]) -> dict[str, Any]:
        return {"daemons": []}

    def _start_daemon(self, _args: dict[str, Any]) -> None:
        raise EngineError("EOPNOTSUPP", unimplemented.entry("start-daemon").message)

    def _stop_daemon(self, _args: dict[str, Any]) -> None:
        raise EngineError("ESRCH", "no connection sync daemon is running")

    # ------------------------------------------------------------ configuration files
    def apply_config(self, config: Any, what: str = "reload") -> dict[str, Any]:
        """Make the running state what `config` (lb.config.Config) describes, by the minimal plan."""
        steps = plan(self.running_state(), config.state())
        if not steps:
            log.info("%s of %s: no changes", what, config.path)
            return {"path": config.path, "plan": [], "applied": 0}
        log.info("%s of %s: %d change(s):", what, config.path, len(steps))
        for step in steps:
            log.info("  %s", step.describe())
        try:
            self.execute(steps, batch=True, log_level=logging.DEBUG)
        except BatchError as exc:
            step = steps[exc.index]
            where = f"{config.path}:{step.line}" if step.line else config.path
            message = f"{where}: {step.describe()}: {exc.reason}"
            log.error("%s of %s rejected, running state unchanged: %s", what, config.path, message)
            raise EngineError(exc.errno_name, message) from exc
        return {"path": config.path, "plan": [step.describe() for step in steps], "applied": len(steps)}

    def _reload(self, _args: dict[str, Any]) -> dict[str, Any]:
        from lb.config import load_config

        if self.config_path is None:
            raise EngineError("EINVAL", "lbd was started without --config: there is no configuration file to reload")
        try:
            config = load_config(self.config_path)
        except ConfigError as exc:
            log.error("reload of %s rejected, running state unchanged:\n%s", self.config_path, exc)
            raise EngineError("EINVAL", f"configuration rejected, running state unchanged:\n{exc}") from exc
        try:
            return self.apply_config(config, "reload")
        except EngineError as exc:
            raise EngineError(exc.errno_name, f"configuration rejected, running state unchanged: {exc}") from exc

    # ------------------------------------------------------------ restart snapshots
    SNAPSHOT_FORMAT = 1

    def snapshot_config(self) -> dict[str, Any]:
        """The whole configuration as JSON (lbd's state file): what `restore_config` re-applies.

        Services in lbd's order; each service's destinations in the order they must be added
        to come back in the same list order (IPVS adds at the head: the reverse of `list`).
        """
        services = []
        for s in self.engine.services():
            own = self.synproxy_confs.get(s.spec.key)
            services.append({
                **s.spec.to_json(),
                "dests": [d.spec.to_json() for d in reversed(s.dests)],
                "laddrs": [{"addr": la.addr} for la in s.laddrs],
                "synproxy_conf": synproxy_to_json(own) if own is not None else None,
            })
        return {"format": self.SNAPSHOT_FORMAT, "timeouts": self.timeouts.to_json(),
                "synproxy_default": synproxy_to_json(self.synproxy_default), "services": services}

    def restore_config(self, snapshot: dict[str, Any], what: str = "restore") -> int:
        """Make the running state the snapshot's (the minimal plan, all or nothing); returns the
        number of commands applied. EngineError if the snapshot is unusable or refused."""
        if not isinstance(snapshot, dict) or snapshot.get("format") != self.SNAPSHOT_FORMAT:
            raise EngineError("EINVAL", f"{what}: not a format-{self.SNAPSHOT_FORMAT} lbd state snapshot")
        try:
            desired = State.from_list_json(snapshot, snapshot.get("timeouts"))
        except (StateError, ConfigError, KeyError, TypeError, ValueError) as exc:
            raise EngineError("EINVAL", f"{what}: snapshot does not parse: {exc}") from exc
        steps = plan(self.running_state(), desired)
        if steps:
            self.execute(steps, batch=True, log_level=logging.DEBUG)
        n_svc, n_dest, n_laddr = desired.counts()
        log.info("%s: %d services, %d destinations, %d local addresses (%d commands)",
                 what, n_svc, n_dest, n_laddr, len(steps))
        return len(steps)

    # ------------------------------------------------------------ counters and rates
    def _stats_samples(self, services: list[ServiceInfo]) -> dict[StatsKey, Stats]:
        samples: dict[StatsKey, Stats] = {}
        for s in services:
            samples[_svc_stats_key(s.spec.key)] = s.stats
            for d in s.dests:
                samples[_dest_stats_key(s.spec.key, d.spec.addr, d.spec.port)] = d.stats
        return samples

    def estimate(self, now: float | None = None) -> None:
        """One estimator tick (lbd runs it every ESTIMATOR_TICK_S): rates, and stalled handshakes."""
        services = self.engine.services()
        self.estimator.tick(self._stats_samples(services))
        samples = {
            (s.spec.key, d.spec.addr, d.spec.port): HandshakeSample(d.syn_retrans, d.handshakes, d.stats.conns)
            for s in services for d in s.dests
        }
        for event in self.stalls.tick(time.monotonic() if now is None else now, samples):
            self._log_stall(event)
        self._log_refusals()

    # Drop reasons that mean "we refused new work": logged once per tick in which they grew.
    REFUSAL_LOGS = {
        "table_full": "connection table full ({entries} entries): {n} new connections refused in the last tick "
                      "(raise lbd --conn-max, or shorten timeouts with lbadm --set)",
        "no_laddr": "FULLNAT local addresses exhausted: {n} new connections refused in the last tick "
                    "(add local addresses with lbadm -P, or more real-server ports)",
    }

    EARLY_DROP_LOG = ("connection table full ({entries} entries): {n} half-open or finished entries dropped "
                      "to make room for new connections in the last tick (early drop; a SYN flood, or raise "
                      "lbd --conn-max)")

    def _log_refusals(self) -> None:
        """Counted refusals become log lines too (issue 3: exhausted pools; issue 8: full table), and so
        do the entries early drop released to make room (issue 15), once per tick in which they grew."""
        counters = dict(self.engine.counters())
        counters["early_drop"] = self.engine.conn_stats()["early_drops"]
        last = self._last_refusals
        entries = self.engine.conn_count()
        for reason, text in {**self.REFUSAL_LOGS, "early_drop": self.EARLY_DROP_LOG}.items():
            n = counters.get(reason, 0) - last.get(reason, counters.get(reason, 0))
            if n > 0:
                log.warning(text.format(n=n, entries=entries))
        self._last_refusals = {r: counters.get(r, 0) for r in (*self.REFUSAL_LOGS, "early_drop")}

    @staticmethod
    def _log_stall(event: StallEvent[DestKey]) -> None:
        """Once per episode: a WARNING with issue 7's diagnosis when it starts, an INFO when it ends."""
        key, addr, port = event.key
        if event.started:
            from lb.doctor.checks_sampled import STALL_CAUSES

            log.warning("destination %s:%d of %s: %d handshakes stalled in %g s; frames leave the director "
                        "but no client ACK returns. Likely causes: %s (client SYN retransmissions +%d, "
                        "completed handshakes +%d; `lbadm doctor` has the details)",
                        addr, port, key, event.stalled, event.window_s, STALL_CAUSES,
                        event.syn_retrans, event.handshakes)
        else:
            log.info("destination %s:%d of %s: handshakes no longer stalled (over the last %g s: "
                     "client SYN retransmissions +%d, completed handshakes +%d)",
                     addr, port, key, event.window_s, event.syn_retrans, event.handshakes)

    def _zero(self, key: ServiceKey | None) -> None:
        """ipvsadm -Z [service]: counters and rates of the service(s) and their destinations restart at 0:
        the engine zeroes its counters, the estimators restart from 0 (ip_vs_zero_estimator). The totals
        restart at 0 with everything, and keep what one service had counted when it alone is zeroed."""
        if key is None:
            self.totals.zero()
            self.engine.zero()
        else:
            self.totals.retire(self._service_counters().get(key, Stats()))
            self.engine.zero_service(key)
        services = [s for s in self.engine.services() if key is None or s.spec.key == key]
        for skey in self._stats_samples(services):
            self.estimator.zero(skey, Stats())

    def _forget_stats(self, match: Callable[[StatsKey], bool]) -> None:
        self.estimator.forget([k for k in self.estimator.keys() if match(k)])

    def _shown(self, skey: StatsKey, raw: Stats) -> dict[str, int]:
        """Counters since the object was created or last zeroed, plus rates: a `stats` object of `list`."""
        return {**raw.to_json(), **self.estimator.read(skey).to_json()}

    def _service_counters(self) -> dict[ServiceKey, Stats]:
        """Each live service's counters since its last zero (`list`'s, without the rates)."""
        return {s.spec.key: s.stats for s in self.engine.services()}

    def _list(self, args: dict[str, Any]) -> dict[str, Any]:
        only = parse_key(args["service"]) if args.get("service") else None
        services = self.engine.services()
        if only is not None and all(s.spec.key != only for s in services):
            raise EngineError("ESRCH", f"no such service {only}")
        table_size = self.engine.table_size()
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
                    "stats": self._shown(_dest_stats_key(s.spec.key, d.spec.addr, d.spec.port), d.stats),
                    "syn_retrans": d.syn_retrans,
                    "handshakes": d.handshakes,
                    "stalled": self.stalls.stalled((s.spec.key, d.spec.addr, d.spec.port)),
                    "stalled_episodes": self.stalls.episodes((s.spec.key, d.spec.addr, d.spec.port)),
                    "l2": {"state": st.state, "ifname": st.ifname, "mac": st.mac, "reason": st.reason},
                })
            laddrs = [{"addr": la.addr, "conns": la.conns} for la in s.laddrs]
            own = self.synproxy_confs.get(s.spec.key)
            out.append({**s.spec.to_json(), "stats": self._shown(_svc_stats_key(s.spec.key), s.stats),
                        "dests": dests, "laddrs": laddrs,
                        "synproxy_conf": synproxy_to_json(own) if own is not None else None})
        return {"version": "1.2.1", "conn_tab_size": table_size, "services": out,
                "synproxy_default": synproxy_to_json(self.synproxy_default)}

    def _connections(self, _args: dict[str, Any]) -> dict[str, Any]:
        now_ms = int(time.monotonic() * 1000)
        return {"connections": [c.to_json() for c in self.engine.connections(now_ms)]}

    def _counters(self, _args: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = {"reasons": self.engine.counters()}
        # One snapshot: the totals are the sum of exactly the per-queue figures shown.
        queues = self.engine.nfq_queue_stats()  # in queue order (lbd --queue-balance: one per thread)
        result["nfq_queues"] = queues
        result["nfq"] = {k: sum(q[k] for q in queues) for k in queues[0]} if queues else {}
        result["synproxy"] = self.engine.synproxy_stats()
        result["table"] = self.engine.conn_stats()  # entries, max, buckets, droppable, early_drops
        return result
