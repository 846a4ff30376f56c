"""`lbadm doctor`: read-only diagnostics of a director running lbd.

`run_checks(ctx)` inspects the director through a `DoctorContext` and returns `Finding`s
(severity "error" | "warning" | "info", the check's name, a one-line summary, the evidence it is
based on and the fix). `format_text()` / `format_json()` render them. Nothing here changes
anything: the live context only runs `iptables-save`, `nft list ruleset`, `ip -j addr|route get`,
reads /proc, and sends read-only requests (`ping`, `list`, `counters`) to lbd.

What lbd's traffic meets on the director (the model every firewall finding is explained with):

- Packets for a virtual service are taken in raw PREROUTING (`LBD-Q<N>`: `CT --notrack`, then
  NFQUEUE), before conntrack's hook and before the routing decision. Packets lbd forwards leave
  on an AF_PACKET socket (DR, IPIP, FULLNAT towards real servers): they never meet mangle,
  filter, FORWARD, rp_filter or conntrack on the director.
- Packets lbd hands back to the kernel (fast-path ACCEPT: TCP segments of connections lbd has no
  entry for -- after an lbd restart, or idle longer than the state timeout --, other protocols
  such as ICMP to the VIP) continue with conntrack state UNTRACKED through mangle PREROUTING,
  the routing decision (rp_filter), mangle INPUT and filter INPUT. With `--queue-bypass` the same
  holds for all VIP traffic while lbd is not running.
- Packets lbd sends on its raw socket (FULLNAT replies to clients, ICMP answers) carry
  SO_MARK = 0x4c420000|N, are untracked in raw OUTPUT (`LBD-Q<N>-OUT`) and then meet mangle
  OUTPUT, filter OUTPUT and mangle POSTROUTING as UNTRACKED.
- UNTRACKED matches neither `--state NEW` nor `--state RELATED,ESTABLISHED`, and is not INVALID.

The stalled-handshake check samples lbd's `list` twice, `ctx.window_s` apart: per destination,
`syn_retrans` (client SYN retransmissions with an unchanged sequence number on connections already
forwarded to it) growing while `handshakes` (connections whose client ACK completed the handshake)
does not means frames leave the director but the real server's answer never reaches the client.
"""

from __future__ import annotations

import ipaddress
import json
import re
import shlex
import shutil
import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from lb import iptables as ipt

SEVERITIES = ("error", "warning", "info")
_RANK = {s: i for i, s in enumerate(SEVERITIES)}

DEFAULT_WINDOW_S = 10.0  # seconds between the two samples of lbd's counters
MAX_WINDOW_S = 600.0
COMMAND_TIMEOUT_S = 15.0  # one iptables-save / nft / ip invocation
LBD_TIMEOUT_S = 10.0  # one control request
IPIP_OVERHEAD_B = 20  # bytes: the outer IPv4 header (no options) IPIP adds
CLIENT_PACKET_B = 1500  # bytes: full-size IPv4 packets of clients on an Ethernet path
QUEUE_BACKLOG_WARN = 1024  # packets waiting in the kernel queue at one instant
MAX_CHAIN_DEPTH = 32  # iptables' own limit on nested jumps is higher; loops are impossible there

STALL_CAUSES = (
    "anti-spoofing on the hypervisor (libvirt nwfilter clean-traffic / no-ip-spoofing, cloud "
    "source/destination checks), VIP not configured on the real server's loopback, "
    "arp_ignore/arp_announce, the real server's firewall"
)


# =========================================================================== findings


@dataclass(frozen=True)
class Finding:
    severity: str  # "error" | "warning" | "info"
    check: str
    summary: str
    evidence: str = ""
    fix: str = ""

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity {self.severity!r} not one of {SEVERITIES}")

    def to_json(self) -> dict[str, str]:
        return asdict(self)


def sort_findings(findings: Iterable[Finding]) -> list[Finding]:
    """Errors first, then warnings, then info; stable within a severity."""
    return sorted(findings, key=lambda f: _RANK[f.severity])


def has_errors(findings: Iterable[Finding]) -> bool:
    return any(f.severity == "error" for f in findings)


def _count(findings: Sequence[Finding], severity: str) -> int:
    return sum(1 for f in findings if f.severity == severity)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def format_text(findings: Sequence[Finding], window_s: float | None = None) -> str:
    """Human output: a summary line, then one block per finding (severity, check, summary,
    indented evidence and fix)."""
    head = "lbadm doctor: " + ", ".join([
        _plural(_count(findings, "error"), "error"),
        _plural(_count(findings, "warning"), "warning"),
        f"{_count(findings, 'info')} info",
    ])
    if window_s is not None:
        head += f" (sampled lbd over {window_s:g} s)"
    out = [head]
    for f in sort_findings(findings):
        out.append("")
        out.append(f"[{f.severity.upper()}] {f.check}: {f.summary}")
        for label, text in (("evidence", f.evidence), ("fix", f.fix)):
            if not text:
                continue
            lines = text.splitlines()
            out.append(f"    {label}: {lines[0]}")
            pad = " " * (len(label) + 6)
            out.extend(pad + line for line in lines[1:])
    return "\n".join(out) + "\n"


def format_json(findings: Sequence[Finding], window_s: float | None = None) -> str:
    doc = {
        "errors": _count(findings, "error"),
        "warnings": _count(findings, "warning"),
        "infos": _count(findings, "info"),
        "window_s": window_s,
        "findings": [f.to_json() for f in sort_findings(findings)],
    }
    return json.dumps(doc, indent=2) + "\n"


# =========================================================================== inputs


class LbdUnavailable(Exception):
    """lbd's control socket cannot be reached, or it answered something unusable."""


class LbdRefused(Exception):
    """lbd answered `ok: false` for a request."""


class DoctorContext:
    """Everything the checks read, behind methods that tests replace.

    Every method returns None (or an empty list) when its source is unavailable; the checks
    then say what they could not check instead of failing. Subclass it for fakes.
    """

    window_s: float = DEFAULT_WINDOW_S
    queue_num: int | None = None  # lbd's NFQUEUE number; None: ask lbd / find LBD-Q<N>
    socket_path: str = ""

    def iptables_save(self) -> str | None:
        """`iptables-save` output (all tables), or None."""
        return None

    def iptables_version(self) -> str:
        """`iptables --version`, e.g. "iptables v1.8.9 (nf_tables)"."""
        return ""

    def nft_ruleset(self) -> str | None:
        """`nft list ruleset`, or None when nft is absent."""
        return None

    def read_file(self, path: str) -> str | None:
        return None

    def sysctl(self, path: str) -> str | None:
        """A /proc/sys value by its path below /proc/sys ("net/ipv4/conf/eth0/rp_filter")."""
        text = self.read_file("/proc/sys/" + path)
        return None if text is None else text.strip()

    def interfaces(self) -> list[dict[str, Any]]:
        """`ip -j addr show`."""
        return []

    def route_get(self, addr: str) -> dict[str, Any] | None:
        """The first object of `ip -j route get ADDR`, or None."""
        return None

    def lbd(self, op: str, args: dict[str, Any] | None = None) -> Any:
        """One control request; raises LbdUnavailable or LbdRefused."""
        raise LbdUnavailable("no control socket configured")

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    def monotonic(self) -> float:
        return time.monotonic()


