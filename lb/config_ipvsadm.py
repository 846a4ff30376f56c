"""ipvsadm-save files as configurations (`ipvsadm -S`, `lbadm -S` output; lb/config.py's parse_config
sends a file here when is_ipvsadm_save recognises it).

Each line is parsed with lbadm's own command-line parser, so a file means exactly what `lbadm -R`
makes of it; only -A, -a, -P (local address) and --set lines configure. The rules that join a
service's lines are checked as the TOML form checks them, and every problem is reported as
"FILE:LINE: reason" (ConfigErrors), nothing applied.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from lb.config import Config, ConfigErrors, ConfigIssue, DestConfig, ServiceConfig
from lb.model import ServiceKey, ServiceSpec
from lb.reconcile import DEFAULT_TIMEOUTS, AddDest, AddLaddr, AddService, SetTimeout, StateError, Timeouts
from lb.requests import parse_command

# Each line of an ipvsadm-save file parses alone (the lbadm command line parser, ~0.1 ms a line):
# lbd remembers what each line text parsed to, so that reloading a file of 30,000 lines with one
# changed costs one line's parse (issue 15: a reload costs what changed). Values are immutable.
_LINE_MEMO: dict[str, tuple[Any, Any]] = {}
LINE_MEMO_MAX = 1 << 18  # entries; beyond it the memo starts afresh


def _parse_rule_line(raw_line: str, names: Any) -> tuple[Any, Any] | None:
    """(invocation or UsageError, Command or StateError or None) of one line, memoized; None for a
    line without a command."""
    from lb.lbadm import Action, UsageError, rule_lines

    hit = _LINE_MEMO.get(raw_line)
    if hit is not None:
        return hit
    parsed = list(rule_lines(raw_line, names))
    if not parsed:  # only the word "ipvsadm", or a comment
        return None
    invocation = parsed[0][2]
    cmd: Any = None
    if not isinstance(invocation, UsageError) and invocation.action is Action.CHANGE \
            and invocation.request is not None and invocation.refusal is None:
        try:
            cmd = parse_command(invocation.request.op, invocation.request.args)
        except StateError as exc:
            cmd = exc
    if len(_LINE_MEMO) >= LINE_MEMO_MAX:
        _LINE_MEMO.clear()
    _LINE_MEMO[raw_line] = (invocation, cmd)
    return invocation, cmd


def _rule_lines(text: str) -> Iterator[tuple[int, str, Any, Any]]:
    from lb.namedb import NameDB

    names = NameDB()
    for number, raw_line in enumerate(text.splitlines(), start=1):
        if not raw_line.split("#", 1)[0].strip():
            continue
        parsed = _parse_rule_line(raw_line, names)
        if parsed is not None:
            yield number, raw_line, parsed[0], parsed[1]


def parse_ipvsadm_save(text: str, path: str = "<string>") -> Config:
    """`ipvsadm -S` output as a configuration: -A, -a, -P (local address) and --set lines only."""
    from lb.lbadm import Action, UsageError

    issues: list[ConfigIssue] = []
    order: list[ServiceKey] = []
    specs: dict[ServiceKey, tuple[ServiceSpec, int]] = {}
    dests: dict[ServiceKey, dict[tuple[str, int], DestConfig]] = {}
    laddrs: dict[ServiceKey, list[str]] = {}
    laddr_lines: dict[ServiceKey, int] = {}  # the first -P line of each service
    timeouts: Timeouts | None = None
    timeouts_line = 0
    for number, raw_line, invocation, parsed in _rule_lines(text):
        if isinstance(invocation, UsageError):
            issues.append(ConfigIssue(path, number, invocation.message))
            continue
        request = invocation.request
        if invocation.action is not Action.CHANGE or request is None:
            issues.append(ConfigIssue(path, number, f"not a configuration command: {raw_line.strip()}"))
            continue
        if invocation.refusal is not None:  # as lbadm -R refuses it (lb.unimplemented)
            issues.append(ConfigIssue(path, number, invocation.refusal))
            continue
        if isinstance(parsed, StateError):
            issues.append(ConfigIssue(path, number, str(parsed)))
            continue
        cmd = parsed
        if isinstance(cmd, AddService):
            key = cmd.spec.key
            if key in specs:
                issues.append(ConfigIssue(path, number, f"duplicate service {key} (first defined at line {specs[key][1]})"))
                continue
            specs[key] = (cmd.spec, number)
            order.append(key)
            dests[key], laddrs[key] = {}, []
        elif isinstance(cmd, (AddDest, AddLaddr)):
            if cmd.key not in specs:
                issues.append(ConfigIssue(path, number, f"service {cmd.key} is not defined (by an -A line above)"))
            elif isinstance(cmd, AddDest):
                ident = (cmd.dest.addr, cmd.dest.port)
                if ident in dests[cmd.key]:
                    first = dests[cmd.key][ident].line
                    issues.append(ConfigIssue(path, number, f"duplicate destination {ident[0]}:{ident[1]} in {cmd.key} "
                                                            f"(first at line {first})"))
                elif cmd.dest.l_threshold > cmd.dest.u_threshold:
                    issues.append(ConfigIssue(path, number, f"lower threshold {cmd.dest.l_threshold} is higher than "
                                                            f"upper threshold {cmd.dest.u_threshold}"))
                else:
                    dests[cmd.key][ident] = DestConfig(cmd.dest, number)
            elif cmd.addr in laddrs[cmd.key]:
                issues.append(ConfigIssue(path, number, f"local address {cmd.addr} listed twice for {cmd.key}"))
            else:
                laddrs[cmd.key].append(cmd.addr)
                laddr_lines.setdefault(cmd.key, number)
        elif isinstance(cmd, SetTimeout):
            timeouts = (timeouts or DEFAULT_TIMEOUTS).merged(cmd.timeouts)
            timeouts_line = number
        else:
            issues.append(ConfigIssue(path, number, f"not a configuration command (only -A, -a, -P, --set): {raw_line.strip()}"))
    for key in order:
        issues += _save_service_issues(path, specs[key], list(dests[key].values()), laddrs[key], laddr_lines.get(key, 0))
    if issues:
        raise ConfigErrors(sorted(issues, key=lambda i: i.line))
    services = tuple(
        ServiceConfig(specs[k][0], tuple(dests[k].values()), tuple(laddrs[k]), specs[k][1]) for k in order
    )
    return Config(path, services, timeouts, timeouts_line, "ipvsadm-save")


def _save_service_issues(path: str, spec_line: tuple[ServiceSpec, int], dests: list[DestConfig],
                         laddrs: list[str], laddr_line: int) -> list[ConfigIssue]:
    """The rules that join a service's lines, as the TOML form checks them (lb/config.py _check_service): a
    file is rejected the same way whichever form it has (issue 16 item 5: before, a FULLNAT
    destination without a local address passed `lbd --check` and then dropped every connection)."""
    spec, line = spec_line
    label = str(spec.key)
    issues: list[ConfigIssue] = []
    fullnat = [d for d in dests if d.spec.fwd == "fullnat"]
    if fullnat and not laddrs:
        issues.append(ConfigIssue(path, fullnat[0].line, f"-b (fullnat) needs local addresses: add a line "
                                                          f"-P {_save_label(spec.key)} -z LOCAL-ADDRESS for {label}"))
    for d in fullnat:
        if spec.ops:
            issues.append(ConfigIssue(path, d.line, "a one-packet service (-o) keeps no connection entry, and "
                                                    "-b (fullnat) needs one for the replies"))
    if getattr(spec, "synproxy", False):
        issues += [ConfigIssue(path, d.line, f"a SYN-proxy service (-j enable) only forwards with -b (fullnat), not "
                                             f"{d.spec.fwd!r}") for d in dests if d.spec.fwd != "fullnat"]
    if dests and not fullnat:
        if laddrs:
            issues.append(ConfigIssue(path, laddr_line, f"local addresses (-P) only apply to FULLNAT: no destination "
                                                        f"of {label} has -b (fullnat)"))
        if spec.toa:
            issues.append(ConfigIssue(path, line, f"--toa only applies to FULLNAT: no destination of {label} has "
                                                  "-b (fullnat)"))
    return issues


def _save_label(key: ServiceKey) -> str:
    """A service as an ipvsadm option (-t/-u VIP:PORT, -f MARK)."""
    if key.fwmark:
        return f"-f {key.fwmark}"
    return f"{'-u' if key.proto == 17 else '-t'} {key.addr}:{key.port}"
