"""lb.estimator against ip_vs_est.c's arithmetic, with synthetic counter sequences (no clocks)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lb.estimator import Estimator, Rates
from lb.model import Stats


def counters(conns: int = 0, inpkts: int = 0, outpkts: int = 0, inbytes: int = 0, outbytes: int = 0) -> Stats:
    return Stats(conns=conns, inpkts=inpkts, outpkts=outpkts, inbytes=inbytes, outbytes=outbytes)


def kernel_tick(avg: int, delta: int, shift: int) -> int:
    """estimation_timer for one counter, transcribed: rate = delta << shift; avg += (rate - avg) >> 2."""
    rate = delta << shift
    return avg + ((rate - avg) >> 2)


def test_first_ticks_by_hand() -> None:
    est: Estimator[str] = Estimator()
    # 100 connections in the first 2 s interval: rate = 100 << 9 = 51200 (50 cps, scaled 2^10).
    # avg = 0 + (51200 - 0) >> 2 = 12800; read = (12800 + 0x1FF) >> 10 = 12 (13311 < 13 * 1024).
    est.tick({"s": counters(conns=100)})
    assert est.read("s").cps == 12
    # Second interval, same 100: avg = 12800 + (51200 - 12800) >> 2 = 22400; read = (22400 + 511) >> 10 = 22.
    est.tick({"s": counters(conns=200)})
    assert est.read("s").cps == 22
    # Bytes are scaled 2^5: 6400 bytes in 2 s = 3200 B/s; rate = 6400 << 4 = 102400; avg = 25600;
    # read = (25600 + 0xF) >> 5 = 800.
    est2: Estimator[str] = Estimator()
    est2.tick({"d": counters(inbytes=6400)})
    assert est2.read("d").inbps == 800


def test_constant_rate_converges_to_the_true_rate() -> None:
    est: Estimator[str] = Estimator()
    for tick in range(1, 61):  # 2 minutes at 37 conn/s, 1234 pkt/s in, 617 out, 1.5 MB/s in, 80 kB/s out
        est.tick({"s": counters(conns=74 * tick, inpkts=2468 * tick, outpkts=1234 * tick,
                                inbytes=3_000_000 * tick, outbytes=160_000 * tick)})
    assert est.read("s") == Rates(cps=37, inpps=1234, outpps=617, inbps=1_500_000, outbps=80_000)


def test_rate_decays_after_traffic_stops() -> None:
    est: Estimator[str] = Estimator()
    for tick in range(1, 31):
        est.tick({"s": counters(conns=200 * tick)})
    assert est.read("s").cps == 100
    seen = []
    for _ in range(40):
        est.tick({"s": counters(conns=200 * 30)})
        seen.append(est.read("s").cps)
    assert seen == sorted(seen, reverse=True)  # monotone decay, by the factor 3/4 each tick
    assert seen[0] == 75
    assert seen[-1] == 0


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 10**9), min_size=1, max_size=50))
def test_matches_the_kernel_transcription(deltas: list[int]) -> None:
    est: Estimator[str] = Estimator()
    total, avg_pps, avg_bps = 0, 0, 0
    for delta in deltas:
        total += delta
        avg_pps = kernel_tick(avg_pps, delta, 9)
        avg_bps = kernel_tick(avg_bps, delta, 4)
        est.tick({"x": counters(inpkts=total, outbytes=total)})
        rates = est.read("x")
        assert rates.inpps == (avg_pps + 0x1FF) >> 10
        assert rates.outbps == (avg_bps + 0xF) >> 5


def test_negative_difference_shifts_arithmetically() -> None:
    # A falling rate makes (rate - avg) negative: s64 >> 2 rounds towards -infinity in the kernel
    # (arithmetic shift). 3 packets then nothing: avg = 384, then 384 + (-384 >> 2) = 288.
    assert kernel_tick(kernel_tick(0, 3, 9), 0, 9) == 288
    est: Estimator[str] = Estimator()
    est.tick({"x": counters(inpkts=3)})
    est.tick({"x": counters(inpkts=3)})
    assert est.read("x").inpps == (288 + 0x1FF) >> 10 == 0
    # -1 >> 2 is -1, not 0: an average of 1 decays to 0 and stays there.
    assert kernel_tick(1, 0, 9) == 0


def test_zero_restarts_from_the_current_counters() -> None:
    est: Estimator[str] = Estimator()
    for tick in range(1, 11):
        est.tick({"s": counters(conns=1000 * tick)})
    assert est.read("s").cps > 0
    est.zero("s", counters(conns=10_000))
    assert est.read("s") == Rates()
    est.tick({"s": counters(conns=10_000)})
    assert est.read("s") == Rates()  # no spike: the zero took the counters as reference


def test_counters_going_backwards_give_no_spike_and_gone_keys_are_forgotten() -> None:
    est: Estimator[str] = Estimator()
    est.tick({"a": counters(conns=1000), "b": counters(conns=10)})
    est.tick({"a": counters(conns=5), "b": counters(conns=20)})  # a's engine reset its counters
    assert est.read("a").cps == (kernel_tick(kernel_tick(0, 1000, 9), 0, 9) + 0x1FF) >> 10
    assert len(est) == 2
    est.tick({"b": counters(conns=30)})
    assert len(est) == 1
    assert est.read("a") == Rates()


@pytest.mark.parametrize("field", ["cps", "inpps", "outpps", "inbps", "outbps"])
def test_each_field_reads_its_own_counter(field: str) -> None:
    source = {"cps": "conns", "inpps": "inpkts", "outpps": "outpkts", "inbps": "inbytes", "outbps": "outbytes"}[field]
    est: Estimator[str] = Estimator()
    for tick in range(1, 41):
        est.tick({"k": counters(**{source: 2000 * tick})})
    assert est.read("k").to_json() == {f: (1000 if f == field else 0) for f in Rates().to_json()}
