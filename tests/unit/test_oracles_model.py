"""The oracles' common model against facts read from the Linux 6.1.192 source (Debian 12's
kernel): hash primitives, flag names, list order, trash, thresholds, connection accounting.

Expected values are derived by hand from the kernel code or are the kernel's own published
test vectors (lib/test_siphash.c); none is produced by running the oracle itself.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from oracles import (  # noqa: E402
    IP_VS_SVC_F_ONEPACKET,
    IP_VS_SVC_F_SCHED1,
    IP_VS_SVC_F_SCHED2,
    IP_VS_SVC_F_SCHED3,
    IPPROTO_TCP,
    IPPROTO_UDP,
    IpvsError,
    PacketInfo,
    SchedFlagsError,
    Service,
    build_service,
    format_sched_flags,
    parse_sched_flags,
    tcp_next_state,
    tcp_state_is_active,
)
from oracles.hashing import fold_address, hash_32, hsiphash, siphash_c_d  # noqa: E402
from oracles.model import as_address  # noqa: E402

KEY = (0x0706050403020100, 0x0F0E0D0C0B0A0908)  # key bytes 00..0f, as in lib/test_siphash.c


# -- hash primitives ---------------------------------------------------------------------------

def test_siphash_2_4_matches_the_reference_vectors() -> None:
    # The SipHash paper's vectors (also lib/test_siphash.c): message bytes 0..n-1.
    assert siphash_c_d(b"", *KEY, 2, 4) == 0x726FDB47DD0E0E31
    assert siphash_c_d(bytes(range(15)), *KEY, 2, 4) == 0xA129CA6149BE45E5
    assert siphash_c_d(bytes(range(63)), *KEY, 2, 4) == 0x958A324CEB064572


@pytest.mark.parametrize(
    ("length", "expected"),
    [(0, 0x050FC4DC), (1, 0x7D57CA93), (4, 0x88D38328), (7, 0x9BB11140), (8, 0x8D299A8E),
     (15, 0x2A519956), (16, 0x7D908B66), (63, 0xB7BBB3A8)],
)
def test_hsiphash_matches_the_kernels_64bit_self_test(length: int, expected: int) -> None:
    # lib/test_siphash.c's test_vectors_hsiphash for BITS_PER_LONG == 64: on 64-bit kernels
    # hsiphash is SipHash-1-3 truncated to 32 bits, which these vectors pin down.
    assert hsiphash(bytes(range(length)), KEY) == expected


def test_hash_32_is_the_golden_ratio_multiply_keeping_the_top_bits() -> None:
    assert hash_32(1, 8) == 0x61C88647 >> 24 == 0x61
    assert hash_32(0x0A000001, 8) == ((0x0A000001 * 0x61C88647) & 0xFFFFFFFF) >> 24
    assert hash_32(0xFFFFFFFF, 10) == ((0xFFFFFFFF * 0x61C88647) & 0xFFFFFFFF) >> 22


def test_address_folding_follows_the_service_family() -> None:
    v4 = as_address("192.0.2.7")
    assert fold_address(4, v4) == 0xC0000207
    v6 = as_address("2001:db8:1:2:3:4:5:6")
    assert fold_address(6, v6) == 0x20010DB8 ^ 0x00010002 ^ 0x00030004 ^ 0x00050006
    # An IPv4 destination of an IPv6 service sits in the first word, the rest zero.
    assert fold_address(6, v4) == 0xC0000207
    # An IPv6 destination of an IPv4 service: only its first word is read.
    assert fold_address(4, v6) == 0x20010DB8


# -- scheduler flags as ipvsadm names them -------------------------------------------------------

def test_sched_flag_words_map_to_the_three_bits() -> None:
    assert parse_sched_flags("rr", "flag-1,flag-3") == IP_VS_SVC_F_SCHED1 | IP_VS_SVC_F_SCHED3
    assert parse_sched_flags("sh", "sh-fallback,sh-port") == IP_VS_SVC_F_SCHED1 | IP_VS_SVC_F_SCHED2
    assert parse_sched_flags("mh", "mh-port") == IP_VS_SVC_F_SCHED2
    assert parse_sched_flags("sh", "flag-2") == IP_VS_SVC_F_SCHED2  # numeric forms fit any scheduler
    assert parse_sched_flags(None, "flag-1") == IP_VS_SVC_F_SCHED1
    assert parse_sched_flags("sh", "") == 0  # an empty -b is ignored by ipvsadm


@pytest.mark.parametrize(
    ("scheduler", "text", "message"),
    [("mh", "sh-port", "incompatible scheduler flag `sh-port'"),
     (None, "mh-fallback", "incompatible scheduler flag `mh-fallback'"),  # -s absent: wlc
     ("sh", "sh-port,bogus", "invalid scheduler flag `bogus'")],
)
def test_sched_flag_refusals_are_ipvsadms(scheduler: str | None, text: str, message: str) -> None:
    with pytest.raises(SchedFlagsError) as caught:
        parse_sched_flags(scheduler, text)
    assert str(caught.value) == message
    assert caught.value.exit_status == 2


def test_sched_flags_print_by_the_schedulers_names() -> None:
    both = IP_VS_SVC_F_SCHED1 | IP_VS_SVC_F_SCHED2
    assert format_sched_flags("sh", both) == "sh-fallback,sh-port"
    assert format_sched_flags("mh", both | IP_VS_SVC_F_SCHED3) == "mh-fallback,mh-port"
    assert format_sched_flags("wrr", both | IP_VS_SVC_F_SCHED3) == "flag-1,flag-2,flag-3"
    assert format_sched_flags("rr", 0) == ""


# -- destination list, trash, thresholds ----------------------------------------------------------

def test_new_destinations_go_to_the_list_head_and_edits_do_not_move_them() -> None:
    svc = Service("rr")
    a = svc.add_dest("10.0.0.1", 80, 1)
    b = svc.add_dest("10.0.0.2", 80, 1)
    c = svc.add_dest("10.0.0.3", 80, 1)
    assert svc.destinations == [c, b, a]
    svc.edit_dest("10.0.0.1", 80, 5)
    assert svc.destinations == [c, b, a]


def test_last_weight_keeps_the_latest_non_zero_weight() -> None:
    svc = Service("wlc")
    d = svc.add_dest("10.0.0.1", 80, 0)
    assert (d.weight, d.last_weight) == (0, 0)  # an add always sets it, even to 0
    svc.edit_dest("10.0.0.1", 80, 7)
    svc.edit_dest("10.0.0.1", 80, 0)
    assert (d.weight, d.last_weight) == (0, 7)


def test_control_path_refusals_use_the_kernels_errnos() -> None:
    svc = Service("wlc")
    svc.add_dest("10.0.0.1", 80, 1)
    cases: list[tuple[Callable[[], object], str]] = [
        (lambda: svc.add_dest("10.0.0.2", 80, -1), "ERANGE"),
        (lambda: svc.add_dest("10.0.0.2", 80, 1, u_threshold=5, l_threshold=6), "ERANGE"),
        (lambda: svc.add_dest("10.0.0.2", 80, 1, u_threshold=2**31, l_threshold=0), "EINVAL"),
        (lambda: svc.add_dest("10.0.0.1", 80, 1), "EEXIST"),
        (lambda: svc.edit_dest("10.0.0.9", 80, 1), "ENOENT"),
        (lambda: svc.del_dest("10.0.0.9", 80), "ENOENT"),
    ]
    for call, errno_name in cases:
        with pytest.raises(IpvsError) as caught:
            call()
        assert caught.value.errno_name == errno_name
    # A weight above 65535 is fine for the kernel (only ipvsadm may limit it).
    assert svc.add_dest("10.0.0.3", 80, 70000).weight == 70000


def test_a_deleted_destination_comes_back_from_the_trash_with_its_counters() -> None:
    svc = Service("wlc")
    d = svc.add_dest("10.0.0.1", 80, 3)
    conns = svc.open_connections(d, active=2, inactive=1)
    svc.del_dest("10.0.0.1", 80)
    assert d.available is False and svc.trash == [d]
    assert svc.expire_trash() == []  # connections still reference it
    again = svc.add_dest("10.0.0.1", 80, 1)
    assert again is d and again.available
    assert (again.activeconns, again.inactconns, again.weight) == (2, 1, 1)
    for conn in conns:
        conn.expire()
    svc.del_dest("10.0.0.1", 80)
    assert svc.expire_trash() == [d]
    fresh = svc.add_dest("10.0.0.1", 80, 1)
    assert fresh is not d and fresh.totalconns == 0


def test_lower_threshold_defaults_to_three_quarters_of_the_upper() -> None:
    svc = Service("wlc")
    # l_threshold_val = u - u/4 (integer shift): 4 -> 3, 10 -> 8, 3 -> 3, 1 -> 1
    for upper, lower in [(4, 3), (10, 8), (3, 3), (1, 1)]:
        d = svc.add_dest(f"10.0.1.{upper}", 80, 1, u_threshold=upper)
        assert d.l_threshold_val == lower
    assert svc.add_dest("10.0.2.1", 80, 1, u_threshold=10, l_threshold=2).l_threshold_val == 2


def test_overload_sets_at_the_upper_threshold_and_clears_below_the_lower() -> None:
    svc = Service("wlc")
    d = svc.add_dest("10.0.0.1", 80, 1, u_threshold=4)  # lower value 3
    conns = [svc.bind_connection(d) for _ in range(3)]
    assert not d.overloaded
    conns.append(svc.bind_connection(d))  # totalconns reaches 4 == u
    assert d.overloaded
    conns.pop().expire()  # 3: between the thresholds, stays set
    assert d.overloaded
    conns.pop().expire()  # from 3 (== lower) to 2: cleared
    assert not d.overloaded


def test_changing_thresholds_reevaluates_overload_with_hysteresis() -> None:
    svc = Service("wlc")
    d = svc.add_dest("10.0.0.1", 80, 1)
    svc.open_connections(d, inactive=5)
    svc.edit_dest("10.0.0.1", 80, 1, u_threshold=5)  # 5 >= u: set
    assert d.overloaded
    svc.edit_dest("10.0.0.1", 80, 1, u_threshold=6, l_threshold=4)  # 4 <= 5 < 6: unchanged
    assert d.overloaded
    svc.edit_dest("10.0.0.1", 80, 1, u_threshold=7, l_threshold=5)  # 5 == lower: unchanged
    assert d.overloaded
    svc.edit_dest("10.0.0.1", 80, 1, u_threshold=8, l_threshold=6)  # below the lower one
    assert not d.overloaded
    svc.edit_dest("10.0.0.1", 80, 1, u_threshold=0)  # no upper threshold: cleared
    assert not d.overloaded


def test_overload_with_an_upper_threshold_of_two() -> None:
    svc = Service("wlc")
    d = svc.add_dest("10.0.0.1", 80, 1, u_threshold=2)
    conns = svc.open_connections(d, inactive=2)  # lower value: 2 - (2 >> 2) = 2
    assert d.overloaded
    conns[0].expire()  # from 2 (== lower value) to 1: cleared by the expiry itself
    assert not d.overloaded
    svc.open_connections(d, inactive=3)  # 2 (== u: set), then 3 and 4 (no re-evaluation)
    assert d.overloaded and d.totalconns == 4


# -- connection accounting ---------------------------------------------------------------------------

def test_tcp_active_states_of_6_1() -> None:
    active = {s for s in ("NONE", "ESTABLISHED", "SYN_SENT", "SYN_RECV", "FIN_WAIT", "TIME_WAIT",
                          "CLOSE", "CLOSE_WAIT", "LAST_ACK", "LISTEN", "SYNACK") if tcp_state_is_active(s)}
    assert active == {"ESTABLISHED", "SYN_SENT", "SYN_RECV", "SYNACK"}


def test_tcp_table_spot_checks() -> None:
    assert tcp_next_state("INPUT", "syn", "NONE") == "SYN_RECV"
    assert tcp_next_state("INPUT_ONLY", "syn", "NONE") == "SYN_RECV"
    assert tcp_next_state("OUTPUT", "syn", "NONE") == "SYN_SENT"
    assert tcp_next_state("INPUT", "rst", "SYN_RECV") == "SYN_RECV"  # a client RST keeps SYN_RECV
    assert tcp_next_state("OUTPUT", "rst", "SYN_RECV") == "CLOSE"  # the server's RST closes
    assert tcp_next_state("INPUT", "fin", "ESTABLISHED") == "CLOSE_WAIT"
    assert tcp_next_state("INPUT_ONLY", "fin", "ESTABLISHED") == "FIN_WAIT"
    assert tcp_next_state("INPUT", None, "ESTABLISHED") == "CLOSE"


def test_a_syn_makes_an_active_connection_and_udp_stays_inactive() -> None:
    svc, (d,) = build_service("rr", [1])
    tcp = svc.new_flow(PacketInfo.of("192.0.2.1", "198.51.100.1", 40000, 80))
    assert tcp is not None and tcp.state == "SYN_RECV"
    assert (d.activeconns, d.inactconns, d.totalconns) == (1, 0, 1)
    tcp.tcp_segment("INPUT_ONLY", "fin")  # SYN_RECV -> TIME_WAIT: inactive
    assert (d.activeconns, d.inactconns) == (0, 1)
    svc.new_flow(PacketInfo.of("192.0.2.1", "198.51.100.1", 40001, 80, IPPROTO_UDP))
    assert (d.activeconns, d.inactconns) == (0, 2)
    tcp.expire()
    assert (d.activeconns, d.inactconns, d.totalconns) == (0, 1, 1)


def test_connection_overhead_counts_totalconns_in_6_1_192() -> None:
    svc, (d,) = build_service("wlc", [1])
    svc.open_connections(d, active=2, inactive=3)
    # (activeconns << 8) + totalconns = 512 + 5, i.e. 257 per active, 1 per inactive
    assert d.conn_overhead == 517


def test_one_packet_udp_connections_leave_no_count_behind() -> None:
    svc, (a, b) = build_service("wlc", [1, 1], protocol=IPPROTO_UDP, flags=IP_VS_SVC_F_ONEPACKET)
    picks = []
    for sport in range(4):
        conn = svc.new_flow(PacketInfo.of("192.0.2.1", "198.51.100.1", 5000 + sport, 53, IPPROTO_UDP))
        assert conn is not None and conn.expired
        picks.append(conn.dest)
    # Nothing accumulates, so wlc keeps choosing the first destination of the list.
    assert picks == [a, a, a, a]
    assert a.totalconns == b.totalconns == 0


def test_ops_is_for_udp_only() -> None:
    svc, (a, b) = build_service("wlc", [1, 1], protocol=IPPROTO_TCP, flags=IP_VS_SVC_F_ONEPACKET)
    first = svc.new_flow(PacketInfo.of("192.0.2.1", "198.51.100.1", 5000, 80))
    second = svc.new_flow(PacketInfo.of("192.0.2.1", "198.51.100.1", 5001, 80))
    assert first is not None and second is not None and not first.expired
    assert (first.dest, second.dest) == (a, b)


def test_same_scheduler_edit_keeps_its_state_and_another_reinitialises() -> None:
    svc, (a, b, c) = build_service("rr", [1, 1, 1])
    pkt = PacketInfo.of("192.0.2.1", "198.51.100.1", 1, 80)
    assert svc.schedule(pkt) is a
    svc.edit_service(scheduler="rr", flags=IP_VS_SVC_F_SCHED3)
    assert svc.schedule(pkt) is b  # the cursor survived
    svc.edit_service(scheduler="wrr")
    svc.edit_service(scheduler="rr")
    assert svc.schedule(pkt) is a  # a fresh rr starts from the head
