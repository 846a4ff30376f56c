"""Golden output of lbadm's ipvsadm-compatible listings.

Every expected text below is written out literally from ipvsadm 1.31's printf
formats ("%-33s", "  -> %-28s %-7s %-6d %-10u %-10u", print_largenum's
"%9llu"/"%8lluK", "%02d:%02d", ...), including the trailing blanks ipvsadm
leaves after its last, left-aligned column. Nothing here is produced by the
code under test.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from lb.ipvsadm_fmt import (
    ListFormat,
    expire_mmss,
    format_connections,
    format_daemons,
    format_list,
    format_one_service,
    format_save,
    format_timeout,
    largenum,
)
from lb.ipvsadm_order import compare_dests, compare_services, glibc_merge_sort, sorted_services
from lb.namedb import NameDB, NumericNames


def _stats(conns: int = 0, inpkts: int = 0, outpkts: int = 0, inbytes: int = 0, outbytes: int = 0, **rates: int) -> dict[str, int]:
    return {"conns": conns, "inpkts": inpkts, "outpkts": outpkts, "inbytes": inbytes, "outbytes": outbytes, **rates}


def _dest(addr: str, port: int, fwd: str, weight: int, active: int = 0, inactive: int = 0, **extra: Any) -> dict[str, Any]:
    dest = {
        "addr": addr, "port": port, "fwd": fwd, "weight": weight, "u_threshold": 0, "l_threshold": 0,
        "active": active, "inactive": inactive, "persist": 0, "stats": _stats(),
        "l2": {"state": "n/a", "ifname": "", "mac": "", "reason": ""},
    }  # fmt: skip
    dest.update(extra)
    return dest


# Services in lbd's insertion order, destinations most recent first: ipvsadm
# sorts both, so the expected listings below show a different order.
LIST_RESULT: dict[str, Any] = {
    "version": "1.2.1",
    "conn_tab_size": 4096,
    "services": [
        {
            "proto": "tcp", "addr": "10.0.0.1", "port": 80, "sched": "rr", "persistent": None,
            "netmask": "255.255.255.255",
            "stats": _stats(123, 100_000_000, 99_999_999, 123_456_789_012, 500_000_000_000_000,
                            cps=2, inpps=30, outpps=29, inbps=4_000, outbps=123_456_789),
            "dests": [
                _dest("10.0.0.3", 80, "route", 2, active=5, inactive=12,
                      stats=_stats(100, 5_000, 4_000, 1_000_000_000, 999_999_999, cps=1, inpps=20, outpps=19,
                                   inbps=2_500, outbps=100_000_000)),
                _dest("10.0.0.2", 80, "route", 1, inactive=3,
                      stats=_stats(23, 99_995_000, 99_995_999, 122_456_789_012, 499_999_000_000_001, cps=1,
                                   inpps=10, outpps=10, inbps=1_500, outbps=23_456_789)),
            ],
        },
        {
            "proto": "udp", "addr": "10.0.0.1", "port": 53, "sched": "wlc", "persistent": 360,
            "netmask": "255.255.255.0", "stats": _stats(),
            "dests": [_dest("10.0.0.5", 5353, "masq", 0)],
        },
        {
            "proto": "tcp", "addr": "10.0.0.1", "port": 443, "sched": "wlc", "persistent": 300,
            "netmask": "255.255.255.255", "stats": _stats(),
            "dests": [
                _dest("192.168.100.200", 443, "tunnel", 65535, active=123456, inactive=7),
                _dest("10.0.0.6", 443, "fullnat", 3),
            ],
        },
        {
            "proto": "tcp", "addr": "9.0.0.1", "port": 80, "sched": "rr", "persistent": None,
            "netmask": "255.255.255.255", "stats": _stats(), "dests": [],
        },
    ],
}  # fmt: skip

NUMERIC = NumericNames()


def test_list_numeric_matches_ipvsadm_layout_and_sort_order() -> None:
    # 192.168.100.200 before 10.0.0.6: libipvs compares addresses by 32-bit
    # subtraction, which wraps for addresses more than 2^31 apart.
    expected = (
        "IP Virtual Server version 1.2.1 (size=4096)\n"
        "Prot LocalAddress:Port Scheduler Flags\n"
        "  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\n"
        "TCP  9.0.0.1:80 rr\n"
        "TCP  10.0.0.1:80 rr\n"
        "  -> 10.0.0.2:80                  Route   1      0          3         \n"
        "  -> 10.0.0.3:80                  Route   2      5          12        \n"
        "TCP  10.0.0.1:443 wlc persistent 300\n"
        "  -> 192.168.100.200:443          Tunnel  65535  123456     7         \n"
        "  -> 10.0.0.6:443                 FullNat 3      0          0         \n"
        "UDP  10.0.0.1:53 wlc persistent 360 mask 255.255.255.0\n"
        "  -> 10.0.0.5:5353                Masq    0      0          0         \n"
    )
    assert format_list(LIST_RESULT, ListFormat(numeric=True), NUMERIC) == expected


def test_nosort_keeps_lbd_order() -> None:
    text = format_list(LIST_RESULT, ListFormat(numeric=True, nosort=True), NUMERIC)
    service_lines = [line for line in text.splitlines() if line.startswith(("TCP", "UDP"))]
    assert service_lines == [
        "TCP  10.0.0.1:80 rr",
        "UDP  10.0.0.1:53 wlc persistent 360 mask 255.255.255.0",
        "TCP  10.0.0.1:443 wlc persistent 300",
        "TCP  9.0.0.1:80 rr",
    ]
    assert "  -> 10.0.0.3:80                  Route   2      5          12        " in text.splitlines()[4]


def test_empty_table() -> None:
    result = {"version": "1.2.1", "conn_tab_size": 1048576, "services": []}
    assert format_list(result, ListFormat(numeric=True), NUMERIC) == (
        "IP Virtual Server version 1.2.1 (size=1048576)\n"
        "Prot LocalAddress:Port Scheduler Flags\n"
        "  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\n"
    )


def test_stats_with_large_number_suffixes() -> None:
    one = {**LIST_RESULT, "services": [LIST_RESULT["services"][0]]}
    expected = (
        "IP Virtual Server version 1.2.1 (size=4096)\n"
        "Prot LocalAddress:Port               Conns   InPkts  OutPkts  InBytes OutBytes\n"
        "  -> RemoteAddress:Port\n"
        "TCP  10.0.0.1:80                       123  100000K 99999999     123G     500T\n"
        "  -> 10.0.0.2:80                        23 99995000 99995999     122G     499T\n"
        "  -> 10.0.0.3:80                       100     5000     4000    1000M  999999K\n"
    )
    assert format_list(one, ListFormat(numeric=True, stats=True), NUMERIC) == expected


def test_stats_exact_widens_columns_only_when_needed() -> None:
    one = {**LIST_RESULT, "services": [LIST_RESULT["services"][0]]}
    expected = (
        "IP Virtual Server version 1.2.1 (size=4096)\n"
        "Prot LocalAddress:Port               Conns   InPkts  OutPkts  InBytes OutBytes\n"
        "  -> RemoteAddress:Port\n"
        "TCP  10.0.0.1:80                       123 100000000 99999999 123456789012 500000000000000\n"
        "  -> 10.0.0.2:80                        23 99995000 99995999 122456789012 499999000000001\n"
        "  -> 10.0.0.3:80                       100     5000     4000 1000000000 999999999\n"
    )
    assert format_list(one, ListFormat(numeric=True, stats=True, exact=True), NUMERIC) == expected


def test_rate_prints_dest_packet_rates_raw_and_byte_rates_as_large_numbers() -> None:
    one = {**LIST_RESULT, "services": [LIST_RESULT["services"][0]]}
    expected = (
        "IP Virtual Server version 1.2.1 (size=4096)\n"
        "Prot LocalAddress:Port                 CPS    InPPS   OutPPS    InBPS   OutBPS\n"
        "  -> RemoteAddress:Port\n"
        "TCP  10.0.0.1:80                         2       30       29     4000  123456K\n"
        "  -> 10.0.0.2:80                         1       10       10     1500 23456789\n"
        "  -> 10.0.0.3:80                         1       20       19     2500  100000K\n"
    )
    assert format_list(one, ListFormat(numeric=True, rate=True), NUMERIC) == expected


def test_rate_without_rate_fields_prints_zeros() -> None:
    result = {**LIST_RESULT, "services": [LIST_RESULT["services"][3]]}
    text = format_list(result, ListFormat(numeric=True, rate=True), NUMERIC)
    assert text.splitlines()[3] == "TCP  9.0.0.1:80                          0        0        0        0        0"


def test_thresholds_and_persistent_conn_layouts() -> None:
    svc = copy.deepcopy(LIST_RESULT["services"][1])
    svc["dests"][0].update(u_threshold=1000, l_threshold=800, persist=4, active=2, inactive=1)
    result = {**LIST_RESULT, "services": [svc]}
    assert format_list(result, ListFormat(numeric=True, thresholds=True), NUMERIC) == (
        "IP Virtual Server version 1.2.1 (size=4096)\n"
        "Prot LocalAddress:Port            Uthreshold Lthreshold ActiveConn InActConn \n"
        "  -> RemoteAddress:Port\n"
        "UDP  10.0.0.1:53 wlc persistent 360 mask 255.255.255.0\n"
        "  -> 10.0.0.5:5353                1000       800        2          1         \n"
    )
    assert format_list(result, ListFormat(numeric=True, persistent_conn=True), NUMERIC) == (
        "IP Virtual Server version 1.2.1 (size=4096)\n"
        "Prot LocalAddress:Port            Weight    PersistConn ActiveConn InActConn \n"
        "  -> RemoteAddress:Port\n"
        "UDP  10.0.0.1:53 wlc persistent 360 mask 255.255.255.0\n"
        "  -> 10.0.0.5:5353                0         4           2          1         \n"
    )


def test_tun_info_layout() -> None:
    result = {**LIST_RESULT, "services": [LIST_RESULT["services"][2]]}
    assert format_list(result, ListFormat(numeric=True, tun_info=True), NUMERIC) == (
        "IP Virtual Server version 1.2.1 (size=4096)\n"
        "Prot LocalAddress:Port Scheduler Flags\n"
        "  -> RemoteAddress:Port           Forward TunnelInfo    Weight ActiveConn InActConn\n"
        "TCP  10.0.0.1:443 wlc persistent 300\n"
        "  -> 192.168.100.200:443          Tunnel  ipip          65535  123456     7         \n"
        "  -> 10.0.0.6:443                 FullNat n/a           3      0          0         \n"
    )


def test_one_service_has_no_version_header() -> None:
    result = {**LIST_RESULT, "services": [LIST_RESULT["services"][0]]}
    assert format_one_service(result, ListFormat(numeric=True), NUMERIC) == (
        "Prot LocalAddress:Port Scheduler Flags\n"
        "  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\n"
        "TCP  10.0.0.1:80 rr\n"
        "  -> 10.0.0.2:80                  Route   1      0          3         \n"
        "  -> 10.0.0.3:80                  Route   2      5          12        \n"
    )


def test_save_numeric_is_restorable_rules() -> None:
    assert format_save(LIST_RESULT, numeric=True, names=NUMERIC) == (
        "-A -t 9.0.0.1:80 -s rr\n"
        "-A -t 10.0.0.1:80 -s rr\n"
        "-a -t 10.0.0.1:80 -r 10.0.0.2:80 -g -w 1\n"
        "-a -t 10.0.0.1:80 -r 10.0.0.3:80 -g -w 2\n"
        "-A -t 10.0.0.1:443 -s wlc -p 300\n"
        "-a -t 10.0.0.1:443 -r 192.168.100.200:443 -i -w 65535 --tun-type ipip\n"
        "-a -t 10.0.0.1:443 -r 10.0.0.6:443 -b -w 3\n"
        "-A -u 10.0.0.1:53 -s wlc -p 360 -M 255.255.255.0\n"
        "-a -u 10.0.0.1:53 -r 10.0.0.5:5353 -m -w 0\n"
    )


def test_fwmark_and_service_extras() -> None:
    result = {
        "version": "1.2.1",
        "conn_tab_size": 4096,
        "services": [
            {"fwmark": 7, "sched": "wlc", "persistent": 600, "netmask": "255.255.0.0", "stats": _stats(),
             "dests": [_dest("10.0.0.9", 0, "route", 1)]},
            {"proto": "udp", "addr": "10.0.0.1", "port": 0, "sched": "rr", "persistent": 60,
             "netmask": "255.255.255.255", "ops": True, "sched_flags": ["flag-1", "flag-3"], "stats": _stats(),
             "dests": []},
        ],
    }  # fmt: skip
    assert format_list(result, ListFormat(numeric=True), NUMERIC) == (
        "IP Virtual Server version 1.2.1 (size=4096)\n"
        "Prot LocalAddress:Port Scheduler Flags\n"
        "  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\n"
        "UDP  10.0.0.1:0 rr (flag-1,flag-3) persistent 60 ops\n"
        "FWM  7 wlc persistent 600 mask 255.255.0.0\n"
        "  -> 10.0.0.9:0                   Route   1      0          0         \n"
    )
    assert format_save(result, numeric=True, names=NUMERIC) == (
        "-A -u 10.0.0.1:0 -s rr -p 60 -o -b flag-1,flag-3\n"  # ipvsadm -S writes -b
        "-A -f 7 -s wlc -p 600 -M 255.255.0.0\n"
        "-a -f 7 -r 10.0.0.9:0 -g -w 1\n"
    )


@pytest.fixture()
def names(tmp_path: Path) -> NameDB:
    hosts = tmp_path / "hosts"
    hosts.write_text(
        "# comment line\n"
        "127.0.0.1 localhost\n"
        "10.0.0.1 vip.example vip\n"
        "10.0.0.2 web-number-two.backend.internal.example web2\n"
        "10.0.0.3 web3  # trailing comment\n"
    )
    services = tmp_path / "services"
    services.write_text("http\t\t80/tcp\t\twww\n" "domain\t\t53/udp\n" "domain\t\t53/tcp\n" "mdns\t\t5353/udp\n")
    return NameDB(hosts_path=str(hosts), services_path=str(services))


def test_non_numeric_uses_hosts_and_services_files_and_truncates(names: NameDB) -> None:
    result = {**LIST_RESULT, "services": [LIST_RESULT["services"][0], LIST_RESULT["services"][1]]}
    assert format_list(result, ListFormat(), names) == (
        "IP Virtual Server version 1.2.1 (size=4096)\n"
        "Prot LocalAddress:Port Scheduler Flags\n"
        "  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\n"
        "TCP  vip.example:http rr\n"
        "  -> web-number-two.backend.inter Route   1      0          3         \n"
        "  -> web3:http                    Route   2      5          12        \n"
        "UDP  vip.example:domain wlc persistent 360 mask 255.255.255.0\n"
        "  -> 10.0.0.5:mdns                Masq    0      0          0         \n"
    )


def test_non_numeric_save_is_not_truncated(names: NameDB) -> None:
    result = {**LIST_RESULT, "services": [LIST_RESULT["services"][0]]}
    assert format_save(result, numeric=False, names=names) == (
        "-A -t vip.example:http -s rr\n"
        "-a -t vip.example:http -r web-number-two.backend.internal.example:http -g -w 1\n"
        "-a -t vip.example:http -r web3:http -g -w 2\n"
    )


def test_long_service_label_is_cut_at_33_characters(tmp_path: Path) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text("10.0.0.1 a-really-long-virtual-server-name.example.org\n")
    db = NameDB(hosts_path=str(hosts), services_path=str(tmp_path / "none"))
    result = {**LIST_RESULT, "services": [LIST_RESULT["services"][3] | {"addr": "10.0.0.1"}]}
    lines = format_list(result, ListFormat(), db).splitlines()
    assert lines[3] == "TCP  a-really-long-virtual-server rr"
    stats_lines = format_list(result, ListFormat(stats=True), db).splitlines()
    assert stats_lines[3] == "TCP  a-really-long-virtual-server        0        0        0        0        0"


CONNECTIONS = {
    "connections": [
        {"proto": "tcp", "caddr": "192.168.1.10", "cport": 51234, "vaddr": "10.0.0.1", "vport": 80,
         "daddr": "10.0.0.2", "dport": 80, "state": "ESTABLISHED", "expires_ms": 899_999},
        {"proto": "udp", "caddr": "192.168.1.11", "cport": 40000, "vaddr": "10.0.0.1", "vport": 53,
         "daddr": "10.0.0.5", "dport": 5353, "state": "UDP", "expires_ms": 5_000},
        {"proto": "tcp", "caddr": "1.2.3.4", "cport": 1, "vaddr": "10.0.0.1", "vport": 443,
         "daddr": "192.168.100.200", "dport": 443, "state": "SYN_RECV", "expires_ms": 6_000_000},
    ]
}  # fmt: skip


def test_connection_listing() -> None:
    assert format_connections(CONNECTIONS, ListFormat(numeric=True), NUMERIC) == (
        "IPVS connection entries\n"
        "pro expire state       source             virtual            destination\n"
        "TCP 14:59  ESTABLISHED 192.168.1.10:51234 10.0.0.1:80        10.0.0.2:80\n"
        "UDP 00:05  UDP         192.168.1.11:40000 10.0.0.1:53        10.0.0.5:5353\n"
        "TCP 100:00 SYN_RECV    1.2.3.4:1          10.0.0.1:443       192.168.100.200:443\n"
    )


def test_connection_listing_with_names_and_persistent_conn_header(names: NameDB) -> None:
    text = format_connections({"connections": CONNECTIONS["connections"][:1]}, ListFormat(persistent_conn=True), names)
    assert text == (
        "IPVS connection entries\n"
        "pro expire state       source             virtual            destination        pe name          pe_data\n"
        "TCP 14:59  ESTABLISHED 192.168.1.10:51234 vip.example:http   web-number-two.backend.internal.example:http\n"
    )


@pytest.mark.parametrize(
    ("expires_ms", "text"),
    [(0, "00:00"), (999, "00:00"), (1_000, "00:01"), (59_999, "00:59"), (60_000, "01:00"), (900_000, "15:00"), (-5, "00:00")],
)
def test_expire_is_whole_seconds_as_mm_ss(expires_ms: int, text: str) -> None:
    assert expire_mmss(expires_ms) == text


@pytest.mark.parametrize(
    ("value", "exact", "text"),
    [
        (0, False, "        0"),
        (99_999_999, False, " 99999999"),
        (100_000_000, False, "  100000K"),
        (999_999_999, False, "  999999K"),
        (1_000_000_000, False, "    1000M"),
        (99_999_999_999, False, "   99999M"),
        (100_000_000_000, False, "     100G"),
        (99_999_999_999_999, False, "   99999G"),
        (100_000_000_000_000, False, "     100T"),
        (12_345_678, True, " 12345678"),
        (123_456_789, True, " 123456789"),
    ],
)
def test_largenum(value: int, exact: bool, text: str) -> None:
    assert largenum(value, exact) == text


def test_timeout_and_daemon_lines() -> None:
    assert format_timeout({"tcp": 900, "tcpfin": 120, "udp": 300}) == "Timeout (tcp tcpfin udp): 900 120 300\n"
    daemons = {"daemons": [{"state": "master", "mcast_ifn": "eth0", "syncid": 0},
                           {"state": "backup", "mcast_ifn": "eth1", "syncid": 3, "sync_maxlen": 1472,
                            "mcast_group": "224.0.0.81", "mcast_port": 8848, "mcast_ttl": 1}]}  # fmt: skip
    assert format_daemons(daemons) == (
        "master sync daemon (mcast=eth0, syncid=0)\n"
        "backup sync daemon (mcast=eth1, syncid=3, maxlen=1472, group=224.0.0.81, port=8848, ttl=1)\n"
    )


def test_dest_sort_wraps_like_libipvs_and_breaks_ties_by_port() -> None:
    dests = [{"addr": "10.0.0.1", "port": 90}, {"addr": "10.0.0.1", "port": 80}, {"addr": "100.0.0.1", "port": 1}]
    assert [(d["addr"], d["port"]) for d in glibc_merge_sort(dests, compare_dests)] == [
        ("10.0.0.1", 80),
        ("10.0.0.1", 90),
        ("100.0.0.1", 1),
    ]
    # 10.x and 192.x are more than 2^31 apart: the subtraction wraps and 192.x sorts first.
    assert compare_dests({"addr": "192.168.0.1", "port": 1}, {"addr": "10.0.0.1", "port": 1}) < 0


@pytest.mark.parametrize("seed", range(40))
def test_service_sort_is_the_merge_sort_of_libipvs_comparator(seed: int) -> None:
    """sorted_services takes Python's sort when no compared field can wrap: the same order as
    glibc's merge sort over libipvs's comparator, on sets that wrap (10.x with 192.x, high
    fwmarks) and sets that do not, IPv4 and IPv6, fwmark and address services mixed."""
    import random

    rng = random.Random(seed)
    wide = seed % 2 == 0  # even seeds: addresses and marks far enough apart to wrap

    def addr() -> str:
        if rng.random() < 0.2:
            return f"2001:db8::{rng.randrange(1, 65536):x}" if not wide else f"{rng.choice(['2001', 'fe80'])}::{rng.randrange(65536):x}"
        first = rng.choice([10, 192, 250]) if wide else 10
        return f"{first}.{rng.randrange(256)}.{rng.randrange(4)}.{rng.randrange(256)}"

    services: list[dict[str, Any]] = []
    for _ in range(rng.randrange(1, 60)):
        if rng.random() < 0.15:
            mark = rng.choice([1, 2, 3, 2**31 + 5, 2**32 - 1]) if wide else rng.randrange(1, 5)
            services.append({"fwmark": mark, "proto": "tcp", "addr": "0.0.0.0", "port": 0})
        else:
            a = addr()
            services.append({"proto": rng.choice(["tcp", "udp"]), "addr": a, "port": rng.choice([80, 443, 8080]),
                             **({"ipv6": True} if ":" in a else {})})
    expected = glibc_merge_sort(services, compare_services)
    assert [id(s) for s in sorted_services(services)] == [id(s) for s in expected]
