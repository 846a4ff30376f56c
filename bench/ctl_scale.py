"""Control-plane cost against the number of services (issue 15, item 2; part of `bench scale`).

    flock /tmp/lvs-bench.lock python -m bench.ctl_scale [--sizes 1,1000,10000] [--out FILE]

For each size N: N DR services of 2 destinations each (2N distinct real-server addresses, on-link
in the director's namespace with static neighbour entries: no packet is sent), then, with one lbd:

- start with --config of the N services (time until the control socket answers);
- background resolution of the 2N addresses (time until `list` shows them all resolved);
- idle CPU of lbd over IDLE_WINDOW_S (utime + stime from /proc, % of one core);
- one `lbadm` command of each kind (-A, -a, -e, -E, -d, -D, -L -t one service, -L -n all, -S),
  wall clock of the lbadm process, median of REPEATS (lb's bytecode compiled first, as an
  installation has it; run directly, not through `ip netns exec`: --socket names lbd);
- `lbadm --reload` with the file unchanged (no-op) and with one service added (SIGHUP runs the
  same code: Director.handle("reload"));
- `lbadm -C`, then `lbadm -R` of the whole -S output (N services + 2N destinations), checked complete.

Everything runs twice per size unless --no-iptables-split: lbd --no-iptables (the control plane
alone) and with lbd's steering, its default (nftables: its own table; the sync is another part of
issue 15, item 1: reported separately so that each cost is seen). The JSON's `iptables` says
"with steering" (its name from when that was iptables rules); `steering` names it. Targets (issue 15): at 10,000 services a command < 0.1 s,
a no-op reload < 1 s, -R of 10,000 services + 20,000 real servers works in < 10 s, idle < 1 % of
a core. The hook for `python -m bench scale`: run(args) -> data, report(data) -> (markdown lines,
targets as [target, figure, verdict]).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import common
from bench.common import LBADM, Lbd, LbdError, log
from lb.daemon_options import DEFAULT_STEERING

SIZES = (1, 1000, 10000)
DESTS_PER_SERVICE = 2
REPEATS = 5
IDLE_WINDOW_S = 10.0
RESOLVE_TIMEOUT_S = 300.0  # background resolution of 20,000 addresses takes a while; bounded
LBADM_TIMEOUT_S = 120.0
TARGET_COMMAND_S = 0.1
TARGET_NOOP_RELOAD_S = 1.0
TARGET_RESTORE_S = 10.0
TARGET_IDLE_PCT = 1.0
TARGET_SIZE = 10000


def vip(i: int) -> str:
    return f"10.{64 + (i >> 16)}.{(i >> 8) & 255}.{i & 255}"


def rip(j: int) -> str:
    return f"172.30.{(j >> 8) & 255}.{j & 255}" if j < 65536 else f"172.31.{(j >> 8) & 255}.{j & 255}"


def rules_text(n: int, extra: int = 0) -> str:
    """ipvsadm -S style rules: n (+ extra) services, DESTS_PER_SERVICE real servers each."""
    lines = []
    for i in range(n + extra):
        lines.append(f"-A -t {vip(i)}:80 -s rr")
        for k in range(DESTS_PER_SERVICE):
            lines.append(f"-a -t {vip(i)}:80 -r {rip(i * DESTS_PER_SERVICE + k + 1)}:80 -g -w 1")
    return "\n".join(lines) + "\n"


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime (fields 14, 15)


class Bed:
    """The director namespace of a dr_spec(1) topology, with 2N static real-server neighbours."""

    def __init__(self, topo: Any, tmp: Path) -> None:
        self.topo = topo
        self.dir = topo.director
        self.tmp = tmp
        self.ifname = self.dir.ifname
        rs_mac = topo.reals[0].mac
        self.dir.ip("addr", "add", "172.31.255.254/15", "dev", self.ifname)
        # (gc_thresh* are the initial namespace's only; PERMANENT entries are not garbage-collected)
        self.rs_mac = rs_mac
        self.neighbours = 0

    def neighbours_for(self, n_addrs: int) -> None:
        if n_addrs <= self.neighbours:
            return
        batch = self.tmp / "neigh.batch"
        batch.write_text("".join(f"neigh replace {rip(j)} lladdr {self.rs_mac} dev {self.ifname} nud permanent\n"
                                 for j in range(self.neighbours + 1, n_addrs + 1)))
        self.dir.exec(["ip", "-batch", str(batch)], timeout=120)
        self.neighbours = n_addrs

    def lbadm(self, sock: str, *args: str, stdin: str | None = None) -> tuple[float, subprocess.CompletedProcess[str]]:
        # Run where the bench runs, not through `ip netns exec` (~7 ms of its own here: a mount
        # namespace and /sys remounted): --socket names lbd's control socket, a file, and lbadm
        # touches nothing of the network namespace with numeric addresses.
        argv = [str(LBADM), "--socket", sock, *args]
        t0 = time.perf_counter()
        proc = subprocess.run(argv, input=stdin, text=True, capture_output=True, timeout=LBADM_TIMEOUT_S)
        return time.perf_counter() - t0, proc


def _median_cmd(bed: Bed, sock: str, argvs: list[list[str]]) -> dict[str, Any]:
    times = []
    for argv in argvs:
        dt, proc = bed.lbadm(sock, *argv)
        if proc.returncode != 0:
            raise LbdError(f"lbadm {' '.join(argv)}: exit {proc.returncode}: {proc.stderr.strip()[:300]}")
        times.append(dt)
    return {"median_s": round(statistics.median(times), 4), "max_s": round(max(times), 4), "n": len(times)}


def _server_side(lbd: Lbd, vips: list[str]) -> dict[str, Any]:
    """The same operations as control requests from this process: lbd's own time (plus a local
    socket round trip), without lbadm's interpreter start-up."""
    def key(v: str) -> dict[str, Any]:
        return {"proto": "tcp", "addr": v, "port": 80}

    dest = {"addr": rip(1), "port": 80, "fwd": "route", "weight": 1}
    ops: list[tuple[str, Any]] = [
        ("add_service", lambda v: {**key(v), "sched": "rr"}),
        ("add_dest", lambda v: {"service": key(v), "dest": dest}),
        ("edit_dest", lambda v: {"service": key(v), "dest": {**dest, "weight": 3}}),
        ("edit_service", lambda v: {**key(v), "sched": "wlc"}),
        ("del_dest", lambda v: {"service": key(v), "dest": {"addr": rip(1), "port": 80}}),
        ("del_service", key),
        ("list", lambda v: {"service": key(vip(0))}),
    ]
    out: dict[str, Any] = {}
    for op, args in ops:
        times = []
        for v in vips:
            t0 = time.perf_counter()
            lbd.request(op, args(v), timeout=120)
            times.append(time.perf_counter() - t0)
        out[op] = {"median_s": round(statistics.median(times), 5), "max_s": round(max(times), 5)}
    return out


