"""The Python engine's NFQUEUE adapter (lb/pyengine/nfq.py) without a kernel: fake queue packets and sockets.

It must apply every verdict, send XMIT_L2 frames as l2hdr + (out if not empty, else
the original packet), send ANSWER packets on the raw socket marked
LB_SOCKET_MARK_BASE | queue, never block (MSG_DONTWAIT) and count failed sends
(the original is dropped anyway), and run the engine's timers, counting only the
frames and answers actually sent.
"""

from __future__ import annotations

import errno
import socket
import struct

import pytest
from scapy.all import IP, UDP, Raw, defragment, raw

from lb.engine import SOCKET_MARK_BASE, Action, Reason, Verdict
from lb.pyengine import nfq

PACKET = bytes.fromhex("4500002800010000400600000a0000010a000002")  # only carried around, never parsed here
L2HDR = bytes.fromhex("020000000b01020000000001") + b"\x08\x00"


class FakeSocket:
    instances: list[FakeSocket] = []
    fail: type[OSError] | None = None
    device_mtu = 0  # raw socket: packets longer than this are refused with EMSGSIZE, the MTU queued

    def recvmsg(self, bufsize: int, ancbufsize: int, flags: int) -> tuple[bytes, list[tuple[int, int, bytes]], int, object]:
        """The error queue after a refusal: one SO_EE_ORIGIN_LOCAL EMSGSIZE naming the device MTU."""
        assert flags & socket.MSG_ERRQUEUE
        if not self.queued:
            raise BlockingIOError(11, "empty")
        self.queued -= 1
        ee = struct.pack("=IBBBBII", errno.EMSGSIZE, 1, 0, 0, 0, FakeSocket.device_mtu, 0)
        return b"", [(socket.IPPROTO_IP, nfq.IP_RECVERR, ee + bytes(16))], 0, None

    def __init__(self, family: int, kind: int, proto: int) -> None:
        self.family, self.kind, self.proto = family, kind, proto
        self.sent: list[tuple[bytes, int, object]] = []
        self.options: dict[tuple[int, int], int] = {}
        self.queued = 1  # errors on the error queue (recvmsg)
        FakeSocket.instances.append(self)

    def setsockopt(self, level: int, name: int, value: int) -> None:
        self.options[(level, name)] = value

    def sendto(self, data: bytes, flags: int, address: object) -> int:
        if FakeSocket.fail is not None:
            raise FakeSocket.fail(11, "would block")
        if FakeSocket.device_mtu and len(data) > FakeSocket.device_mtu and self.family == socket.AF_INET:
            raise OSError(errno.EMSGSIZE, "Message too long")  # raw_send_hdrinc
        self.sent.append((data, flags, address))
        return len(data)

    def close(self) -> None:
        pass


class FakePacket:
    indev = 2  # not lo

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.verdicts: list[str] = []
        self.new_payload: bytes | None = None

    def get_payload(self) -> bytes:
        return self.payload

    def get_mark(self) -> int:
        return 0

    def accept(self) -> None:
        self.verdicts.append("accept")

    def drop(self) -> None:
        self.verdicts.append("drop")

    def set_payload(self, data: bytes) -> None:
        self.new_payload = data


class FakeEngine:
    def __init__(self, action: Action | None = None, timer_actions: list[Action] | None = None) -> None:
        self.action = action
        self.timer_actions = timer_actions or []
        self.seen: list[tuple[bytes, int]] = []
        self.failed: list[Reason] = []  # count_xmit_failed calls

    def process(self, packet: bytes, now_ms: int, mark: int = 0, loopback: bool = False) -> Action:
        self.seen.append((packet, now_ms))
        assert self.action is not None
        return self.action

    def timers(self, now_ms: int) -> list[Action]:
        actions, self.timer_actions = self.timer_actions, []
        return actions

    def timer_due(self) -> int | None:
        return None

    def expire(self, now_ms: int) -> int:
        return 0

    def count_xmit_failed(self, reason: Reason) -> None:
        self.failed.append(reason)


