"""bench scale's control-plane section (issue 15 item 2): bench/ctl_scale.py in the section interface.

lbadm commands, reloads, -R and lbd's idle CPU at 1, 1,000 and 10,000 services (--ctl-sizes), with
lbd --no-iptables and with its rules; see bench/ctl_scale.py for what is measured and the targets.
"""

from __future__ import annotations

import argparse
from typing import Any

from bench import ctl_scale

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


def report(data: dict[str, Any], targets: list[list[str]]) -> list[str]:
    lines, rows = ctl_scale.report(data)
    targets.extend(rows)
    return ["### " + TITLE, *lines[1:]]
