"""lbd: the director daemon.

Foreground, logs to stderr, asyncio on uvloop. Owns the packet engine (the C
fast path by default, the pure-Python engine with --engine python), the
iptables rules that feed it, forwarding-state resolution (pyroute2) and the
control socket that lbadm talks to (docs/control-protocol.md).

Lifecycle: on start, leftovers of a crashed lbd on the same queue are removed
(RuleManager.setup); on SIGTERM/SIGINT the rules are removed, the queue
thread is stopped and the socket file is unlinked. SIGHUP (or `lbadm --reload`)
re-reads the --config file and applies the minimal plan (lb/reconcile.py); an
invalid file is rejected whole and the running state stays.

`lbd --check [--diff] [FILE]` validates a configuration file without starting
(every error with file and line; exit 1 if any), including a dry run of the
file against a scratch engine; with --diff it also prints the plan against the
running lbd (read over the control socket) without applying it.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import signal
import socket
import struct
import sys
from pathlib import Path
from typing import Any

from lb import __version__
from lb.director import BatchError, Director, Resolution
from lb.engine import Engine, EngineError, FwdState
from lb.estimator import ESTIMATOR_TICK_S
from lb.model import ConfigError

log = logging.getLogger("lbd")

DEFAULT_SOCKET = "/run/lbd/lbd.sock"
MAX_REQUEST_BYTES = 1 << 20
RESOLVE_UNRESOLVED_EVERY_S = 1.0
RESOLVE_ALL_EVERY_S = 15.0


def socket_path(cli_value: str | None) -> str:
    return cli_value or os.environ.get("LBD_SOCKET") or DEFAULT_SOCKET


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="lbd",
        description="Userspace LVS director: queues virtual-service packets from iptables (NFQUEUE) "
        "and forwards them to real servers. Configure it with lbadm (ipvsadm syntax).",
    )
    p.add_argument("--config", metavar="FILE",
                   help="configuration to load at start and on SIGHUP / lbadm --reload "
                   "(TOML, see configs/reference.toml, or ipvsadm -S output)")
    p.add_argument("--check", action="store_true",
                   help="validate FILE (or --config) and exit: every error with file and line; exit 1 on errors")
    p.add_argument("--diff", action="store_true",
                   help="with --check: print the changes a reload with FILE would make to the running lbd")
    p.add_argument("file", nargs="?", metavar="FILE", help="configuration file for --check")
    p.add_argument("--socket", metavar="PATH", help=f"control socket (default: $LBD_SOCKET or {DEFAULT_SOCKET})")
    p.add_argument("--queue-num", type=int, default=0, metavar="N", help="NFQUEUE number to bind (default 0)")
    p.add_argument("--engine", choices=("c", "python"), default="c",
                   help="packet engine: the C fast path (default) or the pure-Python reference engine")
    p.add_argument("--fail-open", action="store_true",
                   help="when the queue overflows, let the kernel accept packets instead of dropping them")
    p.add_argument("--no-iptables", action="store_true",
                   help="do not manage iptables rules (the operator queues packets to --queue-num)")
    p.add_argument("--conn-max", type=int, default=0, metavar="N", help="connection table size (C engine)")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    p.add_argument("--version", action="version", version=f"lbd {__version__}")
    args = p.parse_args(argv)
    if not 0 <= args.queue_num <= 65535:
        p.error(f"--queue-num {args.queue_num} out of range 0..65535")
    if args.check:
        if args.file and args.config and args.file != args.config:
            p.error("give the file to check either as FILE or as --config, not both")
        args.file = args.file or args.config
        if not args.file:
            p.error("--check needs a configuration FILE")
    elif args.diff:
        p.error("--diff only goes with --check")
    elif args.file:
        p.error(f"unexpected argument {args.file!r} (to load a configuration: --config FILE)")
    return args


def make_engine(kind: str, conn_max: int) -> Engine:
    if kind == "python":
        from lb.pyengine import PyEngine

        return PyEngine(conn_max=conn_max or 1048576)  # type: ignore[return-value]
    from lb.fastpath import CEngine

    return CEngine(conn_max=conn_max)


RESOLVE_TIMEOUT_S = 5.0


def make_resolver() -> tuple[Any, Any]:
    """Return (resolver callable, closer) backed by pyroute2 in this network namespace.

    pyroute2 0.9's synchronous IPRoute drives an asyncio loop of its own, which
    cannot run inside lbd's loop: one worker thread owns the IPRoute (with a
    private loop) and the resolver waits for it. Each call is a few netlink
    round trips (milliseconds); neighbour resolution itself is asynchronous in
    the kernel (NTF_USE) and picked up by the next refresh.
    """
    from concurrent.futures import ThreadPoolExecutor

    from pyroute2 import IPRoute

    from lb import netlink

    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lbd-netlink")
    state: dict[str, Any] = {}

    def in_worker(daddr: str) -> Any:
        if "ipr" not in state:
            state["loop"] = asyncio.SelectorEventLoop()
            state["ipr"] = IPRoute(flags=0, groups=0, use_event_loop=state["loop"])
        return netlink.resolve_fwd(state["ipr"], daddr)

    def resolve(daddr: str) -> Resolution:
        res = executor.submit(in_worker, daddr).result(timeout=RESOLVE_TIMEOUT_S)
        if res.fwd is None:
            return Resolution(None, ifname=res.ifname or "", reason=res.reason or "unresolved")
        return Resolution(FwdState(**dataclasses.asdict(res.fwd)), ifname=res.ifname or "")

    def close_worker() -> None:
        if "ipr" in state:
            state["ipr"].close()
            state["loop"].close()

    def close() -> None:
        try:
            executor.submit(close_worker).result(timeout=RESOLVE_TIMEOUT_S)
        finally:
            executor.shutdown(wait=True)

    return resolve, close


class ControlServer:
    """Newline-delimited JSON over a Unix socket; one Director behind it."""

    def __init__(self, director: Director, path: str) -> None:
        self.director = director
        self.path = path
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        sock_path = Path(self.path)
        sock_path.parent.mkdir(parents=True, exist_ok=True)
        if sock_path.exists() or sock_path.is_socket():
            if _socket_alive(self.path):
                raise RuntimeError(f"another lbd is already listening on {self.path}")
            sock_path.unlink()
        old_umask = os.umask(0o177)  # the socket is created 0600: root's (or our user's) only
        try:
            self.server = await asyncio.start_unix_server(self._client, path=self.path, limit=MAX_REQUEST_BYTES)
        finally:
            os.umask(old_umask)
        os.chmod(self.path, 0o600)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        if not _peer_allowed(sock):
            writer.write(_encode({"ok": False, "errno": "EPERM", "error": "Permission denied (you must be root)"}))
            await writer.drain()
            writer.close()
            return
        try:
            while True:
                try:
                    line = await reader.readline()
                except (asyncio.LimitOverrunError, ValueError):
                    writer.write(_encode({"ok": False, "errno": "EINVAL", "error": "request too large"}))
                    break
                if not line:
                    break
                writer.write(_encode(self._dispatch(line)))
                await writer.drain()
        except (ConnectionResetError, BrokenPipeError):
            pass
        finally:
            writer.close()

    def _dispatch(self, line: bytes) -> dict[str, Any]:
        try:
            req = json.loads(line)
            if not isinstance(req, dict) or not isinstance(req.get("op"), str):
                raise ValueError("request must be an object with a string 'op'")
            args = req.get("args") or {}
            if not isinstance(args, dict):
                raise ValueError("'args' must be an object")
        except ValueError as exc:
            return {"ok": False, "errno": "EINVAL", "error": f"malformed request: {exc}"}
        op = req["op"]
        try:
            return {"ok": True, "result": self.director.handle(op, args)}
        except BatchError as exc:
            return {"ok": False, "errno": exc.errno_name, "error": str(exc), "index": exc.index, "op": exc.op}
        except EngineError as exc:
            return {"ok": False, "errno": exc.errno_name, "error": str(exc)}
        except ConfigError as exc:
            return {"ok": False, "errno": "EINVAL", "error": str(exc)}
        except Exception as exc:  # never let one request stop the daemon
            log.exception("operation %s failed", op)
            return {"ok": False, "errno": "EIO", "error": f"{op} failed: {exc}"}


def _encode(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


def _socket_alive(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        try:
            s.connect(path)
        except OSError:
            return False
        return True


def _peer_allowed(sock: socket.socket | None) -> bool:
    """Only root or lbd's own user may drive the director (SO_PEERCRED)."""
    if sock is None:
        return False
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid == 0 or uid == os.getuid()


