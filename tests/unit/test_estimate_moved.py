"""The rate estimator steps only the services whose counters moved (issue 15: a director with
10,000 services must not list them all every 2 s while one of them has traffic).

Checked against both engines, no privileges: `changed_services` reports each moved service once
(lb_svc_list_changed in C), and a Director fed traffic on a few of many services shows, tick
after tick, exactly the rates and stall episodes of the full step of every service (the
reference: Estimator.tick / StallWatch.tick over the whole listing).
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from lb.director import Director
from lb.engine import FwdState
from lb.estimator import RATE_FIELDS, Estimator, HandshakeSample, Rates, StallWatch
from lb.model import ServiceKey
from test_director import VIP, dest, make_engine

FWD = FwdState(ifindex=2, dst_mac=b"\x02" * 6, src_mac=b"\x04" * 6, saddr="10.0.0.1")
PORTS = list(range(1000, 1040))  # 40 services, one destination each


def packet(sport: int, dport: int, flags: str) -> bytes:
    import packet_table

    return packet_table.tcp(sport=sport, dport=dport, src="192.0.2.10", dst=VIP, flags=flags)


def director_with_services(kind: str) -> Director:
    d = Director(make_engine(kind), rules=None, resolver=None)
    reqs: list[dict[str, Any]] = []
    for port in PORTS:
        svc = {"proto": "tcp", "addr": VIP, "port": port}
        reqs += [{"op": "add_service", "args": {**svc, "sched": "rr"}},
                 {"op": "add_dest", "args": {"service": svc, "dest": dest("10.0.0.2", port)}}]
    d.handle("batch", {"requests": reqs})
    for port in PORTS:
        d.engine.set_fwd(ServiceKey(6, VIP, port), "10.0.0.2", port, FWD)
    return d


@pytest.mark.parametrize("kind", ["c", "python"])
def test_changed_services_reports_each_moved_service_once(kind: str) -> None:
    d = director_with_services(kind)
    assert d.engine.changed_services() == []
    d.engine.process(packet(40000, 1003, "S"), 1000)
    d.engine.process(packet(40001, 1003, "S"), 1000)
    d.engine.process(packet(40002, 1017, "S"), 1000)
    assert sorted(k.port for k in d.engine.changed_services()) == [1003, 1017]
    assert d.engine.changed_services() == []  # reported: marked as seen
    d.handle("zero", {"service": {"proto": "tcp", "addr": VIP, "port": 1017}})
    assert [k.port for k in d.engine.changed_services()] == [1017]  # zeroed counters moved too
    d.engine.process(packet(40003, 1017, "S"), 2000)
    assert [k.port for k in d.engine.changed_services()] == [1017]


def shown_rates(d: Director) -> dict[tuple[object, ...], Rates]:
    """The rates `list` shows (lbadm -L --rate): the C engine's own, or the director's estimator's."""
    out: dict[tuple[object, ...], Rates] = {}
    for s in d.handle("list", {})["services"]:
        key = ServiceKey(6, s["addr"], s["port"])
        out[("svc", key)] = Rates(**{f: s["stats"][f] for f in RATE_FIELDS})
        for x in s["dests"]:
            out[("dest", key, x["addr"], x["port"])] = Rates(**{f: x["stats"][f] for f in RATE_FIELDS})
    return out


@pytest.mark.parametrize("kind", ["c", "python"])
def test_stepping_what_moved_gives_the_rates_and_stalls_of_a_full_step(kind: str) -> None:
    d = director_with_services(kind)
    ref_rates: Estimator[tuple[object, ...]] = Estimator()
    ref_stalls: StallWatch[tuple[ServiceKey, str, int]] = StallWatch()
    rng = random.Random(15)
    sport = 10000
    stalled_ticks = 0
    for tick in range(60):
        now = 2.0 * tick
        # bursts on a few services, long silences (rates decay to 0, stall windows pass)
        busy = rng.sample(PORTS[:6], rng.randint(0, 3)) if tick % 20 < 8 else []
        for port in busy:
            for _ in range(rng.randint(1, 5)):
                sport += 1
                d.engine.process(packet(sport, port, "S"), 1000 + tick)
                if port != PORTS[0]:  # PORTS[0]: SYNs repeated, never an ACK: a stalled handshake
                    d.engine.process(packet(sport, port, "A"), 1000 + tick)
                else:
                    d.engine.process(packet(sport, port, "S"), 1000 + tick)
        d.estimate(now=now)
        listing = d.engine.services()
        ref_rates.tick({("svc", s.spec.key): s.stats for s in listing}
                       | {("dest", s.spec.key, x.spec.addr, x.spec.port): x.stats for s in listing for x in s.dests})
        ref_stalls.tick(now, {(s.spec.key, x.spec.addr, x.spec.port):
                              HandshakeSample(x.syn_retrans, x.handshakes, x.stats.conns)
                              for s in listing for x in s.dests})
        shown = shown_rates(d)
        for s in listing:
            assert shown[("svc", s.spec.key)] == ref_rates.read(("svc", s.spec.key)), (tick, s.spec.key)
            for x in s.dests:
                dkey = (s.spec.key, x.spec.addr, x.spec.port)
                assert shown[("dest", *dkey)] == ref_rates.read(("dest", *dkey)), (tick, dkey)
                assert d.stalls.stalled(dkey) == ref_stalls.stalled(dkey), (tick, dkey)
                assert d.stalls.episodes(dkey) == ref_stalls.episodes(dkey), (tick, dkey)
        stalled_ticks += ref_stalls.stalled((ServiceKey(6, VIP, PORTS[0]), "10.0.0.2", PORTS[0]))
        assert len(d._moved_at) <= 6  # noqa: SLF001 - only services that moved lately are looked at
        if kind == "c":  # and only those with traffic or rates not yet 0 are stepped in C
            from lb._ffi import lib

            assert lib.lb_est_active(d.engine.handle) <= 6  # type: ignore[attr-defined]
    assert stalled_ticks > 0  # the scenario did exercise a stall episode
    assert any(ref_rates.read(("svc", ServiceKey(6, VIP, p))).cps == 0 for p in PORTS[:6])


def test_a_silent_director_with_many_services_lists_none(monkeypatch: pytest.MonkeyPatch) -> None:
    d = director_with_services("c")
    d.engine.process(packet(40000, 1005, "S"), 1000)
    listed: list[ServiceKey] = []
    real = d.engine.service

    def service(key: ServiceKey) -> Any:
        listed.append(key)
        return real(key)

    monkeypatch.setattr(d.engine, "service", service)
    monkeypatch.setattr(d.engine, "services", lambda: pytest.fail("estimate listed every service"))
    for tick in range(40):
        d.estimate(now=2.0 * tick)
    assert set(listed) == {ServiceKey(6, VIP, 1005)}
