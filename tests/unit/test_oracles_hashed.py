"""sh, dh and mh oracles on examples derived by hand from ip_vs_sh.c, ip_vs_dh.c, ip_vs_mh.c
(Linux 6.1.192, Debian 12's build values: 256 sh/dh buckets, 4093 mh entries).

Expected buckets are computed here with the kernel's formulas written out (multiply by the
golden ratio constant, keep the top bits; hsiphash over the 4 little-endian bytes), not with
the oracle's own key functions.
"""

from __future__ import annotations

import ipaddress
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from oracles import (  # noqa: E402
    IP_VS_SVC_F_SCHED_MH_FALLBACK,
    IP_VS_SVC_F_SCHED_MH_PORT,
    IP_VS_SVC_F_SCHED_SH_FALLBACK,
    IP_VS_SVC_F_SCHED_SH_PORT,
    IPPROTO_UDP,
    PacketInfo,
    Service,
    build_service,
    dest_address,
)
from oracles.hashing import hsiphash  # noqa: E402
from oracles.sched_dh import DhScheduler  # noqa: E402
from oracles.sched_mh import MhScheduler  # noqa: E402
from oracles.sched_sh import ShScheduler  # noqa: E402

MH_SIZE = 4093
MH_HASH1 = (2654435761, 2654435761)
MH_HASH2 = (2654446892, 2654446892)


def top_bits(value: int, bits: int) -> int:
    """hash_32 written out: (value * 0x61C88647) mod 2**32, top `bits` bits."""
    return ((value * 0x61C88647) % 2**32) >> (32 - bits)


def mh_hash(value: int, key: tuple[int, int]) -> int:
    return hsiphash((value % 2**32).to_bytes(4, "little"), key)


def pkt(saddr: str, sport: int = 40000, daddr: str = "198.51.100.1", proto: int = 6) -> PacketInfo:
    return PacketInfo.of(saddr, daddr, sport, 80, proto)


def sh_table(svc: Service) -> list[int]:
    sched = svc.scheduler
    assert isinstance(sched, ShScheduler)
    return [svc.destinations.index(d) if d is not None else -1 for d in sched.buckets]


# -- sh ---------------------------------------------------------------------------------------------

def test_sh_tiles_the_buckets_by_weight_in_list_order() -> None:
    svc, _ = build_service("sh", [2, 1])
    assert sh_table(svc)[:9] == [0, 0, 1, 0, 0, 1, 0, 0, 1]
    assert sh_table(svc)[255] == 0  # 255 = 3 * 85: a new A, B, B... tile starts there


def test_sh_gives_a_weight_zero_destination_one_bucket_per_round() -> None:
    svc, _ = build_service("sh", [0, 1, 3])
    assert sh_table(svc)[:10] == [0, 1, 2, 2, 2, 0, 1, 2, 2, 2]


def test_sh_maps_the_source_address_with_hash_32() -> None:
    svc, dests = build_service("sh", [1, 1, 1])
    bucket = top_bits(0xC00002BD, 8)  # 192.0.2.189
    assert bucket == 2
    assert svc.schedule(pkt("192.0.2.189")) is dests[bucket % 3]
    # The port is ignored without sh-port ...
    assert svc.schedule(pkt("192.0.2.189", sport=1)) is dests[2]
    # ... and added to the address before hashing with it (TCP/UDP/SCTP only).
    svc.edit_service(flags=IP_VS_SVC_F_SCHED_SH_PORT)
    bucket = top_bits(0xC00002BD + 1234, 8)
    assert svc.schedule(pkt("192.0.2.189", sport=1234)) is dests[bucket % 3]
    assert svc.schedule(pkt("192.0.2.189", sport=1234, proto=50)) is dests[2]  # ESP: port 0


def test_sh_folds_ipv6_sources() -> None:
    svc, dests = build_service("sh", [1, 1, 1, 1], family=6)
    folded = 0x20010DB8 ^ 0x00000000 ^ 0x00000000 ^ 0x00000007
    bucket = top_bits(folded, 8)
    assert svc.schedule(PacketInfo.of("2001:db8::7", "2001:db8::80", 1, 80)) is dests[bucket % 4]


