"""Network namespace and process helpers of the testbed (lb.testbed.topology): run a command with
a bound, name and find this run's namespaces, end processes by PID, enter a namespace per thread."""

from __future__ import annotations

import contextlib
import ctypes
import os
import random
import re
import shlex
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence

# LB_TEST_NETNS_BASE: another base (2-4 letters) for a run that must keep its namespaces apart from
# other runs' (e.g. several helpers on one machine); lbB by default.
_BASE = os.environ.get("LB_TEST_NETNS_BASE", "")
PREFIX_BASE = _BASE if re.fullmatch(r"[a-zA-Z]{2,4}", _BASE) else "lbB"

CMD_TIMEOUT_S = 30.0  # bound for any single setup/teardown command
TERM_GRACE_S = 5.0  # SIGTERM -> SIGKILL grace for processes we started

_CLONE_NEWNET = 0x40000000


class TopologyError(RuntimeError):
    """Building or tearing down a topology failed; the message has the command and its output."""


def _run(argv: Sequence[str], *, check: bool = True, timeout: float = CMD_TIMEOUT_S,
         input: str | None = None) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=timeout, input=input
        )
    except subprocess.TimeoutExpired as exc:
        raise TopologyError(f"timed out after {timeout}s: {shlex.join(argv)}") from exc
    if check and proc.returncode != 0:
        raise TopologyError(
            f"command failed (exit {proc.returncode}): {shlex.join(argv)}\n"
            f"stdout: {proc.stdout.strip()}\nstderr: {proc.stderr.strip()}"
        )
    return proc


def new_prefix() -> str:
    """`lbB` + 5 hex digits mixed from the pid and the OS random source."""
    token = (random.SystemRandom().getrandbits(20) ^ (os.getpid() & 0xFFFFF)) & 0xFFFFF
    return f"{PREFIX_BASE}{token:05x}"


def _check_prefix(prefix: str) -> None:
    # Refuse the bare base (or anything shorter): it would match other runs' namespaces.
    if not re.fullmatch(PREFIX_BASE + r"[0-9a-z]{2,8}", prefix):
        raise ValueError(f"prefix {prefix!r} must be {PREFIX_BASE!r} + 2..8 of [0-9a-z]")


def list_netns() -> list[str]:
    out = _run(["ip", "netns", "list"]).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def netns_pids(netns: str) -> list[int]:
    proc = _run(["ip", "netns", "pids", netns], check=False)
    return [int(p) for p in proc.stdout.split() if p.isdigit()]


def _kill_pids(pids: Sequence[int], grace_s: float = TERM_GRACE_S) -> None:
    """SIGTERM the given PIDs, then SIGKILL whatever is left after `grace_s`."""
    alive = []
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
            alive.append(pid)
    deadline = time.monotonic() + grace_s
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if _pid_alive(p)]
        if alive:
            time.sleep(0.05)
    for pid in alive:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state != "Z"


def cleanup_stale(prefix: str) -> list[str]:
    """Remove namespaces named `<prefix>-*` left by a killed run with this SAME prefix.

    Processes still inside those namespaces (necessarily started there by that
    run) are ended by PID first, since a namespace with processes outlives
    `ip netns del`. Returns the namespaces removed.
    """
    _check_prefix(prefix)
    removed = []
    for ns in list_netns():
        if not ns.startswith(prefix + "-"):
            continue
        _kill_pids(netns_pids(ns))
        _run(["ip", "netns", "del", ns], check=False)
        removed.append(ns)
    return removed


_libc = ctypes.CDLL(None, use_errno=True)


@contextlib.contextmanager
def enter_netns(netns: str) -> Iterator[None]:
    """Switch the CALLING THREAD into netns `netns` for the duration of the block.

    Sockets created inside keep that namespace for their whole life, so a test
    can create a client socket in the client namespace and use it from anywhere.
    Only network namespace membership changes (setns(CLONE_NEWNET)), per thread.
    """
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        target = os.open(f"/run/netns/{netns}", os.O_RDONLY | os.O_CLOEXEC)
        try:
            if _libc.setns(target, _CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"setns({netns}): {os.strerror(err)}")
        finally:
            os.close(target)
        try:
            yield
        finally:
            if _libc.setns(own, _CLONE_NEWNET) != 0:  # pragma: no cover - would be fatal
                err = ctypes.get_errno()
                raise OSError(err, f"setns(back): {os.strerror(err)}")
    finally:
        os.close(own)


def _pdeathsig_wrapper() -> list[str]:
    import shutil

    setpriv = shutil.which("setpriv")  # util-linux (essential on Debian)
    return [setpriv, "--pdeathsig", "TERM", "--"] if setpriv else []


_PDEATHSIG_WRAPPER = _pdeathsig_wrapper()
