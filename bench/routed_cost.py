"""What traffic routed through the director (not for a service) costs the director, at a FIXED rate.

    python -m bench.routed_cost [--routed-rate 300000] [--routed-seconds 5] [--routed-repeats 3]
                                [--routed-services 1] [--routed-cases bare,rules,lbd]
                                [--routed-rules-from REV] [--routed-sink xdp|rs1] [--out FILE.json]

also the `routed` section of `python -m bench scale` (bench/scale/__init__.py).

Issue 15 item 1: routed traffic through a director running lbd must cost within 10 % of the
same director without lbd. bench/steer_scale.py's zero-loss search cannot say it: on this
machine the generator (~1 Mpps) limits routed traffic before the director does, so it compares
two lower bounds. Here the load is offered at one fixed rate, well below both systems' limits,
and what is compared is the director CPU's time per delivered packet.

Topology: bench/pps.py's Bed (client -> director -> rs1, direct veth wiring, RPS: the director's
lan interface received on the DUT CPU, rs1's on the generator's). Traffic: ACKs of 1024 flows
from the client to rs1's own address (routed by the director's kernel; rs1 counts and drops).

Where the work runs (measured with `perf record -C <cpu> -g`, results file of 2026-12-05): the
director's receive and forward path (ip_rcv, ip_forward, ip_finish_output2, veth_xmit towards
rs1) runs on the DUT CPU; the generator's CPU carries pktgen, rs1's receive, and the IPIs that RPS
sends (a VM exit each: native_write_msr, the largest item in that CPU's profile). The earlier
tick-based accounting (/proc/stat softirq and busy ticks, HZ=250 without IRQ time accounting)
misses most of the DUT CPU's short softirq bursts on an otherwise idle CPU: a sampling error,
not misplaced work. So the DUT CPU's time here is wall time minus its idle time: /proc/stat's
idle field comes from the NOHZ idle clock (interrupts and softirqs excluded, exact to its 10 ms
unit), not from ticks.

Cases, alternated within each repetition (the order rotates, so drift is shared):
- `bare`: no lbd, no rules.
- `rules`: lbd's raw rules and ip sets (lb.iptables.RuleManager of this tree) as lbd installs
  them for the configuration below, without an lbd process: the per-packet cost of the steering.
- `rules@REV` (`--routed-rules-from REV`): the same with lb/iptables.py of git revision REV (e.g. the
  layout before a change), the sets unchanged: before/after in one run.
- `lbd`: a running C lbd (pinned to the DUT CPU) with the configuration and `--steering iptables`
  (the rules above): adds its control plane.
- `lbd-nft`: lbd with `--steering nftables --steer-hook prerouting` (its table's base chain at
  prerouting: every routed packet meets it). `lbd-nft-in`: lbd's default, `--steer-hook input`
  (kernel IPVS's placement: input, and forward while NAT real servers exist, so here routed packets
  meet the forward chain's first rule); `lbd-nft-in-dr`: the same without the NAT service (no hook
  of lbd's on the routed path).
- Probes, no lbd (nft tables of the bench's own, to split a cost): `nft-hook` (an empty base chain
  at prerouting), `nft-defrag` (the reassembly hook alone), `nft-first` / `nft-full` (the first
  rule; plus the reassembly rule), `nft-fwd` (input + forward chains as `lbd-nft-in` has them),
  `nft-fwd-empty` (an empty forward base chain), `nft-fwd-accept|cmp|mark|fast` (one rule in it);
  `fib-rule` (one policy-routing rule: fib_rule()).

Configuration (`--routed-services N`): the measured DR service VIP:80 -> rs1, N-1 filler services
(bench/steer_scale.filler), and one NAT service 10.250.255.1:8080 -> rs1:8080, so that every
set the rules test (the NAT ones too) holds something.

Per trial: `--routed-rate` pps for `--routed-seconds` from the generator, everything delivered (< 0.1 % loss,
or the trial is flagged), then per packet: `dut_us` = DUT CPU busy time / delivered packets, and
`dut_kernel_us` = the same minus the tick-sampled user time on that CPU (lbd's control plane, or
other load of the machine): what the kernel spends, which is where routed packets are handled.
The DUT CPU's NET_RX softirq time is traced too (irq:softirq_entry/exit, vec NET_RX, in a tracefs
instance of our own): `dut_net_rx_us`, the figure compared, free of other processes' time. Other load
on the DUT CPU still moves it, both ways: a busier CPU gathers more packets per softirq run, which
lowers the per-packet cost. So the figure kept per case is the median of the repetitions, with all
shown (and the smallest). Target: `rules` and `lbd` within 1.10x of `bare`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench import common, pps, steer_scale
from bench.common import Lbd, LbdError, log
from lb.nftlayout import FAST_SET_SIZE  # the fixed-size hash lbd declares natrip as
from lb.testbed.topology import Topology

TITLE = "Traffic routed through the director, not for a service, at a fixed rate (namespaces)"
NEEDS_ROOT = True
TARGET_RATIO = 1.10
# issue 15 item 1: lbd's rules, lbd running with each steering, against no lbd
TARGET_CASES = ("rules", "lbd", "lbd-nft", "lbd-nft-in", "lbd-nft-in-dr", "lbd-nft-in-ingress")
# What each target case is, in the verdict line: which steering, so a reader of the targets alone
# sees which rows are lbd's default (its nftables table at the input hook) and which the options'.
CASE_LABELS = {"rules": "lbd's rules alone (--steering iptables)",
               "lbd": "lbd --steering iptables",
               "lbd-nft": "lbd --steering nftables --steer-hook prerouting",
               "lbd-nft-in": "lbd --nat-replies forward (nftables, input hook), a NAT service",
               "lbd-nft-in-dr": "lbd, default steering (nftables, input hook), no NAT service",
               "lbd-nft-in-ingress": "lbd, default steering (nftables, input hook, NAT replies at ingress), a NAT service"}
DEFAULT_CASES = "bare,rules,lbd,lbd-nft,lbd-nft-in,lbd-nft-in-dr,lbd-nft-in-ingress"
NFT_CASES = ("lbd-nft", "lbd-nft-in", "lbd-nft-in-dr", "lbd-nft-in-ingress")
USER_HZ = os.sysconf("SC_CLK_TCK")
NAT_VIP = "10.250.255.1"
NAT_PORT = 8080
QUEUE = 0
PARTIAL = ("raw-empty", "raw-comment", "raw-go")  # steps towards the ruleset (partial_lines)


# --------------------------------------------------------------------------- pure accounting


def parse_stat(text: str) -> dict[int, list[int]]:
    """/proc/stat per-CPU lines -> {cpu: [user, nice, system, idle, iowait, irq, softirq, steal]}."""
    out = {}
    for line in text.splitlines():
        f = line.split()
        if f and f[0].startswith("cpu") and f[0][3:].isdigit():
            out[int(f[0][3:])] = [int(x) for x in f[1:9]]
    return out


def parse_net_rx(text: str) -> list[int]:
    """/proc/softirqs: NET_RX softirqs run, per CPU."""
    for line in text.splitlines():
        f = line.split()
        if f and f[0] == "NET_RX:":
            return [int(x) for x in f[1:]]
    return []


def cpu_use(before: list[int], after: list[int], wall_s: float) -> dict[str, float]:
    """One CPU's use over `wall_s` seconds: `busy_s` = wall minus idle and iowait (the NOHZ idle
    clock: exact but for its unit), `user_s` = user + nice ticks (sampled), `softirq_s` the sampled
    softirq ticks (shown only: a tick-sampled figure, see the module doc)."""
    d = [a - b for a, b in zip(after, before, strict=True)]
    idle_s = (d[3] + d[4]) / USER_HZ
    return {"busy_s": max(0.0, wall_s - idle_s), "user_s": (d[0] + d[1]) / USER_HZ,
            "softirq_ticks_s": d[6] / USER_HZ}


def per_packet(use: dict[str, float], packets: int) -> dict[str, float | None]:
    if packets <= 0:
        return {"dut_us": None, "dut_kernel_us": None}
    return {"dut_us": use["busy_s"] * 1e6 / packets,
            "dut_kernel_us": max(0.0, use["busy_s"] - use["user_s"]) * 1e6 / packets}


def summarize(trials: list[dict[str, Any]], key: str = "dut_kernel_us") -> dict[str, dict[str, Any]]:
    """Per case: the smallest and the median of `key` over its delivered trials, and all of them."""
    out: dict[str, dict[str, Any]] = {}
    for t in trials:
        row = out.setdefault(t["case"], {"values": [], "flagged": 0})
        if t.get("delivered") and t.get(key) is not None:
            row["values"].append(t[key])
        else:
            row["flagged"] += 1
    for row in out.values():
        v = row["values"]
        row["min"] = min(v) if v else None
        row["median"] = statistics.median(v) if v else None
    return out


def paired_ratios(trials: list[dict[str, Any]], key: str = "dut_net_rx_us") -> dict[str, float]:
    """Per case: the median over repetitions of case / bare within the same repetition (the cases
    alternate within one, so drift between repetitions cancels). The figures are bimodal here
    (runs settle near one of two per-packet costs), and a ratio of two medians can land on
    different modes: this one pairs neighbours instead."""
    by_rep: dict[Any, dict[str, float]] = {}
    for t in trials:
        if t.get("delivered") and t.get(key):
            by_rep.setdefault(t.get("rep"), {})[t["case"]] = t[key]
    ratios: dict[str, list[float]] = {}
    for row in by_rep.values():
        if "bare" in row:
            for case, v in row.items():
                if case != "bare":
                    ratios.setdefault(case, []).append(v / row["bare"])
    return {case: statistics.median(v) for case, v in ratios.items()}


def verdicts(summary: dict[str, dict[str, Any]], key: str = "median",
             paired: dict[str, float] | None = None) -> list[dict[str, Any]]:
    """Every case against `bare`: ratio of `key` (the median by default), the paired ratio
    (paired_ratios) where given, and whether both are <= TARGET_RATIO."""
    base = (summary.get("bare") or {}).get(key)
    out = []
    for case, row in summary.items():
        if case == "bare":
            continue
        r = (row[key] / base) if base and row.get(key) is not None else None
        p = (paired or {}).get(case)
        worst = None if r is None else max(r, p) if p is not None else r
        out.append({"case": case, "ratio": r, "paired": p, "pass": worst is not None and worst <= TARGET_RATIO})
    return out


def softirq_time(trace: str) -> dict[int, dict[str, float]]:
    """Per CPU: seconds spent in NET_RX softirqs and how many ran, from a tracefs listing of
    irq:softirq_entry/exit (vec=3) events, each exit paired with the entry before it on that CPU
    (an unpaired event at either end of the window is skipped)."""
    open_at: dict[int, float] = {}
    out: dict[int, dict[str, float]] = {}
    for line in trace.splitlines():
        if "softirq_" not in line or "vec=3" not in line:
            continue
        try:
            head, rest = line.split("] ", 1)
            cpu = int(head.rsplit("[", 1)[1])
            stamp = float(rest.split(":", 1)[0].split()[-1])
        except (IndexError, ValueError):
            continue
        if "softirq_entry:" in rest:
            open_at[cpu] = stamp
        elif "softirq_exit:" in rest and cpu in open_at:
            row = out.setdefault(cpu, {"seconds": 0.0, "count": 0})
            row["seconds"] += stamp - open_at.pop(cpu)
            row["count"] += 1
    return out


def rotate(cases: list[str], rep: int) -> list[str]:
    """The cases in the order of repetition `rep`: rotated by one each time."""
    k = rep % len(cases) if cases else 0
    return cases[k:] + cases[:k]


# Cases whose set-up the kernel never undoes in that namespace: a policy-routing rule, even deleted,
# leaves fib_has_custom_rules set and the local and main tables split (net/ipv4/fib_rules.c
# fib4_rule_delete), so every later route lookup walks the rules. They run after every
# repetition of the other cases, never between them.
STICKY_CASES = ("fib-rule",)


def schedule(cases: list[str], repeats: int) -> list[tuple[int, str]]:
    """(repetition, case) in the order measured: the other cases alternated (rotate), then the sticky ones."""
    plain = [c for c in cases if c not in STICKY_CASES]
    sticky = [c for c in cases if c in STICKY_CASES]
    return ([(rep, c) for rep in range(repeats) for c in rotate(plain, rep)]
            + [(rep, c) for c in sticky for rep in range(repeats)])


# --------------------------------------------------------------------------- configuration


def config_requests(bed: pps.Bed, services: int, nat: bool = True) -> list[tuple[str, dict[str, Any]]]:
    """The requests building the configuration (module doc), for lbd and for lb.director alike;
    `nat`=False leaves the NAT service out (case lbd-nft-in-dr)."""
    reqs: list[tuple[str, dict[str, Any]]] = [("add_service", steer_scale.filler(i, bed.vip))
                                              for i in range(services - 1)]
    svc = {"proto": "tcp", "addr": bed.vip, "port": pps.PORT}
    nat_svc = {"proto": "tcp", "addr": NAT_VIP, "port": NAT_PORT}
    reqs += [("add_service", {**svc, "sched": "rr"}),
             ("add_dest", {"service": svc, "dest": {"addr": bed.rs_addr, "port": pps.PORT, "fwd": "route", "weight": 1}})]
    if nat:
        reqs += [("add_service", {**nat_svc, "sched": "rr"}),
                 ("add_dest", {"service": nat_svc, "dest": {"addr": bed.rs_addr, "port": NAT_PORT, "fwd": "masq",
                                                            "weight": 1}})]
    return reqs


def steering_of(reqs: list[tuple[str, dict[str, Any]]]) -> Any:
    """The lb.ipsets.Steering lbd computes for `reqs` (lb.director on the Python engine)."""
    from lb.director import Director
    from lb.pyengine import PyEngine

    d = Director(PyEngine(conn_max=16), rules=None, resolver=None)
    for op, args in reqs:
        if op == "add_dest":
            args = {**args, "dest": {"u_threshold": 0, "l_threshold": 0, **args["dest"]}}
        d.handle(op, args)
    return d.steering()


def iptables_module(rev: str | None) -> Any:
    """lb.iptables, or the lb/iptables.py of git revision `rev` loaded beside it (the sets, lb.ipsets,
    are this tree's; so is the rules' text, lb.iptlayout, for a revision that imports it: it was part
    of lb/iptables.py until the two were split)."""
    import lb.iptables

    if not rev:
        return lb.iptables
    src = subprocess.run(["git", "-C", str(common.REPO), "show", f"{rev}:lb/iptables.py"], capture_output=True,
                         text=True, check=True).stdout
    mod = types.ModuleType(f"lb_iptables_at_{rev}")
    sys.modules[mod.__name__] = mod  # dataclasses look their module up
    exec(compile(src, f"{rev}:lb/iptables.py", "exec"), mod.__dict__)
    return mod


@contextlib.contextmanager
def rules_only(bed: pps.Bed, module: Any, steering: Any, iptables: str = "iptables") -> Iterator[None]:
    """lbd's rules and sets, no lbd; `iptables`: the command (iptables-legacy: x_tables instead of
    nf_tables; the legacy raw table, once used, stays registered in the namespace until it goes)."""
    m = module.RuleManager(QUEUE, iptables=iptables, netns=bed.director.netns)
    try:
        m.setup()
        m.sync(steering)
        yield
    finally:
        m.teardown()
        common.flush_iptables(bed.director)
        if iptables != "iptables":
            for table in ("raw", "mangle"):
                bed.director.exec([iptables, "-t", table, "-F"], check=False)
                bed.director.exec([iptables, "-t", table, "-X"], check=False)


def partial_lines(case: str) -> list[str]:
    """Restore lines of a step towards lbd's ruleset (this tree's text), to see what each part costs:
    `raw-empty`: the raw PREROUTING jump to an empty LBD-Q<N> (the table and one jump);
    `raw-comment`: the same with the jump's `-m comment "lbd q<N>"` of earlier lbd's (an xtables
    match under iptables-nft 1.8.9);
    `raw-go`: that, plus LBD-Q<N>-GO (CT --notrack, NFQUEUE, the defrag rule: turns on reassembly)
    and LBD-Q<N>-OUT with its jump, which routed packets never enter."""
    import lb.iptlayout as iptl

    if case == "raw-comment":
        return [f":{iptl.chain_name(QUEUE)} - [0:0]",
                f'-A {iptl.HOOK_CHAIN} -m comment --comment "{iptl.jump_comment(QUEUE)}" -j {iptl.chain_name(QUEUE)}']
    lines = [f":{iptl.chain_name(QUEUE)} - [0:0]", iptl.jump_rule(QUEUE)]
    if case == "raw-go":
        lines += [f":{iptl.go_chain_name(QUEUE)} - [0:0]", f":{iptl.out_chain_name(QUEUE)} - [0:0]",
                  *iptl.go_rules(QUEUE, iptl.queue_target(QUEUE, None)), *iptl.out_rules(QUEUE), iptl.out_jump_rule(QUEUE)]
    return lines


@contextlib.contextmanager
def partial_rules(bed: pps.Bed, case: str) -> Iterator[None]:
    import lb.iptlayout as iptl

    try:
        bed.director.exec(["iptables-restore", "-w", "5", "--noflush"], input=iptl.restore_script(partial_lines(case)))
        yield
    finally:
        common.flush_iptables(bed.director)


@contextlib.contextmanager
def first_rule_only(bed: pps.Bed, steering: Any) -> Iterator[None]:
    """`raw-first`: lbd's sets, filled, and of LBD-Q<N> only its first rule (what routed traffic meets)."""
    import lb.iptables as ipt
    import lb.iptlayout as iptl

    m = ipt.RuleManager(QUEUE, netns=bed.director.netns)
    try:
        m.sets.create()
        m.sets.sync(steering)
        bed.director.exec(["iptables-restore", "-w", "5", "--noflush"], input=iptl.restore_script(
            [f":{iptl.chain_name(QUEUE)} - [0:0]", iptl.jump_rule(QUEUE), iptl.chain_rules(QUEUE)[0]]))
        yield
    finally:
        common.flush_iptables(bed.director)


