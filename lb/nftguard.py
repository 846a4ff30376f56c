"""The overload guard's chain in lbd's nftables table, written and read over netlink (lb.nfnlbatch).

When the kernel drops packets at lbd's full queue, each of them has already cost the director most
of what a queued one costs: the receive path, the hook, and nfnetlink_queue building the whole
message (an allocation and a copy of the packet) before it finds the queue full. Offered twice
what lbd can take, that work starves lbd's own thread and it delivers less than at its zero-loss
rate (receive livelock, issue 15 item 5). lb.overload arms this chain while that happens, so that
the excess is dropped at the first hook a packet meets, by a token bucket, for a fraction of that:

    table ip lbd-q<N> {
        counter guard { }                                       (what the guard dropped, kept between episodes)
        chain guard {  type filter hook prerouting priority raw - 1 (-301); policy accept;
            ip daddr @addr limit rate over <R>/second burst <B> packets counter name "guard" drop
        }
    }

Only packets to the virtual addresses (lbd's `addr` set) are limited: routed traffic is not. The
chain exists only while the guard is armed: a director that is not overloaded has no extra hook.
Every write is one batch (one commit): arming or a new rate creates the chain and the counter if
missing, flushes the chain and adds the rule; disarming deletes the chain (its rule with it).

Why netlink rather than `nft -f`: the guard is rewritten up to four times a second while armed, and nft
caches the table (its sets: 10,000 services' elements) on each start, ~20 ms of CPU that an
overloaded director has least of.
"""

from __future__ import annotations

import errno
import os
import struct
from typing import NamedTuple

from lb.nfnlbatch import (
    NFNL_SUBSYS_NFTABLES,
    NFPROTO_IPV4,
    NLM_F_APPEND,
    NLM_F_CREATE,
    NLM_F_REQUEST,
    NLMSG_ERROR,
    TIMEOUT_S,
    NetlinkError,
    Request,
    attr,
    attr_spans,
    message,
    nest,
    socket_in,
    string,
    transact,
)

CHAIN = "guard"
COUNTER = "guard"
ADDR_SET = "addr"  # lb.ipsets ADDR's suffix: the virtual addresses
PRIORITY = -301  # raw - 1: before lbd's own prerouting chain (raw) and conntrack
NF_INET_PRE_ROUTING = 0
NF_ACCEPT = 1
NF_DROP = 0

NFT_MSG_NEWCHAIN = 3
NFT_MSG_DELCHAIN = 5
NFT_MSG_NEWRULE = 6
NFT_MSG_DELRULE = 8
NFT_MSG_NEWOBJ = 18
NFT_MSG_GETOBJ = 19
NFTA_CHAIN_TABLE = 1
NFTA_CHAIN_NAME = 3
NFTA_CHAIN_HOOK = 4
NFTA_CHAIN_POLICY = 5
NFTA_CHAIN_TYPE = 7
NFTA_HOOK_HOOKNUM = 1
NFTA_HOOK_PRIORITY = 2
NFTA_RULE_TABLE = 1
NFTA_RULE_CHAIN = 2
NFTA_RULE_EXPRESSIONS = 4
NFTA_LIST_ELEM = 1
NFTA_EXPR_NAME = 1
NFTA_EXPR_DATA = 2
NFTA_PAYLOAD_DREG = 1
NFTA_PAYLOAD_BASE = 2
NFTA_PAYLOAD_OFFSET = 3
NFTA_PAYLOAD_LEN = 4
NFT_PAYLOAD_NETWORK_HEADER = 1
NFT_REG_VERDICT = 0
NFT_REG_1 = 1
NFTA_LOOKUP_SET = 1
NFTA_LOOKUP_SREG = 2
NFTA_LIMIT_RATE = 1
NFTA_LIMIT_UNIT = 2
NFTA_LIMIT_BURST = 3
NFTA_LIMIT_TYPE = 4
NFTA_LIMIT_FLAGS = 5
NFT_LIMIT_PKTS = 0
NFT_LIMIT_F_INV = 1  # "over": the rule matches the packets beyond the rate
NFTA_OBJREF_IMM_TYPE = 1
NFTA_OBJREF_IMM_NAME = 2
NFTA_IMMEDIATE_DREG = 1
NFTA_IMMEDIATE_DATA = 2
NFTA_DATA_VERDICT = 2
NFTA_VERDICT_CODE = 1
NFTA_OBJ_TABLE = 1
NFTA_OBJ_NAME = 2
NFTA_OBJ_TYPE = 3
NFTA_OBJ_DATA = 4
NFT_OBJECT_COUNTER = 1
NFTA_COUNTER_BYTES = 1
NFTA_COUNTER_PACKETS = 2
IPV4_DADDR_OFFSET = 16

