"""Every conformance scenario, in the order they are played (tests/kernel/README.md).

A scenario's index in ALL fixes its VIP and its client source ports: append new scenarios
at the end of a module's list, or add a module here.
"""

from __future__ import annotations

from conformance.model import Scenario
from scenarios import persistence, roundtrip, rr, tooling, wlc

ALL: tuple[Scenario, ...] = (*rr.SCENARIOS, *wlc.SCENARIOS, *persistence.SCENARIOS, *tooling.SCENARIOS,
                             *roundtrip.SCENARIOS)

_names = [s.name for s in ALL]
if len(set(_names)) != len(_names):
    raise ValueError(f"duplicate scenario names: {sorted(n for n in _names if _names.count(n) > 1)}")