NFT_TABLE = "lbdprobe"


def _nft_probe_script(addrs: set[str], natrip: set[str], chains: str, natrip_size: str = "") -> str:
    """A table of the bench's own holding lbd's two pre-filter sets, filled, and `chains`
    (`natrip_size`: e.g. " size 65536;", a fixed-size hash as lbd declares it)."""
    def elems(v: set[str]) -> str:
        return f"elements = {{ {', '.join(sorted(v))} }}" if v else ""

    return (f"table ip {NFT_TABLE} {{\n"
            f"  set addr {{ type ipv4_addr; {elems(addrs)} }}\n"
            f"  set natrip {{ type ipv4_addr;{natrip_size} {elems(natrip)} }}\n"
            f"{chains}}}\n")


def nft_first_script(addrs: set[str], natrip: set[str]) -> str:
    """`nft-first`: raw-first in native nftables (no xtables match, no rule counters), same structure:
    a base chain at raw's priority jumping to a chain whose one rule tests both sets."""
    return _nft_probe_script(addrs, natrip, "  chain q { ip daddr != @addr ip saddr != @natrip return; }\n"
                                            "  chain pre { type filter hook prerouting priority -300; jump q; }\n")


def nft_full_script(addrs: set[str], natrip: set[str]) -> str:
    """`nft-full`: what a native nftables steering layer costs a routed packet: the first rule in the
    base chain itself (no jump), and a never-reached `tproxy` rule that turns on the reassembly hook,
    as lb.nftsteer's does (nft's `socket` expression does not); the queue verdict is an accept here,
    never reached by routed traffic. Runs before 2026-12-05 22:30 had a `socket transparent` rule,
    so no reassembly hook (bench/results/2026-12-05-nftsteer-routed.md)."""
    return _nft_probe_script(addrs, natrip, "  chain go { notrack; accept; meta l4proto tcp tproxy to 127.0.0.1:1; }\n"
                                            "  chain pre { type filter hook prerouting priority -300;\n"
                                            "    ip daddr != @addr ip saddr != @natrip return; goto go; }\n")


