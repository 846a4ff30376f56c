"""Connection sync with kernel IPVS, both ways (issue 18 item 2): conformance.sync_interop plays in
its own guest boot (tests/kernel/README.md) and these tests read its record.

- lbd master -> kernel backup: every connection lbd syncs (TCP ESTABLISHED, UDP) is listed by the
  kernel's `ipvsadm -Lnc` with the same client, virtual and real server (DR, IPIP and NAT), state,
  and an expiry within EXPIRY_SLACK_S of lbd's;
- kernel master -> lbd backup: the same the other way round.

Selected by LB_KERNEL_SCENARIOS only when it names "sync-interop" (or is empty).
"""

from __future__ import annotations

import json
import shutil
import sys
from typing import Any

import pytest
from conftest import KEEP, REPO, TESTS, guest_booted, guest_run_wanted

from lb.testbed import guest

NAME = "sync-interop"
GUEST_TIMEOUT_S = 30 * 60  # a bound, never an expectation
# lbd sends the time left, the kernel the state's full timeout (both restart the backup's clock on
# receipt), and a listing is read seconds after the other: a generous bound, not a measurement.
EXPIRY_SLACK_S = 60

Entry = tuple[str, str, str, str]  # proto, source, virtual, destination


def _entries(text: str, vip: str) -> dict[Entry, tuple[str, int]]:
    """-Lnc lines of the VIP: (proto, source, virtual, dest) -> (state, expiry in seconds)."""
    out = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) != 6 or not fields[4].startswith(f"{vip}:"):
            continue
        proto, expire, state, source, virtual, dest = fields
        minutes, seconds = expire.split(":")
        out[(proto, source, virtual, dest)] = (state, int(minutes) * 60 + int(seconds))
    return out


@pytest.fixture(scope="module")
def sync_record(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    guest_run_wanted(NAME, "kernel IPVS guest")
    out = tmp_path_factory.mktemp("sync")
    script = (f"{guest.booted_marker_command(out)} && cd {TESTS} && PYTHONDONTWRITEBYTECODE=1 "
              f"PYTHONPATH={REPO}:{TESTS} {sys.executable} -m conformance.sync_interop --out {out} "
              f"> {out}/runner.log 2>&1")
    res = guest.boot(script, out, GUEST_TIMEOUT_S)
    keep = KEEP.parent / "kernel-sync"
    if keep.exists():
        shutil.rmtree(keep)
    shutil.copytree(out, keep)
    guest_booted(res)
    path = out / "sync.json"
    if not path.exists():
        log = (out / "runner.log").read_text(errors="replace")[-3000:] if (out / "runner.log").exists() else ""
        pytest.fail(f"the guest booted but wrote no sync.json; runner.log:\n{log}\nguest.log:\n{res.log_tail(2000)}")
    data: dict[str, Any] = json.loads(path.read_text())
    assert not data["errors"], data["errors"]
    return data


VIP = "10.251.7.100"  # conformance.runner's SUBNET .100: the first VIP, the same in both instances


@pytest.mark.parametrize("way", ["lbd-to-kernel", "kernel-to-lbd"])
def test_backup_lists_the_masters_connections(sync_record: dict[str, Any], way: str) -> None:
    rec = sync_record[way]
    for step in rec["steps"]:
        assert step["rc"] == 0, step
    outcomes = [f["outcome"] for kind in ("tcp", "udp") for f in rec["flows"][kind]]
    assert all(o.startswith("rs") for o in outcomes), outcomes
    vip = VIP
    # Only this direction's flows: each system's table also holds the other direction's entries
    # (the kernel keeps what it learned as a backup; lbd its own closed connections).
    ports = {f"{f['port']}" for kind in ("tcp", "udp") for f in rec["flows"][kind]}

    def ours(text: str) -> dict[Entry, tuple[str, int]]:
        return {k: v for k, v in _entries(text, vip).items() if k[1].rsplit(":", 1)[1] in ports}

    master = ours(rec["master_lnc"]["stdout"])
    backup = ours(rec["backup_lnc"]["stdout"])
    synced = {k: v for k, v in master.items() if k[0] == "UDP" or v[0] == "ESTABLISHED"}
    assert len(synced) == len(outcomes), rec["master_lnc"]["stdout"]
    # Every real server kind is represented: DR (rs1, rs4), IPIP (rs2), NAT (rs3's NAT address).
    assert {k[3].split(":")[0].rsplit(".", 1)[1] for k in synced} >= {"11", "12", "13"}
    missing = {k: v for k, v in synced.items() if k not in backup}
    assert not missing, f"not on the backup: {missing}\nbackup -Lnc:\n{rec['backup_lnc']['stdout']}"
    for key, (state, expiry) in synced.items():
        b_state, b_expiry = backup[key]
        assert b_state == state, (key, state, b_state)
        assert abs(b_expiry - expiry) <= EXPIRY_SLACK_S, (key, expiry, b_expiry)


def test_daemon_listings(sync_record: dict[str, Any]) -> None:
    lk = sync_record["lbd-to-kernel"]["steps"]
    assert lk[2]["stdout"].startswith("master sync daemon (mcast=lbsyl, syncid=18")  # lbd, lbadm
    assert lk[3]["stdout"].startswith("backup sync daemon (mcast=lbsyk, syncid=18")   # kernel, ipvsadm
    kl = sync_record["kernel-to-lbd"]["steps"]
    assert kl[2]["stdout"].startswith("master sync daemon (mcast=lbsyk, syncid=19")
    assert kl[3]["stdout"].startswith("backup sync daemon (mcast=lbsyl, syncid=19")
