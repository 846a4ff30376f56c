"""Packet captures for the test bed: tcpdump inside a host's namespace, and a small pcap reader.

    cap = Capture(host, "ip proto 4", direction="out").start()
    ... traffic ...
    packets = cap.stop()          # list[Packet], decoded far enough for the tests
    print(cap.text())             # tcpdump's own rendering, for failure messages

The reader handles what these captures produce (classic pcap, Ethernet link
type, IPv4) and decodes the outer IPv4 header, an inner IPv4 header for IPIP,
TCP/UDP ports, TCP flags and options, and ICMP with its quoted header. It is
plain Python (no scapy), fast enough for tens of thousands of packets.
"""

from __future__ import annotations

import select
import signal
import struct
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lb.testbed.topology import Host

LINKTYPE_ETHERNET = 1
ETH_P_IP = 0x0800
MAX_CAPTURE_S = 600.0  # no capture outlives this (tcpdump is also ended with the topology)


def ip4(b: bytes) -> str:
    return ".".join(str(x) for x in b)


@dataclass
class L4:
    """Transport part of an IPv4 packet (ports 0 for ICMP)."""

    proto: int
    sport: int = 0
    dport: int = 0
    flags: int = 0  # TCP flags byte
    options: list[tuple[int, bytes]] = field(default_factory=list)  # TCP options (kind, value)
    icmp_type: int = -1
    icmp_code: int = -1
    quoted: IPv4 | None = None  # ICMP error: the quoted packet (header + 8 bytes)


@dataclass
class IPv4:
    src: str
    dst: str
    proto: int
    ttl: int
    total_len: int
    l4: L4 | None = None
    inner: IPv4 | None = None  # IPIP: the encapsulated packet


@dataclass
class Packet:
    ts: float  # capture time (seconds since the epoch, like time.time())
    ip: IPv4


def parse_ipv4(b: bytes, depth: int = 0) -> IPv4 | None:
    if len(b) < 20 or b[0] >> 4 != 4:
        return None
    ihl = (b[0] & 0x0F) * 4
    if ihl < 20 or len(b) < ihl:
        return None
    total = struct.unpack_from("!H", b, 2)[0]
    pkt = IPv4(ip4(b[12:16]), ip4(b[16:20]), b[9], b[8], total)
    payload = b[ihl:total] if total >= ihl else b[ihl:]
    if pkt.proto == 4 and depth == 0:
        pkt.inner = parse_ipv4(payload, depth + 1)
    elif pkt.proto == 6 and len(payload) >= 20:
        sport, dport = struct.unpack_from("!HH", payload, 0)
        doff = (payload[12] >> 4) * 4
        pkt.l4 = L4(6, sport, dport, payload[13], parse_tcp_options(payload[20:doff]))
    elif pkt.proto == 17 and len(payload) >= 8:
        sport, dport = struct.unpack_from("!HH", payload, 0)
        pkt.l4 = L4(17, sport, dport)
    elif pkt.proto == 1 and len(payload) >= 8:
        l4 = L4(1, icmp_type=payload[0], icmp_code=payload[1])
        if payload[0] in (3, 4, 5, 11, 12) and depth == 0:
            l4.quoted = parse_ipv4(payload[8:], depth + 1)
        pkt.l4 = l4
    return pkt


def parse_tcp_options(opts: bytes) -> list[tuple[int, bytes]]:
    out = []
    i = 0
    while i < len(opts):
        kind = opts[i]
        if kind == 0:
            break
        if kind == 1:
            i += 1
            continue
        if i + 1 >= len(opts) or opts[i + 1] < 2:
            break
        length = opts[i + 1]
        out.append((kind, bytes(opts[i + 2:i + length])))
        i += length
    return out


