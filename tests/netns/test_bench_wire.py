"""bench/wire.py and the pps bed's direct wiring: the same interfaces, cabled without a bridge.

`python -m bench pps` (default `--wire direct`) re-makes the client's and rs1's links to the
director as plain veth pairs. Everything that looked the interfaces up must see the same names,
MACs, addresses and VIPs; the director must route between them; and the generator's frames must
reach rs1's counter, none lost or miscounted (offered = tx + tx_dropped).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from bench import pps, wire
from lb.testbed.topology import Host, Topology

pytestmark = pytest.mark.netns


def _links(topo: Topology) -> dict[str, list[tuple[str, str, str]]]:
    return {name: [(i.ifname, i.mac, i.addr) for i in h.ifaces] for name, h in topo.hosts.items()}


def _ifaces_in(host: Host, ifname: str) -> str:
    return host.exec(["ip", "-br", "addr", "show", "dev", ifname]).stdout


def test_direct_wire_keeps_interfaces_and_carries_the_generators_frames() -> None:
    with Topology(pps.pps_spec()) as topo, tempfile.TemporaryDirectory(prefix="lbB-wire-") as tmpd:
        before = _links(topo)
        bed = pps.Bed(topo, gen_cpu=None, dut_cpu=None, steer=False, wiring="direct")
        assert _links(topo) == before
        d, c, rs = topo.director, topo.client, topo.host("rs1")
        for host in (d, c, rs):
            for i in host.ifaces:
                shown = host.exec(["cat", f"/sys/class/net/{i.ifname}/address"]).stdout.strip()
                assert shown == i.mac
                assert f"{i.addr}/" in _ifaces_in(host, i.ifname)
        assert f"{topo.vip}/32" in _ifaces_in(d, d.iface("lan").ifname)
        # no bridge in the path any more: the switch namespaces' bridges have no ports
        for seg in ("lan", "back"):
            ports = topo.switch_host(seg).exec(["ip", "-o", "link", "show", "master", topo.bridge_name(seg)]).stdout
            assert ports.strip() == "", ports
        # rs1 lost its default route with its old interface: it must be back (DR replies use it)
        assert f"via {d.iface('back').addr}" in rs.exec(["ip", "route", "show", "default"]).stdout
        # the generator through the director as a router, counted at rs1
        tr = pps.make_traffic(bed, Path(tmpd), "est", bed.rs_addr)
        t = pps.trial(bed, tr, 2000, 0.5)
        assert t["sent"] == 1000 and t["gen_refused"] == 0
        assert t["tx"] == 1000 and t["tx_dropped"] == 0
        assert t["rx"] == 1000 and t["pass"]


def test_direct_wire_needs_exactly_two_hosts() -> None:
    with Topology(pps.pps_spec(reals=2)) as topo:
        with pytest.raises(ValueError, match="3 hosts"):
            wire.direct_wire(topo, "back")
        assert wire.direct_wire(topo, "lan") == (topo.client.ifname, topo.director.iface("lan").ifname)
