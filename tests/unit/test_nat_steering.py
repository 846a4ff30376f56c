"""NAT (masquerading) steering without privileges: the rule kind of the real servers' replies
(lb.iptables nat_reply_match / nat_icmp_match) and what the director asks for."""

from __future__ import annotations

from lb import iptables as ipt
from lb.director import Director
from lb.iptables import plan_sync, rule_key, rule_pair
from lb.pyengine import PyEngine

TCP, UDP = 6, 17
QUEUE = "-j NFQUEUE --queue-num 3 --queue-bypass"


def test_nat_reply_match_is_the_real_servers_source_towards_non_local_addresses() -> None:
    assert ipt.nat_reply_match(TCP, "10.1.0.11", 8080) == (
        "-s 10.1.0.11/32 -p tcp -m tcp --sport 8080 -m addrtype ! --dst-type LOCAL")
    assert ipt.nat_reply_match(UDP, "10.1.0.11", 53) == (
        "-s 10.1.0.11/32 -p udp -m udp --sport 53 -m addrtype ! --dst-type LOCAL")
    assert ipt.nat_icmp_match("10.1.0.11") == "-s 10.1.0.11/32 -p icmp -m addrtype ! --dst-type LOCAL"


def test_nat_reply_rules_as_iptables_prints_them_are_in_sync() -> None:
    """iptables -S prints the negation and the address mask its own way: the diff must keep the pair."""
    match = ipt.nat_reply_match(TCP, "10.1.0.11", 8080)
    pair = rule_pair("LBD-Q3", match, QUEUE)
    printed = ["-A LBD-Q3 -s 10.1.0.11/32 -p tcp -m tcp --sport 8080 -m addrtype ! --dst-type LOCAL -j CT --notrack",
               "-A LBD-Q3 -s 10.1.0.11/32 -p tcp -m tcp --sport 8080 -m addrtype ! --dst-type LOCAL " + QUEUE]
    assert [rule_key(line) for line in pair.lines] == [rule_key(line) for line in printed]
    assert plan_sync(printed, [pair]).empty


def test_director_steers_nat_replies_per_real_server_port_and_icmp_per_real_server() -> None:
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
    assert sorted(d._nat_reply_matches()) == sorted([
        ipt.nat_reply_match(TCP, "10.1.0.11", 8080), ipt.nat_reply_match(TCP, "10.1.0.12", 8080),
        ipt.nat_reply_match(UDP, "10.1.0.11", 53), ipt.nat_icmp_match("10.1.0.11"), ipt.nat_icmp_match("10.1.0.12")])