def read_pcap(path: str | Path) -> Iterator[Packet]:
    """IPv4 packets of a classic pcap file (Ethernet link type); a truncated tail is ignored."""
    data = Path(path).read_bytes()
    if len(data) < 24:
        return
    magic = data[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        endian = "<"
    elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        endian = ">"
    else:
        raise ValueError(f"{path}: not a pcap file (magic {magic.hex()})")
    nano = magic in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d")
    linktype = struct.unpack_from(endian + "I", data, 20)[0]
    if linktype != LINKTYPE_ETHERNET:
        raise ValueError(f"{path}: link type {linktype}, expected Ethernet")
    rec = struct.Struct(endian + "IIII")
    off = 24
    while off + 16 <= len(data):
        sec, frac, incl, _orig = rec.unpack_from(data, off)
        off += 16
        frame = data[off:off + incl]
        off += incl
        if len(frame) < incl:
            break
        if len(frame) < 14 or struct.unpack_from("!H", frame, 12)[0] != ETH_P_IP:
            continue
        ip = parse_ipv4(frame[14:])
        if ip is not None:
            yield Packet(sec + frac / (1e9 if nano else 1e6), ip)


class Capture:
    """tcpdump on `iface` (default: the host's first interface) inside `host`'s namespace.

    `direction` "in"/"out"/"inout" (tcpdump -Q). The snap length keeps headers only
    unless `snaplen` says otherwise. Ended by PID (SIGINT, so the file is complete).
    """

    def __init__(self, host: Host, bpf: str, *, iface: str | None = None, direction: str = "inout",
                 snaplen: int = 128, buffer_kib: int = 2048, path: str | Path | None = None) -> None:
        self.host = host
        self.bpf = bpf
        self.iface = iface or host.ifname
        self.direction = direction
        self.snaplen = snaplen
        self.buffer_kib = buffer_kib
        self._tmp = None
        if path is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="lbB-pcap-")
            path = Path(self._tmp.name) / "capture.pcap"
        self.path = Path(path)
        self.proc: subprocess.Popen[bytes] | None = None
        self.stderr = ""

    def start(self, timeout: float = 10.0) -> Capture:
        self.proc = self.host.popen(
            ["timeout", "-s", "INT", str(int(MAX_CAPTURE_S)),
             "tcpdump", "-i", self.iface, "-Q", self.direction, "-n", "-s", str(self.snaplen),
             "-B", str(self.buffer_kib),
             "-U", "--immediate-mode", "-w", str(self.path), self.bpf],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        assert self.proc.stderr is not None
        deadline = time.monotonic() + timeout
        seen = b""
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stderr], [], [], 0.1)
            if ready:
                line = self.proc.stderr.readline()
                seen += line
                if b"listening on" in line:
                    return self
                if not line:
                    break
        self.host.topo.stop_process(self.proc)
        raise RuntimeError(f"tcpdump in {self.host.name} did not start: {seen.decode(errors='replace')}")

    def stop(self, settle: float = 0.2) -> list[Packet]:
        """Stop tcpdump (after `settle` seconds for packets in flight); return what it captured."""
        if self.proc is not None and self.proc.poll() is None:
            time.sleep(settle)
            # `timeout` forwards SIGINT to tcpdump, which flushes the file and exits.
            self.host.topo.stop_process(self.proc, signal.SIGINT, timeout=5.0)
        if self.proc is not None and self.proc.stderr is not None:
            self.stderr = self.proc.stderr.read().decode(errors="replace")
            self.proc.stderr.close()
        return list(read_pcap(self.path)) if self.path.exists() else []

    def dropped(self) -> int | None:
        """Packets tcpdump reports "dropped by kernel" (after stop), or None if unknown."""
        import re

        m = re.search(r"(\d+) packets? dropped by kernel", self.stderr)
        return int(m.group(1)) if m else None

    def text(self, limit: int = 60) -> str:
        """The capture as tcpdump prints it (first `limit` packets), for failure messages."""
        if not self.path.exists():
            return "(no capture file)"
        out = subprocess.run(["tcpdump", "-r", str(self.path), "-n", "-tt", "-v", "-c", str(limit)],
                             capture_output=True, text=True, timeout=30)
        return out.stdout

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.host.topo.stop_process(self.proc, signal.SIGINT, timeout=5.0)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> Capture:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
