"""The list-scanning schedulers wrr, lc, sed, nq, fo, ovf: the cases their kernel sources make
special, played in both engines in lockstep with the kernel oracles (tests/sched_lockstep.py:
every choice and every listing compared with tests/oracles), plus the headline sequences stated
here by hand from the kernel source. The random scripts of test_sched_oracle.py cover the rest.
"""

from __future__ import annotations

import pytest

import packet_table as table
from lb.consts import definitions
from lb.engine import FwdState
from lb.model import DestSpec
from sched_lockstep import FACTORIES, INT_MAX, KEY, Lockstep, dest_addr, dest_mac

A, B, C, D = 0, 1, 2, 3


def lockstep(factory: table.EngineFactory, sched: str, *dests: tuple[int, int]) -> Lockstep:
    """A service of `sched` with destinations (i, weight) added in this order (the kernel's list
    is then the reverse: the last added first)."""
    if sched not in definitions().schedulers:
        pytest.skip(f"{sched} is not in native/include/lb_sched_list.h")
    lock = Lockstep(factory.make(0), sched)  # type: ignore[operator]
    for i, weight in dests:
        lock.add(i, weight, 0, 0)
    lock.check()
    return lock


# ---- wrr -------------------------------------------------------------------------------------


@pytest.mark.parametrize("factory", FACTORIES)
def test_wrr_432_after_adding_one_by_one(factory: table.EngineFactory) -> None:
    """Added C(2), B(3), A(4): each add runs ip_vs_wrr_dest_changed, which leaves cw at 1 (the
    first add sets it to mw = 1; later ones keep it, di being 1), so the first round accepts
    every weight: A B C; then cw restarts at 4 and the rounds go 4, 3, 2, 1: A, A B, A B C, A B C."""
    lock = lockstep(factory, "wrr", (C, 2), (B, 3), (A, 4))
    assert lock.syns(3 + 9 + 9) == [A, B, C] + [A, A, B, A, B, C, A, B, C] * 2


@pytest.mark.parametrize("factory", FACTORIES)
def test_wrr_any_edit_sends_the_cursor_to_the_head(factory: table.EngineFactory) -> None:
    """A no-op edit (same weight), a weight edit and a deletion each put the cursor back on the
    list head with cw kept (di 1): the round goes on from the head at the same weight."""
    lock = lockstep(factory, "wrr", (C, 2), (B, 3), (A, 4))
    assert lock.syns(3 + 4) == [A, B, C, A, A, B, A]  # cw 2 now, cursor on A
    lock.edit(C, 2, 0, 0)  # changes nothing but the cursor
    assert lock.syns(2) == [A, B]
    lock.edit(B, 1, 0, 0)  # weights 4/1/2: cw 2 kept
    assert lock.syns(4) == [A, C, A, B]
    lock.delete(A)  # list B(1), C(2), mw 2: cw (1 now, cursor on B) kept, the round from the head
    assert lock.syns(4) == [B, C, C, B]
    lock.add(A, 4, 0, 0)
    lock.syns(10)


@pytest.mark.parametrize("factory", FACTORIES)
def test_wrr_edit_rounds_cw_to_the_new_gcd(factory: table.EngineFactory) -> None:
    """A(4), C(1): A C A, cw 4. C edited to 8: di 4, mw 5, and cw (4, not above mw) becomes
    (4 / 4) * 4 + 1 = 5, so the pass from the head skips A(4) and takes C(8); unrounded, cw 4
    would take A."""
    lock = lockstep(factory, "wrr", (C, 1), (A, 4))
    assert lock.syns(3) == [A, C, A]
    lock.edit(C, 8, 0, 0)
    assert lock.syns(4) == [C, A, C, C]


