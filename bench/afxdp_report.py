"""Issue 19 items 3 and 4: kernel forwarding, lbd NFQUEUE and lbd AF_XDP in ONE run, and the report.

    python -m bench afxdp-report [--repeats 3] [--modes dr,tunnel,fullnat] [--traffic est,syn]
                                 [--window 0.8] [--steps 5] [--xdp-mode generic] [--md FILE]
    python -m bench afxdp-report --from-json DIR/afxdp.json [--md FILE]     (re-render only)

bench/pps.py does the work (topology, direct veth wiring, RPS steering, generator, zero-loss
search, DUT CPU accounting) with the systems `kernel` (the director as a router, no lbd), `c`
(lbd, NFQUEUE) and `afxdp` (the same lbd with `--packet-source afxdp` on the director's lan
interface), interleaved in every repetition, and after each search the one-way latency of 300
marked probes at 50 % of that search's zero-loss rate (bench/latency.py). This module sets that
up, records the machine's load, and renders the markdown: figures with their spread over the
repetitions, ratios taken within each repetition (AF_XDP vs NFQUEUE vs kernel), and the
targets of issue 19 item 4 judged (met, or missed by how much), with the AF_XDP source's own
counters (how forwarded frames left: the socket's TX ring or the AF_PACKET socket) to say why.
An `analysis.md` next to the JSON (hand-written: why, what would close it) is included.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import ab_cpurate, ab_routed, common, pps

SYSTEMS = ("kernel", "c", "afxdp")  # the ratios are between these three
# shown: native XDP on veth, its NAPI threaded on the DUT CPU (not judged); the XDP fast path of
# established DR flows (lbd --xdp-fastpath: judged against the targets too)
EXTRA = ("afxdp-native", "afxdp-fast")
LABEL = {"kernel": "kernel forwarding (no lbd)", "c": "lbd NFQUEUE", "afxdp": "lbd AF_XDP",
         "afxdp-native": "lbd AF_XDP, native XDP (threaded NAPI on the DUT CPU)",
         "afxdp-fast": "lbd AF_XDP + XDP fast path (--xdp-fastpath)"}
# Runs before bench/napi_thread.py: the veth's NAPI ran on the sending CPU, the DUT did not see it.
LABEL_NATIVE_UNTHREADED = "lbd AF_XDP, native XDP (its XDP work on the generator's CPU)"
COMMON_RATE = 60_000.0  # below every system's zero-loss rate here (NFQUEUE ~90k)
ARMS = {False: "two arms (the real server behind the director's other interface)",
        True: "one arm (the real server on the receiving side, bench/one_arm.py)"}
TARGET_US = 1.3  # item 4: AF_XDP DR established, director CPU per packet
TARGET_PPS = 500_000  # item 4: zero-loss on one director core


def add_args(ap: argparse.ArgumentParser) -> None:
    pps.add_args(ap)
    ap.add_argument("--common-rate", type=float, default=COMMON_RATE,
                    help="after each search, one more trial at this offered rate (pps; 0: none), the same for "
                    "every system: CPU per packet and IPIs per packet under equal load (default %(default).0f)")
    ap.add_argument("--no-dut-filler", dest="dut_filler", action="store_false",
                    help="no SCHED_IDLE spinner on the DUT CPU (bench/idle_filler.py): softirq work the DUT CPU does "
                    "from its idle loop then goes uncounted (tick accounting, NO_HZ_IDLE)")
    ap.set_defaults(systems=",".join((*SYSTEMS, "afxdp-native")), sweep=False, latency=True)
    ap.add_argument("--md", type=Path, default=None,
                    help="markdown report (default bench/results/<date>-afxdp.md)")
    ap.add_argument("--from-json", type=Path, default=None, help="only re-render the report from this JSON")
    ap.add_argument("--guest-json", type=Path, default=None,
                    help="the ab.json of `python -m bench ab --afxdp` (the guest: lbd AF_XDP next to kernel IPVS), "
                    "rendered and judged in the report")
    ap.add_argument("--guest", action="store_true",
                    help="after the host's run, the guest's: `python -m bench ab --afxdp --parts throughput` "
                    "(Debian's kernel under qemu, next to kernel IPVS; ~15 min under TCG)")
    ap.add_argument("--guest-timeout", type=float, default=1800.0, help="bound of the guest run (s)")


def finish_args(args: argparse.Namespace) -> None:
    pps.finish_args(args)
    args.latency = True
    args.sweep = False
    if args.md is None:
        args.md = common.RESULTS / f"{common.today()}-afxdp.md"


def run(args: argparse.Namespace) -> dict[str, Any]:
    load0 = _load_sample()
    data = pps.run(args)
    data["part"] = "afxdp-report"
    data["config"]["command"] = "python -m bench afxdp-report " + " ".join(args.argv)
    data["config"]["common_rate"] = args.common_rate
    data["load"] = {"start": load0, "end": _load_sample()}
    if args.guest:
        from bench import ab  # noqa: PLC0415

        data["guest_ab"] = ab.run(guest_args(args), common.default_run_dir())
    return data


def guest_args(args: argparse.Namespace) -> argparse.Namespace:
    """What `python -m bench ab --afxdp --parts throughput --repeats N` would get (bench/ab.py)."""
    argv = ["--afxdp", "--parts", "throughput", "--repeats", str(args.repeats), "--timeout", f"{args.guest_timeout:g}"]
    return argparse.Namespace(quick=False, functional_only=False, timeout=args.guest_timeout, kernel_dir=None,
                              lbd_tool="ipvsadm", afxdp=True, parts="throughput", repeats=args.repeats, argv=argv)


def _load_sample() -> dict[str, Any]:
    """Load average and the busy share of every CPU since boot is useless; take a 1 s sample."""
    def ticks() -> list[tuple[int, int]]:
        res = []
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith("cpu") and line[3:4].isdigit():
                f = [int(x) for x in line.split()[1:9]]
                res.append((sum(f) - f[3] - f[4], sum(f)))
        return res

    t0 = ticks()
    time.sleep(1.0)
    t1 = ticks()
    busy = [round(100 * (b1 - b0) / max(a1 - a0, 1)) for (b0, a0), (b1, a1) in zip(t0, t1, strict=False)]
    return {"time": time.strftime("%H:%M:%S"), "loadavg": Path("/proc/loadavg").read_text().split()[:3],
            "cpu_busy_pct": busy}


# --------------------------------------------------------------------------- figures (pure)


def _med(values: Sequence[float | None]) -> dict[str, Any]:
    return common.summarize([v for v in values if v is not None])


def fmt_spread(s: dict[str, Any], scale: float = 1.0, digits: int = 1, unit: str = "") -> str:
    if not s.get("n"):
        return "-"
    f = f"{{:.{digits}f}}"
    med = f.format(s["median"] / scale)
    if s["n"] == 1:
        return f"{med}{unit} (n=1)"
    return f"{med}{unit} ({f.format(s['min'] / scale)}-{f.format(s['max'] / scale)}, n={s['n']})"


def index(results: Sequence[dict[str, Any]]) -> dict[tuple[str, str, str, int], dict[str, Any]]:
    """(system, mode, traffic, rep) -> result; the kernel's mode `route` serves every lbd mode."""
    return {(r["system"], r["mode"], r["traffic"], r["rep"]): r for r in results}


