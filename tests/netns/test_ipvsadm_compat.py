"""Debian's unmodified ipvsadm drives lbd through the preload library (`lbd-exec`, issue 17).

A command table: every row runs once with `lbd-exec ipvsadm ARGS` and once with `lbadm ARGS`, each
on the same starting table, and compares exit status, stdout, stderr and the table left behind.
Rows where the sockopt ABI cannot say what lbadm says (it has no IPv6, no --pe, no tunnel type, no
room for lbd's own refusal texts) give ipvsadm's expected output explicitly, with the reason.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from conftest import VENV_BIN, running_lbd

from lb.testbed.topology import Topology

if TYPE_CHECKING:
    from collections.abc import Iterator

    from conftest import HttpHelper, Lbd

pytestmark = pytest.mark.netns

IPVSADM = shutil.which("ipvsadm") or "/usr/sbin/ipvsadm"
LBD_EXEC = VENV_BIN / "lbd-exec"
TOOL_TIMEOUT_S = 30

# The starting table of every row (lbadm -R), with something of each kind the ABI carries.
SETUP = """\
-A -t 10.0.0.1:80 -s rr
-a -t 10.0.0.1:80 -r 10.0.1.2:80 -g -w 3
-a -t 10.0.0.1:80 -r 10.0.1.3:80 -i -w 2 -x 10 -y 5
-A -u 10.0.0.1:53 -s wlc -p 60 -M 255.255.255.0
-a -u 10.0.0.1:53 -r 10.0.1.4:53 -g -w 1
-A -f 7 -s sh -b sh-port
-a -f 7 -r 10.0.1.5:0 -g -w 5
-A -u 10.0.0.2:53 -s rr -o
"""

# Rows: ipvsadm arguments (lbadm takes the same). Both tools must agree on everything.
SAME = [
    "-L -n", "-Ln --stats", "-Ln --rate", "-Ln --stats --exact", "-Ln --thresholds", "-Ln --persistent-conn",
    "-L -n -t 10.0.0.1:80", "-L -n -u 10.0.0.1:53", "-L -n -f 7", "-L -t 10.0.0.9:80", "-L --timeout", "-L --daemon",
    "-Lnc", "-A -t 10.0.0.3:80 -s wrr", "-A -t 10.0.0.1:80", "-A -t 10.0.0.3:80 -s sh -b sh-fallback,sh-port",
    "-A -u 10.0.0.3:53 -s rr -o", "-A -t 10.0.0.3:443 -s lc -p 300", "-E -t 10.0.0.1:80 -s wlc -p 30 -M 255.255.0.0",
    "-E -t 10.0.0.9:80 -s rr", "-D -t 10.0.0.1:80", "-D -t 10.0.0.9:80", "-D -f 7", "-C",
    "-a -t 10.0.0.1:80 -r 10.0.1.6:8080 -g -w 4", "-a -t 10.0.0.1:80 -r 10.0.1.2:80 -g",
    "-a -t 10.0.0.9:80 -r 10.0.1.2:80 -g", "-e -t 10.0.0.1:80 -r 10.0.1.2:80 -g -w 7 -x 100 -y 50",
    "-e -t 10.0.0.1:80 -r 10.9.9.9:80 -g", "-d -t 10.0.0.1:80 -r 10.0.1.2:80", "-d -t 10.0.0.1:80 -r 10.9.9.9:80",
    "-d -f 7 -r 10.0.1.5", "-Z", "-Z -t 10.0.0.1:80", "-Z -t 10.0.0.9:80", "--set 100 20 30", "--set 0 0 7",
    "--stop-daemon master", "--start-daemon master",  # (no eth0 in the director's namespace: ENODEV)
]


@dataclass(frozen=True)
class Differs:
    """A row where ipvsadm cannot print what lbadm prints: ipvsadm's expected output, and why."""

    args: str
    rc: int
    stderr: str
    why: str


DIFFERS = [
    Differs("-A -t [2001:db8::1]:80 -s rr", 255, "Operation not supported with specified address family\n",
            "ipvsadm's sockopt path refuses IPv6 itself, before lbd is asked"),
    Differs("-A -t 10.0.0.3:80 -s rr --pe sip", 255, "Operation not supported with specified address family\n",
            "ipvsadm's sockopt path refuses persistence engines itself"),
]


@dataclass(frozen=True)
class Outcome:
    rc: int
    stdout: str
    stderr: str
    table: str  # lbadm -S -n and --timeout afterwards


