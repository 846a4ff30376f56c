"""Forwarding state costs what changed (issue 15, lb/fwdstate.py): one lookup per real-server address
however many destinations share it, large changes resolved in the background, unresolved addresses
retried with a backoff and a global rate, neighbour events that change nothing cost nothing, and
nothing scans every destination on a timer. A fake resolver counts lookups; a fake clock drives time."""

from __future__ import annotations

from typing import Any

import pytest

from lb.director import Director
from lb.engine import FwdState
from lb.fastpath import CEngine
from lb.fwdstate import REFRESH_EVERY_S, RETRY_MAX_PER_S, SYNC_RESOLVE_MAX, Resolution

MAC = b"\x02\x00\x00\x00\x00\x01"


class FakeNet:
    """Addresses in `up` resolve (next hop: the address itself, MAC `mac`); others have no neighbour."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.up: set[str] = set()
        self.mac = MAC
        self.now = 1000.0

    def resolve(self, addr: str) -> Resolution:
        self.calls.append(addr)
        if addr in self.up:
            fwd = FwdState(ifindex=2, dst_mac=self.mac, src_mac=b"\x02" * 6, saddr="10.0.0.2")
            return Resolution(fwd, "eth0", nexthop=addr)
        return Resolution(None, "eth0", reason=f"neighbour {addr} on eth0 FAILED", nexthop=addr)

    def clock(self) -> float:
        return self.now


def director(net: FakeNet) -> Director:
    d = Director(CEngine(conn_max=64), rules=None, resolver=net.resolve)
    d.fwd.clock = net.clock
    return d


def key(i: int) -> dict[str, Any]:
    return {"proto": "tcp", "addr": f"10.1.{i >> 8}.{i & 255}", "port": 80}


def batch(n: int, rip: Any) -> list[dict[str, Any]]:
    reqs: list[dict[str, Any]] = []
    for i in range(n):
        reqs.append({"op": "add_service", "args": {**key(i), "sched": "rr"}})
        reqs.append({"op": "add_dest", "args": {"service": key(i), "dest": {"addr": rip(i), "port": 80}}})
    return reqs


def l2_states(d: Director) -> list[str]:
    return [dest["l2"]["state"] for s in d.handle("list", {})["services"] for dest in s["dests"]]


def test_destinations_sharing_an_address_cost_one_lookup() -> None:
    net = FakeNet()
    net.up = {"172.16.0.1"}
    d = director(net)
    d.handle("batch", {"requests": batch(50, lambda i: "172.16.0.1")})
    assert net.calls == ["172.16.0.1"]  # one address: resolved at once, once
    assert l2_states(d) == ["resolved"] * 50
    d.handle("add_service", {**key(99), "sched": "rr"})
    d.handle("add_dest", {"service": key(99), "dest": {"addr": "172.16.0.1", "port": 80}})
    assert net.calls == ["172.16.0.1"] * 2


def test_a_large_change_is_resolved_in_the_background() -> None:
    net = FakeNet()
    n = SYNC_RESOLVE_MAX * 10
    net.up = {f"172.16.1.{i}" for i in range(n)}
    d = director(net)
    d.handle("batch", {"requests": batch(n, lambda i: f"172.16.1.{i}")})
    assert net.calls == []  # the change returned without a lookup
    assert set(l2_states(d)) == {"unresolved"} and len(d.fwd.pending) == n
    left = d.fwd.resolve_pending(budget_s=0.0)  # one lookup at least, then the budget is spent
    assert left == n - 1 and len(net.calls) == 1
    while d.fwd.resolve_pending(budget_s=1.0):
        pass
    assert sorted(net.calls) == sorted(net.up) and l2_states(d) == ["resolved"] * n
    # Re-adding known addresses installs what is known at once (no lookup needed for service).
    d.handle("clear", {})
    assert d.fwd.addresses() == 0 and not d.fwd.status


def test_unresolved_addresses_back_off_within_a_global_rate() -> None:
    net = FakeNet()
    n = 100
    d = director(net)
    d.handle("batch", {"requests": batch(n, lambda i: f"172.16.2.{i}")})
    while d.fwd.resolve_pending(budget_s=1.0):
        pass
    assert len(net.calls) == n and d.fwd.unresolved_addresses() == n
    net.calls.clear()
    retries_per_tick = []
    for _ in range(30):  # 30 s of ticks, once a second
        net.now += 1.0
        before = len(net.calls)
        d.fwd.tick()
        retries_per_tick.append(len(net.calls) - before)
    assert max(retries_per_tick) <= RETRY_MAX_PER_S + 1  # + the periodic re-check's slice
    assert sum(retries_per_tick) > n  # every address was retried, some more than once
    # One comes up: its neighbour event (a valid MAC) queues exactly it; the next slice resolves it.
    net.up.add("172.16.2.7")
    assert d.fwd.neighbour_changed("172.16.2.7", MAC) == 1
    assert list(d.fwd.pending) == ["172.16.2.7"]
    d.fwd.resolve_pending(budget_s=1.0)
    assert d.fwd.unresolved_addresses() == n - 1


def test_neighbour_events_that_change_nothing_cost_nothing() -> None:
    net = FakeNet()
    net.up = {"172.16.3.1", "172.16.3.2"}
    d = director(net)
    d.handle("batch", {"requests": batch(2, lambda i: f"172.16.3.{i + 1}")})
    net.calls.clear()
    assert d.fwd.neighbour_changed("172.16.3.1", MAC) == 0  # REACHABLE -> STALE, same MAC
    assert d.fwd.neighbour_changed("172.16.9.9", None) == 0  # a neighbour no destination uses
    assert not d.fwd.pending and net.calls == []
    net.mac = b"\x02\x00\x00\x00\x00\x02"  # the real server moved: a new MAC
    assert d.fwd.neighbour_changed("172.16.3.2", net.mac) == 1
    d.fwd.resolve_pending(budget_s=1.0)
    assert net.calls == ["172.16.3.2"]
    macs = {dest["addr"]: dest["l2"]["mac"] for s in d.handle("list", {})["services"] for dest in s["dests"]}
    assert macs == {"172.16.3.1": "02:00:00:00:00:01", "172.16.3.2": "02:00:00:00:00:02"}


def test_the_periodic_recheck_is_rate_limited_and_deleted_services_are_forgotten() -> None:
    net = FakeNet()
    n = 200
    net.up = {f"172.16.4.{i}" for i in range(n)}
    d = director(net)
    d.handle("batch", {"requests": batch(n, lambda i: f"172.16.4.{i}")})
    while d.fwd.resolve_pending(budget_s=1.0):
        pass
    net.calls.clear()
    for _ in range(10):
        net.now += 1.0
        d.fwd.tick()
    assert 5 <= len(net.calls) <= 11  # about REFRESH_MAX_PER_S a second, not 200 at once every round
    for i in range(n):
        d.handle("del_service", key(i))
    assert d.fwd.addresses() == 0 and not d.fwd.status and not d.estimator.keys()


def test_background_resolution_awaited_on_the_loop_serves_requests_between_lookups() -> None:
    """resolve_pending_async (lbd's loop): each lookup is awaited, a request served meanwhile
    (here: a service deleted while its address is being looked up) is seen, and what was deleted
    is not installed."""
    import asyncio

    net = FakeNet()
    n = SYNC_RESOLVE_MAX * 4
    net.up = {f"172.16.5.{i}" for i in range(n)}
    d = director(net)
    d.handle("batch", {"requests": batch(n, lambda i: f"172.16.5.{i}")})
    assert net.calls == []
    served: list[int] = []

    async def lookup(addr: str) -> Resolution:
        await asyncio.sleep(0)  # the worker thread's turn: the loop serves a request meanwhile
        if addr == "172.16.5.3":
            d.handle("del_service", key(3))
            served.append(3)
        return net.resolve(addr)

    async def main() -> int:
        left = await d.fwd.resolve_pending_async(lookup, 5)
        assert left == n - 5
        while left:
            left = await d.fwd.resolve_pending_async(lookup, 50)
        return left

    assert asyncio.run(main()) == 0
    assert served == [3] and len(net.calls) == n
    assert l2_states(d) == ["resolved"] * (n - 1) and d.fwd.addresses() == n - 1


def test_next_due_says_when_the_resolve_loop_must_tick_and_wake_says_when_work_appears() -> None:
    # Issue 19: lbd's resolve loop sleeps until fwd.next_due() instead of ticking every second.
    net = FakeNet()
    net.up = {"172.16.3.1"}
    d = director(net)
    wakes: list[int] = []
    d.fwd.wake = lambda: wakes.append(1)
    assert d.fwd.next_due() is None  # nothing configured: nothing ever due
    d.handle("add_service", {**key(1), "sched": "rr"})
    d.handle("add_dest", {"service": key(1), "dest": {"addr": "172.16.3.1", "port": 80}})
    assert wakes  # a new address: the periodic re-check's rate changed
    d.fwd.tick()  # the first tick: credit 1/15 of a lookup
    due = d.fwd.next_due()
    assert due is not None and due - net.now == pytest.approx(REFRESH_EVERY_S - 1.0)  # one address: every 30 s
    calls = len(net.calls)
    net.now += REFRESH_EVERY_S - 1.0
    d.fwd.tick()  # one tick (not 29) later: the re-check is done
    assert len(net.calls) == calls + 1
    wakes.clear()
    net.up.clear()  # the next lookup fails: a retry is scheduled 1 s on, and the loop is woken for it
    d.fwd.invalidate()
    assert wakes and d.fwd.pending
    d.fwd.resolve_pending(budget_s=1.0)
    due = d.fwd.next_due()
    assert due is not None and due - net.now == pytest.approx(1.0)
