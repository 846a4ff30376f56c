"""lbd's steering as one native nftables table (`lbd --steering nftables`, issue 15 item 1).

The same classification as lb.iptables' LBD-Q<N> chain, the same set elements (lb.ipsets
Steering.elements / SetDelta, lb.steeringcache), but in a table of lbd's own with native sets, so
that a routed packet meets one base chain whose first rule tests two native set lookups instead of
two xtables `-m set` matches called through nft_compat (~0.09 us each):

    table ip lbd-q<N> {
        set addr { type ipv4_addr }                                   (lbd-q<N>-addr)
        set svc  { type ipv4_addr . inet_proto . inet_service }       (-svc: VIP . proto . port)
        set fnat { type ipv4_addr . inet_proto . inet_service . ipv4_addr }  (RIP . proto . rport . LIP)
        set nat  { type ipv4_addr . inet_proto . inet_service }       (RIP . proto . rport)
        set tcp0, udp0, natrip, nattcp0, natudp0, fnattcp0, fnatudp0 { type ipv4_addr }
        chain pre {  type filter hook prerouting priority raw (-300)
            ip daddr != @addr ip saddr != @natrip return                  (routed traffic leaves here)
            ip saddr . meta l4proto . th sport @nat fib daddr type != local jump go
            ...  (chain_rules(): LBD-Q<N>'s rules, `-m addrtype ! --dst-type LOCAL` as
                  `fib daddr type != local`)
        }
        chain go {
            notrack                                                      (not with --conntrack)
            queue num N bypass comment "lbd q<N> queue N bypass"         (lb.nftqueue)
            meta l4proto tcp tproxy to 127.0.0.1:1 comment "lbd q<N> defrag: never reached"
        }
        chain out {  type filter hook output priority raw              (not with --conntrack)
            meta mark <SOCKET_MARK_BASE|N> notrack
        }
    }

The queue verdict is the native `queue` statement where the kernel has nft_queue, else nft_compat's
xtables NFQUEUE target (revision 3, same flags as lb.iptables.queue_target): both are written over
netlink by lb.nftqueue, inserted before the defrag rule; the nft command writes everything else.
nft lists either as `queue num N bypass`.

Fragments: the last rule of `go` is never evaluated (the queue verdict is terminal); it exists
because nft_tproxy, when a rule using it is added, turns on nf_defrag_ipv4 for the namespace (as
xt_socket's `--transparent` revision does for lb.iptables), so the queue carries whole datagrams.
A native `socket transparent` rule does not: nft_socket never enables reassembly (measured here
with fragmented UDP: raw prerouting still saw every fragment with it, none with the tproxy rule).

Fwmark services stay iptables rules in mangle (lb.iptables RuleManager's LBD-Q<N>-MARK, written by
a RuleManager this class holds): they are queued after the operator's MARK rules, which live in
iptables' mangle PREROUTING. Nothing of lbd is in iptables' raw table in this mode, so routed
traffic meets one hook of lbd (this table's `pre`) and, only while fwmark services exist, the
mangle jump.

Costs: a configuration change is one `nft -f` of the element delta (lb.steeringcache), like
`ipset restore`; the table is read (`nft -a list table`, elements included) only when the
nftables generation (lb.steerwatch.nft_generation: every committed change in the netns, set
elements included) moved since lbd's own last write, or where no generation can be read.

Ownership: the table `ip lbd-q<N>` is lbd's of queue N, nothing else is; setup deletes it (and
any iptables steering a previous lbd of queue N left: lb.iptables RuleManager.teardown) before
creating it; teardown deletes the table and the mark chain only. With --down-policy closed the
table stays on exit and the next lbd adopts it.
"""

from __future__ import annotations

import errno as errno_mod
import logging
import os
import re
import shutil
import socket
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field

