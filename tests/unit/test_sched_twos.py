"""twos (ip_vs_twos.c of 6.1.192; Debian's kernel does not build it) in both engines.

- Exactly the kernel oracle's choices (tests/oracles/sched_twos.py) when the oracle is fed the same
  random draws as the engine: the engines' generator (a per-service splitmix64 seeded from the
  engine's seed and the service key, drawing through the kernel's multiply-shift reduction) is
  re-implemented in tests/twos_draws.py, independently of the engines, and handed to the oracle.
- Its distribution, as the kernel's: with no load, the first eligible server gets (w + 1) / (W + 1)
  of the draws, every other w / (W + 1); with held connections, shares in proportion to weight.
  Bounds are binomial (5 sigma), checked for several seeds.
- The kernel's 32-bit int arithmetic with weights near INT_MAX (the oracle uses Python integers for
  the draws' sum, so there the engines are compared with each other and with the C semantics).
"""

from __future__ import annotations

import math
import socket
from collections import Counter
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import packet_table as table
from lb.engine import FwdState, Verdict
from lb.model import DestSpec, ServiceKey, ServiceSpec
from lb.pyengine.csum import internet_checksum
from oracles import PacketInfo, Service
from oracles.sched_twos import TwosScheduler
from twos_draws import Draws

FACTORIES = [
    pytest.param(f, id=f.id, marks=[pytest.mark.skip(reason=f.unavailable)] if f.make is None else [])
    for f in table.engine_factories()
]
KEY = ServiceKey(6, table.VIP, 80)


def dest_addr(i: int) -> str:
    return f"203.0.113.{21 + i}"


_TEMPLATE = table.tcp(sport=1, src=table.CLIENT1, flags="S")


def syn(n: int) -> bytes:
    """A SYN from client n (its own address and port): scapy's packet re-addressed (these tests send
    thousands); the IP checksum redone, the TCP one left stale (nothing on this path reads it)."""
    packet = bytearray(_TEMPLATE)
    packet[12:16] = socket.inet_aton(f"192.0.{2 + n // 50000}.{1 + n // 200 % 250}")
    packet[20:22] = (1024 + n % 200).to_bytes(2, "big")
    packet[10:12] = b"\0\0"
    packet[10:12] = internet_checksum(bytes(packet[:20])).to_bytes(2, "big")
    return bytes(packet)


def engine_with(factory: table.EngineFactory, weights: list[int], hash_seed: int = table.HASH_SEED) -> object:
    """Destinations 0.. added in order (the kernel's list is the reverse)."""
    engine = factory.make(0, hash_seed=hash_seed)  # type: ignore[operator]
    engine.add_service(ServiceSpec(KEY, "twos"))
    for i, weight in enumerate(weights):
        engine.add_dest(KEY, DestSpec(dest_addr(i), 80, "route", weight))
        engine.set_fwd(KEY, dest_addr(i), 80, FwdState(ifindex=3, dst_mac=bytes([2, 0, 0, 0, 0x0C, i]),
                                                       src_mac=table.DIRECTOR_MAC))
    return engine


def flow(engine: object, n: int) -> str | None:
    action = engine.process(syn(n), 0)  # type: ignore[attr-defined]
    if action.verdict == Verdict.ANSWER:
        return None
    assert action.verdict == Verdict.XMIT_L2, action
    return dest_addr(action.l2hdr[5])


def probe(engine: object) -> str | None:
    got = engine.sched_probe(KEY, _TEMPLATE, 0)  # type: ignore[attr-defined]
    return None if got is None else got[0]


# ---- the oracle, fed the engines' draws --------------------------------------------------------------

weights = st.one_of(st.integers(0, 5), st.sampled_from([255, 65536, 2**28]))
operations = st.lists(st.one_of(
    st.tuples(st.just("set"), st.integers(0, 3), weights),
    st.tuples(st.just("del"), st.integers(0, 3)),
    st.tuples(st.just("flow"), st.integers(1, 12)),
    st.tuples(st.just("probe"), st.integers(1, 6)),
), max_size=25)