def _wait_resolved(lbd: Lbd, want: int) -> float | None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < RESOLVE_TIMEOUT_S:
        services = lbd.request("list", timeout=120)["services"]
        states = [d["l2"]["state"] for s in services for d in s["dests"]]
        if len(states) >= want and all(st == "resolved" for st in states):
            return time.monotonic() - t0
        time.sleep(0.5)
    return None


def measure_size(bed: Bed, n: int, iptables: bool) -> dict[str, Any]:
    tag = f"n={n} {'iptables' if iptables else 'no-iptables'}"
    bed.neighbours_for((n + 1) * DESTS_PER_SERVICE + 2)
    conf = bed.tmp / f"rules-{n}.txt"
    conf.write_text(rules_text(n))
    extra = ["--config", str(conf), "--state-dir", ""]
    if not iptables:
        extra.append("--no-iptables")
    lbd = Lbd(bed.dir, "c", queue=7, extra=extra)
    out: dict[str, Any] = {"services": n, "dests": n * DESTS_PER_SERVICE, "iptables": iptables,
                           "steering": DEFAULT_STEERING if iptables else "none"}
    try:
        t0 = time.monotonic()
        lbd.start(timeout=600.0)
        out["start_s"] = round(time.monotonic() - t0, 3)
        resolved = _wait_resolved(lbd, n * DESTS_PER_SERVICE)
        out["resolve_all_s"] = None if resolved is None else round(resolved + out["start_s"], 2)
        assert lbd.proc is not None
        c0, t0 = _cpu_ticks(lbd.proc.pid), time.monotonic()
        time.sleep(IDLE_WINDOW_S)
        c1, t1 = _cpu_ticks(lbd.proc.pid), time.monotonic()
        out["idle_cpu_pct"] = round(100.0 * (c1 - c0) / os.sysconf("SC_CLK_TCK") / (t1 - t0), 2)
        sock = lbd.socket
        new = [vip(n + 1000 + r) for r in range(REPEATS)]
        cmds: dict[str, Any] = {}
        cmds["-A"] = _median_cmd(bed, sock, [["-A", "-t", f"{v}:80", "-s", "rr"] for v in new])
        cmds["-a"] = _median_cmd(bed, sock, [["-a", "-t", f"{v}:80", "-r", f"{rip(1)}:80", "-g"] for v in new])
        cmds["-e"] = _median_cmd(bed, sock, [["-e", "-t", f"{v}:80", "-r", f"{rip(1)}:80", "-g", "-w", "3"] for v in new])
        cmds["-E"] = _median_cmd(bed, sock, [["-E", "-t", f"{v}:80", "-s", "wlc"] for v in new])
        cmds["-d"] = _median_cmd(bed, sock, [["-d", "-t", f"{v}:80", "-r", f"{rip(1)}:80"] for v in new])
        cmds["-D"] = _median_cmd(bed, sock, [["-D", "-t", f"{v}:80"] for v in new])
        cmds["-L -t"] = _median_cmd(bed, sock, [["-L", "-n", "-t", f"{vip(0)}:80"]] * REPEATS)
        cmds["-L"] = _median_cmd(bed, sock, [["-L", "-n"]] * min(REPEATS, 3))
        cmds["-S"] = _median_cmd(bed, sock, [["-S", "-n"]] * min(REPEATS, 3))
        cmds["reload (no-op)"] = _median_cmd(bed, sock, [["--reload"]] * min(REPEATS, 3))
        conf.write_text(rules_text(n, extra=1))
        cmds["reload (+1 service)"] = _median_cmd(bed, sock, [["--reload"]])
        out["commands"] = cmds
        out["server"] = _server_side(lbd, [vip(n + 2000 + r) for r in range(REPEATS)])
        _, saved = bed.lbadm(sock, "-S", "-n")
        dt, proc = bed.lbadm(sock, "-C")
        out["clear_s"] = round(dt, 3)
        out["clear"] = {"s": round(dt, 3), "rc": proc.returncode, "stderr": proc.stderr.strip()[:300],
                        "emptied": not lbd.request("list", timeout=120)["services"]}
        dt, proc = bed.lbadm(sock, "-R", stdin=saved.stdout)
        listing = lbd.request("list", timeout=120)["services"]
        complete = len(listing) == n + 1 and sum(len(s["dests"]) for s in listing) == (n + 1) * DESTS_PER_SERVICE
        out["restore"] = {"s": round(dt, 3), "rc": proc.returncode, "stderr": proc.stderr.strip()[:300],
                          "services": n + 1, "dests": (n + 1) * DESTS_PER_SERVICE, "complete": complete}
        log(f"ctl_scale {tag}: start {out['start_s']} s, resolved {out['resolve_all_s']} s, idle "
            f"{out['idle_cpu_pct']} %, -A {cmds['-A']['median_s']} s, no-op reload {cmds['reload (no-op)']['median_s']} s, "
            f"-R {out['restore']['s']} s (rc {proc.returncode}, complete {complete})")
    finally:
        lbd.stop()
        out["lbd_log_tail"] = lbd.log_tail(600)
        lbd.cleanup()
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    from lb.testbed.topology import Topology, dr_spec

    global REPEATS
    REPEATS = max(1, int(getattr(args, "repeats", REPEATS)))

    sizes = [int(x) for x in str(args.sizes).split(",")] if args.sizes else list(SIZES)
    # Measure what an installed lbadm costs: pip (and `make install`) compile lb's bytecode at
    # install time. A source tree run with PYTHONDONTWRITEBYTECODE=1 (as CI and agents often set)
    # has none, and every lbadm process would compile every lb module it imports: ~30 ms of CPU
    # per command, counted in each figure. compileall writes it whatever that variable says.
    subprocess.run([common.PY, "-m", "compileall", "-q", str(common.REPO / "lb")], check=False,
                   stdout=subprocess.DEVNULL, timeout=300)
    data: dict[str, Any] = {"machine": common.machine_info(), "config": {
        "sizes": sizes, "dests_per_service": DESTS_PER_SERVICE, "repeats": REPEATS, "idle_window_s": IDLE_WINDOW_S,
        "command": "python -m bench.ctl_scale " + " ".join(sys.argv[1:])}, "results": []}
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="lbB-bench-ctl-") as tmpd, Topology(dr_spec(1)) as topo:
        bed = Bed(topo, Path(tmpd))
        for n in sizes:
            for iptables in ((False,) if args.no_iptables_split else (False, True)):
                try:
                    data["results"].append(measure_size(bed, n, iptables))
                except (LbdError, OSError, subprocess.SubprocessError) as exc:
                    log(f"ctl_scale n={n} iptables={iptables}: failed: {exc}")
                    data["results"].append({"services": n, "iptables": iptables, "error": str(exc)[:1500]})
    data["elapsed_s"] = round(time.monotonic() - t0, 1)
    return data