def test_sh_without_fallback_drops_what_maps_to_an_unavailable_destination() -> None:
    svc, dests = build_service("sh", [1, 1, 1])
    dests[2].weight = 0  # bucket 2 belongs to C
    assert svc.schedule(pkt("192.0.2.189")) is None


def test_sh_fallback_probes_from_twice_the_hash() -> None:
    # ip_vs_sh_get_fallback() adds the original hash twice: after bucket 2 it reads bucket
    # (2 * 2 + 0) & 255 = 4, which is B's (4 % 3 == 1); a linear probe would read 3 (A's).
    svc, dests = build_service("sh", [1, 1, 1], flags=IP_VS_SVC_F_SCHED_SH_FALLBACK)
    svc.edit_dest(dest_address(2), 80, 0)  # quiesce C (reassigns: still i % 3)
    assert svc.schedule(pkt("192.0.2.189")) is dests[1]


def test_sh_reassigns_on_weight_edits() -> None:
    svc, _ = build_service("sh", [1, 1])
    assert sh_table(svc)[:4] == [0, 1, 0, 1]
    svc.edit_dest(dest_address(0), 80, 3)
    assert sh_table(svc)[:8] == [0, 0, 0, 1, 0, 0, 0, 1]


# -- dh ---------------------------------------------------------------------------------------------

def test_dh_hashes_the_destination_address_over_one_bucket_per_destination() -> None:
    svc, dests = build_service("dh", [5, 1, 1])  # weights do not shape the table
    bucket = top_bits(0xC6336401, 8)  # 198.51.100.1
    assert svc.schedule(pkt("192.0.2.1", daddr="198.51.100.1")) is dests[bucket % 3]
    assert svc.schedule(pkt("203.0.113.77", sport=9, daddr="198.51.100.1")) is dests[bucket % 3]


def test_dh_has_no_update_hook_and_no_fallback() -> None:
    svc, dests = build_service("dh", [1, 1, 1])
    sched = svc.scheduler
    assert isinstance(sched, DhScheduler)
    before = list(sched.buckets)
    target = dests[top_bits(0xC6336401, 8) % 3]
    svc.edit_dest(target.addr, 80, 0)
    assert sched.buckets == before
    assert svc.schedule(pkt("192.0.2.1", daddr="198.51.100.1")) is None
    svc.del_dest(dests[0].addr, 80)  # del_dest does rebuild: two destinations now
    assert sched.buckets[:4] == [dests[1], dests[2], dests[1], dests[2]]


# -- mh ---------------------------------------------------------------------------------------------

def mh_counts(svc: Service) -> list[int]:
    sched = svc.scheduler
    assert isinstance(sched, MhScheduler)
    counts = Counter(svc.destinations.index(d) for d in sched.lookup if d is not None)
    return [counts[i] for i in range(len(svc.destinations))]


def test_mh_fills_the_table_by_turns_in_list_order() -> None:
    # Weights 2, 1, 1: gcd 1, turns 2, 1, 1: 4 entries a round. 4093 = 1023 * 4 + 1, and the
    # last entry is the first turn of the head of the list.
    svc, _ = build_service("mh", [2, 1, 1])
    assert mh_counts(svc) == [2047, 1023, 1023]


def test_mh_scales_large_weights_down_to_six_bits() -> None:
    # gcd(100, 1) = 1; fls(100) = 7 > 6, so rshift = 1: turns 100 >> 1 = 50 and 1 >> 1 = 0,
    # which becomes 1 (a non-zero last_weight always takes a turn). 4093 = 80 * 51 + 13: the
    # 13 left over go to the head of the list.
    svc, _ = build_service("mh", [100, 1])
    assert mh_counts(svc) == [80 * 50 + 13, 80]
    # gcd reduces first: 3000 and 1000 are 3 and 1 turns (4093 = 1023 * 4 + 1).
    svc, _ = build_service("mh", [3000, 1000])
    assert mh_counts(svc) == [3070, 1023]


