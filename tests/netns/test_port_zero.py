"""Port-zero ("all ports") services with real TCP and UDP through lbd (both engines), issue 14 item 3.

The DR topology of conftest (`topo`: client, director, rs1..rs3); each real server answers on the
VIP's ports 8301..8303 (TCP and UDP) with its name. As with kernel IPVS (ip_vs_service_find, then
ip_vs_sched_persist): a persistent VIP:0 service receives every port of the VIP that has no exact
service, one template per client covers all of them (the client's three ports land on ONE real
server), and the real server is reached on the port the client asked for.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest
from conftest import parse_ln
from netns_traffic import answering, flow_outcome
from packet_source import AFXDP, xdp_keys
from steering import elements

from lb.testbed.topology import Topology

if TYPE_CHECKING:  # fixtures' types only
    from conftest import Lbd

PORTS = (8301, 8302, 8303)


@pytest.fixture(scope="module")
def servers(topo: Topology) -> Iterator[None]:
    with answering(topo.reals, [(topo.vip, port) for port in PORTS], tcp=True):
        yield


def port_zero_service(lbd: Lbd, topo: Topology, proto: str, reals: list[str] | None = None) -> None:
    svc = f"{topo.vip}:0"
    lbd.lbadm("-A", proto, svc, "-s", "rr", "-p", "300")
    for rs in topo.reals:
        if reals is None or rs.name in reals:
            lbd.lbadm("-a", proto, svc, "-r", rs.addr, "-g")
    lbd.wait_resolved()


def tcp_to(topo: Topology, sport: int, port: int) -> str:
    return flow_outcome(topo, "tcp", topo.vip, port, sport)


def udp_to(topo: Topology, sport: int, port: int) -> str:
    return flow_outcome(topo, "udp", topo.vip, port, sport)


def test_tcp_every_port_to_one_server(lbd: Lbd, topo: Topology, servers: None) -> None:
    """TCP to three ports of the VIP: one real server (one template for the client), each connection
    to the port the client asked for; -Lnc as the kernel's (template VIP:0 -> RIP:0)."""
    port_zero_service(lbd, topo, "-t")
    got = [tcp_to(topo, 43000 + i, port) for i, port in enumerate(PORTS)]
    assert len(set(got)) == 1 and got[0] in {rs.name for rs in topo.reals}, got
    rip = topo.host(got[0]).addr
    conns = [line.split() for line in lbd.lbadm("-Lnc").stdout.splitlines()[2:]]
    vip_ports = sorted((c[4], c[5]) for c in conns if c[0] == "TCP")
    assert (f"{topo.vip}:0", f"{rip}:0") in vip_ports, conns  # the template
    for port in PORTS:
        assert (f"{topo.vip}:{port}", f"{rip}:{port}") in vip_ports, conns
    listing = lbd.lbadm("-Ln").stdout
    assert f"TCP  {topo.vip}:0 rr persistent 300" in listing, listing


def test_exact_service_comes_first(lbd: Lbd, topo: Topology, servers: None) -> None:
    """An exact service on one port of the VIP takes that port; the others go to the port-0 service."""
    port_zero_service(lbd, topo, "-t", reals=["rs2", "rs3"])
    exact = f"{topo.vip}:{PORTS[1]}"
    lbd.lbadm("-A", "-t", exact, "-s", "rr")
    lbd.lbadm("-a", "-t", exact, "-r", f"{topo.host('rs1').addr}:{PORTS[1]}", "-g")
    lbd.wait_resolved()
    got = [tcp_to(topo, 43100 + i, port) for i, port in enumerate(PORTS)]
    assert got[1] == "rs1", got
    assert got[0] == got[2] and got[0] in ("rs2", "rs3"), got


def test_udp_every_port_to_one_server(lbd: Lbd, topo: Topology, servers: None) -> None:
    port_zero_service(lbd, topo, "-u")
    got = [udp_to(topo, 43200 + i, port) for i, port in enumerate(PORTS)]
    assert len(set(got)) == 1 and got[0] in {rs.name for rs in topo.reals}, got
    if AFXDP:  # the AF_XDP form: one key for the VIP, port 0
        assert ("0.0.0.0", topo.vip, 0, 0, "udp") in xdp_keys(lbd), xdp_keys(lbd)
        return
    sets = elements(topo.director, "udp0")
    assert topo.vip in sets, sets  # steered by the port-0 set, not per port


def test_fullnat_destination_taken(lbd: Lbd, topo: Topology) -> None:
    """FULLNAT under a port-zero service is accepted and listed (traffic: tests/netns/test_nat_portless.py)."""
    lbd.lbadm("-A", "-t", f"{topo.vip}:0", "-s", "rr", "-p", "300")
    lbd.lbadm("-P", "-t", f"{topo.vip}:0", "-z", topo.director.addr)
    lbd.lbadm("-a", "-t", f"{topo.vip}:0", "-r", topo.reals[0].addr, "-b")
    (svc,) = parse_ln(lbd.lbadm("-Ln").stdout)
    assert [(d.forward, d.port) for d in svc.dests] == [("FullNat", 0)], svc
