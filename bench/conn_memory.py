"""Memory per connection entry with one million entries (issue 8: target <= 128 bytes).

Fills a C engine's table with N live DR connections (one SYN each, distinct
clients) and reports the growth of the process's resident memory divided by N,
plus what the table does when it is full (new connections refused and counted,
established ones untouched).

    python -m bench.conn_memory [--entries 1000000]
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import sys
import time
from typing import Any

from lb.engine import FwdState, Reason, Verdict
from lb.fastpath import CEngine
from lb.model import DestSpec, ServiceKey, ServiceSpec

TARGET_BYTES = 128


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def syn(src: int, sport: int) -> bytes:
    """A minimal IPv4+TCP SYN to 10.0.0.100:80 from src:sport (checksums as the core checks them)."""
    ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, 0, 0x4000, 64, 6, 0, src.to_bytes(4, "big"),
                               bytes([10, 0, 0, 100])))
    s = sum(struct.unpack("!10H", ip))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    ip[10:12] = struct.pack("!H", ~s & 0xFFFF)
    tcp = struct.pack("!HHIIBBHHH", sport, 80, 1, 0, 0x50, 0x02, 65535, 0, 0)
    return bytes(ip) + tcp


def run(entries: int) -> dict[str, Any]:
    base = rss_bytes()
    engine = CEngine(conn_max=entries, hash_buckets=1 << (entries - 1).bit_length() >> 2 or 1)
    key = ServiceKey(6, "10.0.0.100", 80)
    engine.add_service(ServiceSpec(key, "rr"))
    for i in range(1, 4):
        engine.add_dest(key, DestSpec(f"10.0.0.1{i}", 80))
        engine.set_fwd(key, f"10.0.0.1{i}", 80, FwdState(ifindex=2, dst_mac=bytes([2, 0, 0, 0, 0, i]),
                                                         src_mac=b"\x02" * 6))
    empty = rss_bytes()
    t0 = time.monotonic()
    now = 1000
    for n in range(entries):
        src = 0x0B000000 + n // 50000  # 11.x.y.z: 50,000 source ports per address
        a = engine.process(syn(src, 10000 + n % 50000), now)
        if a.verdict != Verdict.XMIT_L2:
            raise RuntimeError(f"entry {n}: {a}")
    fill_s = time.monotonic() - t0
    full = rss_bytes()
    live = engine.conn_count()
    refused = engine.process(syn(0x0C000001, 1234), now)
    return {
        "entries": live,
        "rss_before_engine_mib": round(base / 2**20, 1),
        "rss_empty_table_mib": round(empty / 2**20, 1),
        "rss_full_table_mib": round(full / 2**20, 1),
        "bytes_per_entry": round((full - base) / live, 1),
        "target_bytes": TARGET_BYTES,
        "fill_seconds": round(fill_s, 1),
        "when_full": {"verdict": refused.verdict.name, "reason": refused.reason.name,
                      "table_full_counter": engine.counters()["table_full"],
                      "entries_after": engine.conn_count()},
        "note": "bytes_per_entry counts the whole table (64-byte entry, hash bucket share, expiry heap "
                "key and position) divided by the live entries",
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--entries", type=int, default=1_000_000)
    args = p.parse_args(argv)
    result = run(args.entries)
    print(json.dumps(result, indent=2))
    ok = (result["bytes_per_entry"] <= TARGET_BYTES and result["when_full"]["reason"] == Reason.TABLE_FULL.name)
    print(f"memory per entry: {result['bytes_per_entry']} bytes (target <= {TARGET_BYTES}): "
          f"{'met' if ok else 'MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
