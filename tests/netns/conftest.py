"""Fixtures for real-packet tests in network namespaces.

- `topo` (session): a DR topology (client, director, rs1..rs3 on one bridge, see
  lb.testbed.topology.dr_spec) with an HTTP server in each real server that
  answers with its name. Removed at the end, also on failure or Ctrl-C.
- `engine`: "c" and "python" (`lbd --engine python`); the python variant is
  skipped, with lbd's own words as the reason, if that engine does not start.
- `lbd`: a fresh `lbd` in the director namespace for each test, configured only
  through `lbd.lbadm(...)`. Its finalizer sends SIGTERM, expects exit 0 and
  asserts that no iptables rule or chain is left in the director namespace.
  `running_lbd(topo, engine, env)` does the same for a module's own topology.
- `udp_responders` (each real server of a DR topology answering UDP on the VIP; more of the
  kind in netns_traffic.py).
- Shared test bodies: `churn_other_services` (changes on other ports of the VIP),
  `held_connections_through_churn` (held connections exchanging while that goes on),
  `udp_until_refused` (a client's datagrams until ICMP port unreachable reaches its socket).

Everything runs inside namespaces named with this run's `lbB<token>` prefix;
the only processes ended are the ones started here, by PID.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from lb.ctlclient import ControlClientError, request_once
from lb.daemon_options import DEFAULT_STEERING, steer_hook
from lb.testbed import client
from lb.testbed.pcap import Capture, IPv4
from lb.testbed.seeds import FIELD_REPORT_001_FILTER
from lb.testbed.topology import Host, Topology, dr_spec, enter_netns, environment_problem

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = REPO / ".venv" / "bin"
LBD = Path(os.environ.get("LBD", VENV_BIN / "lbd"))
LBADM = Path(os.environ.get("LBADM", VENV_BIN / "lbadm"))

N_REAL = 3
HTTP_PORT = 80
QUEUE_NUM = 0  # NFQUEUE numbers are per network namespace: 0 never collides
READY_TIMEOUT_S = 20.0  # lbd start-up until the control socket answers ping
STOP_TIMEOUT_S = 10.0  # SIGTERM until exit
CTL_TIMEOUT_S = 10.0  # one control request
LBADM_TIMEOUT_S = 20.0

# LB_TEST_PACKET_SOURCE=afxdp: every lbd the suite starts without a packet source of its own uses
# `--packet-source afxdp` on all of the director's interfaces, and the other hosts' veths send
# complete checksums (docs/afxdp.md "veth"; left so in the run's own namespaces). An exploratory
# run of the NFQUEUE suite against the AF_XDP source (issue 19 item 2): tests that check iptables
# rules or NFQUEUE-only options fail by design there.
PACKET_SOURCE = os.environ.get("LB_TEST_PACKET_SOURCE", "nfqueue")
# LB_TEST_STEERING=iptables: every lbd the suite starts without a --steering of its own uses
# `--steering iptables` (raw-table rules and ip sets, lb/iptables.py); by default they run with lbd's
# default steering, its own nftables table (lb/nftsteer.py; nft must be on PATH or LB_TEST_NFT names
# it: a wrapper script is fine, its directory is put first on lbd's PATH). Tests read lbd's steering
# through steering.py (sets, queue rules, damage of either layer), as they read the packet source
# through packet_source.py; what exists in one layer only skips under the other (steering.iptables_only).
STEERING = os.environ.get("LB_TEST_STEERING", DEFAULT_STEERING)
# LB_TEST_STEER_HOOK=prerouting (with nftables steering): those lbds get `--steer-hook prerouting`
# (before routing, at raw priority); by default lbd's own, input (kernel IPVS's placement), where tests
# about the prerouting placement skip (steering.py). iptables steering is always prerouting.
STEER_HOOK = steer_hook(STEERING, os.environ.get("LB_TEST_STEER_HOOK") if STEERING == "nftables" else None)
# LB_TEST_NAT_REPLIES=forward (with nftables steering at the input hook): those lbds get
# `--nat-replies forward` (NAT replies queued from a forward chain); by default lbd's own, ingress (a
# netdev chain on the real servers' interfaces, lb/natingress.py) where it works: the C engine and
# the NFQUEUE packet source (lbd falls back to forward elsewhere, as tests/netns/steering.py says).
NAT_REPLIES = os.environ.get("LB_TEST_NAT_REPLIES", "ingress") if (STEERING, STEER_HOOK) == ("nftables", "input") \
    else "forward"
NFT = os.environ.get("LB_TEST_NFT") or shutil.which("nft") or "nft"
if os.environ.get("LB_TEST_NFT"):  # every lbd and command the tests start finds it as `nft`
    os.environ["PATH"] = f"{Path(NFT).resolve().parent}:{os.environ.get('PATH', '')}"
_HERE = Path(__file__).resolve().parent
_ENV_PROBLEM = environment_problem()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE not in Path(str(item.fspath)).resolve().parents:
            continue
        item.add_marker(pytest.mark.netns)
        if _ENV_PROBLEM is not None:
            item.add_marker(pytest.mark.skip(reason=f"real-packet tests: {_ENV_PROBLEM}"))


# --------------------------------------------------------------------------- -Ln parsing

# ipvsadm 1.31 `-Ln` layout (ipvsadm.c print_title / print_service_entry).
RE_TITLE = re.compile(r"^IP Virtual Server version (\d+)\.(\d+)\.(\d+) \(size=(\d+)\)$")
TITLE2 = "Prot LocalAddress:Port Scheduler Flags"
TITLE3 = "  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn"
RE_SERVICE = re.compile(r"^(TCP|UDP)  (\d{1,3}(?:\.\d{1,3}){3}):(\d+) (\w+)(?: (.*))?$")
RE_DEST = re.compile(
    r"^  -> (\d{1,3}(?:\.\d{1,3}){3}):(\d+) +(Route|Tunnel|Masq|Local|FullNat) +(\d+) +(\d+) +(\d+) *$"
)


SEED_RULESET = FIELD_REPORT_001_FILTER  # loaded by test_firewall/test_doctor (lb.testbed.seeds)


@dataclass
class LnDest:
    addr: str
    port: int
    forward: str
    weight: int
    active: int
    inactive: int


@dataclass
class LnService:
    proto: str
    addr: str
    port: int
    sched: str
    flags: str
    dests: list[LnDest]


def parse_ln(text: str) -> list[LnService]:
    """Parse `lbadm -Ln` strictly: ipvsadm's header lines and exact column layout."""
    lines = text.split("\n")
    assert lines and lines[-1] == "", f"output must end with a newline: {text!r}"
    lines = lines[:-1]
    assert len(lines) >= 3, f"missing header lines: {text!r}"
    assert RE_TITLE.match(lines[0]), f"title line: {lines[0]!r}"
    assert lines[1] == TITLE2, f"second header line: {lines[1]!r}"
    assert lines[2] == TITLE3, f"third header line: {lines[2]!r}"
    services: list[LnService] = []
    for line in lines[3:]:
        m = RE_SERVICE.match(line)
        if m:
            proto, addr, port, sched, flags = m.groups()
            assert line == f"{proto}  {addr}:{port} {sched}" + (f" {flags}" if flags else ""), line
            services.append(LnService(proto, addr, int(port), sched, flags or "", []))
            continue
        m = RE_DEST.match(line)
        assert m, f"line matches neither the service nor the destination layout: {line!r}"
        assert services, f"destination line before any service: {line!r}"
        addr, port, fwd, weight, active, inactive = m.groups()
        # Exactly ipvsadm's printf("  -> %-28s %-7s %-6d %-10u %-10u\n"), trailing blanks included.
        expected = "  -> %-28s %-7s %-6d %-10u %-10u" % (
            f"{addr}:{port}", fwd, int(weight), int(active), int(inactive))
        assert line == expected, f"column layout differs from ipvsadm:\n got {line!r}\nwant {expected!r}"
        services[-1].dests.append(LnDest(addr, int(port), fwd, int(weight), int(active), int(inactive)))
    return services


