"""keepalived's `lvs_sync_daemon` driving lbd's sync daemons, and VRRP moving the VIP (issue 18
item 5): two directors d1 (VRRP priority 150) and d2, each with its own lbd and keepalived (through
lbd-exec: IP_VS_SO_SET_STARTDAEMON/STOPDAEMON reach lbd through the preload library). keepalived
runs the sync master where VRRP is MASTER and the backup elsewhere; 20 established connections
through d1 are listed by d2's lbd; d1's keepalived is killed by PID, VRRP moves the VIP to d2 (its
gratuitous ARP is all the client learns), d2's keepalived switches d2 to sync master, and the
connections keep exchanging data with their original real servers through d2. Then d1's keepalived
is started again: VRRP preemption gives d1 the VIP back, keepalived makes it sync master again and
d2 backup, and the connections go on through d1, with the same real servers.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable, Iterator

import pytest
from sync_pair import N_CONNS, LbdOn
from test_keepalived_vrrp import (  # type: ignore[import-not-found]
    DIRECTORS,
    GLOBAL,
    _holds_vip,
    _vrrp_config,
    vrrp_spec,
)

from lb.testbed import client
from lb.testbed.keepalived import PORT, Keepalived, RealServers, keepalived_problem, listing, wait_for
from lb.testbed.topology import VIP_INDEX, Host, Topology

pytestmark = pytest.mark.netns

SYNCID = 23


def _config(host: Host, vip: str, reals: list[Host], priority: int) -> str:
    # lvs_sync_daemon belongs in global_defs: keepalived starts the sync daemon of the VRRP state.
    global_defs = GLOBAL % f"lbKS{host.name}"
    global_defs = global_defs.replace("}\n", f"    lvs_sync_daemon {host.ifname} VI_1 id {SYNCID}\n}}\n", 1)
    return _vrrp_config(host, vip, reals, priority, global_defs)


def _daemon_states(lbd: LbdOn) -> set[str]:
    return {d["state"] for d in lbd.ok("get_daemon")["daemons"] if d["syncid"] == SYNCID}


def _tcp_sources(lbd: LbdOn) -> set[tuple[str, int]]:
    out = set()
    for line in lbd.lbadm("-Lnc").stdout.splitlines()[2:]:
        fields = line.split()
        if fields and fields[0] == "TCP":
            caddr, cport = fields[3].rsplit(":", 1)
            out.add((caddr, int(cport)))
    return out


def _forwarded(lbd: LbdOn) -> int:
    """Packets lbd forwarded from clients so far (the service's InPkts)."""
    return sum(int(svc["stats"]["inpkts"]) for svc in lbd.ok("list")["services"])


@pytest.fixture(scope="module")
def ktopo() -> Iterator[Topology]:
    problem = keepalived_problem()
    if problem:
        pytest.skip(problem)
    with Topology(vrrp_spec()) as t:
        yield t


def test_keepalived_lvs_sync_daemon_and_vrrp_keep_connections(ktopo: Topology) -> None:
    t = ktopo
    vip = t.addr("lan", VIP_INDEX)
    servers = RealServers(t, t.reals)
    lbds = {name: LbdOn(t, t.host(name)) for name in DIRECTORS}
    kas: dict[str, Keepalived] = {}
    try:
        servers.start_all()
        for lbd in lbds.values():
            lbd.start()
        for name, prio in (("d1", 150), ("d2", 100)):
            host = t.host(name)
            kas[name] = Keepalived(t, host, lbds[name].socket, _config(host, vip, t.reals, prio), name=name).start()

        def diag() -> str:
            return "\n".join(f"{n}: holds VIP {_holds_vip(t.host(n), vip)}, daemons {lbd.ok('get_daemon')}\n"
                             f"keepalived:\n{kas[n].log(3000)}\nlbd:\n{lbd.log_tail(2000)}" for n, lbd in lbds.items())

        everyone = {r.addr: 1 for r in t.reals}
        def lists_everyone(lbd: LbdOn) -> Callable[[], bool | None]:
            return lambda: True if listing(lbd.lbadm).get((vip, PORT)) == everyone else None

        for lbd in lbds.values():
            wait_for(f"{lbd.director.name} lists {everyone}", lists_everyone(lbd), diag)
        wait_for("d1 holds the VIP", lambda: True if _holds_vip(t.host("d1"), vip) else None, diag)
        wait_for("keepalived made d1 sync master and d2 sync backup",
                 lambda: True if _daemon_states(lbds["d1"]) == {"master"} and _daemon_states(lbds["d2"]) == {"backup"}
                 else None, diag)

        with contextlib.ExitStack() as stack:
            conns = [stack.enter_context(client.KeepAlive(t.client.netns, vip, PORT)) for _ in range(N_CONNS)]
            for conn in conns:
                assert conn.get().ok
            sources = {(t.client.addr, int(c.local_port or 0)) for c in conns}
            assert sources <= _tcp_sources(lbds["d1"])
            wait_for("d2's lbd lists every connection (synced)",
                     lambda: True if sources <= _tcp_sources(lbds["d2"]) else None, diag)

            # d1's keepalived dies (by PID): VRRP moves the VIP to d2, which becomes sync master.
            assert kas["d1"].stop(signal.SIGKILL) == -signal.SIGKILL
            wait_for("d2 holds the VIP", lambda: True if _holds_vip(t.host("d2"), vip) else None, diag)
            wait_for("keepalived made d2 sync master", lambda: True if "master" in _daemon_states(lbds["d2"]) else None,
                     diag)
            survived = 0
            for conn in conns:
                reply = conn.get(timeout=5.0)
                survived += reply.ok and reply.server == conn.server
            assert survived >= N_CONNS - 1, f"{survived} of {N_CONNS} connections survived\n{diag()}"

            # d1 comes back (a new keepalived, priority 150: VRRP preempts): d1 holds the VIP and is
            # sync master again, d2 goes back to backup, and the connections go on through d1 with
            # their original real servers.
            host = t.host("d1")
            kas["d1"].cleanup()
            kas["d1"] = Keepalived(t, host, lbds["d1"].socket, _config(host, vip, t.reals, 150), name="d1again").start()
            wait_for("d1 holds the VIP again, d2 not",
                     lambda: True if _holds_vip(host, vip) and not _holds_vip(t.host("d2"), vip) else None, diag)
            wait_for("keepalived made d1 sync master and d2 sync backup again",
                     lambda: True if "master" in _daemon_states(lbds["d1"]) and _daemon_states(lbds["d2"]) == {"backup"}
                     else None, diag)
            before = _forwarded(lbds["d1"])
            survived = 0
            for conn in conns:
                reply = conn.get(timeout=5.0)
                survived += reply.ok and reply.server == conn.server
            assert survived >= N_CONNS - 1, f"{survived} of {N_CONNS} connections survived the return to d1\n{diag()}"
            assert _forwarded(lbds["d1"]) - before >= survived, f"the requests did not go through d1\n{diag()}"
        assert kas["d2"].stop() == 0, kas["d2"].log()
    finally:
        for ka in kas.values():
            ka.cleanup()
        servers.stop_all()
        for lbd in lbds.values():
            if lbd.running():
                lbd.stop()
            lbd.cleanup()
