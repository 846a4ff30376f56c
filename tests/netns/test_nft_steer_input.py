"""`lbd --steering nftables --steer-hook input` (lb/nftsteer.py) with real packets.

lbd's table takes packets where kernel IPVS does, after routing: in the input hook and, only while
NAT real servers exist, in the forward hook for their replies; but first there (priority mangle - 1),
before the firewall's INPUT/FORWARD rules. So routed traffic meets no hook of lbd's (issue 15 item 1:
it costs what it costs without lbd), a stateful INPUT firewall never sees balanced packets (field
report 001), and the packets lbd forwards never enter the conntrack table (their entry is
unconfirmed and released with the packet lbd drops after sending its copy). These tests show each
with real flows.

nft must be on PATH, or LB_TEST_NFT names it (conftest): otherwise every test skips.
"""

from __future__ import annotations

import json
import shlex
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import LBADM, NFT, Lbd, running_lbd
from netns_traffic import answering, serve_http
from test_nft_steering import (  # type: ignore[import-not-found]
    PORT,
    TABLE,
    TIMEOUT_S,
    _connect,
    assert_routed_not_queued,
    nfq_packets,
    nft,
    served,
)
from test_nft_steering import pytestmark as nft_marks

from lb.testbed import client
from lb.testbed.topology import Topology, enter_netns, fullnat_spec

pytestmark = nft_marks  # nft must be there; not with --packet-source afxdp
ARGS = ["--steering", "nftables", "--steer-hook", "input"]


@pytest.fixture(scope="module")
def itopo() -> Iterator[Topology]:
    """NAT replies are routed to the clients: the director forwards, as kernel IPVS's NAT needs."""
    with Topology(fullnat_spec(3)) as t:
        serve_http(t, (PORT,), t.director)
        t.director.exec(["sysctl", "-qw", "net.ipv4.ip_forward=1"])
        yield t


@pytest.fixture
def ilbd(itopo: Topology) -> Iterator[Lbd]:
    with running_lbd(itopo, "c", args=list(ARGS)) as d:
        yield d


def chains(t: Topology) -> dict[str, str]:
    """lbd's chains -> their hook line ('' for regular chains)."""
    text = nft(t, "list", "table", "ip", TABLE)
    out, name = {}, None
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("chain "):
            name = line.split()[1]
            out[name] = ""
        elif name and line.startswith("type filter hook"):
            out[name] = line
    return out


def nat_service(lbd: Lbd, t: Topology, reals: list[str] | None = None) -> None:
    lbd.lbadm("-A", "-t", f"{t.vip}:80", "-s", "rr")
    for rs in t.reals:
        if reals is None or rs.name in reals:
            lbd.lbadm("-a", "-t", f"{t.vip}:80", "-r", f"{rs.addr}:{PORT}", "-m", "-w", "1")
    lbd.wait_resolved()


def fullnat_service(lbd: Lbd, t: Topology, vport: int = 81) -> None:
    k = {"proto": "tcp", "addr": t.vip, "port": vport}
    lbd.ok("add_service", {**k, "sched": "rr", "persistent": None, "netmask": "255.255.255.255",
                           "toa": False, "synproxy": False})
    lbd.ok("add_laddr", {"service": k, "addr": t.director.iface("back").addr})
    for rs in t.reals:
        lbd.lbadm("-a", "-t", f"{t.vip}:{vport}", "-r", f"{rs.addr}:{PORT}", "-b", "-w", "1")
    lbd.wait_resolved()


def lbd_hooks(t: Topology) -> list[str]:
    """The hooks of lbd's table's base chains."""
    return sorted(h.split()[3] for h in chains(t).values() if h)


def test_fullnat_only_puts_nothing_on_the_routed_path(ilbd: Lbd, itopo: Topology) -> None:
    """FULLNAT (replies to a local address): lbd hooks input (and output, for its own packets) only;
    flows are served through the queue."""
    fullnat_service(ilbd, itopo)
    assert lbd_hooks(itopo) == ["input", "output"], chains(itopo)
    assert chains(itopo)["input"] == "type filter hook input priority mangle - 1; policy accept;"
    before = nfq_packets(ilbd)
    got = served(itopo, 6, port=81)
    assert sorted(set(got)) == sorted(rs.name for rs in itopo.reals), (got, ilbd.log_tail())
    assert nfq_packets(ilbd) - before >= 6 * 4  # requests and replies went through the queue


