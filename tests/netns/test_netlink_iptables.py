"""lb.netlink and lb.iptables against the real kernel, inside namespaces this file creates.

Safety: every namespace is named lbD<pid><run-tag><n>, interfaces are created directly inside
them (never in the host namespace), addresses are 10.231.x.x inside those namespaces only, and a
finalizer deletes the namespaces (and with them every interface, route and rule) also on failure.
Traffic (ARP, a few UDP datagrams) flows only between our own namespaces.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
from pyroute2 import IPRoute

from lb import ipsets as ips
from lb import iptables as ipt
from lb import iptlayout as iptl
from lb.ipsets import Steering
from lb.iptables import RuleManager
from lb.netlink import (
    FwdResult,
    Resolver,
    interface_name,
    mac_bytes,
    nud_name,
    resolve_fwd,
)
from lb.netmonitor import NetlinkMonitor

pytestmark = pytest.mark.netns


@pytest.fixture(scope="module", autouse=True)
def _pyroute2_children_always_exit() -> Iterator[None]:
    """pyroute2 opens netlink sockets in another namespace from a forked child ("fork" mode). If
    that child gets a signal whose inherited Python handler raises (lb.testbed.topology turns
    SIGTERM into KeyboardInterrupt for the whole pytest process once a session topology exists,
    and pyroute2 stops slow children with SIGTERM), the exception escapes pyroute2's wrapper
    before its os._exit(): the child carries on as a second copy of this pytest run, sharing our
    namespace names. "mp" mode runs the same child under multiprocessing, which always _exits."""
    import pyroute2.config

    old = pyroute2.config.child_process_mode
    pyroute2.config.child_process_mode = "mp"
    try:
        yield
    finally:
        pyroute2.config.child_process_mode = old

RUN_PREFIX = f"lbD{os.getpid() % 100000}{uuid.uuid4().hex[:2]}"  # <= 10 chars; + suffixes <= 15
CMD_TIMEOUT_S = 20


def _why_unavailable() -> str | None:
    if os.geteuid() != 0:
        return f"needs root for network namespaces (running as uid {os.geteuid()})"
    if shutil.which("ip") is None:
        return "`ip` (iproute2) not found in PATH"
    try:
        proc = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=CMD_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"`ip netns list` failed: {exc}"
    if proc.returncode != 0:
        return f"`ip netns` unavailable: {proc.stderr.strip()}"
    return None


_UNAVAILABLE = _why_unavailable()
needs_netns = pytest.mark.skipif(_UNAVAILABLE is not None, reason=_UNAVAILABLE or "")


def sh(*args: str, check: bool = True, stdin: str | None = None) -> str:
    proc = subprocess.run(list(args), capture_output=True, text=True, timeout=CMD_TIMEOUT_S, input=stdin)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} -> {proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout


def in_ns(ns: str, *args: str, check: bool = True) -> str:
    return sh("ip", "netns", "exec", ns, *args, check=check)


class Namespaces:
    """Creates lbD-prefixed namespaces and removes all of them at the end, whatever happened."""

    def __init__(self, tag: str) -> None:
        self.prefix = f"{RUN_PREFIX}{tag}"
        assert self.prefix.startswith("lbD") and len(self.prefix) <= 12
        self.created: list[str] = []

    def new(self, suffix: str) -> str:
        name = f"{self.prefix}{suffix}"
        assert len(name) <= 15
        sh("ip", "netns", "add", name)
        self.created.append(name)
        sh("ip", "-n", name, "link", "set", "lo", "up")
        return name

    def veth(self, ns_a: str, if_a: str, ns_b: str, if_b: str) -> None:
        assert len(if_a) <= 15 and len(if_b) <= 15
        # Created inside ns_a with its peer placed directly into ns_b: never in the host namespace.
        sh("ip", "-n", ns_a, "link", "add", if_a, "type", "veth", "peer", "name", if_b, "netns", ns_b)
        sh("ip", "-n", ns_a, "link", "set", if_a, "up")
        sh("ip", "-n", ns_b, "link", "set", if_b, "up")

    def cleanup(self) -> None:
        for name in reversed(self.created):
            assert name.startswith("lbD")
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=CMD_TIMEOUT_S)
        self.created.clear()


@pytest.fixture(scope="module")
def nsf(request: pytest.FixtureRequest) -> Iterator[Callable[[str], Namespaces]]:
    if _UNAVAILABLE is not None:
        pytest.skip(_UNAVAILABLE)
    made: list[Namespaces] = []

    def factory(tag: str) -> Namespaces:
        ns = Namespaces(tag)
        made.append(ns)
        return ns

    def cleanup_all() -> None:
        for n in made:
            n.cleanup()

    request.addfinalizer(cleanup_all)
    yield factory


def wait_for(predicate: Callable[[], object], timeout: float, interval: float = 0.05) -> object:
    """Poll until truthy; bounded in time and in count."""
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / interval) + 2):
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)
    return predicate()


def link_mac(ns: str, ifname: str) -> bytes:
    info = json.loads(sh("ip", "-n", ns, "-j", "link", "show", ifname))
    mac = mac_bytes(info[0]["address"])
    assert mac is not None
    return mac


def link_index(ns: str, ifname: str) -> int:
    return int(json.loads(sh("ip", "-n", ns, "-j", "link", "show", ifname))[0]["ifindex"])


def new_loop() -> asyncio.AbstractEventLoop:
    """uvloop when installed (what lbd runs on, and the harder case for pyroute2), else asyncio."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