from lb import ipsets as ips
from lb import nftqueue
from lb.iptables import (
    COMMAND_TIMEOUT_S,
    HOOK_CHAIN,
    MARK_TABLE,
    IptablesError,
    Plan,
    RuleManager,
    Runner,
    _chain_damage,
    _check_queue,
    _has_jump_from,
    _run,
    _script_excerpt,
    drop_empty_raw_hooks,
    jump_comment,
    mark_rules,
    socket_mark,
)

log = logging.getLogger(__name__)

FAMILY = "ip"
TABLE_PREFIX = "lbd-q"
PRE, GO, OUT = "pre", "go", "out"
QUEUE_KEY = "<queue>"  # the queue rule in a normalised chain listing (compared by its comment)
SET_TYPES = {"hash:ip": "ipv4_addr", "hash:ip,port": "ipv4_addr . inet_proto . inet_service",
             "hash:ip,port,ip": "ipv4_addr . inet_proto . inet_service . ipv4_addr"}
PROTO_NUMBERS = {"6": "tcp", "17": "udp"}


class NftError(IptablesError):
    """An nft command or the netlink queue rule failed (an IptablesError: lbd's callers catch that)."""


def table_name(queue_num: int) -> str:
    return f"{TABLE_PREFIX}{_check_queue(queue_num)}"


# A set declared with a size is a fixed-size hash whose buckets are allocated at creation (the
# kernel's nft_hash/nft_hash_fast: 4/3 x size rounded up to a power of two, 8 bytes each): with
# size 1,048,576 that was 16 MiB of kernel memory per set, ~190 MiB for lbd's eleven. Only the two
# sets of the first rule, which every packet through the director meets, are declared with a
# size: 4-byte keys in a fixed hash are the kernel's fastest set (nft_hash_fast, one jhash word),
# at 1 MiB each for up to FAST_SET_SIZE addresses. The others, met only by lbd's own traffic, are
# resizable hashes (rhash) that grow with their elements, as ipset's do.
FAST_SET_SIZE = 1 << 16  # distinct VIP/local addresses, and NAT real-server addresses, per queue
FAST_SETS = frozenset({ips.ADDR.suffix, ips.NATRIP.suffix})


def set_decl(kind: ips.SetKind) -> str:
    size = f" size {FAST_SET_SIZE};" if kind.suffix in FAST_SETS else ""
    return f"set {kind.suffix} {{ type {SET_TYPES[kind.type]};{size} }}"


def to_nft(element: str) -> str:
    """An element in lb.ipsets' (ipset) form -> nft's: "10.0.0.1,tcp:80" -> "10.0.0.1 . tcp . 80"."""
    return element.replace(",", " . ").replace(":", " . ")


def from_nft(text: str) -> str:
    """nft's listing of an element -> lb.ipsets' form (protocol numbers and service names accepted)."""
    parts = [p.strip() for p in text.split(" . ")]
    if len(parts) == 1:
        return parts[0]
    proto = PROTO_NUMBERS.get(parts[1], parts[1])
    port = parts[2] if parts[2].isdigit() else str(socket.getservbyname(parts[2], proto))
    out = f"{parts[0]},{proto}:{int(port)}"
    return out + (f",{parts[3]}" if len(parts) > 3 else "")


def chain_rules() -> list[str]:
    """`pre`'s rules after its hook line, as `nft list` prints them: lb.iptables.chain_rules in
    nft's words (same order, same reasons)."""
    local = "fib daddr type != local"
    return [
        "ip daddr != @addr ip saddr != @natrip return",
        f"ip saddr . meta l4proto . th sport @nat {local} jump {GO}",
        f"meta l4proto icmp ip saddr @natrip {local} jump {GO}",
        f"meta l4proto tcp ip saddr @nattcp0 {local} jump {GO}",
        f"meta l4proto udp ip saddr @natudp0 {local} jump {GO}",
        "ip daddr != @addr return",
        f"ip daddr . meta l4proto . th dport @svc jump {GO}",
        f"meta l4proto tcp ip daddr @tcp0 jump {GO}",
        f"meta l4proto udp ip daddr @udp0 jump {GO}",
        f"meta l4proto icmp jump {GO}",
        f"ip saddr . meta l4proto . th sport . ip daddr @fnat jump {GO}",
        f"meta l4proto tcp ip saddr @fnattcp0 jump {GO}",
        f"meta l4proto udp ip saddr @fnatudp0 jump {GO}",
    ]


