"""The guest A/B's "routed" part (bench/ab_guest.py --parts routed): what traffic routed THROUGH the
director, and not for any service, costs the director under kernel IPVS and under lbd.

Issue 15 item 1 asks that such traffic cost within 10 % of a director without lbd. On the host (no
ip_vs) bench/routed_cost.py measured lbd against a bare router; what kernel IPVS itself costs routed
traffic once any service exists (its forward hooks: ip_vs_reply4 -> ip_vs_out_hook's connection
lookup for every forwarded packet, ip_vs_forward_icmp; nf_defrag) can only be measured here, in the
guest booting Debian's kernel.

Topology, generator and counting: the throughput part's (bench/pps.py Bed on ab_spec, --guest-wire
veth or virtio). Traffic: bench/pps.py's established ACKs (1024 flows) from the client to rs1's OWN
address (the throughput part's "kernel"/plain-router reference traffic), routed by the director; rs1
counts and drops them. Per system and repetition: one fixed-rate trial + idle window
(bench/ab_cpurate.py measure: --cpu-rate pps for --cpu-seconds, then as long without traffic), the
DUT CPU per packet, the idle cost and the per-packet rest. Systems (SYSTEMS), interleaved per
repetition, the order of the blocks rotating with the repetition:

- router: no IPVS service, no lbd process (the ip_vs module is loaded: bench/ab_guest.py MODULES;
  IPVS registers its netfilter hooks with its first service and removes them with its last);
- ipvs / ipvs-dr: kernel IPVS (Debian's ipvsadm) with a DR service on the VIP (port 80) and a NAT (-m)
  service on NAT_VIP:8080 / the DR service only; real servers rs1..rs3; the traffic hits neither;
- lbd-in / lbd-in-dr: lbd with its default steering (nftables, --steer-hook input), the same services / DR only;
- lbd: lbd --steering iptables (raw prerouting), DR + NAT.

Each lbd block starts its own lbd (pinned to the DUT CPU, as the throughput part's) and stops it
after, so no lbd process runs while router or IPVS is measured. The director's namespace is recorded
per system (first repetition): IPVS services, nft tables, iptables rules (Debian's kernel has no
CONFIG_NETFILTER_NETLINK_HOOK: no `nft list hooks`). Ratios: system / router within each repetition
(ab_cpurate.pair_ratios: a lossy trial of either side leaves that repetition out, named), then the
median over the repetitions.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import ab_cpurate, common, pps
from bench.common import Lbd, LbdError, log

MODE = "routed"  # the results' "mode" (ab_cpurate.pair_ratios keys on system, mode, traffic)
KIND = "est"
SYSTEMS = ("router", "ipvs", "ipvs-dr", "lbd-in", "lbd-in-dr", "lbd")
# One block per configuration step: each lbd block is one lbd process (its steering is a start option).
BLOCKS = (("router",), ("ipvs",), ("ipvs-dr",), ("lbd-in", "lbd-in-dr"), ("lbd",))
NFT_IN = ("--steering", "nftables", "--steer-hook", "input")
LBD_EXTRA = {"lbd-in": NFT_IN, "lbd-in-dr": NFT_IN, "lbd": ("--steering", "iptables")}
NAT_VIP = "10.250.255.1"  # bench/routed_cost.py's: a NAT service nothing is sent to
NAT_PORT = 8080
WHAT = {
    "router": "no service, no lbd (ip_vs loaded)",
    "ipvs": "kernel IPVS, DR + NAT services",
    "ipvs-dr": "kernel IPVS, DR service only",
    "lbd-in": "lbd, default steering (nftables, input hook), DR + NAT",
    "lbd-in-dr": "lbd, default steering (nftables, input hook), DR only",
    "lbd": "lbd --steering iptables (raw prerouting), DR + NAT",
}


# --------------------------------------------------------------------------- pure


def parse_systems(text: str | None) -> list[str]:
    """--routed-systems: a comma-separated subset of SYSTEMS (all when empty); router always measured
    (every ratio is to it)."""
    from bench.ab_guest import parse_choice  # noqa: PLC0415 - ab_guest imports this module

    chosen = parse_choice(text, SYSTEMS, "routed system") if text else list(SYSTEMS)
    return [s for s in SYSTEMS if s in chosen or s == "router"]


def rules(vip: str, reals: Sequence[str], nat: bool) -> str:
    """The services: DR on vip:80 (pps.PORT), and with `nat` NAT (-m) on NAT_VIP:8080, weight 1 each
    real server; one ipvsadm rules file for both IPVS and lbd (bench/ab_guest.py rules_text)."""
    from bench.ab_guest import rules_text  # noqa: PLC0415

    text = rules_text(vip, "rr", [(a, 1) for a in reals], "route", port=pps.PORT)
    if nat:
        text += rules_text(NAT_VIP, "rr", [(a, 1) for a in reals], "masq", port=NAT_PORT)
    return text


def has_nat(system: str) -> bool:
    return system in ("ipvs", "lbd-in", "lbd")


def plan(repeats: int, systems: Sequence[str]) -> list[tuple[int, tuple[str, ...]]]:
    """(rep, block) in order: every repetition measures each block (BLOCKS, restricted to `systems`),
    the block order rotated by one per repetition, so a drift of the machine is shared."""
    blocks = [b for b in (tuple(s for s in blk if s in systems) for blk in BLOCKS) if b]
    out = []
    for rep in range(repeats):
        k = rep % len(blocks) if blocks else 0
        out += [(rep, b) for b in blocks[k:] + blocks[:k]]
    return out


def state_text(st: dict[str, Any] | None) -> str:
    """One system's recorded director state (director_state) in one cell."""
    if not st:
        return "?"
    return (f"IPVS services {st.get('ipvs_services', '?')}, nft tables {', '.join(st.get('nft_tables') or []) or 'none'}, "
            f"iptables rules {st.get('iptables_rules', '?')}")