# =========================================================================== netlink


class Topo:
    """director D --veth-- peer R, on 10.231.1.0/24.

    D: 10.231.1.1/24 (primary) + 10.231.1.3/24 (secondary), veth MTU 1450, fast ARP timers.
       10.231.9.0/24 via R, src .3, mtu 1400 | 10.231.8.0/24 via R | policy: to 10.231.7.0/24
       -> table 100: via R src .3 (no route in main).
    R: 10.231.1.2/24 and 10.231.1.4/24; nothing else answers on the segment.
    """

    def __init__(self, nss: Namespaces) -> None:
        self.d = nss.new("d")
        self.r = nss.new("r")
        self.dif, self.rif = f"{nss.prefix}dv", f"{nss.prefix}rv"
        nss.veth(self.d, self.dif, self.r, self.rif)
        ip_d = ("ip", "-n", self.d)
        sh(*ip_d, "link", "set", self.dif, "mtu", "1450")
        sh("ip", "-n", self.r, "link", "set", self.rif, "mtu", "1450")
        sh(*ip_d, "addr", "add", "10.231.1.1/24", "dev", self.dif)
        sh(*ip_d, "addr", "add", "10.231.1.3/24", "dev", self.dif)
        sh("ip", "-n", self.r, "addr", "add", "10.231.1.2/24", "dev", self.rif)
        sh("ip", "-n", self.r, "addr", "add", "10.231.1.4/24", "dev", self.rif)
        sh(*ip_d, "route", "add", "10.231.9.0/24", "via", "10.231.1.2", "src", "10.231.1.3", "mtu", "1400")
        sh(*ip_d, "route", "add", "10.231.8.0/24", "via", "10.231.1.2")
        sh(*ip_d, "rule", "add", "to", "10.231.7.0/24", "table", "100", "pref", "100")
        sh(*ip_d, "route", "add", "10.231.7.0/24", "via", "10.231.1.2", "src", "10.231.1.3", "table", "100")
        # A non-answering address goes FAILED after mcast_solicit * retrans_time = 3 * 100 ms.
        in_ns(self.d, "sysctl", "-qw", f"net.ipv4.neigh.{self.dif}.retrans_time_ms=100")
        self.r_mac = link_mac(self.r, self.rif)
        self.d_mac = link_mac(self.d, self.dif)
        self.d_index = link_index(self.d, self.dif)


@pytest.fixture(scope="module")
def ntopo(nsf: Callable[[str], Namespaces]) -> Topo:
    return Topo(nsf("n"))


@pytest.fixture()
def ipr(ntopo: Topo) -> Iterator[IPRoute]:
    with IPRoute(netns=ntopo.d, flags=0, groups=0) as handle:
        yield handle


def test_nud_and_mac_helpers() -> None:
    assert nud_name(0x02) == "REACHABLE" and nud_name(0x20) == "FAILED" and nud_name(0) == "NONE"
    assert mac_bytes("02:00:00:00:00:01") == b"\x02\0\0\0\0\x01"
    assert mac_bytes("00:00") is None and mac_bytes(None) is None and mac_bytes("zz:00:00:00:00:00") is None
    with pytest.raises(ValueError):
        FwdResult("10.0.0.1")  # neither fwd nor reason


