"""The preload library itself (native/preload/, lb/_ipvs_preload*.so), in a child process, against
lbd's real ControlServer over a Director with the C engine (no privileges: the IP_VS_SO_* calls
never reach the kernel, so a plain UDP socket carries them).

It answers IP_VS_SO_* and /proc/net/ip_vs* from lbd, passes every other call through, waits for a
socket that appears late (keepalived started before lbd), and gives a forked child its own
connection."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lb.ipvsabi.launcher import child_environment, library_path
from line_server import ServedControl as Served

CHILD_TIMEOUT_S = 60

# The child: a few calls through ctypes' libc (so they go through the preload library's symbols).
CHILD = textwrap.dedent("""
    import ctypes, errno, os, socket, sys
    libc = ctypes.CDLL(None, use_errno=True)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    def get(cmd, size):
        buf = ctypes.create_string_buffer(size)
        n = ctypes.c_uint(size)
        rc = libc.getsockopt(s.fileno(), socket.IPPROTO_IP, cmd, buf, ctypes.byref(n))
        return rc, ctypes.get_errno(), buf.raw[:n.value], n.value
    for line in sys.stdin:
        what = line.split()
        if what[0] == "info":
            rc, err, data, n = get(1153, 12)
            print("info", rc, err if rc else 0, data.hex(), n, flush=True)
        elif what[0] == "version":
            rc, err, data, n = get(1152, 64)
            print("version", rc, data.rstrip(b"\\0").decode(errors="replace"), n, flush=True)
        elif what[0] == "daemon":
            buf = ctypes.create_string_buffer(b"\\xee" * 104)
            n = ctypes.c_uint(104)
            rc = libc.getsockopt(s.fileno(), socket.IPPROTO_IP, 1159, buf, ctypes.byref(n))
            print("daemon", rc, buf.raw[:48] == bytes(48), buf.raw[48:104] == b"\\xee" * 56, n.value, flush=True)
        elif what[0] == "flush":
            rc = libc.setsockopt(s.fileno(), socket.IPPROTO_IP, 1157, None, 0)
            print("flush", rc, flush=True)
        elif what[0] == "badlen":
            rc = libc.setsockopt(s.fileno(), socket.IPPROTO_IP, 1154, ctypes.create_string_buffer(10), 10)
            print("badlen", rc, ctypes.get_errno(), flush=True)
        elif what[0] == "rcvbuf":
            print("rcvbuf", s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) > 0, flush=True)
        elif what[0] == "proc":
            with open(what[1]) as f:
                print("proc", f.read().splitlines()[0], flush=True)
        elif what[0] == "other":
            print("other", os.path.exists("/proc/net/dev") and len(open("/proc/net/dev").read()) > 0, flush=True)
        elif what[0] == "fork":
            pid = os.fork()
            if pid == 0:
                rc, err, data, n = get(1153, 12)
                os._exit(0 if rc == 0 else 1)
            _, status = os.waitpid(pid, 0)
            rc, err, data, n = get(1153, 12)
            print("fork", os.waitstatus_to_exitcode(status), rc, flush=True)
""")


@pytest.fixture
def library() -> Path:
    try:
        return library_path()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    s = Served(str(tmp_path / "lbd.sock")).start()
    try:
        yield s
    finally:
        s.stop()


def _child(library: Path, socket_path: str, wait_s: int = 5) -> subprocess.Popen[str]:
    env = child_environment(dict(os.environ), library, socket_path, wait_s)
    return subprocess.Popen([sys.executable, "-c", CHILD], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _ask(child: subprocess.Popen[str], *commands: str) -> list[str]:
    out, err = child.communicate("".join(c + "\n" for c in commands), timeout=CHILD_TIMEOUT_S)
    assert child.returncode == 0, err
    return out.splitlines()


def _info(served: Served, services: int) -> str:
    """The `info` line for ip_vs_getinfo: version 1.2.1, lbd's table size, `services`."""
    size = int(served.director.handle("list", {})["conn_tab_size"])
    raw = (0x010201).to_bytes(4, "little") + size.to_bytes(4, "little") + services.to_bytes(4, "little")
    return f"info 0 0 {raw.hex()} 12"


