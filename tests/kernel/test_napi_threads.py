"""lbd --overload-napi on Debian 12's own kernel (6.1), not only this machine's.

lb/napibelow.py finds an interface's NAPI threads through the netdev generic netlink family's
napi-get (Linux 6.9+, the thread's PID) and, on older kernels, by the threads' names. Debian 12's
kernel has threaded NAPI (5.12+) but no netdev family: the fallback is what an operator there gets.
In the guest (lb.testbed.guest): a veth pair with GRO on (its NAPI instance), then NapiBelow on it
from the repository's code: threading on, the threads found by name and lowered to nice 19, its
counters, and on stop the interface as found (threading off, and the threads, which 6.1 keeps,
at their niceness again).

Selected by LB_KERNEL_SCENARIOS only when it names "napi-threads" (or is empty).
"""

from __future__ import annotations

import json
import sys
from typing import Any

import pytest
from conftest import REPO, guest_booted, guest_run_wanted

from lb.testbed import guest

NAME = "napi-threads"
GUEST_TIMEOUT_S = 10 * 60  # a bound, never an expectation (the boot takes ~25 s on an idle machine)
PROBE = """
import json, os, socket, sys, time
from pathlib import Path
from lb import napibelow
out = Path(sys.argv[1])
res = {"genl": napibelow.threads_by_genl(socket.if_nametoindex("nb")), "before": Path("/sys/class/net/nb/threaded").read_text().strip()}
below = napibelow.NapiBelow(["nb"], record_dir=out)
below.start()
res["threaded"] = Path("/sys/class/net/nb/threaded").read_text().strip()
pids = napibelow.threads_by_name("nb")
res["threads"] = len(pids)
res["nice"] = [os.getpriority(os.PRIO_PROCESS, p) for p in pids]
res["counters"] = below.counters()
res["record"] = (out / "napi-nb.json").exists()
below.stop()
res["after"] = Path("/sys/class/net/nb/threaded").read_text().strip()
time.sleep(0.5)
after = napibelow.threads_by_name("nb")
res["threads_after"] = len(after)
res["nice_after"] = [os.getpriority(os.PRIO_PROCESS, p) for p in after]
res["record_after"] = (out / "napi-nb.json").exists()
(out / "probe.json").write_text(json.dumps(res))
"""


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    guest_run_wanted(NAME, "Debian kernel guest")
    out = tmp_path_factory.mktemp("napithreads")
    (out / "probe.py").write_text(PROBE)
    script = "; ".join([
        guest.booted_marker_command(out),
        "ip link add name na type veth peer name nb", "ip link set na up", "ip link set nb up",
        "ethtool -K nb gro on",
        f"PYTHONDONTWRITEBYTECODE=1 PYTHONPATH={REPO} {sys.executable} {out / 'probe.py'} {out} "
        f"> {out}/probe.log 2>&1"])
    res = guest.boot(script, out, GUEST_TIMEOUT_S)
    guest_booted(res)
    result = out / "probe.json"
    log = (out / "probe.log").read_text(errors="replace") if (out / "probe.log").exists() else ""
    assert result.exists(), f"the probe did not finish in the guest: {log[-3000:]}\n{res.log_tail(2000)}"
    data: dict[str, Any] = json.loads(result.read_text())
    data["kernel"] = (out / guest.BOOTED_MARKER).read_text().strip()
    return data


def test_debian_kernel_threads_and_lowers_a_veths_napi_and_puts_it_back(probe: dict[str, Any]) -> None:
    assert probe["before"] == "0", probe
    assert probe["threaded"] == "1" and probe["threads"] >= 1, probe
    assert probe["nice"] == [19] * probe["threads"], probe
    assert probe["counters"] == [{"interface": "nb", "threads": probe["threads"], "rx_dropped": 0, "rx_missed": 0,
                                  "rx_fifo": 0}], probe
    assert probe["record"] and not probe["record_after"], probe
    # threading off again; before 6.14 the threads stay (idle, used again if threading comes back), so
    # their niceness is put back too
    assert probe["after"] == "0" and probe["nice_after"] == [0] * probe["threads_after"], probe


def test_debian_kernel_has_no_napi_get_so_threads_are_found_by_name(probe: dict[str, Any]) -> None:
    # 6.1: no netdev generic netlink family (6.3) nor napi-get's PID (6.9): the by-name fallback ran
    if not probe["kernel"].startswith("6.1."):
        pytest.skip(f"the guest runs {probe['kernel']}, not Debian 12's 6.1")
    assert probe["genl"] is None, probe
