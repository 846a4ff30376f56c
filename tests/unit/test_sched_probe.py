"""sched_probe (C: lb_sched_probe): the scheduler's pick for a packet, in both engines, without a
connection. It is how the tests reach what only fwmark services (issue 14) will make reachable
through the packet path: one service seeing packets for many destination addresses."""

from __future__ import annotations

import pytest

import packet_table as table
from lb.engine import EngineError, FwdState
from lb.model import DestSpec, ServiceKey, ServiceSpec

FACTORIES = [
    pytest.param(f, id=f.id, marks=[pytest.mark.skip(reason=f.unavailable)] if f.make is None else [])
    for f in table.engine_factories()
]
KEY = ServiceKey(6, table.VIP, 80)


def rr_service(factory: table.EngineFactory, persistent: int | None = None) -> object:
    engine = factory.make(0)  # type: ignore[operator]
    engine.add_service(ServiceSpec(KEY, "rr", persistent))
    for rs in (table.RS1, table.RS2):
        engine.add_dest(KEY, DestSpec(rs, 80))
        engine.set_fwd(KEY, rs, 80, FwdState(ifindex=table.IFINDEX, dst_mac=table.RS_MACS[rs],
                                             src_mac=table.DIRECTOR_MAC))
    return engine


@pytest.mark.parametrize("factory", FACTORIES)
def test_probe_moves_the_scheduler_but_makes_no_connection(factory: table.EngineFactory) -> None:
    engine = rr_service(factory, persistent=300)
    other = table.tcp(sport=41000, dst="198.18.0.9")  # not the VIP: a probe does not look the service up
    assert engine.sched_probe(KEY, other, 0) == (table.RS2, 80)  # type: ignore[attr-defined]
    assert engine.sched_probe(KEY, other, 0) == (table.RS1, 80)  # type: ignore[attr-defined]  # no template
    assert engine.connections(0) == []  # type: ignore[attr-defined]
    # The packet path goes on from rr's cursor.
    assert engine.process(table.tcp(sport=41001), 0).l2hdr[:6] == table.RS_MACS[table.RS2]  # type: ignore[attr-defined]


@pytest.mark.parametrize("factory", FACTORIES)
def test_probe_without_destination_and_errors(factory: table.EngineFactory) -> None:
    engine = rr_service(factory)
    for rs in (table.RS1, table.RS2):
        engine.edit_dest(KEY, DestSpec(rs, 80, weight=0))  # type: ignore[attr-defined]
    assert engine.sched_probe(KEY, table.tcp(), 0) is None  # type: ignore[attr-defined]
    with pytest.raises(EngineError) as exc:
        engine.sched_probe(ServiceKey(6, table.VIP, 81), table.tcp(), 0)  # type: ignore[attr-defined]
    assert exc.value.errno_name == "ESRCH"
    for bad in (table.udp(), table.tcp()[:30], b""):
        with pytest.raises(EngineError) as exc:
            engine.sched_probe(KEY, bad, 0)  # type: ignore[attr-defined]
        assert exc.value.errno_name == "EINVAL"
