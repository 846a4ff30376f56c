"""Instructions per packet of lb_process, counted with valgrind's callgrind.

    python -m bench cost [--quick] [--n 20000] [--no-history]

The C harness (native/tests/harness.c, `bench N FILE...`: each file's packet N times, in order,
through lb_process_inplace as the NFQUEUE adapter calls it (`bench-copy`: lb_process, the copying path),
on one director instance with the harness's standard configuration: DR on VIP:80, IPIP on :81,
FULLNAT+TOA on :82, FULLNAT+SYN-proxy on :83) is built with gcc -O2 from native/src/*.c minus
nfq.c and run under callgrind. Packets are files written with scapy.

A class is (prefix files, measured file): the prefix puts the table in the state the measured
packet needs (e.g. the SYN before an established flow's ACK). Instructions per measured packet:

    D(N)   = Ir(prefix + measured, N) - Ir(prefix, N)      (harness setup and prefix cancel)
    cost   = (D(2N) - D(N)) / N                              (reading the file etc. cancels)

The harness's own loop around lb_process (harness.c:main's self count in that difference, ~14
per packet) is subtracted too and reported separately. The new-connection
class (every SYN a new flow) cannot repeat one file: M and 2M distinct SYN files processed once
each, counted only inside lb_process (--toggle-collect; see measure_new_conn). Where the instructions go:
per-function self counts of the two 2N runs,
subtracted, / 2N. (callgrind's inclusive counts are not used: with code inlined from headers
they count some instructions twice.)

History: one line per class and run is appended to bench/results/cost_history.csv
(date, commit, class, instructions/packet) so regressions show.
"""

from __future__ import annotations

import argparse
import csv
import re
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import common
from bench.common import log

TARGET_DR_EST = 300  # instructions per packet, issue 6
HISTORY = common.RESULTS / "cost_history.csv"

# The harness's configuration (native/tests/harness.c), mirrored to compute FULLNAT tuples.
VIP = "10.0.0.100"
RS1, RS2 = "10.0.0.11", "10.0.0.12"
BRS1, BRS2 = "10.1.0.11", "10.1.0.12"
LIP = "10.1.0.1"
DIP = "10.0.0.2"
CLIENT = "192.0.2.1"
CPORT = 40000


def _pkt(src: str, dst: str, sport: int, dport: int, flags: str, seq: int = 1000, ack: int = 0) -> bytes:
    from scapy.all import IP, TCP, raw  # noqa: PLC0415

    return raw(IP(src=src, dst=dst, ttl=64, flags="DF") / TCP(sport=sport, dport=dport, flags=flags, seq=seq,
                                                              ack=ack, window=512))


