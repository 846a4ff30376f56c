"""lbadm doctor's NAT checks (lb/doctor/checks_nat.py) with fake inputs: forwarding, where the real
servers are, and the classic mistake (no reply from a NAT real server)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from lb.doctor import run_checks  # noqa: E402
from test_doctor_checks import NFQ_LINE, FakeContext, by, counters, dest, listing  # noqa: E402

RIP, RIP2 = "10.1.0.11", "10.1.0.12"
DIRECTOR_BACK = "10.1.0.1"


def nat_dest(addr: str, inpkts: int = 0, outpkts: int = 0) -> dict[str, Any]:
    d = dest(addr, "masq")
    d["port"] = 8080
    d["stats"].update(inpkts=inpkts, outpkts=outpkts)
    return d


def sample(*dests: dict[str, Any]) -> dict[str, Any]:
    return {"list": listing(list(dests)), "counters": counters(), "nfq": NFQ_LINE}


ROUTES = {RIP: {"dst": RIP, "dev": "back0", "prefsrc": DIRECTOR_BACK},
          RIP2: {"dst": RIP2, "dev": "back0", "prefsrc": DIRECTOR_BACK}}


def test_no_nat_destinations_no_nat_findings() -> None:
    assert by(run_checks(FakeContext()), "nat") == []


def test_forwarding_off_with_nat_is_a_warning() -> None:
    s = sample(nat_dest(RIP))
    (w,) = by(run_checks(FakeContext(samples=[s, s], routes=ROUTES)), "nat", "warning")
    assert "ip_forward = 0" in w.summary and f"{RIP}:8080" in w.evidence
    assert w.fix.startswith("sysctl -w net.ipv4.ip_forward=1")
    assert not by(run_checks(FakeContext(samples=[s, s], routes=ROUTES)), "sysctl")  # no "fine" beside it
    fs = run_checks(FakeContext(samples=[s, s], routes=ROUTES, sysctls={"net/ipv4/ip_forward": "1"}))
    assert by(fs, "nat", "warning") == []


def test_the_real_servers_gateway_is_named_and_a_routed_real_server_warned() -> None:
    s = sample(nat_dest(RIP), nat_dest(RIP2))
    routes = {RIP: ROUTES[RIP], RIP2: {"dst": RIP2, "gateway": "10.1.0.254", "dev": "back0", "prefsrc": DIRECTOR_BACK}}
    fs = run_checks(FakeContext(samples=[s, s], routes=routes, sysctls={"net/ipv4/ip_forward": "1"}))
    (info,) = by(fs, "nat", "info")
    assert info.evidence == f"{RIP}: default via {DIRECTOR_BACK} (dev back0)"
    (w,) = by(fs, "nat", "warning")
    assert w.summary.startswith(f"NAT real server {RIP2} is behind router 10.1.0.254")


def test_packets_to_a_nat_real_server_without_any_reply_is_the_classic_mistake() -> None:
    s0 = sample(nat_dest(RIP, inpkts=10, outpkts=9), nat_dest(RIP2, inpkts=4, outpkts=0))
    s1 = sample(nat_dest(RIP, inpkts=20, outpkts=19), nat_dest(RIP2, inpkts=12, outpkts=0))
    fs = run_checks(FakeContext(samples=[s0, s1], routes=ROUTES, sysctls={"net/ipv4/ip_forward": "1"}))
    (e,) = by(fs, "nat", "error")
    assert e.summary.startswith(f"NAT destination {RIP2}:8080 of TCP 10.0.0.100:80: 8 packets sent to it and no "
                                "reply seen over the sampling window")
    assert "classic NAT mistake" in e.summary
    assert f"ip route replace default via {DIRECTOR_BACK}" in e.fix
    # replies seen (or too few packets to say): nothing
    s2 = sample(nat_dest(RIP, inpkts=20, outpkts=19), nat_dest(RIP2, inpkts=14, outpkts=1))
    fs = run_checks(FakeContext(samples=[s1, s2], routes=ROUTES, sysctls={"net/ipv4/ip_forward": "1"}))
    assert by(fs, "nat", "error") == []


def test_without_a_window_the_totals_speak() -> None:
    s = sample(nat_dest(RIP, inpkts=5, outpkts=0))
    fs = run_checks(FakeContext(samples=[s], routes=ROUTES, window_s=0, sysctls={"net/ipv4/ip_forward": "1"}))
    (e,) = by(fs, "nat", "error")
    assert "since it was added" in e.summary


def test_forwarding_off_with_nat_is_an_error_when_lbd_takes_packets_after_routing() -> None:
    """--steer-hook input: the NAT replies are routed, so without forwarding none reaches lbd."""
    s = sample(nat_dest(RIP))
    ping = {"version": "0.1", "engine": "c", "steering": "nftables", "steering_hook": "input"}
    (e,) = by(run_checks(FakeContext(samples=[s, s], routes=ROUTES, ping=ping)), "nat", "error")
    assert "--steer-hook input" in e.summary and "no NAT connection completes" in e.summary
    fs = run_checks(FakeContext(samples=[s, s], routes=ROUTES, ping=ping, sysctls={"net/ipv4/ip_forward": "1"}))
    assert by(fs, "nat", "error") == []
    (info,) = by(fs, "sysctl", "info")
    assert "needs it for NAT" in info.summary


def test_forwarding_off_with_nat_is_only_a_warning_when_lbd_takes_the_replies_at_ingress() -> None:
    """lbd's default --nat-replies ingress takes the replies before routing: NAT completes without
    forwarding, as with --steer-hook prerouting; only the real servers' other traffic is lost."""
    s = sample(nat_dest(RIP))
    ping = {"version": "0.1", "engine": "c", "steering": "nftables", "steering_hook": "input",
            "nat_replies": "ingress"}
    fs = run_checks(FakeContext(samples=[s, s], routes=ROUTES, ping=ping))
    assert by(fs, "nat", "error") == []
    (w,) = by(fs, "nat", "warning")
    assert "ip_forward = 0" in w.summary
