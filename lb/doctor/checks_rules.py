"""Checks of lbd itself and its own rules: is it answering, do its raw-table chains hold exactly
what it asked for, is something listening on its queue."""

from __future__ import annotations

import shlex

from lb import iptables as ipt
from lb.doctor.findings import Finding, plural
from lb.doctor.inputs import Run
from lb.doctor.parsers import queue_line
from lb.iptrules import IptChain, chain_state

QUEUE_BACKLOG_WARN = 1024  # packets waiting in the kernel queue at one instant


def check_lbd(run: Run) -> list[Finding]:
    if not run.lbd_ok:
        known = (f"; services taken from its leftover queue rules: {', '.join(s.name for s in run.services)}"
                 if run.services_from_rules else "")
        return [Finding("error", "lbd", f"lbd is not reachable: {run.lbd_error}",
                        evidence=f"control socket {run.ctx.socket_path}{known}",
                        fix="start lbd (it must run in this network namespace), or point --socket / $LBD_SOCKET at it; "
                            "the host checks below still ran")]
    out = [Finding("info", "lbd", f"lbd {run.ping.get('version', '?')} answers, engine {run.ping.get('engine', '?')}, "
                                  f"{plural(len(run.services), 'virtual service')}",
                   evidence=f"control socket {run.ctx.socket_path}")]
    if run.first is not None and run.first.problems:
        out.append(Finding("warning", "lbd", "lbd refused read-only requests", evidence="\n".join(run.first.problems)))
    return out


def check_nfqueue_rules(run: Run) -> list[Finding]:
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
    pre, post = chain_state(raw, chain), chain_state(raw, out_chain)
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
    missing: list[tuple[str, ipt.RulePair]] = []
    covered: set[int] = set()
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
    # FULLNAT and NAT replies and ICMP for VIPs / local addresses / NAT real servers are lbd's own rules
    # too: expected, not extra.
    own_matches = [ipt.icmp_match(a) for a in dict.fromkeys(run.vips() + run.laddrs())]
    for svc in run.services:
        for d in svc.dests:
            if d.get("fwd") == "fullnat":
                own_matches += [ipt.reply_match(svc.proto_num, str(d.get("addr")), int(d.get("port", 0)), la)
                                for la in svc.laddrs]
            elif d.get("fwd") == "masq":  # NAT: the real server's replies and ICMP errors
                own_matches += [ipt.nat_reply_match(svc.proto_num, str(d.get("addr")), int(d.get("port", 0))),
                                ipt.nat_icmp_match(str(d.get("addr")))]
    for match in dict.fromkeys(own_matches):
        pair = ipt.rule_pair(chain, match, target, track=track)
        q_idx = _find_rule(pre.rules, pair.match, "NFQUEUE")
        nt_idx = _find_rule(pre.rules, pair.match, "CT") if pair.notrack is not None else -1
        covered.update(i for i in (q_idx, nt_idx) if i is not None and i >= 0)
    extra = [r for i, r in enumerate(pre.rules) if i not in covered]
    if extra:
        out.append(Finding("info", "nfqueue-rules", f"{chain} holds {plural(len(extra), 'rule')} lbd did not ask for "
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
                               "packets it hands back and its raw-socket packets get conntrack entries and meet stateful "
                               "rules as NEW/INVALID"))
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


def _raw_listing(raw: dict[str, IptChain]) -> str:
    lines = [r.line for c in raw.values() for r in c.rules]
    return "raw table:\n" + ("\n".join(lines) if lines else "(no rules)")


def check_queue_listener(run: Run) -> list[Finding]:
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
                        evidence=queue_line(qs), fix="check lbd's CPU (it may be starved or pinned badly)")]
    return []
