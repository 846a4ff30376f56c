"""Bulk upload through DR: what `lbd --gso` (NFQA_CFG_F_GSO) changes.

    python -m bench bulk [--quick] [--repeats 3] [--mib 64]

Topology: lb.testbed.topology.dr_spec(1), as `http`. rs1 runs a sink (reads to EOF, answers with
the byte count); the client sends --mib MiB in 64 KiB writes over one TCP connection and stops
the clock when the sink's count arrives. A veth passes the sender's TSO super-packets on whole,
so without --gso the kernel segments each before queueing it (one queue message per segment);
with --gso lbd gets it whole (one message per super-packet), its packet core sees the segments, and
DR sends the super-packet on whole with a virtio-net header for the device to cut (one frame).

Systems, interleaved in every repetition: `direct` (client -> rs1's own address, the path without
a director in the way: its limit), `c` (lbd), `c-gso` (lbd --gso). Figures: MB/s, queue
messages per MiB and lbd's CPU time per MiB (process time, all threads). CPUs: client and sink on
the generator CPU, lbd on the DUT CPU, RPS on the director's interface to the DUT CPU (bench/pps.py).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from typing import Any

from bench import common
from bench.common import Lbd, LbdError, log
from lb.testbed.topology import Topology, dr_spec

PORT = 9200
CHUNK = 65536

SINK = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(8)
while True:
    c, _ = s.accept()
    n = 0
    while True:
        b = c.recv(1 << 20)
        if not b:
            break
        n += len(b)
    c.sendall(str(n).encode()); c.close()
"""

CLIENT = """
import json, socket, sys, time
addr, port, total, chunk = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
buf = bytes(range(256)) * (chunk // 256)
s = socket.create_connection((addr, port), timeout=30)
t0 = time.monotonic(); sent = 0
while sent < total:
    s.sendall(buf); sent += len(buf)
s.shutdown(socket.SHUT_WR)
got = int(s.recv(64) or b"0")
print(json.dumps({"bytes": sent, "acked": got, "seconds": time.monotonic() - t0}))
"""


def _proc_cpu_s(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100.0  # utime + stime of every thread


def _upload(topo: Topology, addr: str, nbytes: int, gen_cpu: int | None) -> dict[str, Any]:
    argv = ["ip", "netns", "exec", topo.client.netns, sys.executable, "-c", CLIENT, addr, str(PORT), str(nbytes),
            str(CHUNK)]
    if gen_cpu is not None:
        argv = ["taskset", "-c", str(gen_cpu), *argv]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"upload to {addr} failed: {proc.stderr.strip()[-400:]}")
    res: dict[str, Any] = json.loads(proc.stdout)
    if res["acked"] != res["bytes"]:
        raise RuntimeError(f"sink counted {res['acked']} of {res['bytes']} bytes")
    res["mb_s"] = res["bytes"] / res["seconds"] / 1e6
    return res


def _lbd_trial(topo: Topology, lbd: Lbd, nbytes: int, gen_cpu: int | None) -> dict[str, Any]:
    assert lbd.proc is not None
    before, cpu0 = lbd.request("counters")["nfq"], _proc_cpu_s(lbd.proc.pid)
    res = _upload(topo, topo.vip, nbytes, gen_cpu)
    after, cpu1 = lbd.request("counters")["nfq"], _proc_cpu_s(lbd.proc.pid)
    mib = nbytes / (1 << 20)
    res["nfq"] = {k: after[k] - before[k] for k in after}
    res["queue_msgs_per_mib"] = res["nfq"]["packets"] / mib
    res["frames_per_mib"] = res["nfq"]["xmit_l2"] / mib
    res["lbd_cpu_ms_per_mib"] = (cpu1 - cpu0) * 1000 / mib
    return res


def _start_lbd(topo: Topology, extra: list[str], dut_cpu: int | None, nice: int) -> Lbd:
    lbd = Lbd(topo.director, "c", cpu=dut_cpu, nice=nice, extra=extra)
    lbd.start()
    svc = {"proto": "tcp", "addr": topo.vip, "port": PORT}
    lbd.request("add_service", {**svc, "sched": "rr"})
    lbd.request("add_dest", {"service": svc, "dest": {"addr": topo.reals[0].addr, "port": PORT, "fwd": "route",
                                                     "weight": 1}})
    lbd.wait_resolved()
    return lbd


