"""The director's control logic, independent of any transport.

It owns one packet engine, the iptables rules that feed it and the
per-destination forwarding state, and executes control-protocol operations
(docs/control-protocol.md). Every operation either completes entirely or
leaves engine and rules as they were.

Every table change - one lbadm command, a `batch` (lbadm -R), a reload - goes through
`execute()`: the commands are first applied to the director's model of the running state
(lb/reconcile.py's State, which refuses exactly what the engines refuse), each with its inverse
noted, so an invalid request is undone in the model and changes nothing; then they go to the
engine one by one, and if the engine still refuses one, the ones already applied are undone in
reverse order (engine and model); the iptables rules are synced once at the end.

Cost (issue 15): the model (`self.state`) is kept in step with the engine change by change, so a
command costs what it changes, not what exists: nothing lists the engine's services to execute
one command, and the per-destination bookkeeping (forwarding state, rate estimators) is indexed
by service. `config_generation` counts committed changes: a saver or cache compares it instead
of the whole configuration.

Counters: `zero` (ipvsadm -Z, for all services or one) uses the engine's zero/zero_service
and restarts the rate estimators (lb/estimator.py) from the zeroed counters.

The engine is used through lb.engine.Engine only: both engines implement all of it.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, Protocol

from lb import __version__
from lb.director_configs import DirectorConfigs
from lb.director_rates import StatsKey, dest_stats_key, svc_stats_key
from lb.director_views import DirectorViews
from lb.engine import Engine, EngineError
from lb.estimator import Estimator, StallWatch
from lb.fwdstate import DestKey, ForwardingStates, FwdStatus, Resolver
from lb.ipsets import Steering, nat_reply_port
from lb.ipvsabi.handlers import operations as ipvs_abi_operations
from lb.model import FWMARK_PROTO, ConfigError, DestSpec, ServiceKey, Stats, SynproxyConf
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
)
from lb.requests import BatchError, parse_command
from lb.stallhistory import StallHistory
from lb.steeringcache import SteeringCache, sync_change
from lb.sync.manager import SyncDaemons
from lb.totals import TotalStats

log = logging.getLogger("lbd")

LOG_EACH_MAX = 50  # a change of more commands is logged as one summary line (details at DEBUG)


class Rules(Protocol):
    def sync(self, steering: Steering, verify_sets: bool = False) -> object: ...


MAX_BATCH_REQUESTS = 1_000_000  # one batch, all its chunks together (memory bound per connection)


class BatchSession:
    """A chunked `batch` in progress on one control connection: the commands of the chunks sent
    with "more": true, applied (all or nothing) with the last chunk, dropped with the connection."""

    def __init__(self) -> None:
        self.pending: list[Command] = []


def _nat_protos(key: ServiceKey) -> tuple[int, ...]:
    """The protocols a NAT real server of this service answers with: a fwmark service's mark may
    gather TCP and UDP (its key has no protocol)."""
    return (6, 17) if key.fwmark else (key.proto,)


class Director(DirectorViews, DirectorConfigs):
    """The control logic (see the module docstring); the whole-configuration operations are
    DirectorConfigs' (lb/director_configs.py), counters and rates DirectorRates'
    (lb/director_rates.py), the listings DirectorViews' (lb/director_views.py)."""

    def __init__(self, engine: Engine, rules: Rules | None, resolver: Resolver | None,
                 config_path: str | None = None, *, queue_num: int | None = None,
                 conntrack: bool = False, down_policy: str = "open", packet_source: str = "nfqueue") -> None:
        self.engine = engine
        self.rules = rules
        self.config_path = config_path  # what `reload` re-reads (lbd --config)
        self.queue_num = queue_num  # reported by `ping` (lbadm doctor finds lbd's chains by it)
        self.conntrack = conntrack  # lbd --conntrack: the IPVS conntrack sysctl analogue
        self.down_policy = down_policy  # lbd --down-policy: what packets do while no lbd runs
        self.packet_source = packet_source  # lbd --packet-source, reported by `ping` (lbadm doctor)
        self.overload: Any = None  # lb.overload.OverloadGuard while lbd runs one (its counters)
        self.napi: Any = None  # lb.napibelow.NapiBelow under --overload-napi (its counters)
        self.fwd = ForwardingStates(engine, resolver)
        self.timeouts: Timeouts = Timeouts(*engine.get_timeouts())
        # The model of what the engine holds, kept in step with it by execute() (never re-listed).
        self.state = State.from_services(engine.services(), self.timeouts)
        self.state.synproxy_default = SynproxyConf()
        self.config_generation = 0  # + 1 per committed change
        self.steering_cache = SteeringCache()  # the sets' content kept change by change (lb/steeringcache.py)
        self._resync_model_after_undo = False  # a rollback step failed: re-read the model from the engine
        self._snapshot_cache: tuple[int, dict[str, Any]] | None = None
        self.estimator: Estimator[StatsKey] = Estimator()
        self.stalls: StallWatch[DestKey] = StallWatch()
        self.stall_history = StallHistory()  # recent episodes, for lbadm doctor (op stall_history)
        # SYN-proxy settings as last applied (the engines cannot report them): the global default
        # and the services that have their own.
        self.synproxy_default = SynproxyConf()
        self.synproxy_confs: dict[ServiceKey, SynproxyConf] = {}
        self._last_refusals: dict[str, int] = {}  # REFUSAL_LOGS counters at the previous tick
        self._moved_at: dict[ServiceKey, float] = {}  # services whose counters moved lately -> when (estimate)
        self._estimated_at: tuple[int, int] | None = None  # (packets counted, config_generation) at the last full tick
        self._watch_mark: int | None = None  # the engine's rate_tick mark at the last tick (C engine)
        self._watch_moved_at = 0.0  # when it last changed
        self.totals = TotalStats()  # IPVS's tot_stats: every service's counters, deleted ones included
        self.sync = SyncDaemons(self)  # connection sync daemons (lb/sync), none running at first
        self._ops: dict[str, Callable[[dict[str, Any]], Any]] = {
            "ping": self._ping,
            "list": self._list,
            "connections": self._connections,
            "counters": self._counters,
            "get_timeout": self._get_timeout,
            "get_daemon": self._get_daemon,
            "start_daemon": self._start_daemon,
            "stop_daemon": self._stop_daemon,
            "batch": self._batch,  # handle() passes the connection's BatchSession
            "reload": self._reload,
            "stall_history": lambda _args: self.stall_history.to_json(),
        }
        for op in COMMAND_TYPES:  # add_service ... set_timeout: one command each
            self._ops[op] = functools.partial(self._single, op)
        # The kernel's IPVS sockopt ABI and /proc/net/ip_vs* for unmodified ipvsadm/keepalived
        # (lb/ipvsabi, through the preload library that lbd-exec starts them with).
        self._ops.update(ipvs_abi_operations(self))

    # ------------------------------------------------------------ dispatch
    def handle(self, op: str, args: dict[str, Any], session: BatchSession | None = None) -> Any:
        """Execute one request. `session`: the connection's chunked batch in progress, if any
        (only `batch` uses it; without one a batch must come in one piece)."""
        handler = self._ops.get(op)
        if handler is None:
            raise EngineError("EOPNOTSUPP", f"unknown operation {op!r}")
        try:
            if op == "batch":
                return self._batch(args if args is not None else {}, session)
            return handler(args if args is not None else {})
        except StateError as exc:
            raise EngineError(exc.errno_name, f"{op}: {exc}") from exc
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, (EngineError, ConfigError)):
                raise
            raise EngineError("EINVAL", f"{op}: bad arguments: {exc!r}") from exc

    # ------------------------------------------------------------ rules
    # The rules' inputs come from the model (self.state), never from listing the engine.
    def steering(self, state: State | None = None) -> Steering:
        """What the raw-table sets must hold: every service, FULLNAT replies from each real server
        to each local address, NAT replies from each NAT real server. ICMP to every VIP and local
        address is queued too (the address set): errors about balanced connections (e.g.
        fragmentation needed, port unreachable from a real server) must reach the fast path, which
        relates them to their connection entry as IPVS's ip_vs_in_icmp does. From the model
        (`state`, or self.state): plain Python, never a listing of the engine."""
        st = Steering()
        model = self.state if state is None else state
        services_add, addrs, fnat, nat = st.services.add, st.addrs, st.fnat_replies, st.nat_replies
        # One plain pass (this runs on every change: ~3 ms at 10,000 services); what most
        # services lack (local addresses, NAT or FULLNAT destinations) costs one test.
        for key, svc in model.services.items():
            fwmark = key.proto == FWMARK_PROTO
            if fwmark:
                st.fwmarks.add(key.fwmark)
            else:
                services_add((key.proto, key.addr, key.port))
            if svc.laddrs:
                addrs.update(svc.laddrs)
            for spec in svc.dests.values():
                if spec.fwd == "masq":
                    rport = nat_reply_port(key.port, svc.spec.persistent is not None, spec.port)
                    nat.update((proto, spec.addr, rport) for proto in _nat_protos(key))
                elif spec.fwd == "fullnat":
                    rport = nat_reply_port(key.port, svc.spec.persistent is not None, spec.port)
                    fnat.update((proto, spec.addr, rport, la) for proto in _nat_protos(key) for la in svc.laddrs)
        return st

    def sync_rules(self, state: State | None = None, verify: bool = False) -> None:
        """Make lbd's rules and sets steer `state` (or the model). A change trusts lbd's cache of
        its own ip sets; verify=True also finds sets someone else changed (a periodic check)."""
        if self.rules is not None:
            self.rules.sync(self.steering(state), verify_sets=verify)
            if state is None:  # the next change starts from here, not from a rebuild (lb/steeringcache.py)
                self.steering_cache.rebuild(self.state)

    # ------------------------------------------------------------ forwarding state (lb.fwdstate)
    @property
    def fwd_status(self) -> dict[DestKey, FwdStatus]:
        return self.fwd.status

    def resolve_dest(self, key: ServiceKey, dest: DestSpec) -> None:
        """Resolve and install one destination's forwarding state, or invalidate it."""
        self.fwd.resolve(key, dest)

    def refresh_all(self, only_unresolved: bool = False) -> int:
        """Re-resolve every destination's address now (or only the unresolved ones whose retry is
        due); returns how many destinations remain unresolved."""
        return self.fwd.refresh(only_unresolved)

    def invalidate_all(self) -> None:
        """Something in the routing tables changed: every address is re-resolved, in the background
        (resolve_pending), a budget at a time; the steering looks up again the interfaces it binds
        to (lbd --nat-replies ingress)."""
        self.fwd.invalidate()
        routes_changed = getattr(getattr(self.rules, "nfq_rules", self.rules), "routes_changed", None)
        if routes_changed is not None:
            try:
                routes_changed()
            except Exception as exc:  # lbd's steering watch heals what could not be written
                log.warning("NAT replies at ingress: re-binding after a routing change failed: %s", exc)

    # ------------------------------------------------------------ state
    def running_state(self) -> State:
        """A copy of the model of what the engine holds (timeouts and SYN-proxy settings included)."""
        return self.state.copy()

    # ------------------------------------------------------------ changing the tables
    def execute(self, cmds: list[Command], batch: bool = False, log_level: int = logging.INFO) -> None:
        """Apply `cmds` all or nothing (see the module docstring). Raises EngineError (BatchError if `batch`).

        Each applied command is logged at `log_level` (a reload has logged its plan already);
        beyond LOG_EACH_MAX commands (a large restore) one summary line replaces them at INFO.
        """
        state = self.state
        undos: list[list[Command]] = []  # undos[i] reverts cmds[i], computed from the state before it
        for i, cmd in enumerate(cmds):
            try:
                undo = inverse(state, cmd)
            except (StateError, KeyError):
                undo = []  # the command does not apply: state.apply says why
            try:
                state.apply(cmd)
            except StateError as exc:
                self._undo_model(undos)
                raise self._refusal(exc.errno_name, str(exc), i, cmd, batch) from exc
            undos.append(undo)
        # Counters of services this change may delete: they stay in the totals (lb/totals.py).
        removing = self._removed_counters(cmds)
        for i, cmd in enumerate(cmds):
            try:
                self._engine_apply(cmd)
            except EngineError as exc:
                self._rollback(undos[:i])
                self._undo_model(undos)
                raise self._refusal(exc.errno_name, str(exc), i, cmd, batch) from exc
            except Exception as exc:  # a bug below us: still leave the tables as they were
                log.exception("engine failed on %s", cmd.describe())
                self._rollback(undos[:i])
                self._undo_model(undos)
                raise self._refusal("EIO", f"engine failed: {exc!r}", i, cmd, batch) from exc
            # What a deleted service counted stays in the totals, even if the change is rolled
            # back later (the re-created service starts from 0, as the kernel's would).
            if isinstance(cmd, DelService):
                self.totals.retire(removing.pop(cmd.key, Stats()))
            elif isinstance(cmd, Clear):
                for stats in removing.values():
                    self.totals.retire(stats)
                removing.clear()
        try:  # only what these commands changed in the sets: no walk of the model or the engine
            if self.rules is not None:
                sync_change(self.rules, self.steering_cache, state, cmds, self.steering)
        except Exception as exc:
            self._rollback(undos)
            self._undo_model(undos)
            try:
                self.sync_rules()
            except Exception:
                log.exception("restoring the iptables rules after a failed change failed")
            refused = getattr(exc, "errno_name", None)  # the packet source cannot steer this (lb.afxdp.AfxdpRefusal)
            log.log(logging.INFO if isinstance(refused, str) else logging.ERROR,
                    "change refused, nothing was changed: the steering could not be updated: %s", exc)
            if isinstance(refused, str):
                raise EngineError(refused, f"{exc}; nothing was changed") from exc
            raise EngineError("EIO", f"iptables rules could not be updated, nothing was changed: {exc}") from exc
        self.config_generation += 1
        self.synproxy_default = state.synproxy_default or SynproxyConf()
        self._committed(cmds, state, log_level if len(cmds) <= LOG_EACH_MAX else logging.DEBUG)
        if len(cmds) > LOG_EACH_MAX:
            n_svc, n_dest, n_laddr = state.counts()
            log.info("applied %d commands: now %d services, %d destinations, %d local addresses",
                     len(cmds), n_svc, n_dest, n_laddr)

    def _undo_model(self, undos: list[list[Command]]) -> None:
        """Revert the model by the inverses of the commands it took (the engine is the caller's)."""
        for undo in reversed(undos):
            for cmd in undo:
                self.state.apply(cmd)
        undos.clear()
        if self._resync_model_after_undo:
            self._resync_model_after_undo = False
            self._resync_model()

    def _removed_counters(self, cmds: list[Command]) -> dict[ServiceKey, Stats]:
        """Counters of the live services `cmds` delete (read before the engine forgets them)."""
        if any(isinstance(c, Clear) for c in cmds):
            return {s.spec.key: s.stats for s in self.engine.services()}
        out: dict[ServiceKey, Stats] = {}
        for c in cmds:
            if isinstance(c, DelService) and c.key not in out:
                try:
                    out[c.key] = self.engine.service(c.key).stats
                except EngineError:
                    pass  # created by this very batch: nothing counted yet
        return out

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
        failed = False
        for undo in reversed(done):
            for cmd in undo:
                try:
                    self._engine_apply(cmd)
                except Exception as exc:  # keep undoing the rest; this one is reported
                    failed = True
                    log.error("rollback step %s failed: %s", cmd.describe(), exc)
        if failed:
            self._resync_model_after_undo = True

    def _resync_model(self) -> None:
        """The engine did not take back everything: the model is re-read from it (the one place
        that lists the engine), keeping the SYN-proxy settings the engines cannot report."""
        fresh = State.from_services(self.engine.services(), self.timeouts)
        fresh.synproxy_default = self.state.synproxy_default
        for key, svc in fresh.services.items():
            old = self.state.services.get(key)
            svc.synproxy_conf = old.synproxy_conf if old is not None else None
        self.state = fresh
        self.config_generation += 1
        log.warning("the model of the running state was re-read from the engine after a failed rollback")

    def _committed(self, cmds: list[Command], final: State, log_level: int) -> None:
        """Bookkeeping after a change went through: logs, counters, forwarding state. O(change):
        what a deleted service had is forgotten through its own index, not by scanning everything."""
        to_resolve: dict[tuple[ServiceKey, str, int], None] = {}
        describe = log.isEnabledFor(log_level)  # describe() is not free: 30,000 of them at DEBUG
        for cmd in cmds:
            if describe:
                log.log(log_level, "applied: %s", cmd.describe())
            if isinstance(cmd, Clear):
                self.fwd.clear()
                self.estimator.forget(self.estimator.keys())
                self.stalls.forget(self.stalls.keys())
                self.synproxy_confs.clear()
                to_resolve.clear()
            elif isinstance(cmd, DelService):
                gone = self.fwd.remove_service(cmd.key)
                self.estimator.forget([svc_stats_key(cmd.key)] + [dest_stats_key(cmd.key, a, p) for a, p in gone])
                self.stalls.forget([(cmd.key, a, p) for a, p in gone])
                self.synproxy_confs.pop(cmd.key, None)
                for addr, port in gone:
                    to_resolve.pop((cmd.key, addr, port), None)
            elif isinstance(cmd, DelDest):
                ident = (cmd.key, cmd.addr, cmd.port)
                self.fwd.remove(*ident)
                self.estimator.forget([dest_stats_key(*ident)])
                self.stalls.forget([ident])
                to_resolve.pop(ident, None)
            elif isinstance(cmd, (AddDest, EditDest)):
                to_resolve[(cmd.key, cmd.dest.addr, cmd.dest.port)] = None
            elif isinstance(cmd, EditService):
                # A service edit invalidates its destinations' forwarding state too (issue 3, as
                # IPVS resets its per-destination route cache): resolve each afresh.
                svc = final.services.get(cmd.spec.key)
                for addr, port in (svc.dests if svc is not None else {}):
                    to_resolve[(cmd.spec.key, addr, port)] = None
            elif isinstance(cmd, SetSynproxy) and cmd.key is not None:
                if cmd.conf is None:
                    self.synproxy_confs.pop(cmd.key, None)
                else:
                    self.synproxy_confs[cmd.key] = cmd.conf
            elif isinstance(cmd, Zero):
                self._zero(cmd.key)
        todo = []
        for key, addr, port in to_resolve:
            svc = final.services.get(key)
            dest = svc.dests.get((addr, port)) if svc is not None else None
            if dest is not None:
                todo.append((key, dest))
        self.fwd.resolve_changed(todo)

    # ------------------------------------------------------------ operations
    def _ping(self, _args: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {"version": __version__, "engine": self.engine.name, "queue_num": self.queue_num,
                               "conntrack": self.conntrack, "down_policy": self.down_policy, "packet_source": self.packet_source,
                               "steering": getattr(self.rules, "steering_kind", None)}  # iptables | nftables
        hook = getattr(getattr(self.rules, "nfq_rules", self.rules), "hook", None)  # nftables: --steer-hook
        if isinstance(hook, str):
            out["steering_hook"] = hook
            out["nat_replies"] = getattr(getattr(self.rules, "nfq_rules", self.rules), "nat_replies", "forward")
        afxdp_status = getattr(self.rules, "afxdp_status", None)  # --packet-source afxdp (lb/afxdp.py)
        if afxdp_status is not None:
            out["afxdp"] = {"interfaces": afxdp_status(), "nfqueue_fallback": hasattr(self.rules, "nfq_rules")}
        return out

    def _single(self, op: str, args: dict[str, Any]) -> None:
        self.execute([parse_command(op, args)])

    def _batch(self, args: dict[str, Any], session: BatchSession | None = None) -> dict[str, Any]:
        """One batch, or one chunk of a chunked one (docs/control-protocol.md: "more": true queues
        the chunk's requests on the connection; the chunk without it applies them all at once)."""
        requests = args.get("requests")
        if not isinstance(requests, list):
            if session is not None:
                session.pending = []
            raise EngineError("EINVAL", "batch: 'requests' must be a list of {\"op\", \"args\"} objects")
        more = args.get("more", False)
        if not isinstance(more, bool):
            raise EngineError("EINVAL", "batch: 'more' must be a boolean")
        if more and session is None:
            raise EngineError("EINVAL", "batch: a chunked batch ('more': true) needs a control connection")
        queued = session.pending if session is not None else []
        if session is not None:
            session.pending = []  # a refused chunk drops the whole batch; a complete one is applied below
        if len(queued) + len(requests) > MAX_BATCH_REQUESTS:
            raise EngineError("EINVAL", f"batch: more than {MAX_BATCH_REQUESTS} requests; nothing was changed")
        cmds = queued + self._parse_batch(requests, len(queued))
        if more:
            assert session is not None
            session.pending = cmds
            return {"queued": len(cmds)}
        self.execute(cmds, batch=True)
        return {"applied": len(cmds)}

    def _parse_batch(self, requests: list[Any], base: int) -> list[Command]:
        """The requests of a batch (or of one chunk, whose first is request `base` of the batch)."""
        cmds: list[Command] = []
        for n, req in enumerate(requests):
            i = base + n
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
        return cmds

    def _get_timeout(self, _args: dict[str, Any]) -> dict[str, int]:
        return self.timeouts.to_json()

    # The IPVS connection sync daemons (ipvsadm --start-daemon): lb/sync/manager.py.
    def _get_daemon(self, args: dict[str, Any]) -> dict[str, Any]:
        return self.sync.get(args)

    def _start_daemon(self, args: dict[str, Any]) -> None:
        self.sync.start(args)

    def _stop_daemon(self, args: dict[str, Any]) -> None:
        self.sync.stop(args)
