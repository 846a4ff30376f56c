"""keepalived through lbd-exec on topologies of their own: NAT, and VRRP between two directors.

- NAT (lb.testbed.topology.fullnat_spec: real servers behind the director, which is their
  gateway): `lb_kind NAT` real servers are listed as Masq and a dead one is taken out.
- VRRP: two directors d1 and d2 on one segment, each with its own lbd and its own keepalived
  (vrrp_instance holding the VIP, the same virtual_server). Killing the master's keepalived (by
  PID) moves the VIP to d2, and new connections from the client are forwarded by d2's lbd; so does
  the master's link going down, and the VIP comes back (preemption) when the link returns.
"""

from __future__ import annotations

import re
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from conftest import Lbd, parse_ln, running_lbd
from sync_pair import LbdOn, pair_spec
from test_keepalived import TCP_CHECK, stop_leaves_nothing  # type: ignore[import-not-found]
from test_keepalived import _real as real_server
from test_keepalived import _virtual_server as virtual_server

from lb.testbed.keepalived import PORT, Keepalived, RealServers, listing, served_by, wait_for
from lb.testbed.topology import VIP_INDEX, Host, Topology, TopologySpec, fullnat_spec

pytestmark = pytest.mark.netns

GLOBAL = "global_defs {\n    router_id %s\n}\n"
N_REAL = 2


def _virtual_server(vip: str, reals: list[Host], kind: str) -> str:
    """A virtual_server (rr) of `reals`, each weight 1 with a TCP_CHECK, forwarding `kind`."""
    return virtual_server(vip, "".join(real_server(r.addr, TCP_CHECK) for r in reals), kind=kind)


def _traffic_becomes(topo: Topology, vip: str, want: set[str], diagnose: Callable[[], str], n: int = 8) -> dict[str, int]:
    def probe() -> dict[str, int] | None:
        got = served_by(topo, vip, n)
        return got if set(got) == want else None
    return wait_for(f"connections to {vip}:{PORT} answered by exactly {sorted(want)}", probe, diagnose)


# --------------------------------------------------------------------------- NAT


@pytest.fixture(scope="module")
def ntopo(ka_problem: None) -> Iterator[Topology]:
    with Topology(fullnat_spec(N_REAL)) as t:
        yield t


def test_lb_kind_nat_masquerades_and_follows_a_dead_server(ntopo: Topology, keepalived: list[Keepalived]) -> None:
    t = ntopo
    servers = RealServers(t, t.reals)
    try:
        servers.start_all()
        with running_lbd(t, "c") as lbd:
            ka = Keepalived(t, t.director, lbd.socket, GLOBAL % "lbKAnat" + _virtual_server(t.vip, t.reals, "NAT"))
            keepalived.append(ka.start())

            def diag() -> str:
                return f"lbadm -Ln:\n{lbd.lbadm('-Ln').stdout}\nkeepalived:\n{ka.log()}\nlbd:\n{lbd.log_tail()}"

            everyone = {r.addr: 1 for r in t.reals}
            wait_for(f"NAT real servers listed {everyone}",
                     lambda: True if listing(lbd.lbadm).get((t.vip, PORT)) == everyone else None, diag)
            assert {d.forward for s in parse_ln(lbd.lbadm("-Ln").stdout) for d in s.dests} == {"Masq"}
            _traffic_becomes(t, t.vip, {r.name for r in t.reals}, diag)
            servers.kill(t.reals[0].name)
            wait_for("the dead NAT real server taken out",
                     lambda: True if listing(lbd.lbadm).get((t.vip, PORT)) == {t.reals[1].addr: 1} else None, diag)
            _traffic_becomes(t, t.vip, {t.reals[1].name}, diag)
            stop_leaves_nothing(ka, lbd)
    finally:
        servers.stop_all()


# --------------------------------------------------------------------------- VRRP

DIRECTORS = ("d1", "d2")
VRID = 51


def vrrp_spec() -> TopologySpec:
    """client, d1, d2 and rs1, rs2 on one segment; the VIP (.100) is keepalived's to place."""
    return pair_spec(directors=DIRECTORS, vip_on_first=False)


@pytest.fixture(scope="module")
def vtopo(ka_problem: None) -> Iterator[Topology]:
    with Topology(vrrp_spec()) as t:
        yield t


def vrrp_instance(interface: str, priority: int, addresses: list[str]) -> str:
    """keepalived's VRRP instance VI_1 (VRID, adverts every second) on `interface`, MASTER above
    priority 100, holding `addresses` ("ADDR/LEN dev IFNAME" each)."""
    held = "".join(f"        {a}\n" for a in addresses)
    return f"""\
vrrp_instance VI_1 {{
    state {"MASTER" if priority > 100 else "BACKUP"}
    interface {interface}
    virtual_router_id {VRID}
    priority {priority}
    advert_int 1
    virtual_ipaddress {{
{held}    }}
}}
"""


def _vrrp_config(host: Host, vip: str, reals: list[Host], priority: int, global_defs: str | None = None) -> str:
    """keepalived's configuration for one director: global_defs (default: only a router_id), the
    VRRP instance holding the VIP and the DR virtual server."""
    if global_defs is None:
        global_defs = GLOBAL % f"lbKA{host.name}"
    return global_defs + vrrp_instance(host.ifname, priority, [f"{vip}/32 dev {host.ifname}"]) + _virtual_server(vip, reals, "DR")


