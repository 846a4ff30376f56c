"""Traffic for the netns tests' own topologies: real servers answering with their names on given
addresses and ports, one client flow at a time, and the operator's firewall marks (test_nat*.py,
test_port_zero.py, test_fwmark.py, ...).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

from conformance.traffic import Flow, RealServers, close_tcp, open_tcp, udp_exchange
from lb.testbed.topology import Host, Topology


@contextlib.contextmanager
def answering(reals: Iterable[Host], listen: Iterable[tuple[str | None, int]], tcp: bool) -> Iterator[None]:
    """Each real server answering with its name on every (address, port) of `listen`
    (conformance.traffic.RealServers): UDP always, TCP too if `tcp`. An address None is the real
    server's own (NAT, FULLNAT); DR and TUN real servers answer on the VIP. Closed on exit."""
    listen = tuple(listen)
    servers = RealServers()
    try:
        for rs in reals:
            for addr, port in listen:
                servers.serve(rs.netns, rs.name, addr or rs.addr, port, tcp=tcp)
        yield
    finally:
        servers.close()


def flow_outcome(topo: Topology, proto: str, vip: str, port: int, sport: int) -> str:
    """One TCP connection (opened, the name read, closed) or one UDP exchange ("tcp", "udp") from the
    client's port `sport` to vip:port: the answering real server's name, or what became of the flow."""
    flow = Flow(client="client", addr=topo.client.addr, port=sport)
    if proto == "tcp":
        open_tcp(topo.client.netns, flow, vip, port)
        close_tcp(flow)
    else:
        udp_exchange(topo.client.netns, flow, vip, port)
    return flow.outcome


@contextlib.contextmanager
def mangle_prerouting(host: Host, rules: list[list[str]]) -> Iterator[None]:
    """The operator's rules appended to the mangle table's PREROUTING in `host` (MARK rules for
    fwmark services), deleted on exit."""
    for r in rules:
        host.exec(["iptables", "-t", "mangle", "-A", "PREROUTING", *r])
    try:
        yield
    finally:
        for r in rules:
            host.exec(["iptables", "-t", "mangle", "-D", "PREROUTING", *r], check=False)
