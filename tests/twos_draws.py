"""The random draws lbd's twos scheduler makes, written here independently of both engines (which must
match it): a per-service splitmix64 generator (Steele, Lea, Flood 2014) seeded from the engine's seed
(lb_config.hash_seed) and the service key, drawing through Linux 6.1's __get_random_u32_below
(multiply-shift reduction with rejection). Feed `Draws(...).below` to the oracle's
TwosScheduler(rng=...) and it chooses as the engines do (tests/oracles/sched_twos.py)."""

from __future__ import annotations

import socket

M64 = (1 << 64) - 1


class Draws:
    def __init__(self, hash_seed: int, proto: int, addr: str, port: int) -> None:
        vaddr = int.from_bytes(socket.inet_aton(addr), "big")
        self.state = (hash_seed ^ (proto << 48) ^ (port << 32) ^ vaddr) & M64

    def u32(self) -> int:
        self.state = (self.state + 0x9E3779B97F4A7C15) & M64
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
        return (z ^ (z >> 31)) >> 32

    def below(self, ceil: int) -> int:
        """Uniform in [0, ceil) for a 32-bit ceil (0 for 0)."""
        product = ceil * self.u32()
        low = product & 0xFFFFFFFF
        if low < ceil:
            threshold = (2**32 - ceil) % ceil
            while low < threshold:
                product = ceil * self.u32()
                low = product & 0xFFFFFFFF
        return product >> 32
