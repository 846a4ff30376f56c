"""Test topologies built from network namespaces, torn down on exit.

A topology is described declaratively (`TopologySpec`: L2 segments and hosts
attached to them) and built by `Topology`, which owns every namespace, link and
process it creates:

- Every namespace and every link name carries a per-run prefix `lbB<token>`
  (token = 5 hex digits), so parallel runs never collide and cleanup only ever
  touches what this run created. Interface names stay <= 15 characters.
- Nothing is created in the caller's (host) namespace: each veth pair is created
  inside the segment's switch namespace with its peer placed straight into the
  host namespace, and all addresses live inside our namespaces.
- Teardown happens on context-manager exit, at interpreter exit (atexit), and on
  SIGTERM/SIGHUP (turned into KeyboardInterrupt so `with` blocks unwind).
  Processes started through `Host.popen` get PR_SET_PDEATHSIG (via setpriv) so they die with
  us even if we are SIGKILLed; `cleanup_stale(prefix)` removes namespaces left
  behind by a killed run with that same prefix.

Segments are Linux bridges in a dedicated "switch" namespace per segment
(`<prefix>-sw-<segment>`). A second segment and a router host (for IPIP or
FULLNAT real servers on another subnet) are one more `SegmentSpec` and a
`HostSpec` with two links and `forwarding=True`; see `dr_spec()`.

Python API, e.g.::

    with Topology(dr_spec(n_real=3)) as topo:
        topo.director.exec(["ip", "-br", "addr"])
        topo.client.popen([...])
"""

from __future__ import annotations

import atexit
import contextlib
import ipaddress
import os
import random
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import IO, Any

from lb.testbed.netns import (
    _PDEATHSIG_WRAPPER,
    CMD_TIMEOUT_S,
    PREFIX_BASE,
    TERM_GRACE_S,
    TopologyError,
    _check_prefix,
    _kill_pids,
    _run,
    cleanup_stale,
    enter_netns,
    list_netns,
    netns_pids,
    new_prefix,
)
from lb.testbed.spec import (
    CLIENT_INDEX,
    DIRECTOR_INDEX,
    REAL_BASE_INDEX,
    VIP_INDEX,
    HostSpec,
    LinkSpec,
    SegmentSpec,
    TopologySpec,
    dr_spec,
    fullnat_spec,
)

# The specs (lb.testbed.spec) and the namespace helpers (lb.testbed.netns) are part of this module's
# API: callers import them from here.
__all__ = [
    "CLIENT_INDEX", "CMD_TIMEOUT_S", "DIRECTOR_INDEX", "PREFIX_BASE", "REAL_BASE_INDEX", "TERM_GRACE_S",
    "VIP_INDEX", "Host", "HostSpec", "Interface", "LinkSpec", "SegmentSpec", "Topology", "TopologyError",
    "TopologySpec", "cleanup_stale", "dr_spec", "enter_netns", "environment_problem", "fullnat_spec",
    "list_netns", "netns_pids", "new_prefix",
]

IFNAMSIZ_MAX = 15  # Linux interface names: at most 15 characters

# Subnets are drawn per run from 10.200.0.0 .. 10.250.255.0 (/24 each). They only
# exist inside our namespaces; the range just keeps parallel runs visually apart.
SUBNET_SECOND_OCTETS = range(200, 251)


# --------------------------------------------------------------------------- hosts


@dataclass
class Interface:
    segment: str
    ifname: str  # name inside the host namespace
    addr: str  # IPv4 address
    prefixlen: int
    mac: str = ""


