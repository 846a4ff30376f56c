"""Restart recovery: connection entries dumped by one engine come back in another (issue 8)."""

from __future__ import annotations

from scapy.all import IP, TCP, raw

from lb.engine import FwdState, Verdict
from lb.fastpath import CEngine
from lb.model import DestSpec, ServiceKey, ServiceSpec

VIP = "10.0.0.100"
DR = ServiceKey(6, VIP, 80)
FNAT = ServiceKey(6, VIP, 82)


def _director() -> CEngine:
    e = CEngine(conn_max=1000, hash_buckets=256)
    e.add_service(ServiceSpec(DR, "rr", persistent=60))
    for i in (1, 2, 3):
        e.add_dest(DR, DestSpec(f"10.0.0.1{i}", 80))
        e.set_fwd(DR, f"10.0.0.1{i}", 80, FwdState(ifindex=5, dst_mac=bytes([2, 0, 0, 0, 0, i]), src_mac=b"\x02" * 6))
    e.add_service(ServiceSpec(FNAT, "rr"))
    e.add_laddr(FNAT, "10.1.0.1")
    e.add_dest(FNAT, DestSpec("10.1.0.11", 80, fwd="fullnat"))
    e.set_fwd(FNAT, "10.1.0.11", 80, FwdState(ifindex=6, dst_mac=b"\x02\0\0\0\1\1", src_mac=b"\x02" * 6))
    return e


def _pkt(src: str, sport: int, dport: int, flags: str) -> bytes:
    return raw(IP(src=src, dst=VIP) / TCP(sport=sport, dport=dport, flags=flags))


def test_snapshot_restores_flows_counts_and_templates() -> None:
    old = _director()
    for sport in range(1000, 1012):
        old.process(_pkt(f"10.9.{sport % 4}.5", sport, 80, "S"), 1000)
        old.process(_pkt(f"10.9.{sport % 4}.5", sport, 80, "A"), 1001)
    reply_port = IP(old.process(_pkt("10.9.0.5", 5000, 82, "S"), 1002).out)[TCP].sport

    new = _director()
    outcome = new.restore_connections_raw(old.dump_connections_raw(2000), 2000)
    assert outcome == {"restored": old.conn_count()}
    # Same active/inactive/persistent counts per destination.
    def counts(e: CEngine) -> list[tuple[str, int, int, int]]:
        return [(d.spec.addr, d.active, d.inactive, d.persist) for s in e.services() for d in s.dests]
    assert counts(new) == counts(old)
    # Templates come back with their -Lnc state: every client's connection was established, so ASSURED.
    def templates(e: CEngine, now: int) -> list[tuple[str, str, str]]:
        return sorted((c.caddr, c.daddr, c.state) for c in e.connections(now) if c.cport == 0)
    assert templates(new, 2000) == templates(old, 2000)
    assert {state for _, _, state in templates(new, 2000)} == {"ASSURED"}
    # An established flow keeps its real server.
    a_new = new.process(_pkt("10.9.1.5", 1001, 80, "A"), 2100)
    a_old = old.process(_pkt("10.9.1.5", 1001, 80, "A"), 2100)
    assert a_new.verdict == Verdict.XMIT_L2 and a_new.l2hdr == a_old.l2hdr
    # FULLNAT replies to the old local port are still translated back to the client.
    r = new.process(raw(IP(src="10.1.0.11", dst="10.1.0.1") / TCP(sport=80, dport=reply_port, flags="SA")), 2200)
    assert r.verdict == Verdict.ANSWER and (IP(r.out).dst, IP(r.out)[TCP].dport) == ("10.9.0.5", 5000)


def test_restore_skips_what_no_longer_exists() -> None:
    old = _director()
    old.process(_pkt("10.9.0.5", 1000, 80, "S"), 1000)
    new = CEngine(conn_max=100)
    outcome = new.restore_connections_raw(old.dump_connections_raw(1001), 1001)
    # The service is gone: the entry and its template are refused with ESRCH, nothing is created.
    assert outcome == {"ESRCH": 2} and new.conn_count() == 0


def test_nat_entries_come_back_with_their_reply_tuple() -> None:
    """A restarted director still translates the replies of NAT connections it restored: the reply tuple
    (RIP:rport -> CIP:cport) is rebuilt from the dumped client address and port."""
    nat = ServiceKey(6, VIP, 85)

    def director() -> CEngine:
        e = CEngine(conn_max=100, hash_buckets=256)
        e.add_service(ServiceSpec(nat, "rr"))
        e.add_dest(nat, DestSpec("10.1.0.12", 8080, fwd="masq"))
        e.set_fwd(nat, "10.1.0.12", 8080, FwdState(ifindex=6, dst_mac=b"\x02\0\0\0\1\2", src_mac=b"\x02" * 6))
        return e

    old = director()
    old.process(_pkt("10.9.0.7", 4000, 85, "S"), 1000)
    new = director()
    assert new.restore_connections_raw(old.dump_connections_raw(1001), 1001) == {"restored": 1}
    synack = raw(IP(src="10.1.0.12", dst="10.9.0.7") / TCP(sport=8080, dport=4000, flags="SA"))
    r = new.process(synack, 1100)
    assert r.verdict == Verdict.ANSWER
    assert (IP(r.out).src, IP(r.out)[TCP].sport, IP(r.out).dst, IP(r.out)[TCP].dport) == (VIP, 85, "10.9.0.7", 4000)
    assert [(d.active, d.stats.outpkts) for s in new.services() for d in s.dests] == [(1, 1)]
