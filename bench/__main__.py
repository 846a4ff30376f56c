"""The benchmark suite's entry point.

    python -m bench all   [--quick] [--out DIR]      every part, then the report
    python -m bench pps   [--quick] [options]        zero-loss pps (bench/pps.py)
    python -m bench http  [--quick] [options]        connections/s and latency with wrk (bench/http.py)
    python -m bench bulk  [--quick] [options]        bulk upload through DR, with and without --gso (bench/bulk.py)
    python -m bench cost  [--quick] [options]        instructions per packet with callgrind (bench/cost.py)
    python -m bench ab    [--quick] [options]        A/B against kernel IPVS in a guest (bench/ab.py)
    python -m bench scale [--quick] [--sections ...]  cost as the tables grow: connections, state saves,
                                                     SYN flood on a full table, overload (bench/scale/)
    python -m bench report [--out DIR]               (re)write the markdown report and plots from DIR
    python -m bench afxdp-report [options]           kernel / lbd NFQUEUE / lbd AF_XDP in one run, with
                                                     latency and the issue-19 targets (bench/afxdp_report.py)

Each part writes DIR/<part>.json (DIR defaults to bench/results/runs/<date>-<commit>/) and then
rewrites the report bench/results/<date>-<commit>.md from every part found in DIR, so a part run
alone still yields a report. Needs root (namespaces) except `cost` and `report`; `scale` without
root runs only its sections that need none (table, fnat, statesave).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from pathlib import Path

from bench import common

PARTS = ("pps", "http", "bulk", "cost", "ab", "scale")
NO_ROOT_PARTS = ("cost", "scale")  # run without root (scale: its sections that need none)


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="part", required=True)
    from bench import afxdp_report
    xr = sub.add_parser("afxdp-report", description=afxdp_report.__doc__,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    xr.add_argument("--out", type=Path, default=None, help="run directory (default bench/results/runs/<date>-<commit>)")
    xr.add_argument("--quick", action="store_true", help="one repetition, DR only, short windows")
    afxdp_report.add_args(xr)
    for name in (*PARTS, "all", "report"):
        p = sub.add_parser(name)
        p.add_argument("--out", type=Path, default=None, help="run directory (default bench/results/runs/<date>-<commit>)")
        p.add_argument("--quick", action="store_true", help="CI-sized smoke run (< 2 minutes per part)")
        p.add_argument("--no-report", action="store_true", help="do not rewrite the markdown report")
        if name in ("pps", "all"):
            from bench import pps
            pps.add_args(p) if name == "pps" else None
        if name == "http":
            from bench import http
            http.add_args(p)
        if name == "bulk":
            from bench import bulk
            bulk.add_args(p)
        if name == "cost":
            from bench import cost
            cost.add_args(p)
        if name == "ab":
            from bench import ab
            ab.add_args(p)
        if name == "scale":
            from bench import scale
            scale.add_args(p)
    return ap


def _run_part(name: str, args: argparse.Namespace, out_dir: Path) -> bool:
    t0 = time.monotonic()
    common.log(f"== bench {name}{' --quick' if args.quick else ''} -> {out_dir}")
    try:
        if name == "pps":
            from bench import pps
            pps.finish_args(args)
            data = pps.run_external(args) if getattr(args, "iface", None) else pps.run(args)
        elif name == "http":
            from bench import http
            http.finish_args(args)
            data = http.run(args)
        elif name == "bulk":
            from bench import bulk
            bulk.finish_args(args)
            data = bulk.run(args)
        elif name == "cost":
            from bench import cost
            cost.finish_args(args)
            data = cost.run(args)
        elif name == "ab":
            from bench import ab
            ab.finish_args(args)
            data = ab.run(args, out_dir)
        elif name == "scale":
            from bench import scale
            scale.finish_args(args)
            data = scale.run(args)
        else:
            raise ValueError(name)
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # one broken part must not lose the others' results
        common.log(f"bench {name} failed: {exc}")
        data = {"part": name, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
    data.setdefault("elapsed_s", round(time.monotonic() - t0, 1))
    common.write_json(out_dir / f"{name}.json", data)
    common.log(f"== bench {name} done in {time.monotonic() - t0:.0f}s")
    return "error" not in data


def _defaults_for(name: str, quick: bool, argv: list[str]) -> argparse.Namespace:
    """The argument namespace a part would get from `python -m bench <name> [--quick]`."""
    return _parser().parse_args([name, *(["--quick"] if quick else [])])


def _afxdp_report(args: argparse.Namespace, out_dir: Path) -> int:
    from bench import afxdp_report

    afxdp_report.finish_args(args)
    if args.from_json:
        data = common.read_json(args.from_json)
        analysis = args.from_json.parent / "analysis-afxdp.md"
    else:
        if os.geteuid() != 0:
            print("bench: needs root (network namespaces, iptables inside them)", file=sys.stderr)
            return 2
        data = afxdp_report.run(args)
        common.write_json(out_dir / "afxdp.json", data)
        common.log(f"afxdp-report: {out_dir / 'afxdp.json'}")
        analysis = out_dir / "analysis-afxdp.md"
    if args.guest_json:
        data["guest_ab"] = common.read_json(args.guest_json)
    text = afxdp_report.render(data, analysis.read_text() if analysis.exists() else None)
    args.md.write_text(text)
    print(text)
    common.log(f"afxdp-report: {args.md}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    args.argv = argv[1:]
    out_dir = args.out or common.default_run_dir()
    if not getattr(args, "from_json", None):  # a re-render writes no run directory
        out_dir.mkdir(parents=True, exist_ok=True)
    if args.part in PARTS or args.part == "all":
        if os.geteuid() != 0 and args.part not in NO_ROOT_PARTS:
            print("bench: needs root (network namespaces, iptables inside them)", file=sys.stderr)
            return 2
    if args.part == "afxdp-report":
        return _afxdp_report(args, out_dir)
    ok = True
    if args.part == "all":
        for name in PARTS:
            pa = _defaults_for(name, args.quick, [])
            pa.argv = (["--quick"] if args.quick else [])
            ok &= _run_part(name, pa, out_dir)
    elif args.part in PARTS:
        ok = _run_part(args.part, args, out_dir)
    if not getattr(args, "no_report", False):
        from bench import report
        path = report.write(out_dir)
        common.log(f"report: {path}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