@dataclass
class Host:
    """One namespace. `addr` is the address on its first link."""

    topo: Topology = field(repr=False)
    spec: HostSpec
    netns: str
    ifaces: list[Interface]
    vips: list[str]

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def addr(self) -> str:
        return self.ifaces[0].addr

    @property
    def ifname(self) -> str:
        return self.ifaces[0].ifname

    @property
    def mac(self) -> str:
        return self.ifaces[0].mac

    def iface(self, segment: str) -> Interface:
        for i in self.ifaces:
            if i.segment == segment:
                return i
        raise KeyError(f"{self.name} has no link on segment {segment!r}")

    def _argv(self, cmd: str | Sequence[str]) -> list[str]:
        if isinstance(cmd, str):
            cmd = ["sh", "-c", cmd]
        return ["ip", "netns", "exec", self.netns, *cmd]

    def exec(self, cmd: str | Sequence[str], check: bool = True, timeout: float = CMD_TIMEOUT_S,
             input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run `cmd` (argv list, or a string run by sh -c) inside this namespace; capture text output."""
        return _run(self._argv(cmd), check=check, timeout=timeout, input=input)

    def ip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return _run(["ip", "-n", self.netns, *args], check=check)

    def popen(self, cmd: str | Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start `cmd` inside this namespace. The topology ends it (by PID) on close.

        `ip netns exec` and `setpriv` both exec in place, so the Popen's pid is the
        command's pid. setpriv sets PR_SET_PDEATHSIG=SIGTERM: the command dies with
        us even if we are SIGKILLed (no preexec_fn: unsafe with threads).
        """
        if isinstance(cmd, str):
            cmd = ["sh", "-c", cmd]
        wrapped = [*_PDEATHSIG_WRAPPER, *cmd] if _PDEATHSIG_WRAPPER else list(cmd)
        return self.topo._popen(self._argv(wrapped), **kwargs)

    def sysctl(self, settings: dict[str, str | int]) -> None:
        # Written via /proc/sys inside the namespace (no dependency on procps).
        script = " && ".join(
            f"echo {shlex.quote(str(v))} > /proc/sys/{k.replace('.', '/')}" for k, v in settings.items()
        )
        self.exec(script)

    def __str__(self) -> str:
        return f"{self.name}({self.addr})"


# --------------------------------------------------------------------------- topology


class Topology:
    """Builds `spec` on enter (or `build()`), tears everything down on `close()`.

    Attributes after build: `prefix`, `hosts` (name -> Host), `subnets`
    (segment -> IPv4Network), and for DR-style specs `client`, `director`,
    `reals` and `vip`.
    """

    def __init__(self, spec: TopologySpec, prefix: str | None = None, *, log: IO[str] | None = None):
        self.spec = spec
        self.prefix = prefix or new_prefix()
        _check_prefix(self.prefix)
        self.log = log
        self.hosts: dict[str, Host] = {}
        self.subnets: dict[str, ipaddress.IPv4Network] = {}
        self._namespaces: list[str] = []  # in creation order
        self._ports: dict[tuple[str, str], str] = {}  # (host, segment) -> bridge port in the switch
        self._procs: list[subprocess.Popen[Any]] = []
        self._lock = threading.Lock()
        self._closed = False
        self._built = False
        self._old_handlers: dict[int, Any] = {}
        # Forked children (pyroute2's netns helper, multiprocessing) inherit our signal
        # handler and atexit hook; only the process that built the topology may tear it down.
        self._owner_pid = os.getpid()

    # ----------------------------------------------------------- naming

    def ns_name(self, host: str) -> str:
        return f"{self.prefix}-{host}"

    def switch_ns(self, segment: str) -> str:
        return f"{self.prefix}-sw-{segment}"

    def switch_port(self, host: str, segment: str) -> str:
        """The bridge port (in `switch_ns(segment)`) that `host`'s link on `segment` plugs into.

        Frames a host sends arrive there as received ("in") frames: a capture on it sees
        everything the host put on the wire, including frames sent with
        PACKET_QDISC_BYPASS, which a capture inside the host cannot see.
        """
        return self._ports[(host, segment)]

    def switch_host(self, segment: str) -> Host:
        """The segment's switch namespace as a Host (for `exec`/`popen`, e.g. captures)."""
        spec = HostSpec(f"sw{segment}", (LinkSpec(segment, 254),), role="switch")
        return Host(self, spec, self.switch_ns(segment), [], [])

    def bridge_name(self, segment: str) -> str:
        return self._ifname(f"b{segment}")

    def _ifname(self, suffix: str) -> str:
        name = f"{self.prefix}{suffix}"
        if len(name) > IFNAMSIZ_MAX:
            raise ValueError(f"interface name {name!r} longer than {IFNAMSIZ_MAX}")
        return name

    # ----------------------------------------------------------- convenience

    def host(self, name: str) -> Host:
        return self.hosts[name]

    @property
    def client(self) -> Host:
        return self._by_role("client")[0]

    @property
    def director(self) -> Host:
        return self._by_role("director")[0]

    @property
    def reals(self) -> list[Host]:
        return self._by_role("real")

    @property
    def vip(self) -> str:
        return self.director.vips[0]

    def _by_role(self, role: str) -> list[Host]:
        found = [h for h in self.hosts.values() if h.spec.role == role]
        if not found:
            raise KeyError(f"topology has no host with role {role!r}")
        return found

    def addr(self, segment: str, host_index: int) -> str:
        return str(self.subnets[segment].network_address + host_index)

    def describe(self) -> str:
        lines = [f"topology {self.prefix}:"]
        for seg, net in self.subnets.items():
            lines.append(f"  segment {seg}: {net} (bridge {self.bridge_name(seg)} in {self.switch_ns(seg)})")
        for h in self.hosts.values():
            addrs = ", ".join(f"{i.addr}/{i.prefixlen} on {i.ifname}" for i in h.ifaces)
            extra = ""
            if h.vips:
                where = "lo" if h.spec.role == "real" else h.ifname
                extra = f"; VIP {', '.join(h.vips)} on {where}"
            lines.append(f"  {h.name:<9} netns {h.netns}: {addrs}{extra}")
        return "\n".join(lines)

    # ----------------------------------------------------------- lifecycle

    def __enter__(self) -> Topology:
        self.build()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _say(self, msg: str) -> None:
        if self.log is not None:
            print(msg, file=self.log, flush=True)

    def build(self) -> Topology:
        if self._built:
            raise TopologyError("topology already built")
        self._built = True
        atexit.register(self.close)
        self._install_signal_handlers()
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def _install_signal_handlers(self) -> None:
        # Turn SIGTERM/SIGHUP into KeyboardInterrupt so `with` blocks and pytest
        # finalizers unwind and clean up. Only from the main thread, and only
        # where nobody installed a handler of their own.
        if threading.current_thread() is not threading.main_thread():
            return

        owner = self._owner_pid

        def handler(signum: int, frame: object) -> None:
            if os.getpid() != owner:
                # A forked child that never exec'd: die as it would have without us.
                signal.signal(signum, signal.SIG_DFL)
                os.kill(os.getpid(), signum)
                return
            raise KeyboardInterrupt(f"signal {signum}")

        for sig in (signal.SIGTERM, signal.SIGHUP):
            if signal.getsignal(sig) in (signal.SIG_DFL, None):
                self._old_handlers[sig] = signal.signal(sig, handler)

    def _restore_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig, old in self._old_handlers.items():
            with contextlib.suppress(Exception):
                signal.signal(sig, old)
        self._old_handlers.clear()

    def _pick_subnets(self) -> None:
        rng = random.SystemRandom()
        taken: set[ipaddress.IPv4Network] = set()
        for seg in self.spec.segments:
            if seg.subnet is not None:
                net = ipaddress.IPv4Network(seg.subnet)
                if net.prefixlen != 24:
                    raise ValueError(f"segment {seg.name}: only /24 subnets are supported")
            else:
                while True:
                    net = ipaddress.IPv4Network(
                        f"10.{rng.choice(SUBNET_SECOND_OCTETS)}.{rng.randrange(256)}.0/24"
                    )
                    if net not in taken:
                        break
            taken.add(net)
            self.subnets[seg.name] = net

    def _add_netns(self, name: str) -> None:
        if name in list_netns():
            raise TopologyError(f"namespace {name} already exists (prefix collision?)")
        _run(["ip", "netns", "add", name])
        self._namespaces.append(name)
        _run(["ip", "-n", name, "link", "set", "lo", "up"])
        # No IPv6: keeps captures quiet (no DAD, RS, MLD) and the tests IPv4-only.
        _run(["ip", "netns", "exec", name, "sh", "-c",
              "echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6 && "
              "echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6"])

    def _build(self) -> None:
        self._pick_subnets()
        self._say(f"building topology {self.prefix}")
        for seg in self.spec.segments:
            sw = self.switch_ns(seg.name)
            self._add_netns(sw)
            br = self.bridge_name(seg.name)
            # STP off and forward_delay 0: ports forward as soon as they are up.
            _run(["ip", "-n", sw, "link", "add", br, "type", "bridge",
                  "stp_state", "0", "forward_delay", "0"])
            _run(["ip", "-n", sw, "link", "set", br, "up"])

        for hidx, hspec in enumerate(self.spec.hosts):
            ns = self.ns_name(hspec.name)
            self._add_netns(ns)
            ifaces = []
            for lidx, link in enumerate(hspec.links):
                sw = self.switch_ns(link.segment)
                port = self._ifname(f"p{hidx}{link.segment}")[:IFNAMSIZ_MAX]
                self._ports[(hspec.name, link.segment)] = port
                inner = self._ifname(f"e{lidx}")
                # Created inside the switch namespace, peer moved straight into the host
                # namespace: no link ever exists in the caller's namespace.
                _run(["ip", "-n", sw, "link", "add", port, "type", "veth",
                      "peer", "name", inner, "netns", ns])
                _run(["ip", "-n", sw, "link", "set", port, "master", self.bridge_name(link.segment)])
                _run(["ip", "-n", sw, "link", "set", port, "up"])
                net = self.subnets[link.segment]
                addr = self.addr(link.segment, link.host_index)
                _run(["ip", "-n", ns, "addr", "add", f"{addr}/{net.prefixlen}", "dev", inner])
                _run(["ip", "-n", ns, "link", "set", inner, "up"])
                mac = _read_mac(ns, inner)
                ifaces.append(Interface(link.segment, inner, addr, net.prefixlen, mac))
            vip_seg = hspec.vip_segment or hspec.links[0].segment
            vips = [self.addr(vip_seg, v) for v in hspec.vips]
            host = Host(self, hspec, ns, ifaces, vips)
            self.hosts[hspec.name] = host
            self._configure_host(host)
        self._say(self.describe())

    def _configure_host(self, host: Host) -> None:
        spec = host.spec
        settings: dict[str, str | int] = {
            "net.ipv4.conf.all.rp_filter": 0,
            "net.ipv4.conf.default.rp_filter": 0,
            "net.ipv4.ip_forward": 1 if spec.forwarding else 0,
        }
        for i in host.ifaces:
            settings[f"net.ipv4.conf.{i.ifname}.rp_filter"] = 0
        if spec.role == "real" and host.vips:
            # The classic LVS-DR real server: never answer ARP for the VIP (it is
            # only on lo) and never use it as ARP source address.
            for dev in ("all", "lo", *(i.ifname for i in host.ifaces)):
                settings[f"net.ipv4.conf.{dev}.arp_ignore"] = 1
                settings[f"net.ipv4.conf.{dev}.arp_announce"] = 2
            settings["net.ipv4.conf.lo.rp_filter"] = 0
        host.sysctl(settings)
        for vip in host.vips:
            dev = "lo" if spec.role == "real" else host.ifname
            host.ip("addr", "add", f"{vip}/32", "dev", dev)
        if spec.gateway is not None:
            seg, idx = spec.gateway
            host.ip("route", "add", "default", "via", self.addr(seg, idx))

    # ----------------------------------------------------------- processes

    def _popen(self, argv: list[str], **kwargs: Any) -> subprocess.Popen[Any]:
        if self._closed:
            raise TopologyError("topology is closed")
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        # `ip netns exec` execs the command in place, so proc.pid is the command's PID.
        proc = subprocess.Popen(argv, **kwargs)
        with self._lock:
            self._procs.append(proc)
        return proc

    def stop_process(self, proc: subprocess.Popen[Any], sig: int = signal.SIGTERM,
                     timeout: float = TERM_GRACE_S) -> int:
        """Signal one process we started and wait for it (SIGKILL after `timeout`). Returns its status."""
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=timeout)
        return proc.returncode

    # ----------------------------------------------------------- teardown

    def close(self) -> None:
        """Idempotent: end our processes (by PID), delete our namespaces.

        A no-op in a forked copy of the owning process: the copy owns nothing.
        """
        if os.getpid() != self._owner_pid:
            return
        with self._lock:
            if self._closed:
                return
            self._closed = True
            procs = list(self._procs)
        errors = []
        running = [p for p in procs if p.poll() is None]
        for p in running:
            with contextlib.suppress(ProcessLookupError):
                p.terminate()
        deadline = time.monotonic() + TERM_GRACE_S
        for p in running:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(timeout=TERM_GRACE_S)
        for ns in reversed(self._namespaces):
            try:
                # Anything still inside our namespace was started there by this run
                # (e.g. a grandchild); it would keep the namespace alive.
                _kill_pids(netns_pids(ns))
                _run(["ip", "netns", "del", ns], check=False)
            except Exception as exc:  # keep going: remove as much as possible
                errors.append(f"{ns}: {exc}")
        self._restore_signal_handlers()
        with contextlib.suppress(Exception):
            atexit.unregister(self.close)
        self._say(f"removed topology {self.prefix}")
        if errors:
            raise TopologyError("cleanup problems: " + "; ".join(errors))

    def leftovers(self) -> list[str]:
        """Namespaces of this run that still exist (for tests of the cleanup itself)."""
        return [ns for ns in list_netns() if ns.startswith(self.prefix + "-")]


