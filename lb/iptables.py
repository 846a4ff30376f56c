"""lbd's own iptables rules: raw-table NFQUEUE steering and untracking, and nothing else.

Layout (one lbd instance = one queue number N):

    raw PREROUTING:  -m comment --comment "lbd q<N>" -j LBD-Q<N>      (the jump, appended)
    raw LBD-Q<N>:    <match> -j CT --notrack                            \\ one pair per
                     <match> -j NFQUEUE --queue-num N --queue-bypass    / service or extra match
    raw OUTPUT:      -m comment --comment "lbd q<N> out" -j LBD-Q<N>-OUT
    raw LBD-Q<N>-OUT: -m mark --mark <SOCKET_MARK_BASE|N> -j CT --notrack

Connection tracking (the IPVS `net.ipv4.vs.conntrack` analogue), off by default: the director's
own conntrack never sees the flows lbd balances. Queued packets are untracked in raw PREROUTING,
and what the fast path sends itself is either an AF_PACKET frame (DR, IPIP, FULLNAT towards real
servers: no netfilter hook at all) or a packet on lbd's raw IPPROTO_RAW socket (FULLNAT replies to
clients, ICMP answers), which carries SO_MARK = SOCKET_MARK_BASE | N and is untracked by
LBD-Q<N>-OUT in raw OUTPUT. Every such packet that meets a later chain has conntrack state
UNTRACKED: `-m state --state NEW` / `RELATED,ESTABLISHED` never match it, `--ctstate INVALID`
never drops it, and no conntrack entry is created for it (no table pressure, no one-sided entries).

`RuleManager(track=True)` is the opt-in: no `CT --notrack` rule is installed and LBD-Q<N>-OUT is
not created. Its reach is narrower than IPVS's conntrack=1: the NFQUEUE rule sits in raw
PREROUTING (priority -300), before conntrack (-200), so packets lbd forwards (verdict DROP after
its own transmission) still never get an entry; what gets tracked is what lbd hands back to the
kernel (fast-path ACCEPT: no connection entry, not TCP/UDP) and what it sends on its raw socket.
Use it only when the director's own conntrack-based rules or accounting must see those packets;
they then meet stateful rules as NEW/INVALID (see `lbadm doctor`).

Why this shape:
- A private chain per queue number lets two lbd's in one netns (different queues) coexist, and
  lets an instance find and remove exactly its own leftovers after a crash: everything in
  LBD-Q<N> and LBD-Q<N>-OUT and every raw rule jumping to them is ours; nothing else ever is.
- The jumps are appended, not inserted: operators' earlier raw rules (typically drop lists, which
  live in raw because it is the earliest hook) keep applying before the director sees packets.
- `CT --notrack` comes first in each pair: NFQUEUE is terminal, so a notrack after it would never
  run. The pair is therefore the unit of the diff: if either half is missing or out of order, both
  are rewritten. (With track=True the unit is the queue rule alone.)
- The OUTPUT side matches lbd's socket mark, not addresses: only packets lbd itself sends are
  untracked; the director's own traffic from the same addresses (health checks, ssh) stays tracked.
- Every change is one `iptables-restore --noflush` transaction: the kernel sees the old rule set
  or the new one, never a half-applied diff. Unchanged rules are left in place (their counters
  survive), so a sync that changes one service does not disturb the others.
- `--queue-bypass`: when no lbd listens on the queue (crash, restart), packets are accepted by the
  kernel instead of dropped; the service then degrades to "not balanced", not to "black-holed".

Rule text is generated in the exact form `iptables -S` prints (iptables 1.8.x), and rules read
back (lb.iptrules, the project's one iptables rule parser) are compared through a normalised key,
so formatting differences between iptables versions cost at most a rewrite, never a wrong diff.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import shlex
import shutil
import subprocess
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from lb import consts as C
from lb.iptrules import TableState, parse_table, rule_key

log = logging.getLogger(__name__)

TABLE = "raw"
HOOK_CHAIN = "PREROUTING"
OUT_HOOK_CHAIN = "OUTPUT"
CHAIN_PREFIX = "LBD-Q"
OUT_CHAIN_SUFFIX = "-OUT"
COMMENT_PREFIX = "lbd q"
OUT_COMMENT_SUFFIX = " out"
# SO_MARK of lbd's raw IPPROTO_RAW socket is SOCKET_MARK_BASE | queue number ("LB" in the high
# half, the queue in the low 16 bits): lb_api.h's LB_SOCKET_MARK_BASE, which the C adapter uses.
SOCKET_MARK_BASE = C.LB_SOCKET_MARK_BASE
PROTO_TCP = 6
PROTO_UDP = 17
_PROTO_NAMES = {PROTO_TCP: "tcp", PROTO_UDP: "udp"}
MAX_QUEUE = 65535
COMMAND_TIMEOUT_S = 30.0  # one iptables call; nft transactions take milliseconds
LOCK_WAIT_S = 5  # `-w`: the legacy backend's xtables lock; accepted and ignored by nft

Runner = Callable[[Sequence[str], str | None], "subprocess.CompletedProcess[str]"]


class IptablesError(RuntimeError):
    """An iptables command failed. Carries the command, its exit status and its stderr."""

    def __init__(self, cmd: Sequence[str], returncode: int | None, stderr: str, detail: str = "") -> None:
        self.cmd = list(cmd)
        self.returncode = returncode
        self.stderr = stderr.strip()
        status = "timed out" if returncode is None else f"exit status {returncode}"
        text = f"{shlex.join(self.cmd)}: {status}"
        if self.stderr:
            text += f": {self.stderr}"
        if detail:
            text += f"\n{detail}"
        super().__init__(text)


class ChainMissingError(IptablesError):
    """sync() found no chain: setup() was not called, or someone deleted our chain."""

    def __init__(self, cmd: Sequence[str], chain: str) -> None:
        super().__init__(cmd, 0, "", detail=f"chain {chain} does not exist in table {TABLE}: call setup() first")


# --------------------------------------------------------------------------- rule text


def chain_name(queue_num: int) -> str:
    return f"{CHAIN_PREFIX}{_check_queue(queue_num)}"


def jump_comment(queue_num: int) -> str:
    return f"{COMMENT_PREFIX}{_check_queue(queue_num)}"


def jump_rule(queue_num: int) -> str:
    """The raw PREROUTING rule that sends packets into our chain, as `iptables -S` prints it."""
    return f'-A {HOOK_CHAIN} -m comment --comment "{jump_comment(queue_num)}" -j {chain_name(queue_num)}'


def out_chain_name(queue_num: int) -> str:
    return f"{chain_name(queue_num)}{OUT_CHAIN_SUFFIX}"


def out_jump_comment(queue_num: int) -> str:
    return f"{jump_comment(queue_num)}{OUT_COMMENT_SUFFIX}"


def out_jump_rule(queue_num: int) -> str:
    """The raw OUTPUT rule that sends locally generated packets into LBD-Q<N>-OUT."""
    return (f'-A {OUT_HOOK_CHAIN} -m comment --comment "{out_jump_comment(queue_num)}" '
            f"-j {out_chain_name(queue_num)}")


def socket_mark(queue_num: int) -> int:
    """SO_MARK the fast path puts on its raw socket for queue N (what LBD-Q<N>-OUT matches)."""
    return SOCKET_MARK_BASE | _check_queue(queue_num)


def out_rules(queue_num: int, track: bool = False) -> list[str]:
    """LBD-Q<N>-OUT's content: untrack what lbd's raw socket sends (nothing with track=True)."""
    if track:
        return []
    return [f"-A {out_chain_name(queue_num)} -m mark --mark {socket_mark(queue_num):#x} -j CT --notrack"]


def _check_queue(num: int) -> int:
    if not isinstance(num, int) or isinstance(num, bool) or not 0 <= num <= MAX_QUEUE:
        raise ValueError(f"queue number {num!r} out of range 0..{MAX_QUEUE}")
    return num


def _host(addr: str) -> str:
    try:
        return f"{ipaddress.IPv4Address(addr)}/32"
    except ValueError as exc:
        raise ValueError(f"invalid IPv4 address {addr!r}") from exc


def _port(port: int, *, allow_zero: bool) -> int:
    low = 0 if allow_zero else 1
    if not isinstance(port, int) or isinstance(port, bool) or not low <= port <= 65535:
        raise ValueError(f"port {port!r} out of range {low}..65535")
    return port


def l4_match(
    proto: int,
    *,
    daddr: str | None = None,
    dport: int = 0,
    saddr: str | None = None,
    sport: int = 0,
) -> str:
    """A match in `iptables -S` order: -s, -d, -p, -m <proto>, --sport, --dport. Port 0 = any."""
    name = _PROTO_NAMES.get(proto)
    if name is None:
        raise ValueError(f"unsupported protocol {proto!r} (tcp=6, udp=17)")
    parts: list[str] = []
    if saddr is not None:
        parts += ["-s", _host(saddr)]
    if daddr is not None:
        parts += ["-d", _host(daddr)]
    parts += ["-p", name]
    sport = _port(sport, allow_zero=True)
    dport = _port(dport, allow_zero=True)
    if sport or dport:
        parts += ["-m", name]
    if sport:
        parts += ["--sport", str(sport)]
    if dport:
        parts += ["--dport", str(dport)]
    return " ".join(parts)


def service_match(proto: int, vip: str, port: int) -> str:
    """Packets for a virtual service. Port 0 is IPVS's "all ports" (persistent services)."""
    return l4_match(proto, daddr=vip, dport=port)


