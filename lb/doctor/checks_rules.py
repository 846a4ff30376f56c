"""Checks of lbd itself and its own rules: is it answering, do its raw-table chains hold exactly
what it asked for, is something listening on its queue."""

from __future__ import annotations

from lb import ipsets as ips
from lb import iptlayout as iptl
from lb.doctor.findings import Finding, plural
from lb.doctor.inputs import Run, Service
from lb.doctor.parsers import queue_line
from lb.iptrules import IptChain, chain_state, rule_key

QUEUE_BACKLOG_WARN = 1024  # packets waiting in the kernel queue at one instant


def check_lbd(run: Run) -> list[Finding]:
    if not run.lbd_ok:
        known = (f"; services taken from its leftover queue rules: {', '.join(s.name for s in run.services)}"
                 if run.services_from_rules else "")
        return [Finding("error", "lbd", f"lbd is not reachable: {run.lbd_error}",
                        evidence=f"control socket {run.ctx.socket_path}{known}",
                        fix="start lbd (it must run in this network namespace), or point --socket / $LBD_SOCKET at it; "
                            "the host checks below still ran")]
    source = run.packet_source + (" with the NFQUEUE fallback" if run.packet_source == "afxdp" and run.nfqueue_used else "")
    out = [Finding("info", "lbd", f"lbd {run.ping.get('version', '?')} answers, engine {run.ping.get('engine', '?')}, "
                                  f"packet source {source}, {plural(len(run.services), 'virtual service')}",
                   evidence=f"control socket {run.ctx.socket_path}")]
    if run.first is not None and run.first.problems:
        out.append(Finding("warning", "lbd", "lbd refused read-only requests", evidence="\n".join(run.first.problems)))
    return out


