"""IPIP (tunnel) end to end with real packets: client -> VIP (lbd) -> IPIP -> real servers.

The topology is conftest's `topo` (client, director, rs1..rs3 on one bridge; the
real servers hold the VIP on lo with arp_ignore/arp_announce and run an HTTP
server). For this module each real server also runs lb.testbed.ipip_decap (this
kernel has no ipip module): protocol-4 packets are decapsulated into a TUN
device, whose receive counter proves that requests arrived through the tunnel.
Replies leave the real servers directly to the client, as in DR.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import pytest
from conftest import churn_other_services, held_connections_through_churn, parse_ln, running_lbd

from lb.testbed import echo
from lb.testbed.ipip_decap import start_in
from lb.testbed.topology import Topology

if TYPE_CHECKING:  # fixtures' types only
    from conftest import HttpHelper, Lbd

HTTP_PORT = 80
OTHER_PORTS = (8080, 8081, 8082)
DECAP_SECONDS = 1200.0  # bound for the helper's life; the module ends it earlier
ECHO_PORT = 9101
GSO_UPLOAD_BYTES = 1024 * 1024


@pytest.fixture(scope="module")
def decap(topo: Topology) -> Iterator[str]:
    """ipip_decap in every real server; yields the TUN device name (same in each)."""
    dev = f"{topo.prefix}ipip"
    procs = [start_in(rs, dev, seconds=DECAP_SECONDS) for rs in topo.reals]
    try:
        yield dev
    finally:
        for p in procs:
            topo.stop_process(p)


def tun_rx(topo: Topology, dev: str) -> dict[str, int]:
    """Packets each real server received through its TUN device (i.e. decapsulated)."""
    out = {}
    for rs in topo.reals:
        info = json.loads(rs.ip("-j", "-s", "link", "show", "dev", dev).stdout)
        out[rs.name] = int(info[0]["stats64"]["rx"]["packets"])
    return out


def setup_tunnel(lbd: Lbd, topo: Topology, port: int = HTTP_PORT) -> str:
    svc = f"{topo.vip}:{port}"
    lbd.lbadm("-A", "-t", svc, "-s", "rr")
    for rs in topo.reals:
        lbd.lbadm("-a", "-t", svc, "-r", f"{rs.addr}:{HTTP_PORT}", "-i", "-w", "1")
    return svc


def test_tunnel_rr_spreads_http_and_lists_tunnel(lbd: Lbd, topo: Topology, http: HttpHelper,
                                                  decap: str) -> None:
    setup_tunnel(lbd, topo)
    lbd.wait_resolved()
    before = tun_rx(topo, decap)
    replies = http.gets(30)
    assert all(r.ok for r in replies), [r.error for r in replies if not r.ok]
    got = [r.server for r in replies]
    # rr walks destinations most recently added first, as kernel IPVS.
    order = [rs.name for rs in reversed(topo.reals)]
    assert got == order * 10, f"rr order differs from kernel IPVS: {got}"
    after = tun_rx(topo, decap)
    # Each request is >= 3 packets from the client (ACK, request, FIN...): all through the tunnel.
    for rs in topo.reals:
        assert after[rs.name] - before[rs.name] >= 3 * 10, (
            f"{rs.name} decapsulated {after[rs.name] - before[rs.name]} packets for 10 requests")
    services = parse_ln(lbd.lbadm("-Ln").stdout)
    assert len(services) == 1
    dests = services[0].dests
    assert [d.forward for d in dests] == ["Tunnel"] * len(topo.reals), dests
    assert sorted(d.addr for d in dests) == sorted(rs.addr for rs in topo.reals)
    saved = lbd.lbadm("-S", "-n").stdout
    assert all(f"-r {rs.addr}:{HTTP_PORT} -i" in saved for rs in topo.reals), saved


def test_tunnel_weight_zero(lbd: Lbd, topo: Topology, http: HttpHelper, decap: str) -> None:
    """Over the tunnel too, weight 0 takes no new connections; rr ignores the other weights
    (kernel ip_vs_rr only skips weight 0 and overloaded destinations)."""
    svc = setup_tunnel(lbd, topo)
    rs1, rs2, rs3 = topo.reals[:3]
    lbd.lbadm("-e", "-t", svc, "-r", f"{rs1.addr}:{HTTP_PORT}", "-i", "-w", "0")
    lbd.lbadm("-e", "-t", svc, "-r", f"{rs2.addr}:{HTTP_PORT}", "-i", "-w", "2")
    lbd.wait_resolved()
    replies = http.gets(12)
    assert all(r.ok for r in replies), [r.error for r in replies if not r.ok]
    assert Counter(r.server for r in replies) == {rs2.name: 6, rs3.name: 6}


def test_tunnel_held_connections_survive_other_services(lbd: Lbd, topo: Topology, decap: str) -> None:
    """Long-lived connections through VIP:80 keep exchanging data while services on other
    ports of the VIP are added, edited and deleted (with destinations, tunnel and DR)."""
    setup_tunnel(lbd, topo)
    lbd.wait_resolved()
    rips = [rs.addr for rs in topo.reals]

    def churn(between: Callable[[], None]) -> int:
        changes = churn_other_services(lbd, topo.vip, rips, "-i", OTHER_PORTS[:2], between=between)
        return changes + churn_other_services(lbd, topo.vip, rips[:2], "-g", OTHER_PORTS[2:], between=between)

    held_connections_through_churn(lbd, topo, HTTP_PORT, churn, "connections")


@pytest.fixture(scope="module")
def echo_servers(topo: Topology) -> Iterator[None]:
    with echo.servers(topo, [ECHO_PORT]):
        yield


def test_tunnel_with_gso_sends_segments_that_fit_the_tunnel(topo: Topology, decap: str, echo_servers: None) -> None:
    """lbd --gso over IPIP: super-packets are cut here (no IPIP GSO type to hand to a device) into
    segments that still fit the path MTU after the 20-byte outer header (lb_path_mtu); a bulk
    upload echoes back byte for byte, nothing is sent whole, no segment is refused as too big."""
    with running_lbd(topo, "c", args=["--gso"]) as lbd:
        svc = f"{topo.vip}:{ECHO_PORT}"
        lbd.lbadm("-A", "-t", svc, "-s", "rr")
        for rs in topo.reals:
            lbd.lbadm("-a", "-t", svc, "-r", f"{rs.addr}:{ECHO_PORT}", "-i", "-w", "1")
        lbd.wait_resolved()
        before = tun_rx(topo, decap)
        sent, received, got = echo.bulk_echo(topo.client.netns, topo.vip, ECHO_PORT, GSO_UPLOAD_BYTES, seed=5,
                                             timeout_s=30.0)
        assert got == GSO_UPLOAD_BYTES and received == sent, "the echoed stream differs from what was sent"
        counters = lbd.ok("counters")
        nfq = counters["nfq"]
        assert nfq["gso_packets"] > 0 and nfq["gso_errors"] == 0, nfq
        assert nfq["gso_whole"] == 0, f"an IPIP super-packet was sent whole: {nfq}"
        # Cut at 1500 bytes, every segment of every super-packet would draw one (they did: 1590 for
        # 1 MiB, and 100 s instead of 1 s). A few full-size plain packets sent before the client
        # learnt the tunnel's MTU may still draw one each.
        assert counters["reasons"]["frag_needed"] <= 10, counters["reasons"]
        decapsulated = sum(tun_rx(topo, decap).values()) - sum(before.values())
        assert decapsulated >= GSO_UPLOAD_BYTES // 1460, f"only {decapsulated} packets came through the tunnel"