def reply_match(proto: int, rip: str, rport: int, lip: str) -> str:
    """FULLNAT replies, real server -> local address (the `extra` hook of RuleManager.sync)."""
    return l4_match(proto, saddr=rip, sport=rport, daddr=lip)


# ---- NAT (masquerading) replies: one rule kind of its own (issue 14 item 1) ---------------------
# A NAT real server answers the client's own address through the director, so its replies are
# identified by their source (RIP:rport), not by an address of the director. `-m addrtype !
# --dst-type LOCAL` keeps the director's own traffic with that real server (health checks, an
# operator's curl from the director) out of the queue and tracked: only packets the director
# forwards are NAT replies. ICMP errors from the real server about a NAT connection (port
# unreachable, fragmentation needed) travel the same way. Kept apart from service_match /
# reply_match so that a set-based steering can take them over as one more set of (proto, RIP,
# RPORT) and one of RIP, with the same addrtype condition.


def nat_reply_match(proto: int, rip: str, rport: int) -> str:
    """NAT replies: from a real server's RIP:rport to anything not local (RuleManager.sync's `extra`)."""
    return f"{l4_match(proto, saddr=rip, sport=rport)} -m addrtype ! --dst-type LOCAL"


def nat_icmp_match(rip: str) -> str:
    """ICMP from a NAT real server to anything not local (errors about NAT connections)."""
    return f"-s {_host(rip)} -p icmp -m addrtype ! --dst-type LOCAL"