def defrag_rule(queue_num: int) -> str:
    return f'meta l4proto tcp tproxy to 127.0.0.1:1 comment "{jump_comment(queue_num)} defrag: never reached"'


def go_rules(queue_num: int, track: bool) -> list[str]:
    """`go` as compared: notrack, the queue rule (QUEUE_KEY), the defrag rule."""
    return ([] if track else ["notrack"]) + [QUEUE_KEY, defrag_rule(queue_num)]


def out_rules(queue_num: int, track: bool) -> list[str]:
    return [] if track else [f"meta mark {socket_mark(queue_num):#x} notrack"]


HOOK_LINES = {PRE: "type filter hook prerouting priority raw; policy accept;",
              OUT: "type filter hook output priority raw; policy accept;"}


@dataclass
class Chain:
    hook: str = ""
    rules: list[str] = field(default_factory=list)
    handles: list[int] = field(default_factory=list)


@dataclass
class TableListing:
    """`nft -a list table` of lbd's table, parsed."""

    exists: bool = False
    chains: dict[str, Chain] = field(default_factory=dict)
    set_types: dict[str, str] = field(default_factory=dict)
    elements: dict[str, set[str]] = field(default_factory=dict)  # set name -> elements in ipset form


_HANDLE = re.compile(r"\s*# handle \d+\s*$")


def parse_listing(text: str) -> TableListing:
    """Parse nft's text listing of one table (with or without `-a` handles)."""
    out = TableListing(exists=True)
    block: tuple[str, str] | None = None  # ("chain" | "set", name)
    collecting: list[str] | None = None  # an `elements = { ... }` spanning lines
    for raw in text.splitlines():
        line = raw.strip()
        if collecting is not None:
            collecting.append(line)
            if "}" in line:
                _add_elements(out, block, " ".join(collecting))
                collecting = None
            continue
        m = re.match(r"^(chain|set) (\S+) \{", line)
        if m:
            block = (m.group(1), m.group(2))
            if block[0] == "chain":
                out.chains[block[1]] = Chain()
            else:
                out.set_types[block[1]] = ""
                out.elements[block[1]] = set()
            continue
        if line.startswith("}") or block is None or not line or line.startswith("#"):
            if line.startswith("}"):
                block = None
            continue
        handle = re.search(r"# handle (\d+)\s*$", line)
        body = _HANDLE.sub("", line).strip()
        kind, name = block
        if kind == "set":
            if body.startswith("type "):
                out.set_types[name] = body[5:].strip()
            elif body.startswith("elements = {"):
                if "}" in body:
                    _add_elements(out, block, body)
                else:
                    collecting = [body]
            continue
        chain = out.chains[name]
        if body.startswith("type ") and body.endswith(";"):
            chain.hook = body
            continue
        chain.rules.append(body)
        chain.handles.append(int(handle.group(1)) if handle else 0)
    return out


def _add_elements(out: TableListing, block: tuple[str, str] | None, text: str) -> None:
    if block is None:
        return
    inner = text[text.index("{") + 1:text.rindex("}")]
    out.elements[block[1]].update(from_nft(e) for e in inner.split(",") if e.strip())


def normalise_hook(line: str) -> str:
    """Base chain lines as listed with and without numeric priorities."""
    return line.replace("priority -300;", "priority raw;")


