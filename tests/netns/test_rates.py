"""`lbadm -Ln --rate` on a live lbd (issue 19: the C engine's rate estimators run in C, stepped by its
timers' thread; the Python engine's are lbd's lb/estimator.py): connections and packets through a DR
service show as rates within a few 2-second steps, only on the service and destinations that carried
them, and `lbadm -Z` brings every rate back to 0, with no bogus delta at the next step.
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING

from lb.testbed.topology import Topology

if TYPE_CHECKING:  # fixtures' types only
    from conftest import HttpHelper, Lbd

HTTP_PORT = 80
RATE_WAIT_S = 12.0  # bound for the rates to show: a step every 2 s, the first within ~3 s of the traffic


def rates(lbd: Lbd, topo: Topology) -> dict[str, tuple[int, ...]]:
    """`lbadm -Ln --rate --exact`: 'svc' and each real server's address -> (CPS, InPPS, OutPPS, InBPS, OutBPS)."""
    out = lbd.lbadm("-L", "-n", "--rate", "--exact").stdout
    got: dict[str, tuple[int, ...]] = {}
    m = re.search(rf"^TCP\s+{re.escape(topo.vip)}:{HTTP_PORT}((?:\s+\d+){{5}})\s*$", out, re.M)
    assert m, out
    got["svc"] = tuple(int(v) for v in m.group(1).split())
    for d in re.finditer(rf"^\s+->\s+([\d.]+):{HTTP_PORT}((?:\s+\d+){{5}})\s*$", out, re.M):
        got[d.group(1)] = tuple(int(v) for v in d.group(2).split())
    return got


def test_rates_show_traffic_and_zero_resets_them(lbd: Lbd, topo: Topology, http: HttpHelper) -> None:
    svc = f"{topo.vip}:{HTTP_PORT}"
    lbd.lbadm("-A", "-t", svc, "-s", "rr")
    rs = topo.reals[0]
    lbd.lbadm("-a", "-t", svc, "-r", f"{rs.addr}:{HTTP_PORT}", "-g")
    lbd.wait_resolved()
    assert rates(lbd, topo)["svc"] == (0, 0, 0, 0, 0)
    deadline = time.monotonic() + RATE_WAIT_S
    seen: dict[str, tuple[int, ...]] = {}
    while time.monotonic() < deadline:  # bounded: ~4 connections a second for at most RATE_WAIT_S
        replies = http.gets(2)
        assert all(r.ok for r in replies), f"{replies}\nlbd log:\n{lbd.log_tail()}"
        seen = rates(lbd, topo)
        if seen["svc"][0] >= 1 and seen["svc"][1] >= 1:
            break
        time.sleep(0.5)
    cps, inpps, outpps, inbps, outbps = seen["svc"]
    assert cps >= 1 and inpps >= 1 and inbps > 0, f"no rates after {RATE_WAIT_S} s of traffic: {seen}"
    assert outpps == 0 and outbps == 0, seen  # DR: the replies do not pass the director
    assert seen[rs.addr][:2] >= (1, 1), seen  # the destination that took them
    lbd.lbadm("-Z")
    assert rates(lbd, topo)["svc"] == (0, 0, 0, 0, 0)
    time.sleep(2.5)  # a step on the zeroed counters (no traffic): still 0, no bogus delta
    after = rates(lbd, topo)
    assert after["svc"] == (0, 0, 0, 0, 0) and after[rs.addr] == (0, 0, 0, 0, 0), after
