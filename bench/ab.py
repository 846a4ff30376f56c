"""A/B against kernel IPVS, in a guest booting Debian's distribution kernel (this host has no ip_vs).

    python -m bench ab [--quick] [--functional-only] [--timeout 900] [--kernel-dir DIR]

Where the running kernel has ip_vs, the same guest script (bench/ab_guest.py) can run natively
in namespaces: `python -m bench.ab_guest --out DIR`.

The guest (recipe checked on this machine, see bench/README.md):
- Debian packages: qemu-system-x86, busybox-static, kmod, udev, ipvsadm (udev: without it the
  output of --exec is lost);
- the kernel: `apt-get download linux-image-6.1.0-<N>-amd64` (the newest `apt-cache search`
  offers), `dpkg -x` into the cache folder and `depmod -b` there. The folder must be visible in
  the guest: virtme-ng overlays /var, /tmp, /usr, /etc, ... with empty tmpfs layers, so the
  cache lives under ~/.cache/lvs-userspace-bench/ (override: $LB_BENCH_CACHE);
- virtme-ng from PyPI (the .venv's `vng`): `vng --disable-kvm -m 2G -p 2 --rwdir=OUT
  --run <vmlinuz> --exec '<script>'`: TCG software emulation (/dev/kvm here is a PVM
  hypervisor that cannot boot stock kernels); the host's root file system read-only inside.

Emulation is slow: every figure from the guest is only meaningful as a ratio between the
systems measured in the same guest run (IPVS vs lbd), never as an absolute.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import common
from bench.common import log

CACHE = Path(os.environ.get("LB_BENCH_CACHE", Path.home() / ".cache" / "lvs-userspace-bench"))
DEB_PACKAGES = ["qemu-system-x86", "busybox-static", "kmod", "udev", "ipvsadm"]
VNG = common.VENV_BIN / "vng"


def _have_deb(pkg: str) -> bool:
    p = subprocess.run(["dpkg-query", "-W", "-f=${Status}", pkg], capture_output=True, text=True)
    return "install ok installed" in p.stdout


def environment_problem() -> str | None:
    """Why the guest cannot be booted here, or None (no side effects)."""
    if os.geteuid() != 0:
        return "needs root"
    missing = [p for p in DEB_PACKAGES if not _have_deb(p)]
    if missing:
        return f"Debian packages missing: {' '.join(missing)} (apt-get install {' '.join(missing)})"
    if not VNG.exists():
        return f"{VNG} missing: pip install virtme-ng into .venv"
    if kernel_image() is None:
        return f"no Debian 6.1 kernel unpacked under {CACHE} (python -m bench ab --prepare)"
    return None


def kernel_image(kdir: Path | None = None) -> Path | None:
    base = kdir or CACHE / "k"
    imgs = sorted((base / "boot").glob("vmlinuz-*")) if (base / "boot").exists() else []
    return imgs[-1] if imgs else None


def prepare(kdir: Path | None = None) -> Path:
    """Download and unpack the newest linux-image-6.1.0-*-amd64 that apt offers (idempotent)."""
    if kernel_image(kdir):
        return kernel_image(kdir)  # type: ignore[return-value]
    base = kdir or CACHE / "k"
    CACHE.mkdir(parents=True, exist_ok=True)
    out = subprocess.run(["apt-cache", "search", "--names-only", r"^linux-image-6\.1\.0-[0-9]+-amd64$"],
                         capture_output=True, text=True).stdout
    names = sorted({ln.split()[0] for ln in out.splitlines() if ln.strip()},
                   key=lambda n: int(re.search(r"6\.1\.0-(\d+)", n).group(1)))  # type: ignore[union-attr]
    if not names:
        raise RuntimeError("apt-cache search offers no linux-image-6.1.0-*-amd64 (apt-get update?)")
    pkg = names[-1]
    log(f"ab: downloading {pkg}")
    subprocess.run(["apt-get", "download", pkg], cwd=CACHE, check=True, capture_output=True)
    deb = sorted(CACHE.glob(f"{pkg}_*.deb"))[-1]
    base.mkdir(parents=True, exist_ok=True)
    subprocess.run(["dpkg", "-x", str(deb), str(base)], check=True)
    ver = pkg.removeprefix("linux-image-")
    subprocess.run(["depmod", "-b", str(base), ver], check=True)
    img = kernel_image(kdir)
    if img is None:
        raise RuntimeError(f"{deb} holds no vmlinuz")
    return img


def boot(script: str, out_dir: Path, timeout: float, kimg: Path) -> dict[str, Any]:
    """Boot the guest, run `script` (sh) in it, with out_dir writable; bounded by `timeout`."""
    env = dict(os.environ, PATH=f"{common.VENV_BIN}:{os.environ.get('PATH', '')}")
    argv = [str(VNG), "--disable-kvm", "-m", "2G", "-p", "2", f"--rwdir={out_dir}", "--run", str(kimg),
            "--exec", script]
    log_path = out_dir / "guest.log"
    t0 = time.monotonic()
    with open(log_path, "w") as logf:
        proc = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            # vng and its qemu are in the session we created: end exactly that group.
            with_pgid = os.getpgid(proc.pid)
            os.killpg(with_pgid, signal.SIGTERM)
            try:
                rc = proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(with_pgid, signal.SIGKILL)
                rc = proc.wait(timeout=15)
            rc = f"timeout after {timeout:.0f}s (rc {rc})"  # type: ignore[assignment]
    return {"rc": rc, "seconds": round(time.monotonic() - t0, 1), "command": " ".join(argv[:-1]) + " '<script>'",
            "log_tail": log_path.read_text(errors="replace")[-3000:]}


def run_guest(out_dir: Path, quick: bool, functional_only: bool, timeout: float,
              kdir: Path | None = None) -> dict[str, Any]:
    """Prepare, boot, run bench/ab_guest.py inside; returns its results (or why not)."""
    problem = environment_problem()
    if problem and "no Debian 6.1 kernel" in problem:
        prepare(kdir)
        problem = environment_problem()
    if problem:
        return {"error": f"guest cannot boot: {problem}", "skipped": problem}
    kimg = kernel_image(kdir)
    assert kimg is not None
    common.build_tool("pktgen")
    common.build_tool("httpd")
    work = Path(tempfile.mkdtemp(prefix="lbB-ab-out-"))
    try:
        flags = (" --quick" if quick else "") + (" --functional-only" if functional_only else "")
        script = (f"cd {common.REPO} && PYTHONDONTWRITEBYTECODE=1 PYTHONPATH={common.REPO} "
                  f"{common.PY} -m bench.ab_guest --out {work}{flags}")
        res = boot(script, work, timeout, kimg)
        data = common.read_json(work / "ab_guest.json") if (work / "ab_guest.json").exists() else None
        res["kernel_image"] = str(kimg)
        if data is None:
            res["error"] = f"the guest produced no results (rc {res['rc']}); log tail:\n{res['log_tail'][-1500:]}"
            return {"boot": res, **({"error": res["error"]})}
        if res["rc"] != 0:
            data.setdefault("errors", {})["boot"] = f"guest run ended with {res['rc']}: partial results"
        return {"boot": res, "guest": data}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def summarize(data: dict[str, Any]) -> dict[str, Any]:
    g = data.get("guest") or {}
    s: dict[str, Any] = {}
    f = g.get("functional") or {}
    s["functional"] = {case: f[case].get("agree") for case in ("rr", "wlc") if case in f}
    p = (g.get("pps") or {}).get("results", [])
    rows: dict[tuple[str, str], list[float]] = {}
    for r in p:
        rows.setdefault((r["system"], r["mode"]), []).append(r["zero_loss_pps"])
    s["pps"] = {f"{k[0]}/{k[1]}": common.summarize(v) for k, v in rows.items()}
    ratios = {}
    for mode in ("route", "tunnel"):
        per_rep = []
        for rep in sorted({r["rep"] for r in p}):
            a = [r["zero_loss_pps"] for r in p if r["rep"] == rep and r["system"] == "lbd" and r["mode"] == mode]
            b = [r["zero_loss_pps"] for r in p if r["rep"] == rep and r["system"] == "ipvs" and r["mode"] == mode]
            if a and b and b[0] > 0:
                per_rep.append(a[0] / b[0])
        if per_rep:
            ratios[mode] = common.summarize(per_rep)
    s["ratio_lbd_over_ipvs"] = ratios
    h = g.get("http") or []
    hs: dict[str, list[float]] = {}
    for r in h:
        if "rate_rps" in r:
            hs.setdefault(f"{r['system']}/{r['mode']}", []).append(r["rate_rps"])
    s["http"] = {k: common.summarize(v) for k, v in hs.items()}
    return s


def run(args: argparse.Namespace, out_dir: Path) -> dict[str, Any]:
    t0 = time.monotonic()
    data = run_guest(out_dir, args.quick, args.functional_only, args.timeout,
                     Path(args.kernel_dir) if args.kernel_dir else None)
    data.update(part="ab", commit=common.git_commit(), machine=common.machine_info(),
                config={"quick": args.quick, "functional_only": args.functional_only, "timeout_s": args.timeout,
                        "command": "python -m bench ab " + " ".join(args.argv)})
    data["summary"] = summarize(data)
    data["elapsed_s"] = round(time.monotonic() - t0, 1)
    return data


def add_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--functional-only", action="store_true")
    ap.add_argument("--timeout", type=float, default=None, help="bound for the whole guest run (default 660 s; quick 360)")
    ap.add_argument("--kernel-dir", default=None, help=f"unpacked Debian kernel (default {CACHE}/k)")


def finish_args(args: argparse.Namespace) -> None:
    if args.timeout is None:
        args.timeout = 360 if args.quick else 660
