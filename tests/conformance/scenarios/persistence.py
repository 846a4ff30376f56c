"""Persistence (-p, -M): templates per client address, ipvsadm's default timeout."""

from __future__ import annotations

from conformance.model import Connect, Listing, Scenario, Udp

THREE_REALS = "".join(f"-a -t {{vip}}:80 -r {{rs{i}}}:80 -g -w 1\n" for i in (1, 2, 3))

SCENARIOS = (
    Scenario(
        name="persist-default-timeout",
        why="-p without a value: ipvsadm's default is 360 s; one template per client address, "
            "and the template's state in -Lnc",
        rules="-A -t {vip}:80 -s rr -p\n" + THREE_REALS,
        steps=(Listing("-Ln"),
               Connect(3, clients=("c1",)),
               Connect(3, clients=("c2",)),
               Connect(8, clients=("c1", "c2", "c3", "c4")),
               Listing("-Ln"), Listing("-Lnc")),
    ),
    Scenario(
        name="persist-600-netmask",
        why="-p 600 -M 255.255.255.0: every client of the /24 shares one template; UDP too",
        rules=("-A -t {vip}:80 -s wlc -p 600 -M 255.255.255.0\n" + THREE_REALS +
               "-A -u {vip}:80 -s rr -p 600\n" +
               "".join(f"-a -u {{vip}}:80 -r {{rs{i}}}:80 -g -w 1\n" for i in (1, 2, 3))),
        steps=(Listing("-Ln"),
               Connect(8, clients=("c1", "c2", "c3", "c4")),
               Udp(6, clients=("c1", "c2", "c3")),
               Listing("-Ln"), Listing("-Lnc")),
    ),
)