def row_of(idx: dict[tuple[str, str, str, int], dict[str, Any]], system: str, mode: str, traffic: str,
           rep: int) -> dict[str, Any] | None:
    return idx.get((system, "route" if system == "kernel" else mode, traffic, rep))


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def ratios(data: dict[str, Any], mode: str, traffic: str) -> dict[str, dict[str, Any]]:
    """Per repetition, then summarized: zero-loss pps AF_XDP / NFQUEUE and AF_XDP / kernel; CPU per
    packet NFQUEUE / AF_XDP and kernel / AF_XDP (> 1: AF_XDP cheaper; kernel / AF_XDP = 1.0 would be
    as cheap as the kernel forwarding the same packets)."""
    idx = index(data.get("results", []))
    reps = sorted({r["rep"] for r in data.get("results", [])})
    acc: dict[str, list[float | None]] = {"zl_afxdp_nfq": [], "zl_afxdp_kernel": [], "cpu_nfq_afxdp": [],
                                         "cpu_kernel_afxdp": [], "p50_afxdp_nfq": [], "sat_nfq_afxdp": [],
                                         "sat_kernel_afxdp": [], "common_nfq_afxdp": [], "common_kernel_afxdp": []}
    def get(r: dict[str, Any] | None, key: str) -> float | None:
        return None if r is None else r.get(key)

    def p50(r: dict[str, Any] | None) -> float | None:
        return None if r is None else (r.get("latency") or {}).get("p50")

    def common(r: dict[str, Any] | None) -> float | None:  # CPU per packet at the common offered rate
        return None if r is None else (r.get("common") or {}).get("dut_us_per_pkt")

    for rep in reps:
        a, n, k = (row_of(idx, s, mode, traffic, rep) for s in ("afxdp", "c", "kernel"))
        if a is None:
            continue
        acc["zl_afxdp_nfq"].append(ratio(a["zero_loss_pps"], get(n, "zero_loss_pps")))
        acc["zl_afxdp_kernel"].append(ratio(a["zero_loss_pps"], get(k, "zero_loss_pps")))
        acc["cpu_nfq_afxdp"].append(ratio(get(n, "dut_us_per_pkt"), a.get("dut_us_per_pkt")))
        acc["cpu_kernel_afxdp"].append(ratio(get(k, "dut_us_per_pkt"), a.get("dut_us_per_pkt")))
        acc["sat_nfq_afxdp"].append(ratio(saturated_us(n) if n else None, saturated_us(a)))
        acc["sat_kernel_afxdp"].append(ratio(saturated_us(k) if k else None, saturated_us(a)))
        acc["p50_afxdp_nfq"].append(ratio(p50(a), p50(n)))
        acc["common_nfq_afxdp"].append(ratio(common(n), common(a)))
        acc["common_kernel_afxdp"].append(ratio(common(k), common(a)))
    return {k: _med(v) for k, v in acc.items()}


