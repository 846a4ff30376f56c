"""DR end to end with real packets: client -> VIP on the director (lbd) -> real servers.

The topology (conftest `topo`) is client, director and rs1..rs3 on one bridge;
each real server has the VIP on lo with arp_ignore=1/arp_announce=2 and runs an
HTTP server answering with its name. Every lbd test starts its own lbd and
configures it only with lbadm. Expected behaviour is kernel IPVS's
(docs/fastpath.md, docs/control-protocol.md): rr walks destinations most
recently added first (lbd's `list` order); `lbadm -Ln`, like ipvsadm, prints
them sorted by address and port.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections import Counter
from typing import TYPE_CHECKING

import pytest
from conftest import LnDest, LnService, parse_ln
from packet_source import AFXDP, xdp_keys, xdp_programs
from steering import NFTABLES, dump, elements, present, queue_rules

from lb.model import SCHEDULERS
from lb.testbed import client
from lb.testbed.netns import PREFIX_BASE
from lb.testbed.topology import Topology, dr_spec, list_netns

if TYPE_CHECKING:  # fixtures' types only
    from conftest import HttpHelper, Lbd

HTTP_PORT = 80  # the port the real servers' httpd listens on (conftest.HTTP_PORT)

SETTLE_TIMEOUT_S = 10.0  # bound for waiting on connection-state changes seen in -Ln


def ln(lbd: Lbd) -> list[LnService]:
    return parse_ln(lbd.lbadm("-Ln").stdout)


def only_service(lbd: Lbd) -> LnService:
    services = ln(lbd)
    assert len(services) == 1, services
    return services[0]


def kernel_order(lbd: Lbd) -> LnService:
    """The only service as lbd's `list` reports it: destinations in kernel order (rr/wlc walk order)."""
    services = lbd.request("list")["result"]["services"]
    assert len(services) == 1, services
    s = services[0]
    dests = [LnDest(d["addr"], d["port"], d["fwd"], d["weight"], d["active"], d["inactive"])
             for d in s["dests"]]
    return LnService(s["proto"].upper(), s["addr"], s["port"], s["sched"], "", dests)


def wait_for(lbd: Lbd, predicate, what: str, timeout: float = SETTLE_TIMEOUT_S,
             source=None) -> LnService:
    """Poll `lbadm -Ln` (or `source(lbd)`) until predicate(service) holds (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        svc = (source or only_service)(lbd)
        if predicate(svc):
            return svc
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last -Ln: {svc}")
        time.sleep(0.1)


# --------------------------------------------------------------------------- helpers


def names(topo: Topology) -> dict[str, str]:
    """real-server address -> name."""
    return {rs.addr: rs.name for rs in topo.reals}


def svc_arg(topo: Topology) -> str:
    return f"{topo.vip}:{HTTP_PORT}"


def setup_service(lbd: Lbd, topo: Topology, sched: str, weights: dict[str, int] | None = None) -> None:
    """-A the service, then -a rs1..rsN in that order (so the kernel list order is rsN..rs1)."""
    lbd.lbadm("-A", "-t", svc_arg(topo), "-s", sched)
    for rs in topo.reals:
        w = (weights or {}).get(rs.name, 1)
        lbd.lbadm("-a", "-t", svc_arg(topo), "-r", f"{rs.addr}:{HTTP_PORT}", "-g", "-w", str(w))


def sorted_addrs(topo: Topology) -> list[str]:
    return sorted((rs.addr for rs in topo.reals), key=lambda a: tuple(int(x) for x in a.split(".")))


def servers(replies: list[client.Reply]) -> list[str]:
    bad = [r for r in replies if not r.ok]
    assert not bad, f"{len(bad)} of {len(replies)} requests failed, first: {bad[0]}"
    return [r.server for r in replies]  # type: ignore[misc]


def wlc_choice(dests: list[LnDest]) -> LnDest | None:
    """Kernel ip_vs_wlc_schedule over the list in kernel order (no thresholds configured), with
    Debian 6.1.192's overhead (active << 8) + totalconns = 257*active + inactive."""
    least = None
    rest: list[LnDest] = []
    for i, d in enumerate(dests):
        if d.weight > 0:
            least, rest = d, dests[i + 1:]
            break
    if least is None:
        return None
    loh = least.active * 257 + least.inactive
    for d in rest:
        doh = d.active * 257 + d.inactive
        if loh * d.weight > doh * least.weight:
            least, loh = d, doh
    return least


