"""The NFQUEUE verdict of lbd's native nftables steering (lb.nftsteer), sent over netlink.

The nft command line writes everything in lbd's table except this one rule: a kernel without
CONFIG_NFT_QUEUE (this host's) has no native `queue` statement, and nft cannot write an xtables
target. iptables-nft itself queues through nft_compat: an nf_tables rule whose expression is
"target" NFQUEUE revision 3 with struct xt_NFQ_info_v3 as its data. This module builds that rule
(or, where the kernel has nft_queue, the native "queue" expression with the same three fields) as
one NFT_MSG_NEWRULE in a batch, and sends it on a plain netlink socket (no pyroute2 socket: lbd
runs it from its asyncio loop, lb/netlink.py explains why that matters).

Semantics are lb.iptlayout.queue_target's: the queue number (or the first of a --queue-balance
range and the range's size), NFQ_FLAG_BYPASS (0x01, lbd --down-policy open) and
NFQ_FLAG_CPU_FANOUT (0x02). The native expression's NFT_QUEUE_FLAG_BYPASS / _CPU_FANOUT are the
same bits.

The rule carries a comment (libnftnl's user data, what `nft list` prints as `comment "..."`)
naming the parameters, so that a listing shows which queue it feeds and lbd can compare it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import socket
import struct
import threading
from dataclasses import dataclass

NETLINK_NETFILTER = 12
NFNL_SUBSYS_NFTABLES = 10
NFNL_MSG_BATCH_BEGIN = 0x10
NFNL_MSG_BATCH_END = 0x11
NFT_MSG_NEWRULE = 6
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_APPEND = 0x800
NLM_F_CREATE = 0x400
NLMSG_ERROR = 2
NLA_F_NESTED = 0x8000
NFPROTO_IPV4 = 2

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
CLONE_NEWNET = 0x40000000
TIMEOUT_S = 5.0

_NLMSGHDR = struct.Struct("=IHHII")
_NFGENMSG = struct.Struct("=BBH")


class NetlinkError(OSError):
    """The kernel refused the rule (errno as the kernel said it)."""


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


def _attr(atype: int, payload: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(payload), atype) + payload
    return raw + b"\0" * (-len(raw) % 4)


def _nest(atype: int, *attrs: bytes) -> bytes:
    return _attr(atype | NLA_F_NESTED, b"".join(attrs))


def _str(atype: int, text: str) -> bytes:
    return _attr(atype, text.encode() + b"\0")


def xt_nfq_info_v3(spec: QueueSpec) -> bytes:
    """struct xt_NFQ_info_v3 {__u16 queuenum, queues_total, flags;} in host order, padded to
    XT_ALIGN (8 bytes) as xtables does."""
    return struct.pack("=HHH", spec.num, spec.total, spec.flags) + b"\0\0"


def queue_expr(spec: QueueSpec, native: bool) -> bytes:
    """One NFTA_LIST_ELEM: the native "queue" expression, or nft_compat's "target" NFQUEUE v3."""
    if native:
        data = _nest(NFTA_EXPR_DATA, _attr(NFTA_QUEUE_NUM, struct.pack(">H", spec.num)),
                     _attr(NFTA_QUEUE_TOTAL, struct.pack(">H", spec.total)),
                     _attr(NFTA_QUEUE_FLAGS, struct.pack(">H", spec.flags)))
        return _nest(NFTA_LIST_ELEM, _str(NFTA_EXPR_NAME, "queue"), data)
    data = _nest(NFTA_EXPR_DATA, _str(NFTA_TARGET_NAME, "NFQUEUE"),
                 _attr(NFTA_TARGET_REV, struct.pack(">I", NFQUEUE_REVISION)),
                 _attr(NFTA_TARGET_INFO, xt_nfq_info_v3(spec)))
    return _nest(NFTA_LIST_ELEM, _str(NFTA_EXPR_NAME, "target"), data)


def _userdata_comment(text: str) -> bytes:
    """libnftnl's rule user data: TLV (type u8, length u8, value) NFTNL_UDATA_RULE_COMMENT."""
    value = text.encode()[:250] + b"\0"
    return struct.pack("=BB", NFTNL_UDATA_RULE_COMMENT, len(value)) + value


