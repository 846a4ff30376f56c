"""The sync master's periodic cost against the table size (issue 18 item 4): CPU time of one tick
of lb/sync's Selector with N idle established connections, between bulk passes (what changed
only: the core's sync change marks) and averaged over a bulk period (the paced pass included),
next to what a walk of the whole table costs (the way the master found changes before).

    python -m bench.sync_cost [--sizes 10000 200000] [--ticks 30]

No root, no sockets: the engine and the Selector in this process. Figures, not a test.
"""

from __future__ import annotations

import argparse
import time

from lb.director import Director
from lb.engine import FwdState
from lb.fastpath import CEngine
from lb.sync import codec, manager, records

VIP = "10.0.0.100"
SVC = {"proto": "tcp", "addr": VIP, "port": 80}


def _director(conn_max: int) -> Director:
    d = Director(CEngine(conn_max=conn_max), rules=None, resolver=None)
    d.handle("add_service", {**SVC, "sched": "rr"})
    d.handle("add_dest", {"service": SVC, "dest": {"addr": "10.0.0.11", "port": 80, "fwd": "route", "weight": 1}})
    d.engine.set_fwd(d.state.services[next(iter(d.state.services))].spec.key, "10.0.0.11", 80,
                     FwdState(ifindex=5, dst_mac=bytes(6), src_mac=bytes(6)))
    return d


def _fill(d: Director, n: int, now_ms: int) -> None:
    blobs = []
    for i in range(n):
        conn = codec.SyncConn(6, codec.F_DROUTE, 1, f"10.{64 + i // 65536}.{i // 256 % 256}.{i % 256}", 1024 + i % 60000,
                              VIP, 80, "10.0.0.11", 80, 0, 900)
        blobs.append(records.to_engine(conn, lambda _p, _s: 900))
    d.engine.restore_connections_raw(b"".join(blobs), now_ms)


def measure(n: int, ticks: int) -> dict[str, float]:
    d = _director(max(2 * n, 1024))
    _fill(d, n, 0)
    out: dict[str, float] = {"entries": d.engine.conn_count()}
    changes_only = manager.Selector(d, manager.Counters(), bulk_period_ms=0)
    changes_only.start()
    now = 1000
    while changes_only.pending(now) or changes_only._bulk_cursor is not None:  # the first pass
        now += 1000
    t0 = time.process_time()
    for _ in range(ticks):
        now += 1000
        changes_only.pending(now)
    out["tick_changes_only_ms"] = (time.process_time() - t0) / ticks * 1000
    paced = manager.Selector(d, manager.Counters())
    paced.start()
    t0 = time.process_time()
    for _ in range(manager.BULK_PERIOD_S):
        now += 1000
        paced.pending(now)
    out["tick_with_bulk_avg_ms"] = (time.process_time() - t0) / manager.BULK_PERIOD_S * 1000
    t0 = time.process_time()
    for _ in range(3):
        for chunk in d.engine.dump_connections_chunks(now) or ():
            for _entry in records.entries(chunk):
                pass
    out["table_walk_ms"] = (time.process_time() - t0) / 3 * 1000
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.sync_cost", description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 200_000])
    ap.add_argument("--ticks", type=int, default=30)
    args = ap.parse_args(argv)
    print("entries  tick (changes only)  tick (bulk pass, avg over 30 s)  walk of the table (old way, lower bound)")
    for n in args.sizes:
        r = measure(n, args.ticks)
        print(f"{int(r['entries']):7d}  {r['tick_changes_only_ms']:10.3f} ms        {r['tick_with_bulk_avg_ms']:10.1f} ms"
              f"                    {r['table_walk_ms']:10.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
