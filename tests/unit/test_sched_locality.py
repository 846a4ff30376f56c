"""lblc and lblcr in both engines against the kernel oracle (tests/oracles, from ip_vs_lblc.c and
ip_vs_lblcr.c of Debian's 6.1.192), driven through tests/unit/locality_twin.py.

The property tests generate operation scripts (destinations added, edited, deleted and re-added;
flows through the engine's packet path, held or closed; scheduling probes for other destination
addresses; time jumps across the 60 s timer, the 6 min idle limit, the half-hourly full check and
the 24 h expiration) and require the engine's choice to be the oracle's at every step. The other
tests are worked out by hand from the kernel source, so they do not lean on the oracle alone.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import packet_table as table
from lb.model import ServiceSpec
from locality_twin import KEY, Twin, dest_addr

FACTORIES = [
    pytest.param(f, id=f.id, marks=[pytest.mark.skip(reason=f.unavailable)] if f.make is None else [])
    for f in table.engine_factories()
]
SECOND = 1000
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE
DAY = 24 * HOUR

# Destination addresses the probes use: a few, two of them in one hash bucket (hash_32 of
# 198.18.0.1 and 198.18.3.220 is 755 with 10 bits), and the VIP the flows' entries use.
PROBE_ADDRS = ("198.18.0.1", "198.18.3.220", "198.18.0.2", "198.18.0.3", table.VIP)
# Time steps, in whole jiffies (4 ms): around the timer's 60 s, the 6 min idle limit, the full
# check every 30 min and the 24 h expiration, and their edges.
DURATIONS = (4, SECOND, MINUTE - 4, MINUTE, 6 * MINUTE, 30 * MINUTE, 2 * HOUR, DAY - 4, DAY, DAY + 4)

weights = st.one_of(st.integers(0, 3), st.sampled_from([65535, 2**31 - 1]))
operations = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.integers(0, 3), weights),
        st.tuples(st.just("edit"), st.integers(0, 3), weights),
        st.tuples(st.just("del"), st.integers(0, 3)),
        st.tuples(st.just("flow"), st.booleans()),
        st.tuples(st.just("flow"), st.booleans()),
        st.tuples(st.just("close"), st.integers(0, 63)),
        st.tuples(st.just("probe"), st.integers(0, len(PROBE_ADDRS) - 1)),
        st.tuples(st.just("probe"), st.integers(0, len(PROBE_ADDRS) - 1)),
        st.tuples(st.just("advance"), st.sampled_from(DURATIONS)),
    ),
    max_size=45,
)


def run_script(twin: Twin, script: list[tuple]) -> int:
    """Apply the script; assert every choice and the counts agree. Returns the number of choices compared."""
    compared = 0
    for step, op in enumerate(script):
        where = f"step {step} {op} at {twin.now_ms} ms"
        kind = op[0]
        if kind == "add":
            if twin.present(op[1]):
                twin.edit(op[1], op[2])
            else:
                twin.add(op[1], op[2])
        elif kind == "edit":
            if twin.present(op[1]):
                twin.edit(op[1], op[2])
        elif kind == "del":
            if twin.present(op[1]):
                twin.delete(op[1])
        elif kind == "flow":
            got, want = twin.flow(hold=op[1])
            assert got == want, where
            compared += 1
        elif kind == "close":
            if twin.flows:
                twin.segment(twin.flows[op[1] % len(twin.flows)], "FA")
        elif kind == "probe":
            got, want = twin.probe(PROBE_ADDRS[op[1]])
            assert got == want, where
            compared += 1
        else:
            twin.advance(op[1])
        got_counts, want_counts = twin.counts()
        assert got_counts == want_counts, where
    return compared


@pytest.mark.parametrize("sched", ["lblc", "lblcr"])
@pytest.mark.parametrize("factory", FACTORIES)
@settings(max_examples=300, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(script=operations)
def test_every_choice_is_the_kernels(factory: table.EngineFactory, sched: str, script) -> None:  # type: ignore[no-untyped-def]
    twin = Twin(factory.make(0), sched)  # type: ignore[operator]
    run_script(twin, script)


@pytest.mark.parametrize("sched", ["lblc", "lblcr"])
@pytest.mark.parametrize("factory", FACTORIES)
@settings(max_examples=120, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(weights=st.lists(st.integers(1, 4), min_size=2, max_size=4), holds=st.lists(st.booleans(), min_size=4,
                                                                                  max_size=40))
def test_loaded_services_agree(factory: table.EngineFactory, sched: str, weights: list[int], holds: list[bool]) -> None:
    """Many held flows on small weights: the overload rule (active > weight while another server is under
    half its weight) moves lblc's entry and grows lblcr's set, again and again."""
    twin = Twin(factory.make(0), sched)  # type: ignore[operator]
    for i, weight in enumerate(weights):
        twin.add(i, weight)
    script = [("flow", hold) for hold in holds] + [("advance", MINUTE)] + [("flow", True) for _ in holds]
    assert run_script(twin, script) == 2 * len(holds)
    assert {dest_addr(i) for i in range(len(weights))} >= {str(d.addr) for d in twin.oracle.destinations}


# ---- worked out by hand from the kernel source (each choice also checked against the oracle) ------------

A, B, C = dest_addr(0), dest_addr(1), dest_addr(2)
X, Y, Z, W = "198.18.0.1", "198.18.3.220", "198.18.0.2", "198.18.0.3"  # X and Y share a hash bucket


def agreed(pair: tuple[str | None, str | None]) -> str | None:
    got, want = pair
    assert got == want, f"engine {got}, kernel oracle {want}"
    return got


def two_servers(factory: table.EngineFactory, sched: str, weights: tuple[int, int] = (1, 1)) -> Twin:
    """A then B added: the kernel's list is B, A (B first: it wins ties)."""
    twin = Twin(factory.make(0), sched)  # type: ignore[operator]
    twin.add(0, weights[0])
    twin.add(1, weights[1])
    return twin