@pytest.mark.parametrize("factory", FACTORIES)
def test_wrr_all_overloaded_leaves_the_cursor_on_the_last_chosen(factory: table.EngineFactory) -> None:
    """When every destination is OVERLOADED the walk stops at the one it started after (the
    kernel's `stop`) and the cursor stays there, so once others recover the round goes on after
    it: here from B, whose successor A comes before C at the head."""
    lock = lockstep(factory, "wrr")
    for i in (A, B, C):
        lock.add(i, 1, 1, 0)  # -x 1: flagged by its first connection; list C, B, A
    assert lock.syns(3) == [C, B, A]
    lock.release(B)
    assert lock.syns(1) == [B]  # the cursor on B now, all flagged again
    assert lock.syns(2) == [None, None]
    lock.release(A)
    lock.release(C)
    assert lock.syns(1) == [A]


@pytest.mark.parametrize("factory", FACTORIES)
def test_wrr_heavy_overloaded_destination(factory: table.EngineFactory) -> None:
    """An OVERLOADED destination of weight 2^31 - 1 makes the kernel walk ~2^31 empty passes
    per connection; the engines take them at once and choose as the kernel would. The oracle
    (which walks pass by pass) has weight 4999 there instead: above every eligible weight too,
    so the kernel's choices are the same (listings not compared: the weights differ)."""
    lock = lockstep(factory, "wrr", (C, 3), (B, 1))
    lock.svc.add_dest(dest_addr(A), 80, 4999, 1, 0)
    lock.engine.add_dest(KEY, DestSpec(dest_addr(A), 80, "route", INT_MAX, 1, 0))  # type: ignore[attr-defined]
    lock.engine.set_fwd(KEY, dest_addr(A), 80, FwdState(ifindex=3, dst_mac=dest_mac(A),  # type: ignore[attr-defined]
                                                         src_mac=table.DIRECTOR_MAC))
    chosen = [lock.syn() for _ in range(13)]
    assert chosen[0] == A and A not in chosen[1:] and chosen.count(C) == 9


# ---- lc --------------------------------------------------------------------------------------


@pytest.mark.parametrize("factory", FACTORIES)
def test_lc_weights_only_quiesce(factory: table.EngineFactory) -> None:
    """lc compares overheads alone: A(100) and B(1) take turns (the list head first on a tie);
    weight 0 takes nothing."""
    lock = lockstep(factory, "lc", (B, 1), (A, 100), (C, 0))
    assert lock.syns(6) == [A, B, A, B, A, B]


@pytest.mark.parametrize("factory", FACTORIES)
def test_lc_held_connections_weigh_257_times_released_ones(factory: table.EngineFactory) -> None:
    """A holds 1 connection (active: 257), B two closed ones (TIME_WAIT, inactive: 2): B is the
    lighter, and takes the next one (2 + 257 = 259), then A (257) is the lighter again."""
    lock = lockstep(factory, "lc", (B, 1), (A, 1))
    assert lock.syns(2) == [A, B]
    lock._send(lock.flows[1], "fin")  # SYN_RECV -> TIME_WAIT: inactive
    assert lock.syns(1) == [B]
    lock._send(lock.flows[2], "fin")
    lock.check()
    assert [d.conn_overhead for d in lock.svc.destinations] == [257, 2]
    assert lock.syns(2) == [B, A]


# ---- sed -------------------------------------------------------------------------------------


@pytest.mark.parametrize("factory", FACTORIES)
def test_sed_active_plus_one_over_weight(factory: table.EngineFactory) -> None:
    """A(1), B(3), list B, A, every connection held (active): (active + 1) / weight gives B, B,
    B (tie 3/3 vs 1/1: the earlier stays), A, then the same again: 3 to 1."""
    lock = lockstep(factory, "sed", (A, 1), (B, 3))
    assert lock.syns(8) == [B, B, B, A, B, B, B, A]


@pytest.mark.parametrize("factory", FACTORIES)
def test_sed_inactive_connections_do_not_count(factory: table.EngineFactory) -> None:
    """Closed connections (TIME_WAIT: inactive) weigh nothing for sed: after B's three are closed
    the round starts as on an empty service."""
    lock = lockstep(factory, "sed", (A, 1), (B, 3))
    assert lock.syns(3) == [B, B, B]
    for flow in list(lock.flows):
        lock._send(flow, "fin")
    lock.check()
    assert lock.syns(4) == [B, B, B, A]


