"""NFQUEUE adapter for `lbd --engine python`: the only part of the Python engine that does I/O.

One thread binds queue N with netfilterqueue, hands each packet to
`engine.process(payload, now_ms)` (now_ms = time.monotonic() in milliseconds, the
same clock as the C adapter's CLOCK_MONOTONIC) and applies the action:

- ACCEPT   -> accept the packet unchanged
- DROP     -> drop
- MANGLE   -> set_payload(action.out) and accept
- XMIT_L2  -> send l2hdr + (action.out if not empty, else the original packet) on one
              AF_PACKET socket, addressed to action.ifindex (sockaddr_ll); drop the original.
              With action.frag_mtu, a packet larger than it leaves as fragments
              (lb.pyengine.frag, as the C adapter's lb_ip_fragment)
- ANSWER   -> send action.out (a complete IPv4 packet) through a raw IPPROTO_RAW socket
              marked SOCKET_MARK_BASE | queue (so lbd's raw-table rules let it leave
              untracked and never queue it again); drop the original. The kernel refuses
              a packet larger than the device MTU there (EMSGSIZE, the MTU on the socket's
              error queue, IP_RECVERR): with DF clear it is sent again as fragments

A send that fails is counted (xmit_l2_err / answer_err) and moves the packet from its
reason to xmit_failed (engine.count_xmit_failed): never counted as forwarded.

Sends never block (MSG_DONTWAIT: an answer to an unresolvable client waits in the
kernel's neighbour queue, and a blocking send would stall the queue); a failed send
still drops the original (it was consumed) and is counted. The thread also runs the
engine's timers (SYN-proxy retransmissions and give-ups) when they are due, sending
what they produce (counted in timer_frames / timer_answers when sent), and calls
engine.expire(now_ms) every ~100 ms. Verdicts are given in arrival order, inside
the callback.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from lb.engine import SOCKET_MARK_BASE, Action, Reason, Verdict
from lb.pyengine.frag import fragment

log = logging.getLogger(__name__)

EXPIRE_INTERVAL_MS = 100  # how often dead entries are released, milliseconds
QUEUE_MAXLEN = 4096  # packets the kernel holds for us before dropping (or bypassing)
SOCKET_RCVBUF = 8 * 1024 * 1024  # bytes; the kernel doubles it
LOOPBACK_IFINDEX = 1  # the kernel's: lo in every namespace (looped-back packets skip the martian checks)
POLL_TIMEOUT_S = 0.1  # upper bound on how late stop() and expiry are noticed, seconds
SOL_PACKET = 263  # linux/socket.h
PACKET_QDISC_BYPASS = 20  # linux/if_packet.h
ETH_P_IP = 0x0800
NFQ_COPY_MAX = 4096 - 80  # bytes of a packet NetfilterQueue 1.1 copies (its BufferSize - MetadataSize)
IP_RECVERR = 11  # linux/in.h
SO_EE_ORIGIN_LOCAL = 1  # linux/errqueue.h
_SOCK_EXTENDED_ERR = struct.Struct("=IBBBBII")  # ee_errno, ee_origin, ee_type, ee_code, ee_pad, ee_info, ee_data


def monotonic_ms() -> int:
    return time.monotonic_ns() // 1_000_000


@dataclass
class NfqStats:
    """Mirrors struct lb_nfq_stats."""

    packets: int = 0
    batches: int = 0
    verdicts: int = 0
    xmit_l2: int = 0
    xmit_l2_err: int = 0
    answers: int = 0
    answer_err: int = 0
    recv_err: int = 0
    timer_frames: int = 0  # timer-generated frames (SYN-proxy SYN retransmissions) actually sent
    timer_answers: int = 0  # timer-generated IP packets (SYN-proxy give-up RSTs) actually sent
    gso_packets: int = 0  # GSO is a C-adapter option (lbd --gso): these stay 0 here
    gso_segments: int = 0
    gso_whole: int = 0
    gso_errors: int = 0
    csum_completed: int = 0
    kernel_queue_dropped: int = 0  # the kernel's counts for the queue (/proc/net/netfilter/nfnetlink_queue)
    kernel_user_dropped: int = 0
    frag_packets: int = 0  # packets larger than their path MTU sent as fragments
    frag_out: int = 0  # the fragments they were cut into
    own_passed: int = 0  # lbd's own raw-socket packets looped back to the queue (the C adapter only)
    overload_signals: int = 0  # runs of full receive batches signalled to the guard (the C adapter only)


def kernel_queue_drops(queue_num: int) -> tuple[int, int]:
    """(queue_dropped, user_dropped) of a queue in this network namespace, as the C adapter reads them."""
    try:
        text = Path("/proc/net/netfilter/nfnetlink_queue").read_text()
    except OSError:
        return 0, 0
    for line in text.splitlines():
        f = line.split()
        if len(f) >= 8 and f[0].isdigit() and int(f[0]) == queue_num:
            return int(f[5]), int(f[6])
    return 0, 0


class PacketPath(Protocol):
    """The part of lb.engine.Engine the adapter drives."""

    def process(self, packet: bytes, now_ms: int, mark: int = 0, loopback: bool = False) -> Action: ...
    def expire(self, now_ms: int) -> int: ...
    def timers(self, now_ms: int) -> list[Action]: ...
    def timer_due(self) -> int | None: ...
    def count_xmit_failed(self, reason: Reason) -> None: ...


class NfqAdapter:
    def __init__(self, engine: PacketPath, clock_ms: Callable[[], int] = monotonic_ms, qdisc_bypass: bool = False,
                 queue_maxlen: int | None = None) -> None:
        self._engine = engine
        self._queue_maxlen = queue_maxlen or QUEUE_MAXLEN
        self._clock_ms = clock_ms
        self._qdisc_bypass = qdisc_bypass  # off by default: tcpdump on the director then sees our frames
        self.stats = NfqStats()
        self._l2_socket: socket.socket | None = None
        self._raw_socket: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._wake_r, self._wake_w = -1, -1
        self._queue: object | None = None
        self._queue_num = 0
        self._error: BaseException | None = None
        self._warned_truncated = False  # said once that NetfilterQueue cut a long packet

    # ---- lifecycle -------------------------------------------------------------

    def start(self, queue_num: int) -> None:
        """Bind the queue (raises OSError if that fails, e.g. without CAP_NET_ADMIN) and start the thread."""
        try:
            from netfilterqueue import NetfilterQueue
        except ImportError as exc:  # an optional dependency: only this engine reads packets with it
            raise RuntimeError(
                "lbd --engine python needs the NetfilterQueue package, which is not installed "
                f"({exc}): pip install 'lvs-userspace[python-engine]' (or use the default C engine)"
            ) from exc

        if self._thread is not None:
            raise RuntimeError("adapter already started")
        queue = NetfilterQueue()
        try:
            queue.bind(queue_num, self._on_packet, max_len=self._queue_maxlen, sock_len=SOCKET_RCVBUF)
        except OSError as exc:
            raise OSError(exc.errno, f"cannot bind NFQUEUE {queue_num}: {exc}") from exc
        self._queue = queue
        self._queue_num = queue_num
        self._wake_r, self._wake_w = os.pipe()
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name=f"nfq-{queue_num}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread, unbind the queue, close the sockets. Idempotent."""
        if self._thread is None:
            return
        self._stopping.set()
        os.write(self._wake_w, b"x")
        self._thread.join()
        self._thread = None
        queue, self._queue = self._queue, None
        if queue is not None:
            queue.unbind()  # type: ignore[attr-defined]
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)
        self._wake_r = self._wake_w = -1
        if self._l2_socket is not None:
            self._l2_socket.close()
            self._l2_socket = None
        if self._raw_socket is not None:
            self._raw_socket.close()
            self._raw_socket = None
        if self._error is not None:
            log.error("NFQUEUE thread had failed: %s", self._error)

    def stats_dict(self) -> dict[str, int]:
        if self._thread is not None:
            self.stats.kernel_queue_dropped, self.stats.kernel_user_dropped = kernel_queue_drops(self._queue_num)
        return dict(self.stats.__dict__)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # ---- the thread ------------------------------------------------------------------

    def _run(self) -> None:
        queue = self._queue
        assert queue is not None
        fd = queue.get_fd()  # type: ignore[attr-defined]
        next_expire = self._clock_ms() + EXPIRE_INTERVAL_MS
        try:
            while not self._stopping.is_set():
                readable, _, _ = select.select([fd, self._wake_r], [], [], self._poll_timeout_s())
                if fd in readable:
                    self.stats.batches += 1
                    try:
                        queue.run(block=False)  # type: ignore[attr-defined]
                    except OSError as exc:
                        self.stats.recv_err += 1
                        if exc.errno not in (errno.ENOBUFS, errno.EINTR):
                            log.warning("NFQUEUE recv failed: %s", exc)
                self._run_timers()
                now = self._clock_ms()
                if now >= next_expire:
                    self._engine.expire(now)
                    next_expire = now + EXPIRE_INTERVAL_MS
        except BaseException as exc:  # pragma: no cover - logged, surfaced by stop()
            self._error = exc
            log.exception("NFQUEUE thread died")

    def _poll_timeout_s(self) -> float:
        """Until the next timer is due, at most POLL_TIMEOUT_S."""
        due = self._engine.timer_due()
        if due is None:
            return POLL_TIMEOUT_S
        return max(0.0, min(POLL_TIMEOUT_S, (due - self._clock_ms()) / 1000))

    def _run_timers(self) -> None:
        for action in self._engine.timers(self._clock_ms()):
            if action.verdict == Verdict.XMIT_L2:
                if action.frag_mtu and len(action.out) > action.frag_mtu:  # a held packet too big for its path
                    sent = self._send_l2_fragments(action.ifindex, action.l2hdr, action.out, action.frag_mtu)
                else:
                    sent = self._send_l2(action.ifindex, action.l2hdr, action.out)
                if sent:
                    self.stats.timer_frames += 1
            elif action.verdict == Verdict.ANSWER:
                if self._send_answer(action.out):
                    self.stats.timer_answers += 1

    def _on_packet(self, packet: object) -> None:
        self.stats.packets += 1
        payload: bytes = packet.get_payload()  # type: ignore[attr-defined]
        if len(payload) >= 4 and int.from_bytes(payload[2:4], "big") > len(payload) and not self._warned_truncated:
            # NetfilterQueue copies at most NFQ_COPY_MAX bytes of a packet: a longer (reassembled)
            # datagram arrives cut, and the engine drops it as malformed. The C engine has no such limit.
            self._warned_truncated = True
            log.warning("a %d-byte packet arrived cut to %d bytes (NetfilterQueue copies at most %d): "
                        "--engine python drops packets that long as malformed; the C engine takes up to 65,535",
                        int.from_bytes(payload[2:4], "big"), len(payload), NFQ_COPY_MAX)
        try:
            action = self._engine.process(payload, self._clock_ms(), packet.get_mark(),  # type: ignore[attr-defined]
                                          packet.indev == LOOPBACK_IFINDEX)  # type: ignore[attr-defined]
        except Exception:  # the engine must never take the queue down: fail closed for this packet
            log.exception("engine failed on a %d-byte packet", len(payload))
            packet.drop()  # type: ignore[attr-defined]
            self.stats.verdicts += 1
            return
        self._apply(packet, payload, action)
        self.stats.verdicts += 1

    def _apply(self, packet: object, payload: bytes, action: Action) -> None:
        verdict = action.verdict
        if verdict == Verdict.ACCEPT:
            packet.accept()  # type: ignore[attr-defined]
        elif verdict == Verdict.DROP:
            packet.drop()  # type: ignore[attr-defined]
        elif verdict == Verdict.MANGLE:
            packet.set_payload(action.out)  # type: ignore[attr-defined]
            packet.accept()  # type: ignore[attr-defined]
        elif verdict == Verdict.XMIT_L2:
            ip_packet = action.out or payload
            if action.frag_mtu and len(ip_packet) > action.frag_mtu:
                sent = self._send_l2_fragments(action.ifindex, action.l2hdr, ip_packet, action.frag_mtu)
            else:
                sent = self._send_l2(action.ifindex, action.l2hdr, ip_packet)
            packet.drop()  # type: ignore[attr-defined]
            if not sent:
                self._engine.count_xmit_failed(action.reason)
        elif verdict == Verdict.ANSWER:
            sent = self._send_answer(action.out)
            packet.drop()  # type: ignore[attr-defined]
            if not sent:
                self._engine.count_xmit_failed(action.reason)
        else:  # pragma: no cover - Verdict is closed
            raise ValueError(f"unknown verdict {verdict!r}")

    # ---- output sockets ---------------------------------------------------------------

    def _send_l2(self, ifindex: int, l2hdr: bytes, ip_packet: bytes) -> bool:
        """Send one frame on ifindex without blocking; True when it was sent (failures are counted)."""
        try:
            sock = self._l2_socket
            if sock is None:
                sock = self._l2_socket = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)  # send-only
                if self._qdisc_bypass:
                    sock.setsockopt(SOL_PACKET, PACKET_QDISC_BYPASS, 1)
            sock.sendto(l2hdr + ip_packet, socket.MSG_DONTWAIT, (socket.if_indextoname(ifindex), ETH_P_IP, 0, 0, l2hdr[:6]))
        except OSError as exc:
            self.stats.xmit_l2_err += 1
            log.debug("AF_PACKET send on ifindex %d failed: %s", ifindex, exc)
            return False
        self.stats.xmit_l2 += 1
        return True

    def _send_l2_fragments(self, ifindex: int, l2hdr: bytes, ip_packet: bytes, mtu: int) -> bool:
        """A packet too big for its path: its fragments, each in its own frame; True when all were sent."""
        pieces = fragment(ip_packet, mtu)
        if pieces is None:
            self.stats.xmit_l2_err += 1
            return False
        for piece in pieces:
            if not self._send_l2(ifindex, l2hdr, piece):
                return False
            self.stats.xmit_l2 -= 1  # one packet, counted once below
        self.stats.xmit_l2 += 1
        self.stats.frag_packets += 1
        self.stats.frag_out += len(pieces)
        return True

    def _send_answer(self, ip_packet: bytes) -> bool:
        """Send one IPv4 packet through the kernel's IP output without blocking; True when sent."""
        try:
            if self._raw_socket is None:
                sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, SOCKET_MARK_BASE | self._queue_num)
                sock.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
                self._raw_socket = sock
            destination = socket.inet_ntoa(ip_packet[16:20])
            try:
                self._raw_socket.sendto(ip_packet, socket.MSG_DONTWAIT, (destination, 0))
            except OSError as exc:
                if exc.errno != errno.EMSGSIZE:
                    raise
                pieces = fragment(ip_packet, self._refused_mtu())
                if pieces is None or len(pieces) < 2:
                    raise
                for piece in pieces:
                    self._raw_socket.sendto(piece, socket.MSG_DONTWAIT, (destination, 0))
                self.stats.frag_packets += 1
                self.stats.frag_out += len(pieces)
        except OSError as exc:
            self.stats.answer_err += 1
            log.debug("raw IP send failed: %s", exc)
            return False
        self.stats.answers += 1
        return True

    def _refused_mtu(self) -> int:
        """The device MTU the kernel named when it refused a raw-socket packet as too big (the error
        queue's SO_EE_ORIGIN_LOCAL EMSGSIZE); 0 when there is none. Drains the error queue."""
        mtu = 0
        sock = self._raw_socket
        for _ in range(8):
            try:
                _, ancdata, _, _ = sock.recvmsg(64, 512, socket.MSG_ERRQUEUE | socket.MSG_DONTWAIT)  # type: ignore[union-attr]
            except OSError:
                break
            for level, kind, data in ancdata:
                if level == socket.IPPROTO_IP and kind == IP_RECVERR and len(data) >= _SOCK_EXTENDED_ERR.size:
                    ee_errno, origin, _, _, _, info, _ = _SOCK_EXTENDED_ERR.unpack_from(data)
                    if origin == SO_EE_ORIGIN_LOCAL and ee_errno == errno.EMSGSIZE:
                        mtu = info
        return mtu

