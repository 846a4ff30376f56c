"""lbd --packet-source afxdp --xdp-fastpath (issue 19 item 4): the XDP program forwards the packets
of established DR TCP connections itself, lbd's core decides everything else (docs/afxdp.md "The XDP
fast path").

Real HTTP keep-alive connections through a DR service prove that: the packets really take the XDP
path (the program's fastpath counter), the statistics still count every client packet (credited
from the flow's counters within the credit interval: waited for, then compared exactly with what the
program saw), the connection stays ESTABLISHED with its timer restarted while only fast-pathed
packets flow (an established timeout shorter than the test's traffic), the FIN moves its state in
lbd and removes the flow, and a removed real server or a changed MAC takes its flows off the fast
path (a new generation: removed -> dropped as IPVS drops them; new MAC -> re-installed with it).

Runs under either LB_TEST_PACKET_SOURCE (the option is AF_XDP's own); skips with lbd's words when
this kernel cannot do XDP/AF_XDP here.
"""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import HTTP_PORT, Lbd, LbdError, running_lbd
from packet_source import xdp_global_section, xdp_map_keys
from test_afxdp import (  # type: ignore[import-not-found]
    BPF_OBJECT,
    full_checksums,
    setup_dr,
    skip_if_unsupported,
    xdp_attached,
)

from lb.testbed import client
from lb.testbed.topology import Topology

EST_TIMEOUT_S = 4        # the established timeout while the test runs: shorter than its traffic
CREDIT_WAIT_S = 15.0     # bound for the credit of fast-pathed packets (interval 1 s, read within ~2)


@pytest.fixture
def fplbd(topo: Topology) -> Iterator[Lbd]:
    if not BPF_OBJECT.exists():
        pytest.skip(f"{BPF_OBJECT} not built (`make build` compiles native/bpf/lb_xdp.bpf.c)")
    if shutil.which("ethtool") is None or shutil.which("bpftool") is None:
        pytest.skip("ethtool and bpftool are needed (veth checksum offload off; the program's maps read)")
    args = ["--packet-source", "afxdp", "--xdp-interface", topo.director.ifname, "--xdp-mode", "generic",
            "--xdp-fastpath"]
    with full_checksums(topo):
        try:
            with running_lbd(topo, "c", args=args) as d:
                yield d
        except LbdError as exc:
            skip_if_unsupported(exc)
            raise
    assert xdp_attached(topo) is None, "XDP program left on the interface after lbd exited"


def program(lbd: Lbd) -> dict[str, int]:
    return dict(lbd.ok("counters")["afxdp"]["program"])


def svc_stats(lbd: Lbd) -> dict[str, Any]:
    return dict(lbd.ok("list")["services"][0]["stats"])


def conns(lbd: Lbd) -> list[dict[str, Any]]:
    return list(lbd.ok("connections")["connections"])


def wait_until(what: str, predicate: Any, timeout: float = CREDIT_WAIT_S) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = predicate()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.2)


def all_credited(lbd: Lbd) -> bool:
    """Every client packet the program saw is in the service's statistics: those it redirected to
    lbd (counted by the core as they passed) plus those it forwarded itself (credited). One service,
    one client: nothing else is redirected."""
    p = program(lbd)
    return svc_stats(lbd)["inpkts"] == p["redirected"] + p["fastpath"]


def lbadm_stats_inpkts(lbd: Lbd, topo: Topology) -> int:
    """InPkts of the service line of `lbadm -Ln --stats --exact`."""
    out = lbd.lbadm("-L", "-n", "--stats", "--exact").stdout
    m = re.search(rf"^TCP\s+{re.escape(topo.vip)}:{HTTP_PORT}\s+(\d+)\s+(\d+)", out, re.M)
    assert m, out
    return int(m.group(2))


