"""Round robin: fresh connections, weight 0 (quiesce), a destination deleted and re-added, UDP."""

from __future__ import annotations

from conformance.model import Admin, Connect, Listing, Scenario, Udp


def rules(sched: str, proto: str = "-t", weights: tuple[int, ...] = (1, 1, 1)) -> str:
    """A service on {vip}:80 with rs1.. as direct-routing destinations of the given weights."""
    lines = [f"-A {proto} {{vip}}:80 -s {sched}"]
    lines += [f"-a {proto} {{vip}}:80 -r {{rs{i}}}:80 -g -w {w}" for i, w in enumerate(weights, 1)]
    return "\n".join(lines) + "\n"


SCENARIOS = (
    Scenario(
        name="rr-fresh",
        why="rr's order over fresh connections, and the counters and entries they leave",
        rules=rules("rr"),
        steps=(Listing("-Ln"),
               Connect(12, kernel_counts={"rs1": 4, "rs2": 4, "rs3": 4}),
               Listing("-Ln"), Listing("-Lnc")),
    ),
    Scenario(
        name="rr-quiesce-delete-readd",
        why="weight 0 takes a server out of rr's turn; a deleted and re-added destination "
            "rejoins the turn (the kernel re-uses it from its trash, counters included)",
        rules=rules("rr"),
        steps=(Connect(4),
               Admin("-e -t {vip}:80 -r {rs2}:80 -g -w 0"),
               Connect(6, kernel_counts={"rs1": 3, "rs3": 3}),
               Listing("-Ln"),
               Admin("-d -t {vip}:80 -r {rs3}:80"),
               Connect(4, kernel_counts={"rs1": 4}),
               Listing("-Ln"),
               Admin("-a -t {vip}:80 -r {rs3}:80 -g -w 1"),
               Connect(6),
               Admin("-e -t {vip}:80 -r {rs2}:80 -g -w 1"),
               Connect(6),
               Listing("-Ln"), Listing("-Lnc")),
    ),
    Scenario(
        name="rr-udp-ports",
        why="UDP: every new source port (and client address) is a new connection entry",
        rules=rules("rr", proto="-u"),
        steps=(Udp(9, kernel_counts={"rs1": 3, "rs2": 3, "rs3": 3}),
               Udp(6, clients=("c1", "c2", "c3")),
               Listing("-Ln"), Listing("-Lnc")),
    ),
)
