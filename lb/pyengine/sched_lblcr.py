"""Locality-based least-connection with replication, exactly as kernel ip_vs_lblcr.c of 6.1.192
(native/src/sched_lblcr.c).

Per-service state: the destination-address cache of lb/pyengine/locality.py, each entry holding a
SET of destinations (newest first, each member holding a reference) and `lastmod`, the time of
its last insertion or removal. schedule(), on a hit (lastuse = now):
1. d = the set's least loaded member (the first member neither OVERLOAD-flagged nor of weight <= 0
   nor deleted seeds; later members not flagged replace it when strictly less loaded and not deleted);
2. when the set has more than one member and more than the expiration (24 h) has passed since
   lastmod, its most loaded member (among members of weight > 0; flag and deletion ignored; the
   first among equals) leaves the set, even when it is d;
3. d is used if found and not overloaded in locality.is_overloaded's sense;
4. otherwise the wlc choice joins the set (lastmod = now, unless already a member) and is used.
On a miss: the wlc choice, and a new entry whose set holds it, unless the table is full (24576).
"""

from __future__ import annotations

from lb.pyengine import locality
from lb.pyengine.conn import Destination
from lb.pyengine.parse import ParsedPacket
from lb.pyengine.sched import SchedService, conn_overhead


class LblcrEntry(locality.Entry):
    __slots__ = ("members", "lastmod_ms")

    def __init__(self, addr: bytes, lastuse_ms: int) -> None:
        super().__init__(addr, lastuse_ms)
        self.members: list[Destination] = []  # newest first
        self.lastmod_ms = 0

    def insert(self, dest: Destination, now_ms: int, check: bool) -> None:
        """ip_vs_dest_set_insert"""
        if check and any(m is dest for m in self.members):
            return
        dest.sched_refs += 1
        self.members.insert(0, dest)
        self.lastmod_ms = now_ms

    def erase(self, dest: Destination, now_ms: int) -> None:
        """ip_vs_dest_set_erase"""
        for index, member in enumerate(self.members):
            if member is dest:
                del self.members[index]
                dest.sched_refs -= 1
                self.lastmod_ms = now_ms
                return

    def least(self) -> Destination | None:
        """ip_vs_dest_set_min"""
        least: Destination | None = None
        loh = 0
        for member in self.members:
            if member.overloaded:
                continue
            if least is None:
                if member.weight > 0 and member.available:
                    least, loh = member, conn_overhead(member)
                continue
            doh = conn_overhead(member)
            if loh * member.weight > doh * least.weight and member.available:
                least, loh = member, doh
        return least

    def most(self) -> Destination | None:
        """ip_vs_dest_set_max"""
        most: Destination | None = None
        moh = 0
        for member in self.members:
            if most is None:
                if member.weight > 0:
                    most, moh = member, conn_overhead(member)
                continue
            doh = conn_overhead(member)
            if moh * member.weight < doh * most.weight and member.weight > 0:
                most, moh = member, doh
        return most

    def release(self) -> None:
        for member in self.members:
            member.sched_refs -= 1
        self.members.clear()


class LocalityLeastConnectionReplicated(locality.LocalityScheduler[LblcrEntry]):
    name = "lblcr"

    def schedule(self, service: SchedService, parsed: ParsedPacket) -> Destination | None:
        table = self.table(service)
        now = table.now(service)
        entry = table.get(parsed.daddr)
        if entry is not None:
            entry.lastuse_ms = now
            dest = entry.least()
            if len(entry.members) > 1 and now > entry.lastmod_ms + table.expiration_ms:
                most = entry.most()
                if most is not None:
                    entry.erase(most, now)
            if dest is not None and not locality.is_overloaded(dest, service):
                return dest
            chosen = locality.least_loaded(service)
            if chosen is None:
                return None
            entry.insert(chosen, now, check=True)
            return chosen
        chosen = locality.least_loaded(service)
        if chosen is None:
            return None
        if not table.full:
            entry = LblcrEntry(parsed.daddr, now)
            entry.insert(chosen, now, check=False)
            table.link(entry)
        return chosen


SCHEDULER = LocalityLeastConnectionReplicated()
