"""FULLNAT failover and the way back through the sync extension (issue 18 items 3 and 5, FULLNAT
with and without SYN-proxy): director A runs a sync master, director B a backup; 20 established
FULLNAT connections per service through A, one service plain, one with SYN-proxy. A is killed (by
PID), the VIP and the local address moved to B by hand, and at least 19 of 20 connections of each
kind keep exchanging data through B with the same real server, seen by the real server from the
same local address and port (its /peer answer). Then A comes back with no state of its own, runs
a backup and takes B's table (the extension's entries included) from B's bulk pass, masters
again, the VIP and the local address move back, and the connections go on through A, still with
the same real server, local address and port.

With LB_SYNC_FIGURES=PATH the test writes what it measured to PATH as JSON, as
tests/netns/test_sync_failover.py does (bench/failover.py runs both). The test asserts no times.

Own topology: client .50, da .2 (the VIP first) and db .3 on "lan"; da .1 and db .2 on "back"
with the real servers f1/f2 (.11/.12), whose default route is the floating local address .5
(held by da first, then db). Both directors carry the same configuration, as kernel IPVS sync
requires.
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Iterator

import pytest
from conftest import HTTP_PORT, Lbd
from sync_pair import LIP_INDEX, N_CONNS, LbdOn, director_pair, pair_spec, serve_http, wait_until
from test_sync_failover import _move_and_exchange, _write_figures  # type: ignore[import-not-found]

from lb.testbed import client
from lb.testbed.topology import Topology

pytestmark = pytest.mark.netns

SYNC_WAIT_S = 20.0  # master tick 1 s; generous for a loaded machine (a bound, not a threshold)
SYNCID = 33
PLAIN_PORT, SYNPROXY_PORT = 80, 81  # VIP ports; the real servers listen on HTTP_PORT
KINDS = {"FULLNAT": PLAIN_PORT, "FULLNAT+SYN-proxy": SYNPROXY_PORT}
BULK_PERIOD_S = 3  # B's master: the test's bulk period (default 30 s), so the restarted A learns soon


def _configure(d: LbdOn, topo: Topology, lip: str) -> None:
    for port, synproxy in ((PLAIN_PORT, "disable"), (SYNPROXY_PORT, "enable")):
        svc = f"{topo.vip}:{port}"
        d.lbadm("-A", "-t", svc, "-s", "rr", "-j", synproxy)
        d.lbadm("-P", "-t", svc, "-z", lip)
        for rs in topo.reals:
            d.lbadm("-a", "-t", svc, "-r", f"{rs.addr}:{HTTP_PORT}", "-b")
    d.wait_resolved()


@contextlib.contextmanager
def fullnat_pair(prefix: str) -> Iterator[tuple[Topology, LbdOn, LbdOn, str]]:
    """The topology, its real servers serving, an lbd on each director with the same FULLNAT
    services; the VIP on da as the spec places it, the local address (the last item) on neither."""
    with Topology(pair_spec(fullnat=True)) as topo:
        lip = topo.addr("back", LIP_INDEX)
        serve_http(topo, prefix, (HTTP_PORT,), topo.host("da"))
        with director_pair(topo, lambda d: _configure(d, topo, lip)) as (a, b):
            yield topo, a, b, lip


@pytest.fixture(scope="module")
def pair() -> Iterator[tuple[Topology, LbdOn, LbdOn, str]]:
    with fullnat_pair("lbB-syncfnat-") as (topo, a, b, lip):
        a.director.ip("addr", "add", f"{lip}/24", "dev", a.director.iface("back").ifname)
        yield topo, a, b, lip


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


class Peers:
    """N_CONNS keep-alive connections of each kind (KINDS) through the VIP, and how each real server
    saw its connection first: (server, local address, local port) by the client's port."""

    def __init__(self, stack: contextlib.ExitStack, topo: Topology, lip: str) -> None:
        self.topo = topo
        self.conns = {kind: [stack.enter_context(client.KeepAlive(topo.client.netns, topo.vip, port))
                             for _ in range(N_CONNS)] for kind, port in KINDS.items()}
        self.seen: dict[str, dict[int, tuple[str, str, int]]] = {}
        for kind, kas in self.conns.items():
            self.seen[kind] = {}
            for ka in kas:
                reply = ka.get("/peer")
                assert reply.ok, reply.error
                self.seen[kind][int(ka.local_port or 0)] = _peer(reply)
            # Each connection: a real server, our local address, a port of its own.
            assert {p[1] for p in self.seen[kind].values()} == {lip}, self.seen[kind]
            assert len({p[2] for p in self.seen[kind].values()}) == N_CONNS, self.seen[kind]

    def same(self, kind: str, ka: client.KeepAlive, reply: client.Reply) -> bool:
        """Whether `reply` came from the same real server seeing the same local address and port."""
        return _peer(reply) == self.seen[kind][int(ka.local_port or 0)]

    def as_listed_by(self, d: LbdOn) -> dict[tuple[str, int], tuple[str, str, int]]:
        """Our connections as d's table lists them (see _fullnat_conns)."""
        listed = _fullnat_conns(d)
        caddr = self.topo.client.addr
        return {(caddr, cport): listed[(caddr, cport)] for seen in self.seen.values() for cport in seen}