@pytest.fixture(autouse=True)
def fake_sockets(monkeypatch: pytest.MonkeyPatch) -> None:
    FakeSocket.instances = []
    FakeSocket.fail = None
    FakeSocket.device_mtu = 0
    monkeypatch.setattr(nfq.socket, "socket", FakeSocket)
    monkeypatch.setattr(nfq.socket, "if_indextoname", lambda index: f"eth{index}")


def adapter(engine: FakeEngine, queue_num: int = 3) -> nfq.NfqAdapter:
    a = nfq.NfqAdapter(engine, clock_ms=lambda: 12345)
    a._queue_num = queue_num  # as start() would set it
    return a


def test_accept_drop_mangle() -> None:
    for action, verdicts, new in ((Action(Verdict.ACCEPT, Reason.NO_SERVICE), ["accept"], None),
                                  (Action(Verdict.DROP, Reason.MALFORMED), ["drop"], None),
                                  (Action(Verdict.MANGLE, Reason.FORWARDED, out=b"new"), ["accept"], b"new")):
        engine = FakeEngine(action)
        a = adapter(engine)
        packet = FakePacket(PACKET)
        a._on_packet(packet)
        assert packet.verdicts == verdicts and packet.new_payload == new
        assert engine.seen == [(PACKET, 12345)]
        assert (a.stats.packets, a.stats.verdicts) == (1, 1)
    assert FakeSocket.instances == []


@pytest.mark.parametrize("out", [b"", b"rewritten-ip-packet"])
def test_xmit_l2_sends_out_or_the_original(out: bytes) -> None:
    a = adapter(FakeEngine(Action(Verdict.XMIT_L2, Reason.FORWARDED, out=out, ifindex=7, l2hdr=L2HDR)))
    packet = FakePacket(PACKET)
    a._on_packet(packet)
    assert packet.verdicts == ["drop"]
    (sock,) = FakeSocket.instances
    assert (sock.family, sock.kind) == (socket.AF_PACKET, socket.SOCK_RAW)
    ((data, flags, address),) = sock.sent
    assert data == L2HDR + (out or PACKET)
    assert flags & socket.MSG_DONTWAIT
    assert address[0] == "eth7" and address[4] == L2HDR[:6]  # type: ignore[index]
    assert (a.stats.xmit_l2, a.stats.xmit_l2_err) == (1, 0)


