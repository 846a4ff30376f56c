"""The C engine's rate estimators (native/src/est.c, issue 19) against lb/estimator.py, which
documents the kernel's ip_vs_est.c arithmetic: the same averages and rates on random counter
sequences (steady, bursty, huge, going backwards, zeroed); and the engine around them: who is
stepped, zeroing, the watch mark Director.estimate returns on. No privileges needed.
"""

from __future__ import annotations

import random

import pytest

from lb._ffi import ffi, lib
from lb.director import Director
from lb.estimator import _SCALES, RATE_FIELDS, Estimator, Rates, _Entry
from lb.model import ServiceKey, Stats
from test_estimate_moved import director_with_services, packet

COUNTERS = tuple(name for name, *_ in _SCALES)


def c_stats(st: Stats) -> object:
    out = ffi.new("struct lb_stats *")
    for name in COUNTERS:
        setattr(out, name, getattr(st, name))
    return out


def c_read(e: object) -> Rates:
    r = ffi.new("struct lb_rates *")
    lib.lb_est_read(e, r)
    return Rates(**{name: getattr(r, name) for name in RATE_FIELDS})


def random_sequence(rng: random.Random, steps: int) -> list[tuple[str, Stats]]:
    """Cumulative counters, step by step, with the odd reset underneath and ipvsadm -Z."""
    now = dict.fromkeys(COUNTERS, 0)
    out: list[tuple[str, Stats]] = []
    scale = rng.choice((1, 10, 1000, 10**6, 2**40))
    for _ in range(steps):
        event = rng.random()
        if event < 0.03:
            now = {k: rng.randrange(0, v + 1) for k, v in now.items()}  # went backwards (re-created underneath)
            out.append(("step", Stats(**now)))
        elif event < 0.06:
            now = dict.fromkeys(COUNTERS, 0)
            out.append(("zero", Stats(**now)))
        else:
            quiet = rng.random() < 0.3
            now = {k: v + (0 if quiet else rng.randrange(0, scale)) for k, v in now.items()}
            out.append(("step", Stats(**now)))
    return out


@pytest.mark.parametrize("seed", range(40))
def test_c_arithmetic_is_the_python_estimators(seed: int) -> None:
    rng = random.Random(seed)
    e = ffi.new("struct lb_est *")  # zeroed: a first sighting counts from 0, as _Entry(Stats())
    ref = _Entry(Stats())
    for i, (what, st) in enumerate(random_sequence(rng, 120)):
        if what == "zero":
            lib.lb_est_zero(e, c_stats(st))
            ref = _Entry(st)
        else:
            lib.lb_est_step_one(e, c_stats(st))
            ref.tick(st)
        assert list(e.last) == [ref.last[name] for name in COUNTERS], (seed, i)
        assert list(e.avg) == [ref.avg[rate] for _, rate, *_ in _SCALES], (seed, i)
        assert c_read(e) == ref.read(), (seed, i)


def test_decay_to_zero_and_the_estimator_class_agree() -> None:
    """A burst, then silence: both reach 0 at the same step (lbd stops stepping it then)."""
    e = ffi.new("struct lb_est *")
    ref: Estimator[str] = Estimator()
    burst = Stats(conns=10**6, inpkts=10**9, outpkts=3, inbytes=2**50, outbytes=1)
    for step in range(400):
        lib.lb_est_step_one(e, c_stats(burst))
        ref.update({"k": burst})
        assert c_read(e) == ref.read("k"), step
        assert (not any(e.avg)) == ref.settled(), step
    assert ref.settled()


# ---------------------------------------------------------------------------- the engine around them


def list_rates(d: Director, port: int) -> dict[str, int]:
    s = next(s for s in d.handle("list", {})["services"] if s["port"] == port)
    return {f: s["stats"][f] for f in RATE_FIELDS}


def test_only_services_with_traffic_are_stepped_and_idle_ones_leave() -> None:
    d = director_with_services("c")
    handle = d.engine.handle  # type: ignore[attr-defined]
    assert lib.lb_est_active(handle) == 0 and lib.lb_est_driven(handle) == 0
    d.engine.process(packet(40000, 1003, "S"), 1000)
    d.engine.process(packet(40000, 1003, "A"), 1001)
    assert lib.lb_est_active(handle) == 1  # 40 services, one with traffic
    d.estimate(now=0.0)  # no adapter thread: the director's tick steps the C estimators
    assert list_rates(d, 1003)["inbps"] > 0 and list_rates(d, 1004) == dict.fromkeys(RATE_FIELDS, 0)
    for tick in range(1, 200):
        d.estimate(now=2.0 * tick)
        if lib.lb_est_active(handle) == 0:
            break
    assert lib.lb_est_active(handle) == 0
    assert list_rates(d, 1003) == dict.fromkeys(RATE_FIELDS, 0)