def _mirror_fullnat_tuple() -> tuple[str, int, str]:
    """(real server, local port, local address) the harness's FULLNAT:82 gives CLIENT:CPORT's SYN.

    Replays harness.c's setup() through the cffi module (same lb_config and call order) and
    reads the rewritten SYN. Falls back to the documented allocation (first dest in kernel order
    = last added, first port 1024) if the module is unavailable.
    """
    try:
        from lb._ffi import ffi, lib  # noqa: PLC0415
    except ImportError:
        return BRS2, 1024, LIP
    import ipaddress  # noqa: PLC0415

    ip = lambda a: int(ipaddress.IPv4Address(a))  # noqa: E731
    cfg = ffi.new("struct lb_config *", {"conn_max": 65536, "hash_buckets": 4096, "hash_seed": 7})
    lb = ffi.gc(lib.lb_new(cfg), lib.lb_free)

    def fwd(last: int) -> Any:
        f = ffi.new("struct lb_fwd_conf *")
        f.ifindex = 2
        f.dst_mac = bytes([2, 0, 0, 0, 0, last])
        f.src_mac = bytes([2, 0, 0, 0, 0, 0xAA])
        f.saddr = ip(DIP)
        f.mtu = 1500
        return f

    s = ffi.new("struct lb_svc_conf *")
    s.proto, s.addr, s.port, s.sched = 6, ip(VIP), 83, b"rr"
    s.flags = lib.LB_SVC_F_SYNPROXY | lib.LB_SVC_F_TOA
    rc = lib.lb_svc_add(lb, s)
    d = ffi.new("struct lb_dest_conf *", {"addr": ip(BRS1), "port": 80, "fwd": lib.LB_FWD_FULLNAT, "weight": 1})
    rc |= lib.lb_dest_add(lb, 6, ip(VIP), 83, d)
    rc |= lib.lb_dest_set_fwd(lb, 6, ip(VIP), 83, ip(BRS1), 80, fwd(0x20))
    rc |= lib.lb_laddr_add(lb, 6, ip(VIP), 83, ip(LIP))
    fwds = [lib.LB_FWD_ROUTE, lib.LB_FWD_TUNNEL, lib.LB_FWD_FULLNAT]
    for i, port in enumerate((80, 81, 82)):
        s = ffi.new("struct lb_svc_conf *")
        s.proto, s.addr, s.port = 6, ip(VIP), port
        s.sched = b"wlc" if i == 1 else b"rr"
        s.flags = lib.LB_SVC_F_TOA if fwds[i] == lib.LB_FWD_FULLNAT else 0
        rc |= lib.lb_svc_add(lb, s)
        s.proto = 17
        rc |= lib.lb_svc_add(lb, s)
        for proto in (6, 17):
            for j in range(2):
                base = ip(BRS1) if fwds[i] == lib.LB_FWD_FULLNAT else ip(RS1)
                d = ffi.new("struct lb_dest_conf *", {"addr": base + j, "port": 80, "fwd": fwds[i], "weight": 1 + j})
                rc |= lib.lb_dest_add(lb, proto, ip(VIP), port, d)
                rc |= lib.lb_dest_set_fwd(lb, proto, ip(VIP), port, base + j, 80, fwd(0x10 + j))
            if fwds[i] == lib.LB_FWD_FULLNAT:
                rc |= lib.lb_laddr_add(lb, proto, ip(VIP), port, ip(LIP))
    if rc != 0:
        raise RuntimeError("mirror of the harness setup failed")
    syn = _pkt(CLIENT, VIP, CPORT, 82, "S")
    out = ffi.new("uint8_t[]", lib.LB_PKT_MAX)
    act = ffi.new("struct lb_action *")
    lib.lb_process(lb, syn, len(syn), 1000, out, lib.LB_PKT_MAX, act)
    if act.verdict != lib.LB_V_XMIT_L2 or act.out_len < 40:
        raise RuntimeError(f"mirror: FULLNAT SYN gave verdict {act.verdict} reason {act.reason}")
    b = bytes(ffi.buffer(out, act.out_len))
    laddr = str(ipaddress.IPv4Address(b[12:16]))
    rs = str(ipaddress.IPv4Address(b[16:20]))
    ihl = (b[0] & 15) * 4
    lport = int.from_bytes(b[ihl:ihl + 2], "big")
    return rs, lport, laddr


def make_classes(d: Path) -> dict[str, dict[str, Any]]:
    def f(name: str, data: bytes) -> Path:
        p = d / f"{name}.bin"
        p.write_bytes(data)
        return p

    junk = f("junk", b"\x00")  # 1 byte: DROP/malformed at once; a neutral prefix
    rs, lport, laddr = _mirror_fullnat_tuple()
    syn80 = f("dr_syn", _pkt(CLIENT, VIP, CPORT, 80, "S"))
    syn81 = f("tun_syn", _pkt(CLIENT, VIP, CPORT, 81, "S"))
    syn82 = f("fnat_syn", _pkt(CLIENT, VIP, CPORT, 82, "S"))
    ack82 = f("fnat_ack", _pkt(CLIENT, VIP, CPORT, 82, "A", 1001, 1))
    return {
        "dr_est_ack": {"prefix": [syn80], "measured": f("dr_ack", _pkt(CLIENT, VIP, CPORT, 80, "A", 1001, 1)),
                       "what": "DR, ACK of an established flow (the target class)"},
        "ipip_est_ack": {"prefix": [syn81], "measured": f("tun_ack", _pkt(CLIENT, VIP, CPORT, 81, "A", 1001, 1)),
                         "what": "IPIP (tunnel, wlc), ACK of an established flow: encapsulation"},
        "fnat_in_ack": {"prefix": [syn82], "measured": ack82,
                        "what": "FULLNAT in, ACK of an established flow (TOA already sent)"},
        "fnat_out_ack": {"prefix": [syn82, ack82],
                         "measured": f("fnat_reply", _pkt(rs, laddr, 80, lport, "A", 5001, 1001)),
                         "what": f"FULLNAT out: reply {rs}:80 -> {laddr}:{lport} translated to VIP -> client"},
        "synproxy_cookie": {"prefix": [junk], "measured": f("sp_syn", _pkt(CLIENT, VIP, CPORT, 83, "S")),
                            "what": "SYN-proxy: SYN answered with a cookie SYN-ACK (no state)"},
        "dr_est_ack_copy": {"prefix": [syn80], "measured": f("dr_ack", _pkt(CLIENT, VIP, CPORT, 80, "A", 1001, 1)),
                            "mode": "bench-copy",
                            "what": "as dr_est_ack, through lb_process: the packet copied to out (every caller "
                                    "but the NFQUEUE adapter's lb_process_inplace)"},
        "dr_syn_repeat": {"prefix": [syn80], "measured": syn80,
                          "what": "DR, SYN retransmission on an entry in SYN_RECV"},
    }


