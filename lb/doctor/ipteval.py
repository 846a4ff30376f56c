"""An iptables rule evaluator: which rules a class of packets (a Probe) may meet, and where its
walk through the director's hooks ends. Verdicts are three-valued: a match lbd cannot model
"may" apply.

The paths are those of lbd's own traffic (lb.doctor's model): packets handed back to the
kernel, packets lbd sends on its raw socket, and routed traffic (never lbd's).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from lb.iptrules import IptRule, Tables

MAX_CHAIN_DEPTH = 32  # iptables' own limit on nested jumps is higher; loops are impossible there

YES, NO, MAYBE = "yes", "no", "maybe"
TERMINAL_TARGETS = {"ACCEPT", "DROP", "REJECT", "NFQUEUE", "QUEUE", "TPROXY", "SYNPROXY", "TARPIT"}
_PROTO_NUMBERS = {"tcp": "6", "udp": "17", "icmp": "1"}
_NOOP_MODULE_OPTS = {"--comment"}
_TCP_FLAGS = {"FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR"}


@dataclass(frozen=True)
class Probe:
    """A class of packets: None = unknown/any. `states` = the conntrack states it may have."""

    proto: str
    saddr: str | None = None
    daddr: str | None = None
    sport: int | None = None
    dport: int | None = None
    iif: str | None = None
    oif: str | None = None
    states: frozenset[str] = frozenset({"UNTRACKED"})
    tcp_flags: frozenset[str] | None = None  # flags set, when known
    mark: int | None = None
    dst_local: bool | None = None


def _and(a: str, b: str) -> str:
    if NO in (a, b):
        return NO
    if MAYBE in (a, b):
        return MAYBE
    return YES


def negate(r: str, neg: bool) -> str:
    if not neg or r == MAYBE:
        return r
    return NO if r == YES else YES


def in_net(addr: str | None, spec: str) -> str:
    if addr is None:
        return MAYBE
    try:
        return YES if ipaddress.IPv4Address(addr) in ipaddress.IPv4Network(spec, strict=False) else NO
    except ValueError:
        return MAYBE


def _iface(name: str | None, pattern: str) -> str:
    if name is None:
        return MAYBE
    if pattern.endswith("+"):
        return YES if name.startswith(pattern[:-1]) else NO
    return YES if name == pattern else NO


def _port_in(port: int | None, spec: str) -> str:
    if port is None:
        return MAYBE
    for part in spec.split(","):
        lo, _, hi = part.partition(":")
        try:
            low = int(lo) if lo else 0
            high = int(hi) if hi else (65535 if ":" in part else low)
        except ValueError:
            return MAYBE
        if low <= port <= high:
            return YES
    return NO


def match_opt(opt: str, args: list[str], p: Probe) -> str:
    a0 = args[0] if args else ""
    if opt in ("-p", "--protocol"):
        want = a0.lower()
        if want in ("all", "0"):
            return YES
        return YES if want in (p.proto, _PROTO_NUMBERS.get(p.proto)) else NO
    if opt in ("-s", "--source", "--src"):
        return in_net(p.saddr, a0)
    if opt in ("-d", "--destination", "--dst"):
        return in_net(p.daddr, a0)
    if opt in ("-i", "--in-interface"):
        return _iface(p.iif, a0)
    if opt in ("-o", "--out-interface"):
        return _iface(p.oif, a0)
    if opt in ("-m", "--match"):
        return YES  # the module's own options carry the meaning
    if opt in _NOOP_MODULE_OPTS:
        return YES
    if opt in ("--dport", "--destination-port", "--dports", "--destination-ports"):
        return _port_in(p.dport, a0) if p.proto in ("tcp", "udp") else NO
    if opt in ("--sport", "--source-port", "--sports", "--source-ports"):
        return _port_in(p.sport, a0) if p.proto in ("tcp", "udp") else NO
    if opt == "--ports":
        if p.proto not in ("tcp", "udp"):
            return NO
        d, s = _port_in(p.dport, a0), _port_in(p.sport, a0)
        return YES if YES in (d, s) else (MAYBE if MAYBE in (d, s) else NO)
    if opt == "--syn":
        return _tcp_flags(p, "FIN,SYN,RST,ACK", "SYN")
    if opt == "--tcp-flags" and len(args) == 2:
        return _tcp_flags(p, args[0], args[1])
    if opt in ("--state", "--ctstate"):
        states = {s.strip().upper() for s in a0.split(",") if s.strip()}
        if p.states <= states:
            return YES
        return NO if not (p.states & states) else MAYBE
    if opt == "--icmp-type":
        if p.proto != "icmp":
            return NO
        return YES if a0 == "any" else MAYBE
    if opt == "--mark":
        if p.mark is None:
            return MAYBE
        value, _, mask = a0.partition("/")
        try:
            v, m = int(value, 0), int(mask, 0) if mask else 0xFFFFFFFF
        except ValueError:
            return MAYBE
        return YES if (p.mark & m) == v else NO
    if opt in ("-f", "--fragment"):
        return NO  # lbd's packets are never fragments here (its rules turn on reassembly before raw)
    if opt == "--dst-type" and a0 == "LOCAL" and p.dst_local is not None:
        return YES if p.dst_local else NO
    return MAYBE  # a match we do not model: it may or may not apply


def _tcp_flags(p: Probe, mask: str, comp: str) -> str:
    if p.proto != "tcp":
        return NO
    if p.tcp_flags is None:
        return MAYBE
    m = _TCP_FLAGS if mask == "ALL" else {f for f in mask.split(",") if f}
    c = set() if comp == "NONE" else (_TCP_FLAGS if comp == "ALL" else {f for f in comp.split(",") if f})
    return YES if (set(p.tcp_flags) & m) == c else NO


def match_rule(rule: IptRule, probe: Probe) -> str:
    result = YES
    for opt, args, neg in rule.opts:
        result = _and(result, negate(match_opt(opt, args, probe), neg))
        if result == NO:
            return NO
    return result


@dataclass(frozen=True)
class Decision:
    """A rule (or a chain policy) that ends (certain) or may end (not certain) a packet's walk."""

    verdict: str  # ACCEPT, DROP, REJECT, NFQUEUE, ...
    rule: IptRule | None  # None: the built-in chain's policy
    table: str
    chain: str
    certain: bool

    @property
    def text(self) -> str:
        if self.rule is None:
            return f"{self.table} {self.chain} policy {self.verdict}"
        return f"-t {self.table} {self.rule.line}"

    @property
    def blocks(self) -> bool:
        return self.verdict in ("DROP", "REJECT", "TARPIT")

    @property
    def reject_with(self) -> str:
        if self.rule is None or self.verdict != "REJECT":
            return ""
        args = self.rule.target_args
        if "--reject-with" in args and args.index("--reject-with") + 1 < len(args):
            return args[args.index("--reject-with") + 1]
        return "icmp-port-unreachable"


