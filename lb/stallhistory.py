"""lbd remembers recent stalled-handshake episodes, so that `lbadm doctor` can report them after
the fact (issue 16 item 8).

StallWatch (lb/estimator.py) sees an episode start and end at a destination (clients repeating
SYNs, no handshake completing: field report 002, a hypervisor's anti-spoofing dropping DR frames).
lbd logged them, but `lbadm doctor` only found stalls that happened during its own sampling
window: run a minute after clients gave up, it reported nothing. StallHistory keeps the episodes
of the last HISTORY_S seconds (at most MAX_EPISODES; ongoing ones are never dropped by age) with
destination, start, end, the counts seen and the likely cause; lbd serves them as the control
operation `stall_history`.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from lb.estimator import StallEvent
from lb.model import ServiceKey

HISTORY_S = 15 * 60.0  # episodes that ended longer ago than this are forgotten
MAX_EPISODES = 256  # bound on memory whatever the churn: the oldest go first

DestKey = tuple[ServiceKey, str, int]

# The likely causes by what the director sees; the doctor's live check words them the same way.
GENERAL_CAUSES = (
    "anti-spoofing on the hypervisor (libvirt nwfilter clean-traffic / no-ip-spoofing, cloud "
    "source/destination checks), VIP not configured on the real server's loopback, "
    "arp_ignore/arp_announce, the real server's firewall"
)
DIRECTOR_SIDE = ("every destination of the service stalled at once: the director's side -- frames it sends with "
                 "the client's source address are dropped on the way (hypervisor anti-spoofing such as libvirt "
                 "clean-traffic / no-ip-spoofing, a cloud source/destination check)")
BY_METHOD = {
    "tunnel": "IPIP not decapsulated on the real server (tunl0 / ipip module), its rp_filter, VIP not on its loopback, "
              "its firewall",
    "masq": "the real server's replies do not return through the director (its default route), so the client "
            "drops its SYN-ACKs",
}


def likely_cause(fwd: str, whole_service: bool) -> str:
    if whole_service and fwd in ("route", "tunnel"):
        return DIRECTOR_SIDE
    return BY_METHOD.get(fwd, GENERAL_CAUSES)


@dataclass
class Episode:
    key: DestKey
    fwd: str
    started: float  # wall clock (time.time)
    started_mono: float
    stalled: int  # handshakes stalled over the window when it started
    syn_retrans: int
    handshakes: int
    window_s: float
    whole_service: bool  # every destination of the service was stalled at some tick of the episode
    ended: float | None = None
    ended_mono: float | None = None
    end_reason: str = ""

    def to_json(self, now_mono: float) -> dict[str, Any]:
        key, addr, port = self.key
        return {
            "service": key.to_json(), "addr": addr, "port": port, "fwd": self.fwd,
            "started": self.started, "ended": self.ended,
            "ago_s": round(now_mono - (self.ended_mono if self.ended_mono is not None else now_mono), 1),
            "lasted_s": round((self.ended_mono if self.ended_mono is not None else now_mono) - self.started_mono, 1),
            "ongoing": self.ended is None, "end_reason": self.end_reason,
            "stalled": self.stalled, "syn_retrans": self.syn_retrans, "handshakes": self.handshakes,
            "window_s": self.window_s, "likely_cause": likely_cause(self.fwd, self.whole_service),
        }


class StallHistory:
    """Episodes of stalled handshakes, most recent last, bounded in age and number."""

    def __init__(self, history_s: float = HISTORY_S, max_episodes: int = MAX_EPISODES,
                 wall: Callable[[], float] = time.time) -> None:
        self.history_s = history_s
        self.episodes: deque[Episode] = deque(maxlen=max_episodes)
        self.wall = wall
        self._open: dict[DestKey, Episode] = {}

    def ongoing(self) -> bool:
        return bool(self._open)

    def record(self, event: StallEvent[DestKey], fwd: str, whole_service: bool, now_mono: float) -> None:
        """One StallWatch event: an episode starts, or the open one of that destination ends."""
        if event.started:
            ep = Episode(event.key, fwd, self.wall(), now_mono, event.stalled, event.syn_retrans, event.handshakes,
                         event.window_s, whole_service)
            if len(self.episodes) == self.episodes.maxlen and self.episodes[0].ended is None:
                self._open.pop(self.episodes[0].key, None)  # about to fall off: no longer tracked
            self.episodes.append(ep)
            self._open[event.key] = ep
        else:
            self._close(event.key, now_mono, "handshakes complete again" if event.handshakes > 0 else
                        "no more SYN retransmissions: the clients gave up or stopped")

    def still_stalled(self, stalled: Iterable[DestKey], services_all_stalled: set[ServiceKey]) -> None:
        """Each tick: an open episode whose whole service stalls at once points at the director."""
        for key in stalled:
            ep = self._open.get(key)
            if ep is not None and key[0] in services_all_stalled:
                ep.whole_service = True

    def forget_missing(self, present: Iterable[DestKey], now_mono: float) -> None:
        """Open episodes of destinations that are gone end now (their stall can no longer be seen)."""
        keep = set(present)
        for key in [k for k in self._open if k not in keep]:
            self._close(key, now_mono, "destination removed")

    def _close(self, key: DestKey, now_mono: float, reason: str) -> None:
        ep = self._open.pop(key, None)
        if ep is not None:
            ep.ended, ep.ended_mono, ep.end_reason = self.wall(), now_mono, reason

    def to_json(self, now_mono: float | None = None) -> dict[str, Any]:
        now = time.monotonic() if now_mono is None else now_mono
        while self.episodes and self.episodes[0].ended_mono is not None \
                and now - self.episodes[0].ended_mono > self.history_s:
            self.episodes.popleft()
        recent = [ep.to_json(now) for ep in self.episodes
                  if ep.ended_mono is None or now - ep.ended_mono <= self.history_s]
        return {"history_s": self.history_s, "episodes": recent}
