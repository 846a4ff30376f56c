"""A spoofed-SYN flood against a full connection table, with real clients counted (issue 15 item 4).

The flood is a child process in the client's namespace sending SYNs from addresses that do not
exist in its own subnet (.150-.249, as tests/netns/test_synproxy.py): whatever answers them goes
nowhere outside our namespaces. Each (source, port) pair is used once, the packets are paced at
`pps` and the whole is bounded in count and time. Meanwhile, and right after, real clients make
fresh HTTP requests through the VIP; the scenario counts how many were served.

    python -m lb.testbed.flood VIP PORT PPS SECONDS SUBNET_PREFIX   (the child; prints "sent elapsed")
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lb.pyengine.csum import internet_checksum
from lb.testbed import client
from lb.testbed.topology import Host

REPO = Path(__file__).resolve().parents[2]
SPOOF_FIRST, SPOOF_ADDRS = 150, 100  # sources .150 .. .249 of the client's /24: no such hosts
FIRST_SPORT = 1024



def syn_packet(src: str, dst: str, sport: int, dport: int, seq: int) -> bytes:
    """An IPv4 TCP SYN with correct checksums (no options)."""
    s, d = socket.inet_aton(src), socket.inet_aton(dst)
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, 0, 5 << 4, 0x02, 64240, 0, 0)
    tcp = tcp[:16] + struct.pack("!H", internet_checksum(s + d + struct.pack("!BBH", 0, 6, len(tcp)) + tcp)) + tcp[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, 0x4000, 64, 6, 0, s, d)
    ip = ip[:10] + struct.pack("!H", internet_checksum(ip)) + ip[12:]
    return ip + tcp


def flood_main(argv: list[str]) -> int:
    vip, port, pps, seconds, prefix = argv[0], int(argv[1]), float(argv[2]), float(argv[3]), argv[4]
    count = int(pps * seconds)
    packets = [syn_packet(f"{prefix}.{SPOOF_FIRST + i % SPOOF_ADDRS}", vip, FIRST_SPORT + i // SPOOF_ADDRS, port,
                          (i * 2654435761) & 0xFFFFFFFF) for i in range(count)]
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    t0 = time.monotonic()
    sent = 0
    while sent < count and time.monotonic() - t0 < seconds + 2.0:  # bounded in count and in time
        for _ in range(min(10, count - sent)):
            s.sendto(packets[sent], (vip, 0))
            sent += 1
        ahead = sent / pps - (time.monotonic() - t0)
        if ahead > 0:
            time.sleep(ahead)
    sys.stdout.write(f"{sent} {time.monotonic() - t0:.3f}\n")
    return 0


@dataclass
class FloodResult:
    """What a flood against a full table did to real clients (counts, not times)."""

    flood_sent: int = 0
    flood_seconds: float = 0.0
    table_full_before_clients: bool = False
    during: list[client.Reply] = field(default_factory=list)
    after: list[client.Reply] = field(default_factory=list)
    table: dict[str, Any] = field(default_factory=dict)  # lbd's conn_stats at the end of the flood
    reasons: dict[str, int] = field(default_factory=dict)  # lbd's reason counters, delta over the flood

    @property
    def during_ok(self) -> int:
        return sum(1 for r in self.during if r.ok)

    @property
    def after_ok(self) -> int:
        return sum(1 for r in self.after if r.ok)

    def figures(self) -> dict[str, Any]:
        return {"flood_sent": self.flood_sent, "flood_pps": round(self.flood_sent / max(self.flood_seconds, 1e-6)),
                "table_full_before_clients": self.table_full_before_clients,
                "during": len(self.during), "during_ok": self.during_ok,
                "after": len(self.after), "after_ok": self.after_ok,
                "early_drops": self.table.get("early_drops"), "table_entries": self.table.get("entries"),
                "table_max": self.table.get("max"), "table_full_refused": self.reasons.get("table_full", 0)}


def run(flooder: Host, netns: str, vip: str, port: int, counters: Callable[[], dict[str, Any]], *,
        pps: float = 3000.0, seconds: float = 8.0, during: int = 30, after: int = 10,
        timeout: float = 2.0) -> FloodResult:
    """Flood `vip`:`port` from `flooder` for `seconds`; once lbd's table is full, `during` fresh GETs
    from `netns` spread over the rest of the flood, then `after` more as soon as it has ended.
    `counters()` returns lbd's `counters` answer (with its "table" figures)."""
    prefix = flooder.addr.rsplit(".", 1)[0]
    before = counters()
    proc = flooder.popen([sys.executable, "-m", "lb.testbed.flood", vip, str(port), str(pps), str(seconds), prefix],
                         stdout=subprocess.PIPE, env=dict(os.environ, PYTHONPATH=str(REPO)))
    res = FloodResult()
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != b"ready":
            raise RuntimeError("the flood process did not start")
        t0 = time.monotonic()
        # Until the table is full (3 kpps fill 5,000 entries in under 2 s), bounded by the flood.
        while time.monotonic() - t0 < seconds / 2:
            table = counters().get("table", {})
            if table and table.get("entries", 0) >= table.get("max", 1):
                res.table_full_before_clients = True
                break
            time.sleep(0.05)
        left = seconds - (time.monotonic() - t0) - timeout
        interval = max(left, 0.5) / during
        for _, _, reply in client.paced_gets(netns, vip, port, seconds=max(left, 0.5), interval=interval,
                                             max_requests=during, timeout=timeout):
            res.during.append(reply)
        res.table = counters().get("table", {})
        out, _ = proc.communicate(timeout=seconds + 30)
        sent, elapsed = out.decode().split()[-2:]
        res.flood_sent, res.flood_seconds = int(sent), float(elapsed)
        res.after = [client.get_once(netns, vip, port, timeout=timeout) for _ in range(after)]
        end = counters()
        res.reasons = {k: end["reasons"][k] - before["reasons"].get(k, 0) for k in end["reasons"]}
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    return res


if __name__ == "__main__":
    sys.exit(flood_main(sys.argv[1:]))
