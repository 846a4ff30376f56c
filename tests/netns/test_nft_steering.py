"""`lbd --steering nftables` (lb/nftsteer.py) with real packets.

lbd steers with one native nftables table of its own, `ip lbd-q0`, instead of iptables raw rules
and ip sets. On this host's kernel (no nft_queue) the queue verdict is xtables' NFQUEUE through
nft_compat, written over netlink (lb/nftqueue.py); these tests prove packets really reach lbd
through it: DR, NAT and FULLNAT flows, reassembly before the queue, balanced flows untracked,
routed traffic untouched, crash and restart, exit, --down-policy closed, and healing.

nft must be on PATH, or LB_TEST_NFT names it (conftest): otherwise every test skips.
"""

from __future__ import annotations

import json
import shlex
import shutil
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import LBADM, LBD, NFT, QUEUE_NUM, Lbd, iptables_leftovers, nft_env, nft_leftovers, running_lbd
from netns_traffic import serve_http
from packet_source import AFXDP

from lb.testbed import client
from lb.testbed.topology import Topology, fullnat_spec

pytestmark = [
    pytest.mark.skipif(not Path(NFT).exists() and shutil.which(NFT) is None,
                       reason=f"nft not found ({NFT}): install nftables or set LB_TEST_NFT"),
    pytest.mark.skipif(AFXDP, reason="--steering nftables is refused with --packet-source afxdp"),
]

PORT = 8080  # the real servers' httpd (fullnat_spec topology: they route through the director)
NFT_ARGS = ["--steering", "nftables", "--steer-hook", "prerouting"]  # this module: the prerouting placement
TABLE = f"lbd-q{QUEUE_NUM}"
TIMEOUT_S = 10.0


@pytest.fixture(scope="module")
def ntopo() -> Iterator[Topology]:
    with Topology(fullnat_spec(3)) as t:
        serve_http(t, (PORT,), t.director)
        yield t


@pytest.fixture
def nlbd(ntopo: Topology) -> Iterator[Lbd]:
    with running_lbd(ntopo, "c", args=list(NFT_ARGS)) as d:
        yield d


def nft(t: Topology, *args: str, check: bool = True) -> str:
    proc = t.director.exec([NFT, *args], check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"nft {' '.join(args)}: {proc.returncode} {proc.stderr}")
    return proc.stdout


def table(t: Topology) -> str:
    return nft(t, "list", "table", "ip", TABLE)


def nat_service(lbd: Lbd, t: Topology, vport: int = 80, reals: list[str] | None = None) -> None:
    lbd.lbadm("-A", "-t", f"{t.vip}:{vport}", "-s", "rr")
    for rs in t.reals:
        if reals is None or rs.name in reals:
            lbd.lbadm("-a", "-t", f"{t.vip}:{vport}", "-r", f"{rs.addr}:{PORT}", "-m", "-w", "1")
    lbd.wait_resolved()


def served(t: Topology, n: int, port: int = 80, addr: str | None = None) -> list[str]:
    replies = client.fresh_gets(t.client.netns, addr or t.vip, port, n, timeout=3.0)
    return [r.server or f"error: {r.error}" for r in replies]


def nfq_packets(lbd: Lbd) -> int:
    return int(lbd.ok("counters")["nfq"]["packets"])


def conntrack_count(t: Topology) -> int:
    return int(t.director.exec(["cat", "/proc/sys/net/netfilter/nf_conntrack_count"]).stdout)