def judge_max(value: float | None, target: float) -> str:
    """Verdict for a figure that must stay <= target."""
    if value is None:
        return "not measured"
    return "met" if value <= target else f"missed by {value / target:.1f}x ({value - target:.2f} over)"


def judge_min(value: float | None, target: float, lower_bound: bool = False) -> str:
    """Verdict for a figure that must reach >= target (lower_bound: the figure is generator-limited)."""
    if value is None:
        return "not measured"
    if value >= target:
        return "met" + (" (generator-limited: a lower bound)" if lower_bound else "")
    short = f"missed by {target / value:.1f}x" if value > 0 else "missed (no zero-loss rate at all)"
    return short + (" (generator-limited: the generator, not lbd, stopped)" if lower_bound else "")


def xdp_tx_split(results: Sequence[dict[str, Any]]) -> dict[str, int]:
    """How the AF_XDP source's forwarded frames left, summed over its sockets and results: the
    socket's own TX ring (no copy, no system call per frame) or the AF_PACKET socket (the real server
    is behind another interface than the one the frame came in on: one sendmmsg per receive batch
    since the batching, xmit_l2_calls; one sendmsg per frame before it, where xmit_l2_calls is absent)."""
    tot = {"packets": 0, "xmit_xsk": 0, "xmit_l2": 0, "xmit_l2_err": 0, "kernel_rx_ring_full": 0, "batches": 0,
           "xmit_l2_calls": 0, "xmit_l2_waits": 0}
    for r in results:
        if r.get("system") not in ("afxdp", *EXTRA):
            continue
        for sock in ((r.get("counters_after") or {}).get("afxdp") or {}).get("sockets", []):
            before = [s for s in ((r.get("counters_before") or {}).get("afxdp") or {}).get("sockets", [])]
            b = before[0] if len(before) == 1 else {}
            for k in tot:
                tot[k] += int(sock.get(k, 0)) - int(b.get(k, 0))
    return tot


def saturated_us(r: dict[str, Any]) -> float | None:
    """Director CPU per delivered packet in the unpaced (overload) trial: the DUT CPU saturated, so other
    tenants of the machine weigh least and batches are fullest; an upper bound of the cost of a forwarded
    packet, as the work on packets dropped at the door is charged to the delivered ones."""
    return (r.get("overload") or {}).get("dut_us_per_pkt")


def label(system: str, results: Sequence[dict[str, Any]]) -> str:
    """The system's row label; native XDP runs from before its NAPI was threaded say where its work ran."""
    if system == "afxdp-native" and not any(r.get("napi_us_per_pkt") is not None for r in results
                                            if r["system"] == system):
        return LABEL_NATIVE_UNTHREADED
    return LABEL[system]


def common_rows(data: dict[str, Any]) -> list[list[str]]:
    """One row per (mode, traffic, system) of the common-rate trials (`--common-rate`): the same offered
    load for every system, so CPU per packet and IPIs per packet compare as equals."""
    rows = []
    res = data.get("results", [])
    for mode in data["config"]["modes"]:
        for traffic in data["config"]["traffic"]:
            for system in (*SYSTEMS, *EXTRA):
                ts = [r["common"] for r in res if r.get("common") and r["system"] == system
                      and r["mode"] == ("route" if system == "kernel" else mode) and r["traffic"] == traffic]
                if not ts:
                    continue
                rows.append([mode, traffic, label(system, res),
                             fmt_spread(_med([t["offered_pps"] for t in ts]), 1e3, 1, "k"),
                             fmt_spread(_med([100 * t["loss"] for t in ts]), 1, 2, " %"),
                             *(fmt_spread(_med([t.get(k) for t in ts]), 1, 2) for k in
                               ("dut_us_per_pkt", "lbd_sys_us_per_pkt", "softirq_us_per_pkt", "napi_us_per_pkt",
                                "ipi_in_per_pkt", "ipi_out_per_pkt"))])
    return rows


def summary_rows(data: dict[str, Any]) -> list[list[str]]:
    """One row per (mode, traffic, system): the figures with their spread over the repetitions."""
    rows = []
    modes = data["config"]["modes"]
    for mode in modes:
        for traffic in data["config"]["traffic"]:
            for system in (*SYSTEMS, *EXTRA):
                rs = [r for r in data.get("results", [])
                      if r["system"] == system and r["mode"] == ("route" if system == "kernel" else mode)
                      and r["traffic"] == traffic]
                if not rs:
                    continue
                us = _med([r.get("dut_us_per_pkt") for r in rs])
                sat = _med([saturated_us(r) for r in rs])
                rows.append([
                    mode, traffic, label(system, data.get("results", [])),
                    fmt_spread(_med([r["zero_loss_pps"] for r in rs]), 1e3, 1, "k"),
                    "yes" if any(r["generator_limited"] for r in rs) else "no",
                    fmt_spread(_med([r["overload"]["rx_pps"] for r in rs]), 1e3, 1, "k"),
                    fmt_spread(us, 1, 2),
                    fmt_spread(sat, 1, 2),
                    f"{1e3 / sat['median']:.0f}k" if sat.get("median") else "-",
                    fmt_spread(_med([(r.get("latency") or {}).get("p50") for r in rs]), 1, 0),
                    fmt_spread(_med([(r.get("latency") or {}).get("p99") for r in rs]), 1, 0),
                    str(sum(int((r.get("latency") or {}).get("lost") or 0) for r in rs)),
                ])
    return rows


