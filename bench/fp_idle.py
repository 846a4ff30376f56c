"""lbd's fixed CPU cost: per-thread CPU and system calls, idle and at a low fixed rate.

    python -m bench.fp_idle [--systems afxdp-fast,c] [--rate 6000] [--seconds 30] [--strace-seconds 10]
                            [--pyspy SECONDS] [--out FILE.json]

bench/pps.py's topology (direct veths, generator CPU 0, director CPU 1), lbd brought up and the 1,024
established DR flows warmed as in a pps trial; then, for each system:
- idle: no traffic for `seconds`: lbd's per-thread run time (/proc/<pid>/task/*/schedstat, exact;
  utime/stime of stat too, tick-sampled: 10 ms a sample, noisy at these loads) and wake-ups (the
  thread's voluntary context switches, /proc/<pid>/task/*/status: one per sleep that ended);
- load: established-flow ACKs at `rate` pps for `seconds` (the guest's wire carries ~7 kpps), the same;
- the system calls of every lbd thread for `strace_seconds` in each state (strace -c -f; strace slows
  the calls it counts, so its CPU is not taken from that window).
CPU seconds, not rates: the machine is shared. Bounded: rate x seconds packets per system.
Needs root (namespaces, strace).
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import common, pps
from lb.testbed.topology import Topology

ThreadSample = tuple[str, int, int, int, int]


def thread_cpu(pid: int) -> dict[str, ThreadSample]:
    """tid -> (comm, utime ticks, stime ticks, run time ns from schedstat: exact, not tick-sampled,
    voluntary context switches: the times the thread went to sleep, i.e. its wake-ups)."""
    res: dict[str, ThreadSample] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            raw = (task / "stat").read_text()
            comm = raw[raw.index("(") + 1:raw.rindex(")")]
            f = raw.rsplit(")", 1)[1].split()
            ns = int((task / "schedstat").read_text().split()[0])
            m = re.search(r"^voluntary_ctxt_switches:\s+(\d+)$", (task / "status").read_text(), re.M)
            res[task.name] = (comm, int(f[11]), int(f[12]), ns, int(m.group(1)) if m else 0)
        except (OSError, IndexError, ValueError):
            continue
    return res


def cpu_delta(a: dict[str, ThreadSample], b: dict[str, ThreadSample], secs: float) -> dict[str, Any]:
    per = {}
    for tid, (comm, u, s, ns, vcs) in b.items():
        u0, s0, ns0, vcs0 = a[tid][1:] if tid in a else (0, 0, 0, 0)
        per[f"{tid}:{comm}"] = {"user_s": (u - u0) / pps.CLK_TCK, "sys_s": (s - s0) / pps.CLK_TCK,
                                "run_s": (ns - ns0) / 1e9, "wakeups_per_s": (vcs - vcs0) / secs}
    tot = sum(v["run_s"] for v in per.values())
    return {"window_s": secs, "threads": per, "total_cpu_s": tot, "cpu_pct": 100 * tot / secs}


def strace_counts(pid: int, secs: float) -> dict[str, Any]:
    p = subprocess.Popen(["strace", "-c", "-f", "-q", "-p", str(pid)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    time.sleep(secs)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=30)
    calls: dict[str, int] = {}
    for ln in err.splitlines():
        m = re.match(r"\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)$", ln)
        if m and m.group(2) != "total":
            calls[m.group(2)] = int(m.group(1))
    return {"window_s": secs, "per_s": {k: v / secs for k, v in sorted(calls.items(), key=lambda kv: -kv[1])},
            "total_per_s": sum(calls.values()) / secs, "raw": err[-3000:]}


def pyspy(pid: int, secs: float, binary: str = "/tmp/pyspy/bin/py-spy") -> dict[str, Any]:
    """py-spy's samples of lbd's Python threads (only those not idle) for `secs`, by function."""
    with tempfile.NamedTemporaryFile(suffix=".txt") as f:
        p = subprocess.run([binary, "record", "-d", str(int(secs)), "-r", "200", "-f", "raw", "-o", f.name,
                            "-p", str(pid), "--nonblocking"], capture_output=True, text=True, timeout=secs + 60)
        lines = Path(f.name).read_text().splitlines()
    own: dict[str, int] = {}
    total = 0
    for ln in lines:  # "frame;frame;...;leaf count": count each stack under its lb.* frames
        stack, _, n = ln.rpartition(" ")
        if not n.isdigit():
            continue
        total += int(n)
        for fr in {fr for fr in stack.split(";") if "lb/" in fr}:
            own[fr] = own.get(fr, 0) + int(n)
    top = sorted(own.items(), key=lambda kv: -kv[1])[:25]
    return {"seconds": secs, "samples": total, "rc": p.returncode, "err": p.stderr[-500:],
            "by_lb_frame": [f"{n} {fr}" for fr, n in top]}


def measure(bed: pps.Bed, lbd_pid: int, tr: pps.Traffic | None, rate: float, secs: float,
            strace_s: float) -> dict[str, Any]:
    gen = None
    if tr is not None:
        count = int(rate * (secs + strace_s + 4))
        gen = bed.client.popen(pps.gen_argv(bed, tr, rate, count, secs + strace_s + 4),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(1.0)
    rx0 = bed.rx_count()
    a, t0 = thread_cpu(lbd_pid), time.monotonic()
    time.sleep(secs)
    b, t1 = thread_cpu(lbd_pid), time.monotonic()
    rx1 = bed.rx_count()
    res: dict[str, Any] = {"cpu": cpu_delta(a, b, t1 - t0), "rx_pps": (rx1 - rx0) / (t1 - t0)}
    res["syscalls"] = strace_counts(lbd_pid, strace_s)
    if gen is not None:
        out, _ = gen.communicate(timeout=secs + strace_s + 30)
        res["gen"] = json.loads(out.strip().splitlines()[-1])
    return res


def run(args: argparse.Namespace) -> dict[str, Any]:
    gen_cpu, dut_cpu = common.cpu_layout(0, 1)
    out: dict[str, Any] = {"commit": common.git_commit(), "rate": args.rate, "seconds": args.seconds,
                           "loadavg_before": Path("/proc/loadavg").read_text().split()[:3], "systems": {}}
    common.build_tool("pktgen")
    with tempfile.TemporaryDirectory(prefix="lbF-bench-fpidle-") as tmpd, Topology(pps.pps_spec()) as topo:
        tmp = Path(tmpd)
        bed = pps.Bed(topo, gen_cpu, dut_cpu, steer=True, wiring="direct")
        bed.xdp_mode = "generic"
        for name in args.systems.split(","):
            with pps.system(bed, name, "dr", dut_cpu) as lbd:
                assert lbd is not None and bed.lbd_pid
                why = pps.establish(bed, lbd, tmp)
                if why:
                    raise SystemExit(why)
                tr = pps.make_traffic(bed, tmp, "est", bed.vip)
                r: dict[str, Any] = {"load": measure(bed, bed.lbd_pid, tr, args.rate, args.seconds, args.strace_seconds)}
                time.sleep(3.0)  # the watched flows go quiet (the fast path stops crediting them)
                r["idle"] = measure(bed, bed.lbd_pid, None, 0, args.seconds, args.strace_seconds)
                if args.pyspy:
                    r["pyspy_idle"] = pyspy(bed.lbd_pid, args.pyspy)
                r["counters"] = pps.counters(lbd)
                out["systems"][name] = r
                common.log(f"{name}: load {r['load']['cpu']['total_cpu_s']:.2f} CPU s "
                           f"({r['load']['rx_pps']:.0f} pps, {r['load']['syscalls']['total_per_s']:.0f} syscalls/s), "
                           f"idle {r['idle']['cpu']['total_cpu_s']:.2f} CPU s "
                           f"({r['idle']['syscalls']['total_per_s']:.0f} syscalls/s) over {args.seconds:.0f} s")
    out["loadavg_after"] = Path("/proc/loadavg").read_text().split()[:3]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--systems", default="afxdp-fast,c")
    ap.add_argument("--rate", type=float, default=6000.0)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--strace-seconds", type=float, default=10.0)
    ap.add_argument("--pyspy", type=float, default=0.0, help="seconds of py-spy on idle lbd (0: none)")
    ap.add_argument("--out", type=Path, default=Path(f"bench/results/runs/{common.today()}-fp-idle.json"))
    args = ap.parse_args()
    res = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1))
    for name, r in res["systems"].items():
        for st in ("load", "idle"):
            m = r[st]
            print(f"== {name} {st}: {m['cpu']['total_cpu_s']:.3f} CPU s / {m['cpu']['window_s']:.1f} s, "
                  f"rx {m['rx_pps']:.0f} pps, syscalls {m['syscalls']['total_per_s']:.0f}/s")
            for t, v in m["cpu"]["threads"].items():
                if v["run_s"] > 0:
                    print(f"   {t}: run {v['run_s'] * 1000:.1f} ms, {v['wakeups_per_s']:.1f} wake-ups/s "
                          f"(ticks: user {v['user_s']:.2f} s, sys {v['sys_s']:.2f} s)")
            print("   syscalls/s:", {k: round(v, 1) for k, v in list(m["syscalls"]["per_s"].items())[:8]})
        if "pyspy_idle" in r:
            print(f"   py-spy idle: {r['pyspy_idle']['samples']} samples", *r["pyspy_idle"]["by_lb_frame"][:15],
                  sep="\n     ")


if __name__ == "__main__":
    main()
