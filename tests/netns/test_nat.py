"""NAT (masquerading, ipvsadm -m) end to end with real packets.

Topology (module `ntopo`, lb.testbed.topology.fullnat_spec): client and director on segment
"lan" (VIP .100 on the director); real servers f1..f3 on segment "back", another subnet, whose
default route is the director's back address: the classic NAT setup, so their replies to the
client's own address come back through the director. The real servers have no VIP; their HTTP
servers listen on 8080 (the service is VIP:80: port translation), their UDP responders on 5300.
"""

from __future__ import annotations

import itertools
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Lbd, parse_ln, running_lbd, udp_until_refused
from netns_traffic import answering, flow_outcome, serve_http
from packet_source import AFXDP, xdp_local, xdp_nat_replies
from scapy.all import IP, UDP
from steering import INPUT_HOOK, NFTABLES, dump, elements, nat_ingress, nat_replies_after_routing, netdev_dump

from conformance.traffic import Flow, udp_exchange
from lb.pyengine.icmp import time_exceeded
from lb.testbed import client
from lb.testbed.topology import Topology, enter_netns, fullnat_spec

REPO = Path(__file__).resolve().parents[2]
VPORT, RPORT = 80, 8080  # the service's port and the real servers' (port translation)
UDP_PORT = 5300  # the UDP responders' port, on the VIP and on the real servers
DEAD_UDP_PORT = 5399  # nobody listens there on the real servers
N_REAL = 3
_udp_ports = itertools.count(42000)  # a new client source port per datagram


@pytest.fixture(scope="module")
def ntopo() -> Iterator[Topology]:
    with Topology(fullnat_spec(N_REAL)) as t:
        serve_http(t, (RPORT,), t.director)  # each httpd answers its own address (from the director)
        yield t


@pytest.fixture(scope="module")
def udp_servers(ntopo: Topology) -> Iterator[None]:
    with answering(ntopo.reals, [(None, UDP_PORT)], tcp=False):
        yield


@pytest.fixture
def nlbd(ntopo: Topology, engine: str) -> Iterator[Lbd]:
    with running_lbd(ntopo, engine) as d:
        yield d


def nat_service(lbd: Lbd, t: Topology, *, proto: str = "tcp", vport: int = VPORT, rport: int = RPORT) -> None:
    flag = "-t" if proto == "tcp" else "-u"
    lbd.lbadm("-A", flag, f"{t.vip}:{vport}", "-s", "rr")
    for rs in t.reals:
        lbd.lbadm("-a", flag, f"{t.vip}:{vport}", "-r", f"{rs.addr}:{rport}", "-m", "-w", "1")
    lbd.wait_resolved()


def udp_answers(t: Topology, n: int, port: int = UDP_PORT) -> list[str]:
    return [flow_outcome(t, "udp", t.vip, port, next(_udp_ports)) for _ in range(n)]


def test_nat_http_with_port_translation(nlbd: Lbd, ntopo: Topology) -> None:
    """VIP:80 -> RIP:8080 with rr; the real servers see the client's own address; the replies go back
    through the director as VIP:80; -Ln says Masq and 8080."""
    t = ntopo
    nat_service(nlbd, t)
    replies = client.fresh_gets(t.client.netns, t.vip, VPORT, 12, timeout=5.0)
    assert all(r.ok for r in replies), ([r.error for r in replies if not r.ok], nlbd.log_tail())
    assert [r.server for r in replies] == [rs.name for rs in reversed(t.reals)] * 4
    peer = client.get_once(t.client.netns, t.vip, VPORT, "/peer")
    assert peer.ok, peer
    peer_addr, peer_port = peer.body.split("\n")[1].split()
    assert (peer_addr, int(peer_port)) == (t.client.addr, peer.local_port), peer.body
    (svc,) = parse_ln(nlbd.lbadm("-Ln").stdout)
    assert [(d.forward, d.port) for d in svc.dests] == [("Masq", RPORT)] * N_REAL, svc
    counters = nlbd.ok("counters")["reasons"]
    assert counters.get("forwarded", 0) > 0


def test_nat_closed_connections_are_inactive_as_the_kernel_counts_them(nlbd: Lbd, ntopo: Topology) -> None:
    """Both directions drive the state machine: after closed HTTP/1.0 exchanges (the real server closes
    first: its FIN is seen on the way out) every entry is TIME_WAIT, none active."""
    t = ntopo
    nat_service(nlbd, t)
    replies = client.fresh_gets(t.client.netns, t.vip, VPORT, 6, timeout=5.0)
    assert all(r.ok for r in replies), [r.error for r in replies if not r.ok]
    deadline = time.monotonic() + 5.0
    while True:
        conns = nlbd.ok("connections")["connections"]
        states = sorted(c["state"] for c in conns if c.get("cport"))
        if states == ["TIME_WAIT"] * 6 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert states == ["TIME_WAIT"] * 6, conns
    assert all(c["daddr"] in {rs.addr for rs in t.reals} and c["dport"] == RPORT for c in conns), conns
    (svc,) = parse_ln(nlbd.lbadm("-Ln").stdout)
    assert sum(d.active for d in svc.dests) == 0 and sum(d.inactive for d in svc.dests) == 6, svc
    lnc = nlbd.lbadm("-Lnc").stdout
    assert lnc.count("TIME_WAIT") == 6, lnc


