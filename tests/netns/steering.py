"""What a netns test reads of lbd's steering depends on the steering it runs against
(LB_TEST_STEERING, tests/netns/conftest.py): by default lbd's, one native nftables table `ip lbd-q<N>`
whose sets are named by the kinds alone (lb/nftsteer.py, docs/firewall.md), at the input hook
(LB_TEST_STEER_HOOK=prerouting: before routing); with `iptables` raw-table rules and ip sets
`lbd-q<N>-<kind>` (lb/iptables.py, lb/ipsets.py). Helpers for tests
that look at either, and the skip for what exists in one layer only.

Set elements are returned in `ipset save`'s notation whatever the layer: "VIP", "VIP,tcp:80",
"RIP,tcp:8080,LIP", so that tests compare against one form.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from conftest import NAT_REPLIES, NFT, PACKET_SOURCE, QUEUE_NUM, STEER_HOOK, STEERING

from lb.testbed.topology import Host

NFTABLES = STEERING == "nftables"
# lbd's table takes packets at input (and forward), as kernel IPVS does: the default
INPUT_HOOK = NFTABLES and STEER_HOOK == "input"
FIRST_CHAIN = "input" if INPUT_HOOK else "pre"  # the base chain every packet for lbd meets first
# The balanced packets reach lbd after routing (the kernel's martian checks, ip_forward's TTL
# check first): --steer-hook input, but not under LB_TEST_PACKET_SOURCE=afxdp, where the XDP program
# takes them before any hook and lbd's table at input is only the NFQUEUE fallback's (docs/afxdp.md).
AFTER_ROUTING = INPUT_HOOK and PACKET_SOURCE != "afxdp"
# lbd's default --nat-replies ingress (LB_TEST_NAT_REPLIES=forward: not): NAT replies reach lbd before
# routing (a netdev ingress chain on the real servers' interfaces, lb/natingress.py), so lbd, not
# ip_forward, answers what routing would have. Only where lbd can: the C engine and NFQUEUE.
NAT_INGRESS = INPUT_HOOK and NAT_REPLIES == "ingress" and PACKET_SOURCE == "nfqueue"


def nat_ingress(engine: str) -> bool:
    """Whether an lbd of `engine` started with the run's options takes NAT replies at ingress."""
    return NAT_INGRESS and engine == "c"


def nat_replies_after_routing(engine: str) -> bool:
    """NAT replies reach lbd after routing (ip_forward's checks first): --steer-hook input with the
    forward chain (LB_TEST_NAT_REPLIES=forward, or an engine without the ingress reader)."""
    return AFTER_ROUTING and not nat_ingress(engine)


def netdev_dump(host: Host, queue: int = QUEUE_NUM) -> str:
    """`nft list table netdev lbd-q<N>` (--nat-replies ingress), "" when there is none."""
    return host.exec([NFT, "list", "table", "netdev", table(queue)], check=False).stdout


def table(queue: int = QUEUE_NUM) -> str:
    """The name of lbd's nftables table of `queue` (family ip)."""
    return f"lbd-q{queue}"


def iptables_only(what: str) -> pytest.MarkDecorator:
    """Skip under LB_TEST_STEERING=nftables: `what` is the iptables-only thing the test is about."""
    return pytest.mark.skipif(NFTABLES, reason=f"iptables steering only: {what}: see docs/firewall.md")


def skip_if_nftables(what: str) -> None:
    """The same, from inside a test (a parametrised case, a fixture)."""
    if NFTABLES:
        pytest.skip(f"iptables steering only: {what}: see docs/firewall.md")


def prerouting_only(what: str) -> pytest.MarkDecorator:
    """Skip under LB_TEST_STEER_HOOK=input: `what` depends on lbd taking packets before routing,
    conntrack and the firewall (with --steer-hook input they meet those first, as with kernel IPVS)."""
    return pytest.mark.skipif(INPUT_HOOK, reason=f"prerouting placement only: {what}: --steer-hook input "
                              "takes packets after the filter chains, as kernel IPVS: see docs/firewall.md")


def elements(host: Host, kind: str, queue: int = QUEUE_NUM, missing_ok: bool = False) -> set[str]:
    """The elements of lbd's set of kind `kind` (lb.ipsets KINDS suffix: "svc", "addr", "nat", ...)
    of `queue`, in `host`'s namespace; the set must exist unless `missing_ok` (then none)."""
    if NFTABLES:
        proc = host.exec([NFT, "-j", "list", "set", "ip", table(queue), kind], check=False)
        if proc.returncode and missing_ok:
            return set()
        assert proc.returncode == 0, f"nft list set ip {table(queue)} {kind}: {proc.stderr}"
        return {_nft_element(e) for e in _nft_set(proc.stdout).get("elem", [])}
    name = f"lbd-q{queue}-{kind}"
    proc = host.exec(["ipset", "save", name], check=False)
    if proc.returncode and missing_ok:
        return set()
    assert proc.returncode == 0, f"ipset save {name}: {proc.stderr}"
    prefix = f"add {name} "
    return {line[len(prefix):].split()[0] for line in proc.stdout.splitlines() if line.startswith(prefix)}


