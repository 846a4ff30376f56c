"""From argv to an Invocation (what to ask lbd, how to print it), and ipvsadm rule streams
(`ipvsadm -S` output) for -R and lbd's ipvsadm-save configuration files."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

from lb.ctlclient import resolve_socket_path
from lb.ipvsadm_fmt import ListFormat
from lb.lbadm.cmdline import Action, Invocation, Request, _CommandLine
from lb.lbadm.errors import EXIT_OP_FAILED, PROG, UsageError, fail, tryhelp
from lb.lbadm.legality import Command, Opt
from lb.lbadm.scanner import _POSITION_FREE_KEYS, OptionToken, PoptError, scan_options
from lb.namedb import NameDB


def _list_invocation(line: _CommandLine) -> tuple[Action, Request]:
    opts = line.options
    if Opt.CONNECTION in opts:
        return Action.LIST_CONNECTIONS, Request("connections", {})
    if Opt.SERVICE in opts:
        return Action.LIST_SERVICE, Request("list", {"service": line.service_key()})
    if Opt.TIMEOUT in opts:
        return Action.LIST_TIMEOUT, Request("get_timeout", {})
    if Opt.DAEMON in opts:
        return Action.LIST_DAEMON, Request("get_daemon", {})
    return Action.LIST_ALL, Request("list", {})


def _change_request(line: _CommandLine) -> Request:
    command = line.command
    if command is Command.ADD:
        return Request("add_service", line.service_spec())
    if command is Command.EDIT:
        return Request("edit_service", line.service_spec())
    if command is Command.DEL:
        return Request("del_service", line.service_key())
    if command in (Command.ADDDEST, Command.EDITDEST):
        op = "add_dest" if command is Command.ADDDEST else "edit_dest"
        return Request(op, {"service": line.service_key(), "dest": line.dest_spec()})
    if command is Command.DELDEST:
        dest = {"addr": line.dest.addr, "port": line.dest.port}
        return Request("del_dest", {"service": line.service_key(), "dest": dest})
    if command is Command.ZERO:
        return Request("zero", {"service": line.service_key()} if Opt.SERVICE in line.options else {})
    if command is Command.TIMEOUT:
        assert line.timeouts is not None
        tcp, tcpfin, udp = line.timeouts
        return Request("set_timeout", {"tcp": tcp, "tcpfin": tcpfin, "udp": udp})
    if command is Command.STARTDAEMON:
        return Request("start_daemon", line.daemon_args())
    if command is Command.STOPDAEMON:
        return Request("stop_daemon", line.daemon_args())
    if command is Command.RELOAD:
        return Request("reload", {})
    if command in (Command.ADDLADDR, Command.DELLADDR):
        op = "add_laddr" if command is Command.ADDLADDR else "del_laddr"
        return Request(op, {"service": line.service_key(), "addr": line.svc.laddr})
    return Request("clear", {})


def parse_args(
    argv: Sequence[str],
    env: Mapping[str, str] | None = None,
    names: NameDB | None = None,
    reading_stdin: bool = False,
) -> Invocation:
    """Turn an ipvsadm-style command line into what to ask lbd; raise UsageError if invalid."""
    line = _CommandLine(names or NameDB())
    leftovers: list[str] = []
    tokens = scan_options(argv, leftovers)
    first = _first_command_token(tokens, line)
    if first is None:
        if leftovers:
            raise tryhelp()
        # No command at all: ipvsadm lists the table (non-numeric).
        return _finish(line, Action.LIST_ALL, Request("list", {}), env, reading_stdin)
    if isinstance(first, PoptError):
        raise tryhelp()
    early = line.set_command(first)
    if early is not None:
        return Invocation(early)
    for token in tokens:
        if isinstance(token, PoptError):
            raise UsageError(f"{token.text}: {token.reason}", EXIT_OP_FAILED)
        line.apply(token)
    line.take_leftovers(leftovers)
    line.check()
    return _invocation_for(line, env, reading_stdin)


def _first_command_token(
    tokens: Iterator[OptionToken | PoptError], line: _CommandLine
) -> OptionToken | PoptError | None:
    for token in tokens:
        if isinstance(token, OptionToken) and token.key in _POSITION_FREE_KEYS:
            line.apply_position_free(token)
            continue
        return token
    return None


def _invocation_for(line: _CommandLine, env: Mapping[str, str] | None, reading_stdin: bool) -> Invocation:
    command = line.command
    if command is Command.LIST:
        action, request = _list_invocation(line)
        return _finish(line, action, request, env, reading_stdin)
    if command is Command.SAVE:
        return _finish(line, Action.SAVE, Request("list", {}), env, reading_stdin)
    if command is Command.RESTORE:
        if reading_stdin:
            raise tryhelp()  # ipvsadm: no -R inside -R
        return _finish(line, Action.RESTORE, None, env, reading_stdin)
    if command is Command.GETLADDR:
        args = {"service": line.service_key()} if Opt.SERVICE in line.options else {}
        return _finish(line, Action.LIST_LADDRS, Request("list", args), env, reading_stdin)
    return _finish(line, Action.CHANGE, _change_request(line), env, reading_stdin)


def _finish(line: _CommandLine, action: Action, request: Request | None, env: Mapping[str, str] | None,
            reading_stdin: bool = False) -> Invocation:
    # A line of a -R stream goes to the socket of the -R command itself: finding the default socket
    # (which namespace are we in?) for each of 30,000 lines cost more than parsing them (issue 15).
    fmt = line.list_format()
    json_output = Opt.JSON in line.options
    if request is not None and request.op == "list" and not json_output:
        request = _brief_listing(request, fmt)
    return Invocation(
        action=action,
        request=request,
        fmt=fmt,
        socket_path="" if reading_stdin else resolve_socket_path(line.socket_path, env),
        json_output=json_output,
        refusal=line.refusal() if line.command is not None else None,
    )


def _brief_listing(request: Request, fmt: ListFormat) -> Request:
    """A text listing asks lbd for what it prints, no more: `brief` (no destination diagnosis), and
    the counters only for --stats and --rate. At 10,000 services the full answer is ~11 MB of JSON,
    the brief one ~4.6 MB (docs/control-protocol.md, `list`). --json shows lbd's whole answer."""
    args = {**request.args, "brief": True}
    if fmt.stats or fmt.rate:
        args["stats"] = True
    return Request(request.op, args)