_FN_RE = re.compile(r"^\s*([\d,]+)\s+\([^)]*\)\s+(\S.*?)\s*(\[.*\])?\s*$")


def _callgrind(harness: Path, n: int, files: list[Path], work: Path, tag: str,
               only: str | None = None, mode: str = "bench", svcs: int = 0) -> dict[str, Any]:
    """Run the harness under callgrind; `only`: count only inside that function (and its callees);
    `mode`: "bench" (lb_process_inplace, as the NFQUEUE adapter) or "bench-copy" (lb_process);
    `svcs`: fill the configuration up to that many services first (harness --svcs)."""
    out = work / f"cg.{tag}.out"
    opts = [f"--toggle-collect={only}"] if only else []
    fill = ["--svcs", str(svcs)] if svcs else []
    proc = subprocess.run(["valgrind", "--tool=callgrind", *opts, f"--callgrind-out-file={out}", str(harness),
                           *fill, mode, str(n), *map(str, files)], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"callgrind failed: {proc.stderr[-1500:]}")
    m = re.search(r"Collected : (\d+)", proc.stderr)
    total = int(m.group(1)) if m else 0
    return {"total": total, "self": _annotate(out, inclusive=False)}


def _annotate(path: Path, inclusive: bool) -> dict[str, int]:
    argv = ["callgrind_annotate", "--threshold=100", "--auto=no"]
    if inclusive:
        argv.append("--inclusive=yes")
    proc = subprocess.run([*argv, str(path)], capture_output=True, text=True, timeout=120)
    res: dict[str, int] = {}
    started = False
    for line in proc.stdout.splitlines():
        if "file:function" in line:
            started = True
            continue
        if not started or line.startswith("---"):
            continue
        if not line.strip():
            if res:
                break  # end of the function table
            continue
        m = _FN_RE.match(line)
        if not m:
            continue
        name = re.sub(r"\s*\([\d,]+x\)", "", m.group(2))
        if ":" not in name:  # "events annotated" and other summary lines
            continue
        fn = name.split(":", 1)[1]
        file = name.split(":", 1)[0].rsplit("/", 1)[-1] if ":" in name else ""
        key = f"{fn} ({file})" if file else fn
        res[key] = res.get(key, 0) + int(m.group(1).replace(",", ""))
    return res


def measure_class(harness: Path, n: int, prefix: list[Path], measured: Path, work: Path, tag: str,
                  mode: str = "bench", svcs: int = 0) -> dict[str, Any]:
    runs = {}
    for mult in (1, 2):
        runs[f"p{mult}"] = _callgrind(harness, n * mult, prefix, work, f"{tag}.p{mult}", mode=mode, svcs=svcs)
        runs[f"m{mult}"] = _callgrind(harness, n * mult, [*prefix, measured], work, f"{tag}.m{mult}", mode=mode,
                                      svcs=svcs)
    d1 = runs["m1"]["total"] - runs["p1"]["total"]
    d2 = runs["m2"]["total"] - runs["p2"]["total"]
    # Where they go: per-function self counts of the measured packet, from the 2N pair.
    fns = {}
    for k, v in runs["m2"]["self"].items():
        dv = (v - runs["p2"]["self"].get(k, 0)) / (2 * n)
        if abs(dv) >= 0.5:
            fns[k] = round(dv, 1)
    top = sorted(fns.items(), key=lambda kv: -kv[1])[:12]
    # The harness's own loop around the call (in main, or in cmd_bench when gcc keeps it apart).
    loop_fns = ("main (harness.c)", "cmd_bench (harness.c)")
    loop = sum(fns.get(k, 0.0) for k in loop_fns)
    return {"instr_per_pkt": (d2 - d1) / n - loop, "with_harness_loop": (d2 - d1) / n, "harness_loop": loop,
            "file_overhead": d1 - (d2 - d1), "top_functions": [t for t in top if t[0] not in loop_fns]}


