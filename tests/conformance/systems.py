"""The two systems under comparison, behind one interface: run an admin command, get ready
for traffic.

- KernelIpvs: Debian's `ipvsadm` binary in its director namespace, talking to the guest
  kernel's IPVS.
- LbdSystem: one `lbd` (C engine) in its director namespace, started once for the whole run
  (1-2 minutes under emulation), driven by `lbadm` run in this process: `lb.lbadm.run.main(argv)`
  is exactly the `lbadm` console script (pyproject's [project.scripts]), minus a Python
  start-up of 5-30 s per command in the guest. The argv is the one given to ipvsadm; the
  control socket comes from $LBD_SOCKET, as an operator's would. With tool "ipvsadm" (runner
  --lbd-tool ipvsadm) lbd is driven by the very ipvsadm binary that drives the kernel, with the
  environment `lbd-exec` gives it (lbd's IPVS preload library in LD_PRELOAD, lbd's socket in
  LBD_SOCKET, docs/ipvsadm.md): one rules file, one tool, both systems. That environment is computed
  here, by lbd-exec's own code, rather than by running the lbd-exec script per command: the script
  is a Python start-up (5-30 s in the guest) before every ipvsadm, which made the lbd side 8-12
  times slower than the kernel side and a full run overrun its time bound (issue 17).
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Protocol

from bench.common import Lbd, LbdError
from lb.ipvsabi.launcher import child_environment, library_path
from lb.lbadm.run import main as lbadm_main

LBD_START_TIMEOUT_S = 400.0  # lbd's start-up under TCG: ~30 s idle, minutes on a busy host
RESOLVE_TIMEOUT_S = 30.0
ADMIN_TIMEOUT_S = 60.0
LBD_TOOLS = ("lbadm", "ipvsadm")
IPVSADM = "ipvsadm"  # the same binary, found on PATH, for both systems
# What lbd-exec adds to the tool's environment (lb/ipvsabi/launcher.py: child_environment).
PRELOAD_VARS = ("LD_PRELOAD", "LBD_SOCKET")


def ipvsadm_through_preload(socket: str, argv: list[str], env: dict[str, str] | None = None) -> list[str]:
    """The command that runs `ipvsadm ARGV` against the lbd at `socket` exactly as `lbd-exec --socket
    SOCKET ipvsadm ARGV` would (the same LD_PRELOAD and LBD_SOCKET, from lbd-exec's own
    child_environment), but through env(1) rather than the lbd-exec Python script: no interpreter
    starts per command, so the lbd side pays what the kernel side pays for one ipvsadm."""
    child = child_environment(dict(os.environ if env is None else env), library_path(), socket, None)
    return ["env", *(f"{name}={child[name]}" for name in PRELOAD_VARS), IPVSADM, *argv]


@dataclass
class AdminResult:
    rc: int
    stdout: str
    stderr: str


class System(Protocol):
    name: str
    tool: str
    director: Any  # the director host (lb.testbed.topology.Host) it runs on

    def admin(self, argv: list[str], stdin: str | None = None) -> AdminResult: ...

    def before_traffic(self) -> str | None:
        """Wait until the system can forward (None) or say why it cannot."""
        ...


class KernelIpvs:
    name = "kernel"
    tool = "ipvsadm"

    def __init__(self, director: Any) -> None:
        self.director = director

    def admin(self, argv: list[str], stdin: str | None = None) -> AdminResult:
        r = self.director.exec([IPVSADM, *argv], check=False, input=stdin, timeout=ADMIN_TIMEOUT_S)
        return AdminResult(r.returncode, r.stdout, r.stderr)

    def before_traffic(self) -> str | None:
        return None  # the kernel resolves neighbours on the first packet


class LbdSystem:
    name = "lbd"

    def __init__(self, director: Any, tool: str = "lbadm") -> None:
        if tool not in LBD_TOOLS:
            raise ValueError(f"lbd's tool must be one of {', '.join(LBD_TOOLS)}, not {tool!r}")
        self.director = director
        self.tool = tool
        self.lbd = Lbd(director, "c")
        self.starts = 0

    def start(self) -> dict[str, Any]:
        self.starts += 1
        return self.lbd.start(timeout=LBD_START_TIMEOUT_S)

    def ensure_running(self) -> str | None:
        """Restart lbd if it died (a crash must not hide every later scenario); says what happened."""
        if self.lbd.running():
            return None
        rc = self.lbd.proc.returncode if self.lbd.proc else None
        tail = self.lbd.log_tail(1500)
        self.lbd.cleanup()
        self.lbd = Lbd(self.director, "c")
        self.start()
        return f"lbd had exited (status {rc}); restarted. Its log ended with:\n{tail}"

    def admin(self, argv: list[str], stdin: str | None = None) -> AdminResult:
        if self.tool == "ipvsadm":
            r = self.director.exec(ipvsadm_through_preload(self.lbd.socket, argv), check=False, input=stdin,
                                   timeout=ADMIN_TIMEOUT_S)
            return AdminResult(r.returncode, r.stdout, r.stderr)
        out, err = io.StringIO(), io.StringIO()
        old_in = sys.stdin
        sys.stdin = io.StringIO(stdin or "")
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                try:
                    rc = lbadm_main(argv, env={"LBD_SOCKET": self.lbd.socket})
                except SystemExit as exc:
                    rc = exc.code if isinstance(exc.code, int) else 1
        finally:
            sys.stdin = old_in
        return AdminResult(rc, out.getvalue(), err.getvalue())

    def before_traffic(self) -> str | None:
        """lbd forwards to a destination once it resolved its MAC (DR): wait for that."""
        deadline = time.monotonic() + RESOLVE_TIMEOUT_S
        states: list[str] = []
        while time.monotonic() < deadline:
            try:
                services = self.lbd.request("list")["services"]
            except LbdError as exc:
                return f"lbd does not answer: {exc}"
            states = [d["l2"]["state"] for s in services for d in s["dests"]]
            if all(st in ("resolved", "n/a") for st in states):
                return None
            time.sleep(0.1)
        return f"destinations not resolved after {RESOLVE_TIMEOUT_S:.0f} s: {states}"

    def stop(self) -> None:
        self.lbd.stop()
        self.lbd.cleanup()