# --------------------------------------------------------------------------
# -R: ipvsadm -S output on stdin, applied all-or-nothing


class RestoreError(Exception):
    def __init__(self, line_number: int, error: UsageError) -> None:
        super().__init__(error.message)
        self.line_number = line_number
        self.error = error


def rule_lines(text: str, names: NameDB) -> Iterator[tuple[int, str, Invocation | UsageError]]:
    """Each command line of an ipvsadm rules stream (`ipvsadm -S` output), parsed: (line number,
    the line, its invocation or why it is not one). Like ipvsadm, '#' starts a comment and the
    word "ipvsadm" (or "lbadm") is ignored; blank lines are skipped. Shared by -R and lbd's
    ipvsadm-save configuration files."""
    for number, raw_line in enumerate(text.splitlines(), start=1):
        words = [w for w in raw_line.split("#", 1)[0].split() if w not in ("ipvsadm", PROG)]
        if not words:
            continue
        try:
            yield number, raw_line, parse_args(words, env={}, names=names, reading_stdin=True)
        except UsageError as exc:
            yield number, raw_line, exc


def restore_invocations(text: str, names: NameDB | None = None) -> list[tuple[int, Invocation]]:
    """Every line of a restore stream, parsed: (line number, invocation); RestoreError names the
    first line that is invalid or no command that changes the table (see rule_lines for the syntax)."""
    parsed = []
    for number, raw_line, invocation in rule_lines(text, names or NameDB()):
        if isinstance(invocation, UsageError):
            raise RestoreError(number, invocation) from invocation
        if invocation.action is not Action.CHANGE or invocation.request is None:
            raise RestoreError(number, fail(f"only commands that change the table can be restored: {raw_line.strip()}"))
        parsed.append((number, invocation))
    return parsed


def restore_requests(text: str, names: NameDB | None = None) -> list[Request]:
    """Parse every line of a restore stream into requests; nothing is sent if one is invalid."""
    return [invocation.request for _, invocation in restore_invocations(text, names) if invocation.request is not None]


def refuse_unimplemented(parsed: list[tuple[int, Invocation]]) -> None:
    """RestoreError for the first line asking for what lbd does not implement (lbadm -R sends nothing then)."""
    for number, invocation in parsed:
        if invocation.refusal is not None:
            raise RestoreError(number, UsageError(invocation.refusal, EXIT_OP_FAILED))