# --------------------------------------------------------------------------- topology (no lbd)


def test_topology_names_and_isolation(topo: Topology) -> None:
    assert topo.prefix.startswith(PREFIX_BASE) and len(topo.prefix) > 3
    ours = [ns for ns in list_netns() if ns.startswith(topo.prefix + "-")]
    assert sorted(ours) == sorted([h.netns for h in topo.hosts.values()] + [topo.switch_ns("lan")])
    for h in topo.hosts.values():
        links = h.ip("-o", "link", "show").stdout
        for name in re.findall(r"^\d+: ([^:@]+)", links, re.M):
            assert name == "lo" or name.startswith(topo.prefix), f"{h.name}: link {name} lacks prefix"
            assert len(name) <= 15


def test_topology_real_servers_dr_ready(topo: Topology) -> None:
    """Each real server: VIP on lo /32, arp_ignore=1, arp_announce=2, answers on its own address."""
    for rs in topo.reals:
        assert f"inet {topo.vip}/32" in rs.ip("addr", "show", "dev", "lo").stdout
        for dev in ("all", "lo"):
            out = rs.exec(f"cat /proc/sys/net/ipv4/conf/{dev}/arp_ignore "
                          f"/proc/sys/net/ipv4/conf/{dev}/arp_announce").stdout.split()
            assert out == ["1", "2"], f"{rs.name} {dev}: arp_ignore/arp_announce = {out}"
        reply = client.get_once(topo.client.netns, rs.addr, HTTP_PORT)
        assert reply.ok and reply.server == rs.name, reply


def test_topology_vip_arp_answered_by_director_only(topo: Topology) -> None:
    """The client resolves the VIP to the director's MAC (the real servers stay silent)."""
    c = topo.client
    c.ip("neigh", "flush", "dev", c.ifname, "to", topo.vip)
    # Any packet to the VIP triggers ARP; with no lbd the director's stack refuses port 9.
    reply = client.get_once(c.netns, topo.vip, 9, timeout=2.0)
    assert reply.error and "refused" in reply.error.lower(), reply
    neigh = c.ip("neigh", "show", "to", topo.vip).stdout
    assert f"lladdr {topo.director.mac}" in neigh, (neigh, topo.director.mac)


def test_topology_real_server_answers_frames_for_vip(topo: Topology) -> None:
    """What DR relies on: a frame for the VIP with a real server's MAC is answered by that server.

    Simulated from the client with a static neighbour entry (VIP -> rsN's MAC), no director involved.
    """
    c = topo.client
    try:
        for rs in topo.reals:
            c.ip("neigh", "replace", topo.vip, "lladdr", rs.mac, "dev", c.ifname, "nud", "permanent")
            reply = client.get_once(c.netns, topo.vip, HTTP_PORT)
            assert reply.ok and reply.server == rs.name, (rs.name, reply)
    finally:
        c.ip("neigh", "del", topo.vip, "dev", c.ifname, check=False)


def test_topology_cleanup_removes_everything() -> None:
    """A failing `with` block still removes namespaces and the processes started in them."""
    with pytest.raises(RuntimeError, match="boom"):
        with Topology(dr_spec(1)) as t:
            proc = t.client.popen(["sleep", "30"])
            prefix = t.prefix
            assert t.leftovers()
            raise RuntimeError("boom")
    assert proc.poll() is not None, "process started in the topology survived cleanup"
    assert not [ns for ns in list_netns() if ns.startswith(prefix + "-")]


