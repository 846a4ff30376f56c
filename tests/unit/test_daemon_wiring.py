"""lbd wiring of issue 7: --conntrack, ICMP rules, ping fields, `lbadm doctor`, stalled handshakes.

Stalled handshakes are checked with a fake engine whose per-destination counters the test sets:
every estimator tick (2 s) lbd compares syn_retrans/handshakes over a 10 s window and logs one
WARNING when an episode starts, one INFO when it ends, and counts episodes in `list`.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest

from lb import daemon, lbadm
from lb import ipsets as ips
from lb.director import Director
from lb.estimator import HandshakeSample, StallWatch
from lb.ipsets import Steering
from lb.model import DestInfo, DestSpec, LaddrInfo, ServiceInfo, ServiceKey, ServiceSpec, Stats

VIP = "10.0.0.1"
KEY = ServiceKey(6, VIP, 80)


class FakeEngine:
    """A real (Python) engine whose services() the test makes up, with counters it sets."""

    name = "fake"

    def __init__(self) -> None:
        from lb.pyengine import PyEngine

        self._inner = PyEngine(conn_max=16)
        self.dests = {
            "10.0.0.2": DestInfo(DestSpec("10.0.0.2", 80)),
            "10.0.0.3": DestInfo(DestSpec("10.0.0.3", 80)),
        }
        self.laddrs: list[LaddrInfo] = []
        self.packets = 0

    def services(self, counters: bool = True) -> list[ServiceInfo]:
        return [ServiceInfo(ServiceSpec(KEY, sched="rr"), list(self.dests.values()), Stats(), list(self.laddrs))]

    def service(self, key: Any) -> ServiceInfo:
        return self.services()[0]

    def changed_services(self) -> list[Any]:  # a superset is allowed: every service
        return [KEY]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def bump(self, addr: str, syn_retrans: int = 0, handshakes: int = 0, conns: int = 0) -> None:
        d = self.dests[addr]
        d.syn_retrans += syn_retrans
        d.handshakes += handshakes
        d.stats.conns += conns
        self.packets += syn_retrans + handshakes  # as an engine does: every packet counted under a reason

    def counters(self) -> dict[str, int]:
        return {**self._inner.counters(), "forwarded": self.packets}


def dest_listing(director: Director, addr: str) -> dict[str, Any]:
    svc = director.handle("list", {})["services"][0]
    return next(d for d in svc["dests"] if d["addr"] == addr)


# ---------------------------------------------------------------------------- StallWatch


def test_stallwatch_one_event_per_episode_start_and_end() -> None:
    w: StallWatch[str] = StallWatch(window_s=10.0)
    s = HandshakeSample(0, 0, 0)
    assert w.tick(0.0, {"d": s}) == []
    events = []
    # 20 s of stall: SYN retransmissions every tick, no handshake.
    for i in range(1, 11):
        s = HandshakeSample(s.syn_retrans + 2, s.handshakes, s.conns + 1)
        events += w.tick(2.0 * i, {"d": s})
    assert [e.started for e in events] == [True]
    assert events[0].stalled == 1  # first tick: 2 retransmissions, bounded by 1 new connection
    assert w.stalled("d") and w.episodes("d") == 1
    # Retransmissions stop: the episode ends once the window no longer holds any.
    end = []
    for i in range(11, 18):
        end += w.tick(2.0 * i, {"d": s})
    assert [e.started for e in end] == [False]
    assert not w.stalled("d") and w.episodes("d") == 1
    # A second episode counts again.
    s = HandshakeSample(s.syn_retrans + 1, s.handshakes, s.conns)
    assert [e.started for e in w.tick(40.0, {"d": s})] == [True]
    assert w.episodes("d") == 2


def test_stallwatch_handshakes_completing_is_no_stall() -> None:
    w: StallWatch[str] = StallWatch()
    s = HandshakeSample(0, 0)
    w.tick(0.0, {"d": s})
    for i in range(1, 10):
        s = HandshakeSample(s.syn_retrans + 1, s.handshakes + 5)  # a few lost SYNs, most complete
        assert w.tick(2.0 * i, {"d": s}) == []
    assert w.episodes("d") == 0


def test_stallwatch_handshakes_resuming_ends_the_episode() -> None:
    w: StallWatch[str] = StallWatch()
    w.tick(0.0, {"d": HandshakeSample(0, 0)})
    assert [e.started for e in w.tick(2.0, {"d": HandshakeSample(3, 0)})] == [True]
    assert [e.started for e in w.tick(4.0, {"d": HandshakeSample(4, 1)})] == [False]


def test_stallwatch_forgets_removed_destinations_and_counter_resets() -> None:
    w: StallWatch[str] = StallWatch()
    w.tick(0.0, {"d": HandshakeSample(0, 0)})
    w.tick(2.0, {"d": HandshakeSample(5, 0)})
    assert w.episodes("d") == 1
    w.tick(4.0, {})
    assert w.episodes("d") == 0 and not w.stalled("d")
    # Counters going backwards (destination re-created): a fresh start, no bogus delta.
    w.tick(6.0, {"d": HandshakeSample(100, 50)})
    assert w.tick(8.0, {"d": HandshakeSample(1, 0)}) == []
    assert not w.stalled("d")


# ---------------------------------------------------------------------------- Director: logs and list


def test_director_logs_a_stall_once_and_exports_the_counter(caplog: pytest.LogCaptureFixture) -> None:
    eng = FakeEngine()
    d = Director(eng, rules=None, resolver=None)
    caplog.set_level(logging.INFO, logger="lbd")
    d.estimate(now=0.0)
    for i in range(1, 16):  # 30 s of stall at 10.0.0.2, 10.0.0.3 healthy
        eng.bump("10.0.0.2", syn_retrans=3, conns=1)
        eng.bump("10.0.0.3", handshakes=2, conns=2)
        d.estimate(now=2.0 * i)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    text = warnings[0].getMessage()
    assert text.startswith("destination 10.0.0.2:80 of TCP 10.0.0.1:80: 1 handshakes stalled in 10 s; "
                           "frames leave the director but no client ACK returns. Likely causes: anti-spoofing")
    assert "arp_ignore/arp_announce" in text and "the real server's firewall" in text
    listing = dest_listing(d, "10.0.0.2")
    assert listing["stalled_episodes"] == 1 and listing["stalled"] is True
    assert dest_listing(d, "10.0.0.3")["stalled_episodes"] == 0
    # The client gives up: no more retransmissions; the episode ends with one INFO.
    caplog.clear()
    for i in range(16, 24):
        d.estimate(now=2.0 * i)
    ends = [r.getMessage() for r in caplog.records if "no longer stalled" in r.getMessage()]
    assert len(ends) == 1 and ends[0].startswith("destination 10.0.0.2:80 of TCP 10.0.0.1:80")
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    listing = dest_listing(d, "10.0.0.2")
    assert listing["stalled_episodes"] == 1 and listing["stalled"] is False


# ---------------------------------------------------------------------------- rules and ping


class RecordingRules:
    def __init__(self) -> None:
        self.calls: list[Steering] = []

    def sync(self, steering: Steering, verify_sets: bool = False) -> None:
        self.calls.append(steering)


def test_sync_rules_queues_icmp_to_every_vip_and_local_address() -> None:
    """The address set (ICMP, and the pre-filter) holds every VIP and every local address."""
    eng = FakeEngine()
    eng.laddrs = [LaddrInfo("10.0.1.2"), LaddrInfo("10.0.1.3")]
    rules = RecordingRules()
    d = Director(eng, rules, resolver=None)
    d.sync_rules()
    st = rules.calls[-1]
    assert st.services == {(6, VIP, 80)}
    assert st.elements()[ips.ADDR] == {VIP, "10.0.1.2", "10.0.1.3"}


def test_sync_rules_with_a_real_engine_two_services_one_vip() -> None:
    from lb.fastpath import CEngine

    rules = RecordingRules()
    d = Director(CEngine(conn_max=64), rules, resolver=None)
    for port in (80, 443):
        d.handle("add_service", {"proto": "tcp", "addr": VIP, "port": port, "sched": "rr"})
    d.handle("add_service", {"proto": "udp", "addr": VIP, "port": 53, "sched": "rr"})
    d.handle("add_laddr", {"service": {"proto": "tcp", "addr": VIP, "port": 443}, "addr": "10.0.1.2"})
    d.handle("add_laddr", {"service": {"proto": "udp", "addr": VIP, "port": 53}, "addr": "10.0.1.2"})
    el = rules.calls[-1].elements()
    assert el[ips.ADDR] == {VIP, "10.0.1.2"}
    assert el[ips.SVC] == {f"{VIP},tcp:80", f"{VIP},tcp:443", f"{VIP},udp:53"}


def test_ping_reports_queue_and_conntrack() -> None:
    d = Director(FakeEngine(), rules=None, resolver=None, queue_num=7, conntrack=True)
    result = d.handle("ping", {})
    assert result["queue_num"] == 7 and result["conntrack"] is True and result["engine"] == "fake"
    assert Director(FakeEngine(), None, None).handle("ping", {})["conntrack"] is False


def test_lbd_conntrack_flag_is_off_by_default() -> None:
    assert daemon.parse_args([]).conntrack is False
    assert daemon.parse_args(["--conntrack"]).conntrack is True


def test_lbd_help_documents_conntrack(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        daemon.parse_args(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--conntrack" in out and "net.ipv4.vs.conntrack" in out and "docs/firewall.md" in out


# ---------------------------------------------------------------------------- lbadm doctor


@pytest.mark.parametrize(
    ("argv", "sock", "rest"),
    [
        (["doctor"], "/env/lbd.sock", []),
        (["doctor", "--json", "--window", "3"], "/env/lbd.sock", ["--json", "--window", "3"]),
        (["--socket", "/x.sock", "doctor", "--window", "0"], "/x.sock", ["--window", "0"]),
        (["--socket=/y.sock", "doctor"], "/y.sock", []),
    ],
)
def test_lbadm_doctor_is_dispatched_before_ipvsadm_parsing(
    monkeypatch: pytest.MonkeyPatch, argv: list[str], sock: str, rest: list[str]
) -> None:
    import lb.doctor.cli

    seen: list[tuple[list[str], str]] = []

    def main_doctor(args: list[str], socket_path: str) -> int:
        seen.append((list(args), socket_path))
        return 0

    monkeypatch.setattr(lb.doctor.cli, "main_doctor", main_doctor)
    assert lbadm.main(argv, env={"LBD_SOCKET": "/env/lbd.sock"}) == 0
    assert seen == [(rest, sock)]


def test_lbadm_doctor_bad_option_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert lbadm.main(["doctor", "--window", "-1"], env={}) == 2
    assert "window" in capsys.readouterr().err


def test_lbadm_help_mentions_doctor(capsys: pytest.CaptureFixture[str]) -> None:
    assert lbadm.main(["-h"], env={}) == 0
    assert "doctor [--json] [--window SECONDS]" in capsys.readouterr().out


def test_doctor_word_elsewhere_is_still_ipvsadm(capsys: pytest.CaptureFixture[str]) -> None:
    # "-A -t doctor:80": not a doctor invocation; ipvsadm's own error for an unknown host.
    assert lbadm.main(["-A", "-t", "doctor:80"], env={}) == 2
    assert "illegal virtual server address" in capsys.readouterr().err
