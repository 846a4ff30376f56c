"""lbd starts and serves with a damaged state file (issue 16 item 2).

Before, an empty or garbled lbd-q<N>.state made lbd exit 1 at every start; with --down-policy
closed the killed lbd's rules kept queueing the VIP's packets to nobody, so the VIP stayed a black
hole until a person deleted the file. Here a closed-policy lbd with a configuration file is
killed, its state file damaged, and a new lbd started with --restore must come up, set the file
aside (kept, named in its log) and serve the VIP from its configuration.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import HTTP_PORT, LBD, QUEUE_NUM, Lbd, iptables_leftovers
from packet_source import AFXDP

from lb.testbed import client
from lb.testbed.topology import Topology

pytestmark = pytest.mark.netns

SERVE_BOUND_S = 15.0  # a bound on waiting, not a performance threshold

DAMAGE: dict[str, Callable[[bytes], bytes]] = {
    "empty": lambda data: b"",
    "garbage": lambda data: b"\x00\xffnot a state file\n" * 20,
    "header cut short": lambda data: data[:25],
}


def _config(topo: Topology, path: Path) -> None:
    dests = "".join(f'\n  [[service.dest]]\n  addr = "{rs.addr}"\n  fwd = "route"\n' for rs in topo.reals)
    path.write_text(f'[[service]]\nproto = "tcp"\naddr = "{topo.vip}"\nport = {HTTP_PORT}\nsched = "rr"\n{dests}')


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_lbd_serves_from_its_configuration_with_a_damaged_state_file(topo: Topology, kind: str) -> None:
    d = Lbd(topo, "c")
    cfg = d.dir / "lbd.toml"
    _config(topo, cfg)
    # The AF_XDP source has no closed policy (refused: its program leaves with lbd); the damaged
    # state file is handled the same whatever the source.
    d.args = ["--down-policy", "open" if AFXDP else "closed", "--config", str(cfg), "--restore"]
    state = d.dir / f"lbd-q{QUEUE_NUM}.state"
    try:
        d.start()
        d.wait_resolved()
        assert client.get_once(topo.client.netns, topo.vip, HTTP_PORT, timeout=2.0).ok
        deadline = time.monotonic() + 10
        while not state.exists():  # the first periodic save
            assert time.monotonic() < deadline, "no state file written"
            time.sleep(0.05)
        assert d.stop(signal.SIGKILL) == -signal.SIGKILL  # the closed-policy rules stay (NFQUEUE)
        damaged = DAMAGE[kind](state.read_bytes())
        state.write_bytes(damaged)
        d.start()  # before: "lbd exited with 1 before ready"
        d.wait_resolved()
        deadline = time.monotonic() + SERVE_BOUND_S
        while not client.get_once(topo.client.netns, topo.vip, HTTP_PORT, timeout=1.0).ok:
            assert time.monotonic() < deadline, f"VIP not served after the restart\n{d.log_tail()}"
            time.sleep(0.2)
        aside = [p for p in d.dir.iterdir() if p.name.startswith(f"{state.name}.damaged-")]
        assert len(aside) == 1 and aside[0].read_bytes() == damaged, list(d.dir.iterdir())
        lines = [ln for ln in d.log_tail(100_000).splitlines() if "is damaged" in ln]
        assert len(lines) == 1 and str(state) in lines[0] and aside[0].name in lines[0], lines
    finally:
        if d.running():
            d.stop(signal.SIGTERM)
        proc = topo.director.exec([str(LBD), "--cleanup", "--queue-num", str(QUEUE_NUM)], check=False)
        leftovers = iptables_leftovers(topo.director)
        d.cleanup()
        assert proc.returncode == 0, proc.stderr
        assert not leftovers, leftovers
