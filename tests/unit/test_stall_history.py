"""lbd remembers recent stalled-handshake episodes and `lbadm doctor` reports them after the fact
(issue 16 item 8): before, doctor found a stall (field report 002: a hypervisor's anti-spoofing)
only while it happened during its own sampling window."""

from __future__ import annotations

import time
from typing import Any

from lb.director import Director
from lb.doctor import run_checks
from lb.estimator import StallEvent
from lb.model import ServiceKey
from lb.stallhistory import DIRECTOR_SIDE, GENERAL_CAUSES, StallHistory
from test_daemon_wiring import FakeEngine
from test_doctor_checks import NFQ_LINE, RIPS, FakeContext, by, counters, dest, listing

KEY = ServiceKey(6, "10.0.0.1", 80)


def _event(addr: str, started: bool, handshakes: int = 0) -> StallEvent[Any]:
    return StallEvent((KEY, addr, 80), started, 2, 3, handshakes, 10.0)


def test_history_keeps_episodes_with_start_end_and_cause_for_15_minutes() -> None:
    wall = [1000.0]
    h = StallHistory(wall=lambda: wall[0])
    h.record(_event("10.0.0.2", True), "route", False, now_mono=0.0)
    wall[0] += 30
    h.record(_event("10.0.0.2", False, handshakes=4), "route", False, now_mono=30.0)
    (ep,) = h.to_json(now_mono=60.0)["episodes"]
    assert (ep["addr"], ep["port"], ep["started"], ep["ended"]) == ("10.0.0.2", 80, 1000.0, 1030.0)
    assert (ep["lasted_s"], ep["ago_s"], ep["ongoing"]) == (30.0, 30.0, False)
    assert ep["end_reason"] == "handshakes complete again" and ep["likely_cause"] == GENERAL_CAUSES
    assert ep["service"] == {"proto": "tcp", "addr": "10.0.0.1", "port": 80}
    assert h.to_json(now_mono=30.0 + 15 * 60 - 1)["episodes"] != []
    assert h.to_json(now_mono=30.0 + 15 * 60 + 1)["episodes"] == []  # forgotten after 15 minutes


def test_history_is_bounded_the_oldest_go_first() -> None:
    h = StallHistory(max_episodes=4)
    h.record(_event("10.0.0.9", True), "route", True, now_mono=0.0)  # never ends, but is the oldest
    for i in range(10):
        h.record(_event(f"10.0.1.{i}", True), "route", False, now_mono=float(i))
        h.record(_event(f"10.0.1.{i}", False), "route", False, now_mono=float(i) + 0.5)
    episodes = h.to_json(now_mono=20.0)["episodes"]
    assert [e["addr"] for e in episodes] == [f"10.0.1.{i}" for i in range(6, 10)]
    assert not h.ongoing()
    assert [e["end_reason"] for e in episodes] == ["no more SYN retransmissions: the clients gave up or stopped"] * 4


def test_a_removed_destination_ends_its_episode_and_whole_service_points_at_the_director() -> None:
    h = StallHistory()
    h.record(_event("10.0.0.2", True), "route", False, now_mono=0.0)
    h.still_stalled([(KEY, "10.0.0.2", 80)], {KEY})
    h.forget_missing([], now_mono=5.0)
    (ep,) = h.to_json(now_mono=6.0)["episodes"]
    assert ep["end_reason"] == "destination removed" and ep["likely_cause"] == DIRECTOR_SIDE


def test_director_remembers_an_episode_after_it_ended() -> None:
    eng = FakeEngine()
    d = Director(eng, rules=None, resolver=None)
    t0 = time.monotonic() - 40.0  # the op reads the monotonic clock: the ticks happened in the last 40 s
    d.estimate(now=t0)
    for i in range(1, 6):  # 10 s of stall at both destinations: the whole service
        for addr in ("10.0.0.2", "10.0.0.3"):
            eng.bump(addr, syn_retrans=3, conns=1)
        d.estimate(now=t0 + 2.0 * i)
    for i in range(6, 16):  # the clients give up: no more retransmissions
        d.estimate(now=t0 + 2.0 * i)
    result = d.handle("stall_history", {})
    assert sorted(e["addr"] for e in result["episodes"]) == ["10.0.0.2", "10.0.0.3"]
    for e in result["episodes"]:
        assert not e["ongoing"] and e["ended"] >= e["started"] and e["likely_cause"] == DIRECTOR_SIDE
        assert e["end_reason"].startswith("no more SYN retransmissions")
    assert result["history_s"] == 900.0


def _quiet_sample(history: dict[str, Any]) -> dict[str, Any]:
    return {"list": listing([dest(r) for r in RIPS]), "counters": counters(), "nfq": NFQ_LINE, "stall_history": history}


EPISODE = {"service": {"proto": "tcp", "addr": "10.0.0.1", "port": 80}, "addr": RIPS[0], "port": 80, "fwd": "route",
           "started": 1_700_000_000.0, "ended": 1_700_000_042.0, "ago_s": 75.0, "lasted_s": 42.0, "ongoing": False,
           "end_reason": "no more SYN retransmissions: the clients gave up or stopped", "stalled": 4,
           "syn_retrans": 12, "handshakes": 0, "window_s": 10.0, "likely_cause": DIRECTOR_SIDE}


def test_doctor_reports_an_episode_that_ended_before_its_window() -> None:
    history = {"history_s": 900.0, "episodes": [EPISODE]}
    fs = run_checks(FakeContext(samples=[_quiet_sample(history), _quiet_sample(history)], window_s=3))
    assert by(fs, "handshakes") == []  # nothing stalls now
    (f,) = by(fs, "stall-history", "warning")
    assert f.summary.startswith(f"destination {RIPS[0]}:80 of TCP 10.0.0.1:80: handshakes stalled from ")
    assert "42 s; ended 75 s ago: no more SYN retransmissions" in f.summary and DIRECTOR_SIDE in f.summary
    assert "12" in f.evidence and "route" in f.evidence and "15 min" in f.evidence


def test_doctor_reports_an_ongoing_episode_only_without_a_window() -> None:
    ongoing = {**EPISODE, "ongoing": True, "ended": None, "ago_s": 0.0}
    history = {"history_s": 900.0, "episodes": [ongoing]}
    fs = run_checks(FakeContext(samples=[_quiet_sample(history), _quiet_sample(history)], window_s=3))
    assert by(fs, "stall-history") == []  # the sampled check's, over its window
    fs = run_checks(FakeContext(samples=[_quiet_sample(history)], window_s=0))
    (f,) = by(fs, "stall-history", "error")
    assert "still going on" in f.summary


def test_doctor_with_an_lbd_that_does_not_remember() -> None:
    old = {"list": listing([dest(r) for r in RIPS]), "counters": counters(), "nfq": NFQ_LINE}
    fs = run_checks(FakeContext(samples=[old, old]))
    assert [f.severity for f in by(fs, "stall-history")] == ["info"]