# ---- nq --------------------------------------------------------------------------------------


@pytest.mark.parametrize("factory", FACTORIES)
def test_nq_idle_server_first(factory: table.EngineFactory) -> None:
    """A(1), B(3), list B, A, connections held: B (idle), then A (idle, whatever its weight), then
    as sed: B until (active + 1) / weight passes A's 2/1."""
    lock = lockstep(factory, "nq", (A, 1), (B, 3))
    assert lock.syns(8) == [B, A, B, B, B, B, B, A]


@pytest.mark.parametrize("factory", FACTORIES)
def test_nq_a_server_going_idle_is_chosen_at_once(factory: table.EngineFactory) -> None:
    """A server whose held connections are all closed (inactive) is idle again: the next
    connection goes to it even against a far heavier server with room."""
    lock = lockstep(factory, "nq", (A, 1), (B, 100))
    assert lock.syns(3) == [B, A, B]
    a_flow = next(f for f in lock.flows if str(f.conn.dest.addr) == dest_addr(A))
    lock._send(a_flow, "fin")
    lock.check()
    assert lock.syns(2) == [A, B]


# ---- fo --------------------------------------------------------------------------------------


@pytest.mark.parametrize("factory", FACTORIES)
def test_fo_all_to_the_heaviest_then_weight_edits(factory: table.EngineFactory) -> None:
    """Everything to the heaviest (connection counts play no part); a weight edit moves the
    traffic at once; on a tie the list head (the later added) wins; weight 0 everywhere: none."""
    lock = lockstep(factory, "fo", (A, 2), (B, 5), (C, 3))
    assert lock.syns(4) == [B] * 4
    lock.edit(C, 9, 0, 0)
    assert lock.syns(3) == [C] * 3
    lock.edit(A, 9, 0, 0)  # list C, B, A: C first among the 9s
    assert lock.syns(2) == [C, C]
    lock.edit(C, 0, 0, 0)
    assert lock.syns(2) == [A, A]
    for i in (A, B):
        lock.edit(i, 0, 0, 0)
    assert lock.syns(1) == [None]


@pytest.mark.parametrize("factory", FACTORIES)
def test_fo_fails_over_when_the_heaviest_is_overloaded(factory: table.EngineFactory) -> None:
    """B (weight 5, -x 2) takes two connections, is flagged, and the next heaviest, C, takes
    over; released below its lower threshold, B takes everything again."""
    lock = lockstep(factory, "fo", (A, 2), (C, 3))
    lock.add(B, 5, 2, 0)
    assert lock.syns(4) == [B, B, C, C]
    lock.release(B)
    lock.check()
    assert lock.syns(2) == [B, B]


# ---- ovf -------------------------------------------------------------------------------------


@pytest.mark.parametrize("factory", FACTORIES)
def test_ovf_fills_the_heaviest_beyond_its_weight_then_the_next(factory: table.EngineFactory) -> None:
    """Held connections: B (3) takes 4 (eligible while active <= weight, so one more than its
    weight), then A (2) takes 3, then C (1) 2, then nothing is left."""
    lock = lockstep(factory, "ovf", (A, 2), (B, 3), (C, 1))
    assert lock.syns(10) == [B] * 4 + [A] * 3 + [C] * 2 + [None]


@pytest.mark.parametrize("factory", FACTORIES)
def test_ovf_counts_only_active_connections(factory: table.EngineFactory) -> None:
    """Closed connections (inactive) free the heaviest again; a weight edit changes who is full."""
    lock = lockstep(factory, "ovf", (A, 2), (B, 3))
    assert lock.syns(5) == [B, B, B, B, A]
    for flow in lock.flows[:2]:
        lock._send(flow, "fin")  # two of B's: TIME_WAIT, inactive
    lock.check()
    assert lock.syns(3) == [B, B, A]
    lock.edit(B, 6, 0, 0)
    assert lock.syns(3) == [B, B, B]
