"""twos: weighted random "power of two choices" (ip_vs_twos.c).

NOT BUILT in Debian 12's kernel (CONFIG_IP_VS_TWOS is not set): `ipvsadm -s twos` fails
there, so the qemu comparison cannot cover it. This oracle follows the 6.1.192 source.

schedule: total = sum of the weights of destinations that are not overloaded and have weight
> 0 (none: no destination). Two independent uniform draws r1, r2 in [0, total] (inclusive:
prandom_u32_max(total + 1)). Walking the eligible destinations in list order, subtracting
each weight, the first destination that brings r1 to <= 0 is choice 1, likewise for r2. So the
FIRST eligible destination is picked with probability (w + 1) / (total + 1), every other one
with w / (total + 1). Choice 2 replaces choice 1 only when strictly less loaded:
w2 * overhead1 > w1 * overhead2, computed in 32-bit signed ints (unlike wlc's 64-bit products),
overhead = ip_vs_dest_conn_overhead().
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar

from .sched_base import Scheduler, s32

if TYPE_CHECKING:
    from .model import Dest, PacketInfo, Service

# A source of uniform integers in [0, n): the kernel uses prandom_u32_max(n).
RandomBelow = Callable[[int], int]


class TwosScheduler(Scheduler):
    name: ClassVar[str] = "twos"

    def __init__(self, rng: RandomBelow | None = None, seed: int = 0) -> None:
        self.random_below: RandomBelow = rng if rng is not None else random.Random(seed).randrange

    def schedule(self, svc: Service, pkt: PacketInfo) -> Dest | None:
        eligible = [d for d in svc.destinations if not d.overloaded and d.weight > 0]
        if not eligible:
            return None
        total = sum(d.weight for d in eligible) + 1
        r1 = self.random_below(total)
        r2 = self.random_below(total)
        choice1: Dest | None = None
        choice2: Dest | None = None
        w1 = w2 = -1
        oh1 = oh2 = 0
        for dest in eligible:
            r1 -= dest.weight
            r2 -= dest.weight
            if r1 <= 0 and w1 == -1:
                choice1, w1, oh1 = dest, dest.weight, dest.conn_overhead
            if r2 <= 0 and w2 == -1:
                choice2, w2, oh2 = dest, dest.weight, dest.conn_overhead
            if w1 != -1 and w2 != -1:
                break
        assert choice1 is not None  # r1 <= total - 1 < sum of weights + 1: always reached
        if choice2 is not None and s32(w2 * oh1) > s32(w1 * oh2):
            return choice2
        return choice1
