"""lblc and lblcr oracles on examples derived by hand from ip_vs_lblc.c and ip_vs_lblcr.c
(Linux 6.1.192): the destination-address cache, its overload rule, lblcr's replica sets, and
the timers (HZ = 250 in Debian's build; the model's clock runs in jiffies).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from oracles import Dest, PacketInfo, Service, build_service, dest_address  # noqa: E402
from oracles.model import as_address  # noqa: E402
from oracles.sched_lblc import LblcScheduler  # noqa: E402
from oracles.sched_lblcr import LblcrScheduler  # noqa: E402

HOUR = 3600
DAY = 24 * HOUR


def to(daddr: str, sport: int = 40000) -> PacketInfo:
    return PacketInfo.of("192.0.2.1", daddr, sport, 80)


def flows(svc: Service, daddr: str, count: int) -> list[Dest]:
    """`count` new TCP flows to `daddr`, each keeping its (active) connection."""
    chosen = []
    for n in range(count):
        conn = svc.new_flow(to(daddr, 40000 + n))
        assert conn is not None
        chosen.append(conn.dest)
    return chosen


def lblc(svc: Service) -> LblcScheduler:
    assert isinstance(svc.scheduler, LblcScheduler)
    return svc.scheduler


def lblcr(svc: Service) -> LblcrScheduler:
    assert isinstance(svc.scheduler, LblcrScheduler)
    return svc.scheduler


# -- lblc -------------------------------------------------------------------------------------------

def test_lblc_sticks_until_the_server_is_busier_than_its_weight_and_another_is_half_idle() -> None:
    svc, (a, b) = build_service("lblc", [1, 1])
    # 1: miss, wlc tie -> A. 2: A has 1 active, not > weight 1 -> A. 3: A has 2 > 1 and B has
    # 0 * 2 < 1 -> reschedule (wlc: B). Then B: 1, then 2 > 1 but nobody is under half its
    # weight any more (A: 4 >= 1, B: 4 >= 1), so the cache keeps B.
    assert flows(svc, "198.51.100.7", 6) == [a, a, b, b, b, b]
    entry = lblc(svc).get(as_address("198.51.100.7"))
    assert entry is not None and entry.dest is b


def test_lblc_needs_a_server_strictly_under_half_its_weight_to_move() -> None:
    svc, (a, b) = build_service("lblc", [2, 2])
    assert svc.schedule(to("198.51.100.7")) is a
    svc.open_connections(a, active=3)  # 3 > 2: busier than its weight
    (b_conn,) = svc.open_connections(b, active=1)  # 1 * 2 == 2: not under half
    assert svc.schedule(to("198.51.100.7")) is a
    b_conn.expire()  # B idle: 0 * 2 < 2
    assert svc.schedule(to("198.51.100.7")) is b


def test_lblc_keys_by_destination_address() -> None:
    svc, (a, b) = build_service("lblc", [1, 1])
    svc.open_connections(a, active=1)
    assert svc.schedule(to("198.51.100.7")) is b  # wlc on a miss
    svc.open_connections(b, active=2)
    assert svc.schedule(to("198.51.100.7", sport=1)) is b  # the cache, whatever the source port
    assert svc.schedule(to("198.51.100.8")) is a  # another address: its own miss


def test_lblc_hit_ignores_the_overload_flag() -> None:
    svc, (a, b) = build_service("lblc", [5, 5])
    assert svc.schedule(to("198.51.100.7")) is a
    svc.edit_dest(a.addr, 80, 5, u_threshold=1)
    svc.open_connections(a, inactive=1)
    assert a.overloaded
    assert svc.schedule(to("198.51.100.7")) is a  # cached: the flag is not checked
    assert svc.schedule(to("198.51.100.8")) is b  # a miss runs wlc, which skips it


def test_lblc_deleted_destination_is_rescheduled_and_a_readded_one_revalidated() -> None:
    svc, (a, b) = build_service("lblc", [1, 1])
    assert svc.schedule(to("198.51.100.7")) is a
    svc.del_dest(a.addr, 80)
    assert lblc(svc).holds(a) and svc.expire_trash() == []  # the entry keeps it in the trash
    svc.add_dest(a.addr, 80, 1)  # back from the trash: the same object, available again
    svc.open_connections(a, inactive=5)  # wlc would now prefer B ...
    assert svc.schedule(to("198.51.100.7")) is a  # ... but the entry is valid again
    svc.del_dest(a.addr, 80)
    assert svc.schedule(to("198.51.100.7")) is b  # invalid: rescheduled, entry now B
    assert not lblc(svc).holds(a)


def test_lblc_entries_expire_after_a_day_at_the_half_hourly_full_check() -> None:
    svc, _ = build_service("lblc", [1])
    svc.schedule(to("198.51.100.7"))  # entry at jiffies 0
    sched = lblc(svc)
    # Timer runs every 60 s from 60 s; every 30th run is a full check: 1800 s, 3600 s, ...
    # The entry goes at the first full check with now >= lastuse + 86400 s: exactly 86400 s.
    svc.clock.advance(seconds=DAY - 1)
    assert sched.get(as_address("198.51.100.7")) is not None
    svc.clock.advance(seconds=1)
    assert sched.get(as_address("198.51.100.7")) is None and sched.entries == 0


def test_lblc_use_refreshes_the_entry() -> None:
    svc, _ = build_service("lblc", [1])
    svc.schedule(to("198.51.100.7"))
    svc.clock.advance(seconds=DAY - 600)
    svc.schedule(to("198.51.100.7"))  # lastuse refreshed
    svc.clock.advance(seconds=DAY - 1)
    assert lblc(svc).get(as_address("198.51.100.7")) is not None


def test_lblc_stops_creating_entries_at_one_and_a_half_times_max_size() -> None:
    svc, (a,) = build_service("lblc", [1])
    sched = lblc(svc)
    limit = sched.max_size * 3 // 2
    assert (sched.max_size, limit) == (16384, 24576)
    for n in range(limit + 5):
        assert svc.schedule(to(f"10.{100 + n // 65536}.{n // 256 % 256}.{n % 256}")) is a
    assert sched.entries == limit


def test_lblc_garbage_collects_entries_idle_six_minutes_when_over_max_size() -> None:
    svc, _ = build_service("lblc", [1])
    sched = lblc(svc)
    over = 300
    for n in range(sched.max_size + over):
        svc.schedule(to(f"10.{100 + n // 65536}.{n // 256 % 256}.{n % 256}"))
    svc.clock.advance(seconds=5 * 60)  # runs at 1..5 min: nothing is 6 min old yet
    assert sched.entries == sched.max_size + over
    svc.clock.advance(seconds=60)  # run at 6 min: goal = 300 * 4 / 3 = 400, whole buckets
    removed = sched.max_size + over - sched.entries
    largest_bucket = max(len(b) for b in sched.buckets)
    assert 400 <= removed < 400 + largest_bucket + 32


# -- lblcr ------------------------------------------------------------------------------------------

def test_lblcr_grows_its_set_when_the_member_is_overloaded() -> None:
    svc, (a, b) = build_service("lblcr", [2, 2])
    daddr = "198.51.100.7"
    # A takes flows until it has 3 active > weight 2 while B is under half (0 * 2 < 2); then
    # wlc picks B and the set becomes [B, A]; the set's least loaded member serves next.
    assert flows(svc, daddr, 4) == [a, a, a, b]
    entry = lblcr(svc).get(as_address(daddr))
    assert entry is not None and entry.set.members == [b, a]
    # set_min: B (1, then 2 active) is less loaded than A (3); at 3 each B wins the tie as
    # the first member, and B at 3 > 2 is not "overloaded" since nobody is under half load.
    assert flows(svc, daddr, 3) == [b, b, b]
    assert entry.set.members == [b, a]


def test_lblcr_shrinks_by_the_most_loaded_member_a_day_after_the_last_change() -> None:
    svc, (a, b) = build_service("lblcr", [2, 2])
    daddr = as_address("198.51.100.7")
    flows(svc, str(daddr), 4)  # set [B, A], lastmod = 0
    sched = lblcr(svc)
    entry = sched.get(daddr)
    assert entry is not None
    for _ in range(24):  # keep the entry in use so the full checks leave it alone
        svc.clock.advance(seconds=HOUR)
        svc.schedule(to(str(daddr)))
    assert entry.set.members == [b, a]  # now == lastmod + 24 h: not yet *after* it
    svc.clock.advance(jiffies=1)
    svc.schedule(to(str(daddr)))
    assert entry.set.members == [b]  # A had 3 active against B's 1: the most loaded goes


def test_lblcr_may_drop_the_member_it_returns() -> None:
    svc, (a, b) = build_service("lblcr", [1, 1])
    daddr = "198.51.100.7"
    sched = lblcr(svc)
    assert svc.schedule(to(daddr)) is a
    entry = sched.get(as_address(daddr))
    assert entry is not None
    entry.set.insert(b, svc.clock.jiffies, check=True)  # set [B, A], equal loads, lastmod 0
    for _ in range(24):  # in use hourly, so the full checks keep the entry; no set change
        svc.clock.advance(seconds=HOUR)
        assert svc.schedule(to(daddr)) is b
    svc.clock.advance(jiffies=1)
    # set_min and set_max both keep the first on ties: B is chosen AND erased.
    assert svc.schedule(to(daddr)) is b
    assert entry.set.members == [a]


def test_lblcr_set_min_skips_deleted_members() -> None:
    svc, (a, b) = build_service("lblcr", [2, 2])
    daddr = "198.51.100.7"
    flows(svc, daddr, 4)  # set [B, A]
    svc.del_dest(b.addr, 80)
    assert svc.schedule(to(daddr)) is a
    entry = lblcr(svc).get(as_address(daddr))
    assert entry is not None and entry.set.members == [b, a]  # membership is kept
    assert lblcr(svc).holds(b)


def test_lblcr_entries_expire_like_lblc() -> None:
    svc, _ = build_service("lblcr", [1, 1])
    svc.schedule(to("198.51.100.7"))
    svc.clock.advance(seconds=DAY - 1)
    assert lblcr(svc).entries == 1
    svc.clock.advance(seconds=1)
    assert lblcr(svc).entries == 0
    assert dest_address(0) == "10.0.0.1"