def nft_hook_script(addrs: set[str], natrip: set[str]) -> str:
    """`nft-hook`: an empty base chain at raw's priority: what hooking prerouting alone costs."""
    return _nft_probe_script(addrs, natrip, "  chain pre { type filter hook prerouting priority -300; }\n")


def nft_defrag_script(addrs: set[str], natrip: set[str]) -> str:
    """`nft-defrag`: no base chain; a never-reached `tproxy` rule, so only the reassembly hook."""
    return _nft_probe_script(addrs, natrip, "  chain go { meta l4proto tcp tproxy to 127.0.0.1:1; }\n")


def nft_fwd_script(addrs: set[str], natrip: set[str]) -> str:
    """`nft-fwd`: what steering at local-in and forward would cost a routed packet: a base chain at
    forward testing the NAT real servers' set (replies), an input chain routed traffic never meets."""
    return _nft_probe_script(addrs, natrip,
                             "  chain lin { type filter hook input priority 99; ip daddr != @addr return; accept; }\n"
                             "  chain lfwd { type filter hook forward priority 99; ip saddr != @natrip return; accept; }\n")


def _fwd_probe(rules: str, natrip_size: str = "") -> Any:
    """A forward base chain holding `rules`: to split what `nft-fwd`'s hook and its one rule cost."""
    def script(addrs: set[str], natrip: set[str]) -> str:
        return _nft_probe_script(addrs, natrip, f"  chain lfwd {{ type filter hook forward priority 99; {rules}}}\n",
                                 natrip_size)
    return script


