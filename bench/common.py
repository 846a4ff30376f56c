"""Shared plumbing of the benchmark suite: paths, builds, run directories, statistics, lbd.

Nothing here sends packets. Everything that runs inside namespaces goes through
lb.testbed.topology (per-run `lbB<token>` prefix, removed on exit, processes
ended by PID).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from lb.ctlclient import ControlClient, ControlClientError, ControlError

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
RESULTS = BENCH / "results"
BUILD = BENCH / ".build"  # compiled helpers (gitignored via bench/.gitignore)
VENV_BIN = REPO / ".venv" / "bin"
PY = str(VENV_BIN / "python") if (VENV_BIN / "python").exists() else sys.executable
LBD = Path(os.environ.get("LBD", VENV_BIN / "lbd"))
LBADM = Path(os.environ.get("LBADM", VENV_BIN / "lbadm"))
LBD_EXEC = Path(os.environ.get("LBD_EXEC", VENV_BIN / "lbd-exec"))  # docs/ipvsadm.md

CC = os.environ.get("CC", "gcc")
CFLAGS = ["-O2", "-g", "-Wall", "-Wextra", "-Werror"]  # as the Makefile's bench-tools


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- builds


def _stale(target: Path, sources: Iterable[Path]) -> bool:
    if not target.exists():
        return True
    t = target.stat().st_mtime
    return any(s.stat().st_mtime > t for s in sources)


def build_tool(name: str) -> Path:
    """Compile bench/native/<name>.c into bench/.build/<name> if missing or stale."""
    src = BENCH / "native" / f"{name}.c"
    out = BUILD / name
    if _stale(out, [src]):
        BUILD.mkdir(parents=True, exist_ok=True)
        cmd = [CC, *CFLAGS, "-o", str(out), str(src)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"build of {name} failed: {' '.join(cmd)}\n{proc.stderr}")
    return out


# The packet-source adapters in native/src (the Makefile's CORE_SRCS filters the same files out).
ADAPTER_SOURCES = ("nfq.c", "natrx.c", "xsk.c", "xsk_fp.c")


def native_sources() -> list[Path]:
    """The packet core without its packet-source adapters (the Makefile's CORE_SRCS): nfq.c and
    xsk.c/xsk_fp.c need libnetfilter_queue and libbpf/libxdp, which the harness does not link, and
    natrx.c is served by nfq.c's thread (lb_nfq_host)."""
    return sorted(p for p in (REPO / "native" / "src").glob("*.c") if p.name not in ADAPTER_SOURCES)


def build_harness(out: Path | None = None, extra_cflags: Sequence[str] = ()) -> Path:
    """native/tests/harness.c + native/src/*.c minus the adapters (ADAPTER_SOURCES), gcc -O2 (as the harness header says)."""
    out = out or BUILD / "harness"
    srcs = [REPO / "native" / "tests" / "harness.c", *native_sources()]
    headers = list((REPO / "native" / "include").glob("*.h"))
    if _stale(out, srcs + headers):
        out.parent.mkdir(parents=True, exist_ok=True)
        cmd = [CC, "-O2", "-g", *extra_cflags, f"-I{REPO / 'native' / 'include'}", "-o", str(out),
               *map(str, srcs), "-lpthread"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"harness build failed: {' '.join(cmd)}\n{proc.stderr}")
    return out


# --------------------------------------------------------------------------- run identity


def git_commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True).stdout.strip()

    head = git("rev-parse", "--short=9", "HEAD") or "unknown"
    dirty = bool(git("status", "--porcelain", "--untracked-files=no", "--", "native", "lb"))
    return head + ("-dirty" if dirty else "")


def today() -> str:
    return _dt.date.today().isoformat()


def default_run_dir() -> Path:
    return RESULTS / "runs" / f"{today()}-{git_commit()}"


def machine_info() -> dict[str, Any]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kb = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    except OSError:
        pass

    def version(cmd: Sequence[str]) -> str:
        exe = shutil.which(cmd[0])
        if not exe:
            return "not installed"
        p = subprocess.run(list(cmd), capture_output=True, text=True)
        return ((p.stdout or p.stderr).strip().splitlines() or [""])[0]

    return {
        "hostname_hash": hex(hash(socket.gethostname()) & 0xFFFF),
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "mem_gib": round(mem_kb / 1024 / 1024, 1),
        "python": platform.python_version(),
        "gcc": version([CC, "--version"]),
        "trafgen": version(["trafgen", "-v"]),
        "wrk": version(["wrk", "-v"]),
        "valgrind": version(["valgrind", "--version"]),
        "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3],
    }


# --------------------------------------------------------------------------- results


def summarize(values: Sequence[float]) -> dict[str, Any]:
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return {"n": 0, "median": None, "min": None, "max": None, "values": []}
    return {"n": len(vals), "median": statistics.median(vals), "min": min(vals), "max": max(vals),
            "values": vals}


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=False, default=str))
    tmp.replace(path)


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def finish_section_run(data: Any, out: Path | None,
                       report: Callable[[Any, list[list[str]]], list[str]]) -> int:
    """The end of a scale section run alone (`python -m bench.<section>`): the JSON to `out`, then
    the section's report and its target rows (target | figure | verdict) on stdout."""
    if out:
        write_json(out, data)
    targets: list[list[str]] = []
    print("\n".join(report(data, targets)))
    for t in targets:
        print(" | ".join(t))
    return 0


