"""What one dropped packet costs the DUT CPU, by where it is dropped: the floor under lbd's overload guard.

Offered twice its zero-loss rate R0, lbd must drop R0 packets a second somewhere, and every drop
that happens on the CPU lbd runs on takes CPU from it. If a delivered packet costs the CPU 1/R0
(saturated at the zero-loss rate) and a dropped one c, then at 2x the CPU holds R delivered and
2R0 - R dropped: R (1/R0 - c) + 2 R0 c = 1, so R / R0 = (1 - 2x) / (1 - x) with x = R0 c, the
share of the CPU one zero-loss rate's worth of drops takes. That is the most any shedding at that
place can deliver (`ceiling`); kernel IPVS, whose excess the NIC drops before any CPU sees it, has
c = 0 and a ceiling of 1.

This part measures c on the overload part's own bed, without lbd, at the rate the excess comes at
(the judged point's zero-loss rate), each place in turn, repeated and interleaved (the machine
drifts): the DUT CPU's time not idle (NAPI kthread, softirq and all: /proc/stat, exact under NO_HZ)
per packet offered, every one of them dropped there.

- `nft prerouting -301`: a chain at the overload guard's hook and priority (lb.nftguard), the VIP's
  packets counted and dropped: what lbd's default guard pays per shed packet, after the receive
  path up to the hook (RPS to the DUT CPU, the backlog, ip_rcv).
- `xdp generic`: bench/native/xdp_drop.bpf.c in generic mode on the director's lan veth: after RPS,
  before ip_rcv (a copy when the skb's headroom is short of XDP's).
- `xdp native`: the same in native mode, the veth's NAPI threaded and pinned to the DUT CPU (as the
  overload part's `xdp` guard runs, bench/napi_thread.py): a veth's native XDP converts the sender's
  skb into a page of its own first, so this is no measure of a NIC driver's XDP (which drops before
  any skb exists).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

from bench import napi_thread, pps, routed_cost
from bench.common import log

PLACES = ("nft prerouting -301", "xdp generic", "xdp native")
TABLE = "lbB-dropfloor"
SETTLE_S = 0.3


def ceiling(zero_loss_pps: float, drop_us: float) -> float:
    """The most lbd can deliver at 2x its zero-loss rate, over that rate, when each dropped packet
    costs its CPU `drop_us` (module doc); 0 when the drops alone would take the CPU."""
    x = zero_loss_pps * drop_us / 1e6
    return max(0.0, (1 - 2 * x) / (1 - x)) if x < 1 else 0.0


def _attach(bed: pps.Bed, place: str, dut_cpu: int | None) -> None:
    d, lan = bed.director, bed.director.iface("lan").ifname
    if place == "nft prerouting -301":
        d.exec(["nft", "-f", "-"], input=f"table ip {TABLE} {{\n chain pre {{\n  type filter hook prerouting priority "
               f"-301; policy accept;\n  ip daddr {bed.vip} counter drop\n }}\n}}\n")
    elif place == "xdp generic":
        d.exec(["ip", "link", "set", "dev", lan, "xdpgeneric", "obj", str(routed_cost.build_xdp_drop()), "sec", "xdp"])
    elif place == "xdp native":
        d.exec(["ip", "link", "set", "dev", lan, "xdpdrv", "obj", str(routed_cost.build_xdp_drop()), "sec", "xdp"])
        if dut_cpu is not None:
            bed.napi_pids = napi_thread.thread_and_pin(d, lan, dut_cpu)
    else:
        raise ValueError(f"drop place {place!r}: one of {', '.join(PLACES)}")


def _detach(bed: pps.Bed, place: str) -> None:
    d, lan = bed.director, bed.director.iface("lan").ifname
    if place.startswith("nft"):
        d.exec(["nft", "delete", "table", "ip", TABLE], check=False)
    else:
        d.exec(["sh", "-c", f"echo 0 > /sys/class/net/{lan}/threaded"], check=False)
        d.exec(["ip", "link", "set", "dev", lan, "xdpdrv" if place.endswith("native") else "xdpgeneric", "off"],
               check=False)
        bed.napi_pids = []


def measure(bed: pps.Bed, tmp: Path, rate: float, window: float, reps: int, dut_cpu: int | None) -> dict[str, Any]:
    """µs of DUT CPU per dropped packet at each place, `reps` trials each of `window` s at `rate`."""
    tr = pps.make_traffic(bed, tmp, "est", bed.vip)
    per: dict[str, list[float]] = {p: [] for p in PLACES}
    for _ in range(reps):
        for place in PLACES:
            _attach(bed, place, dut_cpu)
            try:
                time.sleep(SETTLE_S)
                t = pps.trial(bed, tr, rate, window)
            finally:
                _detach(bed, place)
            not_idle = (t.get("cpu_ticks") or {}).get("not_idle")
            if not_idle is None or t["tx"] <= 0 or t["rx"] > t["tx"] // 100:
                continue  # no measure of the DUT CPU, or the packets were not dropped there
            per[place].append(not_idle * 1e6 / pps.CLK_TCK / t["tx"])
    out = {"rate_pps": rate, "window_s": window, "reps": reps,
           "us_per_drop": {p: sorted(v) for p, v in per.items()}}
    log("scale overload: DUT CPU per dropped packet at " + f"{rate:.0f} pps: " + "; ".join(
        f"{p} {statistics.median(v):.2f} us" for p, v in per.items() if v))
    return out


def report(floor: dict[str, Any], zero_loss_pps: float) -> list[str]:
    lines = [f"DUT CPU per dropped packet by where it is dropped, no lbd, offered {floor['rate_pps']:,.0f} pps (the "
             f"judged zero-loss rate: what lbd sheds at 2x), {floor['reps']} trials of {floor['window_s']} s each, "
             "interleaved; the ceiling is what shedding there allows at 2x, (1 - 2x) / (1 - x) with x = zero-loss "
             "rate x cost (bench/scale/dropfloor.py):", "",
             "| dropped at | µs per dropped packet (median, range) | ceiling at 2x of the zero-loss rate |",
             "|---|---|---|"]
    for place, vals in floor["us_per_drop"].items():
        if not vals:
            lines.append(f"| {place} | - | - |")
            continue
        med = statistics.median(vals)
        lines.append(f"| {place} | {med:.2f} ({vals[0]:.2f}-{vals[-1]:.2f}) | {ceiling(zero_loss_pps, med):.2f}x |")
    return lines


def guard_ceiling(floor: dict[str, Any] | None, zero_loss_pps: float, place: str = PLACES[0]) -> float | None:
    """The ceiling at the default guard's place, for the verdict's figure (None: not measured)."""
    vals = (floor or {}).get("us_per_drop", {}).get(place) or []
    return ceiling(zero_loss_pps, statistics.median(vals)) if vals else None