@pytest.fixture(scope="module")
def compat_lbd(topo: Topology) -> Iterator[Lbd]:
    if not Path(IPVSADM).exists():
        pytest.skip(f"{IPVSADM} missing (Debian package ipvsadm; `make test` installs it)")
    if not LBD_EXEC.exists():
        pytest.skip(f"{LBD_EXEC} missing: run `make build`")
    with running_lbd(topo, "c") as d:
        yield d


def _reset(lbd: Lbd) -> None:
    lbd.lbadm("-C")
    lbd.lbadm("--set", "900", "120", "300")
    lbd.director.exec([str(VENV_BIN / "lbadm"), "--socket", lbd.socket, "-R"], input=SETUP)
    lbd.lbadm("-Z")


def _ipvsadm(lbd: Lbd, args: list[str], stdin: str | None = None):
    return lbd.director.exec([str(LBD_EXEC), "--socket", lbd.socket, IPVSADM, *args], check=False,
                             timeout=TOOL_TIMEOUT_S, input=stdin)


def _lbadm(lbd: Lbd, args: list[str], stdin: str | None = None):
    return lbd.director.exec([str(VENV_BIN / "lbadm"), "--socket", lbd.socket, *args], check=False,
                             timeout=TOOL_TIMEOUT_S, input=stdin)


def _table(lbd: Lbd) -> str:
    return lbd.lbadm("-S", "-n").stdout + lbd.lbadm("-L", "--timeout").stdout


def _run(lbd: Lbd, tool: str, args: str) -> Outcome:
    _reset(lbd)
    proc = (_ipvsadm if tool == "ipvsadm" else _lbadm)(lbd, args.split())
    return Outcome(proc.returncode, proc.stdout, proc.stderr, _table(lbd))


def _without_tun_type(text: str) -> str:
    # The sockopt ABI has no tunnel type: ipvsadm over it prints IPIP tunnels without the
    # --tun-type ipip that lbadm (like ipvsadm over netlink) appends.
    return text.replace(" --tun-type ipip", "")


@pytest.mark.parametrize("args", SAME)
def test_ipvsadm_matches_lbadm(compat_lbd: Lbd, args: str) -> None:
    theirs = _run(compat_lbd, "ipvsadm", args)
    ours = _run(compat_lbd, "lbadm", args)
    assert theirs == ours


def test_save_differs_only_by_the_tunnel_type(compat_lbd: Lbd) -> None:
    theirs = _run(compat_lbd, "ipvsadm", "-S -n")
    ours = _run(compat_lbd, "lbadm", "-S -n")
    assert "--tun-type ipip" in ours.stdout
    assert (theirs.rc, theirs.stdout, theirs.stderr) == (ours.rc, _without_tun_type(ours.stdout), ours.stderr)


@pytest.mark.parametrize("row", DIFFERS, ids=lambda row: row.args)
def test_ipvsadm_where_the_abi_differs(compat_lbd: Lbd, row: Differs) -> None:
    _reset(compat_lbd)
    before = _table(compat_lbd)
    proc = _ipvsadm(compat_lbd, row.args.split())
    assert (proc.returncode, proc.stdout, proc.stderr) == (row.rc, "", row.stderr), row.why
    assert _table(compat_lbd) == before, "a refused command changed the table"
    refused = _lbadm(compat_lbd, row.args.split())
    assert refused.returncode == row.rc and refused.stderr, "lbadm refuses it too, in its own words"


def test_sync_daemon_start_list_stop(compat_lbd: Lbd) -> None:
    """--start-daemon / -L --daemon / --stop-daemon through the sockopt ABI (issue 18). The ABI
    carries the interface and syncid only: ipvsadm lists those, lbadm (like ipvsadm over netlink)
    the rest of the daemon's settings too."""
    ifname = compat_lbd.director.ifname
    started = _ipvsadm(compat_lbd, ["--start-daemon", "backup", "--mcast-interface", ifname, "--syncid", "5"])
    assert (started.returncode, started.stderr) == (0, "")
    try:
        assert _ipvsadm(compat_lbd, ["-L", "--daemon"]).stdout == f"backup sync daemon (mcast={ifname}, syncid=5)\n"
        assert _lbadm(compat_lbd, ["-L", "--daemon"]).stdout == (
            f"backup sync daemon (mcast={ifname}, syncid=5, maxlen=1472, group=224.0.0.81, port=8848, ttl=1, ext-port=8849)\n")
        again = _ipvsadm(compat_lbd, ["--start-daemon", "backup", "--mcast-interface", ifname])
        assert (again.returncode, again.stderr) == (255, "Daemon has already run\n")
    finally:
        stopped = _ipvsadm(compat_lbd, ["--stop-daemon", "backup"])
    assert (stopped.returncode, stopped.stderr) == (0, "")
    assert _ipvsadm(compat_lbd, ["-L", "--daemon"]).stdout == ""