async def _resolve_loop(director: Director, stop: asyncio.Event) -> None:
    """Keep forwarding state fresh: unresolved destinations every second, all periodically."""
    loop = asyncio.get_running_loop()
    last_full = loop.time()
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), timeout=RESOLVE_UNRESOLVED_EVERY_S)
        except asyncio.TimeoutError:
            pass
        if stop.is_set():
            break
        full = loop.time() - last_full >= RESOLVE_ALL_EVERY_S
        if full:
            last_full = loop.time()
        try:
            director.refresh_all(only_unresolved=not full)
        except Exception:  # keep the daemon up; the next round retries
            log.exception("forwarding-state refresh failed")


async def _estimator_loop(director: Director, stop: asyncio.Event) -> None:
    """IPVS's estimation timer: every 2 s, fold the counters into the rate averages."""
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), timeout=ESTIMATOR_TICK_S)
        except asyncio.TimeoutError:
            pass
        if stop.is_set():
            break
        try:
            director.estimate()
        except Exception:  # keep the daemon up; the next tick retries
            log.exception("rate estimation failed")


def _reload_on_sighup(director: Director) -> None:
    if director.config_path is None:
        log.warning("SIGHUP: lbd was started without --config, nothing to reload")
        return
    log.info("SIGHUP: reloading %s", director.config_path)
    try:
        director.handle("reload", {})
    except (EngineError, ConfigError) as exc:
        log.error("reload failed: %s", exc)
    except Exception:
        log.exception("reload failed")


