"""The nfqueue-rules check for `lbd --steering nftables`: lbd's own table `ip lbd-q<N>`
(lb/nftsteer.py) read from `nft list ruleset`, compared with what lbd writes, and its sets with
what lbd's services need."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence

from lb import ipsets as ips
from lb import natingress
from lb import nftsteer as ns
from lb.doctor.checks_rules import expected_elements
from lb.doctor.findings import Finding, plural
from lb.doctor.inputs import Run


def table_block(ruleset: str, table: str, family: str = ns.FAMILY) -> str | None:
    """The text of `table <family> <table> { ... }` in an `nft list ruleset` listing, or None."""
    lines = ruleset.splitlines()
    head = f"table {family} {table} {{"
    for i, line in enumerate(lines):
        if line.startswith(head):
            for j in range(i + 1, len(lines)):
                if lines[j] == "}":
                    return "\n".join(lines[i:j + 1]) + "\n"
            return "\n".join(lines[i:]) + "\n"
    return None


def check_nft_steering(run: Run) -> list[Finding]:
    q = run.queue_num
    if q is None:
        return [Finding("error" if run.services else "info", "nfqueue-rules",
                        f"cannot tell which queue lbd uses ({run.queue_source})", fix="pass --queue-num N")]
    name = ns.table_name(q)
    ruleset = run.ctx.nft_ruleset()
    if ruleset is None:
        return [Finding("warning", "nfqueue-rules", "lbd steers with nftables but `nft list ruleset` could not be read",
                        fix="install nftables (the nft command); run as root")]
    block = table_block(ruleset, name)
    fix = f"restart lbd (its start-up recreates table {ns.FAMILY} {name}); lbd also restores it within a second"
    if block is None:
        return [Finding("error" if run.services else "warning", "nfqueue-rules",
                        f"nftables table {ns.FAMILY} {name} is missing: no packet reaches lbd's queue {q}", fix=fix)]
    listing = ns.parse_listing(block)
    closed = run.ping.get("down_policy") == "closed"
    hook = run.ping.get("steering_hook") or ("input" if ns.IN in listing.chains else "prerouting")
    hook = hook if hook in ns.STEER_HOOKS else "prerouting"
    ingress = run.ping.get("nat_replies") == "ingress" and hook == "input"
    manager = ns.NftManager(q, track=bool(run.ping.get("conntrack")), bypass=not closed, runner=_no_commands,
                            hook=hook, nat_replies="ingress" if ingress else "forward")
    want = expected_elements(run)
    manager.installed = want
    out: list[Finding] = []
    chains = [p for problems in manager._chain_damage(listing, exact_queue=False).values() for p in problems]
    if chains:
        out.append(Finding("error", "nfqueue-rules", f"table {ns.FAMILY} {name} does not hold lbd's chains: packets "
                           "for the services may not reach the queue", evidence="\n".join(chains) + "\n\n" + block,
                           fix=fix))
    have = {k: listing.elements.get(k.suffix, set()) for k in ips.KINDS}
    missing = [f"{k.suffix} {e}" for k in ips.KINDS for e in sorted(want[k] - have[k])]
    extra = [f"{k.suffix} {e}" for k in ips.KINDS for e in sorted(have[k] - want[k])]
    if missing:
        out.append(Finding("error", "nfqueue-rules", f"{plural(len(missing), 'set element')} lbd's services need "
                           f"{'is' if len(missing) == 1 else 'are'} not in table {ns.FAMILY} {name}: their packets "
                           "are not steered to lbd", evidence="\n".join(missing[:20]),
                           fix="any lbadm change re-syncs the sets, or restart lbd"))
    if extra:
        out.append(Finding("info", "nfqueue-rules", f"table {ns.FAMILY} {name} holds {plural(len(extra), 'element')} "
                           "lbd did not ask for (added by hand?)", evidence="\n".join(extra[:20])))
    if not out:
        out.append(Finding("info", "nfqueue-rules", f"table {ns.FAMILY} {name} (lbd --steering nftables): native set "
                           f"lookups steer every service ({len(run.services)}) to queue {q}; routed traffic "
                           + ("leaves at the first rule of its prerouting chain" if manager.hook == "prerouting" else
                              "meets none of its hooks (--steer-hook input: after routing, as kernel IPVS)")
                           + f" (inspect: nft list table {ns.FAMILY} {name})",
                           evidence=block))
    if ingress and want[ips.NATRIP]:  # lbd's default --nat-replies ingress: its netdev table
        out += _ingress_findings(ruleset, name, want[ips.NATRIP])
    return out


def _ingress_findings(ruleset: str, name: str, natrip: set[str]) -> list[Finding]:
    """lbd --nat-replies ingress with NAT real servers: its netdev table must hold their addresses and
    a chain `rs` bound to some interface, or their replies never reach lbd."""
    block = table_block(ruleset, name, family=natingress.FAMILY)
    fix = "restart lbd (it recreates the table), or check the routes to the real servers (lbd binds the chain " \
          "to the interfaces the kernel routes them through)"
    if block is None:
        return [Finding("error", "nfqueue-rules", f"lbd takes NAT replies at ingress but table {natingress.FAMILY} "
                        f"{name} is missing: the replies of {plural(len(natrip), 'NAT real server')} never reach lbd",
                        fix=fix)]
    listing = ns.parse_listing(block)
    rs = listing.chains.get(natingress.RS)
    missing = natrip - listing.elements.get(ips.NATRIP.suffix, set())
    tx = natingress.pair_names(int(name.removeprefix(ns.TABLE_PREFIX)))[0]
    problem = ("no chain bound to their interfaces" if rs is None else
               "its chain `rs` is altered" if rs.rules != natingress.rs_rules(tx) else
               f"{plural(len(missing), 'address')} missing from its natrip set" if missing else "")
    if problem:
        return [Finding("error", "nfqueue-rules", f"table {natingress.FAMILY} {name} does not take the replies of "
                        f"every NAT real server: {problem}", evidence=block, fix=fix)]
    assert rs is not None
    return [Finding("info", "nfqueue-rules", f"NAT replies taken at ingress ({rs.hook}), table {natingress.FAMILY} "
                    f"{name}: routed traffic arriving on other interfaces meets nothing of lbd's", evidence=block)]


def _no_commands(cmd: Sequence[str], stdin: str | None) -> subprocess.CompletedProcess[str]:
    raise AssertionError(f"lbadm doctor runs no command through lb.nftsteer: {cmd}")