def test_unknown_scheduler_says_which_lbd_has(compat_lbd: Lbd) -> None:
    _reset(compat_lbd)
    proc = _ipvsadm(compat_lbd, "-A -t 10.0.0.3:80 -s nosuch".split())
    ours = _lbadm(compat_lbd, "-A -t 10.0.0.3:80 -s nosuch".split())
    # ipvsadm prints the kernel's text for ENOENT; the library adds lbd's, which lbadm prints alone
    assert proc.returncode == ours.returncode == 255
    assert proc.stderr == f"lbd: {ours.stderr.strip()}\nScheduler or persistence engine not found\n"


def test_save_restore_round_trip(compat_lbd: Lbd) -> None:
    _reset(compat_lbd)
    saved = _ipvsadm(compat_lbd, ["-S", "-n"])
    assert saved.returncode == 0 and saved.stdout.count("\n") == SETUP.count("\n")
    before = _table(compat_lbd)
    assert _ipvsadm(compat_lbd, ["-C"]).returncode == 0
    assert compat_lbd.lbadm("-S", "-n").stdout == ""
    restored = _ipvsadm(compat_lbd, ["-R"], stdin=saved.stdout)
    assert (restored.returncode, restored.stderr) == (0, "")
    assert _without_tun_type(_table(compat_lbd)) == _without_tun_type(before)
    # and across tools: ipvsadm's save restores into lbadm, lbadm's into ipvsadm
    compat_lbd.lbadm("-C")
    assert _lbadm(compat_lbd, ["-R"], stdin=saved.stdout).returncode == 0
    assert _without_tun_type(_table(compat_lbd)) == _without_tun_type(before)


def test_proc_files_answer_from_lbd(compat_lbd: Lbd) -> None:
    _reset(compat_lbd)
    cat = compat_lbd.director.exec([str(LBD_EXEC), "--socket", compat_lbd.socket, "cat", "/proc/net/ip_vs",
                                    "/proc/net/ip_vs_stats", "/proc/net/ip_vs_conn"], check=False)
    assert cat.returncode == 0, cat.stderr
    lines = cat.stdout.splitlines()
    assert "TCP  0A000001:0050 rr  " in lines and "FWM  00000007 sh " in lines
    assert "  -> 0A000102:0050      Route   3      0          0         " in lines
    assert lines[-1].startswith("Pro FromIP   FPrt ToIP")
    # without the library the files do not exist (this kernel has no ip_vs)
    if not Path("/proc/net/ip_vs").exists():
        plain = compat_lbd.director.exec(["cat", "/proc/net/ip_vs"], check=False)
        assert plain.returncode != 0


_EXPIRE = re.compile(r"^(\S+\s+)\d\d:\d\d", re.MULTILINE)


def test_connection_listing_with_live_connections(compat_lbd: Lbd, topo: Topology, http: HttpHelper) -> None:
    compat_lbd.lbadm("-C")
    vip = f"{topo.vip}:80"
    compat_lbd.lbadm("-A", "-t", vip, "-s", "rr")
    for rs in topo.reals:
        compat_lbd.lbadm("-a", "-t", vip, "-r", f"{rs.addr}:80", "-g")
    compat_lbd.wait_resolved()
    hold = http.hold(4).start()
    try:
        theirs = _ipvsadm(compat_lbd, ["-Lnc"])
        ours = _lbadm(compat_lbd, ["-Lnc"])
    finally:
        hold.join(10.0)
        hold.close()
    assert theirs.returncode == ours.returncode == 0
    assert "ESTABLISHED" in ours.stdout
    # the two reads are moments apart: the expiry column may have ticked between them
    assert _EXPIRE.sub(r"\1--:--", theirs.stdout) == _EXPIRE.sub(r"\1--:--", ours.stdout)
    compat_lbd.lbadm("-C")


def test_without_lbd_the_tool_says_so(topo: Topology, tmp_path: Path) -> None:
    if not Path(IPVSADM).exists() or not LBD_EXEC.exists():
        pytest.skip("ipvsadm or lbd-exec missing")
    proc = topo.director.exec([str(LBD_EXEC), "--wait", "0", "--socket", str(tmp_path / "none.sock"), IPVSADM,
                               "-Ln"], check=False, timeout=TOOL_TIMEOUT_S)
    assert proc.returncode != 0
    assert f"lbd: cannot reach lbd at {tmp_path / 'none.sock'}" in proc.stderr