class LiveContext(DoctorContext):
    """Reads the director this process runs on (or namespace `netns`, via `ip netns exec`)."""

    def __init__(
        self,
        socket_path: str,
        *,
        window_s: float = DEFAULT_WINDOW_S,
        queue_num: int | None = None,
        netns: str | None = None,
        iptables: str = "iptables",
    ) -> None:
        self.socket_path = socket_path
        self.window_s = window_s
        self.queue_num = queue_num
        self.netns = netns
        self.iptables = iptables
        self.problems: list[str] = []  # commands that failed, for the "inputs" finding

    def _run(self, argv: list[str], what: str) -> str | None:
        full = (["ip", "netns", "exec", self.netns] if self.netns else []) + argv
        try:
            proc = subprocess.run(full, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, check=False)
        except (OSError, subprocess.SubprocessError) as exc:
            self.problems.append(f"{what}: {shlex.join(full)}: {exc}")
            return None
        if proc.returncode != 0:
            err = " / ".join(proc.stderr.strip().splitlines()[-3:])
            self.problems.append(f"{what}: {shlex.join(full)}: exit {proc.returncode}: {err}")
            return None
        return proc.stdout

    def _have(self, binary: str) -> bool:
        return shutil.which(binary) is not None

    def iptables_save(self) -> str | None:
        if not self._have(f"{self.iptables}-save"):
            self.problems.append(f"{self.iptables}-save not found in PATH")
            return None
        return self._run([f"{self.iptables}-save"], "firewall rules")

    def iptables_version(self) -> str:
        return (self._run([self.iptables, "--version"], "iptables version") or "").strip()

    def nft_ruleset(self) -> str | None:
        if not self._have("nft"):
            return None
        return self._run(["nft", "list", "ruleset"], "nftables rules")

    def read_file(self, path: str) -> str | None:
        if self.netns:
            return self._run(["cat", path], f"reading {path}")
        try:
            with open(path) as f:
                return f.read()
        except OSError as exc:
            if not path.startswith("/proc/sys/"):
                self.problems.append(f"reading {path}: {exc.strerror or exc}")
            return None

    def interfaces(self) -> list[dict[str, Any]]:
        text = self._run(["ip", "-j", "addr", "show"], "interfaces")
        try:
            return list(json.loads(text)) if text else []
        except ValueError:
            return []

    def route_get(self, addr: str) -> dict[str, Any] | None:
        text = self._run(["ip", "-j", "route", "get", addr], f"route to {addr}")
        try:
            routes = json.loads(text) if text else []
        except ValueError:
            return None
        return routes[0] if routes else None

    def lbd(self, op: str, args: dict[str, Any] | None = None) -> Any:
        from lb.ctlclient import ControlClient, ControlClientError, ControlError

        try:
            with ControlClient(self.socket_path, timeout_s=LBD_TIMEOUT_S) as client:
                return client.request(op, args or {})
        except ControlError as exc:
            raise LbdRefused(f"{op}: {exc.errno_name}: {exc.message}") from exc
        except (ControlClientError, OSError) as exc:
            raise LbdUnavailable(str(exc)) from exc


# =========================================================================== parsing


@dataclass(frozen=True)
class QueueStats:
    """One line of /proc/net/netfilter/nfnetlink_queue (per network namespace)."""

    queue: int
    portid: int  # netlink port id of the listener
    waiting: int  # packets queued to userspace right now
    copy_mode: int
    copy_range: int
    queue_dropped: int  # cumulative: queue full (queue_maxlen) and not fail-open
    user_dropped: int  # cumulative: netlink send to the listener failed (socket buffer full)
    id_sequence: int


def parse_nfnetlink_queue(text: str) -> dict[int, QueueStats]:
    out: dict[int, QueueStats] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 8 or not all(p.isdigit() for p in parts[:8]):
            continue
        n = [int(p) for p in parts[:8]]
        out[n[0]] = QueueStats(*n)
    return out


@dataclass
class IptRule:
    table: str
    chain: str
    num: int  # 1-based position in its chain
    line: str  # "-A CHAIN ..." as iptables-save prints it
    opts: list[tuple[str, list[str], bool]]  # (option, arguments, negated), matches only
    target: str | None
    target_args: list[str]
    goto: bool = False

    @property
    def where(self) -> str:
        return f"{self.table} {self.chain} #{self.num}"


@dataclass
class IptChain:
    name: str
    policy: str | None  # None: a user-defined chain
    rules: list[IptRule] = field(default_factory=list)


Tables = dict[str, dict[str, IptChain]]


def parse_iptables_save(text: str) -> Tables:
    """iptables-save text -> table -> chain -> IptChain (rules in order)."""
    tables: Tables = {}
    table: dict[str, IptChain] | None = None
    tname = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("*"):
            tname = line[1:]
            table = tables.setdefault(tname, {})
        elif line == "COMMIT":
            table = None
        elif table is None:
            continue
        elif line.startswith(":"):
            parts = line[1:].split()
            if parts:
                policy = parts[1] if len(parts) > 1 and parts[1] != "-" else None
                table.setdefault(parts[0], IptChain(parts[0], policy))
        elif line.startswith("-A "):
            try:
                tokens = shlex.split(line)
            except ValueError:
                tokens = line.split()
            if len(tokens) < 2:
                continue
            chain = table.setdefault(tokens[1], IptChain(tokens[1], None))
            opts, target, targs, goto = _split_rule(tokens[2:])
            chain.rules.append(IptRule(tname, chain.name, len(chain.rules) + 1, line, opts, target, targs, goto))
    return tables


def _split_rule(tokens: list[str]) -> tuple[list[tuple[str, list[str], bool]], str | None, list[str], bool]:
    opts: list[tuple[str, list[str], bool]] = []
    negate = False
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if tok == "!":
            negate = True
            i += 1
            continue
        if tok in ("-j", "--jump", "-g", "--goto"):
            target = tokens[i + 1] if i + 1 < len(tokens) else None
            return opts, target, tokens[i + 2:], tok in ("-g", "--goto")
        if tok.startswith("-"):
            args: list[str] = []
            i += 1
            while i < len(tokens) and tokens[i] != "!" and not (tokens[i].startswith("-") and not _numberish(tokens[i])):
                args.append(tokens[i])
                i += 1
            opts.append((tok, args, negate))
            negate = False
            continue
        i += 1  # stray word: ignore
    return opts, None, [], False


def _numberish(tok: str) -> bool:
    return bool(re.fullmatch(r"-\d+", tok))


def _sysctl_int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


# =========================================================================== rule evaluation

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


def _negate(r: str, neg: bool) -> str:
    if not neg or r == MAYBE:
        return r
    return NO if r == YES else YES


def _in_net(addr: str | None, spec: str) -> str:
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


def _match_opt(opt: str, args: list[str], p: Probe) -> str:
    a0 = args[0] if args else ""
    if opt in ("-p", "--protocol"):
        want = a0.lower()
        if want in ("all", "0"):
            return YES
        return YES if want in (p.proto, _PROTO_NUMBERS.get(p.proto)) else NO
    if opt in ("-s", "--source", "--src"):
        return _in_net(p.saddr, a0)
    if opt in ("-d", "--destination", "--dst"):
        return _in_net(p.daddr, a0)
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
        return NO  # lbd's packets are never fragments here (defrag runs before raw)
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
        result = _and(result, _negate(_match_opt(opt, args, probe), neg))
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


# =========================================================================== the run


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


@dataclass
class Service:
    proto: str
    addr: str
    port: int
    dests: list[dict[str, Any]]
    laddrs: list[str] = field(default_factory=list)  # FULLNAT local addresses

    @property
    def name(self) -> str:
        return f"{self.proto.upper()} {self.addr}:{self.port}"

    @property
    def proto_num(self) -> int:
        return ipt.PROTO_TCP if self.proto == "tcp" else ipt.PROTO_UDP


@dataclass
class Sample:
    t: float
    listing: dict[str, Any] | None = None
    counters: dict[str, Any] | None = None
    queues: dict[int, QueueStats] | None = None
    problems: list[str] = field(default_factory=list)