@needs_netns
def test_on_link_peer_resolves_to_real_mac_after_kernel_arp(ntopo: Topo, ipr: IPRoute) -> None:
    first = resolve_fwd(ipr, "10.231.1.2")
    assert not first.ok
    assert first.reason == f"neighbour 10.231.1.2 on {ntopo.dif} unresolved (no entry)"
    # Only the kernel's ARP (requested by NTF_USE above) can fill the entry; don't re-trigger.
    result = wait_for(lambda: (r := resolve_fwd(ipr, "10.231.1.2", trigger=False)).ok and r, 5.0)
    assert isinstance(result, FwdResult) and result.ok, f"never resolved: {resolve_fwd(ipr, '10.231.1.2')}"
    fwd = result.fwd
    assert fwd is not None
    assert fwd.dst_mac == ntopo.r_mac
    assert fwd.src_mac == ntopo.d_mac
    assert fwd.ifindex == ntopo.d_index
    assert fwd.saddr == "10.231.1.1"  # primary address, no hint
    assert fwd.mtu == 1450  # no route MTU: the interface's
    assert result.nexthop == "10.231.1.2" and result.ifname == ntopo.dif
    neigh = sh("ip", "-n", ntopo.d, "neigh", "show", "10.231.1.2", "dev", ntopo.dif)
    assert "lladdr" in neigh and any(s in neigh for s in ("REACHABLE", "STALE", "DELAY", "PROBE")), neigh


@needs_netns
def test_prefsrc_with_and_without_src_hint_and_policy_routing(ntopo: Topo, ipr: IPRoute) -> None:
    wait_for(lambda: resolve_fwd(ipr, "10.231.1.2").ok, 5.0)
    hinted = resolve_fwd(ipr, "10.231.9.7")
    assert hinted.fwd is not None, hinted.reason
    assert hinted.fwd.saddr == "10.231.1.3"  # the route's src hint, not the primary
    assert hinted.fwd.mtu == 1400  # the route's MTU metric wins over the interface's
    assert hinted.nexthop == "10.231.1.2" and hinted.fwd.dst_mac == ntopo.r_mac  # gateway's MAC

    plain = resolve_fwd(ipr, "10.231.8.7")
    assert plain.fwd is not None, plain.reason
    assert plain.fwd.saddr == "10.231.1.1" and plain.fwd.mtu == 1450

    policy = resolve_fwd(ipr, "10.231.7.7")
    assert policy.fwd is not None, policy.reason
    assert policy.fwd.saddr == "10.231.1.3"  # found only through the rule -> table 100

    # No caching: a route change is seen by the very next lookup.
    sh("ip", "-n", ntopo.d, "route", "replace", "10.231.8.0/24", "via", "10.231.1.2", "src", "10.231.1.3")
    try:
        changed = resolve_fwd(ipr, "10.231.8.7")
        assert changed.fwd is not None and changed.fwd.saddr == "10.231.1.3"
    finally:
        sh("ip", "-n", ntopo.d, "route", "replace", "10.231.8.0/24", "via", "10.231.1.2")


@needs_netns
def test_unreachable_local_and_invalid(ntopo: Topo, ipr: IPRoute) -> None:
    assert resolve_fwd(ipr, "10.231.200.1").reason == "no route to 10.231.200.1"
    assert resolve_fwd(ipr, "10.231.1.1").reason == "10.231.1.1 is a local address"
    with pytest.raises(ValueError):
        resolve_fwd(ipr, "10.231.1.300")


@needs_netns
def test_non_answering_on_link_address_goes_failed(ntopo: Topo, ipr: IPRoute) -> None:
    first = resolve_fwd(ipr, "10.231.1.77")
    assert first.reason == f"neighbour 10.231.1.77 on {ntopo.dif} unresolved (no entry)"
    seen: list[str] = []

    def failed() -> bool:
        r = resolve_fwd(ipr, "10.231.1.77", trigger=False)
        assert not r.ok and r.reason is not None
        seen.append(r.reason)
        return "FAILED" in r.reason

    assert wait_for(failed, 5.0), seen
    assert seen[-1] == f"neighbour 10.231.1.77 on {ntopo.dif} FAILED"
    assert all("INCOMPLETE" in s or "FAILED" in s for s in seen), seen
    # Via a gateway that does not answer: the reason names the next hop and the destination.
    sh("ip", "-n", ntopo.d, "route", "add", "10.231.6.0/24", "via", "10.231.1.77")
    try:
        via = resolve_fwd(ipr, "10.231.6.1", trigger=False)
        assert via.reason == f"neighbour 10.231.1.77 on {ntopo.dif} FAILED (next hop to 10.231.6.1)"
    finally:
        sh("ip", "-n", ntopo.d, "route", "del", "10.231.6.0/24")


