"""NAT destinations without a fixed port, and NAT under one-packet scheduling, with real packets
(both engines), issue 14.

Topology (module `ptopo`, lb.testbed.topology.fullnat_spec, as tests/netns/test_nat.py): client and
director on "lan" (VIP on the director), real servers f1..f3 on "back" with the director as their
default route, each answering TCP and UDP on its own address, ports 8301..8303 (no VIP on them).

A port-zero service (VIP:0, persistent) or a fwmark service reaches a NAT real server on the port
the client asked for (the kernel's ip_vs_schedule / ip_vs_sched_persist), so the real server
answers from RIP:<client's port>: lbd steers those replies by the RIP alone (the per-protocol sets
lbd-q<N>-nattcp0 / -natudp0) and rewrites them to VIP:<port>. The client's sockets are connected:
an answer that were not rewritten would never reach them (the flow would time out).

One-packet scheduling (-o) keeps no entry, as the kernel's OPS connections, which are never
hashed: the real server's answer finds none and passes untranslated (from RIP:port), as through
kernel IPVS (ip_vs_out finds no connection; "no reply is expected").
"""

from __future__ import annotations

import itertools
import socket
from collections.abc import Iterator

import pytest
from conftest import Lbd, running_lbd
from netns_traffic import answering, flow_outcome, mangle_prerouting
from packet_source import AFXDP, xdp_fnat_replies, xdp_nat_replies
from steering import elements

from lb.testbed.topology import Topology, enter_netns, fullnat_spec

PORTS = (8301, 8302, 8303)
MARK = 9
N_REAL = 3
_sports = itertools.count(45000)


@pytest.fixture(scope="module")
def ptopo() -> Iterator[Topology]:
    with Topology(fullnat_spec(N_REAL)) as t:
        yield t


@pytest.fixture(scope="module")
def servers(ptopo: Topology) -> Iterator[None]:
    with answering(ptopo.reals, [(None, port) for port in PORTS], tcp=True):
        yield


@pytest.fixture
def plbd(ptopo: Topology, engine: str) -> Iterator[Lbd]:
    with running_lbd(ptopo, engine) as d:
        yield d


@pytest.fixture
def marked(ptopo: Topology) -> Iterator[None]:
    """The operator's mangle rules: the VIP's ports 8301..8303, TCP and UDP, get mark 9."""
    rules = [["-d", f"{ptopo.vip}/32", "-p", proto, "-m", proto, "--dport", f"{PORTS[0]}:{PORTS[-1]}",
              "-j", "MARK", "--set-xmark", f"{MARK:#x}/0xffffffff"] for proto in ("tcp", "udp")]
    with mangle_prerouting(ptopo.director, rules):
        yield


def exchange(t: Topology, proto: str, port: int) -> str:
    """One TCP connection (opened, name read, closed) or one UDP exchange to VIP:port from a new
    client port: the answering real server's name, or what became of the flow."""
    return flow_outcome(t, proto, t.vip, port, next(_sports))


def portless_service(lbd: Lbd, t: Topology, svc: list[str], fwd: str, persistent: bool = True) -> None:
    """`lbadm -A SVC -s rr` (persistent: -p 300), for FULLNAT ("-b") the director's address on
    "back" as local address, and every real server without a port, forwarded by `fwd` ("-m" or
    "-b"); then until each destination has forwarding state."""
    lbd.lbadm("-A", *svc, "-s", "rr", *(("-p", "300") if persistent else ()))
    if fwd == "-b":
        lbd.lbadm("-P", *svc, "-z", t.director.iface("back").addr)
    for rs in t.reals:
        lbd.lbadm("-a", *svc, "-r", rs.addr, fwd)
    lbd.wait_resolved()


def conn_rows(lbd: Lbd) -> list[list[str]]:
    return [line.split() for line in lbd.lbadm("-Lnc").stdout.splitlines()[2:]]


def ipset(t: Topology, name: str) -> set[str]:
    """The elements of lbd's set `name` (lbd-q0-<kind>), of the suite's steering (steering.elements)."""
    prefix = "lbd-q0-"
    assert name.startswith(prefix), name
    return elements(t.director, name[len(prefix):])


