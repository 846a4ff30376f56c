"""One-way latency of marked probe packets through the director, under a background load.

    python -m bench.latency send --iface IF --frames FILE --interval-us N        (in the client's namespace)
    python -m bench.latency recv --iface IF --seconds S --expect N                (in rs1's namespace)

The probes are copies of the benchmark's own frames (an ACK of an established flow, or a SYN of a
fresh flow) whose TCP sequence number carries a marker, MAGIC in the upper 16 bits and the probe's
index in the lower 16 (the generator's frames all carry sequence number 1000, so nothing else
matches). The sender stamps CLOCK_REALTIME just before each send on an AF_PACKET socket; the
receiver, an AF_PACKET socket on rs1's interface with a classic BPF filter that accepts only
marked frames (plain, or inside an IPIP packet), takes the kernel's receive timestamp
(SO_TIMESTAMPNS, also CLOCK_REALTIME). All namespaces share one clock, so rx - tx is the one-way
latency: the sender's system call, the client's veth, the director (kernel, NFQUEUE lbd or AF_XDP
lbd) and rs1's veth. The sender's part is the same for every system (the kernel row is the
baseline). Every loop is bounded by a count and a deadline.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import struct
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lb.pyengine.csum import internet_checksum

MAGIC = 0x5A17
MAX_PROBES = 0xFFFF
ETH_P_ALL = 0x0003
SO_TIMESTAMPNS = 35
SO_ATTACH_FILTER = 26
PACKET_OUTGOING = 4  # sockaddr_ll pkttype of a frame this host sends
# Offsets of the TCP sequence number in a frame: Ethernet (14) + IPv4 without options (20) + 4;
# inside IPIP one more IPv4 header (20).
SEQ_OFFSET_PLAIN = 38
SEQ_OFFSET_IPIP = 58


def marked_seq(index: int) -> int:
    if not 0 <= index < MAX_PROBES:
        raise ValueError(f"probe index {index} out of 0..{MAX_PROBES - 1}")
    return (MAGIC << 16) | index


def probe_index(seq: int) -> int | None:
    return seq & 0xFFFF if seq >> 16 == MAGIC else None


def bpf_filter() -> list[tuple[int, int, int, int]]:
    """Classic BPF: accept frames whose word at SEQ_OFFSET_PLAIN or SEQ_OFFSET_IPIP has MAGIC on top."""
    ld_w_abs, and_k, jeq_k, ret_k = 0x20, 0x54, 0x15, 0x06
    return [
        (ld_w_abs, 0, 0, SEQ_OFFSET_PLAIN),
        (and_k, 0, 0, 0xFFFF0000),
        (jeq_k, 3, 0, MAGIC << 16),  # -> accept
        (ld_w_abs, 0, 0, SEQ_OFFSET_IPIP),
        (and_k, 0, 0, 0xFFFF0000),
        (jeq_k, 0, 1, MAGIC << 16),
        (ret_k, 0, 0, 0xFFFF),  # accept
        (ret_k, 0, 0, 0),  # reject
    ]


def frame_seq(frame: bytes) -> int | None:
    """The marked probe index of a received frame (plain TCP or TCP in IPIP), else None."""
    if len(frame) < 34 or frame[12:14] != b"\x08\x00":
        return None
    off = 14
    ihl = (frame[off] & 0x0F) * 4
    proto = frame[off + 9]
    if proto == 4:  # IPIP: the inner header
        off += ihl
        if len(frame) < off + 20:
            return None
        ihl = (frame[off] & 0x0F) * 4
        proto = frame[off + 9]
    if proto != 6 or len(frame) < off + ihl + 8:
        return None
    return probe_index(struct.unpack_from("!I", frame, off + ihl + 4)[0])


def percentiles(values_us: Sequence[float]) -> dict[str, Any]:
    """n, p50, p90, p99, max of latencies in microseconds (nearest-rank percentiles)."""
    vals = sorted(values_us)
    if not vals:
        return {"n": 0, "p50": None, "p90": None, "p99": None, "max": None, "mean": None}

    def rank(p: float) -> float:
        return vals[min(len(vals) - 1, max(0, int(p / 100 * len(vals) + 0.999999) - 1))]

    return {"n": len(vals), "p50": rank(50), "p90": rank(90), "p99": rank(99), "max": vals[-1],
            "mean": statistics.fmean(vals)}


def match(tx_ns: dict[int, int], rx_ns: dict[int, int]) -> dict[str, Any]:
    """Per-probe one-way latency (us) of the probes seen on both sides; lost = sent, never received."""
    lat = [(rx_ns[i] - t) / 1000.0 for i, t in tx_ns.items() if i in rx_ns]
    return {**percentiles(lat), "sent": len(tx_ns), "lost": sum(1 for i in tx_ns if i not in rx_ns)}


# --------------------------------------------------------------------------- the two ends



def mark_frame(template: bytes, index: int, sport: int | None = None) -> bytes:
    """`template` (Ethernet/IPv4/TCP, no IP options) with the marked sequence number (and source
    port), TCP checksum recomputed."""
    b = bytearray(template)
    ihl = (b[14] & 0x0F) * 4
    tcp = 14 + ihl
    total = struct.unpack_from("!H", b, 16)[0]
    if sport is not None:
        struct.pack_into("!H", b, tcp, sport)
    struct.pack_into("!I", b, tcp + 4, marked_seq(index))
    struct.pack_into("!H", b, tcp + 16, 0)
    seg = bytes(b[tcp:14 + total])
    pseudo = bytes(b[26:34]) + struct.pack("!BBH", 0, 6, len(seg))
    struct.pack_into("!H", b, tcp + 16, internet_checksum(pseudo + seg))
    return bytes(b)


def send(iface: str, frames: list[bytes], interval_us: float) -> dict[int, int]:
    """Send frame i at t0 + i * interval (bounded by the frame count); {index: CLOCK_REALTIME ns}."""
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    s.bind((iface, 0))
    out: dict[int, int] = {}
    t0 = time.monotonic()
    for i, f in enumerate(frames[:MAX_PROBES]):
        due = t0 + i * interval_us / 1e6
        while (now := time.monotonic()) < due:
            time.sleep(min(due - now, 0.001))
        idx = frame_seq(f)
        ts = time.time_ns()
        s.send(f)
        if idx is not None:
            out[idx] = ts
    s.close()
    return out


def recv(iface: str, seconds: float, expect: int, ready: Path | None = None) -> dict[int, int]:
    """Marked frames arriving on `iface` within `seconds` (or until `expect` of them); {index: rx ns}."""
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    prog = bpf_filter()
    buf = b"".join(struct.pack("HBBI", *ins) for ins in prog)
    import ctypes  # noqa: PLC0415

    cbuf = ctypes.create_string_buffer(buf)
    fprog = struct.pack("HL", len(prog), ctypes.addressof(cbuf))
    s.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
    s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    s.bind((iface, 0))
    if ready:
        ready.write_text("ready\n")
    out: dict[int, int] = {}
    deadline = time.monotonic() + min(seconds, 120.0)
    while len(out) < expect and (left := deadline - time.monotonic()) > 0:
        s.settimeout(left)
        try:
            data, anc, _flags, addr = s.recvmsg(2048, socket.CMSG_SPACE(16))
        except TimeoutError:
            break
        if addr[2] == PACKET_OUTGOING:  # our own namespace's frames on their way out (bench/one_arm.py)
            continue
        idx = frame_seq(data)
        if idx is None or idx in out:
            continue
        for level, typ, val in anc:
            if level == socket.SOL_SOCKET and typ == SO_TIMESTAMPNS and len(val) >= 16:
                sec, nsec = struct.unpack("qq", val[:16])
                out[idx] = sec * 1_000_000_000 + nsec
    s.close()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.latency")
    sub = ap.add_subparsers(dest="cmd", required=True)
    ps = sub.add_parser("send")
    ps.add_argument("--iface", required=True)
    ps.add_argument("--frames", type=Path, required=True, help="concatenated frames of equal length")
    ps.add_argument("--frame-len", type=int, required=True)
    ps.add_argument("--interval-us", type=float, default=2000.0)
    pr = sub.add_parser("recv")
    pr.add_argument("--iface", required=True)
    pr.add_argument("--seconds", type=float, required=True)
    pr.add_argument("--expect", type=int, required=True)
    pr.add_argument("--ready", type=Path)
    a = ap.parse_args(argv)
    if a.cmd == "send":
        raw = a.frames.read_bytes()
        frames = [raw[i:i + a.frame_len] for i in range(0, len(raw), a.frame_len)]
        res = send(a.iface, frames, a.interval_us)
    else:
        res = recv(a.iface, a.seconds, a.expect, a.ready)
    json.dump({str(k): v for k, v in res.items()}, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
