"""The hashing schedulers (sh, dh, mh) of both engines against tests/oracles, over random scripts.

tests/oracles models Debian's 6.1.192 kernel (its README); the engines must pick the very real
server the oracle picks for every packet, after any sequence of the control operations an
operator can make: destinations added (the list is newest first), re-added from the trash, edited
(weight), deleted, the scheduler flags changed (-E ... -b), connections expiring. Each destination
has an upper threshold fixed for the whole example (thresholds never change, so OVERLOAD follows
the same rule in the engines and in the oracle: set when a new connection brings the count to
the threshold, cleared when connections expire below its lower value). Probes are new flows from
random client addresses and ports; each one that is scheduled stays a connection (UDP: inactive,
TCP: a SYN, active) in the engine and in the oracle, until an `expire` step, except on a UDP
service with -o (one-packet scheduling, toggled by the script too), where it is released at once.

dh hashes the packet's destination address, which for an lbd service is its VIP: each dh example
has several services on random VIPs, given the same operations.

mh's lookup table is compared whole with the oracle's for random weight sets (the Python engine's
table itself; for the C engine, one client of each of the 4093 entries is scheduled).
"""

from __future__ import annotations

import functools
import ipaddress
import random
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import packet_table as table  # noqa: E402
from lb.engine import FwdState, Verdict  # noqa: E402
from lb.model import DestSpec, ServiceKey, ServiceSpec  # noqa: E402
from oracles import (  # noqa: E402
    IP_VS_SVC_F_ONEPACKET,
    IP_VS_SVC_F_SCHED1,
    IP_VS_SVC_F_SCHED2,
    IP_VS_SVC_F_SCHED3,
    PacketInfo,
)
from oracles import Service as OracleService  # noqa: E402
from oracles.sched_mh import MH_HASH1 as ORACLE_MH_HASH1  # noqa: E402
from oracles.sched_mh import MhScheduler  # noqa: E402
from oracles.sched_mh import mh_hashkey as oracle_mh_hashkey  # noqa: E402

FACTORIES = [
    pytest.param(f, id=f.id, marks=[pytest.mark.skip(reason=f.unavailable)] if f.make is None else [])
    for f in table.engine_factories()
]
MAX_DESTS = 8
PORT = 53
# Examples per (scheduler, engine): reported by the test ids' docstrings in the helper's report.
EXAMPLES = {"sh": 200, "dh": 100, "mh": 100, "mh-table": 40}
KERNEL_FLAG_BITS = (IP_VS_SVC_F_SCHED1, IP_VS_SVC_F_SCHED2, IP_VS_SVC_F_SCHED3)  # lb.model flag-1..3 -> kernel


def kernel_flags(bits: int, ops: bool = False) -> int:
    return sum(bit for i, bit in enumerate(KERNEL_FLAG_BITS) if bits & (1 << i)) | (IP_VS_SVC_F_ONEPACKET if ops else 0)


def ip_checksum(header: bytes) -> int:
    total = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def packet(proto: int, src: str, dst: str, sport: int, dport: int) -> bytes:
    """An IPv4 UDP datagram or TCP SYN (L4 checksum left 0: no engine reads it for these)."""
    if proto == 17:
        l4 = struct.pack("!HHHH", sport, dport, 8 + 4, 0) + b"ping"
    else:
        l4 = struct.pack("!HHIIBBHHH", sport, dport, 1000, 0, 5 << 4, 0x02, 64240, 0, 0)
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 1, 0, 64, proto, 0,
                         ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed)
    header = header[:10] + struct.pack("!H", ip_checksum(header)) + header[12:]
    return header + l4


@dataclass
class Pair:
    """One service in the engine and its model in the oracle."""

    key: ServiceKey
    oracle: OracleService
    conns: list[Any] = field(default_factory=list)  # the oracle's open connections