class _Run:
    """One doctor run: inputs read once and shared by the checks."""

    def __init__(self, ctx: DoctorContext) -> None:
        self.ctx = ctx
        self.lbd_error: str | None = None
        self.ping: dict[str, Any] = {}
        try:
            self.ping = ctx.lbd("ping") or {}
        except (LbdUnavailable, LbdRefused) as exc:
            self.lbd_error = str(exc)
        self.save_text = ctx.iptables_save()
        self.tables: Tables = parse_iptables_save(self.save_text) if self.save_text else {}
        self.ifaces = ctx.interfaces()
        self.first = self.sample() if self.lbd_error is None else None
        self.second: Sample | None = None
        self.services: list[Service] = []
        if self.first is not None and self.first.listing:
            for s in self.first.listing.get("services", []):
                self.services.append(Service(str(s.get("proto", "tcp")), str(s.get("addr")), int(s.get("port", 0)),
                                             list(s.get("dests", [])),
                                             [str(la.get("addr")) for la in s.get("laddrs", []) if isinstance(la, dict)]))
        self.queue_num, self.queue_source = self._find_queue()
        self.services_from_rules = False
        if not self.services and self.lbd_error is not None and self.queue_num is not None:
            self.services = self._services_from_rules()
            self.services_from_rules = bool(self.services)

    # ---- lbd

    def sample(self) -> Sample:
        s = Sample(self.ctx.monotonic())
        for op, attr in (("list", "listing"), ("counters", "counters")):
            try:
                setattr(s, attr, self.ctx.lbd(op))
            except (LbdUnavailable, LbdRefused) as exc:
                s.problems.append(f"{op}: {exc}")
        text = self.ctx.read_file("/proc/net/netfilter/nfnetlink_queue")
        s.queues = parse_nfnetlink_queue(text) if text is not None else None
        return s

    @property
    def lbd_ok(self) -> bool:
        return self.lbd_error is None

    def _find_queue(self) -> tuple[int | None, str]:
        if self.ctx.queue_num is not None:
            return self.ctx.queue_num, "given"
        for key in ("queue_num", "queue"):
            if isinstance(self.ping.get(key), int):
                return int(self.ping[key]), "lbd"
        found = sorted({int(m.group(1)) for name in self.tables.get("raw", {})
                        if (m := re.fullmatch(rf"{re.escape(ipt.CHAIN_PREFIX)}(\d+)", name))})
        if len(found) == 1:
            return found[0], "raw table"
        return None, f"raw table has {len(found)} LBD-Q<N> chains" if found else "no LBD-Q<N> chain in the raw table"

    def _services_from_rules(self) -> list[Service]:
        """lbd is down: the services its (bypassed) queue rules still name."""
        chain = self.tables.get("raw", {}).get(ipt.chain_name(self.queue_num or 0))
        found: dict[tuple[str, str, int], Service] = {}
        for r in chain.rules if chain else []:
            if r.target != "NFQUEUE":
                continue
            opts = {o: a[0] for o, a, neg in r.opts if a and not neg}
            proto, dst = opts.get("-p"), opts.get("-d", "").split("/")[0]
            if proto in ("tcp", "udp") and dst and "-s" not in opts:
                key = (proto, dst, int(opts.get("--dport", "0") or 0))
                found.setdefault(key, Service(proto, dst, key[2], []))
        return list(found.values())

    # ---- host

    def addrs(self) -> dict[str, list[str]]:
        """IPv4 address -> interfaces carrying it."""
        out: dict[str, list[str]] = {}
        for iface in self.ifaces:
            for a in iface.get("addr_info", []):
                if a.get("family") == "inet" and a.get("local"):
                    out.setdefault(a["local"], []).append(iface.get("ifname", "?"))
        return out

    def iface(self, name: str) -> dict[str, Any] | None:
        return next((i for i in self.ifaces if i.get("ifname") == name), None)

    def laddrs(self) -> list[str]:
        return sorted({la for s in self.services for la in s.laddrs}, key=_addr_key)

    def vips(self) -> list[str]:
        return sorted({s.addr for s in self.services}, key=_addr_key)

    def vip_iface(self, vip: str) -> str | None:
        names = [n for n in self.addrs().get(vip, []) if n != "lo"]
        return names[0] if names else None

    def track_mode(self) -> bool:
        """lbd's chain holds NFQUEUE rules but no CT --notrack: the conntrack opt-in."""
        if self.queue_num is None:
            return False
        chain = self.tables.get("raw", {}).get(ipt.chain_name(self.queue_num))
        if chain is None or not chain.rules:
            return False
        return not any(r.target == "CT" and "--notrack" in r.target_args for r in chain.rules)

    def states(self) -> frozenset[str]:
        # Without notrack, a segment of a flow conntrack has not seen is NEW (nf_conntrack_tcp_loose=1)
        # or INVALID; with it, UNTRACKED.
        return frozenset({"NEW", "INVALID"}) if self.track_mode() else frozenset({"UNTRACKED"})

    def mark(self) -> int | None:
        return ipt.socket_mark(self.queue_num) if self.queue_num is not None else None

    def fwds(self) -> set[str]:
        return {str(d.get("fwd")) for s in self.services for d in s.dests}


def _addr_key(a: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in a.split("."))
    except ValueError:
        return (999,)


Check = Callable[[_Run], list[Finding]]


def run_checks(ctx: DoctorContext) -> list[Finding]:
    """All checks, read-only; sleeps ctx.window_s once between two samples of lbd's counters."""
    run = _Run(ctx)
    findings: list[Finding] = []
    for check in STATIC_CHECKS:
        findings += _safely(check, run)
    if run.lbd_ok and run.first is not None:
        window = max(0.0, min(float(ctx.window_s), MAX_WINDOW_S))
        if window > 0:
            ctx.sleep(window)
            run.second = run.sample()
    for check in SAMPLED_CHECKS:
        findings += _safely(check, run)
    problems = getattr(ctx, "problems", None)
    if problems:
        findings.append(Finding("warning", "inputs", "some inputs could not be read; checks depending on them were skipped",
                                evidence="\n".join(dict.fromkeys(problems)),
                                fix="run `lbadm doctor` as root inside the director's network namespace"))
    return sort_findings(findings)


def _safely(check: Check, run: _Run) -> list[Finding]:
    try:
        return check(run)
    except Exception as exc:  # a broken check must not hide the others
        name = check.__name__.removeprefix("check_")
        return [Finding("warning", name, f"check failed: {type(exc).__name__}: {exc}",
                        fix="report this as a bug of lbadm doctor, with the evidence of the other checks")]


# =========================================================================== checks: lbd and its rules


def check_lbd(run: _Run) -> list[Finding]:
    if not run.lbd_ok:
        known = (f"; services taken from its leftover queue rules: {', '.join(s.name for s in run.services)}"
                 if run.services_from_rules else "")
        return [Finding("error", "lbd", f"lbd is not reachable: {run.lbd_error}",
                        evidence=f"control socket {run.ctx.socket_path}{known}",
                        fix="start lbd (it must run in this network namespace), or point --socket / $LBD_SOCKET at it; "
                            "the host checks below still ran")]
    out = [Finding("info", "lbd", f"lbd {run.ping.get('version', '?')} answers, engine {run.ping.get('engine', '?')}, "
                                  f"{_plural(len(run.services), 'virtual service')}",
                   evidence=f"control socket {run.ctx.socket_path}")]
    if run.first is not None and run.first.problems:
        out.append(Finding("warning", "lbd", "lbd refused read-only requests", evidence="\n".join(run.first.problems)))
    return out


