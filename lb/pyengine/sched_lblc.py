"""Locality-based least-connection, exactly as kernel ip_vs_lblc.c of 6.1.192 (native/src/sched_lblc.c).

Per-service state: the destination-address cache of lb/pyengine/locality.py, each entry naming
one destination (and holding a reference on it). schedule(): the entry for the packet's
destination address is refreshed (lastuse = now) and its destination used if it is still in the
service (a deleted one is not, until it is re-added from the trash: then the old entries are valid
again), has weight > 0 and is not overloaded in locality.is_overloaded's sense; the OVERLOAD flag
is NOT checked on a hit. Otherwise the wlc choice, and the entry points at it: an entry for another
destination is replaced by a new one (new lastuse), unless the table is full (24576 entries). No
add/del/upd hooks, as the kernel.
"""

from __future__ import annotations

from lb.pyengine import locality
from lb.pyengine.conn import Destination
from lb.pyengine.parse import ParsedPacket
from lb.pyengine.sched import SchedService


class LblcEntry(locality.Entry):
    __slots__ = ("dest",)

    def __init__(self, addr: bytes, lastuse_ms: int, dest: Destination) -> None:
        super().__init__(addr, lastuse_ms)
        dest.sched_refs += 1  # ip_vs_dest_hold
        self.dest = dest

    def release(self) -> None:
        self.dest.sched_refs -= 1


class LocalityLeastConnection(locality.LocalityScheduler[LblcEntry]):
    name = "lblc"

    def schedule(self, service: SchedService, parsed: ParsedPacket) -> Destination | None:
        table = self.table(service)
        now = table.now(service)
        entry = table.get(parsed.daddr)
        if entry is not None:
            entry.lastuse_ms = now
            dest = entry.dest
            if dest.available and dest.weight > 0 and not locality.is_overloaded(dest, service):
                return dest
        chosen = locality.least_loaded(service)
        if chosen is None:
            return None
        # ip_vs_lblc_new
        if entry is not None:
            if entry.dest is chosen:
                return chosen
            table.delete(entry)
        if not table.full:
            table.link(LblcEntry(parsed.daddr, now, chosen))
        return chosen


SCHEDULER = LocalityLeastConnection()