def summary(results: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per system: fixed-rate DUT us/pkt over the repetitions (clean trials), its split (idle, per
    packet), the not-idle cross-check, and system / router within each repetition (all of it, and the
    per-packet part alone), with the repetitions left out (lossy) named."""
    out: dict[str, dict[str, Any]] = {}
    for system in [s for s in SYSTEMS if any(r["system"] == s for r in results)]:
        rs = sorted((r for r in results if r["system"] == system), key=lambda r: r["rep"])
        splits = [x for x in (ab_cpurate.fixed_split(r) for r in rs) if x is not None]
        ratio, left = ab_cpurate.pair_ratios(results, "router", system, MODE, KIND)
        marginal, _ = ab_cpurate.pair_ratios(results, "router", system, MODE, KIND, marginal=True)
        out[system] = {
            "us_per_pkt": common.summarize([u for u in (ab_cpurate.usable(r) for r in rs) if u is not None]),
            "per_rep": [ab_cpurate.rep_cell(r) for r in rs],
            "idle_us": common.summarize([x[0] for x in splits]),
            "per_packet_us": common.summarize([x[1] for x in splits]),
            "net_rx_us": common.summarize(_clean(rs, "dut_net_rx_us")),
            "net_rx_over_router": common.summarize(field_ratios(results, system, "dut_net_rx_us")),
            "not_idle_us": common.summarize(_clean(rs, "dut_not_idle_us_per_pkt")),
            "over_router": common.summarize(ratio), "left_out": left,
            "per_packet_over_router": common.summarize(marginal),
            "not_idle_over_router": common.summarize(field_ratios(results, system, "dut_not_idle_us_per_pkt")),
        }
    return out


def field_ratios(results: Sequence[dict[str, Any]], system: str, key: str) -> list[float]:
    """Within each repetition, the fixed-rate trial's `key` system / router, clean trials only: the
    not-idle figure (wall minus the NOHZ idle clock per packet: exact, not tick-sampled, but every
    task on the DUT CPU counts) or the traced NET_RX time per packet (NetRx)."""
    def fig(rep: int, name: str) -> float | None:
        for r in results:
            if r["rep"] == rep and r["system"] == name and ab_cpurate.usable(r) is not None:
                return r["fixed_rate"].get(key)
        return None

    vals = []
    for rep in sorted({r["rep"] for r in results}):
        a, b = fig(rep, "router"), fig(rep, system)
        if a and b:
            vals.append(b / a)
    return vals


def _clean(rs: Sequence[dict[str, Any]], key: str) -> list[float]:
    return [float(r["fixed_rate"][key]) for r in rs
            if ab_cpurate.usable(r) is not None and r["fixed_rate"].get(key) is not None]


def _ratio(s: dict[str, Any]) -> str:
    """"1.05x (1.00-1.10, n=2): 1.10 / 1.00": the summary, then the values in repetition order."""
    from bench.afxdp_report import fmt_spread  # noqa: PLC0415 - afxdp_report imports this module

    if not s.get("n"):
        return "-"
    return f"{fmt_spread(s, 1, 2, 'x')}: {' / '.join(f'{v:.2f}' for v in s['values'])}"


def _us(s: dict[str, Any]) -> str:
    from bench.afxdp_report import fmt_spread  # noqa: PLC0415

    return "-" if not s.get("n") else f"{fmt_spread(s, 1, 2)}: {' / '.join(f'{v:.2f}' for v in s['values'])}"


def rows(results: Sequence[dict[str, Any]]) -> list[list[str]]:
    """One row per system: what it is; the traced NET_RX time per packet and its ratio to the router;
    the tick-based DUT figure (bench/ab_cpurate.py), per rep, its ratio, split and per-packet ratio;
    the not-idle cross-check and its ratio."""
    from bench.afxdp_report import fmt_spread  # noqa: PLC0415

    out = []
    for system, s in summary(results).items():
        ref = system == "router"
        split = ("-" if not s["idle_us"].get("n") else
                 f"{fmt_spread(s['idle_us'], 1, 2)} + {fmt_spread(s['per_packet_us'], 1, 2)}")
        left = f" (left out: {'; '.join(s['left_out'])})" if s["left_out"] else ""
        out.append([system, WHAT.get(system, ""), _us(s["net_rx_us"]), "1" if ref else _ratio(s["net_rx_over_router"]),
                    fmt_spread(s["us_per_pkt"], 1, 2), " / ".join(s["per_rep"]) or "-",
                    "1" if ref else _ratio(s["over_router"]) + left, split,
                    "-" if ref else _ratio(s["per_packet_over_router"]),
                    _us(s["not_idle_us"]), "1" if ref else _ratio(s["not_idle_over_router"])])
    return out


def section(ab: dict[str, Any], title: str = "## Routed traffic, not for a service (guest)") -> list[str]:
    """The report's part for `ab` (bench/ab.py's data): [] when the run had no routed part."""
    from bench.afxdp_report import table  # noqa: PLC0415

    g = ab.get("guest") or {}
    rt = g.get("routed")
    if not rt:
        return []
    res = rt.get("results") or []
    at = ab_cpurate.title(res) or f"at {rt.get('rate', 0) / 1e3:g}k pps ({rt.get('seconds', '?')} s)"
    lines = ["", title, "",
             f"Issue 15 item 1 against the real kernel: est ACKs (1024 flows) from the client to rs1's own address, "
             f"routed by the director, {at} per system and repetition, then as long idle (bench/ab_routed.py, "
             f"bench/ab_cpurate.py); wire {g.get('wire') or 'veth'}; guest kernel {g.get('kernel', '?')}; ip_vs module "
             f"{'loaded' if rt.get('ip_vs_loaded') else 'NOT loaded'} throughout (router: no service). DR service "
             f"on the VIP:{pps.PORT}, NAT (-m) on {NAT_VIP}:{NAT_PORT}, real servers rs1..rs3; the traffic hits "
             "neither. NET_RX: the DUT CPU's NET_RX softirq time, traced (irq:softirq_entry/exit in a tracefs "
             "instance, bench/routed_cost.py SoftirqTracer: the host bench's compared figure; exact, where the "
             "tick-sampled figures below move by 0.25 us/pkt per tick), per delivered packet: where routed "
             "packets are handled, lbd's threads not included. DUT ticks: bench/ab_cpurate.py's figure, the DUT "
             "CPU's tick-sampled softirq + lbd's threads (bench/pps.py dut_fields); split: idle cost over the "
             "rate + per packet. Not-idle: wall minus the NOHZ idle clock per packet (every task on that CPU, "
             "interrupts and the emulation's timers too). Figures: median (min-max, n): per rep; ratios: system "
             "/ router within each repetition, then median (min-max, n): per rep.", ""]
    lines += table(["system", "what", "NET_RX us/pkt", "NET_RX / router", f"DUT ticks us/pkt {at}", "per rep",
                    "/ router", "idle + per packet us", "per packet / router", "not-idle us/pkt", "not-idle / router"],
                   rows(res))
    state = rt.get("state") or {}
    if state:
        lines += ["", "The director's namespace while each was measured (first repetition; this kernel has no "
                  "`nft list hooks`):", ""]
        lines += [f"- {s}: {state_text(state[s])}" for s in SYSTEMS if s in state]
    for sk in rt.get("skipped") or []:
        lines.append(f"- skipped: {sk['system']} rep {sk['rep'] + 1}: {' '.join(sk['reason'].split())[:300]}")
    err = (g.get("errors") or {}).get("routed")
    if err:
        lines.append(f"- error in routed: {str(err).splitlines()[0][:300]}")
    return lines


def render(ab: dict[str, Any]) -> str:
    """A report of `python -m bench ab --parts routed` alone (bench/ab.py --md)."""
    lines = [f"# The guest: routed traffic next to kernel IPVS ({time.strftime('%Y-%m-%d %H:%M')}, "
             f"commit {ab.get('commit', '?')})", "",
             f"Command: `{(ab.get('config') or {}).get('command', '?')}`, elapsed {ab.get('elapsed_s', '?')} s. "
             "Debian's kernel under qemu TCG: only the ratios within this run mean anything."]
    lines += section(ab, "## Figures")
    if ab.get("error"):
        lines.append(f"- {ab['error'][:500]}")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- the guest side


class NetRx:
    """bench/ab_cpurate.py measure's probe: the DUT CPU's NET_RX softirq time over the trial, traced
    (bench/routed_cost.py SoftirqTracer), per delivered packet."""

    def __init__(self, tracer: Any, cpu: int) -> None:
        self.tracer, self.cpu = tracer, cpu

    def start(self) -> None:
        self.tracer.start()

    def stop(self, trial: dict[str, Any]) -> dict[str, Any]:
        soft, lost = self.tracer.stop()
        sec = (soft.get(self.cpu) or {}).get("seconds")
        rx = int(trial.get("rx") or 0)
        return {"net_rx_s": sec, "net_rx_runs": (soft.get(self.cpu) or {}).get("count"), "trace_lost": lost,
                "dut_net_rx_us": sec * 1e6 / rx if rx > 0 and sec is not None and not lost else None}


def director_state(director: Any) -> dict[str, Any]:
    """What is configured in the director's namespace: IPVS services, nft tables, iptables rules."""
    def out(argv: list[str]) -> str:
        return director.exec(argv, check=False).stdout or ""

    return {"ipvs_services": sum(1 for ln in out(["ipvsadm", "-Ln"]).splitlines() if ln.startswith(("TCP", "UDP"))),
            "nft_tables": [" ".join(ln.split()[1:]) for ln in out(["nft", "list", "tables"]).splitlines() if ln.strip()],
            "iptables_rules": sum(1 for ln in out(["iptables-save"]).splitlines() if ln.startswith("-A"))}


