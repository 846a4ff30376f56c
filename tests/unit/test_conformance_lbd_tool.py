"""The conformance harness drives lbd with Debian's ipvsadm (runner --lbd-tool ipvsadm) in the
environment lbd-exec gives a tool, without starting lbd-exec's Python script per command (issue 17:
that start-up made the lbd side 8-12 times slower than the kernel side in the guest)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from conformance import systems
from lb.ipvsabi.launcher import child_environment, library_path

SOCKET = "/tmp/lbB0-test/lbd.sock"


class RecordingDirector:
    """A director host that records the commands it is asked to run and runs none."""

    def __init__(self) -> None:
        self.commands: list[list[str]] = []

    def exec(self, cmd: list[str], check: bool = True, timeout: float = 0.0,
             input: str | None = None) -> subprocess.CompletedProcess[str]:
        self.commands.append(list(cmd))
        return subprocess.CompletedProcess(cmd, 0, "listing\n", "")


class StubLbd:
    def __init__(self, host: Any, engine: str) -> None:
        self.socket = SOCKET


def _preload_library() -> Path:
    try:
        return library_path()
    except FileNotFoundError as exc:
        pytest.skip(f"the preload library is not built: {exc}")


def test_the_command_is_ipvsadm_under_env_with_lbd_execs_environment() -> None:
    library = _preload_library()
    base = {"PATH": "/usr/sbin:/usr/bin", "LD_PRELOAD": "/opt/other.so"}
    argv = systems.ipvsadm_through_preload(SOCKET, ["-Ln", "--stats"], env=base)
    wanted = child_environment(base, library, SOCKET, None)
    assert argv == ["env", f"LD_PRELOAD={wanted['LD_PRELOAD']}", f"LBD_SOCKET={SOCKET}", "ipvsadm", "-Ln", "--stats"]
    assert wanted["LD_PRELOAD"].split()[0] == str(library)  # lbd's library first, the other one kept


def test_lbd_system_runs_no_python_launcher_per_command(monkeypatch: pytest.MonkeyPatch) -> None:
    _preload_library()
    monkeypatch.setattr(systems, "Lbd", StubLbd)
    director = RecordingDirector()
    lbd = systems.LbdSystem(director, tool="ipvsadm")
    kernel = systems.KernelIpvs(director)
    for system in (lbd, kernel):
        result = system.admin(["-R"], stdin="-A -t 10.0.0.1:80 -s rr\n")
        assert (result.rc, result.stdout) == (0, "listing\n")
    ours, theirs = director.commands
    # the same ipvsadm with the same arguments; before it only env(1) and its assignments
    assert ours[-2:] == theirs == ["ipvsadm", "-R"]
    prefix = ours[:-2]
    assert prefix[0] == "env"
    assert [word.split("=", 1)[0] for word in prefix[1:]] == ["LD_PRELOAD", "LBD_SOCKET"]
    assert prefix[2] == f"LBD_SOCKET={SOCKET}"


def test_an_unknown_lbd_tool_is_refused() -> None:
    with pytest.raises(ValueError, match="lbadm, ipvsadm"):
        systems.LbdSystem(RecordingDirector(), tool="keepalived")
