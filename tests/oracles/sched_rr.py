"""rr: round-robin (net/netfilter/ipvs/ip_vs_rr.c).

State: a cursor on the list: the head (None) or the last chosen destination.
schedule: scan the destinations after the cursor to the end of the list, then from the start
of the list up to and including the cursor itself; the first one that is not overloaded and
has weight > 0 wins and becomes the cursor. Starting from the head, one scan covers the list.
del_dest: when the cursor's destination is deleted, the cursor steps back to the entry that
preceded it (the kernel reaches it through the unlinked node's still-valid `next`: next->prev),
so the destination that followed the deleted one is next in turn. A newly added destination
goes to the list head, i.e. it is reached when the scan wraps round.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from .sched_base import Scheduler

if TYPE_CHECKING:
    from .model import Dest, PacketInfo, Service


def list_prev(dests: list[Dest], node: Dest | None) -> Dest | None:
    """node->prev in the circular kernel list, None standing for the list head."""
    if node is None:
        return dests[-1] if dests else None
    index = dests.index(node)
    return dests[index - 1] if index > 0 else None


def after(dests: list[Dest], cursor: Dest | None) -> list[Dest]:
    """The entries list_for_each_entry_continue() visits after `cursor` (None: the head)."""
    return dests if cursor is None else dests[dests.index(cursor) + 1:]


class RrScheduler(Scheduler):
    name: ClassVar[str] = "rr"

    def __init__(self) -> None:
        self.cursor: Dest | None = None

    def init_service(self, svc: Service) -> None:
        self.cursor = None

    def del_dest(self, svc: Service, dest: Dest) -> None:
        if self.cursor is dest:
            self.cursor = list_prev(svc.destinations, dest.unlinked_next)

    def schedule(self, svc: Service, pkt: PacketInfo) -> Dest | None:
        dests = svc.destinations
        last = self.cursor
        # First pass: after the cursor to the end. Second pass (only when the cursor is a
        # destination): from the start through the cursor itself, which is checked last.
        candidates = after(dests, last)
        if last is not None:
            candidates = candidates + dests[: dests.index(last) + 1]
        for dest in candidates:
            if not dest.overloaded and dest.weight > 0:
                self.cursor = dest
                return dest
        return None
