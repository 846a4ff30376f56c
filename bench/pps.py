"""Zero-loss throughput (RFC 2544 style) through client -> director -> real server.

    python -m bench pps [--quick] [--systems kernel,python,c] [--modes dr,tunnel,fullnat]
                        [--traffic est,syn] [--repeats 3] [--window 1.0] [--steps 6]

Topology (lb.testbed.topology, per-run `lbB<token>` prefix, removed on exit):

    client --[lan]-- director --[back]-- rs1
     .50            .2 (VIP .100)  .1        .11

Systems, measured in the same namespaces, interleaved per repetition:
- `kernel`: the director as a plain IPv4 router (client -> rs1's address). The path's limit.
- `python`: `lbd --engine python` (the naive peer).
- `c`: `lbd` with the C fast path (NFQUEUE).
- `afxdp`: the same lbd fed by AF_XDP (`--packet-source afxdp` on the director's lan interface,
  `--xdp-mode generic` by default: see `--xdp-mode`); `afxdp-native`: the same in native XDP mode,
  the lan veth's NAPI threaded and its kthread pinned to the DUT CPU (bench/napi_thread.py: else
  veth runs native XDP on the sending CPU, the generator's, and the DUT CPU does not see it).
  `afxdp-fast`: `afxdp` with `--xdp-fastpath` (the XDP program forwards established DR flows itself,
  docs/afxdp.md). None of them is in the default `--systems`.
Modes for lbd: `dr` (route), `tunnel` (IPIP) and `fullnat`, one real server, rr.

Traffic: 64-byte frames (60 bytes + FCS) of TCP.
- `est`: ACKs of 1024 established flows (their SYNs are sent first, slowly, and lbd's
  connection count is checked), cycling over the flows.
- `syn`: SYNs of never-repeating (source address, port) pairs (spoofed inside the client's
  own subnet, .150-.249): every packet is a new connection for lbd.

Loss is counted at the receiving side: one iptables rule in rs1's raw PREROUTING matches the
benchmark packets (TCP to port 80, or IP protocol 4 for IPIP, which this kernel cannot
decapsulate) and drops them after counting, so rs1 never answers. Offered = what left the
client's interface (its tx counter; the generator's own count is a cross-check).

A trial offers `rate` for `window` seconds, waits until rs1's counter stops moving, and passes
when loss < 0.1%. The search: one unpaced trial (the generator's maximum G and the overload
throughput O), then a bisection over (0, G] whose first probe is O; the result is the highest
*measured* offered rate of a passing trial. If the unpaced trial itself passes, the result is
G and is flagged generator-limited.

Generator: bench/native/pktgen.c (paced by the clock, sendmmsg batches of <= 32 frames on an
AF_PACKET socket; ~1.1-1.2 Mpps unpaced here, bench/genmax.py). `--wire direct` (default) cables
the client and rs1 to the director with plain veth pairs (bench/wire.py): through the testbed's
bridge (`--wire bridge`) the generator's CPU also runs the bridge and offers ~0.3 Mpps at most.
Offered counts the frames the wire's far end refused (the client veth's tx_dropped). trafgen
(netsniff-ng) measures the unpaced path limit; it cannot pace on this machine (see
bench/README.md). Every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shlex
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import common, idle_filler, napi_thread, wire
from bench.common import Lbd, LbdError, log
from lb.testbed.topology import HostSpec, LinkSpec, SegmentSpec, Topology, TopologySpec

LOSS_MAX = 0.001  # RFC 2544 "zero loss", relaxed to < 0.1 %
EST_FLOWS = 1024
EST_SPORT = 20000
SYN_SPORT = 2000
SYN_SADDR_FIRST = 150  # spoofed sources .150 .. .249 of the client's own /24
SYN_ADDRS = 100
SYN_FLOWS_PER_ADDR = 60000
PORT = 80
N_LADDRS = 16  # FULLNAT local addresses (.200 .. .215 of the back segment): 16 x 64512 ports
SETTLE_STABLE_S = 0.25  # rs1's counter unchanged this long = the path has drained
SETTLE_MAX_S = 6.0  # the python engine may still be draining its queue (16k packets at ~5 kpps)
GEN_MAX_PPS = 2_000_000  # packet budget per unpaced trial = this x window
CONN_MAX_C = 4_194_304
CLK_TCK = os.sysconf("SC_CLK_TCK")

SYSTEMS = ("kernel", "python", "c")
MODES = ("dr", "tunnel", "fullnat")
TRAFFIC = ("est", "syn")
FWD = {"dr": "route", "tunnel": "tunnel", "fullnat": "fullnat"}


def pps_spec(reals: int = 1) -> TopologySpec:
    """client on lan; the director routes lan <-> back (VIP 100); rs1..rs<reals> on back, gateway the director."""
    return TopologySpec(
        segments=(SegmentSpec("lan"), SegmentSpec("back")),
        hosts=(
            HostSpec("client", (LinkSpec("lan", 50),), role="client"),
            HostSpec("director", (LinkSpec("lan", 2), LinkSpec("back", 1)), role="director", vips=(100,),
                     forwarding=True),
            *(HostSpec(f"rs{i}", (LinkSpec("back", 10 + i),), gateway=("back", 1)) for i in range(1, reals + 1)),
        ),
    )


# --------------------------------------------------------------------------- the path


@dataclass
class Path_:
    """Where packets come from and where they are counted. `Bed` is the namespace version."""

    gen_exec: Any  # callable(argv, timeout) -> CompletedProcess, runs where the generator runs
    gen_iface: str
    dst_mac: str
    src_mac: str
    client_addr: str
    vip: str
    rs_addr: str
    gen_cpu: int | None = None
    nice: int = 0  # niceness of the generator (and of lbd): other load on the machine must not decide
    lbd_args: tuple[str, ...] = ()  # extra options for the C engine's lbd (e.g. --queue-balance 0:3)
    xdp_mode: str = "generic"  # system "afxdp": --xdp-mode (generic keeps the XDP work on the DUT CPU, see README)

    def rx_count(self) -> int:  # packets counted at the receiver
        raise NotImplementedError

    def tx_count(self) -> int | None:  # packets that left the generator's interface
        return None

    def tx_dropped(self) -> int | None:  # packets the generator's interface dropped on the way out
        return None

    def nfq_stats(self) -> dict[str, int]:
        return {}

    def cpu_ticks(self) -> dict[str, int]:
        """CPU time of the system under test, in clock ticks: lbd's process (all threads), the
        softirq time of the DUT CPU (where RPS runs the director's receive path) and, under native
        XDP, the interface's NAPI kthread pinned there."""
        res: dict[str, int] = {}
        pid = getattr(self, "lbd_pid", None)
        if pid:
            with contextlib.suppress(OSError):
                for task in Path(f"/proc/{pid}/task").iterdir():
                    with contextlib.suppress(OSError, IndexError, ValueError):
                        f = (task / "stat").read_text().rsplit(")", 1)[1].split()
                        res[f"t{task.name}_user"] = int(f[11])
                        res[f"t{task.name}_sys"] = int(f[12])
        spinner = getattr(self, "filler_pid", None)
        if spinner:  # bench/idle_filler.py: not the DUT's work
            res["filler"] = idle_filler.user_ticks(spinner)
        napi = getattr(self, "napi_pids", None)
        if napi:  # native XDP's NAPI kthread on the DUT CPU (bench/napi_thread.py): process, not softirq, time
            res["napi"] = napi_thread.kthread_ticks(napi)
        cpu = getattr(self, "dut_cpu", None)
        if cpu is not None:
            res.update(ipi_counts(cpu, self.gen_cpu))
            with contextlib.suppress(OSError, IndexError, ValueError):
                for line in Path("/proc/stat").read_text().splitlines():
                    if line.startswith(f"cpu{cpu} "):
                        f = line.split()
                        res["softirq"] = int(f[7])
                        res["busy"] = sum(int(x) for x in f[1:9]) - int(f[4]) - int(f[5])
                        # idle and iowait are exact under NO_HZ (not ticks): wall - idle is the
                        # time the CPU did anything, softirq work from the idle loop included.
                        res["not_idle"] = round(time.monotonic() * CLK_TCK) - int(f[4]) - int(f[5])
        return res


def ipi_counts(dut_cpu: int, gen_cpu: int | None) -> dict[str, int]:
    """Function-call and rescheduling interrupts (IPIs) so far, /proc/interrupts CAL + RES: those the
    DUT CPU received (ipi_dut: mostly RPS of the director's receive path, the generator's CPU's
    doing) and those the generator's CPU received (ipi_gen: mostly RPS of what the director sent,
    the DUT's doing). In a VM each costs the sender a trapped APIC write and the receiver an
    interrupt: several us here, so per packet they weigh with the batch size (bench/results/
    2026-12-05-afxdp-cost.md)."""
    res: dict[str, int] = {}
    with contextlib.suppress(OSError, IndexError, ValueError):
        lines = Path("/proc/interrupts").read_text().splitlines()
        ncpu = len(lines[0].split())
        for line in lines[1:]:
            f = line.split()
            if f and f[0] in ("CAL:", "RES:") and len(f) > ncpu:
                res["ipi_dut"] = res.get("ipi_dut", 0) + int(f[1 + dut_cpu])
                if gen_cpu is not None:
                    res["ipi_gen"] = res.get("ipi_gen", 0) + int(f[1 + gen_cpu])
    return res


class Bed(Path_):
    """The benchmark topology in namespaces."""

    def __init__(self, topo: Topology, gen_cpu: int | None, dut_cpu: int | None = None, steer: bool = True,
                 wiring: str = "bridge") -> None:
        self.topo = topo
        c, d, rs = topo.client, topo.director, topo.host("rs1")
        # "direct": the client and rs1 cabled to the director by plain veth pairs (bench/wire.py);
        # "bridge": the testbed's bridged segments (the generator's CPU carries the lan bridge).
        if wiring not in wire.WIRES:
            raise ValueError(f"wiring {wiring!r} is not one of {', '.join(wire.WIRES)}")
        self.wiring = wiring
        if wiring == "direct":
            for seg in ("lan", "back"):
                if len(wire.segment_hosts(topo, seg)) == 2:
                    wire.direct_wire(topo, seg)
        self.client, self.director, self.rs = c, d, rs
        super().__init__(
            gen_exec=lambda argv, timeout: c.exec(argv, timeout=timeout, check=False),
            gen_iface=c.ifname, dst_mac=d.iface("lan").mac, src_mac=c.mac, client_addr=c.addr,
            vip=topo.vip, rs_addr=rs.addr, gen_cpu=gen_cpu,
        )
        self.lan_prefix = c.addr.rsplit(".", 1)[0]
        self.back_prefix = rs.addr.rsplit(".", 1)[0]
        self.laddrs = [f"{self.back_prefix}.{200 + i}" for i in range(N_LADDRS)]
        # rs1: count-and-drop the benchmark packets before anything answers them.
        rs.ip("addr", "add", f"{self.vip}/32", "dev", "lo")
        for match in (["-p", "tcp", "--dport", str(PORT)], ["-p", "4"]):
            rs.exec(["iptables", "-w", "5", "-t", "raw", "-A", "PREROUTING", "-i", rs.ifname, *match, "-j", "DROP"])
        for a in self.laddrs:
            d.ip("addr", "add", f"{a}/24", "dev", d.iface("back").ifname)
        self.rps = self._steer(gen_cpu, dut_cpu) if steer else {}
        self.dut_cpu = dut_cpu
        self.lbd_pid: int | None = None  # the running lbd's, while a trial measures it
        self.lbd: Lbd | None = None  # the running lbd (its counters: wait_guard_disarmed)
        self.napi_pids: list[int] = []  # afxdp-native: the lan veth's NAPI kthreads, while lbd runs
        self.filler_pid: int | None = None  # bench/idle_filler.py's spinner on the DUT CPU
        # Untouched by lbd: ARP entries both ways before the first trial.
        wire.prime_neighbours(c, d, "lan")
        wire.prime_neighbours(rs, d, "back")

    def _steer(self, gen_cpu: int | None, dut_cpu: int | None) -> dict[str, str]:
        """Receive Packet Steering, so the generator's CPU is not the director's.

        A veth hands a packet to its peer's backlog on the SENDING CPU, so without steering the
        generator's sendmmsg would also run the director's whole receive path (and kernel
        forwarding would be bounded by the generator's CPU, not the director's). With RPS on the
        director's lan interface, the director's receive processing runs on the DUT CPU (like a
        NIC interrupt on a real director); with RPS on the back segment's bridge port facing the
        director, what the director transmits is received (bridge, rs1) on the generator's CPU,
        i.e. by the "test equipment", as on a real wire.
        """
        if gen_cpu is None or dut_cpu is None:
            return {}
        d = self.director
        if self.wiring == "direct" and len(wire.segment_hosts(self.topo, "back")) == 2:
            # No bridge: what the director transmits is received by rs1 itself.
            back_ns, back_dev = self.rs.netns, self.rs.iface("back").ifname
        else:
            spec_names = [h.name for h in self.topo.spec.hosts]
            back_ns = self.topo.switch_ns("back")
            back_dev = self.topo._ifname(f"p{spec_names.index('director')}back")[:15]
        done = {}
        for ns, dev, cpu in ((d.netns, d.iface("lan").ifname, dut_cpu), (back_ns, back_dev, gen_cpu)):
            path = f"/sys/class/net/{dev}/queues/rx-0/rps_cpus"
            r = subprocess.run(["ip", "netns", "exec", ns, "sh", "-c", f"echo {1 << cpu:x} > {path}"],
                               capture_output=True, text=True)
            done[f"{ns}:{dev}"] = f"cpu{cpu}" if r.returncode == 0 else f"failed: {r.stderr.strip()}"
        return done

    def rx_count(self) -> int:
        out = self.rs.exec(["iptables", "-w", "5", "-t", "raw", "-L", "PREROUTING", "-v", "-x", "-n"]).stdout
        total = 0
        for line in out.splitlines():
            f = line.split()
            if len(f) > 2 and f[0].isdigit() and f[2] == "DROP":
                total += int(f[0])
        return total

    def tx_count(self) -> int | None:
        out = self.client.exec(["cat", f"/sys/class/net/{self.client.ifname}/statistics/tx_packets"]).stdout
        return int(out.strip())

    def tx_dropped(self) -> int | None:
        """Frames the client's veth could not hand to its peer (the receiving CPU's backlog was
        full): offered, and lost at the receiver's door. With a direct wire that door is the
        director's; with a bridge it is the bridge's (only with RPS on the bridge port)."""
        out = self.client.exec(["cat", f"/sys/class/net/{self.client.ifname}/statistics/tx_dropped"]).stdout
        return int(out.strip())

    def nfq_stats(self) -> dict[str, int]:
        """Director's /proc/net/netfilter/nfnetlink_queue: packets the kernel dropped for the queue."""
        out = self.director.exec(["cat", "/proc/net/netfilter/nfnetlink_queue"], check=False).stdout
        res = {"queue_dropped": 0, "user_dropped": 0, "queued_now": 0}
        for line in out.splitlines():
            f = line.split()
            if len(f) >= 7:
                res["queued_now"] += int(f[2])
                res["queue_dropped"] += int(f[5])
                res["user_dropped"] += int(f[6])
        return res


class ExternalPath(Path_):
    """Real NICs: the generator runs here on --iface, the receiver's count comes from a command.

    See bench/README.md ("Real NICs"). The director (lbd, IPVS or a router) is set up by the
    operator; this only offers traffic and counts.
    """

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(
            gen_exec=lambda argv, timeout: subprocess.run(argv, capture_output=True, text=True, timeout=timeout),
            gen_iface=args.iface, dst_mac=args.dst_mac, src_mac=_iface_mac(args.iface), client_addr=args.src,
            vip=args.dst, rs_addr=args.dst, gen_cpu=args.gen_cpu,
        )
        self.rx_cmd = args.rx_count_cmd

    def rx_count(self) -> int:
        out = subprocess.run(self.rx_cmd, shell=True, capture_output=True, text=True, timeout=30).stdout
        return int(out.strip().split()[-1])

    def tx_count(self) -> int | None:
        return int(Path(f"/sys/class/net/{self.gen_iface}/statistics/tx_packets").read_text())


def _iface_mac(iface: str) -> str:
    return Path(f"/sys/class/net/{iface}/address").read_text().strip()


# --------------------------------------------------------------------------- packets


def write_template(path: Path, p: Path_, dst: str, flags: str, src: str | None = None, sport: int = EST_SPORT) -> Path:
    """One 60-byte Ethernet/IPv4/TCP frame (64 on the wire with the FCS), built with scapy."""
    from scapy.all import IP, TCP, Ether, raw  # noqa: PLC0415 (slow import, only here)

    frame = (Ether(dst=p.dst_mac, src=p.src_mac) / IP(src=src or p.client_addr, dst=dst, ttl=64, flags="DF")
             / TCP(sport=sport, dport=PORT, flags=flags, seq=1000, ack=1 if "A" in flags else 0, window=512))
    b = raw(frame)
    b += bytes(60 - len(b)) if len(b) < 60 else b""
    path.write_bytes(b)
    return path


@dataclass
class Traffic:
    name: str
    template: Path
    flows: int  # 0 = never repeat
    flows_per_addr: int
    addrs: int
    seq: int = 0  # next tuple index (syn: continues across trials of one lbd instance)


def make_traffic(p: Path_, tmp: Path, kind: str, dst: str, flow_base: int = 0) -> Traffic:
    """`flow_base` shifts the est flows' source ports (fresh flows for a director that still
    holds the previous run's entries)."""
    if kind == "est":
        t = write_template(tmp / f"est-{dst}-{flow_base}.bin", p, dst, "A", sport=EST_SPORT + flow_base)
        return Traffic("est", t, EST_FLOWS, 64000, 1)
    if kind == "syn":
        prefix = p.client_addr.rsplit(".", 1)[0]
        t = write_template(tmp / f"syn-{dst}.bin", p, dst, "S", src=f"{prefix}.{SYN_SADDR_FIRST}", sport=SYN_SPORT)
        return Traffic("syn", t, 0, SYN_FLOWS_PER_ADDR, SYN_ADDRS)
    if kind == "warm":  # the SYNs of the est flows
        t = write_template(tmp / f"warm-{dst}-{flow_base}.bin", p, dst, "S", sport=EST_SPORT + flow_base)
        return Traffic("warm", t, EST_FLOWS, 64000, 1)
    raise ValueError(kind)


# --------------------------------------------------------------------------- trials


def gen_argv(p: Path_, tr: Traffic, rate: float, count: int, max_s: float) -> list[str]:
    """The generator's command line: `count` packets at `rate` (0: unpaced), at most `max_s` seconds."""
    gen = str(common.build_tool("pktgen"))
    argv = [gen, "--iface", p.gen_iface, "--template", str(tr.template), "--rate", f"{rate:.1f}",
            "--count", str(int(count)), "--max-seconds", f"{max_s:.3f}", "--batch", "32",
            "--flows", str(tr.flows), "--seq-start", str(tr.seq), "--flows-per-addr", str(tr.flows_per_addr),
            "--addrs", str(tr.addrs)]
    return pinned(p, argv)


def pinned(p: Path_, argv: list[str]) -> list[str]:
    """`argv` on the generator's CPU at the generator's niceness."""
    if p.gen_cpu is not None:
        argv = ["taskset", "-c", str(p.gen_cpu), *argv]
    if p.nice:
        argv = ["nice", "-n", str(p.nice), *argv]
    return argv


def run_gen(p: Path_, tr: Traffic, rate: float, count: int, max_s: float) -> dict[str, Any]:
    argv = gen_argv(p, tr, rate, count, max_s)
    proc = p.gen_exec(argv, max_s + 15)
    if proc.returncode != 0:
        raise RuntimeError(f"pktgen failed ({proc.returncode}): {shlex.join(argv)}\n{proc.stderr}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    if tr.flows == 0:
        tr.seq += int(res["sent"]) + int(res["errors"])
    return res


def settle(p: Path_, start: int) -> int:
    """rs1's count once it has stopped moving (bounded by SETTLE_MAX_S)."""
    deadline = time.monotonic() + SETTLE_MAX_S
    last = p.rx_count()
    last_change = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.05)
        now = p.rx_count()
        if now != last:
            last, last_change = now, time.monotonic()
        elif time.monotonic() - last_change >= SETTLE_STABLE_S:
            break
    return last


def trial(p: Path_, tr: Traffic, rate: float, window: float) -> dict[str, Any]:
    """Offer `rate` pps (0 = as fast as the generator goes) for `window` s; count what arrived."""
    rx0, tx0, drop0, nfq0, cpu0 = p.rx_count(), p.tx_count(), p.tx_dropped(), p.nfq_stats(), p.cpu_ticks()
    count = int(rate * window) if rate > 0 else int(GEN_MAX_PPS * window)
    gen = run_gen(p, tr, rate, max(count, 1), window * 1.5 + 0.5 if rate > 0 else window)
    rx1 = settle(p, rx0)
    tx1, drop1, nfq1, cpu1 = p.tx_count(), p.tx_dropped(), p.nfq_stats(), p.cpu_ticks()
    sent = int(gen["sent"])
    # Offered = what the generator put on its wire: the interface's tx counter plus the frames the
    # wire's far end refused (a full backlog: the receiver's loss, which must count as offered).
    dropped = (drop1 - drop0) if (drop0 is not None and drop1 is not None) else 0
    tx = ((tx1 - tx0) if (tx0 is not None and tx1 is not None) else sent) + dropped
    rx = rx1 - rx0
    el = max(float(gen["elapsed_s"]), 1e-6)
    offered = tx / el
    res: dict[str, Any] = {
        "rate": rate, "window_s": window, "sent": sent, "tx": tx, "tx_dropped": dropped,
        "gen_refused": int(gen.get("errors", 0)), "rx": rx, "elapsed_s": round(el, 4),
        "offered_pps": offered, "rx_pps": rx / el, "loss": (1 - rx / tx) if tx > 0 else 1.0,
        "nfq": {k: nfq1.get(k, 0) - nfq0.get(k, 0) for k in nfq1 if k != "queued_now"},
    }
    res["pass"] = tx > 0 and res["loss"] < LOSS_MAX
    # DUT CPU per packet (see dut_fields). Projected capacity = one core / that.
    ticks = {k: cpu1[k] - cpu0[k] for k in cpu1 if k in cpu0}
    # lbd's threads: the busiest one in this trial is named the packet thread (the C NFQUEUE thread,
    # or the Python engine's loop; under the XDP fast path it can be the control plane's event loop);
    # the others are reported as other_threads. The DUT figure counts ALL of them (dut_fields): the
    # control plane's per-second work is lbd's cost too, and at a low fixed rate it weighs much.
    threads: dict[str, list[int]] = {}
    for k, v in ticks.items():
        if k.startswith("t") and k.endswith(("_user", "_sys")):
            tid, kind = k[1:].rsplit("_", 1)
            threads.setdefault(tid, [0, 0])[0 if kind == "user" else 1] += v
    pkt_user = pkt_sys = other = 0
    if threads:
        busiest = max(threads, key=lambda t: sum(threads[t]))
        pkt_user, pkt_sys = threads[busiest]
        other = sum(sum(v) for t, v in threads.items() if t != busiest)
        # Which thread that was: under the XDP fast path the packet threads have next to nothing to do,
        # and the busiest can be the control plane's event loop (tid = pid: "main").
        res["pkt_thread"] = thread_name(getattr(p, "lbd_pid", None), busiest)
    busy = ticks.get("busy")
    if busy is not None and ticks.get("filler"):
        busy = max(busy - ticks["filler"], 0)  # the SCHED_IDLE spinner's time is nobody's work
    res["cpu_ticks"] = {"softirq": ticks.get("softirq"), "busy": busy, "pkt_thread_user": pkt_user,
                        "pkt_thread_sys": pkt_sys, "other_threads": other, "napi": ticks.get("napi"),
                        "ipi_in": ticks.get("ipi_dut"), "ipi_out": ticks.get("ipi_gen"),
                        "not_idle": ticks.get("not_idle")}
    res.update(dut_fields(res["cpu_ticks"], rx))
    return res


def thread_name(pid: int | None, tid: str) -> str:
    """"main" for lbd's main thread (its event loop), else the thread's name (lbd-xsk0, lbd-nfq0, ...)."""
    if pid is not None and tid == str(pid):
        return "main"
    try:
        return Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip() or tid
    except OSError:
        return tid


def dut_fields(t: dict[str, Any], rx: int) -> dict[str, Any]:
    """CPU cost per received packet on the DUT CPU, from a trial's tick deltas.

    Tick-based accounting charges softirq work done while a task runs to BOTH that task's
    system time and the CPU's softirq time, so threads + softirq over-counts; the CPU's busy time
    also counts other load on that CPU (idle time on an unsaturated DUT CPU gets filled by
    other processes on this shared machine). The DUT cost is the smaller of the two upper
    bounds: min(busy, lbd's threads + softirq). lbd's threads are ALL of them: the packet thread
    (the busiest), the NAPI kthread under native XDP, and the others (control plane, timers; until
    2026-12-06 these were left out, which flattered lbd wherever its packet thread was not the
    busiest one: the XDP fast path).
    """
    if rx <= 0:
        return {}
    us = 1e6 / CLK_TCK / rx
    thread = ((t.get("pkt_thread_user") or 0) + (t.get("pkt_thread_sys") or 0) + (t.get("napi") or 0)
              + (t.get("other_threads") or 0))
    soft, busy = t.get("softirq") or 0, t.get("busy") or 0
    used = min(busy, thread + soft) if busy else thread + soft
    if used <= 0:
        return {}
    out = {"dut_us_per_pkt": used * us, "dut_busy_us_per_pkt": busy * us}
    if thread:
        out.update(lbd_user_us_per_pkt=(t.get("pkt_thread_user") or 0) * us,
                   lbd_sys_us_per_pkt=(t.get("pkt_thread_sys") or 0) * us, softirq_us_per_pkt=soft * us,
                   control_plane_us_per_pkt=(t.get("other_threads") or 0) * us)
    if t.get("napi") is not None:
        out["napi_us_per_pkt"] = t["napi"] * us
    if t.get("not_idle") is not None:  # all the DUT CPU did (tenants and idle_filler too): a cross-check without the filler
        out["dut_not_idle_us_per_pkt"] = t["not_idle"] * us
    if t.get("ipi_in") is not None:  # counts, not ticks: per received packet
        out.update(ipi_in_per_pkt=t["ipi_in"] / rx, ipi_out_per_pkt=(t.get("ipi_out") or 0) / rx)
    return out


def recompute(out: dict[str, Any]) -> dict[str, Any]:
    """Re-derive the CPU fields of every trial and result from the stored tick deltas (so a
    change of dut_fields applies to old runs) and re-summarize."""
    for r in out.get("results", []):
        for t in r.get("trials", []):
            for k in [k for k in t if k.endswith(("_us_per_pkt", "ipi_in_per_pkt", "ipi_out_per_pkt"))]:
                del t[k]
            if t.get("cpu_ticks"):
                t.update(dut_fields(t["cpu_ticks"], t["rx"]))
        passing = [t for t in r.get("trials", []) if t.get("pass")]
        best = r["trials"][0] if r.get("generator_limited") or not passing else max(passing, key=lambda t: t["offered_pps"])
        r.update(_cpu_fields(best))
    if "config" in out:
        out["summary"] = summarize(out)
    return out


GUARD_WAIT_S = 3.0


def wait_guard_disarmed(p: Path_) -> float:
    """Wait (<= GUARD_WAIT_S) until the running lbd's overload guard (lb/overload.py) is disarmed, so
    that a trial starts as from an idle director: a guard armed by the previous trial's overload would
    still be shedding above the rate it last found. Returns the seconds waited."""
    lbd = getattr(p, "lbd", None)
    t0 = time.monotonic()
    while lbd is not None and time.monotonic() - t0 < GUARD_WAIT_S:
        if not (counters(lbd).get("overload") or {}).get("armed"):
            break
        time.sleep(0.05)
    return time.monotonic() - t0


def search(p: Path_, tr: Traffic, window: float, steps: int) -> dict[str, Any]:
    trials = []
    wait_guard_disarmed(p)
    probe = trial(p, tr, 0, window)
    trials.append(probe)
    g, o = probe["offered_pps"], probe["rx_pps"]
    if probe["pass"]:
        return {"zero_loss_pps": g, "generator_limited": True, "overload": probe, "trials": trials,
                **_cpu_fields(probe)}
    lo, hi = 0.0, g
    best = None
    rate = min(max(o, g * 0.02), g * 0.98)
    for _ in range(steps):
        wait_guard_disarmed(p)
        t = trial(p, tr, rate, window)
        trials.append(t)
        # Judge by what was actually offered: the generator may fall short of `rate`.
        if t["pass"]:
            lo = max(lo, min(rate, t["offered_pps"]))
            if best is None or t["offered_pps"] > best["offered_pps"]:
                best = t
        else:
            hi = min(hi, rate)
        rate = (lo + hi) / 2
        if hi - lo < 0.01 * hi:
            break
    return {"zero_loss_pps": best["offered_pps"] if best else 0.0, "generator_limited": False,
            "overload": probe, "trials": trials, "bracket": [lo, hi], **_cpu_fields(best or probe)}


LATENCY_LOAD = 0.5  # latency is measured at this fraction of the zero-loss rate
LATENCY_PROBES = 300
LATENCY_INTERVAL_US = 2000.0
LATENCY_LEAD_S = 0.2  # the background load runs this long before the first probe and after the last


def latency_at(bed: Bed, tmp: Path, tr: Traffic, dst: str, rate: float) -> dict[str, Any]:
    """One-way latency of LATENCY_PROBES marked frames (bench/latency.py) while the generator offers
    `rate` pps of the same traffic in the background (bounded in count and time)."""
    from bench import latency  # noqa: PLC0415

    if rate <= 0:
        return {"skipped": "no zero-loss rate to take a fraction of"}
    if tr.name == "est":  # ACKs of the first established flow
        base, sport = tr.template.read_bytes(), None
    else:  # SYNs of fresh flows from the client's own address (apart from the generator's sources)
        base = write_template(tmp / f"probe-syn-{dst}.bin", bed, dst, "S", sport=30000).read_bytes()
        sport = 30000
    frames = [latency.mark_frame(base, i, None if sport is None else sport + i) for i in range(LATENCY_PROBES)]
    ffile = tmp / "probes.bin"
    ffile.write_bytes(b"".join(frames))
    probe_s = LATENCY_PROBES * LATENCY_INTERVAL_US / 1e6
    load_s = probe_s + 2 * LATENCY_LEAD_S
    ready = tmp / "probe-recv.ready"
    ready.unlink(missing_ok=True)
    py = [common.PY, "-m", "bench.latency"]
    receiver = bed.rs.popen(pinned(bed, [*py, "recv", "--iface", bed.rs.ifname, "--seconds", f"{load_s + 5:.1f}",
                                         "--expect", str(LATENCY_PROBES), "--ready", str(ready)]),
                            cwd=str(common.REPO), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    load = None
    try:
        deadline = time.monotonic() + 15
        while not ready.exists() and receiver.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if not ready.exists():
            return {"skipped": "the probe receiver did not start"}
        load = bed.client.popen(gen_argv(bed, tr, rate, int(rate * load_s), load_s), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        time.sleep(LATENCY_LEAD_S)
        sent = bed.client.exec(pinned(bed, [*py, "send", "--iface", bed.gen_iface, "--frames", str(ffile),
                                            "--frame-len", str(len(frames[0])), "--interval-us",
                                            str(LATENCY_INTERVAL_US)]), timeout=probe_s + 30, check=False)
        load_out, _ = load.communicate(timeout=load_s + 15)
        rx_out, rx_err = receiver.communicate(timeout=load_s + 15)
    finally:
        for proc in (load, receiver):
            if proc is not None and proc.poll() is None:
                bed.topo.stop_process(proc)
    if sent.returncode != 0 or receiver.returncode != 0:
        return {"skipped": f"probe sender rc {sent.returncode} {sent.stderr[-300:]}; receiver rc "
                           f"{receiver.returncode} {rx_err[-300:]}"}
    tx_ns = {int(k): int(v) for k, v in json.loads(sent.stdout.strip().splitlines()[-1]).items()}
    rx_ns = {int(k): int(v) for k, v in json.loads(rx_out.strip().splitlines()[-1]).items()}
    res = latency.match(tx_ns, rx_ns)
    with contextlib.suppress(ValueError, IndexError):
        g = json.loads(load_out.strip().splitlines()[-1])
        res["load_offered_pps"] = (int(g["sent"]) + int(g["errors"])) / max(float(g["elapsed_s"]), 1e-6)
        if tr.flows == 0:
            tr.seq += int(g["sent"]) + int(g["errors"])
    res["load_asked_pps"] = rate
    return res


def _cpu_fields(t: dict[str, Any]) -> dict[str, Any]:
    keys = ("dut_us_per_pkt", "lbd_user_us_per_pkt", "lbd_sys_us_per_pkt", "softirq_us_per_pkt",
            "control_plane_us_per_pkt", "napi_us_per_pkt", "ipi_in_per_pkt", "ipi_out_per_pkt",
            "dut_not_idle_us_per_pkt")
    return {k: t.get(k) for k in keys}


def functional_check(p: Path_, tr: Traffic, n: int = 300, rate: float = 3000) -> str | None:
    """None if n packets at a low rate arrive (>= 99%), else why not."""
    tr_copy = Traffic(tr.name, tr.template, tr.flows, tr.flows_per_addr, tr.addrs, tr.seq)
    t = trial(p, tr_copy, rate, n / rate)
    tr.seq = tr_copy.seq
    if t["tx"] == 0 or t["rx"] < 0.99 * t["tx"]:
        return f"only {t['rx']} of {t['tx']} packets at {rate:.0f} pps reached the real server"
    return None


# --------------------------------------------------------------------------- systems


@contextlib.contextmanager
def system(bed: Bed, name: str, mode: str, dut_cpu: int | None) -> Iterator[Lbd | None]:
    """Bring up `name` on the director (nothing for kernel forwarding); tear it down after."""
    if name == "kernel":
        yield None
        return
    engine, extra = ("python", ()) if name == "python" else ("c", bed.lbd_args)
    if name in ("afxdp", "afxdp-native", "afxdp-fast"):  # the C engine fed by AF_XDP on the director's lan interface
        xdp_mode = "native" if name == "afxdp-native" else bed.xdp_mode
        extra = (*bed.lbd_args, "--packet-source", "afxdp", "--xdp-interface", bed.director.iface("lan").ifname,
                 *(("--xdp-mode", xdp_mode) if xdp_mode != "auto" else ()),
                 *(("--xdp-fastpath",) if name == "afxdp-fast" else ()))
    lbd = Lbd(bed.director, engine, cpu=dut_cpu, conn_max=CONN_MAX_C, nice=bed.nice, extra=extra)
    try:
        lbd.start()
        svc = {"proto": "tcp", "addr": bed.vip, "port": PORT}
        lbd.request("add_service", {**svc, "sched": "rr"})
        if mode == "fullnat":
            for a in bed.laddrs:
                lbd.request("add_laddr", {"service": svc, "addr": a})
        lbd.request("add_dest", {"service": svc, "dest": {"addr": bed.rs_addr, "port": PORT, "fwd": FWD[mode],
                                                         "weight": 1}})
        lbd.wait_resolved()
        if name == "afxdp-native" and dut_cpu is not None:
            # The director's XDP work on the DUT CPU, as a NIC's NAPI (bench/napi_thread.py).
            bed.napi_pids = napi_thread.thread_and_pin(bed.director, bed.director.iface("lan").ifname, dut_cpu)
        bed.lbd_pid = lbd.proc.pid if lbd.proc else None
        bed.lbd = lbd
        yield lbd
    finally:
        bed.lbd_pid = None
        bed.lbd = None
        bed.napi_pids = []
        lbd.stop()
        if lbd.proc is not None and lbd.proc.returncode not in (0, None):
            log(f"lbd {name} exited {lbd.proc.returncode}: {lbd.log_tail(600)}")
        common.flush_iptables(bed.director)
        lbd.cleanup()


def establish(bed: Bed, lbd: Lbd, tmp: Path, flow_base: int = 0, rate: float = 4000) -> str | None:
    """Send the SYNs of the est flows slowly until lbd holds all of them (<= 3 rounds)."""
    warm = make_traffic(bed, tmp, "warm", bed.vip, flow_base)
    conns = 0
    for _ in range(3):
        run_gen(bed, warm, rate, EST_FLOWS, EST_FLOWS / rate + 5.0)
        time.sleep(0.3)
        conns = sum(s["stats"]["conns"] for s in lbd.request("list")["services"])
        if conns >= EST_FLOWS:
            return None
    return f"lbd holds {conns} of {EST_FLOWS} flows after 3 rounds of SYNs"


def counters(lbd: Lbd | None) -> dict[str, Any]:
    if lbd is None:
        return {}
    with contextlib.suppress(Exception):
        return lbd.request("counters")
    return {}


def path_limit_trafgen(bed: Bed, tmp: Path, seconds: float) -> dict[str, Any]:
    """trafgen (TX_RING, unpaced) through the director as a router: the path's limit."""
    cfg = tmp / "limit.trafgen"
    cfg.write_text(
        "{ eth(da=%s, sa=%s, type=0x0800), ipv4(sa=%s, da=%s, ttl=64, df), "
        "tcp(sp=dinc(%d, %d), dp=%d, ack, seq=1000, aseq=1, win=512), fill(0x00, 6) }\n"
        % (bed.dst_mac, bed.src_mac, bed.client_addr, bed.rs_addr, EST_SPORT, EST_SPORT + EST_FLOWS - 1, PORT))
    n = int(400_000 * seconds)
    rx0, tx0 = bed.rx_count(), bed.tx_count()
    argv = ["trafgen", "-o", bed.gen_iface, "-c", str(cfg), "-n", str(n), "-P", "1"]
    if bed.gen_cpu is not None:
        argv = ["taskset", "-c", str(bed.gen_cpu), *argv]
    t0 = time.monotonic()
    proc = bed.client.exec(["timeout", str(int(seconds * 4 + 10)), *argv], check=False, timeout=seconds * 4 + 20)
    el = time.monotonic() - t0
    rx1 = settle(bed, rx0)
    tx1 = bed.tx_count()
    m = re.search(r"(\d+) sec, (\d+) usec on CPU", proc.stdout + proc.stderr)
    gen_s = int(m.group(1)) + int(m.group(2)) / 1e6 if m else el
    tx, rx = (tx1 or 0) - (tx0 or 0), rx1 - rx0
    return {"command": shlex.join(argv), "config": cfg.read_text().strip(), "packets": n, "tx": tx, "rx": rx,
            "seconds": gen_s, "offered_pps": tx / gen_s if gen_s else 0, "rx_pps": rx / gen_s if gen_s else 0,
            "loss": 1 - rx / tx if tx else None, "rc": proc.returncode}


# --------------------------------------------------------------------------- the run


def run(args: argparse.Namespace) -> dict[str, Any]:
    gen_cpu, dut_cpu = common.cpu_layout(args.gen_cpu, args.dut_cpu)
    systems = args.systems.split(",")
    modes = args.modes.split(",")
    traffic = args.traffic.split(",")
    out: dict[str, Any] = {
        "part": "pps", "started": time.strftime("%Y-%m-%d %H:%M:%S"), "commit": common.git_commit(),
        "machine": common.machine_info(),
        "config": {"systems": systems, "modes": modes, "traffic": traffic, "repeats": args.repeats,
                   "window_s": args.window, "steps": args.steps, "loss_max": LOSS_MAX, "gen_cpu": gen_cpu,
                   "dut_cpu": dut_cpu, "nice": args.nice, "est_flows": EST_FLOWS, "frame_bytes": 60,
                   "wire": args.wire, "latency": getattr(args, "latency", False), "arms": getattr(args, "arms", 2),
                   "xdp_mode": getattr(args, "xdp_mode", "generic"), "dut_filler": getattr(args, "dut_filler", False),
                   "command": "python -m bench pps " + " ".join(args.argv), "lbd_args": args.lbd_args or ""},
        "results": [], "sweep": [], "skipped": [], "path_limit": [],
    }
    common.build_tool("pktgen")
    t_start = time.monotonic()
    arms = getattr(args, "arms", 2)
    if arms == 1:
        from bench import one_arm  # noqa: PLC0415

    spec = one_arm.spec() if arms == 1 else pps_spec()
    with tempfile.TemporaryDirectory(prefix="lbB-bench-pps-") as tmpd, Topology(spec) as topo, \
            idle_filler.filler(dut_cpu, getattr(args, "dut_filler", False)) as spinner:
        tmp = Path(tmpd)
        bed = (one_arm.OneArmBed(topo, gen_cpu, dut_cpu, steer=args.steer) if arms == 1
               else Bed(topo, gen_cpu, dut_cpu, steer=args.steer, wiring=args.wire))
        # {lan}: the director's client-side interface, named per run (--xdp-interface {lan}).
        bed.lbd_args = tuple(a.replace("{lan}", bed.director.iface("lan").ifname) for a in shlex.split(args.lbd_args or ""))
        bed.nice = args.nice
        bed.dut_cpu = dut_cpu
        bed.filler_pid = spinner
        bed.xdp_mode = getattr(args, "xdp_mode", "generic")
        out["config"]["rps"] = bed.rps
        log(f"pps: topology {topo.prefix}: client {bed.client_addr} -> director VIP {bed.vip} -> rs1 {bed.rs_addr}")
        for rep in range(args.repeats):
            out["path_limit"].append(path_limit_trafgen(bed, tmp, args.window))
            log(f"pps: rep {rep + 1}: trafgen path limit {out['path_limit'][-1]['offered_pps']:.0f} pps offered, "
                f"{out['path_limit'][-1]['rx_pps']:.0f} pps received")
            for mode in modes:
                for sysname in systems:
                    if sysname == "kernel" and mode != modes[0]:
                        continue  # routing does not depend on the lbd mode: once per repetition
                    _one(bed, tmp, out, rep, sysname, mode, traffic, args, dut_cpu)
        if args.sweep:
            _sweep(bed, tmp, out, systems, args, dut_cpu)
    out["elapsed_s"] = round(time.monotonic() - t_start, 1)
    out["summary"] = summarize(out)
    return out


def _one(bed: Bed, tmp: Path, out: dict[str, Any], rep: int, sysname: str, mode: str, traffic: list[str],
         args: argparse.Namespace, dut_cpu: int | None) -> None:
    label_mode = "route" if sysname == "kernel" else mode
    skip_key = (sysname, label_mode)
    if any(s["system"] == sysname and s["mode"] == label_mode for s in out["skipped"]):
        return
    dst = bed.rs_addr if sysname == "kernel" else bed.vip
    try:
        with system(bed, sysname, mode, dut_cpu) as lbd:
            for kind in traffic:
                tr = make_traffic(bed, tmp, kind, dst)
                if kind == "est" and lbd is not None:
                    why = establish(bed, lbd, tmp)
                    if why:
                        raise LbdError(why)
                why = functional_check(bed, tr)
                if why:
                    raise LbdError(f"{kind}: {why}; counters {counters(lbd)}")
                c0 = counters(lbd)
                res = search(bed, tr, args.window, args.steps)
                common_rate = getattr(args, "common_rate", 0.0)
                if common_rate:  # the same offered load for every system: CPU per packet compared as equals
                    res["common"] = trial(bed, tr, common_rate, args.window)
                res.update(system=sysname, mode=label_mode, traffic=kind, rep=rep,
                           counters_before=c0, counters_after=counters(lbd),
                           loadavg=Path("/proc/loadavg").read_text().split()[:3])
                if getattr(args, "latency", False):
                    res["latency"] = latency_at(bed, tmp, tr, dst, LATENCY_LOAD * res["zero_loss_pps"])
                    log(f"pps: latency at {LATENCY_LOAD:.0%} load: p50 {res['latency'].get('p50')} us, "
                        f"p99 {res['latency'].get('p99')} us, lost {res['latency'].get('lost')}")
                out["results"].append(res)
                log(f"pps: rep {rep + 1} {sysname:6} {label_mode:8} {kind}: zero-loss "
                    f"{res['zero_loss_pps']:9.0f} pps{' (generator-limited)' if res['generator_limited'] else ''}"
                    f"; overload {res['overload']['offered_pps']:.0f} offered -> {res['overload']['rx_pps']:.0f}")
    except (LbdError, OSError) as exc:
        reason = str(exc)[:1500]
        log(f"pps: skip {sysname} {label_mode}: {reason}")
        out["skipped"].append({"system": sysname, "mode": label_mode, "reason": reason})
    del skip_key


def _sweep(bed: Bed, tmp: Path, out: dict[str, Any], systems: list[str], args: argparse.Namespace,
           dut_cpu: int | None) -> None:
    """Received vs offered load, DR established flows, each system (the pps plot)."""
    gmax = max((p["offered_pps"] for p in out["path_limit"]), default=200_000)
    fracs = [0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9] if not args.quick else [0.05, 0.2, 0.5, 0.8]
    for sysname in systems:
        if any(s["system"] == sysname for s in out["skipped"] if s["mode"] in ("dr", "route")):
            continue
        dst = bed.rs_addr if sysname == "kernel" else bed.vip
        try:
            with system(bed, sysname, "dr", dut_cpu) as lbd:
                if lbd is not None and establish(bed, lbd, tmp):
                    continue
                tr = make_traffic(bed, tmp, "est", dst)
                pts = []
                for f in fracs:
                    t = trial(bed, tr, f * gmax, args.window * 0.6)
                    pts.append({k: t[k] for k in ("rate", "offered_pps", "rx_pps", "loss")})
                t = trial(bed, tr, 0, args.window * 0.6)
                pts.append({k: t[k] for k in ("rate", "offered_pps", "rx_pps", "loss")})
                out["sweep"].append({"system": sysname, "mode": "dr" if lbd else "route", "points": pts})
                log(f"pps: sweep {sysname}: " + ", ".join(f"{p['offered_pps'] / 1e3:.0f}->{p['rx_pps'] / 1e3:.0f}k"
                                                           for p in pts))
        except (LbdError, OSError) as exc:
            log(f"pps: sweep {sysname} skipped: {exc}")


def summarize(out: dict[str, Any]) -> list[dict[str, Any]]:
    rows: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in out["results"]:
        rows.setdefault((r["system"], r["mode"], r["traffic"]), []).append(r)
    summary = []
    for (sysname, mode, kind), rs in rows.items():
        summary.append({
            "system": sysname, "mode": mode, "traffic": kind,
            "zero_loss_pps": common.summarize([r["zero_loss_pps"] for r in rs]),
            "overload_rx_pps": common.summarize([r["overload"]["rx_pps"] for r in rs]),
            "overload_offered_pps": common.summarize([r["overload"]["offered_pps"] for r in rs]),
            "generator_limited": any(r["generator_limited"] for r in rs),
            "dut_us_per_pkt": common.summarize([r["dut_us_per_pkt"] for r in rs if r.get("dut_us_per_pkt")]),
            "lbd_user_us_per_pkt": common.summarize([r["lbd_user_us_per_pkt"] for r in rs if r.get("lbd_user_us_per_pkt") is not None]),
            "lbd_sys_us_per_pkt": common.summarize([r["lbd_sys_us_per_pkt"] for r in rs if r.get("lbd_sys_us_per_pkt") is not None]),
            "softirq_us_per_pkt": common.summarize([r["softirq_us_per_pkt"] for r in rs if r.get("softirq_us_per_pkt") is not None]),
            "latency_p50_us": common.summarize([r["latency"]["p50"] for r in rs if (r.get("latency") or {}).get("p50") is not None]),
            "latency_p99_us": common.summarize([r["latency"]["p99"] for r in rs if (r.get("latency") or {}).get("p99") is not None]),
            "nfq_queue_dropped_overload": [r["overload"]["nfq"].get("queue_dropped", 0) for r in rs],
            "nfq_user_dropped_overload": [r["overload"]["nfq"].get("user_dropped", 0) for r in rs],
        })
    return summary


def add_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--systems", default=",".join(SYSTEMS))
    ap.add_argument("--modes", default=None, help="default dr,tunnel,fullnat (quick: dr)")
    ap.add_argument("--traffic", default=None, help="default est,syn (quick: est)")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--window", type=float, default=None, help="seconds per trial (default 0.8; quick 0.5)")
    ap.add_argument("--steps", type=int, default=None, help="bisection steps after the probe (default 5; quick 4)")
    ap.add_argument("--no-sweep", dest="sweep", action="store_false")
    ap.add_argument("--latency", action="store_true",
                    help="after each search, one-way latency of marked probes at 50%% of the zero-loss rate "
                    "(bench/latency.py)")
    ap.add_argument("--arms", type=int, choices=(1, 2), default=2,
                    help="2 (default): client and real server on the director's two interfaces; 1: the real "
                    "server on the receiving side (bench/one_arm.py: lbd AF_XDP's TX-ring path; DR and IPIP)")
    ap.add_argument("--xdp-mode", choices=("generic", "native", "auto"), default="generic",
                    help="system afxdp: lbd's --xdp-mode (default generic: on veth, native XDP runs on the "
                    "SENDING CPU, i.e. the generator's, and would hide the director's work from the DUT CPU)")
    ap.add_argument("--wire", choices=wire.WIRES, default="direct",
                    help="direct (default): client and rs1 cabled to the director by plain veth pairs, so the "
                    "generator's CPU does not also run a bridge (bench/wire.py); bridge: the testbed's bridged "
                    "segments (the figures before this option existed)")
    ap.add_argument("--no-steer", dest="steer", action="store_false",
                    help="no RPS: the generator's CPU also runs the director's receive path")
    ap.add_argument("--nice", type=int, default=-10,
                    help="niceness of the generator and of lbd (default -10: the machine is shared)")
    ap.add_argument("--gen-cpu", type=int, default=None, help="CPU for the generator (default 0)")
    ap.add_argument("--dut-cpu", type=int, default=None, help="CPU for lbd (default 1)")
    ap.add_argument("--lbd-args", default="", help="extra options for the C engine's lbd, e.g. "
                    "'--queue-balance 0:3 --queue-cpu-fanout' on a director with more cores (with --dut-cpu "
                    "unset, or a CPU list lbd may use), or '--packet-source afxdp --xdp-interface {lan}' "
                    "({lan}: the director's client-side interface)")
    # Real NICs (see bench/README.md): no namespaces; one system, configured by the operator.
    ap.add_argument("--iface", help="real NIC mode: send on this interface")
    ap.add_argument("--dst-mac", help="real NIC mode: the director's MAC on --iface")
    ap.add_argument("--src", help="real NIC mode: client source address")
    ap.add_argument("--dst", help="real NIC mode: destination (VIP, or the real server for plain routing)")
    ap.add_argument("--rx-count-cmd", help="real NIC mode: shell command printing the receiver's packet count")
    ap.add_argument("--label", default="external", help="real NIC mode: name of the system under test")


def finish_args(args: argparse.Namespace) -> None:
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    if args.window is None:
        args.window = 0.5 if args.quick else 0.8
    if args.steps is None:
        args.steps = 4 if args.quick else 5
    if args.traffic is None:
        args.traffic = "est" if args.quick else ",".join(TRAFFIC)
    if args.modes is None:
        args.modes = "dr" if args.quick else ",".join(MODES)


def run_external(args: argparse.Namespace) -> dict[str, Any]:
    """Real NIC mode: one system (whatever the operator runs on the director), est and syn traffic."""
    missing = [k for k in ("iface", "dst_mac", "src", "dst", "rx_count_cmd") if not getattr(args, k)]
    if missing:
        raise SystemExit(f"real NIC mode needs --{', --'.join(m.replace('_', '-') for m in missing)}")
    p = ExternalPath(args)
    out: dict[str, Any] = {"part": "pps", "external": True, "commit": common.git_commit(),
                           "machine": common.machine_info(), "results": [], "sweep": [], "skipped": [],
                           "path_limit": [], "config": {"window_s": args.window, "steps": args.steps,
                                                        "repeats": args.repeats, "loss_max": LOSS_MAX,
                                                        "command": "python -m bench pps " + " ".join(args.argv)}}
    with tempfile.TemporaryDirectory(prefix="lbB-bench-pps-") as tmpd:
        for rep in range(args.repeats):
            for kind in args.traffic.split(","):
                tr = make_traffic(p, Path(tmpd), kind, args.dst, flow_base=rep * EST_FLOWS)
                if kind == "est":  # the flows' SYNs first, slowly: the director must know the flows
                    run_gen(p, make_traffic(p, Path(tmpd), "warm", args.dst, flow_base=rep * EST_FLOWS),
                            2000, EST_FLOWS, EST_FLOWS / 2000 + 5)
                    time.sleep(0.5)
                res = search(p, tr, args.window, args.steps)
                res.update(system=args.label, mode="external", traffic=kind, rep=rep)
                out["results"].append(res)
                log(f"pps: {args.label} {kind}: zero-loss {res['zero_loss_pps']:.0f} pps")
    out["summary"] = summarize(out)
    return out