def _msg(mtype: int, flags: int, seq: int, family: int, res_id: int, body: bytes) -> bytes:
    return _NLMSGHDR.pack(_NLMSGHDR.size + _NFGENMSG.size + len(body), mtype, flags, seq, 0) \
        + _NFGENMSG.pack(family, 0, res_id) + body


def rule_batch(table: str, chain: str, spec: QueueSpec, comment: str, *, native: bool,
               before_handle: int | None = None, seq: int = 1) -> bytes:
    """BATCH_BEGIN, NEWRULE (appended to `chain`, or inserted before the rule `before_handle`),
    BATCH_END: the bytes sent to the kernel. Only the NEWRULE asks for an acknowledgement."""
    body = _str(NFTA_RULE_TABLE, table) + _str(NFTA_RULE_CHAIN, chain)
    flags = NLM_F_REQUEST | NLM_F_CREATE | NLM_F_ACK
    if before_handle is None:
        flags |= NLM_F_APPEND
    else:
        body += _attr(NFTA_RULE_POSITION, struct.pack(">Q", before_handle))
    body += _nest(NFTA_RULE_EXPRESSIONS, queue_expr(spec, native))
    body += _attr(NFTA_RULE_USERDATA, _userdata_comment(comment))
    res = socket.htons(NFNL_SUBSYS_NFTABLES)
    return (_msg(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, seq, socket.AF_UNSPEC, res, b"")
            + _msg((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWRULE, flags, seq + 1, NFPROTO_IPV4, 0, body)
            + _msg(NFNL_MSG_BATCH_END, NLM_F_REQUEST, seq + 2, socket.AF_UNSPEC, res, b""))


def ack_errno(data: bytes, seq: int) -> int | None:
    """The errno of the acknowledgement of message `seq` in `data` (0: accepted), None if absent.
    Bounds-checked; the kernel's error is negative in struct nlmsgerr."""
    off = 0
    while off + _NLMSGHDR.size <= len(data):
        length, mtype, _flags, mseq, _pid = _NLMSGHDR.unpack_from(data, off)
        if length < _NLMSGHDR.size or off + length > len(data):
            return None
        if mtype == NLMSG_ERROR and length >= _NLMSGHDR.size + 4:
            err = struct.unpack_from("=i", data, off + _NLMSGHDR.size)[0]
            if mseq == seq or err:
                return -err
        off += (length + 3) & ~3
    return None


def _socket_in(netns: str | None) -> socket.socket:
    """A NETLINK_NETFILTER socket in the named netns (created by a thread that entered it: a
    socket keeps the netns it was made in), or in ours."""
    if not netns:
        return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    made: list[socket.socket] = []
    errors: list[BaseException] = []

    def enter() -> None:
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
            fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns({netns}): {os.strerror(err)}")
            finally:
                os.close(fd)
            made.append(socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER))
        except BaseException as exc:  # reported in the caller's thread
            errors.append(exc)

    thread = threading.Thread(target=enter, name=f"netns-{netns}")
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return made[0]


def add_queue_rule(table: str, chain: str, spec: QueueSpec, comment: str, *, native: bool,
                   before_handle: int | None = None, netns: str | None = None) -> None:
    """Send rule_batch() and wait for the kernel's answer; NetlinkError when it refuses."""
    seq = int.from_bytes(os.urandom(3), "little") + 1
    batch = rule_batch(table, chain, spec, comment, native=native, before_handle=before_handle, seq=seq)
    with _socket_in(netns) as sock:
        sock.settimeout(TIMEOUT_S)
        sock.bind((0, 0))
        sock.send(batch)
        while True:
            errno = ack_errno(sock.recv(65536), seq + 1)
            if errno is not None:
                break
    if errno:
        raise NetlinkError(errno, f"nf_tables refused the {'queue' if native else 'xt NFQUEUE'} rule in "
                           f"ip {table} {chain}: {os.strerror(errno)}")
