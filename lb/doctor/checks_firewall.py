"""Checks of the firewall against lbd's traffic: which operator rules meet packets lbd hands back
or sends itself, and what they do to them (iptables through lb.doctor.ipteval, native nftables)."""

from __future__ import annotations

import re

from lb import iptlayout as iptl
from lb.doctor.findings import Finding, plural
from lb.doctor.inputs import Run
from lb.doctor.ipteval import (
    FORWARD_PATH,
    HANDBACK_PATH,
    HOOK_MEANING,
    LOCAL_OUT_PATH,
    NO,
    TERMINAL_TARGETS,
    YES,
    Decision,
    Probe,
    in_net,
    match_opt,
    match_rule,
    negate,
    reachable_from,
    walk,
    walk_path,
)
from lb.doctor.parsers import parse_nft_chains, sysctl_int


def check_firewall(run: Run) -> list[Finding]:
    if not run.tables:
        return []
    out: list[Finding] = []
    states = run.states()
    state_word = "/".join(sorted(states))
    mark = run.mark()
    services = run.services or []
    ip_forward = sysctl_int(run.ctx.sysctl("net/ipv4/ip_forward"))

    # 1. steering: raw PREROUTING must hand VIP packets to our queue, nothing earlier may decide.
    our_chains = {iptl.chain_name(run.queue_num), iptl.go_chain_name(run.queue_num)} if run.queue_num is not None else set()
    for svc in services:
        probe = Probe(svc.proto, daddr=svc.addr, dport=svc.port or None, iif=run.vip_iface(svc.addr),
                      states=frozenset({"INVALID"}),  # no conntrack entry is attached before conntrack's hook
                      tcp_flags=frozenset({"SYN"}) if svc.proto == "tcp" else None, dst_local=True)
        decisions, _ = walk(run.tables, "raw", "PREROUTING", probe)
        idx = next((i for i, d in enumerate(decisions) if d.certain), len(decisions))
        first_sure = decisions[idx] if idx < len(decisions) else None
        earlier = [d for d in decisions[:idx] if d.chain not in our_chains]
        if first_sure is not None and first_sure.rule is not None and first_sure.chain not in our_chains:
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
    # Under the AF_XDP source a hand-back is re-injected on lbd's raw socket (its mark): the kernel
    # loops it back through lo, so the INPUT rules meet it with `-i lo` (docs/afxdp.md).
    afxdp = run.packet_source == "afxdp"
    for svc in services:
        flags = frozenset({"ACK"}) if svc.proto == "tcp" else None
        probe = Probe(svc.proto, daddr=svc.addr, dport=svc.port or None,
                      iif="lo" if afxdp else run.vip_iface(svc.addr), mark=mark if afxdp else None,
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
        ours = iptl.out_chain_name(run.queue_num)
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
        for dest in svc.dests:
            probe = Probe(svc.proto, saddr=str(dest.get("addr")), sport=int(dest.get("port") or 0) or None,
                          iif=(dest.get("l2") or {}).get("ifname") or None, states=frozenset({"NEW", "INVALID"}),
                          tcp_flags=frozenset({"SYN", "ACK"}) if svc.proto == "tcp" else None)
            res = walk_path(run.tables, FORWARD_PATH, probe)
            if res.blocked and res.final is not None:
                fwd_blocked.append(f"{dest.get('addr')}:{dest.get('port')} -> clients: {res.final.text}")
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
            f"{plural(len(notes), 'firewall rule')} that stateful or VIP-specific filtering relies on; "
            + ("lbd takes balanced packets before the INPUT/FORWARD rules (--steer-hook input; PREROUTING rules and "
               "conntrack's lookup come first), so mostly none reaches them" if run.input_hook() else
               "lbd's balanced packets are UNTRACKED and mostly never reach them"),
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


def _explain_rules(run: Run) -> list[str]:
    vips = set(run.vips())
    states = run.states()
    track = run.track_mode()
    notes: list[str] = []
    ours = re.compile(rf"^{re.escape(iptl.CHAIN_PREFIX)}\d+({re.escape(iptl.OUT_CHAIN_SUFFIX)}|{re.escape(iptl.GO_CHAIN_SUFFIX)})?$")
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
                    hit = negate(match_opt("--state", [",".join(sorted(st))], Probe("tcp", states=states)), state_opt[1])
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
                if any(in_net(v, spec) == YES for v in vips for spec in addr_opts):
                    reasons.append("matches a VIP")
                if not reasons:
                    continue
                where = [f"from {h}: {HOOK_MEANING.get((tname, h), 'not on the path of lbd packets')}" for h in hooks]
                notes.append(f"-t {tname} {r.line}\n    {', '.join(reasons)}\n    "
                             + ("\n    ".join(where) or "not reached from any built-in chain"))
    return notes


def check_nft(run: Run) -> list[Finding]:
    """Native nftables chains (firewalld, nftables.service) that iptables-save does not show."""
    text = run.ctx.nft_ruleset()
    if not text:
        return []
    iptables_nft = "nf_tables" in run.ctx.iptables_version()
    # iptables-nft's own tables are iptables-save's: already checked through it.
    managed = {f"ip {name}" for name in run.tables} if iptables_nft else set()
    out: list[Finding] = []
    for nft in parse_nft_chains(text):
        tname, cname, hook, policy, rules = nft.table, nft.name, nft.hook, nft.policy, nft.rules
        if tname in managed:
            continue
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
               f"{(run.mark() or iptl.SOCKET_MARK_BASE):#x} accept" if hook in ("output", "postrouting") else
               "nothing for lbd itself")
        out.append(Finding(sev, "firewall", f"nftables chain {tname} {cname} (hook {hook}) filters by conntrack state "
                           f"and rejects/drops the rest: {meets} are ct state untracked there",
                           evidence="\n".join(stateful + blocking), fix=fix))
    return out
