"""A bench segment as a plain cable: the two hosts' veths joined directly, no bridge between.

Why: lb.testbed.topology builds every segment as a Linux bridge in a switch namespace. A veth
delivers to its peer on the SENDING CPU, so the bridge's work for every frame the generator sends
runs on the generator's CPU: measured here (bench/genmax.py), that bounds the offered load at
~0.2-0.3 Mpps whatever the generator does, while the same generator offers ~1.2 Mpps into a veth
that leads straight to the receiver. A real tester's NIC is cabled to the director's NIC; a
direct veth is the closer model.

`direct_wire(topo, segment)` replaces the segment's two bridge attachments by one veth pair with
the SAME interface names, MAC addresses, addresses, VIPs and rp_filter settings, so everything
that looked the interfaces up (lbd, RPS, counters, the generator's template) is unchanged. Only
a segment with exactly two hosts can be a cable (call it before adding routes or addresses of
one's own on those interfaces); the bridge and its switch namespace stay (empty)
and go with the topology. Everything happens inside the topology's own namespaces: the pair is
created in one host's namespace with its peer placed straight into the other's.
"""

from __future__ import annotations

from typing import Any

from lb.testbed.topology import Topology

WIRES = ("direct", "bridge")


def segment_hosts(topo: Topology, segment: str) -> list[Any]:
    return [h for h in topo.hosts.values() if any(i.segment == segment for i in h.ifaces)]


def direct_wire(topo: Topology, segment: str) -> tuple[str, str]:
    """Join the two hosts of `segment` by one veth pair; returns their interface names."""
    hosts = segment_hosts(topo, segment)
    if len(hosts) != 2:
        raise ValueError(f"segment {segment!r} has {len(hosts)} hosts; a direct wire joins exactly two")
    (a, b) = hosts
    ia, ib = a.iface(segment), b.iface(segment)
    # Deleting one end of a veth deletes its peer (the bridge port in the switch namespace).
    a.ip("link", "del", ia.ifname)
    b.ip("link", "del", ib.ifname)
    a.ip("link", "add", ia.ifname, "address", ia.mac, "type", "veth",
         "peer", "name", ib.ifname, "address", ib.mac, "netns", b.netns)
    for host, iface in ((a, ia), (b, ib)):
        adopt(topo, host, iface)
    return ia.ifname, ib.ifname


def adopt(topo: Topology, host: Any, iface: Any) -> None:
    """Configure a link that replaced `host`'s interface `iface` under its name (a veth of
    direct_wire, a NIC of bench/guest_wire.py): its address, the VIPs the topology put on it, up,
    rp_filter off, and the default route if it went with the old interface."""
    host.ip("addr", "add", f"{iface.addr}/{iface.prefixlen}", "dev", iface.ifname)
    if host.ifaces[0] is iface and host.spec.role != "real":
        for vip in host.vips:  # the topology puts a director's VIPs on its first interface
            host.ip("addr", "add", f"{vip}/32", "dev", iface.ifname)
    host.ip("link", "set", iface.ifname, "up")
    host.sysctl({f"net.ipv4.conf.{iface.ifname}.rp_filter": 0})
    gw = host.spec.gateway
    if gw is not None and gw[0] == iface.segment:  # the default route went with the old interface
        host.ip("route", "replace", "default", "via", topo.addr(gw[0], gw[1]))


def prime_neighbours(a: Any, b: Any, segment: str) -> None:
    """What one ping between hosts a and b on `segment` leaves behind, without ping (a fresh
    Debian 12 has no iputils-ping, and nothing else here needs it): each host's neighbour entry for
    the other's address, REACHABLE with the MAC the kernel gave that interface. The kernel then
    ages, confirms or re-resolves them as entries it learnt itself, so the first trial pays no
    address resolution and nothing is pinned that the network would not have said."""
    ia, ib = a.iface(segment), b.iface(segment)
    for host, mine, other in ((a, ia, ib), (b, ib, ia)):
        if not other.mac:
            raise ValueError(f"{segment}: no MAC known for {other.ifname} ({other.addr})")
        host.ip("neigh", "replace", other.addr, "lladdr", other.mac, "dev", mine.ifname, "nud", "reachable")
