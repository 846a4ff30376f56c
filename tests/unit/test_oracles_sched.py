"""The list-walking oracles (rr, wrr, lc, wlc, sed, nq, fo, ovf, twos) on examples derived by
hand from the Linux 6.1.192 sources (net/netfilter/ipvs/ip_vs_<name>.c).

Destinations are named by their place in the kernel's list (head first): build_service()
adds them last-to-first so that the list reads A, B, C, ...
"""

from __future__ import annotations

import math
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from oracles import Dest, PacketInfo, Service, build_service  # noqa: E402
from oracles.sched_twos import TwosScheduler  # noqa: E402

PKT = PacketInfo.of("192.0.2.1", "198.51.100.1", 40000, 80)


def picks(svc: Service, dests: list[Dest], count: int) -> str:
    """`count` schedule() calls, as letters by list position ('-' for no destination)."""
    out = []
    for _ in range(count):
        dest = svc.schedule(PKT)
        out.append("-" if dest is None else "ABCDEFGH"[dests.index(dest)])
    return "".join(out)


def overload(dest: Dest) -> None:
    dest.flags |= 0x0002  # IP_VS_DEST_F_OVERLOAD, as if its upper threshold had been reached


# -- rr ------------------------------------------------------------------------------------------

def test_rr_walks_the_list_from_its_head_and_skips_quiesced_or_overloaded() -> None:
    svc, dests = build_service("rr", [1, 0, 1, 1])
    overload(dests[3])
    assert picks(svc, dests, 5) == "ACACA"
    for dest in dests:
        dest.weight = 0
    assert picks(svc, dests, 1) == "-"


def test_rr_deleting_the_last_chosen_steps_the_cursor_back() -> None:
    svc, dests = build_service("rr", [1, 1, 1])
    assert picks(svc, dests, 2) == "AB"
    svc.del_dest("10.0.0.2", 80)  # B was the cursor: it becomes A (C's previous entry now)
    assert picks(svc, dests, 3) == "CAC"
    svc.del_dest("10.0.0.3", 80)  # C was the cursor and the tail: back to A
    assert picks(svc, dests, 2) == "AA"


def test_rr_a_new_destination_is_reached_when_the_walk_wraps() -> None:
    svc, (a, b) = build_service("rr", [1, 1])
    assert svc.schedule(PKT) is a
    c = svc.add_dest("10.0.0.9", 80, 1)  # at the list head: [C, A, B]
    assert [svc.schedule(PKT) for _ in range(4)] == [b, c, a, b]


# -- wrr -----------------------------------------------------------------------------------------

def test_wrr_432_sequence_after_adding_one_by_one() -> None:
    # Adding C(2), B(3), A(4) in turn leaves cw at 1 (ip_vs_wrr_dest_changed keeps a non-zero
    # cw <= mw), so the first round accepts every weight >= 1; then cw restarts at mw = 4 and
    # the usual 9-long cycle follows: cw=4: A; cw=3: A B; cw=2: A B C; cw=1: A B C.
    svc, dests = build_service("wrr", [4, 3, 2])
    assert picks(svc, dests, 21) == "ABC" + "AABABCABC" * 2


def test_wrr_bound_to_a_populated_service_starts_at_the_top_weight() -> None:
    svc, dests = build_service("rr", [4, 3, 2])
    svc.edit_service(scheduler="wrr")  # init_service: cw = mw = 4
    assert picks(svc, dests, 18) == "AABABCABC" * 2


def test_wrr_any_edit_sends_the_cursor_back_to_the_head() -> None:
    svc, dests = build_service("wrr", [4, 3, 2])
    assert picks(svc, dests, 5) == "ABCAA"  # now cursor A, cw 3; B would be next
    svc.edit_dest("10.0.0.3", 80, 2)  # C, unchanged: still ip_vs_wrr_dest_changed()
    # The cw=3 pass restarts from the head: A, B, then cw=2 from the head: A. Without the
    # edit the walk would have gone on after A: B, then cw=2: A, B ("BAB").
    assert picks(svc, dests, 3) == "ABA"


