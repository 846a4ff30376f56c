"""One nf_tables transaction over a plain NETLINK_NETFILTER socket: the framing (netlink attributes,
messages, NFNL_MSG_BATCH_BEGIN/END around them) and the exchange (send the batch, read until the
kernel has acknowledged every message or refused one). lb.nftqueue (the queue rule) and
lb.nftelements (set elements) build their messages on it.

No pyroute2 socket: lbd runs these from its asyncio loop (lb/netlink.py explains why that matters),
and a batch is one datagram, one commit: the kernel applies all of its messages or none (a refused
message aborts the whole batch), and the nftables generation moves by one.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import socket
import struct
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

NETLINK_NETFILTER = 12
NFNL_SUBSYS_NFTABLES = 10
NFNL_MSG_BATCH_BEGIN = 0x10
NFNL_MSG_BATCH_END = 0x11
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_APPEND = 0x800
NLM_F_CREATE = 0x400
NLMSG_ERROR = 2
NLA_F_NESTED = 0x8000
NFPROTO_IPV4 = 2
NFPROTO_NETDEV = 5
CLONE_NEWNET = 0x40000000
SOL_NETLINK = 270
NETLINK_CAP_ACK = 10  # a refusal's acknowledgement carries only the header of the refused message
TIMEOUT_S = 5.0
RECV_BYTES = 1 << 16

_NLMSGHDR = struct.Struct("=IHHII")
_NFGENMSG = struct.Struct("=BBH")


class NetlinkError(OSError):
    """The kernel refused a message of the batch (errno as the kernel said it): nothing was applied."""


def attr(atype: int, payload: bytes) -> bytes:
    """One netlink attribute, padded to 4 bytes."""
    raw = struct.pack("=HH", 4 + len(payload), atype) + payload
    return raw + b"\0" * (-len(raw) % 4)


def attr_spans(data: bytes, start: int, end: int) -> Iterator[tuple[int, int, int]]:
    """(type without flags, payload start, payload end) of each netlink attribute in data[start:end];
    stops at the first malformed one (bounds-checked)."""
    end = min(end, len(data))
    off = start
    while off + 4 <= end:
        alen, atype = struct.unpack_from("=HH", data, off)
        if alen < 4 or off + alen > end:
            return
        yield atype & 0x3FFF, off + 4, off + alen
        off += (alen + 3) & ~3


def nest(atype: int, *attrs: bytes) -> bytes:
    return attr(atype | NLA_F_NESTED, b"".join(attrs))


def string(atype: int, text: str) -> bytes:
    return attr(atype, text.encode() + b"\0")


def message(mtype: int, flags: int, seq: int, family: int, res_id: int, body: bytes) -> bytes:
    """nlmsghdr + nfgenmsg + body."""
    return _NLMSGHDR.pack(_NLMSGHDR.size + _NFGENMSG.size + len(body), mtype, flags, seq, 0) \
        + _NFGENMSG.pack(family, 0, res_id) + body


@dataclass(frozen=True)
class Request:
    """One nf_tables message of a batch: NFT_MSG_<type>, its extra flags (NLM_F_REQUEST and NLM_F_ACK
    are always set), its attributes."""

    msg_type: int
    flags: int
    body: bytes
    family: int = NFPROTO_IPV4


def batch(requests: Sequence[Request], seq: int) -> tuple[bytes, list[int]]:
    """BATCH_BEGIN, the requests (sequence numbers seq+1...), BATCH_END: the bytes sent to the kernel
    and the sequence numbers whose acknowledgements to wait for."""
    res = socket.htons(NFNL_SUBSYS_NFTABLES)
    parts = [message(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, seq, socket.AF_UNSPEC, res, b"")]
    seqs = []
    for i, req in enumerate(requests, start=1):
        parts.append(message((NFNL_SUBSYS_NFTABLES << 8) | req.msg_type, NLM_F_REQUEST | NLM_F_ACK | req.flags,
                             seq + i, req.family, 0, req.body))
        seqs.append(seq + i)
    parts.append(message(NFNL_MSG_BATCH_END, NLM_F_REQUEST, seq + len(requests) + 1, socket.AF_UNSPEC, res, b""))
    return b"".join(parts), seqs


def acks(data: bytes) -> Iterator[tuple[int, int]]:
    """(sequence number, errno) of every acknowledgement in `data` (0: accepted). Bounds-checked;
    the kernel's error is negative in struct nlmsgerr; a truncated message ends the walk."""
    off = 0
    while off + _NLMSGHDR.size <= len(data):
        length, mtype, _flags, mseq, _pid = _NLMSGHDR.unpack_from(data, off)
        if length < _NLMSGHDR.size or off + length > len(data):
            return
        if mtype == NLMSG_ERROR and length >= _NLMSGHDR.size + 4:
            yield mseq, -struct.unpack_from("=i", data, off + _NLMSGHDR.size)[0]
        off += (length + 3) & ~3


def ack_errno(data: bytes, seq: int) -> int | None:
    """The errno of the acknowledgement of message `seq` in `data` (0: accepted), or the first
    refusal of any message (the batch is then aborted); None if neither is there."""
    for mseq, err in acks(data):
        if mseq == seq or err:
            return err
    return None


def socket_in(netns: str | None) -> socket.socket:
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


def transact(requests: Sequence[Request], what: str, netns: str | None = None) -> None:
    """Send the requests as one batch and wait until each is acknowledged; NetlinkError (naming
    `what`) when the kernel refuses one, TimeoutError (an OSError) when it does not answer."""
    if not requests:
        return
    seq = int.from_bytes(os.urandom(3), "little") + 1
    data, seqs = batch(requests, seq)
    pending = set(seqs)
    with socket_in(netns) as sock:
        sock.settimeout(TIMEOUT_S)
        # without it a refusal echoes the whole refused message: ~60 kB for lb.nftsteer's largest
        # netlink delta, near the 64 KiB one recv() takes (a truncated ack reads as no answer)
        sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
        sock.bind((0, 0))
        sock.send(data)
        while pending:
            for mseq, err in acks(sock.recv(RECV_BYTES)):
                if err:
                    raise NetlinkError(err, f"nf_tables refused {what}: {os.strerror(err)}")
                pending.discard(mseq)
