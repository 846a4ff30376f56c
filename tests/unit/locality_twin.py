"""One engine and the kernel oracle (tests/oracles) driven with the same operations, for lblc and lblcr.

Every scheduling choice is returned from both sides so a test can compare them. Time: the oracle
keeps jiffies at HZ 250 (4 ms each), the engines milliseconds; a Twin starts both at 0 and
advances both by the same whole number of jiffies. The engine's timer is armed at 0 (expire(0)
right after the service is made), as the kernel arms it when the scheduler is bound.

Two ways in:
- flow(): a TCP SYN from a new client to the VIP through engine.process (a real connection, which
  counts on its destination), and oracle.new_flow with the same packet;
- probe(daddr): engine.sched_probe with a packet to any destination address (what a fwmark
  service will bring, issue 14: the caches' keys), and oracle.schedule: a choice, no connection.
Connection expiry follows the engine's timeouts: after each advance, the oracle's connections
whose engine twins are gone expire too (the kernel's timeouts are the engine's; what is compared
here is the scheduler).
"""

from __future__ import annotations

import functools
import itertools
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import packet_table as table  # noqa: E402
from lb.engine import FwdState, Verdict  # noqa: E402
from lb.model import DestSpec, ServiceKey, ServiceSpec  # noqa: E402
from lb.pyengine.csum import internet_checksum  # noqa: E402
from oracles import Clock, PacketInfo, Service  # noqa: E402
from oracles.conn import Connection  # noqa: E402

KEY = ServiceKey(6, table.VIP, 80)
MS_PER_JIFFY = 4  # HZ 250 (Debian's CONFIG_HZ)


def dest_addr(i: int) -> str:
    return f"203.0.113.{21 + i}"


def dest_mac(i: int) -> bytes:
    return bytes([2, 0, 0, 0, 0x0C, i])


@functools.cache
def _syn_template(sport: int) -> bytes:
    return table.tcp(sport=sport, src="192.0.2.200", flags="S")


def syn_to(daddr: str, sport: int = 40000) -> bytes:
    """A SYN from 192.0.2.200:sport to daddr:80, built by scapy once per port and re-addressed here (the
    probes send tens of thousands): the destination address replaced and the IP header checksum redone
    (the TCP checksum is left stale: nothing on the scheduling path reads it)."""
    packet = bytearray(_syn_template(sport))
    packet[16:20] = socket.inet_aton(daddr)
    packet[10:12] = b"\0\0"
    packet[10:12] = internet_checksum(bytes(packet[:20])).to_bytes(2, "big")
    return bytes(packet)


@dataclass
class Flow:
    caddr: str
    cport: int
    conn: Connection  # the oracle's twin