def _read_mac(netns: str, ifname: str) -> str:
    out = _run(["ip", "-n", netns, "-o", "link", "show", "dev", ifname]).stdout
    m = re.search(r"link/ether ([0-9a-f:]{17})", out)
    if not m:
        raise TopologyError(f"no MAC for {ifname} in {netns}: {out!r}")
    return m.group(1)


def environment_problem() -> str | None:
    """Why real-packet tests cannot run here, or None. Used by pytest to skip precisely."""
    import shutil

    if os.geteuid() != 0:
        return "needs root (creates network namespaces and iptables rules inside them)"
    if shutil.which("ip") is None:
        return "`ip` (iproute2) not found in PATH"
    proc = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    if proc.returncode != 0:
        return f"`ip netns list` failed: {proc.stderr.strip()}"
    if shutil.which("iptables") is None:
        return "`iptables` not found in PATH"
    if shutil.which("ipset") is None:
        return "`ipset` not found in PATH (lbd's steering rules look services up in ip sets)"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(
        prog="python -m lb.testbed.topology",
        description="Build a DR test topology and wait (Ctrl-C removes it), or remove leftovers.",
    )
    ap.add_argument("--reals", type=int, default=3, help="number of real servers (default 3)")
    ap.add_argument("--prefix", help="namespace/link prefix (default: lbB + random token)")
    ap.add_argument("--cleanup", metavar="PREFIX", help="remove namespaces <PREFIX>-* and exit")
    ap.add_argument("--hold", type=float, default=3600.0, help="seconds to keep it (default 3600)")
    args = ap.parse_args(argv)
    if args.cleanup:
        for ns in cleanup_stale(args.cleanup):
            print(f"removed {ns}")
        return 0
    with Topology(dr_spec(args.reals), prefix=args.prefix, log=sys.stdout) as topo:
        print(f"ready; e.g. ip netns exec {topo.client.netns} bash   (Ctrl-C removes it)", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            time.sleep(max(0.0, min(args.hold, 86400.0)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

