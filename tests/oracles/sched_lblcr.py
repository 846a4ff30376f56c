"""lblcr: locality-based least-connection with replication (ip_vs_lblcr.c). See locality.py.

Each cache entry holds a SET of destinations (a list, newest first) with `lastmod`, the time of
its last insertion or removal (re-inserting a member changes nothing, lastmod included).

schedule, on a hit (lastuse refreshed):
1. dest = the set's least loaded member: the first member that is not OVERLOAD-flagged, has
   weight > 0 and is linked in the service seeds the search; later members that are not
   flagged compete by overhead / weight (strictly less wins) and must be linked to win.
2. Shrink: when the set has more than one member and more than the expiration (24 h) passed
   since lastmod, its MOST loaded member (by overhead / weight among members with weight > 0;
   first among equals; OVERLOAD flag and deletion ignored) is removed, even when it is the
   `dest` of step 1, which is then still returned if step 3 accepts it.
3. dest is used when found and not overloaded in locality.is_overloaded()'s sense.
4. Otherwise a destination is chosen as wlc does, added to the set (lastmod = now, unless
   already a member), and used.
On a miss: the wlc choice, and a new entry whose set holds just it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from .hashing import IPAddress
from .locality import CacheEntry, LocalityCache, is_overloaded
from .sched_base import weighted_least

if TYPE_CHECKING:
    from .model import Dest, PacketInfo, Service


class DestSet:
    """struct ip_vs_dest_set: members newest first."""

    def __init__(self, lastmod: int) -> None:
        self.members: list[Dest] = []
        self.lastmod = lastmod

    def insert(self, dest: Dest, now: int, check: bool) -> None:
        if check and any(m is dest for m in self.members):
            return
        self.members.insert(0, dest)
        self.lastmod = now

    def erase(self, dest: Dest, now: int) -> None:
        for index, member in enumerate(self.members):
            if member is dest:
                del self.members[index]
                self.lastmod = now
                return

    def least(self) -> Dest | None:
        """ip_vs_dest_set_min()."""
        it = iter(self.members)
        least: Dest | None = None
        loh = 0
        for member in it:
            if member.overloaded:
                continue
            if member.weight > 0 and member.available:
                least, loh = member, member.conn_overhead
                break
        if least is None:
            return None
        for member in it:
            if member.overloaded:
                continue
            doh = member.conn_overhead
            if loh * member.weight > doh * least.weight and member.available:
                least, loh = member, doh
        return least

    def most(self) -> Dest | None:
        """ip_vs_dest_set_max()."""
        it = iter(self.members)
        most: Dest | None = None
        moh = 0
        for member in it:
            if member.weight > 0:
                most, moh = member, member.conn_overhead
                break
        if most is None:
            return None
        for member in it:
            doh = member.conn_overhead
            if moh * member.weight < doh * most.weight and member.weight > 0:
                most, moh = member, doh
        return most


class LblcrEntry(CacheEntry):
    def __init__(self, addr: IPAddress, lastuse: int) -> None:
        super().__init__(addr, lastuse)
        self.set = DestSet(lastuse)


class LblcrScheduler(LocalityCache[LblcrEntry]):
    name: ClassVar[str] = "lblcr"
    tab_bits = 10

    def holds(self, dest: Dest) -> bool:
        return any(any(m is dest for m in entry.set.members) for entry in self.all_entries())

    def schedule(self, svc: Service, pkt: PacketInfo) -> Dest | None:
        now = self.now()
        entry = self.get(pkt.daddr)
        if entry is not None:
            entry.lastuse = now
            dest = entry.set.least()
            expiration = self.expiration_s * svc.clock.hz
            if len(entry.set.members) > 1 and now > entry.set.lastmod + expiration:
                most = entry.set.most()
                if most is not None:
                    entry.set.erase(most, now)
            if dest is not None and not is_overloaded(dest, svc):
                return dest
            chosen = weighted_least(svc.destinations, lambda d: d.conn_overhead)
            if chosen is None:
                return None
            if not self.dead:
                entry.set.insert(chosen, now, check=True)
            return chosen
        chosen = weighted_least(svc.destinations, lambda d: d.conn_overhead)
        if chosen is None:
            return None
        if not self.dead:
            self._new_entry(pkt.daddr, chosen)
        return chosen

    def _new_entry(self, addr: IPAddress, dest: Dest) -> None:
        # ip_vs_lblcr_new() for a missing entry (the caller handled the hit case)
        if self.full():
            return
        entry = LblcrEntry(addr, self.now())
        entry.set.insert(dest, self.now(), check=False)
        self.link(entry)
