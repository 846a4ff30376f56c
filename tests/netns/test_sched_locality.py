"""lblc, lblcr and twos with real HTTP and UDP through lbd (DR, both engines).

Short by design (tests/unit compares every choice with the kernel model, tests/kernel with kernel
IPVS): each scheduler serves real connections held open, then real UDP datagrams from new source
ports, and the choices are the kernel's as the model in tests/oracles predicts them (twos: random,
so only where it may and may not send).
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from lb.testbed import client
from lb.testbed.topology import Topology

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from conftest import udp_responders  # noqa: E402

from conformance.traffic import Flow, udp_exchange  # noqa: E402
from oracles import PacketInfo, Service  # noqa: E402

if TYPE_CHECKING:
    from conftest import Lbd

HTTP_PORT = 80
UDP_PORT = 5301  # the real servers' UDP responders (this module's), on the VIP
HELD = 7
DATAGRAMS = 8


@pytest.fixture(scope="module")
def udp_servers(topo: Topology) -> Iterator[None]:
    with udp_responders(topo, UDP_PORT):
        yield


def add_service(lbd: Lbd, topo: Topology, flag: str, port: int, sched: str, weights: dict[str, int]) -> None:
    """rs1, rs2, rs3 added in this order: the kernel's list is rs3, rs2, rs1."""
    lbd.lbadm("-A", flag, f"{topo.vip}:{port}", "-s", sched)
    for rs in topo.reals:
        lbd.lbadm("-a", flag, f"{topo.vip}:{port}", "-r", f"{rs.addr}:{port}", "-g", "-w", str(weights[rs.name]))


def kernel_model(topo: Topology, sched: str, weights: dict[str, int], held: int) -> list[str]:
    """The kernel's choices (tests/oracles) for `held` connections kept open (SYN, then ACK: active)."""
    svc = Service(sched)
    for rs in topo.reals:
        svc.add_dest(rs.addr, HTTP_PORT, weights[rs.name])
    by_addr = {rs.addr: rs.name for rs in topo.reals}
    chosen = []
    for n in range(held):
        conn = svc.new_flow(PacketInfo.of(topo.client.addr, topo.vip, 30000 + n, HTTP_PORT))
        assert conn is not None
        conn.tcp_segment("INPUT_ONLY", "ack")
        chosen.append(by_addr[str(conn.dest.addr)])
    return chosen


def hold_connections(topo: Topology, n: int) -> tuple[list[client.KeepAlive], list[str]]:
    """n HTTP/1.1 connections opened one after another and kept open; who answered each."""
    conns: list[client.KeepAlive] = []
    servers: list[str] = []
    for _ in range(n):
        ka = client.KeepAlive(topo.client.netns, topo.vip, HTTP_PORT)
        reply = ka.get()
        conns.append(ka)
        assert reply.ok and reply.server is not None, reply
        servers.append(reply.server)
    return conns, servers


def datagrams(topo: Topology, n: int) -> list[str]:
    outcomes = []
    for k in range(n):
        flow = Flow("c1", topo.client.addr, 31000 + k)  # a new source port each: a new connection each
        udp_exchange(topo.client.netns, flow, topo.vip, UDP_PORT)
        outcomes.append(flow.outcome)
    return outcomes


@pytest.mark.parametrize("sched", ["lblc", "lblcr"])
def test_locality_schedulers_serve_http_and_udp(lbd: Lbd, topo: Topology, udp_servers: None, sched: str) -> None:
    weights = {"rs1": 1, "rs2": 1, "rs3": 1}
    add_service(lbd, topo, "-t", HTTP_PORT, sched, weights)
    add_service(lbd, topo, "-u", UDP_PORT, sched, weights)
    # Held connections (active): the VIP's entry stays on its server until it has more active
    # connections than its weight while another is under half its own; lblc then moves the entry,
    # lblcr adds a member to the set.
    conns, servers = hold_connections(topo, HELD)
    try:
        assert servers == kernel_model(topo, sched, weights, HELD)
        assert len(set(servers)) > 1, servers  # the cache did move on
    finally:
        for ka in conns:
            ka.close()
    # UDP entries are never active, so the VIP's entry never counts as overloaded: every datagram
    # goes to the server of the first miss, the list head rs3.
    assert datagrams(topo, DATAGRAMS) == ["rs3"] * DATAGRAMS
    assert f"{sched}" in lbd.lbadm("-Ln").stdout


def test_twos_serves_http_and_udp(lbd: Lbd, topo: Topology, udp_servers: None) -> None:
    """twos draws at random: every connection is answered, never by the weight-0 server, and with
    connections held the less loaded of two draws wins, so no server ends with all of them."""
    weights = {"rs1": 0, "rs2": 1, "rs3": 1}
    add_service(lbd, topo, "-t", HTTP_PORT, "twos", weights)
    add_service(lbd, topo, "-u", UDP_PORT, "twos", weights)
    conns, servers = hold_connections(topo, 16)
    try:
        counts = Counter(servers)
        assert set(counts) <= {"rs2", "rs3"}, counts
        # A draw names rs3 (the list head, its extra chance) with p = 2/3, rs2 with 1/3. When the two
        # draws differ the less loaded wins, so one server keeps every connection only if both draws
        # agree on it every time it is the busier: at most (2/3)^2 per connection after the first,
        # (4/9)^15 < 6e-6 for all 16.
        assert counts["rs2"] >= 1 and counts["rs3"] >= 1, counts
    finally:
        for ka in conns:
            ka.close()
    outcomes = datagrams(topo, DATAGRAMS)
    assert set(outcomes) <= {"rs2", "rs3"}, outcomes
