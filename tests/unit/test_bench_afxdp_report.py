"""bench/afxdp_report.py (figures, ratios, verdicts) and bench/latency.py (probe marking, matching)."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from scapy.all import IP, TCP, Ether, raw

from bench import afxdp_report as xr
from bench import latency


def _res(system: str, mode: str, traffic: str, rep: int, zl: float, us: float | None, p50: float | None = None,
         gen_limited: bool = False, sat: float | None = None) -> dict[str, Any]:
    return {"system": system, "mode": "route" if system == "kernel" else mode, "traffic": traffic, "rep": rep,
            "zero_loss_pps": zl, "generator_limited": gen_limited, "dut_us_per_pkt": us,
            "overload": {"rx_pps": zl, "offered_pps": zl, "dut_us_per_pkt": sat},
            "latency": {"p50": p50, "p99": p50, "lost": 0} if p50 else {},
            "loadavg": ["1.00", "1.00", "1.00"]}


def _data(results: list[dict[str, Any]], modes: tuple[str, ...] = ("dr",)) -> dict[str, Any]:
    return {"config": {"modes": list(modes), "traffic": ["est"], "command": "python -m bench afxdp-report --repeats 2",
                       "repeats": 2}, "results": results, "machine": {"cpus": 2}}


def test_ratios_are_taken_within_each_repetition() -> None:
    data = _data([
        _res("kernel", "dr", "est", 0, 900e3, 0.5, 20, sat=0.5), _res("c", "dr", "est", 0, 100e3, 8.0, 100, sat=5.0),
        _res("afxdp", "dr", "est", 0, 200e3, 4.0, 50, sat=2.5),
        _res("kernel", "dr", "est", 1, 900e3, 1.0, 20), _res("c", "dr", "est", 1, 300e3, 6.0, 100),
        _res("afxdp", "dr", "est", 1, 300e3, 2.0, 25),
    ])
    r = xr.ratios(data, "dr", "est")
    assert r["cpu_nfq_afxdp"]["values"] == [2.0, 3.0]
    assert r["cpu_kernel_afxdp"]["values"] == [0.125, 0.5]
    assert r["zl_afxdp_nfq"]["values"] == [2.0, 1.0]
    assert r["p50_afxdp_nfq"]["values"] == [0.5, 0.25]
    assert r["sat_nfq_afxdp"]["values"] == [2.0] and r["sat_kernel_afxdp"]["values"] == [0.2]


def test_missing_system_gives_no_ratio() -> None:
    r = xr.ratios(_data([_res("afxdp", "dr", "est", 0, 200e3, 4.0)]), "dr", "est")
    assert r["cpu_nfq_afxdp"]["n"] == 0 and r["zl_afxdp_kernel"]["n"] == 0


@pytest.mark.parametrize(("value", "verdict"), [(1.3, "met"), (1.0, "met"), (2.6, "missed by 2.0x (1.30 over)"),
                                                (None, "not measured")])
def test_judge_max(value: float | None, verdict: str) -> None:
    assert xr.judge_max(value, 1.3) == verdict


def test_judge_min() -> None:
    assert xr.judge_min(600e3, 500e3) == "met"
    assert xr.judge_min(600e3, 500e3, lower_bound=True).startswith("met (generator-limited")
    assert xr.judge_min(250e3, 500e3) == "missed by 2.0x"
    assert "generator" in xr.judge_min(250e3, 500e3, lower_bound=True)
    assert xr.judge_min(0.0, 500e3).startswith("missed (no zero-loss")


def test_targets_judge_the_afxdp_dr_established_rows() -> None:
    data = _data([_res("afxdp", "dr", "est", 0, 600e3, 1.2, sat=2.0), _res("afxdp", "dr", "est", 1, 700e3, 1.0, sat=3.2),
                  _res("afxdp", "fullnat", "est", 0, 1.0, 99.0)])
    rows = xr.targets(data)
    assert rows[0][2] == "at the zero-loss rate met; saturated missed by 2.0x (1.30 over)"
    assert "1.10 us" in rows[0][1] and "2.60 us" in rows[0][1]
    assert rows[1][2] == "met" and rows[1][1].startswith("650.0k") and "projected from the saturated CPU/pkt 385k" in rows[1][1]


def test_render_has_every_section_and_the_command() -> None:
    data = _data([_res("kernel", "dr", "est", 0, 900e3, 0.5, 20), _res("c", "dr", "est", 0, 100e3, 8.0, 100),
                  _res("afxdp", "dr", "est", 0, 200e3, 4.0, 50)])
    data["results"][2]["counters_after"] = {"afxdp": {"sockets": [{"packets": 10, "xmit_l2": 7, "xmit_xsk": 3,
                                                                   "batches": 2}]}}
    text = xr.render(data, "## Analysis\n\nwhy")
    for needle in ("## Targets", "## Figures", "## Ratios", "afxdp-report --repeats 2", "3 on the AF_XDP TX ring",
                   "7 through the AF_PACKET socket", "missed by 3.1x", "## Analysis"):
        assert needle in text, needle
    assert "| dr | est | lbd NFQUEUE | 100.0k (n=1) |" in text
    assert "7 through the AF_PACKET socket (one sendmsg each)" in text  # counters from before the batching
    data["results"][2]["counters_after"]["afxdp"]["sockets"][0].update(xmit_l2_calls=2, xmit_l2_waits=1)
    assert "7 through the AF_PACKET socket in 2 sendmmsg calls (3.5 a call, 1 waits for room)" in xr.render(data, "")


def test_native_label_says_where_its_xdp_work_ran() -> None:
    old = _res("afxdp-native", "dr", "est", 0, 400e3, 1.4)
    new = {**old, "napi_us_per_pkt": 0.8}
    assert "generator's CPU" in xr.label("afxdp-native", [old])
    assert "threaded NAPI on the DUT CPU" in xr.label("afxdp-native", [new])
    assert xr.label("afxdp", [old]) == "lbd AF_XDP"


def test_common_rate_rows_compare_every_system_at_one_load() -> None:
    def common(us: float, ipi_in: float) -> dict[str, Any]:
        return {"offered_pps": 60e3, "loss": 0.0, "dut_us_per_pkt": us, "softirq_us_per_pkt": us / 2,
                "ipi_in_per_pkt": ipi_in, "ipi_out_per_pkt": ipi_in / 2}
    data = _data([{**_res("kernel", "dr", "est", 0, 900e3, 0.5), "common": common(9.0, 0.4)},
                  {**_res("afxdp", "dr", "est", 0, 200e3, 4.0), "common": common(7.0, 0.3)}])
    rows = xr.common_rows(data)
    assert [r[2] for r in rows] == ["kernel forwarding (no lbd)", "lbd AF_XDP"]
    assert rows[0][5] == "9.00 (n=1)" and rows[1][9] == "0.30 (n=1)" and rows[1][10] == "0.15 (n=1)"
    assert xr.ratios(data, "dr", "est")["common_kernel_afxdp"]["values"] == [9.0 / 7.0]
    assert "## At a common offered rate" in xr.render(data)
    assert "## At a common offered rate" not in xr.render(_data([_res("afxdp", "dr", "est", 0, 200e3, 4.0)]))


def test_fmt_spread() -> None:
    assert xr.fmt_spread({"n": 0}) == "-"
    assert xr.fmt_spread({"n": 3, "median": 2.0, "min": 1.0, "max": 3.0}, 1, 2, "x") == "2.00x (1.00-3.00, n=3)"


# --------------------------------------------------------------------------- bench/latency.py


def _frame(sport: int = 20000) -> bytes:
    return raw(Ether(dst="02:00:00:00:00:01", src="02:00:00:00:00:02") / IP(src="10.0.0.50", dst="10.0.0.100")
               / TCP(sport=sport, dport=80, flags="A", seq=1000, ack=1))


def test_mark_frame_sets_seq_port_and_a_valid_checksum() -> None:
    out = latency.mark_frame(_frame(), 7, sport=30007)
    pkt = Ether(out)
    assert pkt[TCP].seq == latency.marked_seq(7) and pkt[TCP].sport == 30007
    chk = pkt[TCP].chksum
    del pkt[TCP].chksum
    assert Ether(raw(pkt))[TCP].chksum == chk
    assert latency.frame_seq(out) == 7


def test_frame_seq_reads_inside_ipip_and_ignores_unmarked() -> None:
    inner = raw(IP(src="10.0.0.50", dst="10.0.0.100") / TCP(sport=1, dport=80, seq=latency.marked_seq(42)))
    outer = raw(Ether() / IP(src="10.1.0.1", dst="10.1.0.11", proto=4)) + inner
    assert latency.frame_seq(outer) == 42
    assert latency.frame_seq(_frame()) is None
    assert latency.frame_seq(b"\x00" * 20) is None


def test_bpf_filter_offsets_match_the_parser() -> None:
    prog = latency.bpf_filter()
    assert prog[0][3] == latency.SEQ_OFFSET_PLAIN and prog[3][3] == latency.SEQ_OFFSET_IPIP
    plain = latency.mark_frame(_frame(), 5)
    assert struct.unpack_from("!I", plain, latency.SEQ_OFFSET_PLAIN)[0] >> 16 == latency.MAGIC
    # every jump lands inside the program, on a return
    for i, (code, jt, jf, _k) in enumerate(prog):
        if code == 0x15:
            assert prog[i + 1 + jt][0] in (0x06, 0x20) and prog[i + 1 + jf][0] in (0x06, 0x20)
    assert prog[-2] == (0x06, 0, 0, 0xFFFF) and prog[-1] == (0x06, 0, 0, 0)


def test_marked_seq_bounds() -> None:
    with pytest.raises(ValueError):
        latency.marked_seq(latency.MAX_PROBES)
    assert latency.probe_index(latency.marked_seq(0)) == 0
    assert latency.probe_index(1000) is None


def test_match_and_percentiles() -> None:
    tx = {i: 1_000_000 * i for i in range(100)}
    rx = {i: 1_000_000 * i + 1000 * (i + 1) for i in range(99)}  # probe 99 lost; latencies 1..99 us
    m = latency.match(tx, rx)
    assert m["sent"] == 100 and m["lost"] == 1 and m["n"] == 99
    assert m["p50"] == 50.0 and m["p99"] == 99.0 and m["max"] == 99.0
    assert latency.percentiles([])["p50"] is None


# --------------------------------------------------------------------------- the guest (bench/ab.py)


def _g(system: str, mode: str, rep: int, zl: float, us: float) -> dict[str, Any]:
    return {"system": system, "mode": mode, "rep": rep, "zero_loss_pps": zl, "dut_us_per_pkt": us,
            "generator_limited": False}


def test_guest_ratios_per_repetition_and_target() -> None:
    from bench.ab import guest_ratios

    res = [_g("ipvs", "route", 0, 100e3, 6.0), _g("lbd", "route", 0, 50e3, 24.0), _g("lbd-afxdp", "route", 0, 80e3, 8.0),
           _g("ipvs", "route", 1, 100e3, 8.0), _g("lbd", "route", 1, 40e3, 32.0), _g("lbd-afxdp", "route", 1, 90e3, 4.0)]
    r = guest_ratios(res)
    assert r["lbd/route"]["cpu_ipvs_over_lbd"]["values"] == [0.25, 0.25]
    assert r["lbd-afxdp/route"]["cpu_ipvs_over_lbd"]["values"] == [0.75, 2.0]
    assert r["lbd-afxdp/route"]["zero_loss_lbd_over_ipvs"]["values"] == [0.8, 0.9]
    row = xr.guest_target({"guest": {"pps": {"results": res}}})
    assert row[2] == "met" and "1.38x" in row[1]
    assert xr.guest_target(None)[2].startswith("not measured")
    text = "\n".join(xr.guest_section({"guest": {"pps": {"results": res}}}))
    assert "| route | est | lbd AF_XDP (generic XDP) | 85.0k (80.0-90.0, n=2) | no | - | 6.0 (4.0-8.0, n=2) |" in text


def test_guest_args_are_what_bench_ab_parses() -> None:
    import argparse

    from bench import ab

    g = xr.guest_args(argparse.Namespace(repeats=3, guest_timeout=1500.0))
    assert ab.guest_extra(g) == ["--afxdp", "--parts", "throughput", "--repeats", "3"]
    parsed = argparse.ArgumentParser()
    ab.add_args(parsed)
    ns = parsed.parse_args(g.argv)
    ab.finish_args(ns)
    assert (ns.afxdp, ns.parts, ns.repeats, ns.timeout) == (True, "throughput", 3, 1500.0)


def test_guest_targets_judge_each_afxdp_lbd_the_run_measured() -> None:
    """--afxdp-fast: the --xdp-fastpath lbd gets its own target row and ratios, next to the plain one's."""
    from bench.ab import guest_ratios

    res = [_g("ipvs", "route", 0, 100e3, 6.0), _g("lbd", "route", 0, 50e3, 24.0),
           _g("lbd-afxdp", "route", 0, 80e3, 12.0), _g("lbd-afxdp-fast", "route", 0, 100e3, 3.0)]
    r = guest_ratios(res)
    assert r["lbd-afxdp-fast/route"]["cpu_ipvs_over_lbd"]["values"] == [2.0]
    assert r["lbd-afxdp-fast/route"]["afxdp_over_nfqueue"]["cpu_nfqueue_over_afxdp"]["values"] == [8.0]
    rows = xr.guest_targets({"guest": {"pps": {"results": res}}})
    assert [row[2] for row in rows] == ["missed by 2.0x", "met"]
    assert "--xdp-fastpath" in rows[1][0] and "--xdp-fastpath" not in rows[0][0]
    assert [row[2] for row in xr.guest_targets(None)] == ["not measured (see 'The guest')"]
    assert "lbd AF_XDP --xdp-fastpath (generic XDP)" in "\n".join(xr.guest_section({"guest": {"pps": {"results": res}}}))


def test_guest_run_passes_afxdp_fast_through() -> None:
    import argparse

    from bench import ab

    ap = argparse.ArgumentParser()
    ab.add_args(ap)
    args = ap.parse_args(["--afxdp-fast", "--parts", "throughput"])
    assert ab.guest_extra(args)[:1] == ["--afxdp-fast"]
