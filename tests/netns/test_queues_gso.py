"""Several queues with one pinned thread each (--queue-balance), and GSO packets taken whole (--gso).

C engine only (the Python engine refuses both options; tests/unit covers that). DR to the
topology's real servers, which also run echo servers: what the client sends through the VIP
comes back to it straight from the real server, byte for byte.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import Lbd, iptables_leftovers, running_lbd
from packet_source import nfqueue_only
from steering import NFTABLES, dump, queue_rules

from lb.testbed import echo
from lb.testbed.topology import Topology

ECHO_PORT = 9100
UPLOAD_BYTES = 4 * 1024 * 1024
IO_TIMEOUT_S = 20.0


@pytest.fixture(scope="module")
def echo_servers(topo: Topology) -> Iterator[None]:
    with echo.servers(topo, [ECHO_PORT]):
        yield


def _dr_echo_service(lbd: Lbd, topo: Topology) -> None:
    svc = f"{topo.vip}:{ECHO_PORT}"
    lbd.lbadm("-A", "-t", svc, "-s", "rr")
    for rs in topo.reals:
        lbd.lbadm("-a", "-t", svc, "-r", f"{rs.addr}:{ECHO_PORT}", "-g", "-w", "1")
    lbd.wait_resolved()


def _bulk_echo(topo: Topology, nbytes: int, seed: int) -> tuple[str, str, int]:
    return echo.bulk_echo(topo.client.netns, topo.vip, ECHO_PORT, nbytes, seed, timeout_s=IO_TIMEOUT_S)


def _counters(lbd: Lbd) -> dict[str, Any]:
    result: dict[str, Any] = lbd.ok("counters")
    return result


def _thread_cpus(pid: int) -> dict[int, int]:
    """Allowed CPU of each pinned thread of `pid` (tid -> cpu)."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        cpus = os.sched_getaffinity(int(tid))
        if len(cpus) == 1:
            out[int(tid)] = next(iter(cpus))
    return out


def test_gso_packets_are_taken_whole_and_leave_whole_in_dr(topo: Topology, echo_servers: None) -> None:
    with running_lbd(topo, "c", args=["--gso"]) as lbd:
        _dr_echo_service(lbd, topo)
        sent, received, got = _bulk_echo(topo, UPLOAD_BYTES, seed=1)
        assert got == UPLOAD_BYTES and received == sent, "the echoed stream differs from what was sent"
        nfq = _counters(lbd)["nfq"]
        assert nfq["gso_errors"] == 0, nfq
        # 4 MiB in 64 KiB writes over a veth (TSO on): the queue must have handed over GSO packets,
        # each cut into several segments of at most 1500 bytes for the packet core to see.
        assert nfq["gso_packets"] > 0, f"no GSO packet reached the queue: {nfq}"
        assert nfq["gso_segments"] >= 2 * nfq["gso_packets"], nfq
        assert nfq["packets"] < UPLOAD_BYTES // 1448, f"not fewer queue messages than segments: {nfq}"
        # DR sends every segment unchanged: the super-packets leave whole (virtio-net header), one
        # frame per queued packet however many segments the core saw; the stream above is intact.
        assert 0 < nfq["gso_whole"] <= nfq["gso_packets"], nfq
        assert nfq["xmit_l2"] <= nfq["packets"], f"a queued packet left as several frames: {nfq}"
        assert "GSO packets cut to 1500 bytes" in lbd.log_tail(20000)