def check_nfqueue_rules(run: Run) -> list[Finding]:
    out: list[Finding] = []
    if not run.nfqueue_used:
        return [Finding("info", "nfqueue-rules", "lbd takes packets from AF_XDP only (--no-iptables: no NFQUEUE "
                        "fallback): it has no NFQUEUE rules to check")]
    if run.save_text is None:
        return [Finding("warning", "nfqueue-rules", "cannot read the firewall rules (iptables-save failed); "
                        "NFQUEUE rule health not checked", fix="install iptables; run as root")]
    if run.ping.get("steering") == "nftables":  # lbd --steering nftables: its own nftables table
        from lb.doctor.checks_nftsteer import check_nft_steering

        return check_nft_steering(run)
    q = run.queue_num
    if q is None:
        sev = "error" if run.services else "info"
        return [Finding(sev, "nfqueue-rules", f"cannot tell which NFQUEUE lbd uses ({run.queue_source})",
                        fix="pass --queue-num N (lbd's --queue-num)" if "chains" in run.queue_source else
                        "start lbd without --no-iptables, or queue the VIPs to lbd's queue yourself")]
    raw = run.tables.get("raw", {})
    chain, out_chain = iptl.chain_name(q), iptl.out_chain_name(q)
    pre, post = chain_state(raw, chain), chain_state(raw, out_chain)
    fix_restart = f"restart lbd (its start-up recreates {chain}) or check who flushes the raw table"
    if not pre.chain_exists:
        return [Finding("error" if run.services else "warning", "nfqueue-rules",
                        f"chain {chain} is missing from the raw table: no packet reaches lbd's queue {q}",
                        evidence=_raw_listing(raw), fix=fix_restart)]
    if not any(j.startswith(f"-A {iptl.HOOK_CHAIN} ") for j in pre.jumps):
        out.append(Finding("error", "nfqueue-rules", f"raw {iptl.HOOK_CHAIN} does not jump to {chain}: no packet reaches lbd",
                           evidence=_raw_listing(raw), fix=f"{fix_restart} (lbd restores the jump on its next rule change)"))
    track = run.track_mode()
    go = chain_state(raw, iptl.go_chain_name(q))
    want = iptl.chain_rules(q)
    if not iptl.same_rules(pre.rules, want):
        out.append(Finding("error", "nfqueue-rules", f"{chain} does not hold lbd's set lookups: packets for the "
                           "services may not reach the queue",
                           evidence="expected:\n" + "\n".join(want) + "\nfound:\n" + ("\n".join(pre.rules) or "(empty chain)"),
                           fix="any lbadm change rewrites the chain (e.g. re-add a service), or restart lbd"))
    if not any("-j NFQUEUE" in r for r in go.rules) or \
            (not track and not any(r.endswith("-j CT --notrack") for r in go.rules)):
        out.append(Finding("error", "nfqueue-rules", f"{iptl.go_chain_name(q)} lacks its CT --notrack / NFQUEUE rules: "
                           "steered packets are not queued to lbd",
                           evidence="\n".join(go.rules) or "(no chain)", fix=fix_restart))
    if run.ipsets is None:
        out.append(Finding("warning", "nfqueue-rules", "cannot read the ip sets (ipset save failed): which services "
                           "are steered was not checked", fix="install ipset; run as root"))
    else:
        want_el = expected_elements(run)
        missing_svc = [svc.name for svc in run.services
                       if not expected_in(service_elements(svc), run)]
        for name in missing_svc:
            out.append(Finding("error", "nfqueue-rules", f"service {name}: not in lbd's ip sets: its packets are not balanced",
                               evidence="\n".join(f"ipset {ips.set_name(q, k)}: {len(run.set_members(k))} elements"
                                                   for k in ips.KINDS),
                               fix="any lbadm change re-syncs the sets (e.g. re-add the service), or restart lbd"))
        extra = [f"{ips.set_name(q, k)} {e}" for k in ips.KINDS for e in sorted(run.set_members(k) - want_el[k])]
        if extra and not run.services_from_rules:
            out.append(Finding("info", "nfqueue-rules", f"lbd's ip sets hold {plural(len(extra), 'element')} lbd did not "
                               "ask for (added by hand?)", evidence="\n".join(extra[:20])))
        missing_other = [f"{ips.set_name(q, k)} {e}" for k in ips.KINDS for e in sorted(want_el[k] - run.set_members(k))
                         if k in (ips.FNAT, ips.NAT, ips.NATRIP, ips.NATTCP0, ips.NATUDP0, ips.FNATTCP0, ips.FNATUDP0,
                                  ips.ADDR)]
        if missing_other:
            out.append(Finding("error", "nfqueue-rules", "FULLNAT or NAT replies / ICMP for local addresses are not steered "
                               f"to lbd ({plural(len(missing_other), 'set element')} missing)",
                               evidence="\n".join(missing_other[:20]), fix=fix_restart))
    if run.fwmarks:
        mangle = chain_state(run.tables.get(iptl.MARK_TABLE, {}), iptl.mark_chain_name(q))
        for mark in run.fwmarks:
            if not any(f"-m mark --mark {mark:#x} " in r and "NFQUEUE" in r for r in mangle.rules) or not any(
                    j.startswith(f"-A {iptl.HOOK_CHAIN} ") for j in mangle.jumps):
                out.append(Finding("error", "nfqueue-rules", f"service FWM {mark}: mangle {iptl.mark_chain_name(q)} does "
                                   "not queue its mark (or is not jumped to): its packets are not balanced",
                                   evidence="\n".join(mangle.jumps + mangle.rules) or "(no chain)",
                                   fix="re-add the service (lbd rewrites the chain), or restart lbd"))
    no_bypass = [r for r in go.rules if "NFQUEUE" in r and "--queue-bypass" not in r]
    if no_bypass and run.ping.get("down_policy") != "closed":
        out.append(Finding("warning", "nfqueue-rules", "NFQUEUE rules without --queue-bypass: while lbd is not running, "
                           "packets for these services are dropped instead of reaching the local stack",
                           evidence="\n".join(no_bypass),
                           fix="intended only with lbd --down-policy closed; otherwise let lbd manage its rules"))
    wrong_q = [r for r in go.rules if "NFQUEUE" in r and f"--queue-num {q} " not in r + " " and "--queue-balance" not in r]
    if wrong_q:
        out.append(Finding("error", "nfqueue-rules", f"NFQUEUE rules in {chain} target another queue than lbd's {q}",
                           evidence="\n".join(wrong_q), fix=fix_restart))
    if track:
        out.append(Finding("info", "conntrack", "conntrack opt-in is on: lbd installs no CT --notrack rules",
                           evidence="\n".join(go.rules),
                           fix="nothing to fix if intended. Packets lbd forwards are still taken before conntrack's hook; "
                               "packets it hands back and its raw-socket packets get conntrack entries and meet stateful "
                               "rules as NEW/INVALID"))
    else:
        want = iptl.out_rules(q)
        fullnat = "fullnat" in run.fwds()
        if not post.chain_exists or [rule_key(r) for r in post.rules] != [rule_key(r) for r in want] \
                or not any(j.startswith(f"-A {iptl.OUT_HOOK_CHAIN} ") for j in post.jumps):
            out.append(Finding("error" if fullnat else "warning", "nfqueue-rules",
                               f"{out_chain} (untracking lbd's own raw-socket packets, mark {iptl.socket_mark(q):#x}) "
                               "is missing or incomplete: FULLNAT replies and ICMP answers get conntrack entries "
                               "and meet stateful OUTPUT rules as NEW/INVALID",
                               evidence="expected:\n" + "\n".join([iptl.out_jump_rule(q), *want]) + "\nfound:\n"
                               + ("\n".join(post.jumps + post.rules) or "(nothing)"),
                               fix=fix_restart))
    if not out:
        n = len(run.services)
        out.append(Finding("info", "nfqueue-rules", f"{chain}: set lookups steer every service ({n}) to "
                           f"{iptl.go_chain_name(q)}, jumped to from raw {iptl.HOOK_CHAIN}; {out_chain} untracks lbd's own packets",
                           evidence="\n".join(pre.jumps + pre.rules + go.rules + post.jumps + post.rules)))
    return out