# --------------------------------------------------------------------------- topology


@pytest.fixture(scope="session")
def topo() -> Iterator[Topology]:
    from netns_traffic import serve_http

    logdir = Path(tempfile.mkdtemp(prefix="lbB-httpd-"))
    try:
        with Topology(dr_spec(N_REAL)) as t:
            # Each real server must answer on its own address before any test starts.
            serve_http(t, (HTTP_PORT,), t.client, logdir)
            yield t
    finally:
        shutil.rmtree(logdir, ignore_errors=True)


# --------------------------------------------------------------------------- lbd


class LbdError(RuntimeError):
    pass


def steering_args() -> list[str]:
    """The options every lbd of the run gets unless it names its own steering: lbd's defaults unless
    LB_TEST_STEERING / LB_TEST_STEER_HOOK ask for another (only the difference is given)."""
    args = [] if STEERING == DEFAULT_STEERING else ["--steering", STEERING]
    args += [] if NAT_REPLIES == "ingress" or (STEERING, STEER_HOOK) != ("nftables", "input") \
        else ["--nat-replies", NAT_REPLIES]
    return args + ([] if STEER_HOOK == steer_hook(STEERING, None) else ["--steer-hook", STEER_HOOK])


def iptables_leftovers(host: Host) -> list[str]:
    """Rules, user chains and ip sets in `host`'s namespace. Our namespaces start empty, so any is lbd's."""
    found = []
    raw = host.exec(["iptables", "-t", "raw", "-S"]).stdout
    for line in raw.splitlines():
        if line.strip() and not line.startswith("-P "):
            found.append(f"raw: {line}")
    save = host.exec(["iptables-save"]).stdout
    for line in save.splitlines():
        if line.startswith("-A ") or (line.startswith(":") and line.split()[1:2] == ["-"]):
            found.append(f"iptables-save: {line}")
    sets = host.exec(["ipset", "save"]).stdout
    found += [f"ipset: {line}" for line in sets.splitlines() if line.strip()]
    return found + nft_leftovers(host)