def _start_monitor(director: Director, loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> Any:
    """Re-resolve every destination when routes, addresses, neighbours or links change."""
    from lb import netlink

    pending: dict[str, asyncio.TimerHandle | None] = {"handle": None}

    def run_refresh() -> None:
        pending["handle"] = None
        if stop.is_set():
            return
        try:
            director.invalidate_all()
        except Exception:
            log.exception("re-resolving destinations after a netlink change failed")

    def on_event(kind: str) -> None:
        log.debug("netlink %s change: re-resolving destinations", kind)
        if pending["handle"] is None and not stop.is_set():
            pending["handle"] = loop.call_later(0.05, run_refresh)  # coalesce bursts

    class _Monitor:
        def __init__(self) -> None:
            self.inner = netlink.NetlinkMonitor(on_event)
            self.inner.start(loop)

        def stop(self) -> None:
            self.inner.stop()
            if pending["handle"] is not None:
                pending["handle"].cancel()
                pending["handle"] = None

    return _Monitor()


async def run(args: argparse.Namespace) -> int:
    path = socket_path(args.socket)
    if _socket_alive(path):
        log.error("another lbd is already listening on %s", path)
        return 1
    engine = make_engine(args.engine, args.conn_max)
    rules = None
    if not args.no_iptables:
        from lb.iptables import RuleManager

        rules = RuleManager(args.queue_num)
        problem = rules.detect()
        if problem:
            log.error("cannot manage iptables rules: %s", problem)
            return 1
    resolver, close_resolver = make_resolver()
    # Absolute: a reload must read the same file whatever lbd's working directory is then.
    director = Director(engine, rules, resolver, config_path=os.path.abspath(args.config) if args.config else None)
    server = ControlServer(director, path)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, _reload_on_sighup, director)

    monitor = None
    engine_started = rules_set_up = False
    try:
        # Bind the queue first: if another process owns it we fail before touching any rule.
        engine.start(args.queue_num, **({"fail_open": True} if args.fail_open and args.engine == "c" else {}))
        engine_started = True
        log.info("engine %s bound to NFQUEUE %d", engine.name, args.queue_num)
        if rules is not None:
            rules.setup()  # also removes leftovers of a crashed lbd on this queue
            rules_set_up = True
        if args.config:
            from lb.config import load_config

            director.apply_config(load_config(args.config), "start")
        await server.start()
        monitor = _start_monitor(director, loop, stop)
        log.info("lbd %s ready: control socket %s, queue %d, engine %s", __version__, server.path, args.queue_num, engine.name)
        estimator = asyncio.ensure_future(_estimator_loop(director, stop))
        try:
            await _resolve_loop(director, stop)
        finally:
            stop.set()
            await estimator
        log.info("shutting down")
        return 0
    except (ConfigError, EngineError, OSError, RuntimeError) as exc:
        log.error("%s", exc)
        return 1
    finally:
        stop.set()
        if monitor is not None:
            monitor.stop()
        await server.close()
        if rules is not None and rules_set_up:
            try:
                rules.teardown()
                log.info("removed iptables rules of queue %d", args.queue_num)
            except Exception:
                log.exception("removing iptables rules failed")
        if engine_started:
            engine.stop()
        close_resolver()


