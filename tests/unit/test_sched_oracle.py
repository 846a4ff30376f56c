"""Every scheduler in both engines against the kernel oracles of tests/oracles (Debian 6.1.192).

One property test per (engine, scheduler of the registry, twos excepted: its choices are random):
hypothesis writes a script of control operations (destinations added, edited, deleted,
re-added, with weights up to INT_MAX and upper/lower thresholds), connections (SYNs from
varied clients, then ACK, FIN, RST on them) and time passing; the script is played on the
engine (real packets through engine.process, a DR service) and on the oracle's Service in
lockstep. After every step:

- a new connection went to the destination the oracle's scheduler chose (or, both, nowhere:
  the engine answers ICMP port unreachable);
- every listed destination, in the kernel's list order, has the oracle's weight,
  ActiveConn, InActConn and OVERLOAD flag.

So this checks the schedulers and, under them, the shared control path: the connection
accounting (totalconns, the active TCP states), the OVERLOAD rules (set and cleared only where
__ip_vs_update_dest, ip_vs_bind_dest and ip_vs_unbind_dest evaluate it) and the trash.

Connection expiry is decided here from the kernel's TCP timeouts (ip_vs_proto_tcp.c's
tcp_timeouts, stated below, not read from an engine): an entry touched at t in state s dies at
t + timeout(s); the engine must agree, or the listings differ. lblc/lblcr time: the oracle's
clock runs in jiffies at HZ 250, advanced with the engine's milliseconds.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import packet_table as table  # noqa: E402
from lb.consts import definitions  # noqa: E402
from lb.engine import FwdState, Verdict  # noqa: E402
from lb.model import DestSpec, ServiceKey, ServiceSpec  # noqa: E402
from oracles import Connection, PacketInfo, Service  # noqa: E402
from oracles.conn import TcpEvent  # noqa: E402
from oracles.kernel_config import HZ  # noqa: E402

FACTORIES = [
    pytest.param(f, id=f.id, marks=[pytest.mark.skip(reason=f.unavailable)] if f.make is None else [])
    for f in table.engine_factories()
]
KEY = ServiceKey(6, table.VIP, 80)
POOL = 6  # destination addresses a script draws from
INT_MAX = 2**31 - 1
DEST_F_OVERLOAD = definitions().defines["LB_DEST_F_OVERLOAD"]
# Random in the kernel (prandom): compared by distribution elsewhere, not choice by choice.
RANDOM_SCHEDULERS = frozenset({"twos"})
SCHEDULERS = [s for s in definitions().schedulers if s not in RANDOM_SCHEDULERS]

# tcp_timeouts[] of ip_vs_proto_tcp.c (6.1), seconds, by IPVS TCP state.
TCP_TIMEOUT_S = {
    "NONE": 2, "ESTABLISHED": 900, "SYN_SENT": 120, "SYN_RECV": 60, "FIN_WAIT": 120, "TIME_WAIT": 120,
    "CLOSE": 10, "CLOSE_WAIT": 60, "LAST_ACK": 30, "LISTEN": 120, "SYNACK": 120,
}
EVENT_FLAGS: dict[TcpEvent, str] = {"ack": "A", "fin": "FA", "rst": "R"}


def dest_addr(i: int) -> str:
    return f"203.0.113.{21 + i}"


def dest_mac(i: int) -> bytes:
    return bytes([2, 0, 0, 0, 0x0C, i])


@dataclass
class Flow:
    """One connection, as both sides see it."""

    client: tuple[str, int]
    conn: Connection  # the oracle's
    expires_ms: int


class Lockstep:
    """An engine and an oracle Service driven by the same operations, compared after each."""

    def __init__(self, engine: object, sched: str) -> None:
        self.engine = engine
        self.sched = sched
        self.svc = Service(sched, port=80)
        engine.add_service(ServiceSpec(KEY, sched))  # type: ignore[attr-defined]
        self.now_ms = 0
        self.flows: list[Flow] = []
        self.next_port = 20000
        self.log: list[str] = []

    # -- control ---------------------------------------------------------------------------

    def add(self, i: int, weight: int, upper: int, lower: int) -> None:
        if self.svc.find_dest(dest_addr(i), 80) is not None:
            return
        self.log.append(f"add {i} w={weight} x={upper} y={lower}")
        self.svc.add_dest(dest_addr(i), 80, weight, upper, lower)
        self.engine.add_dest(KEY, DestSpec(dest_addr(i), 80, "route", weight, upper, lower))  # type: ignore[attr-defined]
        self.engine.set_fwd(KEY, dest_addr(i), 80, FwdState(ifindex=3, dst_mac=dest_mac(i),  # type: ignore[attr-defined]
                                                            src_mac=table.DIRECTOR_MAC))

    def edit(self, i: int, weight: int, upper: int, lower: int) -> None:
        if self.svc.find_dest(dest_addr(i), 80) is None:
            return
        self.log.append(f"edit {i} w={weight} x={upper} y={lower}")
        self.svc.edit_dest(dest_addr(i), 80, weight, upper, lower)
        self.engine.edit_dest(KEY, DestSpec(dest_addr(i), 80, "route", weight, upper, lower))  # type: ignore[attr-defined]

    def delete(self, i: int) -> None:
        if self.svc.find_dest(dest_addr(i), 80) is None:
            return
        self.log.append(f"del {i}")
        self.svc.del_dest(dest_addr(i), 80)
        self.engine.del_dest(KEY, dest_addr(i), 80)  # type: ignore[attr-defined]
        self.svc.expire_trash()  # the engine frees an unreferenced destination at once

    # -- traffic ---------------------------------------------------------------------------

    def syn(self, client_host: int) -> None:
        client = (f"192.0.2.{client_host}", self.next_port)
        self.next_port += 1
        pkt = PacketInfo.of(client[0], table.VIP, client[1], 80)
        expected = self.svc.schedule(pkt)
        action = self.engine.process(table.tcp(sport=client[1], src=client[0], flags="S"), self.now_ms)  # type: ignore[attr-defined]
        got = self._chosen(action)
        want = None if expected is None else int(str(expected.addr).rsplit(".", 1)[1]) - 21
        self.log.append(f"syn {client} -> oracle {want}, engine {got}")
        assert got == want, self._where(f"SYN from {client}: engine chose {got}, the kernel oracle {want}")
        if expected is not None:
            # new_flow() without its schedule(): bind, then the SYN's transition (NONE -> SYN_RECV)
            conn = self.svc.bind_connection(expected)
            conn.tcp_segment("INPUT_ONLY", "syn")
            self.flows.append(Flow(client, conn, self.now_ms + TCP_TIMEOUT_S[conn.state] * 1000))

    def segment(self, which: int, event: TcpEvent) -> None:
        """A client segment on a live connection whose destination is listed (a deleted one's
        packets are the sysctl expire_nodest_conn's business, not the schedulers')."""
        flows = [f for f in self.flows if f.conn.dest.available]
        if not flows:
            return
        flow = flows[which % len(flows)]
        action = self.engine.process(table.tcp(sport=flow.client[1], src=flow.client[0],  # type: ignore[attr-defined]
                                               flags=EVENT_FLAGS[event], seq=1001, ack=1), self.now_ms)
        assert action.verdict == Verdict.XMIT_L2, self._where(f"{event} on {flow.client}: {action}")
        flow.conn.tcp_segment("INPUT_ONLY", event)
        flow.expires_ms = self.now_ms + TCP_TIMEOUT_S[flow.conn.state] * 1000
        self.log.append(f"{event} {flow.client} -> {flow.conn.state}")

    def advance(self, ms: int) -> None:
        self.now_ms += ms
        self.svc.clock.advance(jiffies=self.now_ms * HZ // 1000 - self.svc.clock.jiffies)
        for flow in sorted((f for f in self.flows if f.expires_ms <= self.now_ms), key=lambda f: f.expires_ms):
            flow.conn.expire()
        self.flows = [f for f in self.flows if f.expires_ms > self.now_ms]
        self.svc.expire_trash()
        self.engine.expire(self.now_ms)  # type: ignore[attr-defined]
        self.log.append(f"advance {ms} ms -> t={self.now_ms}")

    # -- comparison ------------------------------------------------------------------------

    def check(self) -> None:
        (service,) = self.engine.services()  # type: ignore[attr-defined]
        flags = self.engine.dest_flags(KEY)  # type: ignore[attr-defined]
        got = [(d.spec.addr, d.spec.weight, d.active, d.inactive,
                bool(flags[(d.spec.addr, d.spec.port)] & DEST_F_OVERLOAD)) for d in service.dests]
        want = [(str(d.addr), d.weight, d.activeconns, d.inactconns, d.overloaded) for d in self.svc.destinations]
        assert got == want, self._where("listing (addr, weight, active, inactive, overloaded) differs:\n"
                                        f"  engine {got}\n  oracle {want}")

    @staticmethod
    def _chosen(action: object) -> int | None:
        if action.verdict == Verdict.ANSWER:  # type: ignore[attr-defined]
            return None
        assert action.verdict == Verdict.XMIT_L2, action  # type: ignore[attr-defined]
        return int(action.l2hdr[5])  # type: ignore[attr-defined]  # last byte of dest_mac

    def _where(self, message: str) -> str:
        return f"{self.sched}: {message}\nscript so far:\n  " + "\n  ".join(self.log[-40:])


weights = st.one_of(st.integers(0, 5), st.sampled_from([7, 65535, 65536, INT_MAX - 1, INT_MAX]))


@st.composite
def thresholds(draw: st.DrawFn) -> tuple[int, int]:
    upper = draw(st.sampled_from([0, 0, 0, 1, 2, 3, 4, 5, 8]))
    lower = draw(st.integers(0, upper)) if upper and draw(st.booleans()) else 0
    return upper, lower


operation = st.one_of(
    st.tuples(st.just("add"), st.integers(0, POOL - 1), weights, thresholds()),
    st.tuples(st.just("edit"), st.integers(0, POOL - 1), weights, thresholds()),
    st.tuples(st.just("del"), st.integers(0, POOL - 1)),
    st.tuples(st.just("syn"), st.integers(1, 254)),
    st.tuples(st.just("syn"), st.integers(1, 254)),
    st.tuples(st.just("syn"), st.integers(1, 254)),
    st.tuples(st.just("segment"), st.integers(0, 1000), st.sampled_from(["ack", "ack", "fin", "rst"])),
    st.tuples(st.just("advance"), st.sampled_from([4, 1_000, 10_000, 30_000, 60_000, 120_000, 900_000])),
)


def play(lock: Lockstep, ops: list[tuple]) -> None:
    for op in ops:
        kind = op[0]
        if kind == "add":
            lock.add(op[1], op[2], *op[3])
        elif kind == "edit":
            lock.edit(op[1], op[2], *op[3])
        elif kind == "del":
            lock.delete(op[1])
        elif kind == "syn":
            lock.syn(op[1])
        elif kind == "segment":
            lock.segment(op[1], op[2])
        else:
            lock.advance(op[1])
        lock.check()


@pytest.mark.parametrize("sched", SCHEDULERS)
@pytest.mark.parametrize("factory", FACTORIES)
@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(setup=st.lists(st.tuples(st.integers(0, POOL - 1), weights, thresholds()), min_size=1, max_size=POOL),
       ops=st.lists(operation, min_size=1, max_size=60))
def test_engine_follows_the_kernel_oracle(factory: table.EngineFactory, sched: str,
                                          setup: list[tuple[int, int, tuple[int, int]]], ops: list[tuple]) -> None:
    lock = Lockstep(factory.make(0), sched)  # type: ignore[operator]
    for i, weight, (upper, lower) in setup:
        lock.add(i, weight, upper, lower)
    lock.check()
    play(lock, ops)


@pytest.mark.parametrize("factory", FACTORIES)
def test_overload_cycle_with_thresholds(factory: table.EngineFactory) -> None:
    """A hand-written cycle on wlc, -x 4 -y 2 on the only destination of weight > 0: it takes
    connections up to 4 (OVERLOAD set by the bind that reaches u), none while flagged (the
    engine answers), flagged still at 3 and 2 connections (between the thresholds), cleared by
    the unbind from 2 to 1 (l_threshold_val)."""
    lock = Lockstep(factory.make(0), "wlc")  # type: ignore[operator]
    lock.add(0, 0, 0, 0)
    lock.add(1, 5, 4, 2)
    for _ in range(4):
        lock.syn(10)
        lock.check()
    assert [d.overloaded for d in lock.svc.destinations] == [True, False]
    lock.syn(10)
    assert len(lock.flows) == 4  # nowhere to go
    for n in range(3):  # release 1's connections one by one: ACK, RST -> CLOSE (10 s), expiry
        lock.segment(0, "ack")  # the oldest live flow, always one of 1's
        lock.segment(0, "rst")  # (in SYN_RECV a RST changes nothing)
        assert lock.flows[0].conn.state == "CLOSE"
        lock.advance(10_000 + n)
        lock.check()
        assert lock.svc.destinations[0].overloaded == (n < 2)
    lock.syn(10)
    assert len(lock.flows) == 2 and lock.flows[-1].conn.dest is lock.svc.destinations[0]


@pytest.mark.parametrize("sched", ["lc", "wlc"])
@pytest.mark.parametrize("factory", FACTORIES)
def test_active_connection_weighs_257_inactive(factory: table.EngineFactory, sched: str) -> None:
    """Debian 6.1.192's overhead is (active << 8) + totalconns: A (list head) with 1 active
    connection weighs 257, B with 256 inactive ones 256, so B gets the next connection; with
    the older active*256 + inactive both weigh 256 and the head, A, would keep it."""
    if sched not in definitions().schedulers:
        pytest.skip(f"{sched} is not in native/include/lb_sched_list.h yet")
    lock = Lockstep(factory.make(0), sched)  # type: ignore[operator]
    lock.add(0, 1, 0, 0)  # B
    lock.add(1, 1, 0, 0)  # A: list A, B
    lock.edit(1, 0, 0, 0)
    for n in range(256):  # B: 256 connections, SYN then FIN (TIME_WAIT: inactive)
        lock.syn(10)
        lock.segment(n, "fin")
    lock.edit(1, 1, 0, 0)
    lock.edit(0, 0, 0, 0)
    lock.syn(11)  # A: one connection in SYN_RECV, active
    lock.edit(0, 1, 0, 0)
    lock.check()
    a, b = lock.svc.destinations
    assert (a.conn_overhead, b.conn_overhead) == (257, 256)
    lock.syn(12)
    lock.check()
    assert lock.flows[-1].conn.dest is b