class Script:
    """Plays one example on an engine and on the oracle, checking every choice."""

    def __init__(self, engine: Any, sched: str, proto: int, vips: list[str], dest_addrs: list[str],
                 uppers: list[int], flags: int, rng: random.Random) -> None:
        self.engine, self.sched, self.proto, self.rng = engine, sched, proto, rng
        self.dest_addrs, self.uppers = dest_addrs, uppers
        self.vips = vips
        self.flags = flags
        self.ops = False
        self.present: set[int] = set()
        self.weights: dict[int, int] = {}
        self.now_ms = 0
        self.next_port = 1024
        self.pairs = []
        for vip in vips:
            key = ServiceKey(proto, vip, PORT)
            engine.add_service(ServiceSpec(key, sched, sched_flags=flags))
            self.pairs.append(Pair(key, OracleService(sched, protocol=proto, port=PORT, flags=kernel_flags(flags))))
        self.by_mac = {bytes([2, 0, 0, 0, 0, i]): i for i in range(len(dest_addrs))}

    def add(self, i: int, weight: int) -> None:
        if i in self.present:
            return
        self.present.add(i)
        for pair in self.pairs:
            self.engine.add_dest(pair.key, DestSpec(self.dest_addrs[i], PORT, "route", weight, self.uppers[i], 0))
            self.engine.set_fwd(pair.key, self.dest_addrs[i], PORT, FwdState(
                ifindex=3, dst_mac=bytes([2, 0, 0, 0, 0, i]), src_mac=table.DIRECTOR_MAC))
            pair.oracle.add_dest(self.dest_addrs[i], PORT, weight=weight, u_threshold=self.uppers[i])

    def edit(self, i: int, weight: int) -> None:
        if i not in self.present:
            return
        for pair in self.pairs:
            self.engine.edit_dest(pair.key, DestSpec(self.dest_addrs[i], PORT, "route", weight, self.uppers[i], 0))
            pair.oracle.edit_dest(self.dest_addrs[i], PORT, weight=weight, u_threshold=self.uppers[i])

    def delete(self, i: int) -> None:
        if i not in self.present:
            return
        self.present.discard(i)
        for pair in self.pairs:
            self.engine.del_dest(pair.key, self.dest_addrs[i], PORT)
            pair.oracle.del_dest(self.dest_addrs[i], PORT)

    def set_flags(self, flags: int, ops: bool | None = None) -> None:
        """-E with these scheduler flags, and -o (one-packet scheduling: UDP datagrams leave no entry)."""
        self.flags = flags
        self.ops = self.ops if ops is None else ops
        for pair in self.pairs:
            self.engine.edit_service(ServiceSpec(pair.key, self.sched, sched_flags=flags, ops=self.ops))
            pair.oracle.edit_service(flags=kernel_flags(flags, self.ops))

    def expire(self) -> None:
        """Every connection's time runs out (UDP 300 s, TCP SYN_RECV 60 s)."""
        self.now_ms += 301_000
        self.engine.expire(self.now_ms)
        for pair in self.pairs:
            for conn in pair.conns:
                conn.expire()
            pair.conns.clear()

    def client_addr(self) -> str:
        """A random unicast client address: neither a martian source (0/8, 127/8, multicast, class E and
        broadcast, which the kernel's routing and lbd drop before scheduling) nor a VIP."""
        while True:
            value = self.rng.getrandbits(32) & 0xFFFFFF00 | 0x80 | self.rng.getrandbits(7)
            src = str(ipaddress.IPv4Address(value))
            if value >> 24 not in (0, 127) and value >> 24 < 224 and src not in self.vips:
                return src

    def probe(self, n: int) -> None:
        for _ in range(n):
            src = self.client_addr()
            sport = self.next_port
            self.next_port += 1
            for pair in self.pairs:
                action = self.engine.process(packet(self.proto, src, pair.key.addr, sport, PORT), self.now_ms)
                flow = pair.oracle.new_flow(PacketInfo.of(src, pair.key.addr, sport, PORT, self.proto))
                expected = None if flow is None else self.dest_addrs.index(str(flow.dest.addr))
                if action.verdict == Verdict.XMIT_L2:
                    got = self.by_mac[action.l2hdr[:6]]
                else:
                    assert action.verdict == Verdict.ANSWER, action  # no destination: ICMP unreachable
                    got = None
                assert got == expected, (f"{self.sched} flags {self.flags} client {src}:{sport} -> {pair.key}: "
                                         f"engine {got}, kernel {expected}; list (newest first) "
                                         f"{[(str(d.addr), d.weight, d.overloaded) for d in pair.oracle.destinations]}")
                if flow is not None:
                    pair.conns.append(flow)


