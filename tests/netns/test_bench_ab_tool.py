"""The A/B bench's lbd side, configured as kernel IPVS is: `lbd-exec ipvsadm -R < rules` (issue 17 item 4).

bench/ab_guest.py's own code (start_lbd, lbd_system, rules_text) on the session's DR topology,
outside the guest: lbd started as the A/B starts it (--config FILE, empty), the rules file the A/B
gives to `ipvsadm -R` for kernel IPVS given to the same Debian ipvsadm through lbd-exec. lbd must
hold exactly those rules (ipvsadm -S through lbd-exec prints them back), forward real requests in
rr order, and be empty again once the A/B case ends (`ipvsadm -C`, also through lbd-exec).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import HTTP_PORT, iptables_leftovers

from bench import ab_guest, ab_tools, common
from lb.testbed import client
from lb.testbed.topology import Topology

pytestmark = pytest.mark.netns


def test_ab_configures_lbd_with_ipvsadm_through_lbd_exec(topo: Topology) -> None:
    if shutil.which("ipvsadm") is None:
        pytest.skip("Debian's ipvsadm is not installed (make deps installs it)")
    if not Path(common.LBD_EXEC).exists():
        pytest.skip(f"{common.LBD_EXEC} missing: run make build")
    reals = [rs.addr for rs in topo.reals]
    rules = ab_guest.rules_text(topo.vip, "rr", [(a, 1) for a in reals], "route", port=HTTP_PORT)
    lbd = ab_guest.start_lbd(topo.director)
    try:
        with ab_guest.lbd_system(lbd, rules, tool="ipvsadm") as running:
            saved = ab_guest.admin(running, "ipvsadm", "-S", "-n")
            services = running.request("list")["services"]
            replies = client.fresh_gets(topo.client.netns, topo.vip, HTTP_PORT, 2 * len(reals), timeout=5)
        # what `ipvsadm -S -n` prints for kernel IPVS given the same file: the same lines
        assert saved.splitlines() == rules.splitlines()
        assert len(services) == 1
        svc = services[0]
        assert (svc["proto"], svc["addr"], svc["port"], svc["sched"]) == ("tcp", topo.vip, HTTP_PORT, "rr")
        assert sorted((d["addr"], d["fwd"], d["weight"]) for d in svc["dests"]) == [(a, "route", 1) for a in sorted(reals)]
        servers = [r.server or "" for r in replies]
        assert all(r.ok for r in replies), replies
        assert sorted(set(servers)) == sorted(rs.name for rs in topo.reals)
        assert servers[:len(reals)] == servers[len(reals):]  # round robin: the same cycle twice
        # the A/B case is over: cleared with the same tool, and lbd's --config file stays empty
        assert lbd.request("list")["services"] == [], json.dumps(lbd.request("list"))
        assert lbd.cfg_path.read_text() == ""  # type: ignore[attr-defined]
    finally:
        ab_guest.stop_lbd(lbd)
    assert iptables_leftovers(topo.director) == []


def test_configured_by_names_lbd_exec_for_the_default_tool() -> None:
    by = ab_tools.configured_by(ab_tools.DEFAULT_LBD_TOOL)
    assert "lbd-exec" in by["lbd"] and "ipvsadm" in by["ipvs"]


def test_ab_fullnat_rules_reach_lbd_through_its_config_reload(topo: Topology) -> None:
    """FULLNAT in the guest's throughput (issue 19 item 3): Debian's ipvsadm has no -b / -P -z, so the
    A/B gives lbd the FULLNAT rules file as its --config and reloads it (lbd_tool_for). lbd must hold
    the service with its local addresses and a fullnat destination, and be empty once the case ends."""
    if not Path(common.LBD_EXEC).exists():
        pytest.skip(f"{common.LBD_EXEC} missing: run make build")
    reals = [rs.addr for rs in topo.reals]
    prefix = reals[0].rsplit(".", 1)[0]
    laddrs = (f"{prefix}.200", f"{prefix}.201")
    for a in laddrs:
        topo.director.ip("addr", "add", f"{a}/32", "dev", topo.director.ifname)
    rules = ab_guest.rules_text(topo.vip, "rr", [(reals[0], 1)], "fullnat", port=HTTP_PORT, laddrs=laddrs)
    tool = ab_guest.lbd_tool_for("fullnat", ab_tools.DEFAULT_LBD_TOOL)
    lbd = ab_guest.start_lbd(topo.director)
    try:
        with ab_guest.lbd_system(lbd, rules, tool) as running:
            [svc] = running.request("list")["services"]
            assert (svc["addr"], svc["port"]) == (topo.vip, HTTP_PORT)
            assert sorted(la["addr"] for la in svc["laddrs"]) == sorted(laddrs)
            assert [(d["addr"], d["fwd"]) for d in svc["dests"]] == [(reals[0], "fullnat")]
        assert lbd.request("list")["services"] == [], json.dumps(lbd.request("list"))
        assert lbd.cfg_path.read_text() == ""  # type: ignore[attr-defined]
    finally:
        ab_guest.stop_lbd(lbd)
        for a in laddrs:
            topo.director.ip("addr", "del", f"{a}/32", "dev", topo.director.ifname, check=False)
    assert iptables_leftovers(topo.director) == []