def test_zero_reaches_the_c_estimators() -> None:
    d = director_with_services("c")
    key = ServiceKey(6, "10.0.0.1", 1005)
    ref: Estimator[str] = Estimator()
    for tick in range(10):
        for i in range(5):
            d.engine.process(packet(41000 + 10 * tick + i, 1005, "S"), 1000 + tick)
        d.estimate(now=2.0 * tick)
        ref.update({"k": d.engine.service(key).stats})
    assert list_rates(d, 1005) == ref.read("k").to_json() and list_rates(d, 1005)["cps"] == 2  # 2.5/s
    d.handle("zero", {"service": {"proto": "tcp", "addr": "10.0.0.1", "port": 1005}})
    assert list_rates(d, 1005) == dict.fromkeys(RATE_FIELDS, 0)
    d.estimate(now=100.0)  # counted from the zeroed counters: no bogus delta
    assert list_rates(d, 1005) == dict.fromkeys(RATE_FIELDS, 0)
    d.engine.process(packet(42000, 1005, "S"), 2000)
    d.handle("zero", {})
    d.estimate(now=102.0)
    assert list_rates(d, 1005) == dict.fromkeys(RATE_FIELDS, 0)


def test_the_watch_mark_moves_with_handshakes_refusals_and_zeroings_only() -> None:
    d = director_with_services("c")
    mark = d.engine.rate_tick()
    assert isinstance(mark, int)
    d.engine.process(packet(43000, 1007, "S"), 1000)  # a connection scheduled
    m1 = d.engine.rate_tick()
    assert m1 != mark
    d.engine.process(packet(43000, 1007, "A"), 1001)  # its handshake completes
    m2 = d.engine.rate_tick()
    assert m2 != m1
    d.engine.process(packet(43000, 1007, "A"), 1002)  # a packet of an established connection only
    assert d.engine.rate_tick() == m2
    d.handle("zero", {})
    assert d.engine.rate_tick() != m2


def test_an_idle_director_ticks_with_one_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """Once nothing the stall watch and the refusal log look at moved for a stall window (and no
    episode goes on), Director.estimate is rate_tick alone, also while packets of established
    connections flow (their rates are C's)."""
    d = director_with_services("c")
    d.engine.process(packet(44000, 1009, "S"), 1000)
    d.engine.process(packet(44000, 1009, "A"), 1000)
    for tick in range(8):  # the stall window (10 s) and a tick pass
        d.engine.process(packet(44000, 1009, "A"), 1000 + tick)
        d.estimate(now=2.0 * tick)
    for name in ("changed_services", "service", "services", "counters", "conn_stats", "conn_count"):
        monkeypatch.setattr(d.engine, name, lambda *a, name=name: pytest.fail(f"an idle tick called {name}"))
    for tick in range(8, 20):
        d.engine.process(packet(44000, 1009, "A"), 1000 + tick)
        d.estimate(now=2.0 * tick)
    monkeypatch.undo()
    assert list_rates(d, 1009)["inbps"] > 0  # the packets' rates went on in C
    d.engine.process(packet(44001, 1009, "S"), 2000)  # a new connection: the watch looks again
    d.estimate(now=40.0)
    assert d._moved_at.get(ServiceKey(6, "10.0.0.1", 1009)) == 40.0  # noqa: SLF001


def test_listing_more_destinations_than_the_first_call_asks_for() -> None:
    """The watch reads services (CEngine.service): one C call per list up to LIST_FIRST entries, two beyond."""
    from lb.fastpath import LIST_FIRST, CEngine
    from lb.model import DestSpec, ServiceSpec

    eng = CEngine()
    key = ServiceKey(6, "10.0.0.1", 80)
    eng.add_service(ServiceSpec(key=key, sched="rr"))
    for n in (1, LIST_FIRST, LIST_FIRST + 1, 3 * LIST_FIRST):
        have = len(eng.service(key).dests)
        for i in range(have, n):
            eng.add_dest(key, DestSpec(addr=f"10.0.1.{i + 1}", port=80))
        info = eng.service(key)
        assert sorted(d.spec.addr for d in info.dests) == sorted(f"10.0.1.{i + 1}" for i in range(n))
        assert all(d.rates == dict.fromkeys(RATE_FIELDS, 0) for d in info.dests)
