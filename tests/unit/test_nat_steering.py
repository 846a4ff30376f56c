"""NAT (masquerading) steering without privileges: the real servers' replies and ICMP errors are
two ip sets of their own (lb.ipsets NAT, NATRIP), tested before the address pre-filter, and the
director asks for exactly its NAT destinations."""

from __future__ import annotations

from lb import ipsets as ips
from lb import iptlayout as iptl
from lb.director import Director
from lb.pyengine import PyEngine

TCP, UDP = 6, 17


def _prefilter(rules: list[str]) -> int:
    """Index of the address pre-filter (not the first rule, which also tests natrip)."""
    return rules.index("-A LBD-Q3 -m set ! --match-set lbd-q3-addr dst -j RETURN")


def test_nat_reply_elements_are_the_real_servers_source_and_icmp_per_real_server() -> None:
    st = ips.Steering(nat_replies={(TCP, "10.1.0.11", 8080), (UDP, "10.1.0.11", 53), (TCP, "10.1.0.12", 0)})
    el = st.elements()
    assert el[ips.NAT] == {"10.1.0.11,tcp:8080", "10.1.0.11,udp:53"}  # a port-less destination has no reply port
    assert el[ips.NATRIP] == {"10.1.0.11", "10.1.0.12"}
    assert not el[ips.ADDR]  # replies are addressed to clients: nothing joins the pre-filter


def test_nat_rules_come_before_the_address_prefilter_and_skip_local_traffic() -> None:
    rules = iptl.chain_rules(3)
    prefilter = _prefilter(rules)
    nat = [i for i, r in enumerate(rules) if "-m set --match-set lbd-q3-nat " in r or "-m set --match-set lbd-q3-natrip " in r]
    assert len(nat) == 2 and max(nat) < prefilter, rules
    assert all("-m addrtype ! --dst-type LOCAL" in rules[i] for i in nat)
    assert "-p icmp -m set --match-set lbd-q3-natrip src " in rules[nat[1]]


def test_director_steers_nat_replies_per_real_server_port() -> None:
    d = Director(PyEngine(conn_max=16), rules=None, resolver=None)
    web = {"proto": "tcp", "addr": "10.0.0.100", "port": 80}
    dns = {"proto": "udp", "addr": "10.0.0.100", "port": 53}
    for svc in (web, dns):
        d.handle("add_service", {**svc, "sched": "rr"})
    for addr, port, svc in (("10.1.0.11", 8080, web), ("10.1.0.12", 8080, web), ("10.1.0.11", 53, dns)):
        d.handle("add_dest", {"service": svc, "dest": {"addr": addr, "port": port, "fwd": "masq", "weight": 1,
                                                        "u_threshold": 0, "l_threshold": 0}})
    d.handle("add_dest", {"service": web, "dest": {"addr": "10.1.0.13", "port": 80, "fwd": "route", "weight": 1,
                                                    "u_threshold": 0, "l_threshold": 0}})
    assert d.steering().nat_replies == {(TCP, "10.1.0.11", 8080), (TCP, "10.1.0.12", 8080), (UDP, "10.1.0.11", 53)}


def test_port_less_nat_destinations_are_steered_by_address_per_protocol() -> None:
    """A NAT destination reached on the client's port (no port, or under a persistent port-zero or
    fwmark service) answers from any port: its RIP goes to the protocol's nattcp0 / natudp0 set."""
    assert ips.nat_reply_port(80, False, 8080) == 8080  # a fixed port
    assert ips.nat_reply_port(80, True, 8080) == 8080  # persistence on a service with a port changes nothing
    assert ips.nat_reply_port(0, False, 0) == 0  # no port: the client's (ip_vs_schedule)
    assert ips.nat_reply_port(0, True, 8080) == 0  # persistent port-zero / fwmark: the client's (ip_vs_sched_persist)
    assert ips.nat_reply_port(0, False, 8080) == 8080  # a non-persistent fwmark service keeps the port
    st = ips.Steering(nat_replies={(TCP, "10.1.0.11", 0), (UDP, "10.1.0.12", 0), (TCP, "10.1.0.13", 80)})
    el = st.elements()
    assert el[ips.NATTCP0] == {"10.1.0.11"} and el[ips.NATUDP0] == {"10.1.0.12"}
    assert el[ips.NAT] == {"10.1.0.13,tcp:80"}
    assert el[ips.NATRIP] == {"10.1.0.11", "10.1.0.12", "10.1.0.13"}


def test_port_less_nat_rules_match_the_source_per_protocol_before_the_prefilter() -> None:
    rules = iptl.chain_rules(3)
    prefilter = _prefilter(rules)
    for proto in ("tcp", "udp"):
        (i,) = [i for i, r in enumerate(rules) if f"lbd-q3-nat{proto}0 " in r]
        assert i < prefilter and f"-p {proto} -m set --match-set lbd-q3-nat{proto}0 src " in rules[i]
        assert "-m addrtype ! --dst-type LOCAL" in rules[i]