def test_fastpath_forwards_established_flow_keeps_stats_timer_and_fin(fplbd: Lbd, topo: Topology) -> None:
    setup_dr(fplbd, topo)
    fplbd.lbadm("--set", str(EST_TIMEOUT_S), "0", "0")
    with client.KeepAlive(topo.client.netns, topo.vip, HTTP_PORT) as ka:
        first = ka.get()
        assert first.ok, f"{first}\nlbd log:\n{fplbd.log_tail()}"
        # Requests for longer than the established timeout: the connection lives only if the
        # fast-pathed packets restart its timer in the core.
        deadline = time.monotonic() + 2 * EST_TIMEOUT_S
        n = 0
        while time.monotonic() < deadline:
            r = ka.get(timeout=3.0)
            assert r.ok and r.server == first.server, f"request {n}: {r}\nlbd log:\n{fplbd.log_tail()}"
            n += 1
            time.sleep(0.3)
        p = program(fplbd)
        assert p["fp_installed"] >= 1 and p["fastpath"] >= n, p  # each request's segment took the XDP path
        (c,) = conns(fplbd)
        assert c["state"] == "ESTABLISHED" and c["expires_ms"] > 0, c
        wait_until("the fast-pathed packets credited to the service", lambda: all_credited(fplbd))
        assert lbadm_stats_inpkts(fplbd, topo) == svc_stats(fplbd)["inpkts"]
        assert xdp_map_keys(fplbd, "lb_flows"), "no flow in lb_flows while the connection is established"
        # -Lnc's timer restarts from fast-pathed packets alone: one more request (nothing of it reaches
        # lbd: `redirected` stays), credited; without the restart the entry would have lost at least
        # the time between the two reads.
        exp0 = conns(fplbd)[0]["expires_ms"]
        t0 = time.monotonic()
        redirected = program(fplbd)["redirected"]
        time.sleep(1.0)
        r = ka.get(timeout=3.0)
        assert r.ok, r
        wait_until("the last request credited", lambda: all_credited(fplbd))
        t1 = time.monotonic()
        (c,) = conns(fplbd)
        assert program(fplbd)["redirected"] == redirected, "a packet of the established flow reached lbd"
        assert c["state"] == "ESTABLISHED" and c["expires_ms"] > exp0 - (t1 - t0) * 1000, (c, exp0, t1 - t0)
    # The client's FIN reaches lbd (never fast-pathed): its state moves there and the flow goes.
    wait_until("the connection leaving ESTABLISHED", lambda: all(c["state"] != "ESTABLISHED" for c in conns(fplbd)))
    wait_until("the flow removed", lambda: not xdp_map_keys(fplbd, "lb_flows") and program(fplbd)["fp_removed"] >= 1)
    wait_until("every packet credited after the close", lambda: all_credited(fplbd))
    assert program(fplbd)["fp_credited"] >= 1


def test_fastpath_idle_flow_is_credited_from_its_report(fplbd: Lbd, topo: Topology) -> None:
    """A flow idle for more than two credit intervals has left the watch list: only the record its next
    packet queues in lb_reports brings it back, so that packet is credited only if queue 0's thread
    reads the ring (native/src/xsk_fp.c: the tick's test without the lock must not skip a record)."""
    setup_dr(fplbd, topo)
    with client.KeepAlive(topo.client.netns, topo.vip, HTTP_PORT) as ka:
        for _ in range(3):
            r = ka.get()
            assert r.ok, f"{r}\nlbd log:\n{fplbd.log_tail()}"
        assert program(fplbd)["fastpath"] >= 1, program(fplbd)
        wait_until("the first requests credited", lambda: all_credited(fplbd))
        time.sleep(2.5)  # two credit intervals and more without a packet: the flow leaves the watch list
        before = program(fplbd)
        r = ka.get(timeout=3.0)
        assert r.ok, f"{r}\nlbd log:\n{fplbd.log_tail()}"
        after = program(fplbd)
        assert after["redirected"] == before["redirected"] and after["fastpath"] > before["fastpath"], (
            before, after)  # the request took the XDP path alone: its credit can only come from the ring
        wait_until("the request after the pause credited", lambda: all_credited(fplbd))


def flows_on(lbd: Lbd) -> int:
    """The program's lb_fp_flows_on (its only .bss variable): 1 while lbd may have a flow installed."""
    return int.from_bytes(xdp_global_section(lbd, ".bss")[:4], "little")


def test_fastpath_lookup_only_while_a_flow_is_installed(fplbd: Lbd, topo: Topology) -> None:
    """The program looks packets up in lb_flows only while lbd has a flow installed (lb_fp_flows_on):
    a director with no established DR flow spares the traffic the fast path never takes (FULLNAT, NAT,
    IPIP) a lookup that misses. Set before the first install (the flow's packets are fast-pathed at
    once), cleared within a credit interval of the last removal."""
    setup_dr(fplbd, topo)
    assert flows_on(fplbd) == 0  # a service, no connection
    with client.KeepAlive(topo.client.netns, topo.vip, HTTP_PORT) as ka:
        for _ in range(3):
            r = ka.get()
            assert r.ok, f"{r}\nlbd log:\n{fplbd.log_tail()}"
        assert xdp_map_keys(fplbd, "lb_flows") and flows_on(fplbd) == 1
        assert program(fplbd)["fastpath"] >= 1, program(fplbd)
    wait_until("the flow removed", lambda: not xdp_map_keys(fplbd, "lb_flows"))
    wait_until("lb_fp_flows_on cleared after the last flow", lambda: flows_on(fplbd) == 0)


def test_fastpath_not_while_the_sync_master_runs(fplbd: Lbd, topo: Topology) -> None:
    """The sync master's rule is per packet (sync.c): its start takes every flow off the fast path and
    none is installed while it runs; after it stops, flows are installed again."""
    setup_dr(fplbd, topo)
    with client.KeepAlive(topo.client.netns, topo.vip, HTTP_PORT) as ka:
        for _ in range(3):
            assert ka.get().ok
        assert xdp_map_keys(fplbd, "lb_flows")
        fplbd.ok("start_daemon", {"state": "master", "mcast_ifn": fplbd.director.ifname, "bulk_period": 0})
        wait_until("the flows removed for the sync master", lambda: not xdp_map_keys(fplbd, "lb_flows"))
        before = program(fplbd)
        for _ in range(5):
            assert ka.get().ok
        after = program(fplbd)
        assert after["fastpath"] == before["fastpath"] and after["fp_installed"] == before["fp_installed"], (
            before, after)
        assert after["redirected"] >= before["redirected"] + 5, (before, after)  # all through lbd
        fplbd.ok("stop_daemon", {"state": "master"})
        for _ in range(3):
            assert ka.get().ok
        assert program(fplbd)["fp_installed"] > after["fp_installed"]  # on again


