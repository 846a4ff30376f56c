"""A restarted (or sync backup) C engine gets back NAT connections that reach their real server on
the client's port (issue 14): the dump names the port reached (RIP:443), not the destination's
(RIP or RIP:8080 under a persistent VIP:0), and the restored entry translates the real server's
replies from that port."""

from __future__ import annotations

import pytest

import packet_table as t
from lb.engine import FwdState, Verdict
from lb.model import DestSpec, ServiceKey, ServiceSpec

VIP, RIP, CLIENT = "10.0.0.100", "10.9.0.2", "192.0.2.9"
KEY = ServiceKey(6, VIP, 0)


@pytest.mark.parametrize("dest_port", [0, 8080])
def test_restored_port_less_nat_entry_translates_replies(dest_port: int) -> None:
    try:
        from lb.fastpath import CEngine
    except ImportError:  # pragma: no cover
        pytest.skip("C fast path not built")
    scapy = t._scapy()
    syn = bytes(scapy.IP(src=CLIENT, dst=VIP, ttl=64) / scapy.TCP(sport=4000, dport=443, flags="S", seq=7))
    synack = bytes(scapy.IP(src=RIP, dst=CLIENT, ttl=64) / scapy.TCP(sport=443, dport=4000, flags="SA", seq=9, ack=8))
    engines = []
    for _ in range(2):
        e = CEngine(conn_max=64, hash_seed=1)
        e.add_service(ServiceSpec(KEY, persistent=300))
        e.add_dest(KEY, DestSpec(RIP, dest_port, "masq"))
        e.set_fwd(KEY, RIP, dest_port, FwdState(ifindex=3, dst_mac=b"\x02" * 6, src_mac=b"\x04" * 6,
                                                  saddr="0.0.0.0", mtu=1500))
        engines.append(e)
    first = engines[0].process(syn, 0)
    assert first.verdict == Verdict.XMIT_L2
    assert scapy.IP(first.out).dport == 443  # the client's port, whatever the destination's
    assert engines[1].restore_connections_raw(engines[0].dump_connections_raw(1), 1) == {"restored": 2}
    reply = engines[1].process(synack, 2)  # found by the restored reply tuple RIP:443 -> CIP:4000
    assert reply.verdict == Verdict.ANSWER
    out = scapy.IP(reply.out)
    assert (out.src, out.sport, out.dst, out.dport) == (VIP, 443, CLIENT, 4000)


def test_restored_port_less_fullnat_entry_keeps_its_local_port_taken() -> None:
    """FULLNAT to the client's port: the restored entry's local port stays taken towards RIP:443 (the next
    connection to RIP:443 gets another), and its reply from RIP:443 to LIP:lport is translated."""
    try:
        from lb.fastpath import CEngine
    except ImportError:  # pragma: no cover
        pytest.skip("C fast path not built")
    scapy = t._scapy()
    lip = "10.9.0.1"
    engines = []
    for _ in range(2):
        e = CEngine(conn_max=64, hash_seed=1)
        e.add_service(ServiceSpec(KEY, persistent=300))
        e.add_laddr(KEY, lip)
        e.add_dest(KEY, DestSpec(RIP, 0, "fullnat"))
        e.set_fwd(KEY, RIP, 0, FwdState(ifindex=3, dst_mac=b"\x02" * 6, src_mac=b"\x04" * 6, saddr="0.0.0.0",
                                          mtu=1500))
        engines.append(e)
    syn = bytes(scapy.IP(src=CLIENT, dst=VIP, ttl=64) / scapy.TCP(sport=4000, dport=443, flags="S", seq=7))
    first = scapy.IP(engines[0].process(syn, 0).out)
    assert (first.src, first.dst, first.dport) == (lip, RIP, 443)
    assert engines[1].restore_connections_raw(engines[0].dump_connections_raw(1), 1) == {"restored": 2}
    synack = bytes(scapy.IP(src=RIP, dst=lip, ttl=64) / scapy.TCP(sport=443, dport=first.sport, flags="SA", seq=9,
                                                                   ack=8))
    out = scapy.IP(engines[1].process(synack, 2).out)
    assert (out.src, out.sport, out.dst, out.dport) == (VIP, 443, CLIENT, 4000)
    syn2 = bytes(scapy.IP(src="192.0.2.10", dst=VIP, ttl=64) / scapy.TCP(sport=4001, dport=443, flags="S", seq=7))
    second = scapy.IP(engines[1].process(syn2, 3).out)
    assert second.dport == 443 and second.sport != first.sport  # that local port is still taken