def nft_leftovers(host: Host) -> list[str]:
    """lbd's nftables tables (`ip lbd-q*`, lb/nftsteer.py; `netdev lbd-q*` and the veth pairs `lbnr*`
    of --nat-replies ingress, lb/natingress.py) in `host`'s namespace; no tables without nft."""
    links = host.exec(["ip", "-o", "link", "show"], check=False).stdout
    names = [line.split(":")[1].strip().split("@")[0] for line in links.splitlines() if line.count(":") >= 2]
    found = [f"link: {name}" for name in names if name.startswith("lbnr")]
    if not Path(NFT).exists() and shutil.which(NFT) is None:
        return found
    tables = host.exec([NFT, "list", "tables"], check=False).stdout
    return found + [f"nft: {line}" for line in tables.splitlines() if line.startswith(("table ip lbd-q", "table netdev lbd-q"))]


def nft_env(env: dict[str, str] | None) -> dict[str, str] | None:
    """lbd's environment with LB_TEST_NFT's directory first on PATH (lbd runs `nft`)."""
    if not os.environ.get("LB_TEST_NFT"):
        return env
    path = f"{Path(NFT).resolve().parent}:{os.environ.get('PATH', '')}"
    return dict(env or {}, PATH=path)


class Lbd:
    """One lbd process in the director namespace, started and ended by us (by PID)."""

    def __init__(self, topo: Topology, engine: str, env: dict[str, str] | None = None,
                 args: list[str] | None = None) -> None:
        self.topo = topo
        self.engine = engine
        self.env = env  # extra environment for lbd (e.g. MALLOC_PERTURB_)
        self.args = list(args or [])  # extra lbd options (e.g. --gso); --queue-balance replaces --queue-num
        self.dir = Path(tempfile.mkdtemp(prefix=f"{topo.prefix}-lbd-"))
        self.socket = str(self.dir / "lbd.sock")
        self.proc: subprocess.Popen[Any] | None = None
        self.log_path: Path | None = None
        self.starts = 0
        self.ping_result: dict[str, Any] | None = None

    @property
    def director(self) -> Host:
        return self.topo.director

    def start(self, timeout: float = READY_TIMEOUT_S) -> dict[str, Any]:
        """Start lbd and wait until ping answers ok; returns the ping result."""
        if not LBD.exists():
            raise LbdError(f"{LBD} does not exist: run `make build` (pip install -e .) first")
        self.starts += 1
        self.log_path = self.dir / f"lbd-{self.starts}.log"
        if PACKET_SOURCE == "afxdp" and "--packet-source" not in self.args:
            refused = afxdp_refusal(self.args)
            if refused:
                pytest.skip(f"NFQUEUE-only: {refused}, refused at start: see docs/afxdp.md")
            self.args += afxdp_args(self.topo)
        env = self.env
        if "--steering" not in self.args and "--steer-hook" not in self.args:
            self.args += steering_args()
            if STEER_HOOK == "input":
                # NAT replies are routed to the clients there: the director forwards, as IPVS's NAT needs
                self.director.exec(["sysctl", "-qw", "net.ipv4.ip_forward=1"])
        if self.steering() == "nftables":
            env = nft_env(env)
        with open(self.log_path, "w") as log:
            self.proc = self.director.popen(
                [str(LBD), "--socket", self.socket,
                 *([] if "--queue-balance" in self.args else ["--queue-num", str(QUEUE_NUM)]),
                 "--engine", self.engine, "-v", *self.args],
                stdout=log, stderr=subprocess.STDOUT,
                env=dict(os.environ, **env) if env else None,
            )
        deadline = time.monotonic() + timeout
        last_err = "no answer yet"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise LbdError(f"lbd exited with {self.proc.returncode} before ready:\n{self.log_tail()}")
            if os.path.exists(self.socket):
                try:
                    resp = request_once(self.socket, "ping", timeout_s=2.0)
                except ControlClientError as exc:
                    last_err = f"{type(exc).__name__}: {exc}"
                else:
                    if resp.get("ok"):
                        self.ping_result = resp.get("result") or {}
                        return self.ping_result
                    last_err = f"ping answered {resp}"
            time.sleep(0.05)
        raise LbdError(f"lbd not ready after {timeout}s ({last_err}):\n{self.log_tail()}")

    def steering(self) -> str:
        """The --steering this lbd runs with (its argument, else lbd's default)."""
        return self._arg("--steering") or DEFAULT_STEERING

    def hook(self) -> str:
        """The --steer-hook this lbd runs with (its argument, else the default of its steering)."""
        return steer_hook(self.steering(), self._arg("--steer-hook"))

    def _arg(self, flag: str) -> str | None:
        return self.args[self.args.index(flag) + 1] if flag in self.args[:-1] else None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        """Signal our lbd (by PID) and wait; SIGKILL if it does not exit in time. Returns its status."""
        if self.proc is None:
            return None
        return self.topo.stop_process(self.proc, sig, timeout=STOP_TIMEOUT_S)

    def request(self, op: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
        return request_once(self.socket, op, args, timeout_s=CTL_TIMEOUT_S)

    def ok(self, op: str, args: dict[str, Any] | None = None) -> Any:
        """`request` that must succeed; returns its result."""
        resp = self.request(op, args)
        if not resp.get("ok"):
            raise AssertionError(f"{op} {args}: {resp}\nlbd log:\n{self.log_tail()}")
        return resp.get("result")

    def wait_resolved(self, timeout: float = 10.0) -> None:
        """Until every destination has forwarding state (`list`: l2 state resolved)."""
        deadline = time.monotonic() + timeout
        while True:
            services = self.ok("list")["services"]
            pending = [(s["port"], d["addr"], d["l2"]) for s in services for d in s["dests"]
                       if d["l2"]["state"] != "resolved"]
            if not pending:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"destinations without forwarding state after {timeout}s: {pending}")
            time.sleep(0.05)

    def lbadm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run `lbadm --socket S ARGS...` in the director namespace."""
        argv = [str(LBADM), "--socket", self.socket, *args]
        proc = self.director.exec(argv, check=False, timeout=LBADM_TIMEOUT_S)
        if check and proc.returncode != 0:
            raise AssertionError(
                f"lbadm {' '.join(args)} exited {proc.returncode}\nstdout: {proc.stdout}"
                f"\nstderr: {proc.stderr}\nlbd log:\n{self.log_tail()}"
            )
        return proc

    def iptables_leftovers(self) -> list[str]:
        return iptables_leftovers(self.director)

    def log_tail(self, chars: int = 4000) -> str:
        if self.log_path is None or not self.log_path.exists():
            return "(no log)"
        return self.log_path.read_text(errors="replace")[-chars:]

    def cleanup(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def afxdp_args(topo: Topology) -> list[str]:
    """--packet-source afxdp on every interface of the director; the other hosts' checksum offload off."""
    for h in topo.hosts.values():
        if h is not topo.director:
            for iface in re.findall(r"^\d+: ([^:@]+)", h.ip("-o", "link", "show").stdout, re.M):
                if iface != "lo":
                    h.exec(["ethtool", "-K", iface, "tx", "off"], check=False)
    ifaces = [i for i in re.findall(r"^\d+: ([^:@]+)", topo.director.ip("-o", "link", "show").stdout, re.M)
              if i != "lo"]
    return ["--packet-source", "afxdp", *(a for i in ifaces for a in ("--xdp-interface", i))]


