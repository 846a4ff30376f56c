"""Connections/s, requests/s and added latency of real HTTP through the VIP, with wrk.

    python -m bench http [--quick] [--repeats 3] [--duration 4] [--connections 32]

Topology: lb.testbed.topology.dr_spec(1): client, director (VIP) and rs1 on one segment; rs1
holds the VIP on lo (the DR real server) and runs bench/native/httpd.c (epoll, keep-alive).
The director runs `lbd` (C fast path), one DR service VIP:80 -> rs1:80, rr.

Per repetition, interleaved, for keep-alive (`ka`) and one-request-per-connection (`close`,
"Connection: close": the rate is connections/s):
1. maximum: wrk -t1 -c C for D seconds, direct to rs1 and through the VIP;
2. latency at 50% and 90% of the maximum measured through the VIP: wrk paced by
   bench/wrk_report.lua (Poisson arrivals at the target rate, see the script), direct and via
   the VIP at the same rate. Added latency = VIP - direct, per percentile (p50, p99, p99.9).

wrk's latency is from the request's write to the end of the response: in `close` mode the TCP
handshake (which crosses the director too) is not inside it; the connections/s figure is where
connection set-up cost shows.

CPUs: wrk and httpd on the generator CPU (0), lbd on the DUT CPU (1), RPS steers the
director's receive processing to CPU 1 (see bench/pps.py).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from typing import Any

from bench import common
from bench.common import Lbd, LbdError, log
from lb.testbed.topology import Topology, dr_spec

PORT = 80
LUA = common.BENCH / "wrk_report.lua"


def _wrk(topo: Topology, target: str, duration: float, conns: int, close: bool, rate: float | None,
         gen_cpu: int | None, nice: int, port: int = PORT) -> dict[str, Any]:
    env = dict(os.environ, LB_CLOSE="1" if close else "0",
               LB_INTERVAL_MS=f"{conns / rate * 1000:.4f}" if rate else "0")
    argv = ["wrk", "-t1", f"-c{conns}", f"-d{max(1, int(round(duration)))}s", "--timeout", "5s",
            "-s", str(LUA), f"http://{target}:{port}/"]
    if gen_cpu is not None:
        argv = ["taskset", "-c", str(gen_cpu), *argv]
    if nice:
        argv = ["nice", "-n", str(nice), *argv]
    proc = subprocess.run(["ip", "netns", "exec", topo.client.netns, *argv], capture_output=True, text=True,
                          timeout=duration + 30, env=env)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk gave no result (exit {proc.returncode}): {proc.stdout[-800:]} {proc.stderr[-800:]}")
    res = json.loads(line[5:])
    res["rate_rps"] = res["requests"] / (res["duration_us"] / 1e6)
    res["target_rps"] = rate
    res["errors_total"] = sum(res["errors"].values())
    return res


def _setup(topo: Topology, gen_cpu: int | None, dut_cpu: int | None) -> dict[str, str]:
    c, d, rs = topo.client, topo.director, topo.reals[0]
    c.sysctl({"net.ipv4.ip_local_port_range": "1024 65535", "net.ipv4.tcp_tw_reuse": 1})
    rs.sysctl({"net.core.somaxconn": 4096, "net.ipv4.tcp_max_syn_backlog": 4096})
    steer = {}
    if gen_cpu is not None and dut_cpu is not None:
        path = f"/sys/class/net/{d.ifname}/queues/rx-0/rps_cpus"
        r = d.exec(f"echo {1 << dut_cpu:x} > {path}", check=False)
        steer[d.ifname] = f"cpu{dut_cpu}" if r.returncode == 0 else f"failed: {r.stderr.strip()}"
    httpd = common.build_tool("httpd")
    argv = [str(httpd), "--name", rs.name, "--port", str(PORT), "--max-seconds", "3600"]
    if gen_cpu is not None:
        argv = ["taskset", "-c", str(gen_cpu), *argv]
    rs.popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # until httpd answers on its own address
        probe = subprocess.run(["ip", "netns", "exec", c.netns, "wrk", "-t1", "-c1", "-d1s",
                                f"http://{rs.addr}:{PORT}/"], capture_output=True, text=True, timeout=20)
        if "Requests/sec" in probe.stdout and "Non-2xx" not in probe.stdout and " 0 requests" not in probe.stdout:
            break
        time.sleep(0.2)
    return steer


def run(args: argparse.Namespace) -> dict[str, Any]:
    gen_cpu, dut_cpu = common.cpu_layout(args.gen_cpu, args.dut_cpu)
    out: dict[str, Any] = {
        "part": "http", "started": time.strftime("%Y-%m-%d %H:%M:%S"), "commit": common.git_commit(),
        "machine": common.machine_info(),
        "config": {"repeats": args.repeats, "duration_s": args.duration, "connections": args.connections,
                   "levels": args.levels, "gen_cpu": gen_cpu, "dut_cpu": dut_cpu, "nice": args.nice,
                   "command": "python -m bench http " + " ".join(args.argv),
                   "wrk": "wrk -t1 -c{C} -d{D}s --timeout 5s -s bench/wrk_report.lua (LB_CLOSE, LB_INTERVAL_MS)"},
        "max": [], "latency": [],
    }
    t0 = time.monotonic()
    with Topology(dr_spec(1)) as topo:
        out["config"]["rps"] = _setup(topo, gen_cpu, dut_cpu)
        rs = topo.reals[0]
        lbd = Lbd(topo.director, "c", cpu=dut_cpu, nice=args.nice)
        try:
            lbd.start()
            svc = {"proto": "tcp", "addr": topo.vip, "port": PORT}
            lbd.request("add_service", {**svc, "sched": "rr"})
            lbd.request("add_dest", {"service": svc, "dest": {"addr": rs.addr, "port": PORT, "fwd": "route",
                                                             "weight": 1}})
            lbd.wait_resolved()
            targets = {"direct": rs.addr, "vip": topo.vip}
            for rep in range(args.repeats):
                for mode in ("ka", "close"):
                    close = mode == "close"
                    maxes = {}
                    for tname, addr in targets.items():
                        r = _wrk(topo, addr, args.duration, args.connections, close, None, gen_cpu, args.nice)
                        maxes[tname] = r["rate_rps"]
                        out["max"].append({"rep": rep, "mode": mode, "target": tname, **r})
                        log(f"http: rep {rep + 1} {mode:5} {tname:6} max {r['rate_rps']:8.0f} req/s "
                            f"p50 {r['lat_us']['p50']} us p99 {r['lat_us']['p99']} us errors {r['errors_total']}")
                    for level in args.levels:
                        rate = maxes["vip"] * level
                        for tname, addr in targets.items():
                            r = _wrk(topo, addr, args.duration, args.connections, close, rate, gen_cpu, args.nice)
                            out["latency"].append({"rep": rep, "mode": mode, "target": tname, "level": level, **r})
                            log(f"http: rep {rep + 1} {mode:5} {tname:6} at {level:.0%} ({rate:.0f}/s): got "
                                f"{r['rate_rps']:.0f}/s p50 {r['lat_us']['p50']} p99 {r['lat_us']['p99']} "
                                f"p99.9 {r['lat_us']['p999']} us")
            out["lbd_counters"] = lbd.request("counters")
        except LbdError as exc:
            out["error"] = f"lbd: {exc}"
        finally:
            lbd.stop()
            lbd.cleanup()
    out["elapsed_s"] = round(time.monotonic() - t0, 1)
    out["summary"] = summarize(out)
    return out


def summarize(out: dict[str, Any]) -> dict[str, Any]:
    s: dict[str, Any] = {"max": {}, "latency": {}}
    for mode in ("ka", "close"):
        for tname in ("direct", "vip"):
            rs = [r for r in out["max"] if r["mode"] == mode and r["target"] == tname]
            s["max"][f"{mode}/{tname}"] = common.summarize([r["rate_rps"] for r in rs])
        for level in out["config"]["levels"]:
            key = f"{mode}/{int(level * 100)}"
            ent: dict[str, Any] = {}
            for tname in ("direct", "vip"):
                rs = [r for r in out["latency"] if r["mode"] == mode and r["target"] == tname and r["level"] == level]
                ent[tname] = {p: common.summarize([r["lat_us"][p] for r in rs]) for p in ("p50", "p99", "p999")}
                ent[tname]["rate_rps"] = common.summarize([r["rate_rps"] for r in rs])
            # Added latency per repetition (VIP - direct of the same repetition), then summarized.
            added = {}
            for p in ("p50", "p99", "p999"):
                vals = []
                for rep in sorted({r["rep"] for r in out["latency"]}):
                    v = [r for r in out["latency"] if r["rep"] == rep and r["mode"] == mode and r["level"] == level]
                    dv = {r["target"]: r["lat_us"][p] for r in v}
                    if "vip" in dv and "direct" in dv:
                        vals.append(dv["vip"] - dv["direct"])
                added[p] = common.summarize(vals)
            ent["added_us"] = added
            s["latency"][key] = ent
    return s


def add_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--duration", type=float, default=None, help="seconds per wrk run (default 3; quick 2)")
    ap.add_argument("--connections", type=int, default=32)
    common.add_cpu_args(ap)


def finish_args(args: argparse.Namespace) -> None:
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    if args.duration is None:
        args.duration = 2 if args.quick else 3
    args.levels = [0.5, 0.9]
