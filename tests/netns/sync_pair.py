"""Two lbd directors on one topology, for the connection-sync tests (test_sync*.py and the
keepalived tests with two directors): their topology, the real servers' test httpd, an lbd on the
hosts "da" and "db" with the same configuration, and the teardown (lbd killed by PID, its iptables
chains removed).
"""

from __future__ import annotations

import contextlib
import signal
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TypeVar

import netns_traffic
from conftest import Lbd, flush_iptables

from lb.testbed.topology import (
    CLIENT_INDEX,
    DIRECTOR_INDEX,
    REAL_BASE_INDEX,
    VIP_INDEX,
    Host,
    HostSpec,
    LinkSpec,
    SegmentSpec,
    Topology,
    TopologySpec,
)

T = TypeVar("T")

N_CONNS = 20  # established connections per service (or kind) that a sync test carries over
LIP_INDEX = 5  # FULLNAT: the floating local address on "back", the real servers' default route


class LbdOn(Lbd):
    """An lbd in a given host of the topology (conftest's Lbd runs in the topology's director)."""

    def __init__(self, topo: Topology, host: Host) -> None:
        super().__init__(topo, "c")
        self._host = host

    @property
    def director(self) -> Host:
        return self._host

    def start_sync_daemon(self, state: str, syncid: int) -> None:
        """`lbadm --start-daemon STATE` (master or backup) on the host's first link, the segment
        the directors share."""
        self.lbadm("--start-daemon", state, "--mcast-interface", self.director.ifname, "--syncid", str(syncid))

    def discard(self) -> None:
        """Killed (if running), the iptables rules it left in its namespace removed, its files gone."""
        if self.running():
            self.stop(signal.SIGKILL)
        flush_iptables(self.director)
        self.cleanup()


def pair_spec(fullnat: bool = False, directors: tuple[str, str] = ("da", "db"), vip_on_first: bool = True) -> TopologySpec:
    """The topology of two directors: client .50, the directors .2 and .3 on "lan" (the first holding
    the VIP unless not vip_on_first: keepalived's to place), two real servers (.11/.12). DR
    (default): rs1 and rs2 on "lan", the VIP on their loopback. FULLNAT: f1 and f2 on "back" with
    the directors (.1 and .2), their default route the local address LIP_INDEX (on neither director
    yet)."""
    def back(index: int) -> tuple[LinkSpec, ...]:
        return (LinkSpec("back", index),) if fullnat else ()

    hosts = [
        HostSpec("client", (LinkSpec("lan", CLIENT_INDEX),), role="client"),
        HostSpec(directors[0], (LinkSpec("lan", DIRECTOR_INDEX), *back(1)), role="director",
                 vips=(VIP_INDEX,) if vip_on_first else ()),
        HostSpec(directors[1], (LinkSpec("lan", DIRECTOR_INDEX + 1), *back(2)), role="director"),
    ]
    if fullnat:
        hosts += [HostSpec(f"f{i}", (LinkSpec("back", REAL_BASE_INDEX + i),), role="real", gateway=("back", LIP_INDEX))
                  for i in (1, 2)]
    else:
        hosts += [HostSpec(f"rs{i}", (LinkSpec("lan", REAL_BASE_INDEX + i),), role="real", vips=(VIP_INDEX,))
                  for i in (1, 2)]
    segments = (SegmentSpec("lan"), SegmentSpec("back")) if fullnat else (SegmentSpec("lan"),)
    return TopologySpec(segments=segments, hosts=tuple(hosts))

def wait_until(predicate: Callable[[], T | None], timeout: float, what: str) -> T:
    """Poll `predicate` until it returns something true; AssertionError naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached in {timeout} s")
        time.sleep(0.2)


def serve_http(topo: Topology, log_prefix: str, ports: Iterable[int], probe_from: Host) -> None:
    """netns_traffic.serve_http with its logs in a fresh directory named by log_prefix."""
    netns_traffic.serve_http(topo, ports, probe_from, Path(tempfile.mkdtemp(prefix=log_prefix)))


@contextlib.contextmanager
def director_pair(topo: Topology, configure: Callable[[LbdOn], None]) -> Iterator[tuple[LbdOn, LbdOn]]:
    """An lbd on "da" and one on "db", each started and given `configure`; on exit both are
    killed (if running) and the iptables rules lbd left in their namespaces removed."""
    a, b = LbdOn(topo, topo.host("da")), LbdOn(topo, topo.host("db"))
    try:
        for d in (a, b):
            d.start()
            configure(d)
        yield a, b
    finally:
        for d in (a, b):
            d.discard()
