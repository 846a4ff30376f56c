"""`-S -n` of one tool restored by the other (`ipvsadm -S -n | lbadm -R` and back)."""

from __future__ import annotations

from conformance.model import Admin, Listing, Output, Scenario, System

PLAIN = """\
-A -t {vip}:80 -s wlc -p 120 -M 255.255.255.0
-a -t {vip}:80 -r {rs1}:80 -g -w 2
-a -t {vip}:80 -r {rs2}:80 -i -w 3
-A -t {vip}:443 -s rr -p
-a -t {vip}:443 -r {rs3}:443 -g -w 0
-A -u {vip}:53 -s rr
-a -u {vip}:53 -r {rs1}:53 -g -w 1
-a -u {vip}:53 -r {rs4}:5353 -i -w 7
"""

SCHED_FLAGS = """\
-A -t {vip}:80 -s sh -b sh-port
-a -t {vip}:80 -r {rs1}:80 -g -w 1
-a -t {vip}:80 -r {rs2}:80 -g -w 1
-A -t {vip}:8080 -s rr
-a -t {vip}:8080 -r {rs3}:8080 -g -w 1
"""


def round_trip(name: str, rules: str, saver: System, why: str) -> Scenario:
    """Both systems restore `rules` and save (compared); then both restore what `saver` saved
    and save again (compared): the other tool's save read back by this one."""
    return Scenario(
        name=name, why=why, rules=rules, first=saver,
        steps=(Admin("-S -n", name="save"),
               Admin("-C"),
               Admin("-R", stdin=Output("save", saver)),
               Admin("-S -n"),
               Listing("-Ln")),
    )


SCENARIOS = (
    round_trip("ipvsadm-save-to-lbadm", PLAIN, "kernel",
               "ipvsadm -S -n | lbadm -R: persistence, netmask, DR and IPIP, TCP and UDP, weight 0"),
    round_trip("lbadm-save-to-ipvsadm", PLAIN, "lbd", "lbadm -S -n | ipvsadm -R, the same table"),
    round_trip("ipvsadm-save-to-lbadm-sched-flags", SCHED_FLAGS, "kernel",
               "ipvsadm's -b is --sched-flags (sh-port): its -S output must restore into lbadm"),
    round_trip("lbadm-save-to-ipvsadm-sched-flags", SCHED_FLAGS, "lbd",
               "lbadm -S -n of a table with scheduler flags must restore into ipvsadm"),
)