def test_topology_survives_forked_child(topo: Topology) -> None:
    """A forked copy of this process (pyroute2's netns helper does this) owns nothing.

    SIGTERM must end the copy like an ordinary process, and neither that nor close() in the
    copy may tear down the parent's topology.
    """
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        try:
            topo.close()
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
            os._exit(3)
        finally:
            os._exit(4)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM, status
    assert not [ns for ns in (h.netns for h in topo.hosts.values()) if ns not in list_netns()]
    for rs in topo.reals:
        reply = client.get_once(topo.client.netns, rs.addr, HTTP_PORT)
        assert reply.ok and reply.server == rs.name, reply


# --------------------------------------------------------------------------- rr


def test_rr_spreads_30_requests_evenly(lbd: Lbd, topo: Topology, http: HttpHelper) -> None:
    setup_service(lbd, topo, "rr")
    got = servers(http.gets(30))
    n_real = len(topo.reals)
    assert 30 % n_real == 0
    assert Counter(got) == {rs.name: 30 // n_real for rs in topo.reals}, Counter(got)
    # Kernel order: most recently added first, so rr walks rsN, ..., rs1, rsN, ...
    order = [rs.name for rs in reversed(topo.reals)]
    assert got == order * (30 // n_real), f"rr order differs from kernel IPVS: {got}"
    # lbd's `list` is in kernel order (the order rr walks); `lbadm -Ln` sorts like ipvsadm.
    listed = lbd.request("list")["result"]["services"][0]["dests"]
    assert [d["addr"] for d in listed] == [rs.addr for rs in reversed(topo.reals)], listed
    assert [d.addr for d in only_service(lbd).dests] == sorted_addrs(topo)
    # Every connection was closed by the client: FIN seen -> FIN_WAIT, i.e. inactive (120 s).
    want = {rs.addr: 30 // n_real for rs in topo.reals}
    wait_for(lbd, lambda s: all(d.active == 0 for d in s.dests)
             and {d.addr: d.inactive for d in s.dests} == want, f"ActiveConn 0, InActConn {want}")


# --------------------------------------------------------------------------- wlc


def test_wlc_avoids_server_with_held_connections(lbd: Lbd, topo: Topology, http: HttpHelper) -> None:
    """3 connections held on rs1; new ones follow overhead = active*257 + inactive, least overhead/weight."""
    rs1, rs2, rs3 = topo.reals[:3]
    by_addr = names(topo)
    svc = svc_arg(topo)
    held_n = 3
    lbd.lbadm("-A", "-t", svc, "-s", "wlc")
    lbd.lbadm("-a", "-t", svc, "-r", f"{rs1.addr}:{HTTP_PORT}", "-g", "-w", "1")
    with client.keepalives(http.netns, http.vip, http.port, held_n) as held:
        assert [k.server for k in held] == [rs1.name] * held_n
        lbd.lbadm("-a", "-t", svc, "-r", f"{rs2.addr}:{HTTP_PORT}", "-g", "-w", "2")
        lbd.lbadm("-a", "-t", svc, "-r", f"{rs3.addr}:{HTTP_PORT}", "-g", "-w", "1")
        choices = []
        for i in range(12):
            # Wait until the previous short connection has left ESTABLISHED (client FIN seen),
            # so the counts we predict from are the ones the scheduler will use.
            # The wlc walk depends on the kernel list order, which `list` reports (-Ln sorts).
            state = wait_for(lbd, lambda s: sum(d.active for d in s.dests) == held_n,
                             f"only the {held_n} held connections to be active (request {i})",
                             source=kernel_order)
            expect = wlc_choice(state.dests)
            assert expect is not None
            reply = client.get_once(http.netns, http.vip, http.port)
            assert reply.ok, reply
            assert reply.server == by_addr[expect.addr], (
                f"request {i}: wlc should pick {by_addr[expect.addr]} from {state.dests}, got {reply.server}")
            choices.append(reply.server)
        assert rs1.name not in choices, choices
        assert set(choices) == {rs2.name, rs3.name}, choices
        # The held connections still work and still go to rs1.
        for k in held:
            r = k.get()
            assert r.ok and r.server == rs1.name, r
        final = only_service(lbd)
        active = {by_addr[d.addr]: d.active for d in final.dests}
        assert active[rs1.name] == held_n, final


# --------------------------------------------------------------------------- weight 0


def test_weight_zero_stops_new_keeps_established(lbd: Lbd, topo: Topology, http: HttpHelper) -> None:
    setup_service(lbd, topo, "rr")
    by_addr = names(topo)
    with http.keepalive() as ka:
        first = ka.get()
        assert first.ok, first
        x = next(rs for rs in topo.reals if rs.name == first.server)
        lbd.lbadm("-e", "-t", svc_arg(topo), "-r", f"{x.addr}:{HTTP_PORT}", "-g", "-w", "0")
        svc = only_service(lbd)
        d = next(d for d in svc.dests if d.addr == x.addr)
        assert d.weight == 0 and d.active == 1, svc
        got = servers(http.gets(12))
        others = [rs.name for rs in topo.reals if rs is not x]
        assert x.name not in got, got
        assert Counter(got) == {n: 12 // len(others) for n in others}, Counter(got)
        # The established connection keeps working, to the same server.
        for _ in range(3):
            r = ka.get()
            assert r.ok and r.server == x.name, r
        assert by_addr[x.addr] == x.name


# --------------------------------------------------------------------------- delete destination


def test_delete_destination_mid_connection(lbd: Lbd, topo: Topology, http: HttpHelper) -> None:
    """IPVS: packets of a connection to a deleted destination are dropped; new ones go elsewhere."""
    setup_service(lbd, topo, "rr")
    with http.keepalive() as ka:
        first = ka.get()
        assert first.ok, first
        x = next(rs for rs in topo.reals if rs.name == first.server)
        lbd.lbadm("-d", "-t", svc_arg(topo), "-r", f"{x.addr}:{HTTP_PORT}")
        svc = only_service(lbd)
        assert x.addr not in [d.addr for d in svc.dests], svc
        got = servers(http.gets(12))
        others = [rs.name for rs in topo.reals if rs is not x]
        assert Counter(got) == {n: 12 // len(others) for n in others}, Counter(got)
        # The old connection's packets are dropped at the director: no answer arrives.
        r = ka.get(timeout=3.0)
        assert not r.ok, f"request on a connection to deleted {x.name} was answered: {r}"


# --------------------------------------------------------------------------- -Ln


def test_list_layout_and_active_connections(lbd: Lbd, topo: Topology, http: HttpHelper) -> None:
    setup_service(lbd, topo, "rr")
    by_addr = names(topo)
    svc = only_service(lbd)
    assert (svc.proto, svc.addr, svc.port, svc.sched, svc.flags) == ("TCP", topo.vip, HTTP_PORT, "rr", "")
    # ipvsadm sorts destinations by address and port unless --nosort (ipvs_sort_dests).
    assert [d.addr for d in svc.dests] == sorted_addrs(topo), svc
    assert all((d.port, d.forward, d.weight, d.active, d.inactive) == (HTTP_PORT, "Route", 1, 0, 0)
               for d in svc.dests), svc
    hold_s = 3
    hold = http.hold(hold_s).start()
    ka = http.keepalive()
    try:
        r = ka.get()
        assert r.ok, r
        assert hold.server != ka.server
        svc = only_service(lbd)
        active = {by_addr[d.addr]: d.active for d in svc.dests}
        expected = {rs.name: int(rs.name in (hold.server, ka.server)) for rs in topo.reals}
        assert active == expected, svc
        assert all(d.inactive == 0 for d in svc.dests), svc
        assert hold.join(hold_s + 5.0), "hold did not finish"
        assert hold.received == hold_s and hold.error is None, (hold.received, hold.error)
    finally:
        hold.close()
        ka.close()
    # Both connections closed by the client: not active any more, inactive (FIN_WAIT) instead.
    want = {rs.name: int(rs.name in (hold.server, ka.server)) for rs in topo.reals}
    wait_for(lbd, lambda s: all(d.active == 0 for d in s.dests)
             and {by_addr[d.addr]: d.inactive for d in s.dests} == want,
             f"ActiveConn 0 and InActConn {want}")


# --------------------------------------------------------------------------- bad input


def test_invalid_lbadm_input_changes_nothing(lbd: Lbd, topo: Topology) -> None:
    rs1, rs2 = topo.reals[0], topo.reals[1]
    svc = svc_arg(topo)
    other = f"{topo.vip}:{HTTP_PORT + 1}"
    lbd.lbadm("-A", "-t", svc, "-s", "rr")
    lbd.lbadm("-a", "-t", svc, "-r", f"{rs1.addr}:{HTTP_PORT}", "-g", "-w", "1")
    before = lbd.lbadm("-Ln").stdout
    parse_ln(before)
    cases: list[tuple[list[str], str | None]] = [
        (["-a", "-t", other, "-r", f"{rs1.addr}:{HTTP_PORT}", "-g"], "Service not defined"),
        (["-A", "-t", svc, "-s", "rr"], "Service already exists"),
        (["-a", "-t", svc, "-r", f"{rs1.addr}:{HTTP_PORT}", "-g", "-w", "1"], "Destination already exists"),
        (["-e", "-t", svc, "-r", f"{rs2.addr}:{HTTP_PORT}", "-g", "-w", "3"], "No such destination"),
        (["-d", "-t", svc, "-r", f"{rs2.addr}:{HTTP_PORT}"], "No such destination"),
        (["-D", "-t", other], "No such service"),
        # lbd names the schedulers it has (issue 12 item 8), not libipvs's "module not loaded" text
        (["-A", "-t", other, "-s", "nosuchsched"], f"lbd has: {', '.join(SCHEDULERS)}"),
        (["-A", "-t", "10.0.0.300:80", "-s", "rr"], None),
        (["-A", "-t", f"{topo.vip}:99999", "-s", "rr"], None),
        (["-a", "-t", svc, "-r", f"{rs2.addr}:{HTTP_PORT}", "-g", "-w", "2147483648"], None),  # > INT_MAX
        (["-a", "-t", svc, "-r", f"{rs2.addr}:{HTTP_PORT}", "-g", "-w", "-1"], None),
        (["-a", "-t", svc, "-r", f"{rs2.addr}:{HTTP_PORT}", "-g", "-m"], None),
        (["-a", "-t", svc], None),
        (["--no-such-option"], None),
    ]
    for args, message in cases:
        proc = lbd.lbadm(*args, check=False)
        assert proc.returncode != 0, f"lbadm {' '.join(args)} exited 0: {proc.stdout!r}"
        assert proc.stderr.strip(), f"lbadm {' '.join(args)} failed silently"
        if message is not None:
            assert message in proc.stderr, f"lbadm {' '.join(args)}: want {message!r}, got {proc.stderr!r}"
        after = lbd.lbadm("-Ln").stdout
        assert after == before, f"lbadm {' '.join(args)} changed the table:\n{before}\n---\n{after}"
    # Still alive and working.
    lbd.lbadm("-a", "-t", svc, "-r", f"{rs2.addr}:{HTTP_PORT}", "-g", "-w", "1")
    assert len(only_service(lbd).dests) == 2


# --------------------------------------------------------------------------- shutdown


def test_sigterm_removes_iptables_rules(lbd: Lbd, topo: Topology, http: HttpHelper) -> None:
    setup_service(lbd, topo, "rr")
    assert servers(http.gets(3))
    if AFXDP:  # the AF_XDP form: the XDP program on the director's interfaces (and the NFQUEUE fallback's rules)
        assert topo.director.ifname in xdp_programs(topo.director), topo.director.ip("-d", "link", "show").stdout
    assert queue_rules(topo.director), f"while running, lbd should queue the VIP from raw PREROUTING:\n{dump(topo.director)}"
    rc = lbd.stop(signal.SIGTERM)
    assert rc == 0, f"lbd exit status {rc} on SIGTERM\n{lbd.log_tail()}"
    assert lbd.iptables_leftovers() == []
    assert xdp_programs(topo.director) == {}  # (AF_XDP) the program left with lbd


def test_restart_after_crash_recovers_rules_without_duplicates(lbd: Lbd, topo: Topology) -> None:
    """Issue 8: a SIGKILLed lbd cannot clean up; the next start recovers its configuration from
    the state it saved (every ~2 s) and adopts its rules and sets: one element per service, nothing stale."""
    setup_service(lbd, topo, "rr")
    time.sleep(2.6)  # past one state save
    rc = lbd.stop(signal.SIGKILL)
    assert rc == -signal.SIGKILL
    if AFXDP:  # the AF_XDP form: the program does not survive the process (its bpf_link), the state file does
        _restart_after_crash_afxdp(lbd, topo)
        return
    _restart_adopts_rules(lbd, topo)


def _restart_adopts_rules(lbd: Lbd, topo: Topology) -> None:
    if NFTABLES:
        _restart_adopts_table(lbd, topo)
        return
    stale = [line for line in lbd.iptables_leftovers() if topo.vip in line]
    assert stale, "a SIGKILLed lbd cannot clean up; expected its rules for the VIP to remain"
    lbd.start()
    services = lbd.request("list")["result"]["services"]
    assert [(s["addr"], s["port"], s["sched"]) for s in services] == [(topo.vip, HTTP_PORT, "rr")], lbd.log_tail()
    left = lbd.iptables_leftovers()
    vip_elements = [line for line in left if line.startswith("ipset: add ") and topo.vip in line]
    assert vip_elements == [f"ipset: add lbd-q0-addr {topo.vip}", f"ipset: add lbd-q0-svc {topo.vip},tcp:{HTTP_PORT}"], \
        "expected one element for the VIP and one for the service, got:\n" + "\n".join(left)
    queue_rules = [line for line in left if line.startswith("raw: ") and "NFQUEUE" in line]
    assert len(queue_rules) == 1, "\n".join(left)


def _restart_adopts_table(lbd: Lbd, topo: Topology) -> None:
    """The --steering nftables form: the table stays after kill -9; the next start adopts it with
    one element per service and one queue rule."""
    assert present(topo.director), "a SIGKILLed lbd cannot clean up; expected its table to remain"
    assert f"{topo.vip},tcp:{HTTP_PORT}" in elements(topo.director, "svc"), dump(topo.director)
    lbd.start()
    services = lbd.request("list")["result"]["services"]
    assert [(s["addr"], s["port"], s["sched"]) for s in services] == [(topo.vip, HTTP_PORT, "rr")], lbd.log_tail()
    assert elements(topo.director, "svc") == {f"{topo.vip},tcp:{HTTP_PORT}"}, dump(topo.director)
    assert topo.vip in elements(topo.director, "addr"), dump(topo.director)
    assert len(queue_rules(topo.director)) == 1, dump(topo.director)


def _restart_after_crash_afxdp(lbd: Lbd, topo: Topology) -> None:
    """After kill -9 the interface has no program (the kernel closed lbd's link); the next start
    recovers the service from the saved state and its program redirects exactly that service."""
    deadline = time.monotonic() + 10.0
    while xdp_programs(topo.director) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert xdp_programs(topo.director) == {}, topo.director.ip("-d", "link", "show").stdout
    _restart_adopts_rules(lbd, topo)  # the NFQUEUE fallback's rules stay after kill -9, as NFQUEUE's (bypassed)
    assert {k for k in xdp_keys(lbd) if topo.vip in k} == {("0.0.0.0", topo.vip, 0, HTTP_PORT, "tcp")}