def test_answer_goes_through_the_marked_raw_socket() -> None:
    answer = bytes(16) + bytes([192, 0, 2, 10]) + bytes(36)
    a = adapter(FakeEngine(Action(Verdict.ANSWER, Reason.NO_DEST, out=answer)), queue_num=5)
    packet = FakePacket(PACKET)
    a._on_packet(packet)
    assert packet.verdicts == ["drop"]
    (sock,) = FakeSocket.instances
    assert (sock.family, sock.kind, sock.proto) == (socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    assert sock.options[(socket.SOL_SOCKET, socket.SO_MARK)] == SOCKET_MARK_BASE | 5
    ((data, flags, address),) = sock.sent
    assert data == answer and flags & socket.MSG_DONTWAIT and address == ("192.0.2.10", 0)
    assert (a.stats.answers, a.stats.answer_err) == (1, 0)


def test_failed_sends_are_counted_and_the_original_still_dropped() -> None:
    FakeSocket.fail = BlockingIOError
    for action in (Action(Verdict.XMIT_L2, Reason.FORWARDED, ifindex=7, l2hdr=L2HDR),
                   Action(Verdict.ANSWER, Reason.NO_DEST, out=bytes(20) + bytes(8))):
        a = adapter(FakeEngine(action))
        packet = FakePacket(PACKET)
        a._on_packet(packet)
        assert packet.verdicts == ["drop"]
        assert a.stats.xmit_l2_err + a.stats.answer_err == 1
        assert a.stats.xmit_l2 + a.stats.answers == 0
        assert a._engine.failed == [action.reason]  # type: ignore[attr-defined]  # never left as forwarded


BIG = raw(IP(src="192.0.2.10", dst="198.51.100.1", id=9) / UDP(sport=5, dport=53) / Raw(bytes(3000)))


def test_frag_mtu_sends_the_fragments() -> None:
    a = adapter(FakeEngine(Action(Verdict.XMIT_L2, Reason.FORWARDED, ifindex=7, l2hdr=L2HDR, frag_mtu=1400)))
    packet = FakePacket(BIG)
    a._on_packet(packet)
    (sock,) = FakeSocket.instances
    frames = [data for data, _, _ in sock.sent]
    assert len(frames) == 3 and all(f[:14] == L2HDR and len(f) - 14 <= 1400 for f in frames)
    assert raw(defragment([IP(f[14:]) for f in frames])[0]) == BIG
    assert (a.stats.xmit_l2, a.stats.frag_packets, a.stats.frag_out, a.stats.xmit_l2_err) == (1, 1, 3, 0)


def test_an_answer_the_kernel_refuses_as_too_big_leaves_as_fragments() -> None:
    FakeSocket.device_mtu = 1500
    a = adapter(FakeEngine(Action(Verdict.ANSWER, Reason.FORWARDED, out=BIG)))
    a._on_packet(FakePacket(PACKET))
    (sock,) = FakeSocket.instances
    assert sock.options[(socket.IPPROTO_IP, nfq.IP_RECVERR)] == 1
    pieces = [data for data, _, _ in sock.sent]
    assert len(pieces) == 3 and all(len(p) <= 1500 for p in pieces)
    assert raw(defragment([IP(p) for p in pieces])[0]) == BIG
    assert (a.stats.answers, a.stats.frag_packets, a.stats.answer_err) == (1, 1, 0)
    assert a._engine.failed == []  # type: ignore[attr-defined]


def test_timers_run_and_only_sent_packets_count() -> None:
    frame = Action(Verdict.XMIT_L2, Reason.FORWARDED, out=b"syn-again", ifindex=7, l2hdr=L2HDR)
    rst = Action(Verdict.ANSWER, Reason.FORWARDED, out=bytes(16) + bytes([192, 0, 2, 11]) + bytes(20))
    a = adapter(FakeEngine(timer_actions=[frame, rst]))
    a._run_timers()
    assert (a.stats.timer_frames, a.stats.timer_answers) == (1, 1)
    sent = [entry[0] for s in FakeSocket.instances for entry in s.sent]
    assert sent == [L2HDR + b"syn-again", rst.out]
    FakeSocket.fail = OSError
    b = adapter(FakeEngine(timer_actions=[frame, rst]))
    b._run_timers()
    assert (b.stats.timer_frames, b.stats.timer_answers) == (0, 0)
    assert (b.stats.xmit_l2_err, b.stats.answer_err) == (1, 1)


def test_a_timer_frame_with_frag_mtu_leaves_as_fragments() -> None:
    """A held packet that leaves from the timers too big for its path (DF clear) is cut like any other, as the
    C adapter's send_frames cuts timer items."""
    held = Action(Verdict.XMIT_L2, Reason.FORWARDED, out=BIG, ifindex=7, l2hdr=L2HDR, frag_mtu=1400)
    a = adapter(FakeEngine(timer_actions=[held]))
    a._run_timers()
    (sock,) = FakeSocket.instances
    frames = [data for data, _, _ in sock.sent]
    assert len(frames) == 3 and all(f[:14] == L2HDR and len(f) - 14 <= 1400 for f in frames)
    assert raw(defragment([IP(f[14:]) for f in frames])[0]) == BIG
    assert (a.stats.timer_frames, a.stats.frag_packets, a.stats.frag_out) == (1, 1, 3)


def test_stats_keys_mirror_the_c_adapter() -> None:
    a = adapter(FakeEngine())
    from lb.fastpath import NFQ_STAT_NAMES  # the fields of struct lb_nfq_stats, in order

    assert tuple(a.stats_dict()) == NFQ_STAT_NAMES


def test_engine_failure_fails_closed() -> None:
    class Broken(FakeEngine):
        def process(self, packet: bytes, now_ms: int, mark: int = 0, loopback: bool = False) -> Action:
            raise RuntimeError("boom")

    a = adapter(Broken())
    packet = FakePacket(PACKET)
    a._on_packet(packet)
    assert packet.verdicts == ["drop"] and a.stats.verdicts == 1