@needs_netns
def test_interface_name(ntopo: Topo, ipr: IPRoute) -> None:
    assert interface_name(ntopo.d_index, ipr) == ntopo.dif
    assert interface_name(999999, ipr) is None


@needs_netns
def test_resolver_from_uvloop(ntopo: Topo) -> None:
    async def scenario() -> None:
        async with Resolver(netns=ntopo.d) as res:
            ok = await res.resolve("10.231.1.4", timeout=5.0, interval=0.05)  # fresh neighbour
            assert ok.fwd is not None, ok.reason
            assert ok.fwd.dst_mac == ntopo.r_mac and ok.fwd.saddr == "10.231.1.1"
            assert res.last_reason("10.231.1.4") is None
            t0 = time.monotonic()
            bad = await res.resolve("10.231.200.9", timeout=0.3, interval=0.1)
            assert time.monotonic() - t0 < 2.0
            assert bad.reason == "no route to 10.231.200.9"
            assert res.last_reason("10.231.200.9") == "no route to 10.231.200.9"
            assert await res.interface_name(ntopo.d_index) == ntopo.dif

    loop = new_loop()
    try:
        loop.run_until_complete(asyncio.wait_for(scenario(), 20))
    finally:
        loop.close()


@needs_netns
def test_monitor_reports_route_addr_link_changes(ntopo: Topo) -> None:
    async def scenario() -> list[str]:
        events: list[str] = []
        got = asyncio.Event()
        def on_event(kind: str) -> None:
            events.append(kind)
            got.set()

        mon = NetlinkMonitor(on_event, netns=ntopo.d)
        mon.start()
        try:
            async def expect(kind: str, *cmd: str) -> None:
                events.clear()
                got.clear()
                await asyncio.to_thread(sh, "ip", "-n", ntopo.d, *cmd)
                deadline = time.monotonic() + 5.0
                while kind not in events and time.monotonic() < deadline:
                    got.clear()
                    try:
                        await asyncio.wait_for(got.wait(), max(0.01, deadline - time.monotonic()))
                    except TimeoutError:
                        break
                assert kind in events, f"no {kind!r} event after {' '.join(cmd)}: {events}"

            await expect("route", "route", "add", "10.231.5.0/24", "via", "10.231.1.2")
            await expect("route", "route", "del", "10.231.5.0/24")
            await expect("addr", "addr", "add", "10.231.1.9/24", "dev", ntopo.dif)
            await expect("addr", "addr", "del", "10.231.1.9/24", "dev", ntopo.dif)
            await expect("route", "rule", "add", "to", "10.231.4.0/24", "table", "101", "pref", "101")
            # (no `dummy` link type in this kernel: change an existing link instead)
            await expect("link", "link", "set", ntopo.dif, "mtu", "1440")
            await expect("link", "link", "set", ntopo.dif, "mtu", "1450")
            return list(events)
        finally:
            mon.stop()

    loop = new_loop()
    try:
        loop.run_until_complete(asyncio.wait_for(scenario(), 30))
    finally:
        loop.close()


# =========================================================================== iptables


FOREIGN = '-A PREROUTING -s 10.231.99.1/32 -m comment --comment "foreign rule" -j CT --notrack'
VIP = "10.231.50.10"


def raw_S(ns: str) -> list[str]:
    return in_ns(ns, "iptables", "-t", "raw", "-S").splitlines()


def counters(ns: str, chain: str) -> dict[str, int]:
    """Packet counter per rule of `chain`, keyed by the rule as `-S` prints it without counters."""
    out: dict[str, int] = {}
    for line in in_ns(ns, "iptables", "-t", "raw", "-S", chain, "-v").splitlines():
        m = re.match(r"(-A .*?) -c (\d+) \d+ (-j .*)$", line)
        if m:
            out[f"{m.group(1)} {m.group(3)}"] = int(m.group(2))
    return out