weights = st.one_of(st.integers(1, 5), st.just(0), st.sampled_from([1, 63, 64, 100, 65535, 2**31 - 1]))
first_adds = st.lists(st.tuples(st.just("add"), st.integers(0, MAX_DESTS - 1), weights), min_size=1, max_size=6)
operations = st.lists(st.one_of(
    st.tuples(st.just("add"), st.integers(0, MAX_DESTS - 1), weights),
    st.tuples(st.just("edit"), st.integers(0, MAX_DESTS - 1), weights),
    st.tuples(st.just("edit"), st.integers(0, MAX_DESTS - 1), st.just(0)),  # quiesce: sh/mh keep its buckets
    st.tuples(st.just("del"), st.integers(0, MAX_DESTS - 1)),
    st.tuples(st.just("flags"), st.integers(0, 7)),
    st.tuples(st.just("flags"), st.sampled_from([1, 3])),  # fallback
    st.tuples(st.just("ops"), st.booleans()),
    st.tuples(st.just("probe"), st.integers(1, 16)),
    st.tuples(st.just("probe"), st.integers(1, 16)),
    st.tuples(st.just("expire")),
), min_size=1, max_size=24)
addresses = st.lists(st.integers(0x0A000001, 0x0AFFFFFE), min_size=MAX_DESTS, max_size=MAX_DESTS, unique=True)
mh_addresses = st.lists(st.integers(0x0A000001, 0x0AFFFFFE), min_size=12, max_size=12, unique=True)


def play(factory: table.EngineFactory, sched: str, data: st.DataObject) -> None:
    engine = factory.make(0)  # type: ignore[operator]
    proto = data.draw(st.sampled_from([6, 17]), label="proto")
    n_vips = 3 if sched == "dh" else 1
    vips = [str(ipaddress.IPv4Address(a)) for a in data.draw(
        st.lists(st.integers(0xC6336401, 0xC63364FE), min_size=n_vips, max_size=n_vips, unique=True), label="vips")]
    dest_addrs = [str(ipaddress.IPv4Address(a)) for a in data.draw(addresses, label="dests")]
    uppers = data.draw(st.lists(st.sampled_from([0, 0, 0, 1, 2, 3]), min_size=MAX_DESTS, max_size=MAX_DESTS),
                       label="upper thresholds")
    flags = data.draw(st.integers(0, 7), label="flags")
    script = Script(engine, sched, proto, vips, dest_addrs, uppers, flags,
                    random.Random(data.draw(st.integers(0, 2**32), label="seed")))
    for op in data.draw(first_adds, label="first adds") + data.draw(operations, label="operations"):
        if op[0] == "add":
            script.add(op[1], op[2])
        elif op[0] == "edit":
            script.edit(op[1], op[2])
        elif op[0] == "del":
            script.delete(op[1])
        elif op[0] == "flags":
            script.set_flags(op[1])
        elif op[0] == "ops":
            script.set_flags(script.flags, ops=op[1])
        elif op[0] == "expire":
            script.expire()
        else:
            script.probe(op[1])
    script.probe(8)


def _settings(sched: str) -> Any:
    return settings(max_examples=EXAMPLES[sched], deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                           HealthCheck.data_too_large])


@pytest.mark.parametrize("factory", FACTORIES)
@_settings("sh")
@given(data=st.data())
def test_sh_picks_what_the_kernel_picks(factory: table.EngineFactory, data: st.DataObject) -> None:
    play(factory, "sh", data)


