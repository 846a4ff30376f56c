"""Every row of tests/packet_table.py through every engine: verdict, reason, bytes, counters, state."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import packet_table as table  # noqa: E402
from lb.engine import Reason, Verdict  # noqa: E402

ROWS = table.build_rows()
FACTORIES = [
    pytest.param(f, id=f.id, marks=[pytest.mark.skip(reason=f.unavailable)] if f.make is None else [])
    for f in table.engine_factories()
]


def run_row(factory: table.EngineFactory, row: table.Row) -> object:
    engine = factory.make(row.setup.conn_max)  # type: ignore[operator]
    table.install_setup(engine, row.setup)
    for index, step in enumerate(row.steps):
        if isinstance(step, table.ConfigStep):
            table.apply_config_step(engine, step)
            continue
        where = f"row {row.id} step {index} ({step.note or step.reason})"
        action = engine.process(step.packet, step.now_ms)
        assert (action.verdict.name, action.reason.name) == (step.verdict, step.reason), where
        if step.verdict == "XMIT_L2":
            assert action.ifindex == step.ifindex, where
            assert action.l2hdr == step.l2hdr, where
            assert action.l2hdr + step.packet == step.frame, where
        else:
            assert action.l2hdr == b"", where
        assert action.out == step.out, where
    return engine


@pytest.mark.parametrize("factory", FACTORIES)
@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_row(factory: table.EngineFactory, row: table.Row) -> None:
    engine = run_row(factory, row)

    expected_counts = Counter(step.reason for step in row.packet_steps)
    assert table.reason_counts(engine.counters()) == dict(expected_counts)

    services = engine.services()
    got_dests = [
        table.DestExpect(
            (s.spec.key.proto, s.spec.key.addr, s.spec.key.port), d.spec.addr, d.spec.port,
            d.active, d.inactive, d.stats.conns, d.stats.inpkts, d.stats.inbytes, d.syn_retrans, d.handshakes, d.persist,
        )
        for s in services
        for d in s.dests
    ]
    assert got_dests == list(row.dests), "destinations (kernel order), counts and stats"
    got_services = [
        table.ServiceExpect((s.spec.key.proto, s.spec.key.addr, s.spec.key.port), s.stats.conns, s.stats.inpkts,
                            s.stats.inbytes)
        for s in services
    ]
    assert got_services == list(row.services)
    for s in services:  # DR never sees the server's side
        assert (s.stats.outpkts, s.stats.outbytes) == (0, 0)
        assert all((d.stats.outpkts, d.stats.outbytes) == (0, 0) for d in s.dests)

    conns = sorted(
        table.ConnExpect(c.proto, c.caddr, c.cport, c.vaddr, c.vport, c.daddr, c.dport, c.state, c.expires_ms)
        for c in engine.connections(row.check_ms)
    )
    assert conns == sorted(row.conns)


# Every reason direct routing can produce; tunnel, FULLNAT and SYN-proxy have their own.
DR_REASONS = {"FORWARDED", "NOT_IPV4", "MALFORMED", "BAD_CSUM", "FRAGMENT", "NOT_LB_PROTO", "NO_SERVICE", "NO_CONN",
              "NO_DEST", "TABLE_FULL", "DEST_UNAVAILABLE", "NO_L2", "ICMP"}


def test_table_covers_every_reason_and_verdict() -> None:
    reasons = {step.reason for row in ROWS for step in row.packet_steps}
    verdicts = {step.verdict for row in ROWS for step in row.packet_steps}
    assert DR_REASONS <= set(Reason.__members__)
    assert reasons == DR_REASONS
    assert verdicts == set(Verdict.__members__) - {"MANGLE"}  # DR never rewrites packets


def test_rows_are_self_contained() -> None:
    """Rows are plain data: the microbenchmark replays them without scapy or an engine."""
    for row in ROWS:
        for step in row.packet_steps:
            assert isinstance(step.packet, bytes) and isinstance(step.out, bytes)
            assert step.verdict in Verdict.__members__ and step.reason in Reason.__members__
        times = [s.now_ms for s in row.steps]
        assert times == sorted(times), f"{row.id}: time must not go backwards"
