"""bench scale (bench/scale/): its options, and the report's tables and target verdicts from a scale.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench import common, report, scale
from bench.__main__ import _parser


def _args(*argv: str) -> Any:
    args = _parser().parse_args(["scale", *argv])
    scale.finish_args(args)
    return args


def test_quick_defaults_and_sections() -> None:
    quick = _args("--quick")
    assert quick.section_list == list(scale.SECTIONS)
    assert quick.table_sizes == "1000,100000,1000000"
    assert quick.conn_sizes == "1000,200000"
    assert quick.overload_maxlens == "1024"
    full = _args("--sections", "table,flood")
    assert full.section_list == ["table", "flood"]
    assert full.table_sizes.endswith("4000000") and full.overload_maxlens == "1024,16384"
    assert (quick.overload_trials, full.overload_trials) == (2, 9)  # each trial after its own search


def test_unknown_section_is_refused_with_the_known_ones() -> None:
    with pytest.raises(SystemExit, match="unknown section.*nope.*known: table"):
        _args("--sections", "table,nope")


def _trial(offered: float, rx: float, queue_full: int = 0, guard: int = 0,
           zero_loss: float | None = None) -> dict[str, Any]:
    return {"offered_pps": offered, "rx_pps": rx, "tx": int(offered), "rx": int(rx), "zero_loss_pps": zero_loss,
            "drops": {"kernel_queue_dropped": queue_full, "kernel_user_dropped": 0, "lbd_refused": 0,
                      "elsewhere": 0, "recv_err": 0, "xmit_l2_err": 0, "guard": guard}}


def _scale_json() -> dict[str, Any]:
    table = [{"size": n, "entries": n, "buckets": b, "ns_per_pkt": ns, "bytes_per_entry": bpe}
             for n, b, ns, bpe in ((1000, 2048, 15.0, 364.0), (4_000_000, 4_194_304, 21.0, 88.4))]
    conns = [{"size": n, "entries": n, "buckets": 4_194_304, "zero_loss_pps": zl, "dut_us_per_pkt": us,
              "bytes_per_entry": bpe, "idle_cpu_share": 0.001, "fill_s": 1.0, "saved_after_s": 5.0}
             for n, zl, us, bpe in ((1024, 200_000.0, 5.0, None), (4_000_000, 150_000.0, 7.0, 120.0))]
    state = {"entries": 1_000_000, "full": {"cpu_s": 0.5, "bytes": 48_000_000},
             "incremental": {"cpu_s": 0.002, "bytes": 49_000}, "unchanged": {"cpu_s": 0.0001, "bytes": 0}}
    flood = {"flood_sent": 24000, "flood_pps": 3000, "table_full_before_clients": True, "during": 30,
             "during_ok": 27, "after": 10, "after_ok": 9, "early_drops": 12000, "table_entries": 5000,
             "table_max": 5000, "table_full_refused": 0}
    over = {"queue_maxlen": 1024, "guard": "on", "zero_loss_pps": 100_000.0, "generator_limited": False,
            "search_trials": [_trial(100_000, 100_000)],
            "overload_trials": [_trial(200_000, 104_000, 9_000, 87_000), _trial(199_000, 97_000, 95_000),
                                _trial(162_000, 81_810, 92_000, zero_loss=81_000)],
            "searches": [100_000, 100_000, 81_000]}
    return {"part": "scale", "config": {"command": "python -m bench scale"}, "sections": {
        "table": {"active": 1024, "passes": 1000, "points": table, "command": "harness table"},
        "fnat": {"syns": 1000, "accepted_instr": 1200.0, "refused_instr": 700.0, "ratio": 700 / 1200,
                 "command": "callgrind"},
        "statesave": {"points": [state], "save_every_s": 2.0},
        "conns": {"conn_max": 4_194_304, "points": conns, "window_s": 0.5, "steps": 4},
        "flood": {"conn_max": 5000, "flood_seconds": 8.0, "figures": flood, "errors": ["timed out"]},
        "overload": {"points": [over], "window_s": 0.6, "hold_s": 3.0,
                     "drop_floor": {"rate_pps": 100_000.0, "window_s": 2.0, "reps": 3,
                                    "us_per_drop": {"nft prerouting -301": [1.4, 1.6, 2.0], "xdp generic": [],
                                                    "xdp native": [4.0, 5.0, 5.5]}}},
    }}


def test_report_tables_and_verdicts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(common, "RESULTS", tmp_path / "results")
    run = tmp_path / "run"
    run.mkdir()
    (run / "scale.json").write_text(json.dumps(_scale_json()))
    text = report.write(run).read_text()
    lines = text.splitlines()
    assert any("table alone: per-packet cost" in line and "1.40x" in line and "MISSED" in line for line in lines)
    assert any("88.4 B" in line and "met" in line for line in lines)
    assert any("0.58x (700 vs 1200 instructions)" in line and "met" in line for line in lines)
    assert any("lbd: per-packet cost" in line and "1.40x" in line and "MISSED" in line for line in lines)
    assert any("lbd: resident memory" in line and "120 B" in line and "MISSED" in line for line in lines)
    assert any("state saves at 1,000,000" in line and "met" in line for line in lines)
    assert any("27/30 (90 %)" in line and "met" in line for line in lines)
    assert any("9/10" in line and "MISSED" in line for line in lines)
    # the third trial judged against its own search (81k), the two before against the point's (older runs)
    assert any("overload" in line and "1.01x (median of 3: 0.97, 1.01, 1.04" in line and "| met" in line
               for line in lines), text
    assert "| 1,024 | on | 100,000 | 200,000 (2.00x) | 104,000 | 1.04x | 87,000 | 9,000 | 0 | 0 | 0 |" in text
    assert "| 1,024 | on | 81,000 | 162,000 (2.00x) | 81,810 | 1.01x | 0 | 92,000 | 0 | 0 | 0 |" in text
    assert "Zero-loss searches, --queue-maxlen 1,024, guard on: 100,000, 100,000, 81,000 pps (the median" in text
    assert "`timed out`" in text  # failed requests are shown
    # the drop floor: x = 100k x 1.6 us = 0.16 -> (1 - 0.32) / (1 - 0.16) = 0.81x, in the table and the verdict
    assert "| nft prerouting -301 | 1.60 (1.40-2.00) | 0.81x |" in text and "| xdp generic | - | - |" in text
    assert "| xdp native | 5.00 (4.00-5.50) | 0.00x |" in text  # x = 0.5: the drops alone would take the CPU
    assert any("the most a shed at the guard's hook allows on this bed: 0.81x" in line for line in lines), text


def test_the_drop_floors_ceiling() -> None:
    from bench.scale import dropfloor

    assert dropfloor.ceiling(100_000, 0.0) == 1.0  # the NIC drops the excess: nothing lost
    assert dropfloor.ceiling(100_000, 1.6) == pytest.approx(0.68 / 0.84)
    assert dropfloor.ceiling(100_000, 5.0) == 0.0  # the drops alone take the CPU
    assert dropfloor.ceiling(100_000, 20.0) == 0.0
    assert dropfloor.guard_ceiling(None, 100_000) is None
    assert dropfloor.guard_ceiling({"us_per_drop": {"nft prerouting -301": [1.0, 3.0, 2.0]}}, 100_000) == \
        pytest.approx(dropfloor.ceiling(100_000, 2.0))


def test_skipped_and_failed_sections_say_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(common, "RESULTS", tmp_path / "results")
    run = tmp_path / "run"
    run.mkdir()
    part = {"part": "scale", "config": {}, "sections": {"conns": {"skipped": "needs root (network namespaces)"},
                                                        "fnat": {"error": "RuntimeError: no valgrind"}}}
    (run / "scale.json").write_text(json.dumps(part))
    text = report.write(run).read_text()
    assert "Skipped: needs root (network namespaces)." in text
    assert "Failed: `RuntimeError: no valgrind`" in text
    assert "## Targets" not in text  # nothing measured, nothing judged


def test_sections_needing_namespaces_are_skipped_without_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scale.os, "geteuid", lambda: 1000)
    args = _args("--sections", "conns,flood,overload")
    args.argv = []
    out = scale.run(args)
    assert {name: data["skipped"] for name, data in out["sections"].items()} == dict.fromkeys(
        ("conns", "flood", "overload"), "needs root (network namespaces)")


def _services_json() -> dict[str, Any]:
    curve = {"what": "harness --svcs K", "rows": [
        {"requested": 1, "services": 23, "dr_est_ack": 286.0, "dr_syn_new": 860.0},
        {"requested": 10000, "services": 10000, "dr_est_ack": 286.0, "dr_syn_new": 1247.0}]}

    def fig(pps: float, us: float) -> dict[str, Any]:
        return {"zero_loss_pps": pps, "dut_us_per_pkt": us, "searches": [pps]}

    sizes = [{"services": n, "svc": fig(pps, us), "routed": fig(300_000.0, 3.0), "routed_rules_only": fig(300_000.0, 3.0),
              "raw_rules": 6, "lbd_idle_cpu_pct": 0.3, "add_service_ms": 2.0, "del_service_ms": 2.0}
             for n, pps, us in ((1, 200_000.0, 5.0), (10000, 190_000.0, 5.2))]
    data = {"config": {"sizes": [1, 10000], "wire": "direct", "repeats": 1}, "instructions": curve,
            "baseline": fig(300_000.0, 3.0), "sizes": sizes}
    from bench import steer_scale  # noqa: PLC0415

    data["verdicts"] = steer_scale.verdicts(data)
    return data


def test_services_report_has_the_instruction_curve_and_judges_it(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(common, "RESULTS", tmp_path / "results")
    run = tmp_path / "run"
    run.mkdir()
    (run / "scale.json").write_text(json.dumps({"part": "scale", "config": {},
                                                "sections": {"services": _services_json()}}))
    text = report.write(run).read_text()
    lines = text.splitlines()
    assert "| 10,000 | 286.0 | 1247.0 |" in lines
    assert "On the wire (direct wiring, bench/wire.py):" in lines
    assert any("instructions per packet, established DR" in line and "1.00x" in line and "met" in line
               for line in lines), text
    assert any("instructions per packet, new DR connection" in line and "1.45x" in line and "MISSED" in line
               for line in lines), text
    assert any("svc: pps at N / pps at 1 service" in line and "1.05x" in line and "| met" in line for line in lines)


def test_services_section_defaults_to_the_direct_wire() -> None:
    args = _args("--sections", "services")
    assert args.svc_wire == "direct" and args.svc_instr
    assert _args("--svc-wire", "bridge", "--no-svc-instr").svc_wire == "bridge"


def test_the_harness_leaves_out_the_adapters_the_makefile_leaves_out() -> None:
    """bench's harness build (common.native_sources) and the Makefile's CORE_SRCS name the same core:
    a file one links and the other does not broke the table and FULLNAT sections once (natrx.c)."""
    makefile = (Path(__file__).resolve().parents[2] / "Makefile").read_text()
    line = next(ln for ln in makefile.splitlines() if ln.startswith("CORE_SRCS :="))
    left_out = {word.rsplit("/", 1)[-1] for word in line.split(",", 1)[0].split() if word.endswith(".c")}
    assert left_out == set(common.ADAPTER_SOURCES), line
