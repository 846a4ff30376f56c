"""Every oracle scheduler by its ipvsadm name, and which hooks the kernel's version has."""

from __future__ import annotations

from typing import Final

from .sched_base import Scheduler
from .sched_dh import DhScheduler
from .sched_failover import FoScheduler, OvfScheduler
from .sched_lblc import LblcScheduler
from .sched_lblcr import LblcrScheduler
from .sched_leastconn import LcScheduler, NqScheduler, SedScheduler, WlcScheduler
from .sched_mh import MhScheduler
from .sched_rr import RrScheduler
from .sched_sh import ShScheduler
from .sched_twos import TwosScheduler
from .sched_wrr import WrrScheduler

SCHEDULERS: Final[dict[str, type[Scheduler]]] = {
    cls.name: cls
    for cls in (
        RrScheduler,
        WrrScheduler,
        LcScheduler,
        WlcScheduler,
        SedScheduler,
        NqScheduler,
        FoScheduler,
        OvfScheduler,
        ShScheduler,
        DhScheduler,
        MhScheduler,
        LblcScheduler,
        LblcrScheduler,
        TwosScheduler,
    )
}

# The struct ip_vs_scheduler hooks each kernel scheduler sets (the others are NULL). An
# implementation with a hook the kernel lacks (e.g. dh reacting to a weight edit) differs.
KERNEL_HOOKS: Final[dict[str, frozenset[str]]] = {
    "rr": frozenset({"init_service", "del_dest"}),
    "wrr": frozenset({"init_service", "done_service", "add_dest", "del_dest", "upd_dest"}),
    "lc": frozenset(),
    "wlc": frozenset(),
    "sed": frozenset(),
    "nq": frozenset(),
    "fo": frozenset(),
    "ovf": frozenset(),
    "sh": frozenset({"init_service", "done_service", "add_dest", "del_dest", "upd_dest"}),
    "dh": frozenset({"init_service", "done_service", "add_dest", "del_dest"}),
    "mh": frozenset({"init_service", "done_service", "add_dest", "del_dest", "upd_dest"}),
    "lblc": frozenset({"init_service", "done_service"}),
    "lblcr": frozenset({"init_service", "done_service"}),
    "twos": frozenset(),
}


def make_scheduler(name: str) -> Scheduler:
    try:
        return SCHEDULERS[name]()
    except KeyError:
        raise ValueError(f"no oracle for scheduler {name!r}; known: {', '.join(sorted(SCHEDULERS))}") from None