NFT_FWD_PROBES = {
    "nft-fwd-empty": _fwd_probe(""),  # the hook alone
    "nft-fwd-accept": _fwd_probe("accept; "),  # a rule that is only a verdict
    "nft-fwd-cmp": _fwd_probe("ip saddr != 10.255.255.254 return; accept; "),  # a payload load and a compare
    "nft-fwd-mark": _fwd_probe("meta mark != 0x4c420001 return; accept; "),  # a meta load and a compare
    "nft-fwd-fast": _fwd_probe("ip saddr != @natrip return; accept; ", f" size {FAST_SET_SIZE};"),  # lbd's set
}

def nft_ingress_script(device: str) -> Any:
    """`nft-ingress`: lbd's netdev chain of --nat-replies ingress (its first rule, on lbd's fixed-size
    natrip set) bound to the interface the routed traffic ARRIVES on: what a packet from the real
    servers' side pays that is not a NAT reply (lbd binds its chain to those interfaces only; routed
    traffic from clients meets nothing)."""
    def script(addrs: set[str], natrip: set[str]) -> str:
        el = f"elements = {{ {', '.join(sorted(natrip))} }}" if natrip else ""
        return (f"table netdev {NFT_TABLE} {{\n"
                f"  set natrip {{ type ipv4_addr; size {FAST_SET_SIZE}; {el} }}\n"
                f"  chain rs {{ type filter hook ingress device \"{device}\" priority -500;\n"
                f"    ip saddr != @natrip return; fib daddr type local return; drop; }}\n}}\n")
    return script