def test_one_table_of_its_own_and_nothing_in_iptables(nlbd: Lbd, ntopo: Topology) -> None:
    """The steering is the table: its first base-chain rule lets routed traffic go, the queue
    rule feeds queue 0 with bypass, the service is a set element; no iptables raw chain, no ip set."""
    nat_service(nlbd, ntopo)
    text = table(ntopo)
    pre = text[text.index("chain pre {"):]
    lines = [line.strip() for line in pre.splitlines()[1:4]]
    assert lines[0] == "type filter hook prerouting priority raw; policy accept;", text
    assert lines[1] == "ip daddr != @addr ip saddr != @natrip return", text
    assert f'queue num {QUEUE_NUM} bypass comment "lbd q{QUEUE_NUM} queue {QUEUE_NUM} bypass"' in text, text
    assert f"{ntopo.vip} . tcp . 80" in text, text
    assert all(f"{rs.addr} . tcp . {PORT}" in text for rs in ntopo.reals), text
    assert "meta mark 0x4c420000 notrack" in text, text
    ruleset = nft(ntopo, "list", "ruleset")
    assert ruleset.count("hook prerouting") == 1, ruleset  # lbd's: no iptables raw PREROUTING chain
    raw = ntopo.director.exec(["iptables", "-t", "raw", "-S"]).stdout
    assert "LBD" not in raw, raw
    assert ntopo.director.exec(["ipset", "save"]).stdout.strip() == ""
    got = served(ntopo, 6)
    assert sorted(set(got)) == sorted(rs.name for rs in ntopo.reals), (got, nlbd.log_tail())


def test_doctor_reads_the_table(nlbd: Lbd, ntopo: Topology) -> None:
    """`lbadm doctor` checks lbd's table (not iptables' raw table) and finds it complete."""
    nat_service(nlbd, ntopo)
    cmd = shlex.join([str(LBADM), "--socket", nlbd.socket, "doctor", "--json", "--window", "0"])
    proc = ntopo.director.exec(f"PATH={shlex.quote(str(Path(NFT).resolve().parent))}:$PATH {cmd}", check=False)
    found = [f for f in json.loads(proc.stdout)["findings"] if f["check"] == "nfqueue-rules"]
    assert [f["severity"] for f in found] == ["info"], found
    assert "table ip lbd-q0 (lbd --steering nftables)" in found[0]["summary"], found


def test_nat_and_fullnat_flows_reach_lbd(nlbd: Lbd, ntopo: Topology) -> None:
    nat_service(nlbd, ntopo)
    before = nfq_packets(nlbd)
    got = served(ntopo, 6)
    assert sorted(set(got)) == sorted(rs.name for rs in ntopo.reals), (got, nlbd.log_tail())
    assert nfq_packets(nlbd) - before >= 6 * 4  # requests and replies went through the queue
    # FULLNAT on another port, the director's back address as local address
    k = {"proto": "tcp", "addr": ntopo.vip, "port": 81}
    nlbd.ok("add_service", {**k, "sched": "rr", "persistent": None, "netmask": "255.255.255.255",
                            "toa": False, "synproxy": False})
    nlbd.ok("add_laddr", {"service": k, "addr": ntopo.director.iface("back").addr})
    for rs in ntopo.reals:
        nlbd.lbadm("-a", "-t", f"{ntopo.vip}:81", "-r", f"{rs.addr}:{PORT}", "-b", "-w", "1")
    nlbd.wait_resolved()
    assert f"{ntopo.reals[0].addr} . tcp . {PORT} . {ntopo.director.iface('back').addr}" in table(ntopo)
    got = served(ntopo, 6, port=81)
    assert sorted(set(got)) == sorted(rs.name for rs in ntopo.reals), (got, nlbd.log_tail())


def test_routed_traffic_never_meets_the_queue(nlbd: Lbd, ntopo: Topology) -> None:
    """The client talks to f1's own address through the director while a NAT service balances to f2
    and f3: lbd's queue sees none of it."""
    nat_service(nlbd, ntopo, reals=["f2", "f3"])
    assert_routed_not_queued(nlbd, ntopo)


def assert_routed_not_queued(lbd: Lbd, t: Topology) -> None:
    """The client fetches from f1's own address, routed by the director: served, and nothing queued."""
    f1 = t.reals[0]
    route = [f"{f1.addr}/32", "via", t.director.iface("lan").addr]
    t.client.ip("route", "replace", *route)
    forwarding = t.director.exec(["sysctl", "-n", "net.ipv4.ip_forward"]).stdout.strip()
    t.director.exec(["sysctl", "-qw", "net.ipv4.ip_forward=1"])
    try:
        before = nfq_packets(lbd)
        got = served(t, 5, port=PORT, addr=f1.addr)
        assert got == [f1.name] * 5, got
        assert nfq_packets(lbd) == before
    finally:
        t.client.ip("route", "del", *route, check=False)
        t.director.exec(["sysctl", "-qw", f"net.ipv4.ip_forward={forwarding}"])