def measure_new_conn(harness: Path, m: int, work: Path, fixed_sport: bool = False, svcs: int = 0) -> dict[str, Any]:
    """Every SYN a new flow: M and 2M distinct SYN files, each processed once, counted only
    inside lb_process_inplace (callgrind --toggle-collect=lb_process_inplace): the per-file overhead and the
    harness's teardown (lb_free releases every entry: proportional to M) stay out.
        new = (Ir_lb_process(2M files) - Ir_lb_process(M files)) / M
    """
    import random  # noqa: PLC0415

    rnd = random.Random(6)
    syn = []
    tag = "fixed" if fixed_sport else "rand"
    for i in range(2 * m):
        p = work / f"newsyn-{tag}{i}.bin"
        if fixed_sport:  # clients 10.1.x.y, all from port 40000 (NATed clients, a SYN flood)
            src, sport = f"10.1.{i // 250}.{1 + i % 250}", 40000
        else:  # clients anywhere, ephemeral ports
            src = f"{rnd.randrange(1, 224)}.{rnd.randrange(256)}.{rnd.randrange(256)}.{rnd.randrange(1, 255)}"
            sport = rnd.randrange(1024, 65536)
        p.write_bytes(_pkt(src, VIP, sport, 80, "S"))
        syn.append(p)
    s1 = _callgrind(harness, 1, syn[:m], work, f"new.{tag}.s1", only="lb_process_inplace", svcs=svcs)
    s2 = _callgrind(harness, 1, syn, work, f"new.{tag}.s2", only="lb_process_inplace", svcs=svcs)
    cost = (s2["total"] - s1["total"]) / m
    fns = {}
    for k, v in s2["self"].items():
        dv = (v - s1["self"].get(k, 0)) / m
        if abs(dv) >= 0.5:
            fns[k] = round(dv, 1)
    top = sorted(fns.items(), key=lambda kv: -kv[1])[:12]
    what = ("DR, SYN of a new flow (schedule rr, create the entry, transmit), random clients and ports: "
            "M vs 2M distinct files, counted inside lb_process only")
    if fixed_sport:
        what = (f"as dr_syn_new, but clients 10.1.x.y all from source port 40000: the M..2M-th SYNs "
                f"(table of {m}..{2 * m} entries)")
    return {"instr_per_pkt": cost, "top_functions": top, "what": what}


_CONFIGURED_RE = re.compile(r"harness: (\d+) services configured")
TARGET_SVC_RATIO = 1.10  # issue 15 item 1: at 10,000 services within 10 % of the smallest configuration


def configured_services(harness: Path, svcs: int, work: Path) -> int:
    """How many services `harness --svcs svcs` holds (the standard set alone may hold more)."""
    junk = work / "svcs-junk.bin"
    junk.write_bytes(b"\x00")
    proc = subprocess.run([str(harness), "--svcs", str(max(1, svcs)), "bench", "1", str(junk)],
                          capture_output=True, text=True, timeout=120)
    m = _CONFIGURED_RE.search(proc.stderr)
    if proc.returncode != 0 or not m:
        raise RuntimeError(f"harness --svcs {svcs}: {proc.stderr[-500:]}")
    return int(m.group(1))