NFT_PROBES = {**NFT_FWD_PROBES, "nft-first": nft_first_script, "nft-full": nft_full_script, "nft-hook": nft_hook_script,
              "nft-defrag": nft_defrag_script, "nft-fwd": nft_fwd_script}


FIB_MARK, FIB_TABLE = "0x4c42fffe", "4242"


@contextlib.contextmanager
def fib_rule(bed: pps.Bed) -> Iterator[None]:
    """`fib-rule`: one policy-routing rule (fwmark -> a table whose default is local), as a
    forward-hook-free NAT-reply path would need (replies marked on the real servers' side only,
    then delivered to the input hook): what the rule costs every routed packet's route lookup
    (with any rule of its own the kernel walks the rules instead of its fast path)."""
    d = bed.director
    try:
        d.ip("route", "add", "local", "0.0.0.0/0", "dev", "lo", "table", FIB_TABLE)
        d.ip("rule", "add", "fwmark", FIB_MARK, "lookup", FIB_TABLE, "priority", "100")
        yield
    finally:
        d.exec(["ip", "rule", "del", "fwmark", FIB_MARK, "lookup", FIB_TABLE, "priority", "100"], check=False)
        d.exec(["ip", "route", "flush", "table", FIB_TABLE], check=False)


@contextlib.contextmanager
def nft_first(bed: pps.Bed, steering: Any, nft: list[str], case: str = "nft-first") -> Iterator[None]:
    from lb import ipsets as ips

    el = steering.elements()
    family = "netdev" if case == "nft-ingress" else "ip"
    make = nft_ingress_script(bed.director.iface("lan").ifname) if case == "nft-ingress" else NFT_PROBES[case]
    script = make(el[ips.ADDR], el[ips.NATRIP])
    try:
        bed.director.exec([*nft, "-f", "-"], input=script)
        yield
    finally:
        bed.director.exec([*nft, "delete", "table", family, NFT_TABLE], check=False)


@contextlib.contextmanager
def running_lbd(bed: pps.Bed, reqs: list[tuple[str, dict[str, Any]]], dut_cpu: int | None,
                nft_dir: str | None = None, hook: str = "prerouting", nat_replies: str | None = None) -> Iterator[Lbd]:
    """lbd running with the configuration; with `nft_dir` (a directory holding `nft`, "" for PATH's)
    lbd steers with --steering nftables (case lbd-nft), at `hook` (--steer-hook: lbd-nft-in), taking
    NAT replies as `nat_replies` says (--nat-replies forward: lbd-nft-in; None: lbd's default)."""
    nft = nft_dir is not None
    steer = ["--steering", "nftables", "--steer-hook", hook] + (["--nat-replies", nat_replies] if nat_replies else [])
    lbd = Lbd(bed.director, "c", cpu=dut_cpu, conn_max=pps.CONN_MAX_C, nice=bed.nice,
              extra=steer if nft else ["--steering", "iptables"],
              env={"PATH": f"{nft_dir}:{os.environ.get('PATH', '')}"} if nft_dir else None)
    try:
        lbd.start()
        for i in range(0, len(reqs), steer_scale.BATCH):
            lbd.request("batch", {"requests": [{"op": o, "args": a} for o, a in reqs[i:i + steer_scale.BATCH]]},
                        timeout=120.0)
        lbd.wait_resolved(timeout=60.0)
        yield lbd
    finally:
        lbd.stop()
        common.flush_iptables(bed.director)
        if nft_dir is not None:
            nft_cmd = os.path.join(nft_dir, "nft") if nft_dir else "nft"
            bed.director.exec([nft_cmd, "delete", "table", "ip", f"lbd-q{QUEUE}"], check=False)
            bed.director.exec([nft_cmd, "delete", "table", "netdev", f"lbd-q{QUEUE}"], check=False)
            bed.director.exec(["ip", "link", "del", f"lbnr{QUEUE}"], check=False)
        lbd.cleanup()


# --------------------------------------------------------------------------- the sink


def build_xdp_drop() -> Path:
    """bench/native/xdp_drop.bpf.c compiled (clang -target bpf) into bench/.build, if stale."""
    src, out = common.BENCH / "native" / "xdp_drop.bpf.c", common.BUILD / "xdp_drop.bpf.o"
    if not out.exists() or out.stat().st_mtime < src.stat().st_mtime:
        common.BUILD.mkdir(parents=True, exist_ok=True)
        arch = subprocess.run(["gcc", "-dumpmachine"], capture_output=True, text=True, check=True).stdout.strip()
        subprocess.run(["clang", "-O2", "-g", "-target", "bpf", "-Wall", "-Werror", f"-I/usr/include/{arch}", "-c",
                        str(src), "-o", str(out)], check=True, capture_output=True, text=True)
    return out


def xdp_drops(ethtool_s: str) -> int:
    """Frames a veth's XDP program dropped: the sum of its rx_queue_<n>_xdp_drops (`ethtool -S`)."""
    total = 0
    for line in ethtool_s.splitlines():
        name, _, value = line.strip().partition(":")
        if name.startswith("rx_queue_") and name.endswith("_xdp_drops"):
            total += int(value)
    return total