_NLMSGHDR_SIZE = 16
_NFGENMSG_SIZE = 4


class Limit(NamedTuple):
    """What the guard lets through to the queue: `rate` packets per second, `burst` packets above it."""

    rate: int
    burst: int

    def describe(self) -> str:
        return f"limit rate over {self.rate}/second burst {self.burst} packets"


def _u32(atype: int, value: int) -> bytes:
    return attr(atype, struct.pack(">I", value))


def _expr(name: str, *attrs: bytes) -> bytes:
    return nest(NFTA_LIST_ELEM, string(NFTA_EXPR_NAME, name), nest(NFTA_EXPR_DATA, *attrs))


def rule_expressions(limit: Limit) -> bytes:
    """`ip daddr @addr limit rate over R/second burst B packets counter name "guard" drop`."""
    return b"".join((
        _expr("payload", _u32(NFTA_PAYLOAD_DREG, NFT_REG_1), _u32(NFTA_PAYLOAD_BASE, NFT_PAYLOAD_NETWORK_HEADER),
              _u32(NFTA_PAYLOAD_OFFSET, IPV4_DADDR_OFFSET), _u32(NFTA_PAYLOAD_LEN, 4)),
        _expr("lookup", string(NFTA_LOOKUP_SET, ADDR_SET), _u32(NFTA_LOOKUP_SREG, NFT_REG_1)),
        _expr("limit", attr(NFTA_LIMIT_RATE, struct.pack(">Q", limit.rate)), attr(NFTA_LIMIT_UNIT, struct.pack(">Q", 1)),
              _u32(NFTA_LIMIT_BURST, limit.burst), _u32(NFTA_LIMIT_TYPE, NFT_LIMIT_PKTS),
              _u32(NFTA_LIMIT_FLAGS, NFT_LIMIT_F_INV)),
        _expr("objref", _u32(NFTA_OBJREF_IMM_TYPE, NFT_OBJECT_COUNTER), string(NFTA_OBJREF_IMM_NAME, COUNTER)),
        _expr("immediate", _u32(NFTA_IMMEDIATE_DREG, NFT_REG_VERDICT),
              nest(NFTA_IMMEDIATE_DATA, nest(NFTA_DATA_VERDICT, _u32(NFTA_VERDICT_CODE, NF_DROP)))),
    ))


def arm_requests(table: str, limit: Limit) -> list[Request]:
    """The chain and the counter (created if missing), the chain flushed, the one rule: one commit."""
    if limit.rate < 1 or limit.burst < 1:
        raise ValueError(f"guard {limit.describe()}: rate and burst must be at least 1")
    chain = string(NFTA_CHAIN_TABLE, table) + string(NFTA_CHAIN_NAME, CHAIN)
    hook = nest(NFTA_CHAIN_HOOK, _u32(NFTA_HOOK_HOOKNUM, NF_INET_PRE_ROUTING),
                attr(NFTA_HOOK_PRIORITY, struct.pack(">i", PRIORITY)))
    counter = (string(NFTA_OBJ_TABLE, table) + string(NFTA_OBJ_NAME, COUNTER) + _u32(NFTA_OBJ_TYPE, NFT_OBJECT_COUNTER)
               + nest(NFTA_OBJ_DATA, attr(NFTA_COUNTER_BYTES, struct.pack(">Q", 0)),
                      attr(NFTA_COUNTER_PACKETS, struct.pack(">Q", 0))))
    rule_where = string(NFTA_RULE_TABLE, table) + string(NFTA_RULE_CHAIN, CHAIN)
    return [
        Request(NFT_MSG_NEWCHAIN, NLM_F_CREATE, chain + hook + _u32(NFTA_CHAIN_POLICY, NF_ACCEPT)
                + string(NFTA_CHAIN_TYPE, "filter")),
        Request(NFT_MSG_NEWOBJ, NLM_F_CREATE, counter),  # an existing counter keeps its value
        Request(NFT_MSG_DELRULE, 0, rule_where),  # no handle: every rule of the chain
        Request(NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND, rule_where
                + nest(NFTA_RULE_EXPRESSIONS, rule_expressions(limit))),
    ]


