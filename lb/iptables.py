"""lbd's own iptables rules: raw-table NFQUEUE steering and untracking, and nothing else.

The rules' text, and the layout of the chains and sets with the reasons for its order, is
lb.iptlayout's (its module doc draws the layout, and explains the defrag rule); this module runs
the commands that put it in place and keep it there: RuleManager (iptables-restore transactions,
the ip sets through lb.ipsets), the probe detect(), and drop_empty_raw_hooks().

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
- Private chains and sets per queue number let two lbd's in one netns (different queues) coexist,
  and let an instance find and remove exactly its own leftovers after a crash: everything in
  LBD-Q<N>, LBD-Q<N>-GO and LBD-Q<N>-OUT, every raw rule jumping to them and the sets
  lbd-q<N>-* are ours; nothing else ever is.
- The jumps are appended, not inserted: operators' earlier raw rules (typically drop lists, which
  live in raw because it is the earliest hook) keep applying before the director sees packets.
- `CT --notrack` comes before NFQUEUE in LBD-Q<N>-GO: NFQUEUE is terminal.
- The OUTPUT side matches lbd's socket mark, not addresses: only packets lbd itself sends are
  untracked; the director's own traffic from the same addresses (health checks, ssh) stays tracked.
- Chain changes are one `iptables-restore --noflush` transaction; set changes are one
  `ipset restore` of the difference, additions to the address pre-filter before the elements
  that need it, deletions after.
- `--queue-bypass`: when no lbd listens on the queue (crash, restart), packets are accepted by the
  kernel instead of dropped; the service then degrades to "not balanced", not to "black-holed".
  With --down-policy closed it is absent and lbd leaves rules and sets in place on exit, so the
  next lbd adopts them without a moment where the VIPs reach the director's own stack.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from lb import ipsets as ips
from lb.iptlayout import (
    HOOK_CHAIN,
    MARK_TABLE,
    OUT_HOOK_CHAIN,
    SOCKET_MARK_BASE,
    TABLE,
    _check_queue,
    chain_damage,
    chain_name,
    chain_rules,
    go_chain_name,
    go_rules,
    has_jump_from,
    jump_rule,
    out_chain_name,
    out_jump_rule,
    out_rules,
    queue_target,
    remove_lines,
    restore_script,
    same_rules,
    socket_mark,
)
from lb.iptmarks import MarkChain
from lb.iptrules import TableState, chain_state, parse_iptables_save, parse_table

log = logging.getLogger(__name__)

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


# --------------------------------------------------------------------------- diff


@dataclass
class Plan:
    """What one sync changed: set elements added/deleted, and restore lines rewriting chains."""

    added: int = 0
    deleted: int = 0
    rewritten: list[str] = field(default_factory=list)  # chains rewritten (healed or adopted)
    jump_added: bool = False
    out_repaired: list[str] = field(default_factory=list)  # restore lines healing LBD-Q<N>-OUT
    marks_changed: bool = False  # mangle LBD-Q<N>-MARK rewritten (fwmark services changed)

    @property
    def empty(self) -> bool:
        return not self.added and not self.deleted and not self.rewritten and not self.jump_added \
            and not self.out_repaired and not self.marks_changed

    def __str__(self) -> str:
        text = f"{self.added} set elements added, {self.deleted} deleted"
        if self.rewritten:
            text += f"; rewrote {', '.join(self.rewritten)}"
        return text


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
    """Owns exactly one queue's chains in the raw table (LBD-Q<N>, LBD-Q<N>-GO, LBD-Q<N>-OUT),
    the jumps to them, the queue's ip sets (lb.ipsets), and its fwmark services' mangle chain
    (`fwmarks`, lb.iptmarks).

    `track`: the conntrack opt-in (IPVS `net.ipv4.vs.conntrack=1` analogue), off by default. With
    track=True no `CT --notrack` rule is installed (LBD-Q<N>-GO holds only the NFQUEUE rule and
    LBD-Q<N>-OUT is not created): packets lbd hands back and its raw-socket packets get conntrack
    entries; forwarded packets still do not (the queue is before conntrack's hook; module doc).
    `bypass`: `--queue-bypass` on the NFQUEUE rule (default). False is lbd's `--down-policy
    closed`: while no lbd listens, the kernel drops queued packets instead of accepting them.
    `queue_balance` (first, last): the rule spreads packets over that range (lbd --queue-balance;
    `queue_num` is then the first, naming the chains, the sets and the socket mark); `cpu_fanout`
    picks the queue by CPU instead of by flow hash.
    `netns` runs every command under `ip netns exec NAME` (tests; lbd itself already runs inside
    its namespace). `runner` replaces subprocess execution (unit tests).
    """

    steering_kind = "iptables"  # lbd --steering (reported by ping: lbadm doctor)

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
        self.go_chain = go_chain_name(queue_num)
        self.out_chain = out_chain_name(queue_num)
        self.target = queue_target(queue_num, queue_balance, self.bypass, cpu_fanout)  # validates the range
        self.mark = socket_mark(queue_num)
        self.iptables = iptables
        self.iptables_restore = f"{iptables}-restore"
        self.netns = netns
        self._runner: Runner = runner or _run
        self.sets = ips.SetManager(self.queue_num, netns=netns, runner=self._runner)
        self.fwmarks = MarkChain(self.queue_num, self.target, [iptables, "-w", str(LOCK_WAIT_S), "-t", MARK_TABLE, "-S"],
                                 self._exec, self._restore)  # fwmark services: mangle LBD-Q<N>-MARK
        # apply(): the nftables generation source (False: not decided yet) and the generation at
        # which the chains were last found intact
        # (None with a `runner`: what a fake runner shows is not the kernel's generation)
        self._generation: Callable[[], int | None] | None | bool = False if runner is None else None
        self._intact_gen: int | None = None

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

    def _restore(self, lines: list[str], table: str = TABLE) -> None:
        if not lines:
            return
        script = restore_script(lines, table)
        log.debug("iptables-restore --noflush:\n%s", script)
        self._exec([self.iptables_restore, "-w", str(LOCK_WAIT_S), "--noflush"], script)

    def _listing(self) -> str:
        return self._exec([self.iptables, "-w", str(LOCK_WAIT_S), "-t", TABLE, "-S"])

    def _state(self) -> TableState:
        return parse_table(self._listing(), self.chain)

    def _states(self) -> tuple[TableState, TableState, TableState]:
        """(LBD-Q<N>, LBD-Q<N>-GO, LBD-Q<N>-OUT) from one listing."""
        text = self._listing()
        table = parse_iptables_save(text, default_table=TABLE).get(TABLE, {})  # parsed once, not per chain
        return chain_state(table, self.chain), chain_state(table, self.go_chain), chain_state(table, self.out_chain)

    def _out_lines(self) -> list[str]:
        """Restore lines creating LBD-Q<N>-OUT with its content and its jump (none with track)."""
        if self.track:
            return []
        return [f":{self.out_chain} - [0:0]", *out_rules(self.queue_num), out_jump_rule(self.queue_num)]

    def _chain_lines(self) -> list[str]:
        """Restore lines (re)declaring LBD-Q<N>-GO and LBD-Q<N> with their fixed content (a
        declaration flushes an existing chain in the same transaction)."""
        return [f":{self.go_chain} - [0:0]", f":{self.chain} - [0:0]",
                *go_rules(self.queue_num, self.target, self.track), *chain_rules(self.queue_num)]

    # ---- public API

    def rules(self) -> list[str]:
        """LBD-Q<N>'s rules as `iptables -S` prints them (empty when the chain is absent)."""
        return self._state().rules

    def go_rules(self) -> list[str]:
        return self._states()[1].rules

    def jumps(self) -> list[str]:
        return self._state().jumps

    def out_rules(self) -> list[str]:
        """LBD-Q<N>-OUT's rules as `iptables -S` prints them (empty when absent)."""
        return self._states()[2].rules

    def out_jumps(self) -> list[str]:
        return self._states()[2].jumps

    def adoptable(self) -> bool:
        """A previous lbd's chains to adopt as they are (then healed by sync) rather than set up
        afresh: exactly one jump from raw PREROUTING, and not with the conntrack opt-in."""
        jumps = self.jumps()
        return not self.track and len(jumps) == 1 and jumps[0].startswith(f"-A {HOOK_CHAIN} ")

    def setup(self) -> None:
        """Create the sets (empty), the chains and the jumps, removing any leftovers of this queue first.

        Idempotent. Leftover rules go first (a set cannot be destroyed while a rule refers to
        it), then the sets are created afresh, then one transaction declares the chains with
        their fixed rules and the jumps.
        """
        pre, go, out = self._states()
        if pre.rules or go.chain_exists or len(pre.jumps) > 1 or out.jumps or out.chain_exists:
            log.info(
                "removing leftovers of a previous lbd on queue %d: %d+%d+%d rules, %d+%d jumps",
                self.queue_num, len(pre.rules), len(go.rules), len(out.rules), len(pre.jumps), len(out.jumps),
            )
        self._restore(remove_lines([(pre, self.chain), (go, self.go_chain), (out, self.out_chain)]))
        self.fwmarks.remove()
        self.remove_other_layer()
        self.sets.create()
        self._restore([*self._chain_lines(), jump_rule(self.queue_num), *self._out_lines()])
        log.info("raw table: chain %s ready (set lookups in %s), jumped to from %s; %s", self.chain,
                 ", ".join(self.sets.names.values()), HOOK_CHAIN,
                 "conntrack opt-in: balanced flows are tracked" if self.track else
                 f"balanced flows untracked, also lbd's own packets (mark {self.mark:#x}) in {OUT_HOOK_CHAIN}")

    def remove_other_layer(self) -> None:
        """The table `ip lbd-q<N>` an lbd of this queue with --steering nftables left (kill -9, --down-policy
        closed; lb.nftsteer) would steer too: deleted (at setup, and by `lbd --cleanup`). Only against
        the real system (a fake runner knows no nft), and only where nft is installed."""
        if self._runner is not _run or (not self.netns and shutil.which("nft") is None):
            return
        table = f"lbd-q{self.queue_num}"
        try:
            listed = self._exec(["nft", "list", "tables", "ip"])
        except IptablesError:
            return
        if f"table ip {table}" in listed.splitlines():
            self._exec(["nft", "delete", "table", "ip", table])
            log.info("removed table ip %s that an lbd of queue %d with --steering nftables left", table, self.queue_num)

    def sync(self, steering: ips.Steering, verify_sets: bool = False, heal_level: int = logging.WARNING) -> Plan:
        """Make the sets hold exactly `steering` (only the difference is sent), and heal the chains.
        verify_sets: also find sets someone else changed (lb.ipsets SetManager.check; a periodic
        check's job, not every configuration change's).

        The chains' content is fixed, so what a service change costs is its set elements; the
        raw table is read (one `iptables -S`, whose size does not grow with services) to heal
        what an operator's flush may have removed: the jump from raw PREROUTING, our chains'
        content (also a previous version's per-service rules, adopted on restart), and
        LBD-Q<N>-OUT with its rule and jump (unless track=True). Sets are filled before any
        rule that refers to them is written, so an adopted chain never meets an empty set.
        `heal_level`: how loudly each healed part is logged (repair() has said it in one line).
        """
        pre, go, out = self._states()
        if not pre.chain_exists:
            raise ChainMissingError(self._prefix() + [self.iptables, "-t", TABLE, "-S"], self.chain)
        try:
            added, deleted = self.sets.sync(steering, verify=verify_sets)
        except ips.IpsetError as exc:
            raise IptablesError(exc.cmd, exc.returncode, exc.stderr) from exc
        plan = Plan(added=added, deleted=deleted)
        self._restore(self._heal_lines(pre, go, out, plan, heal_level))
        plan.marks_changed = self.fwmarks.sync(steering.fwmarks)
        if plan.empty:
            log.debug("raw %s already in sync", self.chain)
        else:
            log.log(min(heal_level, logging.INFO), "raw %s: %s", self.chain, plan)
        return plan

    def apply(self, delta: ips.SetDelta | None, elements: Callable[[], dict[ips.SetKind, set[str]]],
              fwmarks: set[int]) -> Plan:
        """One configuration change (lb.steeringcache.sync_change): `delta` (elements added and
        removed by the change) goes to the sets in one `ipset restore`; None, or sets whose
        content lbd does not know, make it a sync of the sets to `elements()` (the whole content).

        The raw table is not read on this path (the `iptables -S` of sync() cost a subprocess
        per command): with the nf_tables backend one netlink request says whether any rule
        changed since lbd last found its chains intact, and only then is the table read and
        healed as sync() does (a missing chain is recreated here, not refused); without a
        generation (legacy iptables, another netns) the table is read every time, as before.
        lb.steerwatch checks and repairs the whole steering every 0.5 s anyway."""
        try:
            if delta is None or self.sets.installed is None:
                added, deleted = self.sets.sync_elements(elements())
            else:
                added, deleted = self.sets.apply(delta.added, delta.removed)
        except ips.IpsetError as exc:
            raise IptablesError(exc.cmd, exc.returncode, exc.stderr) from exc
        plan = Plan(added=added, deleted=deleted)
        gen = self._generation_now()
        if gen is None or gen != self._intact_gen:
            pre, go, out = self._states()
            lines: list[str] = []
            if not pre.chain_exists:
                log.warning("raw %s was missing; restoring it", self.chain)
                plan.rewritten = [self.chain, self.go_chain]
                lines = self._chain_lines()
                pre = TableState(chain_exists=True, rules=chain_rules(self.queue_num), jumps=[])
                go = TableState(chain_exists=True, rules=go_rules(self.queue_num, self.target, self.track), jumps=[])
            lines += self._heal_lines(pre, go, out, plan, logging.WARNING)
            self._restore(lines)
            self._intact_gen = None if lines else gen  # our own rewrite moves the generation
        plan.marks_changed = self.fwmarks.sync(fwmarks)
        log.log(logging.INFO if plan.rewritten or plan.jump_added or plan.out_repaired else logging.DEBUG,
                "raw %s: %s", self.chain, plan)
        return plan

    def _generation_now(self) -> int | None:
        """The nftables generation of lbd's netns when lbd's rules live in nf_tables there
        (lb.steerwatch.generation_source, decided once), else None."""
        if self._generation is False:
            from lb.steerwatch import generation_source

            self._generation = generation_source(self)
        source = self._generation
        return source() if callable(source) else None

    def _heal_lines(self, pre: TableState, go: TableState, out: TableState, plan: Plan, heal_level: int) -> list[str]:
        """Restore lines putting back what an operator's flush may have removed from the raw table
        (our chains' content, the jumps, LBD-Q<N>-OUT); `plan` notes each part."""
        lines: list[str] = []
        if not (go.chain_exists and same_rules(go.rules, go_rules(self.queue_num, self.target, self.track))
                and same_rules(pre.rules, chain_rules(self.queue_num))):
            log.log(heal_level, "raw %s / %s did not hold lbd's set rules (%d rules found); rewriting them",
                    self.chain, self.go_chain, len(pre.rules) + len(go.rules))
            plan.rewritten = [self.chain, self.go_chain]
            lines += self._chain_lines()
        if not has_jump_from(pre, HOOK_CHAIN):
            # Someone removed our jump (e.g. an operator's `iptables -t raw -F PREROUTING`):
            # without it nothing reaches the queue, so restore it in the same transaction.
            log.log(heal_level, "raw %s: jump from %s was missing; restoring it", self.chain, HOOK_CHAIN)
            plan.jump_added = True
            lines.append(jump_rule(self.queue_num))
        plan.out_repaired = self._plan_out(out, heal_level)
        lines += plan.out_repaired
        return lines

    def _plan_out(self, out: TableState, heal_level: int = logging.WARNING) -> list[str]:
        if self.track:
            return []
        if not out.chain_exists:
            log.log(heal_level, "raw %s was missing; restoring it", self.out_chain)
            return self._out_lines()
        lines: list[str] = []
        want = out_rules(self.queue_num)
        if not same_rules(out.rules, want):
            log.log(heal_level, "raw %s did not hold exactly %s; rewriting it", self.out_chain, want)
            lines += [f"-F {self.out_chain}", *want]
        if not has_jump_from(out, OUT_HOOK_CHAIN):
            log.log(heal_level, "raw %s: jump from %s was missing; restoring it", self.out_chain, OUT_HOOK_CHAIN)
            lines.append(out_jump_rule(self.queue_num))
        return lines

    # ---- noticing and repairing damage (lb.steerwatch calls these every tick)

    def damage(self, set_counts: dict[str, int] | None = None) -> list[str]:
        """What is missing from or altered in this queue's steering, one phrase each; empty when
        intact. Costs one `iptables -S` of the raw table, one `ipset list -t` (headers: element
        counts, O(1) per set) and, with fwmark services, one listing of mangle: nothing that
        grows with the number of services."""
        pre, go, out = self._states()
        found = [*chain_damage(TABLE, self.chain, pre, chain_rules(self.queue_num), hook=HOOK_CHAIN),
                 *chain_damage(TABLE, self.go_chain, go, go_rules(self.queue_num, self.target, self.track))]
        if not self.track:
            found += chain_damage(TABLE, self.out_chain, out, out_rules(self.queue_num), hook=OUT_HOOK_CHAIN)
        found += self.fwmarks.damage()
        return found + self.set_damage(set_counts)

    def set_damage(self, set_counts: dict[str, int] | None = None) -> list[str]:
        """The sets' part of damage(): a set gone, or holding another number of elements than lbd put
        in it (flushed, elements deleted). `set_counts`: set name -> elements, as the caller read
        them (lb.steerwatch over netlink); None: one `ipset list -t`."""
        present = set_counts if set_counts is not None else ips.parse_headers(self._exec([self.sets.ipset, "list", "-t"]))
        found = []
        for kind, name in self.sets.names.items():
            if name not in present:
                found.append(f"ip set {name} gone")
            elif self.sets.installed is not None and present[name] != len(self.sets.installed.get(kind, ())):
                found.append(f"ip set {name} holds {present[name]} of its {len(self.sets.installed.get(kind, ()))} elements")
        return found

    def repair(self, steering: ips.Steering) -> Plan:
        """Put back whatever damage() found: missing sets re-created and refilled from `steering`
        (what the kernel holds is re-read), then the chains and jumps rewritten, in sync()'s order
        (sets before the rules that refer to them). The caller logs what was found, once; the
        parts healed here are logged at debug level only."""
        self.sets.installed = None  # re-read what the kernel holds: no trust in the cache
        self.fwmarks.marks = None
        pre = self._state()
        if not pre.chain_exists:  # the whole chain went (e.g. `iptables -t raw -F; -X`)
            try:
                self.sets.sync(steering)
            except ips.IpsetError as exc:
                raise IptablesError(exc.cmd, exc.returncode, exc.stderr) from exc
            self._restore(self._chain_lines())
        return self.sync(steering, heal_level=logging.DEBUG)

    def teardown(self) -> None:
        """Remove the jumps, flush and delete the chains, then destroy the sets, and the raw base
        chains lbd's jumps leave empty (drop_empty_raw_hooks). Idempotent; touches nothing else."""
        pre, go, out = self._states()
        lines = remove_lines([(pre, self.chain), (go, self.go_chain), (out, self.out_chain)])
        if lines:
            self._restore(lines)
            log.info("raw %s, %s, %s: removed (%d rules, %d jumps)", self.chain, self.go_chain, self.out_chain,
                     len(pre.rules) + len(go.rules) + len(out.rules), len(pre.jumps) + len(out.jumps))
            if self._runner is _run:  # a fake runner (unit tests) knows no nft
                drop_empty_raw_hooks(self._nft_best_effort)
        self.fwmarks.remove()
        try:
            self.sets.destroy()
        except ips.IpsetError as exc:
            raise IptablesError(exc.cmd, exc.returncode, exc.stderr) from exc

    def _nft_best_effort(self, args: list[str]) -> str | None:
        """`nft ARGS` in lbd's netns: its output, or None when nft is missing or refuses (the empty
        base chains are only a cost, never worth failing a teardown for)."""
        try:
            proc = self._runner([*self._prefix(), "nft", *args], None)
        except (OSError, subprocess.SubprocessError):
            return None
        return proc.stdout if proc.returncode == 0 else None

    def detect(self) -> str | None:
        return detect(self.iptables, netns=self.netns, runner=self._runner)


def drop_empty_raw_hooks(nft: Callable[[list[str]], str | None]) -> list[str]:
    """iptables-nft keeps raw PREROUTING / OUTPUT as base chains once a rule was in them (lbd's
    jumps) and iptables-restore took it out: empty, policy accept, they do nothing but still cost
    every packet a hook call. Each such chain is deleted (nft refuses to delete a chain with rules;
    a later iptables rule re-creates it). `nft`: runs `nft ARGS`, returns its output or None (no
    such chain, or no nft). Returns the chains deleted."""
    dropped: list[str] = []
    for chain in ("PREROUTING", "OUTPUT"):
        text = nft(["list", "chain", "ip", TABLE, chain])
        if text is None:
            continue
        body = [line.strip() for line in text.splitlines()[2:]
                if line.strip() not in ("", "}") and not line.strip().startswith("#")]
        if body == [f"type filter hook {chain.lower()} priority raw; policy accept;"]:
            nft(["delete", "chain", "ip", TABLE, chain])
            log.info("removed the empty iptables raw %s base chain (nothing in it; it cost every packet a hook)", chain)
            dropped.append(chain)
    return dropped


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
    so a missing module fails the whole batch and nothing is ever committed. The rule testing an
    ip set needs a set: a private one is created before and destroyed after (ip_set, xt_set).
    """
    run = runner or _run
    prefix = ["ip", "netns", "exec", netns] if netns else []
    for binary, package in ((iptables, "iptables"), (f"{iptables}-restore", "iptables"), ("ipset", "ipset")):
        if not prefix and shutil.which(binary) is None:
            return f"{binary} not found in PATH (install the {package} package)"
    probe = f"LBD-PROBE-{os.getpid() % 100000}"
    probe_set = f"lbd-probe-{os.getpid() % 100000}"
    script = restore_script([
        f":{probe} - [0:0]",
        f"-A {probe} -p udp -m udp --dport 9 -j CT --notrack",
        f"-A {probe} -p udp -m udp --dport 9 -j NFQUEUE --queue-num 0 --queue-bypass",
        f"-A {probe} -m mark --mark {SOCKET_MARK_BASE:#x} -j CT --notrack",
        f"-A {probe} -m set --match-set {probe_set} dst,dst -j RETURN",
        f"-A {probe} -m socket --transparent -j RETURN",
        f"-F {probe}",
        f"-X {probe}",
    ])
    checks: list[tuple[list[str], str | None, str]] = [
        ([iptables, "--version"], None, "iptables does not run"),
        ([iptables, "-w", str(LOCK_WAIT_S), "-t", TABLE, "-S"], None, "cannot read the raw table"),
        (["ipset", "restore", "-exist"], f"create {probe_set} hash:ip,port family inet\n",
         "cannot create an ip set (kernel ip_set / ip_set_hash_ipport)"),
        ([f"{iptables}-restore", "-w", str(LOCK_WAIT_S), "--noflush"], script,
         "the kernel refuses CT --notrack, -m mark, -m set, -m socket (xt_socket: reassembly before the "
         "queue) or NFQUEUE in the raw table"),
        (["ipset", "destroy", probe_set], None, "cannot destroy the probe ip set"),
    ]
    for cmd, stdin, what in checks:
        try:
            proc = run(prefix + cmd, stdin)
        except (OSError, subprocess.SubprocessError) as exc:
            return f"{what}: {shlex.join(prefix + cmd)}: {exc}"
        if proc.returncode != 0:
            err = (proc.stderr or "").strip().splitlines()
            if cmd[0] != "ipset" or cmd[1] != "restore":  # the probe set may exist: leave nothing behind
                try:
                    run(prefix + ["ipset", "destroy", probe_set], None)
                except (OSError, subprocess.SubprocessError):
                    pass
            return f"{what}: {shlex.join(prefix + cmd)} exit {proc.returncode}: {' / '.join(err[-3:])}"
    return None