def test_fastpath_removed_server_is_left_to_lbd(fplbd: Lbd, topo: Topology) -> None:
    setup_dr(fplbd, topo)
    with client.KeepAlive(topo.client.netns, topo.vip, HTTP_PORT) as ka:
        for _ in range(5):
            r = ka.get()
            assert r.ok, f"{r}\nlbd log:\n{fplbd.log_tail()}"
        before = program(fplbd)
        assert before["fastpath"] >= 3, before
        rs = next(h for h in topo.reals if h.name == ka.server)
        fplbd.lbadm("-d", "-t", f"{topo.vip}:{HTTP_PORT}", "-r", f"{rs.addr}:{HTTP_PORT}")
        # IPVS without expire_nodest_conn drops the packets of a removed server's connections.
        r = ka.get(timeout=1.5)
        assert not r.ok, r
        after = program(fplbd)
        assert after["fastpath"] == before["fastpath"], (before, after)
        assert after["redirected"] > before["redirected"], (before, after)


def test_fastpath_new_mac_reinstalls_the_flow(fplbd: Lbd, topo: Topology) -> None:
    setup_dr(fplbd, topo)
    with client.KeepAlive(topo.client.netns, topo.vip, HTTP_PORT) as ka:
        for _ in range(3):
            r = ka.get()
            assert r.ok, f"{r}\nlbd log:\n{fplbd.log_tail()}"
        rs = next(h for h in topo.reals if h.name == ka.server)
        before = program(fplbd)
        assert before["fastpath"] >= 1, before
        new_mac = "02:00:00:00:fa:57"
        old_mac = rs.mac
        rs.ip("link", "set", "dev", rs.ifname, "address", new_mac)
        try:
            # What the director learns from the real server's next ARP, at once.
            topo.director.ip("neigh", "replace", rs.addr, "lladdr", new_mac, "dev", topo.director.ifname,
                             "nud", "reachable")

            def resolved_to_new() -> bool:
                dests = fplbd.ok("list")["services"][0]["dests"]
                return any(d["addr"] == rs.addr and (d.get("l2") or {}).get("mac") == new_mac for d in dests)

            wait_until("lbd's forwarding state with the new MAC", resolved_to_new)
            for _ in range(5):  # the old MAC reaches nobody now: these work only through the new one
                r = ka.get(timeout=3.0)
                assert r.ok, f"{r}\nlbd log:\n{fplbd.log_tail()}"
            after = program(fplbd)
            assert after["fp_installed"] > before["fp_installed"], (before, after)  # re-installed, new generation
            assert after["fastpath"] > before["fastpath"] + 3, (before, after)  # and fast-pathed again
        finally:  # the topology outlives the test: the real MAC back, and the director's entry for it
            rs.ip("link", "set", "dev", rs.ifname, "address", old_mac, check=False)
            topo.director.ip("neigh", "replace", rs.addr, "lladdr", old_mac, "dev", topo.director.ifname, "nud",
                             "reachable", check=False)


RATE_TRAFFIC_S = 12.0  # fast-pathed requests for this long: what the first redirected packets add decays to 0


def test_fastpath_packets_make_the_rates(fplbd: Lbd, topo: Topology) -> None:
    """The C engine's rate estimators (issue 19) read the counters the fast path credits: while nearly
    every client packet is forwarded by the XDP program (never seen by lbd's core), the service's
    InPPS stays up. From the few packets lbd saw itself (the handshake, the first request) the rate
    would have decayed to 0 within these 12 s (a quarter of the way to 0 every 2 s)."""
    setup_dr(fplbd, topo)
    with client.KeepAlive(topo.client.netns, topo.vip, HTTP_PORT) as ka:
        for _ in range(3):
            r = ka.get()
            assert r.ok, f"{r}\nlbd log:\n{fplbd.log_tail()}"
        before = program(fplbd)
        deadline = time.monotonic() + RATE_TRAFFIC_S
        n = 0
        while time.monotonic() < deadline:  # bounded: ~4 requests a second
            r = ka.get(timeout=3.0)
            assert r.ok, f"request {n}: {r}\nlbd log:\n{fplbd.log_tail()}"
            n += 1
            time.sleep(0.2)
        after = program(fplbd)
        stats = svc_stats(fplbd)
    fast, seen = after["fastpath"] - before["fastpath"], after["redirected"] - before["redirected"]
    assert fast >= n and seen <= 2, (before, after, n)  # lbd's core saw (almost) none of them
    assert stats["inpps"] >= 1 and stats["inbps"] > 0, stats