def _verdict(ok: bool, value: str) -> str:
    return "met" if ok else f"missed ({value})"


def rules_label(r: dict[str, Any]) -> str:
    """A result's steering: "none" (--no-iptables), else its name (runs before the field: iptables)."""
    return str(r.get("steering", "iptables")) if r["iptables"] else "none"


def report(data: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Markdown lines and [target, figure, verdict] rows (the report's Targets table)."""
    repeats = data.get("config", {}).get("repeats", REPEATS)
    lines = ["## Control plane against the number of services (issue 15, item 2)", "",
             f"DR services with {DESTS_PER_SERVICE} real servers each; wall clock of one `lbadm` process "
             f"(median of {repeats}); idle: lbd's CPU over {IDLE_WINDOW_S:.0f} s after every address resolved. "
             "Rows with steering (`nftables`: lbd's default, its own table; `iptables` in older runs) include "
             "lbd's per-service steering sync (issue 15 item 1's part).", ""]
    results = [r for r in data.get("results", []) if "error" not in r]
    if results:
        cmd_names = list(results[0]["commands"])
        lines.append("| services | rules | start s | all resolved s | idle % core | " + " | ".join(cmd_names)
                     + " | -C s | -R s (complete) |")
        lines.append("|---" * (7 + len(cmd_names)) + "|")
        for r in results:
            cells = [str(r["services"]), rules_label(r), f"{r['start_s']:.2f}",
                     str(r["resolve_all_s"]), f"{r['idle_cpu_pct']:.2f}"]
            cells += [f"{r['commands'][c]['median_s']:.3f}" for c in cmd_names]
            clear = r.get("clear", {"rc": 0})
            rs = r["restore"]
            whole = "yes" if rs["complete"] and rs["rc"] == 0 else f"NO, rc {rs['rc']}"
            cells += [f"{r['clear_s']:.2f}" + ("" if clear["rc"] == 0 else f" (rc {clear['rc']})"),
                      f"{rs['s']:.2f} ({whole})"]
            lines.append("| " + " | ".join(cells) + " |")
    for r in data.get("results", []):
        if "error" in r:
            lines.append(f"\n{r['services']} services (steering: {rules_label(r)}): failed: {r['error']}")
    if results and results[0].get("server"):
        ops = list(results[0]["server"])
        lines += ["", "lbd's side of the same commands (a control request from the bench process, median, ms):", "",
                  "| services | rules | " + " | ".join(ops) + " |", "|---" * (2 + len(ops)) + "|"]
        for r in results:
            lines.append(f"| {r['services']} | {rules_label(r)} | "
                         + " | ".join(f"{r['server'][o]['median_s'] * 1000:.1f}" for o in ops) + " |")
    lines.append("")
    targets: list[list[str]] = []
    for r in results:
        if r["services"] != TARGET_SIZE:
            continue
        where = f"with {rules_label(r)} steering" if r["iptables"] else "control plane alone (--no-iptables)"
        singles = ("-A", "-a", "-e", "-E", "-d", "-D", "-L -t")
        worst = max(singles, key=lambda c: r["commands"][c]["median_s"])
        w = r["commands"][worst]["median_s"]
        targets.append([f"one lbadm command < {TARGET_COMMAND_S} s at {TARGET_SIZE} services, {where}",
                        f"worst {worst} {w:.3f} s", _verdict(w < TARGET_COMMAND_S, f"{w / TARGET_COMMAND_S:.1f}x")])
        if r.get("server"):
            op = max(r["server"], key=lambda o: r["server"][o]["median_s"])
            sv = r["server"][op]["median_s"]
            targets.append([f"lbd's side of one command < {TARGET_COMMAND_S} s at {TARGET_SIZE} services, {where}",
                            f"worst {op} {sv * 1000:.1f} ms", _verdict(sv < TARGET_COMMAND_S, f"{sv / TARGET_COMMAND_S:.1f}x")])
        noop = r["commands"]["reload (no-op)"]["median_s"]
        targets.append([f"no-op reload < {TARGET_NOOP_RELOAD_S} s at {TARGET_SIZE} services, {where}", f"{noop:.3f} s",
                        _verdict(noop < TARGET_NOOP_RELOAD_S, f"{noop / TARGET_NOOP_RELOAD_S:.1f}x")])
        rs = r["restore"]
        ok = rs["rc"] == 0 and rs["complete"] and rs["s"] < TARGET_RESTORE_S
        targets.append([f"lbadm -R of {rs['services']} services + {rs['dests']} real servers < {TARGET_RESTORE_S} s, {where}",
                        f"{rs['s']:.2f} s, rc {rs['rc']}, complete {rs['complete']}",
                        _verdict(ok, "failed" if rs["rc"] else f"{rs['s'] / TARGET_RESTORE_S:.1f}x")])
        idle = r["idle_cpu_pct"]
        targets.append([f"lbd idle < {TARGET_IDLE_PCT} % of a core at {TARGET_SIZE} services, {where}", f"{idle:.2f} %",
                        _verdict(idle < TARGET_IDLE_PCT, f"{idle / TARGET_IDLE_PCT:.1f}x")])
    return lines, targets


def add_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--sizes", default=None, help=f"comma-separated numbers of services (default {','.join(map(str, SIZES))})")
    ap.add_argument("--repeats", type=int, default=REPEATS, help=f"samples per command (default {REPEATS})")
    ap.add_argument("--no-iptables-split", action="store_true",
                    help="measure lbd --no-iptables only (not also with its iptables rules)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.ctl_scale", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_args(ap)
    ap.add_argument("--out", type=Path, default=None, help="write the JSON data here (and FILE.md: the report part)")
    args = ap.parse_args(argv)
    data = run(args)
    lines, targets = report(data)
    text = "\n".join(lines + ["| target | figure | verdict |", "|---|---|---|"]
                     + [f"| {t[0]} | {t[1]} | {t[2]} |" for t in targets]) + "\n"
    if args.out:
        common.write_json(args.out, data)
        args.out.with_suffix(".md").write_text(text)
    print(text)
    print(json.dumps({"elapsed_s": data["elapsed_s"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
