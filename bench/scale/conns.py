"""lbd with 1k .. 4M connections: zero-loss pps, DUT CPU per packet, memory per entry (issue 15 item 3).

The pps topology (bench/pps.py: client -> director -> rs1, generator and lbd on their own CPUs, RPS)
with one C lbd for every size, --conn-max the largest size (+4096): the same buckets and the same
established flows at every size, which differ only in what the table holds, and the largest fills
the table, where memory per entry is judged (a table holding a fraction of its size has its whole
bucket array resident). First the 1024 established flows of the `est` traffic (SYN, then ACK), then
idle entries up to each size in turn (smallest first, each adding to the last): one UDP datagram
per entry from spoofed sources of the client's own subnet (a UDP service on the VIP, timeout
3600 s; rs1 counts and drops them), paced (100 kpps, halved for each round that leaves some
missing) until lbd's table holds them. At each size the zero-loss search of bench/pps.py on the
est flows. Memory: lbd's resident growth from before the first fill, per idle entry. lbd saves its
state as it does by default (every 2 s, lb/statefile.py); the control plane's CPU is measured over
a 6 s idle window once the fill's changes are saved.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench import common, pps
from bench.common import Lbd, LbdError, log
from bench.scale import plots
from lb.testbed.topology import Topology

TITLE = "lbd with 1k .. 4M connections (namespaces)"
NEEDS_ROOT = True
CONN_MARGIN = 4096  # --conn-max = the largest size + this (templates, stray entries)
IDLE_SPORT = 1024
IDLE_ADDRS = 100  # spoofed .150-.249 of the client's /24 (pps.SYN_SADDR_FIRST): 100 x 60,000 tuples
IDLE_PER_ADDR = 60000
FILL_ROUNDS = 5
IDLE_WINDOW_S = 6.0
SAVE_EVERY_S = 2.0  # lbd's state saves (lb/daemon.py SNAPSHOT_EVERY_S)
FILL_PPS = 100_000.0  # the first fill round's rate; each round that leaves entries missing halves it
TARGET_RATIO = 1.3
TARGET_BYTES = 100


def add_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--conn-sizes", default=None, help="table sizes, comma-separated; --conn-max is the largest "
                    "(default 1000,1000000,2000000,4000000; quick 1000,200000)")
    ap.add_argument("--conn-window", type=float, default=None, help="seconds per trial (default 0.8; quick 0.5)")
    ap.add_argument("--conn-steps", type=int, default=None, help="bisection steps (default 5; quick 4)")


def finish_args(args: argparse.Namespace) -> None:
    if args.conn_sizes is None:
        args.conn_sizes = "1000,200000" if args.quick else "1000,1000000,2000000,4000000"
    if args.conn_window is None:
        args.conn_window = 0.5 if args.quick else 0.8
    if args.conn_steps is None:
        args.conn_steps = 4 if args.quick else 5


def udp_template(path: Path, p: pps.Path_, dst: str) -> Path:
    """A 60-byte Ethernet/IPv4/UDP frame to dst:PORT from the first spoofed source."""
    from scapy.all import IP, UDP, Ether, raw  # noqa: PLC0415

    prefix = p.client_addr.rsplit(".", 1)[0]
    frame = (Ether(dst=p.dst_mac, src=p.src_mac) / IP(src=f"{prefix}.{pps.SYN_SADDR_FIRST}", dst=dst, ttl=64)
             / UDP(sport=IDLE_SPORT, dport=pps.PORT) / (b"\0" * 18))
    b = raw(frame)
    path.write_bytes(b + bytes(max(0, 60 - len(b))))
    return path


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def thread_ticks(pid: int) -> dict[str, int]:
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, IndexError, ValueError):
            f = (task / "stat").read_text().rsplit(")", 1)[1].split()
            out[task.name] = int(f[11]) + int(f[12])
    return out


@contextlib.contextmanager
def scale_lbd(bed: pps.Bed, dut_cpu: int | None, conn_max: int) -> Iterator[Lbd]:
    """A C lbd with a TCP and a UDP service on VIP:PORT (DR to rs1), UDP entries living an hour."""
    lbd = Lbd(bed.director, "c", cpu=dut_cpu, conn_max=conn_max, nice=bed.nice)
    try:
        lbd.start()
        for proto in ("tcp", "udp"):
            svc = {"proto": proto, "addr": bed.vip, "port": pps.PORT}
            lbd.request("add_service", {**svc, "sched": "rr"})
            lbd.request("add_dest", {"service": svc, "dest": {"addr": bed.rs_addr, "port": pps.PORT, "fwd": "route",
                                                              "weight": 1}})
        lbd.request("set_timeout", {"tcp": 0, "tcpfin": 0, "udp": 3600})
        lbd.wait_resolved()
        bed.lbd_pid = lbd.proc.pid if lbd.proc else None
        yield lbd
    finally:
        bed.lbd_pid = None
        lbd.stop()
        common.flush_iptables(bed.director)
        lbd.cleanup()


def tcp_conns(lbd: Lbd) -> int:
    return sum(s["stats"]["conns"] for s in lbd.request("list")["services"] if s["proto"] == "tcp")


def table(lbd: Lbd) -> dict[str, Any]:
    return dict(lbd.request("counters")["table"])


def establish(bed: pps.Bed, lbd: Lbd, tmp: Path) -> None:
    warm = pps.make_traffic(bed, tmp, "warm", bed.vip)
    for _ in range(3):
        pps.run_gen(bed, warm, 4000, pps.EST_FLOWS, pps.EST_FLOWS / 4000 + 5.0)
        time.sleep(0.3)
        if tcp_conns(lbd) >= pps.EST_FLOWS:
            break
    else:
        raise LbdError(f"lbd holds {tcp_conns(lbd)} of {pps.EST_FLOWS} est flows")
    est = pps.make_traffic(bed, tmp, "est", bed.vip)
    pps.run_gen(bed, est, 4000, pps.EST_FLOWS, pps.EST_FLOWS / 4000 + 5.0)  # their ACKs: ESTABLISHED


def fill(bed: pps.Bed, lbd: Lbd, tmp: Path, first: int, idle: int) -> tuple[float, list[float]]:
    """Add idle entries first .. idle-1 (the tuples of one datagram each) until lbd's table holds
    them: paced, each round that leaves some missing (dropped at a full queue) at half the rate,
    bounded in rounds; returns seconds and the rates used."""
    t0 = time.monotonic()
    count = idle - first
    tr = pps.Traffic("idle", udp_template(tmp / "idle.bin", bed, bed.vip), count, IDLE_PER_ADDR, IDLE_ADDRS, first)
    want = idle + pps.EST_FLOWS
    rate, rates = FILL_PPS, []
    for _ in range(FILL_ROUNDS):
        rates.append(rate)
        pps.run_gen(bed, tr, rate, count, count / rate * 1.5 + 10.0)
        time.sleep(0.5)
        if table(lbd)["entries"] >= want:
            break
        rate /= 2
    return time.monotonic() - t0, rates


def wait_saved(lbd: Lbd, timeout: float = 120.0) -> float:
    """Until lbd has saved everything the fill changed: its state files (snapshot and journal) left
    untouched for two save intervals (idle entries change nothing once saved, so a save with nothing
    to write writes nothing); returns seconds waited, -1 on timeout."""
    files = [lbd.dir / "lbd-q0.state", lbd.dir / "lbd-q0.journal"]
    quiet_s = 2 * SAVE_EVERY_S + 0.5
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        mtimes = [f.stat().st_mtime for f in files if f.exists()]
        if mtimes and time.time() - max(mtimes) >= quiet_s:
            return time.monotonic() - t0
        time.sleep(0.2)
    return -1.0


def measure(bed: pps.Bed, lbd: Lbd, tmp: Path, n: int, filled: tuple[float, list[float]], rss0: int,
            args: argparse.Namespace) -> dict[str, Any]:
    """One size's figures, with the table holding n entries."""
    assert lbd.proc is not None
    pid = lbd.proc.pid
    tab = table(lbd)
    saved_s = wait_saved(lbd)
    rss1 = rss_bytes(pid)
    ticks0 = thread_ticks(pid)
    time.sleep(IDLE_WINDOW_S)
    ticks1 = thread_ticks(pid)
    idle_cpu = sum(ticks1.get(t, 0) - v for t, v in ticks0.items()) / pps.CLK_TCK / IDLE_WINDOW_S
    tr = pps.make_traffic(bed, tmp, "est", bed.vip)
    res = pps.search(bed, tr, args.conn_window, args.conn_steps)
    after = table(lbd)
    idle = tab["entries"] - pps.EST_FLOWS
    out = {"size": n, "entries": tab["entries"], "entries_after": after["entries"], "buckets": tab["buckets"],
           "fill_s": round(filled[0], 1), "fill_rates": filled[1], "saved_after_s": round(saved_s, 1),
           "rss_before_fill": rss0, "rss_after_fill": rss1,
           "bytes_per_entry": (rss1 - rss0) / idle if idle >= 100_000 else None,
           "idle_cpu_share": idle_cpu, **{k: res.get(k) for k in ("zero_loss_pps", "generator_limited",
                                                                   "dut_us_per_pkt", "lbd_user_us_per_pkt",
                                                                   "lbd_sys_us_per_pkt", "softirq_us_per_pkt",
                                                                   "control_plane_us_per_pkt")},
           "overload": {k: res["overload"].get(k) for k in ("offered_pps", "rx_pps", "nfq")}, "trials": res["trials"]}
    log(f"scale conns: {out['entries']:>9,} entries: zero-loss {out['zero_loss_pps'] or 0:9.0f} pps, "
        f"{out['dut_us_per_pkt'] or 0:.2f} us/pkt, {out['bytes_per_entry'] or 0:.0f} B/entry, "
        f"idle control plane {100 * idle_cpu:.2f} % of a core")
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    gen_cpu, dut_cpu = common.cpu_layout(args.gen_cpu, args.dut_cpu)
    common.build_tool("pktgen")
    points = []
    sizes = sorted(int(s) for s in args.conn_sizes.split(","))
    conn_max = max(sizes) + CONN_MARGIN
    with tempfile.TemporaryDirectory(prefix="lbB-scale-conns-") as tmpd, Topology(pps.pps_spec()) as topo:
        tmp = Path(tmpd)
        bed = pps.Bed(topo, gen_cpu, dut_cpu)
        bed.nice = args.nice
        bed.rs.exec(["iptables", "-w", "5", "-t", "raw", "-A", "PREROUTING", "-i", bed.rs.ifname, "-p", "udp",
                     "--dport", str(pps.PORT), "-j", "DROP"])
        # One lbd for every size, the same established flows measured at each: the table only
        # grows between two measurements (the idle entries of the next size added to those held).
        with scale_lbd(bed, dut_cpu, conn_max) as lbd:
            assert lbd.proc is not None
            establish(bed, lbd, tmp)
            rss0 = rss_bytes(lbd.proc.pid)
            held = 0
            for n in sizes:
                idle = max(0, n - pps.EST_FLOWS)
                filled = fill(bed, lbd, tmp, held, idle) if idle > held else (0.0, [])
                held = max(held, idle)
                points.append(measure(bed, lbd, tmp, n, filled, rss0, args))
    return {"conn_max": conn_max, "points": points, "window_s": args.conn_window, "steps": args.conn_steps,
            "gen_cpu": gen_cpu, "dut_cpu": dut_cpu}


