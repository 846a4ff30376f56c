"""Packets held while a destination's forwarding state is resolved (native/src/l2q.c's twin).

The kernel queues what it cannot send yet in the neighbour entry and sends it once the neighbour
answers, or drops it when resolution fails; lbd holds a connection's packet that finds no
forwarding state (a copy up to the IP total length, at most LB_L2Q_BYTES_MAX bytes per
destination: a full queue drops its oldest packets, counted no_l2, as the kernel's neighbour queue
does), sends the queue through the connection's method from the timers once the state is
installed, and drops it (counted no_l2) LB_L2Q_TIMEOUT_MS after its first packet if it never is.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from lb import consts as C
from lb.engine import Action
from lb.pyengine.conn import Destination

L2Q_BYTES_MAX = C.LB_L2Q_BYTES_MAX  # bytes held per destination
L2Q_TIMEOUT_MS = C.LB_L2Q_TIMEOUT_MS  # from the first held packet


class HeldQueue:
    __slots__ = ("dest", "packets", "nbytes", "deadline_ms")

    def __init__(self, dest: Destination, deadline_ms: int) -> None:
        self.dest = dest
        self.packets: deque[bytes] = deque()
        self.nbytes = 0
        self.deadline_ms = deadline_ms

    def ready(self) -> bool:
        return self.dest.fwd is not None and self.dest.available


class HeldPackets:
    """Every destination's queue, newest queue first (the C core's list order)."""

    def __init__(self) -> None:
        self.queues: list[HeldQueue] = []

    def holds(self, dest: Destination) -> bool:
        """Has `dest` a queue not yet sent (its packets must not be overtaken: later ones join it)?"""
        return any(q.dest is dest for q in self.queues)

    def hold(self, dest: Destination, packet: bytes, now_ms: int, dropped: Callable[[], None]) -> bool:
        """Hold `packet` for `dest`; a full queue drops its oldest packets to make room (calling
        `dropped` for each), as the kernel's __neigh_event_send. False: too big to hold at all."""
        queue = next((q for q in self.queues if q.dest is dest), None)
        if len(packet) > L2Q_BYTES_MAX:
            return False
        while queue is not None and queue.packets and queue.nbytes + len(packet) > L2Q_BYTES_MAX:
            queue.nbytes -= len(queue.packets.popleft())
            dropped()
        if queue is None:
            queue = HeldQueue(dest, now_ms + L2Q_TIMEOUT_MS)
            self.queues.insert(0, queue)
        queue.packets.append(packet)
        queue.nbytes += len(packet)
        return True

    def due(self) -> int | None:
        if not self.queues:
            return None
        return min(0 if q.ready() else q.deadline_ms for q in self.queues)

    def drain(self, now_ms: int, send: Callable[[Destination, bytes], Action | None],
              dropped: Callable[[], None]) -> list[Action]:
        """The held packets that can leave, in order; drops (calling `dropped` for each) the queues of
        deleted destinations, those not resolved in time, and packets whose connection is gone."""
        actions: list[Action] = []
        kept: list[HeldQueue] = []
        for queue in self.queues:
            if not queue.dest.available or (queue.dest.fwd is None and queue.deadline_ms <= now_ms):
                for _ in queue.packets:
                    dropped()
                continue
            if queue.dest.fwd is None:
                kept.append(queue)
                continue
            for packet in queue.packets:
                action = send(queue.dest, packet)
                if action is None:
                    dropped()
                else:
                    actions.append(action)
        self.queues = kept
        return actions
