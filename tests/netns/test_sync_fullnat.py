"""FULLNAT failover through the sync extension (issue 18 items 3 and 5, FULLNAT with and without
SYN-proxy): director A runs a sync master, director B a backup; 20 established FULLNAT connections
per service through A, one service plain, one with SYN-proxy. A is killed (by PID), the VIP and the
local address moved to B by hand, and at least 19 of 20 connections of each kind keep exchanging
data through B with the same real server, seen by the real server from the same local address and
port (its /peer answer).

Own topology: client .50, da .2 (the VIP first) and db .3 on "lan"; da .1 and db .2 on "back"
with the real servers f1/f2 (.11/.12), whose default route is the floating local address .5
(held by da first, then db). Both directors carry the same configuration, as kernel IPVS sync
requires.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from conftest import HTTP_PORT, REPO, Lbd

from lb.testbed import client
from lb.testbed.topology import (
    CLIENT_INDEX,
    DIRECTOR_INDEX,
    REAL_BASE_INDEX,
    VIP_INDEX,
    Host,
    HostSpec,
    LinkSpec,
    SegmentSpec,
    Topology,
    TopologySpec,
)

pytestmark = pytest.mark.netns

T = TypeVar("T")

N_CONNS = 20
SYNC_WAIT_S = 20.0  # master tick 1 s; generous for a loaded machine (a bound, not a threshold)
SYNCID = 33
LIP_INDEX = 5
PLAIN_PORT, SYNPROXY_PORT = 80, 81  # VIP ports; the real servers listen on HTTP_PORT


def _spec() -> TopologySpec:
    hosts = [
        HostSpec("client", (LinkSpec("lan", CLIENT_INDEX),), role="client"),
        HostSpec("da", (LinkSpec("lan", DIRECTOR_INDEX), LinkSpec("back", 1)), role="director", vips=(VIP_INDEX,)),
        HostSpec("db", (LinkSpec("lan", DIRECTOR_INDEX + 1), LinkSpec("back", 2)), role="host"),
        HostSpec("f1", (LinkSpec("back", REAL_BASE_INDEX + 1),), role="real", gateway=("back", LIP_INDEX)),
        HostSpec("f2", (LinkSpec("back", REAL_BASE_INDEX + 2),), role="real", gateway=("back", LIP_INDEX)),
    ]
    return TopologySpec(segments=(SegmentSpec("lan"), SegmentSpec("back")), hosts=tuple(hosts))


class LbdOn(Lbd):
    """An lbd in a given host of the topology."""

    def __init__(self, topo: Topology, host: Host) -> None:
        super().__init__(topo, "c")
        self._host = host

    @property
    def director(self) -> Host:
        return self._host


def _configure(d: LbdOn, topo: Topology, lip: str) -> None:
    for port, synproxy in ((PLAIN_PORT, "disable"), (SYNPROXY_PORT, "enable")):
        svc = f"{topo.vip}:{port}"
        d.lbadm("-A", "-t", svc, "-s", "rr", "-j", synproxy)
        d.lbadm("-P", "-t", svc, "-z", lip)
        for rs in topo.reals:
            d.lbadm("-a", "-t", svc, "-r", f"{rs.addr}:{HTTP_PORT}", "-b")
    d.wait_resolved()


@pytest.fixture(scope="module")
def pair() -> Iterator[tuple[Topology, LbdOn, LbdOn, str]]:
    logdir = Path(tempfile.mkdtemp(prefix="lbB-syncfnat-"))
    with Topology(_spec()) as topo:
        lip = topo.addr("back", LIP_INDEX)
        a_host, b_host = topo.host("da"), topo.host("db")
        a_host.ip("addr", "add", f"{lip}/24", "dev", a_host.iface("back").ifname)
        env = dict(os.environ, PYTHONPATH=str(REPO))
        for rs in topo.reals:
            with open(logdir / f"{rs.name}.log", "w") as log:
                rs.popen([sys.executable, "-m", "lb.testbed.httpd", "--name", rs.name, "--port", str(HTTP_PORT)],
                         stdout=log, stderr=subprocess.STDOUT, env=env)
        client.wait_serving(a_host.netns, {rs.addr: rs.name for rs in topo.reals}, HTTP_PORT)
        a, b = LbdOn(topo, a_host), LbdOn(topo, b_host)
        try:
            for d in (a, b):
                d.start()
                _configure(d, topo, lip)
            yield topo, a, b, lip
        finally:
            for d in (a, b):
                if d.running():
                    d.stop(signal.SIGKILL)
                for table in ("raw", "filter", "mangle", "nat"):
                    d.director.exec(["iptables", "-t", table, "-F"], check=False)
                    d.director.exec(["iptables", "-t", table, "-X"], check=False)
                d.cleanup()


def _wait(predicate: Callable[[], T | None], timeout: float, what: str) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached in {timeout} s")
        time.sleep(0.2)


def _fullnat_conns(d: Lbd) -> dict[tuple[str, int], tuple[str, str, int]]:
    """(client, port) -> (real server, local address, local port) of d's FULLNAT entries."""
    out = {}
    for c in d.ok("connections", {})["connections"]:
        if c.get("laddr", "0.0.0.0") != "0.0.0.0":
            out[(c["caddr"], int(c["cport"]))] = (c["daddr"], c["laddr"], int(c["lport"]))
    return out


