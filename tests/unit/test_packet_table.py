"""Every row of tests/packet_table.py through every engine: verdict, reason, bytes, counters, state."""

from __future__ import annotations

from collections import Counter

import pytest

import packet_table as table
from lb.engine import Reason, Verdict

ROWS = table.build_rows()
FACTORIES = [
    pytest.param(f, id=f.id, marks=[pytest.mark.skip(reason=f.unavailable)] if f.make is None else [])
    for f in table.engine_factories()
]


def run_row(factory: table.EngineFactory, row: table.Row) -> object:
    engine = table.make_engine(factory, row.setup)
    table.install_setup(engine, row.setup)
    for index, step in enumerate(row.steps):
        if isinstance(step, table.ConfigStep):
            table.apply_config_step(engine, step)
            continue
        if isinstance(step, table.TimerStep):
            # A sixth element, the frag_mtu, only where the action leaves as fragments (table.TimerStep).
            got = [(a.verdict.name, a.reason.name, a.out, a.ifindex, a.l2hdr) + ((a.frag_mtu,) if a.frag_mtu else ())
                   for a in engine.timers(step.now_ms)]  # type: ignore[attr-defined]
            assert got == list(step.actions), f"row {row.id} step {index}: timers at {step.now_ms}"
            continue
        where = f"row {row.id} step {index} ({step.note or step.reason})"
        action = engine.process(step.packet, step.now_ms, step.mark)  # type: ignore[attr-defined]
        assert (action.verdict.name, action.reason.name) == (step.verdict, step.reason), where
        if step.verdict == "XMIT_L2":
            assert action.ifindex == step.ifindex, where
            assert action.l2hdr == step.l2hdr, where
            assert action.l2hdr + (action.out or step.packet) == step.frame, where
            assert action.frag_mtu == step.frag_mtu, where
        else:
            assert action.l2hdr == b"", where
            assert action.frag_mtu == 0, where
        assert action.out == step.out, where
    return engine


@pytest.mark.parametrize("factory", FACTORIES)
@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_row(factory: table.EngineFactory, row: table.Row) -> None:
    engine = run_row(factory, row)

    expected_counts = Counter(step.reason for step in row.packet_steps)
    expected_counts.update(dict(row.timer_counts))
    assert table.reason_counts(engine.counters()) == dict(expected_counts)  # type: ignore[attr-defined]

    services = engine.services()  # type: ignore[attr-defined]
    got_dests = [
        table.DestExpect(
            (s.spec.key.proto, s.spec.key.addr, s.spec.key.port), d.spec.addr, d.spec.port,
            d.active, d.inactive, d.stats.conns, d.stats.inpkts, d.stats.inbytes, d.syn_retrans, d.handshakes, d.persist,
            d.stats.outpkts, d.stats.outbytes,
        )
        for s in services
        for d in s.dests
    ]
    assert got_dests == list(row.dests), "destinations (kernel order), counts and stats"
    got_services = [
        table.ServiceExpect((s.spec.key.proto, s.spec.key.addr, s.spec.key.port), s.stats.conns, s.stats.inpkts,
                            s.stats.inbytes, s.stats.outpkts, s.stats.outbytes)
        for s in services
    ]
    assert got_services == list(row.services)
    if row.laddrs is not None:
        got_laddrs = [((s.spec.key.proto, s.spec.key.addr, s.spec.key.port), la.addr, la.conns)
                      for s in services for la in s.laddrs]
        assert got_laddrs == list(row.laddrs), "local addresses and their connection counts"
    if row.sp_stats is not None:
        got_sp = {k: v for k, v in engine.synproxy_stats().items() if v}  # type: ignore[attr-defined]
        assert got_sp == dict(row.sp_stats), "SYN-proxy counters"

    conns = sorted(
        table.ConnExpect(c.proto, c.caddr, c.cport, c.vaddr, c.vport, c.daddr, c.dport, c.state, c.expires_ms,
                         c.laddr, c.lport)
        for c in engine.connections(row.check_ms)  # type: ignore[attr-defined]
    )
    assert conns == sorted(row.conns)