def check(args: argparse.Namespace) -> int:
    """lbd --check [--diff] FILE: validate (and dry-run) a configuration; print the plan with --diff."""
    from lb.config import ConfigErrors, load_config

    path = args.file
    try:
        config = load_config(path)
    except ConfigErrors as exc:
        for issue in exc.issues:
            print(issue, file=sys.stderr)
        print(f"{path}: {len(exc.issues)} error(s); nothing would be applied", file=sys.stderr)
        return 1
    problem = _dry_run(config, args)
    if problem:
        print(problem, file=sys.stderr)
        return 1
    print(f"{path}: OK ({config.kind}): {config.summary()}")
    if args.diff:
        return _print_diff(config, socket_path(args.socket))
    return 0


def _dry_run(config: Any, args: argparse.Namespace) -> str | None:
    """Apply the file to a scratch engine (no queue, no rules): engine refusals with their line."""
    try:
        engine = make_engine(args.engine, 1024)
    except Exception as exc:  # e.g. the C module is not built: static validation stands alone
        print(f"{config.path}: warning: no dry run, cannot create a {args.engine} engine: {exc}", file=sys.stderr)
        return None
    director = Director(engine, rules=None, resolver=None)
    try:
        director.apply_config(config, "check")
    except EngineError as exc:
        return f"{exc} (refused by the {engine.name} engine)"
    return None


def _print_diff(config: Any, sock: str) -> int:
    from lb.ctlclient import ControlClient, ControlClientError
    from lb.reconcile import State, plan

    try:
        with ControlClient(sock) as client:
            running = State.from_list_json(client.request("list"), client.request("get_timeout"))
    except ControlClientError as exc:
        print(f"lbd --check --diff: {exc}", file=sys.stderr)
        return 1
    steps = plan(running, config.state())
    if not steps:
        print("no changes")
    for step in steps:
        text = step.describe()
        if step.line:
            text += f", line {step.line}" if "#" in text else f"  # line {step.line}"
        print(text)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # INFO by default, -v: DEBUG for lbd's own modules; libraries stay at WARNING.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="lbd[%(process)d] %(levelname)s %(message)s")
    for name in ("lbd", "lb"):
        logging.getLogger(name).setLevel(logging.DEBUG if args.verbose else logging.INFO)
    if args.check:
        # The dry run's own "rejected" log line would repeat the error check() prints.
        logging.getLogger("lbd").setLevel(logging.DEBUG if args.verbose else logging.CRITICAL)
        return check(args)
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a declared dependency
        runner = asyncio.run
    try:
        return int(runner(run(args)))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
