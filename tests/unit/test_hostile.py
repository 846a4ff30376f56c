"""Hostile packets the packet table does not already cover (issue 8): zero windows, RST storms,
TTL 1 on DR and IPIP (issue 16: they decrement it, as the kernel). Both engines, each outcome with its counter."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pytest
from scapy.all import ICMP, IP, TCP, raw
from scapy.utils import checksum

from lb.engine import FwdState, Verdict
from lb.fastpath import CEngine
from lb.model import DestSpec, ServiceKey, ServiceSpec

VIP, CLIENT = "10.0.0.100", "198.51.100.9"
DR, TUN = ServiceKey(6, VIP, 80), ServiceKey(6, VIP, 81)


def _factories() -> list[Any]:
    params: list[Any] = [pytest.param(lambda: CEngine(conn_max=64, hash_buckets=64, hash_seed=3), id="c")]
    try:
        from lb.pyengine import PyEngine

        params.append(pytest.param(lambda: PyEngine(conn_max=64, hash_seed=3), id="python"))
    except ImportError:
        pass
    return params


def _engine(factory: Callable[[], Any]) -> Any:
    e = factory()
    fwd = FwdState(ifindex=4, dst_mac=b"\x02\0\0\0\0\x01", src_mac=b"\x02\0\0\0\0\xaa", saddr="10.0.0.2", mtu=1500)
    for key, method in ((DR, "route"), (TUN, "tunnel")):
        e.add_service(ServiceSpec(key, "rr"))
        e.add_dest(key, DestSpec("10.0.0.11", key.port, fwd=method))
        e.set_fwd(key, "10.0.0.11", key.port, fwd)
    return e


def _tcp(flags: str, dport: int = 80, **kw: Any) -> bytes:
    ttl = kw.pop("ttl", 64)
    sport = kw.pop("sport", 40000)
    return raw(IP(src=CLIENT, dst=VIP, ttl=ttl) / TCP(sport=sport, dport=dport, flags=flags, **kw))


@pytest.mark.parametrize("factory", _factories())
def test_zero_window_is_forwarded(factory: Callable[[], Any]) -> None:
    e = _engine(factory)
    e.process(_tcp("S"), 1000)
    e.process(_tcp("A", seq=1, ack=1), 1001)
    pkt = _tcp("A", seq=1, ack=1, window=0)
    a = e.process(pkt, 1002)
    assert a.verdict == Verdict.XMIT_L2
    assert IP(a.out)[TCP].window == 0 and a.out[20:] == pkt[20:]  # forwarded as it is (TTL - 1)
    assert [c.state for c in e.connections(1002)] == ["ESTABLISHED"]
    assert e.counters()["forwarded"] == 3


@pytest.mark.parametrize("factory", _factories())
def test_rst_storm_closes_once_and_expires(factory: Callable[[], Any]) -> None:
    e = _engine(factory)
    e.process(_tcp("S"), 1000)
    e.process(_tcp("A", seq=1, ack=1), 1001)
    rng = random.Random(5)
    for i in range(500):  # bounded storm of RSTs with arbitrary sequence numbers on the live flow
        a = e.process(_tcp("R", seq=rng.getrandbits(32)), 1002 + i)
        assert a.verdict == Verdict.XMIT_L2  # IPVS forwards them; the real server judges sequence numbers
    assert [c.state for c in e.connections(1600)] == ["CLOSE"]
    dest = e.services()[0].dests[0]
    assert (dest.active, dest.inactive) == (0, 1)
    # CLOSE lasts 10 s from the last packet; then nothing is left.
    assert e.connections(1501 + 10_000 + 1) == []
    # RSTs for connections nobody has are passed to the stack, never scheduled.
    for port in range(41000, 41100):
        a = e.process(raw(IP(src=CLIENT, dst=VIP) / TCP(sport=port, dport=80, flags="R")), 20_000)
        assert a.verdict == Verdict.ACCEPT
    assert e.counters()["no_conn"] == 100 and e.connections(20_000) == []


@pytest.mark.parametrize("factory", _factories())
@pytest.mark.parametrize("dport,method", [(80, "DR"), (81, "tunnel")])
def test_ttl_runs_out_on_the_director_as_in_the_kernel(factory: Callable[[], Any], dport: int, method: str) -> None:
    """Every method decrements the TTL (the kernel's __ip_vs_get_out_rt -> decrement_ttl, DR and the inner
    header of IPIP included); at TTL 1 the client gets ICMP time exceeded from the VIP."""
    e = _engine(factory)
    pkt = _tcp("S", dport=dport, ttl=2)
    a = e.process(pkt, 1000)
    assert a.verdict == Verdict.XMIT_L2, method
    inner = IP(a.out)[IP][1] if method == "tunnel" else IP(a.out)
    assert inner.ttl == 1
    assert checksum(raw(inner)[:20]) == 0  # the header checksum follows the new TTL
    last = _tcp("S", dport=dport, ttl=1, sport=40001)
    a = e.process(last, 1001)
    assert (a.verdict, a.reason.name) == (Verdict.ANSWER, "TTL_EXCEEDED"), method
    answer = IP(a.out)
    assert (answer.src, answer.dst, answer[ICMP].type, answer[ICMP].code) == (VIP, CLIENT, 11, 0)
    assert raw(answer[ICMP].payload)[:28] == last[:28]


@pytest.mark.parametrize("factory", _factories())
def test_looped_back_packets_are_not_martians(factory: Callable[[], Any]) -> None:
    """The director's own connection to a VIP comes back in on lo with a local source (the VIP, an
    interface address): the kernel never routes it on input (no martian check), and neither does lbd
    when the adapter says it came in on lo (LB_PKT_F_LOOPBACK); from anywhere else it is a martian."""
    e = _engine(factory)
    e.set_local_addrs(["10.0.0.2"])
    for src, port in ((VIP, 41000), ("10.0.0.2", 41001), ("127.0.0.1", 41002)):
        pkt = raw(IP(src=src, dst=VIP) / TCP(sport=port, dport=80, flags="S"))
        assert e.process(pkt, 1000).verdict == Verdict.DROP, src
        assert e.process(pkt, 1000, loopback=True).verdict == Verdict.XMIT_L2, src
    assert (e.counters()["local_src"], e.counters()["martian_src"], e.counters()["forwarded"]) == (2, 1, 3)
