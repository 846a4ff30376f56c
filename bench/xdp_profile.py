"""Where the director's CPU goes under lbd's AF_XDP source: perf on the DUT CPU at a fixed rate.

    python -m bench.xdp_profile [--system afxdp|afxdp-native|c|kernel] [--mode dr] [--rate 150000]
                                [--seconds 3] [--out DIR] [--lbd-args '...']

bench/pps.py's topology and wiring (client -> director -> rs1, direct veths, generator on CPU 0,
director and its RPS'd receive path on CPU 1), lbd brought up and the 1024 established flows
warmed as in a pps trial; then the generator offers `rate` pps of established-flow ACKs for
`seconds` while, on the DUT CPU only:
- `perf stat -C <dut>`: cycles, instructions, context switches, softirqs raised, system calls;
- `perf record -C <dut> -g`: the call graphs, written as perf.data in DIR;
- lbd's packet thread and the DUT CPU's softirq ticks (as pps.trial accounts them),
and writes DIR/profile.json with the top symbols (self), the top callers by children, and the
system-call mix of lbd's packet thread. Bounded: one generator run of rate x seconds packets.
Needs root (namespaces, perf).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import common, pps
from lb.testbed.topology import Topology

PERF_EVENTS = ("context-switches", "irq:softirq_raise", "raw_syscalls:sys_enter", "xdp:xdp_redirect",
               "xdp:xdp_redirect_err", "napi:napi_poll", "skb:kfree_skb", "skb:consume_skb", "net:net_dev_xmit",
               "irq_vectors:call_function_single_entry", "irq_vectors:reschedule_entry", "ipi:ipi_send_cpu")
GEN_EVENTS = ("xdp:xdp_redirect", "napi:napi_poll", "irq:softirq_raise")  # whose CPU ran the XDP work
THREAD_EVENTS = ("raw_syscalls:sys_enter", "syscalls:sys_enter_sendmmsg", "syscalls:sys_enter_poll",
                 "syscalls:sys_enter_sendto", "syscalls:sys_enter_recvfrom", "syscalls:sys_enter_futex",
                 "context-switches")


def perf_report(data: Path, sort: str, children: bool, limit: int = 40, extra: list[str] | None = None) -> list[str]:
    argv = ["perf", "report", "-i", str(data), "--stdio", "--sort", sort, "--percent-limit", "0.5",
            "--children" if children else "--no-children", "-g", "none", *(extra or [])]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=300).stdout
    rows = [ln.rstrip() for ln in out.splitlines() if ln.strip() and not ln.startswith("#")]
    return rows[:limit]


def thread_ticks(pid: int | None) -> dict[int, int]:
    res: dict[int, int] = {}
    if not pid:
        return res
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            f = (task / "stat").read_text().rsplit(")", 1)[1].split()
            res[int(task.name)] = int(f[11]) + int(f[12])
        except (OSError, IndexError, ValueError):
            continue
    return res


def packet_thread(pid: int | None, seconds: float = 0.3) -> int | None:
    """The thread of lbd that is busiest over `seconds` under load: the packet thread."""
    t0 = thread_ticks(pid)
    time.sleep(seconds)
    t1 = thread_ticks(pid)
    return max(t1, key=lambda t: t1[t] - t0.get(t, 0)) if t1 else None


def profile(args: argparse.Namespace) -> dict[str, Any]:
    gen_cpu, dut_cpu = common.cpu_layout(0, 1)
    outdir: Path = args.out
    outdir.mkdir(parents=True, exist_ok=True)
    res: dict[str, Any] = {"system": args.system, "mode": args.mode, "rate": args.rate, "seconds": args.seconds,
                           "commit": common.git_commit(), "loadavg_before": Path("/proc/loadavg").read_text().split()[:3]}
    common.build_tool("pktgen")
    with tempfile.TemporaryDirectory(prefix="lbB-bench-xprof-") as tmpd, Topology(pps.pps_spec()) as topo:
        tmp = Path(tmpd)
        bed = pps.Bed(topo, gen_cpu, dut_cpu, steer=True, wiring="direct")
        bed.nice = -10
        bed.lbd_args = tuple(args.lbd_args.split()) if args.lbd_args else ()
        bed.xdp_mode = "generic"
        if args.setup:
            subprocess.run(["sh", "-c", args.setup.format(director=bed.director.netns,
                                                          lan=bed.director.iface("lan").ifname)], check=True)
        dst = bed.rs_addr if args.system == "kernel" else bed.vip
        with pps.system(bed, args.system, args.mode, dut_cpu) as lbd:
            if lbd is not None:
                why = pps.establish(bed, lbd, tmp)
                if why:
                    raise SystemExit(why)
            tr = pps.make_traffic(bed, tmp, "est", dst)
            count = int((args.rate or pps.GEN_MAX_PPS) * (args.seconds + 1.0))  # rate 0: unpaced
            c0, rx0, tx0 = pps.counters(lbd), bed.rx_count(), bed.tx_count()
            cpu0 = bed.cpu_ticks()
            gen = bed.client.popen(pps.gen_argv(bed, tr, args.rate, count, args.seconds + 1.5),
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            tid = packet_thread(bed.lbd_pid)
            data = outdir / "perf.data"
            tstat = subprocess.run(["perf", "stat", "-t", str(tid), "-x", ",", "-e", ",".join(THREAD_EVENTS),
                                    "--", "sleep", "0.5"], capture_output=True, text=True, timeout=60) if tid else None
            gen_stat = subprocess.Popen(["perf", "stat", "-C", str(gen_cpu), "-x", ",", "-e", ",".join(GEN_EVENTS),
                                         "--", "sleep", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            stat = subprocess.run(["perf", "stat", "-C", str(dut_cpu), "-x", ",", "-e", ",".join(PERF_EVENTS),
                                   "--", "sleep", "1"], capture_output=True, text=True, timeout=60)
            gen_perf = "".join(gen_stat.communicate(timeout=60))
            rec = subprocess.run(["perf", "record", "-C", str(dut_cpu), "-g", "-F", "2000", "-o", str(data),
                                  "-e", "cpu-clock",
                                  "--", "sleep", str(max(args.seconds - 1.5, 1.0))],
                                 capture_output=True, text=True, timeout=120)
            gen_out, _ = gen.communicate(timeout=args.seconds + 30)
            rx1 = pps.settle(bed, rx0)
            cpu1, tx1, c1 = bed.cpu_ticks(), bed.tx_count(), pps.counters(lbd)
        g = json.loads(gen_out.strip().splitlines()[-1])
        rx = rx1 - rx0
        ticks = {k: cpu1[k] - cpu0[k] for k in cpu1 if k in cpu0}
        res.update(gen=g, tx=(tx1 or 0) - (tx0 or 0), rx=rx, loss=1 - rx / max((tx1 or 0) - (tx0 or 0), 1),
                   tid=tid, perf_stat=stat.stdout + stat.stderr, perf_stat_gen_cpu=gen_perf,
                   perf_stat_thread=(tstat.stdout + tstat.stderr) if tstat else "", perf_record_rc=rec.returncode,
                   perf_record_err=rec.stderr[-500:], counters_before=c0, counters_after=c1)
        el = max(float(g["elapsed_s"]), 1e-6)
        us = 1e6 / pps.CLK_TCK / max(rx, 1)
        res["us_per_pkt"] = {"pkt_thread_user": ticks.get(f"t{tid}_user", 0) * us,
                             "pkt_thread_sys": ticks.get(f"t{tid}_sys", 0) * us,
                             "softirq": ticks.get("softirq", 0) * us, "busy": ticks.get("busy", 0) * us,
                             "napi_kthread": ticks.get("napi", 0) * us, "not_idle": ticks.get("not_idle", 0) * us}
        res["rx_pps"] = rx / el
    res["top_self"] = perf_report(data, "sym", False, 60)
    res["top_children"] = perf_report(data, "sym", True, 60)
    res["by_comm"] = perf_report(data, "comm,dso", False, 20)
    res["lbd_children"] = perf_report(data, "sym", True, 60, ["--comms", "lbd"])
    res["loadavg_after"] = Path("/proc/loadavg").read_text().split()[:3]
    (outdir / "profile.json").write_text(json.dumps(res, indent=1))
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--system", default="afxdp", choices=("afxdp", "afxdp-native", "c", "kernel"))
    ap.add_argument("--mode", default="dr", choices=("dr", "tunnel", "fullnat"))
    ap.add_argument("--rate", type=float, default=150_000.0)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--lbd-args", default="")
    ap.add_argument("--setup", default="", help="shell command run after the topology is up ({director}: its "
                    "namespace, {lan}: its lan interface), e.g. to try a sysctl")
    ap.add_argument("--out", type=Path, default=Path(f"bench/results/runs/{common.today()}-xdp-profile"))
    args = ap.parse_args()
    res = profile(args)
    print(json.dumps({k: res[k] for k in ("rate", "rx_pps", "loss", "us_per_pkt")}, indent=1))
    print(res["perf_stat"], res["perf_stat_thread"], "generator's CPU:", res["perf_stat_gen_cpu"], sep="\n")
    for key in ("by_comm", "top_self", "lbd_children"):
        print(f"--- {key}", *res[key][:40], sep="\n")


if __name__ == "__main__":
    main()
