"""Two lbds in two network namespaces, both on their defaults (issue 12, item 5).

Before, both took /run/lbd/lbd.sock and /run/lbd/lbd-q0.state: the second found the first's
socket, or restored the first's services and installed rules for a VIP it does not own. Now each
namespace has its own directory (lb/paths.py: /run/lbd/netns/NAME/), and lbd, lbadm and the state
file all follow the namespace they run in. Nothing here passes --socket, --state-dir or $LBD_SOCKET.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import LBADM, LBD, READY_TIMEOUT_S, STOP_TIMEOUT_S, iptables_leftovers, steering_args
from steering import dump

from lb.ctlclient import ControlClientError, request_once
from lb.testbed.topology import Host, HostSpec, LinkSpec, SegmentSpec, Topology, TopologySpec

PORT = 80


def _spec() -> TopologySpec:
    # Two directors on one segment, each with a VIP of its own (.100 and .101).
    return TopologySpec(
        segments=(SegmentSpec("lan"),),
        hosts=(HostSpec("dira", (LinkSpec("lan", 2),), role="director", vips=(100,)),
               HostSpec("dirb", (LinkSpec("lan", 3),), role="director", vips=(101,)),
               HostSpec("rs1", (LinkSpec("lan", 11),), role="real", vips=(100, 101))),
    )


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "LBD_SOCKET"}


class DefaultLbd:
    """lbd started in `host` with no path options at all; ended by PID."""

    def __init__(self, topo: Topology, host: Host, logdir: Path) -> None:
        self.topo, self.host = topo, host
        self.rundir = Path("/run/lbd/netns") / host.netns  # the documented place, not lb.paths' answer
        self.socket = str(self.rundir / "lbd.sock")
        self.log = logdir / f"{host.name}-lbd.log"
        self.proc: subprocess.Popen[Any] | None = None

    def start(self) -> None:
        with open(self.log, "a") as log:
            self.proc = self.host.popen([str(LBD), "-v", *steering_args()], stdout=log, stderr=subprocess.STDOUT,
                                        env=_env())
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"lbd in {self.host.netns} exited {self.proc.returncode}:\n{self.tail()}"
            try:
                if os.path.exists(self.socket) and request_once(self.socket, "ping", timeout_s=2.0).get("ok"):
                    return
            except ControlClientError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"lbd in {self.host.netns} not answering on {self.socket}:\n{self.tail()}")

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        rc = self.topo.stop_process(self.proc, timeout=STOP_TIMEOUT_S)
        self.proc = None
        return rc

    def lbadm(self, *args: str) -> str:
        proc = subprocess.run(["ip", "netns", "exec", self.host.netns, str(LBADM), *args], capture_output=True,
                              text=True, timeout=20, env=_env(), check=False)
        assert proc.returncode == 0, f"lbadm {args} in {self.host.netns}: {proc.stderr}\n{self.tail()}"
        return proc.stdout

    def rules(self) -> str:
        """lbd's steering: its table, or its raw rules and the ip sets they look services up in."""
        return dump(self.host)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else "(no log)"


@pytest.fixture
def two(tmp_path: Path) -> Iterator[tuple[DefaultLbd, DefaultLbd, Topology]]:
    with Topology(_spec()) as topo:
        a, b = DefaultLbd(topo, topo.host("dira"), tmp_path), DefaultLbd(topo, topo.host("dirb"), tmp_path)
        try:
            yield a, b, topo
        finally:
            for d in (a, b):
                d.stop()
                shutil.rmtree(d.rundir, ignore_errors=True)
                assert not iptables_leftovers(d.host), f"rules left in {d.host.netns}"


def test_each_namespace_has_its_own_lbd_services_and_rules(two: tuple[DefaultLbd, DefaultLbd, Topology]) -> None:
    a, b, topo = two
    vip_a, vip_b, rip = topo.host("dira").vips[0], topo.host("dirb").vips[0], topo.host("rs1").addr
    a.start()
    b.start()  # before: "another lbd is already listening on /run/lbd/lbd.sock"
    assert a.socket != b.socket and os.path.exists(a.socket) and os.path.exists(b.socket)

    a.lbadm("-A", "-t", f"{vip_a}:{PORT}", "-s", "rr")
    a.lbadm("-a", "-t", f"{vip_a}:{PORT}", "-r", f"{rip}:{PORT}", "-g")
    b.lbadm("-A", "-t", f"{vip_b}:{PORT}", "-s", "wlc")

    listed_a, listed_b = a.lbadm("-Ln"), b.lbadm("-Ln")
    assert f"TCP  {vip_a}:{PORT} rr" in listed_a and vip_b not in listed_a, listed_a
    assert f"TCP  {vip_b}:{PORT} wlc" in listed_b and vip_a not in listed_b, listed_b
    assert vip_a in a.rules() and vip_b not in a.rules(), a.rules()
    assert vip_b in b.rules() and vip_a not in b.rules(), b.rules()

    # Restart A on its defaults: it restores its own state file, and only that.
    assert a.stop() == 0
    assert (a.rundir / "lbd-q0.state").exists()
    a.start()
    assert f"restore from {a.rundir / 'lbd-q0.state'}" in a.log.read_text(errors="replace"), a.tail()
    listed_a = a.lbadm("-Ln")
    assert f"TCP  {vip_a}:{PORT} rr" in listed_a and f"{rip}:{PORT}" in listed_a and vip_b not in listed_a, listed_a
    assert vip_a in a.rules() and vip_b not in a.rules(), a.rules()
    # B never noticed.
    assert vip_a not in b.lbadm("-Ln") and vip_a not in b.rules()