@pytest.mark.parametrize("factory", FACTORIES)
@_settings("dh")
@given(data=st.data())
def test_dh_picks_what_the_kernel_picks(factory: table.EngineFactory, data: st.DataObject) -> None:
    play(factory, "dh", data)


@pytest.mark.parametrize("factory", FACTORIES)
@_settings("mh")
@given(data=st.data())
def test_mh_picks_what_the_kernel_picks(factory: table.EngineFactory, data: st.DataObject) -> None:
    play(factory, "mh", data)


@functools.cache
def client_of_every_mh_entry() -> tuple[str, ...]:
    """For each entry of the 4093 of mh's table, a client address whose lookup (no port) is that
    entry, by the oracle's own hash (tests/oracles/hashing.py)."""
    found: dict[int, str] = {}
    value = 0xC0A80000  # 192.168.0.0 onwards
    while len(found) < 4093:
        addr = ipaddress.IPv4Address(value)
        found.setdefault(oracle_mh_hashkey(4, addr, 0, ORACLE_MH_HASH1) % 4093, str(addr))
        value += 1
    return tuple(found[i] for i in range(4093))


mh_weight_sets = st.lists(st.tuples(st.one_of(st.integers(0, 8), st.sampled_from([50, 64, 100, 257, 1000, 2**31 - 1])),
                                    st.one_of(st.none(), st.just(0), st.integers(1, 6))),  # added with, edited to
                          min_size=1, max_size=12)


@pytest.mark.parametrize("factory", FACTORIES)
@_settings("mh-table")
@given(weights=mh_weight_sets, dest_addrs=mh_addresses)
def test_mh_table_is_the_kernels(factory: table.EngineFactory, weights: list[tuple[int, int | None]],
                                 dest_addrs: list[int]) -> None:
    """Destinations added in order with their weights, some then edited (to 0 too: mh keeps their
    entries by last_weight): the whole table is the oracle's."""
    engine = factory.make(0)  # type: ignore[operator]
    key = ServiceKey(6, table.VIP, 80)
    engine.add_service(ServiceSpec(key, "mh"))
    oracle = OracleService("mh", protocol=6, port=80)
    addrs = [str(ipaddress.IPv4Address(a)) for a in dest_addrs]
    for i, (weight, _) in enumerate(weights):
        engine.add_dest(key, DestSpec(addrs[i], 80, "route", weight))
        engine.set_fwd(key, addrs[i], 80, FwdState(ifindex=3, dst_mac=bytes([2, 0, 0, 0, 0, i]),
                                                    src_mac=table.DIRECTOR_MAC))
        oracle.add_dest(addrs[i], 80, weight=weight)
    for i, (_, edited) in enumerate(weights):
        if edited is not None:
            engine.edit_dest(key, DestSpec(addrs[i], 80, "route", edited))
            oracle.edit_dest(addrs[i], 80, weight=edited)
    assert isinstance(oracle.scheduler, MhScheduler)
    expected = [None if d is None else str(d.addr) for d in oracle.scheduler.lookup]
    if factory.id == "py":
        from lb.pyengine.sched_mh import table_of

        service = engine._services[(6, ipaddress.IPv4Address(table.VIP).packed, 80)]  # noqa: SLF001
        got_table = [None if d is None else str(ipaddress.IPv4Address(d.addr)) for d in table_of(service)]
        assert got_table == expected
    by_mac = {bytes([2, 0, 0, 0, 0, i]): addrs[i] for i in range(len(weights))}
    for entry, client in enumerate(client_of_every_mh_entry()):
        action = engine.process(packet(6, client, table.VIP, 40000, 80), 0)
        got = by_mac[action.l2hdr[:6]] if action.verdict == Verdict.XMIT_L2 else None
        chosen = oracle.schedule(PacketInfo.of(client, table.VIP, 40000, 80, 6))
        assert got == (None if chosen is None else str(chosen.addr)), f"entry {entry} (client {client})"
