"""lbd restart recovery (issue 8), without packets on the wire: state file, restore, rules, flags.

- The state file (lb/statefile.py write_state/read_state): atomic, versioned, configuration as JSON
  plus the C engine's raw connection dump; restore re-applies the configuration (same services,
  destinations in the same list order, local addresses, SYN-proxy settings, timeouts) and then
  the connections, with the downtime taken off their timers.
- --down-policy closed: RuleManager(bypass=False) writes NFQUEUE rules without --queue-bypass;
  lbd adopts rules a previous lbd left instead of flushing them.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from scapy.all import IP, TCP, raw

from lb import daemon, statefile
from lb.director import Director
from lb.engine import EngineError, FwdState, Verdict
from lb.ipsets import Steering
from lb.iptables import RuleManager
from lb.iptlayout import queue_target
from lb.model import ServiceKey, SynproxyConf
from refusing_engine import REFUSED_RIP, refusing

VIP = "10.0.0.100"
DR = {"proto": "tcp", "addr": VIP, "port": 80}
FNAT = {"proto": "tcp", "addr": VIP, "port": 82}
FWD = FwdState(ifindex=5, dst_mac=b"\x02\0\0\0\0\1", src_mac=b"\x02" * 6)


def c_engine() -> Any:
    from lb.fastpath import CEngine

    return CEngine(conn_max=1000, hash_buckets=256)


def dest(addr: str, port: int = 80, fwd: str = "route", weight: int = 1) -> dict[str, Any]:
    return {"addr": addr, "port": port, "fwd": fwd, "weight": weight, "u_threshold": 0, "l_threshold": 0}


def configured() -> Director:
    d = Director(c_engine(), rules=None, resolver=None)
    d.handle("add_service", {**DR, "sched": "rr", "persistent": 60})
    for i, w in ((1, 1), (2, 3), (3, 2)):
        d.handle("add_dest", {"service": DR, "dest": dest(f"10.0.0.1{i}", weight=w)})
    d.handle("add_service", {**FNAT, "sched": "wlc", "toa": True, "synproxy": True})
    d.handle("add_laddr", {"service": FNAT, "addr": "10.1.0.1"})
    d.handle("add_laddr", {"service": FNAT, "addr": "10.1.0.2"})
    d.handle("add_dest", {"service": FNAT, "dest": dest("10.1.0.11", 8080, "fullnat")})
    d.handle("set_synproxy", {"conf": {"init_rto_ms": 150}})
    d.handle("set_synproxy", {"service": FNAT, "conf": {"max_retries": 5}})
    d.handle("set_timeout", {"tcp": 600, "tcpfin": 0, "udp": 30})
    for i in (1, 2, 3):
        d.engine.set_fwd(ServiceKey(6, VIP, 80), f"10.0.0.1{i}", 80, FWD)
    return d


def listing(d: Director) -> Any:
    out = d.handle("list", {})
    for s in out["services"]:
        s.pop("stats")
        for x in s["dests"]:
            for k in ("stats", "l2", "active", "inactive", "persist"):
                x.pop(k)
        for la in s["laddrs"]:
            la.pop("conns")
    return out, d.handle("get_timeout", {})


def now_ms() -> int:
    return int(time.monotonic() * 1000)


def syn_ack(d: Director, src: str, sport: int, t: int) -> None:
    d.engine.process(raw(IP(src=src, dst=VIP) / TCP(sport=sport, dport=80, flags="S")), t)
    d.engine.process(raw(IP(src=src, dst=VIP) / TCP(sport=sport, dport=80, flags="A")), t + 1)


# ---------------------------------------------------------------------------- state file


def test_state_file_round_trip_is_atomic(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "lbd-q3.state"
    size = statefile.write_state(path, {"format": 1, "services": []}, b"\x01" * 3 * statefile.conn_record_size(), "c")
    assert path.stat().st_size == size and oct(path.stat().st_mode & 0o777) == "0o600"
    assert [p.name for p in path.parent.iterdir()] == ["lbd-q3.state"]  # no temporary file left
    header, blob = statefile.read_state(path)
    assert header["services"] == [] and header["connections"] == 3 and header["engine"] == "c"
    assert abs(header["saved_at"] - time.time()) < 5 and len(blob) == 3 * statefile.conn_record_size()
    path.write_bytes(b"garbage\n")
    with pytest.raises(ValueError):
        statefile.read_state(path)
    assert statefile.state_path("/run/lbd", 7) == Path("/run/lbd/lbd-q7.state")


def test_snapshot_restores_the_whole_configuration(tmp_path: Path) -> None:
    old = configured()
    path = tmp_path / "lbd-q0.state"
    statefile.save_state(old, path)
    new = Director(c_engine(), rules=None, resolver=None)
    result = statefile.restore_state(new, path)
    assert result["commands"] > 0
    assert listing(new) == listing(old)  # same order of destinations, laddrs, SYN-proxy, timeouts
    assert new.synproxy_default == SynproxyConf(init_rto_ms=150)
    assert new.synproxy_confs == {ServiceKey(6, VIP, 82): SynproxyConf(max_retries=5)}
    # Restoring again changes nothing (minimal plan), even over a running state.
    assert new.restore_config(statefile.read_state(path)[0]) == 0


def test_snapshot_restores_connections_with_the_downtime_taken_off(tmp_path: Path) -> None:
    old = configured()
    t = now_ms()
    for sport in range(1000, 1010):
        syn_ack(old, f"10.9.0.{sport % 5}", sport, t)
    path = tmp_path / "lbd-q0.state"
    assert statefile.save_state(old, path).endswith(", 15 connections")  # 10 flows, 5 persistence templates
    header, blob = statefile.read_state(path)
    n = header["connections"]
    assert n == 15
    new = Director(c_engine(), rules=None, resolver=None)
    result = statefile.restore_state(new, path)
    assert result["connections"] == {"restored": n}
    counts = lambda d: [(x.spec.addr, x.active, x.inactive, x.persist) for s in d.engine.services() for x in s.dests]  # noqa: E731
    assert counts(new) == counts(old)
    for i in (1, 2, 3):  # lbd's resolver does this after the restore
        new.engine.set_fwd(ServiceKey(6, VIP, 80), f"10.0.0.1{i}", 80, FWD)
    a_new = new.engine.process(raw(IP(src="10.9.0.1", dst=VIP) / TCP(sport=1001, dport=80, flags="A")), now_ms())
    a_old = old.engine.process(raw(IP(src="10.9.0.1", dst=VIP) / TCP(sport=1001, dport=80, flags="A")), now_ms())
    assert a_new.verdict == Verdict.XMIT_L2 and a_new.l2hdr == a_old.l2hdr
    # Saved "an hour ago": every entry (600 s ESTABLISHED, 60 s persistence) has expired meanwhile.
    aged, expired = statefile.age_connections(blob, 3600 * 1000)
    assert (aged, expired) == (b"", n)
    header["saved_at"] -= 3600
    path.write_bytes(statefile.STATE_MAGIC + json.dumps(header).encode() + b"\n" + blob)
    later = Director(c_engine(), rules=None, resolver=None)
    assert statefile.restore_state(later, path)["connections"] == {"expired": n}
    assert later.engine.conn_count() == 0
    # 10 s down: the same entries, 10 s less to live.
    aged, expired = statefile.age_connections(blob, 10_000)
    assert expired == 0 and len(aged) == len(blob)


def test_engine_without_dump_saves_configuration_only(tmp_path: Path) -> None:
    class NoDump:
        def __init__(self) -> None:
            self.inner = c_engine()
            self.name = "nodump"

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

        def dump_connections_raw(self, now_ms: int, reset_changes: bool = False) -> bytes | None:
            return None  # the Engine protocol's "this engine cannot dump"

        def dump_connections_chunks(self, now_ms: int, reset_changes: bool = False) -> Iterator[bytes] | None:
            return None

        def dump_changes_raw(self, now_ms: int) -> bytes | None:
            return None

    d = Director(NoDump(), rules=None, resolver=None)
    d.handle("add_service", {**DR, "sched": "rr"})
    path = tmp_path / "s"
    assert "not saved (engine nodump cannot dump them)" in statefile.save_state(d, path)
    assert statefile.read_state(path)[0]["connections"] is None
    new = Director(c_engine(), rules=None, resolver=None)
    assert "connections" not in statefile.restore_state(new, path)
    assert [s.spec.key.port for s in new.engine.services()] == [80]


def test_python_engine_round_trip_if_available(tmp_path: Path) -> None:
    from lb.pyengine import PyEngine

    d = Director(PyEngine(conn_max=64), rules=None, resolver=None)
    d.handle("add_service", {**DR, "sched": "rr"})
    d.handle("add_dest", {"service": DR, "dest": dest("10.0.0.11")})
    path = tmp_path / "s"
    statefile.save_state(d, path)
    new = Director(PyEngine(conn_max=64), rules=None, resolver=None)
    statefile.restore_state(new, path)
    assert listing(new) == listing(d)


def test_a_bad_snapshot_changes_nothing(tmp_path: Path) -> None:
    d = configured()
    before = listing(d)
    for bad in ({"format": 99}, {"format": 1, "services": [{"proto": "icmp"}]}):
        with pytest.raises(EngineError):
            d.restore_config(bad)
    snap = d.snapshot_config()
    # a destination the model lets through and the (test's) engine refuses
    refusing(d.engine)
    snap["services"].append({**snap["services"][0], "proto": "udp", "port": 53, "persistent": None, "ops": True,
                             "dests": [dest(REFUSED_RIP, 53, fwd="masq")]})
    with pytest.raises(EngineError):
        d.restore_config(snap)
    assert listing(d) == before


# ---------------------------------------------------------------------------- rules


class FakeRunner:
    """iptables/iptables-restore of a test: an in-memory raw table for one queue."""

    def __init__(self, listing: str = "") -> None:
        self.listing = listing
        self.scripts: list[str] = []

    def __call__(self, cmd: Any, stdin: str | None) -> Any:
        import subprocess

        if "iptables-restore" in cmd[0]:
            self.scripts.append(stdin or "")
            return subprocess.CompletedProcess(cmd, 0, "", "")
        return subprocess.CompletedProcess(cmd, 0, self.listing, "")


def test_closed_policy_rules_have_no_queue_bypass() -> None:
    assert queue_target(0, None) == "-j NFQUEUE --queue-num 0 --queue-bypass"
    assert queue_target(0, None, bypass=False) == "-j NFQUEUE --queue-num 0"
    assert queue_target(0, (2, 3), bypass=False) == "-j NFQUEUE --queue-balance 2:3"
    runner = FakeRunner("-P PREROUTING ACCEPT\n-N LBD-Q0\n-A PREROUTING -m comment --comment \"lbd q0\" -j LBD-Q0\n")
    rules = RuleManager(0, bypass=False, runner=runner)
    rules.sync(Steering(services={(6, VIP, 80)}))
    script = runner.scripts[-1]
    assert "-A LBD-Q0-GO -j NFQUEUE --queue-num 0\n" in script
    assert "--queue-bypass" not in script
    assert RuleManager(0, runner=runner).bypass is True


class RecordingRules:
    def __init__(self, jumps: list[str], track: bool = False) -> None:
        self._jumps = jumps
        self.track = track
        self.queue_num = 0
        self.calls: list[str] = []

    def jumps(self) -> list[str]:
        return self._jumps

    def rules(self) -> list[str]:
        return ["-A LBD-Q0 -d 10.0.0.100/32 -p tcp -m tcp --dport 80 -j NFQUEUE --queue-num 0"]

    adoptable = RuleManager.adoptable  # the real decision, over these jumps

    def setup(self) -> None:
        self.calls.append("setup")

    def sync(self, steering: Any, verify_sets: bool = False) -> None:
        self.calls.append("sync")


@pytest.mark.parametrize(
    ("jumps", "track", "calls"),
    [
        (['-A PREROUTING -m comment --comment "lbd q0" -j LBD-Q0'], False, ["sync"]),  # adopted
        ([], False, ["setup", "sync"]),  # nothing left: a clean chain
        (['-A PREROUTING -j LBD-Q0', '-A PREROUTING -j LBD-Q0'], False, ["setup", "sync"]),
        (['-A PREROUTING -m comment --comment "lbd q0" -j LBD-Q0'], True, ["setup", "sync"]),
    ],
)
def test_install_rules_adopts_what_a_previous_lbd_left(jumps: list[str], track: bool, calls: list[str]) -> None:
    rules = RecordingRules(jumps, track)
    d = configured()
    daemon._install_rules(rules, d)
    assert rules.calls == calls and d.rules is rules


# ---------------------------------------------------------------------------- command line


def test_restart_flags() -> None:
    args = daemon.parse_args([])
    assert (args.down_policy, args.restore, args.cleanup) == ("open", False, False)
    assert args.state_dir == "/run/lbd"
    assert daemon.parse_args(["--socket", "/tmp/x/y.sock"]).state_dir == "/tmp/x"
    assert daemon.parse_args(["--state-dir", "/var/lib/lbd"]).state_dir == "/var/lib/lbd"
    assert daemon.parse_args(["--state-dir", ""]).state_dir == ""
    assert daemon.parse_args(["--down-policy", "closed"]).down_policy == "closed"
    with pytest.raises(SystemExit):
        daemon.parse_args(["--down-policy", "maybe"])


def test_cleanup_refuses_no_iptables() -> None:
    assert daemon.cleanup(daemon.parse_args(["--cleanup", "--no-iptables"])) == 2


def test_ping_reports_the_down_policy() -> None:
    d = Director(c_engine(), rules=None, resolver=None, down_policy="closed")
    assert d.handle("ping", {})["down_policy"] == "closed"


def test_no_temporary_files_after_many_saves(tmp_path: Path) -> None:
    d = configured()
    path = tmp_path / "lbd-q0.state"
    for _ in range(5):
        statefile.save_state(d, path)
    assert os.listdir(tmp_path) == ["lbd-q0.state"]
