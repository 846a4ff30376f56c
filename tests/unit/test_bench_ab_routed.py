"""The guest A/B's routed part (bench/ab_routed.py, --parts routed): the run order and which lbd each
block starts, the services (DR + NAT, that routed traffic does not hit), the per-repetition ratio to
the router with lossy trials left out, the rendering, and the options passed through from bench/ab.py."""

from __future__ import annotations

import argparse
import contextlib
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench import ab, ab_cpurate, ab_guest, ab_routed, pps, routed_cost
from bench import afxdp_report as xr


def _f(us: float, idle_ms: float | None = None, loss: float = 0.0, rate: float = 8000.0) -> dict[str, Any]:
    f = {"rate": rate, "seconds": 5.0, "offered_pps": rate, "rx_pps": rate * (1 - loss), "loss": loss,
         "pass": loss < pps.LOSS_MAX, "lossy": loss >= pps.LOSS_MAX, "dut_us_per_pkt": us,
         "dut_not_idle_us_per_pkt": us + 1.0, "dut_net_rx_us": us / 2}
    return f | ({"idle": {"dut_ms_per_s": idle_ms}} if idle_ms is not None else {})


def _r(system: str, rep: int, us: float, **kw: Any) -> dict[str, Any]:
    return {"system": system, "mode": ab_routed.MODE, "traffic": ab_routed.KIND, "rep": rep, "fixed_rate": _f(us, **kw)}


def test_plan_rotates_the_blocks_and_keeps_each_lbds_systems_together() -> None:
    runs = ab_routed.plan(2, ab_routed.SYSTEMS)
    rep0 = [b for r, b in runs if r == 0]
    assert rep0 == [("router",), ("ipvs",), ("ipvs-dr",), ("lbd-in", "lbd-in-dr"), ("lbd",)]
    assert [b for r, b in runs if r == 1] == rep0[1:] + rep0[:1]  # rotated: drift shared
    assert sorted(s for _, b in runs for s in b) == sorted(ab_routed.SYSTEMS * 2)
    only = ab_routed.plan(1, ["router", "lbd-in-dr"])
    assert only == [(0, ("router",)), (0, ("lbd-in-dr",))]


def test_systems_parse_keeps_the_router_and_refuses_unknown_names() -> None:
    assert ab_routed.parse_systems(None) == list(ab_routed.SYSTEMS)
    assert ab_routed.parse_systems("lbd,ipvs") == ["router", "ipvs", "lbd"]  # SYSTEMS order, router always
    with pytest.raises(ValueError, match="'ipvs-nat' is not one of"):
        ab_routed.parse_systems("ipvs-nat")


def test_rules_give_a_dr_service_and_a_nat_service_that_routed_traffic_misses() -> None:
    from lb.config import parse_config  # what lbd reads (and ipvsadm -R: the same file)

    reals = ["10.0.1.11", "10.0.1.12", "10.0.1.13"]
    both = parse_config(ab_routed.rules("10.0.0.100", reals, nat=True), "rules")
    assert [(s.spec.key.addr, s.spec.key.port) for s in both.services] == \
        [("10.0.0.100", pps.PORT), (ab_routed.NAT_VIP, ab_routed.NAT_PORT)]
    assert [{d.spec.fwd for d in s.dests} for s in both.services] == [{"route"}, {"masq"}]
    assert all(len(s.dests) == 3 for s in both.services)
    dr = parse_config(ab_routed.rules("10.0.0.100", reals, nat=False), "rules")
    assert [s.spec.key.port for s in dr.services] == [pps.PORT]
    assert [s for s in ab_routed.SYSTEMS if ab_routed.has_nat(s)] == ["ipvs", "lbd-in", "lbd"]
    assert ab_routed.LBD_EXTRA["lbd-in"] == ab_routed.LBD_EXTRA["lbd-in-dr"] == \
        ("--steering", "nftables", "--steer-hook", "input")
    assert ab_routed.LBD_EXTRA["lbd"] == ("--steering", "iptables")  # lbd-in*: lbd's default, named


RESULTS = [_r("router", 0, 4.0, idle_ms=8.0), _r("ipvs", 0, 4.4, idle_ms=8.0), _r("lbd", 0, 5.0, idle_ms=16.0),
           _r("router", 1, 5.0, idle_ms=8.0), _r("ipvs", 1, 5.0, idle_ms=8.0), _r("lbd", 1, 6.0, idle_ms=8.0, loss=0.01)]


