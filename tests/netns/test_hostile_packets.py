"""Hostile and unlucky packets on the wire (issue 16 items 3, 4, 7 and 9).

What the kernel would drop, lbd drops; what the kernel would hold while a real server's MAC is
resolved, lbd holds.

lbd sits before the director's routing, so it sees packets the kernel's routing and protocol
handlers would refuse. Each test sends hand-made packets from the client namespace (a raw socket:
lb.testbed.rawsend) to a DR service and checks lbd's per-reason counters and its connection table:
nothing may be scheduled.

Everything runs in the session topology's namespaces (prefix lbB<token>).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import HTTP_PORT, Lbd, udp_responders
from scapy.all import IP, TCP, UDP, Raw, raw
from steering import AFTER_ROUTING
from test_synproxy import PORT as SP_PORT  # type: ignore[import-not-found]
from test_synproxy import ftopo, splbd  # noqa: F401 (fixtures: the SYN-proxy FULLNAT topology and its lbd)

from conformance.traffic import Flow, udp_exchange
from lb.testbed.topology import Topology

COUNT_TIMEOUT_S = 10.0


def _send(topo: Topology, packets: list[bytes]) -> None:
    out = topo.client.exec([sys.executable, "-m", "lb.testbed.rawsend", *(p.hex() for p in packets)])
    assert out.stdout.strip() == str(len(packets)), out


def _wait_counts(lbd: Lbd, expected: dict[str, int]) -> dict[str, Any]:
    """lbd's per-reason counters once they reach `expected` (bounded wait: packets are in flight)."""
    deadline = time.monotonic() + COUNT_TIMEOUT_S
    while True:
        reasons = lbd.ok("counters")["reasons"]
        if all(reasons.get(k, 0) >= v for k, v in expected.items()) or time.monotonic() > deadline:
            return dict(reasons)
        time.sleep(0.1)


def _dr_service(topo: Topology, lbd: Lbd, proto: str = "-t") -> None:
    svc = f"{topo.vip}:{HTTP_PORT}"
    lbd.lbadm("-A", proto, svc, "-s", "rr")
    for rs in topo.reals:
        lbd.lbadm("-a", proto, svc, "-r", rs.addr, "-g")
    lbd.wait_resolved()


def test_martian_sources_are_dropped_and_counted(topo: Topology, lbd: Lbd) -> None:
    _dr_service(topo, lbd)
    # (0.0.0.0 itself cannot be sent: the client's kernel fills in a raw packet's zero source; the
    # packet table has it, and 0.9.9.9 is in the same 0.0.0.0/8.)
    martians = ["127.0.0.1", "255.255.255.255", "224.0.0.1", "0.9.9.9"]
    packets = [raw(IP(src=src, dst=topo.vip) / TCP(sport=41000 + i, dport=HTTP_PORT, flags="S"))
               for i, src in enumerate(martians)]
    packets.append(raw(IP(src=topo.vip, dst=topo.vip) / TCP(sport=HTTP_PORT, dport=HTTP_PORT, flags="S")))
    _send(topo, packets)
    if AFTER_ROUTING:  # after routing: the kernel's martian-source checks drop most before lbd's hook; lbd drops the rest
        time.sleep(0.5)
        reasons = _wait_counts(lbd, {})
        assert reasons.get("martian_src", 0) + reasons.get("local_src", 0) <= len(packets), reasons
    else:
        reasons = _wait_counts(lbd, {"martian_src": len(martians), "local_src": 1})
        assert reasons.get("martian_src") == len(martians), reasons
        assert reasons.get("local_src") == 1, reasons
    assert reasons.get("forwarded", 0) == 0, reasons
    assert lbd.ok("connections")["connections"] == [], "a martian created a connection entry"


def _udp_with_length(topo: Topology, sport: int, length: int) -> bytes:
    packet = bytearray(raw(IP(src=topo.client.addr, dst=topo.vip) / UDP(sport=sport, dport=HTTP_PORT)
                           / Raw(b"q" * 8)))
    packet[24:26] = length.to_bytes(2, "big")
    return bytes(packet)


def test_udp_with_a_bad_length_is_dropped_and_makes_no_entry(topo: Topology, lbd: Lbd) -> None:
    _dr_service(topo, lbd, "-u")
    lengths = [0, 1, 7, 17, 400]  # the IP payload is 16 bytes
    _send(topo, [_udp_with_length(topo, 42000 + i, n) for i, n in enumerate(lengths)])
    reasons = _wait_counts(lbd, {"malformed": len(lengths)})
    assert reasons.get("malformed") == len(lengths), reasons
    assert reasons.get("forwarded", 0) == 0, reasons
    assert lbd.ok("connections")["connections"] == [], "a malformed datagram created a connection entry"
    # The positive control: a well-formed datagram of the same flow is scheduled.
    _send(topo, [_udp_with_length(topo, 42100, 16)])
    reasons = _wait_counts(lbd, {"forwarded": 1})
    assert reasons.get("forwarded") == 1, reasons


