"""Engines and the kernel oracles (tests/oracles) in lockstep: the same operations on both,
compared after each (tests/unit/test_sched_oracle.py, test_sched_list.py).

Lockstep plays a DR TCP service on an engine (real packets through engine.process) and on the
oracle's Service: destinations added, edited, deleted (dest_addr(i), MAC ending in i), SYNs from
chosen clients, ACK/FIN/RST on live flows, time passing. Connection expiry is decided here from
the kernel's TCP timeouts (ip_vs_proto_tcp.c's tcp_timeouts, stated below, not read from an
engine): an entry touched at t in state s dies at t + timeout(s); the engine must agree, or the
listings differ. lblc/lblcr time: the oracle's clock runs in jiffies at HZ 250, advanced with the
engine's milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

import packet_table as table
from lb.consts import definitions
from lb.engine import FwdState, Verdict
from lb.model import DestSpec, ServiceKey, ServiceSpec
from oracles import Connection, PacketInfo, Service
from oracles.conn import TcpEvent
from oracles.kernel_config import HZ

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

    def syn(self, client_host: int = 10) -> int | None:
        """A new connection from 192.0.2.<client_host>; returns the chosen destination's i."""
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
        return got

    def syns(self, n: int, client_host: int = 10) -> list[int | None]:
        """n new connections, the listings compared after each; the choices."""
        chosen = []
        for _ in range(n):
            chosen.append(self.syn(client_host))
            self.check()
        return chosen

    def release(self, i: int) -> None:
        """Close every live flow of destination i (ACK, RST: CLOSE) and let them expire (10 s):
        its connection count drops to 0 through the unbinds, without a control operation."""
        dest = self.svc.find_dest(dest_addr(i), 80)
        for flow in [f for f in self.flows if f.conn.dest is dest]:
            self._send(flow, "ack")
            self._send(flow, "rst")
        self.advance(TCP_TIMEOUT_S["CLOSE"] * 1000)

    def segment(self, which: int, event: TcpEvent) -> None:
        """A client segment on a live connection whose destination is listed (a deleted one's
        packets are the sysctl expire_nodest_conn's business, not the schedulers')."""
        flows = [f for f in self.flows if f.conn.dest.available]
        if flows:
            self._send(flows[which % len(flows)], event)

    def _send(self, flow: Flow, event: TcpEvent) -> None:
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