# ---- LB_TEST_PACKET_SOURCE=afxdp: what lbd refuses with it skips (issue 19 item 2) ----
def afxdp_refusal(args: list[str]) -> str | None:
    """Why lbd would refuse `args` with --packet-source afxdp (lb.daemon's own list), or None."""
    from lb.daemon import AFXDP_REFUSED

    for flag, _name, why in AFXDP_REFUSED:
        if any(a == flag or a.startswith(flag + "=") for a in args):
            return f"{flag} ({why})"
    if "--down-policy=closed" in args or any(a == "--down-policy" and b == "closed" for a, b in zip(args, args[1:], strict=False)):
        return "--down-policy closed (the XDP program leaves with lbd: open while no lbd runs)"
    return None
# ---- end LB_TEST_PACKET_SOURCE=afxdp


def _lbd_supports_engine_flag() -> str | None:
    if not LBD.exists():
        return f"{LBD} does not exist"
    proc = subprocess.run([str(LBD), "--help"], capture_output=True, text=True, timeout=30)
    text = proc.stdout + proc.stderr
    if "--engine" not in text:
        return "`lbd --help` does not offer --engine"
    return None


@pytest.fixture(scope="session")
def python_engine_problem(topo: Topology) -> str | None:
    """None if `lbd --engine python` starts and answers ping as engine "python", else why not."""
    problem = _lbd_supports_engine_flag()
    if problem:
        return problem
    probe = Lbd(topo, "python")
    try:
        result = probe.start()
        if result.get("engine") != "python":
            return f"`lbd --engine python` answers ping with engine={result.get('engine')!r}"
        return None
    except LbdError as exc:
        return f"`lbd --engine python` does not start: {str(exc)[-600:]}"
    finally:
        probe.stop()
        leftovers = iptables_leftovers(topo.director)
        if leftovers:
            _flush_director(topo)
        probe.cleanup()