def targets(data: dict[str, Any]) -> list[list[str]]:
    rows = target_rows(data, "afxdp", "AF_XDP")
    if any(r["system"] == "afxdp-fast" for r in data.get("results", [])):
        rows += target_rows(data, "afxdp-fast", "AF_XDP + XDP fast path")
    return [*rows, *guest_targets(data.get("guest_ab"))]


def target_rows(data: dict[str, Any], system: str, name: str) -> list[list[str]]:
    rs = [r for r in data.get("results", []) if r["system"] == system and r["mode"] == "dr" and r["traffic"] == "est"]
    us = _med([r.get("dut_us_per_pkt") for r in rs])
    zl = _med([r["zero_loss_pps"] for r in rs])
    gen_limited = any(r["generator_limited"] for r in rs)
    sat = _med([saturated_us(r) for r in rs])
    proj = 1e6 / sat["median"] if sat.get("median") else None
    return [
        [f"{name} DR established <= {TARGET_US} us director CPU per packet",
         f"at the zero-loss rate {fmt_spread(us, 1, 2, ' us')}; saturated {fmt_spread(sat, 1, 2, ' us')}",
         f"at the zero-loss rate {judge_max(us.get('median'), TARGET_US)}; saturated "
         f"{judge_max(sat.get('median'), TARGET_US)}"],
        [f">= {TARGET_PPS // 1000} kpps zero-loss on one director core ({name} DR established)",
         fmt_spread(zl, 1e3, 1, "k") + (f"; projected from the saturated CPU/pkt {proj / 1e3:.0f}k" if proj else ""),
         judge_min(zl.get("median"), TARGET_PPS, gen_limited)],
    ]


def guest_target(ab: dict[str, Any] | None, system: str = "lbd-afxdp") -> list[str]:
    """Item 4's guest target for one AF_XDP lbd of the guest run ("lbd-afxdp", "lbd-afxdp-fast")."""
    label = "lbd AF_XDP" if system == "lbd-afxdp" else "lbd AF_XDP --xdp-fastpath"
    name = f"guest: {label} at least as cheap per packet as kernel IPVS (>= 1.0x), DR"
    if not ab:
        return [name, "not in this run", "not measured (see 'The guest')"]
    from bench.ab import guest_ratios  # noqa: PLC0415

    res = ((ab.get("guest") or {}).get("pps") or {}).get("results", [])
    entry = guest_ratios(res).get(f"{system}/route") or {}
    cpu = entry.get("cpu_ipvs_over_lbd") or {"n": 0}
    fixed, left_out = entry.get("cpu_fixed_ipvs_over_lbd") or {"n": 0}, entry.get("cpu_fixed_left_out") or []
    how = ab_cpurate.describe(res)
    note = f"; left out (lost packets at the fixed rate): {'; '.join(left_out)}" if left_out else ""
    if fixed.get("n"):  # the fixed-rate figure (bench/ab_cpurate.py) when there is one
        cpu, how = fixed, f" {how}"
    elif left_out:  # every repetition lost packets at the fixed rate: the zero-loss trials' figure instead
        how = " at each system's zero-loss rate (NOT the fixed rate: every fixed-rate repetition lost packets)"
    else:
        how = ""
    if not cpu.get("n"):
        return [name, "no AF_XDP figure from the guest", "not measured (see 'The guest')"]
    med = cpu["median"]
    return [name, f"IPVS/AF_XDP CPU per packet{how} " + fmt_spread(cpu, 1, 2, "x") + note,
            "met" if med >= 1.0 else f"missed by {1 / med:.1f}x"]


def guest_targets(ab: dict[str, Any] | None) -> list[list[str]]:
    """The guest target for each AF_XDP lbd the guest run measured (the plain one when it measured none)."""
    res = ((ab or {}).get("guest") or {}).get("pps", {}).get("results", []) if ab else []
    systems = [s for s in ("lbd-afxdp", "lbd-afxdp-fast") if any(r.get("system") == s for r in res)]
    return [guest_target(ab, s) for s in systems or ["lbd-afxdp"]]


GUEST_SYSTEMS = {  # bench/ab_guest.py's system names, as the report labels them
    "kernel": "kernel forwarding (router, no IPVS)",
    "ipvs": "kernel IPVS",
    "ipvs-nat": "kernel IPVS NAT (-m): nearest kernel reference, not FULLNAT",
    "lbd": "lbd NFQUEUE",
    "lbd-afxdp": "lbd AF_XDP (generic XDP)",
    "lbd-afxdp-fast": "lbd AF_XDP --xdp-fastpath (generic XDP)",
}