class SinkBed(pps.Bed):
    """The Bed whose rs1 drops routed traffic in XDP (`sink="xdp"`, bench/native/xdp_drop.bpf.c) on
    its veth: the director's veth_xmit hands each frame to rs1's NAPI on the DUT CPU itself, which
    drops it at once, instead of queueing it to rs1's backlog on the generator's CPU, which costs
    the DUT CPU an IPI (a VM exit here) per softirq run: ~12 us each, most of the DUT's time at
    300 kpps (module doc). Delivered = rs1's xdp_drops. `sink="rs1"`: the plain Bed (rs1's receive
    on the generator's CPU through RPS, counted by its raw DROP rules)."""

    def __init__(self, topo: Topology, gen_cpu: int, dut_cpu: int, sink: str) -> None:
        super().__init__(topo, gen_cpu, dut_cpu, wiring="direct")
        self.sink = sink
        if sink == "xdp":
            # rs1 now answers nothing, ARP included: the director's entry for it must not age out
            back = self.director.iface("back").ifname
            self.director.ip("neigh", "replace", self.rs_addr, "lladdr", self.rs.iface("back").mac, "dev", back,
                             "nud", "permanent")
            self.rs.ip("link", "set", "dev", self.rs.iface("back").ifname, "xdpdrv", "obj", str(build_xdp_drop()),
                       "sec", "xdp")

    def rx_count(self) -> int:
        if self.sink != "xdp":
            return super().rx_count()
        return xdp_drops(self.rs.exec(["ethtool", "-S", self.rs.iface("back").ifname]).stdout)


# --------------------------------------------------------------------------- trials

TRACEFS = Path("/sys/kernel/tracing")


class SoftirqTracer:
    """NET_RX softirq entry/exit on the two CPUs, in a tracefs instance of our own (its own buffer:
    nothing another user of tracing sees changes); removed on exit."""

    def __init__(self, cpus: set[int], buffer_kb: int = 65536) -> None:
        self.dir = TRACEFS / "instances" / f"lbB-routed-{os.getpid()}"
        self.cpus = cpus
        self.buffer_kb = buffer_kb

    def __enter__(self) -> SoftirqTracer:
        self._mounted = False
        if not (TRACEFS / "instances").is_dir():  # a new machine: tracefs not mounted yet
            subprocess.run(["mount", "-t", "tracefs", "nodev", str(TRACEFS)], check=True, capture_output=True)
            self._mounted = True
        self.dir.mkdir()
        self._w("tracing_on", "0")
        self._w("tracing_cpumask", f"{sum(1 << c for c in self.cpus):x}")
        self._w("buffer_size_kb", str(self.buffer_kb))
        self._w("trace_clock", "mono")
        for ev in ("softirq_entry", "softirq_exit"):
            self._w(f"events/irq/{ev}/filter", "vec == 3")
            self._w(f"events/irq/{ev}/enable", "1")
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(OSError):
            self._w("tracing_on", "0")
        with contextlib.suppress(OSError):
            self.dir.rmdir()
        if self._mounted:
            subprocess.run(["umount", str(TRACEFS)], check=False, capture_output=True)

    def _w(self, name: str, value: str) -> None:
        (self.dir / name).write_text(value + "\n")

    def start(self) -> None:
        self._w("trace", "")  # clears the buffer
        self._w("tracing_on", "1")

    def stop(self) -> tuple[dict[int, dict[str, float]], int]:
        """(softirq_time of the window, events the buffer lost)."""
        self._w("tracing_on", "0")
        lost = 0
        for cpu in self.cpus:
            with contextlib.suppress(OSError, ValueError):
                for line in (self.dir / "per_cpu" / f"cpu{cpu}" / "stats").read_text().splitlines():
                    if line.startswith("overrun:"):
                        lost += int(line.split()[1])
        return softirq_time((self.dir / "trace").read_text()), lost



def fixed_trial(bed: pps.Bed, tr: pps.Traffic, rate: float, seconds: float, gen_cpu: int, dut_cpu: int,
                tracer: SoftirqTracer) -> dict[str, Any]:
    """Offer `rate` for `seconds`; the director's CPU per delivered packet (module doc)."""
    count = int(rate * seconds)
    rx0, tx0 = bed.rx_count(), bed.tx_count() or 0
    tracer.start()
    s0, q0, t0 = Path("/proc/stat").read_text(), Path("/proc/softirqs").read_text(), time.monotonic()
    gen = pps.run_gen(bed, tr, rate, count, seconds * 1.5 + 1.0)
    rx1 = pps.settle(bed, rx0)
    s1, q1, t1 = Path("/proc/stat").read_text(), Path("/proc/softirqs").read_text(), time.monotonic()
    soft, lost = tracer.stop()
    tx = (bed.tx_count() or 0) - tx0
    rx = rx1 - rx0
    st0, st1 = parse_stat(s0), parse_stat(s1)
    dut, gen_use = cpu_use(st0[dut_cpu], st1[dut_cpu], t1 - t0), cpu_use(st0[gen_cpu], st1[gen_cpu], t1 - t0)
    net_rx = [b - a for a, b in zip(parse_net_rx(q0), parse_net_rx(q1), strict=True)]
    res: dict[str, Any] = {"sent": int(gen["sent"]), "tx": tx, "rx": rx, "elapsed_s": round(float(gen["elapsed_s"]), 3),
                           "wall_s": round(t1 - t0, 3), "delivered": tx > 0 and rx >= tx * (1 - pps.LOSS_MAX),
                           "dut": {k: round(v, 4) for k, v in dut.items()},
                           "gen": {k: round(v, 4) for k, v in gen_use.items()}, "net_rx_softirqs": net_rx}
    res.update(per_packet(dut, rx))
    res["net_rx_s"] = {cpu: round(v["seconds"], 4) for cpu, v in soft.items()}
    res["net_rx_runs"] = {cpu: int(v["count"]) for cpu, v in soft.items()}
    res["trace_lost"] = lost
    d_soft = soft.get(dut_cpu, {}).get("seconds")
    res["dut_net_rx_us"] = d_soft * 1e6 / rx if rx and d_soft is not None and not lost else None
    return res


