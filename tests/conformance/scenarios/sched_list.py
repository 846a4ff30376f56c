"""The list-scanning schedulers wrr, lc, sed, nq, fo, ovf: what is special to each (their
standard battery is in battery.py), and OVERLOAD with -x/-y under wlc and lc.

Released connections stay in the director's table (FIN_WAIT, inactive) until they expire, and
Debian 6.1.192 counts them in totalconns: the OVERLOAD scenarios shorten the FIN_WAIT timeout
(`--set 0 3 0`) and Wait for the expiry, then restore it (120 s).
"""

from __future__ import annotations

from conformance.model import CLIENTS, Admin, Connect, Hold, Listing, Release, Scenario, Udp, Wait
from conformance.scenarios.rr import rules


def _held(sched: str, weights: tuple[int, ...]) -> Scenario:
    return Scenario(
        name=f"{sched}-held",
        why=f"{sched} over connections held open (active) and closed ones (inactive), weights {weights}",
        rules=rules(sched, weights=weights),
        steps=(Hold(6, group="a", clients=CLIENTS),
               Listing("-Ln"),
               Connect(4, clients=CLIENTS),
               Hold(4, group="b", clients=CLIENTS),
               Listing("-Ln"),
               Release("a"),
               Hold(5, group="c", clients=CLIENTS),
               Listing("-Ln"),
               Release("b"), Release("c"),
               Connect(4, clients=CLIENTS),
               Listing("-Ln")),
    )


def _thresholds(sched: str, rs1: str) -> str:
    return (f"-A -t {{vip}}:80 -s {sched}\n-a -t {{vip}}:80 -r {{rs1}}:80 -g {rs1}\n"
            "-a -t {vip}:80 -r {rs2}:80 -g -w 1\n")


SCENARIOS = (
    Scenario(
        name="wrr-432-edit-delete",
        why="wrr 4/3/2 (list rs3, rs2, rs1): ABC then cw from 4 down; a no-op edit, a weight edit, a "
            "deletion and a re-add each send the cursor back to the list head",
        rules=rules("wrr", weights=(4, 3, 2)),
        steps=(Connect(12, kernel_counts={"rs1": 5, "rs2": 4, "rs3": 3}),
               Admin("-e -t {vip}:80 -r {rs2}:80 -g -w 3"),
               Connect(5),
               Admin("-e -t {vip}:80 -r {rs1}:80 -g -w 1"),
               Connect(6),
               Admin("-d -t {vip}:80 -r {rs3}:80"),
               Connect(6),
               Admin("-a -t {vip}:80 -r {rs3}:80 -g -w 2"),
               Connect(7),
               Listing("-Ln")),
    ),
    _held("lc", (1, 2, 3)),
    _held("sed", (1, 2, 3)),
    # nq: each idle server first, in list order (rs3, rs2, rs1), whatever its weight
    _held("nq", (1, 2, 3)),
    Scenario(
        name="fo-weight-changes",
        why="fo: everything to the heaviest; weight edits move it at once, the list head wins a tie, "
            "weight 0 and deletion fail over to the next heaviest",
        rules=rules("fo", weights=(1, 3, 2)),
        steps=(Connect(4, clients=CLIENTS, kernel_counts={"rs2": 4}),
               Admin("-e -t {vip}:80 -r {rs3}:80 -g -w 5"),
               Connect(3, kernel_counts={"rs3": 3}),
               Admin("-e -t {vip}:80 -r {rs1}:80 -g -w 5"),
               Connect(3, kernel_counts={"rs3": 3}),
               Admin("-e -t {vip}:80 -r {rs3}:80 -g -w 0"),
               Connect(3, kernel_counts={"rs1": 3}),
               Admin("-d -t {vip}:80 -r {rs1}:80"),
               Connect(3, kernel_counts={"rs2": 3}),
               Listing("-Ln")),
    ),
    Scenario(
        name="ovf-held-reaching-weights",
        why="ovf: held connections fill the heaviest until its active connections exceed its weight "
            "(weight + 1), then the next; closed ones (inactive) free it again",
        rules=rules("ovf", weights=(1, 2, 3)),
        steps=(Hold(9, group="a", clients=CLIENTS, kernel_counts={"rs3": 4, "rs2": 3, "rs1": 2}),
               Listing("-Ln"),
               Release("a"),
               Hold(5, group="b", clients=CLIENTS, kernel_counts={"rs3": 4, "rs2": 1}),
               Admin("-e -t {vip}:80 -r {rs1}:80 -g -w 9"),
               Hold(3, group="c", kernel_counts={"rs1": 3}),
               Listing("-Ln"),
               Release("b"), Release("c")),
    ),
    Scenario(
        name="overload-wlc-thresholds",
        why="wlc, rs1 -w 100 -x 4 -y 2: OVERLOAD set by the connection reaching 4, kept at 3 (between the "
            "thresholds: expired connections still leave it flagged), cleared by the expiry from 2 to 1; an "
            "edit changing a threshold re-evaluates it at once",
        rules=_thresholds("wlc", "-w 100 -x 4 -y 2"),
        steps=(Admin("--set 0 3 0"),
               Hold(2, group="a", kernel_counts={"rs2": 1, "rs1": 1}),
               Hold(3, group="b", kernel_counts={"rs1": 3}),
               Listing("-Ln --thresholds"),
               Hold(2, group="c", kernel_counts={"rs2": 2}),
               Release("a"), Wait(6),
               Listing("-Ln"),
               Hold(2, group="d", kernel_counts={"rs2": 2}),
               Release("b"), Wait(6),
               Listing("-Ln"),
               Hold(5, group="e", kernel_counts={"rs1": 4, "rs2": 1}),
               Admin("-e -t {vip}:80 -r {rs1}:80 -g -w 100 -x 6 -y 5"),
               Hold(3, group="f", kernel_counts={"rs1": 2, "rs2": 1}),
               Admin("-e -t {vip}:80 -r {rs1}:80 -g -w 100 -x 8"),
               Hold(2, group="g", kernel_counts={"rs2": 2}),
               Listing("-Ln --thresholds"),
               Release("c"), Release("d"), Release("e"), Release("f"), Release("g"),
               Admin("--set 0 120 0")),
    ),
    Scenario(
        name="overload-lc-thresholds",
        why="lc, rs1 -x 4 -y 2 (weights play no part): rs1 flagged by its 4th connection, cleared only when "
            "its connections expire below 2; a threshold edit under load",
        rules=_thresholds("lc", "-w 1 -x 4 -y 2"),
        steps=(Admin("--set 0 3 0"),
               Hold(8, group="a", kernel_counts={"rs1": 4, "rs2": 4}),
               Hold(2, group="b", kernel_counts={"rs2": 2}),
               Listing("-Ln"),
               Release("a"), Wait(6),
               Hold(4, group="c"),
               Admin("-e -t {vip}:80 -r {rs1}:80 -g -w 1 -x 2"),
               Hold(2, group="d"),
               Listing("-Ln --thresholds"),
               Release("b"), Release("c"), Release("d"),
               Admin("--set 0 120 0")),
    ),
    Scenario(
        name="wrr-udp-432",
        why="wrr over UDP datagrams (every new source port a new entry), weights 4/3/2",
        rules=rules("wrr", proto="-u", weights=(4, 3, 2)),
        steps=(Udp(12, clients=CLIENTS, kernel_counts={"rs1": 5, "rs2": 4, "rs3": 3}),
               Admin("-e -u {vip}:80 -r {rs3}:80 -g -w 0"),
               Udp(7, clients=CLIENTS),
               Listing("-Ln")),
    ),
)
