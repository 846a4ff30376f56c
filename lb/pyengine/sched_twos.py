"""Weighted random "power of two choices", exactly as kernel ip_vs_twos.c of 6.1.192
(native/src/sched_twos.c; Debian's kernel does not build it: CONFIG_IP_VS_TWOS is not set).

total = the sum of the weights of destinations neither OVERLOAD-flagged nor of weight <= 0, plus 1.
Two draws r1, r2 uniform in [0, total); walking those destinations in list order and subtracting
each weight, the first to bring r1 to <= 0 is choice 1, likewise r2 for choice 2; choice 2 replaces
choice 1 only when strictly less loaded (w2 * overhead1 > w1 * overhead2). All in the kernel's
32-bit int arithmetic, which wraps (s32 below).

Randomness: a per-service splitmix64 generator seeded from the engine's seed (service.seed0) and
the service's key, drawing through the kernel's multiply-shift reduction with rejection
(__get_random_u32_below): the same sequence as the C engine's for the same hash_seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from lb.pyengine.conn import Destination, s32
from lb.pyengine.parse import ParsedPacket
from lb.pyengine.sched import SchedService, Scheduler, conn_overhead

M64: Final = (1 << 64) - 1
U32: Final = 0xFFFFFFFF


@dataclass(slots=True)
class SplitMix64:
    state: int

    def next_u32(self) -> int:
        self.state = (self.state + 0x9E3779B97F4A7C15) & M64
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
        z ^= z >> 31
        return z >> 32

    def below(self, ceil: int) -> int:
        """Uniform in [0, ceil) for a u32 ceil (0 for 0), as __get_random_u32_below."""
        mult = ceil * self.next_u32()
        if mult & U32 < ceil:
            bound = ((1 << 32) - ceil) % ceil
            while mult & U32 < bound:
                mult = ceil * self.next_u32()
        return mult >> 32


def service_seed(seed0: int, key: tuple[int, bytes, int]) -> int:
    """The generator's first state: the engine's seed mixed with (proto, address, port)."""
    proto, addr, port = key
    return (seed0 ^ (proto << 48) ^ (port << 32) ^ int.from_bytes(addr, "big")) & M64


class TwoChoices(Scheduler):
    name = "twos"

    def init_service(self, service: SchedService) -> None:
        service.sched_data = SplitMix64(service_seed(service.seed0, service.key))

    def schedule(self, service: SchedService, parsed: ParsedPacket) -> Destination | None:
        rng: Any = service.sched_data
        assert isinstance(rng, SplitMix64)
        choice1: Destination | None = None
        total = 0
        for dest in service.dests:
            if not dest.overloaded and dest.weight > 0:
                total = (total + dest.weight) & U32
                choice1 = dest  # the kernel leaves the last eligible one here
        if choice1 is None:
            return None
        total = (total + 1) & U32
        r1 = s32(rng.below(total))
        r2 = s32(rng.below(total))
        choice2: Destination | None = None
        w1 = w2 = -1
        oh1 = oh2 = 0
        for dest in service.dests:
            if dest.overloaded or dest.weight <= 0:
                continue
            weight = dest.weight
            r1 = s32(r1 - weight)
            r2 = s32(r2 - weight)
            if r1 <= 0 and w1 == -1:
                choice1, w1, oh1 = dest, weight, conn_overhead(dest)
            if r2 <= 0 and w2 == -1:
                choice2, w2, oh2 = dest, weight, conn_overhead(dest)
            if w1 != -1 and w2 != -1:
                break
        if choice2 is not None and s32(w2 * oh1) > s32(w1 * oh2):
            return choice2
        return choice1


SCHEDULER = TwoChoices()
