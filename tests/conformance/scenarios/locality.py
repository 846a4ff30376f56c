"""lblc and lblcr: the cache keyed by the packet's destination address (here the VIP: one entry per
scenario), which moves (lblc) or grows (lblcr) when its server is busier than its weight while
another is under half its own; an entry naming a server that is deleted and re-added.
(Their 60 s timer and 24 h expiry cannot be waited for here: tests/unit/test_sched_locality.py
drives them in both engines against tests/oracles.)"""

from __future__ import annotations

from conformance.model import Admin, Connect, Hold, Listing, Release, Scenario
from conformance.scenarios.rr import rules

SCENARIOS = (
    Scenario(
        name="lblc-held-moves",
        why="lblc: held connections (active) stay with the entry's server until it has more than "
            "its weight while another has less than half its own, then the entry moves to wlc's "
            "choice; closed connections (inactive) never move it",
        rules=rules("lblc", weights=(1, 1, 1)),
        steps=(Hold(7, kernel_counts={"rs3": 2, "rs2": 2, "rs1": 3}),
               Listing("-Ln"), Listing("-Lnc"),
               Release(),
               Connect(6, kernel_counts={"rs1": 6}),
               Listing("-Ln")),
    ),
    Scenario(
        name="lblcr-held-set-grows",
        why="lblcr: the busy server's set gains wlc's choice instead of losing the server; fresh "
            "connections then go to the least loaded member of the set",
        rules=rules("lblcr", weights=(1, 1, 1)),
        steps=(Hold(7, kernel_counts={"rs3": 2, "rs2": 2, "rs1": 3}),
               Listing("-Ln"),
               Release(),
               Connect(6),
               Hold(4, group="b"),
               Listing("-Ln"), Listing("-Lnc"),
               Release("b")),
    ),
    Scenario(
        name="lblcr-weights-123",
        why="lblcr with weights 1/2/3: the set grows from the heaviest server by overhead per weight",
        rules=rules("lblcr", weights=(1, 2, 3)),
        steps=(Hold(10, kernel_counts={"rs3": 5, "rs2": 3, "rs1": 2}),
               Listing("-Ln"),
               Release(),
               Connect(6),
               Listing("-Ln")),
    ),
    Scenario(
        name="lblc-quiesce-delete-readd",
        why="lblc: a weight-0 server's entry is rescheduled; a server deleted and re-added is the "
            "same one (the cache entry and its connections kept it in the trash), so the entry "
            "naming it is valid again although wlc would choose another",
        rules=rules("lblc", weights=(1, 1, 1)),
        steps=(Hold(2, group="a", kernel_counts={"rs3": 2}),
               Admin("-e -t {vip}:80 -r {rs3}:80 -g -w 0"),
               Connect(2, kernel_counts={"rs2": 2}),
               Admin("-d -t {vip}:80 -r {rs2}:80"),
               Listing("-Ln"),
               Admin("-a -t {vip}:80 -r {rs2}:80 -g -w 1"),
               Connect(2, kernel_counts={"rs2": 2}),
               Listing("-Ln"), Listing("-Lnc"),
               Release("a")),
    ),
)
