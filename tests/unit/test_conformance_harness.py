"""The pure parts of the kernel-IPVS conformance harness (tests/kernel/conformance): scenario
validation and the normalisation that decides what "identical" means. The harness itself runs
in tests/kernel; these need no guest."""

from __future__ import annotations

import pytest

from conformance import compare
from conformance.model import Admin, Connect, Hold, Output, Release, Scenario, Udp, Wait
from conformance.scenarios import ALL
from conformance.traffic import payload_of, received, udp_answer

KERNEL_LNC = """\
IPVS connection entries
pro expire state       source             virtual            destination
TCP 01:58  FIN_WAIT    10.251.7.50:10001  10.251.7.100:80    10.251.7.12:80
TCP 05:59  ASSURED     10.251.7.50:0      10.251.7.100:80    10.251.7.12:80
TCP 00:57  SYN_RECV    10.251.7.50:10000  10.251.7.100:80    10.251.7.11:80
UDP 04:12  UDP         10.251.7.50:9000   10.251.7.199:80    10.251.7.11:80
"""


def test_connection_listing_keeps_the_vip_sorted_with_expiry_masked() -> None:
    out = compare.normalise_connections(KERNEL_LNC, "10.251.7.100").splitlines()
    assert out == [
        "IPVS connection entries",
        "pro expire state       source             virtual            destination",
        "TCP --:--  ASSURED     10.251.7.50:0      10.251.7.100:80    10.251.7.12:80",
        "TCP --:--  FIN_WAIT    10.251.7.50:10001  10.251.7.100:80    10.251.7.12:80",
        "TCP --:--  SYN_RECV    10.251.7.50:10000  10.251.7.100:80    10.251.7.11:80",
    ]


@pytest.mark.parametrize("cmd,conns", [("-Lnc", True), ("-L -n -c", True), ("-Ln --connection", True),
                                       ("-Ln", False), ("-Ln --stats", False), ("-S -n", False)])
def test_which_listings_are_connection_tables(cmd: str, conns: bool) -> None:
    assert compare.is_connection_listing(cmd) is conns


def test_only_the_table_size_of_the_header_is_masked() -> None:
    text = "IP Virtual Server version 1.2.1 (size=4096)\nTCP  10.0.0.1:80 rr\n"
    assert compare.normalise_listing("-Ln", text, "10.0.0.1") == \
        "IP Virtual Server version 1.2.1 (size=N)\nTCP  10.0.0.1:80 rr\n"


def test_refused_connection_found_by_its_source() -> None:
    assert compare.chosen_by_connection_table(KERNEL_LNC, "10.251.7.50", 10000) == "10.251.7.11"
    assert compare.chosen_by_connection_table(KERNEL_LNC, "10.251.7.50", 4) is None


def test_render_differs_on_exit_status_and_reads_lbadm_as_ipvsadm() -> None:
    rec = {"what": "ADMIN -L --daemon", "rc": 1, "stdout": "", "stderr": "lbadm: no\n"}
    lines = compare.render([rec], "lbd")
    assert lines == ["[1] ADMIN -L --daemon", "    exit status 1", "    stderr | ipvsadm: no"]
    assert compare.render([dict(rec, rc=0, stderr="")], "kernel") != lines


def test_kernel_default_tunnel_type_is_dropped_from_its_save_only_when_ipvsadm_drives_lbd() -> None:
    save = "-a -t 10.0.0.1:80 -r 10.0.0.12:80 -i -w 3 --tun-type ipip\n-a -t 10.0.0.1:80 -r 10.0.0.13:80 -i -w 1 --tun-type gue\n"
    kernel = [{"what": "ADMIN -S -n", "rc": 0, "stdout": save, "stderr": ""}]
    lbd = [dict(kernel[0], stdout=save.replace(" --tun-type ipip", ""))]
    assert compare.render(kernel, "kernel", "ipvsadm") == compare.render(lbd, "lbd", "ipvsadm")
    assert compare.render(kernel, "kernel") != compare.render(lbd, "lbd")  # lbadm saves the type: no excuse
    assert "--tun-type gue" in "\n".join(compare.render(kernel, "kernel", "ipvsadm"))  # only the default goes
    listing = [dict(kernel[0], what="ADMIN -Ln")]
    assert compare.render(listing, "kernel", "ipvsadm") == compare.render(listing, "kernel")


