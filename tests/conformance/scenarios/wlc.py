"""Weighted least-connection: held connections, weight edits, SYN_RECV accounting."""

from __future__ import annotations

from conformance.model import Admin, Connect, Hold, Listing, Release, Scenario
from conformance.scenarios.rr import rules

SCENARIOS = (
    Scenario(
        name="wlc-held-weights-123",
        why="wlc over connections held open (all active), weights 1/2/3: 2/4/6; then released "
            "(inactive) and fresh ones",
        rules=rules("wlc", weights=(1, 2, 3)),
        steps=(Hold(12, kernel_counts={"rs1": 2, "rs2": 4, "rs3": 6}),
               Listing("-Ln"), Listing("-Lnc"),
               Release(),
               Listing("-Ln"),
               Connect(6),
               Listing("-Ln")),
    ),
    Scenario(
        name="wlc-weight-edit",
        why="wlc after -e changes a weight while connections are held",
        rules=rules("wlc"),
        steps=(Hold(6, group="a"),
               Admin("-e -t {vip}:80 -r {rs1}:80 -g -w 3"),
               Hold(6, group="b"),
               Listing("-Ln"),
               Release("a"),
               Admin("-e -t {vip}:80 -r {rs3}:80 -g -w 0"),
               Hold(6, group="c"),
               Listing("-Ln"),
               Release("b"), Release("c")),
    ),
    Scenario(
        name="wlc-syn-refused",
        why="a real server that refuses every SYN (RST): its entries stay in SYN_RECV, which "
            "kernel 6.1 counts as active (tcp_state_active), so wlc spreads 3/3 (issue 13, Also)",
        rules=rules("wlc", weights=(1, 1)),
        refuse=("rs2",),
        steps=(Hold(6, kernel_counts={"rs1": 3, "refused:rs2": 3}),
               Listing("-Ln"), Listing("-Lnc"),
               Release()),
    ),
)