def run(args: argparse.Namespace) -> dict[str, Any]:
    gen_cpu, dut_cpu = common.cpu_layout(args.gen_cpu, args.dut_cpu)
    nbytes = args.mib << 20
    out: dict[str, Any] = {
        "part": "bulk", "started": time.strftime("%Y-%m-%d %H:%M:%S"), "commit": common.git_commit(),
        "machine": common.machine_info(),
        "config": {"repeats": args.repeats, "mib": args.mib, "chunk": CHUNK, "gen_cpu": gen_cpu, "dut_cpu": dut_cpu,
                   "nice": args.nice, "command": "python -m bench bulk " + " ".join(args.argv)},
        "trials": [],
    }
    systems = {"c": [], "c-gso": ["--gso"]}
    t0 = time.monotonic()
    with Topology(dr_spec(1)) as topo:
        d, rs = topo.director, topo.reals[0]
        if gen_cpu is not None and dut_cpu is not None:
            d.exec(f"echo {1 << dut_cpu:x} > /sys/class/net/{d.ifname}/queues/rx-0/rps_cpus", check=False)
        sink = ["taskset", "-c", str(gen_cpu)] if gen_cpu is not None else []
        rs.popen([*sink, sys.executable, "-c", SINK, str(PORT)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:  # until the sink answers on rs1's own address
            try:
                _upload(topo, rs.addr, CHUNK, gen_cpu)
                break
            except (RuntimeError, ValueError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        for rep in range(args.repeats):
            r = _upload(topo, rs.addr, nbytes, gen_cpu)
            out["trials"].append({"rep": rep, "system": "direct", **r})
            log(f"bulk: rep {rep + 1} direct {r['mb_s']:7.1f} MB/s")
            for name, extra in systems.items():
                lbd = _start_lbd(topo, extra, dut_cpu, args.nice)
                try:
                    r = _lbd_trial(topo, lbd, nbytes, gen_cpu)
                except (LbdError, RuntimeError) as exc:
                    out.setdefault("errors", []).append(f"{name} rep {rep}: {exc}")
                    continue
                finally:
                    lbd.stop()
                    lbd.cleanup()
                out["trials"].append({"rep": rep, "system": name, **r})
                log(f"bulk: rep {rep + 1} {name:6} {r['mb_s']:7.1f} MB/s, {r['queue_msgs_per_mib']:6.0f} queue "
                    f"msgs/MiB, {r['frames_per_mib']:6.0f} frames/MiB, lbd {r['lbd_cpu_ms_per_mib']:5.1f} ms CPU/MiB, "
                    f"gso_packets {r['nfq']['gso_packets']}, sent whole {r['nfq'].get('gso_whole', 0)}")
    out["elapsed_s"] = round(time.monotonic() - t0, 1)
    out["summary"] = summarize(out)
    return out


def summarize(out: dict[str, Any]) -> dict[str, Any]:
    s: dict[str, Any] = {}
    for name in ("direct", "c", "c-gso"):
        ts = [t for t in out["trials"] if t["system"] == name]
        if not ts:
            continue
        s[name] = {"mb_s": common.summarize([t["mb_s"] for t in ts])}
        for key in ("queue_msgs_per_mib", "frames_per_mib", "lbd_cpu_ms_per_mib"):
            if key in ts[0]:
                s[name][key] = common.summarize([t[key] for t in ts])
    if "c" in s and "c-gso" in s:
        s["gso_speedup"] = s["c-gso"]["mb_s"]["median"] / s["c"]["mb_s"]["median"]
    return s


def add_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--repeats", type=int, default=None, help="default 3; quick 1")
    ap.add_argument("--mib", type=int, default=None, help="MiB per upload (default 64; quick 16)")
    common.add_cpu_args(ap)


def finish_args(args: argparse.Namespace) -> None:
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    if args.mib is None:
        args.mib = 16 if args.quick else 64