def test_scenarios_are_valid_and_named_uniquely() -> None:
    names = [s.name for s in ALL]
    assert len(names) == len(set(names)) and len(names) <= 150
    assert {"rr-fresh", "wlc-syn-refused", "lbadm-save-to-ipvsadm-sched-flags"} <= set(names)


@pytest.mark.parametrize("steps,first,why", [
    ((Admin("-R", stdin=Output("save", "kernel")),), "kernel", "not named before"),
    ((Admin("-S -n", name="save"), Admin("-R", stdin=Output("save", "lbd"))), "kernel", "plays after"),
    ((Connect(3, clients=("c45",)),), "kernel", "unknown clients"),
    ((Connect(3, vips=("vip2",)),), "kernel", "unknown vips"),
    ((Release("x"),), "kernel", "of no Hold"),
    ((Hold(0),), "kernel", "1..200"),
    ((Wait(0),), "kernel", "0..60"),
    ((Wait(61),), "kernel", "0..60"),
    ((Udp(1, size=10),), "kernel", "size must be"),
    ((Udp(1, size=65508),), "kernel", "size must be"),
])
def test_bad_scenarios_are_refused(steps: tuple, first: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        Scenario(name="x", why="", rules="", steps=steps, first=first)  # type: ignore[arg-type]


def test_a_large_datagram_is_answered_as_large_with_what_arrived() -> None:
    """Udp(size=): the real server's answer names it, says what it received (size, SHA-256) and is
    as large as the question, so that it comes back fragmented too; a small one stays small."""
    question = payload_of(3000)
    answer = udp_answer("rs1", 63, question)
    assert len(answer) == 3000
    lines = answer.split(b"\n")
    assert lines[:3] == [b"rs1", b"ttl=63", received(question).encode()]
    assert received(question) != received(question[:-1] + b"x") and received(question).startswith("bytes=3000 ")
    assert udp_answer("rs2", 64, b"?\n").split(b"\n")[:2] == [b"rs2", b"ttl=64"]


KERNEL_STATS = """\
IP Virtual Server version 1.2.1 (size=N)
Prot LocalAddress:Port               Conns   InPkts  OutPkts  InBytes OutBytes
  -> RemoteAddress:Port
TCP  10.251.7.176:0                      8       40        0     2144        0
  -> 10.251.7.11:0                       2       10        0      536        0
  -> 10.251.7.12:0                       2       10        0      536        0
"""
ONE_MORE_IN = KERNEL_STATS.replace("8       40        0     2144", "8       41        0     2196").replace(
    "12:0                       2       10        0      536", "12:0                       2       11        0      588")


def _stats_records(stats: str, conns: str = "rs1") -> list[dict]:
    return [{"what": "CONNECT x2 from c1", "flows": [{"client": "c1", "port": 1, "outcome": conns}]},
            {"what": "ADMIN -Ln --stats", "rc": 0, "stdout": stats, "stderr": ""}]


def test_inbound_counters_differing_by_what_the_clients_sent_more_are_explained() -> None:
    why = compare.stats_explained_by_clients(_stats_records(KERNEL_STATS), _stats_records(ONE_MORE_IN), 120, 121)
    assert why is not None and "121 packets to lbd and 120" in why and "+1" in why


@pytest.mark.parametrize("lbd,kernel_sent,lbd_sent,why", [
    (_stats_records(ONE_MORE_IN), 120, 120, "the clients sent both the same: a real miscount"),
    (_stats_records(ONE_MORE_IN), 121, 120, "the clients sent lbd fewer, lbd counted more"),
    (_stats_records(ONE_MORE_IN), None, 121, "the kernel's play has no count"),
    (_stats_records(ONE_MORE_IN.replace("41        0", "43        0")), 120, 121, "more than the client's extra"),
    (_stats_records(ONE_MORE_IN.replace("8       41", "9       41")), 120, 121, "Conns differ too"),
    (_stats_records(ONE_MORE_IN, conns="rs2"), 120, 121, "a choice differs too"),
    (_stats_records(ONE_MORE_IN.replace("2196", "2144")), 120, 121, "packets without bytes"),
    (_stats_records(KERNEL_STATS), 120, 121, "nothing differs: nothing to explain"),
])
def test_other_differences_are_never_explained_by_the_clients(lbd: list, kernel_sent: int | None,
                                                              lbd_sent: int | None, why: str) -> None:
    assert compare.stats_explained_by_clients(_stats_records(KERNEL_STATS), lbd, kernel_sent, lbd_sent) is None, why
