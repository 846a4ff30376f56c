"""The floor under XDP-side forwarding on this testbed: a bench-only XDP program that forwards the
DR traffic itself (bench/native/xdp_fwd.bpf.c: MAC rewrite + bpf_redirect to the back interface, no
connection table), next to the kernel's forwarding, in bench/pps.py's topology and accounting.

    flock /tmp/lvs-bench.lock python -m bench.xdp_fwd [--repeats 2] [--common-rate 60000] [--out FILE]

Systems: `kernel` (the director routes to rs1's address), `xdp-generic` (the program in generic
mode on the director's lan veth: the director's receive path after RPS, on the DUT CPU) and
`xdp-native` (native mode, the veth's NAPI threaded and pinned to the DUT CPU: bench/napi_thread.py).
Per system and repetition: the zero-loss search (pps.search) and one trial at the common rate; the
DUT CPU never idles (bench/idle_filler.py). What it answers: how much of lbd AF_XDP's cost per
packet an lbd whose XDP program forwarded established DR flows would shed (issue 19 item 4,
bench/results/2026-12-05-afxdp-cost.md). Needs root; packets stay in the run's namespaces.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench import common, idle_filler, napi_thread, pps
from lb.testbed.topology import Topology

SRC = common.BENCH / "native" / "xdp_fwd.bpf.c"


def _mac_bytes(mac: str) -> str:
    return ",".join(f"0x{b}" for b in mac.split(":"))


def build(out: Path, ifindex: int, dst_mac: str, src_mac: str) -> Path:
    """The program for this topology: the real server's MAC, the director's back MAC and ifindex."""
    arch = subprocess.run(["gcc", "-dumpmachine"], capture_output=True, text=True, check=True).stdout.strip()
    cmd = ["clang", "-O2", "-g", "-target", "bpf", "-Wall", "-Werror", f"-I/usr/include/{arch}",
           f"-DFWD_IFINDEX={ifindex}", f"-DFWD_DST={_mac_bytes(dst_mac)}", f"-DFWD_SRC={_mac_bytes(src_mac)}",
           "-c", str(SRC), "-o", str(out)]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return out


@contextlib.contextmanager
def attached(bed: pps.Bed, obj: Path, mode: str, dut_cpu: int, gen_cpu: int) -> Iterator[None]:
    """The program on the director's lan veth in `mode` (generic / native) for the length of the block.
    Native: a veth takes redirected XDP frames only into a NAPI of its peer, so rs1's veth gets one
    (GRO on), threaded and pinned to the generator's CPU (the wire's far end, as RPS does otherwise)."""
    d, rs = bed.director, bed.rs
    dev, rs_dev = d.iface("lan").ifname, rs.iface("back").ifname
    flag = "xdpgeneric" if mode == "generic" else "xdpdrv"
    d.ip("link", "set", "dev", dev, flag, "obj", str(obj), "sec", "xdp")
    try:
        if mode == "native":
            rs.exec(["ethtool", "-K", rs_dev, "gro", "on"])
            napi_thread.thread_and_pin(rs, rs_dev, gen_cpu)
            bed.napi_pids = napi_thread.thread_and_pin(d, dev, dut_cpu)
        yield
    finally:
        bed.napi_pids = []
        d.ip("link", "set", "dev", dev, flag, "off", check=False)
        if mode == "native":
            rs.exec(["sh", "-c", f"echo 0 > /sys/class/net/{rs_dev}/threaded"], check=False)
            rs.exec(["ethtool", "-K", rs_dev, "gro", "off"], check=False)


def _fields(t: dict[str, Any]) -> dict[str, Any]:
    keep = ("offered_pps", "rx_pps", "loss", "dut_us_per_pkt", "softirq_us_per_pkt", "napi_us_per_pkt",
            "ipi_in_per_pkt", "ipi_out_per_pkt", "cpu_ticks")
    return {k: t.get(k) for k in keep}


def run(args: argparse.Namespace) -> dict[str, Any]:
    gen_cpu, dut_cpu = common.cpu_layout(0, 1)
    if dut_cpu is None:
        raise SystemExit("needs 2 CPUs")
    out: dict[str, Any] = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "commit": common.git_commit(),
                           "config": vars(args) | {"out": str(args.out)}, "loadavg_start":
                           Path("/proc/loadavg").read_text().split()[:3], "results": []}
    common.build_tool("pktgen")
    with tempfile.TemporaryDirectory(prefix="lbB-bench-xfwd-") as tmpd, Topology(pps.pps_spec()) as topo, \
            idle_filler.filler(dut_cpu) as spinner:
        tmp = Path(tmpd)
        bed = pps.Bed(topo, gen_cpu, dut_cpu, steer=True, wiring="direct")
        bed.nice, bed.dut_cpu, bed.filler_pid = -10, dut_cpu, spinner
        back = bed.director.iface("back")
        ifindex = int(bed.director.exec(["cat", f"/sys/class/net/{back.ifname}/ifindex"]).stdout)
        rs_mac = bed.rs.iface("back").mac
        obj = build(tmp / "xdp_fwd.o", ifindex, rs_mac, back.mac)
        for rep in range(args.repeats):
            for system in ("kernel", "xdp-generic", "xdp-native"):
                dst = bed.rs_addr if system == "kernel" else bed.vip
                ctx = (contextlib.nullcontext() if system == "kernel"
                       else attached(bed, obj, system.split("-")[1], dut_cpu, gen_cpu or 0))
                with ctx:
                    tr = pps.make_traffic(bed, tmp, "est", dst)
                    why = pps.functional_check(bed, tr)
                    if why:
                        out["results"].append({"system": system, "rep": rep, "skipped": why})
                        continue
                    res = pps.search(bed, tr, args.window, args.steps)
                    common_t = pps.trial(bed, tr, args.common_rate, args.window)
                out["results"].append({"system": system, "rep": rep, "zero_loss_pps": res["zero_loss_pps"],
                                       "generator_limited": res["generator_limited"],
                                       "dut_us_per_pkt": res.get("dut_us_per_pkt"),
                                       "overload": _fields(res["overload"]), "common": _fields(common_t)})
                common.log(f"xdp_fwd: rep {rep + 1} {system}: zero-loss {res['zero_loss_pps']:.0f} pps, "
                           f"{res.get('dut_us_per_pkt')} us/pkt; at {args.common_rate:.0f} pps "
                           f"{common_t.get('dut_us_per_pkt')} us/pkt")
    out["loadavg_end"] = Path("/proc/loadavg").read_text().split()[:3]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--window", type=float, default=0.8)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--common-rate", type=float, default=60_000.0)
    ap.add_argument("--out", type=Path, default=Path(f"bench/results/runs/{common.today()}-xdp-fwd.json"))
    args = ap.parse_args()
    data = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(data, indent=1))
    for r in data["results"]:
        if "skipped" in r:
            print(r["system"], r["rep"], "skipped:", r["skipped"])
            continue
        c = r["common"]
        print(f"{r['system']:12} rep {r['rep']}: zero-loss {r['zero_loss_pps'] / 1e3:7.1f}k"
              f"{' (gen-limited)' if r['generator_limited'] else ''} {r['dut_us_per_pkt'] or 0:6.2f} us/pkt; "
              f"overload rx {r['overload']['rx_pps'] / 1e3:7.1f}k {r['overload']['dut_us_per_pkt'] or 0:6.2f} us/pkt; "
              f"common {c['offered_pps'] / 1e3:.1f}k loss {100 * c['loss']:.2f} % {c['dut_us_per_pkt'] or 0:6.2f} us/pkt "
              f"IPIs in/out {c.get('ipi_in_per_pkt') or 0:.2f}/{c.get('ipi_out_per_pkt') or 0:.2f}")


if __name__ == "__main__":
    main()
