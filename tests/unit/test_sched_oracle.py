"""Every scheduler in both engines against the kernel oracles of tests/oracles (Debian 6.1.192).

One property test per (engine, scheduler of the registry, twos excepted: its choices are random):
hypothesis writes a script of control operations (destinations added, edited, deleted,
re-added, with weights up to INT_MAX and upper/lower thresholds), connections (SYNs from
varied clients, then ACK, FIN, RST on them) and time passing; the script is played on the
engine (real packets through engine.process, a DR service) and on the oracle's Service in
lockstep. After every step:

- a new connection went to the destination the oracle's scheduler chose (or, both, nowhere:
  the engine answers ICMP port unreachable);
- every listed destination, in the kernel's list order, has the oracle's weight,
  ActiveConn, InActConn and OVERLOAD flag.

So this checks the schedulers and, under them, the shared control path: the connection
accounting (totalconns, the active TCP states), the OVERLOAD rules (set and cleared only where
__ip_vs_update_dest, ip_vs_bind_dest and ip_vs_unbind_dest evaluate it) and the trash.

The lockstep driver is tests/sched_lockstep.py (connection expiry from the kernel's TCP
timeouts, the oracle's jiffies clock advanced with the engine's milliseconds).
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import packet_table as table
from lb.consts import definitions
from sched_lockstep import FACTORIES, INT_MAX, POOL, SCHEDULERS, Lockstep


@st.composite
def thresholds(draw: st.DrawFn) -> tuple[int, int]:
    upper = draw(st.sampled_from([0, 0, 0, 1, 2, 3, 4, 5, 8]))
    lower = draw(st.integers(0, upper)) if upper and draw(st.booleans()) else 0
    return upper, lower


# (weight, (upper, lower)). Weights up to INT_MAX only without thresholds: the kernel's wrr (and
# the oracle's, which walks as it does) makes one pass per weight step while its heaviest
# destination is OVERLOADED, ~2^31 passes there; up to 4999 keeps the oracle quick.
dest_params = st.one_of(
    st.tuples(st.one_of(st.integers(0, 5), st.sampled_from([7, 4999])), thresholds()),
    st.tuples(st.sampled_from([65535, 65536, INT_MAX - 1, INT_MAX]), st.just((0, 0))),
)

operation = st.one_of(
    st.tuples(st.just("add"), st.integers(0, POOL - 1), dest_params),
    st.tuples(st.just("edit"), st.integers(0, POOL - 1), dest_params),
    st.tuples(st.just("del"), st.integers(0, POOL - 1)),
    st.tuples(st.just("syn"), st.integers(1, 254)),
    st.tuples(st.just("syn"), st.integers(1, 254)),
    st.tuples(st.just("syn"), st.integers(1, 254)),
    st.tuples(st.just("segment"), st.integers(0, 1000), st.sampled_from(["ack", "ack", "fin", "rst"])),
    st.tuples(st.just("advance"), st.sampled_from([4, 1_000, 10_000, 30_000, 60_000, 120_000, 900_000])),
)


def play(lock: Lockstep, ops: list[tuple]) -> None:
    for op in ops:
        kind = op[0]
        if kind == "add":
            lock.add(op[1], op[2][0], *op[2][1])
        elif kind == "edit":
            lock.edit(op[1], op[2][0], *op[2][1])
        elif kind == "del":
            lock.delete(op[1])
        elif kind == "syn":
            lock.syn(op[1])
        elif kind == "segment":
            lock.segment(op[1], op[2])
        else:
            lock.advance(op[1])
        lock.check()


@pytest.mark.parametrize("sched", SCHEDULERS)
@pytest.mark.parametrize("factory", FACTORIES)
@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(setup=st.lists(st.tuples(st.integers(0, POOL - 1), dest_params), min_size=1, max_size=POOL),
       ops=st.lists(operation, min_size=1, max_size=60))
def test_engine_follows_the_kernel_oracle(factory: table.EngineFactory, sched: str,
                                          setup: list[tuple[int, tuple[int, tuple[int, int]]]], ops: list[tuple]) -> None:
    lock = Lockstep(factory.make(0), sched)  # type: ignore[operator]
    for i, (weight, (upper, lower)) in setup:
        lock.add(i, weight, upper, lower)
    lock.check()
    play(lock, ops)


@pytest.mark.parametrize("factory", FACTORIES)
def test_overload_cycle_with_thresholds(factory: table.EngineFactory) -> None:
    """A hand-written cycle on wlc, -x 4 -y 2 on the only destination of weight > 0: it takes
    connections up to 4 (OVERLOAD set by the bind that reaches u), none while flagged (the
    engine answers), flagged still at 3 and 2 connections (between the thresholds), cleared by
    the unbind from 2 to 1 (l_threshold_val)."""
    lock = Lockstep(factory.make(0), "wlc")  # type: ignore[operator]
    lock.add(0, 0, 0, 0)
    lock.add(1, 5, 4, 2)
    for _ in range(4):
        lock.syn(10)
        lock.check()
    assert [d.overloaded for d in lock.svc.destinations] == [True, False]
    lock.syn(10)
    assert len(lock.flows) == 4  # nowhere to go
    for n in range(3):  # release 1's connections one by one: ACK, RST -> CLOSE (10 s), expiry
        lock.segment(0, "ack")  # the oldest live flow, always one of 1's
        lock.segment(0, "rst")  # (in SYN_RECV a RST changes nothing)
        assert lock.flows[0].conn.state == "CLOSE"
        lock.advance(10_000 + n)
        lock.check()
        assert lock.svc.destinations[0].overloaded == (n < 2)
    lock.syn(10)
    assert len(lock.flows) == 2 and lock.flows[-1].conn.dest is lock.svc.destinations[0]


@pytest.mark.parametrize("sched", ["lc", "wlc"])
@pytest.mark.parametrize("factory", FACTORIES)
def test_active_connection_weighs_257_inactive(factory: table.EngineFactory, sched: str) -> None:
    """Debian 6.1.192's overhead is (active << 8) + totalconns: A (list head) with 1 active
    connection weighs 257, B with 256 inactive ones 256, so B gets the next connection; with
    the older active*256 + inactive both weigh 256 and the head, A, would keep it."""
    if sched not in definitions().schedulers:
        pytest.skip(f"{sched} is not in native/include/lb_sched_list.h yet")
    lock = Lockstep(factory.make(0), sched)  # type: ignore[operator]
    lock.add(0, 1, 0, 0)  # B
    lock.add(1, 1, 0, 0)  # A: list A, B
    lock.edit(1, 0, 0, 0)
    for n in range(256):  # B: 256 connections, SYN then FIN (TIME_WAIT: inactive)
        lock.syn(10)
        lock.segment(n, "fin")
    lock.edit(1, 1, 0, 0)
    lock.edit(0, 0, 0, 0)
    lock.syn(11)  # A: one connection in SYN_RECV, active
    lock.edit(0, 1, 0, 0)
    lock.check()
    a, b = lock.svc.destinations
    assert (a.conn_overhead, b.conn_overhead) == (257, 256)
    lock.syn(12)
    lock.check()
    assert lock.flows[-1].conn.dest is b
