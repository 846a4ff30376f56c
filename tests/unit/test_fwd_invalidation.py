"""Forwarding state is re-resolved on every destination and service edit (issue 3; IPVS resets its
per-destination route cache on such changes, and the field report's bug lived in a stale one)."""

from __future__ import annotations

from lb.director import Director
from lb.engine import FwdState
from lb.fastpath import CEngine
from lb.fwdstate import Resolution

VIP = "10.0.0.100"


def test_service_and_destination_edits_resolve_afresh() -> None:
    calls: list[str] = []

    def resolver(addr: str) -> Resolution:
        calls.append(addr)
        return Resolution(FwdState(ifindex=2, dst_mac=b"\x02" * 6, src_mac=b"\x02" * 6, saddr="10.0.0.2"), "eth0")

    d = Director(CEngine(conn_max=64, hash_buckets=16), rules=None, resolver=resolver)
    key = {"proto": "tcp", "addr": VIP, "port": 80}
    d.handle("add_service", {**key, "sched": "rr"})
    for rs in ("10.0.0.11", "10.0.0.12"):
        d.handle("add_dest", {"service": key, "dest": {"addr": rs, "port": 80, "fwd": "tunnel"}})
    assert sorted(calls) == ["10.0.0.11", "10.0.0.12"]
    calls.clear()
    d.handle("edit_service", {**key, "sched": "wlc"})
    assert sorted(calls) == ["10.0.0.11", "10.0.0.12"]
    calls.clear()
    d.handle("edit_dest", {"service": key, "dest": {"addr": "10.0.0.12", "port": 80, "fwd": "tunnel", "weight": 3}})
    assert calls == ["10.0.0.12"]
