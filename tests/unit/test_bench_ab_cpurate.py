"""The guest A/B's fixed-rate CPU trial (bench/ab_cpurate.py, --cpu-rate/--cpu-seconds): recorded after
each search by bench/ab_guest.py's throughput with bench/pps.py's trial, passed through from bench/ab.py,
rendered next to today's columns, preferred by the guest verdict, and a lossy one flagged and left out."""

from __future__ import annotations

import argparse
import contextlib
import types
from pathlib import Path
from typing import Any

import pytest

from bench import ab, ab_cpurate, ab_guest, pps
from bench import afxdp_report as xr


def _fixed(us: float, loss: float = 0.0, rate: float = 8000.0, seconds: float = 5.0) -> dict[str, Any]:
    return {"rate": rate, "seconds": seconds, "offered_pps": rate, "rx_pps": rate * (1 - loss), "loss": loss,
            "pass": loss < pps.LOSS_MAX, "lossy": loss >= pps.LOSS_MAX, "dut_us_per_pkt": us}


def _g(system: str, rep: int, zl: float, us: float, fixed: dict[str, Any] | None = None) -> dict[str, Any]:
    r = {"system": system, "mode": "route", "rep": rep, "zero_loss_pps": zl, "dut_us_per_pkt": us,
         "generator_limited": False}
    return r | ({"fixed_rate": fixed} if fixed else {})


def _ab(res: list[dict[str, Any]]) -> dict[str, Any]:
    return {"guest": {"pps": {"results": res}}}


# Zero-loss-trial CPU says AF_XDP is dearer (IPVS/AF_XDP 0.5x); at the common rate it is cheaper (1.25x, 1.5x).
TODAY_ONLY = [_g("ipvs", 0, 13e3, 10.0), _g("lbd-afxdp-fast", 0, 15e3, 20.0),
              _g("ipvs", 1, 12e3, 10.0), _g("lbd-afxdp-fast", 1, 9e3, 20.0)]
WITH_FIXED = [_g("ipvs", 0, 13e3, 10.0, _fixed(10.0)), _g("lbd-afxdp-fast", 0, 15e3, 20.0, _fixed(8.0)),
              _g("ipvs", 1, 12e3, 10.0, _fixed(12.0)), _g("lbd-afxdp-fast", 1, 9e3, 20.0, _fixed(8.0))]


def test_report_without_fixed_rate_figures_is_as_before() -> None:
    text = xr.render_guest(_ab(TODAY_ONLY))
    assert "pps (" not in text and "LOSSY" not in text and "identical traffic" not in text
    assert "| mode | traffic | system | zero-loss pps | gen-limited | overload rx | CPU us/pkt |\n" in text
    assert xr.guest_target(_ab(TODAY_ONLY), "lbd-afxdp-fast")[1:] == [
        "IPVS/AF_XDP CPU per packet 0.50x (0.50-0.50, n=2)", "missed by 2.0x"]


def test_report_with_fixed_rate_figures_adds_columns_and_per_rep_ratios() -> None:
    text = xr.render_guest(_ab(WITH_FIXED))
    assert ("| mode | traffic | system | zero-loss pps | gen-limited | overload rx | CPU us/pkt | "
            "CPU us/pkt at 8k pps (5 s) |") in text
    assert "| route | est | kernel IPVS | 12.5k (12.0-13.0, n=2) | no | - | 10.0 (10.0-10.0, n=2) | 11.0 (10.0-12.0, n=2) |" \
        in text
    assert "| CPU kernel/lbd at 8k pps (5 s) | CPU kernel/lbd at 8k pps (5 s) per rep |" in text
    assert "| 1.38x (1.25-1.50, n=2) | 1.25 / 1.50 |" in text  # the ratio row's fixed-rate cells
    assert "| 2 | route | est | lbd-afxdp-fast | 9.0k | no | 0.0k | 20.0 |  | 8.0 |" in text  # every trial
    assert "CPU us/pkt at 8000 pps: after each system's search" in text


def test_verdict_uses_the_fixed_rate_figure_when_present() -> None:
    name, figure, verdict = xr.guest_target(_ab(WITH_FIXED), "lbd-afxdp-fast")
    assert figure == "IPVS/AF_XDP CPU per packet at 8k pps, 5 s windows, identical traffic 1.38x (1.25-1.50, n=2)"
    assert verdict == "met"  # today's figure alone (0.50x) would have missed it
    assert "--xdp-fastpath" in name


