"""FULLNAT (DPVS conventions) end to end with real packets.

Topology (module `ftopo`): client and director on segment "lan" (VIP .100 on the
director); real servers f1..f3 on segment "back", another subnet, with the
director's back address as their default route. The director has a second back
address; both are the service's local addresses (LIPs). The real servers have
no VIP: they see LIP:lport -> RIP:80 and answer to the LIP, through lbd, which
turns the reply back into VIP -> client.

Local addresses are added with the control operation `add_laddr` when
`lbadm -P -t VIP:PORT -z LIP` (DPVS) is refused by this lbadm.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Lbd, churn_other_services, held_connections_through_churn, parse_ln, running_lbd, udp_until_refused
from netns_traffic import serve_http
from steering import dump

from lb.testbed import client
from lb.testbed.pcap import Capture
from lb.testbed.topology import Topology, fullnat_spec

REPO = Path(__file__).resolve().parents[2]
PORT = 80  # VIP port and real-server port
UDP_PORT = 5353  # nobody listens there on the real servers
OTHER_PORTS = (8080, 8081)
N_REAL = 3
LIP2_INDEX = 5  # the director's second back address
TOA_KIND, TOA_LEN = 254, 8


@pytest.fixture(scope="module")
def ftopo() -> Iterator[Topology]:
    with Topology(fullnat_spec(N_REAL)) as t:
        d = t.director
        back = d.iface("back")
        d.ip("addr", "add", f"{t.addr('back', LIP2_INDEX)}/24", "dev", back.ifname)
        serve_http(t, (PORT,), d)  # each httpd answers its own address (from the director)
        yield t


def _director_get(t: Topology, addr: str) -> bool:
    return client.get_once(t.director.netns, addr, PORT, timeout=1.0).ok


def lips(t: Topology) -> list[str]:
    return [t.director.iface("back").addr, t.addr("back", LIP2_INDEX)]


@pytest.fixture
def flbd(ftopo: Topology, engine: str) -> Iterator[Lbd]:
    with running_lbd(ftopo, engine) as d:
        yield d


def key(t: Topology, port: int = PORT, proto: str = "tcp") -> dict[str, Any]:
    return {"proto": proto, "addr": t.vip, "port": port}


def add_laddrs(lbd: Lbd, t: Topology, svc_key: dict[str, Any], addrs: list[str]) -> str:
    """Local addresses: `lbadm -P` (DPVS) if lbadm has it, else the control op. Returns which."""
    flag = "-t" if svc_key["proto"] == "tcp" else "-u"
    how = "lbadm -P"
    for la in addrs:
        proc = lbd.lbadm("-P", flag, f"{t.vip}:{svc_key['port']}", "-z", la, check=False)
        if proc.returncode != 0:
            resp = lbd.request("add_laddr", {"service": svc_key, "addr": la})
            if not resp.get("ok") and lbd.engine == "python":
                pytest.skip(f"lbd --engine python refuses FULLNAT local addresses: {resp.get('error')}")
            assert resp.get("ok"), resp
            how = "control op add_laddr (lbadm -P refused)"
    return how


def fullnat_service(lbd: Lbd, t: Topology, *, port: int = PORT, proto: str = "tcp", toa: bool = False,
                    reals: list[str] | None = None) -> None:
    """A FULLNAT service with both local addresses; skips if this engine refuses FULLNAT."""
    k = key(t, port, proto)
    lbd.ok("add_service", {**k, "sched": "rr", "persistent": None, "netmask": "255.255.255.255",
                           "toa": toa, "synproxy": False})
    add_laddrs(lbd, t, k, lips(t))
    flag = "-t" if proto == "tcp" else "-u"
    for rs in t.reals:
        if reals is not None and rs.name not in reals:
            continue
        proc = lbd.lbadm("-a", flag, f"{t.vip}:{port}", "-r", f"{rs.addr}:{port}", "-b", "-w", "1",
                         check=False)
        if proc.returncode != 0 and lbd.engine == "python":
            pytest.skip(f"lbd --engine python refuses FULLNAT: {proc.stderr.strip()}")
        assert proc.returncode == 0, (proc.stderr, lbd.log_tail())
    lbd.wait_resolved()


# --------------------------------------------------------------------------- tests


def test_fullnat_rr_spreads_http(flbd: Lbd, ftopo: Topology) -> None:
    t = ftopo
    fullnat_service(flbd, t)
    replies = client.fresh_gets(t.client.netns, t.vip, PORT, 30, timeout=5.0)
    assert all(r.ok for r in replies), [r.error for r in replies if not r.ok]
    got = [r.server for r in replies]
    assert got == [rs.name for rs in reversed(t.reals)] * 10, f"rr order differs from kernel IPVS: {got}"
    services = parse_ln(flbd.lbadm("-Ln").stdout)
    assert len(services) == 1 and services[0].addr == t.vip
    assert [d.forward for d in services[0].dests] == ["FullNat"] * N_REAL, services
    listed = flbd.ok("list")["services"][0]
    assert sorted(la["addr"] for la in listed["laddrs"]) == sorted(lips(t)), listed["laddrs"]


def test_fullnat_real_server_sees_local_address(flbd: Lbd, ftopo: Topology) -> None:
    """The real server's peer is LIP:lport (both local addresses in turn), never the client."""
    t = ftopo
    fullnat_service(flbd, t)
    seen = []
    for _ in range(6):
        r = client.get_once(t.client.netns, t.vip, PORT, "/peer")
        assert r.ok, r
        peer_addr, peer_port = r.body.split("\n")[1].split()
        assert peer_addr != t.client.addr
        seen.append(peer_addr)
        assert 1024 <= int(peer_port) <= 65535
    assert set(seen) == set(lips(t)), f"peers seen by the real servers: {seen}, LIPs {lips(t)}"
    conns = flbd.ok("connections")["connections"]
    assert conns and all(c["caddr"] == t.client.addr and c["vaddr"] == t.vip for c in conns), conns