def test_nat_by_default_puts_nothing_in_the_forward_hook(ilbd: Lbd, itopo: Topology) -> None:
    """lbd's default --nat-replies ingress: NAT real servers add lbd's netdev table's chain on their
    interface, nothing in the ip table's hooks; the flows are served (replies through lbd's pair)."""
    nat_service(ilbd, itopo)
    assert lbd_hooks(itopo) == ["input", "output"], chains(itopo)
    got = served(itopo, 6)
    assert sorted(set(got)) == sorted(rs.name for rs in itopo.reals), (got, ilbd.log_tail())
    assert ilbd.ok("counters")["natrx"]["answers"] >= 6


def test_nat_adds_the_forward_chain_while_nat_real_servers_exist(itopo: Topology) -> None:
    """--nat-replies forward: NAT replies are routed to clients: the forward chain (and the reassembly
    rule) exists exactly while a NAT real server does; the flows are served through the queue."""
    with running_lbd(itopo, "c", args=[*ARGS, "--nat-replies", "forward"]) as ilbd:
        _forward_chain_comes_and_goes(ilbd, itopo)


def _forward_chain_comes_and_goes(ilbd: Lbd, itopo: Topology) -> None:
    nat_service(ilbd, itopo)
    assert lbd_hooks(itopo) == ["forward", "input", "output"], chains(itopo)
    assert "defrag" in chains(itopo)
    before = nfq_packets(ilbd)
    got = served(itopo, 6)
    assert sorted(set(got)) == sorted(rs.name for rs in itopo.reals), (got, ilbd.log_tail())
    assert nfq_packets(ilbd) - before >= 6 * 4
    for rs in itopo.reals:
        ilbd.lbadm("-d", "-t", f"{itopo.vip}:80", "-r", f"{rs.addr}:{PORT}")
    assert lbd_hooks(itopo) == ["input", "output"], chains(itopo)
    assert "defrag" not in chains(itopo)
    assert "steering had been removed" not in ilbd.log_tail(20000)  # the layout, not damage


def test_routed_traffic_never_meets_the_queue(ilbd: Lbd, itopo: Topology) -> None:
    """The client talks to f1's own address through the director while a NAT service balances to f2
    and f3 (so the forward chain exists): lbd's queue sees none of it."""
    nat_service(ilbd, itopo, reals=["f2", "f3"])
    assert_routed_not_queued(ilbd, itopo)


def test_balanced_flows_leave_no_conntrack_entry(ilbd: Lbd, itopo: Topology) -> None:
    """With the director's conntrack on (an operator's stateful rule), conntrack looks balanced
    packets up before lbd (as before IPVS), but their entries are never confirmed: none stays."""
    itopo.director.exec([NFT, "-f", "-"], input="table ip lbIfw {\n chain input {\n"
                        "  type filter hook input priority 0; policy accept;\n"
                        "  ct state established,related accept\n }\n}\n")
    try:
        nat_service(ilbd, itopo)
        fullnat_service(ilbd, itopo)
        time.sleep(0.2)
        count = ["cat", "/proc/sys/net/netfilter/nf_conntrack_count"]
        base = int(itopo.director.exec(count).stdout)
        got = served(itopo, 10) + served(itopo, 10, port=81)
        assert all(not g.startswith("error") for g in got), got
        assert int(itopo.director.exec(count).stdout) == base, "balanced flows got conntrack entries"
        assert client.get_once(itopo.director.netns, itopo.reals[0].addr, PORT, timeout=3.0).ok
        assert int(itopo.director.exec(count).stdout) > base  # the director's own connection is tracked
    finally:
        nft(itopo, "delete", "table", "ip", "lbIfw", check=False)


def test_a_stateful_input_firewall_never_sees_balanced_packets(ilbd: Lbd, itopo: Topology) -> None:
    """Field report 001's firewall (accept established and new SYNs, reject the rest with
    host-prohibited) in filter INPUT: lbd takes balanced packets before it, so flows open and close
    cleanly and its reject rule never matches one (kernel IPVS, after filter INPUT, would meet it)."""
    nat_service(ilbd, itopo)
    fullnat_service(ilbd, itopo)
    itopo.director.exec([NFT, "-f", "-"], input="table ip lbIfw {\n chain input {\n"
                        "  type filter hook input priority 0; policy accept;\n"
                        "  ct state established,related accept\n"
                        "  ct state new tcp flags & (syn | ack) == syn accept\n"
                        f"  ip daddr {itopo.vip} counter reject with icmp type host-prohibited\n }}\n}}\n")
    try:
        got = served(itopo, 10) + served(itopo, 10, port=81)
        assert all(not g.startswith("error") for g in got), (got, ilbd.log_tail())
        rule = nft(itopo, "list", "chain", "ip", "lbIfw", "input")
        assert "counter packets 0 bytes 0 reject" in rule, rule
    finally:
        nft(itopo, "delete", "table", "ip", "lbIfw", check=False)