def test_nat_udp_both_ways(nlbd: Lbd, ntopo: Topology, udp_servers: None) -> None:
    t = ntopo
    nat_service(nlbd, t, proto="udp", vport=UDP_PORT, rport=UDP_PORT)
    got = udp_answers(t, 6)
    assert got == [rs.name for rs in reversed(t.reals)] * 2, (got, nlbd.log_tail())
    (svc,) = parse_ln(nlbd.lbadm("-Ln").stdout)
    assert sum(d.inactive for d in svc.dests) == 6, svc


def test_nat_udp_port_unreachable_from_the_real_server_reaches_the_client(nlbd: Lbd, ntopo: Topology) -> None:
    """The real server answers CIP's datagram with ICMP port unreachable to CIP; lbd translates it to
    VIP -> CIP quoting CIP -> VIP:port, so the client's own socket gets the error."""
    t = ntopo
    lbd = nlbd
    lbd.lbadm("-A", "-u", f"{t.vip}:{DEAD_UDP_PORT}", "-s", "rr")
    lbd.lbadm("-a", "-u", f"{t.vip}:{DEAD_UDP_PORT}", "-r", f"{t.reals[0].addr}:{DEAD_UDP_PORT}", "-m")
    lbd.wait_resolved()
    got = udp_until_refused(lbd, t, DEAD_UDP_PORT)
    assert isinstance(got.error, ConnectionRefusedError), (
        f"client got {got.error!r}; lbd translated {got.translated} ICMP errors\n{got.capture}\n"
        + dump(t.director))
    assert got.icmps, got.capture
    for ip in got.icmps:
        assert ip.l4 is not None and ip.l4.quoted is not None
        q = ip.l4.quoted
        assert q.l4 is not None, got.capture
        assert (ip.src, ip.dst) == (t.vip, t.client.addr), got.capture
        assert (q.src, q.l4.sport, q.dst, q.l4.dport) == (t.client.addr, got.cport, t.vip, DEAD_UDP_PORT), got.capture
    assert got.translated >= 1


def test_nat_reply_with_ttl_1_gets_time_exceeded_from_the_director(nlbd: Lbd, ntopo: Topology) -> None:
    """The director forwards a NAT reply, so a reply sent with TTL 1 dies there as in ip_forward: the real
    server's socket gets ICMP time exceeded (IP_RECVERR) from the director's address on its segment (the
    route source the kernel's icmp_send would use), counted ttl_exceeded. (That its entry is left alone, as
    the kernel's ip_vs_out never sees such a reply, the packet table's nat-out-ttl rows check.)"""
    t, lbd = ntopo, nlbd
    rs = t.reals[0]
    lbd.lbadm("-A", "-u", f"{t.vip}:{DEAD_UDP_PORT}", "-s", "rr")
    lbd.lbadm("-a", "-u", f"{t.vip}:{DEAD_UDP_PORT}", "-r", f"{rs.addr}:{DEAD_UDP_PORT}", "-m")
    lbd.wait_resolved()
    cport = next(_udp_ports)
    opened = Flow(client="client", addr=t.client.addr, port=cport)
    udp_exchange(t.client.netns, opened, t.vip, DEAD_UDP_PORT)  # makes the entry (the real server refuses it)
    assert opened.outcome == "refused:none", (opened, lbd.log_tail())
    before = lbd.ok("counters")["reasons"]
    reply = Flow(client=rs.name, addr=rs.addr, port=DEAD_UDP_PORT)
    udp_exchange(rs.netns, reply, t.client.addr, cport, ttl=1)
    director_back = t.director.iface("back").addr
    assert reply.outcome == f"icmp:11/0 from {director_back} quoting 2", (reply, lbd.log_tail())  # the whole payload (__icmp_send)
    after = lbd.ok("counters")["reasons"]
    # --steer-hook input: ip_forward itself answers before the forward hook, as for kernel IPVS's NAT
    # (not under afxdp, nor with --nat-replies ingress: the reply reaches lbd before routing)
    counted = 0 if nat_replies_after_routing(nlbd.engine) else 1
    assert after.get("ttl_exceeded", 0) == before.get("ttl_exceeded", 0) + counted, (before, after)


