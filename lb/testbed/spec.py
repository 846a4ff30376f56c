"""The declarative description of a test topology (lb.testbed.topology builds it): L2 segments,
hosts and their links, and the address plan of the standard DR and FULLNAT topologies."""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class SegmentSpec:
    """One L2 segment (a bridge). `subnet` None: a /24 is chosen per run."""

    name: str
    subnet: str | None = None


@dataclass(frozen=True)
class LinkSpec:
    """A host's attachment to a segment; the address is `.host_index` of the segment's subnet."""

    segment: str
    host_index: int


@dataclass(frozen=True)
class HostSpec:
    """A host namespace.

    role: "client" | "director" | "real" | "router" | anything else (plain host).
    vips: VIP host indexes (on `vip_segment`, default the first link's segment).
      A "director" puts them on its interface; a "real" server puts them on `lo`
      (/32) with arp_ignore=1/arp_announce=2, the DR/TUN real-server configuration
      (a TUN real server on another subnet names the director's segment here).
    gateway: (segment, host_index) of the default route, if any.
    forwarding: enable IPv4 forwarding (routers).
    """

    name: str
    links: tuple[LinkSpec, ...]
    role: str = "host"
    vips: tuple[int, ...] = ()
    gateway: tuple[str, int] | None = None
    forwarding: bool = False
    vip_segment: str | None = None


@dataclass(frozen=True)
class TopologySpec:
    segments: tuple[SegmentSpec, ...]
    hosts: tuple[HostSpec, ...]

    def __post_init__(self) -> None:
        seg_names = [s.name for s in self.segments]
        if len(set(seg_names)) != len(seg_names):
            raise ValueError(f"duplicate segment names: {seg_names}")
        host_names = [h.name for h in self.hosts]
        if len(set(host_names)) != len(host_names):
            raise ValueError(f"duplicate host names: {host_names}")
        for seg in seg_names:
            if not re.fullmatch(r"[a-z0-9]{1,4}", seg):
                raise ValueError(f"segment name {seg!r}: 1-4 chars [a-z0-9] (it goes into link names)")
        for h in self.hosts:
            if not re.fullmatch(r"[a-z0-9]{1,12}", h.name):
                raise ValueError(f"host name {h.name!r}: 1-12 chars [a-z0-9]")
            if not h.links:
                raise ValueError(f"host {h.name} has no links")
            for link in h.links:
                if link.segment not in seg_names:
                    raise ValueError(f"host {h.name}: unknown segment {link.segment!r}")
                if not 1 <= link.host_index <= 254:
                    raise ValueError(f"host {h.name}: host_index {link.host_index} not in 1..254")
            if h.vip_segment is not None and h.vip_segment not in seg_names:
                raise ValueError(f"host {h.name}: unknown vip_segment {h.vip_segment!r}")
        used: dict[tuple[str, int], str] = {}
        for h in self.hosts:
            for link in h.links:
                key = (link.segment, link.host_index)
                if key in used:
                    raise ValueError(f"{h.name} and {used[key]} share address index {key}")
                used[key] = h.name


# Address plan of the DR topology (host index inside the segment's /24).
DIRECTOR_INDEX = 2
VIP_INDEX = 100
CLIENT_INDEX = 50
REAL_BASE_INDEX = 10  # rs1 = .11, rs2 = .12, ...


def dr_spec(n_real: int = 3) -> TopologySpec:
    """client, director and rs1..rsN on one segment "lan"; the VIP is .100 of it."""
    if not 1 <= n_real <= 20:
        raise ValueError("n_real must be in 1..20")
    hosts = [
        HostSpec("client", (LinkSpec("lan", CLIENT_INDEX),), role="client"),
        HostSpec("director", (LinkSpec("lan", DIRECTOR_INDEX),), role="director", vips=(VIP_INDEX,)),
    ]
    for i in range(1, n_real + 1):
        hosts.append(
            HostSpec(f"rs{i}", (LinkSpec("lan", REAL_BASE_INDEX + i),), role="real", vips=(VIP_INDEX,))
        )
    return TopologySpec(segments=(SegmentSpec("lan"),), hosts=tuple(hosts))


def fullnat_spec(n_real: int = 3) -> TopologySpec:
    """FULLNAT: client and director on "lan" (VIP .100), real servers f1..fN on "back".

    The director is .1 on "back" (its local address, and the real servers'
    default route, so replies come back through it); f<i> is .1<i>. The real
    servers have no VIP.
    """
    if not 1 <= n_real <= 20:
        raise ValueError("n_real must be in 1..20")
    hosts = [
        HostSpec("client", (LinkSpec("lan", CLIENT_INDEX),), role="client"),
        HostSpec("director", (LinkSpec("lan", DIRECTOR_INDEX), LinkSpec("back", 1)), role="director",
                 vips=(VIP_INDEX,)),
    ]
    for i in range(1, n_real + 1):
        hosts.append(HostSpec(f"f{i}", (LinkSpec("back", REAL_BASE_INDEX + i),), role="real",
                              gateway=("back", 1)))
    return TopologySpec(segments=(SegmentSpec("lan"), SegmentSpec("back")), hosts=tuple(hosts))
