"""Port-zero ("all ports") and fwmark services (issue 14 items 2 and 3): ip_vs_service_find's
order (the packet's fwmark, the exact <protocol, VIP, port>, then the VIP's port 0) and
ip_vs_sched_persist's one template per client for every port of the VIP (port 0) or every VIP,
port and protocol of the mark (fwmark), TCP and UDP."""

from __future__ import annotations

from conformance.model import Connect, Listing, Scenario, Udp

SCENARIOS = (
    Scenario(
        name="port0-persistent-all-ports",
        why="-A -t VIP:0 -p: every port of the VIP without an exact service goes to it; one template per "
            "client covers all of them (the same real server on 8080 and 8443); the exact VIP:80 service "
            "wins its port; a UDP VIP:0 service likewise; -Lnc lists the templates VIP:0 -> RIP:0 and each "
            "connection to the port the client asked for",
        rules=("-A -t {vip}:0 -s rr -p 300\n"
               + "".join(f"-a -t {{vip}}:0 -r {{rs{i}}} -g -w 1\n" for i in (1, 2, 3))
               + "-A -t {vip}:80 -s rr\n-a -t {vip}:80 -r {rs1}:80 -g -w 1\n"
               + "-A -u {vip}:0 -s rr -p 300\n"
               + "".join(f"-a -u {{vip}}:0 -r {{rs{i}}} -g -w 1\n" for i in (1, 2, 3))),
        extra_ports=(8080, 8443),
        steps=(Listing("-Ln"),
               Connect(4, clients=("c1", "c2", "c3"), port=8080),
               Connect(4, clients=("c1", "c2", "c3"), port=8443),
               Connect(2, clients=("c1", "c2")),
               Udp(3, clients=("c1", "c2", "c3"), port=8080),
               Udp(3, clients=("c1", "c2", "c3"), port=8443),
               Listing("-Ln"), Listing("-Ln --stats"), Listing("-Lnc")),
    ),
    Scenario(
        name="fwmark-two-vips-persistent",
        why="the operator's mangle MARK rules put two VIPs (TCP and UDP) into one -f 1 -p service: one "
            "template per client (IP 0.0.0.1:0) for both VIPs, connections to the port asked for, "
            "FWM  1 in -Ln",
        rules=("-A -f 1 -s rr -p 300\n"
               + "".join(f"-a -f 1 -r {{rs{i}}} -g -w 1\n" for i in (1, 2, 3))),
        extra_vips=1,
        marks=tuple(f"-d {{{v}}}/32 -p {p} -m {p} --dport 80 -j MARK --set-mark 1"
                    for v in ("vip", "vip2") for p in ("tcp", "udp")),
        steps=(Listing("-Ln"),
               Connect(6, clients=("c1", "c2", "c3"), vips=("vip", "vip2")),
               Udp(4, clients=("c1", "c2"), vips=("vip", "vip2")),
               Listing("-Ln"), Listing("-Ln --stats"), Listing("-Lnc")),
    ),
)
