"""Round robin, exactly as kernel ip_vs_rr.c.

The cursor is the last chosen destination, or the list head (None) initially.
A schedule walks the destinations after the cursor to the end, then (if the
cursor is not the head) from the start up to and including the cursor, and takes
the first one with weight > 0 and not OVERLOADED. Deleting the cursor moves it to
its predecessor (the head if it was first), as ip_vs_rr_del_dest does.
"""

from __future__ import annotations

from collections.abc import Sequence

from lb.pyengine.conn import Destination


class RoundRobin:
    name = "rr"

    def __init__(self) -> None:
        self._cursor: Destination | None = None  # None = the list head

    def schedule(self, dests: Sequence[Destination]) -> Destination | None:
        cursor = self._cursor
        if cursor is None:
            order: Sequence[Destination] = dests
        else:
            start = _index_of(dests, cursor) + 1
            order = [*dests[start:], *dests[:start]]
        for dest in order:
            if dest.eligible():
                self._cursor = dest
                return dest
        return None

    def dest_removed(self, dests: Sequence[Destination], index: int) -> None:
        if dests[index] is self._cursor:
            self._cursor = dests[index - 1] if index > 0 else None


def _index_of(dests: Sequence[Destination], dest: Destination) -> int:
    for i, candidate in enumerate(dests):
        if candidate is dest:
            return i
    raise ValueError("round-robin cursor is not in the destination list")