def test_an_answer_from_source_0_leaves_from_the_route_source_to_the_real_server(ntopo: Topology) -> None:
    """What nat_xmit_out relies on without forwarding state: an answer written with source 0.0.0.0 on the
    adapters' IPPROTO_RAW socket gets the source of the kernel's route to its destination filled in
    (raw_send_hdrinc, raw(7)), the address ip_forward's icmp_send would have answered from."""
    t = ntopo
    rs = t.reals[0]
    reply = bytes(IP(src=rs.addr, dst=t.client.addr, ttl=1) / UDP(sport=DEAD_UDP_PORT, dport=42999) / b"x")
    answer = time_exceeded(reply, 20, len(reply), b"\0\0\0\0")
    with enter_netns(rs.netns):
        listener = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    with enter_netns(t.director.netns):
        sender = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    with listener, sender:
        listener.settimeout(5.0)
        sender.sendto(answer, (rs.addr, 0))
        data = listener.recv(2048)
    assert (socket.inet_ntoa(data[12:16]), data[20], data[28:] == reply) == (
        t.director.iface("back").addr, 11, True), data.hex()


def test_nat_director_own_connections_to_a_real_server_stay_out_of_the_queue(nlbd: Lbd, ntopo: Topology) -> None:
    """The NAT reply set's rule matches only packets the director forwards (addrtype ! LOCAL): its own HTTP to
    RIP:8080 (a health check) still works while the service is balanced, and lbd never sees it."""
    t = ntopo
    nat_service(nlbd, t)
    before = nlbd.ok("counters")["reasons"]
    for rs in t.reals:
        r = client.get_once(t.director.netns, rs.addr, RPORT, timeout=3.0)
        assert r.ok and r.server == rs.name, r
    after = nlbd.ok("counters")["reasons"]
    assert after.get("no_service", 0) == before.get("no_service", 0), (before, after)
    if AFXDP:  # the AF_XDP form: the reply keys, and the director's own address where they do not apply
        assert xdp_nat_replies(nlbd, "tcp") == {(rs.addr, RPORT) for rs in t.reals}
        assert t.director.iface("back").addr in xdp_local(nlbd), xdp_local(nlbd)
        return
    if nat_ingress(nlbd.engine):  # the netdev chain: packets to the director's own addresses leave it first
        rules = netdev_dump(t.director)
        assert "fib daddr type local return" in rules and "ip saddr . meta l4proto . th sport @nat fwd to" in rules, rules
        assert "chain forward" not in dump(t.director), dump(t.director)
    elif INPUT_HOOK:  # the forward hook: only packets the director routes meet the rule
        rules = dump(t.director)
        forward = rules[rules.index("chain forward {"):]
        assert "ip saddr . meta l4proto . th sport @nat jump go" in forward, rules
    elif NFTABLES:  # the same rule in lbd's table: `-m addrtype ! --dst-type LOCAL` is `fib daddr type != local`
        rules = dump(t.director)
        assert "ip saddr . meta l4proto . th sport @nat fib daddr type != local" in rules, rules
    else:
        rules = t.director.exec(["iptables", "-t", "raw", "-S"]).stdout
        assert "-m set --match-set lbd-q0-nat src,src -m addrtype ! --dst-type LOCAL" in rules, rules
    steered = elements(t.director, "nat")
    for rs in t.reals:
        assert f"{rs.addr},tcp:{RPORT}" in steered, steered


def test_doctor_names_the_classic_mistake_a_real_server_not_routing_through_the_director(
        nlbd: Lbd, ntopo: Topology) -> None:
    """f1 loses its default route via the director (as a real server that kept its old gateway, whose
    replies never pass the director): the client's requests to f1 fail, and `lbadm doctor` says that
    f1's NAT destination gets packets and sends nothing back, naming the director's address to route
    through; f2 (routed right) is not named."""
    t = ntopo
    f1, f2 = t.reals[0], t.reals[1]
    gw = t.director.iface("back").addr
    nlbd.lbadm("-A", "-t", f"{t.vip}:{VPORT}", "-s", "rr")
    for rs in (f1, f2):
        nlbd.lbadm("-a", "-t", f"{t.vip}:{VPORT}", "-r", f"{rs.addr}:{RPORT}", "-m", "-w", "1")
    nlbd.wait_resolved()
    f1.ip("route", "del", "default", "via", gw)
    try:
        replies = client.fresh_gets(t.client.netns, t.vip, VPORT, 4, timeout=2.0)
        assert [r.ok for r in replies] == [True, False, True, False], replies  # rr: f2, f1, f2, f1
        proc = nlbd.lbadm("doctor", "--json", "--window", "0", check=False)
        assert proc.returncode == 1, (proc.stdout, proc.stderr)
        found = [f for f in json.loads(proc.stdout)["findings"] if f["check"] == "nat" and f["severity"] == "error"]
        assert len(found) == 1, found
        assert found[0]["summary"].startswith(f"NAT destination {f1.addr}:{RPORT} of TCP {t.vip}:{VPORT}: "), found
        assert "classic NAT mistake" in found[0]["summary"]
        assert f"ip route replace default via {gw}" in found[0]["fix"], found[0]
    finally:
        f1.ip("route", "add", "default", "via", gw)
