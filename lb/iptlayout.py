"""The text of lbd's own iptables rules (lb/iptables.py's RuleManager writes it): chain names, each
chain's fixed content as `iptables -S` prints it, the NFQUEUE target, the socket mark the OUTPUT
side matches, and the comparison of rule text. Pure: no command is run here.

Layout (one lbd instance = one queue number N; the sets are lb.ipsets'):

    raw PREROUTING:   -j LBD-Q<N>                                          (the jump, appended)
    raw LBD-Q<N>:     -m set ! --match-set lbd-q<N>-addr dst -m set ! --match-set lbd-q<N>-natrip src -j RETURN
                                                                         (routed traffic leaves here)
                      NAT replies (lbd-q<N>-nat, -natrip, -nattcp0, -natudp0: lb.ipsets)
                      -m set ! --match-set lbd-q<N>-addr dst -j RETURN      (pre-filter: VIPs, LIPs)
                      -m set --match-set lbd-q<N>-svc dst,dst -j LBD-Q<N>-GO      (VIP,proto:port)
                      -p tcp -m set --match-set lbd-q<N>-tcp0 dst -j LBD-Q<N>-GO  (port-0 services)
                      -p udp -m set --match-set lbd-q<N>-udp0 dst -j LBD-Q<N>-GO
                      -p icmp -j LBD-Q<N>-GO                                 (ICMP to VIPs and LIPs)
                      -m set --match-set lbd-q<N>-fnat src,src,dst -j LBD-Q<N>-GO (FULLNAT replies)
    raw LBD-Q<N>-GO:  -j CT --notrack
                      -j NFQUEUE --queue-num N --queue-bypass
                      -m socket --transparent -m comment --comment "lbd q<N> defrag" -j RETURN
                                                                         (never reached: see Fragments)
    raw OUTPUT:       -m comment --comment "lbd q<N> out" -j LBD-Q<N>-OUT
    raw LBD-Q<N>-OUT: -m mark --mark <SOCKET_MARK_BASE|N> -j CT --notrack

Steering is O(1) in the number of services: the chains' content never changes with the
configuration (a packet meets at most 14 rules, the jump included, and 8 set lookups: TCP or UDP
to a VIP that no rule queues), and a service change is a set element added or deleted (lb.ipsets
explains why ip sets rather than nftables sets). Routed traffic (a packet neither addressed to a
VIP or local address nor sent by a NAT real server) meets 2 rules, the jump and LBD-Q<N>'s first,
and 2 set lookups; before that first rule existed it met 6 rules and 3 lookups (TCP, UDP). Each
xt_set lookup costs ~0.09 us per packet here (nft_compat; bench/results/2026-12-05-routed-cost.md),
which makes them most of what lbd's rules add to a routed packet. A chain of that previous
12-rule form is rewritten like any chain whose content differs, in one transaction, when lbd
adopts it. Earlier versions installed one rule pair per service (4N rules walked by every
packet); a chain of that form left behind by a previous lbd is rewritten in one transaction,
after the sets are filled, when lbd adopts it.

Fragments: the kernel's reassembly (nf_defrag_ipv4, at PREROUTING priority -400, before the raw
table) runs in a network namespace only while something there asks for it; `CT --notrack` does not
(xt_CT's NOTRACK never takes a conntrack reference), so without help a fragmented datagram reaches
LBD-Q<N> as fragments: only the first carries ports and matches the service set, lbd drops it, the
others pass to the director's own stack (measured on this kernel with real packets: raw PREROUTING
sees 3 x 1,500 + 2 x 68-byte pieces of three 3,028-byte datagrams). The last rule of LBD-Q<N>-GO
asks for it: xt_socket's `--transparent` revision turns on nf_defrag_ipv4 for the namespace when
the rule is added and off when it is deleted, and the rule sits after NFQUEUE, which is terminal,
so it is never evaluated (no socket lookup per packet). Every fragmented datagram arriving in the
namespace is then reassembled first, as kernel IPVS's ip_vs_gather_frags / a conntrack director
would (the kernel's limits apply: net.ipv4.ipfrag_high_thresh, ipfrag_time, overlapping fragments
dropped, counted in /proc/net/snmp and /proc/net/netstat), and the queue carries whole datagrams;
the fast path fragments again on the way out (docs/fastpath.md "Fragments"). It costs a packet
that is not a fragment one hook call and one test (ip_is_fragment). Conntrack itself stays off.

Rule text is generated in the exact form `iptables -S` prints (iptables 1.8.x), and rules read
back (lb.iptrules, the project's one iptables rule parser) are compared through a normalised key,
so formatting differences between iptables versions cost at most a rewrite, never a wrong diff.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from lb import consts as C
from lb import ipsets as ips
from lb.iptrules import TableState, rule_key

TABLE = "raw"
HOOK_CHAIN = "PREROUTING"
OUT_HOOK_CHAIN = "OUTPUT"
CHAIN_PREFIX = "LBD-Q"
OUT_CHAIN_SUFFIX = "-OUT"
GO_CHAIN_SUFFIX = "-GO"
MARK_TABLE = "mangle"
MARK_CHAIN_SUFFIX = "-MARK"
MARK_COMMENT_SUFFIX = " mark"
COMMENT_PREFIX = "lbd q"
OUT_COMMENT_SUFFIX = " out"
# SO_MARK of lbd's raw IPPROTO_RAW socket is SOCKET_MARK_BASE | queue number ("LB" in the high
# half, the queue in the low 16 bits): lb_api.h's LB_SOCKET_MARK_BASE, which the C adapter uses.
SOCKET_MARK_BASE = C.LB_SOCKET_MARK_BASE
PROTO_TCP = 6
PROTO_UDP = 17
MAX_QUEUE = 65535


def chain_name(queue_num: int) -> str:
    return f"{CHAIN_PREFIX}{_check_queue(queue_num)}"


def jump_comment(queue_num: int) -> str:
    return f"{COMMENT_PREFIX}{_check_queue(queue_num)}"


def jump_rule(queue_num: int) -> str:
    """The raw PREROUTING rule that sends packets into our chain, as `iptables -S` prints it.

    Every packet the director receives meets it, so it carries no `-m comment` (the chain's name
    says whose it is): under iptables-nft 1.8.9 a comment is an xtables match evaluated per packet,
    ~0.025 us, 3 % of a routed packet's cost here (bench/results/2026-12-05-routed-cost.md). A jump
    with the comment that earlier lbd's installed is still ours (any jump to LBD-Q<N> is) and is
    adopted as it is."""
    return f"-A {HOOK_CHAIN} -j {chain_name(queue_num)}"


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


def mark_chain_name(queue_num: int) -> str:
    """mangle LBD-Q<N>-MARK: the fwmark services' marks, queued after the operator's MARK rules."""
    return f"{chain_name(queue_num)}{MARK_CHAIN_SUFFIX}"


def mark_jump_rule(queue_num: int) -> str:
    return (f'-A {HOOK_CHAIN} -m comment --comment "{jump_comment(queue_num)}{MARK_COMMENT_SUFFIX}" '
            f"-j {mark_chain_name(queue_num)}")


def mark_rules(queue_num: int, marks: Iterable[int], target: str) -> list[str]:
    """One rule per fwmark service, exact mark as the kernel's fwmark lookup (svc->fwmark == mark)."""
    chain = mark_chain_name(queue_num)
    return [f"-A {chain} -m mark --mark {m:#x} {target}" for m in sorted(marks)]


