"""lbd's overload guard in a real kernel (issue 15 item 5; lb/overload.py, lb/nftguard.py).

1. The chain lb.nftguard writes over netlink is what nft lists, in lbd's own table: a token bucket
   at prerouting priority raw - 1 for the VIPs' packets, whose counter counts what it drops; lbd's
   steering watch leaves it alone; removing it twice is no error.
2. Overloaded for real: the Python engine (a few thousand packets a second here) with a 16-packet
   queue, a UDP sender in the client namespace at what it can (bounded: 4 s, 400,000 datagrams).
   The kernel drops at the full queue, lbd arms the guard (logged, counted, the chain listed),
   and after the sender stops lbd removes it (logged) and lists the guard's drops.
4. --overload-xdp (lb/xdpshed.py): the same overload, under either steering, the guard's bucket in an
   XDP program on the director's client-facing interface instead: it arms, the program drops (counted in the guard's
   `dropped`), no nftables guard chain appears, and the program leaves the interface with lbd.
3. The C adapter's signal (lb_nfq_overload_fd): lbd frozen (SIGSTOP) while a burst fills a
   4,096-packet queue, then let go: its packet thread drains the backlog in full receive batches,
   16 in a row, and writes the eventfd; the guard reads it and starts a confirmation (counted on
   both sides). The backlog is gone by the time it confirms, so nothing arms: a burst the queue
   held is not overload.
"""

from __future__ import annotations

import re
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import NFT, QUEUE_NUM, Lbd, running_lbd
from netns_traffic import UDP_FLOOD
from packet_source import AFXDP

from lb import nftguard
from lb.testbed.topology import Topology

pytestmark = [
    pytest.mark.skipif(not Path(NFT).exists() and not re.fullmatch(r"[\w.-]+", NFT),
                       reason=f"nft not found ({NFT}): install nftables or set LB_TEST_NFT"),
    pytest.mark.skipif(AFXDP, reason="the guard sheds what reaches the NFQUEUE; under AF_XDP there is none"),
]

TABLE = f"lbd-q{QUEUE_NUM}"
UDP_PORT = 5353
SEND_S = 4.0
SEND_MAX = 400_000
SENDER = UDP_FLOOD


@pytest.fixture
def udp_lbd(topo: Topology) -> Iterator[Lbd]:
    with running_lbd(topo, "python", args=["--steering", "nftables", "--queue-maxlen", "16"]) as d:
        svc = f"{topo.vip}:{UDP_PORT}"
        d.lbadm("-A", "-u", svc, "-s", "rr")
        d.lbadm("-a", "-u", svc, "-r", topo.reals[0].addr, "-g")
        d.wait_resolved()
        yield d


def nft(t: Topology, *args: str) -> str:
    proc = t.director.exec([NFT, *args], check=False)
    return proc.stdout if proc.returncode == 0 else ""


def guard_of(lbd: Lbd) -> dict[str, Any]:
    return dict(lbd.ok("counters").get("overload") or {})


def wait_for(what: str, cond: Any, timeout: float, lbd: Lbd) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {timeout} s: guard {guard_of(lbd)}\nlbd log:\n{lbd.log_tail()}")
        time.sleep(0.05)


def test_the_guard_chain_is_the_rule_nft_lists_and_counts_what_it_drops(topo: Topology, udp_lbd: Lbd) -> None:
    ns = topo.director.netns
    assert "chain guard" not in nft(topo, "list", "table", "ip", TABLE)  # only while armed
    assert nftguard.write(TABLE, nftguard.Limit(1, 1), ns)
    listing = nft(topo, "list", "table", "ip", TABLE)
    assert re.search(r"chain guard \{\s*type filter hook prerouting priority raw - 1; policy accept;\s*"
                     r'ip daddr @addr limit rate over 1/second burst 1 packets counter name "guard" drop', listing), \
        listing
    sent = topo.client.exec([sys.executable, "-c", SENDER, topo.vip, str(UDP_PORT), "0.5", "50"]).stdout.strip()
    assert sent == "50"
    wait_for("the guard's counter", lambda: (nftguard.read_dropped(TABLE, ns) or 0) >= 45, 3.0, udp_lbd)
    counted = nftguard.read_dropped(TABLE, ns)
    assert f"counter guard {{\n\t\tpackets {counted} " in nft(topo, "list", "counter", "ip", TABLE, "guard")
    time.sleep(1.0)  # lbd's steering watch saw the commit: the chain is not one of its layout, it stays
    assert "chain guard" in nft(topo, "list", "table", "ip", TABLE)
    assert "rewriting" not in udp_lbd.log_tail() and "removing it" not in udp_lbd.log_tail()
    assert nftguard.write(TABLE, None, ns) and not nftguard.write(TABLE, None, ns)
    assert "chain guard" not in nft(topo, "list", "table", "ip", TABLE)
    assert nftguard.read_dropped(TABLE, ns) == counted  # the counter stays: the guard's total
    assert nftguard.read_dropped("no-such-table", ns) is None