def test_summary_pairs_each_repetition_with_its_router_and_leaves_lossy_ones_out() -> None:
    s = ab_routed.summary(RESULTS)
    assert list(s) == ["router", "ipvs", "lbd"]  # SYSTEMS order
    assert s["router"]["us_per_pkt"]["values"] == [4.0, 5.0]
    assert s["ipvs"]["over_router"]["values"] == pytest.approx([1.1, 1.0])
    assert s["ipvs"]["over_router"]["median"] == pytest.approx(1.05)
    assert s["lbd"]["over_router"]["values"] == pytest.approx([1.25])  # rep 2 lost 1 %: left out, named
    assert s["lbd"]["left_out"] == ["rep 2: lbd lost 1.00 %"]
    assert s["lbd"]["us_per_pkt"]["values"] == [5.0]
    assert s["lbd"]["per_rep"] == ["5.0", "6.0 LOSSY (lost 1.00 %)"]
    # idle 8 ms/s at 8k pps = 1 us/pkt; lbd's 16 ms/s = 2: per packet 3.0 / 3.4 / 3.0
    assert s["router"]["idle_us"]["values"] == pytest.approx([1.0, 1.0])
    assert s["ipvs"]["per_packet_over_router"]["values"] == pytest.approx([3.4 / 3.0, 1.0])
    assert s["lbd"]["per_packet_over_router"]["values"] == pytest.approx([1.0])
    assert s["ipvs"]["not_idle_us"]["values"] == [5.4, 6.0]
    assert s["ipvs"]["not_idle_over_router"]["values"] == pytest.approx([5.4 / 5.0, 1.0])
    assert s["lbd"]["not_idle_over_router"]["values"] == pytest.approx([6.0 / 5.0])  # lossy rep 2 left out
    assert s["router"]["net_rx_us"]["values"] == [2.0, 2.5]
    assert s["ipvs"]["net_rx_over_router"]["values"] == pytest.approx([1.1, 1.0])
    assert s["lbd"]["net_rx_over_router"]["values"] == pytest.approx([1.25])


def test_section_renders_each_system_with_its_paired_ratio_and_the_directors_state() -> None:
    ab_data = {"commit": "abc", "config": {"command": "python -m bench ab --parts routed"},
               "guest": {"kernel": "6.1.0-x", "wire": "virtio",
                         "routed": {"results": RESULTS, "rate": 8000.0, "seconds": 5.0, "ip_vs_loaded": True,
                                    "skipped": [{"system": "lbd-in", "rep": 0, "reason": "lbd did not start: x"}],
                                    "state": {"router": {"ipvs_services": 0, "nft_tables": [], "iptables_rules": 0},
                                              "ipvs": {"ipvs_services": 2, "nft_tables": [], "iptables_rules": 0}}}}}
    text = ab_routed.render(ab_data)
    rows = {ln.split(" | ")[0].strip("| "): ln for ln in text.splitlines() if ln.startswith("| ")}
    assert rows["router"].startswith("| router | no service, no lbd (ip_vs loaded) | 2.25 (2.00-2.50, n=2): 2.00 / 2.50 | 1 |")
    assert rows["ipvs"].count("1.05x (1.00-1.10, n=2): 1.10 / 1.00") == 2  # NET_RX and ticks
    assert "2.35 (2.20-2.50, n=2): 2.20 / 2.50" in rows["ipvs"]
    assert "1.25x (n=1): 1.25 (left out: rep 2: lbd lost 1.00 %)" in rows["lbd"]
    assert "DUT ticks us/pkt at 8k pps (5 s)" in text and "ip_vs module loaded" in text and "wire virtio" in text
    assert "- router: IPVS services 0, nft tables none, iptables rules 0" in text
    assert "- ipvs: IPVS services 2," in text
    assert "- skipped: lbd-in rep 1: lbd did not start: x" in text
    assert ab_routed.section({"guest": {}}) == []
    # next to the throughput part: bench/ab.py's report carries it too
    assert "## Routed traffic, not for a service" in xr.render_guest(ab_data)
    assert "## Routed traffic" not in xr.render_guest({"guest": {}})


