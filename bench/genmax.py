"""How fast can the generator offer load? Unpaced bench/native/pktgen.c into a sink namespace.

    flock /tmp/lvs-bench.lock python -m bench.genmax [--wires direct,bridge] [--batches 32,256]
                                                     [--rates 200000,500000] [--seconds 1] [--repeats 3]
                                                     [--other PKTGEN]

Topology (lb.testbed.topology, per-run `lbB<token>` prefix, removed on exit): client -- sink, once
per wiring: `bridge` (the testbed's segment, a bridge in a switch namespace) and `direct` (one
veth pair, bench/wire.py: what `python -m bench pps` uses by default). The client sends the
bench's 60-byte est frames (1024 flows) to the sink's MAC; the sink counts them in one iptables
raw PREROUTING rule and drops them. CPU layout as in bench/pps.py: the generator on CPU 0,
Receive Packet Steering moves the sink's receive path to CPU 1, so the generator's CPU carries
the send (and, with a bridge, the bridge: a veth delivers on the sending CPU). Per configuration:
the offered rate (the client interface's tx counter + its tx_dropped, / the generator's elapsed
time) and the received rate; `--rates R1,R2` adds paced trials (offered vs asked). `--other
PKTGEN` measures another build of the generator beside it (e.g. the previous version, with batch
32). Figures on a shared 2-core VM are noisy: compare within one run.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import common, pps, wire
from lb.testbed.topology import HostSpec, LinkSpec, SegmentSpec, Topology, TopologySpec

SINK_PORT = 80


def sink_spec() -> TopologySpec:
    return TopologySpec(segments=(SegmentSpec("lan"),),
                        hosts=(HostSpec("client", (LinkSpec("lan", 50),), role="client"),
                               HostSpec("sink", (LinkSpec("lan", 2),))))


def _counter(host: Any, name: str) -> int:
    return int(host.exec(["cat", f"/sys/class/net/{host.ifname}/statistics/{name}"]).stdout.strip())


def _sink_rx(sink: Any) -> int:
    out = sink.exec(["iptables", "-w", "5", "-t", "raw", "-L", "PREROUTING", "-v", "-x", "-n"]).stdout
    return sum(int(f[0]) for f in (line.split() for line in out.splitlines())
               if len(f) > 2 and f[0].isdigit() and f[2] == "DROP")


def one(topo: Topology, binary: str, template: Path, batch: int, seconds: float, gen_cpu: int,
        nice: int, rate: float = 0) -> dict[str, Any]:
    c, sink = topo.client, topo.host("sink")
    argv = ["nice", "-n", str(nice), "taskset", "-c", str(gen_cpu), binary, "--iface", c.ifname,
            "--template", str(template), "--rate", f"{rate:.1f}",
            "--count", str(int(rate * seconds) if rate else int(pps.GEN_MAX_PPS * 2 * seconds)),
            "--max-seconds", f"{seconds:.3f}", "--batch", str(batch), "--flows", str(pps.EST_FLOWS)]
    rx0, tx0, drop0 = _sink_rx(sink), _counter(c, "tx_packets"), _counter(c, "tx_dropped")
    proc = c.exec(argv, check=False, timeout=seconds + 20)
    if proc.returncode != 0:
        raise RuntimeError(f"{binary} failed ({proc.returncode}): {proc.stderr.strip()}")
    gen = json.loads(proc.stdout.strip().splitlines()[-1])
    time.sleep(0.3)
    rx, txc, dropped = _sink_rx(sink) - rx0, _counter(c, "tx_packets") - tx0, _counter(c, "tx_dropped") - drop0
    el = max(float(gen["elapsed_s"]), 1e-6)
    return {"binary": binary, "batch": batch, "rate": rate, "gen": gen, "tx_packets": txc,
            "tx_dropped": dropped, "rx": rx, "offered_pps": (txc + dropped) / el, "rx_pps": rx / el,
            "generator_sent_pps": int(gen["sent"]) / el}


def run(args: argparse.Namespace) -> dict[str, Any]:
    gen_cpu, dut_cpu = common.cpu_layout(None, None)
    if gen_cpu is None or dut_cpu is None:
        raise SystemExit("needs 2 CPUs (generator and sink apart)")
    new = str(common.build_tool("pktgen"))
    configs: list[tuple[str, int]] = [(args.other, 32)] if args.other else []
    configs += [(new, int(b)) for b in args.batches.split(",")]
    out: dict[str, Any] = {"machine": common.machine_info(), "commit": common.git_commit(), "results": [], "paced": [],
                           "config": {"seconds": args.seconds, "repeats": args.repeats, "gen_cpu": gen_cpu,
                                      "sink_rps_cpu": dut_cpu, "nice": args.nice}}
    for wiring in args.wires.split(","):
        if wiring not in wire.WIRES:
            raise SystemExit(f"--wires: {wiring!r} is not one of {', '.join(wire.WIRES)}")
        with tempfile.TemporaryDirectory(prefix="lbB-genmax-") as tmpd, Topology(sink_spec()) as topo:
            if wiring == "direct":
                wire.direct_wire(topo, "lan")
            c, sink = topo.client, topo.host("sink")
            sink.exec(["iptables", "-w", "5", "-t", "raw", "-A", "PREROUTING", "-i", sink.ifname, "-p", "tcp",
                       "--dport", str(SINK_PORT), "-j", "DROP"])
            sink.exec(["sh", "-c", f"echo {1 << dut_cpu:x} > /sys/class/net/{sink.ifname}/queues/rx-0/rps_cpus"])
            wire.prime_neighbours(c, sink, "lan")
            path = pps.Path_(gen_exec=None, gen_iface=c.ifname, dst_mac=sink.mac, src_mac=c.mac,
                             client_addr=c.addr, vip=sink.addr, rs_addr=sink.addr)
            template = pps.write_template(Path(tmpd) / "est.bin", path, sink.addr, "A")
            for rep in range(args.repeats):
                for binary, batch in configs:
                    r = one(topo, binary, template, batch, args.seconds, gen_cpu, args.nice)
                    r.update(rep=rep, wire=wiring)
                    out["results"].append(r)
                    common.log(f"genmax: {wiring} rep {rep + 1} {binary} batch={batch}: offered "
                               f"{r['offered_pps'] / 1e3:.0f} kpps, received {r['rx_pps'] / 1e3:.0f} kpps, "
                               f"refused {r['gen'].get('errors', 0)}")
                for rate in (float(x) for x in args.rates.split(",") if x):
                    r = one(topo, new, template, 32, args.seconds, gen_cpu, args.nice, rate)
                    r.update(rep=rep, wire=wiring)
                    out["paced"].append(r)
                    common.log(f"genmax: {wiring} rep {rep + 1} paced at {rate / 1e3:.0f} kpps: offered "
                               f"{r['offered_pps'] / 1e3:.0f} kpps, received {r['rx_pps'] / 1e3:.0f} kpps")
    rows: dict[str, list[float]] = {}
    for r in out["results"]:
        rows.setdefault(f"{r['wire']}: {r['binary']} batch={r['batch']}", []).append(r["offered_pps"])
    for r in out["paced"]:
        rows.setdefault(f"{r['wire']}: paced at {r['rate'] / 1e3:.0f} kpps", []).append(r["offered_pps"])
    out["summary"] = {k: common.summarize(v) for k, v in rows.items()}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.genmax", description=__doc__.split("\n\n")[0])
    ap.add_argument("--wires", default="direct,bridge", help="client-sink wirings (default direct,bridge)")
    ap.add_argument("--batches", default="32,256", help="batch sizes (default 32,256)")
    ap.add_argument("--rates", default="", help="also paced trials of this pktgen at these pps (batch 32), "
                    "e.g. 200000,500000,1000000: how close the offered rate comes to the one asked for")
    ap.add_argument("--seconds", type=float, default=1.0, help="per trial (default 1)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--nice", type=int, default=-10)
    ap.add_argument("--other", help="another pktgen binary to measure beside (run with --batch 32, no --tx)")
    ap.add_argument("--out", type=Path, help="write the JSON here")
    args = ap.parse_args(argv)
    if not 0 < args.seconds <= 10 or not 1 <= args.repeats <= 10:
        ap.error("--seconds must be in (0, 10], --repeats in 1..10")
    data = run(args)
    for k, v in data["summary"].items():
        print(f"{k}: offered {v['median'] / 1e3:.0f} kpps (min {v['min'] / 1e3:.0f}, max {v['max'] / 1e3:.0f}, "
              f"n={v['n']})")
    if args.out:
        common.write_json(args.out, data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
