"""wrr, lc, sed, nq, fo, ovf with real traffic through lbd (DR): each keeps its promise.

Real HTTP from the client namespace through lbd (both engines) to rs1..rs3, and UDP datagrams
(each from a new source port: a new connection entry each) to responders on the real servers.
Destinations are added rs1, rs2, rs3, so the kernel's list (the order every scan follows, `list`
reports it; `-Ln` sorts) is rs3, rs2, rs1. The thorough checks are the lockstep tests against
the kernel oracles (tests/unit) and the guest comparison with kernel IPVS (tests/kernel); here
each scheduler's headline behaviour is checked on the wire:

- wrr 4/3/2: the first round after the adds takes each once, then 4/3/2 per 9-connection cycle;
- lc, sed, nq: with connections held open, each new connection goes where the scheduler's
  formula over the listed counts says (lc: least 257*active + inactive; sed: least
  (active + 1)/weight; nq: an idle server first);
- fo: everything to the heaviest, moving with a weight edit;
- ovf: held connections fill the heaviest to weight + 1, then the next; when every server is
  full the connection is refused (ICMP port unreachable, as the kernel answers).
"""

from __future__ import annotations

import itertools
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import pytest
from conftest import LnDest, udp_responders
from netns_traffic import flow_outcome

from lb.testbed import client
from lb.testbed.topology import Topology

if TYPE_CHECKING:
    from conftest import HttpHelper, Lbd

HTTP_PORT = 80
UDP_PORT = 5300  # the responders' port on the VIP in every real server
SETTLE_TIMEOUT_S = 10.0  # bound for a closed connection to leave the active count
_udp_ports = itertools.count(41000)  # a new client source port per datagram (a new entry each)


def svc_arg(topo: Topology) -> str:
    return f"{topo.vip}:{HTTP_PORT}"


def setup_service(lbd: Lbd, topo: Topology, sched: str, weights: dict[str, int]) -> None:
    """-A the service, then -a rs1..rs3 in that order: the kernel's list is rs3, rs2, rs1."""
    lbd.lbadm("-A", "-t", svc_arg(topo), "-s", sched)
    for rs in topo.reals:
        lbd.lbadm("-a", "-t", svc_arg(topo), "-r", f"{rs.addr}:{HTTP_PORT}", "-g", "-w", str(weights[rs.name]))


def servers(replies: list[client.Reply]) -> list[str]:
    bad = [r for r in replies if not r.ok]
    assert not bad, f"{len(bad)} of {len(replies)} requests failed, first: {bad[0]}"
    return [r.server for r in replies]  # type: ignore[misc]


def kernel_order(lbd: Lbd) -> list[LnDest]:
    """The destinations as lbd's `list` reports them: in the kernel's list order, with counts."""
    (svc,) = lbd.request("list")["result"]["services"]
    return [LnDest(d["addr"], d["port"], d["fwd"], d["weight"], d["active"], d["inactive"]) for d in svc["dests"]]


def wait_for_active(lbd: Lbd, n: int, what: str, timeout_s: float = SETTLE_TIMEOUT_S) -> list[LnDest]:
    """Poll until exactly n connections are active (a closed one has left ESTABLISHED); bounded."""
    deadline = time.monotonic() + timeout_s
    while True:
        dests = kernel_order(lbd)
        if sum(d.active for d in dests) == n:
            return dests
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}: {dests}")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def udp_servers(topo: Topology) -> Iterator[None]:
    """A UDP responder on VIP:UDP_PORT in each real server, answering with the server's name."""
    with udp_responders(topo, UDP_PORT):
        yield


def udp_answers(topo: Topology, n: int) -> list[str]:
    return [flow_outcome(topo, "udp", topo.vip, UDP_PORT, next(_udp_ports)) for _ in range(n)]


def udp_service(lbd: Lbd, topo: Topology, sched: str, weights: dict[str, int]) -> None:
    lbd.lbadm("-A", "-u", f"{topo.vip}:{UDP_PORT}", "-s", sched)
    for rs in topo.reals:
        lbd.lbadm("-a", "-u", f"{topo.vip}:{UDP_PORT}", "-r", f"{rs.addr}:{UDP_PORT}", "-g",
                  "-w", str(weights[rs.name]))


# --------------------------------------------------------------------------- wrr

WRR_WEIGHTS = {"rs1": 4, "rs2": 3, "rs3": 2}
# List rs3(2), rs2(3), rs1(4); the adds leave cw at 1: the first round takes all three, then the
# cycle cw = 4, 3, 2, 1.
WRR_FIRST = "rs3 rs2 rs1".split()
WRR_CYCLE = "rs1 rs2 rs1 rs3 rs2 rs1 rs3 rs2 rs1".split()


def test_wrr_432_proportions_over_full_cycles(lbd: Lbd, topo: Topology, http: HttpHelper) -> None:
    setup_service(lbd, topo, "wrr", WRR_WEIGHTS)
    got = servers(http.gets(3 + 2 * 9))
    assert got == WRR_FIRST + WRR_CYCLE * 2, got
    assert Counter(got[3:12]) == {"rs1": 4, "rs2": 3, "rs3": 2}


def test_wrr_432_over_udp(lbd: Lbd, topo: Topology, udp_servers: None) -> None:
    udp_service(lbd, topo, "wrr", WRR_WEIGHTS)
    got = udp_answers(topo, 3 + 9)
    assert got == WRR_FIRST + WRR_CYCLE, got


