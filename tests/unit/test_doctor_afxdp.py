"""lbadm doctor against an lbd on the AF_XDP packet source (lb/doctor/checks_afxdp.py), with fake
inputs: lbd's `ping` (its interfaces, program ids, bound queues), the kernel's `ip -j addr`
"xdp" objects, the program's and the sockets' counters over the window."""

from __future__ import annotations

import copy
from typing import Any

from lb.doctor import format_text, run_checks
from test_doctor_checks import RIPS, FakeContext, by, counters, dest, ifaces, listing, problems

PROG_ID = 3696


def xdp_on(interfaces: list[dict[str, Any]], name: str, prog_id: int = PROG_ID, mode: int = 1,
           prog_name: str = "lb_xdp") -> list[dict[str, Any]]:
    """`interfaces` with an XDP program on `name`, as `ip -j addr show` lists it."""
    prog = {"id": prog_id, "name": prog_name, "tag": "6eed355215ec1b9f", "jited": 1}
    for i in interfaces:
        if i["ifname"] == name:
            i["xdp"] = {"mode": mode, "prog": prog, "attached": [{"mode": mode, "prog": prog}]}
    return interfaces


def afxdp_ping(fallback: bool = True, sockets: int = 2, rx_queues: int = 2, prog_id: int | None = PROG_ID,
               mode: str = "native") -> dict[str, Any]:
    return {"version": "0.1", "engine": "c", "queue_num": 0, "down_policy": "open", "packet_source": "afxdp",
            "afxdp": {"nfqueue_fallback": fallback, "interfaces": [{
                "ifname": "eth0", "ifindex": 2, "mode": mode, "prog_id": prog_id, "rx_queues": rx_queues,
                "sockets": list(range(sockets)), "zerocopy": [False] * sockets}]}}


def afxdp_counters(no_socket: int = 0, fragments: int = 0, ring_full: int = 0, send_err: int = 0) -> dict[str, Any]:
    c = counters()
    sock = {"packets": 10, "kernel_rx_ring_full": ring_full, "kernel_fill_empty": 0, "kernel_rx_dropped": 0,
            "fill_lost": 0, "bad_frames": 0, "xmit_l2_err": send_err, "answer_err": 0, "pass_err": 0}
    c["afxdp"] = {"program": {"redirected": 10, "passed": 5, "fragments_passed": fragments, "no_socket": no_socket},
                  "sockets": [sock, dict(sock, kernel_rx_ring_full=0)]}
    return c


def samples(before: dict[str, Any], after: dict[str, Any], nfq: str | None = None) -> list[dict[str, Any]]:
    from test_doctor_checks import NFQ_LINE

    one = {"list": listing([dest(r) for r in RIPS]), "nfq": NFQ_LINE if nfq is None else nfq}
    return [dict(one, counters=before), dict(copy.deepcopy(one), counters=after)]


def test_healthy_afxdp_with_fallback_has_no_problems_and_says_what_it_checked() -> None:
    ctx = FakeContext(ping=afxdp_ping(), interfaces=xdp_on(ifaces(), "eth0"),
                      samples=samples(afxdp_counters(), afxdp_counters()))
    fs = run_checks(ctx)
    assert problems(fs) == [], format_text(fs)
    info = by(fs, "afxdp", "info")
    assert len(info) == 1 and f"(id {PROG_ID}) attached in native mode" in info[0].summary, format_text(fs)
    assert "2 AF_XDP sockets (queues 0, 1), eth0 has 2 receive queues" in info[0].summary
    assert "packet source afxdp with the NFQUEUE fallback" in by(fs, "lbd")[0].summary
    # the fallback's NFQUEUE rules are lbd's and are checked as such
    assert any("set lookups steer every service" in f.summary for f in by(fs, "nfqueue-rules"))


def test_afxdp_without_fallback_skips_the_nfqueue_checks_and_warns() -> None:
    ctx = FakeContext(ping=afxdp_ping(fallback=False), interfaces=xdp_on(ifaces(), "eth0"), save=None, sets=None,
                      samples=samples(afxdp_counters(fragments=3), afxdp_counters(fragments=9), nfq=""))
    fs = run_checks(ctx)
    assert not by(fs, "nfqueue", "error") and not by(fs, "nfqueue-rules", "error"), format_text(fs)
    assert "no NFQUEUE rules to check" in by(fs, "nfqueue-rules")[0].summary
    warnings = [f.summary for f in by(fs, "afxdp", "warning")]
    assert any("no NFQUEUE fallback" in w for w in warnings), warnings
    assert any("6 IP fragments passed" in w for w in warnings), warnings


def test_program_missing_or_replaced_is_an_error() -> None:
    fs = run_checks(FakeContext(ping=afxdp_ping(), interfaces=ifaces(), window_s=0))
    assert any("no XDP program attached" in f.summary for f in by(fs, "afxdp", "error")), format_text(fs)
    fs = run_checks(FakeContext(ping=afxdp_ping(), interfaces=xdp_on(ifaces(), "eth0", prog_id=77, prog_name="other"),
                                window_s=0))
    err = by(fs, "afxdp", "error")
    assert err and f"id 77 (other), not lbd's id {PROG_ID}" in err[0].summary, format_text(fs)