def go_chain_name(queue_num: int) -> str:
    """The chain every steered packet ends in: untrack (unless track), then queue."""
    return f"{chain_name(queue_num)}{GO_CHAIN_SUFFIX}"


def set_of(queue_num: int, kind: ips.SetKind) -> str:
    return ips.set_name(_check_queue(queue_num), kind)


def chain_rules(queue_num: int) -> list[str]:
    """LBD-Q<N>'s fixed content, as `iptables -S` prints it: a constant number of set tests
    whatever the number of services. Order is cost: routed traffic (not to a VIP or local
    address, not from a NAT real server) returns at the first rule after two hash lookups; NAT
    replies next, addressed to clients; then the address pre-filter for everything else."""
    chain, go = chain_name(queue_num), go_chain_name(queue_num)
    s = {k: set_of(queue_num, k) for k in ips.KINDS}
    return [
        # Routed traffic, neither to a VIP or local address nor from a NAT real server, leaves at
        # once: one rule, two lookups. natrip holds the address of every NAT destination, so
        # every source the four NAT rules below match (lb.ipsets Steering.elements).
        f"-A {chain} -m set ! --match-set {s[ips.ADDR]} dst -m set ! --match-set {s[ips.NATRIP]} src -j RETURN",
        # NAT replies and ICMP errors from NAT real servers: addressed to clients, so before the
        # pre-filter; never the director's own traffic with them (addrtype ! LOCAL)
        f"-A {chain} -m set --match-set {s[ips.NAT]} src,src -m addrtype ! --dst-type LOCAL -j {go}",
        f"-A {chain} -p icmp -m set --match-set {s[ips.NATRIP]} src -m addrtype ! --dst-type LOCAL -j {go}",
        # replies of port-less NAT destinations (a port-zero or fwmark service): from any port
        f"-A {chain} -p tcp -m set --match-set {s[ips.NATTCP0]} src -m addrtype ! --dst-type LOCAL -j {go}",
        f"-A {chain} -p udp -m set --match-set {s[ips.NATUDP0]} src -m addrtype ! --dst-type LOCAL -j {go}",
        f"-A {chain} -m set ! --match-set {s[ips.ADDR]} dst -j RETURN",
        f"-A {chain} -m set --match-set {s[ips.SVC]} dst,dst -j {go}",
        f"-A {chain} -p tcp -m set --match-set {s[ips.TCP0]} dst -j {go}",
        f"-A {chain} -p udp -m set --match-set {s[ips.UDP0]} dst -j {go}",
        f"-A {chain} -p icmp -j {go}",
        f"-A {chain} -m set --match-set {s[ips.FNAT]} src,src,dst -j {go}",
        # replies of port-less FULLNAT destinations (a port-zero or fwmark service): from any port
        f"-A {chain} -p tcp -m set --match-set {s[ips.FNATTCP0]} src -j {go}",
        f"-A {chain} -p udp -m set --match-set {s[ips.FNATUDP0]} src -j {go}",
    ]


