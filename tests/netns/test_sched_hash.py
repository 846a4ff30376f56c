"""sh, dh, mh and -o with real HTTP and UDP through lbd (both engines).

The DR topology of conftest (`topo`: client, director, rs1..rs3 serving HTTP with their names);
UDP responders on the VIP's port 53 of each real server answer with their names too. Which real
server the kernel would pick is read from tests/oracles (Debian 6.1.192's schedulers) for the
topology's own addresses: lbd must pick the same, as a kernel IPVS director behind the same ECMP
router would (tests/kernel compares with the kernel itself).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest
from conftest import udp_responders

import oracles
from conformance.traffic import Flow, udp_exchange
from lb.testbed.topology import Topology

if TYPE_CHECKING:  # fixtures' types only
    from conftest import HttpHelper, Lbd

UDP_PORT = 53
FLAGS = {"sh-fallback": oracles.IP_VS_SVC_F_SCHED_SH_FALLBACK, "sh-port": oracles.IP_VS_SVC_F_SCHED_SH_PORT,
         "mh-fallback": oracles.IP_VS_SVC_F_SCHED_MH_FALLBACK, "mh-port": oracles.IP_VS_SVC_F_SCHED_MH_PORT}


@pytest.fixture(scope="module")
def udp_servers(topo: Topology) -> Iterator[None]:
    with udp_responders(topo, UDP_PORT):
        yield


def kernel_model(topo: Topology, sched: str, flags: str, proto: int, port: int,
                 weights: dict[str, int] | None = None) -> oracles.Service:
    """The kernel's service after `-A -s sched -b flags` and rs1..rs3 added in order (then weights)."""
    bits = sum(FLAGS[f] for f in flags.split(",") if f)
    svc = oracles.Service(sched, protocol=proto, port=port, flags=bits)
    for rs in topo.reals:
        svc.add_dest(rs.addr, port, weight=1)
    for name, weight in (weights or {}).items():
        svc.edit_dest(topo.host(name).addr, port, weight=weight)
    return svc


def kernel_pick(topo: Topology, model: oracles.Service, sport: int, dport: int, proto: int) -> str | None:
    dest = model.schedule(oracles.PacketInfo.of(topo.client.addr, topo.vip, sport, dport, proto))
    return None if dest is None else next(rs.name for rs in topo.reals if rs.addr == str(dest.addr))


def service(lbd: Lbd, topo: Topology, proto: str, port: int, *opts: str) -> None:
    svc = f"{topo.vip}:{port}"
    lbd.lbadm("-A", proto, svc, *opts)
    for rs in topo.reals:
        lbd.lbadm("-a", proto, svc, "-r", f"{rs.addr}:{port}", "-g", "-w", "1")
    lbd.wait_resolved()


def servers_of(http: HttpHelper, n: int) -> list[str | None]:
    replies = http.gets(n)
    assert all(r.ok for r in replies), replies
    return [r.server for r in replies]


def udp_from(topo: Topology, sport: int) -> str:
    flow = Flow(client="client", addr=topo.client.addr, port=sport)
    udp_exchange(topo.client.netns, flow, topo.vip, UDP_PORT)
    return flow.outcome


@pytest.mark.parametrize("sched", ["sh", "mh"])
def test_one_client_one_server_then_fallback(lbd: Lbd, topo: Topology, http: HttpHelper, sched: str) -> None:
    """HTTP: every connection of the client (any source port) goes to the kernel's server; at weight 0 it
    falls back to the one the kernel falls back to, and comes back when the weight does."""
    service(lbd, topo, "-t", 80, "-s", sched, "-b", f"{sched}-fallback")
    home = kernel_pick(topo, kernel_model(topo, sched, f"{sched}-fallback", 6, 80), 0, 80, 6)
    assert servers_of(http, 6) == [home] * 6
    lbd.lbadm("-e", "-t", f"{topo.vip}:80", "-r", f"{topo.host(str(home)).addr}:80", "-g", "-w", "0")
    fallback = kernel_pick(topo, kernel_model(topo, sched, f"{sched}-fallback", 6, 80, {str(home): 0}), 0, 80, 6)
    assert fallback not in (None, home)
    assert servers_of(http, 6) == [fallback] * 6
    lbd.lbadm("-e", "-t", f"{topo.vip}:80", "-r", f"{topo.host(str(home)).addr}:80", "-g", "-w", "1")
    assert servers_of(http, 4) == [home] * 4


def test_dh_sends_the_vip_to_one_server(lbd: Lbd, topo: Topology, http: HttpHelper) -> None:
    service(lbd, topo, "-t", 80, "-s", "dh")
    assert servers_of(http, 6) == [kernel_pick(topo, kernel_model(topo, "dh", "", 6, 80), 0, 80, 6)] * 6


@pytest.mark.parametrize("sched", ["sh", "mh"])
def test_udp_port_flag_spreads_flows_and_keeps_each(lbd: Lbd, topo: Topology, udp_servers: None, sched: str) -> None:
    """UDP with the port flag: each source port is a flow on the kernel's server for it, every datagram
    of that flow too."""
    service(lbd, topo, "-u", UDP_PORT, "-s", sched, "-b", f"{sched}-port")
    model = kernel_model(topo, sched, f"{sched}-port", 17, UDP_PORT)
    ports = range(41000, 41012)
    expected = [kernel_pick(topo, model, p, UDP_PORT, 17) for p in ports]
    assert len(set(expected)) > 1, "the ports chosen should spread over servers"
    assert [udp_from(topo, p) for p in ports] == expected
    assert [udp_from(topo, p) for p in ports] == expected  # the same flows again: their entries


def test_one_packet_scheduling_spreads_one_flow(lbd: Lbd, topo: Topology, udp_servers: None) -> None:
    """-o: every datagram of one flow (one source port) is scheduled afresh (rr: rs3, rs2, rs1, ...) and
    no entry stays; without -o the flow's datagrams share an entry and a server."""
    service(lbd, topo, "-u", UDP_PORT, "-s", "rr", "-o")
    assert [udp_from(topo, 42000) for _ in range(6)] == ["rs3", "rs2", "rs1"] * 2
    assert lbd.lbadm("-Lnc").stdout.splitlines()[2:] == []
    stats = lbd.lbadm("-Ln", "--stats").stdout.splitlines()
    assert stats[3].split()[:3] == ["UDP", f"{topo.vip}:{UDP_PORT}", "6"]  # six connections, one per datagram
    lbd.lbadm("-E", "-u", f"{topo.vip}:{UDP_PORT}", "-s", "rr")
    first = udp_from(topo, 42001)
    assert [udp_from(topo, 42001) for _ in range(3)] == [first] * 3
    assert len(lbd.lbadm("-Lnc").stdout.splitlines()[2:]) == 1
