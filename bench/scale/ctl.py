"""bench scale's control-plane section (issue 15 item 2): bench/ctl_scale.py in the section interface.

lbadm commands, reloads, -R and lbd's idle CPU at 1, 1,000 and 10,000 services (--ctl-sizes), with
lbd --no-iptables and with its rules; see bench/ctl_scale.py for what is measured and the targets.
"""

from __future__ import annotations

import argparse
from typing import Any

from bench import ctl_scale
from bench.ctl_scale import rules_label
from bench.scale import plots

TITLE = "Control plane against the number of services (bench/ctl_scale.py)"
NEEDS_ROOT = True


def add_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--ctl-sizes", default=None,
                    help=f"ctl: numbers of services (default {','.join(map(str, ctl_scale.SIZES))}; --quick: 1,1000)")
    ap.add_argument("--ctl-repeats", type=int, default=None, help=f"ctl: samples per command (default {ctl_scale.REPEATS})")
    ap.add_argument("--ctl-no-iptables-split", action="store_true", help="ctl: measure lbd --no-iptables only")


def finish_args(args: argparse.Namespace) -> None:
    if getattr(args, "quick", False):
        args.ctl_sizes = args.ctl_sizes or "1,1000"
        args.ctl_repeats = args.ctl_repeats or 3


def run(args: argparse.Namespace) -> dict[str, Any]:
    return ctl_scale.run(argparse.Namespace(sizes=args.ctl_sizes, repeats=args.ctl_repeats or ctl_scale.REPEATS,
                                            no_iptables_split=args.ctl_no_iptables_split))


SINGLES = ("-A", "-a", "-e", "-E", "-d", "-D", "-L -t")  # one-service commands (the < 0.1 s target)


def report(data: dict[str, Any], targets: list[list[str]]) -> list[str]:
    lines, rows = ctl_scale.report(data)
    targets.extend(rows)
    return ["### " + TITLE, *lines[1:], *_plots(data)]


def _plots(data: dict[str, Any]) -> list[str]:
    """Curves against the number of services, per mode (lbd --no-iptables, with its rules)."""
    results = [r for r in data.get("results", []) if "error" not in r]
    if len({r["services"] for r in results}) < 2:
        return []
    commands: dict[str, list[tuple[float, float]]] = {}
    bulk: dict[str, list[tuple[float, float]]] = {}
    for r in results:
        mode = f"{rules_label(r)} steering" if r["iptables"] else "no steering"
        n = r["services"]
        worst = max(r["commands"][c]["median_s"] for c in SINGLES if c in r["commands"])
        commands.setdefault(f"one lbadm command (worst), {mode}", []).append((n, worst * 1e3))
        if r.get("server"):
            side = max(v["median_s"] for v in r["server"].values())
            commands.setdefault(f"lbd's side of it (worst), {mode}", []).append((n, side * 1e3))
        bulk.setdefault(f"no-op reload, {mode}", []).append((n, r["commands"]["reload (no-op)"]["median_s"]))
        bulk.setdefault(f"lbadm -R of everything, {mode}", []).append((n, r["restore"]["s"]))
    out = plots.image(plots.line_plot(
        "ctl-commands", "One lbadm command vs services (median wall clock)", "services (log)", "ms", commands,
        logx=True, hline=(ctl_scale.TARGET_COMMAND_S * 1e3, f"target {ctl_scale.TARGET_COMMAND_S * 1e3:.0f} ms")),
        "lbadm commands vs services")
    out += plots.image(plots.line_plot(
        "ctl-bulk", "Reload and restore vs services", "services (log)", "s", bulk, logx=True,
        hline=(ctl_scale.TARGET_NOOP_RELOAD_S, f"no-op reload target {ctl_scale.TARGET_NOOP_RELOAD_S:g} s")),
        "reload and restore vs services")
    return out