def run(args: argparse.Namespace) -> dict[str, Any]:
    gen_cpu, dut_cpu = common.cpu_layout(args.gen_cpu, args.dut_cpu)
    if gen_cpu is None or dut_cpu is None:
        raise SystemExit("routed_cost needs 2 CPUs (generator and director apart)")
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, {gen_cpu})  # this driver and its subprocesses stay off the DUT CPU
    cases = [c for c in args.routed_cases.split(",") if c]
    nft_found = shutil.which(os.path.join(args.routed_nft_dir, "nft") if args.routed_nft_dir else "nft")
    if not nft_found and any(c in NFT_CASES for c in cases):
        log(f"routed: nft not found, leaving out {', '.join(c for c in cases if c in NFT_CASES)}")
        cases = [c for c in cases if c not in NFT_CASES]
    if args.routed_rules_from:
        cases.append(f"rules@{args.routed_rules_from}")
    modules = {c: iptables_module(c.split("@", 1)[1] if "@" in c else None) for c in cases if c.startswith("rules")}
    out: dict[str, Any] = {"config": {"rate": args.routed_rate, "seconds": args.routed_seconds,
                                      "repeats": args.routed_repeats, "services": args.routed_services, "cases": cases,
                                      "sink": args.routed_sink, "gen_cpu": gen_cpu, "dut_cpu": dut_cpu,
                                      "load_before": os.getloadavg()}, "trials": []}
    common.build_tool("pktgen")
    with tempfile.TemporaryDirectory(prefix="lbB-bench-routed-") as tmpd, Topology(pps.pps_spec()) as topo, \
            SoftirqTracer({gen_cpu, dut_cpu}) as tracer:
        bed = SinkBed(topo, gen_cpu, dut_cpu, args.routed_sink)
        bed.nice = args.nice
        out["config"]["rps"] = bed.rps
        tr = pps.make_traffic(bed, Path(tmpd), "est", bed.rs_addr)
        reqs = config_requests(bed, args.routed_services)
        dr_reqs = config_requests(bed, args.routed_services, nat=False)
        steering = steering_of(reqs)
        if pps.functional_check(bed, tr):
            raise LbdError("routed traffic does not reach rs1 on the bare director")
        for rep, case in schedule(cases, args.routed_repeats):
            ctx: Any = (contextlib.nullcontext() if case == "bare" else
                        running_lbd(bed, reqs, dut_cpu) if case == "lbd" else
                        running_lbd(bed, reqs, dut_cpu, args.routed_nft_dir) if case == "lbd-nft" else
                        running_lbd(bed, reqs, dut_cpu, args.routed_nft_dir, "input", "forward")
                        if case == "lbd-nft-in" else
                        running_lbd(bed, dr_reqs, dut_cpu, args.routed_nft_dir, "input")
                        if case == "lbd-nft-in-dr" else
                        running_lbd(bed, reqs, dut_cpu, args.routed_nft_dir, "input")
                        if case == "lbd-nft-in-ingress" else
                        partial_rules(bed, case) if case in PARTIAL else
                        first_rule_only(bed, steering) if case == "raw-first" else
                        fib_rule(bed) if case == "fib-rule" else
                        nft_first(bed, steering, shlex.split(args.routed_nft), case)
                        if case in NFT_PROBES or case == "nft-ingress" else
                        rules_only(bed, modules[case], steering, "iptables-legacy")
                        if case == "rules-legacy" else
                        rules_only(bed, modules[case], steering))
            with ctx:
                raw = bed.director.exec(["iptables", "-t", "raw", "-S"]).stdout
                time.sleep(0.5)  # lbd's start-up work done before the window
                t = fixed_trial(bed, tr, args.routed_rate, args.routed_seconds, gen_cpu, dut_cpu, tracer)
            t.update(case=case, rep=rep, raw_rules=sum(1 for line in raw.splitlines() if line.startswith("-A ")))
            out["trials"].append(t)
            log(f"routed {case} #{rep}: {t['rx']} delivered, DUT NET_RX {_f(t['dut_net_rx_us'])} us/pkt, "
                f"busy {_f(t['dut_us'])} (kernel {_f(t['dut_kernel_us'])}); NET_RX s per CPU {t['net_rx_s']}")
    out["config"]["load_after"] = os.getloadavg()
    out["summary"] = summarize(out["trials"], "dut_net_rx_us")
    out["summary_busy"] = summarize(out["trials"], "dut_kernel_us")
    out["verdicts"] = verdicts(out["summary"], paired=paired_ratios(out["trials"]))
    return out