def _peer(reply: client.Reply) -> tuple[str, str, int]:
    """(server, peer address, peer port) of a /peer answer: the real server's view of the connection."""
    name, peer = reply.body.splitlines()[:2]
    addr, port = peer.split()
    return name, addr, int(port)


def test_fullnat_and_synproxy_connections_survive_failover(pair: tuple[Topology, LbdOn, LbdOn, str]) -> None:
    topo, a, b, lip = pair
    b.lbadm("--start-daemon", "backup", "--mcast-interface", b.director.iface("lan").ifname, "--syncid", str(SYNCID))
    a.lbadm("--start-daemon", "master", "--mcast-interface", a.director.iface("lan").ifname, "--syncid", str(SYNCID))
    listed = a.lbadm("-L", "--daemon").stdout
    assert "ext-port=8849)" in listed, listed
    with contextlib.ExitStack() as stack:
        conns = {port: [stack.enter_context(client.KeepAlive(topo.client.netns, topo.vip, port))
                        for _ in range(N_CONNS)] for port in (PLAIN_PORT, SYNPROXY_PORT)}
        seen: dict[int, dict[int, tuple[str, str, int]]] = {}
        for port, kas in conns.items():
            seen[port] = {}
            for ka in kas:
                reply = ka.get("/peer")
                assert reply.ok, reply.error
                seen[port][int(ka.local_port or 0)] = _peer(reply)
        # Each connection: a real server, our local address, a port of its own.
        for port in conns:
            assert {p[1] for p in seen[port].values()} == {lip}
            assert len({p[2] for p in seen[port].values()}) == N_CONNS

        # The backup lists every connection with the master's real server, local address and port.
        on_a = _fullnat_conns(a)
        expected = {(topo.client.addr, cport): on_a[(topo.client.addr, cport)]
                    for port in conns for cport in seen[port]}

        def synced() -> dict[tuple[str, int], tuple[str, str, int]] | None:
            on_b = _fullnat_conns(b)
            return on_b if all(k in on_b for k in expected) else None

        on_b = _wait(synced, SYNC_WAIT_S, "every FULLNAT connection on the backup")
        assert {k: on_b[k] for k in expected} == expected
        counters = b.ok("get_daemon")["daemons"][0]["counters"]
        assert counters.get("ext_conns_installed", 0) >= 2 * N_CONNS, counters
        sent = a.ok("get_daemon")["daemons"][0]["counters"]
        assert not any(k.startswith("not_sent_") for k in sent), sent  # nothing left behind
        assert sent.get("ext_conns_sent", 0) >= 2 * N_CONNS, sent

        # Failover by hand: A dies, the VIP and the local address move to B.
        a.stop(signal.SIGKILL)
        vip_cidr, lip_cidr = f"{topo.vip}/32", f"{lip}/24"
        a.director.ip("addr", "del", vip_cidr, "dev", a.director.iface("lan").ifname)
        a.director.ip("addr", "del", lip_cidr, "dev", a.director.iface("back").ifname)
        b.director.ip("addr", "add", vip_cidr, "dev", b.director.iface("lan").ifname)
        b.director.ip("addr", "add", lip_cidr, "dev", b.director.iface("back").ifname)
        topo.client.ip("neigh", "flush", "to", topo.vip)
        for rs in topo.reals:
            rs.ip("neigh", "flush", "to", lip)
        before = b.ok("counters")["reasons"]["forwarded"]
        for port, kas in conns.items():
            survived = 0
            for ka in kas:
                reply = ka.get("/peer", timeout=5.0)
                survived += reply.ok and _peer(reply) == seen[port][int(ka.local_port or 0)]
            kind = "SYN-proxy" if port == SYNPROXY_PORT else "plain"
            assert survived >= N_CONNS - 1, f"{kind} FULLNAT: {survived} of {N_CONNS} survived the failover"
        # ... through B: it forwarded their packets.
        assert b.ok("counters")["reasons"]["forwarded"] - before >= 2 * (N_CONNS - 1)