# Reasons the table must produce somewhere.
# XMIT_FAILED is the adapters' (a send failed after the engine decided): no packet's own reason, it is
# checked by tests/unit/test_frag.py (lb_count_xmit_failed) and tests/netns/test_fragments.py.
ALL_REASONS = set(Reason.__members__) - {"XMIT_FAILED"}


def test_table_covers_every_reason_and_verdict() -> None:
    reasons = {step.reason for row in ROWS for step in row.packet_steps}
    verdicts = {step.verdict for row in ROWS for step in row.packet_steps}
    assert reasons == ALL_REASONS
    assert verdicts == set(Verdict.__members__) - {"MANGLE"}  # no method rewrites in place


def test_table_covers_every_rewrite() -> None:
    """One row (at least) per rewrite in and out per mode (the issue's list)."""
    tags = {tag for row in ROWS for tag in row.tags}
    ids = {row.id for row in ROWS}
    assert {"dr", "tun", "fnat", "toa", "icmp", "synproxy", "timers"} <= tags
    for needed in ("dr-syn", "tun-syn", "tun-frag-needed", "fnat-in-syn", "fnat-out-synack", "fnat-toa", "fnat-udp",
                   "icmp-fnat-in", "icmp-fnat-out", "tun-icmp", "icmp-frag-needed-dr", "sp-cookie", "sp-ack-opens",
                   "sp-handshake", "sp-translate", "sp-sack", "sp-timers"):
        assert needed in ids, needed


def test_rows_are_self_contained() -> None:
    """Rows are plain data: the microbenchmark replays them without scapy or an engine."""
    for row in ROWS:
        for step in row.packet_steps:
            assert isinstance(step.packet, bytes) and isinstance(step.out, bytes)
            assert step.verdict in Verdict.__members__ and step.reason in Reason.__members__
        times = [s.now_ms for s in row.steps]
        assert times == sorted(times), f"{row.id}: time must not go backwards"


def test_rows_count_connections_as_the_kernel() -> None:
    """Every row's ActiveConn/InActConn expectations follow from its live connections' states by the kernel's
    rule (table.ACTIVE_STATES, from tcp_state_active_table): TCP connections in an active state count as
    active, every other connection (UDP included) as inactive, templates in neither. Checked where the row
    looks at the table when its last packet left (no entry can be dead but not yet released)."""
    checked = 0
    for row in ROWS:
        if not row.steps or row.check_ms != row.steps[-1].now_ms:
            continue
        counted: Counter[tuple[object, ...]] = Counter()
        listed = {(d.service, d.addr, d.port) for d in row.dests}
        for c in row.conns:
            if c.cport == 0 and c.state in ("NONE", "ASSURED"):
                continue  # a persistence template
            active = c.proto == table.PROTO_TCP and c.state in table.ACTIVE_STATES
            key: tuple[object, ...] = ((c.proto, c.vaddr, c.vport), c.daddr, c.dport)
            if key not in listed:  # a connection of a port-zero service (to the client's port), whose
                # destination may be written with a port of its own (ignored by a persistent one)
                p0 = [k for k in listed if k[0] == (c.proto, c.vaddr, 0) and k[1] == c.daddr]
                key = p0[0] if len(p0) == 1 else ((c.proto, c.vaddr, 0), c.daddr, 0)
            fwm = [k for k in listed if k[0][0] == 0 and k[1] == c.daddr]
            if key not in listed and len(fwm) == 1:  # of a fwmark service: its destination with that address
                key = fwm[0]
            counted[key + (active,)] += 1
        for d in row.dests:
            key = (d.service, d.addr, d.port)
            assert (d.active, d.inactive) == (counted[key + (True,)], counted[key + (False,)]), (row.id, d.addr)
            checked += 1
    assert checked > 100


def test_reference_siphash() -> None:
    """The table's own SipHash-2-4 against the paper's test vectors (key 00..0f)."""
    key = (int.from_bytes(bytes(range(8)), "little"), int.from_bytes(bytes(range(8, 16)), "little"))
    assert table._siphash24(key, b"") == 0x726FDB47DD0E0E31
    assert table._siphash24(key, bytes(range(15))) == 0xA129CA6149BE45E5
