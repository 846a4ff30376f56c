"""Honest refusals (issue 12 item 8): what lbd does not implement is marked in `lbadm -h` (from one
table, lb.unimplemented), refused by lbadm before anything is sent (exit 255, saying what lbd does
instead) and by lbd for other clients; `lbadm -L --daemon` prints what ipvsadm prints with no sync
daemon (nothing, exit 0).
"""

from __future__ import annotations

import io
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lb import unimplemented
from lb.config import ConfigErrors, parse_config
from lb.ctlclient import ControlClient
from lb.director import Director
from lb.engine import EngineError
from lb.lbadm import main, parse_args, usage
from lb.model import SCHEDULERS
from lb.namedb import NumericNames
from lb.pyengine import PyEngine
from line_server import director_socket
from line_server import lbadm as run_lbadm

VIP = "10.0.0.1"


def lbadm(argv: list[str], stdin: str = "", socket: str = "/nonexistent/lbd.sock") -> tuple[int, str, str]:
    return run_lbadm(socket, *argv, stdin=stdin, connect=_no_lbd)


def _no_lbd(path: str) -> ControlClient:
    raise AssertionError("lbadm must refuse this without asking lbd")


@pytest.fixture()
def director_path() -> Iterator[str]:
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "lbd.sock")
        with director_socket(path, Director(PyEngine(conn_max=64), rules=None, resolver=None)):
            yield path


def lbadm_live(path: str, argv: list[str]) -> tuple[int, str, str]:
    old = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = io.StringIO(), io.StringIO()
    try:
        rc = main(["--socket", path, *argv], env={}, names=NumericNames())
        return rc, sys.stdout.getvalue(), sys.stderr.getvalue()
    finally:
        sys.stdout, sys.stderr = old


# ---------------------------------------------------------------------------- -h


def test_help_marks_every_unimplemented_option_from_the_table() -> None:
    text = usage.usage_text()
    for missing in unimplemented.NOT_IMPLEMENTED:
        lines = [line for line in text.splitlines() if line.startswith(f"  --{missing.option} ")
                 or line.startswith(f"  --{missing.option}|")]
        assert lines, f"no help line for --{missing.option}"
        assert all(line.endswith(f"[{missing.mark}]") for line in lines), lines
    # The issue's list: -m, -6, --pe, --tun-type gue|gre, SCTP (-o, -f, the scheduler flags and the
    # sync daemon, issue 18, are implemented).
    assert {m.option for m in unimplemented.NOT_IMPLEMENTED} >= {
        "ipv6", "pe", "tun-type", "sctp-service"}
    assert "start-daemon" not in {m.option for m in unimplemented.NOT_IMPLEMENTED}
    assert "fwmark-service" not in {m.option for m in unimplemented.NOT_IMPLEMENTED}
    assert "masquerading" not in {m.option for m in unimplemented.NOT_IMPLEMENTED}
    assert "[not implemented by lbd] marks what lbd does not do" in text


def test_removing_an_entry_removes_its_mark(monkeypatch: pytest.MonkeyPatch) -> None:
    kept = tuple(m for m in unimplemented.NOT_IMPLEMENTED if m.option != "pe")
    monkeypatch.setattr(unimplemented, "NOT_IMPLEMENTED", kept)
    pe = next(line for line in usage.usage_text().splitlines() if line.startswith("  --pe"))
    assert "[" not in pe
    assert parse_args(["-A", "-t", f"{VIP}:80", "--pe", "sip"], env={}, names=NumericNames()).refusal is None
    assert parse_args(["-a", "-t", f"{VIP}:80", "-r", "10.0.0.2", "-i"], env={}, names=NumericNames()).refusal is None


# ---------------------------------------------------------------------------- lbadm refuses


