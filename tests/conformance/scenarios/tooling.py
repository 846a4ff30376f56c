"""The admin tool's answers where lbadm and ipvsadm are known to have differed (issue 13, Also)."""

from __future__ import annotations

from conformance.model import Admin, Connect, Listing, Scenario

SCENARIOS = (
    Scenario(
        name="weight-70000",
        why="ipvsadm and the kernel take any non-negative int as a weight",
        rules="-A -t {vip}:80 -s wlc\n",
        steps=(Admin("-a -t {vip}:80 -r {rs1}:80 -g -w 70000"),
               Admin("-a -t {vip}:80 -r {rs2}:80 -g -w 65535"),
               Listing("-Ln"),
               Connect(2),
               Listing("-Ln")),
    ),
    Scenario(
        name="thresholds-x10-y20",
        why="a lower threshold above the upper one: the kernel's ERANGE, ipvsadm's message and "
            "exit status",
        rules="-A -t {vip}:80 -s rr\n",
        steps=(Admin("-a -t {vip}:80 -r {rs1}:80 -g -x 10 -y 20"),
               Admin("-a -t {vip}:80 -r {rs2}:80 -g -x 20 -y 10"),
               Listing("-Ln --thresholds"),
               Listing("-Ln")),
    ),
    Scenario(
        name="daemon-listing",
        why="-L --daemon with no sync daemon running",
        rules="",
        steps=(Admin("-L --daemon"), Admin("-Ln --daemon")),
    ),
)