@pytest.fixture(scope="module")
def fw(nsf: Callable[[str], Namespaces]) -> tuple[str, str, Namespaces]:
    """Director D with a foreign raw rule, and a client C that routes the VIP through D."""
    nss = nsf("i")
    d, c = nss.new("d"), nss.new("c")
    reason = ipt.detect(netns=d)
    if reason is not None:
        pytest.skip(f"iptables NFQUEUE unusable in a namespace here: {reason}")
    nss.veth(d, f"{nss.prefix}dv", c, f"{nss.prefix}cv")
    sh("ip", "-n", d, "addr", "add", "10.231.40.1/24", "dev", f"{nss.prefix}dv")
    sh("ip", "-n", c, "addr", "add", "10.231.40.2/24", "dev", f"{nss.prefix}cv")
    sh("ip", "-n", c, "route", "add", f"{VIP}/32", "via", "10.231.40.1")
    in_ns(d, "iptables", "-t", "raw", "-A", "PREROUTING", "-s", "10.231.99.1/32",
          "-m", "comment", "--comment", "foreign rule", "-j", "CT", "--notrack")
    assert FOREIGN in raw_S(d)
    return d, c, nss


SERVICES = [(6, VIP, 80), (17, VIP, 53)]


def steer(services: list[tuple[int, str, int]], fnat: tuple[tuple[int, str, int, str], ...] = ()) -> Steering:
    return Steering(services=set(services), fnat_replies=set(fnat))


def ipset_save(ns: str) -> list[str]:
    return in_ns(ns, "ipset", "save").splitlines()


def members(ns: str, queue: int, kind: ips.SetKind) -> set[str]:
    name = ips.set_name(queue, kind)
    return {line.split()[2] for line in ipset_save(ns) if line.startswith(f"add {name} ")}


def ours(ns: str, queue: int) -> list[str]:
    """Everything of queue `queue` in the namespace: raw rules and chains, ip sets."""
    tag = f"LBD-Q{queue}"
    return [line for line in raw_S(ns) if re.search(rf"{tag}\b", line) or f"lbd q{queue}" in line] + \
        [line for line in ipset_save(ns) if ips.set_name(queue, ips.ADDR).rsplit("-", 1)[0] + "-" in line]


@needs_netns
def test_setup_sync_teardown_lifecycle(fw: tuple[str, str, Namespaces]) -> None:
    d, _, _ = fw
    before, sets_before = raw_S(d), ipset_save(d)
    m = RuleManager(7, netns=d)
    try:
        m.setup()
        m.setup()  # idempotent
        assert raw_S(d).count(iptl.jump_rule(7)) == 1
        # Our generated text is exactly what iptables prints: the diff compares like with like.
        assert m.rules() == iptl.chain_rules(7)
        assert m.go_rules() == ["-A LBD-Q7-GO -j CT --notrack", "-A LBD-Q7-GO -j NFQUEUE --queue-num 7 --queue-bypass",
                                iptl.defrag_rule(7)]
        assert raw_S(d).count(iptl.out_jump_rule(7)) == 1
        assert m.out_rules() == iptl.out_rules(7) == ["-A LBD-Q7-OUT -m mark --mark 0x4c420007 -j CT --notrack"]

        plan = m.sync(steer(SERVICES))
        assert (plan.added, plan.deleted, plan.rewritten) == (3, 0, [])  # VIP + two services
        assert members(d, 7, ips.SVC) == {f"{VIP},tcp:80", f"{VIP},udp:53"} and members(d, 7, ips.ADDR) == {VIP}
        assert m.sync(steer(SERVICES)).empty  # nothing to do -> no set change, no transaction

        plan = m.sync(steer([(6, VIP, 80), (6, VIP, 443)]))
        assert (plan.added, plan.deleted) == (1, 1)  # minimal: tcp/80 untouched
        assert m.rules() == iptl.chain_rules(7)  # the rules never change with the services
        assert members(d, 7, ips.SVC) == {f"{VIP},tcp:80", f"{VIP},tcp:443"}
        plan = m.sync(steer([(6, VIP, 80), (6, VIP, 443), (17, VIP, 0)], fnat=((6, "10.231.60.2", 8080, "10.231.40.1"),)))
        assert plan.added == 3  # the UDP all-ports VIP, the reply triple and the local address
        assert members(d, 7, ips.UDP0) == {VIP} and members(d, 7, ips.FNAT) == {"10.231.60.2,tcp:8080,10.231.40.1"}
        assert members(d, 7, ips.ADDR) == {VIP, "10.231.40.1"}
        wanted = steer([(6, VIP, 80), (6, VIP, 443)])

        in_ns(d, "iptables", "-t", "raw", "-D", "PREROUTING", "-j", "LBD-Q7")
        assert m.sync(wanted).jump_added  # an operator's flush is healed
        assert raw_S(d).count(iptl.jump_rule(7)) == 1
        in_ns(d, "iptables", "-t", "raw", "-F", "OUTPUT")
        in_ns(d, "iptables", "-t", "raw", "-F", "LBD-Q7-OUT")
        assert m.sync(wanted).out_repaired  # ...also on the OUTPUT side
        assert raw_S(d).count(iptl.out_jump_rule(7)) == 1 and m.out_rules() == iptl.out_rules(7)
        in_ns(d, "ipset", "flush", ips.set_name(7, ips.SVC))
        assert m.sync(wanted).empty  # a configuration change trusts lbd's own cache of its sets...
        assert m.sync(wanted, verify_sets=True).added == 2  # ...a verifying sync finds it (element count)
        in_ns(d, "iptables", "-t", "raw", "-F", "LBD-Q7")
        assert m.sync(wanted).rewritten and m.rules() == iptl.chain_rules(7)
        assert m.sync(wanted).empty
    finally:
        m.teardown()
    assert raw_S(d) == before  # the foreign rule survives, nothing of ours remains
    assert FOREIGN in raw_S(d)
    assert ipset_save(d) == sets_before  # the sets are gone too
    m.teardown()  # idempotent
    assert raw_S(d) == before