def test_wrr_steps_by_the_gcd() -> None:
    svc, dests = build_service("rr", [4, 2])
    svc.edit_service(scheduler="wrr")  # di = 2, mw = 4 - 1 = 3; passes at cw 3 and 1
    assert picks(svc, dests, 6) == "AABAAB"


def test_wrr_after_giving_up_resumes_after_the_last_chosen() -> None:
    # All overloaded: the last pass stops at the cursor's own destination (`stop = last`) and
    # err_over leaves the cursor there, so the walk resumes after it, not from the head.
    svc, dests = build_service("rr", [1, 1, 1])
    svc.edit_service(scheduler="wrr")
    assert picks(svc, dests, 2) == "AB"
    for dest in dests:
        overload(dest)
    assert picks(svc, dests, 1) == "-"
    for dest in dests:
        dest.flags = 0
    assert picks(svc, dests, 2) == "CA"


def test_wrr_gives_up_when_every_destination_is_overloaded() -> None:
    svc, dests = build_service("wrr", [2, 1])
    for dest in dests:
        overload(dest)
    assert picks(svc, dests, 2) == "--"
    empty = Service("wrr")
    assert empty.schedule(PKT) is None


# -- lc, wlc, sed, nq ----------------------------------------------------------------------------------

def test_wlc_counts_an_active_connection_as_257_inactive_ones() -> None:
    # 6.1.192's overhead is (active << 8) + totalconns: A = 256 + 1, B = 256. Before Debian's
    # 6.1.187 it was (active << 8) + inactconns: 256 both, and A (first) would win the tie.
    svc, (a, b) = build_service("wlc", [1, 1])
    svc.open_connections(a, active=1)
    svc.open_connections(b, inactive=256)
    assert svc.schedule(PKT) is b


def test_wlc_weighs_overheads_and_keeps_the_first_on_ties() -> None:
    svc, (a, b, c) = build_service("wlc", [1, 3, 2])
    svc.open_connections(a, inactive=1)  # 1/1
    svc.open_connections(b, inactive=2)  # 2/3: least
    svc.open_connections(c, inactive=2)  # 2/2
    assert svc.schedule(PKT) is b
    svc.open_connections(a, inactive=1)  # 2/1
    svc.open_connections(b, inactive=1)  # 3/3 == 2/2 of C: B keeps it (strictly less needed)
    assert svc.schedule(PKT) is b


def test_lc_ignores_weights_except_zero() -> None:
    svc, (a, b, c) = build_service("lc", [0, 100, 1])
    svc.open_connections(b, inactive=3)
    svc.open_connections(c, inactive=2)
    assert svc.schedule(PKT) is c  # A (no connections) is quiesced
    svc.open_connections(c, inactive=1)  # 3 == 3: the first of equals (B) wins
    assert svc.schedule(PKT) is b
    overload(b)
    assert svc.schedule(PKT) is c


def test_sed_counts_active_connections_plus_one() -> None:
    svc, (a, b) = build_service("sed", [1, 3])
    svc.open_connections(a, inactive=100)  # inactive ones do not count: (0+1)/1
    svc.open_connections(b, active=2)  # (2+1)/3: equal, A is first
    assert svc.schedule(PKT) is a
    svc.open_connections(a, active=1)  # (1+1)/1 > (2+1)/3
    assert svc.schedule(PKT) is b


def test_nq_sends_to_an_idle_server_whatever_the_weights() -> None:
    svc, (a, b) = build_service("nq", [10, 1])
    svc.open_connections(a, active=1)  # (1+1)/10 is less than B's (0+1)/1 ...
    assert svc.schedule(PKT) is b  # ... but B is idle: no queue at all
    sed, (sa, sb) = build_service("sed", [10, 1])
    sed.open_connections(sa, active=1)
    assert sed.schedule(PKT) is sa  # sed has no idle rule


