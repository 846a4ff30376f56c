"""Failover figures of the connection sync (issue 18 item 5): how many established connections
survive when director A dies and the VIP moves to B, and again on the way back to A, per
forwarding method, and how long the takeover took.

    python -m bench.failover [--out RUN_DIR]

Runs tests/netns/test_sync_failover.py once (two lbd directors in namespaces, 20 connections per
method) with LB_SYNC_FIGURES set, writes RUN_DIR/failover.json and the report (bench/report.py's
"Failover" section). Needs root. Hold /tmp/lvs-bench.lock around it on a shared machine.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import common

TEST = "tests/netns/test_sync_failover.py"
TIMEOUT_S = 900


def run() -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="lbB-failover-") as tmp:
        figures_path = Path(tmp) / "figures.json"
        env = dict(os.environ, LB_SYNC_FIGURES=str(figures_path))
        proc = subprocess.run([common.PY, "-m", "pytest", "-q", "-p", "no:cacheprovider", TEST], cwd=common.REPO,
                              env=env, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
        data: dict[str, Any] = {"part": "failover", "commit": common.git_commit(), "machine": common.machine_info(),
                                "test": TEST, "test_exit": proc.returncode}
        if figures_path.exists():
            data["figures"] = common.read_json(figures_path)
        else:
            data["error"] = f"{TEST} wrote no figures (exit {proc.returncode}): {proc.stdout[-2000:]}"
        return data


def report(data: dict[str, Any]) -> list[str]:
    """The report's section (bench/report.py)."""
    lines = ["## Failover with connection sync (bench/failover.py)", ""]
    fig = data.get("figures")
    if not fig:
        return lines + [f"No figures: {data.get('error', 'not run')}", ""]
    n = fig.get("connections_per_method", "?")
    lines += [f"Two lbd directors, {n} established HTTP keep-alive connections per method through A (sync master, "
              "B backup); A killed by PID, the VIP moved to B by hand; then A restarted without its state file, "
              "as a backup first (B's bulk pass gives it the table), the VIP moved back. One request per "
              f"connection after each move (test exit {data.get('test_exit')}).", "",
              "| step | method | connections answered by their real server | first reply after the VIP move (any method) |",
              "|---|---|---|---|"]
    for step, title in (("to_b", "A -> B"), ("back_to_a", "B -> A")):
        s = fig.get(step) or {}
        first = s.get("first_reply_s")
        for method, survived in (s.get("survived") or {}).items():
            lines.append(f"| {title} | {method} | {survived}/{n} | {'-' if first is None else f'{first:.2f} s'} |")
    if fig.get("a_table_back_s") is not None:
        lines += ["", f"Restarted A had B's whole table {fig['a_table_back_s']:.1f} s after its backup started "
                  "(B's bulk period in the test: 3 s; default 30 s)."]
    return lines + [""]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.failover", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=None, help="run directory (default: a new one under bench/results/runs)")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench.failover: needs root (network namespaces)", file=sys.stderr)
        return 2
    out_dir = args.out or common.default_run_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    data = run()
    data["elapsed_s"] = round(time.monotonic() - t0, 1)
    common.write_json(out_dir / "failover.json", data)
    from bench import report as bench_report  # noqa: PLC0415

    common.log(f"report: {bench_report.write(out_dir)}")
    return 0 if "error" not in data else 1


if __name__ == "__main__":
    sys.exit(main())
