"""lblc: locality-based least-connection (ip_vs_lblc.c). See locality.py for the cache.

schedule: look up the packet's destination address. A hit refreshes lastuse; its destination
is used when it is still linked in the service (a deleted one is not, until it is re-added
from the trash: then the old entry is valid again), has weight > 0, and is not overloaded in
locality.is_overloaded()'s sense. The OVERLOAD flag is NOT checked on a hit. Otherwise a
destination is chosen as wlc does (skipping OVERLOAD-flagged and weight-0 ones) and the entry
is pointed at it: an entry for another destination is replaced by a new one (new lastuse);
an entry already pointing at it is kept.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from .hashing import IPAddress
from .locality import CacheEntry, LocalityCache, is_overloaded
from .sched_base import weighted_least

if TYPE_CHECKING:
    from .model import Dest, PacketInfo, Service


class LblcEntry(CacheEntry):
    def __init__(self, addr: IPAddress, dest: Dest, lastuse: int) -> None:
        super().__init__(addr, lastuse)
        self.dest = dest


class LblcScheduler(LocalityCache[LblcEntry]):
    name: ClassVar[str] = "lblc"
    tab_bits = 10

    def holds(self, dest: Dest) -> bool:
        return any(entry.dest is dest for entry in self.all_entries())

    def schedule(self, svc: Service, pkt: PacketInfo) -> Dest | None:
        entry = self.get(pkt.daddr)
        if entry is not None:
            entry.lastuse = self.now()
            dest = entry.dest
            if dest.available and dest.weight > 0 and not is_overloaded(dest, svc):
                return dest
        chosen = weighted_least(svc.destinations, lambda d: d.conn_overhead)
        if chosen is None:
            return None
        if not self.dead:
            self._point(pkt.daddr, chosen)
        return chosen

    def _point(self, addr: IPAddress, dest: Dest) -> None:
        # ip_vs_lblc_new()
        entry = self.get(addr)
        if entry is not None:
            if entry.dest is dest:
                return
            self.unlink(entry)
        if self.full():
            return
        self.link(LblcEntry(addr, dest, self.now()))