def walk(tables: Tables, table: str, chain: str, probe: Probe, *, certain: bool = True,
         depth: int = 0) -> tuple[list[Decision], bool]:
    """Decisions a packet like `probe` may meet in `chain` (in order) and whether its walk
    certainly ends there. Rules with matches we do not model count as "may match"."""
    ch = tables.get(table, {}).get(chain)
    if ch is None or depth > MAX_CHAIN_DEPTH:
        return [], False
    out: list[Decision] = []
    for rule in ch.rules:
        m = match_rule(rule, probe)
        if m == NO:
            continue
        sure = certain and m == YES
        target = rule.target
        if target in TERMINAL_TARGETS:
            out.append(Decision(target, rule, table, chain, sure))
            if sure:
                return out, True
        elif target == "RETURN":
            if sure:
                return out, False
        elif target is not None and target in tables.get(table, {}):
            sub, ended = walk(tables, table, target, probe, certain=sure, depth=depth + 1)
            out += sub
            if ended:
                return out, True
        # anything else (LOG, MARK, CT, TCPMSS, ...) does not end the walk
    if ch.policy is not None:
        out.append(Decision(ch.policy, None, table, chain, certain))
        return out, certain
    return out, False


@dataclass
class PathResult:
    """Outcome of a probe walking several hooks/tables in order."""

    final: Decision | None  # the certain decision that stops it (None: passes everything)
    maybes: list[Decision]  # uncertain decisions before it that might stop it first

    @property
    def blocked(self) -> bool:
        return self.final is not None and self.final.blocks

    @property
    def may_block(self) -> list[Decision]:
        return [d for d in self.maybes if d.blocks]


def walk_path(tables: Tables, path: Sequence[tuple[str, str]], probe: Probe) -> PathResult:
    maybes: list[Decision] = []
    for table, chain in path:
        decisions, _ended = walk(tables, table, chain, probe)
        for d in decisions:
            if not d.certain:
                maybes.append(d)
                continue
            if d.verdict == "ACCEPT":
                break  # on to the next table/hook
            return PathResult(d, maybes)
    return PathResult(None, maybes)


def reachable_from(tables: Tables, table: str) -> dict[str, set[str]]:
    """chain -> the built-in chains it is reached from (through jumps/gotos)."""
    chains = tables.get(table, {})
    out: dict[str, set[str]] = {}
    for builtin in (c for c in chains.values() if c.policy is not None):
        todo, seen = [builtin.name], set()
        while todo:
            name = todo.pop()
            if name in seen or name not in chains:
                continue
            seen.add(name)
            out.setdefault(name, set()).add(builtin.name)
            todo += [r.target for r in chains[name].rules if r.target in chains]
    return out


HANDBACK_PATH = (("mangle", "PREROUTING"), ("mangle", "INPUT"), ("filter", "INPUT"))
LOCAL_OUT_PATH = (("raw", "OUTPUT"), ("mangle", "OUTPUT"), ("filter", "OUTPUT"), ("mangle", "POSTROUTING"))
FORWARD_PATH = (("mangle", "PREROUTING"), ("mangle", "FORWARD"), ("filter", "FORWARD"), ("mangle", "POSTROUTING"))

HOOK_MEANING = {
    ("raw", "PREROUTING"): "before lbd's queue: it decides whether VIP traffic reaches lbd at all",
    ("mangle", "PREROUTING"): "met only by packets lbd hands back to the kernel (and all VIP traffic while lbd is down)",
    ("mangle", "INPUT"): "met only by packets lbd hands back to the kernel (and all VIP traffic while lbd is down)",
    ("filter", "INPUT"): "met only by packets lbd hands back to the kernel (and all VIP traffic while lbd is down)",
    ("filter", "FORWARD"): "never met by lbd's traffic (lbd transmits on its own socket); only by routed traffic",
    ("mangle", "FORWARD"): "never met by lbd's traffic (lbd transmits on its own socket); only by routed traffic",
    ("raw", "OUTPUT"): "met by lbd's raw-socket packets (FULLNAT replies, ICMP answers) before they are untracked",
    ("mangle", "OUTPUT"): "met by lbd's raw-socket packets (FULLNAT replies, ICMP answers), state UNTRACKED",
    ("filter", "OUTPUT"): "met by lbd's raw-socket packets (FULLNAT replies, ICMP answers), state UNTRACKED",
    ("mangle", "POSTROUTING"): "met by lbd's raw-socket packets (FULLNAT replies, ICMP answers), state UNTRACKED",
}
