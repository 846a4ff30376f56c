"""`python -m lb.demo` (or `make demo`): lbd forwarding real HTTP requests in namespaces.

For each mode section (today: DR) it builds its own topology of network
namespaces (client, director, real servers; names start with `lbB<token>`),
starts an HTTP server in every real server and `lbd` in the director,
configures the virtual service with `lbadm` only, sends real HTTP requests from
the client to the VIP, and shows who answered and what `lbadm -Ln` says. Then
it stops lbd and removes everything, also on Ctrl-C or failure.

Another forwarding mode is one more `Section` in SECTIONS: a topology spec and
the lbadm commands that configure it.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from lb.testbed import client
from lb.testbed.topology import Topology, TopologySpec, dr_spec, environment_problem

HTTP_PORT = 80
READY_TIMEOUT_S = 20.0
MAX_REQUESTS = 1000


class DemoError(RuntimeError):
    pass


@dataclass(frozen=True)
class Section:
    key: str
    title: str
    explain: str
    spec: Callable[[], TopologySpec]
    commands: Callable[[Topology], list[list[str]]]  # lbadm argument lists, in order


def dr_commands(topo: Topology) -> list[list[str]]:
    svc = f"{topo.vip}:{HTTP_PORT}"
    cmds = [["-A", "-t", svc, "-s", "rr"]]
    for rs in topo.reals:
        cmds.append(["-a", "-t", svc, "-r", f"{rs.addr}:{HTTP_PORT}", "-g", "-w", "1"])
    return cmds


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
        commands=dr_commands,
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


def _ping(sock_path: str) -> dict:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(2.0)
        s.connect(sock_path)
        s.sendall(b'{"op": "ping", "args": {}}\n')
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(4096)
            if not chunk:
                break
            buf += chunk
    return json.loads(buf or b"{}")


class Demo:
    def __init__(self, requests: int, engine: str, out=sys.stdout) -> None:
        self.requests = requests
        self.engine = engine
        self.out = out
        self.lbd_bin = _bin("lbd")
        self.lbadm_bin = _bin("lbadm")

    def say(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    @contextlib.contextmanager
    def _lbd(self, topo: Topology, workdir: Path) -> Iterator[tuple[subprocess.Popen, str, Path]]:
        sock = str(workdir / "lbd.sock")
        log_path = workdir / "lbd.log"
        with open(log_path, "w") as log:
            proc = topo.director.popen(
                [self.lbd_bin, "--socket", sock, "--queue-num", "0", "--engine", self.engine],
                stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + READY_TIMEOUT_S
            while True:
                if proc.poll() is not None:
                    raise DemoError(f"lbd exited with {proc.returncode}:\n{_tail(log_path)}")
                with contextlib.suppress(OSError, ValueError):
                    if os.path.exists(sock) and _ping(sock).get("ok"):
                        break
                if time.monotonic() > deadline:
                    raise DemoError(f"lbd not ready after {READY_TIMEOUT_S}s:\n{_tail(log_path)}")
                time.sleep(0.05)
            yield proc, sock, log_path
        finally:
            rc = topo.stop_process(proc, signal.SIGTERM)
            rules = topo.director.exec(["iptables", "-t", "raw", "-S"], check=False).stdout
            leftover = [r for r in rules.splitlines() if r and not r.startswith("-P ")]
            state = "its iptables rules are gone" if not leftover else f"LEFT RULES: {leftover}"
            self.say(f"lbd stopped with SIGTERM (exit {rc}); {state}.")

    def lbadm(self, topo: Topology, sock: str, args: list[str], show: bool = True) -> str:
        if show:
            self.say(f"  $ lbadm {shlex.join(args)}")
        proc = topo.director.exec([self.lbadm_bin, "--socket", sock, *args], check=False)
        if proc.returncode != 0:
            raise DemoError(f"lbadm {shlex.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc.stdout

    def run_section(self, section: Section) -> bool:
        self.say(f"=== {section.title} ===")
        self.say(section.explain)
        workdir = Path(tempfile.mkdtemp(prefix="lbB-demo-"))
        try:
            with Topology(section.spec()) as topo:
                self._describe(topo)
                self._start_httpds(topo, workdir)
                with self._lbd(topo, workdir) as (_proc, sock, log_path):
                    self.say(f"\nlbd runs in {topo.director.netns}; configuring it with lbadm:")
                    for args in section.commands(topo):
                        self.lbadm(topo, sock, args)
                    ok = self._traffic(topo)
                    self.say("\n  $ lbadm -Ln")
                    for line in self.lbadm(topo, sock, ["-Ln"], show=False).rstrip("\n").split("\n"):
                        self.say(f"  {line.rstrip()}")
                    if not ok:
                        self.say(f"\nlbd log (tail):\n{_tail(log_path)}")
            self.say(f"namespaces {topo.prefix}-* removed.\n")
            return ok
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

    def _describe(self, topo: Topology) -> None:
        c, d = topo.client, topo.director
        self.say(f"\nnamespaces {topo.prefix}-*, one bridged segment {topo.subnets['lan']}:")
        self.say(f"  client    {c.addr}")
        self.say(f"  director  {d.addr}, VIP {topo.vip} (mac {d.mac})")
        for rs in topo.reals:
            self.say(f"  {rs.name:<9} {rs.addr} (mac {rs.mac}), VIP on lo, httpd on :{HTTP_PORT}")

    def _start_httpds(self, topo: Topology, workdir: Path) -> None:
        env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
        for rs in topo.reals:
            with open(workdir / f"{rs.name}.log", "w") as log:
                rs.popen([sys.executable, "-m", "lb.testbed.httpd", "--name", rs.name,
                          "--port", str(HTTP_PORT)], stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 15.0
        for rs in topo.reals:
            while not client.get_once(topo.client.netns, rs.addr, HTTP_PORT, timeout=1.0).ok:
                if time.monotonic() > deadline:
                    raise DemoError(f"httpd in {rs.name} does not answer:\n{_tail(workdir / f'{rs.name}.log')}")
                time.sleep(0.1)

    def _traffic(self, topo: Topology) -> bool:
        url = f"http://{topo.vip}/"
        self.say(f"\n{self.requests} HTTP GETs from the client to {url}, each on a new TCP connection:")
        replies = client.fresh_gets(topo.client.netns, topo.vip, HTTP_PORT, self.requests, timeout=3.0)
        row = []
        for i, r in enumerate(replies, 1):
            row.append(f"#{i:<2} {r.server if r.ok else 'FAILED'}")
            if len(row) == 6 or i == len(replies):
                self.say("  " + "   ".join(row))
                row = []
        counts = Counter(r.server for r in replies if r.ok)
        failed = [r for r in replies if not r.ok]
        summary = ", ".join(f"{rs.name}: {counts.get(rs.name, 0)}" for rs in topo.reals)
        self.say(f"answered by {summary}" + (f"; {len(failed)} FAILED ({failed[0].error})" if failed else ""))
        return not failed


def _tail(path: Path, chars: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lb.demo", description=__doc__.splitlines()[0])
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
