"""Command line of `lbadm doctor` (also runnable as `python -m lb.doctor.cli [--socket PATH] ...`).

    lbadm [--socket PATH] doctor [--json] [--window SECONDS] [--queue-num N]

Runs lb.doctor's read-only checks on the director this process runs on (run it inside the
director's network namespace, as root) and prints the findings. Exit status: 0 when no finding
has severity "error", 1 otherwise, 2 for an invalid command line.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TextIO

from lb.doctor import DEFAULT_WINDOW_S, MAX_WINDOW_S, LiveContext, format_json, format_text, has_errors, run_checks

EXIT_OK = 0
EXIT_FINDINGS = 1
EXIT_USAGE = 2


def _window(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 <= value <= MAX_WINDOW_S:
        raise argparse.ArgumentTypeError(f"window must be within 0..{MAX_WINDOW_S:g} seconds")
    return value


def _queue(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a queue number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError("queue number must be within 0..65535")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lbadm doctor",
        description="Diagnose the director: firewall rules that meet balanced traffic, rp_filter, ip_forward, "
        "the VIPs' presence, lbd's NFQUEUE rules and queue drops, tunnel MTU, unresolved destinations, and "
        "handshakes that stall behind the director (sampled over --window seconds). Read-only.",
    )
    p.add_argument("--json", action="store_true", help="print the findings as JSON")
    p.add_argument("--window", type=_window, default=DEFAULT_WINDOW_S, metavar="SECONDS",
                   help=f"sample lbd's counters this long (default {DEFAULT_WINDOW_S:g}; 0 = one sample, no rates)")
    p.add_argument("--queue-num", type=_queue, default=None, metavar="N",
                   help="lbd's NFQUEUE number (default: ask lbd, else the only LBD-Q<N> chain)")
    return p


def main_doctor(argv: Sequence[str], socket_path: str, *, stdout: TextIO | None = None,
                stderr: TextIO | None = None) -> int:
    """Entry point for `lbadm doctor ARGV...`; `socket_path` is lbd's control socket."""
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    parser = build_parser()
    try:
        args = parser.parse_args(list(argv))
    except SystemExit as exc:  # argparse printed usage (or --help)
        return EXIT_OK if exc.code in (0, None) else EXIT_USAGE
    ctx = LiveContext(socket_path, window_s=args.window, queue_num=args.queue_num)
    if args.window > 0 and err.isatty():
        print(f"lbadm doctor: sampling lbd for {args.window:g} s ...", file=err, flush=True)
    findings = run_checks(ctx)
    out.write(format_json(findings, args.window) if args.json else format_text(findings, args.window))
    out.flush()
    return EXIT_FINDINGS if has_errors(findings) else EXIT_OK


def doctor_invocation(argv: Sequence[str]) -> tuple[str | None, list[str]] | None:
    """If `argv` is `[--socket PATH | --socket=PATH] doctor ARGS...`, return (PATH or None, ARGS).

    For lbadm's main(): anything else (every ipvsadm command line) returns None and is parsed as
    before. "doctor" is not an ipvsadm word, so this cannot shadow an ipvsadm invocation.
    """
    args = list(argv)
    socket: str | None = None
    i = 0
    while i < len(args):
        a = args[i]
        if a == "--socket" and i + 1 < len(args):
            socket, i = args[i + 1], i + 2
        elif a.startswith("--socket="):
            socket, i = a.split("=", 1)[1], i + 1
        elif a == "doctor":
            return socket, args[i + 1:]
        else:
            return None
    return None


def main(argv: Sequence[str] | None = None) -> int:
    from lb.ctlclient import resolve_socket_path

    args = list(sys.argv[1:] if argv is None else argv)
    socket: str | None = None
    if args and args[0] == "--socket" and len(args) > 1:
        socket, args = args[1], args[2:]
    elif args and args[0].startswith("--socket="):
        socket, args = args[0].split("=", 1)[1], args[1:]
    if args[:1] == ["doctor"]:
        args = args[1:]
    return main_doctor(args, resolve_socket_path(socket))


if __name__ == "__main__":
    sys.exit(main())
