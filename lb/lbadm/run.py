"""Talking to lbd and printing: one request (or -R's batch), its answer rendered as ipvsadm does."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence

from lb.ctlclient import ConnectError, ControlClient, ControlError, ProtocolError, resolve_socket_path
from lb.ipvsadm_fmt import (
    format_connections,
    format_daemons,
    format_laddrs,
    format_list,
    format_one_service,
    format_save,
    format_timeout,
)
from lb.lbadm.cmdline import Action, Invocation, Request
from lb.lbadm.errors import EXIT_LIST_FAILED, EXIT_NO_DAEMON, EXIT_OK, EXIT_OP_FAILED, PROG, UsageError, ipvs_strerror
from lb.lbadm.invocation import RestoreError, parse_args, refuse_unimplemented, restore_invocations
from lb.namedb import NameDB
from lb.records import NamedTuple

TYPE_CHECKING = False
if TYPE_CHECKING:  # lbadm imports this module: no typing at run time (lb/records.py)
    from typing import Any, TextIO

ClientFactory = Callable[[str], ControlClient]


class _Streams(NamedTuple):
    stdin: TextIO
    stdout: TextIO
    stderr: TextIO


def run(invocation: Invocation, connect: ClientFactory, streams: _Streams, names: NameDB) -> int:
    if invocation.action in (Action.HELP, Action.VERSION):
        from lb.lbadm.usage import usage_text, version_text  # -h and -v only: not every command's import

        streams.stdout.write(usage_text() if invocation.action is Action.HELP else version_text())
        return EXIT_OK
    if invocation.action is Action.RESTORE:
        return _run_restore(invocation, connect, streams, names)
    if invocation.refusal is not None:  # what lbd does not implement: refused as the kernel refuses
        streams.stderr.write(invocation.refusal + "\n")
        return EXIT_OP_FAILED
    assert invocation.request is not None
    try:
        result = _send(invocation.socket_path, invocation.request, connect)
    except ControlError as exc:
        streams.stderr.write(ipvs_strerror(exc.op, exc.errno_name, exc.message) + "\n")
        return EXIT_OP_FAILED if invocation.action is Action.CHANGE else EXIT_LIST_FAILED
    except (ConnectError, ProtocolError) as exc:
        streams.stderr.write(f"{PROG}: {exc}\n")
        return EXIT_NO_DAEMON
    try:
        text = render(invocation, result, names)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        bad = ProtocolError(invocation.socket_path, f"{invocation.request.op} result lacks or mangles {exc!r}")
        streams.stderr.write(f"{PROG}: {bad}\n")
        return EXIT_NO_DAEMON
    streams.stdout.write(text)
    return EXIT_OK


def _send(socket_path: str, request: Request, connect: ClientFactory) -> Any:
    with connect(socket_path) as client:
        return client.request(request.op, request.args)


def _run_restore(invocation: Invocation, connect: ClientFactory, streams: _Streams, names: NameDB) -> int:
    try:
        parsed = restore_invocations(streams.stdin.read(), names)
        refuse_unimplemented(parsed)
        requests = [inv.request for _, inv in parsed if inv.request is not None]
    except RestoreError as exc:
        streams.stderr.write(exc.error.message + "\n")
        streams.stderr.write(f"{PROG}: restore: line {exc.line_number} is invalid; nothing was changed\n")
        return exc.error.status
    if not requests:
        return EXIT_OK
    try:
        with connect(invocation.socket_path) as client:
            for chunk, more in _chunks([r.to_json() for r in requests]):
                args: dict[str, Any] = {"requests": chunk}
                if more:
                    args["more"] = True
                client.request("batch", args)
    except ControlError as exc:
        failed_op = _failed_batch_op(exc, requests)
        streams.stderr.write(ipvs_strerror(failed_op, exc.errno_name, exc.message) + "\n")
        streams.stderr.write(f"{PROG}: restore: {_failed_batch_where(exc)}nothing was changed\n")
        return EXIT_OP_FAILED
    except (ConnectError, ProtocolError) as exc:
        streams.stderr.write(f"{PROG}: {exc}\n")
        return EXIT_NO_DAEMON
    return EXIT_OK


# lbd refuses request lines over 1 MiB (lb/ctlserver.py): a large restore goes in chunks of about this
# many bytes, applied by lbd all at once with the last one (docs/control-protocol.md, batch).
RESTORE_CHUNK_BYTES = 256 * 1024


def _chunks(requests: list[dict[str, Any]]) -> Iterator[tuple[list[dict[str, Any]], bool]]:
    """(requests, more) chunks, each about RESTORE_CHUNK_BYTES of JSON at most (one request alone
    is far below lbd's limit: a command line's worth)."""
    chunk: list[dict[str, Any]] = []
    size = 0
    for request in requests:
        length = len(json.dumps(request, separators=(",", ":"))) + 1
        if chunk and size + length > RESTORE_CHUNK_BYTES:
            yield chunk, True
            chunk, size = [], 0
        chunk.append(request)
        size += length
    yield chunk, False


def _failed_batch_op(exc: ControlError, requests: list[Request]) -> str:
    index = exc.response.get("index")
    if isinstance(index, int) and 0 <= index < len(requests):
        return requests[index].op
    return str(exc.response.get("op") or exc.op)


def _failed_batch_where(exc: ControlError) -> str:
    index = exc.response.get("index")
    return f"command {index + 1} failed; " if isinstance(index, int) else ""


def render(invocation: Invocation, result: Any, names: NameDB) -> str:
    """The text a successful request prints (nothing for changes)."""
    action = invocation.action
    if action is Action.CHANGE:
        return ""
    if invocation.json_output:
        return json.dumps(result, indent=2) + "\n"
    fmt = invocation.fmt
    if action is Action.LIST_ALL:
        return format_list(result, fmt, names)
    if action is Action.LIST_SERVICE:
        return format_one_service(result, fmt, names)
    if action is Action.LIST_CONNECTIONS:
        return format_connections(result, fmt, names)
    if action is Action.LIST_TIMEOUT:
        return format_timeout(result)
    if action is Action.LIST_DAEMON:
        return format_daemons(result)
    if action is Action.LIST_LADDRS:
        return format_laddrs(result)
    return format_save(result, numeric=fmt.numeric, nosort=fmt.nosort, names=names)


def _connect(path: str) -> ControlClient:
    return ControlClient(path)


def main(
    argv: Sequence[str] | None = None,
    *,
    connect: ClientFactory | None = None,
    env: Mapping[str, str] | None = None,
    names: NameDB | None = None,
) -> int:
    """Console entry point. The keyword arguments exist for tests."""
    args = sys.argv[1:] if argv is None else list(argv)
    # `lbadm [--socket PATH] doctor ...` (issue 7): not an ipvsadm command line; "doctor" is no
    # ipvsadm word, so nothing ipvsadm accepts is taken away.
    if "doctor" in args:
        from lb.doctor import cli as doctor_cli

        inv = doctor_cli.doctor_invocation(args)
        if inv:
            sock, rest = inv
            return doctor_cli.main_doctor(rest, resolve_socket_path(sock, env))
    names = names or NameDB()
    streams = _Streams(sys.stdin, sys.stdout, sys.stderr)
    if argv is None:  # the console command (not a test): a -R of 30,000 lines, a listing of 10,000
        import gc  # services, at CPython's default GC thresholds spend much of their time collecting

        gc.set_threshold(100_000, 50, 100)
    try:
        invocation = parse_args(args, env=env, names=names)
    except UsageError as exc:
        streams.stderr.write(exc.message + "\n")
        return exc.status
    try:
        status = run(invocation, connect or _connect, streams, names)
        streams.stdout.flush()
    except BrokenPipeError:
        # `lbadm -Ln | head`: the reader left; say nothing more, like ipvsadm.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_LIST_FAILED
    return status


if __name__ == "__main__":
    sys.exit(main())