def test_run_starts_one_lbd_per_lbd_block_and_none_for_the_router_or_ipvs(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The guest side with bench/pps.py's generator and the systems faked: every system measured once per
    repetition at --cpu-rate, an lbd running (and counted: bed.lbd_pid) only in lbd blocks, with its steering."""
    events: list[tuple[str, ...]] = []

    def director_exec(argv: list[str], check: bool = True) -> Any:
        events.append(("exec", *argv))
        return types.SimpleNamespace(stdout="")

    bed = types.SimpleNamespace(rs_addr="10.0.1.11", vip="10.0.0.100", dut_cpu=1, nice=-10, lbd_pid=None,
                                director=types.SimpleNamespace(exec=director_exec))
    monkeypatch.setattr(pps, "make_traffic", lambda *a, **k: types.SimpleNamespace(kind="est"))
    monkeypatch.setattr(pps, "functional_check", lambda *a, **k: None)

    def fake_measure(b: Any, tr: Any, rate: float, seconds: float, probe: Any = None) -> dict[str, Any]:
        events.append(("measure", str(b.lbd_pid), f"{rate:g}", f"{seconds:g}"))
        probe.start()
        return _f(4.0, idle_ms=8.0) | probe.stop({"rx": 40000})

    class FakeTracer:  # bench/routed_cost.py SoftirqTracer: NET_RX time per CPU over the window
        def __init__(self, cpus: set[int]) -> None:
            events.append(("tracer", *map(str, sorted(cpus))))

        def __enter__(self) -> FakeTracer:
            return self

        def __exit__(self, *exc: object) -> None:
            events.append(("tracer-off",))

        def start(self) -> None:
            pass

        def stop(self) -> tuple[dict[int, dict[str, float]], int]:
            return {1: {"seconds": 0.2, "count": 100}, 0: {"seconds": 9.0, "count": 1}}, 0

    monkeypatch.setattr(ab_cpurate, "measure", fake_measure)
    monkeypatch.setattr(routed_cost, "SoftirqTracer", FakeTracer)

    @contextlib.contextmanager
    def ipvs_system(director: Any, rules: str) -> Iterator[None]:
        events.append(("ipvs", str(rules.count("-A "))))
        yield None

    @contextlib.contextmanager
    def lbd_system(lbd: Any, rules: str, tool: str) -> Iterator[Any]:
        events.append(("lbd-rules", str(rules.count("-A ")), tool))
        yield lbd

    def start_lbd(director: Any, cpu: int | None = None, nice: int = 0, extra: tuple[str, ...] = ()) -> Any:
        events.append(("start", *extra))
        return types.SimpleNamespace(proc=types.SimpleNamespace(pid=4242))

    monkeypatch.setattr(ab_guest, "ipvs_system", ipvs_system)
    monkeypatch.setattr(ab_guest, "lbd_system", lbd_system)
    monkeypatch.setattr(ab_guest, "start_lbd", start_lbd)
    monkeypatch.setattr(ab_guest, "stop_lbd", lambda lbd: events.append(("stop",)))
    args = argparse.Namespace(repeats=1, cpu_rate=8000.0, cpu_seconds=0.5, lbd_tool="ipvsadm", out=tmp_path,
                              routed_systems=None)
    out: dict[str, Any] = {}
    ab_routed.run(out, args, bed, ["10.0.1.11", "10.0.1.12"], tmp_path)  # type: ignore[arg-type]
    rt = out["routed"]
    assert [r["system"] for r in rt["results"]] == ["router", "ipvs", "ipvs-dr", "lbd-in", "lbd-in-dr", "lbd"]
    assert not rt["skipped"] and set(rt["state"]) == set(ab_routed.SYSTEMS)
    assert [r["fixed_rate"]["dut_net_rx_us"] for r in rt["results"]] == [5.0] * 6  # the DUT CPU's 0.2 s / 40000
    steps = [e for e in events if e[0] != "exec"]
    assert steps == [
        ("tracer", "1"),  # on the DUT CPU, for the whole part
        ("measure", "None", "8000", "0.5"),  # router: no lbd process, nothing configured
        ("ipvs", "2"), ("measure", "None", "8000", "0.5"),
        ("ipvs", "1"), ("measure", "None", "8000", "0.5"),
        ("start", "--steering", "nftables", "--steer-hook", "input"),
        ("lbd-rules", "2", "ipvsadm"), ("measure", "4242", "8000", "0.5"),
        ("lbd-rules", "1", "ipvsadm"), ("measure", "4242", "8000", "0.5"), ("stop",),
        ("start", "--steering", "iptables"), ("lbd-rules", "2", "ipvsadm"), ("measure", "4242", "8000", "0.5"), ("stop",), ("tracer-off",)]
    assert ("exec", "nft", "delete", "table", "ip", "lbd-q0") in events  # after the nftables lbd
    assert bed.lbd_pid is None


def test_host_side_passes_the_routed_part_and_its_systems_and_checks_them_first() -> None:
    ap = argparse.ArgumentParser()
    ab.add_args(ap)
    args = ap.parse_args(["--parts", "routed", "--routed-systems", "lbd-in,ipvs"])
    args.quick = False
    ab.finish_args(args)
    extra = ab.guest_extra(args)
    assert extra[extra.index("--parts") + 1] == "routed"
    assert extra[extra.index("--routed-systems") + 1] == "router,ipvs,lbd-in"
    bad = ap.parse_args(["--parts", "throughput,rooted"])
    bad.quick = False
    with pytest.raises(ValueError, match="part 'rooted' is not one of functional, http, throughput, routed"):
        ab.finish_args(bad)


def test_guest_main_refuses_an_unknown_part(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(ab_guest, "run_all", lambda out, args: None)
    with pytest.raises(SystemExit):
        ab_guest.main(["--out", str(tmp_path), "--parts", "routed,bogus"])
    seen: list[argparse.Namespace] = []
    monkeypatch.setattr(ab_guest, "run_all", lambda out, args: seen.append(args))
    monkeypatch.setattr(ab_guest.subprocess, "run", lambda *a, **k: types.SimpleNamespace(stdout="", returncode=0))
    assert ab_guest.main(["--out", str(tmp_path), "--parts", "routed", "--routed-systems", "lbd"]) == 0
    assert (seen[0].parts, seen[0].routed_systems) == ("routed", "lbd")