def test_wrr_edit_restarts_at_the_list_head(lbd: Lbd, topo: Topology, http: HttpHelper) -> None:
    """A no-op edit sends the cursor back to the list head, cw kept (3 here): the next pass starts
    at rs3 and takes rs2, where without the reset rs1 would have followed rs2."""
    setup_service(lbd, topo, "wrr", WRR_WEIGHTS)
    assert servers(http.gets(5)) == WRR_FIRST + ["rs1", "rs2"]  # cursor on rs2, cw 3
    lbd.lbadm("-e", "-t", svc_arg(topo), "-r", f"{topo.reals[0].addr}:{HTTP_PORT}", "-g", "-w", "4")
    assert servers(http.gets(4)) == ["rs2", "rs1", "rs3", "rs2"]


# --------------------------------------------------------------------------- lc, sed, nq


def lc_choice(dests: list[LnDest]) -> LnDest | None:
    """Least (active << 8) + total = 257*active + inactive (Debian 6.1.192); weights only quiesce."""
    best = None
    for d in dests:
        if d.weight and (best is None or 257 * d.active + d.inactive < 257 * best.active + best.inactive):
            best = d
    return best


def sed_choice(dests: list[LnDest]) -> LnDest | None:
    """Least (active + 1) / weight, the earlier on a tie."""
    best = None
    for d in dests:
        if d.weight and (best is None or (best.active + 1) * d.weight > (d.active + 1) * best.weight):
            best = d
    return best


def nq_choice(dests: list[LnDest]) -> LnDest | None:
    """An idle server (no active connection) first, in list order; else as sed."""
    idle = next((d for d in dests if d.weight and d.active == 0), None)
    return idle or sed_choice(dests)


CHOICES: dict[str, Callable[[list[LnDest]], LnDest | None]] = {"lc": lc_choice, "sed": sed_choice, "nq": nq_choice}


@pytest.mark.parametrize("sched", ["lc", "sed", "nq"])
def test_least_connection_family_with_held_connections(lbd: Lbd, topo: Topology, http: HttpHelper,
                                                       sched: str) -> None:
    """Weights 1/3/1; 4 connections held open (active), then 10 fresh ones, each closed before
    the next (inactive once its FIN is seen): each goes where the formula over the counts lbd
    lists at that moment says."""
    setup_service(lbd, topo, sched, {"rs1": 1, "rs2": 3, "rs3": 1})
    choose = CHOICES[sched]
    held_n = 4
    with client.keepalives(http.netns, http.vip, http.port, held_n) as held:
        held_on = Counter(k.server for k in held)
        assert sum(held_on.values()) == held_n
        for i in range(10):
            dests = wait_for_active(lbd, held_n, f"only the {held_n} held connections active (request {i})")
            expect = choose(dests)
            assert expect is not None
            reply = client.get_once(http.netns, http.vip, http.port)
            assert reply.ok, reply
            want = next(rs.name for rs in topo.reals if rs.addr == expect.addr)
            assert reply.server == want, f"request {i}: {sched} over {dests} picks {want}, got {reply.server}"
        for k in held:  # the held connections still go where they went
            r = k.get()
            assert r.ok and r.server == k.server, r


def test_nq_sends_to_an_idle_server_whatever_its_weight(lbd: Lbd, topo: Topology, http: HttpHelper) -> None:
    """Held connections: rs1 (weight 1), idle, is chosen before rs2 (weight 100) gets a second one."""
    setup_service(lbd, topo, "nq", {"rs1": 1, "rs2": 100, "rs3": 1})
    with client.keepalives(http.netns, http.vip, http.port, 4) as held:
        assert [k.server for k in held] == ["rs3", "rs2", "rs1", "rs2"]


# --------------------------------------------------------------------------- fo


def test_fo_all_to_the_heaviest(lbd: Lbd, topo: Topology, http: HttpHelper, udp_servers: None) -> None:
    setup_service(lbd, topo, "fo", {"rs1": 1, "rs2": 3, "rs3": 2})
    assert set(servers(http.gets(8))) == {"rs2"}
    lbd.lbadm("-e", "-t", svc_arg(topo), "-r", f"{topo.reals[2].addr}:{HTTP_PORT}", "-g", "-w", "5")
    assert set(servers(http.gets(6))) == {"rs3"}
    udp_service(lbd, topo, "fo", {"rs1": 7, "rs2": 3, "rs3": 2})
    assert set(udp_answers(topo, 6)) == {"rs1"}


# --------------------------------------------------------------------------- ovf


def test_ovf_fills_weights_then_overflows(lbd: Lbd, topo: Topology, http: HttpHelper) -> None:
    setup_service(lbd, topo, "ovf", {"rs1": 1, "rs2": 2, "rs3": 3})
    with client.keepalives(http.netns, http.vip, http.port, 9) as held:
        assert [k.server for k in held] == ["rs3"] * 4 + ["rs2"] * 3 + ["rs1"] * 2
        full = client.get_once(http.netns, http.vip, http.port, timeout=3.0)
        assert not full.ok, f"every server holds weight + 1 active connections, yet {full}"
    wait_for_active(lbd, 0, "the held connections to close")
    assert servers(http.gets(3)) == ["rs3"] * 3  # closed (inactive) connections do not count
