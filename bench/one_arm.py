"""The one-arm variant of bench/pps.py's topology: the real server on the director's receiving side.

    client (.50, and rs1's address .11 on the same interface) ==[direct veth]== director (.2, VIP .100)

A one-arm director (the usual DR set-up: clients and real servers behind one interface) sends every
forwarded frame out of the interface it came in on. For lbd's AF_XDP source that is the socket's own
TX ring (no copy, one kick per batch) instead of the AF_PACKET socket it uses towards another
interface (docs/afxdp.md), so this layout measures that path. The real server is the client's own
namespace: a second address (.11) on the client's end of the cable, counted and dropped by the same
raw PREROUTING rules as rs1's (frames the generator sends never pass PREROUTING: AF_PACKET bypasses
netfilter), with Receive Packet Steering on the client's interface so that what the director sends
is received on the generator's CPU, as rs1's side is in the two-arm layout. The director forwards
back out of the same interface (ICMP redirects off). Modes: DR and IPIP (FULLNAT's local addresses
would collide with the spoofed SYN sources of the one /24).
"""

from __future__ import annotations

import subprocess
from typing import Any

from bench import pps, wire
from lb.testbed.topology import HostSpec, LinkSpec, SegmentSpec, Topology, TopologySpec

RS_HOST = 11  # rs1's address on the lan /24, on the client's interface


def spec() -> TopologySpec:
    return TopologySpec(
        segments=(SegmentSpec("lan"),),
        hosts=(
            HostSpec("client", (LinkSpec("lan", 50),), role="client"),
            HostSpec("director", (LinkSpec("lan", 2),), role="director", vips=(100,), forwarding=True),
        ),
    )


class _RsView:
    """rs1 as bench/pps.py uses it (exec, popen, ifname, addr): the client's namespace and interface."""

    def __init__(self, client: Any, addr: str) -> None:
        self._c = client
        self.addr = addr
        self.ifname = client.ifname
        self.netns = client.netns
        self.name = "rs1"

    def exec(self, *a: Any, **k: Any) -> Any:
        return self._c.exec(*a, **k)

    def popen(self, *a: Any, **k: Any) -> Any:
        return self._c.popen(*a, **k)

    def ip(self, *a: Any, **k: Any) -> Any:
        return self._c.ip(*a, **k)

    def iface(self, segment: str) -> Any:
        return self._c.iface(segment)


class OneArmBed(pps.Bed):
    def __init__(self, topo: Topology, gen_cpu: int | None, dut_cpu: int | None = None, steer: bool = True) -> None:
        self.topo = topo
        c, d = topo.client, topo.director
        self.wiring = "direct"
        wire.direct_wire(topo, "lan")
        lan_prefix = c.addr.rsplit(".", 1)[0]
        rs_addr = f"{lan_prefix}.{RS_HOST}"
        c.ip("addr", "add", f"{rs_addr}/{c.iface('lan').prefixlen}", "dev", c.ifname)
        rs = _RsView(c, rs_addr)
        self.client, self.director, self.rs = c, d, rs  # type: ignore[assignment]
        pps.Path_.__init__(
            self, gen_exec=lambda argv, timeout: c.exec(argv, timeout=timeout, check=False),
            gen_iface=c.ifname, dst_mac=d.iface("lan").mac, src_mac=c.mac, client_addr=c.addr,
            vip=topo.vip, rs_addr=rs_addr, gen_cpu=gen_cpu,
        )
        self.lan_prefix = self.back_prefix = lan_prefix
        self.laddrs = []
        for match in (["-p", "tcp", "--dport", str(pps.PORT)], ["-p", "4"]):
            c.exec(["iptables", "-w", "5", "-t", "raw", "-A", "PREROUTING", "-i", c.ifname, *match, "-j", "DROP"])
        d.sysctl({"net.ipv4.conf.all.send_redirects": 0, f"net.ipv4.conf.{d.iface('lan').ifname}.send_redirects": 0})
        self.rps = self._steer(gen_cpu, dut_cpu) if steer else {}
        self.dut_cpu = dut_cpu
        self.lbd_pid = None
        self.napi_pids = []
        self.filler_pid = None
        wire.prime_neighbours(c, d, "lan")
        d.ip("neigh", "replace", rs_addr, "lladdr", c.mac, "dev", d.iface("lan").ifname, "nud", "reachable")

    def _steer(self, gen_cpu: int | None, dut_cpu: int | None) -> dict[str, str]:
        """The director's receive on the DUT CPU; what it sends back to the client's interface (the
        real server's frames) received on the generator's CPU."""
        if gen_cpu is None or dut_cpu is None:
            return {}
        done = {}
        for host, cpu in ((self.director, dut_cpu), (self.client, gen_cpu)):
            dev = host.iface("lan").ifname
            path = f"/sys/class/net/{dev}/queues/rx-0/rps_cpus"
            r = subprocess.run(["ip", "netns", "exec", host.netns, "sh", "-c", f"echo {1 << cpu:x} > {path}"],
                               capture_output=True, text=True)
            done[f"{host.netns}:{dev}"] = f"cpu{cpu}" if r.returncode == 0 else f"failed: {r.stderr.strip()}"
        return done
