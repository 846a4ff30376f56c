"""Traffic for the netns tests' own topologies: the test httpd on the real servers, real servers
answering with their names on given addresses and ports, one client flow at a time, and the
operator's firewall marks (test_nat*.py, test_port_zero.py, test_fwmark.py, the sync tests, ...).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

from conformance.traffic import Flow, RealServers, close_tcp, open_tcp, udp_exchange
from lb.testbed import client
from lb.testbed.topology import Host, Topology

REPO = Path(__file__).resolve().parents[2]
# A UDP flood from a namespace at what the sender can: argv dst, port, seconds, at most this many
# datagrams; prints how many it sent (the overload tests: test_overload_guard.py, test_overload_napi.py).
UDP_FLOOD = """
import socket, sys, time
dst, port, seconds, most = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setblocking(False)
payload, sent, end = b"x" * 32, 0, time.monotonic() + seconds
while sent < most and time.monotonic() < end:
    for _ in range(min(256, most - sent)):
        try:
            s.sendto(payload, (dst, port))
            sent += 1
        except BlockingIOError:
            pass
print(sent)
"""


def serve_http(topo: Topology, ports: Iterable[int], probe_from: Host, logdir: Path | None = None) -> None:
    """lb.testbed.httpd (answering with the server's name) on every real server of `topo` and each
    of `ports`, its output in logdir/<server>-<port>.log (or nowhere); then until `probe_from` gets
    each server's own answer on each port (client.wait_serving: TimeoutError naming the server,
    with the logs' tails)."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    ports = tuple(ports)
    for rs in topo.reals:
        for port in ports:
            argv = [sys.executable, "-m", "lb.testbed.httpd", "--name", rs.name, "--port", str(port)]
            if logdir is None:
                rs.popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
                continue
            with open(logdir / f"{rs.name}-{port}.log", "w") as log:
                rs.popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        for port in ports:
            client.wait_serving(probe_from.netns, {rs.addr: rs.name for rs in topo.reals}, port)
    except TimeoutError as exc:
        if logdir is None:
            raise
        tails = "".join(f"\n{log.name}:\n{log.read_text(errors='replace')[-2000:]}" for log in sorted(logdir.glob("*.log")))
        raise TimeoutError(f"{exc}{tails}") from exc


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
