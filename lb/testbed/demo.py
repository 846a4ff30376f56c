"""`python -m lb.testbed.demo` (or `make demo`): lbd forwarding real HTTP requests in namespaces.

Four sections, one per forwarding method: DR, IPIP (tunnel), NAT and FULLNAT. Each
builds its own topology of network namespaces (client, director, real servers;
names start with `lbB<token>`), starts an HTTP server in every real server and
`lbd` in the director, configures the virtual service with `lbadm` (and the
control socket only where lbadm has no option), sends real HTTP requests from the
client to the VIP, and shows who answered and what `lbadm -Ln` says. Then it
stops lbd and removes everything, also on Ctrl-C or failure.

Another forwarding mode is one more `Section` in SECTIONS: a topology spec, how
to prepare the real servers, and the configuration steps.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from lb import paths
from lb.ctlclient import ControlClientError, request_once
from lb.testbed import client
from lb.testbed.ipip_decap import start_in as start_ipip_decap
from lb.testbed.pcap import Capture
from lb.testbed.topology import Host, Topology, TopologySpec, dr_spec, environment_problem, fullnat_spec

HTTP_PORT = 80
READY_TIMEOUT_S = 20.0
MAX_REQUESTS = 1000


class DemoError(RuntimeError):
    pass


@dataclass(frozen=True)
class Ctl:
    """A control-socket request (docs/control-protocol.md), for what lbadm has no option for.

    `lbadm`: the lbadm command that would do it; tried first when set.
    """

    op: str
    args: dict[str, Any]
    why: str = ""
    lbadm: list[str] | None = None


Step = list[str] | Ctl  # lbadm arguments, or a control request


@dataclass(frozen=True)
class Section:
    key: str
    title: str
    explain: str
    spec: Callable[[], TopologySpec]
    steps: Callable[[Topology], list[Step]]
    real_note: Callable[[Topology, Host], str]  # how each real server is set up, one line
    prepare: Callable[[Topology, Path], None] | None = None  # extra set-up before lbd starts
    path: str = "/"  # what the client GETs (/peer: the server also says whom it sees)
    toa_host: str | None = None  # capture TCP option 254 on this real server
    report: Callable[[Topology], str] | None = None  # one more line after the traffic
    rs_port: int = HTTP_PORT  # the real servers' HTTP port (NAT and FULLNAT may translate the VIP's)


def _svc(topo: Topology) -> str:
    return f"{topo.vip}:{HTTP_PORT}"


def dr_steps(topo: Topology) -> list[Step]:
    cmds: list[Step] = [["-A", "-t", _svc(topo), "-s", "rr"]]
    for rs in topo.reals:
        cmds.append(["-a", "-t", _svc(topo), "-r", f"{rs.addr}:{HTTP_PORT}", "-g", "-w", "1"])
    return cmds


def ipip_steps(topo: Topology) -> list[Step]:
    cmds: list[Step] = [["-A", "-t", _svc(topo), "-s", "rr"]]
    for rs in topo.reals:
        cmds.append(["-a", "-t", _svc(topo), "-r", f"{rs.addr}:{HTTP_PORT}", "-i", "-w", "1"])
    return cmds


NAT_RS_PORT = 8080  # NAT: the real servers' port behind VIP:80 (port translation)


def nat_steps(topo: Topology) -> list[Step]:
    cmds: list[Step] = [["-A", "-t", _svc(topo), "-s", "rr"]]
    for rs in topo.reals:
        cmds.append(["-a", "-t", _svc(topo), "-r", f"{rs.addr}:{NAT_RS_PORT}", "-m", "-w", "1"])
    return cmds


LIP2_INDEX = 5  # FULLNAT: the director's second local address on the back subnet


def fullnat_lips(topo: Topology) -> list[str]:
    return [topo.director.iface("back").addr, topo.addr("back", LIP2_INDEX)]


def fullnat_steps(topo: Topology) -> list[Step]:
    key = {"proto": "tcp", "addr": topo.vip, "port": HTTP_PORT}
    cmds: list[Step] = [["-A", "-t", _svc(topo), "-s", "rr", "--toa"]]
    for lip in fullnat_lips(topo):
        cmds.append(Ctl("add_laddr", {"service": key, "addr": lip}, "local address",
                        lbadm=["-P", "-t", _svc(topo), "-z", lip]))
    for rs in topo.reals:
        cmds.append(["-a", "-t", _svc(topo), "-r", f"{rs.addr}:{HTTP_PORT}", "-b", "-w", "1"])
    return cmds


def _prepare_ipip(topo: Topology, workdir: Path) -> None:
    for rs in topo.reals:
        start_ipip_decap(rs, f"{topo.prefix}ipip", seconds=300.0)


def _ipip_report(topo: Topology) -> str:
    counts = []
    for rs in topo.reals:
        info = json.loads(rs.ip("-j", "-s", "link", "show", "dev", f"{topo.prefix}ipip").stdout)
        counts.append(f"{rs.name}: {info[0]['stats64']['rx']['packets']}")
    return "packets that arrived through the tunnel (decapsulated into TUN): " + ", ".join(counts)


def _prepare_nat(topo: Topology, workdir: Path) -> None:
    # The real servers' replies are routed through the director to the client: lbd takes them in
    # the forward hook (its default --steer-hook input), so the director forwards, as IPVS's NAT needs.
    topo.director.sysctl({"net.ipv4.ip_forward": 1})


def _prepare_fullnat(topo: Topology, workdir: Path) -> None:
    d = topo.director
    d.ip("addr", "add", f"{topo.addr('back', LIP2_INDEX)}/24", "dev", d.iface("back").ifname)


SECTIONS: list[Section] = [
    Section(
        key="dr",
        title="DR (direct routing, lbadm -g), round robin",
        explain=(
            "The director owns the VIP; lbd takes the VIP's packets from NFQUEUE and sends each\n"
            "one unchanged to the chosen real server's MAC. Real servers hold the VIP on lo\n"
            "(arp_ignore=1, arp_announce=2) and answer the client directly."
        ),
        spec=lambda: dr_spec(3),
        steps=dr_steps,
        real_note=lambda t, rs: f"{rs.addr} (mac {rs.mac}), VIP on lo, httpd on :{HTTP_PORT}",
    ),
    Section(
        key="ipip",
        title="IPIP (tunnel, lbadm -i), round robin",
        explain=(
            "lbd wraps each client packet unchanged in an outer IPv4 header (protocol 4) from the\n"
            "director's own address (the one its route to the real server selects) to the real\n"
            "server. Real servers hold the VIP on lo and answer the client directly. On a real\n"
            "host the kernel's ipip module (tunl0) strips the outer header; this kernel has none,\n"
            "so each real server here runs lb.testbed.ipip_decap (raw socket for protocol 4 ->\n"
            "TUN device), which does the same in userspace."
        ),
        spec=lambda: dr_spec(3),
        steps=ipip_steps,
        real_note=lambda t, rs: (f"{rs.addr}, VIP on lo, ipip_decap -> TUN {t.prefix}ipip, "
                                 f"httpd on :{HTTP_PORT}"),
        prepare=_prepare_ipip,
        report=_ipip_report,
    ),
    Section(
        key="nat",
        title="NAT (masquerading, lbadm -m), round robin, VIP:80 -> real servers' :8080",
        explain=(
            "The destination is rewritten: client:port -> VIP:80 becomes client:port -> RIP:8080. The\n"
            "real servers see the client's own address and sit on another subnet whose default\n"
            "route is the director, so their replies RIP:8080 -> client pass it: lbd takes them\n"
            "as they arrive on the director's back interface (a netdev ingress chain of lbd's hands\n"
            "them to its veth pair lbnr0, so routed traffic meets nothing of lbd's) and sends them\n"
            "on as VIP:80 -> client. Both directions drive the connection's TCP state, as in\n"
            "kernel IPVS's NAT."
        ),
        spec=lambda: fullnat_spec(3),
        steps=nat_steps,
        prepare=_prepare_nat,
        real_note=lambda t, rs: (f"{rs.addr} on the back subnet, default route via the director "
                                 f"{t.director.iface('back').addr}, no VIP, httpd on :{NAT_RS_PORT}"),
        path="/peer",
        rs_port=NAT_RS_PORT,
    ),
    Section(
        key="fullnat",
        title="FULLNAT (lbadm -b, DPVS conventions), round robin, TOA on",
        explain=(
            "Both addresses are rewritten: client:port -> VIP:80 becomes LIP:lport -> RIP:80, and\n"
            "the real server's reply RIP -> LIP comes back through the director, where lbd turns\n"
            "it into VIP -> client. Real servers need no VIP and sit on another subnet (their\n"
            "default route is the director). They see a local address (LIP) as the client; with\n"
            "TOA the handshake's last ACK carries the real client in TCP option 254."
        ),
        spec=lambda: fullnat_spec(3),
        steps=fullnat_steps,
        real_note=lambda t, rs: (f"{rs.addr} on the back subnet, default route via the director "
                                 f"{t.director.iface('back').addr}, no VIP, httpd on :{HTTP_PORT}"),
        prepare=_prepare_fullnat,
        path="/peer",
        toa_host="f1",
    ),
]


def _bin(name: str) -> str:
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if not found:
        raise DemoError(f"`{name}` not found next to {sys.executable} or in PATH: run `make build`")
    return found


class Demo:
    def __init__(self, requests: int, engine: str, out: TextIO = sys.stdout) -> None:
        self.requests = requests
        self.engine = engine
        self.out = out
        self.lbd_bin = _bin("lbd")
        self.lbadm_bin = _bin("lbadm")

    def say(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    @contextlib.contextmanager
    def _lbd(self, topo: Topology, workdir: Path) -> Iterator[tuple[subprocess.Popen, str, Path]]:
        # No --socket: lbd and lbadm find each other by the director's namespace, as an operator's
        # do (/run/lbd/netns/NAME/lbd.sock, lb/paths.py); the demo removes that directory at the end.
        rundir = paths.runtime_dir(paths.Netns("named", 0, name=topo.director.netns))
        sock = str(rundir / paths.SOCKET_NAME)
        log_path = workdir / "lbd.log"
        argv = [self.lbd_bin, "--queue-num", "0", "--engine", self.engine]
        command = shlex.join(["ip", "netns", "exec", topo.director.netns, *argv])
        self.say(f"\nstarting lbd in the director's namespace:\n  $ {command}")
        with open(log_path, "w") as log:
            proc = topo.director.popen(argv, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + READY_TIMEOUT_S
            while True:
                if proc.poll() is not None:
                    raise DemoError(f"lbd exited with {proc.returncode}:\n{_tail(log_path)}")
                with contextlib.suppress(ControlClientError):  # not listening yet
                    if os.path.exists(sock) and request_once(sock, "ping", timeout_s=2.0).get("ok"):
                        break
                if time.monotonic() > deadline:
                    raise DemoError(f"lbd not ready after {READY_TIMEOUT_S}s:\n{_tail(log_path)}")
                time.sleep(0.05)
            yield proc, sock, log_path
        finally:
            rc = topo.stop_process(proc, signal.SIGTERM)
            # lbd's steering: its nftables table (the default), or raw rules of --steering iptables
            tables = topo.director.exec(["nft", "list", "tables"], check=False).stdout
            rules = topo.director.exec(["iptables", "-t", "raw", "-S"], check=False).stdout
            links = topo.director.exec(["ip", "-o", "link", "show"], check=False).stdout
            leftover = [t for t in tables.splitlines() if t.startswith(("table ip lbd-q", "table netdev lbd-q"))]
            leftover += [r for r in rules.splitlines() if r and not r.startswith("-P ")]
            leftover += [ln.split(":")[1].strip() for ln in links.splitlines()
                         if ln.count(":") >= 2 and ln.split(":")[1].strip().startswith("lbnr")]
            state = ("its steering (nftables tables lbd-q0, and for NAT its veth pair) is gone" if not leftover
                     else f"LEFT BEHIND: {leftover}")
            shutil.rmtree(rundir, ignore_errors=True)  # its socket and state file: the namespace goes too
            self.say(f"lbd stopped with SIGTERM (exit {rc}); {state}; {rundir} removed.")

    def lbadm(self, topo: Topology, sock: str, args: list[str], show: bool = True) -> str:
        if show:
            self.say(f"  $ lbadm {shlex.join(args)}")
        proc = topo.director.exec([self.lbadm_bin, *args], check=False)
        if proc.returncode != 0:
            raise DemoError(f"lbadm {shlex.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc.stdout

    def ctl(self, sock: str, step: Ctl) -> Any:
        resp = request_once(sock, step.op, step.args, timeout_s=5.0)
        if not resp.get("ok"):
            raise DemoError(f"control op {step.op} {json.dumps(step.args)} failed: {resp.get('error')}")
        return resp.get("result")

    def apply(self, topo: Topology, sock: str, step: Step) -> None:
        if not isinstance(step, Ctl):
            self.lbadm(topo, sock, step)
            return
        if step.lbadm is not None:
            proc = topo.director.exec([self.lbadm_bin, *step.lbadm], check=False)
            if proc.returncode == 0:
                self.say(f"  $ lbadm {shlex.join(step.lbadm)}")
                return
            self.say(f"  $ lbadm {shlex.join(step.lbadm)}    (DPVS syntax; this lbadm refuses it, so:)")
        note = f"    ({step.why})" if step.why and step.lbadm is None else ""
        self.say(f"  control socket: {json.dumps({'op': step.op, 'args': step.args})}{note}")
        self.ctl(sock, step)

    def _wait_resolved(self, sock: str, timeout: float = 5.0) -> None:
        """Until lbd has forwarding state (route, MAC, source) for every destination."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            services = self.ctl(sock, Ctl("list", {}))["services"]
            if all(d["l2"]["state"] == "resolved" for s in services for d in s["dests"]):
                return
            time.sleep(0.05)

    def run_section(self, section: Section) -> bool:
        started = time.monotonic()
        self.say(f"=== {section.title} ===")
        self.say(section.explain)
        workdir = Path(tempfile.mkdtemp(prefix="lbB-demo-"))
        try:
            with Topology(section.spec()) as topo:
                self._describe(topo, section)
                if section.prepare is not None:
                    section.prepare(topo, workdir)
                self._start_httpds(topo, workdir, section.rs_port)
                with self._lbd(topo, workdir) as (_proc, sock, log_path):
                    self.say(f"lbd is ready; its control socket is {sock}. Configuring it with lbadm\n"
                             f"(in the same namespace: ip netns exec {topo.director.netns} lbadm ...):")
                    for step in section.steps(topo):
                        self.apply(topo, sock, step)
                    self._wait_resolved(sock)
                    ok = self._traffic(topo, section)
                    self.say("\n  $ lbadm -Ln")
                    for line in self.lbadm(topo, sock, ["-Ln"], show=False).rstrip("\n").split("\n"):
                        self.say(f"  {line.rstrip()}")
                    if not ok:
                        self.say(f"\nlbd log (tail):\n{_tail(log_path)}")
            self.say(f"namespaces {topo.prefix}-* removed ({time.monotonic() - started:.1f} s).\n")
            return ok
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

    def _describe(self, topo: Topology, section: Section) -> None:
        c, d = topo.client, topo.director
        segs = ", ".join(f"{name} {net}" for name, net in topo.subnets.items())
        self.say(f"\nnamespaces {topo.prefix}-*, bridged segments: {segs}")
        self.say(f"  client    {c.addr}")
        others = "".join(f", {i.addr} ({i.segment})" for i in d.ifaces[1:])
        self.say(f"  director  {d.addr}{others}, VIP {topo.vip} (mac {d.mac})")
        for rs in topo.reals:
            self.say(f"  {rs.name:<9} {section.real_note(topo, rs)}")

    def _start_httpds(self, topo: Topology, workdir: Path, port: int = HTTP_PORT) -> None:
        env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
        for rs in topo.reals:
            with open(workdir / f"{rs.name}.log", "w") as log:
                rs.popen([sys.executable, "-m", "lb.testbed.httpd", "--name", rs.name,
                          "--port", str(port)], stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 15.0
        for rs in topo.reals:
            # From the director: it reaches the real servers in every topology (before lbd runs).
            while not client.get_once(topo.director.netns, rs.addr, port, timeout=1.0).ok:
                if time.monotonic() > deadline:
                    raise DemoError(f"httpd in {rs.name} does not answer:\n{_tail(workdir / f'{rs.name}.log')}")
                time.sleep(0.1)

    def _traffic(self, topo: Topology, section: Section) -> bool:
        url = f"http://{topo.vip}{section.path}"
        self.say(f"\n{self.requests} HTTP GETs from the client to {url}, each on a new TCP connection:")
        cap = None
        if section.toa_host is not None:
            cap = Capture(topo.host(section.toa_host),
                          f"tcp dst port {HTTP_PORT} and (tcp[tcpflags] & (tcp-syn|tcp-rst)) == 0",
                          direction="in").start()
        try:
            replies = client.fresh_gets(topo.client.netns, topo.vip, HTTP_PORT, self.requests,
                                        path=section.path, timeout=3.0)
            packets = cap.stop() if cap is not None else []
        finally:
            if cap is not None:
                cap.close()
        per_row = 6 if section.path == "/" else 2
        row = []
        for i, r in enumerate(replies, 1):
            text = r.server if r.ok else "FAILED"
            if r.ok and section.path == "/peer":
                text = f"{r.server} (it saw {r.body.splitlines()[1].replace(' ', ':')})"
            row.append(f"#{i:<2} {text:<32}" if per_row == 2 else f"#{i:<2} {text}")
            if len(row) == per_row or i == len(replies):
                self.say(("  " + "   ".join(row)).rstrip())
                row = []
        counts = Counter(r.server for r in replies if r.ok)
        failed = [r for r in replies if not r.ok]
        summary = ", ".join(f"{rs.name}: {counts.get(rs.name, 0)}" for rs in topo.reals)
        self.say(f"answered by {summary}" + (f"; {len(failed)} FAILED ({failed[0].error})" if failed else ""))
        if cap is not None:
            self._show_toa(topo, section, replies, packets)
        if section.report is not None:
            self.say(section.report(topo))
        return not failed

    def _show_toa(self, topo: Topology, section: Section, replies: list[client.Reply], packets: list) -> None:
        shown = 0
        for p in packets:
            l4 = p.ip.l4
            toa = [v for k, v in (l4.options if l4 else []) if k == 254 and len(v) == 6]
            if not toa:
                continue
            port = int.from_bytes(toa[0][:2], "big")
            addr = socket.inet_ntoa(toa[0][2:])
            self.say(f"{section.toa_host} received the handshake ACK from {p.ip.src}:{l4.sport} with TCP option "
                     f"254 (TOA, len 8): client {addr}:{port}")
            shown += 1
            if shown == 2:
                break
        if not shown:
            self.say(f"no TOA option seen at {section.toa_host} (capture of {len(packets)} segments)")


def _tail(path: Path, chars: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lb.testbed.demo", description=__doc__.splitlines()[0])
    ap.add_argument("--mode", choices=[s.key for s in SECTIONS], action="append",
                    help="run only this section (repeatable; default: all)")
    ap.add_argument("-n", "--requests", type=int, default=12, help="HTTP requests per section (default 12)")
    ap.add_argument("--engine", default="c", choices=["c", "python"], help="lbd packet engine (default c)")
    args = ap.parse_args(argv)
    if not 1 <= args.requests <= MAX_REQUESTS:
        ap.error(f"--requests must be in 1..{MAX_REQUESTS}")
    problem = environment_problem()
    if problem:
        print(f"demo: {problem}", file=sys.stderr)
        return 2
    sections = [s for s in SECTIONS if not args.mode or s.key in args.mode]
    # lbd and lbadm must meet at the director namespace's default socket, not at one a caller set.
    os.environ.pop("LBD_SOCKET", None)
    try:
        demo = Demo(args.requests, args.engine)
        results = [demo.run_section(s) for s in sections]
    except KeyboardInterrupt:
        print("\ninterrupted; everything removed.", file=sys.stderr)
        return 130
    except DemoError as exc:
        print(f"\ndemo failed: {exc}", file=sys.stderr)
        return 1
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