@pytest.mark.parametrize(("argv", "message"), [
    (["-A", "-f", "7", "-6"], "IPv6 is not supported by lbd"),
    (["-A", "--sctp-service", f"{VIP}:80"], "lbd does not implement SCTP services (--sctp-service)"),
    (["-A", "-t", "[2001:db8::1]:80"], "IPv6 is not supported by lbd"),
    (["-a", "-t", f"{VIP}:80", "-r", "[2001:db8::2]:80", "-i"], "IPv6 is not supported by lbd"),
    (["-A", "-t", f"{VIP}:80", "--pe", "sip"], "lbd does not implement persistence engines (--pe)"),
    (["-a", "-t", f"{VIP}:80", "-r", "10.0.0.2", "-i", "--tun-type", "gue", "--tun-port", "6080"],
     "lbd does not implement tunnel types gue and gre (--tun-type); its tunnels are IPIP"),
    (["-A", "-t", f"{VIP}:80", "-s", "nosuch"],
     f"scheduler 'nosuch' is not implemented by lbd (lbd has: {', '.join(SCHEDULERS)})"),
])
def test_lbadm_refuses_what_lbd_lacks_without_asking_it(argv: list[str], message: str) -> None:
    rc, out, err = lbadm(argv)
    assert (rc, out) == (255, "")
    assert err.startswith(message), err


def test_ipvsadm_syntax_errors_still_win() -> None:
    """Only valid command lines reach the refusal: ipvsadm's own checks and exit 2 come first."""
    assert lbadm(["-A", "-t", f"{VIP}:80", "-6"])[::2] == (2, "-6 used before -f\n\n")
    assert lbadm(["-A", "-t", f"{VIP}:80", "-o"])[::2] == (2, "One-Packet Scheduling is only for UDP virtual services\n")


def test_restore_refuses_the_whole_stream_with_the_line() -> None:
    rules = "-A -t 10.0.0.1:80 -s rr\n-A -t 10.0.0.1:81 -s rr --pe sip\n"
    rc, _, err = lbadm(["-R"], stdin=rules)
    assert rc == 255
    assert err.splitlines() == [unimplemented.entry("pe").message,
                                "lbadm: restore: line 2 is invalid; nothing was changed"]


def test_ipvsadm_save_config_refuses_with_file_and_line() -> None:
    with pytest.raises(ConfigErrors) as info:
        parse_config("-A -t 10.0.0.1:80 -s rr\n-A -t 10.0.0.1:81 -s rr --pe sip\n", "rules.conf")
    assert [str(issue) for issue in info.value.issues] == [f"rules.conf:2: {unimplemented.entry('pe').message}"]


# ---------------------------------------------------------------------------- lbd refuses, and the sync daemon


def test_lbd_refuses_other_clients_with_the_same_messages() -> None:
    d = Director(PyEngine(conn_max=16), rules=None, resolver=None)
    cases: list[tuple[str, dict[str, Any], str]] = [
        ("add_service", {"fwmark": 7, "ipv6": True, "sched": "rr"}, "ipv6"),
        ("add_service", {"proto": "sctp", "addr": VIP, "port": 80}, "sctp-service"),
        ("add_service", {"proto": "tcp", "addr": "2001:db8::1", "port": 80}, "ipv6"),
        ("add_service", {"proto": "tcp", "addr": VIP, "port": 80, "pe": "sip"}, "pe"),
    ]
    for op, args, option in cases:
        with pytest.raises(EngineError) as info:
            d.handle(op, args)
        assert info.value.errno_name == "EOPNOTSUPP", op
        assert unimplemented.entry(option).message in str(info.value)
    with pytest.raises(EngineError) as unknown:
        d.handle("add_service", {"proto": "tcp", "addr": VIP, "port": 80, "sched": "nosuch"})
    assert unknown.value.errno_name == "ENOENT" and "lbd has: " + ", ".join(SCHEDULERS) in str(unknown.value)


def test_list_daemon_without_a_sync_daemon_prints_nothing(director_path: str) -> None:
    assert lbadm_live(director_path, ["-L", "--daemon"]) == (0, "", "")
    assert lbadm_live(director_path, ["--stop-daemon", "master"]) == (255, "", "No daemon is running\n")