def run(out: dict[str, Any], args: argparse.Namespace, bed: pps.Bed, reals: Sequence[str], tmp: Path) -> None:
    """The routed part (module doc); results in out["routed"], written as they come."""
    rate = args.cpu_rate or ab_cpurate.DEFAULT_RATE
    systems = parse_systems(getattr(args, "routed_systems", None))
    res: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    out["routed"] = rt = {"results": res, "skipped": skipped, "rate": rate, "seconds": args.cpu_seconds,
                          "systems": systems, "ip_vs_loaded": Path("/sys/module/ip_vs").exists(), "state": {}}
    tr = pps.make_traffic(bed, tmp, "est", bed.rs_addr, 0)
    with contextlib.ExitStack() as stack:
        probe = None
        try:  # the NET_RX trace: optional, the tick-based figures stand without it
            from bench.routed_cost import SoftirqTracer  # noqa: PLC0415 - only here, and only in the guest

            cpu = bed.dut_cpu
            if cpu is None:
                raise RuntimeError("no DUT CPU to trace")
            probe = NetRx(stack.enter_context(SoftirqTracer({cpu})), cpu)
        except Exception as exc:  # noqa: BLE001
            rt["net_rx_error"] = f"{type(exc).__name__}: {exc}"[:400]
            log(f"ab: routed: no NET_RX trace: {exc}")
        _run(out, args, bed, reals, tr, systems, rate, probe)