@nfqueue_only("the kernel segmenting GSO packets before the queue (XDP frames are never GSO packets)")
def test_without_gso_the_kernel_segments_before_the_queue(topo: Topology, echo_servers: None) -> None:
    with running_lbd(topo, "c") as lbd:
        _dr_echo_service(lbd, topo)
        sent, received, got = _bulk_echo(topo, UPLOAD_BYTES // 4, seed=2)
        assert received == sent
        nfq = _counters(lbd)["nfq"]
        assert nfq["gso_packets"] == 0 and nfq["csum_completed"] == 0, nfq
        assert nfq["packets"] >= (UPLOAD_BYTES // 4) // 1448, nfq


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs to pin two queue threads apart")
def test_queue_balance_two_pinned_threads_share_the_flows(topo: Topology, echo_servers: None) -> None:
    cpus = sorted(os.sched_getaffinity(0))[:2]
    args = ["--queue-balance", "10:11", "--queue-cpu-fanout", "--queue-cpus", f"{cpus[0]},{cpus[1]}"]
    with running_lbd(topo, "c", args=args) as lbd:
        assert lbd.proc is not None
        pinned = sorted(_thread_cpus(lbd.proc.pid).values())
        assert pinned == sorted(cpus), f"expected one thread pinned to each of {cpus}, got {pinned}"
        _dr_echo_service(lbd, topo)
        if NFTABLES:  # lbd's table of its first queue; nft (and lbd's comment on the rule) say `10-11 ... fanout`
            rules = queue_rules(lbd.director, 10)
            assert any("10-11" in r and "fanout" in r for r in rules), dump(lbd.director, 10)
        else:
            rules = lbd.director.exec(["iptables", "-t", "raw", "-S"]).stdout
            assert "--queue-balance 10:11" in rules and "--queue-cpu-fanout" in rules, rules
        # With CPU fanout the queue is the one of the CPU that handles the packet: a veth delivers on
        # the sending CPU, so a client pinned to each CPU in turn feeds each queue.
        own = os.sched_getaffinity(0)
        try:
            for rep in range(4):
                os.sched_setaffinity(0, {cpus[rep % 2]})
                sent, received, _ = _bulk_echo(topo, 256 * 1024, seed=10 + rep)
                assert received == sent, f"stream {rep} corrupted"
        finally:
            os.sched_setaffinity(0, own)
        counters = _counters(lbd)  # one snapshot: late ACKs may still be arriving
        per_queue = counters["nfq_queues"]
        assert len(per_queue) == 2
        assert all(q["packets"] > 50 for q in per_queue), f"a queue got no share: {per_queue}"
        assert sum(q["xmit_l2"] for q in per_queue) == counters["nfq"]["xmit_l2"]
    assert not iptables_leftovers(topo.director)


def test_queue_balance_without_fanout_hashes_and_both_queues_bound(topo: Topology, echo_servers: None) -> None:
    with running_lbd(topo, "c", args=["--queue-balance", "20:21"]) as lbd:
        _dr_echo_service(lbd, topo)
        sent, received, _ = _bulk_echo(topo, 256 * 1024, seed=30)
        assert received == sent
        # Both queues are bound (a packet hashed to an unbound queue would be accepted by the
        # director's own stack and reset): the kernel lists a listener on each.
        table = lbd.director.exec(["cat", "/proc/net/netfilter/nfnetlink_queue"]).stdout.split("\n")
        bound = {int(line.split()[0]) for line in table if line.strip()}
        assert {20, 21} <= bound, table
        per_queue = _counters(lbd)["nfq_queues"]
        assert sum(q["packets"] for q in per_queue) > 100, per_queue
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # the kernel drops the queue instances with the socket
        table = topo.director.exec(["cat", "/proc/net/netfilter/nfnetlink_queue"]).stdout
        if not any(line.split()[:1] in (["20"], ["21"]) for line in table.splitlines()):
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"queues still bound after lbd exit: {table}")


def test_queue_options_refused_with_reasons(topo: Topology) -> None:
    lbd_bin = Lbd(topo, "c")  # only for the binary's path and the director
    try:
        for argv, why in (
            (["--queue-balance", "3:1"], "FIRST must be below LAST"),
            (["--queue-num", "1", "--queue-balance", "1:2"], "either --queue-num or --queue-balance"),
            (["--queue-balance", "0:1", "--queue-cpus", "0"], "lists 1 CPU(s) for 2 queue(s)"),
            (["--queue-cpu-fanout"], "needs --queue-balance"),
            (["--engine", "python", "--gso"], "needs the C engine"),
            (["--gso-mtu", "100", "--gso"], "out of range 576..65535"),
        ):
            from conftest import LBD

            proc = topo.director.exec([str(LBD), "--socket", lbd_bin.socket, *argv], check=False)
            assert proc.returncode == 2 and why in proc.stderr, (argv, proc.returncode, proc.stderr)
        assert not iptables_leftovers(topo.director)
    finally:
        lbd_bin.cleanup()
