"""lbd reads the director's own addresses from inside its running event loop (start-up, address
changes): pyroute2's synchronous IPRoute refuses to run there, which left the engine's set (the
martian-source check; the AF_XDP program's NAT-reply exclusion) empty. No privileges needed: the
local routing table can be dumped by anyone."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from lb import daemon


class FakeEngine:
    def __init__(self) -> None:
        self.addrs: list[str] | None = None

    def set_local_addrs(self, addrs: list[str]) -> None:
        self.addrs = list(addrs)


class FakeXdp:
    def __init__(self) -> None:
        self.addrs: list[str] | None = None

    def set_local_addrs(self, addrs: list[str]) -> None:
        self.addrs = list(addrs)


def test_own_addresses_are_read_inside_a_running_loop() -> None:
    engine, xdp = FakeEngine(), FakeXdp()
    director: Any = SimpleNamespace(engine=engine, rules=xdp)

    async def inside_the_loop() -> None:
        daemon.sync_local_addrs(director)

    asyncio.run(inside_the_loop())
    assert engine.addrs is not None and "127.0.0.1" in engine.addrs, engine.addrs
    assert xdp.addrs == engine.addrs  # --packet-source afxdp: the program gets the same set
