"""The guest A/B's fixed-rate CPU trial (bench/ab_guest.py --cpu-rate, --cpu-seconds) and its figures.

Each system's zero-loss search (bench/pps.py search) ends at its own rate, and the CPU per packet of
its best 1-second trial mixes fixed costs (timers, the control plane, the idle loop's softirq work)
with per-packet ones at a different rate for every system: under qemu TCG the same system gave 6.7 to
16.6 us/pkt over four repetitions. After each search, one more trial (bench/pps.py trial: the same
generator, counting and DUT CPU accounting) offers every system the SAME rate for a longer window:
identical traffic, so CPU per packet compares as equals. Its result is r["fixed_rate"].

A fixed-rate trial that lost packets (>= bench/pps.py LOSS_MAX, 0.1 %) is not a like-for-like
figure (that system was overloaded at the common rate, and its busy time is charged to fewer
packets): it is flagged in the report, and the repetitions where either side of a ratio lost are
left out of that ratio (named in the verdict). When no repetition is left, the verdict falls back
to the zero-loss-trial figure and says so.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from bench import common, pps

DEFAULT_RATE = 8000.0  # pps: below every system's zero-loss rate in the TCG guest (9.3k-17.4k, DR est, 2026-12-06)
DEFAULT_SECONDS = 5.0  # 5x the search's window: 40k packets at the default rate
SHORT = 0.95  # a fixed-rate trial offered below this fraction of its rate says so in the report


def measure(bed: pps.Bed, tr: pps.Traffic, rate: float, seconds: float, probe: Any = None) -> dict[str, Any]:
    """One paced trial at `rate` pps for `seconds` (bench/pps.py trial), marked lossy when it lost
    >= LOSS_MAX, then the same window without traffic (idle_window: the fixed cost per second); a
    failure is recorded, not raised (the search's figures stand without it). `probe`: started right
    before the trial, and `probe.stop(trial)` right after it, its fields added to the trial's
    (bench/ab_routed.py: the DUT CPU's traced NET_RX time)."""
    try:
        if probe is not None:
            probe.start()
        t = pps.trial(bed, tr, rate, seconds)
        if probe is not None:
            t.update(probe.stop(t))
    except Exception as exc:  # noqa: BLE001 - recorded in the result
        return {"rate": rate, "seconds": seconds, "error": f"{type(exc).__name__}: {exc}"[:800]}
    out = {**t, "rate": rate, "seconds": seconds, "lossy": not t.get("pass")}
    try:
        out["idle"] = idle_window(bed, seconds)
    except Exception as exc:  # noqa: BLE001 - the fixed-rate figure stands without it
        out["idle"] = {"error": f"{type(exc).__name__}: {exc}"[:400]}
    return out


def idle_window(bed: pps.Bed, seconds: float) -> dict[str, Any]:
    """The system's cost with NO traffic for `seconds`, in CPU ms per second, accounted as a trial's
    (bench/pps.py dut_fields: every lbd thread + the DUT CPU's softirq, at most its busy time): what
    a system spends whatever the rate (lbd's control plane and timers; the guest's own softirq work
    for every system). Its share of the fixed-rate figure is this over the rate; the rest is the
    per-packet (marginal) cost: fixed_split()."""
    a = bed.cpu_ticks()
    time.sleep(seconds)
    b = bed.cpu_ticks()
    ticks = {k: b[k] - a[k] for k in b if k in a}
    threads = sum(v for k, v in ticks.items() if k.startswith("t") and k.endswith(("_user", "_sys")))
    threads += ticks.get("napi") or 0
    soft, busy = ticks.get("softirq") or 0, ticks.get("busy")
    used = min(busy, threads + soft) if busy else threads + soft
    ms = 1e3 / pps.CLK_TCK / seconds
    per_thread: dict[str, float] = {}
    for k, v in ticks.items():  # which of lbd's threads it was (main: the control plane's event loop)
        if v and k.startswith("t") and k.endswith(("_user", "_sys")):
            name = pps.thread_name(getattr(bed, "lbd_pid", None), k[1:].rsplit("_", 1)[0])
            per_thread[name] = per_thread.get(name, 0.0) + v * ms
    return {"seconds": seconds, "dut_ms_per_s": used * ms, "lbd_ms_per_s": threads * ms, "softirq_ms_per_s": soft * ms,
            "threads_ms_per_s": per_thread}


def fixed_split(r: dict[str, Any] | None) -> tuple[float, float] | None:
    """(idle cost in us per packet at the fixed rate, marginal us per packet = the fixed-rate figure minus
    that) of result `r`; None without a usable fixed-rate trial and idle window."""
    us = usable(r)
    f = (r or {}).get("fixed_rate") or {}
    idle = f.get("idle") or {}
    if us is None or idle.get("dut_ms_per_s") is None or not f.get("rx_pps"):
        return None
    idle_us = float(idle["dut_ms_per_s"]) * 1e3 / float(f["rx_pps"])
    return idle_us, us - idle_us


def usable(r: dict[str, Any] | None) -> float | None:
    """The fixed-rate CPU per packet of result `r`, None when absent, failed or lossy."""
    f = (r or {}).get("fixed_rate") or {}
    if f.get("error") or f.get("lossy"):
        return None
    return f.get("dut_us_per_pkt")


def lossy(r: dict[str, Any] | None) -> bool:
    f = (r or {}).get("fixed_rate") or {}
    return bool(f.get("lossy") or f.get("error"))


def setting(results: Sequence[dict[str, Any]]) -> tuple[float, float] | None:
    """(rate, seconds) of the run's fixed-rate trials; None when it had none (results before --cpu-rate)."""
    for r in results:
        f = r.get("fixed_rate")
        if f:
            return float(f["rate"]), float(f["seconds"])
    return None


def title(results: Sequence[dict[str, Any]]) -> str:
    """"at 8k pps (5 s)", or "" when the run has no fixed-rate trials."""
    s = setting(results)
    return f"at {s[0] / 1e3:g}k pps ({s[1]:g} s)" if s else ""


def describe(results: Sequence[dict[str, Any]]) -> str:
    """The verdict's wording of the fixed-rate figure: "at 8k pps, 5 s windows, identical traffic"."""
    s = setting(results)
    return f"at {s[0] / 1e3:g}k pps, {s[1]:g} s windows, identical traffic" if s else ""


def pair_ratios(results: Sequence[dict[str, Any]], num: str, den: str, mode: str,
                kind: str, marginal: bool = False) -> tuple[list[float], list[str]]:
    """Within each repetition, fixed-rate CPU per packet den/num (> 1: num cheaper), and the
    repetitions left out because a fixed-rate trial of either side lost packets or failed
    ("rep 2: lbd-afxdp-fast lost 0.52 %"). `marginal`: the per-packet part only (fixed_split), from the
    repetitions that have idle windows."""
    vals: list[float] = []
    dropped: list[str] = []
    for rep in sorted({r["rep"] for r in results}):
        pick = {s: [r for r in results if r["rep"] == rep and r["system"] == s and r["mode"] == mode
                    and r.get("traffic", "est") == kind] for s in (num, den)}
        if not (pick[num] and pick[den]):
            continue
        a, b = pick[num][0], pick[den][0]
        if not (a.get("fixed_rate") and b.get("fixed_rate")):
            continue
        bad = [f"{x['system']} {_loss_text(x['fixed_rate'])}" for x in (a, b) if lossy(x)]
        if bad:
            dropped.append(f"rep {rep + 1}: {', '.join(bad)}")
            continue
        if marginal:
            sa, sb = fixed_split(a), fixed_split(b)
            ua, ub = (sa[1] if sa else None), (sb[1] if sb else None)
        else:
            ua, ub = usable(a), usable(b)
        if ua and ub and ua > 0 and ub > 0:
            vals.append(ub / ua)
    return vals, dropped


def _loss_text(f: dict[str, Any]) -> str:
    return "failed" if f.get("error") else f"lost {100 * float(f.get('loss') or 0):.2f} %"


def cell(rs: Sequence[dict[str, Any]]) -> str:
    """One system's fixed-rate CPU per packet over its repetitions: median (min-max, n) of the clean
    trials, "; N lossy left out" when some lost packets."""
    from bench.afxdp_report import fmt_spread  # noqa: PLC0415 - afxdp_report imports this module

    clean = [u for u in (usable(r) for r in rs) if u is not None]
    bad = sum(1 for r in rs if lossy(r))
    text = fmt_spread(common.summarize(clean), 1, 1)
    return text + (f"; {bad} lossy left out" if bad else "")


def split_cell(rs: Sequence[dict[str, Any]]) -> str:
    """One system's fixed-rate figure split (fixed_split): "idle 2.1 + per packet 5.3" (medians over the
    repetitions with an idle window), "-" without."""
    from bench.afxdp_report import fmt_spread  # noqa: PLC0415

    splits = [x for x in (fixed_split(r) for r in rs) if x is not None]
    if not splits:
        return "-"
    return (f"idle {fmt_spread(common.summarize([x[0] for x in splits]), 1, 1)} + per packet "
            f"{fmt_spread(common.summarize([x[1] for x in splits]), 1, 1)}")


def rep_cell(r: dict[str, Any]) -> str:
    """One trial's fixed-rate CPU per packet, flagged LOSSY (with its loss) when it lost packets, and with
    what was offered when the generator fell short of the rate."""
    f = r.get("fixed_rate") or {}
    if not f:
        return "-"
    if f.get("error"):
        return "failed"
    us = f"{f['dut_us_per_pkt']:.1f}" if f.get("dut_us_per_pkt") else "-"
    if float(f.get("offered_pps") or 0) < SHORT * float(f["rate"]):  # the generator fell short: not the common rate
        us += f" (offered only {float(f.get('offered_pps') or 0) / 1e3:.1f}k)"
    return f"{us} LOSSY ({_loss_text(f)})" if f.get("lossy") else us


def ratio_cells(entry: dict[str, Any]) -> list[str]:
    """bench/ab.py guest_ratios' fixed-rate ratio (kernel/lbd) of one key: the summary, and the values per
    repetition with the repetitions left out (a lossy fixed-rate trial) named."""
    from bench.afxdp_report import fmt_spread  # noqa: PLC0415

    s = entry.get("cpu_fixed_ipvs_over_lbd") or {"n": 0}
    per_rep = " / ".join(f"{v:.2f}" for v in s.get("values") or []) or "-"
    left = entry.get("cpu_fixed_left_out") or []
    m = entry.get("cpu_marginal_ipvs_over_lbd") or {"n": 0}
    return [fmt_spread(s, 1, 2, "x"), per_rep + (f" (left out, lossy: {'; '.join(left)})" if left else ""),
            fmt_spread(m, 1, 2, "x") if m.get("n") else "-"]


def intro(results: Sequence[dict[str, Any]]) -> list[str]:
    """The report's paragraph on the fixed-rate column ([] when the run had no fixed-rate trials)."""
    s = setting(results)
    if s is None:
        return []
    return ["", f"CPU us/pkt at {s[0]:g} pps: after each system's search, one more trial at that SAME offered rate "
            f"for {s[1]:g} s (--cpu-rate, --cpu-seconds; bench/ab_cpurate.py): identical traffic, so the figure "
            "compares per-packet cost as equals; the Targets verdict uses it when there is one. A fixed-rate trial "
            "that lost >= 0.1 % is flagged LOSSY and left out of the figures and ratios (the repetition is named); "
            "when every repetition lost, the verdict falls back to the zero-loss trials' figure and says so. "
            f"Then the same {s[1]:g} s without traffic (idle): the system's fixed cost per second (lbd's control plane "
            "and timers; the guest's own softirq work, for every system). Split: that idle cost over the rate + the "
            "rest, the per-packet (marginal) cost; \"per packet kernel/lbd\" compares the marginal costs alone."]