@pytest.mark.parametrize("factory", FACTORIES)
def test_lblc_entry_moves_when_its_server_is_busier_than_its_weight(factory: table.EngineFactory) -> None:
    # 1: miss, wlc tie -> B. 2: B has 1 active, not > its weight 1 -> B. 3: B has 2 > 1 and A has
    # 0 * 2 < 1: overloaded -> wlc (A) and the entry points at A. 4: A 1, not > 1. 5, 6: A 2 > 1 but
    # nobody is under half its weight any more (A 4 >= 1, B 4 >= 1): the entry stays on A.
    twin = two_servers(factory, "lblc")
    assert [agreed(twin.flow(hold=True)) for _ in range(6)] == [B, B, A, A, A, A]


@pytest.mark.parametrize("factory", FACTORIES)
def test_lblc_hit_ignores_the_overload_flag(factory: table.EngineFactory) -> None:
    # A (weight 5, upper threshold 1) is added last: list A, B. The first flow goes to A and makes
    # it OVERLOADED (1 connection = its upper threshold); wlc would now skip A, but a cache hit only
    # asks weight > 0 and is_overloaded (1 active is not above its weight 5).
    twin = Twin(factory.make(0), "lblc")  # type: ignore[operator]
    twin.add(1, 5)
    twin.add(0, 5, upper=1)
    assert [agreed(twin.flow(hold=True)) for _ in range(3)] == [A, A, A]
    assert agreed(twin.probe(X)) == B  # a miss: wlc skips the flagged A


@pytest.mark.parametrize("sched", ["lblc", "lblcr"])
@pytest.mark.parametrize("factory", FACTORIES)
def test_the_cache_is_keyed_by_the_packets_destination_address(factory: table.EngineFactory, sched: str) -> None:
    twin = two_servers(factory, sched)
    assert agreed(twin.probe(X)) == B  # miss: wlc tie, the head
    assert agreed(twin.flow(hold=True)) == B  # the VIP's own entry: miss, B again
    assert agreed(twin.probe(Y)) == A  # Y shares X's bucket: a miss all the same; B is loaded now
    assert agreed(twin.probe(X, sport=1)) == B  # X's entry, whatever the source port
    assert agreed(twin.probe(Y, sport=2)) == A


@pytest.mark.parametrize("factory", FACTORIES)
def test_lblcr_set_grows_then_sheds_its_busiest_member_after_24h_unchanged(factory: table.EngineFactory) -> None:
    twin = two_servers(factory, "lblcr")
    # 1, 2: B. 3: B has 2 > 1 and A is idle: wlc -> A joins the set (lastmod 0). 4: the set's least
    # loaded is A (257 against 514). 5: A and B tie at 514: A, the newest member, first; A has 2 > 1 but
    # nobody is under half: A.
    assert [agreed(twin.flow(hold=True)) for _ in range(5)] == [B, B, A, A, A]
    twin.advance(12 * HOUR)  # every connection has expired; probes refresh the entry, not the set
    assert agreed(twin.probe(table.VIP)) == A
    twin.advance(12 * HOUR)
    # At exactly lastmod + 24 h nothing happens yet (time_after is strict)...
    assert agreed(twin.probe(table.VIP)) == A
    twin.advance(4)
    # ... one jiffy later the busiest member goes: A and B tie (idle), the first, A, goes; the choice
    # (made before the cleanup) is still A, the very member that just left.
    assert agreed(twin.probe(table.VIP)) == A
    twin.advance(4)
    assert agreed(twin.probe(table.VIP)) == B  # the set is {B} now
    assert agreed(twin.flow(hold=True)) == B