def report(data: dict[str, Any], targets: list[list[str]]) -> list[str]:
    cfg = data["config"]
    lines = [f"### {TITLE}", "", f"Routed traffic at a fixed {cfg['rate']:,.0f} pps for {cfg['seconds']} s, {cfg['repeats']} repetitions, "
             f"{cfg['services']} service(s) + 1 NAT service; DUT CPU {cfg['dut_cpu']}, generator CPU {cfg['gen_cpu']}; "
             f"load average {cfg['load_before'][0]:.2f} before, {cfg['load_after'][0]:.2f} after.", "",
             "NET_RX: the DUT CPU's time in NET_RX softirqs (traced) per delivered packet, where the director "
             "receives and forwards. Busy: the DUT CPU's wall minus idle time, minus the user time sampled on it "
             "(includes other load's kernel time).", "",
             "| case | raw rules | NET_RX us/pkt, median | / bare | / bare, paired | min | all | busy us/pkt, median | "
             "NET_RX s on gen / DUT CPU |",
             "|---|---:|---:|---:|---:|---:|---|---:|---|"]
    ratios = {v["case"]: v["ratio"] for v in data["verdicts"]}
    paired = {v["case"]: v.get("paired") for v in data["verdicts"]}
    trials: dict[str, list[dict[str, Any]]] = {}
    for t in data["trials"]:
        trials.setdefault(t["case"], []).append(t)
    for case, row in data["summary"].items():
        busy = data["summary_busy"][case]
        vals = ", ".join(f"{v:.3f}" for v in row["values"])
        flag = f" ({row['flagged']} flagged)" if row["flagged"] else ""
        first = trials[case][0]
        soft = {int(c): v for c, v in first["net_rx_s"].items()}  # JSON made the CPU numbers strings
        where = " / ".join(f"{soft.get(c, 0):.2f}" for c in (cfg["gen_cpu"], cfg["dut_cpu"]))
        ratio = "" if case == "bare" or ratios.get(case) is None else f"{ratios[case]:.2f}x"
        pair = "" if paired.get(case) is None else f"{paired[case]:.2f}x"
        lines.append(f"| {case} | {first['raw_rules']} | {_f(row['median'])} | {ratio} | {pair} | {_f(row['min'])} | "
                     f"{vals}{flag} | {_f(busy['median'])} | {where} |")
    lines.append("")
    for v in data["verdicts"]:
        if v["case"] not in TARGET_CASES:  # the steps and other revisions: figures, not targets
            continue
        ratio = "n/a" if v["ratio"] is None else f"{v['ratio']:.2f}x"
        if v.get("paired") is not None:
            ratio += f" (paired {v['paired']:.2f}x)"
        label = CASE_LABELS.get(v["case"], v["case"])
        targets.append([f"routed traffic, {label}: DUT NET_RX us/pkt / without lbd, median and paired, both "
                        f"<= {TARGET_RATIO:.2f}x", ratio, "met" if v["pass"] else "MISSED"])
    return lines


def _f(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def add_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--routed-rate", type=float, default=300_000, help="routed: offered pps (default 300000)")
    ap.add_argument("--routed-seconds", type=float, default=None, help="routed: seconds per trial (default 5; quick 3)")
    ap.add_argument("--routed-repeats", type=int, default=None, help="routed: repetitions of every case (default 3; "
                    "quick 2)")
    ap.add_argument("--routed-services", type=int, default=1, help="routed: DR services configured (default 1)")
    ap.add_argument("--routed-cases", default=DEFAULT_CASES,
                    help="routed: comma-separated, of bare, rules, lbd (lbd --steering iptables); the steps raw-empty, "
                         "raw-comment, raw-go, raw-first; nft-first, nft-full, nft-hook, nft-defrag, nft-fwd, "
                         "nft-fwd-empty, nft-fwd-accept, nft-fwd-cmp, nft-fwd-mark, nft-fwd-fast, nft-ingress (probes; "
                         "need nft); "
                         "fib-rule (probe: one policy-routing rule); lbd-nft (lbd --steering nftables "
                         "--steer-hook prerouting: nft on PATH or in --routed-nft-dir), "
                         "lbd-nft-in (its table at the input hook, --nat-replies forward), lbd-nft-in-ingress "
                         "(lbd's default: the table at the input hook, NAT replies at ingress), lbd-nft-in-dr (that "
                         "without the NAT service); rules-legacy "
                         f"(iptables-legacy) (default {DEFAULT_CASES}; the nft ones only where nft is found)")
    ap.add_argument("--routed-nft-dir", default="", metavar="DIR",
                    help="routed: a directory holding the `nft` lbd runs for lbd-nft (default: lbd's PATH)")
    ap.add_argument("--routed-nft", default="nft", help="routed: the nft command for nft-first (default nft)")
    ap.add_argument("--routed-rules-from", default=None, metavar="REV",
                    help="routed: also measure the rules of lb/iptables.py at git revision REV")
    ap.add_argument("--routed-sink", choices=("xdp", "rs1"), default="xdp",
                    help="routed: how rs1 takes the traffic: dropped by XDP on its veth (default: the director pays "
                         "its forward path only) or received on the generator's CPU through RPS (the director also "
                         "pays an IPI per softirq run)")


def finish_args(args: argparse.Namespace) -> None:
    if getattr(args, "routed_seconds", None) is None:
        args.routed_seconds = 3.0 if args.quick else 5.0
    if getattr(args, "routed_repeats", None) is None:
        args.routed_repeats = 2 if args.quick else 3


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.routed_cost", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path, default=None, help="write the JSON here")
    ap.add_argument("--from-json", type=Path, default=None, metavar="FILE",
                    help="measure nothing: report a JSON an earlier run wrote (summaries recomputed)")
    common.add_cpu_args(ap)
    add_args(ap)
    args = ap.parse_args(argv)
    finish_args(args)
    if args.from_json:
        data = json.loads(args.from_json.read_text())
        data["summary"] = summarize(data["trials"], "dut_net_rx_us")
        data["summary_busy"] = summarize(data["trials"], "dut_kernel_us")
        data["verdicts"] = verdicts(data["summary"], paired=paired_ratios(data["trials"]))
    else:
        data = run(args)
    return common.finish_section_run(data, args.out, report)


if __name__ == "__main__":
    sys.exit(main())
