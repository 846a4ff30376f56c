"""Conveniences for tests that want a service in a given kernel list order."""

from __future__ import annotations

from collections.abc import Sequence

from .model import Dest, Service
from .sched_base import Scheduler


def dest_address(index: int, family: int = 4) -> str:
    """A stable address per index: 10.0.0.(index+1) or fd00::(index+1)."""
    return f"10.0.0.{index + 1}" if family == 4 else f"fd00::{index + 1:x}"


def build_service(scheduler: str | Scheduler, weights: Sequence[int], *, family: int = 4,
                  flags: int = 0, port: int = 80, protocol: int = 6) -> tuple[Service, list[Dest]]:
    """A service whose destination list, head first, has the given weights: the destinations
    are added last-to-first (each add goes to the list head, running the add_dest hook as the
    kernel does). Returns the service and its destinations in list order; destination i has
    address dest_address(i)."""
    svc = Service(scheduler, family=family, flags=flags, port=port, protocol=protocol)
    for index in reversed(range(len(weights))):
        svc.add_dest(dest_address(index, family), port, weights[index])
    return svc, list(svc.destinations)