def _move_addresses(topo: Topology, old: LbdOn, new: LbdOn, lip: str) -> None:
    """The VIP (front) and the local address (back) from `old` to `new`, the neighbours told."""
    for cidr, side in ((f"{topo.vip}/32", "lan"), (f"{lip}/24", "back")):
        old.director.ip("addr", "del", cidr, "dev", old.director.iface(side).ifname, check=False)
        new.director.ip("addr", "add", cidr, "dev", new.director.iface(side).ifname)
    topo.client.ip("neigh", "flush", "to", topo.vip)
    for rs in topo.reals:
        rs.ip("neigh", "flush", "to", lip)


def _wait_fullnat(d: LbdOn, expected: dict[tuple[str, int], tuple[str, str, int]], what: str) -> None:
    """Wait until d lists every expected FULLNAT connection, then check it has the same real
    server, local address and local port for each."""
    def synced() -> dict[tuple[str, int], tuple[str, str, int]] | None:
        listed = _fullnat_conns(d)
        return listed if all(k in listed for k in expected) else None

    listed = wait_until(synced, SYNC_WAIT_S, what)
    assert {k: listed[k] for k in expected} == expected


def test_fullnat_and_synproxy_connections_survive_failover_and_back(pair: tuple[Topology, LbdOn, LbdOn, str]) -> None:
    topo, a, b, lip = pair
    b.start_sync_daemon("backup", SYNCID)
    a.start_sync_daemon("master", SYNCID)
    listed = a.lbadm("-L", "--daemon").stdout
    assert "ext-port=8849)" in listed, listed
    figures: dict[str, object] = {"connections_per_method": N_CONNS}
    with contextlib.ExitStack() as stack:
        peers = Peers(stack, topo, lip)
        conns = peers.conns

        # The backup lists every connection with the master's real server, local address and port.
        expected = peers.as_listed_by(a)
        _wait_fullnat(b, expected, "every FULLNAT connection on the backup B")
        counters = b.ok("get_daemon")["daemons"][0]["counters"]
        assert counters.get("ext_conns_installed", 0) >= 2 * N_CONNS, counters
        sent = a.ok("get_daemon")["daemons"][0]["counters"]
        assert not any(k.startswith("not_sent_") for k in sent), sent  # nothing left behind
        assert sent.get("ext_conns_sent", 0) >= 2 * N_CONNS, sent

        # Failover by hand: A dies (by PID), the VIP and the local address move to B.
        a.stop(signal.SIGKILL)
        _move_and_exchange(conns, figures, "to_b", lambda: _move_addresses(topo, a, b, lip), through=b,
                           path="/peer", same=peers.same)

        # B masters as well (keeping its backup); A comes back without its own state, runs a backup
        # first and takes B's table from B's bulk pass: the extension's entries are in it.
        b.ok("start_daemon", {"state": "master", "mcast_ifn": b.director.iface("lan").ifname, "syncid": SYNCID,
                              "bulk_period": BULK_PERIOD_S})
        for stale in a.dir.glob("*.state*"):
            stale.unlink()
        a.start()
        _configure(a, topo, lip)
        a.start_sync_daemon("backup", SYNCID)
        back = time.monotonic()
        _wait_fullnat(a, expected, "every FULLNAT connection on the restarted A")
        figures["a_table_back_s"] = time.monotonic() - back
        (a_backup,) = a.ok("get_daemon")["daemons"]
        assert a_backup["counters"].get("ext_conns_installed", 0) >= 2 * N_CONNS, a_backup["counters"]
        b_master = next(d for d in b.ok("get_daemon")["daemons"] if d["state"] == "master")
        # B's table holds only these 2 * N_CONNS FULLNAT entries: its bulk passes carried them.
        assert b_master["counters"].get("bulk_conns_sent", 0) >= 2 * N_CONNS, b_master["counters"]
        assert b_master["counters"].get("ext_conns_sent", 0) >= 2 * N_CONNS, b_master["counters"]

        # The way back: A masters again, the VIP and the local address return to A.
        a.start_sync_daemon("master", SYNCID)
        b.lbadm("--stop-daemon", "master")
        _move_and_exchange(conns, figures, "back_to_a", lambda: _move_addresses(topo, b, a, lip), through=a,
                           path="/peer", same=peers.same)
    _write_figures(figures)
