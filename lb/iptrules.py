"""iptables rule text: the one parser of `iptables-save` and `iptables -S` output in the project.

lbd's rule manager (lb/iptables.py) reads its own chains with it, `lbadm doctor` (lb/doctor/)
reads the whole firewall with it. Both formats are accepted:

    iptables-save:      *raw / :CHAIN POLICY [p:b] / -A CHAIN ... / COMMIT
    iptables -t T -S:   -P CHAIN POLICY / -N CHAIN / -A CHAIN ...      (one table, no header)

`rule_key()` normalises one `-A` line so that equivalent spellings compare equal.
"""

from __future__ import annotations

import functools
import re
import shlex
from dataclasses import dataclass, field

Opt = tuple[str, list[str], bool]  # (option, its arguments, negated): one match of a rule


@dataclass
class IptRule:
    table: str
    chain: str
    num: int  # 1-based position in its chain
    line: str  # "-A CHAIN ..." as iptables prints it
    opts: list[Opt]  # matches only
    target: str | None
    target_args: list[str]
    goto: bool = False

    @property
    def where(self) -> str:
        return f"{self.table} {self.chain} #{self.num}"

    def jumps_to(self, chain: str) -> bool:
        return self.target == chain


@dataclass
class IptChain:
    name: str
    policy: str | None  # None: a user-defined chain
    rules: list[IptRule] = field(default_factory=list)
    declared: bool = True  # False: only seen as the chain of an -A line, never declared


Tables = dict[str, dict[str, IptChain]]  # table -> chain -> chain (in the order seen)


def tokens(line: str) -> list[str]:
    """The words of a rule line, quotes as the shell reads them (plain split if they do not parse)."""
    try:
        return shlex.split(line)
    except ValueError:
        return line.split()


def parse_iptables_save(text: str, default_table: str | None = None) -> Tables:
    """iptables-save text -> table -> chain -> IptChain (rules in order).

    `default_table` names the table of lines outside any `*table` section: `iptables -t T -S`
    output has no header. Without it such lines are ignored (iptables-save has none)."""
    tables: Tables = {}
    table: dict[str, IptChain] | None = tables.setdefault(default_table, {}) if default_table else None
    tname = default_table or ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("*"):
            tname = line[1:].strip()
            table = tables.setdefault(tname, {})
        elif line == "COMMIT":
            table = None
        elif table is None:
            continue
        elif line.startswith(":"):
            parts = line[1:].split()
            if parts:
                _declare(table, parts[0], parts[1] if len(parts) > 1 and parts[1] != "-" else None)
        elif line.startswith(("-P ", "-N ")):
            parts = line.split()
            if len(parts) >= 2:
                _declare(table, parts[1], parts[2] if line.startswith("-P ") and len(parts) > 2 else None)
        elif line.startswith("-A "):
            words = tokens(line)
            if len(words) < 2:
                continue
            chain = table.get(words[1])
            if chain is None:
                chain = table[words[1]] = IptChain(words[1], None, declared=False)
            opts, target, targs, goto = split_rule(words[2:])
            chain.rules.append(IptRule(tname, chain.name, len(chain.rules) + 1, line, opts, target, targs, goto))
    return tables


def _declare(table: dict[str, IptChain], name: str, policy: str | None) -> None:
    chain = table.setdefault(name, IptChain(name, policy))
    chain.declared = True
    if policy is not None:
        chain.policy = policy


def split_rule(words: list[str]) -> tuple[list[Opt], str | None, list[str], bool]:
    """A rule's words after `-A CHAIN`: (matches, target, target arguments, whether -g)."""
    opts: list[Opt] = []
    negate = False
    i = 0
    while i < len(words):
        tok = words[i]
        if tok == "!":
            negate = True
            i += 1
            continue
        if tok in ("-j", "--jump", "-g", "--goto"):
            target = words[i + 1] if i + 1 < len(words) else None
            return opts, target, words[i + 2:], tok in ("-g", "--goto")
        if tok.startswith("-"):
            args: list[str] = []
            i += 1
            while i < len(words) and words[i] != "!" and not (words[i].startswith("-") and not _numberish(words[i])):
                args.append(words[i])
                i += 1
            opts.append((tok, args, negate))
            negate = False
            continue
        i += 1  # stray word: ignore
    return opts, None, [], False


def _numberish(tok: str) -> bool:
    return bool(re.fullmatch(r"-\d+", tok))


# --------------------------------------------------------------------------- one chain and its jumps


@dataclass(frozen=True)
class TableState:
    """What a table says about one chain and the jumps to it."""

    chain_exists: bool
    rules: list[str]  # "-A CHAIN ..." lines, in order
    jumps: list[str]  # "-A <any chain> ... -j CHAIN" lines (any chain of the table jumping to it)


def chain_state(table: dict[str, IptChain], chain: str) -> TableState:
    """`chain` in a parsed table and every jump (or goto) to it from any chain of the table: a
    leftover jump from anywhere would keep the chain from being deleted."""
    found = table.get(chain)
    jumps = [r.line for c in table.values() for r in c.rules if r.jumps_to(chain)]
    return TableState(found is not None and found.declared, [r.line for r in found.rules] if found else [], jumps)


def parse_table(text: str, chain: str, table: str = "raw") -> TableState:
    """chain_state() of `iptables -t TABLE -S` text (or iptables-save text holding that table)."""
    return chain_state(parse_iptables_save(text, default_table=table).get(table, {}), chain)


# --------------------------------------------------------------------------- comparing rules


@functools.lru_cache(maxsize=4096)
def rule_key(line: str) -> tuple[str, ...]:
    """Normalise one `-A CHAIN ...` line so that equivalent spellings compare equal.

    Option groups (an option and its arguments) are sorted; host addresses get /32; the implicit
    `-m tcp|udp` that iptables prints for --sport/--dport is made explicit. Good enough for the
    simple address/port matches lbd writes; anything fancier still compares verbatim per group.
    """
    groups: list[list[str]] = []
    negate = False
    for tok in shlex.split(line):
        if tok == "!":
            negate = True
            continue
        if tok.startswith("-") and not _is_number(tok):
            groups.append(["!" + tok] if negate else [tok])
            negate = False
        elif groups:
            groups[-1].append(tok)
        else:
            groups.append([tok])
    proto = None
    for g in groups:
        if g[0] in ("-p", "--protocol") and len(g) == 2:
            proto = g[1]
        if g[0] in ("-s", "-d", "--source", "--destination") and len(g) == 2 and "/" not in g[1]:
            g[1] += "/32"
    has_ports = any(g[0] in ("--sport", "--dport", "--source-port", "--destination-port") for g in groups)
    if proto and has_ports and ["-m", proto] not in groups:
        groups.append(["-m", proto])
    return tuple(sorted(" ".join(g) for g in groups))


def _is_number(tok: str) -> bool:
    try:
        int(tok)
    except ValueError:
        return False
    return True
