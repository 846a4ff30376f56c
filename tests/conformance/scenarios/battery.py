"""The standard battery for one scheduler: what every scheduler of issue 13 part 2 must survive
identically to the kernel. Adding a scheduler's comparison is one line in SCENARIOS below, e.g.
`*battery("wrr")`, `*battery("sh", "sh-port")`, `*battery("mh", "mh-fallback,mh-port")`.
(`twos` is random in the kernel: compare its distribution, not its sequence; not this battery.)

TCP, four real servers of weights 1/2/3/1 (`weights=` to change), flows from four client
addresses, each with its own source port: fresh connections; connections held open; weight 0
on rs2 (quiesce); rs3 deleted; fresh connections; rs3 re-added with another weight; more held;
everything released; fresh connections again; listings between. UDP: datagrams from new
source ports and four addresses, then one server at weight 0.
"""

from __future__ import annotations

from conformance.model import CLIENTS, Admin, Connect, Hold, Listing, Release, Scenario, Udp


def _service(proto: str, sched: str, flags: str, weights: tuple[int, ...]) -> str:
    lines = [f"-A {proto} {{vip}}:80 -s {sched}" + (f" -b {flags}" if flags else "")]
    lines += [f"-a {proto} {{vip}}:80 -r {{rs{i}}}:80 -g -w {w}" for i, w in enumerate(weights, 1)]
    return "\n".join(lines) + "\n"


def battery(sched: str, flags: str = "", weights: tuple[int, int, int, int] = (1, 2, 3, 1)) -> tuple[Scenario, ...]:
    name = sched + (f"-{flags.replace(',', '-')}" if flags else "")
    tcp = Scenario(
        name=f"battery-{name}-tcp",
        why=f"{sched} {flags}: fresh and held connections from 4 clients, quiesce, delete and re-add",
        rules=_service("-t", sched, flags, weights),
        steps=(Connect(8, clients=CLIENTS),
               Hold(8, group="a", clients=CLIENTS),
               Listing("-Ln"),
               Admin("-e -t {vip}:80 -r {rs2}:80 -g -w 0"),
               Connect(8, clients=CLIENTS),
               Admin("-d -t {vip}:80 -r {rs3}:80"),
               Connect(8, clients=CLIENTS),
               Listing("-Ln"),
               Admin("-a -t {vip}:80 -r {rs3}:80 -g -w 2"),
               Hold(8, group="b", clients=CLIENTS),
               Listing("-Ln"),
               Release("a"), Release("b"),
               Connect(8, clients=CLIENTS),
               Listing("-Ln"), Listing("-Lnc")),
    )
    udp = Scenario(
        name=f"battery-{name}-udp",
        why=f"{sched} {flags}: UDP datagrams from new source ports of 4 clients, then a weight 0",
        rules=_service("-u", sched, flags, weights),
        steps=(Udp(12, clients=CLIENTS),
               Admin("-e -u {vip}:80 -r {rs1}:80 -g -w 0"),
               Udp(8, clients=CLIENTS),
               Listing("-Ln"), Listing("-Lnc")),
    )
    return tcp, udp


SCENARIOS = (*battery("rr"), *battery("wlc"))
SCENARIOS += battery("wrr")
SCENARIOS += battery("lc")
SCENARIOS += battery("sed")
SCENARIOS += battery("nq")
SCENARIOS += battery("fo")
# ovf refuses (ICMP) once every server holds weight + 1 active connections: 1/2/3/1 has no room
# for the battery's 16 held ones; 4/5/1/3 leaves 2 and still overflows through all four servers.
SCENARIOS += battery("ovf", weights=(4, 5, 1, 3))
SCENARIOS += battery("lblc")
SCENARIOS += battery("lblcr")

# The hashing schedulers' batteries (sh, dh, mh with and without their flags): ALL plays them after
# every other scheduler's scenarios (a scenario's position fixes its VIP and client ports).
HASHING = (*battery("sh"), *battery("sh", "sh-fallback,sh-port"), *battery("dh"),
           *battery("mh"), *battery("mh", "mh-fallback,mh-port"))
