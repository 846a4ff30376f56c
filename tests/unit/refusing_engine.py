"""An engine that refuses one real-server address (tests/unit helper).

The table model mirrors every refusal of the engines it knows of, so a test of what happens when
the engine refuses a command the model accepted (a batch or reload rolled back midway) needs an
engine limit the model does not know. One is made here: add_dest of REFUSED_RIP raises
EOPNOTSUPP, as an engine refusal does; everything else is the real engine's.
"""

from __future__ import annotations

from typing import Any

from lb.engine import EngineError
from lb.model import DestSpec, ServiceKey

REFUSED_RIP = "172.30.0.250"


def refusing(engine: Any, rip: str = REFUSED_RIP) -> Any:
    """`engine`, whose add_dest refuses destinations at `rip` (EOPNOTSUPP)."""
    real_add_dest = engine.add_dest

    def add_dest(key: ServiceKey, dest: DestSpec) -> None:
        if dest.addr == rip:
            raise EngineError("EOPNOTSUPP", f"destination {dest.addr}:{dest.port} in {key}: refused by the test's "
                                            "engine (a limit the model does not know)")
        real_add_dest(key, dest)

    engine.add_dest = add_dest
    return engine
