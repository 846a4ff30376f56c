"""rr and wlc in both engines against small oracles written here (independent of lb/pyengine).

Each example builds a random table of destinations with weights, upper thresholds
and active/inactive connection counts by sending packets through the engine, then
sends new SYNs and checks each is scheduled where the oracle says, as the kernel's
ip_vs_rr.c / ip_vs_wlc.c would (destination list most recently added first; OVERLOAD
set when a new connection brings a destination to its upper threshold).

Which entries are active is the kernel's rule, read from ip_vs_proto_tcp.c (6.1):
set_tcp_state moves a connection between ActiveConn and InActConn by
tcp_state_active_table, which counts SYN_SENT, SYN_RECV, ESTABLISHED and SYNACK as
active. So a SYN alone makes an active entry (SYN_RECV), SYN then ACK too
(ESTABLISHED), and SYN then FIN an inactive one (TIME_WAIT, by the INPUT-ONLY table
of a DR director); every probe SYN adds an active entry to the destination it picks.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from fractions import Fraction

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import packet_table as table
from lb.engine import FwdState, Verdict
from lb.model import DestSpec, ServiceKey, ServiceSpec

FACTORIES = [
    pytest.param(f, id=f.id, marks=[pytest.mark.skip(reason=f.unavailable)] if f.make is None else [])
    for f in table.engine_factories()
]
KEY = ServiceKey(6, table.VIP, 80)
MAX_DESTS = 5


def dest_addr(i: int) -> str:
    return f"203.0.113.{21 + i}"


def dest_mac(i: int) -> bytes:
    return bytes([2, 0, 0, 0, 0x0C, i])


@dataclass
class OracleDest:
    name: int  # index in add order
    weight: int
    upper: int
    active: int = 0
    inactive: int = 0
    overloaded: bool = False

    def eligible(self) -> bool:
        return self.weight > 0 and not self.overloaded


def oracle_rr(dests: list[OracleDest], last: int | None) -> int | None:
    """Kernel list position of the next pick: scan the positions after `last` (the list
    head when None) round the ring once, including `last` itself at the end."""
    n = len(dests)
    positions = range(n) if last is None else [(last + k) % n for k in range(1, n + 1)]
    return next((p for p in positions if dests[p].eligible()), None)


def oracle_wlc(dests: list[OracleDest]) -> int | None:
    """The eligible destination with the smallest (256*active + inactive) / weight; the first on ties."""
    best: tuple[Fraction, int] | None = None
    for position, d in enumerate(dests):
        if not d.eligible():
            continue
        load = (Fraction(256 * d.active + d.inactive, d.weight), position)
        if best is None or load[0] < best[0]:
            best = load
    return None if best is None else best[1]


class Clients:
    """A fresh (client address, port) for every connection."""

    def __init__(self) -> None:
        self._ids = itertools.count()

    def next(self) -> tuple[str, int]:
        n = next(self._ids)
        return f"192.0.2.{10 + n // 1000}", 20000 + n % 1000


def syn(client: tuple[str, int]) -> bytes:
    return table.tcp(sport=client[1], src=client[0], flags="S")


def ack(client: tuple[str, int]) -> bytes:
    return table.tcp(sport=client[1], src=client[0], flags="A", seq=1001, ack=1)


def fin(client: tuple[str, int]) -> bytes:
    return table.tcp(sport=client[1], src=client[0], flags="FA", seq=1001, ack=1)


def chosen_position(action: object, order: list[int]) -> int | None:
    if action.verdict == Verdict.ANSWER:  # type: ignore[attr-defined]
        return None
    assert action.verdict == Verdict.XMIT_L2, action  # type: ignore[attr-defined]
    name = action.l2hdr[5]  # type: ignore[attr-defined]  # last byte of dest_mac
    return order.index(name)


dest_rows = st.lists(
    st.tuples(
        # weight: small ones, and the kernel's range up to INT_MAX (ipvsadm 1.31 accepts it)
        st.one_of(st.integers(0, 4), st.sampled_from([65535, 65536, 2**31 - 2, 2**31 - 1])),
        st.integers(0, 3),  # active connections to build
        st.integers(0, 3),  # inactive connections to build
        st.sampled_from([0, 0, 0, 1, 2, 3, 4, 6]),  # upper threshold applied after building
    ),
    min_size=1,
    max_size=MAX_DESTS,
)


@pytest.mark.parametrize("sched", ["rr", "wlc"])
@pytest.mark.parametrize("factory", FACTORIES)
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture],
          derandomize=True)
@given(rows=dest_rows, build_order=st.randoms(use_true_random=False), probes=st.integers(1, 8))
def test_next_syn_goes_where_the_oracle_says(factory: table.EngineFactory, sched: str, rows, build_order, probes) -> None:  # type: ignore[no-untyped-def]
    engine = factory.make(0)  # type: ignore[operator]
    engine.add_service(ServiceSpec(KEY, sched))
    for i in range(len(rows)):
        engine.add_dest(KEY, DestSpec(dest_addr(i), 80, "route", 1))
        engine.set_fwd(KEY, dest_addr(i), 80, FwdState(ifindex=3, dst_mac=dest_mac(i), src_mac=table.DIRECTOR_MAC))
    order = list(reversed(range(len(rows))))  # kernel order: most recently added first
    oracle = [OracleDest(name, weight=rows[name][0], upper=rows[name][3]) for name in order]
    clients = Clients()

    # Build the connection counts: only the target is eligible while its entries are made.
    targets = [name for name, (_, active, inactive, _) in enumerate(rows) for _ in range(active + inactive)]
    build_order.shuffle(targets)
    made = {name: [0, 0] for name in range(len(rows))}
    last_position: int | None = None
    for name in targets:
        for other in range(len(rows)):
            engine.edit_dest(KEY, DestSpec(dest_addr(other), 80, "route", 1 if other == name else 0))
        active_wanted = made[name][0] < rows[name][1]
        client = clients.next()
        assert chosen_position(engine.process(syn(client), 0), order) == order.index(name)
        if active_wanted:
            engine.process(ack(client), 0)  # SYN_RECV -> ESTABLISHED: still active
            made[name][0] += 1
        else:
            engine.process(fin(client), 0)  # SYN_RECV -> TIME_WAIT: inactive
            made[name][1] += 1
        last_position = order.index(name)
    for d in oracle:
        d.active, d.inactive = made[d.name]

    for name, (weight, _, _, upper) in enumerate(rows):
        engine.edit_dest(KEY, DestSpec(dest_addr(name), 80, "route", weight, upper, 0))
    (service,) = engine.services()
    assert [(int(d.spec.addr.rsplit(".", 1)[1]) - 21, d.active, d.inactive) for d in service.dests] == [
        (d.name, d.active, d.inactive) for d in oracle
    ]

    for _ in range(probes):
        expected = oracle_wlc(oracle) if sched == "wlc" else oracle_rr(oracle, last_position)
        got = chosen_position(engine.process(syn(clients.next()), 0), order)
        assert got == expected, f"{sched}: table {[(d.name, d.weight, d.active, d.inactive, d.upper, d.overloaded) for d in oracle]}"
        if expected is not None:
            d = oracle[expected]
            d.active += 1  # the probe's entry is in SYN_RECV: active
            if d.upper and d.active + d.inactive >= d.upper:
                d.overloaded = True
            last_position = expected


def test_oracles_agree_with_hand_worked_examples() -> None:
    """The oracles themselves, on cases worked out by hand from ip_vs_rr.c / ip_vs_wlc.c."""
    d = [OracleDest(0, 1, 0), OracleDest(1, 0, 0), OracleDest(2, 2, 0)]
    assert oracle_rr(d, None) == 0 and oracle_rr(d, 0) == 2 and oracle_rr(d, 2) == 0
    d[0].overloaded = True
    assert oracle_rr(d, 2) == 2  # wraps round to the cursor itself
    w = [OracleDest(0, 1, 0, active=1), OracleDest(1, 3, 0, inactive=200), OracleDest(2, 1, 0, inactive=100)]
    assert oracle_wlc(w) == 1  # 200/3 < 100/1 < 256/1
    w[1].inactive = 300
    assert oracle_wlc(w) == 1  # 300/3 == 100/1: the earlier one stays
