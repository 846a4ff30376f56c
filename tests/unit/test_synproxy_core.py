"""SYN-proxy in the packet core (issue 4): cookies, translation, backoff.

Runs against every engine that offers SYN-proxy (the C fast path always; the
Python engine once it implements `set_synproxy`). Packets are built with scapy;
times are the engines' `now_ms` argument, so nothing here reads a clock.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from scapy.all import IP, TCP, Raw, raw

from lb.engine import FwdState, Reason, Verdict
from lb.fastpath import CEngine
from lb.model import DestSpec, ServiceKey, ServiceSpec, SynproxyConf

VIP, CLIENT, RS, LIP = "10.0.0.100", "198.51.100.7", "10.1.0.11", "10.1.0.1"
KEY = ServiceKey(6, VIP, 80)
T0 = 1_000_000  # ms


def _engines() -> list[Any]:
    params: list[Any] = [pytest.param(lambda seed: CEngine(conn_max=4096, hash_buckets=1024, hash_seed=seed), id="c")]
    try:
        from lb.pyengine import PyEngine

        if hasattr(PyEngine, "set_synproxy"):
            params.append(pytest.param(lambda seed: PyEngine(conn_max=4096, hash_seed=seed), id="python"))
    except ImportError:
        pass
    return params


def _engine(factory: Callable[[int], Any], seed: int = 7, toa: bool = False) -> Any:
    e = factory(seed)
    e.add_service(ServiceSpec(KEY, "rr", synproxy=True, toa=toa))
    e.add_laddr(KEY, LIP)
    e.add_dest(KEY, DestSpec(RS, 8080, fwd="fullnat"))
    e.set_fwd(KEY, RS, 8080, FwdState(ifindex=3, dst_mac=b"\x02\0\0\0\0\x11", src_mac=b"\x02\0\0\0\0\xaa",
                                      saddr=LIP, mtu=1500))
    return e


def _client(flags: str, sport: int = 40000, **kw: Any) -> bytes:
    payload = kw.pop("payload", None)
    pkt = IP(src=CLIENT, dst=VIP) / TCP(sport=sport, dport=80, flags=flags, **kw)
    if payload is not None:
        pkt = pkt / Raw(payload)
    return raw(pkt)


def _cookie(e: Any, now: int, sport: int = 40000, isn: int = 1000) -> int:
    a = e.process(_client("S", sport, seq=isn, options=[("MSS", 1460), ("SAckOK", b"")]), now)
    assert a.verdict == Verdict.ANSWER and a.reason == Reason.SP_COOKIE
    synack = IP(a.out)
    assert synack[TCP].flags == "SA" and synack[TCP].ack == isn + 1
    assert synack.src == VIP and synack.dst == CLIENT
    return int(synack[TCP].seq)


def _checksums_ok(pkt: bytes) -> bool:
    p = IP(pkt)
    q = IP(raw(p))
    del q.chksum
    del q[TCP].chksum
    r = IP(raw(q))
    return r.chksum == p.chksum and r[TCP].chksum == p[TCP].chksum


@pytest.mark.parametrize("factory", _engines())
def test_syn_creates_no_state(factory: Callable[[int], Any]) -> None:
    e = _engine(factory)
    for port in range(40000, 40050):
        _cookie(e, T0, sport=port)
    assert e.connections(T0) == []
    assert e.synproxy_stats()["cookies_sent"] == 50
    assert e.synproxy_stats()["syns_to_rs"] == 0


@pytest.mark.parametrize("factory", _engines())
def test_cookie_round_trip_opens_to_the_real_server(factory: Callable[[int], Any]) -> None:
    e = _engine(factory)
    cookie = _cookie(e, T0)
    a = e.process(_client("A", seq=1001, ack=cookie + 1), T0 + 5)
    assert a.verdict == Verdict.XMIT_L2
    syn = IP(a.out)
    assert (syn.src, syn.dst, syn[TCP].dport, str(syn[TCP].flags)) == (LIP, RS, 8080, "S")
    assert syn[TCP].seq == 1000  # the client's ISN travels on: no translation on the client's side
    assert dict((k, v) for k, v in syn[TCP].options if k == "MSS")["MSS"] == 1460
    assert _checksums_ok(a.out)
    assert [c.state for c in e.connections(T0 + 5)] == ["SYN_SENT"]


@pytest.mark.parametrize("factory", _engines())
@pytest.mark.parametrize("ack_delta,sport,age_ms", [
    (2, 40000, 0),  # wrong cookie value
    (1, 40001, 0),  # replayed on another 4-tuple
    (1, 40000, 3 * 60_000 + 1),  # older than the two-minute validity
])
def test_invalid_cookies_are_dropped(factory: Callable[[int], Any], ack_delta: int, sport: int, age_ms: int) -> None:
    e = _engine(factory)
    cookie = _cookie(e, T0)
    a = e.process(_client("A", sport, seq=1001, ack=cookie + ack_delta), T0 + age_ms)
    assert (a.verdict, a.reason) == (Verdict.DROP, Reason.SP_BAD_COOKIE)
    assert e.connections(T0 + age_ms) == []
    assert e.synproxy_stats()["cookies_invalid"] == 1


@pytest.mark.parametrize("factory", _engines())
def test_cookie_from_another_secret_is_refused(factory: Callable[[int], Any]) -> None:
    cookie = _cookie(_engine(factory, seed=7), T0)
    other = _engine(factory, seed=8)
    a = other.process(_client("A", seq=1001, ack=cookie + 1), T0 + 5)
    assert (a.verdict, a.reason) == (Verdict.DROP, Reason.SP_BAD_COOKIE)


def _established(e: Any, rs_isn: int = 777_000, toa: bool = False) -> tuple[int, int]:
    cookie = _cookie(e, T0)
    a = e.process(_client("PA", seq=1001, ack=cookie + 1, payload=b"GET / HTTP/1.0\r\n\r\n"), T0 + 1)
    lport = IP(a.out)[TCP].sport
    synack = raw(IP(src=RS, dst=LIP) / TCP(sport=8080, dport=lport, flags="SA", seq=rs_isn, ack=1001,
                                          options=[("MSS", 1400)]))
    a = e.process(synack, T0 + 30)
    assert a.reason == Reason.SP_HANDSHAKE and a.verdict == Verdict.XMIT_L2
    ack = IP(a.out)
    # The held request rides on the handshake-completing ACK.
    assert (ack[TCP].seq, ack[TCP].ack) == (1001, rs_isn + 1)
    assert bytes(ack[TCP].payload) == b"GET / HTTP/1.0\r\n\r\n"
    if toa:
        assert (254, b"\x9c\x40" + bytes(map(int, CLIENT.split(".")))) in [
            (k, bytes(v)) for k, v in ack[TCP].options if isinstance(k, int)]
    assert _checksums_ok(a.out)
    return cookie, lport


@pytest.mark.parametrize("factory", _engines())
@pytest.mark.parametrize("flags", ["A", "PA", "FA", "RA"])
def test_sequence_translation_both_ways(factory: Callable[[int], Any], flags: str) -> None:
    e = _engine(factory)
    cookie, lport = _established(e)
    d_in = (777_000 - cookie) % 2**32  # added to client ACK numbers
    # Server -> client: the server's sequence numbers move into the cookie's space.
    a = e.process(raw(IP(src=RS, dst=LIP) / TCP(sport=8080, dport=lport, flags=flags, seq=777_001, ack=1019)
                      / Raw(b"x" * 10)), T0 + 40)
    out = IP(a.out)
    assert a.verdict == Verdict.ANSWER and (out.src, out.dst) == (VIP, CLIENT)
    assert out[TCP].seq == (777_001 - d_in) % 2**32 == (cookie + 1) % 2**32
    assert out[TCP].ack == 1019 and _checksums_ok(a.out)


@pytest.mark.parametrize("factory", _engines())
@pytest.mark.parametrize("flags", ["A", "PA", "FA", "RA"])
def test_client_ack_and_sack_translated(factory: Callable[[int], Any], flags: str) -> None:
    e = _engine(factory)
    cookie, _ = _established(e)
    d_in = (777_000 - cookie) % 2**32
    a = e.process(_client(flags, seq=1019, ack=(cookie + 11) % 2**32,
                          options=[("SAck", ((cookie + 21) % 2**32, (cookie + 31) % 2**32))]), T0 + 50)
    out = IP(a.out)
    assert a.verdict == Verdict.XMIT_L2 and (out.src, out.dst) == (LIP, RS)
    assert out[TCP].ack == (cookie + 11 + d_in) % 2**32 == 777_011
    sack = dict((k, v) for k, v in out[TCP].options if k == "SAck")["SAck"]
    assert tuple(sack) == (777_021, 777_031)
    assert out[TCP].seq == 1019 and _checksums_ok(a.out)


@pytest.mark.parametrize("factory", _engines())
def test_toa_rides_on_the_handshake_ack(factory: Callable[[int], Any]) -> None:
    e = _engine(factory, toa=True)
    cookie = _cookie(e, T0)
    # With TOA the announced MSS leaves room for the 8-byte option.
    assert cookie >= 0
    _established(e, toa=True)


@pytest.mark.parametrize("factory", _engines())
@pytest.mark.parametrize("conf,expect_ms", [
    (SynproxyConf(), [200, 600, 1400]),  # 200 ms doubling, 3 retries
    (SynproxyConf(init_rto_ms=100, max_rto_ms=250, max_retries=4), [100, 300, 550, 800]),  # capped
])
def test_syn_retransmission_backoff(factory: Callable[[int], Any], conf: SynproxyConf, expect_ms: list[int]) -> None:
    e = _engine(factory)
    e.set_synproxy(KEY, conf)
    cookie = _cookie(e, T0)
    start = T0 + 1
    e.process(_client("A", seq=1001, ack=cookie + 1), start)
    sent_at = []
    rst_at = None
    for t in range(start, start + 20_000, 10):  # a 10 ms tick, bounded
        for act in e.timers(t):
            if act.verdict == Verdict.XMIT_L2:
                syn = IP(act.out)
                assert str(syn[TCP].flags) == "S" and syn[TCP].seq == 1000 and _checksums_ok(act.out)
                sent_at.append(t - start)
            elif act.verdict == Verdict.ANSWER:
                assert "R" in str(IP(act.out)[TCP].flags)
                rst_at = t - start
        if rst_at is not None:
            break
    # Each retransmission is due at the schedule; the 10 ms tick rounds it up.
    assert [s - s % 10 for s in sent_at] == [x - x % 10 for x in expect_ms]
    assert rst_at is not None and e.connections(start + rst_at) == []
    stats = e.synproxy_stats()
    assert stats["syn_retransmits"] == len(expect_ms) and stats["give_ups"] == 1


@pytest.mark.parametrize("factory", _engines())
def test_dr_destination_refused_on_synproxy_service(factory: Callable[[int], Any]) -> None:
    from lb.engine import EngineError

    e = _engine(factory)
    with pytest.raises(EngineError) as exc:
        e.add_dest(KEY, DestSpec("10.0.0.12", 8080, fwd="route"))
    assert exc.value.errno_name == "EOPNOTSUPP"
