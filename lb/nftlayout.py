"""The text of lbd's nftables table (lb/nftsteer.py): its chains' rules for either hook layout,
the set declarations, the element conversion between ipset and nft words, and the parser of
`nft -a list table` output. Pure: no command is run here."""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass, field

from lb import ipsets as ips
from lb.iptlayout import _check_queue, jump_comment, socket_mark

FAMILY = "ip"
TABLE_PREFIX = "lbd-q"
PRE, GO, OUT = "pre", "go", "out"
IN, FWD, DEFRAG = "input", "forward", "defrag"  # --steer-hook input (module doc)
NAT_CHAINS = (FWD, DEFRAG)  # with --steer-hook input, only while NAT real servers exist
QUEUE_KEY = "<queue>"  # the queue rule in a normalised chain listing (compared by its comment)
SET_TYPES = {"hash:ip": "ipv4_addr", "hash:ip,port": "ipv4_addr . inet_proto . inet_service",
             "hash:ip,port,ip": "ipv4_addr . inet_proto . inet_service . ipv4_addr"}
PROTO_NUMBERS = {"6": "tcp", "17": "udp"}



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


def _local_rules() -> list[str]:
    """The rules for packets to a VIP or local address: the pre-filter, then services (with ports,
    port-less TCP/UDP), ICMP to them, FULLNAT replies."""
    return [
        "ip daddr != @addr return",
        f"ip daddr . meta l4proto . th dport @svc jump {GO}",
        f"meta l4proto tcp ip daddr @tcp0 jump {GO}",
        f"meta l4proto udp ip daddr @udp0 jump {GO}",
        f"meta l4proto icmp jump {GO}",
        f"ip saddr . meta l4proto . th sport . ip daddr @fnat jump {GO}",
        f"meta l4proto tcp ip saddr @fnattcp0 jump {GO}",
        f"meta l4proto udp ip saddr @fnatudp0 jump {GO}",
    ]


def _nat_reply_rules(routed: str, icmp_from: str) -> list[str]:
    """NAT replies (real server -> client) by RIP.proto.rport, ICMP from a NAT real server, port-less
    NAT real servers; `routed`: the test that the packet is routed (none in the forward hook),
    `icmp_from`: the ICMP rule's source test (none where natrip was tested first)."""
    return [
        f"ip saddr . meta l4proto . th sport @nat{routed} jump {GO}",
        f"meta l4proto icmp{icmp_from}{routed} jump {GO}",
        f"meta l4proto tcp ip saddr @nattcp0{routed} jump {GO}",
        f"meta l4proto udp ip saddr @natudp0{routed} jump {GO}",
    ]


def chain_rules() -> list[str]:
    """`pre`'s rules after its hook line, as `nft list` prints them: lb.iptlayout.chain_rules in
    nft's words (same order, same reasons)."""
    return ["ip daddr != @addr ip saddr != @natrip return",
            *_nat_reply_rules(" fib daddr type != local", " ip saddr @natrip"), *_local_rules()]


def defrag_rule(queue_num: int) -> str:
    return f'meta l4proto tcp tproxy to 127.0.0.1:1 comment "{jump_comment(queue_num)} defrag: never reached"'


def go_rules(queue_num: int, track: bool) -> list[str]:
    """`go` as compared: notrack, the queue rule (QUEUE_KEY), the defrag rule."""
    return ([] if track else ["notrack"]) + [QUEUE_KEY, defrag_rule(queue_num)]


def out_rules(queue_num: int, track: bool) -> list[str]:
    return [] if track else [f"meta mark {socket_mark(queue_num):#x} notrack"]


def input_rules() -> list[str]:
    """`input`'s rules (--steer-hook input): what `pre` tests of packets to a VIP or local address,
    met only by packets routed to this host (routed traffic never reaches the input hook)."""
    return _local_rules()


def forward_rules() -> list[str]:
    """`forward`'s rules (--steer-hook input, only while NAT real servers exist): NAT replies, which
    are routed to clients (the forward hook implies `fib daddr type != local`)."""
    return ["ip saddr != @natrip return", *_nat_reply_rules("", "")]


# --steer-hook input: the input (and forward) hook where kernel IPVS takes packets, but first in it, before
# the firewall's mangle and filter INPUT/FORWARD rules (IPVS runs after them, at NF_IP_PRI_NAT_SRC - 1:
# then a stateful INPUT rule sees only the client's half of a DR flow and rejects its closing packets,
# field report 001). nft prints -151 as "mangle - 1".
INPUT_PRIORITY = "mangle - 1"
HOOK_LINES = {PRE: "type filter hook prerouting priority raw; policy accept;",
              OUT: "type filter hook output priority raw; policy accept;",
              IN: f"type filter hook input priority {INPUT_PRIORITY}; policy accept;",
              FWD: f"type filter hook forward priority {INPUT_PRIORITY}; policy accept;"}
STEER_HOOKS = ("prerouting", "input")


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
    return line.replace("priority -300;", "priority raw;").replace("priority -151;", f"priority {INPUT_PRIORITY};")