def report(data: dict[str, Any], targets: list[list[str]]) -> list[str]:
    pts = data["points"]
    base = pts[0]
    lines = [f"### {TITLE}", "",
             f"lbd --conn-max {data['conn_max']:,} (buckets {base['buckets']:,} at every size), DR, 1024 established "
             "flows + idle UDP entries; zero-loss search of bench/pps.py on the established flows "
             f"({data['window_s']} s trials); DUT CPU per packet at the zero-loss rate (lbd's packet thread + the DUT "
             "CPU's softirq, bench/pps.py dut_fields).", "",
             "| entries | zero-loss pps | vs smallest | DUT us/packet | vs smallest | saturated: delivered pps, "
             "DUT us/packet | resident bytes per entry | control plane idle (share of a core) | fill s "
             "| state saved after s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for p in pts:
        zl, us = p.get("zero_loss_pps") or 0, p.get("dut_us_per_pkt") or 0
        bzl, bus = base.get("zero_loss_pps") or 1, base.get("dut_us_per_pkt") or 1
        bpe = f"{p['bytes_per_entry']:.0f}" if p.get("bytes_per_entry") else "-"
        sat = (p.get("trials") or [{}])[0]  # the search's unpaced trial: lbd saturated
        sat_txt = f"{sat.get('rx_pps', 0):,.0f}, {sat.get('dut_us_per_pkt', 0):.2f}" if sat.get("rx_pps") else "-"
        lines.append(f"| {p['entries']:,} | {zl:,.0f}{' (generator-limited)' if p.get('generator_limited') else ''} | "
                     f"{zl / bzl:.2f}x | {us:.2f} | {us / bus:.2f}x | {sat_txt} | {bpe} | "
                     f"{100 * p['idle_cpu_share']:.2f} % | {p['fill_s']} | {p['saved_after_s']} |")
    lines += ["", "At a low zero-loss rate (a shared machine: other work makes trials lose packets) the DUT's cost per "
              "packet is inflated by what does not scale with packets (wake-ups, the CPU's other work); the saturated "
              "column (the search's unpaced trial) is the same cost with the DUT CPU busy.", ""]
    big = pts[-1]
    if big["entries"] >= 1_000_000 and base.get("dut_us_per_pkt") and big.get("dut_us_per_pkt"):
        ratio = big["dut_us_per_pkt"] / base["dut_us_per_pkt"]
        targets.append([f"lbd: per-packet cost at {big['entries']:,} vs {base['entries']:,} connections <= "
                        f"{TARGET_RATIO}x", f"{ratio:.2f}x DUT us/packet ({big['dut_us_per_pkt']:.2f} vs "
                        f"{base['dut_us_per_pkt']:.2f}); zero-loss {big['zero_loss_pps'] / base['zero_loss_pps']:.2f}x",
                        "met" if ratio <= TARGET_RATIO else "MISSED"])
        if big.get("bytes_per_entry"):
            targets.append([f"lbd: resident memory per connection at {big['entries']:,} <= ~{TARGET_BYTES} B",
                            f"{big['bytes_per_entry']:.0f} B", "met" if big["bytes_per_entry"] <= TARGET_BYTES * 1.05
                            else "MISSED"])
    png = plots.line_plot("conns", "lbd: zero-loss pps and DUT CPU per packet vs connections", "connections (log)",
                          "relative to the smallest table",
                          {"zero-loss pps": [(p["entries"], (p.get("zero_loss_pps") or 0) / (base.get("zero_loss_pps") or 1))
                                             for p in pts],
                           "DUT us per packet": [(p["entries"], (p.get("dut_us_per_pkt") or 0) /
                                                  (base.get("dut_us_per_pkt") or 1)) for p in pts]},
                          logx=True, hline=(TARGET_RATIO, f"{TARGET_RATIO}x (cost target)"))
    lines += plots.image(png, "lbd vs connections")
    return lines
