"""bench/ab_guest.py's pure logic for the guest throughput matrix (issue 19 item 3): which modes and
traffic kinds, which kernel row each lbd mode is measured next to, what configures lbd, the run
order, and the ratios bench/ab.py takes within each repetition."""

from __future__ import annotations

import argparse
from typing import Any

import pytest

from bench import ab, ab_guest
from bench import afxdp_report as xr


def test_modes_and_traffic_parse_with_aliases_and_refuse_unknown_words() -> None:
    assert ab_guest.parse_choice("dr,tunnel,fullnat", ab_guest.MODES, "mode", ab_guest.MODE_ALIASES) == \
        ["route", "tunnel", "fullnat"]
    assert ab_guest.parse_choice("route, route,ipip", ab_guest.MODES, "mode", ab_guest.MODE_ALIASES) == \
        ["route", "tunnel"]
    assert ab_guest.parse_choice("syn,est", ab_guest.TRAFFIC, "traffic") == ["syn", "est"]
    with pytest.raises(ValueError, match="'masq' is not one of route, tunnel, fullnat"):
        ab_guest.parse_choice("route,masq", ab_guest.MODES, "mode", ab_guest.MODE_ALIASES)
    with pytest.raises(ValueError, match="no traffic given"):
        ab_guest.parse_choice(",", ab_guest.TRAFFIC, "traffic")


def test_fullnat_is_measured_next_to_ipvs_nat_and_configured_through_lbds_parser() -> None:
    assert [ab_guest.reference_system(m) for m in ab_guest.MODES] == ["ipvs", "ipvs", "ipvs-nat"]
    assert ab_guest.ipvs_fwd("ipvs-nat", "fullnat") == "masq"
    assert ab_guest.ipvs_fwd("ipvs", "tunnel") == "tunnel"
    assert ab_guest.lbd_tool_for("fullnat", "ipvsadm") == "lbadm"  # Debian's ipvsadm has no -b / -P -z
    assert ab_guest.lbd_tool_for("route", "ipvsadm") == "ipvsadm"


def test_fullnat_rules_name_the_local_addresses_and_lbd_reads_them() -> None:
    from lb.config import parse_config  # what lbd's --config reload parses

    text = ab_guest.rules_text("10.0.0.100", "rr", [("10.0.1.11", 1)], "fullnat", port=80,
                               laddrs=("10.0.1.200", "10.0.1.201"))
    assert text == ("-A -t 10.0.0.100:80 -s rr\n"
                    "-P -t 10.0.0.100:80 -z 10.0.1.200\n-P -t 10.0.0.100:80 -z 10.0.1.201\n"
                    "-a -t 10.0.0.100:80 -r 10.0.1.11:80 -b -w 1\n")
    cfg = parse_config(text, "rules")
    [svc] = cfg.services
    assert svc.laddrs == ("10.0.1.200", "10.0.1.201")
    assert [d.spec.fwd for d in svc.dests] == ["fullnat"]
    masq = ab_guest.rules_text("10.0.0.100", "rr", [("10.0.1.11", 1)], "masq", port=80)
    assert masq.splitlines()[1].endswith("-m -w 1")


def test_plan_runs_the_router_once_per_traffic_and_each_mode_next_to_its_kernel_row() -> None:
    runs = ab_guest.plan(2, ["route", "fullnat"], ["est", "syn"])
    rep0 = [r[1:] for r in runs if r[0] == 0]
    assert rep0 == [("kernel", "route", "est"), ("ipvs", "route", "est"), ("lbd", "route", "est"),
                    ("ipvs-nat", "fullnat", "est"), ("lbd", "fullnat", "est"),
                    ("kernel", "route", "syn"), ("ipvs", "route", "syn"), ("lbd", "route", "syn"),
                    ("ipvs-nat", "fullnat", "syn"), ("lbd", "fullnat", "syn")]
    assert [r[1:] for r in runs if r[0] == 1] == rep0


def _g(system: str, mode: str, rep: int, zl: float, us: float, traffic: str | None = None) -> dict[str, Any]:
    r = {"system": system, "mode": mode, "rep": rep, "zero_loss_pps": zl, "dut_us_per_pkt": us,
         "generator_limited": False}
    if traffic:
        r["traffic"] = traffic
    return r


def test_ratios_per_traffic_with_the_nat_reference_for_fullnat() -> None:
    res = [_g("ipvs-nat", "fullnat", 0, 40e3, 10.0, "syn"), _g("lbd", "fullnat", 0, 20e3, 40.0, "syn"),
           _g("lbd-afxdp", "fullnat", 0, 30e3, 20.0, "syn"),
           _g("ipvs", "route", 0, 40e3, 10.0), _g("lbd-afxdp", "route", 0, 40e3, 5.0, "est"),
           _g("ipvs", "route", 0, 99e3, 1.0, "syn")]  # syn: no lbd row, no ratio
    r = ab.guest_ratios(res)
    assert set(r) == {"lbd/fullnat/syn", "lbd-afxdp/fullnat/syn", "lbd-afxdp/route"}
    assert r["lbd/fullnat/syn"]["reference"] == "ipvs-nat"
    assert r["lbd/fullnat/syn"]["cpu_ipvs_over_lbd"]["values"] == [0.25]
    x = r["lbd-afxdp/fullnat/syn"]["afxdp_over_nfqueue"]
    assert x["zero_loss"]["values"] == [1.5] and x["cpu_nfqueue_over_afxdp"]["values"] == [2.0]
    assert r["lbd-afxdp/route"]["cpu_ipvs_over_lbd"]["values"] == [2.0]  # "traffic" absent = est
    text = "\n".join(xr.guest_section({"guest": {"pps": {"results": res}}}))
    assert "| fullnat | syn | kernel IPVS NAT (-m): nearest kernel reference, not FULLNAT | 40.0k" in text
    assert ("| lbd-afxdp/fullnat/syn | kernel IPVS NAT (-m): nearest kernel reference, not FULLNAT | 0.75x (n=1) | 0.50x (n=1) | 0.50 "
            "| 1.50x (n=1) | 2.00x (n=1) | 2.00 |") in text
    md = xr.render_guest({"guest": {"pps": {"results": res}}, "config": {"command": "python -m bench ab X"}})
    assert "python -m bench ab X" in md and "## Every trial (per repetition)" in md
    assert xr.guest_target({"guest": {"pps": {"results": res}}})[2] == "met"


def test_host_side_passes_modes_traffic_and_steps_to_the_guest_and_checks_them_first() -> None:
    ap = argparse.ArgumentParser()
    ab.add_args(ap)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(["--afxdp", "--parts", "throughput", "--modes", "dr,ipip,fullnat", "--traffic", "est,syn",
                          "--steps", "4", "--repeats", "2"])
    ab.finish_args(args)
    assert ab.guest_extra(args) == ["--afxdp", "--parts", "throughput", "--repeats", "2", "--modes",
                                    "route,tunnel,fullnat", "--traffic", "est,syn", "--steps", "4"]
    bad = ap.parse_args(["--modes", "dr,masq"])
    with pytest.raises(ValueError, match="masq"):
        ab.finish_args(bad)
