"""A full connection table under a spoofed-SYN flood keeps serving real clients (issue 15 item 4).

lbd with --conn-max 5000 balances the session topology's HTTP servers (DR). A flood of spoofed
SYNs at 3,000 per second (sources that do not exist in the client's subnet, each used once) fills
the table within two seconds and keeps it full; meanwhile real clients make fresh requests through
the VIP, and more right after the flood. Early drop (docs/fastpath.md "When the table is full")
lets each new SYN take the place of the half-open entry that expires first, so real clients'
handshakes complete: at least 90 % of the requests during the flood and every one after it are
served. Before early drop, a full table refused every new client until the spoofed entries'
60 s SYN_RECV timeout ran out.

Counts, not times: each request may take up to its client timeout (2 s, room for one SYN
retransmission), and the figures are printed as `PRESSURE-FIGURES`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from conftest import HTTP_PORT, Lbd, running_lbd

from lb.testbed import flood
from lb.testbed.topology import Topology

CONN_MAX = 5000
FLOOD_PPS = 3000.0
FLOOD_S = 8.0


@pytest.fixture
def small_lbd(topo: Topology) -> Iterator[Lbd]:
    with running_lbd(topo, "c", args=["--conn-max", str(CONN_MAX)]) as d:
        svc = f"{topo.vip}:{HTTP_PORT}"
        d.lbadm("-A", "-t", svc, "-s", "rr")
        for rs in topo.reals:
            d.lbadm("-a", "-t", svc, "-r", rs.addr, "-g")
        d.wait_resolved()
        yield d


def test_spoofed_syn_flood_on_a_full_table_does_not_lock_real_clients_out(topo: Topology, small_lbd: Lbd) -> None:
    def counters() -> dict[str, Any]:
        return dict(small_lbd.ok("counters"))

    res = flood.run(topo.client, topo.client.netns, topo.vip, HTTP_PORT, counters, pps=FLOOD_PPS, seconds=FLOOD_S,
                    during=30, after=10, timeout=2.0)
    figures = res.figures()
    print(f"\nPRESSURE-FIGURES {figures}")
    assert res.table_full_before_clients, f"the flood never filled the table: {figures}"
    assert figures["early_drops"] > 0, figures
    assert res.during_ok >= 0.9 * len(res.during), f"{res.during_ok}/{len(res.during)} served during the flood: " \
        f"{figures}; errors {[r.error for r in res.during if not r.ok][:5]}"
    assert res.after_ok == len(res.after), f"{res.after_ok}/{len(res.after)} served after the flood: {figures}"