@pytest.fixture(params=["c", "python"])
def engine(request: pytest.FixtureRequest) -> str:
    if request.param == "python":
        if PACKET_SOURCE == "afxdp":  # lbd refuses it: the AF_XDP sockets are served by C threads
            pytest.skip("NFQUEUE-only: --engine python (the AF_XDP sockets are served by C threads), "
                        "refused at start: see docs/afxdp.md")
        problem = request.getfixturevalue("python_engine_problem")
        if problem:
            pytest.skip(f"python engine unavailable: {problem}")
    return request.param


def flush_iptables(host: Host) -> None:
    """An empty ruleset in `host`'s namespace (one of OURS): what lbd left there goes."""
    for table in ("raw", "filter", "mangle", "nat"):
        host.exec(["iptables", "-t", table, "-F"], check=False)
        host.exec(["iptables", "-t", table, "-X"], check=False)
    for line in nft_leftovers(host):
        if line.startswith("link: "):  # a veth pair of --nat-replies ingress: deleting one end deletes both
            host.exec(["ip", "link", "del", line.split()[-1]], check=False)
        else:  # "nft: table <family> <name>"
            host.exec([NFT, "delete", "table", *line.split()[-2:]], check=False)


def _flush_director(topo: Topology) -> None:
    # Only after a failure was recorded: so that one broken test does not cascade into the next.
    flush_iptables(topo.director)


@pytest.fixture
def lbd(topo: Topology, engine: str) -> Iterator[Lbd]:
    with running_lbd(topo, engine) as d:
        yield d


@contextlib.contextmanager
def running_lbd(topo: Topology, engine: str, env: dict[str, str] | None = None,
                args: list[str] | None = None) -> Iterator[Lbd]:
    """A fresh lbd in `topo`'s director; on exit: SIGTERM, exit status 0, no iptables leftovers.

    For test modules with a topology of their own (FULLNAT, tunnel churn); `lbd` uses it too.
    """
    d = Lbd(topo, engine, env, args)
    try:
        result = d.start()
        assert result.get("engine") == engine, f"asked for engine {engine}, ping says {result}"
        yield d
        was_running = d.running()
        rc = d.stop(signal.SIGTERM)
        problems = []
        if was_running and rc != 0:
            problems.append(f"lbd exited {rc} on SIGTERM (expected 0)")
        leftovers = iptables_leftovers(topo.director)
        if leftovers:
            problems.append("iptables rules left behind after lbd exit:\n  " + "\n  ".join(leftovers))
            _flush_director(topo)
        assert not problems, "\n".join(problems) + f"\nlbd log:\n{d.log_tail()}"
    finally:
        if d.running():
            d.stop(signal.SIGKILL)
        if iptables_leftovers(topo.director):
            _flush_director(topo)
        d.cleanup()


