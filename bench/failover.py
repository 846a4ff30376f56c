"""Failover figures of the connection sync (issue 18 item 5): how many established connections
survive when director A dies and the VIP moves to B, and again on the way back to A, per
forwarding method, and how long the takeover took.

    python -m bench.failover [--out RUN_DIR]

Runs tests/netns/test_sync_failover.py (DR, IPIP) and tests/netns/test_sync_fullnat.py (FULLNAT
plain and with SYN-proxy) once each (two lbd directors in namespaces, 20 connections per method)
with LB_SYNC_FIGURES set, writes RUN_DIR/failover.json and the report (bench/report.py's
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

# Each test measures its own methods: DR and IPIP, then FULLNAT plain and with SYN-proxy.
TESTS = ("tests/netns/test_sync_failover.py", "tests/netns/test_sync_fullnat.py")
TIMEOUT_S = 900


def _run_test(test: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="lbB-failover-") as tmp:
        figures_path = Path(tmp) / "figures.json"
        env = dict(os.environ, LB_SYNC_FIGURES=str(figures_path))
        proc = subprocess.run([common.PY, "-m", "pytest", "-q", "-p", "no:cacheprovider", test], cwd=common.REPO,
                              env=env, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
        out: dict[str, Any] = {"test": test, "test_exit": proc.returncode}
        if figures_path.exists():
            out["figures"] = common.read_json(figures_path)
        else:
            out["error"] = f"{test} wrote no figures (exit {proc.returncode}): {proc.stdout[-2000:]}"
        return out


def run() -> dict[str, Any]:
    data: dict[str, Any] = {"part": "failover", "commit": common.git_commit(), "machine": common.machine_info(),
                            "runs": [_run_test(test) for test in TESTS]}
    errors = [r["error"] for r in data["runs"] if "error" in r]
    if errors:
        data["error"] = "; ".join(errors)
    return data


def _first(first: Any, method: str) -> str:
    """A first-reply figure: per method (a dict) or, in runs before FULLNAT was measured, one for all."""
    value = first.get(method) if isinstance(first, dict) else first
    return "-" if value is None else f"{value:.2f} s"


def report(data: dict[str, Any]) -> list[str]:
    """The report's section (bench/report.py)."""
    lines = ["## Failover with connection sync (bench/failover.py)", ""]
    runs = data.get("runs") or [data]  # runs before FULLNAT was measured: one test, its figures at the top
    if not any(r.get("figures") for r in runs):
        return lines + [f"No figures: {data.get('error', 'not run')}", ""]
    n = next(r["figures"].get("connections_per_method", "?") for r in runs if r.get("figures"))
    exits = ", ".join(f"{Path(r.get('test', '?')).name} {r.get('test_exit')}" for r in runs)
    lines += [f"Two lbd directors, {n} established HTTP keep-alive connections per method through A (sync master, "
              "B backup); A killed by PID, the VIP (and for FULLNAT the local address) moved to B by hand; then A "
              "restarted without its state file, as a backup first (B's bulk pass gives it the table, FULLNAT and "
              "SYN-proxy entries through the sync extension), the VIP moved back. One request per connection after "
              "each move, round robin over the methods; a FULLNAT connection counts when the real server still sees "
              f"it from the same local address and port (test exits: {exits}).", "",
              "First reply: seconds from the start of the move (the `ip` commands included) to the method's first "
              "request answered as before; the requests go round robin, so a method's figure also holds the earlier "
              "methods' first requests, and the client's ARP for the moved VIP. The machine is shared with other "
              "test runs: the times are noisy, from a single run, and not a measure of lbd's takeover alone.", "",
              "| step | method | connections answered by their real server | first reply after the move |",
              "|---|---|---|---|"]
    for step, title in (("to_b", "A -> B"), ("back_to_a", "B -> A")):
        for r in runs:
            s = (r.get("figures") or {}).get(step) or {}
            for method, survived in (s.get("survived") or {}).items():
                lines.append(f"| {title} | {method} | {survived}/{n} | {_first(s.get('first_reply_s'), method)} |")
    for r in runs:
        fig = r.get("figures") or {}
        if fig.get("a_table_back_s") is not None:
            methods = ", ".join((fig.get("to_b") or {}).get("survived") or {})
            lines += ["", f"Restarted A had B's whole table ({methods}) {fig['a_table_back_s']:.1f} s after its backup "
                      "started (B's bulk period in the test: 3 s; default 30 s)."]
    for r in runs:
        if "error" in r:
            lines += ["", f"{r['test']}: {r['error']}"]
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
