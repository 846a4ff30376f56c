"""python -m bench scale: what lbd costs as what it holds grows (issue 15).

    python -m bench scale [--quick] [--sections table,fnat,statesave,conns,flood,overload,ctl] [...]

Each section is a module of this package with the same small interface (SECTIONS below):
`add_args(ap)` for its options, `finish_args(args)` for its --quick defaults, `run(args) -> dict`
(its JSON, with "skipped" and a reason when it cannot run here) and `report(data, targets) ->
list[str]` (its markdown: tables, plots through bench.scale.plots, and the target rows it judges
appended to `targets`). A section that needs root (network namespaces) says so and is skipped
without it. Add a section: one module, one line in SECTIONS.

Sections of the connection-table work (issue 15 items 3-5):
- table     the connection table alone (the C harness, gcc -O2): time per established packet and
            resident memory per entry at 1k .. 4M entries.
- fnat      FULLNAT new connections with the local port pool free vs exhausted: instructions per
            SYN (callgrind, deterministic).
- statesave saving lbd's state at 1M / 4M entries: a whole snapshot (what lbd did every 2 s) vs an
            incremental save of what changed, and a save when nothing did.
- conns     lbd in namespaces with 1k .. 4M entries (idle UDP entries around 1024 established
            flows): zero-loss pps, DUT CPU per packet, resident memory per entry, the control
            plane's CPU while idle.
- flood     a spoofed-SYN flood (3 kpps) on a full table (--conn-max 5000): real clients served
            during and right after it.
- overload  offered twice the zero-loss rate: what lbd still delivers, where the rest was dropped.

And of the control plane (issue 15 item 2):
- ctl       lbadm commands, reloads, -R and lbd's idle CPU at 1, 1,000, 10,000 services (bench/ctl_scale.py).

And of the steering (issue 15 item 1):
- services  traffic to the last of 1 .. 10,000 services and traffic routed through the director
            (not for a service), against a director without lbd (bench/steer_scale.py).
- routed    what routed traffic costs the director's CPU at a fixed rate, with lbd's rules and
            with lbd running, against the director without lbd (bench/routed_cost.py).
"""

from __future__ import annotations

import argparse
import importlib
import os
import time
import traceback
from typing import Any

from bench import common
from bench.common import log

# name -> module (bench.scale.<module>); the order is the run's and the report's.
SECTIONS: dict[str, str] = {
    "table": "bench.scale.table",
    "fnat": "bench.scale.fnat",
    "statesave": "bench.scale.statesave",
    "conns": "bench.scale.conns",
    "flood": "bench.scale.flood",
    "overload": "bench.scale.overload",
    "ctl": "bench.scale.ctl",
    "services": "bench.steer_scale",
    "routed": "bench.routed_cost",
}


def section_module(name: str) -> Any:
    return importlib.import_module(SECTIONS[name])


def add_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated, of {', '.join(SECTIONS)}")
    common.add_cpu_args(ap)
    for name in SECTIONS:
        mod = section_module(name)
        if hasattr(mod, "add_args"):
            mod.add_args(ap)


def finish_args(args: argparse.Namespace) -> None:
    args.section_list = [s for s in args.sections.split(",") if s]
    unknown = [s for s in args.section_list if s not in SECTIONS]
    if unknown:
        raise SystemExit(f"bench scale: unknown section(s) {', '.join(unknown)}; known: {', '.join(SECTIONS)}")
    for name in SECTIONS:
        mod = section_module(name)
        if hasattr(mod, "finish_args"):
            mod.finish_args(args)


def run(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"part": "scale", "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                           "commit": common.git_commit(), "machine": common.machine_info(),
                           "config": {"command": "python -m bench scale " + " ".join(getattr(args, "argv", [])),
                                      "quick": args.quick, "sections": args.section_list},
                           "sections": {}}
    for name in args.section_list:
        mod = section_module(name)
        t0 = time.monotonic()
        if getattr(mod, "NEEDS_ROOT", False) and os.geteuid() != 0:
            data: dict[str, Any] = {"skipped": "needs root (network namespaces)"}
        else:
            log(f"scale: {name}")
            try:
                data = mod.run(args)
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # one broken section must not lose the others
                log(f"scale: {name} failed: {exc}")
                data = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
        data["elapsed_s"] = round(time.monotonic() - t0, 1)
        out["sections"][name] = data
    return out


def report(part: dict[str, Any], targets: list[list[str]]) -> list[str]:
    """The report's section for a scale.json: every section's own, in SECTIONS order."""
    if part.get("error"):
        return ["## Scale (bench scale)", "", f"Failed: `{part['error']}`", ""]
    lines = ["## Scale: cost as the tables grow (bench scale)", "",
             f"`{part.get('config', {}).get('command', 'python -m bench scale')}`; every ratio is between figures "
             "of this one run.", ""]
    for name in SECTIONS:
        data = part.get("sections", {}).get(name)
        if data is None:
            continue
        mod = section_module(name)
        if data.get("skipped"):
            lines += [f"### {mod.TITLE}", "", f"Skipped: {data['skipped']}.", ""]
        elif data.get("error"):
            lines += [f"### {mod.TITLE}", "", f"Failed: `{data['error']}`", ""]
        else:
            lines += mod.report(data, targets)
    return lines
