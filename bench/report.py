"""Markdown report and PNG plots from a run directory's part results.

    python -m bench report [--out RUN_DIR]

Reads RUN_DIR/{pps,http,bulk,cost,ab,scale}.json (whichever exist), writes
bench/results/<date>-<commit>.md with plots bench/results/<date>-<commit>-*.png, and refreshes
the "Latest results" section of bench/README.md when the directory holds every part.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from bench import common

README = common.BENCH / "README.md"
MARK_BEGIN = "<!-- latest-results:begin -->"
MARK_END = "<!-- latest-results:end -->"


PART_NAMES = ("pps", "http", "cost", "ab")  # what a complete run must hold (README refresh)
OPTIONAL_PARTS = ("bulk", "scale", "failover")


def _load(run_dir: Path) -> dict[str, Any]:
    parts = {}
    for name in (*PART_NAMES, *OPTIONAL_PARTS):
        p = run_dir / f"{name}.json"
        if p.exists():
            parts[name] = json.loads(p.read_text())
    return parts


def _k(v: float | None, unit: str = "") -> str:
    if v is None:
        return "-"
    if abs(v) >= 1000:
        return f"{v / 1000:.1f}k{unit}"
    return f"{v:.0f}{unit}" if abs(v) >= 10 else f"{v:.2f}{unit}"


def _mmm(s: dict[str, Any] | None, fmt: Any = _k) -> str:
    """median (min-max) of a common.summarize() dict."""
    if not s or not s.get("n"):
        return "-"
    if s["n"] == 1:
        return f"{fmt(s['median'])} (n=1)"
    return f"{fmt(s['median'])} ({fmt(s['min'])}-{fmt(s['max'])}, n={s['n']})"


def _ratio_stats(a: list[float], b: list[float]) -> dict[str, Any]:
    """Per-repetition ratios a[i]/b[i] (same repetition = same conditions), summarized."""
    vals = [x / y for x, y in zip(a, b, strict=False) if y]
    return common.summarize(vals)


def _by_rep(results: list[dict[str, Any]], system: str, mode: str, traffic: str, key: str = "zero_loss_pps") -> dict[int, float]:
    out = {}
    for r in results:
        if r["system"] == system and r["mode"] == mode and r["traffic"] == traffic and r.get(key) is not None:
            out[r["rep"]] = r[key]
    return out


def _paired(results: list[dict[str, Any]], a: tuple[str, str, str], b: tuple[str, str, str],
            key: str = "zero_loss_pps", invert: bool = False) -> dict[str, Any]:
    ra, rb = _by_rep(results, *a, key=key), _by_rep(results, *b, key=key)
    reps = sorted(set(ra) & set(rb))
    if invert:  # for costs: capacity ratio = cost_b / cost_a
        return _ratio_stats([rb[r] for r in reps], [ra[r] for r in reps])
    return _ratio_stats([ra[r] for r in reps], [rb[r] for r in reps])


# --------------------------------------------------------------------------- plots


def _plots(parts: dict[str, Any], stem: Path) -> list[str]:
    try:
        import matplotlib  # noqa: PLC0415

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        return []
    made = []
    pps = parts.get("pps") or {}
    if pps.get("sweep"):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for s in pps["sweep"]:
            pts = sorted(s["points"], key=lambda p: p["offered_pps"])
            ax.plot([p["offered_pps"] / 1e3 for p in pts], [p["rx_pps"] / 1e3 for p in pts], marker="o",
                    label={"kernel": "kernel forwarding", "python": "lbd --engine python", "c": "lbd (C)"}.get(
                        s["system"], s["system"]))
        lim = max(p["offered_pps"] for s in pps["sweep"] for p in s["points"]) / 1e3
        ax.plot([0, lim], [0, lim], color="grey", linestyle=":", linewidth=1, label="no loss")
        ax.set_xlabel("offered load (kpps, 64-byte TCP ACKs of 1024 established flows)")
        ax.set_ylabel("received at the real server (kpps)")
        ax.set_title("DR: received vs offered load")
        ax.grid(True, alpha=0.3)
        ax.legend()
        p = stem.with_name(stem.name + "-pps.png")
        fig.tight_layout()
        fig.savefig(p, dpi=110)
        plt.close(fig)
        made.append(p.name)
    http = parts.get("http") or {}
    lat = http.get("latency") or []
    if lat:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
        for ax, mode in zip(axes, ("ka", "close"), strict=True):
            for r in lat:
                if r["mode"] != mode or r["rep"] != 0:
                    continue
                xs = [c[1] / 1000 for c in r["cdf"]]
                ys = [c[0] for c in r["cdf"]]
                ax.plot(xs, ys, marker=".", linestyle="-" if r["target"] == "vip" else "--",
                        label=f"{'via VIP (lbd)' if r['target'] == 'vip' else 'direct'} at {int(r['level'] * 100)}%")
            ax.set_xscale("log")
            ax.set_xlabel("latency (ms, log)")
            ax.set_title("keep-alive" if mode == "ka" else "one connection per request")
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=8)
        axes[0].set_ylabel("percentile")
        fig.suptitle("HTTP latency CDF (wrk, paced), repetition 1")
        p = stem.with_name(stem.name + "-latency.png")
        fig.tight_layout()
        fig.savefig(p, dpi=110)
        plt.close(fig)
        made.append(p.name)
    return made


# --------------------------------------------------------------------------- sections


def _machine(parts: dict[str, Any]) -> list[str]:
    m: dict[str, Any] = next((p.get("machine") for p in parts.values() if p.get("machine")), {}) or {}
    return [
        "## Machine",
        "",
        f"- kernel {m.get('kernel')}, {m.get('cpus')} CPUs ({m.get('cpu_model')}), {m.get('mem_gib')} GiB; "
        f"load average at start {' '.join(m.get('loadavg_at_start') or [])} (the machine is shared: other "
        "helpers' test runs use CPU during these measurements, so systems are compared within one run, "
        "interleaved per repetition)",
        f"- {m.get('gcc')}; {m.get('trafgen')}; {m.get('wrk')}; {m.get('valgrind')}; Python {m.get('python')}",
        "",
    ]


def _pps(parts: dict[str, Any], targets: list[list[str]], plots: list[str], stem: Path) -> list[str]:
    pps = parts.get("pps")
    if not pps:
        return []
    if "error" in pps:
        return ["## Zero-loss throughput", "", f"Failed: `{pps['error']}`", ""]
    cfg = pps["config"]
    res = pps["results"]
    L = ["## Zero-loss throughput (bench/pps)", "",
         f"Command: `{cfg.get('command')}`  ",
         f"Topology client -[{_link(cfg)}]- director -[{_link(cfg)}]- rs1 (namespaces), 60-byte frames (64 with FCS), "
         f"trial window {cfg['window_s']} s, loss < {cfg['loss_max'] * 100:.1f} %, {cfg['steps']} bisection steps "
         f"after an unpaced probe, {cfg['repeats']} repetitions (systems interleaved in each). Generator on CPU "
         f"{cfg.get('gen_cpu')}, lbd on CPU {cfg.get('dut_cpu')}, RPS: {cfg.get('rps')}, nice {cfg.get('nice')}.",
         ""]
    lims = [p for p in pps.get("path_limit", [])]
    if lims:
        L += [f"trafgen (TX_RING, unpaced) through the director as a router: "
              f"{_mmm(common.summarize([p['offered_pps'] for p in lims]))} pps offered, "
              f"{_mmm(common.summarize([p['rx_pps'] for p in lims]))} pps received "
              f"(`{lims[0]['command']}`).", ""]
    L += ["| system | mode | traffic | zero-loss pps, median (min-max) | generator-limited | overload: offered -> received | "
          "DUT CPU us/packet (split: packet thread user / sys / CPU softirq, overlapping) | projected pps per DUT core |",
          "|---|---|---|---|---|---|---|---|"]
    for s in pps.get("summary", []):
        us = s.get("dut_us_per_pkt", {})
        proj = 1e6 / us["median"] if us and us.get("median") else None
        L.append(f"| {s['system']} | {s['mode']} | {s['traffic']} | {_mmm(s['zero_loss_pps'])} | "
                 f"{'yes (a lower bound)' if s['generator_limited'] else 'no'} | "
                 f"{_k(s['overload_offered_pps']['median'])} -> {_k(s['overload_rx_pps']['median'])} | "
                 f"{_mmm(us, lambda v: f'{v:.1f}')}{_split(s)} | {_k(proj)} |")
    for sk in pps.get("skipped", []):
        L.append(f"| {sk['system']} | {sk['mode']} | - | skipped: {sk['reason'][:300]} | | | | |")
    L += ["", "\"DUT CPU us/packet\" = CPU time on the DUT CPU (lbd pinned there, RPS steers the director's receive "
          "path there) per packet received, over the best passing trial: min(the CPU's busy time, all of lbd's threads "
          "(the packet thread, its busiest, and the others) + the CPU's softirq time), both upper bounds "
          "(busy time includes other load on this "
          "shared machine; with tick-based accounting softirq work done while the thread runs is charged to both its "
          "system time and softirq). The split in brackets: packet thread user / system / CPU softirq (overlapping). "
          "\"projected\" = 10^6 / DUT us: what one dedicated core would carry. It "
          "is the comparison that still works when the generator, not the system under test, is the limit.", ""]
    # ratios
    L += ["Ratios (per repetition, then median (min-max)):", ""]
    for mode, kind in (("dr", "est"), ("dr", "syn")):
        zr = _paired(res, ("c", mode, kind), ("python", mode, kind))
        cr = _paired(res, ("c", mode, kind), ("python", mode, kind), key="dut_us_per_pkt", invert=True)
        kr = _paired(res, ("c", mode, kind), ("kernel", "route", kind))
        L.append(f"- {mode} {kind}: lbd C / python zero-loss pps = {_mmm(zr, lambda v: f'{v:.2f}x')}; "
                 f"by DUT CPU per packet = {_mmm(cr, lambda v: f'{v:.2f}x')}; lbd C / kernel forwarding = "
                 f"{_mmm(kr, lambda v: f'{v:.2f}x')}")
    L.append("")
    zr = _paired(res, ("c", "dr", "est"), ("python", "dr", "est"))
    cr = _paired(res, ("c", "dr", "est"), ("python", "dr", "est"), key="dut_us_per_pkt", invert=True)
    if zr.get("n"):
        met = zr["median"] >= 10
        gl = any(r["generator_limited"] for r in res if r["system"] == "c" and r["mode"] == "dr")
        note = (f"measured {zr['median']:.1f}x" + (" (lbd C was generator-limited: a lower bound)" if gl else "")
                + (f"; by DUT CPU per packet {cr['median']:.1f}x" if cr.get("n") else ""))
        targets.append(["lbd C >= 10x python engine, zero-loss pps (DR, est)", note,
                        "met" if met else f"missed by {10 / zr['median']:.1f}x" + (" (measured; see below)" if gl else "")])
    if "pps.png" in " ".join(plots):
        L += [f"![pps vs offered load]({stem.name}-pps.png)", ""]
    if pps.get("sweep"):
        L += ["Sweep (DR, est; offered -> received kpps): " + "; ".join(
            f"{s['system']}: " + ", ".join(f"{p['offered_pps'] / 1e3:.0f}->{p['rx_pps'] / 1e3:.0f}"
                                           for p in sorted(s["points"], key=lambda p: p["offered_pps"]))
            for s in pps["sweep"]), ""]
    return L


def _split(s: dict[str, Any]) -> str:
    u, k, q = (s.get(x, {}) for x in ("lbd_user_us_per_pkt", "lbd_sys_us_per_pkt", "softirq_us_per_pkt"))
    if not (u and u.get("n")):
        return ""
    return f" ({u['median']:.1f} + {k['median']:.1f} + {q['median']:.1f})"


def _bulk(parts: dict[str, Any]) -> list[str]:
    b = parts.get("bulk")
    if not b:
        return []
    if "error" in b and not b.get("summary"):
        return ["## Bulk upload (GSO)", "", f"Failed: `{b['error']}`", ""]
    s, cfg = b["summary"], b["config"]
    L = ["## Bulk upload through DR, with and without --gso (bench/bulk)", "",
         f"Command: `{cfg.get('command')}`; {cfg['mib']} MiB per upload in {cfg['chunk'] // 1024} KiB writes, one "
         f"connection, {cfg['repeats']} repetitions; `direct` is client -> rs1 without the director in the way.", "",
         "| system | MB/s | queue messages / MiB | frames sent / MiB | lbd CPU ms / MiB |", "|---|---|---|---|---|"]
    f1 = lambda v: f"{v:.1f}"  # noqa: E731
    f0 = lambda v: f"{v:.0f}"  # noqa: E731
    for name in ("direct", "c", "c-gso"):
        if name in s:
            e = s[name]
            L.append(f"| {name} | {_mmm(e['mb_s'], f1)} | {_mmm(e.get('queue_msgs_per_mib'), f0)} | "
                     f"{_mmm(e.get('frames_per_mib'), f0)} | {_mmm(e.get('lbd_cpu_ms_per_mib'), f1)} |")
    if s.get("gso_speedup"):
        L += ["", f"--gso: {s['gso_speedup']:.2f}x the throughput of lbd without it."]
    for err in b.get("errors", []):
        L.append(f"- error: {err}")
    return L + [""]


def _http(parts: dict[str, Any], plots: list[str], stem: Path) -> list[str]:
    h = parts.get("http")
    if not h:
        return []
    if "error" in h and not h.get("summary"):
        return ["## HTTP", "", f"Failed: `{h['error']}`", ""]
    s, cfg = h["summary"], h["config"]
    L = ["## HTTP: requests/s, connections/s, added latency (bench/http)", "",
         f"Command: `{cfg.get('command')}`; wrk {cfg['connections']} connections, {cfg['duration_s']} s per run, "
         f"{cfg['repeats']} repetitions; real server bench/native/httpd.c; lbd C, DR, rr. Latency runs are paced "
         "with bench/wrk_report.lua (Poisson arrivals from wrk's delay() hook; wrk2 is not in Debian) at 50 % and "
         "90 % of the maximum measured through the VIP, direct and through the VIP at the same rate; wrk's latency "
         "starts at the request's write (the handshake of `close` mode is not inside it).", "",
         "| | direct | through the VIP (lbd) | VIP / direct |", "|---|---|---|---|"]
    for mode, label in (("ka", "max requests/s, keep-alive"), ("close", "max connections/s (Connection: close)")):
        d, v = s["max"].get(f"{mode}/direct"), s["max"].get(f"{mode}/vip")
        ratio = (v["median"] / d["median"]) if d and v and d.get("median") else None
        L.append(f"| {label} | {_mmm(d)} | {_mmm(v)} | {ratio:.2f} |" if ratio else f"| {label} | {_mmm(d)} | {_mmm(v)} | - |")
    L += ["", "| mode, load | rate achieved direct / VIP | p50 direct / VIP (us) | p99 direct / VIP | p99.9 direct / VIP | "
          "added p50 / p99 / p99.9 (us) |", "|---|---|---|---|---|---|"]
    for key, ent in s["latency"].items():
        mode, lvl = key.split("/")
        dd, vv, ad = ent["direct"], ent["vip"], ent["added_us"]
        L.append(f"| {'keep-alive' if mode == 'ka' else 'close'}, {lvl} % | {_k(dd['rate_rps']['median'])} / "
                 f"{_k(vv['rate_rps']['median'])} | {_k(dd['p50']['median'])} / {_k(vv['p50']['median'])} | "
                 f"{_k(dd['p99']['median'])} / {_k(vv['p99']['median'])} | {_k(dd['p999']['median'])} / "
                 f"{_k(vv['p999']['median'])} | {_mmm(ad['p50'])} / {_mmm(ad['p99'])} / {_mmm(ad['p999'])} |")
    L.append("")
    if "latency.png" in " ".join(plots):
        L += [f"![latency CDF]({stem.name}-latency.png)", ""]
    return L


def _cost(parts: dict[str, Any], targets: list[list[str]]) -> list[str]:
    c = parts.get("cost")
    if not c:
        return []
    if "error" in c:
        return ["## Per-packet cost", "", f"Failed: `{c['error']}`", ""]
    cfg = c["config"]
    L = ["## Per-packet cost: instructions per packet of lb_process (bench/cost)", "",
         f"Command: `{cfg.get('command')}`; build `{cfg['build']}`; callgrind, N = {cfg['n']} and 2N repetitions "
         "(difference / N: the harness's setup and file reading cancel). Deterministic: no repetitions needed.", "",
         "| class | instructions/packet | what |", "|---|---|---|"]
    for name, r in c["classes"].items():
        L.append(f"| {name} | {r['instr_per_pkt']:.0f} | {r.get('what', '')} |")
    t = c.get("target") or {}
    if t:
        targets.append(["lb_process <= 300 instructions/packet (DR established ACK)", f"{t['value']:.0f}",
                        "met" if t["met"] else f"missed by {t['over_by']:.0f} ({t['value'] / t['target']:.2f}x)"])
    top = c["classes"].get("dr_est_ack", {}).get("top_functions", [])
    if top:
        L += ["", "Where the DR established ACK's instructions go (self instructions per packet, by function):", "",
              "| function | instructions |", "|---|---|"]
        L += [f"| {fn} | {v:.0f} |" for fn, v in top]
    hist = common.RESULTS / "cost_history.csv"
    if hist.exists():
        rows = list(csv.reader(hist.open()))[1:]
        dr = [r for r in rows if r[2] == "dr_est_ack"][-8:]
        if dr:
            L += ["", "History (bench/results/cost_history.csv, dr_est_ack): " +
                  ", ".join(f"{r[0]} {r[1]}: {r[3]}" for r in dr)]
    L.append("")
    return L


def _link(cfg: dict[str, Any]) -> str:
    """How pps cabled the hosts: runs from before --wire existed used the testbed's bridges."""
    return "veth" if cfg.get("wire") == "direct" else "bridge"


