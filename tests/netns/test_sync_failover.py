"""Failover and the way back, DR and IPIP (issue 18 items 4 and 5): two lbd directors, 20
established connections each for a DR and an IPIP service through director A (sync master, B
backup). A is killed by PID and the VIP moved to B by hand: at least 19 of 20 connections of each
method keep exchanging data with their original real servers, through B. Then A comes back with
no state of its own (its state file removed: what it learns can only come from the sync), runs a
backup and takes B's whole table from B's bulk pass, the VIP moves back to A, A becomes master
again, and the connections go on through A.

With LB_SYNC_FIGURES=PATH the test writes what it measured (connections surviving per method and
direction, time from the VIP move to the first reply) to PATH as JSON: bench/failover.py runs it so
and puts the figures into the bench report. The test asserts no times.

Own topology, as tests/netns/test_sync.py (sync_pair.pair_spec): client .50, da .2 (holds the VIP first), db .3, real
servers .11/.12 running the test httpd on ports 80 (DR) and 8080 (IPIP, with lb.testbed.ipip_decap
standing in for the kernel's ipip module).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sync_pair import N_CONNS, LbdOn, director_pair, pair_spec, serve_http, wait_until

from lb.testbed import client
from lb.testbed.ipip_decap import start_in as start_ipip_decap
from lb.testbed.topology import Topology

pytestmark = pytest.mark.netns

DR_PORT, IPIP_PORT = 80, 8080
METHODS = {"DR": (DR_PORT, "-g"), "IPIP": (IPIP_PORT, "-i")}
SYNC_WAIT_S = 30.0   # a bound for the sync to carry 40 entries on a loaded machine, not a threshold
BULK_PERIOD_S = 3    # B's master: the test's bulk period (default 30 s), so A's backup learns soon
SYNCID = 19
DECAP_SECONDS = 900.0


def _configure(d: LbdOn, topo: Topology) -> None:
    for port, flag in METHODS.values():
        d.lbadm("-A", "-t", f"{topo.vip}:{port}", "-s", "rr")
        for rs in topo.reals:
            d.lbadm("-a", "-t", f"{topo.vip}:{port}", "-r", f"{rs.addr}:{port}", flag)
    d.wait_resolved()


@pytest.fixture(scope="module")
def pair() -> Iterator[tuple[Topology, LbdOn, LbdOn]]:
    with Topology(pair_spec()) as topo:
        for rs in topo.reals:
            start_ipip_decap(rs, f"{topo.prefix}ipip", seconds=DECAP_SECONDS)
        serve_http(topo, "lbB-syncfo-", (DR_PORT, IPIP_PORT), topo.client)
        with director_pair(topo, lambda d: _configure(d, topo)) as (a, b):
            yield topo, a, b


def _tcp_entries(d: LbdOn) -> dict[tuple[str, int, int], str]:
    """(client, client port, virtual port) -> real server address of d's TCP entries (`lbadm -Lnc`)."""
    out = {}
    for line in d.lbadm("-Lnc").stdout.splitlines()[2:]:
        proto, _expire, _state, source, virtual, dest = line.split()
        if proto == "TCP":
            caddr, cport = source.rsplit(":", 1)
            out[(caddr, int(cport), int(virtual.rsplit(":", 1)[1]))] = dest.rsplit(":", 1)[0]
    return out


def _move_vip(topo: Topology, old: LbdOn, new: LbdOn) -> None:
    vip_cidr = f"{topo.vip}/32"
    old.director.ip("addr", "del", vip_cidr, "dev", old.director.ifname, check=False)
    new.director.ip("addr", "add", vip_cidr, "dev", new.director.ifname)
    topo.client.ip("neigh", "flush", "to", topo.vip)


def _same_server(_method: str, ka: client.KeepAlive, reply: client.Reply) -> bool:
    return reply.server == ka.server


def _exchange(conns: dict[str, list[client.KeepAlive]], moved_at: float, path: str = "/",
              same: Callable[[str, client.KeepAlive, client.Reply], bool] = _same_server,
              ) -> tuple[dict[str, int], dict[str, float | None]]:
    """One request for `path` on every connection: per method how many were answered by the same
    connection as before (`same`: by default their original real server), and per method the
    seconds from `moved_at` to its first such answer (the requests go round robin over the methods)."""
    survived = dict.fromkeys(conns, 0)
    first: dict[str, float | None] = dict.fromkeys(conns)
    # Round robin over the methods: each method's first request goes out right after the move.
    for i in range(max(len(kas) for kas in conns.values())):
        for method, kas in conns.items():
            if i >= len(kas):
                continue
            ka = kas[i]
            reply = ka.get(path, timeout=5.0)
            if reply.ok and same(method, ka, reply):
                survived[method] += 1
                if first[method] is None:
                    first[method] = time.monotonic() - moved_at
    return survived, first


