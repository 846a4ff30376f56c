"""The guest side of bench/ab.py: runs INSIDE the virtme-ng guest (Debian's kernel, with ip_vs).

    python -m bench.ab_guest --out DIR [--quick] [--functional-only]

Everything here happens in the guest's own namespaces (lb.testbed.topology, per-run prefix).
Both systems are configured from ONE ipvsadm rules file with ONE tool (bench/ab_tools.py): by
default Debian's ipvsadm, `ipvsadm -C; ipvsadm -R < rules` for kernel IPVS and the same binary
through `lbd-exec` for lbd; `--lbd-tool lbadm` configures lbd with lbadm instead. Which tool
configured each side is recorded (`configured_by`). Results go to DIR/ab_guest.json (DIR is the
--rwdir shared with the host).

One topology (ab_spec: bench/pps.py's, with rs1..rs3 on the back segment, VIP on their lo, each
running bench/native/httpd.c on port 8080, which answers with its name) and one lbd for all:
1. Functional agreement:
   - rr, weights 1/1/1: 12 requests, each on a fresh connection: the sequence of real servers;
   - wlc, weights 1/2/3: 12 connections opened one after another and held open (keep-alive):
     the sequence of real servers the scheduler picked while the active counts grow.
   IPVS and lbd must produce identical sequences.
2. Throughput (bench/pps.py's topology, generator, search and counting): kernel IPVS and lbd
   (C fast path) in DR and TUN (IPIP) mode (`--modes`, default route,tunnel), plus the plain
   router as the path's reference; `--traffic est,syn` (default est): bench/pps.py's established
   ACKs and never-repeating SYNs. `--modes ...,fullnat`: lbd FULLNAT (local addresses .200-.215 of
   the back segment) against kernel IPVS NAT (-m) as the nearest kernel reference ("ipvs-nat":
   this kernel has no FULLNAT; the real servers' default gateway is the director, so NAT fits the
   topology). Debian's ipvsadm cannot express FULLNAT (-b, -P -z are DPVS's), so lbd's FULLNAT
   rules reach it as its --config file, reloaded (lbd's ipvsadm-save parser). Interleaved per
   repetition. After each search, one trial at a common rate (--cpu-rate, --cpu-seconds:
   bench/ab_cpurate.py), the CPU per packet of identical traffic.
3. HTTP: wrk maximum requests/s with keep-alive and connections/s (Connection: close) through
   IPVS, through lbd, and to rs1 through the director as a plain router ("router").

4. Routed (`--parts routed`, bench/ab_routed.py; run first, with lbds of its own): traffic routed
   through the director to rs1's own address, for no service, at one fixed rate: the router against
   kernel IPVS and lbd holding services the traffic does not hit (issue 15 item 1).

`--guest-wire virtio`: the director's links are the virtio-net NICs bench/ab.py gave qemu
(bench/guest_wire.py), for every system; lbd's XDP then runs natively. `--profile SYSTEMS`: perf of
the DUT CPU at each named system's zero-loss rate, after its search (bench/ab_profile.py).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench import ab_cpurate, ab_profile, ab_routed, ab_tools, common, guest_wire, pps
from bench.common import Lbd, LbdError, log
from lb.daemon_options import DEFAULT_STEERING
from lb.testbed import client
from lb.testbed.topology import Topology, TopologySpec

HTTP_PORT = 8080  # functional + http; the pps traffic uses pps.PORT (80), counted and dropped at rs1
MODULES = ["ip_vs", "ip_vs_rr", "ip_vs_wlc", "veth", "bridge", "nfnetlink_queue", "xt_NFQUEUE", "xt_CT",
           "nf_tables", "nft_compat", "iptable_raw", "ipip"]
FWD_FLAG = {"route": "-g", "tunnel": "-i", "masq": "-m", "fullnat": "-b"}
MODES = ("route", "tunnel", "fullnat")  # lbd's forwarding methods measured (throughput)
MODE_ALIASES = {"dr": "route", "ipip": "tunnel", "tun": "tunnel"}  # bench/pps.py's names too
TRAFFIC = ("est", "syn")
PARTS = ("functional", "http", "throughput", "routed")  # routed: bench/ab_routed.py


def rules_text(vip: str, sched: str, reals: list[tuple[str, int]], fwd: str = "route", port: int = HTTP_PORT,
               laddrs: tuple[str, ...] = ()) -> str:
    """An `ipvsadm -S -n` style rules file: what both `ipvsadm -R` and `lbadm -R` read. `laddrs`:
    FULLNAT local addresses (`-P -t VIP:PORT -z ADDR`, lbadm/DPVS syntax, right after the service
    as `lbadm -S` writes them)."""
    lines = [f"-A -t {vip}:{port} -s {sched}"]
    lines += [f"-P -t {vip}:{port} -z {a}" for a in laddrs]
    for addr, weight in reals:
        lines.append(f"-a -t {vip}:{port} -r {addr}:{port} {FWD_FLAG[fwd]} -w {weight}")
    return "\n".join(lines) + "\n"


def parse_choice(text: str, allowed: tuple[str, ...], what: str,
                 aliases: dict[str, str] | None = None) -> list[str]:
    """A comma-separated subset of `allowed` (aliases mapped), in the order given, duplicates
    dropped; ValueError naming the bad word and the choices."""
    out: list[str] = []
    for word in (w.strip() for w in text.split(",")):
        if not word:
            continue
        name = (aliases or {}).get(word, word)
        if name not in allowed:
            raise ValueError(f"{what} {word!r} is not one of {', '.join(allowed)}")
        if name not in out:
            out.append(name)
    if not out:
        raise ValueError(f"no {what} given (choices: {', '.join(allowed)})")
    return out


def reference_system(mode: str) -> str:
    """The kernel IPVS system measured next to lbd's `mode`: IPVS in the same mode, except for
    FULLNAT, which the kernel does not have: IPVS NAT (-m) is the nearest kernel reference."""
    return "ipvs-nat" if mode == "fullnat" else "ipvs"


def ipvs_fwd(system: str, mode: str) -> str:
    """The forwarding method kernel IPVS is given for `system` in `mode`."""
    return "masq" if system == "ipvs-nat" else mode


def lbd_tool_for(mode: str, tool: str) -> str:
    """What configures lbd in `mode`: FULLNAT rules (-b, -P -z) are not Debian ipvsadm's, so they
    go through lbd's --config file (the "lbadm" path of lbd_system: lbd's ipvsadm-save parser)."""
    return "lbadm" if mode == "fullnat" else tool


def plan(repeats: int, modes: list[str], traffic: list[str]) -> list[tuple[int, str, str, str]]:
    """The throughput runs (rep, system, mode, traffic) in order, for the router, kernel IPVS and
    the NFQUEUE lbd; the AF_XDP lbd's runs follow each repetition's (see throughput). The router
    runs once per repetition and traffic kind (mode "route": it does not depend on lbd's mode)."""
    runs = []
    for rep in range(repeats):
        for kind in traffic:
            runs.append((rep, "kernel", "route", kind))
            for mode in modes:
                runs += [(rep, reference_system(mode), mode, kind), (rep, "lbd", mode, kind)]
    return runs


@contextlib.contextmanager
def ipvs_system(director: Any, rules: str) -> Iterator[None]:
    director.exec(ab_tools.ipvs_command(["-C"]))
    director.exec(ab_tools.ipvs_command(["-R"]), input=rules)
    try:
        yield None
    finally:
        director.exec(ab_tools.ipvs_command(["-C"]), check=False)


def start_lbd(director: Any, cpu: int | None = None, nice: int = 0, extra: tuple[str, ...] = ()) -> Lbd:
    """One lbd per topology (it takes ~1 minute to start under TCG), started with
    `--config FILE` (initially empty). Rule sets are then swapped with the tool (see lbd_system):
    `lbd-exec ipvsadm -R`, or `lbadm -R` / rewriting FILE and asking lbd to reload it. While IPVS is measured, lbd holds no
    service: no queue rule, it sees no packet."""
    tmp = Path(tempfile.mkdtemp(prefix=f"{director.topo.prefix}-ab-cfg-"))
    cfg = tmp / "rules"
    cfg.write_text("")
    lbd = Lbd(director, "c", cpu=cpu, nice=nice, conn_max=pps.CONN_MAX_C, extra=["--config", str(cfg), *extra])
    lbd.cfg_path = cfg  # type: ignore[attr-defined]
    lbd.start(timeout=240)
    return lbd


def admin(lbd: Lbd, tool: str, *args: str, rules: str | None = None) -> str:
    """ipvsadm ARGS against lbd with `tool` (lbd-exec ipvsadm, or lbadm); LbdError if it fails."""
    argv = ab_tools.lbd_command(tool, lbd.socket, args)
    r = lbd.host.exec(argv, input=rules, check=False, timeout=120)
    if r.returncode != 0:
        raise LbdError(f"{' '.join(argv)} failed ({r.returncode}): {r.stderr.strip()} {r.stdout.strip()}")
    return r.stdout


def _reload(lbd: Lbd, rules: str) -> None:
    lbd.cfg_path.write_text(rules)  # type: ignore[attr-defined]
    lbd.request("reload", timeout=120)


@contextlib.contextmanager
def lbd_system(lbd: Lbd, rules: str, tool: str = ab_tools.DEFAULT_LBD_TOOL, via_lbadm: bool = False) -> Iterator[Lbd]:
    """The same rules file as for IPVS. tool "ipvsadm": `lbd-exec ipvsadm -C`, then `lbd-exec
    ipvsadm -R < rules` (the very commands IPVS gets), cleared the same way after. tool "lbadm":
    through `lbadm -R` when `via_lbadm` (the functional cases) or as lbd's --config file reloaded
    over the control socket (lbd's own ipvsadm-save parser, the one lbadm -R uses; each lbadm
    start costs 10-30 s of Python start-up under emulation, so its throughput runs use this)."""
    _reload(lbd, "")  # lbd's --config file stays empty: a reload never brings rules back
    if tool == "ipvsadm":
        admin(lbd, tool, "-C")
        admin(lbd, tool, "-R", rules=rules)
    elif via_lbadm:
        lbd.request("clear")
        admin(lbd, tool, "-R", rules=rules)
    else:
        _reload(lbd, rules)
    try:
        lbd.wait_resolved(timeout=60)
        yield lbd
    finally:
        if tool == "ipvsadm":
            try:
                admin(lbd, tool, "-C")
            except LbdError as exc:  # the next case must still start from an empty table
                log(f"ab: {exc}; clearing over the control socket")
                lbd.request("clear")
        else:
            lbd.request("clear")
            _reload(lbd, "")


def stop_lbd(lbd: Lbd) -> None:
    lbd.stop()
    common.flush_iptables(lbd.host)
    lbd.cleanup()


# --------------------------------------------------------------------------- functional + http


def _wait_http(topo: Topology, addr: str) -> None:
    deadline = time.monotonic() + 60
    while not client.get_once(topo.client.netns, addr, HTTP_PORT, timeout=5).ok:
        if time.monotonic() > deadline:
            raise RuntimeError(f"httpd on {addr} does not answer")
        time.sleep(0.2)


def ab_spec() -> TopologySpec:
    """bench/pps.py's topology with three real servers on the back segment: one topology (and one
    lbd: it starts slowly under emulation) for the functional, HTTP and throughput runs. DR across
    segments: the client's packets reach the VIP on the director's lan side, the real servers
    (VIP on lo) answer through their default gateway, the director routing."""
    return pps.pps_spec(reals=3)


def run_all(out: dict[str, Any], args: argparse.Namespace) -> None:
    gen_cpu, dut_cpu = common.cpu_layout(None, None)
    httpd = common.build_tool("httpd")
    with tempfile.TemporaryDirectory(prefix="lbB-ab-") as tmpd, Topology(ab_spec()) as topo:
        out["wire"] = args.guest_wire
        if args.guest_wire == "virtio":  # before the Bed: it reads the interfaces' MACs
            out["virtio_wire"] = guest_wire.apply(topo, dut_cpu, gen_cpu)
            log(f"ab: virtio wire: {out['virtio_wire']}")
        bed = pps.Bed(topo, gen_cpu, dut_cpu, steer=True)
        bed.nice = -10
        bed.dut_cpu = dut_cpu
        reals = [topo.host(f"rs{i}") for i in (1, 2, 3)]
        # The real servers' DR replies (source = the VIP) come back through the director, which
        # owns the VIP: without accept_local it would drop them as martians.
        back_if = topo.director.iface("back").ifname
        topo.director.sysctl({"net.ipv4.conf.all.accept_local": 1, f"net.ipv4.conf.{back_if}.accept_local": 1})
        topo.client.ip("route", "add", str(topo.subnets["back"]), "via", topo.director.iface("lan").addr)
        for rs in reals:
            if rs.name != "rs1":  # pps.Bed put the VIP on rs1's lo
                rs.ip("addr", "add", f"{topo.vip}/32", "dev", "lo")
            rs.popen([str(httpd), "--name", rs.name, "--port", str(HTTP_PORT), "--max-seconds", "1800"],
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        topo.client.sysctl({"net.ipv4.ip_local_port_range": "1024 65535", "net.ipv4.tcp_tw_reuse": 1})
        for rs in reals:
            _wait_http(topo, rs.addr)
        parts = ["functional"] if args.functional_only else args.parts.split(",")

        def part(name: str, fn: Any) -> None:
            t = time.monotonic()
            try:
                fn()
            except Exception as exc:  # noqa: BLE001
                out.setdefault("errors", {})[name] = f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"
                log(f"ab: {name} failed: {exc}")
            out.setdefault("part_seconds", {})[name] = round(time.monotonic() - t, 1)
            common.write_json(args.out / "ab_guest.json", out)

        if "routed" in parts:  # first: it starts its own lbds, and its router must see no lbd process
            part("routed", lambda: ab_routed.run(out, args, bed, [rs.addr for rs in reals], Path(tmpd)))
        if not set(parts) & {"functional", "http", "throughput"}:
            return
        lbd = start_lbd(topo.director, cpu=dut_cpu, nice=-10)
        try:
            for name, fn in (("functional", lambda: functional(out, args, topo, reals, lbd)),
                             ("http", lambda: out.__setitem__("http", _http(topo, reals[0], lbd, args))),
                             ("throughput", lambda: throughput(out, args, bed, lbd, Path(tmpd)))):
                if name in parts:
                    part(name, fn)
        finally:
            stop_lbd(lbd)


def functional(out: dict[str, Any], args: argparse.Namespace, topo: Topology, reals: list[Any], lbd: Lbd) -> None:
    """The scheduler agreement: the same rules and requests through IPVS and through lbd."""
    res: dict[str, Any] = {}
    addrs = [rs.addr for rs in reals]
    cases = {
        "rr": rules_text(topo.vip, "rr", [(a, 1) for a in addrs]),
        "wlc": rules_text(topo.vip, "wlc", [(a, w) for a, w in zip(addrs, (1, 2, 3), strict=False)]),
    }
    res["names"] = {rs.addr: rs.name for rs in reals}
    for case, rules in cases.items():
        res[case] = {"rules": rules}
        for sysname in ("ipvs", "lbd"):
            try:
                ctx = (ipvs_system(topo.director, rules) if sysname == "ipvs"
                       else lbd_system(lbd, rules, args.lbd_tool, via_lbadm=True))
                with ctx:
                    seq = _sequence(topo, case)
                    table = (topo.director.exec(["ipvsadm", "-Ln"]).stdout if sysname == "ipvs"
                             else json.dumps(lbd.request("list")["services"]))
                res[case][sysname] = {"sequence": seq, "table_after": table,
                                      "counts": {x: seq.count(x) for x in sorted(set(seq))}}
            except Exception as exc:  # noqa: BLE001 - recorded; the other system still runs
                res[case][sysname] = {"error": f"{type(exc).__name__}: {exc}"}
            log(f"ab: {case} {sysname}: {res[case][sysname].get('sequence') or res[case][sysname]}")
            time.sleep(1.0)
        x, y = res[case].get("ipvs", {}), res[case].get("lbd", {})
        res[case]["agree"] = bool(x.get("sequence")) and x.get("sequence") == y.get("sequence")
        out["functional"] = res  # written as we go: a timeout keeps what was measured
        common.write_json(args.out / "ab_guest.json", out)


def _sequence(topo: Topology, case: str, n: int = 12) -> list[str]:
    if case == "rr":  # fresh connections, one after another
        return [r.server if r.ok and r.server is not None else f"error:{r.error}"
                for r in client.fresh_gets(topo.client.netns, topo.vip, HTTP_PORT, n, timeout=10)]
    held: list[client.KeepAlive] = []  # wlc: connections held open, so active counts grow
    seq = []
    try:
        for _ in range(n):
            ka = client.KeepAlive(topo.client.netns, topo.vip, HTTP_PORT, timeout=10)
            held.append(ka)
            r = ka.get()
            seq.append(r.server if r.ok and r.server is not None else f"error:{r.error}")
            time.sleep(0.2)  # the entry reaches ESTABLISHED before the next SYN
    finally:
        for ka in held:
            ka.close()
    return seq


def _http(topo: Topology, rs: Any, lbd: Lbd, args: argparse.Namespace) -> list[dict[str, Any]]:
    """wrk through IPVS, through lbd, and to rs1 through the director as a router ("router")."""
    from bench import http as bhttp  # noqa: PLC0415

    res: list[dict[str, Any]] = []
    rules = rules_text(topo.vip, "rr", [(rs.addr, 1)])
    for rep in range(args.repeats):
        for sysname in ("router", "ipvs", "lbd"):
            ctx: Any = (contextlib.nullcontext() if sysname == "router" else
                        ipvs_system(topo.director, rules) if sysname == "ipvs" else
                        lbd_system(lbd, rules, args.lbd_tool))
            target = rs.addr if sysname == "router" else topo.vip
            try:
                with ctx:
                    for mode in ("ka", "close"):
                        r = bhttp._wrk(topo, target, args.http_duration, 16, mode == "close", None, None, 0,
                                       port=HTTP_PORT)
                        res.append({"rep": rep, "system": sysname, "mode": mode, **r})
                        log(f"ab: http rep {rep + 1} {sysname:6} {mode:5}: {r['rate_rps']:.0f}/s "
                            f"p50 {r['lat_us']['p50']} us errors {r['errors_total']}")
            except Exception as exc:  # noqa: BLE001
                res.append({"rep": rep, "system": sysname, "error": str(exc)[:800]})
    return res


# --------------------------------------------------------------------------- throughput


def establish_ipvs(bed: pps.Bed, tmp: Path, flow_base: int) -> str | None:
    warm = pps.make_traffic(bed, tmp, "warm", bed.vip, flow_base)
    conns = 0
    for _ in range(3):
        pps.run_gen(bed, warm, 2000, pps.EST_FLOWS, 10.0)
        time.sleep(0.5)
        txt = bed.director.exec(["ipvsadm", "-Ln", "--stats"]).stdout
        for line in txt.splitlines():
            f = line.split()
            if len(f) > 2 and f[0] == "TCP":
                conns = int(f[2].rstrip("KM")) * (1000 if f[2].endswith("K") else 1)
        if conns >= pps.EST_FLOWS:
            return None
    return f"IPVS holds {conns} of {pps.EST_FLOWS} flows"


AFXDP_QUEUE_NUM = 1  # the AF_XDP lbd's NFQUEUE (its fallback) and instance name: the NFQUEUE lbd holds 0


def xdp_mode(wire: str) -> str:
    """lbd's --xdp-mode on `wire`: generic on veth (native XDP would run on the sending CPU, the
    generator's, see bench/pps.py), native on virtio (the driver's own XDP, bench/guest_wire.py)."""
    return "native" if wire == "virtio" else "generic"


def afxdp_extra(bed: pps.Bed, wire: str = "veth") -> tuple[str, ...]:
    """lbd's options for the AF_XDP source on the director's client-side interface, in xdp_mode(wire).
    The AF_XDP source also binds an NFQUEUE (its fallback for fragments, local clients, fwmark), and
    the NFQUEUE lbd keeps queue 0 while this one runs: another queue number, which also names its own
    instance."""
    return ("--packet-source", "afxdp", "--xdp-interface", bed.director.iface("lan").ifname, "--xdp-mode",
            xdp_mode(wire), "--queue-num", str(AFXDP_QUEUE_NUM))


def afxdp_systems(args: argparse.Namespace, bed: pps.Bed) -> list[tuple[str, tuple[str, ...]]]:
    """The AF_XDP lbd's to measure after the others, with their options: --afxdp "lbd-afxdp",
    --afxdp-fast "lbd-afxdp-fast" (the same with --xdp-fastpath: established DR flows forwarded by
    the XDP program itself, docs/afxdp.md); --afxdp-steering iptables gives both `--steering iptables`."""
    out: list[tuple[str, tuple[str, ...]]] = []
    wire = getattr(args, "guest_wire", "veth")
    if not (args.afxdp or getattr(args, "afxdp_fast", False)):
        return out
    steering = getattr(args, "afxdp_steering", DEFAULT_STEERING)
    base = (*afxdp_extra(bed, wire), *(("--steering", steering) if steering != DEFAULT_STEERING else ()))
    if args.afxdp:
        out.append(("lbd-afxdp", base))
    if getattr(args, "afxdp_fast", False):
        out.append(("lbd-afxdp-fast", (*base, "--xdp-fastpath")))
    return out


@contextlib.contextmanager
def redirect_target(bed: pps.Bed, wire: str) -> Iterator[None]:
    """On the virtio wire, XDP_PASS on the director's back NIC while an AF_XDP lbd runs: virtio_net
    takes the fast path's redirected frames only with a program attached (bench/guest_wire.py)."""
    back = bed.director.iface("back").ifname
    if wire == "virtio":
        guest_wire.attach_pass(bed.director, back)
    try:
        yield None
    finally:
        if wire == "virtio":
            guest_wire.detach(bed.director, back)


def throughput(out: dict[str, Any], args: argparse.Namespace, bed: pps.Bed, lbd: Lbd, tmp: Path) -> None:
    """Zero-loss pps of the router, IPVS and lbd per mode (--modes) and traffic (--traffic), to rs1
    (port 80); for FULLNAT, kernel IPVS NAT ("ipvs-nat") is the kernel's row.

    With --afxdp (--afxdp-fast), also lbd with the AF_XDP source ("lbd-afxdp", with --xdp-fastpath
    "lbd-afxdp-fast", afxdp_systems): a second lbd, started in every
    repetition after the others were measured and stopped after its own runs, because its XDP
    program (generic mode) runs for every packet of the interface, also while it holds no service,
    and must not weigh on the router's, IPVS's and the NFQUEUE lbd's figures.

    SYN traffic never repeats a (source, port) pair within the whole run (one tuple sequence per
    destination, continued across systems): a director must never see a SYN of a connection it
    still holds from an earlier run."""
    res: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    out["pps"] = {"results": res, "skipped": skipped, "window_s": args.window, "steps": args.steps,
                  "modes": args.modes, "traffic": args.traffic, "cpu_rate": args.cpu_rate, "cpu_seconds": args.cpu_seconds}
    run_no = [0]
    syn_traffic: dict[str, pps.Traffic] = {}

    def traffic_for(kind: str, dst: str, flow_base: int) -> pps.Traffic:
        if kind == "syn":
            if dst not in syn_traffic:
                syn_traffic[dst] = pps.make_traffic(bed, tmp, "syn", dst)
            return syn_traffic[dst]
        return pps.make_traffic(bed, tmp, "est", dst, flow_base)

    def measure(rep: int, sysname: str, mode: str, kind: str, the_lbd: Lbd | None) -> None:
        run_no[0] += 1
        flow_base = (run_no[0] % 40) * pps.EST_FLOWS  # fresh est flows for every run
        dst = bed.rs_addr if sysname == "kernel" else bed.vip
        try:
            if sysname == "kernel":
                ctx: Any = contextlib.nullcontext()
            elif sysname.startswith("ipvs"):
                ctx = ipvs_system(bed.director, rules_text(bed.vip, "rr", [(bed.rs_addr, 1)],
                                                           ipvs_fwd(sysname, mode), port=pps.PORT))
            else:
                laddrs = tuple(bed.laddrs) if mode == "fullnat" else ()
                rules = rules_text(bed.vip, "rr", [(bed.rs_addr, 1)], mode, port=pps.PORT, laddrs=laddrs)
                ctx = lbd_system(the_lbd, rules, lbd_tool_for(mode, args.lbd_tool))  # type: ignore[arg-type]
            with ctx:
                bed.lbd_pid = the_lbd.proc.pid if the_lbd is not None and the_lbd.proc else None
                why = None
                if kind == "est":
                    why = (establish_ipvs(bed, tmp, flow_base) if sysname.startswith("ipvs") else
                           pps.establish(bed, the_lbd, tmp, flow_base, rate=2000) if the_lbd is not None else None)
                tr = traffic_for(kind, dst, flow_base)
                why = why or pps.functional_check(bed, tr, n=200, rate=500)
                if why:
                    raise LbdError(why)
                r = pps.search(bed, tr, args.window, args.steps)
                if args.cpu_rate > 0:  # identical traffic for every system (bench/ab_cpurate.py); before perf
                    r["fixed_rate"] = ab_cpurate.measure(bed, tr, args.cpu_rate, args.cpu_seconds)
                if sysname in args.profile:  # after the search: its figures are not perf's
                    key = f"{sysname}/{mode}/{kind}/rep{rep + 1}"
                    try:
                        prof = ab_profile.profile(bed, tr, r["zero_loss_pps"] or 1000.0)
                    except Exception as exc:  # noqa: BLE001 - the measurement stands without it
                        prof = {"error": f"{type(exc).__name__}: {exc}"[:1000]}
                    out["pps"].setdefault("profiles", {})[key] = prof
        except Exception as exc:  # noqa: BLE001
            skipped.append({"system": sysname, "mode": mode, "traffic": kind, "rep": rep, "reason": str(exc)[:1000]})
            log(f"ab: pps {sysname} {mode} {kind} skipped: {exc}")
            return
        finally:
            bed.lbd_pid = None
        r.update(system=sysname, mode=mode, traffic=kind, rep=rep,
                 loadavg=Path("/proc/loadavg").read_text().split()[:3])
        if sysname.startswith("lbd-afxdp") and the_lbd is not None:  # what its XDP program did (fastpath, redirect)
            with contextlib.suppress(Exception):
                r["afxdp_program"] = (the_lbd.request("counters").get("afxdp") or {}).get("program")
        res.append(r)
        common.write_json(args.out / "ab_guest.json", out)
        log(f"ab: pps rep {rep + 1} {sysname:9} {mode:7} {kind}: zero-loss {r['zero_loss_pps']:.0f} pps"
            f"{' (generator-limited)' if r['generator_limited'] else ''}; DUT "
            f"{r.get('dut_us_per_pkt') or 0:.1f} us/packet{f'; at {args.cpu_rate:g} pps ' if args.cpu_rate > 0 else ''}"
            f"{ab_cpurate.rep_cell(r) if args.cpu_rate > 0 else ''}")

    runs = plan(args.repeats, args.modes, args.traffic)
    for rep in range(args.repeats):
        for r_rep, sysname, mode, kind in runs:
            if r_rep == rep:
                measure(rep, sysname, mode, kind, lbd if sysname == "lbd" else None)
        for sysname, extra in afxdp_systems(args, bed):
            with redirect_target(bed, args.guest_wire):
                try:
                    xlbd = start_lbd(bed.director, cpu=bed.dut_cpu, nice=bed.nice, extra=extra)
                except Exception as exc:  # noqa: BLE001
                    skipped.append({"system": sysname, "mode": "*", "traffic": "*", "rep": rep,
                                    "reason": str(exc)[:1000]})
                    log(f"ab: {sysname} did not start: {exc}")
                    continue
                try:
                    status = xlbd.request("ping").get("afxdp")
                    out["pps"].setdefault("afxdp_status", []).append({"system": sysname, "rep": rep, **(status or {})})
                    log(f"ab: {sysname}: {status}")
                    for kind in args.traffic:
                        for mode in args.modes:
                            measure(rep, sysname, mode, kind, xlbd)
                finally:
                    stop_lbd(xlbd)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--functional-only", action="store_true")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--window", type=float, default=1.0)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--http-duration", type=float, default=3.0)
    ap.add_argument("--afxdp", action="store_true", help="throughput also of lbd with --packet-source afxdp")
    ap.add_argument("--afxdp-fast", action="store_true",
                    help="throughput also of lbd with --packet-source afxdp --xdp-fastpath")
    ap.add_argument("--afxdp-steering", choices=("iptables", "nftables"), default=DEFAULT_STEERING,
                    help=f"the AF_XDP lbd's --steering (its NFQUEUE fallback's rules; default {DEFAULT_STEERING}, lbd's)")
    ap.add_argument("--parts", default="functional,http,throughput", help=f"which of {','.join(PARTS)}")
    ap.add_argument("--routed-systems", default=None, help=f"routed: of {','.join(ab_routed.SYSTEMS)} (default all)")
    ap.add_argument("--modes", default=None,
                    help=f"throughput: lbd's modes, of {','.join(MODES)} (dr, ipip: aliases; default route,tunnel; "
                    "quick route); fullnat is measured next to kernel IPVS NAT (-m)")
    ap.add_argument("--traffic", default="est", help=f"throughput: traffic kinds, of {','.join(TRAFFIC)} (default est)")
    ap.add_argument("--lbd-tool", choices=ab_tools.LBD_TOOLS, default=ab_tools.DEFAULT_LBD_TOOL,
                    help="what configures lbd: ipvsadm (default: the same binary as for IPVS, through "
                    "lbd-exec) or lbadm")
    ap.add_argument("--guest-wire", choices=guest_wire.WIRES, default="veth",
                    help="the director's links: veth (the testbed's) or virtio (the NICs bench/ab.py gave qemu, "
                    "bench/guest_wire.py)")
    ap.add_argument("--profile", default="", help="throughput: systems (kernel, ipvs, lbd, lbd-afxdp, lbd-afxdp-fast) "
                    "to profile with perf on the DUT CPU at their zero-loss rate after their search")
    ap.add_argument("--cpu-rate", type=float, default=ab_cpurate.DEFAULT_RATE,
                    help="throughput: one trial at this common rate (pps) after each search (0: none)")
    ap.add_argument("--cpu-seconds", type=float, default=ab_cpurate.DEFAULT_SECONDS, help="that trial's window (s)")
    args = ap.parse_args(argv)
    args.profile = [w for w in args.profile.split(",") if w]
    if args.repeats is None:
        args.repeats = 1 if args.quick else 2
    if args.steps is None:
        args.steps = 4 if args.quick else 5
    try:
        args.modes = parse_choice(args.modes or ("route" if args.quick else "route,tunnel"), MODES, "mode", MODE_ALIASES)
        args.traffic = parse_choice(args.traffic, TRAFFIC, "traffic")
        args.parts = ",".join(parse_choice(args.parts, PARTS, "part"))
        ab_routed.parse_systems(args.routed_systems)
    except ValueError as exc:
        ap.error(str(exc))
    t0 = time.monotonic()
    out: dict[str, Any] = {"kernel": os.uname().release, "cpus": os.cpu_count(), "started": time.ctime(),
                           "args": vars(args) | {"out": str(args.out)}}
    for m in MODULES:
        subprocess.run(["modprobe", m], capture_output=True)
    out["ipvsadm_version"] = subprocess.run(["ipvsadm", "--version"], capture_output=True, text=True).stdout.strip()
    out["configured_by"] = ab_tools.configured_by(args.lbd_tool)
    log(f"ab: IPVS configured by {out['configured_by']['ipvs']}; lbd by {out['configured_by']['lbd']}")
    if args.quick:
        args.functional_only = True  # a quick run is the functional agreement (boot + lbd start-up ~2 min)
    try:
        run_all(out, args)
    except Exception as exc:  # noqa: BLE001
        out.setdefault("errors", {})["setup"] = f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"
        log(f"ab: failed: {exc}")
    out["elapsed_s"] = round(time.monotonic() - t0, 1)
    common.write_json(args.out / "ab_guest.json", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