class Twin:
    def __init__(self, engine: object, sched: str) -> None:
        self.engine = engine
        self.oracle = Service(sched, clock=Clock())
        self.now_ms = 0
        engine.add_service(ServiceSpec(KEY, sched))  # type: ignore[attr-defined]
        engine.expire(0)  # type: ignore[attr-defined]  # the timer, armed at bind time as the kernel's
        self.flows: list[Flow] = []
        self._clients = itertools.count()

    # ---- configuration ----------------------------------------------------------------------

    def present(self, i: int) -> bool:
        return self.oracle.find_dest(dest_addr(i), 80) is not None

    def add(self, i: int, weight: int, upper: int = 0) -> None:
        """Add destination i (to the head of the list) with a weight and an upper threshold."""
        self.engine.add_dest(KEY, DestSpec(dest_addr(i), 80, "route", weight, upper))  # type: ignore[attr-defined]
        self.engine.set_fwd(KEY, dest_addr(i), 80, FwdState(  # type: ignore[attr-defined]
            ifindex=3, dst_mac=dest_mac(i), src_mac=table.DIRECTOR_MAC))
        self.oracle.add_dest(dest_addr(i), 80, weight, u_threshold=upper)

    def edit(self, i: int, weight: int) -> None:
        self.engine.edit_dest(KEY, DestSpec(dest_addr(i), 80, "route", weight))  # type: ignore[attr-defined]
        self.oracle.edit_dest(dest_addr(i), 80, weight)

    def delete(self, i: int) -> None:
        self.engine.del_dest(KEY, dest_addr(i), 80)  # type: ignore[attr-defined]
        self.oracle.del_dest(dest_addr(i), 80)
        self.oracle.expire_trash()  # lbd frees an unreferenced destination at once

    # ---- traffic -----------------------------------------------------------------------------

    def _client(self) -> tuple[str, int]:
        n = next(self._clients)
        return f"192.0.2.{1 + n // 20000}", 20000 + n % 20000

    def flow(self, hold: bool = False) -> tuple[str | None, str | None]:
        """A new client's SYN to the VIP (and, with hold, its ACK: ESTABLISHED). Returns (engine's
        real server, oracle's), None for no destination."""
        caddr, cport = self._client()
        action = self.engine.process(table.tcp(sport=cport, src=caddr, flags="S"), self.now_ms)  # type: ignore[attr-defined]
        got: str | None = None
        if action.verdict == Verdict.XMIT_L2:
            got = dest_addr(action.l2hdr[5])
        else:
            assert action.verdict == Verdict.ANSWER, action
        conn = self.oracle.new_flow(PacketInfo.of(caddr, table.VIP, cport, 80))
        want = None if conn is None else str(conn.dest.addr)
        if conn is not None and got is not None:
            flow = Flow(caddr, cport, conn)
            self.flows.append(flow)
            if hold:
                self.segment(flow, "A")
        return got, want

    def segment(self, flow: Flow, flags: str) -> None:
        """A later client segment of a flow (A: ACK, FA: FIN): its state moves on both sides, unless
        its destination is deleted (then the engine drops it, and the kernel too)."""
        action = self.engine.process(table.tcp(sport=flow.cport, src=flow.caddr, flags=flags, seq=1001, ack=1),  # type: ignore[attr-defined]
                                     self.now_ms)
        if not flow.conn.dest.available:
            assert action.verdict == Verdict.DROP, action
            return
        assert action.verdict == Verdict.XMIT_L2, action
        flow.conn.tcp_segment("INPUT_ONLY", "fin" if "F" in flags else "ack")

    def probe(self, daddr: str, sport: int = 40000) -> tuple[str | None, str | None]:
        got = self.engine.sched_probe(KEY, syn_to(daddr, sport), self.now_ms)  # type: ignore[attr-defined]
        want = self.oracle.schedule(PacketInfo.of("192.0.2.200", daddr, sport, 80))
        return (None if got is None else got[0]), (None if want is None else str(want.addr))

    # ---- time --------------------------------------------------------------------------------

    def advance(self, ms: int) -> None:
        assert ms % MS_PER_JIFFY == 0, "whole jiffies only"
        self.now_ms += ms
        self.engine.expire(self.now_ms)  # type: ignore[attr-defined]
        self.oracle.clock.advance(jiffies=ms // MS_PER_JIFFY)
        alive = {(c.caddr, c.cport) for c in self.engine.connections(self.now_ms)}  # type: ignore[attr-defined]
        for flow in [f for f in self.flows if (f.caddr, f.cport) not in alive]:
            flow.conn.expire()
            self.flows.remove(flow)
        self.oracle.expire_trash()

    def counts(self) -> tuple[list[tuple[str, int, int]], list[tuple[str, int, int]]]:
        """(address, active, inactive) of every listed destination, kernel order: engine's, oracle's."""
        (service,) = self.engine.services()  # type: ignore[attr-defined]
        got = [(d.spec.addr, d.active, d.inactive) for d in service.dests]
        want = [(str(d.addr), d.activeconns, d.inactconns) for d in self.oracle.destinations]
        return got, want
