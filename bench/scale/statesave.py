"""Saving lbd's state with 1M / 4M entries: a whole snapshot vs what changed (issue 15 item 3).

In-process, no namespaces: a C engine under a Director (as lbd has them) is filled with N idle UDP
entries and 1024 established TCP flows through its packet path, then lb/statefile.py's StateSaver
(what lbd runs every 2 s) saves: first a whole snapshot (what every save was before issue 15),
then, after 1024 flows changed (new connections), an incremental save of only those, then a save
with nothing changed. CPU seconds (this process) and bytes written per save; "share of a core" is
that CPU time every 2 s.
"""

from __future__ import annotations

import argparse
import socket
import struct
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import log

TITLE = "Saving state (lb/statefile.py, in-process)"
VIP = "10.0.0.100"
SAVE_EVERY_S = 2.0
CHANGED = 1024


def add_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--state-sizes", default=None, help="entries, comma-separated (default 1000000,4000000; "
                    "quick 200000)")


def finish_args(args: argparse.Namespace) -> None:
    if args.state_sizes is None:
        args.state_sizes = "200000" if args.quick else "1000000,4000000"


def _ip_header(src: int, dst: int, proto: int, length: int) -> bytearray:
    h = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, length, 0, 0x4000, 64, proto, 0,
                              src.to_bytes(4, "big"), dst.to_bytes(4, "big")))
    s = sum(struct.unpack("!10H", h))
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    struct.pack_into("!H", h, 10, ~s & 0xFFFF)
    return h


def udp(src: int, sport: int, dst: int, dport: int) -> bytes:
    return bytes(_ip_header(src, dst, 17, 28)) + struct.pack("!HHHH", sport, dport, 8, 0)


def tcp(src: int, sport: int, dst: int, dport: int, flags: int) -> bytes:
    return bytes(_ip_header(src, dst, 6, 40)) + struct.pack("!HHIIBBHHH", sport, dport, 1000, 1 if flags & 0x10 else 0,
                                                           0x50, flags, 512, 0, 0)


def _director(conn_max: int) -> Any:
    from lb.director import Director  # noqa: PLC0415
    from lb.engine import FwdState  # noqa: PLC0415
    from lb.fastpath import CEngine  # noqa: PLC0415
    from lb.model import ServiceKey  # noqa: PLC0415

    d = Director(CEngine(conn_max=conn_max), rules=None, resolver=None)
    for proto in ("tcp", "udp"):
        svc = {"proto": proto, "addr": VIP, "port": 80}
        d.handle("add_service", {**svc, "sched": "rr"})
        d.handle("add_dest", {"service": svc, "dest": {"addr": "10.0.0.11", "port": 80, "fwd": "route", "weight": 1,
                                                       "u_threshold": 0, "l_threshold": 0}})
        d.engine.set_fwd(ServiceKey(6 if proto == "tcp" else 17, VIP, 80), "10.0.0.11", 80,
                         FwdState(ifindex=2, dst_mac=b"\x02\0\0\0\0\x0b", src_mac=b"\x02" * 6))
    d.handle("set_timeout", {"tcp": 0, "tcpfin": 0, "udp": 3600})
    return d


def _timed(fn: Any) -> tuple[Any, float, float]:
    c0, w0 = time.process_time(), time.perf_counter()
    r = fn()
    return r, time.process_time() - c0, time.perf_counter() - w0


def run_size(n: int, work: Path) -> dict[str, Any]:
    from lb import statefile  # noqa: PLC0415

    vip = int.from_bytes(socket.inet_aton(VIP), "big")
    d = _director(n + 4 * CHANGED)
    engine = d.engine
    now = int(time.monotonic() * 1000)
    t0 = time.monotonic()
    for i in range(CHANGED):  # the working set: established flows
        src = 0xC0000000 + i // 60000
        engine.process(tcp(src, 1024 + i % 60000, vip, 80, 0x02), now)
        engine.process(tcp(src, 1024 + i % 60000, vip, 80, 0x10), now)
    for i in range(n - CHANGED):
        engine.process(udp(0x0B000000 + i // 60000, 1024 + i % 60000, vip, 80), now)
    fill_s = time.monotonic() - t0
    entries = engine.conn_count()
    path = work / f"lbd-q0-{n}.state"
    saver = statefile.StateSaver(d, path)
    full, full_cpu, full_wall = _timed(saver.save)
    full_bytes = path.stat().st_size
    for i in range(CHANGED):  # what changes between two saves: new connections
        engine.process(tcp(0xC0100000 + i // 60000, 1024 + i % 60000, vip, 80, 0x02), now + 1)
    journal = statefile.journal_path(path)
    before = journal.stat().st_size
    inc, inc_cpu, inc_wall = _timed(saver.save)
    inc_bytes = journal.stat().st_size - before
    same, same_cpu, same_wall = _timed(saver.save)
    path.unlink(missing_ok=True)
    journal.unlink(missing_ok=True)
    out = {"entries": entries, "fill_s": round(fill_s, 1),
           "full": {"summary": full, "cpu_s": full_cpu, "wall_s": full_wall, "bytes": full_bytes},
           "incremental": {"summary": inc, "changed": CHANGED, "cpu_s": inc_cpu, "wall_s": inc_wall, "bytes": inc_bytes},
           "unchanged": {"summary": same, "cpu_s": same_cpu, "wall_s": same_wall, "bytes": 0}}
    log(f"scale statesave: {entries:,} entries: whole snapshot {full_cpu:.2f} s CPU {full_bytes / 1e6:.0f} MB; "
        f"{CHANGED} changes {inc_cpu * 1000:.1f} ms {inc_bytes / 1e3:.0f} kB; unchanged {same_cpu * 1000:.2f} ms")
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    points = []
    with tempfile.TemporaryDirectory(prefix="lbB-scale-state-") as tmpd:
        for n in (int(s) for s in args.state_sizes.split(",")):
            points.append(run_size(n, Path(tmpd)))
    return {"points": points, "save_every_s": SAVE_EVERY_S}


def report(data: dict[str, Any], targets: list[list[str]]) -> list[str]:
    lines = [f"### {TITLE}", "",
             "StateSaver.save() as lbd runs it every 2 s: the first save writes the whole table; after "
             f"{CHANGED} new connections the next writes only their slots to the journal; then one with nothing "
             "changed. CPU of this process per save; share of a core = that every 2 s.", "",
             "| entries | save | CPU per save | bytes written | share of a core at one save per 2 s |",
             "|---|---|---|---|---|"]
    for p in data["points"]:
        for key, label in (("full", "whole snapshot (every save before issue 15)"),
                           ("incremental", f"{CHANGED} changed entries"), ("unchanged", "nothing changed")):
            s = p[key]
            lines.append(f"| {p['entries']:,} | {label} | {s['cpu_s'] * 1000:.1f} ms | {s['bytes']:,} | "
                         f"{100 * s['cpu_s'] / data['save_every_s']:.2f} % |")
    lines.append("")
    for p in data["points"]:
        if p["entries"] >= 1_000_000:
            full, inc = p["full"]["cpu_s"], p["incremental"]["cpu_s"]
            targets.append([f"state saves at {p['entries']:,} entries cost what changed, not the table",
                            f"{CHANGED} changes: {inc * 1000:.1f} ms and {p['incremental']['bytes'] / 1e3:.0f} kB per "
                            f"save vs {full * 1000:.0f} ms and {p['full']['bytes'] / 1e6:.0f} MB for the whole table "
                            f"({full / max(inc, 1e-9):.0f}x)", "met" if inc * 20 < full else "MISSED"])
    return lines