def check_nfqueue_rules(run: _Run) -> list[Finding]:
    out: list[Finding] = []
    if run.save_text is None:
        return [Finding("warning", "nfqueue-rules", "cannot read the firewall rules (iptables-save failed); "
                        "NFQUEUE rule health not checked", fix="install iptables; run as root")]
    q = run.queue_num
    if q is None:
        sev = "error" if run.services else "info"
        return [Finding(sev, "nfqueue-rules", f"cannot tell which NFQUEUE lbd uses ({run.queue_source})",
                        fix="pass --queue-num N (lbd's --queue-num)" if "chains" in run.queue_source else
                        "start lbd without --no-iptables, or queue the VIPs to lbd's queue yourself")]
    raw = run.tables.get("raw", {})
    chain, out_chain = ipt.chain_name(q), ipt.out_chain_name(q)
    raw_text = _table_text(run.save_text, "raw")
    pre, post = ipt.parse_table(raw_text, chain), ipt.parse_table(raw_text, out_chain)
    fix_restart = f"restart lbd (its start-up recreates {chain}) or check who flushes the raw table"
    if not pre.chain_exists:
        return [Finding("error" if run.services else "warning", "nfqueue-rules",
                        f"chain {chain} is missing from the raw table: no packet reaches lbd's queue {q}",
                        evidence=_raw_listing(raw), fix=fix_restart)]
    if not any(j.startswith(f"-A {ipt.HOOK_CHAIN} ") for j in pre.jumps):
        out.append(Finding("error", "nfqueue-rules", f"raw {ipt.HOOK_CHAIN} does not jump to {chain}: no packet reaches lbd",
                           evidence=_raw_listing(raw), fix=f"{fix_restart} (lbd restores the jump on its next rule change)"))
    track = run.track_mode()
    target = ipt.queue_target(q, None)
    expected = {}
    for svc in run.services:
        expected[svc.name] = ipt.rule_pair(chain, ipt.service_match(svc.proto_num, svc.addr, svc.port), target, track=track)
    missing, covered = [], set()
    for name, pair in expected.items():
        # any NFQUEUE target of ours counts (--queue-balance setups): compare the match part
        q_idx = _find_rule(pre.rules, pair.match, "NFQUEUE")
        nt_idx = _find_rule(pre.rules, pair.match, "CT") if pair.notrack is not None else -1
        if q_idx is None or (pair.notrack is not None and (nt_idx is None or nt_idx > q_idx)):
            missing.append((name, pair))
        covered.update(i for i in (q_idx, nt_idx) if i is not None and i >= 0)
    for name, pair in missing:
        out.append(Finding("error", "nfqueue-rules",
                           f"service {name}: no complete notrack+NFQUEUE pair in {chain}: its packets are not balanced",
                           evidence="expected:\n" + "\n".join(pair.lines) + "\nfound:\n" + ("\n".join(pre.rules) or "(empty chain)"),
                           fix="any lbadm change re-syncs the rules (e.g. re-add the service), or restart lbd"))
    # FULLNAT replies and ICMP for VIPs / local addresses are lbd's own rules too: expected, not extra.
    own_matches = [ipt.icmp_match(a) for a in dict.fromkeys(run.vips() + run.laddrs())]
    for svc in run.services:
        for d in svc.dests:
            if d.get("fwd") == "fullnat":
                own_matches += [ipt.reply_match(svc.proto_num, str(d.get("addr")), int(d.get("port", 0)), la)
                                for la in svc.laddrs]
    for match in dict.fromkeys(own_matches):
        pair = ipt.rule_pair(chain, match, target, track=track)
        q_idx = _find_rule(pre.rules, pair.match, "NFQUEUE")
        nt_idx = _find_rule(pre.rules, pair.match, "CT") if pair.notrack is not None else -1
        covered.update(i for i in (q_idx, nt_idx) if i is not None and i >= 0)
    extra = [r for i, r in enumerate(pre.rules) if i not in covered]
    if extra:
        out.append(Finding("info", "nfqueue-rules", f"{chain} holds {_plural(len(extra), 'rule')} lbd did not ask for "
                           "(added by hand?)", evidence="\n".join(extra)))
    no_bypass = [r for r in pre.rules if "NFQUEUE" in r and "--queue-bypass" not in r]
    if no_bypass and run.ping.get("down_policy") != "closed":
        out.append(Finding("warning", "nfqueue-rules", "NFQUEUE rules without --queue-bypass: while lbd is not running, "
                           "packets for these services are dropped instead of reaching the local stack",
                           evidence="\n".join(no_bypass),
                           fix="intended only with lbd --down-policy closed; otherwise let lbd manage its rules"))
    wrong_q = [r for r in pre.rules if "NFQUEUE" in r and f"--queue-num {q} " not in r + " " and "--queue-balance" not in r]
    if wrong_q:
        out.append(Finding("error", "nfqueue-rules", f"NFQUEUE rules in {chain} target another queue than lbd's {q}",
                           evidence="\n".join(wrong_q), fix=fix_restart))
    if track:
        out.append(Finding("info", "conntrack", "conntrack opt-in is on: lbd installs no CT --notrack rules",
                           evidence="\n".join(pre.rules),
                           fix="nothing to fix if intended. Packets lbd forwards are still taken before conntrack's hook; "
                               "packets it hands back and its raw-socket packets get conntrack entries and meet stateful rules as NEW/INVALID"))
    else:
        want = ipt.out_rules(q)
        fullnat = "fullnat" in run.fwds()
        if not post.chain_exists or [ipt.rule_key(r) for r in post.rules] != [ipt.rule_key(r) for r in want] \
                or not any(j.startswith(f"-A {ipt.OUT_HOOK_CHAIN} ") for j in post.jumps):
            out.append(Finding("error" if fullnat else "warning", "nfqueue-rules",
                               f"{out_chain} (untracking lbd's own raw-socket packets, mark {ipt.socket_mark(q):#x}) "
                               "is missing or incomplete: FULLNAT replies and ICMP answers get conntrack entries "
                               "and meet stateful OUTPUT rules as NEW/INVALID",
                               evidence="expected:\n" + "\n".join([ipt.out_jump_rule(q), *want]) + "\nfound:\n"
                               + ("\n".join(post.jumps + post.rules) or "(nothing)"),
                               fix=fix_restart))
    if not out:
        n = len(run.services)
        out.append(Finding("info", "nfqueue-rules", f"{chain}: one notrack+NFQUEUE pair per service ({n}), "
                           f"jumped to from raw {ipt.HOOK_CHAIN}; {out_chain} untracks lbd's own packets",
                           evidence="\n".join(pre.jumps + pre.rules + post.jumps + post.rules)))
    return out


def _find_rule(rules: list[str], match: str, target: str) -> int | None:
    want = set(ipt.rule_key(f"-A X {match}")) - {"-A X"}
    for i, r in enumerate(rules):
        tokens = shlex.split(r)
        if "-j" not in tokens or tokens[tokens.index("-j") + 1] != target:
            continue
        head = " ".join(tokens[: tokens.index("-j")])
        got = set(ipt.rule_key(head)) - {f"-A {tokens[1]}"}
        if got == want:
            return i
    return None


def _table_text(save: str, table: str) -> str:
    out, inside = [], False
    for line in save.splitlines():
        if line.startswith("*"):
            inside = line[1:].strip() == table
        elif inside:
            out.append(line)
    return "\n".join(out)


def _raw_listing(raw: dict[str, IptChain]) -> str:
    lines = [r.line for c in raw.values() for r in c.rules]
    return "raw table:\n" + ("\n".join(lines) if lines else "(no rules)")


def check_queue_listener(run: _Run) -> list[Finding]:
    if run.first is None or run.queue_num is None or run.first.queues is None:
        return []
    qs = run.first.queues.get(run.queue_num)
    if qs is None:
        return [Finding("error", "nfqueue", f"nobody listens on NFQUEUE {run.queue_num} in this network namespace: "
                        "VIP packets pass unbalanced (--queue-bypass) to the local stack",
                        evidence="/proc/net/netfilter/nfnetlink_queue lists queues "
                                 + (", ".join(map(str, sorted(run.first.queues))) or "(none)"),
                        fix="lbd must run in the director's network namespace with the same --queue-num")]
    if qs.waiting >= QUEUE_BACKLOG_WARN:
        return [Finding("warning", "nfqueue", f"{qs.waiting} packets wait in queue {qs.queue}: lbd is not keeping up",
                        evidence=_queue_line(qs), fix="check lbd's CPU (it may be starved or pinned badly)")]
    return []


def _queue_line(q: QueueStats) -> str:
    return (f"queue {q.queue}: portid {q.portid}, waiting {q.waiting}, queue dropped {q.queue_dropped}, "
            f"user dropped {q.user_dropped}, id sequence {q.id_sequence}")


# =========================================================================== checks: firewall


