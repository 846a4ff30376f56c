"""A qemu guest booting Debian's 6.1 distribution kernel, for everything that needs kernel IPVS.

This machine's kernel has no ip_vs (docs: /work/shared/DESIGN.md "Facts about the machines"), so
the comparisons with kernel IPVS (tests/kernel, `python -m bench ab`) run in a guest:
virtme-ng boots Debian's `linux-image-6.1.0-<N>-amd64` under qemu with the host's root file
system (read-only) and runs one shell command in it. Used by tests/kernel/ and bench/ab.py.

What the guest needs (`make kernel-deps` installs all of it; `prepare_kernel()` is idempotent):
- Debian packages DEB_PACKAGES: qemu-system-x86 (qemu itself), busybox-static (virtme-ng's
  init), kmod (modprobe in the guest), udev (without it --exec's output is lost), file
  (virtme-ng reads the kernel's version with it), ipvsadm;
- virtme-ng (`vng`) from PyPI in the project's venv (the `kernel` extra of pyproject.toml);
- the kernel: `apt-get download linux-image-6.1.0-57-amd64=6.1.192-3` (KERNEL_PACKAGE: the kernel
  tests/oracles model and tests/kernel's expectations were taken from; kernel IPVS's behaviour
  differs between Debian 12's kernels, e.g. 6.1.176 and 6.1.192 re-evaluate OVERLOAD differently
  on a threshold edit), `dpkg -x` into CACHE/k and `depmod -b` there. A cached kernel of another
  release is replaced. Only when apt cannot offer that package (even after `apt-get update`) the
  newest linux-image-6.1.0-<N>-amd64 it offers is used, with a warning. CACHE must be visible in the guest: virtme-ng puts
  writable overlays over /var, /tmp, /run, ..., so it lives under ~/.cache (override:
  $LB_GUEST_CACHE).

Boot: `vng --disable-kvm` (TCG software emulation: /dev/kvm here is a PVM hypervisor that cannot
boot stock kernels), 2 vCPUs, 2 GiB, `--rwdir=OUT` the only writable host folder. ~25 s to a
shell; everything in the guest is slow (Python start-up takes seconds, ~150 connections/s), so
figures from it are only meaningful as ratios between systems measured in the same guest.

    python -m lb.testbed.guest check           # why the guest cannot boot here, or "ok"
    python -m lb.testbed.guest prepare-kernel  # fetch and unpack the kernel (idempotent)
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

CACHE = Path(os.environ.get("LB_GUEST_CACHE") or Path.home() / ".cache" / "lvs-userspace-guest")
KERNEL_DIR = CACHE / "k"
DEB_PACKAGES = ("qemu-system-x86", "busybox-static", "kmod", "udev", "file", "ipvsadm")
KERNEL_PACKAGE_RE = r"^linux-image-6\.1\.0-[0-9]+-amd64$"
# The kernel the guest boots: the one tests/oracles model (tests/oracles/kernel_config.py) and
# tests/kernel's kernel_counts were observed on. Newer is not "better" here: the comparisons are
# with one named kernel, and a machine whose apt lists are stale would otherwise boot another.
KERNEL_RELEASE = "6.1.0-57-amd64"
KERNEL_PACKAGE = f"linux-image-{KERNEL_RELEASE}"
KERNEL_PACKAGE_VERSION = "6.1.192-3"
# Other helpers and CI steps may hold the dpkg lock: wait for it rather than fail.
APT_LOCK_TIMEOUT = ("-o", "DPkg::Lock::Timeout=600")
GUEST_MEMORY = "2G"
GUEST_CPUS = 2
# virtme-ng puts writable overlays over these: a kernel unpacked below one of them is invisible
# in the guest (`modprobe: FATAL: Module ip_vs not found`).
OVERLAID = ("/var", "/tmp", "/usr", "/etc", "/lib", "/home", "/opt", "/srv", "/run")
# Written by the guest's command as its first action: its presence tells "the guest booted"
# apart from "qemu/virtme-ng could not boot it" (then the log says why).
BOOTED_MARKER = "guest-booted"


class GuestError(RuntimeError):
    """Preparing or booting the guest failed; the message says which step and why."""


def vng_path() -> Path | None:
    """The virtme-ng launcher of the venv this Python runs from, else the one on PATH."""
    own = Path(sys.prefix) / "bin" / "vng"
    if own.exists():
        return own
    found = shutil.which("vng")
    return Path(found) if found else None


def have_deb(pkg: str) -> bool:
    p = subprocess.run(["dpkg-query", "-W", "-f=${Status}", pkg], capture_output=True, text=True)
    return "install ok installed" in p.stdout


def kernel_image(kdir: Path | None = None) -> Path | None:
    """The unpacked kernel's vmlinuz, or None. Only complete unpacks are visible (see prepare)."""
    boot = (kdir or KERNEL_DIR) / "boot"
    imgs = sorted(boot.glob("vmlinuz-*")) if boot.is_dir() else []
    return imgs[-1] if imgs else None


