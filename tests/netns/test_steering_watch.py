"""lbd notices when its own rules or sets vanish, restores them and says so (issue 16 item 1).

A firewall reload, `iptables -t raw -F LBD-Q0` or `ipset flush` took lbd's steering away
silently: new connections to the VIP reached the director's own stack (refused) until the next
configuration change. Each case here damages the steering of a running lbd while a client keeps
asking, and expects service back by itself and one log line naming what was missing; lbd's exit
then removes exactly its own rules (running_lbd checks that nothing is left behind). Under
LB_TEST_STEERING=iptables the same four mistakes are done to its raw chains and ip sets, else to lbd's table `ip lbd-q0` (steering.damages).
"""

from __future__ import annotations

import time

import pytest
from conftest import HTTP_PORT, Lbd, running_lbd
from packet_source import nfqueue_only
from steering import damages

from lb.testbed import client
from lb.testbed.topology import Topology

pytestmark = pytest.mark.netns

RECOVERY_BOUND_S = 15.0  # a bound on waiting, not a performance threshold (repair takes ~1 tick)

pytestmark = nfqueue_only("the steering watch heals iptables rules and ip sets; under afxdp they are only the "
                          "NFQUEUE fallback (fragments, director-local clients): XDP redirects the service's traffic "
                          "before them, so damaging them does not interrupt what these tests watch")


DAMAGE = damages()  # name: (what is done, what the log line must name), for the suite's steering


def _served(topo: Topology) -> bool:
    reply = client.get_once(topo.client.netns, topo.vip, HTTP_PORT, timeout=1.0)
    return reply.ok


def _warnings(d: Lbd) -> list[str]:
    return [line for line in d.log_tail(200_000).splitlines() if "steering had been removed" in line]


@pytest.mark.parametrize("case", list(DAMAGE))
def test_lbd_restores_its_steering_and_says_what_was_missing(topo: Topology, case: str) -> None:
    damage, named = DAMAGE[case]
    with running_lbd(topo, "c") as d:
        d.lbadm("-A", "-t", f"{topo.vip}:{HTTP_PORT}", "-s", "rr")
        d.lbadm("-a", "-t", f"{topo.vip}:{HTTP_PORT}", "-r", f"{topo.reals[0].addr}:{HTTP_PORT}", "-g")
        d.wait_resolved()
        assert _served(topo), f"not served before the damage:\n{d.log_tail()}"
        assert _warnings(d) == []
        damage(topo.director)
        deadline = time.monotonic() + RECOVERY_BOUND_S
        while not _served(topo):
            assert time.monotonic() < deadline, (
                f"{case}: the VIP was not served again within {RECOVERY_BOUND_S} s\n{d.log_tail()}")
            time.sleep(0.2)
        replies = client.fresh_gets(topo.client.netns, topo.vip, HTTP_PORT, 5, timeout=2.0)
        assert all(r.ok for r in replies), replies
        # The watch logs after the repair's last step (the queue rule), so the line can trail the
        # first served request: wait for it, within the same bound.
        while not _warnings(d) and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)  # one more watch tick: a second line for the same episode would be a bug
        warnings = _warnings(d)
        assert len(warnings) == 1, f"expected one line for the episode, got {warnings}"
        assert named in warnings[0], warnings[0]
