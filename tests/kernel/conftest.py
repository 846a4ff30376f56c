"""One guest boot per pytest session plays every conformance scenario (tests/kernel/README.md).

The `conformance` fixture boots Debian's 6.1 kernel under qemu (lb.testbed.guest), runs
conformance.runner inside, and returns its JSON; the tests only read it. The run's files
(conformance.json, runner.log, guest.log) are kept in build/kernel-conformance/ for reading
after a failure.

LB_KERNEL_SCENARIOS="name1 name2" plays only those scenarios (and deselects the tests of the
others): for working on one scheduler without waiting for all of them.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

from lb.testbed import guest

KERNEL_TESTS = Path(__file__).resolve().parent
REPO = KERNEL_TESTS.parents[1]
TESTS = REPO / "tests"  # the harness: tests/conformance (scenarios in tests/conformance/scenarios)
KEEP = REPO / "build" / "kernel-conformance"
# Boot ~30 s, lbd's start ~1 minute, the scenarios ~5 minutes on an idle machine; generous,
# because the machine's two cores may be shared. A bound, never an expectation.
GUEST_TIMEOUT_S = 40 * 60




def selected() -> list[str]:
    return os.environ.get("LB_KERNEL_SCENARIOS", "").split()


def selected_scenarios() -> list[str]:
    """The conformance scenarios LB_KERNEL_SCENARIOS names (it may name other guest runs too, such
    as test_sync_interop.py's "sync-interop")."""
    from conformance.scenarios import ALL

    names = {s.name for s in ALL}
    return [n for n in selected() if n in names]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    only = selected()
    if not only:
        return
    keep: list[pytest.Item] = []
    drop: list[pytest.Item] = []
    for item in items:
        callspec = getattr(item, "callspec", None)
        scn = callspec.params.get("scn") if callspec is not None else None
        (drop if scn is not None and scn.name not in only else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def guest_run_wanted(name: str, what: str) -> None:
    """Skip unless LB_KERNEL_SCENARIOS names `name` (or is empty) and the guest can boot here (`what`:
    which guest, for the reason)."""
    if selected() and name not in selected():
        pytest.skip(f"LB_KERNEL_SCENARIOS does not name {name}")
    problem = guest.environment_problem()
    if problem:
        pytest.skip(f"{what} cannot boot here: {problem}")


def guest_booted(res: guest.BootResult) -> None:
    """Fail when virtme-ng itself failed; skip when qemu could not boot (an environment limit)."""
    if res.launcher_crashed():
        pytest.fail(f"virtme-ng failed before qemu ran ({res.command}, {res.rc}): {res.why_not_booted()}")
    if not res.booted:
        pytest.skip(f"qemu could not boot the guest ({res.command}, {res.rc}): {res.why_not_booted()}")


def lbd_tool() -> str:
    """What configures lbd in the guest: lbadm, or (LB_KERNEL_LBD_TOOL=ipvsadm) the same ipvsadm
    binary that configures the kernel, through lbd-exec (docs/ipvsadm.md)."""
    return os.environ.get("LB_KERNEL_LBD_TOOL", "lbadm")


def guest_script(out: Path) -> str:
    only = "".join(f" {shlex.quote(n)}" for n in selected_scenarios())
    return (f"{guest.booted_marker_command(out)} && cd {TESTS} && "
            f"PYTHONDONTWRITEBYTECODE=1 PYTHONPATH={REPO}:{TESTS} "
            f"{sys.executable} -m conformance.runner --out {out}{' --only' + only if only else ''} "
            f"--lbd-tool {shlex.quote(lbd_tool())} > {out}/runner.log 2>&1")


@pytest.fixture(scope="session")
def conformance(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    if selected() and not selected_scenarios():
        pytest.skip("LB_KERNEL_SCENARIOS names no conformance scenario")
    problem = guest.environment_problem()
    if problem:
        pytest.skip(f"kernel IPVS guest cannot boot here: {problem}")
    if guest.kernel_release() != guest.KERNEL_RELEASE:  # the expectations were observed on that kernel
        try:
            guest.prepare_kernel()
        except guest.GuestError as exc:
            pytest.fail(f"the guest must boot {guest.KERNEL_PACKAGE} (tests/kernel's expectations come from "
                        f"it), the cache holds {guest.kernel_release()}, and fetching it failed: {exc}")
    out = tmp_path_factory.mktemp("conformance")
    res = guest.boot(guest_script(out), out, GUEST_TIMEOUT_S)
    if KEEP.exists():
        shutil.rmtree(KEEP)
    shutil.copytree(out, KEEP)
    if res.launcher_crashed():
        pytest.fail(f"virtme-ng failed before qemu ran ({res.command}, {res.rc}); a missing dependency of "
                    f"`make kernel-deps`? {res.why_not_booted()}\n{res.log_tail(2500)}")
    if not res.booted:
        pytest.skip(f"qemu could not boot the guest ({res.command}, {res.rc}): {res.why_not_booted()}")
    result = out / "conformance.json"
    if not result.exists():
        runner_log = (out / "runner.log").read_text(errors="replace")[-3000:] if (out / "runner.log").exists() else ""
        pytest.fail(f"the guest booted but the runner wrote no results ({res.rc}, {res.seconds} s); "
                    f"runner.log:\n{runner_log}\nguest.log:\n{res.log_tail(2000)}")
    data: dict[str, Any] = json.loads(result.read_text())
    data["boot"] = {"rc": res.rc, "seconds": res.seconds, "kept_in": str(KEEP)}
    return data