def test_a_lossy_fixed_rate_trial_is_flagged_and_left_out() -> None:
    res = [*WITH_FIXED[:3], _g("lbd-afxdp-fast", 1, 9e3, 20.0, _fixed(30.0, loss=0.02))]
    r = ab.guest_ratios(res)["lbd-afxdp-fast/route"]
    assert r["cpu_fixed_ipvs_over_lbd"]["values"] == [1.25]
    assert r["cpu_fixed_left_out"] == ["rep 2: lbd-afxdp-fast lost 2.00 %"]
    figure, verdict = xr.guest_target(_ab(res), "lbd-afxdp-fast")[1:]
    assert figure.startswith("IPVS/AF_XDP CPU per packet at 8k pps, 5 s windows, identical traffic 1.25x (n=1)")
    assert figure.endswith("left out (lost packets at the fixed rate): rep 2: lbd-afxdp-fast lost 2.00 %")
    assert verdict == "met"
    text = xr.render_guest(_ab(res))
    assert "| 30.0 LOSSY (lost 2.00 %) |" in text  # the trial itself, flagged
    assert "8.0 (n=1); 1 lossy left out" in text  # its system's figure: the clean trial only
    assert "1.25 (left out, lossy: rep 2: lbd-afxdp-fast lost 2.00 %)" in text
    # A loss below 0.1 % is zero loss (bench/pps.py LOSS_MAX): used.
    ok = [*WITH_FIXED[:3], _g("lbd-afxdp-fast", 1, 9e3, 20.0, _fixed(8.0, loss=0.0005))]
    assert ab.guest_ratios(ok)["lbd-afxdp-fast/route"]["cpu_fixed_ipvs_over_lbd"]["values"] == [1.25, 1.5]


def test_every_fixed_rate_repetition_lossy_falls_back_to_the_zero_loss_figure_and_says_so() -> None:
    res = [_g("ipvs", 0, 13e3, 10.0, _fixed(10.0)), _g("lbd-afxdp-fast", 0, 15e3, 20.0, _fixed(8.0, loss=0.01)),
           _g("ipvs", 1, 12e3, 10.0, {"rate": 8000.0, "seconds": 5.0, "error": "RuntimeError: pktgen failed"}),
           _g("lbd-afxdp-fast", 1, 9e3, 20.0, _fixed(8.0))]
    figure, verdict = xr.guest_target(_ab(res), "lbd-afxdp-fast")[1:]
    assert figure.startswith("IPVS/AF_XDP CPU per packet at each system's zero-loss rate (NOT the fixed rate")
    assert "0.50x (0.50-0.50, n=2)" in figure and "rep 1: lbd-afxdp-fast lost 1.00 %; rep 2: ipvs failed" in figure
    assert verdict == "missed by 2.0x"
    assert "| failed |" in xr.render_guest(_ab(res))
    short = _g("ipvs", 0, 13e3, 10.0, _fixed(10.0) | {"offered_pps": 6100.0})
    assert ab_cpurate.rep_cell(short) == "10.0 (offered only 6.1k)"  # the generator fell short: said


def test_measure_runs_one_paced_trial_and_records_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[float, float]] = []

    def fake_trial(bed: Any, tr: Any, rate: float, window: float) -> dict[str, Any]:
        calls.append((rate, window))
        return {"offered_pps": rate, "loss": 0.003, "pass": False, "dut_us_per_pkt": 9.0}

    monkeypatch.setattr(pps, "trial", fake_trial)
    f = ab_cpurate.measure(None, None, 8000.0, 5.0)  # type: ignore[arg-type]
    assert calls == [(8000.0, 5.0)] and f["lossy"] and (f["rate"], f["seconds"]) == (8000.0, 5.0)

    def broken(*_: Any) -> dict[str, Any]:
        raise RuntimeError("pktgen failed (1)")

    monkeypatch.setattr(pps, "trial", broken)
    assert ab_cpurate.measure(None, None, 8000.0, 5.0)["error"] == "RuntimeError: pktgen failed (1)"  # type: ignore[arg-type]