@pytest.mark.parametrize("factory", FACTORIES)
@settings(max_examples=500, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(script=operations, hash_seed=st.sampled_from([1, 2, 0xDEADBEEF, 2**64 - 1]))
def test_every_choice_is_the_oracles_with_the_same_draws(factory: table.EngineFactory, script, hash_seed: int) -> None:  # type: ignore[no-untyped-def]
    engine = engine_with(factory, [], hash_seed)
    draws = Draws(hash_seed, KEY.proto, KEY.addr, KEY.port)
    oracle = Service(TwosScheduler(rng=draws.below))
    present: set[int] = set()
    n = 0
    for op in script:
        if op[0] == "set":
            i, weight = op[1], op[2]
            spec = DestSpec(dest_addr(i), 80, "route", weight)
            if i in present:
                engine.edit_dest(KEY, spec)  # type: ignore[attr-defined]
                oracle.edit_dest(dest_addr(i), 80, weight)
            else:
                engine.add_dest(KEY, spec)  # type: ignore[attr-defined]
                engine.set_fwd(KEY, dest_addr(i), 80, FwdState(  # type: ignore[attr-defined]
                    ifindex=3, dst_mac=bytes([2, 0, 0, 0, 0x0C, i]), src_mac=table.DIRECTOR_MAC))
                oracle.add_dest(dest_addr(i), 80, weight)
                present.add(i)
        elif op[0] == "del":
            if op[1] in present:
                engine.del_dest(KEY, dest_addr(op[1]), 80)  # type: ignore[attr-defined]
                oracle.del_dest(dest_addr(op[1]), 80)
                present.discard(op[1])
        elif op[0] == "flow":  # new connections, each kept (SYN_RECV: active)
            for _ in range(op[1]):
                got = flow(engine, n)
                conn = oracle.new_flow(PacketInfo.of(f"192.0.2.{n % 250 + 1}", table.VIP, 1024 + n, 80))
                assert got == (None if conn is None else str(conn.dest.addr)), (op, n)
                n += 1
        else:
            for _ in range(op[1]):
                dest = oracle.schedule(PacketInfo.of("192.0.2.1", table.VIP, 1, 80))
                assert probe(engine) == (None if dest is None else str(dest.addr)), op


# ---- distribution ------------------------------------------------------------------------------------

def within(count: int, trials: int, p: float, sigmas: float = 5.0) -> bool:
    return abs(count - trials * p) <= sigmas * math.sqrt(trials * p * (1 - p))


@pytest.mark.parametrize("hash_seed", [1, 2, 3])
@pytest.mark.parametrize("factory", FACTORIES)
def test_without_load_the_draw_favours_the_first_server_by_one(factory: table.EngineFactory, hash_seed: int) -> None:
    # Weights 3, 2, 1 added in this order: the kernel's list is 1, 2, 3 (W = 6). Without connections
    # the second choice never wins (0 > 0 is false): the first draw decides, uniform over 0..W, and
    # the first server takes r <= 1, i.e. 2 of the 7 values.
    engine = engine_with(factory, [3, 2, 1], hash_seed)
    trials = 14_000
    seen = Counter(probe(engine) for _ in range(trials))
    for addr, p in ((dest_addr(2), 2 / 7), (dest_addr(1), 2 / 7), (dest_addr(0), 3 / 7)):
        assert within(seen[addr], trials, p), (addr, seen)


@pytest.mark.parametrize("hash_seed", [1, 2, 3])
@pytest.mark.parametrize("factory", FACTORIES)
def test_with_held_connections_shares_follow_the_weights(factory: table.EngineFactory, hash_seed: int) -> None:
    # Every connection stays (SYN_RECV, active): the less loaded of two weighted draws wins, which
    # keeps each server's load per unit of weight level; the shares end close to 1/6, 2/6, 3/6.
    engine = engine_with(factory, [1, 2, 3], hash_seed)
    flows = 6000
    chosen = Counter(flow(engine, n) for n in range(flows))
    for i, weight in enumerate([1, 2, 3]):
        assert abs(chosen[dest_addr(i)] / flows - weight / 6) < 0.02, chosen
    (service,) = engine.services()  # type: ignore[attr-defined]
    assert sorted(d.active for d in service.dests) == sorted(chosen.values())


@pytest.mark.parametrize("factory", FACTORIES)
def test_skips_quiesced_and_overloaded_servers(factory: table.EngineFactory) -> None:
    engine = engine_with(factory, [0, 5, 5])
    engine.edit_dest(KEY, DestSpec(dest_addr(2), 80, "route", 5, 1))  # type: ignore[attr-defined]
    # Until dest 2 has its one connection (its upper threshold: then it is OVERLOADED), flows go to
    # dest 1 or 2, never to the weight-0 dest 0.
    picks = [flow(engine, 0)]
    while picks[-1] != dest_addr(2) and len(picks) < 100:
        picks.append(flow(engine, len(picks)))
    assert picks[-1] == dest_addr(2) and set(picks) <= {dest_addr(1), dest_addr(2)}, picks
    assert {flow(engine, 2000 + k) for k in range(50)} == {dest_addr(1)}
    engine.edit_dest(KEY, DestSpec(dest_addr(1), 80, "route", 0))  # type: ignore[attr-defined]
    assert flow(engine, 3000) is None  # weight 0 and OVERLOADED: no destination (ICMP answer)


# ---- the kernel's int arithmetic ----------------------------------------------------------------------

def kernel_twos(weights: list[int], overheads: list[int], below: Callable[[int], int]) -> int:
    """ip_vs_twos_schedule over eligible servers in list order, each a C int: total and the running
    draws wrap at 32 bits (the kernel is built with -fno-strict-overflow). Returns the index."""
    def s32(v: int) -> int:
        v &= 0xFFFFFFFF
        return v - 2**32 if v >= 2**31 else v

    total = s32(sum(weights) + 1)
    r1, r2 = s32(below(total & 0xFFFFFFFF)), s32(below(total & 0xFFFFFFFF))
    c1, c2, w1, w2, o1, o2 = len(weights) - 1, None, -1, -1, 0, 0
    for i, w in enumerate(weights):
        r1, r2 = s32(r1 - w), s32(r2 - w)
        if r1 <= 0 and w1 == -1:
            c1, w1, o1 = i, w, overheads[i]
        if r2 <= 0 and w2 == -1:
            c2, w2, o2 = i, w, overheads[i]
        if w1 != -1 and w2 != -1:
            break
    if c2 is not None and s32(w2 * o1) > s32(w1 * o2):
        return c2
    return c1


@pytest.mark.parametrize(("weights", "servers_used"), [([2**31 - 1] * 2, 2), ([2**31 - 1] * 3, 1),
                                                      ([2**31 - 1, 2**30, 2**29], 3)])
@pytest.mark.parametrize("factory", FACTORIES)
def test_weights_near_int_max_wrap_as_the_kernels_ints(factory: table.EngineFactory, weights: list[int],
                                                       servers_used: int) -> None:
    # The kernel's int sum wraps. Two INT_MAX weights: the u32 bound is 2^32 - 1, draws of 2^31 or
    # more read negative, then wrap again when a weight is subtracted; the products w2 * overhead1
    # and w1 * overhead2 wrap too (INT_MAX * overhead is -overhead: the MORE loaded server wins).
    # Three: the bound is 2^31 - 2, below the first weight: the head of the list takes everything.
    engine = engine_with(factory, weights)
    draws = Draws(table.HASH_SEED, KEY.proto, KEY.addr, KEY.port)
    seen: Counter[str | None] = Counter()
    for n in range(300):
        (service,) = engine.services()  # type: ignore[attr-defined]
        order = [int(d.spec.addr.rsplit(".", 1)[1]) - 21 for d in service.dests]  # list position -> dest
        listed = [weights[i] for i in order]
        overheads = [257 * d.active + d.inactive for d in service.dests]
        expected = order[kernel_twos(listed, overheads, draws.below)]
        got = flow(engine, n)
        assert got == dest_addr(expected), n
        seen[got] += 1
    assert len(seen) == servers_used, seen