def _run(out: dict[str, Any], args: argparse.Namespace, bed: pps.Bed, reals: Sequence[str], tr: pps.Traffic,
         systems: list[str], rate: float, probe: NetRx | None) -> None:
    from bench import ab_guest  # noqa: PLC0415

    rt = out["routed"]
    res, skipped = rt["results"], rt["skipped"]

    def measure(rep: int, system: str, lbd: Lbd | None) -> None:
        try:
            if system.startswith("ipvs"):
                ctx: Any = ab_guest.ipvs_system(bed.director, rules(bed.vip, reals, has_nat(system)))
            elif lbd is not None:
                ctx = ab_guest.lbd_system(lbd, rules(bed.vip, reals, has_nat(system)), args.lbd_tool)
            else:
                ctx = contextlib.nullcontext()
            with ctx:
                bed.lbd_pid = lbd.proc.pid if lbd is not None and lbd.proc else None
                if system not in rt["state"]:
                    rt["state"][system] = director_state(bed.director)
                why = pps.functional_check(bed, tr, n=200, rate=500)
                if why:
                    raise LbdError(why)
                f = ab_cpurate.measure(bed, tr, rate, args.cpu_seconds, probe)
        except Exception as exc:  # noqa: BLE001 - recorded; the others still run
            skipped.append({"system": system, "rep": rep, "reason": f"{type(exc).__name__}: {exc}"[:1000]})
            log(f"ab: routed {system} rep {rep + 1} skipped: {exc}")
            return
        finally:
            bed.lbd_pid = None
        r = {"system": system, "mode": MODE, "traffic": KIND, "rep": rep, "fixed_rate": f,
             "loadavg": Path("/proc/loadavg").read_text().split()[:3]}
        res.append(r)
        common.write_json(args.out / "ab_guest.json", out)
        split = ab_cpurate.fixed_split(r)
        log(f"ab: routed rep {rep + 1} {system:9}: {ab_cpurate.rep_cell(r)} us/pkt at {rate:g} pps"
            + (f" (idle {split[0]:.2f} + per packet {split[1]:.2f})" if split else "")
            + (f"; NET_RX {f['dut_net_rx_us']:.2f} us/pkt" if f.get("dut_net_rx_us") else ""))

    for rep, block in plan(args.repeats, systems):
        if block[0] not in LBD_EXTRA:
            for s in block:
                measure(rep, s, None)
            continue
        try:  # one lbd per block (its steering is a start option), none while the others are measured
            lbd = ab_guest.start_lbd(bed.director, cpu=bed.dut_cpu, nice=bed.nice, extra=LBD_EXTRA[block[0]])
        except Exception as exc:  # noqa: BLE001
            skipped += [{"system": s, "rep": rep, "reason": f"lbd did not start: {exc}"[:1000]} for s in block]
            log(f"ab: routed {block} rep {rep + 1}: lbd did not start: {exc}")
            continue
        try:
            for s in block:
                measure(rep, s, lbd)
        finally:
            ab_guest.stop_lbd(lbd)
            if LBD_EXTRA[block[0]]:  # its nftables table, should it have outlived lbd
                bed.director.exec(["nft", "delete", "table", "ip", "lbd-q0"], check=False)