def test_balanced_flows_are_untracked(nlbd: Lbd, ntopo: Topology) -> None:
    """With the director's conntrack on (an operator's stateful rule), balanced NAT flows leave no
    entry; the director's own connection to a real server does (the check can see entries)."""
    ntopo.director.exec([NFT, "-f", "-"], input="table ip lbNfw {\n chain input {\n"
                        "  type filter hook input priority 0; policy accept;\n"
                        "  ct state established,related accept\n }\n}\n")
    try:
        nat_service(nlbd, ntopo)
        time.sleep(0.2)
        base = conntrack_count(ntopo)
        got = served(ntopo, 10)
        assert all(not g.startswith("error") for g in got), got
        assert conntrack_count(ntopo) == base, "balanced flows got conntrack entries"
        assert client.get_once(ntopo.director.netns, ntopo.reals[0].addr, PORT, timeout=3.0).ok
        assert conntrack_count(ntopo) > base  # the director's own connection is tracked
    finally:
        nft(ntopo, "delete", "table", "ip", "lbNfw", check=False)


def _udp_exchange(t: Topology, port: int, payload: bytes) -> bytes:
    from lb.testbed.topology import enter_netns

    with enter_netns(t.client.netns):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.settimeout(3.0)
        s.sendto(payload, (t.vip, port))
        return s.recv(65535)
    finally:
        s.close()


def test_fragmented_datagrams_reach_lbd_whole(nlbd: Lbd, ntopo: Topology) -> None:
    """3,000-byte UDP datagrams (fragmented on the client's 1,500-byte link) to a NAT service:
    the kernel reassembles them before the table (the defrag rule), lbd sees no fragment."""
    from netns_traffic import answering

    with answering(ntopo.reals, [(None, 5300)], tcp=False):
        nlbd.lbadm("-A", "-u", f"{ntopo.vip}:5300", "-s", "rr")
        for rs in ntopo.reals:
            nlbd.lbadm("-a", "-u", f"{ntopo.vip}:5300", "-r", f"{rs.addr}:5300", "-m", "-w", "1")
        nlbd.wait_resolved()
        payload = bytes(range(256)) * 12
        answers = [_udp_exchange(ntopo, 5300, payload) for _ in range(3)]
    counters = nlbd.ok("counters")
    assert all(len(a) > 0 for a in answers), answers
    assert counters["reasons"].get("fragment", 0) == 0, counters["reasons"]
    assert counters["reassembly"]["reasm_oks"] >= 3, counters["reassembly"]


def test_kill_9_then_restart_cleans_up_and_exit_removes_only_lbds_table(ntopo: Topology) -> None:
    """A SIGKILLed lbd leaves its table; the next one replaces it (one table, flows served), and on
    exit removes it and nothing else (an operator's nft table and iptables rule stay)."""
    ntopo.director.exec([NFT, "-f", "-"], input="table ip lbNop {\n chain c {\n  counter\n }\n}\n")
    ntopo.director.exec(["iptables", "-A", "FORWARD", "-p", "udp", "--dport", "9", "-j", "ACCEPT"])
    # no state file: a snapshot landing before the kill would restore the service at the restart
    d = Lbd(ntopo, "c", args=[*NFT_ARGS, "--state-dir", ""])
    try:
        d.start()
        nat_service(d, ntopo)
        assert d.stop(signal.SIGKILL) == -signal.SIGKILL
        assert nft_leftovers(ntopo.director) == [f"nft: table ip {TABLE}"]
        d.start()
        nat_service(d, ntopo)
        got = served(ntopo, 3)
        assert all(not g.startswith("error") for g in got), (got, d.log_tail())
        assert table(ntopo).count("chain pre {") == 1
        assert d.stop(signal.SIGTERM) == 0, d.log_tail()
        assert nft_leftovers(ntopo.director) == [], d.log_tail()
        assert "table ip lbNop" in nft(ntopo, "list", "tables")
        assert "--dport 9 -j ACCEPT" in ntopo.director.exec(["iptables", "-S", "FORWARD"]).stdout
    finally:
        if d.running():
            d.stop(signal.SIGKILL)
        nft(ntopo, "delete", "table", "ip", "lbNop", check=False)
        nft(ntopo, "delete", "table", "ip", TABLE, check=False)
        ntopo.director.exec(["iptables", "-D", "FORWARD", "-p", "udp", "--dport", "9", "-j", "ACCEPT"], check=False)
        d.cleanup()


