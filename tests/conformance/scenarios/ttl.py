"""TTL (issue 16 item 9): the kernel's __ip_vs_get_out_rt decrements the TTL (decrement_ttl) for every
destination that is not local, whatever the method, and answers a packet whose TTL runs out with ICMP
time exceeded. The real servers report the TTL their datagrams arrived with (traffic.RealServers:
IP_RECVTTL); a datagram sent with TTL 1 gets the director's ICMP error back (IP_RECVERR)."""

from __future__ import annotations

from conformance.model import Scenario, Udp

SCENARIOS = (
    Scenario(
        name="dr-ttl",
        why="DR decrements the TTL like every IPVS method (TTL 5 arrives as 4), and a TTL of 1 is answered "
            "with ICMP time exceeded from the VIP",
        rules="-A -u {vip}:80 -s rr\n-a -u {vip}:80 -r {rs1}:80 -g -w 1\n",
        steps=(Udp(2, ttl=5, kernel_counts={"rs1 ttl=4": 2}), Udp(1, ttl=1)),
    ),
    Scenario(
        name="nat-ttl",
        why="NAT decrements the TTL of the client's datagram (TTL 5 arrives as 4); TTL 1: ICMP time exceeded",
        rules="-A -u {vip}:80 -s rr\n-a -u {vip}:80 -r {nrs1}:80 -m -w 1\n",
        steps=(Udp(2, ttl=5, kernel_counts={"rs1 ttl=4": 2}), Udp(1, ttl=1)),
    ),
)
