"""Deleting services keeps the others listed in insertion order (lb_svc_del leaves a hole in the
C engine's list and compacts it once holes are half of it: every branch of that is crossed here)."""

from __future__ import annotations

import pytest

import packet_table as table
from lb.model import DestSpec, ServiceKey, ServiceSpec


@pytest.mark.parametrize("factory", [f for f in table.engine_factories() if f.make is not None and f.id != "c-inplace"],
                         ids=lambda f: f.id)
def test_listing_order_survives_deletes_and_compaction(factory: table.EngineFactory) -> None:
    engine = factory.make(64)  # type: ignore[operator]
    keys = [ServiceKey(6, f"10.9.{i // 250}.{1 + i % 250}", 80) for i in range(300)]
    for key in keys:
        engine.add_service(ServiceSpec(key, "rr"))
        engine.add_dest(key, DestSpec("10.8.0.1", 80, "route"))
    # Every third one, then most of the rest from the middle: holes past half of the list force a compaction.
    gone = set(keys[::3]) | set(keys[50:250])
    for key in keys:
        if key in gone:
            engine.del_service(key)
    kept = [k for k in keys if k not in gone]
    assert [s.spec.key for s in engine.services()] == kept
    # A deleted service's VIP is no longer one of the director's own (lb_local_vip_put freed its node);
    # a kept one still is.
    from scapy.all import IP, TCP, raw

    def syn_from(src: str) -> str:
        pkt = raw(IP(src=src, dst=kept[0].addr) / TCP(sport=40000, dport=80, flags="S"))
        return engine.process(pkt, 1000).reason.name

    assert keys[3] in gone and keys[1] in kept
    assert syn_from(keys[3].addr) != "LOCAL_SRC"
    assert syn_from(keys[1].addr) == "LOCAL_SRC"
    # Added after the deletes: at the end.
    late = ServiceKey(17, "10.9.0.1", 53)
    engine.add_service(ServiceSpec(late, "rr"))
    assert [s.spec.key for s in engine.services()] == [*kept, late]
    engine.clear()
    assert engine.services() == []