def icmp_match(addr: str) -> str:
    """ICMP to a VIP or LIP (errors about balanced flows, echo), for RuleManager.sync's `extra`."""
    return f"-d {_host(addr)} -p icmp"


def queue_target(queue_num: int, queue_balance: tuple[int, int] | None, bypass: bool = True,
                 cpu_fanout: bool = False) -> str:
    """The NFQUEUE target; without `bypass` (lbd --down-policy closed) the kernel drops packets
    while nobody listens on the queue, instead of accepting them. With `queue_balance` the kernel
    spreads packets over the range by a hash of the addresses, or with `cpu_fanout` by the CPU
    that handles the packet (queue = first + cpu % count)."""
    suffix = " --queue-bypass" if bypass else ""
    if queue_balance is None:
        if cpu_fanout:
            raise ValueError("--queue-cpu-fanout needs a queue balance range")
        return f"-j NFQUEUE --queue-num {_check_queue(queue_num)}{suffix}"
    low, high = (_check_queue(q) for q in queue_balance)
    if low > high:
        raise ValueError(f"queue balance range {low}:{high} is empty")
    return f"-j NFQUEUE --queue-balance {low}:{high}{suffix}{' --queue-cpu-fanout' if cpu_fanout else ''}"


def _check_match(match: str) -> str:
    """Refuse what could escape the rule: line breaks (restore syntax) and jumps/targets."""
    if any(ch in match for ch in "\n\r\0"):
        raise ValueError(f"match contains a line break: {match!r}")
    try:
        tokens = shlex.split(match)
    except ValueError as exc:
        raise ValueError(f"match {match!r} does not parse: {exc}") from exc
    if not tokens:
        raise ValueError("empty match")
    bad = {"-j", "--jump", "-g", "--goto", "-A", "-D", "-I", "-R", "-N", "-X", "-F"} & set(tokens)
    if bad:
        raise ValueError(f"match {match!r} contains {', '.join(sorted(bad))}; give only match options")
    return " ".join(tokens)


