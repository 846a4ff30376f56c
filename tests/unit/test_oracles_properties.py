"""Property tests of the scheduler oracles over random weights, thresholds, connection counts
and edits: the invariants the kernel code guarantees (Linux 6.1.192), checked against
expectations written independently of the oracles' own loops where the kernel's rule has a
closed form (sh's tiling and probe order, mh's entry counts, the overload hysteresis).
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from oracles import (  # noqa: E402
    IP_VS_SVC_F_SCHED_SH_FALLBACK,
    IP_VS_SVC_F_SCHED_SH_PORT,
    Connection,
    Dest,
    PacketInfo,
    Service,
    build_service,
    dest_address,
)
from oracles.sched_mh import MhScheduler  # noqa: E402
from oracles.sched_sh import ShScheduler  # noqa: E402
from oracles.sched_wrr import gcd_weight  # noqa: E402

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
POOL = 6  # destination addresses the random scenarios draw from

# Schedulers whose choice is never quiesced (weight 0) or OVERLOAD-flagged. lblc is the
# exception: a cache hit does not look at the OVERLOAD flag.
FLAG_SAFE = ["rr", "wrr", "lc", "wlc", "sed", "nq", "fo", "ovf", "sh", "dh", "mh", "lblcr", "twos"]
# ... and those that find a destination whenever one is eligible (sh and mh without their
# fallback flag, and dh, map each client to one slot and may find it unavailable).
COMPLETE = ["rr", "wrr", "lc", "wlc", "sed", "nq", "fo", "ovf", "lblcr", "twos"]


def eligible(dest: Dest, scheduler: str) -> bool:
    if dest.weight <= 0 or dest.overloaded:
        return False
    return scheduler != "ovf" or dest.activeconns <= dest.weight


def run_scenario(data: st.DataObject, scheduler: str, steps: int = 25) -> None:
    svc = Service(scheduler, flags=IP_VS_SVC_F_SCHED_SH_FALLBACK if scheduler == "sh" else 0)
    conns: list[Connection] = []
    for _ in range(steps):
        op = data.draw(st.sampled_from(["add", "edit", "del", "open", "expire", "schedule", "schedule", "advance"]))
        index = data.draw(st.integers(0, POOL - 1))
        addr = dest_address(index)
        existing = svc.find_dest(addr, 80)
        if op in ("add", "edit"):
            upper = data.draw(st.integers(0, 6))
            lower = data.draw(st.integers(0, upper))
            weight = data.draw(st.integers(0, 5))
            if op == "add" and existing is None:
                svc.add_dest(addr, 80, weight, upper, lower)
            elif op == "edit" and existing is not None:
                svc.edit_dest(addr, 80, weight, upper, lower)
        elif op == "del" and existing is not None:
            svc.del_dest(addr, 80)
        elif op == "open" and existing is not None:
            conns += svc.open_connections(existing, active=data.draw(st.integers(0, 3)),
                                          inactive=data.draw(st.integers(0, 3)))
        elif op == "expire" and conns:
            conns.pop(data.draw(st.integers(0, len(conns) - 1))).expire()
        elif op == "advance":
            svc.clock.advance(seconds=data.draw(st.sampled_from([1, 61, 3600, 90000])))
        elif op == "schedule":
            pkt = PacketInfo.of(f"192.0.2.{data.draw(st.integers(1, 254))}",
                                f"198.51.100.{data.draw(st.integers(1, 4))}",
                                data.draw(st.integers(1, 65535)), 80)
            chosen = svc.schedule(pkt)
            if chosen is not None:
                assert any(chosen is d for d in svc.destinations), "chose a destination not in the list"
                assert chosen.weight > 0
                if scheduler in FLAG_SAFE:
                    assert not chosen.overloaded
                if scheduler == "ovf":
                    assert chosen.activeconns <= chosen.weight
            if scheduler in COMPLETE or scheduler == "sh":
                assert (chosen is None) == (not any(eligible(d, scheduler) for d in svc.destinations))


@pytest.mark.parametrize("scheduler", FLAG_SAFE + ["lblc"])
@SETTINGS
@given(data=st.data())
def test_choices_respect_weight_and_overload(scheduler: str, data: st.DataObject) -> None:
    run_scenario(data, scheduler)


@SETTINGS
@given(weights=st.lists(st.integers(1, 4), min_size=1, max_size=5), turns=st.integers(0, 7))
def test_rr_visits_each_destination_once_per_round(weights: list[int], turns: int) -> None:
    svc, dests = build_service("rr", weights)
    pkt = PacketInfo.of("192.0.2.1", "198.51.100.1", 1, 80)
    for _ in range(turns):
        svc.schedule(pkt)
    window = [svc.schedule(pkt) for _ in range(len(dests))]
    assert sorted(dests.index(d) for d in window if d is not None) == list(range(len(dests)))


@SETTINGS
@given(weights=st.lists(st.integers(1, 12), min_size=1, max_size=5), bind_first=st.booleans())
def test_wrr_deals_weight_over_gcd_per_period(weights: list[int], bind_first: bool) -> None:
    # Whatever cw the adds left behind, the first restart happens within one period; every
    # later window of one period holds weight / gcd picks of each destination.
    if bind_first:
        svc, dests = build_service("rr", weights)
        svc.edit_service(scheduler="wrr")
    else:
        svc, dests = build_service("wrr", weights)
    gcd = gcd_weight(dests)
    period = sum(w // gcd for w in weights)
    pkt = PacketInfo.of("192.0.2.1", "198.51.100.1", 1, 80)
    for _ in range(period):
        svc.schedule(pkt)
    window = Counter(dests.index(d) for d in (svc.schedule(pkt) for _ in range(period)) if d is not None)
    assert [window[i] for i in range(len(dests))] == [w // gcd for w in weights]


def expected_sh_tiling(weights: list[int]) -> list[int]:
    """Each destination in list order takes max(weight, 1) consecutive buckets, cyclically."""
    layout: list[int] = []
    while len(layout) < 256:
        for index, weight in enumerate(weights):
            layout.extend([index] * max(weight, 1))
    return layout[:256]


@SETTINGS
@given(weights=st.lists(st.integers(0, 5), min_size=1, max_size=6),
       unavailable=st.lists(st.booleans(), min_size=6, max_size=6),
       client=st.integers(0, 2**32 - 1), sport=st.integers(0, 65535), use_port=st.booleans())
def test_sh_fallback_takes_the_first_available_in_the_probe_order(
        weights: list[int], unavailable: list[bool], client: int, sport: int, use_port: bool) -> None:
    flags = IP_VS_SVC_F_SCHED_SH_FALLBACK | (IP_VS_SVC_F_SCHED_SH_PORT if use_port else 0)
    svc, dests = build_service("sh", weights, flags=flags)
    sched = svc.scheduler
    assert isinstance(sched, ShScheduler)
    layout = expected_sh_tiling(weights)
    assert [dests.index(d) for d in sched.buckets if d is not None] == layout
    for dest, off in zip(dests, unavailable, strict=False):
        if off:
            dest.flags |= 0x0002
    pkt = PacketInfo.of(".".join(str(client >> s & 255) for s in (24, 16, 8, 0)), "198.51.100.1", sport, 80)
    key = ((sport if use_port else 0) + client) % 2**32
    ihash = ((key * 0x61C88647) % 2**32) >> 24
    probes = [ihash] + [(2 * ihash + k) & 255 for k in range(256)]
    available = [d for d in (dests[layout[b]] for b in probes) if d.weight > 0 and not d.overloaded]
    assert svc.schedule(pkt) is (available[0] if available else None)
    svc.edit_service(flags=flags & ~IP_VS_SVC_F_SCHED_SH_FALLBACK)
    home = dests[layout[ihash]]
    assert svc.schedule(pkt) is (home if home.weight > 0 and not home.overloaded else None)


def expected_mh_counts(turns: list[int], size: int = 4093) -> list[int]:
    """Full rounds of `turns` entries each, then the remainder in list order."""
    per_round = sum(turns)
    rounds, left = divmod(size, per_round)
    counts = []
    for t in turns:
        extra = min(t, left)
        left -= extra
        counts.append(rounds * t + extra)
    return counts


@settings(max_examples=25, deadline=None)
@given(weights=st.lists(st.integers(0, 300), min_size=1, max_size=5).filter(lambda ws: any(ws)))
def test_mh_table_is_full_deterministic_and_shared_by_turns(weights: list[int]) -> None:
    svc, dests = build_service("mh", weights)
    sched = svc.scheduler
    assert isinstance(sched, MhScheduler)
    assert all(d is not None for d in sched.lookup)
    positive = [w for w in weights if w > 0]
    gcd = positive[0]
    for w in positive[1:]:
        while w:
            gcd, w = w, gcd % w
    shift = max((max(weights) // gcd).bit_length() - 6, 0)
    turns = [((w // gcd) >> shift) or int(w != 0) for w in weights]
    counts = Counter(dests.index(d) for d in sched.lookup if d is not None)
    assert [counts[i] for i in range(len(dests))] == expected_mh_counts(turns)
    again, _ = build_service("mh", weights)
    assert isinstance(again.scheduler, MhScheduler)
    assert [d.addr for d in sched.lookup if d] == [d.addr for d in again.scheduler.lookup if d]


@SETTINGS
@given(upper=st.integers(0, 8), lower=st.integers(0, 8),
       moves=st.lists(st.booleans(), min_size=1, max_size=40))
def test_overload_flag_follows_the_threshold_hysteresis(upper: int, lower: int, moves: list[bool]) -> None:
    lower = min(lower, upper)
    svc = Service("wlc")
    dest = svc.add_dest("10.0.0.1", 80, 1, upper, lower)
    lower_value = lower or upper - upper // 4
    conns: list[Connection] = []
    flagged = False
    for bind in moves:
        if bind:
            conns.append(svc.bind_connection(dest))
            if upper and len(conns) >= upper:
                flagged = True
        elif conns:
            conns.pop().expire()
            if len(conns) < lower_value:
                flagged = False
        assert dest.overloaded == flagged, (len(conns), upper, lower_value)


TCP_STATES = ["ESTABLISHED", "SYN_SENT", "SYN_RECV", "FIN_WAIT", "TIME_WAIT", "CLOSE",
              "CLOSE_WAIT", "LAST_ACK", "LISTEN", "SYNACK"]


@SETTINGS
@given(script=st.lists(st.tuples(st.integers(0, 7), st.sampled_from(TCP_STATES + ["expire"])), max_size=60))
def test_activeconns_counts_the_connections_in_active_states(script: list[tuple[int, str]]) -> None:
    svc = Service("wlc")
    dest = svc.add_dest("10.0.0.1", 80, 1)
    conns = [svc.bind_connection(dest) for _ in range(8)]
    for index, move in script:
        if conns[index].expired:
            continue
        if move == "expire":
            conns[index].expire()
        else:
            conns[index].set_state(move)
        live = [c for c in conns if not c.expired]
        active = sum(c.state in ("ESTABLISHED", "SYN_SENT", "SYN_RECV", "SYNACK") for c in live)
        assert (dest.activeconns, dest.totalconns, dest.inactconns) == (active, len(live), len(live) - active)