def _mode_order(mode: str) -> tuple[int, str]:
    """bench/ab_guest.py's MODES order (route, tunnel, fullnat), unknown modes after."""
    from bench.ab_guest import MODES  # noqa: PLC0415

    return (MODES.index(mode) if mode in MODES else len(MODES), mode)


def guest_labels(wire: str | None) -> dict[str, str]:
    """GUEST_SYSTEMS with the AF_XDP rows' XDP mode as the guest's wire had it (bench/guest_wire.py)."""
    if wire != "virtio":
        return GUEST_SYSTEMS
    return {k: v.replace("(generic XDP)", "(native XDP, virtio_net)") for k, v in GUEST_SYSTEMS.items()}


WIRE_TEXT = {
    "veth": "lbd AF_XDP in generic XDP mode on the guest's veth.",
    "virtio": "wire: the director's links are virtio-net NICs joined by qemu hubs (--guest-wire virtio, "
              "bench/guest_wire.py) for every row; lbd AF_XDP in native XDP mode in virtio_net.",
}


def guest_rows(res: Sequence[dict[str, Any]], labels: dict[str, str] = GUEST_SYSTEMS) -> list[list[str]]:
    """One row per (traffic, mode, system) of the guest's results: median (min-max, n) over the repetitions."""
    rows = []
    kinds = sorted({r.get("traffic", "est") for r in res}, key=lambda k: (k != "est", k))
    fixed = ab_cpurate.setting(res) is not None  # a column of the fixed-rate trials (--cpu-rate) when the run had them
    for kind in kinds:
        for mode in sorted({r["mode"] for r in res}, key=_mode_order):
            for system in GUEST_SYSTEMS:
                rs = [r for r in res if r["system"] == system and r["mode"] == mode and r.get("traffic", "est") == kind]
                if rs:
                    rows.append([mode, kind, labels[system],
                                 fmt_spread(_med([r["zero_loss_pps"] for r in rs]), 1e3, 1, "k"),
                                 "yes" if any(r["generator_limited"] for r in rs) else "no",
                                 fmt_spread(_med([(r.get("overload") or {}).get("rx_pps") for r in rs]), 1e3, 1, "k"),
                                 fmt_spread(_med([r.get("dut_us_per_pkt") for r in rs]), 1, 1),
                                 *([ab_cpurate.cell(rs), ab_cpurate.split_cell(rs)] if fixed else [])])
    return rows


def guest_ratio_rows(res: list[dict[str, Any]]) -> list[list[str]]:
    from bench.ab import guest_ratios  # noqa: PLC0415

    rows = []
    for k, v in guest_ratios(res).items():
        x = v.get("afxdp_over_nfqueue") or {}
        rows.append([k, GUEST_SYSTEMS.get(v["reference"], v["reference"]),
                     fmt_spread(v["zero_loss_lbd_over_ipvs"], 1, 2, "x"), fmt_spread(v["cpu_ipvs_over_lbd"], 1, 2, "x"),
                     _per_rep(v["cpu_ipvs_over_lbd"]),
                     fmt_spread(x["zero_loss"], 1, 2, "x") if x else "",
                     fmt_spread(x["cpu_nfqueue_over_afxdp"], 1, 2, "x") if x else "",
                     _per_rep(x["cpu_nfqueue_over_afxdp"]) if x else "",
                     *(ab_cpurate.ratio_cells(v) if ab_cpurate.setting(res) else [])])
    return rows


def _per_rep(s: dict[str, Any]) -> str:
    """The values of a ratio in repetition order (repetitions missing a system left out)."""
    return " / ".join(f"{v:.2f}" for v in s.get("values") or []) or "-"


