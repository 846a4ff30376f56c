"""lbd: the director daemon.

Foreground, logs to stderr, asyncio on uvloop. Owns the packet engine (the C
fast path by default, the pure-Python engine with --engine python), the
iptables rules that feed it, forwarding-state resolution (pyroute2) and the
control socket that lbadm talks to (docs/control-protocol.md).

Lifecycle (issue 8: restarts lose nothing). Start: the tables are filled first - from the
state file when there is one and no --config (or with --restore), then from --config - and
connections are restored into the engine; only then is the queue bound and are the rules
installed (rules a previous lbd left are adopted and changed by the minimal diff, so restored
flows never meet an empty chain). Running: the state file (--state-dir, lbd-q<N>.state:
configuration as JSON, connection table as the engine's raw dump) is rewritten atomically every
2 s. SIGTERM/SIGINT: the queue thread stops, the state is saved a last time, the socket file is
unlinked; with --down-policy open (default) the rules are removed (packets to the VIPs reach the
director's own stack: the IPVS behaviour without a director), with closed they stay without
--queue-bypass (the kernel drops them; clients retransmit until lbd is back; `lbd --cleanup`
removes them). SIGHUP (or `lbadm --reload`) re-reads the --config file and applies the minimal
plan (lb/reconcile.py); an invalid file is rejected whole and the running state stays.

--conntrack is the analogue of IPVS's net.ipv4.vs.conntrack sysctl (off by default): no CT
--notrack rules, so the director's conntrack sees what lbd hands back and what it sends on its
raw socket; narrower than IPVS's, since forwarded packets are queued before conntrack's hook
(docs/firewall.md).

`lbd --check [--diff] [FILE]` validates a configuration file without starting
(every error with file and line; exit 1 if any), including a dry run of the
file against a scratch engine; with --diff it also prints the plan against the
running lbd (read over the control socket) without applying it.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from lb import __version__, consts, logsetup, overload, periodic, sdnotify, statefile
from lb.ctlserver import ControlServer, socket_alive
from lb.daemon_options import AFXDP_REFUSED, DEFAULT_SOCKET, DEFAULT_STEERING, parse_args, socket_path, steer_hook
from lb.director import Director
from lb.engine import Engine, EngineError, FwdState
from lb.estimator import ESTIMATOR_TICK_S
from lb.fwdstate import Resolution, Resolver
from lb.model import ConfigError

log = logging.getLogger("lbd")

RESOLVE_TICK_S = 1.0  # retries and the periodic re-check (lb/fwdstate.py rates them)
RESOLVE_SLICE_S = 0.02  # background resolution: this much at a time, then the loop serves requests
RESOLVE_BATCH = 50  # background resolution on lbd's loop: lookups awaited one by one, then the tick's turn


def make_engine(kind: str, conn_max: int) -> Engine:
    if kind == "python":
        from lb.pyengine import PyEngine

        return PyEngine(conn_max=conn_max)
    from lb.fastpath import CEngine

    return CEngine(conn_max=conn_max)


def make_resolver() -> tuple[Resolver, Callable[[str], Awaitable[Resolution]], Callable[[], None]]:
    """(resolver for the Director, the same awaitable for lbd's loop, closer), backed by
    lb.netlink.Resolver in this network namespace.

    pyroute2 0.9's synchronous IPRoute drives an asyncio loop of its own, which cannot run inside
    lbd's loop: the Resolver's worker thread owns the IPRoute and the Director's (synchronous)
    calls wait for it. Each call is a few netlink round trips (milliseconds); neighbour
    resolution itself is asynchronous in the kernel (NTF_USE) and picked up by the next refresh.
    """
    from lb import netlink

    worker = netlink.Resolver()

    def resolution(res: Any) -> Resolution:
        if res.fwd is None:
            return Resolution(None, ifname=res.ifname or "", reason=res.reason or "unresolved", nexthop=res.nexthop or "")
        return Resolution(FwdState(**dataclasses.asdict(res.fwd)), ifname=res.ifname or "", nexthop=res.nexthop or "")

    def resolve(daddr: str) -> Resolution:
        return resolution(worker.resolve_blocking(daddr))

    async def resolve_async(daddr: str) -> Resolution:
        return resolution(await worker.resolve_once(daddr))

    return resolve, resolve_async, worker.close_blocking


async def _resolve_loop(director: Director,
                        resolve_async: Callable[[str], Awaitable[Resolution]] | None = None) -> None:
    """Keep forwarding state fresh (lb/fwdstate.py): pending addresses (a large change, a route
    change) RESOLVE_SLICE_S at a time so that requests are served in between; the due retries and
    the periodic re-check's lookups when fwd.next_due() says, on the periodic grid (lb/periodic.py).
    Between those it sleeps, also for many seconds (one destination: a re-check every 15 s), and
    fwd.wake ends the sleep when work appears (pending addresses, a retry scheduled, a new address):
    an idle lbd's loop does not wake every second for this (issue 19). Runs until cancelled."""
    fwd = director.fwd
    woken = asyncio.Event()
    fwd.wake = woken.set
    try:
        while True:
            if fwd.pending:
                await asyncio.sleep(0)
            else:
                woken.clear()
                due = fwd.next_due()
                delay = None if due is None else max(0.0, due - fwd.clock())
                # Always to a grid point ahead, even when due already (retries held back by their rate
                # limit): at most one tick per RESOLVE_TICK_S, as before.
                await periodic.sleep_on_grid(delay, RESOLVE_TICK_S, woken)
            try:
                if fwd.pending:
                    if resolve_async is not None:  # requests are served during each lookup
                        left = await fwd.resolve_pending_async(resolve_async, RESOLVE_BATCH)
                    else:
                        left = fwd.resolve_pending(RESOLVE_SLICE_S)
                    if not left:
                        log.info("forwarding state: background resolution done (%d addresses, %d unresolved)",
                                 fwd.addresses(), fwd.unresolved_addresses())
                due = fwd.next_due()
                if due is not None and due <= fwd.clock() + periodic.EARLY_FRACTION * RESOLVE_TICK_S:
                    fwd.tick()
            except Exception:  # keep the daemon up; the next round retries
                log.exception("forwarding-state refresh failed")
    finally:
        fwd.wake = None


def _reload_on_sighup(director: Director) -> None:
    if director.config_path is None:
        log.warning("SIGHUP: lbd was started without --config, nothing to reload")
        return
    log.info("SIGHUP: reloading %s", director.config_path)
    sdnotify.reloading()
    outcome = f"reloaded {director.config_path}"
    try:
        director.handle("reload", {})
    except (EngineError, ConfigError) as exc:
        log.error("reload failed: %s", exc)
        outcome = f"reload of {director.config_path} failed, previous configuration kept: {exc}"
    except Exception as exc:
        log.exception("reload failed")
        outcome = f"reload of {director.config_path} failed, previous configuration kept: {exc}"
    sdnotify.ready(outcome)


LOCAL_ADDRS_TIMEOUT_S = 10.0  # one netlink dump of the local routing table


def sync_local_addrs(director: Director) -> None:
    """Tell the engine the director's own addresses (a new connection from one is a martian source,
    as fib_validate_source has it); a failure keeps the previous set and is logged."""
    from lb import netlink

    try:
        # In a thread of its own: pyroute2's synchronous IPRoute cannot run inside lbd's running event
        # loop ("this event loop is already running"), which left the set empty from the start.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="lb-local-addrs") as pool:
            addrs = pool.submit(netlink.local_addresses).result(timeout=LOCAL_ADDRS_TIMEOUT_S)
        director.engine.set_local_addrs(addrs)
        set_xdp_local = getattr(director.rules, "set_local_addrs", None)  # --packet-source afxdp
        if set_xdp_local is not None:
            set_xdp_local(addrs)
        guard = getattr(director, "overload", None)
        set_shed_local = getattr(getattr(guard, "writer", None), "set_local_addrs", None)  # --overload-xdp
        if set_shed_local is not None:
            set_shed_local(addrs)
    except Exception as exc:
        log.warning("could not read the director's own addresses (martian-source check keeps the previous "
                    "set): %s", exc)
        return
    log.debug("director's own addresses: %s", ", ".join(addrs) or "none")


def _start_monitor(director: Director, loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> Any:
    """Re-resolve every destination when routes, addresses, neighbours or links change."""
    from lb import netmonitor

    pending: dict[str, asyncio.TimerHandle | None] = {"handle": None}
    addrs_changed = {"yes": False}

    def run_refresh() -> None:
        pending["handle"] = None
        if stop.is_set():
            return
        if addrs_changed["yes"]:
            addrs_changed["yes"] = False
            sync_local_addrs(director)
        try:
            director.invalidate_all()
        except Exception:
            log.exception("re-resolving destinations after a netlink change failed")

    def on_event(kind: str) -> None:
        log.debug("netlink %s change: re-resolving destinations", kind)
        if kind in ("addr", netmonitor.EVENT_OVERRUN):
            addrs_changed["yes"] = True
        if pending["handle"] is None and not stop.is_set():
            pending["handle"] = loop.call_later(0.05, run_refresh)  # coalesce bursts

    def on_neighbour(ip: str, mac: bytes | None) -> None:
        # Targeted (issue 15): only addresses behind this next hop, and only if what they use changed.
        if director.fwd.neighbour_changed(ip, mac):
            log.debug("neighbour %s changed: its destinations are re-resolved", ip)

    class _Monitor:
        def __init__(self) -> None:
            self.inner = netmonitor.NetlinkMonitor(on_event, on_neighbour=on_neighbour)
            self.inner.start(loop)

        def stop(self) -> None:
            self.inner.stop()
            if pending["handle"] is not None:
                pending["handle"].cancel()
                pending["handle"] = None

    return _Monitor()


# ---------------------------------------------------------------------------- state snapshots

SNAPSHOT_EVERY_S = 2.0


def _snapshot_tick(saver: statefile.StateSaver) -> Callable[[], None]:
    """Every SNAPSHOT_EVERY_S: what changed, to the state file's journal (what a SIGKILLed lbd is
    restarted from); now and then a whole new snapshot (lb/statefile.py). A failure is said once per
    distinct problem; serving goes on."""
    last_error = ""

    def tick() -> None:
        nonlocal last_error
        try:
            summary = saver.save()
            log.debug("state saved to %s: %s", saver.path, summary)
            last_error = ""
        except Exception as exc:
            if str(exc) != last_error:
                log.error("saving state to %s failed: %s", saver.path, exc)
            last_error = str(exc)

    return tick


def _install_rules(rules: Any, director: Director, xdp: Any = None) -> None:
    """Take over this queue's chains and make them hold exactly the running services' rules.

    Rules left in place by a previous lbd (--down-policy closed, or a crash) are adopted and
    changed by the minimal diff, in one transaction: packets of restored flows never meet an
    empty chain (they would reach the director's own stack, which resets them). Anything else
    (no chain, a conntrack opt-in, duplicate jumps) starts from a clean chain (RuleManager.setup).
    """
    if rules.adoptable():
        log.info("adopting the rules a previous lbd left on queue %d (%d rules)", rules.queue_num, len(rules.rules()))
    else:
        rules.setup()
    if xdp is not None:  # --packet-source afxdp: these rules are its NFQUEUE fallback
        from lb.afxdp import AfxdpWithFallback

        director.rules = AfxdpWithFallback(xdp, rules)
    else:
        director.rules = rules
    director.sync_rules()


def _start_guard(args: argparse.Namespace, engine: Any, rules: Any, xdp: Any,
                 director: Director) -> overload.OverloadGuard | None:
    """--overload-guard on (the default) where it can work: NFQUEUE fed, its bucket in lbd's nftables
    table or, with --overload-xdp, in XDP programs on the given interfaces (lb/xdpshed.py, attached
    here: a failure stops lbd's start). Any guard chain a previous lbd left (killed while armed) is
    removed first."""
    if args.overload_guard != "on" or xdp is not None:
        return None
    writer: Any = rules
    if args.overload_xdp:  # the bucket in an XDP program on the clients' interfaces (lb/xdpshed.py)
        from lb.xdpshed import XdpShed

        writer = XdpShed(args.overload_xdp, director.steering, lambda: director.config_generation, args.xdp_mode)
        writer.start()
    elif rules is None:
        return None
    elif not hasattr(rules, "write_guard"):
        log.info("overload guard off: it needs --steering nftables (its chain lives in lbd's table) or --overload-xdp")
        return None
    guard = overload.OverloadGuard(overload.queue_sample(engine.nfq_stats), writer,
                                   args.queue_maxlen or consts.LB_NFQ_MAXLEN_DEFAULT)
    if rules is not None and hasattr(rules, "write_guard"):
        rules.write_guard(None)  # a guard chain a previous lbd left (killed while armed)
    guard.stop()
    director.overload = guard
    if args.overload_xdp:
        sync_local_addrs(director)  # the programs' NAT reply keys leave the director's own addresses alone
    return guard


def _natrx_starter(engine: Any, args: argparse.Namespace) -> Any:
    """--nat-replies ingress: what lbd's steering calls with the veth peer's ifindex whenever the pair
    is (re)created (with the first NAT real server): the C reader of NAT replies, (re)started on it;
    with 0 when the pair is removed (the last one left): the reader stopped."""
    def start(ifindex: int) -> None:
        if not ifindex:
            engine.stop_natrx()
            log.info("NAT replies at ingress: no NAT real server left, reader stopped")
            return
        engine.start_natrx(ifindex, args.queue_num, qdisc_bypass=args.qdisc_bypass)
        log.info("NAT replies taken at ingress: read from interface %d by queue %d's thread", ifindex, args.queue_num)
    return start


def make_rules(args: argparse.Namespace, cleanup: bool = False) -> Any:
    """The queue's steering manager of --steering: lb.iptables.RuleManager (raw-table rules and ip
    sets) or lb.nftsteer.NftManager (one native nftables table); the same public methods."""
    kind = getattr(args, "steering", DEFAULT_STEERING)
    if kind == "nftables":
        import shutil

        from lb.nftsteer import NftManager

        cls: Any = NftManager
        nft = {"nft": shutil.which("nft") or "nft", "hook": steer_hook(kind, getattr(args, "steer_hook", None)),
               "nat_replies": getattr(args, "nat_replies", None) or "forward"}
    else:
        from lb.iptables import RuleManager

        cls, nft = RuleManager, {}
    if cleanup:
        return cls(args.queue_num, **nft)
    return cls(args.queue_num, args.queues.balance, track=args.conntrack, bypass=args.down_policy == "open",
               cpu_fanout=args.queues.cpu_fanout, **nft)


def cleanup(args: argparse.Namespace) -> int:
    """lbd --cleanup: remove this queue's rules (after a --down-policy closed lbd), then exit."""
    from lb.iptables import IptablesError

    if args.no_iptables:
        log.error("--cleanup removes lbd's steering (table or rules): it does not go with --no-iptables")
        return 2
    rules = make_rules(args, cleanup=True)
    try:
        rules.teardown()
        rules.remove_other_layer()  # whichever --steering left the queue's steering
    except IptablesError as exc:
        log.error("%s", exc)
        return 1
    log.info("queue %d: rules removed; packets to the VIPs reach this host's own stack now "
             "(the state file, if any, is kept: %s)", args.queue_num, statefile.state_path(args.state_dir, args.queue_num))
    from lb.napibelow import NapiBelow

    for name in NapiBelow((), record_dir=Path(socket_path(args.socket)).parent).put_back_leftovers():
        log.info("%s: its NAPI threading put back as the killed lbd found it (--overload-napi)", name)
    return 0


async def run(args: argparse.Namespace) -> int:
    path = socket_path(args.socket)
    if socket_alive(path):
        log.error("another lbd is already listening on %s", path)
        return 1
    engine = make_engine(args.engine, args.conn_max)
    rules = None
    afxdp = args.packet_source == "afxdp"
    if not args.no_iptables:  # with afxdp: the NFQUEUE fallback for what XDP cannot take (AfxdpWithFallback)
        rules = make_rules(args)
        problem = rules.detect()
        if problem:
            log.error("cannot manage %s steering: %s", args.steering, problem)
            return 1
    snapshot = statefile.state_path(args.state_dir, args.queue_num) if args.state_dir else None
    restoring = snapshot is not None and (args.restore or (not args.config and snapshot.exists()))
    resolver, resolve_async, close_resolver = make_resolver()
    # Absolute: a reload must read the same file whatever lbd's working directory is then.
    # The rules are handed over once the tables are complete (_install_rules).
    director = Director(engine, None, resolver, config_path=os.path.abspath(args.config) if args.config else None,
                        queue_num=args.queue_num, conntrack=bool(args.conntrack and rules is not None),
                        down_policy=args.down_policy, packet_source=args.packet_source)
    director.sync.rule = args.sync_rule
    server = ControlServer(director, path)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, _reload_on_sighup, director)

    monitor = None
    saver: statefile.StateSaver | None = None  # the periodic saves' state, the last save at exit goes on with it
    metrics: Any = None  # lb.metrics.MetricsServer with --metrics
    engine_started = rules_set_up = ready = False
    xdp: Any = None  # lb.afxdp.AfxdpSource with --packet-source afxdp
    watching: Any = None  # lb.steerevents.Watching: the steering watch's socket and task
    guard: overload.OverloadGuard | None = None  # lb.overload, while lbd runs
    napi: Any = None  # lb.napibelow.NapiBelow with --overload-napi
    try:
        # The tables first, connections included: once the queue is bound (and, with
        # --down-policy closed, the previous lbd's rules still queue the VIPs' packets) every
        # packet of a restored flow must find its entry.
        if restoring:
            assert snapshot is not None
            if snapshot.exists():
                from lb.staterecover import restore_or_set_aside

                restore_or_set_aside(director, snapshot)  # a damaged file is set aside, never fatal
            else:
                log.warning("--restore: no state file %s; starting empty", snapshot)
        if args.config:
            from lb.config import load_config

            director.apply_config(load_config(args.config), "reload after restore" if restoring else "start")
        if args.metrics is not None:  # a taken port stops lbd before it touches the queue or the rules
            from lb.metrics import start_metrics

            metrics = start_metrics(args.metrics, director, loop, args.queues.queues)
        # Bind the queue before touching any rule: if another process owns it we fail here.
        c_opts: dict[str, Any] = {}
        if args.engine == "c":
            c_opts = {"fail_open": args.fail_open, "qdisc_bypass": args.qdisc_bypass, "queues": args.queues.queues,
                      "cpus": args.queues.cpus, "gso_mtu": args.gso_mtu if args.gso else None,
                      "queue_maxlen": args.queue_maxlen}
        if afxdp:
            from lb.afxdp import AfxdpSource
            from lb.fastpath import CEngine

            assert isinstance(engine, CEngine)  # parse_args: --packet-source afxdp needs --engine c
            # With the NFQUEUE fallback its queue's thread runs the expiry sweep and the timers.
            xdp = AfxdpSource(engine.handle, args.xdp_interface, args.xdp_mode, args.xdp_copy, cpus=args.xdp_cpus,
                              mark_queue=args.queue_num, timers=rules is None, qdisc_bypass=args.qdisc_bypass,
                              fastpath=args.xdp_fastpath)
            director.rules = xdp
            director.sync_rules()  # the keys first: the program redirects nothing lbd has no entry for
            engine_started = True  # from here on stopped on exit, also after a partial start
            if rules is not None:
                engine.start(args.queue_num)  # the fallback's queue, before its rules exist
            xdp.start()
            log.info("engine %s fed by AF_XDP: %s%s", engine.name, xdp.describe(),
                     f"; NFQUEUE {args.queue_num} takes fragments and director-local clients' packets" if rules
                     is not None else "; no NFQUEUE fallback (--no-iptables): fragments and director-local "
                     "clients' packets to the VIPs reach the director's own stack")
        else:
            engine.start(args.queue_num, **{k: v for k, v in c_opts.items() if v})
            engine_started = True
            log.info("engine %s bound to %s%s", engine.name, args.queues.describe(),
                     f", GSO packets cut to {args.gso_mtu} bytes (DR: sent on whole)" if args.gso else "")
        if rules is not None:
            rules_set_up = True  # from here on the chains are ours to remove on exit (policy open)
            if getattr(rules, "ingress", None) is not None:  # --nat-replies ingress: its reader, on the pair
                rules.on_ingress_pair = _natrx_starter(engine, args)
            _install_rules(rules, director, xdp)
        if args.overload_napi:  # the receive work below lbd (lb/napibelow.py); a failure stops the start
            from lb.napibelow import NapiBelow

            napi = NapiBelow(args.overload_napi, record_dir=Path(path).parent)
            napi.start()
            director.napi = napi
        await server.start()
        sync_local_addrs(director)
        monitor = _start_monitor(director, loop, stop)
        ready = True
        log.info("lbd %s ready: control socket %s, queue %d, engine %s, down-policy %s%s", __version__,
                 server.path, args.queue_num, engine.name, args.down_policy,
                 f", state {snapshot}" if snapshot else "")
        # Only now, with the tables loaded and the rules in place, may systemd call lbd started.
        sdnotify.ready(f"serving: queue {args.queue_num}, engine {engine.name}, control socket {server.path}")
        # The periodic loops share one grid (lb/periodic.py); they run until cancelled at stop.
        tasks: list[asyncio.Future[Any]] = [
            asyncio.ensure_future(_resolve_loop(director, resolve_async)),
            asyncio.ensure_future(periodic.run_every(ESTIMATOR_TICK_S, director.estimate, "rate estimation", log))]
        if snapshot is not None:
            saver = statefile.StateSaver(director, snapshot)
            tasks.append(asyncio.ensure_future(periodic.run_every(SNAPSHOT_EVERY_S, _snapshot_tick(saver),
                                                                  "saving state", log)))
        guard = _start_guard(args, engine, rules, xdp, director)
        if guard is not None:
            tasks.append(asyncio.ensure_future(overload.run(guard, engine.nfq_overload_fds())))
        if napi is not None:  # NAPI instances a driver creates later get threads at the default priority
            from lb.napibelow import REFRESH_S

            tasks.append(asyncio.ensure_future(periodic.run_every(REFRESH_S, napi.refresh, "NAPI threads' check", log)))
        if rules is not None:
            from lb.steerevents import watch_steering

            # on nftables notifications where it can (lb/steerevents.py); under afxdp: its NFQUEUE fallback's rules
            watching = watch_steering(rules, director.steering, xdp is not None)
            tasks += watching.tasks
        try:
            await stop.wait()
        finally:
            stop.set()
            await periodic.cancel_all(tasks)
            if watching is not None:
                watching.close()  # the notification socket and its reader
        log.info("shutting down")
        return 0
    except (ConfigError, EngineError, OSError, RuntimeError, ValueError) as exc:
        log.error("%s", exc)
        return 1
    finally:
        stop.set()
        sdnotify.stopping()
        if metrics is not None:
            metrics.stop()
        if monitor is not None:
            monitor.stop()
        await server.close()
        director.sync.stop_all()  # the sync daemons' sockets (lb/sync)
        if guard is not None:
            guard.stop()  # also with --down-policy closed: a guard must not outlive its lbd
            stop_writer = getattr(guard.writer, "stop", None)  # lb.xdpshed: the programs leave the interfaces
            if stop_writer is not None:
                stop_writer()
        if napi is not None:
            napi.stop()  # the interfaces as found: the threads' niceness, and threading off where lbd turned it on
        if rules is not None and rules_set_up:
            if args.down_policy == "closed":
                log.info("down-policy closed: the rules of queue %d stay; packets to the VIPs are dropped "
                         "until lbd runs again (`lbd --cleanup` removes the rules)", args.queue_num)
            else:
                try:
                    rules.teardown()
                    log.info("removed the %s steering of queue %d", args.steering, args.queue_num)
                except Exception:
                    log.exception("removing iptables rules failed")
        if engine_started:
            if xdp is not None:
                xdp.stop()  # the sockets' threads, then the programs: the interfaces are the kernel's again
            engine.stop()  # no packet changes the tables any more: the last snapshot is exact
        if ready and snapshot is not None:
            try:
                if saver is None:
                    saver = statefile.StateSaver(director, snapshot)
                log.info("state saved to %s: %s", snapshot, saver.save())
            except Exception as exc:
                log.error("saving state to %s failed: %s", snapshot, exc)
        close_resolver()


GC_THRESHOLDS = (100_000, 50, 100)


def tune_gc() -> None:
    """Fewer cyclic-GC passes (issue 15): with 10,000 services lbd holds ~10^6 objects, and at
    CPython's default thresholds (700, 10, 10) a restore or a listing of them spent most of its
    time in collections (5x on an estimator tick, 10x on a snapshot). lbd's data is acyclic
    dataclasses and dicts, freed by reference counting; the collector only finds rare cycles."""
    import gc

    gc.set_threshold(*GC_THRESHOLDS)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # INFO by default, -v: DEBUG for lbd's own modules; libraries stay at WARNING.
    logsetup.configure(args.log_format, args.verbose)
    if args.check:
        # The dry run's own "rejected" log line would repeat the error check() prints.
        logging.getLogger("lbd").setLevel(logging.DEBUG if args.verbose else logging.CRITICAL)
        from lb.daemon_check import check

        return check(args)
    if args.cleanup:
        return cleanup(args)
    import uvloop  # a declared dependency: lbd's event loop

    tune_gc()

    try:
        return int(uvloop.run(run(args)))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["AFXDP_REFUSED", "DEFAULT_SOCKET", "cleanup", "main", "parse_args", "run", "socket_path"]
