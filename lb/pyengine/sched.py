"""Scheduler operations and their registry, as native/include/lb_sched.h (the kernel's struct ip_vs_scheduler).

A scheduler is a stateless object with hooks; what it remembers about one service lives in
that service's `sched_data`, which its init_service sets and its done_service drops. The
service knows nothing about any one scheduler. The destination list is in kernel order (most
recently added first, as IPVS walks `svc->destinations`), and hooks see it already changed:
add_dest after the destination was inserted at `index`, del_dest after it was removed from
`index`, upd_dest after its parameters changed. A scheduler switch on edit_service runs the
old one's done_service and the new one's init_service; deleting a service runs done_service
first and then unlinks its destinations without del_dest (as __ip_vs_del_service). `tick` runs
for every service at each engine.expire(now) (lblc/lblcr expiry), as lb_expire does in C.

Registry: every module lb/pyengine/sched_<name>.py defines SCHEDULER, an instance whose
`name` is <name>, exactly as each native/src/sched_<name>.c defines lb_sched_<name> listed in
native/include/lb_sched_list.h; nothing else lists schedulers here.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Protocol, TypeVar

from lb.model import ServiceSpec
from lb.pyengine.conn import Destination
from lb.pyengine.parse import ParsedPacket


class SchedService(Protocol):
    """What a scheduler sees of a service: its destinations, its own state, and the service's
    configuration (spec.sched_flags: sh and mh read flag-1 and flag-2)."""

    key: tuple[int, bytes, int]  # (proto, virtual address (4 bytes), virtual port)
    dests: list[Destination]
    sched_data: Any
    spec: ServiceSpec
    seed0: int  # the engine's seed (C: lb->seed0): schedulers that draw random numbers seed from it
    sched_now_ms: int  # the caller's now_ms of the schedule() call in progress (C: svc->sched_now_ms)


class Scheduler:
    """Base class: every hook but schedule() is optional (does nothing)."""

    name: ClassVar[str]

    def init_service(self, service: SchedService) -> None:
        """Set service.sched_data (a scheduler without per-service state leaves None)."""
        service.sched_data = None

    def done_service(self, service: SchedService) -> None:
        service.sched_data = None

    def add_dest(self, service: SchedService, dest: Destination, index: int) -> None:
        """`dest` was just inserted at service.dests[index] (a new or revived destination)."""

    def del_dest(self, service: SchedService, dest: Destination, index: int) -> None:
        """`dest` was just removed from position `index`."""

    def upd_dest(self, service: SchedService, dest: Destination) -> None:
        """`dest`'s weight, thresholds or method were edited."""

    def schedule(self, service: SchedService, parsed: ParsedPacket) -> Destination | None:
        """The destination for a new connection of `parsed`, or None when none is eligible; the time is
        service.sched_now_ms (set by the engine before every call)."""
        raise NotImplementedError

    def tick(self, service: SchedService, now_ms: int) -> None:
        """Periodic work without packets (engine.expire)."""


State = TypeVar("State")


def state_of(service: SchedService, kind: type[State]) -> State:
    """service.sched_data, which the scheduler's init_service set to a `kind`."""
    data: Any = service.sched_data
    assert isinstance(data, kind), f"sched_data is a {type(data).__name__}, not a {kind.__name__}"
    return data


def index_of(dests: list[Destination], dest: Destination) -> int:
    """The position of `dest` itself (identity, not equality) in the destination list."""
    for i, candidate in enumerate(dests):
        if candidate is dest:
            return i
    raise ValueError("the scheduler's cursor is not in the destination list")


def conn_overhead(dest: Destination) -> int:
    """ip_vs_dest_conn_overhead() (one definition: Destination.conn_overhead), as a function."""
    return dest.conn_overhead


def least_weighted(dests: list[Destination], overhead: Callable[[Destination], int]) -> Destination | None:
    """The weighted least-overhead choice of ip_vs_wlc.c and ip_vs_sed.c (lblc and lblcr fall back to
    it too), as native/include/lb_sched.h's lb_sched_least_weighted: the first destination neither
    OVERLOADED nor of weight <= 0 is the candidate; every later one not OVERLOADED replaces it when
    cand_overhead * d.weight > d_overhead * cand.weight (the kernel's 64-bit cross-multiplication:
    a later weight-0 destination never wins). None: no eligible destination."""
    least: Destination | None = None
    least_overhead = 0
    for dest in dests:
        if least is None:
            if dest.eligible():
                least, least_overhead = dest, overhead(dest)
            continue
        if dest.overloaded:
            continue
        dest_overhead = overhead(dest)
        if least_overhead * dest.weight > dest_overhead * least.weight:
            least, least_overhead = dest, dest_overhead
    return least


@functools.cache
def schedulers() -> dict[str, Scheduler]:
    """Every scheduler module's SCHEDULER, by name."""
    found: dict[str, Scheduler] = {}
    for info in pkgutil.iter_modules([str(Path(__file__).parent)]):
        if not info.name.startswith("sched_"):
            continue
        module = importlib.import_module(f"{__package__}.{info.name}")
        scheduler = getattr(module, "SCHEDULER", None)
        if not isinstance(scheduler, Scheduler) or scheduler.name != info.name.removeprefix("sched_"):
            raise ImportError(f"{module.__name__} must define SCHEDULER, a Scheduler named "
                              f"{info.name.removeprefix('sched_')!r}")
        found[scheduler.name] = scheduler
    return found


def find_scheduler(name: str) -> Scheduler:
    """The registered scheduler `name`; KeyError names the unknown scheduler."""
    try:
        return schedulers()[name]
    except KeyError:
        raise KeyError(f"unknown scheduler {name!r} (known: {', '.join(sorted(schedulers()))})") from None