def _ab(parts: dict[str, Any], targets: list[list[str]]) -> list[str]:
    a = parts.get("ab")
    if not a:
        return []
    L = ["## A/B against kernel IPVS (bench/ab, in a guest)", ""]
    boot = a.get("boot") or {}
    if boot:
        L += [f"Guest: `{boot.get('command')}`, kernel `{Path(boot.get('kernel_image', '')).name}`, "
              f"{boot.get('seconds')} s in total (boot ~30 s), exit {boot.get('rc')}. Emulated (TCG): **figures "
              "from the guest are ratios between systems measured in the same guest run, not absolutes.**", ""]
    cb = a.get("configured_by") or ((a.get("guest") or {}).get("configured_by"))
    if cb:
        L += [f"Both systems configured from one rules file. Kernel IPVS: {cb['ipvs']}. lbd: {cb['lbd']}.", ""]
    elif boot:  # runs from before the tool was recorded
        L += ["Both systems configured from one rules file (`ipvsadm -R` / `lbadm -R`).", ""]
    if a.get("error") and not a.get("guest"):
        L += [f"Not run: {a['error']}", ""]
        return L
    g = a.get("guest") or {}
    f = g.get("functional") or {}
    if f:
        L += ["Functional agreement (same rules, same client requests):", "", "| case | IPVS | lbd | agree |",
              "|---|---|---|---|"]
        for case in ("rr", "wlc"):
            if case in f:
                x, y = f[case].get("ipvs", {}), f[case].get("lbd", {})
                L.append(f"| {case} | {' '.join(x.get('sequence') or [x.get('error', '-')])} | "
                         f"{' '.join(y.get('sequence') or [y.get('error', '-')])} | {f[case].get('agree')} |")
        L += ["", "rr: 12 fresh connections, weights 1/1/1; wlc: 12 connections held open, weights 1/2/3.", ""]
    s = a.get("summary") or {}
    if s.get("pps"):
        L += ["| system/mode | zero-loss pps in the guest, median (min-max) | generator-limited | DUT CPU us/packet |",
              "|---|---|---|---|"]
        res = (g.get("pps") or {}).get("results", [])
        for key, st in s["pps"].items():
            sysname, mode = key.split("/")
            rs = [r for r in res if r["system"] == sysname and r["mode"] == mode]
            gl = any(r["generator_limited"] for r in rs)
            us = common.summarize([r["dut_us_per_pkt"] for r in rs if r.get("dut_us_per_pkt")])
            L.append(f"| {key} | {_mmm(st)} | {'yes' if gl else 'no'} | {_mmm(us, lambda v: f'{v:.1f}')} |")
        for sk in (g.get("pps") or {}).get("skipped", []):
            L.append(f"| {sk['system']}/{sk['mode']} | skipped: {sk['reason'][:200]} | | |")
        L.append("")
        for mode, st in s.get("ratio_lbd_over_ipvs", {}).items():
            L.append(f"- lbd / IPVS zero-loss pps, {mode}: {_mmm(st, lambda v: f'{v:.2f}x')}")
        res_cpu = {}
        for sysname in ("ipvs", "lbd"):
            v = [r["dut_us_per_pkt"] for r in res if r["system"] == sysname and r["mode"] == "route" and r.get("dut_us_per_pkt")]
            res_cpu[sysname] = common.summarize(v)
        if res_cpu["ipvs"].get("n") and res_cpu["lbd"].get("n"):
            cpu_ratio = res_cpu["ipvs"]["median"] / res_cpu["lbd"]["median"]
            L.append(f"- lbd / IPVS by DUT CPU per packet (capacity per core), route: {cpu_ratio:.2f}x")
        else:
            cpu_ratio = None
        L.append("")
        rr = s.get("ratio_lbd_over_ipvs", {}).get("route")
        if rr:
            gl = any(r["generator_limited"] for r in res if r["system"] in ("ipvs", "lbd") and r["mode"] == "route")
            txt = f"{rr['median']:.2f}x zero-loss" + (" (generator-limited: both lower bounds)" if gl else "")
            if cpu_ratio:
                txt += f"; {cpu_ratio:.2f}x by DUT CPU per packet"
            judged = cpu_ratio if (gl and cpu_ratio) else rr["median"]
            targets.append(["lbd >= 0.5x kernel IPVS zero-loss pps, DR, same guest", txt,
                            "met" if judged >= 0.5 else f"missed by {0.5 / judged:.1f}x"])
    if s.get("http"):
        L += ["| system/mode (guest) | wrk rate, median (min-max) |", "|---|---|"]
        L += [f"| {k} | {_mmm(v)} |" for k, v in s["http"].items()]
        L.append("")
    errs = g.get("errors")
    if errs:
        L += ["Guest errors:", "", "```", *[f"{k}: {v[:800]}" for k, v in errs.items()], "```", ""]
    return L


