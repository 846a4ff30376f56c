"""Datagrams larger than the path MTU (issue 14): the client's kernel fragments its 3,000- and
8,000-byte UDP datagrams at the 1,500-byte MTU of "lan". Kernel IPVS reassembles them before
scheduling (ip_vs_gather_frags; for lbd, nf_defrag_ipv4 before the queue) and fragments what it
sends on (ip_fragment; lbd's lb_ip_fragment); the real server reassembles, checks every byte and
answers as large, so DR answers come back fragmented from the real server and NAT answers through
the director (reassembled, translated, fragmented again). Counters count each datagram once, with
its reassembled length."""

from __future__ import annotations

from conformance.model import Listing, Scenario, Udp

SCENARIOS = (
    Scenario(
        name="fragments-udp-dr-nat",
        why="fragmented UDP datagrams (3,000 and 8,000 bytes over a 1,500-byte MTU) through a DR and a NAT "
            "service: the same real servers chosen, each datagram delivered whole to the real server and "
            "its answer, as large, whole to the client; a flow's later big datagrams follow its entry; "
            "the same -Ln --stats (one packet per datagram, reassembled bytes) and -Lnc",
        rules=("-A -u {vip}:80 -s rr\n"
               "-a -u {vip}:80 -r {rs1}:80 -g -w 1\n"
               "-a -u {vip}:80 -r {rs2}:80 -g -w 1\n"
               "-A -u {vip}:8080 -s rr\n"
               "-a -u {vip}:8080 -r {nrs3}:80 -m -w 1\n"
               "-a -u {vip}:8080 -r {nrs4}:8080 -m -w 1\n"),
        extra_ports=(8080,),
        steps=(Listing("-Ln"),
               Udp(4, clients=("c1", "c2"), size=3000, kernel_counts={"rs1 whole": 2, "rs2 whole": 2}),
               Udp(4, clients=("c1", "c2"), size=3000, port=8080, kernel_counts={"rs3 whole": 2, "rs4 whole": 2}),
               Udp(2, clients=("c3",), size=8000),
               Udp(2, clients=("c3",), size=8000, port=8080),
               Udp(3, clients=("c4",), size=1473, same_port=True),
               Udp(3, clients=("c4",), size=3000, port=8080, same_port=True),
               Udp(2, clients=("c1",)),
               Udp(2, clients=("c1",), port=8080),
               Listing("-Ln"), Listing("-Ln --stats"), Listing("-Lnc")),
    ),
)