def guest_section(ab: dict[str, Any], title: str = "## The guest: next to kernel IPVS (Debian's kernel under qemu "
                  "TCG; ratios only)") -> list[str]:
    """The guest's rows (kernel router, IPVS, lbd NFQUEUE, lbd AF_XDP) and the ratios to IPVS."""
    g = ab.get("guest") or {}
    pp = g.get("pps") or {}
    res = pp.get("results", [])
    modes = pp.get("modes") or sorted({r["mode"] for r in res})
    kinds = pp.get("traffic") or sorted({r.get("traffic", "est") for r in res})
    lines = ["", title, "",
             f"Command: `{(ab.get('config') or {}).get('command', '?')}`, guest kernel {g.get('kernel', '?')}, "
             f"commit {ab.get('commit', '?')}, elapsed {ab.get('elapsed_s', '?')} s, load at its start "
             f"{' '.join((ab.get('machine') or {}).get('loadavg_at_start', []))}. Modes {', '.join(modes)}; "
             f"traffic {', '.join(kinds)} (bench/ab_guest.py); {pp.get('window_s', '?')} s windows, "
             f"{pp.get('steps', '?')} bisection steps; {WIRE_TEXT.get(g.get('wire') or 'veth', '')} "
             "FULLNAT: the kernel has none; its row is kernel IPVS NAT (-m), the nearest kernel reference."
             f"{_steering_text(ab)}", ""]
    at = ab_cpurate.title(res)  # "at 8k pps (5 s)": the fixed-rate trials' columns, when the run had them
    lines += table(["mode", "traffic", "system", "zero-loss pps", "gen-limited", "overload rx", "CPU us/pkt",
                    *([f"CPU us/pkt {at}", "of which: idle + per packet"] if at else [])],
                    guest_rows(res, guest_labels(g.get("wire"))))
    lines += ["", "Ratios within each repetition, then median (min-max, n): zero-loss lbd / kernel row; CPU per "
              "packet kernel row / lbd (>= 1.0: lbd as cheap as IPVS); AF_XDP / NFQUEUE zero-loss and NFQUEUE / "
              "AF_XDP CPU per packet (> 1: AF_XDP better). Keys: lbd source / mode [/ traffic, est when absent].", ""]
    lines += table(["lbd / mode / traffic", "kernel row", "zero-loss lbd/kernel", "CPU kernel/lbd",
                    "CPU kernel/lbd per rep", "zero-loss AF_XDP/NFQ", "CPU NFQ/AF_XDP", "CPU NFQ/AF_XDP per rep",
                    *([f"CPU kernel/lbd {at}", f"CPU kernel/lbd {at} per rep", "per packet kernel/lbd"] if at else [])],
                    guest_ratio_rows(res))
    for sk in pp.get("skipped", []):
        reason = " ".join(sk["reason"].split())[:300]
        lines.append(f"- skipped: {sk['system']} {sk['mode']} {sk.get('traffic', 'est')} rep {sk.get('rep')}: {reason}")
    for k, v in (g.get("errors") or {}).items():
        lines.append(f"- error in {k}: {str(v).splitlines()[0][:300]}")
    if ab.get("error"):
        lines.append(f"- {ab['error'][:500]}")
    return lines


def _steering_text(ab: dict[str, Any]) -> str:
    """" The AF_XDP lbd ran with --steering nftables ..." when the run said so (bench/ab.py --afxdp-steering)."""
    args = list((ab.get("config") or {}).get("guest_args") or [])
    if "--afxdp-steering" in args[:-1]:
        return (f" The AF_XDP lbd ran with --steering {args[args.index('--afxdp-steering') + 1]} (its NFQUEUE "
                "fallback's; lbd NFQUEUE with lbd's default steering).")
    return ""


def guest_per_rep(res: Sequence[dict[str, Any]]) -> list[list[str]]:
    """Every guest trial: rep, mode, traffic, system, zero-loss, CPU, load: the per-repetition view."""
    order = list(GUEST_SYSTEMS)
    rows, fixed = [], ab_cpurate.setting(res) is not None
    for r in sorted(res, key=lambda r: (r["rep"], r.get("traffic", "est") != "est", _mode_order(r["mode"]),
                                        order.index(r["system"]) if r["system"] in order else 99)):
        rows.append([str(r["rep"] + 1), r["mode"], r.get("traffic", "est"), r["system"],
                     f"{r['zero_loss_pps'] / 1e3:.1f}k", "yes" if r.get("generator_limited") else "no",
                     f"{(r.get('overload') or {}).get('offered_pps', 0) / 1e3:.1f}k",
                     f"{r['dut_us_per_pkt']:.1f}" if r.get("dut_us_per_pkt") else "-",
                     " ".join(r.get("loadavg") or []), *([ab_cpurate.rep_cell(r)] if fixed else [])])
    return rows


def render_guest(ab: dict[str, Any], analysis: str | None = None) -> str:
    """A report of `python -m bench ab --afxdp --parts throughput ...` alone (bench/ab.py --md)."""
    res = ((ab.get("guest") or {}).get("pps") or {}).get("results", [])
    at = ab_cpurate.title(res)
    lines = [f"# The guest: lbd NFQUEUE and AF_XDP next to kernel IPVS ({time.strftime('%Y-%m-%d %H:%M')}, "
             f"commit {ab.get('commit', '?')})", "",
             "Issue 19 item 3's second half and item 4's third target, measured in ONE guest run (bench/ab.py, "
             "bench/ab_guest.py: Debian's kernel under qemu TCG, its kernel IPVS, bench/pps.py's topology, "
             "generator, search and counting). Every figure is only meaningful as a ratio within this run.", "",
             "Zero-loss: the highest measured offered rate with < 0.1 % loss (bisection; gen-limited: the unpaced "
             "generator's own maximum passed, a lower bound). Overload rx: what arrived while the generator ran "
             "unpaced. CPU/pkt: the director CPU's busy time per received packet at the zero-loss trial (the "
             "overload trial when none passed; bench/pps.py dut_fields).", *ab_cpurate.intro(res), "", "## Targets", ""]
    lines += table(["target", "figure", "verdict"], guest_targets(ab))
    lines += guest_section(ab, "## Figures")
    lines += ["", "## Every trial (per repetition)", "",
              *table(["rep", "mode", "traffic", "system", "zero-loss", "gen-limited", "unpaced offered",
                      "CPU us/pkt", "guest load (1/5/15 min)", *([f"CPU us/pkt {at}"] if at else [])],
                    guest_per_rep(res))]
    lines += ab_routed.section(ab)  # --parts routed with the others (bench/ab_routed.py)
    if analysis:
        lines += ["", "## Analysis", "", analysis.strip()]
    return "\n".join(lines) + "\n"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(r) + " |" for r in rows)]


