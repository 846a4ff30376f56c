"""lbd --nat-replies ingress (lb/natingress.py, its part of lb/nftsteer.py, lb/nftelements.py's mirror):
the netdev table's text, the interfaces it is bound to, and what the steering manager writes when NAT
real servers come (the pair and the table with the first), go (with the last) or move. No kernel:
nft is faked (test_nftsteer's FakeNft), the veth pair and route lookups are injected."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from lb import ipsets as ips
from lb import natingress as ni
from lb import nfnlbatch, nftelements
from lb import nftsteer as ns
from lb.daemon_options import parse_args
from lb.ipsets import Steering
from test_nftsteer import TCP, FakeNft, healthy_listing, nat_steering


class FakeIngress(ni.NatIngress):
    """The pair and the routes without the kernel: routes maps an address to its interface."""

    def __init__(self, routes: dict[str, str | None]) -> None:
        self.routes = routes
        self.lookups: list[list[str]] = []
        super().__init__(3, route_devs=self._devs_of)
        self.pair = False
        self.ifindex = 40

    def _devs_of(self, addrs: list[str]) -> dict[str, str | None]:
        self.lookups.append(list(addrs))
        return {a: self.routes.get(a) for a in addrs}

    def ensure_pair(self) -> int:
        if not self.pair:
            self.pair, self.ifindex = True, self.ifindex + 1
        return self.ifindex

    def remove_pair(self) -> None:
        self.pair = False

    def pair_exists(self) -> bool:
        return self.pair


def ingress_manager(fake: FakeNft, routes: dict[str, str | None] | None = None) -> tuple[ns.NftManager, FakeIngress]:
    ing = FakeIngress(routes if routes is not None else {"10.9.0.5": "eth1"})
    m = ns.NftManager(3, runner=fake, queue_writer=fake.queue_writer, hook="input", nat_replies="ingress", ingress=ing)
    m.ipt_available = lambda: False  # type: ignore[method-assign]
    return m, ing


def test_names_fit_ifnamsiz_and_are_per_queue() -> None:
    assert ni.pair_names(0) == ("lbnr0", "lbnr0p")
    assert all(len(n) < 16 for n in ni.pair_names(65535))
    with pytest.raises(ValueError):
        ni.pair_names(65536)


def test_rs_chain_takes_nat_replies_and_fragments_of_nat_real_servers_only() -> None:
    rules = ni.rs_rules("lbnr3")
    assert rules[0] == "ip saddr != @natrip return"  # everything else on the interface leaves at once
    assert rules[1] == "fib daddr type local return"  # the director's own connections (health checks)
    assert rules[2] == 'ip frag-off & 16383 != 0 fwd to "lbnr3"'  # every fragment (MF | offset): lbd reassembles
    assert all(r.endswith('fwd to "lbnr3"') for r in rules[2:])
    # the same tests as the forward chain's NAT rules (lb.nftlayout), with `fwd` for `jump go`
    assert [r.replace('fwd to "lbnr3"', "jump go") for r in rules[3:]] == ns.forward_rules()[1:]


def test_chain_lines_rebind_in_one_transaction() -> None:
    assert ni.chain_lines("lbd-q3", "lbnr3", set(), exists=False) == []
    lines = ni.chain_lines("lbd-q3", "lbnr3", {"eth2", "eth1"}, exists=True)
    assert lines[:2] == ["flush chain netdev lbd-q3 rs", "delete chain netdev lbd-q3 rs"]
    assert lines[2] == ('add chain netdev lbd-q3 rs { type filter hook ingress devices = { "eth1", "eth2" } '
                        'priority -500; policy accept; }')
    assert lines[3:] == [f"add rule netdev lbd-q3 rs {r}" for r in ni.rs_rules("lbnr3")]
    assert ni.chain_lines("lbd-q3", "lbnr3", set(), exists=True) == lines[:2]


def test_devices_are_looked_up_once_per_address_and_again_after_a_routing_change(caplog: Any) -> None:
    ing = FakeIngress({"10.9.0.5": "eth1", "10.9.0.6": "eth1", "10.8.0.1": "eth2", "127.0.0.9": "lo",
                       "10.7.0.1": "lbnr0p"})
    assert ing.devices({"10.9.0.5", "10.9.0.6"}) == {"eth1"}
    assert ing.devices({"10.9.0.5", "10.9.0.6", "10.8.0.1"}) == {"eth1", "eth2"}
    assert ing.lookups == [["10.9.0.5", "10.9.0.6"], ["10.8.0.1"]]  # only the new address the second time
    assert ing.devices({"10.8.0.1", "127.0.0.9", "10.7.0.1"}) == {"eth2"}  # never lo, never a pair of lbd's
    with caplog.at_level(logging.WARNING, logger="lb.natingress"):
        assert ing.devices({"10.8.0.1", "10.6.0.1"}) == {"eth2"}
    assert "no route to 10.6.0.1" in caplog.text
    ing.routes["10.8.0.1"] = "eth3"
    assert ing.devices({"10.8.0.1"}) == {"eth2"}  # cached ...
    ing.forget_routes()
    assert ing.devices({"10.8.0.1"}) == {"eth3"}  # ... until the routes change


def test_ingress_needs_the_input_hook() -> None:
    with pytest.raises(ValueError, match="needs --steer-hook input"):
        ns.NftManager(3, runner=FakeNft(), hook="prerouting", nat_replies="ingress")
    with pytest.raises(ValueError, match="one of forward, ingress"):
        ns.NftManager(3, runner=FakeNft(), hook="input", nat_replies="xdp")


NETDEV_WHOLE = ("table netdev lbd-q3 {\n" + "".join(
    f"\tset {k.suffix} {{\n\t\ttype {ns.SET_TYPES[k.type]}\n\t}}\n" for k in ni.KINDS)
    + '\tchain sink {\n\t\ttype filter hook ingress device "lbnr3p" priority -500; policy drop;\n\t}\n'
    + '\tchain rs {\n\t\ttype filter hook ingress devices = { "eth1" } priority -500; policy accept;\n'
    + "".join(f"\t\t{r} # handle {i + 5}\n" for i, r in enumerate(ni.rs_rules("lbnr3"))) + "\t}\n}\n")


def test_without_nat_real_servers_there_is_no_pair_and_no_netdev_table() -> None:
    fake = FakeNft()
    m, ing = ingress_manager(fake)
    fake.listing = healthy_listing(m)
    started: list[int] = []
    m.on_ingress_pair = started.append
    m.setup()
    m.sync(Steering(services={(TCP, "10.0.0.1", 80)}))
    assert not ing.pair and started == []  # nothing of this on a director without NAT services
    assert all("netdev" not in script for script in fake.scripts())
    assert all("forward" not in script and "defrag" not in script for script in fake.scripts())
    # a killed ingress lbd's leftovers are looked for (and removed) at setup, whatever exists
    assert ["nft", "list", "table", "netdev", "lbd-q3"] in [c for c, _ in fake.calls]


def test_the_first_nat_real_server_brings_pair_and_table_the_last_takes_them_away() -> None:
    fake = FakeNft()
    m, ing = ingress_manager(fake)
    fake.listing = healthy_listing(m)
    started: list[int] = []
    m.on_ingress_pair = started.append
    m.setup()
    fake.calls.clear()
    written: list[tuple[Any, ...]] = []
    m._element_writer = lambda *a, **kw: written.append((a, kw))
    m._generation = lambda: 5  # nothing but lbd wrote: the delta path
    m._intact_gen = 5
    with_nat = nat_steering().elements()
    assert set(m._want(True)) == {ns.GO, ns.IN, ns.OUT}  # never a forward chain
    # the first NAT real server: the pair (lbd's reader started on its peer), then in one nft -f the
    # netdev table whole with the NAT elements, `rs` on the real server's interface, the ip elements
    plan = m.apply(ips.SetDelta(added={k: set(v) for k, v in with_nat.items()}), lambda: with_nat, set())
    assert ing.pair and started == [41]
    (script,) = fake.scripts()
    assert "add table netdev lbd-q3\ndelete table netdev lbd-q3\nadd table netdev lbd-q3" in script
    assert "add set netdev lbd-q3 natrip { type ipv4_addr; size 65536; }" in script  # the fast set, as ip's
    assert 'add chain netdev lbd-q3 sink { type filter hook ingress device "lbnr3p" priority -500; policy drop; }' in script
    assert 'add chain netdev lbd-q3 rs { type filter hook ingress devices = { "eth1" } priority -500; policy accept; }' in script
    assert script.count("add element netdev lbd-q3 natrip { 10.9.0.5 }") == 1  # with the table, not mirrored again
    assert script.index("add table netdev") < script.index("add element netdev")
    assert "add element ip lbd-q3 natrip { 10.9.0.5 }" in script
    assert "add element netdev lbd-q3 nat { 10.9.0.5 . tcp . 8080 }" in script
    assert "add element netdev lbd-q3 svc" not in script  # only the NAT sets live there
    assert "forward" not in script and plan.rewritten == []
    assert written == [] and m.netdev is not None and m.netdev.devices == {"eth1"}
    # another port of the same real server: no chain change, one netlink batch mirrored into netdev
    fake.calls.clear()
    m._intact_gen = 5
    m.apply(ips.SetDelta(added={ips.NAT: {"10.9.0.5,tcp:8081"}}), lambda: with_nat, set())
    assert fake.scripts() == []
    ((args, kw),) = written
    assert args[1] == [("nat", "hash:ip,port", {"10.9.0.5,tcp:8081"})]
    assert kw["mirror"] == frozenset({"nat", "natrip", "nattcp0", "natudp0"})
    # the last NAT real server leaves: the netdev table deleted in the same transaction as its ip
    # elements, then the pair, and lbd told to stop its reader
    m._intact_gen = 5
    gone = {k: set(v) for k, v in with_nat.items() if k not in (ips.ADDR, ips.SVC)}
    m.apply(ips.SetDelta(removed=gone), lambda: Steering(services={(TCP, "10.0.0.1", 80)}).elements(), set())
    (script,) = fake.scripts()
    assert "delete table netdev lbd-q3" in script and "delete element ip lbd-q3 natrip { 10.9.0.5 }" in script
    assert "element netdev" not in script
    assert not ing.pair and started == [41, 0] and m.netdev.devices == set() and not m.netdev.active
    # and again: a new pair, a new reader
    m._intact_gen = 5
    m.apply(ips.SetDelta(added={k: set(v) for k, v in with_nat.items()}), lambda: with_nat, set())
    assert ing.pair and started == [41, 0, 42]  # a new pair, a new ifindex


def test_a_failed_transaction_keeps_the_pair_until_a_full_sync_settles_it() -> None:
    fake = FakeNft()
    m, ing = ingress_manager(fake)
    fake.listing = healthy_listing(m)
    m.sync(nat_steering())
    assert ing.pair and m.netdev is not None and m.netdev.active
    fake.fail_scripts = True
    with pytest.raises(ns.IptablesError):
        m.sync(Steering(services={(TCP, "10.0.0.1", 80)}))
    assert ing.pair  # the table's deletion did not happen: neither does the pair's
    fake.fail_scripts = False
    m.sync(Steering(services={(TCP, "10.0.0.1", 80)}))
    assert not ing.pair and not m.netdev.active
    assert "delete table netdev lbd-q3" in fake.scripts()[-1]


def test_a_routing_change_rebinds_the_chain_only_when_the_interfaces_moved() -> None:
    fake = FakeNft()
    m, ing = ingress_manager(fake)
    fake.listing = healthy_listing(m)
    m.sync(nat_steering())
    assert m.netdev is not None and m.netdev.devices == {"eth1"}
    fake.calls.clear()
    m.routes_changed()  # same interface: nothing written
    assert fake.scripts() == []
    ing.routes["10.9.0.5"] = "eth7"
    m.routes_changed()
    (script,) = fake.scripts()
    assert 'devices = { "eth7" }' in script and script.startswith("flush chain netdev lbd-q3 rs")


def test_a_full_sync_recreates_the_netdev_table_with_the_nat_elements() -> None:
    fake = FakeNft()
    m, _ = ingress_manager(fake)
    fake.listing = healthy_listing(m)
    m.sync(nat_steering())
    (script,) = fake.scripts()
    assert "delete table netdev lbd-q3" in script
    assert "add element netdev lbd-q3 natrip { 10.9.0.5 }" in script
    assert "add rule netdev lbd-q3 rs ip saddr != @natrip return" in script


def test_damage_names_a_missing_netdev_table_or_pair_only_while_nat_real_servers_exist() -> None:
    fake = FakeNft()
    m, ing = ingress_manager(fake)
    fake.listing = healthy_listing(m, {"addr": ["10.0.0.1"], "svc": ["10.0.0.1,tcp:80"]})
    m.sync(Steering(services={(TCP, "10.0.0.1", 80)}))
    m._generation = lambda: None
    assert m.damage() == []  # no NAT real server: no table, no pair, nothing missing
    fake.listing = healthy_listing(m, {"addr": ["10.0.0.1"], "svc": ["10.0.0.1,tcp:80"]})
    m.sync(nat_steering())
    m.installed = {k: set() for k in ips.KINDS}  # compare the sets as empty (the listings below have none)
    fake.listing = healthy_listing(m)
    assert m.damage() == ["nft table netdev lbd-q3 gone"]
    fake.netdev_listing = NETDEV_WHOLE
    assert m.damage() == []
    ing.pair = False
    assert m.damage() == ["veth pair lbnr3/lbnr3p gone"]


def test_teardown_removes_both_tables_and_the_pair() -> None:
    fake = FakeNft()
    m, ing = ingress_manager(fake)
    fake.listing = healthy_listing(m)
    m.setup()
    m.sync(nat_steering())
    assert ing.pair
    fake.calls.clear()
    fake.netdev_listing = "table netdev lbd-q3 {\n}\n"
    m.teardown()
    deletes = [c for c, _ in fake.calls if "delete" in c]
    assert deletes == [["nft", "delete", "table", "ip", "lbd-q3"], ["nft", "delete", "table", "netdev", "lbd-q3"]]
    assert not ing.pair


def test_mirrored_elements_go_to_both_families_in_one_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[Any] = []
    monkeypatch.setattr(nftelements, "transact", lambda reqs, what, netns: sent.append((reqs, what)))
    nftelements.write("lbd-q3", [("natrip", "hash:ip", {"10.9.0.5"}), ("addr", "hash:ip", {"10.0.0.1"})],
                      [("nat", "hash:ip,port", {"10.9.0.5,tcp:80"})], mirror=frozenset({"natrip", "nat"}))
    ((reqs, what),) = sent
    assert [(r.msg_type, r.family) for r in reqs] == [
        (nftelements.NFT_MSG_NEWSETELEM, nfnlbatch.NFPROTO_IPV4), (nftelements.NFT_MSG_NEWSETELEM, nfnlbatch.NFPROTO_NETDEV),
        (nftelements.NFT_MSG_NEWSETELEM, nfnlbatch.NFPROTO_IPV4),
        (nftelements.NFT_MSG_DELSETELEM, nfnlbatch.NFPROTO_IPV4), (nftelements.NFT_MSG_DELSETELEM, nfnlbatch.NFPROTO_NETDEV)]
    assert reqs[0].body == reqs[1].body  # the same message, for the other family's table of that name
    assert "netdev lbd-q3" in what


@pytest.mark.parametrize("argv, message", [
    (["--nat-replies", "ingress", "--steer-hook", "prerouting"], "goes with --steering nftables --steer-hook input"),
    (["--nat-replies", "ingress", "--steering", "iptables"], "goes with --steering nftables --steer-hook input"),
    (["--nat-replies", "ingress", "--engine", "python"], "needs the C engine"),
])
def test_the_option_is_refused_where_it_cannot_work(argv: list[str], message: str,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(argv)
    assert message in capsys.readouterr().err


def test_the_default_is_ingress_where_it_works_and_forward_elsewhere() -> None:
    from lb.daemon import make_rules

    assert parse_args([]).nat_replies == "ingress"
    for argv in (["--engine", "python"], ["--steer-hook", "prerouting"], ["--steering", "iptables"],
                 ["--no-steering"], ["--nat-replies", "forward"]):
        assert parse_args(argv).nat_replies == "forward", argv
    rules = make_rules(parse_args([]))
    assert rules.nat_replies == "ingress" and rules.ingress is not None
    assert rules.ingress.tx == "lbnr0"
    assert make_rules(parse_args(["--nat-replies", "forward"])).ingress is None
