"""perf of the guest's DUT CPU at a system's zero-loss rate (bench/ab_guest.py --profile SYSTEMS)."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path
from typing import Any

from bench import pps

PROFILE_S = 3.0


def profile(bed: pps.Bed, tr: pps.Traffic, rate: float, seconds: float = PROFILE_S) -> dict[str, Any]:
    """`perf record -g` of the DUT CPU for `seconds` while the generator offers `rate` (the system's
    zero-loss rate, after its search): where the director's CPU goes, by symbol (perf report text,
    entries >= 0.5 %). Samples include perf's own cost; the shape, not the total, is the finding."""
    with tempfile.TemporaryDirectory(prefix=f"{bed.topo.prefix}-perf-") as tmp:
        data = Path(tmp) / "perf.data"
        # -B -N: no build-id collection at the end (it reads every binary sampled, over 9p under TCG: minutes).
        rec = subprocess.Popen(["perf", "record", "-q", "-B", "-N", "-g", "-C", str(bed.dut_cpu), "-o", str(data), "--",
                                "sleep", str(seconds)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            gen = pps.run_gen(bed, tr, rate, int(rate * seconds), seconds)
            _, err = rec.communicate(timeout=120)
        finally:
            if rec.poll() is None:
                rec.kill()
                rec.wait(timeout=10)
        rep = subprocess.run(["perf", "report", "-i", str(data), "--no-children", "--sort", "sym", "--stdio", "-g",
                              "none", "--percent-limit", "0.5"], capture_output=True, text=True, timeout=300)
    text = "\n".join(ln for ln in rep.stdout.splitlines() if ln.strip() and not ln.startswith("#"))
    return {"rate": rate, "sent": gen.get("sent"), "record_rc": rec.returncode, "record_err": err[-500:],
            "report": text[:20000]}