def test_fullnat_toa_on_handshake_ack(flbd: Lbd, ftopo: Topology) -> None:
    """With "toa": true the ACK completing the handshake at the real server carries TCP
    option 254 (len 8: client port, client address); later segments do not."""
    t = ftopo
    fullnat_service(flbd, t, toa=True, reals=["f1"])
    f1 = t.host("f1")
    cap = Capture(f1, f"tcp dst port {PORT} and (tcp[tcpflags] & (tcp-syn|tcp-rst)) == 0",
                  direction="in").start()
    try:
        replies = [client.get_once(t.client.netns, t.vip, PORT, "/peer") for _ in range(3)]
        packets = cap.stop()
        assert all(r.ok and r.server == "f1" for r in replies), replies
        for r in replies:
            peer_addr, peer_port = r.body.split("\n")[1].split()
            assert peer_addr in lips(t)
            conn = [p for p in packets if p.ip.src == peer_addr and p.ip.l4 and p.ip.l4.sport == int(peer_port)]
            assert conn, f"no segment of {peer_addr}:{peer_port} captured:\n{cap.text()}"
            first = conn[0].ip.l4
            assert first is not None and first.flags == 0x10, f"first segment flags {first}"
            toa = [v for k, v in first.options if k == TOA_KIND]
            assert r.local_port is not None
            want = r.local_port.to_bytes(2, "big") + socket.inet_aton(t.client.addr)
            assert toa == [want], (f"handshake ACK options {first.options}, want TOA "
                                   f"{r.local_port} {t.client.addr}:\n{cap.text()}")
            assert len(want) + 2 == TOA_LEN
            later = [p for p in conn[1:] if p.ip.l4 and any(k == TOA_KIND for k, _ in p.ip.l4.options)]
            assert not later, f"TOA repeated on later segments:\n{cap.text()}"
    finally:
        cap.close()


def test_fullnat_udp_icmp_port_unreachable_reaches_client(flbd: Lbd, ftopo: Topology) -> None:
    """The real server answers LIP's datagram with ICMP port unreachable; lbd translates it
    to VIP -> client quoting client -> VIP, so the client's own socket gets the error."""
    t = ftopo
    fullnat_service(flbd, t, port=UDP_PORT, proto="udp", reals=["f1"])
    got = udp_until_refused(flbd, t, UDP_PORT)
    assert isinstance(got.error, ConnectionRefusedError), (
        f"client got {got.error!r}, not port unreachable; lbd translated {got.translated} ICMP errors "
        f"(0: the error from the real server to the local address never reached lbd's queue)\n"
        f"client capture:\n{got.capture}\nlbd's steering in the director:\n" + dump(t.director))
    assert got.icmps, got.capture
    for ip in got.icmps:
        assert ip.l4 is not None
        q = ip.l4.quoted
        assert (ip.src, ip.dst, ip.l4.icmp_code) == (t.vip, t.client.addr, 3), got.capture
        assert q is not None and q.l4 is not None
        assert (q.src, q.l4.sport, q.dst, q.l4.dport) == (t.client.addr, got.cport, t.vip, UDP_PORT), got.capture
    assert got.translated >= 1


def test_fullnat_held_connections_survive_other_services(flbd: Lbd, ftopo: Topology) -> None:
    t = ftopo
    fullnat_service(flbd, t)
    rips = [rs.addr for rs in t.reals]

    def churn(between: Callable[[], None]) -> int:
        changes = churn_other_services(flbd, t.vip, rips, "-b", OTHER_PORTS, laddrs=tuple(lips(t)), between=between)
        return changes + churn_other_services(flbd, t.vip, rips[:2], "-i", (OTHER_PORTS[-1] + 1,), between=between)

    held_connections_through_churn(flbd, t, PORT, churn, "FULLNAT connections")
