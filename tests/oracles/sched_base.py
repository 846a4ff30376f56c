"""The scheduler ops, as struct ip_vs_scheduler has them, and helpers several schedulers share.

Every hook defaults to doing nothing, which is what the kernel does for a NULL hook. One
instance serves one service and holds that service's sched_data.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, ClassVar

from .hashing import U32

if TYPE_CHECKING:
    from .model import Dest, PacketInfo, Service


def s32(value: int) -> int:
    """Wrap to a C `int` (the kernel is built with -fno-strict-overflow: two's complement)."""
    value &= U32
    return value - (1 << 32) if value & 0x80000000 else value


def c_div(a: int, b: int) -> int:
    """C integer division (truncates toward zero)."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b >= 0) else -q


class Scheduler:
    """Base of every oracle scheduler: the hooks of struct ip_vs_scheduler."""

    name: ClassVar[str] = ""

    def init_service(self, svc: Service) -> None:
        """ip_vs_bind_scheduler(): called with the service's current destination list."""

    def done_service(self, svc: Service) -> None:
        """ip_vs_unbind_scheduler(): the service changes scheduler (or goes away)."""

    def add_dest(self, svc: Service, dest: Dest) -> None:
        """After the destination was put at the head of the list."""

    def del_dest(self, svc: Service, dest: Dest) -> None:
        """After the destination was unlinked from the list."""

    def upd_dest(self, svc: Service, dest: Dest) -> None:
        """After an edit (-e) changed the destination's weight/thresholds (always called)."""

    def schedule(self, svc: Service, pkt: PacketInfo) -> Dest | None:
        raise NotImplementedError

    def holds(self, dest: Dest) -> bool:
        """Whether the scheduler's state keeps a reference on a deleted destination (lblc/lblcr
        cache entries do), which keeps it in the kernel's trash; see Service.expire_trash()."""
        return False


def weighted_least(dests: Iterable[Dest], overhead: Callable[[Dest], int]) -> Dest | None:
    """The two-stage loop of ip_vs_wlc_schedule() (also sed, __ip_vs_lblc_schedule,
    __ip_vs_lblcr_schedule): the first destination that is neither overloaded nor of weight <= 0
    seeds the search; after it, every destination that is not overloaded competes, and one wins
    only if strictly less loaded (loh * w_d > doh * w_least, 64-bit products). A weight-0
    destination after the seed is not skipped by the kernel but can never win: its side of the
    comparison is 0 (overheads are never negative in practice)."""
    it = iter(dests)
    least: Dest | None = None
    loh = 0
    for dest in it:
        if not dest.overloaded and dest.weight > 0:
            least, loh = dest, overhead(dest)
            break
    if least is None:
        return None
    for dest in it:
        if dest.overloaded:
            continue
        doh = overhead(dest)
        if loh * dest.weight > doh * least.weight:
            least, loh = dest, doh
    return least