def disarm_requests(table: str) -> list[Request]:
    """The chain deleted with its rule (the counter stays: the guard's total)."""
    return [Request(NFT_MSG_DELCHAIN, 0, string(NFTA_CHAIN_TABLE, table) + string(NFTA_CHAIN_NAME, CHAIN))]


def write(table: str, limit: Limit | None, netns: str | None = None) -> bool:
    """Arm (or re-rate) the guard with `limit`, or remove it (None). Returns whether anything was
    committed: removing a guard that is not there (or from a table that is gone) is not an error."""
    if limit is not None:
        transact(arm_requests(table, limit), f"the overload guard in ip {table} ({limit.describe()})", netns)
        return True
    try:
        transact(disarm_requests(table), f"removing the overload guard of ip {table}", netns)
    except NetlinkError as exc:
        if exc.errno == errno.ENOENT:
            return False
        raise
    return True


def _attrs(data: bytes, off: int, end: int) -> dict[int, bytes]:
    """Attribute type -> payload, for the attributes in data[off:end] (lb.nfnlbatch.attr_spans)."""
    return {atype: data[a:b] for atype, a, b in attr_spans(data, off, end)}


def counter_packets(reply: bytes) -> int | None:
    """The packets of the counter object in a NEWOBJ reply; None if `reply` holds no such message."""
    off = 0
    while off + _NLMSGHDR_SIZE <= len(reply):
        length, mtype = struct.unpack_from("=IH", reply, off)
        if length < _NLMSGHDR_SIZE or off + length > len(reply):
            return None
        if mtype == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWOBJ:
            top = _attrs(reply, off + _NLMSGHDR_SIZE + _NFGENMSG_SIZE, off + length)
            data = top.get(NFTA_OBJ_DATA)
            packets = _attrs(data, 0, len(data)).get(NFTA_COUNTER_PACKETS) if data is not None else None
            return struct.unpack(">Q", packets)[0] if packets is not None and len(packets) == 8 else None
        off += (length + 3) & ~3
    return None


def read_dropped(table: str, netns: str | None = None) -> int | None:
    """Packets the guard's counter holds; None when the table or the counter does not exist."""
    body = string(NFTA_OBJ_TABLE, table) + string(NFTA_OBJ_NAME, COUNTER) + _u32(NFTA_OBJ_TYPE, NFT_OBJECT_COUNTER)
    seq = int.from_bytes(os.urandom(3), "little") + 1
    msg = message((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETOBJ, NLM_F_REQUEST, seq, NFPROTO_IPV4, 0, body)
    with socket_in(netns) as sock:
        sock.settimeout(TIMEOUT_S)
        sock.bind((0, 0))
        sock.send(msg)
        reply = sock.recv(1 << 16)
    if len(reply) >= _NLMSGHDR_SIZE + 4 and struct.unpack_from("=H", reply, 4)[0] == NLMSG_ERROR:
        err = -struct.unpack_from("=i", reply, _NLMSGHDR_SIZE)[0]
        if err in (errno.ENOENT, 0):
            return None
        raise NetlinkError(err, f"reading the overload guard's counter in ip {table}: {os.strerror(err)}")
    return counter_packets(reply)