def _move_and_exchange(conns: dict[str, list[client.KeepAlive]], figures: dict[str, object], step: str,
                       move: Callable[[], None], through: LbdOn, path: str = "/",
                       same: Callable[[str, client.KeepAlive, client.Reply], bool] = _same_server) -> None:
    """Move the addresses (`move`), then one request on every connection: at most one connection of
    each method may be lost, and `through` forwarded the others. Records the figures under `step`."""
    before = through.ok("counters")["reasons"]["forwarded"]
    moved = time.monotonic()
    move()
    survived, first = _exchange(conns, moved, path, same)
    figures[step] = {"survived": survived, "first_reply_s": first}
    for method, n in survived.items():
        total = len(conns[method])
        assert n >= total - 1, f"{method}: {n} of {total} connections survived ({step})"
    assert through.ok("counters")["reasons"]["forwarded"] - before >= sum(survived.values())


def _write_figures(figures: dict[str, object]) -> None:
    out = os.environ.get("LB_SYNC_FIGURES")
    if out:
        Path(out).write_text(json.dumps(figures, indent=1) + "\n")


def _wait_listed(d: LbdOn, keys: set[tuple[str, int, int]], what: str) -> dict[tuple[str, int, int], str]:
    def listed() -> dict[tuple[str, int, int], str] | None:
        entries = _tcp_entries(d)
        return entries if keys <= entries.keys() else None

    return wait_until(listed, SYNC_WAIT_S, what)


def test_failover_to_the_backup_and_back_dr_and_ipip(pair: tuple[Topology, LbdOn, LbdOn]) -> None:
    topo, a, b = pair
    b.start_sync_daemon("backup", SYNCID)
    a.start_sync_daemon("master", SYNCID)
    figures: dict[str, object] = {"connections_per_method": N_CONNS}
    with contextlib.ExitStack() as stack:
        conns = {m: [stack.enter_context(client.KeepAlive(topo.client.netns, topo.vip, port)) for _ in range(N_CONNS)]
                 for m, (port, _flag) in METHODS.items()}
        for kas in conns.values():
            for ka in kas:
                assert ka.get().ok
        addr_of = {rs.name: rs.addr for rs in topo.reals}
        served = {(topo.client.addr, int(ka.local_port or 0), METHODS[m][0]): addr_of[str(ka.server)]
                  for m, kas in conns.items() for ka in kas}
        assert {k: v for k, v in _tcp_entries(a).items() if k in served} == served

        # B learns every connection, with the same real servers.
        on_b = _wait_listed(b, set(served), "every connection on the backup B")
        assert {k: on_b[k] for k in served} == served

        # A dies (by PID), the VIP moves to B by hand.
        a.stop(signal.SIGKILL)
        _move_and_exchange(conns, figures, "to_b", lambda: _move_vip(topo, a, b), through=b)

        # B becomes master as well (it keeps its backup); A comes back without its own state and
        # runs a backup first: B's bulk pass gives it the whole table.
        b.ok("start_daemon", {"state": "master", "mcast_ifn": b.director.ifname, "syncid": SYNCID,
                              "bulk_period": BULK_PERIOD_S})
        for stale in a.dir.glob("*.state*"):
            stale.unlink()
        a.start()
        _configure(a, topo)
        a.start_sync_daemon("backup", SYNCID)
        back = time.monotonic()
        on_a = _wait_listed(a, set(served), "every connection on the restarted A")
        figures["a_table_back_s"] = time.monotonic() - back
        assert {k: on_a[k] for k in served} == served
        (a_backup,) = a.ok("get_daemon")["daemons"]
        assert a_backup["counters"]["conns_installed"] >= len(served)

        # The way back: A masters again, the VIP returns to A, B is a backup only.
        a.start_sync_daemon("master", SYNCID)
        b.lbadm("--stop-daemon", "master")
        _move_and_exchange(conns, figures, "back_to_a", lambda: _move_vip(topo, b, a), through=a)
    _write_figures(figures)