def environment_problem(kdir: Path | None = None) -> str | None:
    """Why the guest cannot be booted here, or None. No side effects."""
    if platform.machine() != "x86_64":
        return f"the guest is Debian's amd64 kernel; this host is {platform.machine()}"
    if os.geteuid() != 0:
        return "needs root (namespaces in the guest, apt for its packages)"
    missing = [p for p in DEB_PACKAGES if not have_deb(p)]
    if missing:
        return f"Debian packages missing: {' '.join(missing)} (`make kernel-deps` installs them)"
    if vng_path() is None:
        return "virtme-ng (vng) is not installed in the venv (`make kernel-deps`: the `kernel` extra)"
    where = (kdir or KERNEL_DIR).resolve()
    hidden = [d for d in OVERLAID if where.is_relative_to(d)]
    if hidden:
        return (f"the kernel folder {where} is under {hidden[0]}, which virtme-ng overlays in the guest: "
                f"set LB_GUEST_CACHE to a folder elsewhere (e.g. /root/.cache/lvs-userspace-guest)")
    if kernel_image(kdir) is None:
        return f"no Debian 6.1 kernel unpacked under {kdir or KERNEL_DIR} (`make kernel-deps`)"
    return None


def _apt(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    return subprocess.run(["apt-get", *APT_LOCK_TIMEOUT, *args], capture_output=True, text=True, cwd=cwd, env=env)


def _kernel_packages() -> list[str]:
    out = subprocess.run(["apt-cache", "search", "--names-only", KERNEL_PACKAGE_RE],
                         capture_output=True, text=True).stdout
    names = {ln.split()[0] for ln in out.splitlines() if ln.strip()}
    return sorted(names, key=lambda n: int(re.search(r"6\.1\.0-(\d+)", n).group(1)))  # type: ignore[union-attr]


def kernel_release(kdir: Path | None = None) -> str | None:
    """The release (`uname -r`) of the unpacked kernel, or None."""
    img = kernel_image(kdir)
    return img.name.removeprefix("vmlinuz-") if img is not None else None


def _offered_version(pkg: str) -> str | None:
    """The candidate version of `pkg` in apt's lists, or None."""
    out = subprocess.run(["apt-cache", "policy", pkg], capture_output=True, text=True).stdout
    m = re.search(r"Candidate:\s*(\S+)", out)
    return m.group(1) if m and m.group(1) != "(none)" else None


def _choose_kernel_package() -> str:
    """`pkg=version` for apt-get download: KERNEL_PACKAGE at KERNEL_PACKAGE_VERSION when apt offers it
    (after an `apt-get update` if its lists lack it), else the newest 6.1 kernel offered, said loudly."""
    wanted = f"{KERNEL_PACKAGE}={KERNEL_PACKAGE_VERSION}"
    out = subprocess.run(["apt-cache", "madison", KERNEL_PACKAGE], capture_output=True, text=True).stdout
    if KERNEL_PACKAGE_VERSION not in out.split():
        r = _apt("update", "-q")
        if r.returncode != 0:
            raise GuestError(f"apt-get update failed: {r.stderr.strip()[-800:]}")
        out = subprocess.run(["apt-cache", "madison", KERNEL_PACKAGE], capture_output=True, text=True).stdout
    if KERNEL_PACKAGE_VERSION in out.split():
        return wanted
    names = _kernel_packages()
    if not names:
        raise GuestError(f"apt offers neither {wanted} nor any package matching {KERNEL_PACKAGE_RE} "
                         f"(Debian 12 package lists, with bookworm-security?)")
    pkg = names[-1]
    version = _offered_version(pkg)
    print(f"guest: WARNING: apt does not offer {wanted} (the kernel tests/oracles model and tests/kernel's "
          f"expectations come from); using {pkg} {version or '?'}: kernel IPVS may behave differently there",
          file=sys.stderr, flush=True)
    return f"{pkg}={version}" if version else pkg


def prepare_kernel(kdir: Path | None = None, log: bool = True) -> Path:
    """Download and unpack KERNEL_PACKAGE (idempotent; see the module's docstring).

    A kernel already unpacked in the default folder is kept when it is KERNEL_RELEASE and replaced
    otherwise; a folder the caller names (kdir) is used as it is whenever it holds a kernel.
    Unpacks into a temporary folder renamed into place only when complete (an interrupted run
    leaves nothing that looks like a kernel).
    """
    base = kdir or KERNEL_DIR
    img = kernel_image(base)
    if img is not None and (kdir is not None or kernel_release(base) == KERNEL_RELEASE):
        return img
    if img is not None and log:
        print(f"guest: replacing the cached kernel {kernel_release(base)} with {KERNEL_RELEASE}",
              file=sys.stderr, flush=True)
    base.parent.mkdir(parents=True, exist_ok=True)
    spec = _choose_kernel_package()
    pkg = spec.split("=")[0]
    with tempfile.TemporaryDirectory(prefix="kernel-", dir=base.parent) as tmp:
        t = Path(tmp)
        if log:
            print(f"guest: downloading {spec}", file=sys.stderr, flush=True)
        r = _apt("download", spec, cwd=t)
        if r.returncode != 0:  # the lists may name a version the mirror no longer has
            _apt("update", "-q")
            r = _apt("download", spec, cwd=t)
        if r.returncode != 0:
            raise GuestError(f"apt-get download {spec} failed: {r.stderr.strip()[-800:]}")
        debs = sorted(t.glob(f"{pkg}_*.deb"))
        if not debs:
            raise GuestError(f"apt-get download {spec} left no .deb in {t}")
        tree = t / "tree"
        subprocess.run(["dpkg", "-x", str(debs[-1]), str(tree)], check=True)
        ver = pkg.removeprefix("linux-image-")
        subprocess.run(["depmod", "-b", str(tree), ver], check=True)
        if kernel_image(tree) is None:
            raise GuestError(f"{debs[-1].name} holds no boot/vmlinuz-*")
        if base.exists():  # another release, or a half-written folder from an older layout
            shutil.rmtree(base)
        tree.rename(base)
    img = kernel_image(base)
    assert img is not None
    return img


@dataclass
class BootResult:
    rc: int | str  # vng's exit status, or "timeout after N s"
    seconds: float
    booted: bool  # the guest's command started (it wrote BOOTED_MARKER)
    command: str
    log_path: Path

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def launcher_crashed(self) -> bool:
        """virtme-ng itself failed (a Python traceback) before qemu ran: a set-up bug (a
        missing tool), not a host that cannot boot the guest."""
        return not self.booted and "Traceback (most recent call last)" in self.log_tail(20000)

    def why_not_booted(self) -> str:
        """The last lines of the log that say why qemu/virtme-ng did not reach the command."""
        lines = [ln.strip() for ln in self.log_tail(6000).splitlines() if ln.strip()]
        hints = [ln for ln in lines if re.search(r"error|fail|cannot|could not|not found|panic", ln, re.I)]
        return " | ".join((hints or lines)[-4:]) or f"vng exited with {self.rc} and printed nothing"


def booted_marker_command(out_dir: Path) -> str:
    """The shell command a guest script starts with (see BOOTED_MARKER)."""
    return f"echo \"$(uname -r)\" > {out_dir / BOOTED_MARKER}"


def vng_argv(vng: Path, kimg: Path, out_dir: Path, script: str, qemu_opts: Sequence[str] = ()) -> list[str]:
    """The vng command line. `qemu_opts`: extra qemu arguments (e.g. NICs, bench/guest_wire.py), handed
    to vng as one --qemu-opts (vng joins them into a shell command: no spaces or shell characters)."""
    bad = [o for o in qemu_opts if not re.fullmatch(r"[\w,=.:/+-]+", o)]
    if bad:
        raise GuestError(f"qemu options vng cannot pass through its shell command: {bad}")
    extra = [f"--qemu-opts={' '.join(qemu_opts)}"] if qemu_opts else []
    return [str(vng), "--disable-kvm", "-m", GUEST_MEMORY, "-p", str(GUEST_CPUS), f"--rwdir={out_dir}",
            "--run", str(kimg), *extra, "--exec", script]


def boot(script: str, out_dir: Path, timeout: float, kimg: Path | None = None,
         qemu_opts: Sequence[str] = ()) -> BootResult:
    """Boot the guest, run `script` (sh) in it with out_dir writable, bounded by `timeout` s.

    `script` should start with booted_marker_command(out_dir). vng and its qemu run in a
    session of their own: on timeout exactly that process group is ended. `qemu_opts`: see vng_argv.
    """
    kimg = kimg or kernel_image()
    vng = vng_path()
    if kimg is None or vng is None:
        raise GuestError(environment_problem() or "guest not prepared")
    env = dict(os.environ, PATH=f"{vng.parent}:{os.environ.get('PATH', '')}")
    argv = vng_argv(vng, kimg, out_dir, script, qemu_opts)
    log_path = out_dir / "guest.log"
    (out_dir / BOOTED_MARKER).unlink(missing_ok=True)
    t0 = time.monotonic()
    rc: int | str
    with open(log_path, "w") as logf:
        proc = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pgid = os.getpgid(proc.pid)
            os.killpg(pgid, signal.SIGTERM)
            try:
                rc = proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(pgid, signal.SIGKILL)
                rc = proc.wait(timeout=15)
            rc = f"timeout after {timeout:.0f} s (rc {rc})"
    return BootResult(rc=rc, seconds=round(time.monotonic() - t0, 1), booted=(out_dir / BOOTED_MARKER).exists(),
                      command=" ".join(argv[:-1]) + " '<script>'", log_path=log_path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lb.testbed.guest", description=__doc__.split("\n\n")[0])
    ap.add_argument("action", choices=("check", "prepare-kernel"))
    args = ap.parse_args(argv)
    if args.action == "prepare-kernel":
        try:
            print(prepare_kernel())
        except (GuestError, subprocess.CalledProcessError) as exc:
            print(f"guest: {exc}", file=sys.stderr)
            return 1
        return 0
    problem = environment_problem()
    print(problem or "ok")
    return 1 if problem else 0


if __name__ == "__main__":
    sys.exit(main())
