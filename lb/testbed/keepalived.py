"""Test-bed helpers for Debian's unmodified keepalived run through lbd-exec (tests/netns).

keepalived runs in a namespace of the test's topology with its own configuration, pid files and
console log under a temporary directory, and is ended by PID. Real servers get their own httpd
(lb.testbed.httpd) on `PORT`, so a test can kill one and start it again.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from lb.testbed import client
from lb.testbed.topology import Host, Topology

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = REPO / ".venv" / "bin"
KEEPALIVED = REPO / "build" / "tools" / "keepalived"
LBD_EXEC = VENV_BIN / "lbd-exec"
PORT = 8080  # the real servers' own httpd (the session topology's httpd keeps port 80)
STOP_TIMEOUT_S = 15.0
# keepalived's checkers run every delay_loop (1 s here) and retry once; an event is waited for
# several times that, in 0.2 s steps, and the wait ends as soon as the state is reached.
EVENT_TIMEOUT_S = 30.0
POLL_S = 0.2

T = TypeVar("T")


def keepalived_problem() -> str | None:
    """Why keepalived cannot run here, or None."""
    if not KEEPALIVED.exists():
        return (f"{KEEPALIVED} is missing: `make build/tools/keepalived` (part of `make test`) unpacks "
                "Debian's keepalived 2.2.7")
    ldd = subprocess.run(["ldd", str(KEEPALIVED)], capture_output=True, text=True, check=False)
    missing = [line.split()[0] for line in ldd.stdout.splitlines() if "not found" in line]
    if missing:
        return (f"{KEEPALIVED} needs shared libraries that are not installed: {', '.join(missing)} "
                "(DEB_PKGS in the Makefile)")
    if not LBD_EXEC.exists():
        return f"{LBD_EXEC} missing: run `make build`"
    return None


class Keepalived:
    """One keepalived (parent, checker and VRRP children) in `host`'s namespace, via lbd-exec."""

    def __init__(self, topo: Topology, host: Host, socket: str, config: str, *,
                 wait_s: int | None = None, name: str = "ka") -> None:
        self.topo = topo
        self.host = host
        self.socket = socket
        self.wait_s = wait_s
        self.dir = Path(tempfile.mkdtemp(prefix=f"{topo.prefix}-{name}-"))
        self.conf = self.dir / "keepalived.conf"
        self.conf.write_text(config)
        self.log_path = self.dir / "keepalived.log"
        self.proc: subprocess.Popen[Any] | None = None

    def start(self) -> Keepalived:
        wait = [] if self.wait_s is None else ["--wait", str(self.wait_s)]
        argv = [str(LBD_EXEC), "--socket", self.socket, *wait, str(KEEPALIVED),
                "--dont-fork", "--log-console", "--log-detail", "--use-file", str(self.conf),
                "--pid", str(self.dir / "keepalived.pid"), "--vrrp_pid", str(self.dir / "vrrp.pid"),
                "--checkers_pid", str(self.dir / "checkers.pid")]
        with open(self.log_path, "w") as log:
            self.proc = self.host.popen(argv, stdout=log, stderr=subprocess.STDOUT)
        return self

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        """Signal the parent (by PID); it ends its children and, on SIGTERM, removes what it added."""
        if self.proc is None:
            return None
        return self.topo.stop_process(self.proc, sig, timeout=STOP_TIMEOUT_S)

    def child_pid(self, which: str) -> int:
        """PID of the "vrrp" or "checkers" child, from its pid file."""
        return int((self.dir / f"{which}.pid").read_text().split()[0])

    def log(self, chars: int = 6000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else "(no log)"

    def cleanup(self) -> None:
        if self.running():
            self.stop(signal.SIGKILL)
        shutil.rmtree(self.dir, ignore_errors=True)


class RealServers:
    """An httpd on `PORT` in each real server namespace, killed and started again by the tests."""

    def __init__(self, topo: Topology, reals: list[Host]) -> None:
        self.topo = topo
        self.reals = {rs.name: rs for rs in reals}
        self.procs: dict[str, subprocess.Popen[Any]] = {}

    def start(self, name: str) -> None:
        rs = self.reals[name]
        env = dict(os.environ, PYTHONPATH=str(REPO))
        self.procs[name] = rs.popen([sys.executable, "-m", "lb.testbed.httpd", "--name", name,
                                     "--port", str(PORT)], stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, env=env)
        # Asked from the director, which reaches the real servers in every topology (NAT's too).
        client.wait_serving(self.topo.director.netns, {rs.addr: name}, PORT)

    def kill(self, name: str) -> None:
        self.topo.stop_process(self.procs.pop(name), signal.SIGKILL)

    def start_all(self) -> RealServers:
        for name in self.reals:
            self.start(name)
        return self

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.kill(name)


def wait_for(what: str, probe: Callable[[], T | None], diagnose: Callable[[], str],
             timeout_s: float = EVENT_TIMEOUT_S) -> T:
    """Polls `probe` until it returns something other than None; AssertionError after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = probe()
        if got is not None:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s:g} s: {what}\n{diagnose()}")
        time.sleep(POLL_S)


_SERVICE = re.compile(r"^(?:TCP|UDP|SCTP)  ([0-9.]+):(\d+) ")
_DEST = re.compile(r"^  -> ([0-9.]+):\d+\s+\S+\s+(\d+)\s")


def listing(lbadm: Callable[..., subprocess.CompletedProcess[str]]) -> dict[tuple[str, int], dict[str, int]]:
    """`lbadm -Ln` as {(vip, port): {real server address: weight}} (tests/netns/conftest.parse_ln
    checks the layout itself)."""
    table: dict[tuple[str, int], dict[str, int]] = {}
    current: dict[str, int] | None = None
    for line in lbadm("-Ln").stdout.splitlines():
        if m := _SERVICE.match(line):
            current = table.setdefault((m.group(1), int(m.group(2))), {})
        elif (d := _DEST.match(line)) and current is not None:
            current[d.group(1)] = int(d.group(2))
    return table


def served_by(topo: Topology, vip: str, n: int) -> dict[str, int]:
    """`n` fresh GETs to vip:PORT from the client: how many each server answered ("" = failed)."""
    return client.tally(client.fresh_gets(topo.client.netns, vip, PORT, n, timeout=3.0))
