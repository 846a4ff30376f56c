"""Scheduler interface and registry (one scheduler per file, registered in one place).

A scheduler sees its service's destination list in kernel order (most recently
added first, which is the order IPVS walks `svc->destinations`) and returns the
destination for a new connection, or None when no destination is eligible.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from lb.pyengine.conn import Destination


class Scheduler(Protocol):
    name: str

    def schedule(self, dests: Sequence[Destination]) -> Destination | None:
        """Pick a destination for a new connection (may update scheduler state)."""
        ...

    def dest_removed(self, dests: Sequence[Destination], index: int) -> None:
        """`dests[index]` is about to leave the list (called while it is still in it)."""
        ...


def _registry() -> dict[str, type[Scheduler]]:
    from lb.pyengine.sched_rr import RoundRobin
    from lb.pyengine.sched_wlc import WeightedLeastConnection

    return {cls.name: cls for cls in (RoundRobin, WeightedLeastConnection)}


SCHEDULERS: dict[str, type[Scheduler]] = _registry()


def new_scheduler(name: str) -> Scheduler:
    """A fresh scheduler instance; KeyError names the unknown scheduler."""
    try:
        cls = SCHEDULERS[name]
    except KeyError:
        raise KeyError(f"unknown scheduler {name!r} (known: {', '.join(sorted(SCHEDULERS))})") from None
    return cls()