# --------------------------------------------------------------------------- lbd


class LbdError(RuntimeError):
    pass


def ctl_request(sock_path: str, op: str, args: dict[str, Any] | None = None, timeout: float = 20.0) -> Any:
    """One request on lbd's control socket (lb.ctlclient); returns `result`, raises LbdError."""
    try:
        with ControlClient(sock_path, timeout) as client:
            return client.request(op, args)
    except ControlError as exc:
        raise LbdError(f"{op} {args}: {exc.errno_name}: {exc.message}") from exc


class Lbd:
    """One lbd in a director namespace, started and ended by us (by PID).

    Mirrors tests/netns/conftest.py's Lbd (how the project starts lbd), plus
    optional CPU pinning (`taskset -c`) and --conn-max.
    """

    def __init__(self, host: Any, engine: str, *, queue: int = 0, cpu: int | None = None,
                 conn_max: int | None = None, extra: Sequence[str] = (), nice: int = 0,
                 env: dict[str, str] | None = None) -> None:
        self.host = host
        self.env = env  # lbd's environment on top of ours (e.g. PATH with nft for --steering nftables)
        self.engine = engine
        self.dir = Path(tempfile.mkdtemp(prefix=f"{host.topo.prefix}-bench-lbd-"))
        self.socket = str(self.dir / "lbd.sock")
        self.log_path = self.dir / "lbd.log"
        self.queue = queue
        self.cpu = cpu
        self.conn_max = conn_max
        self.extra = list(extra)
        self.nice = nice
        self.proc: subprocess.Popen[Any] | None = None

    def start(self, timeout: float = 30.0) -> dict[str, Any]:
        if not LBD.exists():
            raise LbdError(f"{LBD} does not exist: run `make build` first")
        queue = [] if "--queue-balance" in self.extra else ["--queue-num", str(self.queue)]
        argv = [str(LBD), "--socket", self.socket, *queue, "--engine", self.engine]
        if self.conn_max and self.engine == "c":
            argv += ["--conn-max", str(self.conn_max)]
        argv += self.extra
        if self.cpu is not None and shutil.which("taskset"):
            argv = ["taskset", "-c", str(self.cpu), *argv]
        if self.nice:
            argv = ["nice", "-n", str(self.nice), *argv]
        with open(self.log_path, "w") as logf:
            self.proc = self.host.popen(argv, stdout=logf, stderr=subprocess.STDOUT,
                                        env=dict(os.environ, **self.env) if self.env else None)
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise LbdError(f"lbd --engine {self.engine} exited with {self.proc.returncode} before ready: "
                               f"{self.log_tail(800)}")
            if os.path.exists(self.socket):
                try:
                    res = ctl_request(self.socket, "ping", timeout=2.0)
                    if res.get("engine") != self.engine:
                        raise LbdError(f"asked for engine {self.engine}, ping says {res}")
                    return res
                except ControlClientError as exc:  # not listening yet, or no answer
                    last = str(exc)
            time.sleep(0.05)
        raise LbdError(f"lbd not ready after {timeout}s ({last}): {self.log_tail(800)}")

    def request(self, op: str, args: dict[str, Any] | None = None, timeout: float = 20.0) -> Any:
        return ctl_request(self.socket, op, args, timeout=timeout)

    def wait_resolved(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            services = self.request("list")["services"]
            states = [d["l2"]["state"] for s in services for d in s["dests"]]
            if states and all(st in ("resolved", "n/a") for st in states):
                return
            time.sleep(0.1)
        raise LbdError(f"destinations not resolved after {timeout}s: {self.request('list')}")

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        rc = self.host.topo.stop_process(self.proc, timeout=10.0)
        return rc

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def cleanup(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def flush_iptables(host: Any) -> None:
    """Empty every table and ip set of OUR namespace `host` (after an lbd that did not clean up)."""
    for table in ("raw", "filter", "mangle", "nat"):
        host.exec(["iptables", "-t", table, "-F"], check=False)
        host.exec(["iptables", "-t", table, "-X"], check=False)
    host.exec(["ipset", "destroy"], check=False)  # lbd's sets (no rule refers to them any more)


def add_cpu_args(ap: Any) -> None:
    """--nice, --gen-cpu, --dut-cpu: the CPU layout options the namespace parts share (cpu_layout)."""
    ap.add_argument("--nice", type=int, default=-10, help="niceness of the load and of lbd (default -10)")
    ap.add_argument("--gen-cpu", type=int, default=None, help="CPU of the load generator (default 0)")
    ap.add_argument("--dut-cpu", type=int, default=None, help="CPU of lbd (default 1)")


def cpu_layout(gen_cpu: int | None, dut_cpu: int | None) -> tuple[int | None, int | None]:
    n = os.cpu_count() or 1
    if n < 2:
        return None, None
    return (gen_cpu if gen_cpu is not None else 0), (dut_cpu if dut_cpu is not None else 1)