@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_port_zero_service_with_nat_real_servers(plbd: Lbd, ptopo: Topology, servers: None, proto: str) -> None:
    """-A VIP:0 -p, NAT real servers without a port: three ports of the VIP reach ONE real server
    (the client's template), each on the port asked for, and its answers come back as VIP:port;
    -Lnc as the kernel's (RIP:<port>); the replies are steered by the RIP in the protocol's set."""
    t, flag = ptopo, "-t" if proto == "tcp" else "-u"
    portless_service(plbd, t, [flag, f"{t.vip}:0"], "-m")
    got = [exchange(t, proto, port) for port in PORTS]
    assert len(set(got)) == 1 and got[0] in {rs.name for rs in t.reals}, (got, plbd.log_tail())
    rip = t.host(got[0]).addr
    pairs = {(c[4], c[5]) for c in conn_rows(plbd) if c[0] == proto.upper()}
    assert (f"{t.vip}:0", f"{rip}:0") in pairs, pairs  # the template
    for port in PORTS:
        assert (f"{t.vip}:{port}", f"{rip}:{port}") in pairs, pairs
    rips = {rs.addr for rs in t.reals}
    other = "udp" if proto == "tcp" else "tcp"
    if AFXDP:  # the XDP program's keys: RIP with any port, of this protocol only
        assert xdp_nat_replies(plbd, proto) == {(rip, 0) for rip in rips}
        assert xdp_nat_replies(plbd, other) == set()
    else:
        assert ipset(t, f"lbd-q0-nat{proto}0") == rips
        assert ipset(t, "lbd-q0-nat") == set()  # no fixed reply port to name
        assert ipset(t, f"lbd-q0-nat{other}0") == set()
    plbd.lbadm("-D", flag, f"{t.vip}:0")
    if AFXDP:
        assert xdp_nat_replies(plbd, proto) == set()
    else:
        assert ipset(t, f"lbd-q0-nat{proto}0") == set()  # the change removed exactly its elements


def test_fwmark_service_with_nat_real_servers(plbd: Lbd, ptopo: Topology, servers: None, marked: None) -> None:
    """A persistent fwmark service whose NAT real servers have no port: TCP and UDP to three ports
    reach ONE real server (one <IPPROTO_IP, client, fwmark> template), on the client's ports; then a
    non-persistent one: each flow is still answered through the director as VIP:port."""
    t = ptopo
    portless_service(plbd, t, ["-f", str(MARK)], "-m")
    got = [exchange(t, proto, port) for port in PORTS for proto in ("tcp", "udp")]
    assert len(set(got)) == 1 and got[0] in {rs.name for rs in t.reals}, (got, plbd.log_tail())
    rips = {rs.addr for rs in t.reals}
    assert ipset(t, "lbd-q0-nattcp0") == rips and ipset(t, "lbd-q0-natudp0") == rips  # a mark gathers both
    rip = t.host(got[0]).addr
    pairs = {(c[0], c[5]) for c in conn_rows(plbd)}
    for port in PORTS:
        assert ("TCP", f"{rip}:{port}") in pairs and ("UDP", f"{rip}:{port}") in pairs, pairs

    plbd.lbadm("-C")  # without persistence: scheduled per connection
    portless_service(plbd, t, ["-f", str(MARK)], "-m", persistent=False)
    got = [exchange(t, "tcp", port) for port in PORTS for _ in range(2)]
    assert sorted(got) == sorted([rs.name for rs in t.reals] * 2), (got, plbd.log_tail())


def test_port_zero_nat_destination_with_a_port_reaches_the_clients_port(plbd: Lbd, ptopo: Topology,
                                                                      servers: None) -> None:
    """A persistent port-zero service takes the client's port even for a destination written with a
    port (ip_vs_sched_persist): -r RIP:8301 under VIP:0 is reached on 8302 for a client of 8302."""
    t = ptopo
    rs = t.reals[0]
    plbd.lbadm("-A", "-t", f"{t.vip}:0", "-s", "rr", "-p", "300")
    plbd.lbadm("-a", "-t", f"{t.vip}:0", "-r", f"{rs.addr}:{PORTS[0]}", "-m")
    plbd.wait_resolved()
    assert [exchange(t, "tcp", port) for port in PORTS] == [rs.name] * len(PORTS)
    if AFXDP:
        assert xdp_nat_replies(plbd, "tcp") == {(rs.addr, 0)}  # not RIP:8301: the client's port
    else:
        assert ipset(t, "lbd-q0-nattcp0") == {rs.addr}


@pytest.fixture
def forwarding(ptopo: Topology) -> Iterator[None]:
    """IPv4 forwarding on the director (kernel IPVS's NAT needs it; lbd's translated replies do not)."""
    ptopo.director.exec(["sysctl", "-qw", "net.ipv4.ip_forward=1"])
    try:
        yield
    finally:
        ptopo.director.exec(["sysctl", "-qw", "net.ipv4.ip_forward=0"])