@dataclass(frozen=True)
class RulePair:
    """The rules one match becomes: notrack first, then queue. `notrack` is None with track=True."""

    match: str
    notrack: str | None
    queue: str

    @property
    def lines(self) -> list[str]:
        return [self.notrack, self.queue] if self.notrack is not None else [self.queue]


def rule_pair(chain: str, match: str, target: str, *, track: bool = False) -> RulePair:
    match = _check_match(match)
    return RulePair(
        match=match,
        notrack=None if track else f"-A {chain} {match} -j CT --notrack",
        queue=f"-A {chain} {match} {target}",
    )


# --------------------------------------------------------------------------- diff


@dataclass
class Plan:
    """What one sync changes. `delete` holds 1-based rule numbers, highest first."""

    delete: list[int] = field(default_factory=list)
    add: list[str] = field(default_factory=list)
    deleted_rules: list[str] = field(default_factory=list)
    jump_added: bool = False
    out_repaired: list[str] = field(default_factory=list)  # restore lines healing LBD-Q<N>-OUT

    @property
    def empty(self) -> bool:
        return not self.delete and not self.add and not self.jump_added and not self.out_repaired

    def __str__(self) -> str:
        return f"{len(self.add)} to add, {len(self.delete)} to delete"


def plan_sync(existing: Sequence[str], desired: Sequence[RulePair]) -> Plan:
    """Minimal change turning the chain `existing` (its -A lines, in order) into `desired`.

    A pair is kept when both its rules exist and the notrack rule precedes the queue rule; each
    existing rule is used by at most one pair, so duplicates are deleted. Everything not kept is
    deleted by rule number (exact even with duplicates; descending so numbers stay valid within
    the transaction); missing pairs are appended in the order given.
    """
    keys = [rule_key(line) for line in existing]
    used: set[int] = set()
    add: list[str] = []
    seen_matches: set[tuple[tuple[str, ...], tuple[str, ...]]] = set()
    for pair in desired:
        nt_key = rule_key(pair.notrack) if pair.notrack is not None else ()
        q_key = rule_key(pair.queue)
        if (nt_key, q_key) in seen_matches:
            continue  # the same match given twice is one pair of rules
        seen_matches.add((nt_key, q_key))
        if pair.notrack is None:  # track=True: the queue rule alone is the unit
            j = _first_unused(keys, q_key, used, start=0)
            if j is not None:
                used.add(j)
            else:
                add.append(pair.queue)
            continue
        i = _first_unused(keys, nt_key, used, start=0)
        j = _first_unused(keys, q_key, used, start=i + 1) if i is not None else None
        if i is not None and j is not None:
            used.update((i, j))
        else:
            add += [pair.notrack, pair.queue]
    delete = sorted((n for n in range(len(existing)) if n not in used), reverse=True)
    return Plan(
        delete=[n + 1 for n in delete],
        add=add,
        deleted_rules=[existing[n] for n in sorted(delete)],
    )


def _first_unused(keys: Sequence[tuple[str, ...]], key: tuple[str, ...], used: set[int], start: int) -> int | None:
    for n in range(start, len(keys)):
        if n not in used and keys[n] == key:
            return n
    return None


def restore_script(lines: Iterable[str]) -> str:
    body = "\n".join(lines)
    return f"*{TABLE}\n{body}\nCOMMIT\n"


