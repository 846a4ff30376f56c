"""bench/routed_cost.py's pure parts: the CPU accounting, the softirq trace, the sink's counter, the
case steps and the verdicts (the measurement itself needs root and namespaces)."""

from __future__ import annotations

import statistics
from types import SimpleNamespace

import pytest

from bench import routed_cost as rc
from lb import ipsets as ips
from lb import iptlayout as iptl

STAT = """cpu  10 0 10 100 0 0 5 0 0 0
cpu0 1000 5 300 4000 10 0 200 0 0 0
cpu1 2000 0 100 3000 0 0 50 0 0 0
intr 1 2 3
"""


def test_parse_stat_and_softirqs() -> None:
    st = rc.parse_stat(STAT)
    assert st == {0: [1000, 5, 300, 4000, 10, 0, 200, 0], 1: [2000, 0, 100, 3000, 0, 0, 50, 0]}
    softirqs = "                    CPU0       CPU1\n          HI:          1          2\n      NET_RX:     300     44\n"
    assert rc.parse_net_rx(softirqs) == [300, 44]
    assert rc.parse_net_rx("") == []


def test_cpu_use_is_wall_minus_idle_and_per_packet_takes_out_user_time() -> None:
    hz = rc.USER_HZ
    before = [0, 0, 0, 0, 0, 0, 0, 0]
    after = [hz // 2, 0, 0, 3 * hz, hz // 2, 0, hz, 0]  # 0.5 s user, 3 s idle, 0.5 s iowait
    use = rc.cpu_use(before, after, 5.0)
    assert use["busy_s"] == pytest.approx(1.5) and use["user_s"] == pytest.approx(0.5)
    pp = rc.per_packet(use, 1_000_000)
    assert pp["dut_us"] == pytest.approx(1.5) and pp["dut_kernel_us"] == pytest.approx(1.0)
    assert rc.per_packet(use, 0) == {"dut_us": None, "dut_kernel_us": None}
    assert rc.cpu_use(before, [0, 0, 0, 10 * hz, 0, 0, 0, 0], 5.0)["busy_s"] == 0.0  # never negative


def test_softirq_time_pairs_exits_with_entries_per_cpu() -> None:
    trace = "\n".join([
        "# tracer: nop",
        "          <idle>-0       [001] ..s1.   100.000010: softirq_exit: vec=3 [action=NET_RX]",  # opened before
        "          <idle>-0       [001] ..s1.   100.000100: softirq_entry: vec=3 [action=NET_RX]",
        "          pktgen-7       [000] ..s1.   100.000150: softirq_entry: vec=3 [action=NET_RX]",
        "          <idle>-0       [001] ..s1.   100.000130: softirq_exit: vec=3 [action=NET_RX]",
        "          pktgen-7       [000] ..s1.   100.000160: softirq_exit: vec=3 [action=NET_RX]",
        "          <idle>-0       [001] ..s1.   100.000200: softirq_entry: vec=2 [action=TIMER]",
        "          <idle>-0       [001] ..s1.   100.000300: softirq_entry: vec=3 [action=NET_RX]",  # still open
    ])
    got = rc.softirq_time(trace)
    assert got[1]["count"] == 1 and got[1]["seconds"] == pytest.approx(30e-6)
    assert got[0]["count"] == 1 and got[0]["seconds"] == pytest.approx(10e-6)


def test_xdp_drops_sums_every_rx_queue() -> None:
    text = ("NIC statistics:\n     peer_ifindex: 3\n     rx_queue_0_xdp_packets: 9\n     rx_queue_0_xdp_drops: 7\n"
            "     rx_queue_1_xdp_drops: 5\n     tx_queue_0_xdp_xmit: 4\n")
    assert rc.xdp_drops(text) == 12


def test_summary_keeps_median_and_smallest_and_flags_lost_trials_and_verdicts_against_bare() -> None:
    trials = [
        {"case": "bare", "delivered": True, "dut_net_rx_us": 0.80},
        {"case": "bare", "delivered": True, "dut_net_rx_us": 0.78},
        {"case": "rules", "delivered": True, "dut_net_rx_us": 0.85},
        {"case": "rules", "delivered": False, "dut_net_rx_us": 0.10},  # lost packets: not a cost
        {"case": "lbd", "delivered": True, "dut_net_rx_us": 1.00},
        {"case": "nft-first", "delivered": True, "dut_net_rx_us": None},  # the trace lost events
    ]
    s = rc.summarize(trials, "dut_net_rx_us")
    assert s["bare"]["min"] == 0.78 and s["bare"]["median"] == pytest.approx(0.79)
    assert s["rules"]["values"] == [0.85] and s["rules"]["flagged"] == 1
    v = {x["case"]: x for x in rc.verdicts(s)}  # medians
    assert v["rules"]["ratio"] == pytest.approx(0.85 / 0.79) and v["rules"]["pass"]
    assert v["lbd"]["ratio"] == pytest.approx(1.00 / 0.79) and not v["lbd"]["pass"]
    assert {x["case"]: x["ratio"] for x in rc.verdicts(s, "min")}["rules"] == pytest.approx(0.85 / 0.78)
    assert v["nft-first"]["ratio"] is None and not v["nft-first"]["pass"]
    assert "bare" not in v


def test_paired_ratios_pair_cases_within_a_repetition_and_both_ratios_must_meet_the_target() -> None:
    def t(case: str, rep: int, us: float, delivered: bool = True) -> dict[str, object]:
        return {"case": case, "rep": rep, "delivered": delivered, "dut_net_rx_us": us}

    # two modes: the medians of bare and nft land on different ones, the pairs do not
    trials = [t("bare", 0, 1.2), t("nft", 0, 1.38), t("bare", 1, 1.4), t("nft", 1, 1.61),
              t("bare", 2, 1.4), t("nft", 2, 1.6), t("bare", 3, 1.2), t("nft", 3, 1.0, delivered=False)]
    paired = rc.paired_ratios(trials)
    assert paired == {"nft": pytest.approx(statistics.median([1.38 / 1.2, 1.61 / 1.4, 1.6 / 1.4]))}
    s = rc.summarize(trials, "dut_net_rx_us")
    (v,) = rc.verdicts(s, paired={"nft": 1.15})
    assert v["ratio"] == pytest.approx(1.6 / 1.3) and v["paired"] == 1.15 and not v["pass"]
    s["nft"]["median"] = 1.3 * 1.05
    (v,) = rc.verdicts(s, paired={"nft": 1.15})
    assert not v["pass"]  # the median ratio alone would meet it: the paired one does not
    (v,) = rc.verdicts(s, paired={"nft": 1.08})
    assert v["pass"]


def test_rotate_changes_the_order_every_repetition() -> None:
    cases = ["bare", "rules", "lbd"]
    assert [rc.rotate(cases, r) for r in range(4)] == [
        ["bare", "rules", "lbd"], ["rules", "lbd", "bare"], ["lbd", "bare", "rules"], ["bare", "rules", "lbd"]]
    assert rc.rotate([], 3) == []


def test_partial_steps_are_prefixes_of_lbds_ruleset() -> None:
    empty = rc.partial_lines("raw-empty")
    assert empty == [":LBD-Q0 - [0:0]", iptl.jump_rule(0)]
    assert rc.partial_lines("raw-comment")[1] == '-A PREROUTING -m comment --comment "lbd q0" -j LBD-Q0'
    go = rc.partial_lines("raw-go")
    assert go[:2] == empty and iptl.defrag_rule(0) in go and iptl.out_jump_rule(0) in go
    assert not any(line.startswith("-A LBD-Q0 ") for line in go)  # LBD-Q0 stays empty: routed packets return


def test_nft_first_script_mirrors_the_first_rule() -> None:
    script = rc.nft_first_script({"10.0.0.2", "10.0.0.1"}, set())
    assert "set addr { type ipv4_addr; elements = { 10.0.0.1, 10.0.0.2 } }" in script
    assert "set natrip { type ipv4_addr;  }" in script
    assert "ip daddr != @addr ip saddr != @natrip return;" in script
    assert "hook prerouting priority -300; jump q;" in script


def test_configuration_fills_every_set_the_first_rule_tests() -> None:
    bed = SimpleNamespace(vip="10.0.0.100", rs_addr="10.0.1.11")
    reqs = rc.config_requests(bed, 3)  # type: ignore[arg-type]
    assert [op for op, _ in reqs].count("add_service") == 4  # 2 fillers, the DR service, the NAT service
    el = rc.steering_of(reqs).elements()
    assert "10.0.0.100" in el[ips.ADDR] and rc.NAT_VIP in el[ips.ADDR]
    assert el[ips.NATRIP] == {"10.0.1.11"} and el[ips.NAT] == {f"10.0.1.11,tcp:{rc.NAT_PORT}"}


def test_report_judges_only_lbds_rules_and_lbd_and_shows_the_steps_as_ratios() -> None:
    def trial(case: str, us: float) -> dict[str, object]:
        return {"case": case, "delivered": True, "dut_net_rx_us": us, "dut_kernel_us": us, "raw_rules": 2,
                "net_rx_s": {"0": 1.0, "1": 0.5}}

    trials = [trial("bare", 0.8), trial("raw-empty", 0.88), trial("rules", 1.1), trial("lbd", 0.86)]
    s = rc.summarize(trials, "dut_net_rx_us")
    data = {"config": {"rate": 300000, "seconds": 5, "repeats": 1, "services": 1, "dut_cpu": 1, "gen_cpu": 0,
                       "load_before": [1.0], "load_after": [1.0]},
            "trials": trials, "summary": s, "summary_busy": rc.summarize(trials, "dut_kernel_us"),
            "verdicts": rc.verdicts(s)}
    targets: list[list[str]] = []
    lines = rc.report(data, targets)
    assert [(t[1], t[2]) for t in targets] == [("1.38x", "MISSED"), ("1.07x", "met")]
    assert targets[0][0].startswith("routed traffic, lbd's rules alone (--steering iptables):")
    assert targets[1][0].startswith("routed traffic, lbd --steering iptables:")
    assert any(line.startswith("| raw-empty | 2 | 0.880 | 1.10x |  |") for line in lines), lines
    assert any(line.startswith("| bare | 2 | 0.800 |  |") and line.endswith("| 1.00 / 0.50 |") for line in lines)


def test_a_sticky_case_runs_after_every_repetition_of_the_others() -> None:
    order = rc.schedule(["bare", "fib-rule", "nft-fwd"], 2)
    assert order == [(0, "bare"), (0, "nft-fwd"), (1, "nft-fwd"), (1, "bare"), (0, "fib-rule"), (1, "fib-rule")]
    assert rc.schedule(["bare", "lbd"], 2) == [(0, "bare"), (0, "lbd"), (1, "lbd"), (1, "bare")]