def check_firewall(run: _Run) -> list[Finding]:
    if not run.tables:
        return []
    out: list[Finding] = []
    states = run.states()
    state_word = "/".join(sorted(states))
    mark = run.mark()
    services = run.services or []
    ip_forward = _sysctl_int(run.ctx.sysctl("net/ipv4/ip_forward"))

    # 1. steering: raw PREROUTING must hand VIP packets to our queue, nothing earlier may decide.
    ours = ipt.chain_name(run.queue_num) if run.queue_num is not None else None
    for svc in services:
        probe = Probe(svc.proto, daddr=svc.addr, dport=svc.port or None, iif=run.vip_iface(svc.addr),
                      states=frozenset({"INVALID"}),  # no conntrack entry is attached before conntrack's hook
                      tcp_flags=frozenset({"SYN"}) if svc.proto == "tcp" else None, dst_local=True)
        decisions, _ = walk(run.tables, "raw", "PREROUTING", probe)
        idx = next((i for i, d in enumerate(decisions) if d.certain), len(decisions))
        first_sure = decisions[idx] if idx < len(decisions) else None
        earlier = [d for d in decisions[:idx] if d.chain != ours]
        if first_sure is not None and first_sure.rule is not None and first_sure.chain != ours:
            what = ("dropped before lbd sees them" if first_sure.blocks else
                    f"decided ({first_sure.verdict}) in raw before lbd's jump: they bypass lbd "
                    "(not balanced; tracked; delivered to the local stack)")
            out.append(Finding("error", "firewall", f"service {svc.name}: packets are {what}",
                               evidence=first_sure.text,
                               fix="move or narrow that rule so VIP traffic reaches lbd's jump in raw PREROUTING"))
        elif earlier:
            out.append(Finding("warning", "firewall", f"service {svc.name}: raw PREROUTING rules before lbd's jump may "
                               "decide some of its packets first",
                               evidence="\n".join(d.text for d in earlier),
                               fix="make sure they never match balanced traffic (lbd only sees what reaches its jump)"))

    # 2. packets lbd hands back to the kernel: mangle PREROUTING/INPUT, filter INPUT
    blocked: dict[str, list[str]] = {}
    decisions_by_text: dict[str, Decision] = {}
    for svc in services:
        flags = frozenset({"ACK"}) if svc.proto == "tcp" else None
        probe = Probe(svc.proto, daddr=svc.addr, dport=svc.port or None, iif=run.vip_iface(svc.addr),
                      states=states, tcp_flags=flags, dst_local=True)
        res = walk_path(run.tables, HANDBACK_PATH, probe)
        if res.blocked and res.final is not None:
            blocked.setdefault(res.final.text, []).append(svc.name)
            decisions_by_text[res.final.text] = res.final
    for text, names in blocked.items():
        d = decisions_by_text[text]
        if run.track_mode():
            about = ("They are NEW or INVALID (conntrack opt-in: a segment of a flow conntrack has not seen is NEW "
                     "with nf_conntrack_tcp_loose=1, else INVALID); rules accepting NEW may let some through.")
        else:
            about = "They are UNTRACKED: `--state NEW` and `--state RELATED,ESTABLISHED` rules never match them."
        out.append(Finding(
            "warning", "firewall",
            f"{', '.join(names)}: segments lbd hands back to the kernel are {state_word} and hit "
            f"{d.verdict} in {d.table} {d.chain}: {_consequence(d)}",
            evidence=(f"{text}\nlbd hands back TCP segments it has no connection entry for (after an lbd restart, "
                      f"or a connection idle longer than its state timeout), non-TCP/UDP packets to the VIP, and, "
                      f"while lbd is down, all VIP traffic (--queue-bypass). {about}"),
            fix=("accept them before that rule so the local stack answers stray segments with a RST, e.g. "
                 + "; ".join(f"iptables -I INPUT -d {s.addr} -p {s.proto}" + (f" --dport {s.port}" if s.port else "")
                             + " -m conntrack --ctstate UNTRACKED -j ACCEPT" for s in services if s.name in names)
                 + "; and/or raise lbd's TCP timeouts (lbadm --set) for long idle sessions"),
        ))

    # 3. lbd's own packets on its raw socket: raw/mangle/filter OUTPUT, mangle POSTROUTING
    fullnat = "fullnat" in run.fwds()
    out_blocked: dict[str, list[str]] = {}
    out_dec: dict[str, Decision] = {}
    for svc in services:
        for proto, sport in ((svc.proto, svc.port or None), ("icmp", None)):
            probe = Probe(proto, saddr=svc.addr, sport=sport, states=states, mark=mark,
                          tcp_flags=frozenset({"ACK"}) if proto == "tcp" else None)
            res = walk_path(run.tables, LOCAL_OUT_PATH, probe)
            if res.blocked and res.final is not None:
                what = f"{svc.name} {'FULLNAT replies' if proto != 'icmp' else 'ICMP answers'}"
                out_blocked.setdefault(res.final.text, []).append(what)
                out_dec[res.final.text] = res.final
    for text, whats in out_blocked.items():
        sev = "error" if fullnat and any("FULLNAT" in w for w in whats) else "warning"
        out.append(Finding(
            sev, "firewall", f"packets lbd sends on its raw socket ({', '.join(whats)}) are {state_word} and hit "
                             f"{out_dec[text].verdict} in {out_dec[text].table} {out_dec[text].chain}",
            evidence=f"{text}\nlbd's raw socket carries mark {mark:#x}" if mark is not None else text,
            fix=f"accept them before that rule: iptables -I OUTPUT -m mark --mark {mark:#x} -j ACCEPT"
            if mark is not None else "accept lbd's raw-socket packets before that rule",
        ))
    raw_out = run.tables.get("raw", {}).get("OUTPUT")
    if raw_out is not None and run.queue_num is not None and not run.track_mode():
        ours = ipt.out_chain_name(run.queue_num)
        for r in raw_out.rules:
            if r.target == ours:
                break
            if r.target in TERMINAL_TARGETS and match_rule(r, Probe("tcp", mark=mark)) != NO:
                out.append(Finding("warning", "firewall", f"a raw OUTPUT rule before lbd's jump to {ours} may end the "
                                   "raw table for lbd's own packets, which are then tracked",
                                   evidence=f"-t raw {r.line}", fix=f"move it after the jump to {ours}"))

    # 4. FORWARD: lbd never routes; only real servers using the director as their gateway meet it.
    fwd_blocked: list[str] = []
    for svc in services:
        for d in svc.dests:
            probe = Probe(svc.proto, saddr=str(d.get("addr")), sport=int(d.get("port") or 0) or None,
                          iif=(d.get("l2") or {}).get("ifname") or None, states=frozenset({"NEW", "INVALID"}),
                          tcp_flags=frozenset({"SYN", "ACK"}) if svc.proto == "tcp" else None)
            res = walk_path(run.tables, FORWARD_PATH, probe)
            if res.blocked and res.final is not None:
                fwd_blocked.append(f"{d.get('addr')}:{d.get('port')} -> clients: {res.final.text}")
    if fwd_blocked and ip_forward == 1:
        out.append(Finding("warning", "firewall", "replies routed through this director (real servers using it as "
                           "their gateway) would be rejected in FORWARD: its conntrack sees only the server side "
                           "(SYN-ACK without SYN: INVALID; later segments NEW)",
                           evidence="\n".join(dict.fromkeys(fwd_blocked)),
                           fix="DR/IPIP real servers should reply through their own gateway, not through the director; "
                               "if they must, accept their replies in FORWARD without a state match"))

    # 5. what the stateful rules mean for lbd's traffic (the explanation)
    notes = _explain_rules(run)
    if notes:
        out.append(Finding(
            "info", "firewall",
            f"{_plural(len(notes), 'firewall rule')} that stateful or VIP-specific filtering relies on; "
            "lbd's balanced packets are UNTRACKED and mostly never reach them",
            evidence="\n".join(notes),
            fix="nothing to do unless a finding above names one of these rules. Packets lbd forwards leave on "
                "an AF_PACKET socket and meet no iptables chain on the director; only handed-back packets (filter "
                "INPUT) and lbd's raw-socket packets (OUTPUT) meet them, as UNTRACKED",
        ))
    return out


_REJECT_ICMP = {
    "icmp-net-unreachable": (3, 0), "icmp-host-unreachable": (3, 1), "icmp-proto-unreachable": (3, 2),
    "icmp-port-unreachable": (3, 3), "icmp-net-prohibited": (3, 9), "icmp-host-prohibited": (3, 10),
    "icmp-admin-prohibited": (3, 13),
}


