"""Fuzzing through the Python API (issue 8): arbitrary bytes and mutated valid packets go into both
engines configured with every method; neither may raise, and both must take the same action.
(The C core is also fuzzed natively: `make fuzz`, libFuzzer with ASan/UBSan.)"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.all import IP, TCP, UDP, raw

from lb.engine import FwdState
from lb.fastpath import CEngine
from lb.model import DestSpec, ServiceKey, ServiceSpec
from lb.pyengine import PyEngine

VIP = "10.0.0.100"
FWD = FwdState(ifindex=3, dst_mac=b"\x02\0\0\0\0\x01", src_mac=b"\x02\0\0\0\0\xaa", saddr="10.1.0.1", mtu=1500)
SEEDS = [
    raw(IP(src="192.0.2.5", dst=VIP) / TCP(sport=40000, dport=port, flags=flags))
    for port in (80, 81, 82, 83) for flags in ("S", "A", "PA", "FA", "R")
] + [raw(IP(src="192.0.2.5", dst=VIP) / UDP(sport=5353, dport=port) / (b"q" * 20)) for port in (80, 81, 82)] + [
    raw(IP(src="10.1.0.11", dst="10.1.0.1") / TCP(sport=80, dport=1024, flags="SA")),
]


def _configure(e: Any) -> Any:
    modes: tuple[tuple[int, str, dict[str, bool]], ...] = (
        (80, "route", {}), (81, "tunnel", {}), (82, "fullnat", {"toa": True}), (83, "fullnat", {"synproxy": True}))
    for port, method, extra in modes:
        for proto in (6, 17):
            if proto == 17 and extra.get("synproxy"):
                continue
            key = ServiceKey(proto, VIP, port)
            e.add_service(ServiceSpec(key, "rr", toa=extra.get("toa", False), synproxy=extra.get("synproxy", False)))
            if method == "fullnat":
                e.add_laddr(key, "10.1.0.1")
            rs = "10.1.0.11" if method == "fullnat" else "10.0.0.11"
            e.add_dest(key, DestSpec(rs, 80 if method == "fullnat" else port, fwd=method))
            e.set_fwd(key, rs, 80 if method == "fullnat" else port, FWD)
    return e


def _mutate(base: bytes, flips: list[tuple[int, int]], cut: int) -> bytes:
    b = bytearray(base)
    for pos, val in flips:
        b[pos % len(b)] = val
    return bytes(b[: max(0, len(b) - cut)])


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.lists(st.one_of(
    st.binary(max_size=120),
    st.builds(_mutate, st.sampled_from(SEEDS), st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)),
                                                        max_size=4), st.integers(0, 30)),
), min_size=1, max_size=12), st.integers(0, 5000))
def test_engines_survive_and_agree_on_hostile_bytes(packets: list[bytes], step_ms: int) -> None:
    c = _configure(CEngine(conn_max=256, hash_buckets=64, hash_seed=11))
    p = _configure(PyEngine(conn_max=256, hash_seed=11))
    now = 1000
    for pkt in packets:
        a, b = c.process(pkt, now), p.process(pkt, now)
        assert (a.verdict, a.reason, a.out, a.ifindex, a.l2hdr) == (b.verdict, b.reason, b.out, b.ifindex, b.l2hdr), pkt.hex()
        assert [x.__dict__ for x in c.timers(now)] == [x.__dict__ for x in p.timers(now)]
        now += step_ms
    assert c.counters() == p.counters()
