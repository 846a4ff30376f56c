"""fwmark services with real TCP and UDP through lbd (both engines), issue 14 item 2.

The DR topology of conftest; a second VIP is added for this module (on the director's interface
and every real server's lo, as the first). The operator's rules, as in the LVS HOWTO, mark two
VIPs (each on its own port) with mark 7 in mangle PREROUTING; `lbadm -A -f 7 -p` then balances
both as ONE service, as kernel IPVS does: one template per client (ip_vs_sched_persist's
<IPPROTO_IP, client, 0, fwmark, 0>), so the client's connections to either VIP land on one real
server. lbd queues the marked packets from its own mangle chain after the operator's rules and
never changes the mark.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest
from netns_traffic import answering, flow_outcome, mangle_prerouting
from steering import elements

from lb.testbed.topology import Topology

if TYPE_CHECKING:  # fixtures' types only
    from conftest import Lbd

MARK = 7
PORT1, PORT2 = 8401, 8402



@pytest.fixture(scope="module")
def vip2(topo: Topology) -> Iterator[str]:
    addr = topo.vip.rsplit(".", 1)[0] + ".150"
    d = topo.director
    d.ip("addr", "add", f"{addr}/32", "dev", d.ifname)
    for rs in topo.reals:
        rs.ip("addr", "add", f"{addr}/32", "dev", "lo")
    try:
        yield addr
    finally:
        d.ip("addr", "del", f"{addr}/32", "dev", d.ifname)
        for rs in topo.reals:
            rs.ip("addr", "del", f"{addr}/32", "dev", "lo")


@pytest.fixture(scope="module")
def servers(topo: Topology, vip2: str) -> Iterator[None]:
    with answering(topo.reals, [(topo.vip, PORT1), (vip2, PORT2)], tcp=True):
        yield


def operator_rules(vip: str, vip2: str) -> list[list[str]]:
    return [["-d", f"{vip}/32", "-p", proto, "-m", proto, "--dport", str(port), "-j", "MARK", "--set-xmark",
             f"{MARK:#x}/0xffffffff"]
            for addr, port in ((vip, PORT1), (vip2, PORT2)) for proto in ("tcp", "udp")
            for vip in (addr,)]


@pytest.fixture
def marked(topo: Topology, vip2: str) -> Iterator[None]:
    """The operator's MARK rules, added before lbd's first fwmark service appends its jump."""
    with mangle_prerouting(topo.director, operator_rules(topo.vip, vip2)):
        yield


def tcp_to(topo: Topology, vip: str, sport: int, port: int) -> str:
    return flow_outcome(topo, "tcp", vip, port, sport)


def udp_to(topo: Topology, vip: str, sport: int, port: int) -> str:
    return flow_outcome(topo, "udp", vip, port, sport)


def mangle(topo: Topology) -> list[str]:
    return topo.director.exec(["iptables", "-t", "mangle", "-S"]).stdout.splitlines()


def test_two_vips_one_persistent_fwmark_service(lbd: Lbd, topo: Topology, vip2: str, servers: None,
                                               marked: None) -> None:
    lbd.lbadm("-A", "-f", str(MARK), "-s", "rr", "-p", "300")
    for rs in topo.reals:
        lbd.lbadm("-a", "-f", str(MARK), "-r", rs.addr, "-g")
    lbd.wait_resolved()
    got = [tcp_to(topo, topo.vip, 44000, PORT1), tcp_to(topo, vip2, 44001, PORT2),
           tcp_to(topo, topo.vip, 44002, PORT1), udp_to(topo, vip2, 44003, PORT2), udp_to(topo, topo.vip, 44004, PORT1)]
    assert len(set(got)) == 1 and got[0] in {rs.name for rs in topo.reals}, got

    listing = lbd.lbadm("-Ln").stdout
    assert f"FWM  {MARK} rr persistent 300" in listing, listing
    assert f"-A -f {MARK} -s rr -p 300" in lbd.lbadm("-S", "-n").stdout
    conns = [line.split() for line in lbd.lbadm("-Lnc").stdout.splitlines()[2:]]
    assert any(c[0] == "IP" and c[4] == f"0.0.0.{MARK}:0" for c in conns), conns  # the fwmark template

    rules = mangle(topo)
    ours = [r for r in rules if "LBD-Q0-MARK" in r]
    jump = next(i for i, r in enumerate(rules) if r.startswith("-A PREROUTING") and "LBD-Q0-MARK" in r)
    marks = [i for i, r in enumerate(rules) if "--set-xmark" in r]
    assert marks and max(marks) < jump, rules  # after the operator's MARK rules
    assert any(f"-m mark --mark {MARK:#x} -j NFQUEUE --queue-num 0" in r for r in ours), ours
    assert not any(r.split(" -j ")[-1].split()[0] in ("MARK", "CONNMARK") for r in ours if " -j " in r), ours  # never sets one
    raw_sets = elements(topo.director, "svc")
    assert not raw_sets, raw_sets  # nothing of the fwmark service in the raw table's sets (nft: lbd's table's)

    # A MARK rule the operator appends later lands after lbd's jump; the next change of fwmark
    # services moves lbd's jump (its own rule only) back to the end.
    late = ["-d", f"{topo.vip}/32", "-p", "tcp", "-m", "tcp", "--dport", "8403", "-j", "MARK", "--set-xmark",
            "0x8/0xffffffff"]
    with mangle_prerouting(topo.director, [late]):
        lbd.lbadm("-A", "-f", "8", "-s", "rr")
        pre = [r for r in mangle(topo) if r.startswith("-A PREROUTING")]
        assert "LBD-Q0-MARK" in pre[-1] and sum("LBD-Q0-MARK" in r for r in pre) == 1, pre
        assert any("--mark 0x8 -j NFQUEUE" in r for r in mangle(topo))

    lbd.lbadm("-D", "-f", str(MARK))
    lbd.lbadm("-D", "-f", "8")
    assert not any(r.startswith("-A LBD-Q0-MARK") for r in mangle(topo)), mangle(topo)


def test_non_persistent_fwmark_service(lbd: Lbd, topo: Topology, vip2: str, servers: None, marked: None) -> None:
    """A non-persistent fwmark service with one real server: every marked flow (TCP and UDP, either
    VIP) goes there, and unmarked traffic to another port of the VIP is not lbd's (no service)."""
    lbd.lbadm("-A", "-f", str(MARK), "-s", "rr")
    lbd.lbadm("-a", "-f", str(MARK), "-r", topo.host("rs2").addr, "-g")
    lbd.wait_resolved()
    assert tcp_to(topo, vip2, 44100, PORT2) == "rs2"
    assert udp_to(topo, vip2, 44101, PORT2) == "rs2"
    assert tcp_to(topo, topo.vip, 44102, PORT1) == "rs2"