def _scale(parts: dict[str, Any], targets: list[list[str]], stem: Path) -> list[str]:
    if "scale" not in parts:
        return []
    from bench import scale  # noqa: PLC0415
    from bench.scale import plots as scale_plots  # noqa: PLC0415

    scale_plots.STEM = stem
    return scale.report(parts["scale"], targets)


def write(run_dir: Path) -> Path:
    from bench import pps as bpps  # noqa: PLC0415

    parts = _load(run_dir)
    if parts.get("pps", {}).get("results") is not None:
        bpps.recompute(parts["pps"])
    guest_pps = ((parts.get("ab") or {}).get("guest") or {}).get("pps")
    if guest_pps and guest_pps.get("results") is not None:
        bpps.recompute(guest_pps)
    commit = next((p.get("commit") for p in parts.values() if p.get("commit")), common.git_commit())
    official = run_dir.resolve().parent == (common.RESULTS / "runs").resolve()
    name = run_dir.name if official else f"{common.today()}-{commit}"
    # Runs elsewhere (e.g. --out bench/results/tmp/x) keep their report inside their directory.
    md = common.RESULTS / f"{name}.md" if official else run_dir / "report.md"
    stem = common.RESULTS / name if official else run_dir / name
    plots = _plots(parts, stem)
    targets: list[list[str]] = []
    body = []
    body += _machine(parts)
    body += _pps(parts, targets, plots, stem)
    body += _http(parts, plots, stem)
    body += _bulk(parts)
    body += _cost(parts, targets)
    body += _ab(parts, targets)
    body += _scale(parts, targets, stem)
    if "failover" in parts:
        from bench import failover  # noqa: PLC0415

        body += failover.report(parts["failover"])
    analysis = run_dir / "analysis.md"  # hand-written notes for this run (why a target is missed, what closes it)
    head = [f"# Benchmark report {name}", "",
            f"Run directory: `{run_dir.relative_to(common.REPO) if run_dir.is_relative_to(common.REPO) else run_dir}` "
            f"(raw JSON of every trial). Parts: {', '.join(parts) or 'none'}; "
            + ", ".join(f"{k} {v.get('elapsed_s', '?')} s" for k, v in parts.items()) + ".", "",
            "Reproduce: `python -m bench all` (or one part: `python -m bench pps|http|bulk|cost|ab|scale`, `--quick` for a "
            "smoke run). Dependencies: see bench/README.md.", ""]
    if targets:  # a run of parts that measure none (e.g. bulk alone) has no targets section
        head += ["## Targets", "", "| target | figure | verdict |", "|---|---|---|"]
        head += [f"| {t[0]} | {t[1]} | {t[2]} |" for t in targets]
        head.append("")
    if analysis.exists():
        head += [analysis.read_text().rstrip(), ""]
    md.write_text("\n".join(head + body) + "\n")
    # Only a complete run (every part, as `bench all` leaves it) may stand for "the latest results":
    # one part run alone would otherwise replace the README's table with a fragment.
    if official and set(PART_NAMES) <= set(parts):
        _update_readme(md, head, body, plots, stem)
    return md


def _update_readme(md: Path, head: list[str], body: list[str], plots: list[str], stem: Path) -> None:
    if not README.exists():
        return
    text = README.read_text()
    if MARK_BEGIN not in text or MARK_END not in text:
        return
    tgt = [ln for ln in head if ln.startswith("|")]
    pps_rows = [ln for ln in body if ln.startswith(("| kernel |", "| c |", "| python |"))]
    block = [MARK_BEGIN, "", f"From [{md.name}](results/{md.name}):", "", *tgt]
    if pps_rows:
        block += ["", "| system | mode | traffic | zero-loss pps | generator-limited | overload | DUT us/pkt | projected |",
                  "|---|---|---|---|---|---|---|---|", *pps_rows]
    if any(p.endswith("-pps.png") for p in plots):
        block += ["", f"![pps vs offered load](results/{stem.name}-pps.png)"]
    block += ["", MARK_END]
    pre, rest = text.split(MARK_BEGIN, 1)
    post = rest.split(MARK_END, 1)[1]
    README.write_text(pre + "\n".join(block) + post)
