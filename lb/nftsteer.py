"""lbd's steering as one native nftables table (`lbd --steering nftables`, issue 15 item 1). The
table's text (rules, set declarations, listing parser) is lb.nftlayout's; this module writes it.

The same classification as lb.iptlayout's LBD-Q<N> chain, the same set elements (lb.ipsets
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
xtables NFQUEUE target (revision 3, same flags as lb.iptlayout.queue_target): both are written over
netlink by lb.nftqueue, inserted before the defrag rule; the nft command writes everything else.
nft lists either as `queue num N bypass`.

Fragments: the last rule of `go` is never evaluated (the queue verdict is terminal); it exists
because nft_tproxy, when a rule using it is added, turns on nf_defrag_ipv4 for the namespace (as
xt_socket's `--transparent` revision does for lb.iptables), so the queue carries whole datagrams.
A native `socket transparent` rule does not: nft_socket never enables reassembly (measured here
with fragmented UDP: raw prerouting still saw every fragment with it, none with the tproxy rule).

`--steer-hook input` (docs/firewall.md): the same tests where kernel IPVS takes packets, so that
routed traffic meets no hook of lbd's at all (an empty base chain at prerouting alone cost a routed
packet 0.98-1.12x, `pre` 1.15-1.22x: bench/results/2026-12-06-steer-hook-input.md): `input` (hook input, priority mangle - 1: after
routing, before the firewall's INPUT rules) holds `pre`'s rules for local destinations, `forward`
(hook forward, the same priority) the
NAT-reply rules and exists only while NAT real servers do (with `defrag`, the tproxy rule, which is
only valid in a chain no base chain reaches outside prerouting), and `go` holds the queue rule alone:
at input conntrack has already seen the packet, so `notrack` would do nothing; the packets lbd
forwards leave no conntrack entry anyway (theirs is unconfirmed and goes with the packet lbd drops).

Fwmark services stay iptables rules in mangle (lb.iptmarks' LBD-Q<N>-MARK, written through
a RuleManager this class holds): they are queued after the operator's MARK rules, which live in
iptables' mangle PREROUTING. Nothing of lbd is in iptables' raw table in this mode, so routed
traffic meets one hook of lbd (this table's `pre`) and, only while fwmark services exist, the
mangle jump.

Costs: a configuration change is one netlink batch of the element delta (lb.steeringcache,
lb.nftelements: no process, well under a millisecond), or one `nft -f` where chains change with
it (the NAT chains coming or going) or the delta is large; the table is read (`nft -a list
table`, elements included) only when the nftables generation (lb.steerwatch.nft_generation: every committed change in the netns, set
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
import shutil
import subprocess
from collections.abc import Callable, Iterable

from lb import ipsets as ips
from lb import natingress, nftelements, nftguard, nftqueue
from lb.iptables import (
    COMMAND_TIMEOUT_S,
    IptablesError,
    Plan,
    RuleManager,
    Runner,
    _run,
    _script_excerpt,
    drop_empty_raw_hooks,
)
from lb.iptlayout import _check_queue, socket_mark
from lb.nftlayout import (  # noqa: F401 (re-exported: lb.nftsteer is the steering layer's interface)
    DEFRAG,
    FAMILY,
    FAST_SET_SIZE,
    FAST_SETS,
    FWD,
    GO,
    HOOK_LINES,
    IN,
    INPUT_PRIORITY,
    NAT_CHAINS,
    OUT,
    PRE,
    PROTO_NUMBERS,
    QUEUE_KEY,
    SET_TYPES,
    STEER_HOOKS,
    TABLE_PREFIX,
    Chain,
    TableListing,
    chain_rules,
    defrag_rule,
    forward_rules,
    from_nft,
    go_rules,
    input_rules,
    normalise_hook,
    out_rules,
    parse_listing,
    set_decl,
    table_name,
    to_nft,
)

log = logging.getLogger(__name__)
# A delta of up to this many elements goes over netlink (lb.nftelements: ~40 bytes each, one
# datagram well inside the socket's default send buffer); larger ones (a big reload) by `nft -f`.
NETLINK_ELEMENTS_MAX = 2000


class NftError(IptablesError):
    """An nft command or the netlink queue rule failed (an IptablesError: lbd's callers catch that)."""


class NftManager:
    """lb.iptables.RuleManager's public interface over one native nftables table (module doc).

    `nft`: the nft command (found on PATH); `runner`/`netns` as for RuleManager (the netlink rule
    enters the netns itself); `queue_writer` replaces lb.nftqueue.add_queue_rule and `element_writer`
    lb.nftelements.write (unit tests; with a `runner` and no `element_writer`, deltas go through
    `nft -f` like everything else)."""

    sets_in_generation = True  # lb.steerwatch: the nftables generation covers the sets too
    steering_kind = "nftables"  # lbd --steering (reported by ping: lbadm doctor)

    def __init__(self, queue_num: int, queue_balance: tuple[int, int] | None = None, nft: str = "nft", *,
                 track: bool = False, bypass: bool = True, cpu_fanout: bool = False, netns: str | None = None,
                 runner: Runner | None = None, iptables: str = "iptables",
                 queue_writer: Callable[..., None] | None = None, hook: str = "prerouting",
                 element_writer: Callable[..., None] | None = None, nat_replies: str = "forward",
                 ingress: natingress.NatIngress | None = None) -> None:
        self.queue_num = _check_queue(queue_num)
        if hook not in STEER_HOOKS:
            raise ValueError(f"steering hook {hook!r}: one of {', '.join(STEER_HOOKS)}")
        if nat_replies not in natingress.MODES:
            raise ValueError(f"--nat-replies {nat_replies!r}: one of {', '.join(natingress.MODES)}")
        if nat_replies == "ingress" and hook != "input":
            raise ValueError("--nat-replies ingress needs --steer-hook input (with prerouting, NAT replies are "
                             "taken by the first rule every packet meets anyway)")
        self.hook = hook
        self.nat_replies = nat_replies
        # --nat-replies ingress: the veth pair, the interfaces (lb.natingress); the netdev table is
        # written with the ip table, in the same transactions, while NAT real servers exist
        self.ingress = (ingress or natingress.NatIngress(queue_num, netns)) if nat_replies == "ingress" else None
        self.table = table_name(queue_num)
        self.netdev = (natingress.NetdevTable(self.table, self.ingress, self._exec_missing, self._ingress_pair)
                       if self.ingress is not None else None)
        self._ingress_leftovers_checked = False  # an ingress lbd's table and pair removed (setup, first sync)
        # called with the peer's ifindex whenever the pair is created (again), 0 when it is removed:
        # lbd (re)starts or stops its reader there
        self.on_ingress_pair: Callable[[int], None] | None = None
        self._forwarding_checked = False
        self.queue_balance = queue_balance
        self.track = bool(track)
        self.bypass = bool(bypass)
        self.spec = nftqueue.spec_of(queue_num, queue_balance, self.bypass, cpu_fanout)
        self.nft = nft
        self.netns = netns
        self._runner: Runner = runner or _run
        self._queue_writer = queue_writer or nftqueue.add_queue_rule
        self._element_writer = element_writer or (nftelements.write if runner is None else None)
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
        self.guard: nftguard.Limit | None = None  # the overload guard as armed (lb.overload), None: no chain

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

    def _exec_missing(self, args: list[str], ok_missing: bool) -> str | None:
        return self._exec(args, ok_missing=ok_missing)

    def _ingress_pair(self, ifindex: int) -> None:
        if self.on_ingress_pair is not None:
            self.on_ingress_pair(ifindex)

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

    def _want(self, nat: bool) -> dict[str, list[str]]:
        """Chain name -> its rules as compared (the queue rule as QUEUE_KEY), `go` first (the others
        jump to it). `nat`: NAT real servers exist (the input layout's forward and defrag chains)."""
        want: dict[str, list[str]]
        if self.hook == "input":
            want = {GO: [QUEUE_KEY], IN: input_rules()}
            if nat and self.ingress is None:
                want[FWD] = forward_rules()
                want[DEFRAG] = [defrag_rule(self.queue_num)]
        else:
            want = {GO: go_rules(self.queue_num, self.track), PRE: chain_rules()}
        if not self.track:
            want[OUT] = out_rules(self.queue_num, self.track)
        return want

    def _nat(self, listing: TableListing | None = None) -> bool:
        """Whether NAT real servers exist: lbd's sets as installed, else as listed."""
        if self.installed is not None:
            return bool(self.installed[ips.NATRIP])
        return bool(listing and listing.elements.get(ips.NATRIP.suffix))

    def _chain_lines(self, name: str) -> list[str]:
        """Flush and refill one chain (created if missing; base chains with their hook)."""
        hook = f" {{ {HOOK_LINES[name]} }}" if name in HOOK_LINES else ""
        rules = [r for r in self._want(True)[name] if r != QUEUE_KEY]
        return [f"add chain {self._t(name)}{hook}", f"flush chain {self._t(name)}",
                *[f"add rule {self._t(name)} {r}" for r in rules]]

    def _check_forwarding(self) -> None:
        """--steer-hook input with NAT real servers: their replies reach the forward hook only when
        the director forwards (net.ipv4.ip_forward=1, as kernel IPVS's NAT needs); say so once."""
        if self._forwarding_checked or self.netns:
            return
        self._forwarding_checked = True
        try:
            with open("/proc/sys/net/ipv4/ip_forward") as f:
                on = f.read().strip() == "1"
        except OSError:
            return
        if not on:
            log.warning("nft %s: NAT real servers exist but net.ipv4.ip_forward is 0: with --steer-hook input their "
                        "replies are routed (the forward hook) and dropped before it; set net.ipv4.ip_forward=1 "
                        "(as kernel IPVS's NAT needs) or use --steer-hook prerouting", self.table)

    def _drop_chain_lines(self, name: str) -> list[str]:
        return [f"flush chain {self._t(name)}", f"delete chain {self._t(name)}"]

    def _create_lines(self, nat: bool = False) -> list[str]:
        """Delete any table of ours, create it whole (sets empty, `go` without its queue rule)."""
        lines = [f"add table {FAMILY} {self.table}", f"delete table {FAMILY} {self.table}",
                 f"add table {FAMILY} {self.table}"]
        lines += [f"add {set_decl(k).replace('set ', f'set {FAMILY} {self.table} ', 1)}" for k in ips.KINDS]
        for name in self._want(nat):
            lines += self._chain_lines(name)
        return lines

    def _remove_ingress(self) -> None:
        """The netdev table and veth pair of an lbd of this queue with --nat-replies ingress (lb.natingress.remove)."""
        if self.netdev is not None:
            self.netdev.remove()
        else:
            natingress.remove(self.table, self._exec_missing,
                              natingress.NatIngress(self.queue_num, self.netns) if self._runner is _run else None)
        self._ingress_leftovers_checked = True

    def routes_changed(self) -> None:
        """lbd's network monitor saw a route, address or link change: the NAT real servers'
        interfaces are looked up again and `rs` re-bound if they moved."""
        if self.netdev is None or self.installed is None:
            return
        before = self._generation_now()
        lines = self.netdev.routes_changed(self.installed[ips.NATRIP])
        if lines:
            self._script(lines)
            self._note_write(before, 1)

    def _element_lines(self, adds: dict[ips.SetKind, set[str]], dels: dict[ips.SetKind, set[str]],
                       mirror: bool) -> list[str]:
        """Additions (the address pre-filter first), then deletions (the pre-filter last): one
        transaction, so the order is only for readers."""
        def tables(k: ips.SetKind) -> list[str]:
            mirrored = mirror and k in natingress.KINDS
            return [self._t(k.suffix)] + ([f"{natingress.FAMILY} {self.table} {k.suffix}"] if mirrored else [])

        lines = [f"add element {t} {{ {', '.join(to_nft(e) for e in sorted(adds[k]))} }}"
                 for k in ips.KINDS if adds.get(k) for t in tables(k)]
        lines += [f"delete element {t} {{ {', '.join(to_nft(e) for e in sorted(dels[k]))} }}"
                  for k in reversed(ips.KINDS) if dels.get(k) for t in tables(k)]
        return lines

    def _write_elements(self, writer: Callable[..., None], adds: dict[ips.SetKind, set[str]],
                        dels: dict[ips.SetKind, set[str]], mirror: bool) -> None:
        """The delta in one netlink batch (`writer`: lb.nftelements.write), in _element_lines' order."""
        def changes(delta: dict[ips.SetKind, set[str]], kinds: Iterable[ips.SetKind]) -> list[nftelements.SetChange]:
            return [(k.suffix, k.type, delta[k]) for k in kinds if delta.get(k)]

        add, drop = changes(adds, ips.KINDS), changes(dels, reversed(ips.KINDS))
        if not add and not drop:
            return
        log.debug("nft %s: netlink elements: +%s -%s", self.table, {n: len(e) for n, _, e in add},
                  {n: len(e) for n, _, e in drop})
        try:
            if mirror:
                writer(self.table, add, drop, netns=self.netns, mirror=frozenset(k.suffix for k in natingress.KINDS))
            else:
                writer(self.table, add, drop, netns=self.netns)
        except (OSError, ValueError) as exc:
            raise NftError(["netlink", "NEWSETELEM/DELSETELEM", FAMILY, self.table],
                           getattr(exc, "errno", None) or 1, str(exc)) from exc

    def _add_queue(self) -> None:
        """Insert the queue rule before `go`'s defrag rule (the input layout: append it to `go`):
        native first, else nft_compat."""
        go = self.listing().chains.get(GO)
        defrag = defrag_rule(self.queue_num)
        handle: int | None = None
        if go is None:
            raise NftError([self.nft], 1, "", detail=f"{self.table} {GO}: no such chain for the queue rule")
        if self.hook != "input":
            if defrag not in go.rules:
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

    def _chain_damage(self, listing: TableListing, exact_queue: bool = True, nat: bool | None = None) -> dict[str, list[str]]:
        """chain name -> what is wrong with it (empty lists omitted); a chain of lbd's names that this
        layout does not want (the other hook's, the NAT chains without NAT real servers) is wrong too.
        exact_queue=False: any queue rule of this lbd counts (lbadm doctor, which does not know lbd's
        --queue-balance). `nat`: whether NAT real servers exist (default: as installed, else as listed)."""
        comment = f'comment "{self.spec.comment(self.queue_num)}"' if exact_queue else f'comment "lbd q{self.queue_num} queue'
        found: dict[str, list[str]] = {}
        want = self._want(self._nat(listing) if nat is None else nat)
        for name in listing.chains:
            if name not in want and name in (PRE, IN, FWD, DEFRAG):
                found[name] = [f"nft chain {self.table} {name} is not one of lbd's with --steer-hook {self.hook}"
                               + (" and no NAT real server" if name in NAT_CHAINS and self.hook == "input" else "")]
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
        """The rules of the base chain every packet for lbd meets first (`pre`, or `input`)."""
        return self.listing().chains.get(IN if self.hook == "input" else PRE, Chain()).rules

    def go_rules(self) -> list[str]:
        return self.listing().chains.get(GO, Chain()).rules

    def out_rules(self) -> list[str]:
        return self.listing().chains.get(OUT, Chain()).rules

    def setup(self) -> None:
        """Remove leftovers of queue N (this table, an iptables-steered lbd's chains and ip sets),
        then create the table with empty sets in one transaction, then its queue rule."""
        self.remove_other_layer()
        self._remove_ingress()
        self._script(self._create_lines())
        self._add_queue()
        self.installed = {k: set() for k in ips.KINDS}
        self._intact_gen = None
        if self.hook == "input":
            nat_where = (f"NAT replies at ingress of their interfaces (table {natingress.FAMILY} {self.table} and pair "
                         f"{self.ingress.tx}/{self.ingress.peer} while NAT real servers exist)" if self.ingress is not None
                         else "and forward while NAT real servers exist")
            where = (f"hook input priority {INPUT_PRIORITY} ({nat_where}): after routing as kernel IPVS, so VIPs and "
                     "FULLNAT local addresses must be local addresses, and before the firewall's INPUT rules")
        else:
            where = "hook prerouting priority raw"
        log.info("nftables: table %s %s ready (%s), %s; %s", FAMILY, self.table,
                 "queue statement" if self.native_queue else "xtables NFQUEUE via nft_compat", where,
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
        """fwmark services through lb.iptmarks' mangle chain (the RuleManager's); without iptables only none is possible."""
        if not self.ipt_available() and self.ipt.fwmarks.marks is None:
            if fwmarks:
                raise NftError([self.iptables], 127, "", detail="fwmark services are queued from iptables' mangle "
                               "table: install iptables")
            return False
        return self.ipt.fwmarks.sync(fwmarks)

    def _converge(self, want: dict[ips.SetKind, set[str]], plan: Plan, heal_level: int) -> None:
        """Make the table hold lbd's chains and exactly `want` in its sets, from one listing: one
        `nft -f` transaction (plus the queue rule when `go` was rewritten)."""
        listing = self.listing()
        lines: list[str] = []
        nat = bool(want[ips.NATRIP])
        if not self._ingress_leftovers_checked:  # adopting a killed lbd's table: its netdev table and pair
            if self.netdev is None or not nat:  # (with NAT real servers this lbd's replace them below)
                self._remove_ingress()
            self._ingress_leftovers_checked = True
        if nat and self.hook == "input" and self.ingress is None:
            self._check_forwarding()
        if not listing.exists:
            log.log(heal_level, "nft table %s %s was missing; restoring it", FAMILY, self.table)
            lines = self._create_lines(nat)
            listing = TableListing(exists=True, set_types={k.suffix: SET_TYPES[k.type] for k in ips.KINDS},
                                   elements={k.suffix: set() for k in ips.KINDS})
            broken = {GO: ["created"]}
            plan.rewritten = list(self._want(nat))
        else:
            phrases, bad = self._set_problems(TableListing(True, {}, listing.set_types, listing.elements))
            broken = self._chain_damage(listing, nat=nat)
            if bad:  # a set of another type is referred to by `pre`: rewrite the table whole
                log.log(heal_level, "nft %s: %s; re-creating the table", self.table, "; ".join(phrases))
                lines = self._create_lines(nat)
                listing.elements = {k.suffix: set() for k in ips.KINDS}
                broken = {GO: ["created"]}
                plan.rewritten = list(self._want(nat))
            else:
                wanted = self._want(nat)
                for name, problems in broken.items():
                    # NAT chains coming or going with the NAT real servers are the layout, not damage
                    quiet = self.hook == "input" and name in NAT_CHAINS and (name in listing.chains) != (name in wanted)
                    log.log(logging.INFO if quiet else heal_level, "%s; %s", "; ".join(problems),
                            "rewriting it" if name in wanted else "removing it")
                    lines += self._chain_lines(name) if name in wanted else self._drop_chain_lines(name)
                    plan.rewritten.append(name)
        have = {k: listing.elements.get(k.suffix, set()) for k in ips.KINDS}
        adds = {k: want[k] - have[k] for k in ips.KINDS}
        dels = {k: have[k] - want[k] for k in ips.KINDS}
        lines += self._element_lines(adds, dels, mirror=False)  # the netdev table is written whole
        if self.netdev is not None:
            lines += self.netdev.sync_lines(want)
        plan.added, plan.deleted = sum(map(len, adds.values())), sum(map(len, dels.values()))
        before = self._generation_now()
        rearm = self.guard is not None and broken.get(GO) == ["created"]  # it went with the table
        try:
            self._script(lines)
            if GO in broken:
                self._add_queue()
        except IptablesError:
            self.installed = None
            raise
        if rearm:
            try:
                nftguard.write(self.table, self.guard, self.netns)
            except OSError as exc:  # the steering is whole; the guard's next tick writes it again
                log.warning("nft %s: the overload guard could not be restored with the table: %s", self.table, exc)
                rearm, self.guard = False, None
        if self.netdev is not None:
            self.netdev.committed()
        self.installed = {k: set(want[k]) for k in ips.KINDS}
        self._note_write(before, (1 if lines else 0) + (1 if GO in broken else 0) + (1 if rearm else 0))

    def write_guard(self, limit: nftguard.Limit | None) -> None:
        """Arm, re-rate or remove (None) the overload guard's chain: one commit over netlink
        (lb.nftguard; an OSError when the kernel refuses it). Not part of the layout lbd heals: a
        table re-created by a sync gets the guard back; one found at start is removed (lb.overload)."""
        before = self._generation_now()
        intact = before is not None and before == self._intact_gen
        wrote = nftguard.write(self.table, limit, self.netns)
        self.guard = limit
        if wrote and intact:
            self._note_write(before, 1)

    def guard_dropped(self) -> int | None:
        """Packets the overload guard dropped (its counter), None when there is none."""
        return nftguard.read_dropped(self.table, self.netns)

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
        """One configuration change: only the delta's elements, in one netlink batch (or one `nft -f`
        with chains or beyond NETLINK_ELEMENTS_MAX), when nothing but lbd committed since its last
        write (the nftables generation says so); else a full sync."""
        gen = self._generation_now()
        plan = Plan()
        if delta is None or self.installed is None or gen is None or gen != self._intact_gen:
            self._converge(elements(), plan, logging.WARNING)
        else:
            installed = self.installed
            adds = {k: delta.added.get(k, set()) - installed[k] for k in ips.KINDS}
            dels = {k: delta.removed.get(k, set()) & installed[k] for k in ips.KINDS}
            lines: list[str] = []
            natrip_after = (installed[ips.NATRIP] | adds[ips.NATRIP]) - dels[ips.NATRIP]
            nat_before, nat_after = bool(installed[ips.NATRIP]), bool(natrip_after)
            if self.hook == "input" and self.ingress is None and nat_before != nat_after:  # the forward and defrag chains come or go
                if nat_after:
                    self._check_forwarding()
                for name in NAT_CHAINS:
                    lines += self._chain_lines(name) if nat_after else self._drop_chain_lines(name)
                    plan.rewritten.append(name)
            mirror = False
            if self.netdev is not None:  # --nat-replies ingress: the table comes or goes, interfaces may move
                mirror = self.netdev.mirrors(installed[ips.NATRIP], natrip_after)
                lines += self.netdev.delta_lines(installed[ips.NATRIP], natrip_after, elements)
            count = sum(map(len, adds.values())) + sum(map(len, dels.values()))
            writer = self._element_writer
            try:
                if not lines and writer is not None and count <= NETLINK_ELEMENTS_MAX:
                    self._write_elements(writer, adds, dels, mirror)
                else:
                    # after the netdev table's lines; mirrored only into a table there before and after
                    # (one created in this transaction holds them already, a deleted one is not written)
                    lines += self._element_lines(adds, dels, mirror)
                    self._script(lines)
            except IptablesError:
                self.installed = None
                raise
            if self.netdev is not None:
                self.netdev.committed()
            for k in ips.KINDS:
                installed[k] |= adds[k]
                installed[k] -= dels[k]
            plan.added, plan.deleted = sum(map(len, adds.values())), sum(map(len, dels.values()))
            self._note_write(gen, 1 if lines or count else 0)
        plan.marks_changed = self._sync_marks(fwmarks)
        log.log(logging.INFO if plan.rewritten else logging.DEBUG, "nft %s: %s", self.table, plan)
        return plan

    def damage(self, set_counts: dict[str, int] | None = None) -> list[str]:
        """What is missing or altered in lbd's table (and mark chain); empty when intact. Nothing is
        read when the nftables generation is still the one of lbd's own last write."""
        gen = self._generation_now()
        if gen is not None and gen == self._intact_gen and not self.ipt.fwmarks.marks:
            return []
        listing = self.listing()
        if not listing.exists:
            return [f"nft table {FAMILY} {self.table} gone"]
        found = [p for problems in self._chain_damage(listing).values() for p in problems]
        found += self._set_problems(listing)[0]
        found += self.netdev.damage(self.installed) if self.netdev is not None else []
        found += self.ipt.fwmarks.damage()
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
        self.ipt.fwmarks.marks = None
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
        self._remove_ingress()
        if self.ipt_available():
            self.ipt.fwmarks.remove()
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
    probe = NftManager(0, nft=nft, netns=netns, runner=runner, queue_writer=queue_writer,
                       hook=owner.hook if owner is not None else "prerouting")
    probe.table = f"lbd-probe{os.getpid() % 100000}"
    try:
        probe._script(probe._create_lines(nat=True))
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