def svc_curve(harness: Path, sizes: list[int], n: int, m: int, work: Path,
              classes: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Instructions per packet as the number of services grows (issue 15 item 1; the harness
    filled up to each size with DR services on distinct VIPs, added after the measured ones so
    that those are found last in any chain they share). Established DR ACKs must not look a service
    up at all; a new connection looks up its service and its source among the director's own
    addresses, which must cost the same at any size (DESIGN: O(1) in services)."""
    if not sizes:
        raise ValueError("svc_curve: no sizes")
    rows = []
    for size in sizes:
        est = measure_class(harness, n, classes["dr_est_ack"]["prefix"], classes["dr_est_ack"]["measured"], work,
                            f"svcs{size}.est", svcs=size)
        new = measure_new_conn(harness, m, work, svcs=size)
        row = {"requested": size, "services": configured_services(harness, size, work),
               "dr_est_ack": round(est["instr_per_pkt"], 1), "dr_syn_new": round(new["instr_per_pkt"], 1),
               "top_new": new["top_functions"][:6]}
        rows.append(row)
        log(f"cost: {row['services']:6} services: dr_est_ack {row['dr_est_ack']:7.1f}, "
            f"dr_syn_new {row['dr_syn_new']:7.1f} instructions/packet")
    first, last = rows[0], rows[-1]
    ratios = {k: round(last[k] / first[k], 3) if first[k] else None for k in ("dr_est_ack", "dr_syn_new")}
    return {"rows": rows, "ratios": ratios, "target_ratio": TARGET_SVC_RATIO,
            "met": all(r is not None and r <= TARGET_SVC_RATIO for r in ratios.values()),
            "what": "harness --svcs K: the configuration filled up to K services (TCP, distinct VIPs 10.200.x.y:80, "
                    "rr, one DR destination each) "
                    "after the standard set; the measured DR service VIP:80 is one of the standard set"}


def measure_svc_curve(sizes: list[int], n: int = 2000, m: int = 500) -> dict[str, Any]:
    """svc_curve on its own (bench.steer_scale): the harness built, the classes written, in a
    scratch directory."""
    harness = common.build_harness()
    with tempfile.TemporaryDirectory(prefix="lbB-bench-cost-") as tmpd:
        work = Path(tmpd)
        res = svc_curve(harness, sizes, n, m, work, make_classes(work))
    res["n"], res["m_new"] = n, m
    return res


def run(args: argparse.Namespace) -> dict[str, Any]:
    t0 = time.monotonic()
    harness = common.build_harness()
    out: dict[str, Any] = {"part": "cost", "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                           "commit": common.git_commit(), "machine": common.machine_info(),
                           "config": {"n": args.n, "m_new": args.m_new, "target_dr_est": TARGET_DR_EST,
                                      "build": "gcc -O2 -g -Inative/include native/tests/harness.c "
                                               "native/src/*.c (minus nfq.c, xsk.c, xsk_fp.c) -lpthread",
                                      "command": "python -m bench cost " + " ".join(args.argv)},
               "classes": {}}
    with tempfile.TemporaryDirectory(prefix="lbB-bench-cost-") as tmpd:
        work = Path(tmpd)
        classes = make_classes(work)
        if args.only_svc_curve:
            out["svc_curve"] = svc_curve(harness, args.svc_sizes, args.n, args.m_new, work, classes)
            out["elapsed_s"] = round(time.monotonic() - t0, 1)
            return out
        for name, c in classes.items():
            r = measure_class(harness, args.n, c["prefix"], c["measured"], work, name, c.get("mode", "bench"))
            r["what"] = c["what"]
            out["classes"][name] = r
            log(f"cost: {name:16} {r['instr_per_pkt']:7.1f} instructions/packet")
        for name, fixed in (("dr_syn_new", False), ("dr_syn_new_fixed_sport", True)):
            r = measure_new_conn(harness, args.m_new, work, fixed_sport=fixed)
            out["classes"][name] = r
            log(f"cost: {name:16} {r['instr_per_pkt']:7.1f} instructions/packet")
        if args.svc_sizes:
            out["svc_curve"] = svc_curve(harness, args.svc_sizes, args.n, args.m_new, work, classes)
    dr = out["classes"]["dr_est_ack"]["instr_per_pkt"]
    out["target"] = {"class": "dr_est_ack", "value": dr, "target": TARGET_DR_EST, "met": dr <= TARGET_DR_EST,
                     "over_by": max(0.0, dr - TARGET_DR_EST)}
    if args.history and not args.quick:  # smoke runs stay out of the history
        append_history(out)
    out["elapsed_s"] = round(time.monotonic() - t0, 1)
    return out


def append_history(out: dict[str, Any]) -> None:
    new = not HISTORY.exists()
    HISTORY.parent.mkdir(parents=True, exist_ok=True)
    with HISTORY.open("a", newline="") as f:
        w = csv.writer(f)
        if new:
            w.writerow(["date", "commit", "class", "instructions_per_packet"])
        for name, c in out["classes"].items():
            w.writerow([common.today(), out["commit"], name, f"{c['instr_per_pkt']:.1f}"])


def add_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--n", type=int, default=None, help="repetitions per packet (default 20000; quick 4000)")
    ap.add_argument("--m-new", type=int, default=None, help="distinct new-flow SYNs (default 2000; quick 500)")
    ap.add_argument("--no-history", dest="history", action="store_false")
    ap.add_argument("--svc-sizes", default=None,
                    help="numbers of services for the instruction curve, comma-separated (default none: "
                         "`python -m bench scale --sections services` reports it; 1,1000,10000 with "
                         "--only-svc-curve); below the harness's standard set, that set")
    ap.add_argument("--only-svc-curve", action="store_true",
                    help="measure the services curve alone (none of the per-class figures, no history)")


def finish_args(args: argparse.Namespace) -> None:
    if args.n is None:
        args.n = 4000 if args.quick else 20000
    if args.m_new is None:
        args.m_new = 500 if args.quick else 2000
    sizes = args.svc_sizes or ("1,1000,10000" if args.only_svc_curve else "none")
    args.svc_sizes = [] if sizes == "none" else [int(x) for x in sizes.split(",") if x.strip()]