def _consequence(d: Decision) -> str:
    if d.verdict != "REJECT":
        return "they are silently dropped"
    kind = d.reject_with
    if kind == "tcp-reset":
        return "clients get a TCP RST"
    tc = _REJECT_ICMP.get(kind)
    text = f"clients get {kind}" + (f" (ICMP type {tc[0]} code {tc[1]})" if tc else "")
    if tc == (3, 10):
        text += ", the field report's symptom"
    return text


def _explain_rules(run: _Run) -> list[str]:
    vips = set(run.vips())
    states = run.states()
    track = run.track_mode()
    notes: list[str] = []
    ours = re.compile(rf"^{re.escape(ipt.CHAIN_PREFIX)}\d+({re.escape(ipt.OUT_CHAIN_SUFFIX)})?$")
    for tname in ("raw", "mangle", "filter"):
        reach = reachable_from(run.tables, tname)
        for chain in run.tables.get(tname, {}).values():
            if ours.match(chain.name):
                continue
            hooks = sorted(reach.get(chain.name, set()))
            for r in chain.rules:
                reasons = []
                state_opt = next(((a, neg) for o, a, neg in r.opts if o in ("--state", "--ctstate")), None)
                if state_opt is not None:
                    st = {s.upper() for s in (state_opt[0][0] if state_opt[0] else "").split(",")}
                    hit = _negate(_match_opt("--state", [",".join(sorted(st))], Probe("tcp", states=states)), state_opt[1])
                    if track:
                        reasons.append({YES: "matches lbd's handed-back packets (NEW/INVALID, conntrack opt-in)",
                                        NO: "never matches lbd's handed-back packets (NEW/INVALID)"}.get(
                                            hit, "matches some of lbd's handed-back packets (NEW or INVALID)"))
                    elif "INVALID" in st and not state_opt[1] and "UNTRACKED" not in st:
                        reasons.append("UNTRACKED is not INVALID: it never matches lbd's packets")
                    else:
                        reasons.append("matches lbd's packets (UNTRACKED)" if hit == YES
                                       else "never matches lbd's packets (UNTRACKED)")
                if r.target == "REJECT":
                    reasons.append(f"rejects with {Decision('REJECT', r, tname, chain.name, True).reject_with}")
                addr_opts = [a[0] for o, a, neg in r.opts if o in ("-d", "--destination", "-s", "--source") and a]
                if any(_in_net(v, spec) == YES for v in vips for spec in addr_opts):
                    reasons.append("matches a VIP")
                if not reasons:
                    continue
                where = [f"from {h}: {HOOK_MEANING.get((tname, h), 'not on the path of lbd packets')}" for h in hooks]
                notes.append(f"-t {tname} {r.line}\n    {', '.join(reasons)}\n    "
                             + ("\n    ".join(where) or "not reached from any built-in chain"))
    return notes


_NFT_TABLE = re.compile(r"^table\s+(\w+)\s+(\S+)\s*\{")
_NFT_CHAIN = re.compile(r"^chain\s+(\S+)\s*\{")
_NFT_HOOK = re.compile(r"type\s+\w+\s+hook\s+(\w+)\s+priority\s+([^;]+);(?:\s*policy\s+(\w+);)?")


def check_nft(run: _Run) -> list[Finding]:
    """Native nftables chains (firewalld, nftables.service) that iptables-save does not show."""
    text = run.ctx.nft_ruleset()
    if not text:
        return []
    iptables_nft = "nf_tables" in run.ctx.iptables_version()
    managed = set(run.tables) if iptables_nft else set()
    out: list[Finding] = []
    table = chain = hook = policy = None
    rules: list[str] = []
    chains: list[tuple[str, str, str | None, str | None, list[str]]] = []
    for raw in text.splitlines():
        line = raw.strip()
        if m := _NFT_TABLE.match(line):
            family, name = m.groups()
            table = None if family == "ip" and name in managed else f"{family} {name}"
            continue
        if table is None:
            continue
        if m := _NFT_CHAIN.match(line):
            chain, hook, policy, rules = m.group(1), None, None, []
            continue
        if chain is None:
            continue
        if m := _NFT_HOOK.search(line):
            hook, policy = m.group(1), m.group(3)
            continue
        if line == "}":
            chains.append((table, chain, hook, policy, rules))
            chain = None
            continue
        if line:
            rules.append(line)
    for tname, cname, hook, policy, rules in chains:
        if hook not in ("input", "output", "forward", "prerouting", "postrouting"):
            continue
        stateful = [r for r in rules if "ct state" in r and "untracked" not in r]
        blocking = [r for r in rules if re.search(r"\b(reject|drop)\b", r)]
        if policy == "drop":
            blocking.append("policy drop")
        if not (stateful and blocking):
            continue
        meets = {
            "input": "packets lbd hands back to the kernel (and all VIP traffic while lbd is down)",
            "output": "lbd's raw-socket packets (FULLNAT replies, ICMP answers)",
            "postrouting": "lbd's raw-socket packets (FULLNAT replies, ICMP answers)",
            "prerouting": "VIP packets after lbd's queue only if handed back",
            "forward": "only routed traffic, never lbd's",
        }[hook]
        sev = "warning" if hook in ("input", "output") else "info"
        fix = ("add `ct state untracked accept` for the VIPs before the reject/drop, e.g. "
               f"nft insert rule {tname} {cname} ip daddr {{ {', '.join(run.vips()) or 'VIP'} }} ct state untracked accept"
               if hook == "input" else
               f"accept lbd's packets first: nft insert rule {tname} {cname} meta mark "
               f"{(run.mark() or ipt.SOCKET_MARK_BASE):#x} accept" if hook in ("output", "postrouting") else
               "nothing for lbd itself")
        out.append(Finding(sev, "firewall", f"nftables chain {tname} {cname} (hook {hook}) filters by conntrack state "
                           f"and rejects/drops the rest: {meets} are ct state untracked there",
                           evidence="\n".join(stateful + blocking), fix=fix))
    return out


# =========================================================================== checks: host settings


def check_forwarding(run: _Run) -> list[Finding]:
    v = _sysctl_int(run.ctx.sysctl("net/ipv4/ip_forward"))
    if v is None:
        return []
    if v == 0:
        return [Finding("info", "sysctl", "net.ipv4.ip_forward = 0: fine, lbd transmits balanced packets itself "
                        "(AF_PACKET), nothing is routed through the director's FORWARD path")]
    return [Finding("info", "sysctl", "net.ipv4.ip_forward = 1: lbd does not need it; FORWARD rules only concern "
                    "traffic the director routes (e.g. replies of real servers that use it as their gateway)")]


def check_rp_filter(run: _Run) -> list[Finding]:
    ifaces: dict[str, str] = {}
    for vip in run.vips():
        name = run.vip_iface(vip)
        if name:
            ifaces.setdefault(name, f"VIP {vip}")
    for svc in run.services:
        for d in svc.dests:
            name = (d.get("l2") or {}).get("ifname")
            if name:
                ifaces.setdefault(name, f"towards {d.get('addr')}")
    if not ifaces:
        return []
    all_v = _sysctl_int(run.ctx.sysctl("net/ipv4/conf/all/rp_filter")) or 0
    default_v = _sysctl_int(run.ctx.sysctl("net/ipv4/conf/default/rp_filter"))
    rows, strict = [], []
    for name, why in sorted(ifaces.items()):
        own = _sysctl_int(run.ctx.sysctl(f"net/ipv4/conf/{name}/rp_filter"))
        eff = max(all_v, own or 0)
        rows.append(f"{name} ({why}): rp_filter {own}, all {all_v} -> effective {eff} "
                    f"({['off', 'strict', 'loose'][eff] if 0 <= eff <= 2 else '?'})")
        if eff == 1:
            strict.append(name)
    if default_v is not None:
        rows.append(f"default {default_v} (applies to interfaces created later)")
    tunnel = "tunnel" in run.fwds()
    text = ("lbd takes balanced packets in raw PREROUTING, before the routing decision where rp_filter applies, "
            "so rp_filter never drops them on the director")
    if strict:
        text += f"; strict mode on {', '.join(strict)} only affects packets lbd hands back (and VIP traffic while lbd is down)"
    fix = ("on IPIP real servers set rp_filter to 0 or 2 on the tunnel interface and on `all` "
           "(decapsulated packets arrive there with the client's source address)") if tunnel else ""
    return [Finding("info", "rp_filter", text, evidence="\n".join(rows), fix=fix)]