def test_one_packet_udp_nat_answers_pass_untranslated(plbd: Lbd, ptopo: Topology, servers: None,
                                                      forwarding: None) -> None:
    """-o with NAT real servers, as the kernel: each datagram is scheduled afresh (rr over the three),
    no entry is kept, and the real server's answer, which finds none, is routed by the director as it
    is: the client gets it from RIP:port (not rewritten to the VIP). Forwarding is on, as kernel IPVS's
    NAT needs it; with it off the director's stack drops the untranslated answer."""
    t, port = ptopo, PORTS[0]
    plbd.lbadm("-A", "-u", f"{t.vip}:{port}", "-s", "rr", "-o")
    for rs in t.reals:
        plbd.lbadm("-a", "-u", f"{t.vip}:{port}", "-r", f"{rs.addr}:{port}", "-m")
    plbd.wait_resolved()
    with enter_netns(t.client.netns):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.bind((t.client.addr, next(_sports)))  # unconnected: it takes an answer from any source
        s.settimeout(3.0)
        senders = []
        for _ in range(6):
            s.sendto(b"?\n", (t.vip, port))
            data, sender = s.recvfrom(2048)
            senders.append((sender, data.split(b"\n")[0].decode()))
    finally:
        s.close()
    by_addr = {rs.addr: rs.name for rs in t.reals}
    assert all(addr in by_addr and p == port and by_addr[addr] == name for (addr, p), name in senders), senders
    assert sorted(name for _, name in senders) == sorted([*by_addr.values()] * 2), senders
    assert not [c for c in conn_rows(plbd) if c[0] == "UDP"], conn_rows(plbd)  # no entry kept
    assert "-A -u" in plbd.lbadm("-S", "-n").stdout and " -o" in plbd.lbadm("-S", "-n").stdout


@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_port_zero_service_with_fullnat_real_servers(plbd: Lbd, ptopo: Topology, servers: None, proto: str) -> None:
    """FULLNAT under a persistent VIP:0: the connection reaches the real server on the client's port
    from a local address and port (conn dport = the client's, local address/port allocated as usual);
    the real server answers LIP:lport from RIP:<that port>, steered by its RIP in the protocol's set
    (after the LIP passed the address pre-filter) and rewritten to VIP:port -> client."""
    t, flag = ptopo, "-t" if proto == "tcp" else "-u"
    lip = t.director.iface("back").addr
    svc = f"{t.vip}:0"
    portless_service(plbd, t, [flag, svc], "-b")
    got = [exchange(t, proto, port) for port in PORTS]
    assert len(set(got)) == 1 and got[0] in {rs.name for rs in t.reals}, (got, plbd.log_tail())
    rip = t.host(got[0]).addr
    pairs = {(c[4], c[5]) for c in conn_rows(plbd) if c[0] == proto.upper()}
    for port in PORTS:
        assert (f"{t.vip}:{port}", f"{rip}:{port}") in pairs, pairs
    if AFXDP:  # RIP with any port to the LIP, of this protocol
        assert xdp_fnat_replies(plbd, proto) == {(rs.addr, 0, lip) for rs in t.reals}
    else:
        assert ipset(t, f"lbd-q0-fnat{proto}0") == {rs.addr for rs in t.reals}
        assert lip in ipset(t, "lbd-q0-addr")
        assert ipset(t, "lbd-q0-fnat") == set()
    plbd.lbadm("-D", flag, svc)
    if AFXDP:
        assert xdp_fnat_replies(plbd, proto) == set()
    else:
        assert ipset(t, f"lbd-q0-fnat{proto}0") == set()


def test_fwmark_service_with_fullnat_real_servers(plbd: Lbd, ptopo: Topology, servers: None, marked: None) -> None:
    """A persistent fwmark service with FULLNAT real servers without a port: TCP and UDP to three
    ports of the VIP reach one real server on the ports asked for, through the local address."""
    t = ptopo
    lip = t.director.iface("back").addr
    portless_service(plbd, t, ["-f", str(MARK)], "-b")
    got = [exchange(t, proto, port) for port in PORTS for proto in ("tcp", "udp")]
    assert len(set(got)) == 1 and got[0] in {rs.name for rs in t.reals}, (got, plbd.log_tail())
    rips = {rs.addr for rs in t.reals}
    assert ipset(t, "lbd-q0-fnattcp0") == rips and ipset(t, "lbd-q0-fnatudp0") == rips
    assert lip in ipset(t, "lbd-q0-addr")  # a fwmark service's local address joins the pre-filter too
