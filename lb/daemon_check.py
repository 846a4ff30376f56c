"""lbd --check [--diff] FILE: validate a configuration file, dry-run it on a scratch engine (no queue,
no rules), and with --diff print what applying it to the running lbd would change."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from lb.daemon import make_engine
from lb.daemon_options import socket_path
from lb.director import Director
from lb.engine import EngineError


def check(args: argparse.Namespace) -> int:
    """lbd --check [--diff] FILE: validate (and dry-run) a configuration; print the plan with --diff."""
    from lb.config import ConfigErrors, load_config

    path = args.file
    try:
        config = load_config(path)
    except ConfigErrors as exc:
        for issue in exc.issues:
            print(issue, file=sys.stderr)
        print(f"{path}: {len(exc.issues)} error(s); nothing would be applied", file=sys.stderr)
        return 1
    problem = _dry_run(config, args)
    if problem:
        print(problem, file=sys.stderr)
        return 1
    print(f"{path}: OK ({config.kind}): {config.summary()}")
    if args.diff:
        return _print_diff(config, socket_path(args.socket))
    return 0


def _dry_run(config: Any, args: argparse.Namespace) -> str | None:
    """Apply the file to a scratch engine (no queue, no rules): engine refusals with their line."""
    try:
        engine = make_engine(args.engine, 1024)
    except Exception as exc:  # e.g. the C module is not built: static validation stands alone
        print(f"{config.path}: warning: no dry run, cannot create a {args.engine} engine: {exc}", file=sys.stderr)
        return None
    director = Director(engine, rules=None, resolver=None)
    try:
        director.apply_config(config, "check")
    except EngineError as exc:
        return f"{exc} (refused by the {engine.name} engine)"
    return None


def _print_diff(config: Any, sock: str) -> int:
    from lb.ctlclient import ControlClient, ControlClientError
    from lb.reconcile import State, plan

    try:
        with ControlClient(sock) as client:
            running = State.from_list_json(client.request("list"), client.request("get_timeout"))
    except ControlClientError as exc:
        print(f"lbd --check --diff: {exc}", file=sys.stderr)
        return 1
    steps = plan(running, config.state())
    if not steps:
        print("no changes")
    for step in steps:
        text = step.describe()
        if step.line:
            text += f", line {step.line}" if "#" in text else f"  # line {step.line}"
        print(text)
    return 0
