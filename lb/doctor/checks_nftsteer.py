"""The nfqueue-rules check for `lbd --steering nftables`: lbd's own table `ip lbd-q<N>`
(lb/nftsteer.py) read from `nft list ruleset`, compared with what lbd writes, and its sets with
what lbd's services need."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence

from lb import ipsets as ips
from lb import nftsteer as ns
from lb.doctor.checks_rules import expected_elements
from lb.doctor.findings import Finding, plural
from lb.doctor.inputs import Run


def table_block(ruleset: str, table: str) -> str | None:
    """The text of `table ip <table> { ... }` in an `nft list ruleset` listing, or None."""
    lines = ruleset.splitlines()
    head = f"table {ns.FAMILY} {table} {{"
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
    manager = ns.NftManager(q, track=bool(run.ping.get("conntrack")), bypass=not closed, runner=_no_commands,
                            hook=hook if hook in ns.STEER_HOOKS else "prerouting")
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
    return out


def _no_commands(cmd: Sequence[str], stdin: str | None) -> subprocess.CompletedProcess[str]:
    raise AssertionError(f"lbadm doctor runs no command through lb.nftsteer: {cmd}")