def test_prerouting_rules_see_balanced_packets_first(ilbd: Lbd, itopo: Topology) -> None:
    """What does change against the prerouting placement: a firewall rule before routing (here a
    prerouting drop of the VIP's port) applies to balanced traffic, as it does with kernel IPVS."""
    nat_service(ilbd, itopo)
    assert _connect(itopo, 80) == "ok"
    itopo.director.exec([NFT, "-f", "-"], input="table ip lbIfw {\n chain pre {\n"
                        "  type filter hook prerouting priority 0; policy accept;\n"
                        f"  ip daddr {itopo.vip} tcp dport 80 drop\n }}\n}}\n")
    try:
        assert _connect(itopo, 80) == "timeout"
    finally:
        nft(itopo, "delete", "table", "ip", "lbIfw", check=False)
    assert _connect(itopo, 80) == "ok"


def test_fragmented_datagrams_reach_lbd_whole(ilbd: Lbd, itopo: Topology) -> None:
    """3,000-byte UDP datagrams to a NAT service: reassembled on local delivery, before the input
    hook; lbd sees no fragment."""
    with answering(itopo.reals, [(None, 5300)], tcp=False):
        ilbd.lbadm("-A", "-u", f"{itopo.vip}:5300", "-s", "rr")
        for rs in itopo.reals:
            ilbd.lbadm("-a", "-u", f"{itopo.vip}:5300", "-r", f"{rs.addr}:5300", "-m", "-w", "1")
        ilbd.wait_resolved()
        payload = bytes(range(256)) * 12
        answers = []
        for _ in range(3):
            with enter_netns(itopo.client.netns):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                s.settimeout(3.0)
                s.sendto(payload, (itopo.vip, 5300))
                answers.append(s.recv(65535))
            finally:
                s.close()
    counters = ilbd.ok("counters")
    assert all(len(a) > 0 for a in answers), answers
    assert counters["reasons"].get("fragment", 0) == 0, counters["reasons"]


def test_a_flushed_input_chain_is_put_back_and_doctor_reads_it(ilbd: Lbd, itopo: Topology) -> None:
    nat_service(ilbd, itopo)
    nft(itopo, "flush", "chain", "ip", TABLE, "input")
    deadline = time.monotonic() + TIMEOUT_S
    while "ip daddr != @addr return" not in nft(itopo, "list", "chain", "ip", TABLE, "input"):
        assert time.monotonic() < deadline, ilbd.log_tail()
        time.sleep(0.2)
    got = served(itopo, 3)
    assert all(not g.startswith("error") for g in got), got
    assert "steering had been removed" in ilbd.log_tail(20000)
    cmd = shlex.join([str(LBADM), "--socket", ilbd.socket, "doctor", "--json", "--window", "0"])
    proc = itopo.director.exec(f"PATH={shlex.quote(str(Path(NFT).resolve().parent))}:$PATH {cmd}", check=False)
    found = [f for f in json.loads(proc.stdout)["findings"] if f["check"] == "nfqueue-rules"]
    assert [f["severity"] for f in found] == ["info"] * len(found), found
    assert any("--steer-hook input" in f["summary"] for f in found), found
    assert any("NAT replies taken at ingress" in f["summary"] for f in found), found  # the netdev table, as lbd wrote it


def test_nat_without_forwarding_is_logged(itopo: Topology) -> None:
    """--nat-replies forward: NAT replies cannot reach the forward hook when the director does not
    forward: lbd says so. By default (ingress) they are taken before routing: NAT works without it."""
    itopo.director.exec(["sysctl", "-qw", "net.ipv4.ip_forward=0"])
    try:
        with running_lbd(itopo, "c", args=[*ARGS, "--nat-replies", "forward"]) as d:
            nat_service(d, itopo)
            assert "net.ipv4.ip_forward is 0" in d.log_tail(20000)
        with running_lbd(itopo, "c", args=list(ARGS)) as d:
            nat_service(d, itopo)
            got = served(itopo, 3)
            assert sorted(set(got)) == sorted(rs.name for rs in itopo.reals), (got, d.log_tail())
            assert "net.ipv4.ip_forward is 0" not in d.log_tail(20000)
    finally:
        itopo.director.exec(["sysctl", "-qw", "net.ipv4.ip_forward=1"])


def test_steer_hook_input_needs_nftables(itopo: Topology) -> None:
    d = Lbd(itopo, "c", args=["--steering", "iptables", "--steer-hook", "input"])
    try:
        with pytest.raises(Exception, match="--steer-hook input needs --steering nftables"):
            d.start(timeout=5.0)
    finally:
        if d.running():
            d.stop()
        d.cleanup()