def test_sockopts_and_proc_files_come_from_lbd(library: Path, served: Served) -> None:
    size = int(served.director.handle("list", {})["conn_tab_size"])
    lines = _ask(_child(library, served.path), "info", "version", "daemon", "badlen", "rcvbuf",
                 "proc /proc/net/ip_vs", "proc /proc/net/ip_vs_conn", "other", "flush", "info")
    assert lines[0] == _info(served, 1)
    version = f"IP Virtual Server version 1.2.1 (size={size})"
    assert lines[1] == f"version 0 {version} {len(version) + 1}"  # GET_VERSION reports its length
    assert lines[2] == "daemon 0 True True 104"  # 48 bytes written, the rest of the 104 untouched
    assert lines[3] == "badlen -1 22"  # the kernel's length check: EINVAL
    assert lines[4] == "rcvbuf True"  # other sockopts reach the kernel
    assert lines[5] == f"proc {version}"
    assert lines[6] == "proc Pro FromIP   FPrt ToIP     TPrt DestIP   DPrt State       Expires PEName PEData"
    assert lines[7] == "other True"  # other files are the kernel's
    assert lines[8] == "flush 0"
    assert lines[9] == _info(served, 0)
    assert served.director.handle("list", {})["services"] == []


def test_forked_child_has_its_own_connection(library: Path, served: Served) -> None:
    assert _ask(_child(library, served.path), "info", "fork")[1] == "fork 0 0"


def test_waits_for_a_socket_that_appears_late(library: Path, tmp_path: Path) -> None:
    path = str(tmp_path / "late.sock")
    child = _child(library, path, wait_s=60)
    assert child.stdin is not None
    child.stdin.write("info\n")
    child.stdin.flush()
    time.sleep(0.5)  # the child is waiting for the socket meanwhile (not a threshold: any delay works)
    late = Served(path).start()
    try:
        lines = _ask(child)
    finally:
        late.stop()
    assert lines == [_info(late, 1)]


def test_without_lbd_calls_fail_as_without_ip_vs(library: Path, tmp_path: Path) -> None:
    child = _child(library, str(tmp_path / "none.sock"), wait_s=0)
    out, err = child.communicate("info\ninfo\nproc /proc/net/ip_vs_stats\n", timeout=CHILD_TIMEOUT_S)
    lines = out.splitlines()
    assert len(lines) == 2 and all(line.startswith("info -1 92 ") for line in lines), lines  # ENOPROTOOPT
    assert err.count(f"lbd: cannot reach lbd at {tmp_path / 'none.sock'}") == 1  # said once
    assert "FileNotFoundError" in err  # the /proc file does not exist, as without ip_vs


FAKE_MODPROBE = '#!/bin/sh\necho "$@" >> "{marker}"\n'


@pytest.mark.parametrize("how", ["execv", "execve"])
def test_modprobe_ip_vs_is_refused_other_modules_pass(library: Path, tmp_path: Path, how: str) -> None:
    # keepalived and ipvsadm execv "modprobe ip_vs" when their first IPVS call fails; under the
    # library their IPVS is lbd, so the kernel's module is not loaded. A fake modprobe records runs.
    marker = tmp_path / "ran"
    fake = tmp_path / "modprobe"
    fake.write_text(FAKE_MODPROBE.format(marker=marker))
    fake.chmod(0o755)
    env = child_environment(dict(os.environ), library, str(tmp_path / "no-lbd.sock"), 0)
    # execv: Python's os.execv calls libc's execv; execve: sh execs through libc's execve.
    def run(*modules: str) -> subprocess.CompletedProcess[str]:
        argv = ([sys.executable, "-c", "import os, sys; os.execv(sys.argv[1], sys.argv[1:])", str(fake), "-s", "--",
                 *modules] if how == "execv" else ["sh", "-c", 'exec "$0" -s -- "$@"', str(fake), *modules])
        return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S, check=False)

    refused = run("ip_vs")
    assert refused.returncode != 0, refused
    assert f"lbd: not loading the kernel's ip_vs module ({fake})" in refused.stderr
    assert not marker.exists()
    passed = run("xt_set")
    assert passed.returncode == 0, passed
    assert marker.read_text() == "-s -- xt_set\n"
