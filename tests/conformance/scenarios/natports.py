"""NAT destinations under port-zero and fwmark services, and one-packet scheduling (-o) with NAT
(issue 14). A NAT real server without a port, and under a persistent service one with a port too,
is reached on the port the client asked for (ip_vs_sched_persist: the connection's port is the
packet's unless it is the service's own, which port 0 and a fwmark service never are); a
non-persistent fwmark service takes the destination's port when it has one, else the client's
(ip_vs_schedule). Its answers come back through the director, rewritten to VIP:port. With -o the
kernel keeps no connection (IP_VS_CONN_F_ONE_PACKET, never hashed): the real server's answer finds
no entry and is forwarded as it is, from RIP:port. The real servers' NAT addresses answer on ports
80, 8080 and the scenarios' extra ports (runner.run).

Packet and byte counters (--stats) are compared for UDP services only: a TCP connection's packet
count depends on timing, not on the director (whether the real server's ACK of the client's FIN
rides on its own FIN depends on how fast its application closes; under emulation it varies from run
to run, through kernel IPVS as through lbd), while its connection counts and states (-Ln, -Lnc)
do not."""

from __future__ import annotations

from conformance.model import Admin, Connect, Hold, Listing, Release, Scenario, Udp

SCENARIOS = (
    Scenario(
        name="port0-persistent-nat",
        why="-A VIP:0 -p with NAT real servers without a port and one with a port (-r RIP:8080): TCP and UDP "
            "to ports 80, 8080 and 8443 of the VIP reach each client's one real server on the port asked "
            "for, answered through the director; the same -Ln, --stats and -Lnc (templates VIP:0 -> RIP:0 "
            "or RIP:8080, connections VIP:port -> RIP:port), also for a 3,000-byte datagram",
        rules=("-A -t {vip}:0 -s rr -p 300\n"
               "-a -t {vip}:0 -r {nrs1} -m -w 1\n"
               "-a -t {vip}:0 -r {nrs2} -m -w 1\n"
               "-a -t {vip}:0 -r {nrs3}:8080 -m -w 1\n"
               "-A -u {vip}:0 -s rr -p 300\n"
               "-a -u {vip}:0 -r {nrs1}:8080 -m -w 1\n"
               "-a -u {vip}:0 -r {nrs2} -m -w 1\n"
               "-a -u {vip}:0 -r {nrs3} -m -w 1\n"),
        extra_ports=(8080, 8443),
        steps=(Listing("-Ln"),
               Connect(3, clients=("c1", "c2", "c3"), kernel_counts={"rs1": 1, "rs2": 1, "rs3": 1}),
               Connect(3, clients=("c1", "c2", "c3"), port=8080),
               Connect(3, clients=("c1", "c2", "c3"), port=8443),
               Hold(3, clients=("c1", "c2", "c3")),
               Udp(3, clients=("c1", "c2", "c3"), kernel_counts={"rs1": 1, "rs2": 1, "rs3": 1}),
               Udp(3, clients=("c1", "c2", "c3"), port=8080),
               Udp(3, clients=("c1", "c2", "c3"), port=8443, size=3000),
               Listing("-Ln"), Listing("-Lnc"),
               Release(),
               Listing("-Ln --stats -u {vip}:0"), Listing("-Lnc")),
    ),
    Scenario(
        name="fwmark-nat",
        why="the operator's mangle MARK rules: mark 2 (TCP and UDP to ports 80 and 8080) a persistent fwmark "
            "service with NAT real servers with and without a port, marks 3 (UDP) and 4 (TCP to port 8443) "
            "non-persistent ones (-r RIP:8080 reached on 8080, -r RIP on the client's port): the same real "
            "servers, the same -Ln, -Lnc and, for the UDP service, --stats",
        rules=("-A -f 2 -s rr -p 300\n"
               "-a -f 2 -r {nrs1} -m -w 1\n"
               "-a -f 2 -r {nrs2}:8080 -m -w 1\n"
               "-a -f 2 -r {nrs3} -m -w 1\n"
               "-A -f 3 -s rr\n"
               "-a -f 3 -r {nrs1}:8080 -m -w 1\n"
               "-a -f 3 -r {nrs4} -m -w 1\n"
               "-A -f 4 -s rr\n"
               "-a -f 4 -r {nrs1}:8080 -m -w 1\n"
               "-a -f 4 -r {nrs4} -m -w 1\n"),
        extra_ports=(8080, 8443),
        marks=tuple(f"-d {{vip}}/32 -p {p} -m {p} --dport {port} -j MARK --set-mark {mark}"
                    for port, p, mark in ((80, "tcp", 2), (80, "udp", 2), (8080, "tcp", 2), (8080, "udp", 2),
                                          (8443, "udp", 3), (8443, "tcp", 4))),
        steps=(Listing("-Ln"),
               Connect(3, clients=("c1", "c2", "c3"), kernel_counts={"rs1": 1, "rs2": 1, "rs3": 1}),
               Connect(3, clients=("c1", "c2", "c3"), port=8080),
               Udp(3, clients=("c1", "c2", "c3"), kernel_counts={"rs1": 1, "rs2": 1, "rs3": 1}),
               Udp(3, clients=("c1", "c2", "c3"), port=8080),
               Connect(4, clients=("c1", "c2"), port=8443, kernel_counts={"rs1": 2, "rs4": 2}),
               Udp(4, clients=("c3", "c4"), port=8443, kernel_counts={"rs1": 2, "rs4": 2}),
               Listing("-Ln"), Listing("-Ln --stats -f 3"), Listing("-Lnc")),
    ),
    Scenario(
        name="ops-udp-nat",
        why="-o with NAT real servers: every datagram of one flow scheduled afresh, no entry kept (-Lnc "
            "empty), the real server's answer not translated (the client gets it from RIP:port, forwarded "
            "by the director); the same -Ln (ops), --stats (no packets out) and -S",
        rules=("-A -u {vip}:80 -s rr -o\n"
               "-a -u {vip}:80 -r {nrs1}:80 -m -w 1\n"
               "-a -u {vip}:80 -r {nrs2}:8080 -m -w 1\n"),
        steps=(Listing("-Ln"),
               Udp(4, clients=("c1", "c2"), same_port=True, any_source=True,
                   kernel_counts={"rs1 from nrs1:80": 2, "rs2 from nrs2:8080": 2}),
               Udp(2, clients=("c3",), any_source=True),
               Listing("-Ln"), Listing("-Ln --stats"), Listing("-Lnc"), Admin("-S -n")),
    ),
)
