"""keepalived moving the VIP and the FULLNAT local address, with `lvs_sync_daemon` driving lbd's
sync daemons (issue 18 item 5, FULLNAT with and without SYN-proxy): the topology and the lbd
pair of tests/netns/test_sync_fullnat.py (client on "lan", real servers on "back" routed through
the local address), each director with its own keepalived (through lbd-exec). One VRRP instance
holds both addresses as virtual_ipaddress: the VIP on "lan", the local address on "back".
keepalived runs the sync master where VRRP is MASTER (da, priority 150) and the backup on db;
20 plain and 20 SYN-proxied FULLNAT connections through da are listed by db's lbd with the same
real server, local address and port; da's keepalived is killed by PID, VRRP moves both addresses
to db (its gratuitous ARPs are all the client and the real servers learn), db's keepalived makes
db sync master, and >= 19/20 connections of each kind keep exchanging data through db, each real
server seeing the same local address and port.

The services are configured with lbadm: keepalived's virtual_server has no FULLNAT (lb_kind is
NAT, DR or TUN) and no local addresses.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable, Iterator

import pytest
from sync_pair import LbdOn
from test_keepalived_sync import SYNCID, _daemon_states  # type: ignore[import-not-found]
from test_keepalived_vrrp import GLOBAL, vrrp_instance  # type: ignore[import-not-found]
from test_sync_failover import _move_and_exchange  # type: ignore[import-not-found]
from test_sync_fullnat import (  # type: ignore[import-not-found]
    Peers,
    _wait_fullnat,
    fullnat_pair,
)

from lb.testbed.keepalived import Keepalived, keepalived_problem, wait_for
from lb.testbed.topology import Host, Topology

pytestmark = pytest.mark.netns

PRIORITIES = {"da": 150, "db": 100}


def _config(host: Host, vip: str, lip: str, priority: int) -> str:
    lan, back = host.iface("lan").ifname, host.iface("back").ifname
    global_defs = (GLOBAL % f"lbKF{host.name}").replace(
        "}\n", f"    lvs_sync_daemon {lan} VI_1 id {SYNCID}\n}}\n", 1)
    return global_defs + vrrp_instance(lan, priority, [f"{vip}/32 dev {lan}", f"{lip}/24 dev {back}"])


def _holds(host: Host, addresses: dict[str, str]) -> bool:
    """Whether `host` has every address (CIDR) on its link to the segment it maps to."""
    return all(f" {cidr} " in host.ip("-4", "-o", "addr", "show", "dev", host.iface(side).ifname).stdout
               for cidr, side in addresses.items())


@pytest.fixture(scope="module")
def kpair() -> Iterator[tuple[Topology, LbdOn, LbdOn, str]]:
    problem = keepalived_problem()
    if problem:
        pytest.skip(problem)
    with fullnat_pair("lbB-kasyncfnat-") as (topo, a, b, lip):
        # The spec puts the VIP on da: here it is keepalived's to place.
        a.director.ip("addr", "del", f"{topo.vip}/32", "dev", a.director.iface("lan").ifname)
        yield topo, a, b, lip


def test_keepalived_moves_vip_and_local_address_fullnat_connections_survive(
        kpair: tuple[Topology, LbdOn, LbdOn, str]) -> None:
    topo, a, b, lip = kpair
    lbds = {"da": a, "db": b}
    addresses = {f"{topo.vip}/32": "lan", f"{lip}/24": "back"}
    keepaliveds: dict[str, Keepalived] = {}

    def diag() -> str:
        return "\n".join(f"{n}: holds {_holds(d.director, addresses)}, daemons {d.ok('get_daemon')}\n"
                         f"keepalived:\n{keepaliveds[n].log(3000) if n in keepaliveds else '-'}\nlbd:\n{d.log_tail(2000)}"
                         for n, d in lbds.items())

    def holds(d: LbdOn) -> Callable[[], bool | None]:
        return lambda: True if _holds(d.director, addresses) else None

    try:
        for name, d in lbds.items():
            keepaliveds[name] = Keepalived(topo, d.director, d.socket,
                                   _config(d.director, topo.vip, lip, PRIORITIES[name]), name=name).start()
        wait_for("da holds the VIP and the local address", holds(a), diag)
        wait_for("keepalived made da sync master and db sync backup",
                 lambda: True if _daemon_states(a) == {"master"} and _daemon_states(b) == {"backup"} else None, diag)

        with contextlib.ExitStack() as stack:
            peers = Peers(stack, topo, lip)
            _wait_fullnat(b, peers.as_listed_by(a), "every FULLNAT connection on db (synced)")

            def keepalived_fails_over() -> None:
                # da's keepalived dies (by PID): VRRP moves both addresses to db, which becomes sync master.
                assert keepaliveds["da"].stop(signal.SIGKILL) == -signal.SIGKILL
                wait_for("db holds the VIP and the local address", holds(b), diag)
                wait_for("keepalived made db sync master",
                         lambda: True if "master" in _daemon_states(b) else None, diag)

            _move_and_exchange(peers.conns, {}, "to db by keepalived", keepalived_fails_over, through=b,
                               path="/peer", same=peers.same)
        assert keepaliveds["db"].stop() == 0, keepaliveds["db"].log()
    finally:
        for keepalived in keepaliveds.values():
            keepalived.cleanup()