@needs_netns
def test_teardown_leaves_no_empty_raw_hook(fw: tuple[str, str, Namespaces]) -> None:
    """iptables-nft keeps raw PREROUTING / OUTPUT as base chains after lbd's jumps leave them: an empty
    base chain still costs every packet a hook call. Teardown deletes the one lbd left empty (OUTPUT)
    and keeps the one holding an operator's rule (PREROUTING, the fixture's foreign rule)."""
    if shutil.which("nft") is None:
        pytest.skip("nft (Debian package nftables, which `make test` installs) is not installed")
    d, _, _ = fw
    m = RuleManager(11, netns=d)
    m.setup()
    m.sync(steer(SERVICES))
    assert "hook output" in in_ns(d, "nft", "list", "table", "ip", "raw")
    m.teardown()
    table = in_ns(d, "nft", "list", "table", "ip", "raw")
    assert "hook prerouting" in table and "10.231.99.1" in table, table  # the operator's rule
    assert "hook output" not in table, table
    foreign = ["PREROUTING", "-s", "10.231.99.1/32", "-m", "comment", "--comment", "foreign rule", "-j", "CT",
               "--notrack"]
    in_ns(d, "iptables", "-t", "raw", "-D", *foreign)
    try:
        m.setup()  # lbd's jumps alone in both hooks: both chains go with them
        m.teardown()
        assert "hook" not in in_ns(d, "nft", "list", "table", "ip", "raw")
    finally:
        in_ns(d, "iptables", "-t", "raw", "-A", *foreign)  # the fixture's, for the tests after this one


@needs_netns
def test_previous_per_service_layout_is_adopted(fw: tuple[str, str, Namespaces]) -> None:
    """A chain of the earlier per-service layout (left by an older lbd) is rewritten by a sync,
    after the sets are filled: the restart keeps steering the VIP."""
    d, _, _ = fw
    m = RuleManager(14, netns=d)
    try:
        in_ns(d, "iptables", "-t", "raw", "-N", "LBD-Q14")
        in_ns(d, "iptables", "-t", "raw", "-A", "PREROUTING", "-j", "LBD-Q14")
        for target in (["CT", "--notrack"], ["NFQUEUE", "--queue-num", "14", "--queue-bypass"]):
            in_ns(d, "iptables", "-t", "raw", "-A", "LBD-Q14", "-d", f"{VIP}/32", "-p", "tcp", "-m", "tcp",
                  "--dport", "80", "-j", *target)
        plan = m.sync(steer(SERVICES))
        assert plan.rewritten and plan.added == 3
        assert m.rules() == iptl.chain_rules(14) and raw_S(d).count(iptl.jump_rule(14)) == 1
    finally:
        m.teardown()
    assert ours(d, 14) == []