def test_switching_steering_after_a_crash_leaves_one_layer(ntopo: Topology) -> None:
    """kill -9 of an nftables lbd, then an iptables lbd on the same queue: its start removes the table
    (it would queue as well); and back: the nftables lbd removes the raw chains and ip sets."""
    first = Lbd(ntopo, "c", args=list(NFT_ARGS))
    second = Lbd(ntopo, "c", env=nft_env(None), args=["--steering", "iptables"])
    third = Lbd(ntopo, "c", args=list(NFT_ARGS))
    try:
        first.start()
        nat_service(first, ntopo)
        assert first.stop(signal.SIGKILL) == -signal.SIGKILL
        second.start()
        nat_service(second, ntopo)
        assert nft_leftovers(ntopo.director) == [], second.log_tail()
        got = served(ntopo, 3)
        assert all(not g.startswith("error") for g in got), (got, second.log_tail())
        assert second.stop(signal.SIGKILL) == -signal.SIGKILL
        third.start()
        raw = [line for line in iptables_leftovers(ntopo.director) if not line.startswith("nft:")]
        assert raw == [], raw
        ruleset = nft(ntopo, "list", "ruleset")
        assert ruleset.count("hook prerouting") == 1, ruleset  # no empty iptables raw PREROUTING left either
        assert third.stop(signal.SIGTERM) == 0, third.log_tail()
        assert iptables_leftovers(ntopo.director) == []
    finally:
        for d in (first, second, third):
            if d.running():
                d.stop(signal.SIGKILL)
            d.cleanup()
        nft(ntopo, "delete", "table", "ip", TABLE, check=False)


def _connect(t: Topology, port: int = 80) -> str:
    """'ok', 'refused' or 'timeout' for one TCP connect from the client to the VIP."""
    from lb.testbed.topology import enter_netns

    with enter_netns(t.client.netns):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(1.5)
    try:
        s.connect((t.vip, port))
        return "ok"
    except ConnectionRefusedError:
        return "refused"
    except TimeoutError:
        return "timeout"
    finally:
        s.close()


def test_down_policy_closed_drops_while_lbd_is_down(ntopo: Topology) -> None:
    """--down-policy closed: the table stays on exit with a queue rule without bypass, so the VIP's
    packets are dropped (no RST from the director's stack); `lbd --cleanup` removes it."""
    d = Lbd(ntopo, "c", args=[*NFT_ARGS, "--down-policy", "closed", "--state-dir", ""])
    try:
        d.start()
        nat_service(d, ntopo)
        assert _connect(ntopo) == "ok"
        assert d.stop(signal.SIGTERM) == 0, d.log_tail()
        text = table(ntopo)
        assert f'queue num {QUEUE_NUM} comment "lbd q{QUEUE_NUM} queue {QUEUE_NUM}"' in text, text
        assert _connect(ntopo) == "timeout"
        cmd = shlex.join([str(LBD), "--cleanup", *NFT_ARGS, "--queue-num", str(QUEUE_NUM)])
        proc = ntopo.director.exec(f"PATH={shlex.quote(str(Path(NFT).resolve().parent))}:$PATH {cmd}", check=False)
        assert proc.returncode == 0, proc.stderr
        assert nft_leftovers(ntopo.director) == []
        assert _connect(ntopo) == "refused"  # the director's own stack answers now
    finally:
        if d.running():
            d.stop(signal.SIGKILL)
        nft(ntopo, "delete", "table", "ip", TABLE, check=False)
        d.cleanup()