def test_queues_without_socket_and_no_socket_growth_are_errors() -> None:
    ctx = FakeContext(ping=afxdp_ping(sockets=2, rx_queues=4), interfaces=xdp_on(ifaces(), "eth0"),
                      samples=samples(afxdp_counters(no_socket=1), afxdp_counters(no_socket=41)))
    fs = run_checks(ctx)
    summaries = [f.summary for f in by(fs, "afxdp", "error")]
    assert any("receive queues 2, 3 have no AF_XDP socket" in s for s in summaries), summaries
    assert any("40 packets for lbd arrived on a receive queue without an AF_XDP socket" in s for s in summaries)
    assert "ethtool -L eth0 combined 2" in by(fs, "afxdp", "error")[0].fix


def test_generic_mode_is_said_with_its_cost_and_ring_full_growth_warns() -> None:
    ctx = FakeContext(ping=afxdp_ping(mode="generic"), interfaces=xdp_on(ifaces(), "eth0", mode=2),
                      samples=samples(afxdp_counters(), afxdp_counters(ring_full=5)))
    fs = run_checks(ctx)
    info = by(fs, "afxdp", "info")
    assert "generic mode" in info[0].summary and "skb per packet" in info[0].fix, format_text(fs)
    warn = by(fs, "afxdp", "warning")
    assert warn and "socket 0: kernel_rx_ring_full +5" in warn[0].evidence, format_text(fs)


def test_stale_program_on_another_interface_or_under_nfqueue() -> None:
    two = ifaces()
    two.append({"ifname": "eth1", "mtu": 1500, "flags": ["UP"], "operstate": "UP", "addr_info": []})
    fs = run_checks(FakeContext(ping=afxdp_ping(), interfaces=xdp_on(xdp_on(two, "eth0"), "eth1", prog_id=12),
                                window_s=0))
    stale = [f for f in by(fs, "afxdp") if f.summary.startswith("eth1:")]
    assert stale and stale[0].severity == "warning" and "the running lbd does not hold it" in stale[0].summary
    # lbd on NFQUEUE: an lb_xdp program takes its packets away before the queue
    fs = run_checks(FakeContext(interfaces=xdp_on(ifaces(), "eth0", prog_id=12), window_s=0))
    err = by(fs, "afxdp", "error")
    assert err and "lbd uses the nfqueue packet source" in err[0].summary, format_text(fs)
    # no program anywhere under NFQUEUE: nothing to say
    assert by(run_checks(FakeContext(window_s=0)), "afxdp") == []


def test_send_errors_growing_are_an_error() -> None:
    ctx = FakeContext(ping=afxdp_ping(), interfaces=xdp_on(ifaces(), "eth0"),
                      samples=samples(afxdp_counters(send_err=1), afxdp_counters(send_err=4)))
    err = [f.summary for f in by(run_checks(ctx), "afxdp", "error")]
    assert err == ["xmit_l2_err +6 during the window: frames towards real servers could not be sent (AF_PACKET send "
                   "errors; the xmit_failed reason)"], err  # both sockets: +3 each


def test_afxdp_with_an_nftables_fallback_reads_lbds_table_and_xdp_takes_packets_before_routing() -> None:
    """lbd --packet-source afxdp --steering nftables: the fallback's rules are lbd's table, and even
    with --steer-hook input the balanced packets are the XDP program's, before routing: no finding
    speaks of lbd taking them after routing (NAT without forwarding, rp_filter)."""
    from test_doctor_checks import FILTER_EMPTY, _nft_table

    ping = {**afxdp_ping(), "steering": "nftables"}
    ctx = FakeContext(ping=ping, interfaces=xdp_on(ifaces(), "eth0"), save=FILTER_EMPTY, sets="", nft=_nft_table(),
                      samples=samples(afxdp_counters(), afxdp_counters()))
    fs = run_checks(ctx)
    assert problems(fs) == [], format_text(fs)
    assert any("table ip lbd-q0 (lbd --steering nftables)" in f.summary for f in by(fs, "nfqueue-rules", "info"))
    missing = run_checks(FakeContext(ping=ping, interfaces=xdp_on(ifaces(), "eth0"), save=FILTER_EMPTY, sets="",
                                     nft="", samples=samples(afxdp_counters(), afxdp_counters())))
    assert any("table ip lbd-q0 is missing" in f.summary for f in by(missing, "nfqueue-rules", "error"))
    inputs = run_checks(FakeContext(ping={**ping, "steering_hook": "input"}, interfaces=xdp_on(ifaces(), "eth0"),
                                    save=FILTER_EMPTY, sets="", nft=_nft_table(),
                                    samples=samples(afxdp_counters(), afxdp_counters())))
    assert not any("after routing" in f.summary for f in inputs), format_text(inputs)