@pytest.mark.parametrize("rate", [8000.0, 0.0])
def test_guest_throughput_records_the_fixed_rate_trial_after_each_search(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, rate: float) -> None:
    """bench/ab_guest.py throughput with bench/pps.py's generator faked: every system's result gets
    r["fixed_rate"] from one trial at --cpu-rate for --cpu-seconds, after its search; --cpu-rate 0: none."""
    trials: list[tuple[float, float]] = []
    monkeypatch.setattr(pps, "make_traffic", lambda *a, **k: types.SimpleNamespace(kind="syn"))
    monkeypatch.setattr(pps, "functional_check", lambda *a, **k: None)
    monkeypatch.setattr(pps, "search", lambda *a: {"zero_loss_pps": 10e3, "generator_limited": False,
                                                   "dut_us_per_pkt": 10.0, "trials": []})
    def fake_trial(bed: Any, tr: Any, r: float, w: float) -> dict[str, Any]:
        trials.append((r, w))
        return {"offered_pps": r, "loss": 0.0, "pass": True, "dut_us_per_pkt": 7.0}

    monkeypatch.setattr(pps, "trial", fake_trial)
    monkeypatch.setattr(ab_guest, "ipvs_system", lambda *a: contextlib.nullcontext())
    monkeypatch.setattr(ab_guest, "lbd_system", lambda *a: contextlib.nullcontext())
    bed = types.SimpleNamespace(rs_addr="10.0.2.10", vip="10.0.9.1", laddrs=[], director=None, lbd_pid=None)
    args = argparse.Namespace(window=1.0, steps=2, modes=["route"], traffic=["syn"], repeats=1, profile=[],
                              lbd_tool="ipvsadm", afxdp=False, afxdp_fast=False, guest_wire="veth",
                              cpu_rate=rate, cpu_seconds=0.5, out=tmp_path)
    out: dict[str, Any] = {}
    lbd = types.SimpleNamespace(proc=None)
    ab_guest.throughput(out, args, bed, lbd, tmp_path)  # type: ignore[arg-type]
    res = out["pps"]["results"]
    assert [r["system"] for r in res] == ["kernel", "ipvs", "lbd"] and not out["pps"]["skipped"]
    if rate:
        assert trials == [(8000.0, 0.5)] * 3
        assert all(r["fixed_rate"]["dut_us_per_pkt"] == 7.0 and not r["fixed_rate"]["lossy"] for r in res)
        assert "CPU us/pkt at 8k pps (0.5 s)" in xr.render_guest({"guest": out})
    else:
        assert trials == [] and not any("fixed_rate" in r for r in res)


def test_host_side_passes_cpu_rate_and_seconds_to_the_guest(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    ap = argparse.ArgumentParser()
    ab.add_args(ap)
    assert "--cpu-rate" not in ab.guest_extra(ap.parse_args([]))  # the guest's defaults apply
    extra = ab.guest_extra(ap.parse_args(["--cpu-rate", "0", "--cpu-seconds", "2.5"]))
    assert extra[-4:] == ["--cpu-rate", "0", "--cpu-seconds", "2.5"]  # 0 (none) is passed, not dropped
    seen: list[argparse.Namespace] = []
    monkeypatch.setattr(ab_guest, "run_all", lambda out, args: seen.append(args))
    monkeypatch.setattr(ab_guest.subprocess, "run", lambda *a, **k: types.SimpleNamespace(stdout="", returncode=0))
    assert ab_guest.main(["--out", str(tmp_path), *extra]) == 0
    assert (seen[0].cpu_rate, seen[0].cpu_seconds) == (0.0, 2.5)
    ab_guest.main(["--out", str(tmp_path)])
    assert (seen[1].cpu_rate, seen[1].cpu_seconds) == (ab_cpurate.DEFAULT_RATE, ab_cpurate.DEFAULT_SECONDS)


def test_idle_window_counts_every_lbd_thread_and_softirq_per_second(monkeypatch: pytest.MonkeyPatch) -> None:
    ticks = iter([{"t1_user": 10, "t1_sys": 5, "t2_user": 1, "softirq": 100, "busy": 400},
                  {"t1_user": 14, "t1_sys": 6, "t2_user": 2, "softirq": 104, "busy": 420}])
    bed = types.SimpleNamespace(cpu_ticks=lambda: next(ticks))
    monkeypatch.setattr(ab_cpurate.time, "sleep", lambda s: None)
    idle = ab_cpurate.idle_window(bed, 2.0)  # type: ignore[arg-type]
    ms_per_tick = 1e3 / pps.CLK_TCK
    assert idle["lbd_ms_per_s"] == pytest.approx(6 * ms_per_tick / 2)
    assert idle["dut_ms_per_s"] == pytest.approx(10 * ms_per_tick / 2)  # threads + softirq, below busy


def test_fixed_split_takes_the_idle_cost_out_and_the_ratio_compares_what_is_left() -> None:
    def fixed(us: float, idle_ms: float) -> dict[str, Any]:
        return _fixed(us) | {"idle": {"seconds": 5.0, "dut_ms_per_s": idle_ms}}

    lbd = _g("lbd-afxdp-fast", 0, 17e3, 4.8, fixed(7.6, 20.0))  # 20 ms/s at 8 kpps = 2.5 us a packet
    ipvs = _g("ipvs", 0, 15e3, 7.6, fixed(5.5, 2.4))  # 0.3 us a packet
    assert ab_cpurate.fixed_split(lbd) == pytest.approx((2.5, 5.1))
    vals, left = ab_cpurate.pair_ratios([lbd, ipvs], "lbd-afxdp-fast", "ipvs", "route", "est", marginal=True)
    assert vals == [pytest.approx(5.2 / 5.1)] and left == []
    assert ab_cpurate.split_cell([lbd]).startswith("idle 2.5") and "per packet 5.1" in ab_cpurate.split_cell([lbd])
    assert ab_cpurate.fixed_split(_g("ipvs", 0, 15e3, 7.6, _fixed(5.5))) is None  # a run without idle windows