def expected_elements(run: Run) -> dict[ips.SetKind, set[str]]:
    """The set elements lbd's services need (lb.ipsets Steering.elements of what lbd lists)."""
    expected = ips.Steering()
    for svc in run.services:
        expected.services.add((svc.proto_num, svc.addr, svc.port))
        expected.addrs.update(svc.laddrs)
        for d in svc.dests:
            if d.get("fwd") == "fullnat":
                rport = ips.nat_reply_port(svc.port, svc.persistent, int(d.get("port", 0)))
                expected.fnat_replies.update((svc.proto_num, str(d.get("addr")), rport, la) for la in svc.laddrs)
            elif d.get("fwd") == "masq":
                rport = ips.nat_reply_port(svc.port, svc.persistent, int(d.get("port", 0)))
                expected.nat_replies.add((svc.proto_num, str(d.get("addr")), rport))
    return expected.elements()


def service_elements(svc: Service) -> dict[ips.SetKind, set[str]]:
    return ips.Steering(services={(svc.proto_num, svc.addr, svc.port)}).elements()


def expected_in(elements: dict[ips.SetKind, set[str]], run: Run) -> bool:
    return all(e in run.set_members(k) for k, es in elements.items() for e in es)


def _raw_listing(raw: dict[str, IptChain]) -> str:
    lines = [r.line for c in raw.values() for r in c.rules]
    return "raw table:\n" + ("\n".join(lines) if lines else "(no rules)")


def check_queue_listener(run: Run) -> list[Finding]:
    if not run.nfqueue_used or run.first is None or run.queue_num is None or run.first.queues is None:
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
