"""1,000 idle control connections do not lock the operator out, nor stop the state saves
(issue 16 item 6). Before, under the usual 1,024-fd limit they took every descriptor lbd had:
lbadm failed and the periodic snapshot failed with EMFILE."""

from __future__ import annotations

import os
import resource
import socket
import time
from contextlib import ExitStack

import pytest
from conftest import HTTP_PORT, QUEUE_NUM, running_lbd

from lb import statefile
from lb.testbed.topology import Topology

pytestmark = pytest.mark.netns

IDLE_CONNECTIONS = 1000
LBD_FD_LIMIT = 1024  # the usual soft limit (systemd's default), whatever this machine's is
WAIT_BOUND_S = 20.0  # bounds on waiting, not performance thresholds


def test_idle_connection_flood_leaves_lbadm_and_state_saves_working(topo: Topology) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = IDLE_CONNECTIONS + 200
    if hard < need:
        pytest.skip(f"this test opens {IDLE_CONNECTIONS} sockets itself; the hard fd limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, need), hard))
    try:
        with running_lbd(topo, "c") as d, ExitStack() as stack:
            assert d.proc is not None
            resource.prlimit(d.proc.pid, resource.RLIMIT_NOFILE, (LBD_FD_LIMIT, LBD_FD_LIMIT))
            state = d.dir / f"lbd-q{QUEUE_NUM}.state"
            deadline = time.monotonic() + WAIT_BOUND_S
            opened = 0
            while opened < IDLE_CONNECTIONS and time.monotonic() < deadline:
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.setblocking(False)
                try:
                    s.connect(d.socket)
                except OSError:  # the listen backlog is full until lbd accepts: again
                    s.close()
                    time.sleep(0.005)
                    continue
                stack.enter_context(s)
                opened += 1
            print(f"\nCTL-FLOOD idle connections opened: {opened}; lbd fds:",
                  len(os.listdir(f"/proc/{d.proc.pid}/fd")))
            svc = f"{topo.vip}:{HTTP_PORT}"
            d.lbadm("-A", "-t", svc, "-s", "rr")  # the operator gets in
            d.lbadm("-a", "-t", svc, "-r", f"{topo.reals[0].addr}:{HTTP_PORT}", "-g")
            assert svc in d.lbadm("-Ln").stdout
            deadline = time.monotonic() + WAIT_BOUND_S
            while True:  # the periodic save writes the new service
                try:
                    services = statefile.read_state(state)[0]["services"]
                except (OSError, ValueError):
                    services = []
                if any(s.get("port") == HTTP_PORT for s in services):
                    break
                assert time.monotonic() < deadline, f"no state save with the new service\n{d.log_tail()}"
                time.sleep(0.1)
            log = d.log_tail(1_000_000)
            assert "Too many open files" not in log and "EMFILE" not in log, log[-3000:]
            assert "control socket at its cap" in log
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