@needs_netns
def test_crash_leftovers_removed_and_other_instances_untouched(fw: tuple[str, str, Namespaces]) -> None:
    d, _, _ = fw
    before, sets_before = raw_S(d), ipset_save(d)
    other = RuleManager(9, netns=d)
    crashed = RuleManager(8, netns=d)
    try:
        other.setup()
        other.sync(steer([(6, VIP, 8080)]))
        crashed.setup()
        crashed.sync(steer(SERVICES))
        # ...lbd on queue 8 dies without teardown; someone also added a bare jump by hand.
        in_ns(d, "iptables", "-t", "raw", "-A", "PREROUTING", "-j", "LBD-Q8")
        in_ns(d, "iptables", "-t", "raw", "-A", "OUTPUT", "-j", "LBD-Q8-OUT")
        del crashed
        restarted = RuleManager(8, netns=d)
        restarted.setup()
        table = raw_S(d)
        assert table.count(iptl.jump_rule(8)) == 1
        assert table.count(iptl.out_jump_rule(8)) == 1
        assert "-A OUTPUT -j LBD-Q8-OUT" not in table
        assert restarted.out_rules() == iptl.out_rules(8)
        assert not any(line.startswith("-A PREROUTING") and line.endswith("-j LBD-Q8") and line != iptl.jump_rule(8)
                       for line in table)
        assert restarted.rules() == iptl.chain_rules(8)
        assert members(d, 8, ips.SVC) == set()  # setup starts from empty sets
        assert members(d, 9, ips.SVC) == {f"{VIP},tcp:8080"} and other.rules() == iptl.chain_rules(9)
        assert FOREIGN in table
        restarted.teardown()
        assert members(d, 9, ips.SVC) == {f"{VIP},tcp:8080"} and other.rules() == iptl.chain_rules(9)
        assert iptl.jump_rule(9) in raw_S(d)
        assert ours(d, 8) == []
    finally:
        RuleManager(8, netns=d).teardown()
        other.teardown()
    assert raw_S(d) == before and ipset_save(d) == sets_before


@needs_netns
def test_queue_balance_rules_accepted(fw: tuple[str, str, Namespaces]) -> None:
    d, _, _ = fw
    m = RuleManager(10, queue_balance=(10, 11), netns=d)
    try:
        m.setup()
        m.sync(steer([(17, VIP, 53)]))
        assert m.go_rules() == iptl.go_rules(10, "-j NFQUEUE --queue-balance 10:11 --queue-bypass")
        assert m.sync(steer([(17, VIP, 53)])).empty
    finally:
        m.teardown()


@needs_netns
def test_rules_match_real_packets(fw: tuple[str, str, Namespaces]) -> None:
    """Datagrams from the client reach our queue rule (bypassed: no listener), others do not;
    a datagram to another address (routed traffic) leaves the chain at its first rule."""
    d, c, _ = fw
    m = RuleManager(11, netns=d)
    try:
        m.setup()
        m.sync(steer(SERVICES))
        send = (
            "import socket\n"
            "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            f"for _ in range(3): s.sendto(b'lbd-test', ('{VIP}', 53))\n"
            f"s.sendto(b'lbd-test', ('{VIP}', 54))\n"
            "s.sendto(b'lbd-test', ('10.231.40.1', 53))\n"
        )
        in_ns(c, shutil.which("python3") or "python3", "-c", send)
        rules = iptl.chain_rules(11)
        notrack, queue, _defrag = iptl.go_rules(11, m.target)

        def queued() -> bool:
            return counters(d, "LBD-Q11-GO").get(queue, 0) >= 3

        assert wait_for(queued, 5.0), counters(d, "LBD-Q11-GO")  # first datagram waits for ARP
        got, chain = counters(d, "LBD-Q11-GO"), counters(d, "LBD-Q11")
        assert got[notrack] == 3 and got[queue] == 3  # port 54 matched nothing
        rule = {name: next(r for r in rules if needle in r) for name, needle in (
            ("routed", "! --match-set lbd-q11-natrip src -j RETURN"), ("nat", "-m set --match-set lbd-q11-nat "),
            ("natrip", "-m set --match-set lbd-q11-natrip "), ("prefilter", "-addr dst -j RETURN"), ("svc", "-svc "),
            ("tcp0", "-tcp0 "), ("icmp", "-p icmp -j"))}
        assert rule["routed"] == rules[0] and rule["prefilter"] != rules[0]
        assert chain[rule["svc"]] == 3  # the service set
        assert chain[rule["routed"]] == 1  # 10.231.40.1 is not ours: out at the first rule
        assert chain[rule["prefilter"]] == 0  # VIP:54 is ours (its address): it goes on, and matches nothing
        assert chain[rule["tcp0"]] == 0 and chain[rule["icmp"]] == 0  # no TCP, no ICMP sent
        assert chain[rule["nat"]] == 0 and chain[rule["natrip"]] == 0  # no NAT real server configured
    finally:
        m.teardown()


