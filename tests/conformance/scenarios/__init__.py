"""Every conformance scenario, in the order they are played (tests/kernel/README.md).

A new scheduler (issue 13 part 2): its battery (battery.py), plus scenarios of its own where it
has special rules (rr.py, wlc.py show how), appended at the end of ALL. A scenario's index in
ALL fixes its VIP and its client source ports (the same in both systems), so existing scenarios
keep their places.
"""

from __future__ import annotations

from conformance.model import Scenario
from conformance.scenarios import (
    allports,
    battery,
    fragments,
    hashing,
    locality,
    nat,
    natports,
    persistence,
    roundtrip,
    rr,
    sched_list,
    tooling,
    ttl,
    twos,
    wlc,
)

ALL: tuple[Scenario, ...] = (*rr.SCENARIOS, *wlc.SCENARIOS, *persistence.SCENARIOS, *tooling.SCENARIOS,
                             *roundtrip.SCENARIOS, *battery.SCENARIOS)
ALL += sched_list.SCENARIOS
ALL += (*locality.SCENARIOS, *twos.SCENARIOS)
ALL += (*battery.HASHING, *hashing.SCENARIOS)
ALL += nat.SCENARIOS  # NAT (issue 14): the real servers' NAT addresses, runner.spec()
ALL += allports.SCENARIOS
ALL += ttl.SCENARIOS  # TTL decremented by every method (issue 16 item 9)
ALL += fragments.SCENARIOS  # datagrams larger than the MTU (issue 14)
ALL += natports.SCENARIOS  # NAT under port-zero and fwmark services, -o with NAT (issue 14)

_names = [s.name for s in ALL]
if len(set(_names)) != len(_names):
    raise ValueError(f"duplicate scenario names: {sorted(n for n in _names if _names.count(n) > 1)}")
