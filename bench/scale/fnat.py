"""FULLNAT new connections with the local port pool free vs exhausted: instructions per SYN.

`harness fnatcost accept|refuse M` under callgrind, counting only the M measured SYNs
(--toggle-collect=measured_process): with the pool free each SYN is accepted (a local port found,
an entry made, the SYN rewritten); with every port of the service's local address taken towards
both real servers (129,024 connections made first) each is refused with no_laddr. Deterministic.
Before issue 15 a refused SYN probed up to 4,096 ports per local address (about 17x the cost of an
accepted one at the system level: 15 kpps instead of ~250 kpps).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from bench import common
from bench.common import log

TITLE = "FULLNAT local ports exhausted (callgrind)"
TARGET_RATIO = 2.0  # a refused SYN costs at most 2x an accepted one


def add_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--fnat-syns", type=int, default=None, help="measured SYNs per mode (default 4000; quick 1000)")


def finish_args(args: argparse.Namespace) -> None:
    if args.fnat_syns is None:
        args.fnat_syns = 1000 if args.quick else 4000


def _count(harness: Path, mode: str, m: int, work: Path) -> int:
    out = work / f"cg.{mode}"
    proc = subprocess.run(["valgrind", "--tool=callgrind", "--toggle-collect=measured_process",
                           f"--callgrind-out-file={out}", str(harness), "fnatcost", mode, str(m)],
                          capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"fnatcost {mode}: exit {proc.returncode}: {proc.stderr[-800:]}")
    found = re.search(r"Collected : (\d+)", proc.stderr)
    if not found:
        raise RuntimeError(f"fnatcost {mode}: no callgrind total")
    return int(found.group(1))


def run(args: argparse.Namespace) -> dict[str, Any]:
    harness = common.build_harness()
    m = args.fnat_syns
    with tempfile.TemporaryDirectory(prefix="lbB-scale-fnat-") as tmpd:
        work = Path(tmpd)
        accepted = _count(harness, "accept", m, work) / m
        refused = _count(harness, "refuse", m, work) / m
    log(f"scale fnat: accepted SYN {accepted:.0f} instructions, refused (pool exhausted) {refused:.0f}")
    return {"syns": m, "accepted_instr": accepted, "refused_instr": refused, "ratio": refused / accepted,
            "command": f"valgrind --tool=callgrind --toggle-collect=measured_process {harness.name} "
                       f"fnatcost accept|refuse {m}"}


def report(data: dict[str, Any], targets: list[list[str]]) -> list[str]:
    ratio = data["ratio"]
    targets.append([f"FULLNAT: a refused SYN (pool exhausted) costs <= {TARGET_RATIO:g}x an accepted one",
                    f"{ratio:.2f}x ({data['refused_instr']:.0f} vs {data['accepted_instr']:.0f} instructions)",
                    "met" if ratio <= TARGET_RATIO else "MISSED"])
    return [f"### {TITLE}", "", f"`{data['command']}`, per measured SYN (inside lb_process, with its call):", "",
            "| SYN of a new client to a FULLNAT service | instructions | vs accepted |", "|---|---|---|",
            f"| accepted (ports free) | {data['accepted_instr']:.0f} | 1.00x |",
            f"| refused: every port of the local address taken towards both real servers | "
            f"{data['refused_instr']:.0f} | {ratio:.2f}x |", ""]