@needs_netns
def test_detect_in_namespace(fw: tuple[str, str, Namespaces]) -> None:
    d, _, _ = fw
    before, sets_before = raw_S(d), ipset_save(d)
    assert ipt.detect(netns=d) is None
    assert raw_S(d) == before and ipset_save(d) == sets_before  # the probe leaves nothing behind


@needs_netns
def test_track_opt_in_installs_no_notrack(fw: tuple[str, str, Namespaces]) -> None:
    d, _, _ = fw
    before = raw_S(d)
    untracked = RuleManager(12, netns=d)
    try:
        untracked.setup()
        untracked.sync(steer(SERVICES))  # then lbd "crashes" and restarts with the opt-in
        m = RuleManager(12, track=True, netns=d)
        m.setup()
        assert not any("LBD-Q12-OUT" in line for line in raw_S(d))
        m.sync(steer(SERVICES))
        assert m.go_rules() == [f"-A LBD-Q12-GO {m.target}", iptl.defrag_rule(12)]
        assert not any("notrack" in line for line in raw_S(d) if "LBD-Q12" in line)
        assert m.sync(steer(SERVICES)).empty
    finally:
        RuleManager(12, netns=d).teardown()
    assert raw_S(d) == before


@needs_netns
def test_rules_do_not_grow_with_services(fw: tuple[str, str, Namespaces]) -> None:
    """2,000 services: the same chain, one set element each; one more service is one element."""
    d, _, _ = fw
    m = RuleManager(15, netns=d)
    many = [(6, f"10.232.{n // 250}.{n % 250 + 1}", 80 + n % 7) for n in range(2000)]
    try:
        m.setup()
        assert m.sync(steer(many)).added == 2000 + len({a for _, a, _ in many})
        assert m.rules() == iptl.chain_rules(15)
        plan = m.sync(steer([*many, (17, VIP, 53)]))
        assert (plan.added, plan.deleted) == (2, 0)  # the service and its VIP
        assert len(members(d, 15, ips.SVC)) == 2001
    finally:
        m.teardown()
    assert ours(d, 15) == []


RAW_SEND = """
import socket, struct, sys
src, dst, mark = sys.argv[1], sys.argv[2], int(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)  # IP_HDRINCL implied
if mark:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
payload = b"lbd-test"
udp = struct.pack("!HHHH", 4000, 9, 8 + len(payload), 0) + payload
ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0,
                 socket.inet_aton(src), socket.inet_aton(dst))
s.sendto(ip + udp, (dst, 0))
"""


def filter_counters(ns: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in in_ns(ns, "iptables", "-t", "filter", "-S", "OUTPUT", "-v").splitlines():
        m = re.match(r"-A OUTPUT (.*?)-c (\d+) \d+", line)
        if m:
            out[m.group(1).strip()] = int(m.group(2))
    return out


@needs_netns
def test_marked_raw_socket_packets_are_untracked(fw: tuple[str, str, Namespaces]) -> None:
    """What the fast path's IPPROTO_RAW socket sends with SO_MARK = base|queue leaves UNTRACKED."""
    d, _, _ = fw
    q = 13
    m = RuleManager(q, netns=d)
    untracked = "-d 10.231.40.2/32 -p udp -m conntrack --ctstate UNTRACKED"
    new = "-d 10.231.40.2/32 -p udp -m conntrack --ctstate NEW"
    try:
        m.setup()
        in_ns(d, "iptables", "-A", "OUTPUT", *untracked.split())
        in_ns(d, "iptables", "-A", "OUTPUT", *new.split())
        py = shutil.which("python3") or "python3"
        in_ns(d, py, "-c", RAW_SEND, "10.231.40.1", "10.231.40.2", str(iptl.socket_mark(q)))
        got = filter_counters(d)
        assert got[untracked] == 1 and got[new] == 0, got
        in_ns(d, py, "-c", RAW_SEND, "10.231.40.1", "10.231.40.2", "0")  # unmarked: tracked as usual
        in_ns(d, py, "-c", RAW_SEND, "10.231.40.1", "10.231.40.2", str(iptl.socket_mark(q + 1)))  # other queue
        got = filter_counters(d)
        assert got[untracked] == 1 and got[new] == 2, got
    finally:
        in_ns(d, "iptables", "-F", "OUTPUT", check=False)
        m.teardown()