def check_vip(run: _Run) -> list[Finding]:
    out: list[Finding] = []
    addrs = run.addrs()
    for vip in run.vips():
        names = addrs.get(vip, [])
        svcs = ", ".join(s.name for s in run.services if s.addr == vip)
        if not names:
            out.append(Finding("error", "vip", f"VIP {vip} ({svcs}) is not configured on any interface: clients on the "
                               "LAN cannot ARP it, so its packets never reach this director",
                               evidence="local IPv4 addresses: " + (", ".join(sorted(addrs, key=_addr_key)) or "(none)"),
                               fix=f"ip addr add {vip}/32 dev <client-facing interface> (unless a router routes {vip} "
                                   "to this director, then nothing is needed)"))
            continue
        non_lo = [n for n in names if n != "lo"]
        if non_lo:
            iface = run.iface(non_lo[0]) or {}
            up = "UP" in iface.get("flags", []) and iface.get("operstate") in ("UP", "UNKNOWN", None)
            if not up:
                out.append(Finding("error", "vip", f"VIP {vip} is on {non_lo[0]}, which is down",
                                   evidence=f"{non_lo[0]}: flags {iface.get('flags')}, operstate {iface.get('operstate')}",
                                   fix=f"ip link set dev {non_lo[0]} up"))
            else:
                out.append(Finding("info", "vip", f"VIP {vip} is configured on {', '.join(names)}"))
            continue
        ignores = {}
        all_ign = _sysctl_int(run.ctx.sysctl("net/ipv4/conf/all/arp_ignore")) or 0
        for i in run.ifaces:
            n = i.get("ifname")
            if n and n != "lo":
                ignores[n] = max(all_ign, _sysctl_int(run.ctx.sysctl(f"net/ipv4/conf/{n}/arp_ignore")) or 0)
        if ignores and all(v >= 1 for v in ignores.values()):
            out.append(Finding("error", "vip", f"VIP {vip} is only on lo and arp_ignore >= 1 everywhere: "
                               "the director does not answer ARP for it",
                               evidence=", ".join(f"{k} arp_ignore {v}" for k, v in sorted(ignores.items())),
                               fix=f"put {vip}/32 on the client-facing interface instead of lo"))
        else:
            out.append(Finding("info", "vip", f"VIP {vip} is only on lo: the director answers ARP for it where "
                               "arp_ignore is 0", evidence=", ".join(f"{k} arp_ignore {v}" for k, v in sorted(ignores.items()))))
    return out


def check_mtu(run: _Run) -> list[Finding]:
    out: list[Finding] = []
    for svc in run.services:
        for d in svc.dests:
            if d.get("fwd") != "tunnel":
                continue
            rip = str(d.get("addr"))
            route = run.ctx.route_get(rip)
            if route is None:
                out.append(Finding("warning", "mtu", f"destination {rip}: no route, cannot check the tunnel MTU"))
                continue
            dev = route.get("dev", "?")
            link_mtu = (run.iface(dev) or {}).get("mtu")
            route_mtu = next((m.get("mtu") for m in route.get("metrics", []) if isinstance(m, dict) and "mtu" in m), None)
            mtu = route_mtu or link_mtu
            if not isinstance(mtu, int):
                continue
            inner = mtu - IPIP_OVERHEAD_B
            ev = (f"route to {rip}: dev {dev}, interface MTU {link_mtu}" + (f", route MTU {route_mtu}" if route_mtu else "")
                  + f"; IPIP adds {IPIP_OVERHEAD_B} bytes -> largest client packet {inner} bytes")
            if inner < CLIENT_PACKET_B:
                out.append(Finding(
                    "warning", "mtu",
                    f"destination {rip}:{d.get('port')} (IPIP): {CLIENT_PACKET_B}-byte client packets do not fit "
                    f"the tunnel ({mtu} - {IPIP_OVERHEAD_B} = {inner})",
                    evidence=ev,
                    fix=f"raise the MTU of the director -> real-server path to >= {CLIENT_PACKET_B + IPIP_OVERHEAD_B} "
                        f"(ip link set dev {dev} mtu {CLIENT_PACKET_B + IPIP_OVERHEAD_B}, also on the switch and the real "
                        f"servers), or make the real servers announce a smaller MSS (iptables -t mangle -A OUTPUT -p tcp "
                        f"--tcp-flags SYN,RST SYN -j TCPMSS --set-mss {inner - 40}) so clients never send more than {inner} bytes",
                ))
            else:
                out.append(Finding("info", "mtu", f"destination {rip}:{d.get('port')} (IPIP): tunnel MTU fits "
                                   f"{CLIENT_PACKET_B}-byte client packets", evidence=ev))
    return out


def check_destinations(run: _Run) -> list[Finding]:
    out: list[Finding] = []
    for svc in run.services:
        for d in svc.dests:
            l2 = d.get("l2") or {}
            state = l2.get("state")
            name = f"{d.get('addr')}:{d.get('port')}"
            if state == "unresolved":
                out.append(Finding("error", "destinations",
                                   f"destination {name} of {svc.name}: forwarding state unresolved: "
                                   f"{l2.get('reason') or 'no reason given'}; its packets are dropped (no_l2)",
                                   evidence=f"l2: {json.dumps(l2, sort_keys=True)}",
                                   fix=f"check `ip route get {d.get('addr')}` and `ip neigh show {d.get('addr')}`: the "
                                       "real server (or the next hop) must answer ARP from the director's interface"))
            elif state == "n/a":
                out.append(Finding("info", "destinations", f"destination {name} of {svc.name}: no forwarding state "
                                   f"(lbd runs without a resolver: {l2.get('reason', '')})"))
    return out


# =========================================================================== checks over the window


def _dests(sample: Sample | None) -> dict[tuple[str, str, int, str, int], dict[str, Any]]:
    out: dict[tuple[str, str, int, str, int], dict[str, Any]] = {}
    if sample is None or not sample.listing:
        return out
    for s in sample.listing.get("services", []):
        for d in s.get("dests", []):
            out[(str(s.get("proto")), str(s.get("addr")), int(s.get("port", 0)), str(d.get("addr")), int(d.get("port", 0)))] = d
    return out


def _window(run: _Run) -> float:
    if run.first is None or run.second is None:
        return 0.0
    return max(0.0, run.second.t - run.first.t)