def _nft_set(text: str) -> dict[str, Any]:
    for obj in json.loads(text)["nftables"]:
        if "set" in obj:
            return dict(obj["set"])
    raise AssertionError(f"no set in nft's answer: {text}")


def _nft_element(e: Any) -> str:
    """One element of `nft -j` in ipset notation: addr . proto . port [. addr] -> "addr,proto:port[,addr]"."""
    if isinstance(e, dict) and "elem" in e:  # an element with options (timeout, comment)
        e = e["elem"]["val"]
    if isinstance(e, dict) and "concat" in e:
        parts = [str(p) for p in e["concat"]]
        if len(parts) >= 3:
            return ",".join([parts[0], f"{parts[1]}:{parts[2]}", *parts[3:]])
        return ",".join(parts)
    return str(e)


def dump(host: Host, queue: int = QUEUE_NUM) -> str:
    """lbd's steering as text for an assertion's message (rules and sets of either layer)."""
    if NFTABLES:
        proc = host.exec([NFT, "list", "table", "ip", table(queue)], check=False)
        return f"nft list table ip {table(queue)}:\n{proc.stdout}{proc.stderr}"
    raw = host.exec(["iptables", "-t", "raw", "-S"], check=False).stdout
    sets = host.exec(["ipset", "save"], check=False).stdout
    return f"iptables -t raw -S:\n{raw}ipset save:\n{sets}"


def queue_rules(host: Host, queue: int = QUEUE_NUM) -> list[str]:
    """The rules of lbd's steering that queue packets to `queue` (raw NFQUEUE rules; the nftables
    table's `queue num N` / nft_compat `xt target` rules)."""
    if NFTABLES:
        proc = host.exec([NFT, "list", "table", "ip", table(queue)], check=False)
        return [line.strip() for line in proc.stdout.splitlines() if line.strip().startswith(("queue ", "xt target"))]
    raw = host.exec(["iptables", "-t", "raw", "-S"]).stdout
    return [line for line in raw.splitlines() if "NFQUEUE" in line]


def queue_bypasses(rule: str) -> bool:
    """Whether a rule of queue_rules() lets packets through while no lbd listens (--queue-bypass;
    nft's `bypass` flag, which lbd's comment on the rule repeats)."""
    return "bypass" in rule.split() if NFTABLES else "--queue-bypass" in rule


def present(host: Host, queue: int = QUEUE_NUM) -> bool:
    """Whether lbd's steering of `queue` is in `host`'s namespace (its raw chain / its table)."""
    if NFTABLES:
        return host.exec([NFT, "list", "table", "ip", table(queue)], check=False).returncode == 0
    return host.exec(["iptables", "-t", "raw", "-S", f"LBD-Q{queue}"], check=False).returncode == 0


# name: (what is done to the director, what lbd's log line about it must name). The same four
# operator mistakes in either layer: the classifying chain emptied, the hook into it gone, the
# service set emptied, the whole firewall reloaded without lbd's part.
Damage = tuple[Callable[[Host], None], str]


def _run(*argv: str) -> Callable[[Host], None]:
    def run(h: Host) -> None:
        h.exec(list(argv))
    return run


def _iptables_reload(h: Host) -> None:
    """What `iptables-restore` of a file without lbd's rules does to the raw table (then sets go)."""
    h.exec(["iptables", "-t", "raw", "-F"])
    h.exec(["iptables", "-t", "raw", "-X"])
    h.exec(["ipset", "destroy", f"lbd-q{QUEUE_NUM}-svc"])


def damages() -> dict[str, Damage]:
    q, t = QUEUE_NUM, table(QUEUE_NUM)
    if NFTABLES:
        return {
            "chain flushed": (_run(NFT, "flush", "chain", "ip", t, FIRST_CHAIN), f"nft {t} {FIRST_CHAIN} holds 0 rules"),
            "jump deleted": (_run(NFT, "delete", "chain", "ip", t, FIRST_CHAIN), f"nft chain {t} {FIRST_CHAIN} gone"),
            "set flushed": (_run(NFT, "flush", "set", "ip", t, "svc"), f"nft set {t} svc holds 0 of its 1 elements"),
            # `nft -f` of a ruleset file that starts with `flush ruleset` (e.g. nftables.service)
            "raw table reloaded": (_run(NFT, "flush", "ruleset"), f"nft table ip {t} gone"),
        }
    chain = f"LBD-Q{q}"
    return {
        "chain flushed": (_run("iptables", "-t", "raw", "-F", chain), f"raw {chain} holds 0 rules"),
        "jump deleted": (_run("iptables", "-t", "raw", "-D", "PREROUTING", "-j", chain),
                         f"jump raw PREROUTING -> {chain} gone"),
        "set flushed": (_run("ipset", "flush", f"lbd-q{q}-svc"), f"ip set lbd-q{q}-svc holds 0 of its 1 elements"),
        "raw table reloaded": (_iptables_reload, f"raw chain {chain} gone"),
    }
