"""The NFQUEUE verdict of lbd's native nftables steering (lb.nftsteer), sent over netlink.

The nft command line writes everything in lbd's table except this one rule: a kernel without
CONFIG_NFT_QUEUE (this host's) has no native `queue` statement, and nft cannot write an xtables
target. iptables-nft itself queues through nft_compat: an nf_tables rule whose expression is
"target" NFQUEUE revision 3 with struct xt_NFQ_info_v3 as its data. This module builds that rule
(or, where the kernel has nft_queue, the native "queue" expression with the same three fields) as
one NFT_MSG_NEWRULE in a batch of its own, sent by lb.nfnlbatch.

Semantics are lb.iptlayout.queue_target's: the queue number (or the first of a --queue-balance
range and the range's size), NFQ_FLAG_BYPASS (0x01, lbd --down-policy open) and
NFQ_FLAG_CPU_FANOUT (0x02). The native expression's NFT_QUEUE_FLAG_BYPASS / _CPU_FANOUT are the
same bits.

The rule carries a comment (libnftnl's user data, what `nft list` prints as `comment "..."`)
naming the parameters, so that a listing shows which queue it feeds and lbd can compare it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from lb.nfnlbatch import (  # noqa: F401 (the framing's names, as this module's tests use them)
    NFNL_MSG_BATCH_BEGIN,
    NFNL_MSG_BATCH_END,
    NFNL_SUBSYS_NFTABLES,
    NFPROTO_IPV4,
    NLM_F_ACK,
    NLM_F_APPEND,
    NLM_F_CREATE,
    NLM_F_REQUEST,
    NLMSG_ERROR,
    NetlinkError,
    Request,
    ack_errno,
    attr,
    batch,
    nest,
    string,
    transact,
)

NFT_MSG_NEWRULE = 6
NFTA_RULE_TABLE = 1
NFTA_RULE_CHAIN = 2
NFTA_RULE_EXPRESSIONS = 4
NFTA_RULE_POSITION = 6
NFTA_RULE_USERDATA = 7
NFTA_LIST_ELEM = 1
NFTA_EXPR_NAME = 1
NFTA_EXPR_DATA = 2
NFTA_TARGET_NAME = 1
NFTA_TARGET_REV = 2
NFTA_TARGET_INFO = 3
NFTA_QUEUE_NUM = 1
NFTA_QUEUE_TOTAL = 2
NFTA_QUEUE_FLAGS = 3
NFTNL_UDATA_RULE_COMMENT = 0

NFQ_FLAG_BYPASS = 0x01
NFQ_FLAG_CPU_FANOUT = 0x02
NFQUEUE_REVISION = 3


@dataclass(frozen=True)
class QueueSpec:
    """What the NFQUEUE verdict does: first queue, number of queues, flags."""

    num: int
    total: int = 1
    bypass: bool = True
    cpu_fanout: bool = False

    @property
    def flags(self) -> int:
        return (NFQ_FLAG_BYPASS if self.bypass else 0) | (NFQ_FLAG_CPU_FANOUT if self.cpu_fanout else 0)

    def comment(self, queue_num: int) -> str:
        """The rule's comment: what `nft list` prints (lb.nftsteer compares it)."""
        what = f"queue {self.num}" if self.total == 1 else f"queues {self.num}-{self.num + self.total - 1}"
        flags = [f for f, on in (("bypass", self.bypass), ("fanout", self.cpu_fanout)) if on]
        return f"lbd q{queue_num} {what}" + "".join(f" {f}" for f in flags)


def spec_of(queue_num: int, queue_balance: tuple[int, int] | None, bypass: bool, cpu_fanout: bool) -> QueueSpec:
    """lb.iptlayout.queue_target's arguments as a QueueSpec (same validation)."""
    if queue_balance is None:
        if cpu_fanout:
            raise ValueError("--queue-cpu-fanout needs a queue balance range")
        return QueueSpec(queue_num, 1, bypass, False)
    low, high = queue_balance
    if low > high:
        raise ValueError(f"queue balance range {low}:{high} is empty")
    return QueueSpec(low, high - low + 1, bypass, cpu_fanout)


def xt_nfq_info_v3(spec: QueueSpec) -> bytes:
    """struct xt_NFQ_info_v3 {__u16 queuenum, queues_total, flags;} in host order, padded to
    XT_ALIGN (8 bytes) as xtables does."""
    return struct.pack("=HHH", spec.num, spec.total, spec.flags) + b"\0\0"


def queue_expr(spec: QueueSpec, native: bool) -> bytes:
    """One NFTA_LIST_ELEM: the native "queue" expression, or nft_compat's "target" NFQUEUE v3."""
    if native:
        data = nest(NFTA_EXPR_DATA, attr(NFTA_QUEUE_NUM, struct.pack(">H", spec.num)),
                    attr(NFTA_QUEUE_TOTAL, struct.pack(">H", spec.total)),
                    attr(NFTA_QUEUE_FLAGS, struct.pack(">H", spec.flags)))
        return nest(NFTA_LIST_ELEM, string(NFTA_EXPR_NAME, "queue"), data)
    data = nest(NFTA_EXPR_DATA, string(NFTA_TARGET_NAME, "NFQUEUE"),
                attr(NFTA_TARGET_REV, struct.pack(">I", NFQUEUE_REVISION)),
                attr(NFTA_TARGET_INFO, xt_nfq_info_v3(spec)))
    return nest(NFTA_LIST_ELEM, string(NFTA_EXPR_NAME, "target"), data)


def _userdata_comment(text: str) -> bytes:
    """libnftnl's rule user data: TLV (type u8, length u8, value) NFTNL_UDATA_RULE_COMMENT."""
    value = text.encode()[:250] + b"\0"
    return struct.pack("=BB", NFTNL_UDATA_RULE_COMMENT, len(value)) + value


def queue_request(table: str, chain: str, spec: QueueSpec, comment: str, *, native: bool,
                  before_handle: int | None = None) -> Request:
    """The NEWRULE: appended to `chain`, or inserted before the rule `before_handle`."""
    body = string(NFTA_RULE_TABLE, table) + string(NFTA_RULE_CHAIN, chain)
    flags = NLM_F_CREATE
    if before_handle is None:
        flags |= NLM_F_APPEND
    else:
        body += attr(NFTA_RULE_POSITION, struct.pack(">Q", before_handle))
    body += nest(NFTA_RULE_EXPRESSIONS, queue_expr(spec, native))
    body += attr(NFTA_RULE_USERDATA, _userdata_comment(comment))
    return Request(NFT_MSG_NEWRULE, flags, body)


def rule_batch(table: str, chain: str, spec: QueueSpec, comment: str, *, native: bool,
               before_handle: int | None = None, seq: int = 1) -> bytes:
    """BATCH_BEGIN, the NEWRULE (acknowledged), BATCH_END: the bytes sent to the kernel."""
    return batch([queue_request(table, chain, spec, comment, native=native, before_handle=before_handle)], seq)[0]


def add_queue_rule(table: str, chain: str, spec: QueueSpec, comment: str, *, native: bool,
                   before_handle: int | None = None, netns: str | None = None) -> None:
    """Send the rule in a batch of its own and wait for the kernel's answer; NetlinkError when it refuses."""
    req = queue_request(table, chain, spec, comment, native=native, before_handle=before_handle)
    transact([req], f"the {'queue' if native else 'xt NFQUEUE'} rule in ip {table} {chain}", netns)