def _has_jump_from(state: TableState, hook: str) -> bool:
    return any(j.startswith(f"-A {hook} ") for j in state.jumps)


# --------------------------------------------------------------------------- running


def _run(cmd: Sequence[str], stdin: str | None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(cmd),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
        check=False,
    )


class RuleManager:
    """Owns exactly one queue's chains in the raw table (LBD-Q<N>, LBD-Q<N>-OUT) and the jumps to them.

    `track`: the conntrack opt-in (IPVS `net.ipv4.vs.conntrack=1` analogue), off by default. With
    track=True no `CT --notrack` rule is installed (LBD-Q<N> holds only NFQUEUE rules and
    LBD-Q<N>-OUT is not created): packets lbd hands back and its raw-socket packets get conntrack
    entries; forwarded packets still do not (the queue is before conntrack's hook; module doc).
    `bypass`: `--queue-bypass` on the NFQUEUE rules (default). False is lbd's `--down-policy
    closed`: while no lbd listens, the kernel drops queued packets instead of accepting them.
    `queue_balance` (first, last): the rules spread packets over that range (lbd --queue-balance;
    `queue_num` is then the first, naming the chains and the socket mark); `cpu_fanout` picks the
    queue by CPU instead of by flow hash.
    `netns` runs every command under `ip netns exec NAME` (tests; lbd itself already runs inside
    its namespace). `runner` replaces subprocess execution (unit tests).
    """

    def __init__(
        self,
        queue_num: int,
        queue_balance: tuple[int, int] | None = None,
        iptables: str = "iptables",
        *,
        track: bool = False,
        bypass: bool = True,
        cpu_fanout: bool = False,
        netns: str | None = None,
        runner: Runner | None = None,
    ) -> None:
        self.queue_num = _check_queue(queue_num)
        self.queue_balance = queue_balance
        self.track = bool(track)
        self.bypass = bool(bypass)
        self.chain = chain_name(queue_num)
        self.out_chain = out_chain_name(queue_num)
        self.target = queue_target(queue_num, queue_balance, self.bypass, cpu_fanout)  # validates the range
        self.mark = socket_mark(queue_num)
        self.iptables = iptables
        self.iptables_restore = f"{iptables}-restore"
        self.netns = netns
        self._runner: Runner = runner or _run

    # ---- commands

    def _prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.netns] if self.netns else []

    def _exec(self, cmd: list[str], stdin: str | None = None) -> str:
        full = self._prefix() + cmd
        try:
            proc = self._runner(full, stdin)
        except FileNotFoundError as exc:
            raise IptablesError(full, 127, f"{exc.filename or cmd[0]}: not found") from exc
        except subprocess.TimeoutExpired as exc:
            raise IptablesError(full, None, f"no answer within {COMMAND_TIMEOUT_S:g} s") from exc
        if proc.returncode != 0:
            raise IptablesError(full, proc.returncode, proc.stderr or "", detail=_script_excerpt(stdin))
        return proc.stdout or ""

    def _restore(self, lines: list[str]) -> None:
        if not lines:
            return
        script = restore_script(lines)
        log.debug("iptables-restore --noflush:\n%s", script)
        self._exec([self.iptables_restore, "-w", str(LOCK_WAIT_S), "--noflush"], script)

    def _listing(self) -> str:
        return self._exec([self.iptables, "-w", str(LOCK_WAIT_S), "-t", TABLE, "-S"])

    def _state(self) -> TableState:
        return parse_table(self._listing(), self.chain)

    def _states(self) -> tuple[TableState, TableState]:
        """(LBD-Q<N>, LBD-Q<N>-OUT) from one listing."""
        text = self._listing()
        return parse_table(text, self.chain), parse_table(text, self.out_chain)

    def _out_lines(self) -> list[str]:
        """Restore lines creating LBD-Q<N>-OUT with its content and its jump (none with track)."""
        if self.track:
            return []
        return [f":{self.out_chain} - [0:0]", *out_rules(self.queue_num), out_jump_rule(self.queue_num)]

    # ---- public API

    def rules(self) -> list[str]:
        """Our chain's rules as `iptables -S` prints them (empty when the chain is absent)."""
        return self._state().rules

    def jumps(self) -> list[str]:
        return self._state().jumps

    def out_rules(self) -> list[str]:
        """LBD-Q<N>-OUT's rules as `iptables -S` prints them (empty when absent)."""
        return self._states()[1].rules

    def out_jumps(self) -> list[str]:
        return self._states()[1].jumps

    def setup(self) -> None:
        """Create the chains and the jumps, removing any leftovers of this queue first.

        Idempotent. One transaction: delete every jump to our chains, declare LBD-Q<N> (which
        creates it, or flushes it when a crashed instance left it behind), append its jump; then
        the same for LBD-Q<N>-OUT with its notrack rule (with track=True a leftover OUT chain is
        removed instead: an earlier instance may have run without the opt-in).
        """
        pre, out = self._states()
        if pre.rules or len(pre.jumps) > 1 or out.jumps or out.chain_exists:
            log.info(
                "removing leftovers of a previous lbd on queue %d: %d+%d rules, %d+%d jumps",
                self.queue_num, len(pre.rules), len(out.rules), len(pre.jumps), len(out.jumps),
            )
        lines = [_delete_line(j) for j in pre.jumps + out.jumps]
        lines.append(f":{self.chain} - [0:0]")
        lines.append(jump_rule(self.queue_num))
        if self.track:
            if out.chain_exists:
                lines += [f"-F {self.out_chain}", f"-X {self.out_chain}"]
        else:
            lines += self._out_lines()
        self._restore(lines)
        log.info("raw table: chain %s ready, jumped to from %s; %s", self.chain, HOOK_CHAIN,
                 "conntrack opt-in: balanced flows are tracked" if self.track else
                 f"balanced flows untracked, also lbd's own packets (mark {self.mark:#x}) in {OUT_HOOK_CHAIN}")

    def sync(
        self,
        services: Iterable[tuple[int, str, int]],
        extra: Iterable[str] = (),
    ) -> Plan:
        """Make the chain hold exactly these services' rule pairs plus one per `extra` match.

        `extra` are match strings, e.g. `reply_match(...)` for FULLNAT replies and `icmp_match(addr)`
        for ICMP to VIPs and local addresses.
        """
        matches = [service_match(proto, vip, port) for proto, vip, port in services]
        return self.sync_matches(matches + list(extra))

    def sync_matches(self, matches: Iterable[str]) -> Plan:
        """Make the chain hold exactly one notrack+queue pair per match, in one transaction.

        Also heals what an operator's flush may have removed: the jump from raw PREROUTING, and
        LBD-Q<N>-OUT with its rule and jump (unless track=True).
        """
        desired = [rule_pair(self.chain, m, self.target, track=self.track) for m in matches]
        pre, out = self._states()
        if not pre.chain_exists:
            raise ChainMissingError(self._prefix() + [self.iptables, "-t", TABLE, "-S"], self.chain)
        plan = plan_sync(pre.rules, desired)
        if not _has_jump_from(pre, HOOK_CHAIN):
            # Someone removed our jump (e.g. an operator's `iptables -t raw -F PREROUTING`):
            # without it nothing reaches the queue, so restore it in the same transaction.
            log.warning("raw %s: jump from %s was missing; restoring it", self.chain, HOOK_CHAIN)
            plan.jump_added = True
        plan.out_repaired = self._plan_out(out)
        if plan.empty:
            log.debug("raw %s already in sync (%d rules)", self.chain, len(pre.rules))
            return plan
        lines = [f"-D {self.chain} {n}" for n in plan.delete] + plan.add
        if plan.jump_added:
            lines.append(jump_rule(self.queue_num))
        lines += plan.out_repaired
        self._restore(lines)
        log.info("raw %s: %s", self.chain, plan)
        return plan

    def _plan_out(self, out: TableState) -> list[str]:
        if self.track:
            return []
        if not out.chain_exists:
            log.warning("raw %s was missing; restoring it", self.out_chain)
            return self._out_lines()
        lines: list[str] = []
        want = out_rules(self.queue_num)
        if [rule_key(r) for r in out.rules] != [rule_key(r) for r in want]:
            log.warning("raw %s did not hold exactly %s; rewriting it", self.out_chain, want)
            lines += [f"-F {self.out_chain}", *want]
        if not _has_jump_from(out, OUT_HOOK_CHAIN):
            log.warning("raw %s: jump from %s was missing; restoring it", self.out_chain, OUT_HOOK_CHAIN)
            lines.append(out_jump_rule(self.queue_num))
        return lines

    def teardown(self) -> None:
        """Remove the jumps, flush and delete both chains. Idempotent; touches nothing else."""
        pre, out = self._states()
        lines = [_delete_line(j) for j in pre.jumps + out.jumps]
        for state, chain in ((pre, self.chain), (out, self.out_chain)):
            if state.chain_exists:
                lines += [f"-F {chain}", f"-X {chain}"]
        if not lines:
            log.debug("raw %s: nothing to tear down", self.chain)
            return
        self._restore(lines)
        log.info("raw %s, %s: removed (%d rules, %d jumps)", self.chain, self.out_chain,
                 len(pre.rules) + len(out.rules), len(pre.jumps) + len(out.jumps))

    def detect(self) -> str | None:
        return detect(self.iptables, netns=self.netns, runner=self._runner)