class NftManager:
    """lb.iptables.RuleManager's public interface over one native nftables table (module doc).

    `nft`: the nft command (found on PATH); `runner`/`netns` as for RuleManager (the netlink rule
    enters the netns itself); `queue_writer` replaces lb.nftqueue.add_queue_rule (unit tests)."""

    sets_in_generation = True  # lb.steerwatch: the nftables generation covers the sets too
    steering_kind = "nftables"  # lbd --steering (reported by ping: lbadm doctor)

    def __init__(self, queue_num: int, queue_balance: tuple[int, int] | None = None, nft: str = "nft", *,
                 track: bool = False, bypass: bool = True, cpu_fanout: bool = False, netns: str | None = None,
                 runner: Runner | None = None, iptables: str = "iptables",
                 queue_writer: Callable[..., None] | None = None) -> None:
        self.queue_num = _check_queue(queue_num)
        self.queue_balance = queue_balance
        self.track = bool(track)
        self.bypass = bool(bypass)
        self.spec = nftqueue.spec_of(queue_num, queue_balance, self.bypass, cpu_fanout)
        self.table = table_name(queue_num)
        self.nft = nft
        self.netns = netns
        self._runner: Runner = runner or _run
        self._queue_writer = queue_writer or nftqueue.add_queue_rule
        self.native_queue: bool | None = None  # decided at the first queue rule written
        # fwmark services (iptables mangle) and an iptables-steered predecessor's leftovers
        self.ipt = RuleManager(queue_num, queue_balance, iptables, track=track, bypass=bypass,
                               cpu_fanout=cpu_fanout, netns=netns, runner=runner)
        self.iptables = iptables
        self.sets = self  # lb.afxdp and the watch look at .sets.installed / .names
        self.names = {k: k.suffix for k in ips.KINDS}
        self.installed: dict[ips.SetKind, set[str]] | None = None
        self._generation: Callable[[], int | None] | None | bool = False if runner is None else None
        self._intact_gen: int | None = None

    # ---- commands

    def _prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.netns] if self.netns else []

    def _exec(self, args: list[str], stdin: str | None = None, ok_missing: bool = False) -> str | None:
        full = self._prefix() + [self.nft, *args]
        try:
            proc = self._runner(full, stdin)
        except FileNotFoundError as exc:
            raise NftError(full, 127, f"{exc.filename or self.nft}: not found (install the nftables package)") from exc
        except subprocess.TimeoutExpired as exc:
            raise NftError(full, None, f"no answer within {COMMAND_TIMEOUT_S:g} s") from exc
        if proc.returncode != 0:
            if ok_missing and "No such file or directory" in (proc.stderr or ""):
                return None
            raise NftError(full, proc.returncode, proc.stderr or "", detail=_script_excerpt(stdin))
        return proc.stdout or ""

    def _script(self, lines: list[str]) -> None:
        if lines:
            log.debug("nft -f:\n%s", "\n".join(lines))
            self._exec(["-f", "-"], "\n".join(lines) + "\n")

    def listing(self) -> TableListing:
        text = self._exec(["-a", "list", "table", FAMILY, self.table], ok_missing=True)
        return TableListing() if text is None else parse_listing(text)

    def _generation_now(self) -> int | None:
        if self._generation is False:
            from lb.steerwatch import nft_generation

            self._generation = nft_generation if not self.netns and nft_generation() is not None else None
        source = self._generation
        return source() if callable(source) else None

    # ---- scripts

    def _t(self, what: str) -> str:
        return f"{FAMILY} {self.table} {what}"

    def _chain_lines(self, name: str) -> list[str]:
        """Flush and refill one chain (created if missing; base chains with their hook)."""
        hook = f" {{ {HOOK_LINES[name]} }}" if name in HOOK_LINES else ""
        rules = {PRE: chain_rules(), GO: [r for r in go_rules(self.queue_num, self.track) if r != QUEUE_KEY],
                 OUT: out_rules(self.queue_num, self.track)}[name]
        return [f"add chain {self._t(name)}{hook}", f"flush chain {self._t(name)}",
                *[f"add rule {self._t(name)} {r}" for r in rules]]

    def _create_lines(self) -> list[str]:
        """Delete any table of ours, create it whole (sets empty, `go` without its queue rule)."""
        lines = [f"add table {FAMILY} {self.table}", f"delete table {FAMILY} {self.table}",
                 f"add table {FAMILY} {self.table}"]
        lines += [f"add {set_decl(k).replace('set ', f'set {FAMILY} {self.table} ', 1)}" for k in ips.KINDS]
        for name in (GO, PRE) + (() if self.track else (OUT,)):
            lines += self._chain_lines(name)
        return lines

    def _element_lines(self, adds: dict[ips.SetKind, set[str]], dels: dict[ips.SetKind, set[str]]) -> list[str]:
        """Additions (the address pre-filter first), then deletions (the pre-filter last): one
        transaction, so the order is only for readers."""
        lines = [f"add element {self._t(k.suffix)} {{ {', '.join(to_nft(e) for e in sorted(adds[k]))} }}"
                 for k in ips.KINDS if adds.get(k)]
        lines += [f"delete element {self._t(k.suffix)} {{ {', '.join(to_nft(e) for e in sorted(dels[k]))} }}"
                  for k in reversed(ips.KINDS) if dels.get(k)]
        return lines

    def _add_queue(self) -> None:
        """Insert the queue rule before `go`'s defrag rule: native first, else nft_compat."""
        go = self.listing().chains.get(GO)
        defrag = defrag_rule(self.queue_num)
        if go is None or defrag not in go.rules:
            raise NftError([self.nft], 1, "", detail=f"{self.table} {GO}: no defrag rule to insert the queue rule before")
        handle = go.handles[go.rules.index(defrag)]
        comment = self.spec.comment(self.queue_num)
        for native in ((True, False) if self.native_queue is None else (self.native_queue,)):
            try:
                self._queue_writer(self.table, GO, self.spec, comment, native=native, before_handle=handle,
                                   netns=self.netns)
            except OSError as exc:
                if native and exc.errno in (errno_mod.ENOENT, errno_mod.EOPNOTSUPP) and self.native_queue is None:
                    continue  # no nft_queue in this kernel: the xtables target
                raise NftError(["netlink", "NFT_MSG_NEWRULE", self.table, GO], exc.errno or 1, str(exc)) from exc
            if self.native_queue is None:
                log.info("nft %s: the queue verdict is %s", self.table,
                         "the native queue statement" if native else "xtables NFQUEUE through nft_compat "
                         "(this kernel has no nft_queue)")
            self.native_queue = native
            return

    # ---- state

    def _chain_damage(self, listing: TableListing, exact_queue: bool = True) -> dict[str, list[str]]:
        """chain name -> what is wrong with it (empty lists omitted). exact_queue=False: any queue rule
        of this lbd counts (lbadm doctor, which does not know lbd's --queue-balance)."""
        comment = f'comment "{self.spec.comment(self.queue_num)}"' if exact_queue else f'comment "lbd q{self.queue_num} queue'
        found: dict[str, list[str]] = {}
        want = {PRE: chain_rules(), GO: go_rules(self.queue_num, self.track)}
        if not self.track:
            want[OUT] = out_rules(self.queue_num, self.track)
        for name, rules in want.items():
            chain = listing.chains.get(name)
            if chain is None:
                found[name] = [f"nft chain {self.table} {name} gone"]
                continue
            have = [QUEUE_KEY if (r.endswith(comment) if exact_queue else comment in r)
                    and r.startswith(("queue ", "xt target")) else r for r in chain.rules]
            problems = []
            if name in HOOK_LINES and normalise_hook(chain.hook) != HOOK_LINES[name]:
                problems.append(f"nft chain {self.table} {name} hooked as {chain.hook or 'no base chain'!r}")
            if have != rules:
                problems.append(f"nft {self.table} {name} holds {len(have)} rules, not lbd's {len(rules)}")
            if problems:
                found[name] = problems
        return found

    def _set_problems(self, listing: TableListing) -> tuple[list[str], list[ips.SetKind]]:
        """(phrases, kinds whose set is missing or of another type)."""
        phrases, bad = [], []
        for kind in ips.KINDS:
            have = listing.set_types.get(kind.suffix)
            if have is None:
                phrases.append(f"nft set {self.table} {kind.suffix} gone")
                bad.append(kind)
            elif have != SET_TYPES[kind.type]:
                phrases.append(f"nft set {self.table} {kind.suffix} has type {have}")
                bad.append(kind)
            elif self.installed is not None and len(listing.elements[kind.suffix]) != len(self.installed[kind]):
                phrases.append(f"nft set {self.table} {kind.suffix} holds {len(listing.elements[kind.suffix])} "
                               f"of its {len(self.installed[kind])} elements")
        return phrases, bad

    # ---- public API (lb.iptables.RuleManager's)

    def adoptable(self) -> bool:
        """A previous lbd's table (--down-policy closed, or a crash) to adopt as it is (then healed
        by sync) rather than re-created: never with --conntrack (RuleManager's rule)."""
        return not self.track and self.listing().exists

    def rules(self) -> list[str]:
        return self.listing().chains.get(PRE, Chain()).rules

    def go_rules(self) -> list[str]:
        return self.listing().chains.get(GO, Chain()).rules

    def out_rules(self) -> list[str]:
        return self.listing().chains.get(OUT, Chain()).rules

    def setup(self) -> None:
        """Remove leftovers of queue N (this table, an iptables-steered lbd's chains and ip sets),
        then create the table with empty sets in one transaction, then its queue rule."""
        self.remove_other_layer()
        self._script(self._create_lines())
        self._add_queue()
        self.installed = {k: set() for k in ips.KINDS}
        self._intact_gen = None
        log.info("nftables: table %s %s ready (%s), hook prerouting priority raw; %s", FAMILY, self.table,
                 "queue statement" if self.native_queue else "xtables NFQUEUE via nft_compat",
                 "conntrack opt-in: balanced flows are tracked" if self.track else
                 f"balanced flows untracked, also lbd's own packets (mark {socket_mark(self.queue_num):#x})")

    def remove_other_layer(self) -> None:
        """What an lbd of this queue with --steering iptables left (kill -9, --down-policy closed): its
        raw chains, jumps, mark chain and ip sets (lb.iptables RuleManager.teardown), and the empty
        raw base chains iptables-nft keeps (at setup, and by `lbd --cleanup`)."""
        if not self.ipt_available():
            return
        try:
            self.ipt.teardown()
        except IptablesError as exc:
            log.warning("could not check for an iptables-steered lbd's leftovers on queue %d: %s", self.queue_num, exc)
        self._drop_empty_raw_hooks()

    def _drop_empty_raw_hooks(self) -> None:
        """The empty raw base chains iptables-nft keeps (lb.iptables drop_empty_raw_hooks), so that
        routed traffic meets lbd's table only."""
        drop_empty_raw_hooks(lambda args: self._exec(args, ok_missing=True))

    def ipt_available(self) -> bool:
        return bool(self.netns) or shutil.which(self.iptables) is not None

    def _sync_marks(self, fwmarks: set[int]) -> bool:
        """fwmark services through lb.iptables' mangle chain; without iptables only none is possible."""
        if not self.ipt_available() and self.ipt._marks is None:
            if fwmarks:
                raise NftError([self.iptables], 127, "", detail="fwmark services are queued from iptables' mangle "
                               "table: install iptables")
            return False
        return self.ipt._sync_marks(fwmarks)

    def _converge(self, want: dict[ips.SetKind, set[str]], plan: Plan, heal_level: int) -> None:
        """Make the table hold lbd's chains and exactly `want` in its sets, from one listing: one
        `nft -f` transaction (plus the queue rule when `go` was rewritten)."""
        listing = self.listing()
        lines: list[str] = []
        if not listing.exists:
            log.log(heal_level, "nft table %s %s was missing; restoring it", FAMILY, self.table)
            lines = self._create_lines()
            listing = TableListing(exists=True, set_types={k.suffix: SET_TYPES[k.type] for k in ips.KINDS},
                                   elements={k.suffix: set() for k in ips.KINDS})
            broken = {GO: ["created"]}
            plan.rewritten = [PRE, GO] + ([] if self.track else [OUT])
        else:
            phrases, bad = self._set_problems(TableListing(True, {}, listing.set_types, listing.elements))
            broken = self._chain_damage(listing)
            if bad:  # a set of another type is referred to by `pre`: rewrite the table whole
                log.log(heal_level, "nft %s: %s; re-creating the table", self.table, "; ".join(phrases))
                lines = self._create_lines()
                listing.elements = {k.suffix: set() for k in ips.KINDS}
                broken = {GO: ["created"]}
                plan.rewritten = [PRE, GO] + ([] if self.track else [OUT])
            else:
                for name, problems in broken.items():
                    log.log(heal_level, "%s; rewriting it", "; ".join(problems))
                    lines += self._chain_lines(name)
                    plan.rewritten.append(name)
        have = {k: listing.elements.get(k.suffix, set()) for k in ips.KINDS}
        adds = {k: want[k] - have[k] for k in ips.KINDS}
        dels = {k: have[k] - want[k] for k in ips.KINDS}
        lines += self._element_lines(adds, dels)
        plan.added, plan.deleted = sum(map(len, adds.values())), sum(map(len, dels.values()))
        before = self._generation_now()
        try:
            self._script(lines)
            if GO in broken:
                self._add_queue()
        except IptablesError:
            self.installed = None
            raise
        self.installed = {k: set(want[k]) for k in ips.KINDS}
        self._note_write(before, (1 if lines else 0) + (1 if GO in broken else 0))

    def _note_write(self, before: int | None, commits: int) -> None:
        """After lbd's own write: the table is intact at the new generation if nothing else committed."""
        after = self._generation_now()
        self._intact_gen = after if before is not None and after == before + commits else None

    def sync(self, steering: ips.Steering, verify_sets: bool = False, heal_level: int = logging.WARNING) -> Plan:
        """Make the sets hold exactly `steering` and heal the chains (the table is read: elements
        and rules; `verify_sets` is implied)."""
        plan = Plan()
        self._converge(steering.elements(), plan, heal_level)
        plan.marks_changed = self._sync_marks(steering.fwmarks)
        log.log(logging.DEBUG if plan.empty else min(heal_level, logging.INFO), "nft %s: %s", self.table, plan)
        return plan

    def apply(self, delta: ips.SetDelta | None, elements: Callable[[], dict[ips.SetKind, set[str]]],
              fwmarks: set[int]) -> Plan:
        """One configuration change: only the delta's elements, in one `nft -f`, when nothing but lbd
        committed since its last write (the nftables generation says so); else a full sync."""
        gen = self._generation_now()
        plan = Plan()
        if delta is None or self.installed is None or gen is None or gen != self._intact_gen:
            self._converge(elements(), plan, logging.WARNING)
        else:
            installed = self.installed
            adds = {k: delta.added.get(k, set()) - installed[k] for k in ips.KINDS}
            dels = {k: delta.removed.get(k, set()) & installed[k] for k in ips.KINDS}
            lines = self._element_lines(adds, dels)
            try:
                self._script(lines)
            except IptablesError:
                self.installed = None
                raise
            for k in ips.KINDS:
                installed[k] |= adds[k]
                installed[k] -= dels[k]
            plan.added, plan.deleted = sum(map(len, adds.values())), sum(map(len, dels.values()))
            self._note_write(gen, 1 if lines else 0)
        plan.marks_changed = self._sync_marks(fwmarks)
        log.log(logging.INFO if plan.rewritten else logging.DEBUG, "nft %s: %s", self.table, plan)
        return plan

    def damage(self, set_counts: dict[str, int] | None = None) -> list[str]:
        """What is missing or altered in lbd's table (and mark chain); empty when intact. Nothing is
        read when the nftables generation is still the one of lbd's own last write."""
        gen = self._generation_now()
        if gen is not None and gen == self._intact_gen and not self.ipt._marks:
            return []
        listing = self.listing()
        if not listing.exists:
            return [f"nft table {FAMILY} {self.table} gone"]
        found = [p for problems in self._chain_damage(listing).values() for p in problems]
        found += self._set_problems(listing)[0]
        if self.ipt._marks:
            state, _hook = self.ipt._mark_listing()
            want = mark_rules(self.queue_num, self.ipt._marks, self.ipt.target)
            found += _chain_damage(MARK_TABLE, self.ipt.mark_chain, state, want)
            if state.chain_exists and not _has_jump_from(state, HOOK_CHAIN):
                found.append(f"jump {MARK_TABLE} {HOOK_CHAIN} -> {self.ipt.mark_chain} gone")
        if not found and gen is not None:
            self._intact_gen = gen
        return found

    def set_damage(self, set_counts: dict[str, int] | None = None) -> list[str]:
        """The sets' part of damage(): called by lb.steerwatch when the generation did not move,
        which covers set elements in nftables, so nothing can have changed."""
        return []

    def repair(self, steering: ips.Steering) -> Plan:
        """Put back whatever damage() found: the table re-created if gone, chains rewritten, the
        sets refilled from `steering`, all in one transaction (then the queue rule)."""
        self.installed = None
        self.ipt._marks = None
        plan = Plan()
        self._converge(steering.elements(), plan, logging.DEBUG)
        plan.marks_changed = self._sync_marks(steering.fwmarks)
        return plan

    def teardown(self) -> None:
        """Delete lbd's table and its mangle mark chain. Idempotent; touches nothing else."""
        listing = self.listing()
        if listing.exists:
            self._exec(["delete", "table", FAMILY, self.table])
            log.info("nftables: table %s %s removed", FAMILY, self.table)
        if self.ipt_available():
            self.ipt._remove_marks()
        self.installed = None

    def detect(self) -> str | None:
        return detect(self.nft, netns=self.netns, runner=self._runner, queue_writer=self._queue_writer, owner=self)


def detect(nft: str = "nft", *, netns: str | None = None, runner: Runner | None = None,
           queue_writer: Callable[..., None] | None = None, owner: NftManager | None = None) -> str | None:
    """None when lbd can steer with a native table here; else a reason a human can act on. A real
    probe: a private table with every kind of set and rule lbd writes, plus its queue rule (native,
    else nft_compat's NFQUEUE), then deleted."""
    if not netns and shutil.which(nft) is None:
        return f"{nft} not found in PATH (install the nftables package)"
    probe = NftManager(0, nft=nft, netns=netns, runner=runner, queue_writer=queue_writer)
    probe.table = f"lbd-probe{os.getpid() % 100000}"
    try:
        probe._script(probe._create_lines())
        probe._add_queue()
    except IptablesError as exc:
        return f"the kernel or nft refuses lbd's nftables steering (nf_tables, nft_fib, nft_ct, nft_tproxy, " \
               f"nft_compat/xt_NFQUEUE or nft_queue): {exc}"
    finally:
        try:
            probe._exec(["delete", "table", FAMILY, probe.table], ok_missing=True)
        except IptablesError:
            pass
    if owner is not None:
        owner.native_queue = probe.native_queue
    return None