def test_synproxy_answers_no_corrupted_or_martian_syn(ftopo: Topology, splbd: Lbd) -> None:  # noqa: F811
    """No SYN-ACK for a SYN whose TCP checksum is wrong, nor for one from a multicast source (its SYN-ACK
    would be put on the wire towards a group); a good SYN is answered (the control)."""
    def syn(sport: int, src: str | None = None) -> bytes:
        return raw(IP(src=src or ftopo.client.addr, dst=ftopo.vip) / TCP(sport=sport, dport=SP_PORT, flags="S",
                                                                       seq=1000 + sport))

    corrupted = []
    for sport in range(43000, 43005):
        packet = bytearray(syn(sport))
        packet[37] ^= 0x01  # the TCP checksum's low byte
        corrupted.append(bytes(packet))
    _send(ftopo, [*corrupted, syn(43010, "224.0.0.1"), syn(43011, "127.0.0.1")])
    reasons = _wait_counts(splbd, {"bad_l4_csum": 5, "martian_src": 0 if AFTER_ROUTING else 2})
    assert reasons.get("bad_l4_csum") == 5, reasons
    if AFTER_ROUTING:  # --steer-hook input: the kernel's routing drops most martians before lbd's hook
        assert reasons.get("martian_src", 0) <= 2, reasons
    else:
        assert reasons.get("martian_src") == 2, reasons
    assert reasons.get("sp_cookie", 0) == 0, reasons
    _send(ftopo, [syn(43020)])
    reasons = _wait_counts(splbd, {"sp_cookie": 1})
    assert reasons.get("sp_cookie") == 1, reasons


UDP_PORT = 53


@pytest.fixture(scope="module")
def udp_servers(topo: Topology) -> Iterator[None]:
    """A UDP responder on VIP:53 in each real server, answering with its name (DR: the VIP is local there)."""
    with udp_responders(topo, UDP_PORT):
        yield


def test_first_datagram_to_a_just_added_real_server_is_not_lost(topo: Topology, lbd: Lbd, udp_servers: None) -> None:
    """Right after `-a` with a cold neighbour cache the real server's MAC is still being resolved: the
    kernel would queue the first packets in its neighbour entry and send them once the real server
    answers; lbd holds them the same way (l2_queued) and sends them from its timers. Each round
    empties the director's neighbour cache, adds the service and real server, and sends one datagram
    at once: every one must be answered by that real server."""
    svc = f"{topo.vip}:{UDP_PORT}"
    rs = topo.reals[0]
    answers = []
    for round_ in range(5):
        topo.director.exec(["ip", "neigh", "flush", "all"], check=False)
        lbd.lbadm("-A", "-u", svc, "-s", "rr")
        lbd.lbadm("-a", "-u", svc, "-r", f"{rs.addr}:{UDP_PORT}", "-g")
        flow = Flow(client="client", addr=topo.client.addr, port=44000 + round_)
        udp_exchange(topo.client.netns, flow, topo.vip, UDP_PORT)
        answers.append(flow.outcome)
        lbd.lbadm("-D", "-u", svc)
    reasons = lbd.ok("counters")["reasons"]
    assert answers == [rs.name] * 5, f"answers {answers}; counters {reasons}"
    assert reasons.get("no_l2", 0) == 0, reasons


def test_dr_decrements_the_ttl_and_answers_an_expired_one(topo: Topology, lbd: Lbd, udp_servers: None) -> None:
    """As kernel IPVS (decrement_ttl): a datagram sent with TTL 5 reaches the real server with TTL 4 (the
    responder reports what it saw, IP_RECVTTL); one sent with TTL 1 is answered with ICMP time exceeded
    from the VIP (read on the client with IP_RECVERR)."""
    svc = f"{topo.vip}:{UDP_PORT}"
    rs = topo.reals[0]
    lbd.lbadm("-A", "-u", svc, "-s", "rr")
    lbd.lbadm("-a", "-u", svc, "-r", f"{rs.addr}:{UDP_PORT}", "-g")
    lbd.wait_resolved()
    five = Flow(client="client", addr=topo.client.addr, port=45000)
    udp_exchange(topo.client.netns, five, topo.vip, UDP_PORT, ttl=5)
    assert (five.outcome, five.ttl) == (rs.name, 4)
    one = Flow(client="client", addr=topo.client.addr, port=45001)
    udp_exchange(topo.client.netns, one, topo.vip, UDP_PORT, ttl=1)
    assert one.outcome == f"icmp:11/0 from {topo.vip} quoting 2"  # the whole payload, as __icmp_send quotes
    assert lbd.ok("counters")["reasons"].get("ttl_exceeded") == 1