def _delete_line(rule: str) -> str:
    assert rule.startswith("-A ")
    return "-D " + rule[3:]


def _script_excerpt(stdin: str | None, limit: int = 40) -> str:
    if not stdin:
        return ""
    lines = stdin.splitlines()
    shown = lines[:limit] + ([f"... ({len(lines) - limit} more lines)"] if len(lines) > limit else [])
    return "input was:\n" + "\n".join(f"  {n + 1:3}: {text}" for n, text in enumerate(shown))


def detect(
    iptables: str = "iptables",
    *,
    netns: str | None = None,
    runner: Runner | None = None,
) -> str | None:
    """None when iptables can steer packets into NFQUEUE here; else a reason a human can act on.

    The check is a real, side-effect-free transaction: create a private chain holding one
    `CT --notrack` and one `NFQUEUE` rule, then flush and delete it, all in one commit. The
    kernel validates each target when the rule is added (nft-compat loads xt_CT/xt_NFQUEUE),
    so a missing module fails the whole batch and nothing is ever committed.
    """
    run = runner or _run
    prefix = ["ip", "netns", "exec", netns] if netns else []
    for binary in (iptables, f"{iptables}-restore"):
        if not prefix and shutil.which(binary) is None:
            return f"{binary} not found in PATH (install the iptables package)"
    probe = f"LBD-PROBE-{os.getpid() % 100000}"
    script = restore_script([
        f":{probe} - [0:0]",
        f"-A {probe} -p udp -m udp --dport 9 -j CT --notrack",
        f"-A {probe} -p udp -m udp --dport 9 -j NFQUEUE --queue-num 0 --queue-bypass",
        f"-A {probe} -m mark --mark {SOCKET_MARK_BASE:#x} -j CT --notrack",
        f"-F {probe}",
        f"-X {probe}",
    ])
    checks: list[tuple[list[str], str | None, str]] = [
        ([iptables, "--version"], None, "iptables does not run"),
        ([iptables, "-w", str(LOCK_WAIT_S), "-t", TABLE, "-S"], None, "cannot read the raw table"),
        ([f"{iptables}-restore", "-w", str(LOCK_WAIT_S), "--noflush"], script,
         "the kernel refuses CT --notrack, -m mark or NFQUEUE in the raw table"),
    ]
    for cmd, stdin, what in checks:
        try:
            proc = run(prefix + cmd, stdin)
        except (OSError, subprocess.SubprocessError) as exc:
            return f"{what}: {shlex.join(prefix + cmd)}: {exc}"
        if proc.returncode != 0:
            err = (proc.stderr or "").strip().splitlines()
            return f"{what}: {shlex.join(prefix + cmd)} exit {proc.returncode}: {' / '.join(err[-3:])}"
    return None
