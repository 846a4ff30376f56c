"""Every conformance scenario, in the order they are played (tests/kernel/README.md).

A new scheduler (issue 13 part 2): one line in battery.py's SCENARIOS, plus scenarios of
its own where it has special rules (rr.py, wlc.py show how). A scenario's index in ALL fixes
its VIP and its client source ports (the same in both systems).
"""

from __future__ import annotations

from conformance.model import Scenario
from conformance.scenarios import battery, hashing, persistence, roundtrip, rr, tooling, wlc

ALL: tuple[Scenario, ...] = (*rr.SCENARIOS, *wlc.SCENARIOS, *persistence.SCENARIOS, *tooling.SCENARIOS,
                             *roundtrip.SCENARIOS, *battery.SCENARIOS, *hashing.SCENARIOS)

_names = [s.name for s in ALL]
if len(set(_names)) != len(_names):
    raise ValueError(f"duplicate scenario names: {sorted(n for n in _names if _names.count(n) > 1)}")
