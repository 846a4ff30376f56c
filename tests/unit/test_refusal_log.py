"""A full connection table is refused in a counted AND logged way (issue 8)."""

from __future__ import annotations

import logging

import pytest
from scapy.all import IP, TCP, raw

from lb.director import Director
from lb.engine import FwdState, Reason
from lb.fastpath import CEngine
from lb.model import DestSpec, ServiceKey, ServiceSpec


def test_table_full_is_counted_and_logged_once_per_tick(caplog: pytest.LogCaptureFixture) -> None:
    engine = CEngine(conn_max=4, hash_buckets=16)
    key = ServiceKey(6, "10.0.0.100", 80)
    engine.add_service(ServiceSpec(key, "rr"))
    engine.add_dest(key, DestSpec("10.0.0.11", 80))
    engine.set_fwd(key, "10.0.0.11", 80, FwdState(ifindex=2, dst_mac=b"\x02" * 6, src_mac=b"\x02" * 6))
    director = Director(engine, rules=None, resolver=None)
    director.estimate(now=0.0)  # baseline
    for p in range(1000, 1004):  # four established flows fill the table; early drop spares them
        for flags in ("S", "A"):
            engine.process(raw(IP(src="192.0.2.1", dst="10.0.0.100") / TCP(sport=p, dport=80, flags=flags)), 1000)
    reasons = [engine.process(raw(IP(src="192.0.2.1", dst="10.0.0.100") / TCP(sport=p, dport=80, flags="S")), 1000).reason
               for p in range(1004, 1007)]
    assert reasons.count(Reason.TABLE_FULL) == 3 and engine.counters()["table_full"] == 3
    with caplog.at_level(logging.WARNING, logger="lbd"):
        director.estimate(now=2.0)
        director.estimate(now=4.0)  # nothing new: no second line
    lines = [r.getMessage() for r in caplog.records if "table full" in r.getMessage()]
    assert lines == ["connection table full (4 entries): 3 new connections refused in the last tick "
                     "(raise lbd --conn-max, or shorten timeouts with lbadm --set)"]


def test_early_drops_are_counted_and_logged_once_per_tick(caplog: pytest.LogCaptureFixture) -> None:
    """A full table of half-open entries makes room (early drop): nothing refused, the drops logged."""
    engine = CEngine(conn_max=4)
    key = ServiceKey(6, "10.0.0.100", 80)
    engine.add_service(ServiceSpec(key, "rr"))
    engine.add_dest(key, DestSpec("10.0.0.11", 80))
    engine.set_fwd(key, "10.0.0.11", 80, FwdState(ifindex=2, dst_mac=b"\x02" * 6, src_mac=b"\x02" * 6))
    director = Director(engine, rules=None, resolver=None)
    director.estimate(now=0.0)
    reasons = [engine.process(raw(IP(src="192.0.2.1", dst="10.0.0.100") / TCP(sport=p, dport=80, flags="S")), 1000).reason
               for p in range(1000, 1007)]
    assert reasons == [Reason.FORWARDED] * 7
    assert engine.conn_stats() == {"entries": 4, "max": 4, "buckets": 1024, "droppable": 4, "early_drops": 3}
    with caplog.at_level(logging.WARNING, logger="lbd"):
        director.estimate(now=2.0)
        director.estimate(now=4.0)
    lines = [r.getMessage() for r in caplog.records if "early drop" in r.getMessage()]
    assert lines == ["connection table full (4 entries): 3 half-open or finished entries dropped to make room for "
                     "new connections in the last tick (early drop; a SYN flood, or raise lbd --conn-max)"]
