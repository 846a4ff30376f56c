"""How long one lb_expire holds the lock per entry it releases: N UDP entries created within 50 ms,
released by one lb_expire (C engine). From the repository's root:
    .venv/bin/python bench/results/runs/2026-12-06-idle-wakeups/expire_cost.py
"""

from __future__ import annotations

import struct
import sys
import time

sys.path.insert(0, "tests")
import packet_table as table  # noqa: E402
from lb.fastpath import CEngine  # noqa: E402
from lb.model import DestSpec, ServiceKey, ServiceSpec  # noqa: E402


def ip_csum(header: bytes) -> int:
    s = sum(struct.unpack("!10H", header))
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def main() -> None:
    template = bytearray(table.udp())
    for n in (10_000, 100_000, 400_000):
        e = CEngine(conn_max=1 << 20)
        key = ServiceKey(17, table.VIP, 53)
        e.add_service(ServiceSpec(key, "rr"))
        e.add_dest(key, DestSpec(table.RS1, 53))
        e.set_fwd(key, table.RS1, 53, table.fwd_state(table.DestSetup(table.RS1, 53)))
        for i in range(n):
            p = bytearray(template)
            p[12:16] = struct.pack("!I", 0x0A000000 + (i >> 14))  # 10.x.y.z sources
            p[20:22] = struct.pack("!H", 1024 + (i & 0x3FFF))
            p[26:28] = b"\0\0"  # no UDP checksum
            p[10:12] = b"\0\0"
            p[10:12] = struct.pack("!H", ip_csum(bytes(p[:20])))
            action = e.process(bytes(p), 1000 + (i * 50) // n)
            assert action.reason.name == "FORWARDED", action
        assert e.conn_count() == n
        t0 = time.perf_counter()
        freed = e.expire(1000 + 300_000 + 100)
        t1 = time.perf_counter()
        print(f"{n} entries released by one lb_expire: {freed} in {(t1 - t0) * 1e3:.1f} ms "
              f"= {(t1 - t0) / max(freed, 1) * 1e9:.0f} ns each")


if __name__ == "__main__":
    main()
