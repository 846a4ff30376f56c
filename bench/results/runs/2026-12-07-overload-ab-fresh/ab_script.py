"""Controllers A/B at a fixed offered rate: rounds of (v2 guard, v3 guard, no guard), order rotated."""
import json, sys, tempfile
from pathlib import Path
sys.path.insert(0, "/work/wt-arm")
from bench import common, pps
from bench.scale import overload
from lb.testbed.topology import Topology

ROUNDS = int(sys.argv[1]); HOLD = 3.0
MODES = [("v2", "on"), ("v3", "on"), ("v3", "off")]
gen_cpu, dut_cpu = common.cpu_layout(None, None)
common.build_tool("pktgen")
res = []
with tempfile.TemporaryDirectory(prefix="lbB-ctlab-") as tmpd, Topology(pps.pps_spec()) as topo:
    bed = pps.Bed(topo, gen_cpu, dut_cpu)
    common.LBD = Path("/tmp/lead/wtbin/lbd-v3")
    bed.lbd_args = ("--queue-maxlen", "1024", "--overload-guard", "on")
    with pps.system(bed, "c", "dr", dut_cpu) as lbd:
        assert not pps.establish(bed, lbd, Path(tmpd))
        tr = pps.make_traffic(bed, Path(tmpd), "est", bed.vip)
        zls = sorted(pps.search(bed, tr, 1.0, 5)["zero_loss_pps"] for _ in range(3))
    zl = zls[1]
    rate = 2 * zl
    print("zero-loss", zls, "offered", rate, flush=True)
    for r in range(ROUNDS):
        order = MODES[r % 3:] + MODES[:r % 3]
        row = {}
        for ver, guard in order:
            common.LBD = Path(f"/tmp/lead/wtbin/lbd-{ver}")
            bed.lbd_args = ("--queue-maxlen", "1024", "--overload-guard", guard)
            with pps.system(bed, "c", "dr", dut_cpu) as lbd:
                assert not pps.establish(bed, lbd, Path(tmpd))
                tr = pps.make_traffic(bed, Path(tmpd), "est", bed.vip)
                pps.wait_guard_disarmed(bed)
                c0 = pps.counters(lbd)
                t = pps.trial(bed, tr, rate, HOLD)
                d = overload._lbd_drops(c0, pps.counters(lbd))
            row[f"{ver}-{guard}"] = (round(t["offered_pps"]), round(t["rx_pps"]), d["kernel_queue_dropped"], d["guard"])
        print(f"round {r}: " + "  ".join(f"{k}: off {v[0]} rx {v[1]} qfull {v[2]} guard {v[3]}" for k, v in row.items()), flush=True)
        res.append(row)
Path("/tmp/lead/ctl_ab.json").write_text(json.dumps({"zl": zls, "rate": rate, "rounds": res}))
for k in ("v2-on", "v3-on", "v3-off"):
    xs = sorted(r[k][1] for r in res)
    print(k, "rx median", xs[len(xs)//2], xs, flush=True)