def _holds_vip(host: Host, vip: str) -> bool:
    return f" {vip}/32 " in host.ip("-4", "-o", "addr", "show", "dev", host.ifname).stdout


def _lists(lbd: Lbd, vip: str, want: dict[str, int]) -> Callable[[], bool | None]:
    return lambda: True if listing(lbd.lbadm).get((vip, PORT)) == want else None


def _conns(lbd: Lbd, vip: str) -> int:
    """The service's connection counter (`lbadm -Ln --stats`)."""
    m = re.search(rf"^TCP  {re.escape(vip)}:{PORT}\s+(\d+)", lbd.lbadm("-Ln", "--stats").stdout, re.M)
    return int(m.group(1)) if m else 0


@dataclass
class Pair:
    """Two directors, each with its own lbd and keepalived, d1 (priority 150) the VRRP master."""

    topo: Topology
    vip: str
    lbds: dict[str, Lbd]
    kas: dict[str, Keepalived]

    def host(self, name: str) -> Host:
        return self.topo.host(name)

    def holds(self, name: str) -> Callable[[], bool | None]:
        return lambda: True if _holds_vip(self.host(name), self.vip) else None

    def released(self, name: str) -> Callable[[], bool | None]:
        return lambda: True if not _holds_vip(self.host(name), self.vip) else None

    def conns(self, name: str) -> int:
        return _conns(self.lbds[name], self.vip)

    def diag(self) -> str:
        return "\n".join(f"{n}: holds VIP {_holds_vip(self.host(n), self.vip)}\nlbadm -Ln --stats:\n"
                         f"{lbd.lbadm('-Ln', '--stats').stdout}\nkeepalived:\n{self.kas[n].log(3000)}"
                         for n, lbd in self.lbds.items())

    def traffic_reaches_every_real_server(self) -> None:
        _traffic_becomes(self.topo, self.vip, {r.name for r in self.topo.reals}, self.diag)


@pytest.fixture
def pair(vtopo: Topology, keepalived: list[Keepalived]) -> Iterator[Pair]:
    t = vtopo
    vip = t.addr("lan", VIP_INDEX)
    servers = RealServers(t, t.reals)
    lbds: dict[str, Lbd] = {name: LbdOn(t, t.host(name)) for name in DIRECTORS}
    try:
        servers.start_all()
        for lbd in lbds.values():
            lbd.start()
        kas = {}
        for name, prio in (("d1", 150), ("d2", 100)):
            host = t.host(name)
            ka = Keepalived(t, host, lbds[name].socket, _vrrp_config(host, vip, t.reals, prio), name=name)
            keepalived.append(ka.start())
            kas[name] = ka
        p = Pair(t, vip, lbds, kas)
        everyone = {r.addr: 1 for r in t.reals}
        for lbd in lbds.values():  # both directors' checkers configure their own lbd
            wait_for(f"{lbd.director.name} lists {everyone}", _lists(lbd, vip, everyone), p.diag)
        wait_for("d1 (priority 150) holds the VIP", p.holds("d1"), p.diag)
        assert not _holds_vip(t.host("d2"), vip)
        p.traffic_reaches_every_real_server()
        assert p.conns("d1") > 0 and p.conns("d2") == 0, p.diag()
        yield p
    finally:
        servers.stop_all()
        for lbd in lbds.values():
            if lbd.running():
                lbd.stop()
            lbd.cleanup()


def test_vrrp_moves_the_vip_to_the_backup_director_and_connections_follow(pair: Pair) -> None:
    # SIGKILL to d1's keepalived parent: its children get SIGTERM (PR_SET_PDEATHSIG) and leave
    # as on a stop: VRRP releases the VIP (priority 0), the checker removes its virtual server.
    assert pair.kas["d1"].stop(signal.SIGKILL) == -signal.SIGKILL
    wait_for("d2 holds the VIP", pair.holds("d2"), pair.diag)
    wait_for("d1 released the VIP", pair.released("d1"), pair.diag)
    wait_for("d1's checker removed its virtual server from d1's lbd",
             lambda: True if listing(pair.lbds["d1"].lbadm) == {} else None, pair.diag)
    before = pair.conns("d2")
    pair.traffic_reaches_every_real_server()
    assert pair.conns("d2") > before, pair.diag()
    assert pair.kas["d2"].stop() == 0, pair.kas["d2"].log()
    assert listing(pair.lbds["d2"].lbadm) == {}


def test_vrrp_director_link_failure_fails_over_and_back(pair: Pair) -> None:
    # d1 loses its link (no adverts, no goodbye): after VRRP's master-down interval d2 takes the VIP
    # and new connections go through d2's lbd. When the link returns, d1 (higher priority, preempt)
    # takes the VIP back and new connections go through d1's lbd again.
    d1 = pair.host("d1")
    d1.ip("link", "set", "dev", d1.ifname, "down")
    wait_for("d2 holds the VIP", pair.holds("d2"), pair.diag)
    before = pair.conns("d2")
    pair.traffic_reaches_every_real_server()
    assert pair.conns("d2") > before, pair.diag()

    d1.ip("link", "set", "dev", d1.ifname, "up")
    wait_for("d1 holds the VIP again", pair.holds("d1"), pair.diag)
    wait_for("d2 released the VIP", pair.released("d2"), pair.diag)
    before = pair.conns("d1")
    pair.traffic_reaches_every_real_server()
    assert pair.conns("d1") > before, pair.diag()
