"""A/B against kernel IPVS, in a guest booting Debian's distribution kernel (this host has no ip_vs).

    python -m bench ab [--quick] [--functional-only] [--timeout 900] [--kernel-dir DIR]
                       [--lbd-tool ipvsadm|lbadm] [--cpu-rate 8000] [--cpu-seconds 5]

Both systems are configured from one rules file by one tool (bench/ab_tools.py): by default
Debian's ipvsadm, for lbd through lbd-exec (issue 17 item 4); `--lbd-tool lbadm` uses lbadm for lbd.

Where the running kernel has ip_vs, the same guest script (bench/ab_guest.py) can run natively
in namespaces: `python -m bench.ab_guest --out DIR`.

The guest, its packages and its kernel are lb/testbed/guest.py's (shared with tests/kernel):
`make kernel-deps` installs them; the kernel is fetched here on first use too. Emulation is
slow: every figure from the guest is only meaningful as a ratio between the systems measured
in the same guest run (IPVS vs lbd), never as an absolute.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import ab_cpurate, ab_routed, ab_tools, common, guest_wire
from lb.daemon_options import DEFAULT_STEERING
from lb.testbed import guest


def run_guest(out_dir: Path, quick: bool, functional_only: bool, timeout: float,
              kdir: Path | None = None, lbd_tool: str = ab_tools.DEFAULT_LBD_TOOL,
              guest_args: str = "", qemu_opts: list[str] | None = None) -> dict[str, Any]:
    """Prepare, boot, run bench/ab_guest.py inside; returns its results (or why not). `qemu_opts`:
    extra qemu arguments (the virtio wire's NICs, bench/guest_wire.py)."""
    problem = guest.environment_problem(kdir)
    if guest.kernel_image(kdir) is None or (kdir is None and guest.kernel_release() != guest.KERNEL_RELEASE):
        guest.prepare_kernel(kdir)
        problem = guest.environment_problem(kdir)
    if problem:
        return {"error": f"guest cannot boot: {problem}", "skipped": problem}
    kimg = guest.kernel_image(kdir)
    assert kimg is not None
    common.build_tool("pktgen")
    common.build_tool("httpd")
    work = Path(tempfile.mkdtemp(prefix="lbB-ab-out-"))
    try:
        flags = ((" --quick" if quick else "") + (" --functional-only" if functional_only else "")
                 + f" --lbd-tool {lbd_tool}" + (f" {guest_args}" if guest_args else ""))
        script = (f"{guest.booted_marker_command(work)} && cd {common.REPO} && PYTHONDONTWRITEBYTECODE=1 "
                  f"PYTHONPATH={common.REPO} {common.PY} -m bench.ab_guest --out {work}{flags}")
        boot = guest.boot(script, work, timeout, kimg, qemu_opts=qemu_opts or ())
        res: dict[str, Any] = {"rc": boot.rc, "seconds": boot.seconds, "command": boot.command,
                               "booted": boot.booted, "log_tail": boot.log_tail(), "kernel_image": str(kimg)}
        data = common.read_json(work / "ab_guest.json") if (work / "ab_guest.json").exists() else None
        if data is None:
            why = boot.log_tail(1500) if boot.booted else f"not booted: {boot.why_not_booted()}"
            res["error"] = f"the guest produced no results (rc {boot.rc}); {why}"
            return {"boot": res, "error": res["error"]}
        if boot.rc != 0:
            data.setdefault("errors", {})["boot"] = f"guest run ended with {boot.rc}: partial results"
        return {"boot": res, "guest": data}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def summarize(data: dict[str, Any]) -> dict[str, Any]:
    g = data.get("guest") or {}
    s: dict[str, Any] = {}
    f = g.get("functional") or {}
    s["functional"] = {case: f[case].get("agree") for case in ("rr", "wlc") if case in f}
    p = (g.get("pps") or {}).get("results", [])
    rows: dict[str, list[float]] = {}
    for r in p:
        rows.setdefault(f"{r['system']}/{r['mode']}{_traffic_suffix(r)}", []).append(r["zero_loss_pps"])
    s["pps"] = {k: common.summarize(v) for k, v in rows.items()}
    s["ratio_lbd_over_ipvs"] = {k.split("/", 1)[1]: v["zero_loss_lbd_over_ipvs"]
                                for k, v in guest_ratios(p).items() if k.startswith("lbd/")}
    s["guest_ratios"] = guest_ratios(p)
    h = g.get("http") or []
    hs: dict[str, list[float]] = {}
    for r in h:
        if "rate_rps" in r:
            hs.setdefault(f"{r['system']}/{r['mode']}", []).append(r["rate_rps"])
    s["http"] = {k: common.summarize(v) for k, v in hs.items()}
    if g.get("routed"):  # bench/ab_routed.py: per system, us/pkt and the ratio to the router
        s["routed"] = ab_routed.summary(g["routed"].get("results") or [])
    return s


def _traffic_suffix(r: dict[str, Any]) -> str:
    """"" for established traffic (results from before --traffic had none: est), "/syn" else."""
    kind = r.get("traffic", "est")
    return "" if kind == "est" else f"/{kind}"


def _pair_ratios(results: list[dict[str, Any]], num: str, den: str, mode: str,
                 kind: str) -> tuple[list[float], list[float]]:
    """Within each repetition, systems `num` and `den` in `mode` with `kind` traffic: zero-loss
    num/den and CPU per packet den/num (> 1: num cheaper)."""
    zl, cpu = [], []
    for rep in sorted({r["rep"] for r in results}):
        def pick(system: str, rep: int = rep) -> list[dict[str, Any]]:
            return [r for r in results if r["rep"] == rep and r["system"] == system and r["mode"] == mode
                    and r.get("traffic", "est") == kind]
        a, b = pick(num), pick(den)
        if not (a and b):
            continue
        if b[0]["zero_loss_pps"]:
            zl.append(a[0]["zero_loss_pps"] / b[0]["zero_loss_pps"])
        if a[0].get("dut_us_per_pkt") and b[0].get("dut_us_per_pkt"):
            cpu.append(b[0]["dut_us_per_pkt"] / a[0]["dut_us_per_pkt"])
    return zl, cpu


def guest_ratios(results: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per mode, traffic and lbd packet source ("lbd": NFQUEUE, "lbd-afxdp", "lbd-afxdp-fast"), taken within each
    repetition: zero-loss pps lbd / IPVS, and director CPU per packet IPVS / lbd (>= 1.0: lbd at
    least as cheap per packet as kernel IPVS, issue 19 item 4). The kernel's row is IPVS in the
    same mode, for FULLNAT IPVS NAT ("ipvs-nat", bench/ab_guest.py reference_system), its nearest.
    With fixed-rate trials (--cpu-rate), also "cpu_fixed_ipvs_over_lbd" (IPVS / lbd at that common
    rate) and "cpu_fixed_left_out" (repetitions left out: a fixed-rate trial lost packets).
    Keys "lbd-afxdp/route" (established), "lbd/tunnel/syn"; "reference" names the kernel's row.
    "afxdp_over_nfqueue" (under the AF_XDP keys): zero-loss AF_XDP/NFQUEUE and CPU NFQUEUE/AF_XDP."""
    from bench.ab_guest import MODES, reference_system  # noqa: PLC0415

    out: dict[str, dict[str, Any]] = {}
    kinds = sorted({r.get("traffic", "est") for r in results}, key=lambda k: (k != "est", k))
    for kind in kinds:
        for mode in sorted({r["mode"] for r in results}, key=lambda m: (m not in MODES, MODES.index(m) if m in MODES else 0, m)):
            ref = reference_system(mode)
            for lbd_sys in ("lbd", "lbd-afxdp", "lbd-afxdp-fast"):
                zl, cpu = _pair_ratios(results, lbd_sys, ref, mode, kind)
                entry: dict[str, Any] = {"reference": ref, "zero_loss_lbd_over_ipvs": common.summarize(zl),
                                         "cpu_ipvs_over_lbd": common.summarize(cpu)}
                fixed, dropped = ab_cpurate.pair_ratios(results, lbd_sys, ref, mode, kind)
                if fixed or dropped:  # --cpu-rate: the same offered rate for both (bench/ab_cpurate.py)
                    entry.update(cpu_fixed_ipvs_over_lbd=common.summarize(fixed), cpu_fixed_left_out=dropped)
                    marginal, _ = ab_cpurate.pair_ratios(results, lbd_sys, ref, mode, kind, marginal=True)
                    if marginal:  # runs with idle windows: the per-packet part alone
                        entry["cpu_marginal_ipvs_over_lbd"] = common.summarize(marginal)
                if lbd_sys != "lbd":
                    xzl, xcpu = _pair_ratios(results, lbd_sys, "lbd", mode, kind)
                    entry["afxdp_over_nfqueue"] = {"zero_loss": common.summarize(xzl),
                                                   "cpu_nfqueue_over_afxdp": common.summarize(xcpu)}
                    if not (zl or cpu or xzl or xcpu):
                        continue
                elif not (zl or cpu):
                    continue
                out[f"{lbd_sys}/{mode}{'' if kind == 'est' else '/' + kind}"] = entry
    return out


def run(args: argparse.Namespace, out_dir: Path) -> dict[str, Any]:
    t0 = time.monotonic()
    wire = getattr(args, "guest_wire", "veth")
    if wire == "virtio":
        guest_wire.build_xdp_pass()  # the guest cannot write bench/.build
    data = run_guest(out_dir, args.quick, args.functional_only, args.timeout,
                     Path(args.kernel_dir) if args.kernel_dir else None, args.lbd_tool,
                     " ".join(shlex.quote(a) for a in guest_extra(args)), qemu_opts_for(wire))
    data.update(part="ab", commit=common.git_commit(), machine=common.machine_info(),
                config={"quick": args.quick, "functional_only": args.functional_only, "timeout_s": args.timeout,
                        "lbd_tool": args.lbd_tool, "guest_args": guest_extra(args), "guest_wire": wire,
                        "command": "python -m bench ab " + " ".join(args.argv)})
    data["configured_by"] = (data.get("guest") or {}).get("configured_by") or ab_tools.configured_by(args.lbd_tool)
    data["summary"] = summarize(data)
    data["elapsed_s"] = round(time.monotonic() - t0, 1)
    if getattr(args, "md", None):
        from bench import afxdp_report  # noqa: PLC0415

        routed_only = (getattr(args, "parts", None) or "") == "routed"  # its own report (bench/ab_routed.py)
        args.md.write_text(ab_routed.render(data) if routed_only else afxdp_report.render_guest(data))
        common.log(f"ab: {args.md}")
    return data


def qemu_opts_for(wire: str) -> list[str]:
    """The qemu arguments the guest wire needs: none for veth, the NICs for virtio (bench/guest_wire.py)."""
    if wire not in guest_wire.WIRES:
        raise ValueError(f"guest wire {wire!r} is not one of {', '.join(guest_wire.WIRES)}")
    return guest_wire.qemu_opts(guest_wire.plan()) if wire == "virtio" else []


def guest_extra(args: argparse.Namespace) -> list[str]:
    """bench/ab_guest.py options passed through: --afxdp, --afxdp-fast, --parts, --repeats, --modes, --traffic,
    --steps, --profile, --routed-systems, --cpu-rate, --cpu-seconds, --guest-wire, --afxdp-steering (when not the default)."""
    extra = [f"--{flag}" for flag in ("afxdp", "afxdp-fast") if getattr(args, flag.replace("-", "_"), False)]
    if getattr(args, "guest_wire", "veth") != "veth":
        extra += ["--guest-wire", args.guest_wire]
    if getattr(args, "afxdp_steering", DEFAULT_STEERING) != DEFAULT_STEERING:
        extra += ["--afxdp-steering", args.afxdp_steering]
    for opt in ("parts", "repeats", "modes", "traffic", "steps", "profile", "routed_systems"):
        if getattr(args, opt, None):
            extra += [f"--{opt.replace('_', '-')}", str(getattr(args, opt))]
    for opt in ("cpu_rate", "cpu_seconds"):  # 0 is a value here (--cpu-rate 0: no fixed-rate trial)
        if getattr(args, opt, None) is not None:
            extra += [f"--{opt.replace('_', '-')}", f"{getattr(args, opt):g}"]
    return extra


def add_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--functional-only", action="store_true")
    ap.add_argument("--timeout", type=float, default=None, help="bound for the whole guest run (default 660 s; quick 360)")
    ap.add_argument("--kernel-dir", default=None, help=f"unpacked Debian kernel (default {guest.KERNEL_DIR})")
    ap.add_argument("--lbd-tool", choices=ab_tools.LBD_TOOLS, default=ab_tools.DEFAULT_LBD_TOOL,
                    help="what configures lbd: ipvsadm (default; the same Debian binary that configures kernel "
                    "IPVS, through lbd-exec) or lbadm")
    ap.add_argument("--afxdp", action="store_true",
                    help="throughput also of lbd with --packet-source afxdp (generic XDP on the guest's veth)")
    ap.add_argument("--afxdp-fast", action="store_true",
                    help="throughput also of lbd with --packet-source afxdp --xdp-fastpath (established DR flows "
                    "forwarded by the XDP program)")
    ap.add_argument("--afxdp-steering", choices=("iptables", "nftables"), default=DEFAULT_STEERING,
                    help=f"the AF_XDP lbd's --steering (its NFQUEUE fallback's rules; default {DEFAULT_STEERING}, lbd's)")
    ap.add_argument("--parts", default=None, help="guest parts: functional,http,throughput,routed (default "
                    "functional,http,throughput; routed: bench/ab_routed.py)")
    ap.add_argument("--routed-systems", default=None, help="routed: which of router,ipvs,ipvs-dr,lbd-in,lbd-in-dr,lbd "
                    "(default all; router always)")
    ap.add_argument("--repeats", type=int, default=None, help="guest repetitions (default 2; quick 1)")
    ap.add_argument("--modes", default=None,
                    help="throughput: lbd's modes, of route,tunnel,fullnat (dr, ipip: aliases; default route,tunnel); "
                    "fullnat is measured next to kernel IPVS NAT (-m), the nearest kernel reference")
    ap.add_argument("--traffic", default=None, help="throughput: traffic kinds, of est,syn (default est)")
    ap.add_argument("--steps", type=int, default=None, help="throughput: bisection steps (default 5)")
    ap.add_argument("--guest-wire", choices=guest_wire.WIRES, default="veth",
                    help="the director's links in the guest: veth (default: the testbed's veth and bridges; lbd's "
                    "XDP in generic mode) or virtio (virtio-net NICs joined by qemu hubs, lbd's XDP native in the "
                    "NIC driver; bench/guest_wire.py)")
    ap.add_argument("--profile", default=None, help="throughput: systems to profile with perf on the guest's DUT "
                    "CPU at their zero-loss rate (e.g. ipvs,lbd-afxdp-fast; bench/ab_guest.py profile)")
    ap.add_argument("--cpu-rate", type=float, default=None,
                    help="throughput: after each system's search, one trial at this offered rate (pps), the same "
                    f"for every system, for the CPU per packet of identical traffic (default {ab_cpurate.DEFAULT_RATE:g}; "
                    "0: none; bench/ab_cpurate.py)")
    ap.add_argument("--cpu-seconds", type=float, default=None,
                    help=f"throughput: that trial's window (default {ab_cpurate.DEFAULT_SECONDS:g} s)")
    ap.add_argument("--md", type=Path, default=None, help="also write the throughput report (markdown) here")


def finish_args(args: argparse.Namespace) -> None:
    """Defaults, and --modes/--traffic checked here, before a guest boots for minutes."""
    from bench import ab_guest  # noqa: PLC0415

    if args.timeout is None:
        args.timeout = 360 if args.quick else 660
    if args.modes:
        args.modes = ",".join(ab_guest.parse_choice(args.modes, ab_guest.MODES, "mode", ab_guest.MODE_ALIASES))
    if args.traffic:
        args.traffic = ",".join(ab_guest.parse_choice(args.traffic, ab_guest.TRAFFIC, "traffic"))
    if args.parts:
        args.parts = ",".join(ab_guest.parse_choice(args.parts, ab_guest.PARTS, "part"))
    if getattr(args, "routed_systems", None):
        args.routed_systems = ",".join(ab_routed.parse_systems(args.routed_systems))