@pytest.fixture
def http(topo: Topology) -> HttpHelper:
    return HttpHelper(topo)


class HttpHelper:
    """Client-side helpers bound to the topology's client namespace and VIP; closes what it opens."""

    def __init__(self, topo: Topology) -> None:
        self.topo = topo
        self.netns = topo.client.netns
        self.vip = topo.vip
        self.port = HTTP_PORT

    def gets(self, n: int, timeout: float = 5.0) -> list[client.Reply]:
        return client.fresh_gets(self.netns, self.vip, self.port, n, timeout=timeout)

    def keepalive(self) -> client.KeepAlive:
        return client.KeepAlive(self.netns, self.vip, self.port)

    def hold(self, seconds: int) -> client.Hold:
        return client.Hold(self.netns, self.vip, self.port, seconds=seconds)


# --------------------------------------------------------------------------- keepalived


@pytest.fixture(scope="module")
def ka_problem() -> None:
    """Skips the module's keepalived tests when keepalived cannot run here (the precise reason)."""
    from lb.testbed.keepalived import keepalived_problem

    problem = keepalived_problem()
    if problem:
        pytest.skip(problem)


@pytest.fixture
def keepalived() -> Iterator[list[Any]]:
    """lb.testbed.keepalived.Keepalived instances a test starts; each is SIGKILLed if still running
    and its files removed."""
    started: list[Any] = []
    yield started
    for ka in started:
        ka.cleanup()


# --------------------------------------------------------------------------- UDP responders


@contextlib.contextmanager
def udp_responders(topo: Topology, port: int) -> Iterator[None]:
    """A UDP responder on VIP:`port` in each real server of a DR topology (the VIP is local there),
    answering with the server's name; closed on exit."""
    from netns_traffic import answering

    with answering(topo.reals, ((topo.vip, port),), tcp=False):
        yield


# --------------------------------------------------------------------------- other services' churn


def churn_other_services(lbd: Lbd, vip: str, rips: list[str], fwd: str, ports: tuple[int, ...],
                         laddrs: tuple[str, ...] = (), between: Any = None) -> int:
    """Add, edit and delete services and destinations on `vip`:`ports` (never the service
    under test), through lbadm and the control socket; `between()` runs after every change.

    `fwd` is the lbadm forwarding flag ("-g", "-i", "-b"); FULLNAT services get the local
    addresses `laddrs` (control op `add_laddr`: lbadm has no DPVS `-P` yet). Every change
    must succeed; returns how many were made. Bounded: a fixed list per port.
    """
    fwd_json = {"-g": "route", "-i": "tunnel", "-b": "fullnat"}[fwd]
    done = 0

    def step(*args: str) -> None:
        nonlocal done
        lbd.lbadm(*args)
        done += 1
        if between is not None:
            between()

    def ctl(op: str, args: dict[str, Any]) -> None:
        nonlocal done
        lbd.ok(op, args)
        done += 1
        if between is not None:
            between()

    for port in ports:
        svc = f"{vip}:{port}"
        key = {"proto": "tcp", "addr": vip, "port": port}
        # ipvsadm: DR and tunnel destinations take the service's port (no port mapping).
        rport = 80 if fwd == "-b" else port
        step("-A", "-t", svc, "-s", "rr")
        for la in laddrs:
            ctl("add_laddr", {"service": key, "addr": la})
        for i, rip in enumerate(rips):
            step("-a", "-t", svc, "-r", f"{rip}:{rport}", fwd, "-w", str(i + 1))
        step("-e", "-t", svc, "-r", f"{rips[0]}:{rport}", fwd, "-w", "5")
        step("-E", "-t", svc, "-s", "wlc")
        ctl("edit_dest", {"service": key, "dest": {"addr": rips[-1], "port": rport, "fwd": fwd_json,
                                                   "weight": 0, "u_threshold": 0, "l_threshold": 0}})
        step("-d", "-t", svc, "-r", f"{rips[0]}:{rport}")
        step("-a", "-t", svc, "-r", f"{rips[0]}:{rport}", fwd, "-w", "1")
        if laddrs:
            ctl("del_laddr", {"service": key, "addr": laddrs[-1]})
        step("-A", "-u", svc, "-s", "rr")
        step("-a", "-u", svc, "-r", f"{rips[-1]}:{rport}", fwd)
        step("-D", "-u", svc)
        step("-D", "-t", svc)
    return done


