"""Parsers of what the director's kernel reports: /proc/net/netfilter/nfnetlink_queue, sysctl values,
`nft list ruleset` (iptables rule text is lb.iptrules's)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field


@dataclass(frozen=True)
class QueueStats:
    """One line of /proc/net/netfilter/nfnetlink_queue (per network namespace)."""

    queue: int
    portid: int  # netlink port id of the listener
    waiting: int  # packets queued to userspace right now
    copy_mode: int
    copy_range: int
    queue_dropped: int  # cumulative: queue full (queue_maxlen) and not fail-open
    user_dropped: int  # cumulative: netlink send to the listener failed (socket buffer full)
    id_sequence: int


def parse_nfnetlink_queue(text: str) -> dict[int, QueueStats]:
    out: dict[int, QueueStats] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 8 or not all(p.isdigit() for p in parts[:8]):
            continue
        n = [int(p) for p in parts[:8]]
        out[n[0]] = QueueStats(*n)
    return out


def queue_line(q: QueueStats) -> str:
    return (f"queue {q.queue}: portid {q.portid}, waiting {q.waiting}, queue dropped {q.queue_dropped}, "
            f"user dropped {q.user_dropped}, id sequence {q.id_sequence}")


def sysctl_int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


_NFT_TABLE = re.compile(r"^table\s+(\w+)\s+(\S+)\s*\{")
_NFT_CHAIN = re.compile(r"^chain\s+(\S+)\s*\{")
_NFT_HOOK = re.compile(r"type\s+\w+\s+hook\s+(\w+)\s+priority\s+([^;]+);(?:\s*policy\s+(\w+);)?")


@dataclass
class NftChain:
    """One chain of `nft list ruleset`: its table ("family name"), hook and policy (None for a
    regular chain), and its rule lines."""

    table: str
    name: str
    hook: str | None = None
    policy: str | None = None
    rules: list[str] = field(default_factory=list)


def parse_nft_chains(text: str) -> list[NftChain]:
    """The chains of `nft list ruleset` output, in order."""
    chains: list[NftChain] = []
    table: str | None = None
    chain: NftChain | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if m := _NFT_TABLE.match(line):
            table = f"{m.group(1)} {m.group(2)}"
            continue
        if table is None:
            continue
        if m := _NFT_CHAIN.match(line):
            chain = NftChain(table, m.group(1))
            continue
        if chain is None:
            continue
        if m := _NFT_HOOK.search(line):
            chain.hook, chain.policy = m.group(1), m.group(3)
            continue
        if line == "}":
            chains.append(chain)
            chain = None
            continue
        if line:
            chain.rules.append(line)
    return chains