def defrag_rule(queue_num: int) -> str:
    """The rule that turns on the kernel's reassembly before the raw table (module doc, Fragments):
    never evaluated, it sits after the terminal NFQUEUE rule."""
    return (f'-A {go_chain_name(queue_num)} -m socket --transparent -m comment --comment '
            f'"{jump_comment(queue_num)} defrag" -j RETURN')


def go_rules(queue_num: int, target: str, track: bool = False) -> list[str]:
    """LBD-Q<N>-GO: `CT --notrack` first (NFQUEUE is terminal), then the queue, then the rule that
    turns on reassembly (never reached)."""
    go = go_chain_name(queue_num)
    return ([] if track else [f"-A {go} -j CT --notrack"]) + [f"-A {go} {target}", defrag_rule(queue_num)]


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


def same_rules(found: Sequence[str], want: Sequence[str]) -> bool:
    return [rule_key(r) for r in found] == [rule_key(r) for r in want]


def restore_script(lines: Iterable[str], table: str = TABLE) -> str:
    body = "\n".join(lines)
    return f"*{table}\n{body}\nCOMMIT\n"


def has_jump_from(state: TableState, hook: str) -> bool:
    return any(j.startswith(f"-A {hook} ") for j in state.jumps)


def chain_damage(table: str, chain: str, state: TableState, want: Sequence[str], hook: str = "") -> list[str]:
    """What differs between lbd's chain as listed (`state`) and its rules `want`, one phrase each;
    with `hook`, also the jump to it from that built-in chain when the chain exists."""
    if not state.chain_exists:
        return [f"{table} chain {chain} gone"]
    found = []
    if not same_rules(state.rules, want):
        found.append(f"{table} {chain} holds {len(state.rules)} rules, not lbd's {len(want)}")
    if hook and not has_jump_from(state, hook):
        found.append(f"jump {table} {hook} -> {chain} gone")
    return found


def remove_lines(states: Sequence[tuple[TableState, str]]) -> list[str]:
    """Restore lines removing chains (each with its state as listed): the jumps to them from other
    chains, then a flush and a delete of each chain that exists."""
    lines = [delete_line(j) for state, _ in states for j in state.jumps
             if not j.startswith(tuple(f"-A {c} " for _, c in states))]
    lines += [f"-F {c}" for s, c in states if s.chain_exists]
    lines += [f"-X {c}" for s, c in states if s.chain_exists]
    return lines


def delete_line(rule: str) -> str:
    assert rule.startswith("-A ")
    return "-D " + rule[3:]
