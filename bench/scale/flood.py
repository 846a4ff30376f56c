"""A spoofed-SYN flood on a full table: real clients served during and right after it (issue 15 item 4).

The scenario of tests/netns/test_table_pressure.py, measured rather than asserted: lbd (C engine)
with --conn-max 5000 balances two DR real servers running lb.testbed.httpd; lb.testbed.flood sends
3,000 spoofed SYNs per second (sources .150-.249 of the client's subnet, which do not exist) for
the flood's length, which fills the table within two seconds; once it is full, real clients make
fresh requests spread over the rest of the flood, then more as soon as it has ended (each with a
2 s timeout: room for one SYN retransmission). Counts, not times.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import common
from bench.common import Lbd, LbdError, log
from lb.testbed import client, flood
from lb.testbed.topology import Topology, dr_spec

TITLE = "Spoofed-SYN flood on a full table (namespaces)"
NEEDS_ROOT = True
PORT = 80
CONN_MAX = 5000
FLOOD_PPS = 3000.0
TARGET_DURING = 0.9  # share of real clients served during the flood
TARGET_AFTER = 1.0  # share served right after it (each within its 2 s timeout)


def add_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--flood-seconds", type=float, default=None, help="flood length (default 15; quick 8)")
    ap.add_argument("--flood-clients", type=int, default=None, help="real clients' requests during the flood "
                    "(default 60; quick 30); a third as many right after it")


def finish_args(args: argparse.Namespace) -> None:
    if args.flood_seconds is None:
        args.flood_seconds = 8.0 if args.quick else 15.0
    if args.flood_clients is None:
        args.flood_clients = 30 if args.quick else 60


def _httpds(topo: Topology, logdir: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(common.REPO))
    for rs in topo.reals:
        with open(logdir / f"{rs.name}.log", "w") as logf:
            rs.popen([sys.executable, "-m", "lb.testbed.httpd", "--name", rs.name, "--port", str(PORT)],
                     stdout=logf, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 15.0
    for rs in topo.reals:  # each answers on its own address first
        while not client.get_once(topo.client.netns, rs.addr, PORT, timeout=2.0).ok:
            if time.monotonic() > deadline:
                raise LbdError(f"httpd on {rs.name} not answering: {(logdir / f'{rs.name}.log').read_text()[-800:]}")
            time.sleep(0.1)


def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="lbB-scale-flood-") as tmpd, Topology(dr_spec(2)) as topo:
        _httpds(topo, Path(tmpd))
        lbd = Lbd(topo.director, "c", conn_max=CONN_MAX)
        try:
            lbd.start()
            svc = {"proto": "tcp", "addr": topo.vip, "port": PORT}
            lbd.request("add_service", {**svc, "sched": "rr"})
            for rs in topo.reals:
                lbd.request("add_dest", {"service": svc, "dest": {"addr": rs.addr, "port": PORT, "fwd": "route",
                                                                  "weight": 1}})
            lbd.wait_resolved()
            res = flood.run(topo.client, topo.client.netns, topo.vip, PORT, lambda: dict(lbd.request("counters")),
                            pps=FLOOD_PPS, seconds=args.flood_seconds, during=args.flood_clients,
                            after=max(1, args.flood_clients // 3), timeout=2.0)
        finally:
            lbd.stop()
            common.flush_iptables(topo.director)
            lbd.cleanup()
    figures = res.figures()
    errors = [r.error for r in (*res.during, *res.after) if not r.ok][:5]
    log(f"scale flood: {figures['during_ok']}/{figures['during']} served during, {figures['after_ok']}/"
        f"{figures['after']} after; {figures['early_drops']} early drops")
    return {"conn_max": CONN_MAX, "flood_pps_target": FLOOD_PPS, "flood_seconds": args.flood_seconds,
            "figures": figures, "errors": errors}


def report(data: dict[str, Any], targets: list[list[str]]) -> list[str]:
    f = data["figures"]
    during = f["during_ok"] / max(f["during"], 1)
    after = f["after_ok"] / max(f["after"], 1)
    full = "full" if f["table_full_before_clients"] else "NOT full (the flood never filled it: no verdict)"
    lines = [f"### {TITLE}", "",
             f"lbd --conn-max {data['conn_max']:,}, DR to two HTTP servers; {f['flood_sent']:,} spoofed SYNs at "
             f"{f['flood_pps']:,} pps for {data['flood_seconds']:g} s; the table was {full} when the clients "
             "started. Before issue 15 a full table refused every new client until the spoofed entries' 60 s "
             "SYN_RECV timeout (29 % served in the 15 s after such a burst).", "",
             "| real clients | served | share |", "|---|---|---|",
             f"| during the flood | {f['during_ok']} of {f['during']} | {100 * during:.0f} % |",
             f"| right after it (2 s timeout each) | {f['after_ok']} of {f['after']} | {100 * after:.0f} % |", "",
             f"Table at the end of the flood: {f['table_entries']:,} of {f['table_max']:,} entries; "
             f"{f['early_drops']:,} early drops; {f['table_full_refused']:,} packets refused as table_full.", ""]
    if data.get("errors"):
        lines += ["Failed requests (first five): " + "; ".join(f"`{e}`" for e in data["errors"]), ""]
    if f["table_full_before_clients"]:
        targets.append([f"SYN flood ({FLOOD_PPS:,.0f} pps) on a full table (--conn-max {data['conn_max']:,}): "
                        f">= {100 * TARGET_DURING:.0f} % of real clients served during it",
                        f"{f['during_ok']}/{f['during']} ({100 * during:.0f} %)",
                        "met" if during >= TARGET_DURING else "MISSED"])
        targets.append(["SYN flood on a full table: every real client served right after it",
                        f"{f['after_ok']}/{f['after']}", "met" if after >= TARGET_AFTER else "MISSED"])
    return lines