def render(data: dict[str, Any], analysis: str | None = None) -> str:
    cfg = data["config"]
    m = data.get("machine", {})
    lines = [f"# AF_XDP vs NFQUEUE vs kernel forwarding ({data.get('started', '?')}, commit {data.get('commit', '?')})",
             "", "Issue 19 items 3 and 4, measured in ONE run (`bench/afxdp_report.py`, bench/pps.py's machinery).",
             "", "Command:", "", f"    flock /tmp/lvs-bench.lock .venv/bin/python -m bench afxdp-report "
             f"{' '.join(cfg.get('command', '').split()[4:])}".rstrip(), ""]
    load = data.get("load", {})
    per_result = [r.get("loadavg") for r in data.get("results", []) if r.get("loadavg")]
    one_min = [float(x[0]) for x in per_result]
    lines += [f"Machine: {m.get('cpus')} CPUs ({m.get('cpu_model', '?')}), kernel {m.get('kernel')}; generator on "
              f"CPU {cfg.get('gen_cpu')}, director (lbd, its receive path by RPS) on CPU {cfg.get('dut_cpu')}; "
              f"wiring `{cfg.get('wire')}`, "
              f"{ARMS[cfg.get('arms') == 1]}; AF_XDP `--xdp-mode {cfg.get('xdp_mode')}`; {cfg.get('repeats')} "
              f"repetitions, windows {cfg.get('window_s')} s, {cfg.get('steps')} bisection steps; "
              + ("a SCHED_IDLE spinner on the DUT CPU (bench/idle_filler.py: its idle-loop softirq work is counted); "
                 if cfg.get("dut_filler") else "")
              + f"elapsed {data.get('elapsed_s', '?')} s."]
    if load:
        lines += ["", f"Load: at the start {_load_text(load.get('start'))}; at the end {_load_text(load.get('end'))}"
                  + (f"; 1-min load average over the results {min(one_min):.2f}-{max(one_min):.2f}" if one_min else "")
                  + ". The machine is shared (other sessions' tests and qemu guests run beside the bench), so "
                  "only figures and ratios within this run mean something; the spread over the repetitions "
                  "is given with every figure (median (min-max, n))."]
    lines += ["", "## Targets (issue 19 item 4)", "", *table(["target", "figure (median (min-max, n))", "verdict"],
                                                            targets(data))]
    lines += ["", "## Figures", "",
              "Zero-loss: the highest measured offered rate with < 0.1 % loss (bisection, bounded; generator-limited: "
              "the unpaced generator's own maximum passed, a lower bound). Overload: what arrived while the "
              "generator ran unpaced. CPU/pkt: director CPU per received packet at the zero-loss trial (the "
              "overload trial when none passed): all of lbd's threads (packet, timers, control plane) + the director "
              "CPU's softirq time (+ the NAPI kthread under native XDP), at most "
              "that CPU's busy time (bench/pps.py dut_fields); at low rates the other tenants' softirq and CPU time on "
              "the director CPU weigh much (see the spread). CPU saturated: the same per delivered packet in the "
              "overload trial (the director CPU full: batches fullest, other tenants weigh least; an upper bound, "
              "the work on packets dropped at the door is charged to the delivered ones). Latency: one-way, 300 marked probes at 50 % of "
              "the repetition's zero-loss rate (bench/latency.py), includes the sender's system call and both "
              "veths (the kernel row is the baseline).", "",
              *table(["mode", "traffic", "system", "zero-loss pps", "gen-limited", "overload rx", "CPU us/pkt at zero-loss",
                      "CPU us/pkt saturated", "per core (saturated)", "latency p50 us", "p99 us", "probes lost"], summary_rows(data))]
    lines += ["", "## Ratios (per repetition, then median (min-max, n))", "",
              "zero-loss: AF_XDP / NFQUEUE and AF_XDP / kernel; CPU per packet: NFQUEUE / AF_XDP and kernel / "
              "AF_XDP (> 1 = AF_XDP cheaper; 1.0 vs kernel = as cheap as the kernel forwarding the same "
              "packets), at each system's zero-loss rate, saturated, and at the common offered rate (the only "
              "one where the load is the same for both); latency p50 AF_XDP / NFQUEUE (< 1 = AF_XDP faster).", ""]
    rrows = []
    for mode in cfg["modes"]:
        for traffic in cfg["traffic"]:
            r = ratios(data, mode, traffic)
            rrows.append([mode, traffic, *(fmt_spread(r[k], 1, 2, "x") for k in
                                           ("zl_afxdp_nfq", "zl_afxdp_kernel", "cpu_nfq_afxdp", "cpu_kernel_afxdp",
                                            "sat_nfq_afxdp", "sat_kernel_afxdp", "common_nfq_afxdp",
                                            "common_kernel_afxdp", "p50_afxdp_nfq"))])
    lines += table(["mode", "traffic", "zero-loss AF_XDP/NFQ", "zero-loss AF_XDP/kernel", "CPU NFQ/AF_XDP",
                    "CPU kernel/AF_XDP", "saturated CPU NFQ/AF_XDP", "saturated CPU kernel/AF_XDP",
                    "common-rate CPU NFQ/AF_XDP", "common-rate CPU kernel/AF_XDP", "p50 AF_XDP/NFQ"], rrows)
    lines += ["", "## Where the AF_XDP source's CPU goes", ""]
    split = [[mode, traffic, label(system, data.get("results", [])),
              *(fmt_spread(_med([r.get(k) for r in data.get("results", [])
                                 if r["system"] == system and r["mode"] == mode and r["traffic"] == traffic]), 1, 2)
                for k in ("lbd_user_us_per_pkt", "lbd_sys_us_per_pkt", "softirq_us_per_pkt", "napi_us_per_pkt",
                          "ipi_in_per_pkt", "ipi_out_per_pkt"))]
             for mode in cfg["modes"] for traffic in cfg["traffic"] for system in ("c", "afxdp", *EXTRA)
             if any(r["system"] == system for r in data.get("results", []))]
    lines += ["lbd's packet thread (user, system), the director CPU's softirq time and (native XDP) the lan veth's "
              "NAPI kthread, per packet at the zero-loss trial (the CPU/pkt figure also counts lbd's other threads); "
              "thread + softirq can exceed the CPU/pkt figure, "
              "which is capped by the CPU's busy time (softirq work done in the thread's system call is charged "
              "to both). IPIs in: function-call and rescheduling interrupts the director CPU received (the "
              "generator's CPU handing it packets by RPS, or waking the NAPI kthread); IPIs out: those the "
              "generator's CPU received (mostly the director handing its output to the real server by RPS): "
              "in this VM each costs several us (bench/results/2026-12-05-afxdp-cost.md), so CPU per packet "
              "goes with IPIs per packet, i.e. with the batch sizes the rate allows.", "",
              *table(["mode", "traffic", "system", "lbd user us/pkt", "lbd system us/pkt", "softirq us/pkt",
                      "NAPI kthread us/pkt", "IPIs in/pkt", "IPIs out/pkt"], split)]
    crows = common_rows(data)
    if crows:
        lines += ["", "## At a common offered rate", "",
                  f"One more trial after each search at the same offered rate for every system (`--common-rate "
                  f"{cfg.get('common_rate', COMMON_RATE):.0f}`): the zero-loss figures above are taken at very "
                  "different rates (the kernel's at the generator's maximum, where batches are full and an IPI "
                  "serves a hundred packets), so only this table compares CPU per packet under equal load. "
                  "Median (min-max, n) over the repetitions.", "",
                  *table(["mode", "traffic", "system", "offered", "loss", "CPU us/pkt", "lbd system us/pkt",
                          "softirq us/pkt", "NAPI kthread us/pkt", "IPIs in/pkt", "IPIs out/pkt"], crows)]
    tx = xdp_tx_split(data.get("results", []))
    if tx["packets"]:
        calls = (f"in {tx['xmit_l2_calls']} sendmmsg calls ({tx['xmit_l2'] / tx['xmit_l2_calls']:.1f} a call, "
                 f"{tx['xmit_l2_waits']} waits for room)" if tx["xmit_l2_calls"] else "(one sendmsg each)")
        lines += ["", f"Forwarded frames over the whole run: {tx['xmit_xsk']} on the AF_XDP TX ring, {tx['xmit_l2']} "
                  f"through the AF_PACKET socket {calls}, {tx['xmit_l2_err']} refused; "
                  f"{tx['packets']} frames received in {tx['batches']} batches "
                  f"({tx['packets'] / max(tx['batches'], 1):.1f} a batch); the kernel's XDP_STATISTICS "
                  f"rx_ring_full {tx['kernel_rx_ring_full']} (frames the program redirected while the socket's "
                  "ring was full: the overload trials' loss)."]
    if data.get("guest_ab"):
        lines += guest_section(data["guest_ab"])
    skipped = data.get("skipped", [])
    if skipped:
        lines += ["", "## Skipped", "", *(f"- {s['system']} {s['mode']}: {s['reason'][:400]}" for s in skipped)]
    if analysis:
        lines += ["", analysis.strip()]
    return "\n".join(lines) + "\n"


def _load_text(s: dict[str, Any] | None) -> str:
    if not s:
        return "?"
    return (f"{s.get('time')} load average {' '.join(s.get('loadavg', []))}, CPU busy "
            f"{'/'.join(str(x) for x in s.get('cpu_busy_pct', []))} % (1 s sample, before/after the bench)")
