"""lbd's XDP program passes the verifier of Debian 12's own kernel (6.1), not only this machine's.

The verifier differs between kernels: a program this machine's kernel accepts may be refused by an
older one (Debian 12's refused the first --xdp-fastpath build: "math between pkt pointer and register
with unbounded min value", a byte-swapped length that 6.1 cannot bound). An operator runs Debian's
kernel, so the program is loaded there, in the guest (lb.testbed.guest), with `bpftool prog load`:
once as built (the fast path off: lb_fastpath = 0 in .rodata, its code dead for the verifier) and
once compiled with lb_fastpath = 1 (what lbd --xdp-fastpath loads), each with the verifier's log.

Selected by LB_KERNEL_SCENARIOS only when it names "xdp-verifier" (or is empty).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import REPO, guest_booted, guest_run_wanted

from lb.testbed import guest

NAME = "xdp-verifier"
GUEST_TIMEOUT_S = 10 * 60  # a bound, never an expectation (the boot takes ~25 s on an idle machine)
SOURCE = REPO / "native" / "bpf" / "lb_xdp.bpf.c"
BUILT = REPO / "lb" / "lb_xdp.bpf.o"
FASTPATH_OFF = "const volatile __u32 lb_fastpath = 0;"


def _compile_with_fastpath(out: Path) -> Path:
    """The program as lbd --xdp-fastpath loads it: the same source with its .rodata switch set."""
    text = SOURCE.read_text()
    assert FASTPATH_OFF in text, f"{SOURCE} no longer declares {FASTPATH_OFF!r}: update this test"
    src = out / "lb_xdp_fastpath.bpf.c"
    src.write_text(text.replace(FASTPATH_OFF, FASTPATH_OFF.replace("= 0", "= 1")))
    obj = out / "lb_xdp_fastpath.bpf.o"
    triplet = subprocess.run(["gcc", "-dumpmachine"], capture_output=True, text=True, check=True).stdout.strip()
    subprocess.run(["clang", "-O2", "-g", "-target", "bpf", "-Wall", "-Werror", f"-I/usr/include/{triplet}",
                    "-c", str(src), "-o", str(obj)], check=True, capture_output=True, text=True)
    return obj


@pytest.fixture(scope="module")
def loads(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[int, str]]:
    """Object name -> (bpftool's exit status, the verifier's log) in the guest."""
    guest_run_wanted(NAME, "Debian kernel guest")
    for tool in ("clang", "bpftool"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed (make deps installs it)")
    if not BUILT.exists():
        pytest.fail(f"{BUILT} is not built (make build)")
    out = tmp_path_factory.mktemp("xdpverifier")
    objs = {"as built": BUILT, "with --xdp-fastpath": _compile_with_fastpath(out)}
    bpftool = shutil.which("bpftool")
    lines = [guest.booted_marker_command(out), "mount -t bpf bpf /sys/fs/bpf 2>/dev/null"]
    for i, obj in enumerate(objs.values()):
        lines.append(f"{bpftool} -d prog load {obj} /sys/fs/bpf/lb{i} type xdp > {out}/load{i}.log 2>&1; "
                     f"echo $? > {out}/load{i}.rc")
    res = guest.boot("; ".join(lines), out, GUEST_TIMEOUT_S)
    guest_booted(res)
    got = {}
    for i, name in enumerate(objs):
        rc_file = out / f"load{i}.rc"
        assert rc_file.exists(), f"the guest did not load {name}: {res.log_tail(2000)}"
        got[name] = (int(rc_file.read_text().strip() or "-1"), (out / f"load{i}.log").read_text(errors="replace"))
    return got


@pytest.mark.parametrize("variant", ["as built", "with --xdp-fastpath"])
def test_debian_kernel_verifier_accepts_the_program(loads: dict[str, tuple[int, str]], variant: str) -> None:
    rc, log = loads[variant]
    refused = [line for line in log.splitlines() if re.search(r"not allowed|invalid|unbounded|failed", line)]
    assert rc == 0, f"Debian 12's kernel refuses lb_xdp.bpf.c {variant}: {refused[-5:]}\n{log[-3000:]}"
    # the verifier ran and reported (bpftool -d prints its log), once per program of the object: lb_xdp and
    # the overload guard's lb_xdp_shed (bpftool loads them all, pins the first)
    programs = SOURCE.read_text().count('SEC("xdp")')
    assert log.count("processed ") >= programs, log[-2000:]
