"""What NAT traffic itself costs with each way lbd takes the replies (lbd --nat-replies).

    python -m bench.nat_replies [--repeats 5] [--duration 5] [--connections 32] [--out FILE.json]

`forward`: the replies queued from lbd's forward chain (NFQUEUE), `ingress`: handed over by the
netdev chain on the real servers' interface to lbd's veth pair and read by natrx
(lb/natingress.py). Topology lb.testbed.topology.fullnat_spec(1): client - director - rs1 (the
real server routes through the director); one NAT service VIP:80 -> rs1:80, rr, and
bench/native/httpd.c on rs1. Per repetition, the modes interleaved (each its own lbd, started
fresh): wrk -t1 -c C for D seconds through the VIP, keep-alive (`ka`: requests/s) and one request
per connection (`close`: connections/s). CPUs as bench/http.py: wrk and httpd on the generator CPU,
lbd and the director's receive work (RPS) on the DUT CPU. Reported: the medians per mode and the
ratio ingress / forward (higher is better for ingress); errors are counted, never hidden.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from bench import common
from bench.common import Lbd, LbdError, log
from bench.http import _setup, _wrk
from lb.testbed.topology import Topology, fullnat_spec

PORT = 80
MODES = ("forward", "ingress")


def run(args: argparse.Namespace) -> dict[str, Any]:
    gen_cpu, dut_cpu = common.cpu_layout(args.gen_cpu, args.dut_cpu)
    out: dict[str, Any] = {
        "part": "nat_replies", "started": time.strftime("%Y-%m-%d %H:%M:%S"), "commit": common.git_commit(),
        "machine": common.machine_info(),
        "config": {"repeats": args.repeats, "duration_s": args.duration, "connections": args.connections,
                   "gen_cpu": gen_cpu, "dut_cpu": dut_cpu, "command": "python -m bench.nat_replies " + " ".join(args.argv)},
        "trials": [],
    }
    with Topology(fullnat_spec(1)) as topo:
        out["config"]["rps"] = _setup(topo, gen_cpu, dut_cpu)
        # --nat-replies forward takes the replies in the forward hook: the director must route them
        # (ingress works either way; the same setting for both keeps the comparison fair)
        topo.director.exec(["sysctl", "-qw", "net.ipv4.ip_forward=1"])
        rs = topo.reals[0]
        for rep in range(args.repeats):
            for mode in MODES if rep % 2 == 0 else tuple(reversed(MODES)):
                lbd = Lbd(topo.director, "c", cpu=dut_cpu, extra=["--nat-replies", mode])
                try:
                    lbd.start()
                    svc = {"proto": "tcp", "addr": topo.vip, "port": PORT}
                    lbd.request("add_service", {**svc, "sched": "rr"})
                    lbd.request("add_dest", {"service": svc, "dest": {"addr": rs.addr, "port": PORT, "fwd": "masq",
                                                                     "weight": 1}})
                    lbd.wait_resolved()
                    for kind in ("ka", "close"):
                        r = _wrk(topo, topo.vip, args.duration, args.connections, kind == "close", None, gen_cpu, 0)
                        counters = lbd.request("counters")
                        out["trials"].append({"rep": rep, "mode": mode, "kind": kind, "rate_rps": r["rate_rps"],
                                              "errors": r["errors_total"], "p99_us": r["lat_us"]["p99"],
                                              "natrx": counters.get("natrx", {})})
                        log(f"nat_replies: rep {rep + 1} {mode:7} {kind:5} {r['rate_rps']:8.0f}/s "
                            f"p99 {r['lat_us']['p99']} us errors {r['errors_total']}")
                except LbdError as exc:
                    out.setdefault("errors", []).append(f"{mode} rep {rep}: {exc}")
                    log(f"nat_replies: {mode} rep {rep}: {exc}")
                finally:
                    lbd.stop()
                    lbd.cleanup()
    out["summary"] = summarize(out["trials"])
    return out


def summarize(trials: list[dict[str, Any]]) -> dict[str, Any]:
    s: dict[str, Any] = {}
    for kind in ("ka", "close"):
        med = {m: statistics.median([t["rate_rps"] for t in trials if t["mode"] == m and t["kind"] == kind] or [0])
               for m in MODES}
        s[kind] = {**{m: round(v, 1) for m, v in med.items()},
                   "ratio": round(med["ingress"] / med["forward"], 3) if med["forward"] else None,
                   "errors": {m: sum(t["errors"] for t in trials if t["mode"] == m and t["kind"] == kind) for m in MODES}}
    return s


def report(data: dict[str, Any]) -> list[str]:
    c = data["config"]
    lines = [f"NAT through the director, {c['repeats']} repetitions x {c['duration_s']} s, wrk -c{c['connections']}, "
             f"DUT CPU {c['dut_cpu']}, commit {data['commit']}", "",
             "| wrk | --nat-replies forward | --nat-replies ingress | ingress / forward | errors (fwd / ingress) |",
             "|---|---:|---:|---:|---|"]
    for kind, name in (("ka", "keep-alive requests/s"), ("close", "connections/s")):
        v = data["summary"][kind]
        lines.append(f"| {name} | {v['forward']:,.0f} | {v['ingress']:,.0f} | {v['ratio']:.2f}x | "
                     f"{v['errors']['forward']} / {v['errors']['ingress']} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.nat_replies", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--out", type=Path, default=None, help="write the JSON here")
    ap.add_argument("--from-json", type=Path, default=None, metavar="FILE", help="measure nothing: report FILE")
    common.add_cpu_args(ap)
    args = ap.parse_args(argv)
    args.argv = list(argv if argv is not None else sys.argv[1:])
    data = json.loads(args.from_json.read_text()) if args.from_json else run(args)
    if args.out:
        args.out.write_text(json.dumps(data, indent=1))
    print("\n".join(report(data)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