def held_connections_through_churn(lbd: Lbd, topo: Topology, port: int, churn: Callable[[Callable[[], None]], int],
                                   what: str) -> None:
    """Long-lived connections to VIP:`port`, one keep-alive per real server and two 12 s holds,
    while `churn(between)` changes other services (calling between() after each change): every
    keep-alive answers a request after each change, from the same real server, the holds receive
    their seconds unbroken, and at least 35 changes are made. Then VIP:`port` is the only service
    left and spreads 9 new connections evenly. `what` names the connections in the printed summary."""
    hold_s = 12
    netns, vip = topo.client.netns, topo.vip
    kas = [client.KeepAlive(netns, vip, port) for _ in topo.reals]
    holds: list[client.Hold] = []
    exchanges: Counter[str] = Counter()
    try:
        first = [ka.get() for ka in kas]
        assert all(r.ok for r in first), first
        assert sorted(str(ka.server) for ka in kas) == sorted(rs.name for rs in topo.reals)
        holds = [client.Hold(netns, vip, port, seconds=hold_s).start() for _ in range(2)]
        start = time.monotonic()

        def exchange() -> None:
            for ka in kas:
                r = ka.get(timeout=3.0)
                assert r.ok and r.server == ka.server, (
                    f"held connection to {ka.server} broke after {time.monotonic() - start:.1f}s: {r}")
                exchanges[str(ka.server)] += 1

        changes = churn(exchange)
        for h in holds:
            assert h.join(hold_s + 10.0), "hold did not finish"
            assert h.error is None and h.received == hold_s, (h.server, h.received, h.error)
        exchange()
        print(f"\n{changes} changes to other services in {time.monotonic() - start:.1f}s; "
              f"held {what} exchanged {dict(exchanges)} requests meanwhile")
        assert changes >= 35
    finally:
        for h in holds:
            h.close()
        for ka in kas:
            ka.close()
    # The service under test is untouched and still spreads new connections evenly.
    services = parse_ln(lbd.lbadm("-Ln").stdout)
    assert [(s.proto, s.port) for s in services] == [("TCP", port)], services
    got = Counter(r.server for r in client.fresh_gets(netns, vip, port, 9) if r.ok)
    assert got == {rs.name: 3 for rs in topo.reals}, got


# --------------------------------------------------------------------------- ICMP errors back to the client


@dataclass
class UdpRefusal:
    """What the client saw sending datagrams to a UDP port that its real server does not serve."""

    error: BaseException | None  # ConnectionRefusedError: the ICMP error reached the client's socket
    cport: int  # the client's source port
    icmps: list[IPv4]  # the ICMP destination-unreachable packets the client received
    capture: str  # the client's capture as text, for assertion messages
    translated: int  # ICMP errors lbd counted meanwhile (reason "icmp")


def udp_until_refused(lbd: Lbd, t: Topology, port: int) -> UdpRefusal:
    """From the client's own connected socket, up to 3 datagrams to VIP:`port` (bounded; the first
    error normally suffices), until the socket reports the port unreachable."""
    before = lbd.ok("counters")["reasons"].get("icmp", 0)
    cap = Capture(t.client, "icmp", direction="in").start()
    try:
        with enter_netns(t.client.netns):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        err: BaseException | None = None
        try:
            sock.settimeout(2.0)
            sock.connect((t.vip, port))
            cport = sock.getsockname()[1]
            for _ in range(3):
                sock.send(b"hello?")
                try:
                    sock.recv(2048)
                except (TimeoutError, ConnectionRefusedError) as exc:
                    err = exc
                    if isinstance(exc, ConnectionRefusedError):
                        break
        finally:
            sock.close()
        packets = cap.stop()
        translated = lbd.ok("counters")["reasons"].get("icmp", 0) - before
        icmps = [p.ip for p in packets if p.ip.l4 and p.ip.l4.icmp_type == 3]
        return UdpRefusal(err, cport, icmps, cap.text(), translated)
    finally:
        cap.close()
