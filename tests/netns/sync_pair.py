"""Two lbd directors on one topology, for the connection-sync tests (test_sync*.py and the
keepalived sync tests): the real servers' test httpd, an lbd on the hosts "da" and "db" with the
same configuration, and the teardown (lbd killed by PID, its iptables chains removed).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TypeVar

from conftest import REPO, Lbd

from lb.testbed import client
from lb.testbed.topology import Host, Topology

T = TypeVar("T")


class LbdOn(Lbd):
    """An lbd in a given host of the topology (conftest's Lbd runs in the topology's director)."""

    def __init__(self, topo: Topology, host: Host) -> None:
        super().__init__(topo, "c")
        self._host = host

    @property
    def director(self) -> Host:
        return self._host


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
    """The test httpd on every real server and port (logs in a fresh directory named by
    log_prefix), then wait until `probe_from` gets an answer from each."""
    logdir = Path(tempfile.mkdtemp(prefix=log_prefix))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    ports = tuple(ports)
    for rs in topo.reals:
        for port in ports:
            with open(logdir / f"{rs.name}-{port}.log", "w") as log:
                rs.popen([sys.executable, "-m", "lb.testbed.httpd", "--name", rs.name, "--port", str(port)],
                         stdout=log, stderr=subprocess.STDOUT, env=env)
    for port in ports:
        client.wait_serving(probe_from.netns, {rs.addr: rs.name for rs in topo.reals}, port)


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
            if d.running():
                d.stop(signal.SIGKILL)
            for table in ("raw", "filter", "mangle", "nat"):
                d.director.exec(["iptables", "-t", table, "-F"], check=False)
                d.director.exec(["iptables", "-t", table, "-X"], check=False)
            d.cleanup()