def test_a_flushed_chain_and_set_are_put_back(nlbd: Lbd, ntopo: Topology) -> None:
    nat_service(nlbd, ntopo)
    nft(ntopo, "flush", "chain", "ip", TABLE, "pre")
    nft(ntopo, "flush", "set", "ip", TABLE, "svc")
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        text = table(ntopo)
        if "ip daddr != @addr ip saddr != @natrip return" in text and f"{ntopo.vip} . tcp . 80" in text:
            break
        assert time.monotonic() < deadline, f"not healed:\n{text}\n{nlbd.log_tail()}"
        time.sleep(0.2)
    got = served(ntopo, 3)
    assert all(not g.startswith("error") for g in got), got
    assert "steering had been removed" in nlbd.log_tail(20000)


def test_set_elements_written_over_netlink_are_what_nft_lists(ntopo: Topology) -> None:
    """lb.nftelements' keys, in each of lbd's set types, read back by nft in lbd's own words; a batch
    the kernel refuses in part applies nothing (one transaction, as `nft -f`)."""
    from lb import ipsets as ips
    from lb import nfnlbatch, nftelements
    from lb.nftlayout import from_nft, set_decl

    name = "lbdtest-el"
    decls = "\n".join(f"add {set_decl(k).replace('set ', f'set ip {name} ', 1)}" for k in ips.KINDS)
    ntopo.director.exec([NFT, "-f", "-"], input=f"add table ip {name}\n{decls}\n")
    try:
        sample = {"hash:ip": {"10.0.0.1", "192.168.255.254"},
                  "hash:ip,port": {"10.0.0.1,tcp:80", "10.0.0.2,udp:53", "10.0.0.3,tcp:65535"},
                  "hash:ip,port,ip": {"10.0.0.2,tcp:8080,10.9.0.1"}}
        kinds = [ips.ADDR, ips.SVC, ips.FNAT]
        nftelements.write(name, [(k.suffix, k.type, sample[k.type]) for k in kinds], [], netns=ntopo.director.netns)
        for k in kinds:
            listed = json.loads(nft(ntopo, "-j", "list", "set", "ip", name, k.suffix))
            elems = next(x["set"] for x in listed["nftables"] if "set" in x).get("elem", [])
            texts = {from_nft(" . ".join(str(p) for p in e["concat"]) if isinstance(e, dict) else str(e)) for e in elems}
            assert texts == sample[k.type], k.suffix
        with pytest.raises(nfnlbatch.NetlinkError) as err:  # one add, one delete of what is not there
            nftelements.write(name, [(ips.ADDR.suffix, "hash:ip", {"10.0.0.9"})],
                              [(ips.SVC.suffix, "hash:ip,port", {"10.0.0.9,tcp:80"})], netns=ntopo.director.netns)
        assert err.value.errno == 2
        assert "10.0.0.9" not in nft(ntopo, "list", "set", "ip", name, ips.ADDR.suffix)  # nothing applied
        # a refused batch of lb.nftsteer's largest netlink size: the refusal arrives (ENOENT), not a timeout
        missing = {f"10.8.{i // 250}.{i % 250 + 1},tcp:80" for i in range(2000)}
        with pytest.raises(nfnlbatch.NetlinkError) as err:
            nftelements.write(name, [], [(ips.SVC.suffix, "hash:ip,port", missing)], netns=ntopo.director.netns)
        assert err.value.errno == 2
        nftelements.write(name, [], [(ips.SVC.suffix, "hash:ip,port", {"10.0.0.1,tcp:80"})], netns=ntopo.director.netns)
        assert "tcp . 80" not in nft(ntopo, "list", "set", "ip", name, ips.SVC.suffix)
    finally:
        ntopo.director.exec([NFT, "delete", "table", "ip", name], check=False)