def test_an_overloaded_lbd_sheds_the_excess_before_the_queue_and_stops_after(topo: Topology, udp_lbd: Lbd) -> None:
    assert guard_of(udp_lbd)["armed"] == 0
    sender = topo.client.popen([sys.executable, "-c", SENDER, topo.vip, str(UDP_PORT), str(SEND_S), str(SEND_MAX)],
                               stdout=-1, text=True)
    try:
        wait_for("the guard armed", lambda: guard_of(udp_lbd)["armed"] == 1, SEND_S, udp_lbd)
        armed = guard_of(udp_lbd)
        assert armed["rate_pps"] >= 1000 and armed["episodes"] == 1
        listing = nft(topo, "list", "chain", "ip", TABLE, "guard")
        assert re.search(r"ip daddr @addr limit rate over \d+/second burst \d+ packets", listing), listing
    finally:
        out, _ = sender.communicate(timeout=SEND_S + 10)
    wait_for("the guard removed", lambda: guard_of(udp_lbd)["armed"] == 0, 3.0, udp_lbd)
    after = guard_of(udp_lbd)
    nfq = udp_lbd.ok("counters")["nfq"]
    print(f"\nGUARD-FIGURES sent {out.strip()} guard {after} kernel queue drops {nfq.get('kernel_queue_dropped')}")
    assert after["dropped"] > 0 and after["armed_s"] > 0
    assert "chain guard" not in nft(topo, "list", "table", "ip", TABLE)
    log = udp_lbd.log_tail(20000)
    assert "overload: the kernel dropped" in log and "shedding the excess before the queue" in log, log
    assert "overload over after" in log, log


def test_the_c_packet_threads_full_batches_signal_the_guard_at_once(topo: Topology) -> None:
    with running_lbd(topo, "c", args=["--steering", "nftables", "--queue-maxlen", "4096"]) as d:
        svc = f"{topo.vip}:{UDP_PORT}"
        d.lbadm("-A", "-u", svc, "-s", "rr")
        d.lbadm("-a", "-u", svc, "-r", topo.reals[0].addr, "-g")
        d.wait_resolved()
        assert guard_of(d)["signals"] == 0 and d.ok("counters")["nfq"]["overload_signals"] == 0
        assert d.proc is not None
        d.proc.send_signal(signal.SIGSTOP)  # every thread: the queue fills and holds
        try:
            sent = topo.client.exec([sys.executable, "-c", SENDER, topo.vip, str(UDP_PORT), "3.0", "3000"])
            assert sent.stdout.strip() == "3000"
            wait_waiting = time.monotonic() + 3.0
            while time.monotonic() < wait_waiting and queue_waiting(topo) < 16 * 64:
                time.sleep(0.05)
            backlog = queue_waiting(topo)
        finally:
            d.proc.send_signal(signal.SIGCONT)
        assert backlog >= 16 * 64, f"only {backlog} packets waited in the queue"
        wait_for("the packet thread's signal read", lambda: guard_of(d)["signals"] >= 1, 3.0, d)
        nfq = d.ok("counters")["nfq"]
        print(f"\nSIGNAL-FIGURES backlog {backlog} nfq batches {nfq['batches']} packets {nfq['packets']} "
              f"signals {nfq['overload_signals']} guard {guard_of(d)}")
        assert nfq["overload_signals"] >= 1 and nfq["packets"] >= backlog
        time.sleep(0.5)  # the confirming interval: the backlog drained, no overflow in it
        after = guard_of(d)
        assert after["signals_used"] >= 1 and after["armed"] == 0 and after["episodes"] == 0, after


def queue_waiting(t: Topology) -> int:
    """Packets waiting in lbd's queue (/proc/net/netfilter/nfnetlink_queue's third field)."""
    text = t.director.exec(["cat", "/proc/net/netfilter/nfnetlink_queue"]).stdout
    for line in text.splitlines():
        f = line.split()
        if len(f) >= 3 and f[0] == str(QUEUE_NUM):
            return int(f[2])
    return 0


def xdp_attached(t: Topology, ifname: str) -> bool:
    return " xdp" in t.director.exec(["ip", "-o", "link", "show", "dev", ifname]).stdout


@pytest.mark.parametrize("steering", ["nftables", "iptables"])  # the XDP bucket needs neither's guard chain
def test_with_overload_xdp_the_excess_is_dropped_in_xdp_and_the_program_leaves_with_lbd(topo: Topology,
                                                                                        steering: str) -> None:
    lan = topo.director.iface("lan").ifname
    with running_lbd(topo, "python", args=["--steering", steering, "--queue-maxlen", "16",
                                            "--overload-xdp", lan]) as d:
        svc = f"{topo.vip}:{UDP_PORT}"
        d.lbadm("-A", "-u", svc, "-s", "rr")
        d.lbadm("-a", "-u", svc, "-r", topo.reals[0].addr, "-g")
        d.wait_resolved()
        assert xdp_attached(topo, lan)
        assert guard_of(d)["armed"] == 0
        sender = topo.client.popen([sys.executable, "-c", SENDER, topo.vip, str(UDP_PORT), str(SEND_S),
                                    str(SEND_MAX)], stdout=-1, text=True)
        try:
            wait_for("the guard armed", lambda: guard_of(d)["armed"] == 1, SEND_S, d)
            wait_for("XDP drops", lambda: guard_of(d)["dropped"] > 0, SEND_S, d)
            assert "chain guard" not in nft(topo, "list", "table", "ip", TABLE)  # the bucket is XDP's
        finally:
            out, _ = sender.communicate(timeout=SEND_S + 10)
        wait_for("the guard disarmed", lambda: guard_of(d)["armed"] == 0, 3.0, d)
        after = guard_of(d)
        print(f"\nXDP-GUARD-FIGURES sent {out.strip()} guard {after}")
        assert after["dropped"] > 0 and after["armed_s"] > 0 and after["at"] == f"XDP on {lan}"
        # Disarmed, the program passes everything: lbd's service still answers through the queue.
        before = int(d.ok("counters")["nfq"].get("packets", 0))
        topo.client.exec([sys.executable, "-c", SENDER, topo.vip, str(UDP_PORT), "0.2", "20"])
        wait_for("packets queued after the episode",
                 lambda: int(d.ok("counters")["nfq"].get("packets", 0)) >= before + 20, 3.0, d)
        log = d.log_tail(20000)
        assert f"{lan}: overload guard's XDP program attached" in log and "XDP on " + lan in log, log
    assert not xdp_attached(topo, lan)  # the link went with lbd