@pytest.mark.parametrize("sched", ["lblc", "lblcr"])
@pytest.mark.parametrize("factory", FACTORIES)
def test_full_check_every_30_minutes_drops_entries_idle_for_24h(factory: table.EngineFactory, sched: str) -> None:
    # The timer runs 60 s after the scheduler is bound and every 60 s after; every 30th run (so at
    # 30 min, 60 min, ...) drops the entries unused for >= 24 h (sysctl lblc(r)_expiration).
    twin = two_servers(factory, sched)
    assert agreed(twin.flow()) == B  # B busy (SYN_RECV, 60 s), so the probes' misses go to A
    assert agreed(twin.probe(X)) == A  # X: last used at 0
    twin.advance(4)
    assert [agreed(twin.probe(a)) for a in (Y, Z, W)] == [A, A, A]  # last used at 4 ms
    twin.advance(DAY - 4)
    # The full check at 24 h (the 48th) dropped X (idle exactly 24 h) but not Y, Z, W (24 h - 4 ms):
    # a miss now goes to B (both idle, B first).
    assert agreed(twin.probe(X)) == B
    assert agreed(twin.probe(Y)) == A
    twin.advance(30 * MINUTE - 4)
    assert agreed(twin.probe(Z)) == A  # the next full check is still 4 ms away
    twin.advance(4)
    assert agreed(twin.probe(W)) == B  # ... and it dropped W


@pytest.mark.parametrize("sched", ["lblc", "lblcr"])
@pytest.mark.parametrize("factory", FACTORIES)
def test_a_deleted_server_readded_makes_its_old_entries_valid_again(factory: table.EngineFactory, sched: str) -> None:
    # X's entry names A. A (no connection left) and B are deleted, then A re-added, then B: the list
    # is B, A, so wlc would pick B; the entry holds a reference on A, which kept it in the trash, so the
    # re-added A is the same destination and X still goes to it.
    twin = two_servers(factory, sched)
    assert agreed(twin.flow()) == B
    assert agreed(twin.probe(X)) == A
    twin.advance(MINUTE)  # B's connection expires
    twin.delete(0)
    twin.delete(1)
    assert agreed(twin.probe(X)) is None  # no destination at all
    twin.add(0, 1)
    twin.add(1, 1)
    assert agreed(twin.probe(X)) == A
    assert agreed(twin.probe(Z)) == B  # a new address: wlc


@pytest.mark.parametrize("factory", FACTORIES)
def test_lblc_replacing_an_entry_releases_the_old_server(factory: table.EngineFactory) -> None:
    """The entry of a deleted server is replaced at its next miss; once nothing refers to the server it
    is gone (C frees it), so re-adding it makes a new one whose statistics start from zero."""
    twin = two_servers(factory, "lblc")
    assert agreed(twin.probe(X)) == B
    twin.delete(1)
    assert agreed(twin.probe(X)) == A  # B unavailable: X now names A, B's last reference goes
    twin.add(1, 1)
    assert agreed(twin.probe(X)) == A
    (service,) = twin.engine.services()  # type: ignore[attr-defined]
    assert [(d.spec.addr, d.stats.conns) for d in service.dests] == [(B, 0), (A, 0)]


@pytest.mark.parametrize("factory", FACTORIES)
def test_switching_scheduler_drops_the_cache(factory: table.EngineFactory) -> None:
    twin = two_servers(factory, "lblc")
    assert agreed(twin.probe(X)) == B
    assert agreed(twin.flow(hold=True)) == B  # B is loaded now
    assert agreed(twin.probe(X)) == B  # X's entry
    for sched in ("rr", "lblc"):
        twin.engine.edit_service(ServiceSpec(KEY, sched))  # type: ignore[attr-defined]
        twin.oracle.edit_service(scheduler=sched)
    assert agreed(twin.probe(X)) == A  # a fresh cache: wlc
    twin.engine.edit_service(ServiceSpec(KEY, "lblc"))  # type: ignore[attr-defined]  # same one: kept
    twin.oracle.edit_service(scheduler="lblc")
    assert agreed(twin.probe(X)) == A


@pytest.mark.parametrize("sched", ["lblc", "lblcr"])
@pytest.mark.parametrize("factory", FACTORIES)
def test_cache_growth_is_bounded_and_collected(factory: table.EngineFactory, sched: str) -> None:
    """6.1.192: no entry beyond 24576 (3/2 of 16384); above 16384 entries the timer drops entries idle
    for 6 min, whole buckets at a time, until min((n - 16384) * 4 / 3, 8192) have gone."""
    twin = two_servers(factory, sched, weights=(10, 10))
    addrs = [f"10.{64 + n // 65536}.{n // 256 % 256}.{n % 256}" for n in range(25_000)]
    assert agreed(twin.flow()) == B  # B busy for 60 s: every miss goes to A
    assert all(agreed(twin.probe(a)) == A for a in addrs)
    twin.advance(MINUTE + 4)  # B idle again: a hit still says A, a miss says B
    picks = [agreed(twin.probe(a)) for a in addrs]
    # The VIP's entry, then 24575 probes' made 24576 entries: the rest had none (and the table is full,
    # so these misses make none either).
    assert picks == [A] * 24_575 + [B] * (25_000 - 24_575)
    for minutes in (6, 1, 1, 1, 1):  # from 8 min on, runs collect the entries last used at 60 s
        twin.advance(minutes * MINUTE)
        for a in addrs[::97]:
            agreed(twin.probe(a))
    picks = [agreed(twin.probe(a)) for a in addrs]
    # The run at 8 min dropped at least 8192 entries (whole buckets): their addresses missed since.
    assert picks.count(B) >= 8192 + 25_000 - 24_575 - len(addrs[::97]), picks.count(B)