def test_director_steers_port_less_nat_destinations_of_fwmark_and_port_zero_services() -> None:
    d = Director(PyEngine(conn_max=16), rules=None, resolver=None)
    nat = {"fwd": "masq", "weight": 1, "u_threshold": 0, "l_threshold": 0}
    d.handle("add_service", {"fwmark": 5, "sched": "rr"})
    d.handle("add_dest", {"service": {"fwmark": 5}, "dest": {"addr": "10.1.0.11", "port": 0, **nat}})
    d.handle("add_dest", {"service": {"fwmark": 5}, "dest": {"addr": "10.1.0.12", "port": 8080, **nat}})
    p0 = {"proto": "udp", "addr": "10.0.0.100", "port": 0}
    d.handle("add_service", {**p0, "sched": "rr", "persistent": 300})
    d.handle("add_dest", {"service": p0, "dest": {"addr": "10.1.0.13", "port": 53, **nat}})
    assert d.steering().nat_replies == {(TCP, "10.1.0.11", 0), (UDP, "10.1.0.11", 0), (TCP, "10.1.0.12", 8080),
                                        (UDP, "10.1.0.12", 8080), (UDP, "10.1.0.13", 0)}
    d.handle("edit_service", {"fwmark": 5, "sched": "rr", "persistent": 60})  # now the client's port for all
    assert (TCP, "10.1.0.12", 0) in d.steering().nat_replies


def test_port_less_fullnat_destinations_are_steered_by_address_per_protocol() -> None:
    """FULLNAT to the client's port: the replies come from RIP:<any port> to the local address, which
    joins the pre-filter; the RIP goes to the protocol's fnattcp0 / fnatudp0 set (no RIP,LIP pair set:
    hash:net,net is not in every kernel)."""
    st = ips.Steering(fnat_replies={(TCP, "10.1.0.11", 0, "10.2.0.1"), (UDP, "10.1.0.12", 0, "10.2.0.1"),
                                    (TCP, "10.1.0.13", 80, "10.2.0.2")})
    el = st.elements()
    assert el[ips.FNATTCP0] == {"10.1.0.11"} and el[ips.FNATUDP0] == {"10.1.0.12"}
    assert el[ips.FNAT] == {"10.1.0.13,tcp:80,10.2.0.2"}
    assert el[ips.ADDR] == {"10.2.0.1", "10.2.0.2"}
    rules = iptl.chain_rules(3)
    prefilter = _prefilter(rules)
    for proto in ("tcp", "udp"):
        (i,) = [i for i, r in enumerate(rules) if f"lbd-q3-fnat{proto}0 " in r]
        assert i > prefilter and f"-p {proto} -m set --match-set lbd-q3-fnat{proto}0 src " in rules[i]


def test_director_steers_fullnat_of_a_fwmark_service_for_both_protocols() -> None:
    d = Director(PyEngine(conn_max=16), rules=None, resolver=None)
    d.handle("add_service", {"fwmark": 5, "sched": "rr", "persistent": 300})
    d.handle("add_laddr", {"service": {"fwmark": 5}, "addr": "10.2.0.1"})
    d.handle("add_dest", {"service": {"fwmark": 5}, "dest": {"addr": "10.1.0.11", "port": 0, "fwd": "fullnat",
                                                              "weight": 1, "u_threshold": 0, "l_threshold": 0}})
    st = d.steering()
    assert st.fnat_replies == {(TCP, "10.1.0.11", 0, "10.2.0.1"), (UDP, "10.1.0.11", 0, "10.2.0.1")}
    assert "10.2.0.1" in st.elements()[ips.ADDR]


def test_routed_traffic_leaves_at_the_first_rule_and_natrip_covers_every_nat_rule_source() -> None:
    """The first rule returns what is neither to an address of the pre-filter nor from natrip. That
    skips the four NAT rules only because natrip holds the source address of every element they
    match (NAT rip,proto:port, nattcp0, natudp0): checked here for fixed and port-less NAT
    destinations of both protocols."""
    rules = iptl.chain_rules(3)
    assert rules[0] == "-A LBD-Q3 -m set ! --match-set lbd-q3-addr dst -m set ! --match-set lbd-q3-natrip src -j RETURN"
    nat_rules = [i for i, r in enumerate(rules) if "addrtype ! --dst-type LOCAL" in r]
    assert nat_rules == [1, 2, 3, 4] and _prefilter(rules) == 5
    st = ips.Steering(nat_replies={(TCP, "10.1.0.11", 8080), (UDP, "10.1.0.12", 53), (TCP, "10.1.0.13", 0),
                                   (UDP, "10.1.0.14", 0), (TCP, "10.1.0.14", 80)})
    el = st.elements()
    sources = {e.split(",")[0] for e in el[ips.NAT]} | el[ips.NATTCP0] | el[ips.NATUDP0]
    assert sources == {"10.1.0.11", "10.1.0.12", "10.1.0.13", "10.1.0.14"} and sources <= el[ips.NATRIP]