def test_nq_without_idle_servers_is_sed_and_skips_quiesced_ones() -> None:
    svc, (a, b, c) = build_service("nq", [2, 1, 0])
    svc.open_connections(a, active=3)  # 4/2
    svc.open_connections(b, active=1)  # 2/1: equal to A, A first
    assert svc.schedule(PKT) is a
    svc.open_connections(a, active=1)  # 5/2 > 2/1
    assert svc.schedule(PKT) is b  # C is idle but has weight 0


# -- fo, ovf ---------------------------------------------------------------------------------------------

def test_fo_picks_the_first_highest_weight() -> None:
    svc, (a, b, c) = build_service("fo", [2, 5, 5])
    svc.open_connections(b, active=50)  # connection counts play no part
    assert svc.schedule(PKT) is b
    overload(b)
    assert svc.schedule(PKT) is c
    for dest in (a, b, c):
        dest.weight = 0
    assert svc.schedule(PKT) is None


def test_ovf_leaves_a_destination_only_once_active_exceeds_weight() -> None:
    svc, (a, b) = build_service("ovf", [2, 3])
    svc.open_connections(b, active=3, inactive=10)
    assert svc.schedule(PKT) is b  # 3 active == weight 3: still eligible
    svc.open_connections(b, active=1)
    assert svc.schedule(PKT) is a
    svc.open_connections(a, active=3)
    assert svc.schedule(PKT) is None


# -- twos ------------------------------------------------------------------------------------------------

def binomial_within(count: int, trials: int, p: float, sigmas: float = 5.0) -> bool:
    return abs(count - trials * p) <= sigmas * math.sqrt(trials * p * (1 - p))


def twos_service_123(seed: int) -> Service:
    """A twos service whose list is 10.0.0.1-3 with weights 1, 2, 3 in this order (added last first)."""
    svc = Service(TwosScheduler(seed=seed))
    for index, weight in reversed(list(enumerate([1, 2, 3]))):
        svc.add_dest(f"10.0.0.{index + 1}", 80, weight)
    return svc


def test_twos_draw_favours_the_first_eligible_destination_by_one() -> None:
    # Draws are uniform over [0, total weight]: the first eligible destination wins r <= w1,
    # i.e. w1 + 1 of the total + 1 values. With no connections the second choice never
    # replaces the first (0 > 0 is false), so schedule() shows the draw itself.
    svc = twos_service_123(seed=1)
    dests = svc.destinations
    trials = 14000
    seen = Counter(dests.index(d) for d in (svc.schedule(PKT) for _ in range(trials)) if d is not None)
    for index, p in enumerate([2 / 7, 2 / 7, 3 / 7]):
        assert binomial_within(seen[index], trials, p), (index, seen)


def test_twos_with_live_connections_spreads_in_proportion_to_weight() -> None:
    # Each new flow keeps its connection, so the overhead/weight comparison of the two choices
    # balances load per unit of weight; the shares end up close to 1/6, 2/6, 3/6.
    svc = twos_service_123(seed=7)
    dests = svc.destinations
    flows = 6000
    chosen: Counter[int] = Counter()
    for n in range(flows):
        conn = svc.new_flow(PacketInfo.of("192.0.2.1", "198.51.100.1", 1024 + n, 80))
        assert conn is not None
        chosen[dests.index(conn.dest)] += 1
    for index, weight in enumerate([1, 2, 3]):
        assert abs(chosen[index] / flows - weight / 6) < 0.02, chosen


def test_twos_skips_overloaded_and_quiesced() -> None:
    svc = Service(TwosScheduler(seed=3))
    a = svc.add_dest("10.0.0.1", 80, 0)
    b = svc.add_dest("10.0.0.2", 80, 5)
    c = svc.add_dest("10.0.0.3", 80, 5)
    overload(c)
    assert {svc.schedule(PKT) for _ in range(200)} == {b}
    b.weight = 0
    assert svc.schedule(PKT) is None and a.weight == 0