def check_stalled_handshakes(run: _Run) -> list[Finding]:
    if run.first is None or run.second is None:
        return []
    before, after = _dests(run.first), _dests(run.second)
    if after and not any("syn_retrans" in d and "handshakes" in d for d in after.values()):
        return [Finding("info", "handshakes", "lbd does not report syn_retrans/handshakes per destination: "
                        "stalled handshakes cannot be detected", fix="upgrade lbd")]
    nominal = float(run.ctx.window_s)
    stalled: list[tuple[tuple[str, str, int, str, int], int, dict[str, int]]] = []
    per_service: dict[tuple[str, str, int], list[str]] = {}
    for key, d1 in after.items():
        d0 = before.get(key)
        if d0 is None or "syn_retrans" not in d1 or "syn_retrans" not in d0:
            continue
        dr = int(d1["syn_retrans"]) - int(d0["syn_retrans"])
        dh = int(d1.get("handshakes", 0)) - int(d0.get("handshakes", 0))
        dc = int((d1.get("stats") or {}).get("conns", 0)) - int((d0.get("stats") or {}).get("conns", 0))
        per_service.setdefault(key[:3], [])
        if dr > 0 and dh <= 0:
            # N: SYN retransmissions, bounded by the new connections when those are known (refined below
            # by the connections still in SYN_RECV, when lbd lists them)
            n = min(dr, dc) if dc > 0 else dr
            stalled.append((key, n, {"syn_retrans": dr, "handshakes": dh, "conns": dc,
                                     "syn_retrans_total": int(d1["syn_retrans"]), "handshakes_total": int(d1.get("handshakes", 0))}))
            per_service[key[:3]].append(f"{key[3]}:{key[4]}")
    syn_recv = _syn_recv_counts(run) if stalled else {}
    out: list[Finding] = []
    for key, n, delta in stalled:
        proto, vip, vport, rip, rport = key
        pending = syn_recv.get(key)
        if pending:  # connections still waiting for the client's ACK: the best count of stalled handshakes
            n = min(delta["syn_retrans"], pending)
        d1 = after[key]
        fwd = d1.get("fwd", "route")
        total = sum(1 for k in after if k[:3] == key[:3])
        n_stalled = len(per_service[key[:3]])
        ev = [f"service {proto.upper()} {vip}:{vport}, destination {rip}:{rport} ({fwd}): over {_window(run):.1f} s "
              f"syn_retrans +{delta['syn_retrans']} (total {delta['syn_retrans_total']}), handshakes +{delta['handshakes']} "
              f"(total {delta['handshakes_total']}), new connections +{delta['conns']}"
              + (f", connections in SYN_RECV now {pending}" if pending is not None else "")]
        if n_stalled == total and total > 1:
            ev.append(f"all {total} destinations of the service stall: the common factor is the director's side -- "
                      "frames it sends with the client's source address are dropped on the way (anti-spoofing on the "
                      "director's hypervisor port / cloud source-destination check)")
        elif total > 1:
            ev.append(f"{n_stalled} of {total} destinations stall: look at these real servers first")
        if fwd == "route":
            fix = ("DR frames leave the director with the client's source IP: allow that on the director's port "
                   "(libvirt: remove the clean-traffic filterref or its no-ip-spoofing rule for the director's interface; "
                   "cloud: disable the source/destination check on the director's NIC). On the real server: VIP on lo "
                   f"(ip addr add {vip}/32 dev lo), arp_ignore=1/arp_announce=2, firewall accepting {vip}:{vport}. "
                   f"Capture on the real server (tcpdump -ni any host {vip} and port {vport}) to see whether the SYNs arrive")
        elif fwd == "tunnel":
            fix = ("On the real server: IPIP decapsulation (tunl0 up / ipip module), rp_filter 0 or 2 on the tunnel "
                   f"interface and `all`, VIP on lo ({vip}/32), firewall accepting {vip}:{vport}. Capture on the real "
                   f"server (tcpdump -ni any proto 4 or host {vip}) to see whether the encapsulated SYNs arrive")
        else:
            fix = (f"Capture on the real server (tcpdump -ni any port {rport}) and on the director to see where the "
                   "SYNs or the answers are lost")
        out.append(Finding(
            "error", "handshakes",
            f"destination {rip}:{rport}: {n} handshakes stalled in {nominal:g} s; frames leave the director but no "
            f"client ACK returns. Likely causes: {STALL_CAUSES}",
            evidence="\n".join(ev), fix=fix,
        ))
    return out


def _syn_recv_counts(run: _Run) -> dict[tuple[str, str, int, str, int], int]:
    """Connections per destination still in SYN_RECV (client SYN seen, its ACK never came)."""
    try:
        conns = (run.ctx.lbd("connections") or {}).get("connections", [])
    except (LbdUnavailable, LbdRefused):
        return {}
    out: dict[tuple[str, str, int, str, int], int] = {}
    for c in conns:
        if c.get("state") == "SYN_RECV":
            key = (str(c.get("proto")), str(c.get("vaddr")), int(c.get("vport", 0)), str(c.get("daddr")), int(c.get("dport", 0)))
            out[key] = out.get(key, 0) + 1
    return out


_COUNTER_FINDINGS = {
    "no_l2": ("error", "packets dropped because a destination has no resolved MAC address",
              "see the destinations findings; check routes and ARP towards the real servers"),
    "table_full": ("error", "new connections dropped: lbd's connection table is full",
                   "start lbd with a larger --conn-max, or lower TCP timeouts (lbadm --set)"),
    "dest_unavailable": ("warning", "packets of connections to deleted destinations dropped (as IPVS does)",
                         "expected for a while after `lbadm -d`; the entries expire with their state timeout"),
    "no_dest": ("warning", "no destination available: clients were answered with ICMP port unreachable",
                "add destinations or give them weight > 0"),
    "malformed": ("info", "malformed packets dropped", ""),
    "bad_csum": ("info", "packets with a bad IPv4 header checksum dropped", ""),
    "fragment": ("info", "IP fragments reached the fast path (defragmentation should happen before raw)", ""),
}
_NFQ_FINDINGS = {
    "recv_err": ("warning", "errors receiving from the queue (ENOBUFS: the kernel dropped packets lbd could not take)",
                 "give lbd more CPU; a larger socket buffer"),
    "xmit_l2_err": ("error", "frames towards real servers could not be sent (AF_PACKET send errors)",
                    "check the destinations' interfaces (down? MTU?) and lbd's log"),
    "answer_err": ("warning", "packets on lbd's raw socket could not be sent", "check lbd's log"),
}


def check_counters(run: _Run) -> list[Finding]:
    if run.first is None or run.first.counters is None:
        return []
    out: list[Finding] = []
    c0 = run.first.counters or {}
    c1 = (run.second.counters if run.second is not None else None) or {}
    window = _window(run)
    for group, table in (("reasons", _COUNTER_FINDINGS), ("nfq", _NFQ_FINDINGS)):
        v0, v1 = c0.get(group) or {}, c1.get(group) or {}
        for name, (sev, text, fix) in table.items():
            if name not in v0:
                continue
            before = int(v0[name])
            if run.second is not None and name in v1:
                grew = int(v1[name]) - before
                if grew > 0:
                    out.append(Finding(sev, "counters", f"{name} +{grew} in {window:.1f} s: {text}",
                                       evidence=f"{group}.{name}: {before} -> {v1[name]}", fix=fix))
                    continue
            if before > 0:
                out.append(Finding("info", "counters", f"{name} = {before} since lbd started (not growing now): {text}",
                                   evidence=f"{group}.{name}: {before}"))
    return out


def check_queue_drops(run: _Run) -> list[Finding]:
    if run.first is None or run.queue_num is None or run.first.queues is None:
        return []
    q0 = run.first.queues.get(run.queue_num)
    if q0 is None:
        return []
    q1 = run.second.queues.get(run.queue_num) if run.second is not None and run.second.queues else None
    fix = ("lbd is too slow for the offered load: give it CPU (pinning, no competing load), or start it with "
           "--fail-open so overflow is accepted (unbalanced) instead of dropped")
    if q1 is not None and q1.portid == q0.portid:
        dq, du = q1.queue_dropped - q0.queue_dropped, q1.user_dropped - q0.user_dropped
        if dq > 0 or du > 0:
            return [Finding("error", "nfqueue", f"queue {q0.queue} dropped {dq + du} packets in {_window(run):.1f} s "
                            f"(queue full: {dq}, netlink buffer overrun: {du})",
                            evidence=f"before: {_queue_line(q0)}\nafter:  {_queue_line(q1)}", fix=fix)]
    if q0.queue_dropped or q0.user_dropped:
        return [Finding("info", "nfqueue", f"queue {q0.queue} dropped packets earlier (cumulative since lbd bound it; "
                        "not growing now)", evidence=_queue_line(q0), fix=fix)]
    return [Finding("info", "nfqueue", f"queue {q0.queue}: lbd listening (portid {q0.portid}), no drops",
                    evidence=_queue_line(q0))]


STATIC_CHECKS: tuple[Check, ...] = (
    check_lbd, check_nfqueue_rules, check_queue_listener, check_firewall, check_nft, check_forwarding,
    check_rp_filter, check_vip, check_mtu, check_destinations,
)
SAMPLED_CHECKS: tuple[Check, ...] = (check_stalled_handshakes, check_counters, check_queue_drops)