def test_mh_destination_preference_starts_at_its_hashed_offset() -> None:
    # The head of the list claims the first entry of all: its offset, hsiphash(port + addr)
    # with key 1, mod 4093.
    svc, dests = build_service("mh", [1, 1])
    sched = svc.scheduler
    assert isinstance(sched, MhScheduler)
    offset_a = mh_hash(80 + 0x0A000001, MH_HASH1) % MH_SIZE
    assert sched.lookup[offset_a] is dests[0]
    offset_b = mh_hash(80 + 0x0A000002, MH_HASH1) % MH_SIZE
    skip_b = mh_hash(80 + 0x0A000002, MH_HASH2) % (MH_SIZE - 1) + 1
    first_b = offset_b if offset_b != offset_a else (offset_b + skip_b) % MH_SIZE
    assert sched.lookup[first_b] is dests[1]


def test_mh_looks_clients_up_by_source_address_and_optionally_port() -> None:
    svc, _ = build_service("mh", [1, 2, 3])
    sched = svc.scheduler
    assert isinstance(sched, MhScheduler)
    entry = mh_hash(0xC0000205, MH_HASH1) % MH_SIZE  # 192.0.2.5, port 0
    assert svc.schedule(pkt("192.0.2.5", sport=1)) is sched.lookup[entry]
    svc.edit_service(flags=IP_VS_SVC_F_SCHED_MH_PORT)
    entry = mh_hash(0xC0000205 + 5353, MH_HASH1) % MH_SIZE
    assert svc.schedule(pkt("192.0.2.5", sport=5353, proto=IPPROTO_UDP)) is sched.lookup[entry]


def test_mh_quiescing_keeps_the_table_and_adding_at_weight_zero_takes_no_entry() -> None:
    svc, dests = build_service("mh", [1, 1, 1])
    sched = svc.scheduler
    assert isinstance(sched, MhScheduler)
    before = list(sched.lookup)
    svc.edit_dest(dests[1].addr, 80, 0)  # last_weight stays 1
    assert sched.lookup == before
    client = next(f"192.0.2.{n}" for n in range(1, 255) if svc.schedule(pkt(f"192.0.2.{n}")) is None)
    assert sched.lookup[mh_hash(int(ipaddress.IPv4Address(client)), MH_HASH1) % MH_SIZE] is dests[1]
    svc.edit_service(flags=IP_VS_SVC_F_SCHED_MH_FALLBACK)
    assert svc.schedule(pkt(client)) in (dests[0], dests[2])
    late = svc.add_dest("10.0.0.9", 80, 0)
    assert late not in sched.lookup


def test_mh_table_is_the_same_for_the_same_list_and_depends_on_its_order() -> None:
    one, _ = build_service("mh", [1, 2, 1])
    two, _ = build_service("mh", [1, 2, 1])
    assert isinstance(one.scheduler, MhScheduler) and isinstance(two.scheduler, MhScheduler)
    assert [d.addr for d in one.scheduler.lookup if d] == [d.addr for d in two.scheduler.lookup if d]
    # Same destinations and weights, opposite list order: entries contested by two
    # destinations go to whichever comes first, so a few differ.
    reverse = Service("mh")
    for index, weight in enumerate([1, 2, 1]):
        reverse.add_dest(dest_address(index), 80, weight)
    assert isinstance(reverse.scheduler, MhScheduler)
    differing = sum(1 for x, y in zip(one.scheduler.lookup, reverse.scheduler.lookup, strict=True)
                    if x is not None and y is not None and x.addr != y.addr)
    assert 0 < differing < MH_SIZE // 10


def test_mh_with_no_positive_last_weight_empties_the_table() -> None:
    svc, _ = build_service("mh", [0, 0])
    sched = svc.scheduler
    assert isinstance(sched, MhScheduler)
    assert all(d is None for d in sched.lookup)
    assert svc.schedule(pkt("192.0.2.5")) is None
