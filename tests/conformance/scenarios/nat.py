"""NAT (masquerading, -m): the real servers' NAT addresses ({nrs1}..) route their replies through the
director (runner.spec()), so both directions pass it and both drive the TCP state machine (the
OUTPUT table for the real server's side); the TCP service translates its port (80 -> 8080)."""

from __future__ import annotations

from conformance.model import Admin, Connect, Hold, Listing, Release, Scenario, Udp, Wait

RULES = """\
-A -t {vip}:80 -s rr
-a -t {vip}:80 -r {nrs1}:8080 -m -w 1
-a -t {vip}:80 -r {nrs2}:8080 -m -w 1
-A -u {vip}:80 -s rr
-a -u {vip}:80 -r {nrs1}:80 -m -w 1
-a -u {vip}:80 -r {nrs2}:8080 -m -w 1
"""

SCENARIOS = (
    Scenario(
        name="nat",
        why="NAT with port translation: the same real servers, the same -Ln counts and -Lnc states after "
            "open, closed (client FIN first: CLOSE_WAIT, then TIME_WAIT on the real server's FIN) and reset "
            "connections (a real server port nobody listens on: its RST closes the entry), UDP both ways, "
            "and the real server's ICMP port unreachable translated back to the client",
        rules=RULES,
        steps=(Listing("-Ln"),
               Connect(4, clients=("c1", "c2"), kernel_counts={"rs1": 2, "rs2": 2}),
               Hold(2, clients=("c3",)),
               Listing("-Ln"), Listing("-Lnc"),
               Release(),
               Udp(4, kernel_counts={"rs1": 2, "rs2": 2}),
               Listing("-Ln"), Listing("-Lnc"),
               Admin("-d -t {vip}:80 -r {nrs1}:8080"),
               Admin("-d -t {vip}:80 -r {nrs2}:8080"),
               Admin("-a -t {vip}:80 -r {nrs3}:8081 -m -w 1"),
               Connect(2, clients=("c4",)),
               # The reset entries are CLOSE for 10 s: listed at once, then gone from both systems
               # before the last listings (under emulation the UDP steps may outlast them in one).
               Listing("-Lnc"), Listing("-Ln"),
               Wait(11),
               Admin("-d -u {vip}:80 -r {nrs1}:80"),
               Admin("-d -u {vip}:80 -r {nrs2}:8080"),
               Admin("-a -u {vip}:80 -r {nrs4}:8081 -m -w 1"),
               Udp(2, clients=("c4",)),
               Listing("-Ln"), Listing("-Lnc"), Admin("-S -n")),
    ),
)
