"""The guest bench's wire (`python -m bench ab --guest-wire`): veth (default) or virtio-net NICs.

Why: in the guest, lbd's XDP program on a veth runs in GENERIC mode, which reallocates and copies
every frame the generator sends (too little headroom) and transmits redirected frames through the
generic skb path; kernel IPVS pays neither. A real director runs XDP natively in its NIC driver.
virtio_net has native XDP, so `--guest-wire virtio` gives the director NICs whose driver has it.

How (two halves, the same plan on both sides of the boot):
- host side, qemu_opts(): per link of LINKS one qemu hub (`-netdev hubport,hubid=K`) joining two
  virtio-net-pci NICs with fixed MACs (nic_mac): the director's end and the far end. A hub has no
  host-side interface: frames go from one NIC of the guest to the other through qemu only.
- guest side, apply(): after the topology (lb.testbed.topology) is built, each link's two veth ends
  are replaced by the two NICs, found by MAC, moved into the namespaces under the SAME interface
  names and readdressed like bench/wire.py's direct wire. "lan": director <-> client (a cable).
  "back": director <-> the back segment's bridge (the far NIC becomes the bridge port the director's
  veth had, so rs1..rs3 stay reachable and bench/pps.py's RPS steering finds it by name). Each
  NIC's interrupts go to the CPU that does that end's work: the director's to the DUT CPU (native
  XDP runs in the NIC's NAPI, before RPS), the far ends' to the generator's CPU (the test equipment).
  The topology's Interface.mac is updated to the NIC's MAC.

Kernel forwarding, kernel IPVS and both lbd's then all run over the same NICs. XDP_PASS on the
director's back NIC (XDP_PASS_SRC, attached natively while an AF_XDP lbd runs): virtio_net takes
redirected XDP frames only on an interface that has a program attached.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import common, wire

WIRES = ("veth", "virtio")
LINKS = ("lan", "back")  # the director's links, in NIC order
ENDS = ("director", "far")
HUB_BASE = 10  # qemu hub ids HUB_BASE + link index (vng's own `--net loop` uses 0, 1, ...)
MAC_PREFIX = "52:54:00:4c"  # qemu's OUI, then 0x4c ("L" for link)
NIC_MODEL = "virtio-net-pci"
# qemu's virtio-net transmits from its main-loop thread; by default (tx=bh) every guest kick wakes that
# thread for the few frames queued since the last one. Under TCG on this 2-core host that thread then
# polls at 100 % of a core (perf: do_sys_poll, eventfd_poll) and starves the vCPUs: every row of the run
# measured the emulator's wake-ups. tx=timer sends what queued up within qemu's tx timer (150 us) in one
# go: a wire that costs the guest less per frame, the same for every system.
NIC_TX = "timer"
XDP_PASS_SRC = common.BENCH / "native" / "xdp_pass.bpf.c"


@dataclass(frozen=True)
class Nic:
    link: str  # "lan" / "back"
    end: str  # "director" / "far"
    mac: str
    netdev: str  # qemu's netdev id
    hub: int


def nic_mac(link_index: int, end_index: int) -> str:
    if not (0 <= link_index < 256 and 0 <= end_index < 256):
        raise ValueError(f"link {link_index} / end {end_index} out of range")
    return f"{MAC_PREFIX}:{link_index:02x}:{end_index:02x}"


def plan(links: tuple[str, ...] = LINKS) -> list[Nic]:
    """The NICs of `links`: two per link, director's end first."""
    out = []
    for li, link in enumerate(links):
        for ei, end in enumerate(ENDS):
            out.append(Nic(link, end, nic_mac(li, ei), f"vw{link}{ei}", HUB_BASE + li))
    return out


def qemu_opts(nics: list[Nic], tx: str = NIC_TX) -> list[str]:
    """qemu arguments for `nics`: one hub port and one virtio-net-pci device each (`tx`: its transmit
    mode, see NIC_TX)."""
    out: list[str] = []
    for n in nics:
        out += ["-netdev", f"hubport,id={n.netdev},hubid={n.hub}",
                "-device", f"{NIC_MODEL},netdev={n.netdev},mac={n.mac},tx={tx}"]
    return out


def macs_to_ifnames(addresses: dict[str, str], nics: list[Nic]) -> dict[Nic, str]:
    """Which interface (name -> MAC, as /sys/class/net says) is which NIC; ValueError naming the
    missing ones (e.g. the virtio_net driver is not loaded)."""
    by_mac = {mac.lower(): name for name, mac in addresses.items()}
    found = {n: by_mac[n.mac] for n in nics if n.mac in by_mac}
    missing = [f"{n.link}/{n.end} {n.mac}" for n in nics if n not in found]
    if missing:
        raise ValueError(f"no interface with the MAC of {', '.join(missing)} (have {sorted(addresses.values())})")
    return found


def irqs_of(interrupts: str, device: str) -> list[int]:
    """The IRQ numbers /proc/interrupts names after virtio device `device` (virtio3-input.0, ...)."""
    out = []
    for line in interrupts.splitlines():
        f = line.split()
        if f and f[0].rstrip(":").isdigit() and re.fullmatch(rf"{re.escape(device)}-\S+", f[-1]):
            out.append(int(f[0].rstrip(":")))
    return out


def _root_addresses(net: Path = Path("/sys/class/net")) -> dict[str, str]:
    out = {}
    for d in net.iterdir():
        try:
            out[d.name] = (d / "address").read_text().strip()
        except OSError:
            continue
    return out


def _pin_irqs(ifname: str, cpu: int | None) -> dict[str, Any]:
    """The NIC's interrupts to `cpu` (from the root namespace, before it moves)."""
    dev = Path(f"/sys/class/net/{ifname}/device").resolve().name  # virtioN
    irqs = irqs_of(Path("/proc/interrupts").read_text(), dev)
    if cpu is not None:
        for irq in irqs:
            Path(f"/proc/irq/{irq}/smp_affinity_list").write_text(str(cpu))
    return {"device": dev, "irqs": irqs, "cpu": cpu}


def apply(topo: Any, dut_cpu: int | None, gen_cpu: int | None,
          addresses: Callable[[], dict[str, str]] = _root_addresses) -> dict[str, Any]:
    """Replace the director's veth links by the virtio NICs (see the module doc); returns what was
    done (per NIC: its original name, the namespace and name it got, its IRQs and their CPU)."""
    subprocess.run(["modprobe", "virtio_net"], capture_output=True)
    subprocess.run(["udevadm", "settle", "-t", "20"], capture_output=True)  # udev may still rename them
    nics = plan()
    names = macs_to_ifnames(addresses(), nics)
    d = topo.director
    done: dict[str, Any] = {}
    for link in LINKS:
        nd = next(n for n in nics if n.link == link and n.end == "director")
        nf = next(n for n in nics if n.link == link and n.end == "far")
        iface = d.iface(link)
        hosts = [h for h in wire.segment_hosts(topo, link) if h is not d]
        cable = link == "lan" and len(hosts) == 1
        far_host = hosts[0] if cable else None
        port = topo.switch_port(d.name, link)
        info = {"director": _pin_irqs(names[nd], dut_cpu), "far": _pin_irqs(names[nf], gen_cpu)}
        d.ip("link", "del", iface.ifname)  # its bridge port goes with it
        if far_host is not None:
            far_host.ip("link", "del", far_host.iface(link).ifname)
        _move(names[nd], d.netns, iface.ifname)
        iface.mac = nd.mac
        wire.adopt(topo, d, iface)
        if far_host is not None:
            fi = far_host.iface(link)
            _move(names[nf], far_host.netns, fi.ifname)
            fi.mac = nf.mac
            wire.adopt(topo, far_host, fi)
            where = f"{far_host.netns}:{fi.ifname}"
        else:  # the far NIC takes the director's bridge port's place and name
            sw = topo.switch_ns(link)
            _move(names[nf], sw, port)
            for args in (("master", topo.bridge_name(link)), ("up",)):
                subprocess.run(["ip", "-n", sw, "link", "set", "dev", port, *args], check=True, capture_output=True)
            where = f"{sw}:{port} (bridge port)"
        info["director"].update(name=names[nd], mac=nd.mac, now=f"{d.netns}:{iface.ifname}")
        info["far"].update(name=names[nf], mac=nf.mac, now=where)
        done[link] = info
    return done


def _move(ifname: str, netns: str, new_name: str) -> None:
    subprocess.run(["ip", "link", "set", "dev", ifname, "netns", netns], check=True, capture_output=True)
    subprocess.run(["ip", "-n", netns, "link", "set", "dev", ifname, "name", new_name], check=True, capture_output=True)


def build_xdp_pass() -> Path:
    """XDP_PASS_SRC compiled (clang -target bpf) into bench/.build, if stale: on the host (the
    guest sees the repository read-only)."""
    out = common.BUILD / "xdp_pass.bpf.o"
    if not out.exists() or out.stat().st_mtime < XDP_PASS_SRC.stat().st_mtime:
        common.BUILD.mkdir(parents=True, exist_ok=True)
        arch = subprocess.run(["gcc", "-dumpmachine"], capture_output=True, text=True, check=True).stdout.strip()
        subprocess.run(["clang", "-O2", "-g", "-target", "bpf", "-Wall", "-Werror", f"-I/usr/include/{arch}", "-c",
                        str(XDP_PASS_SRC), "-o", str(out)], check=True, capture_output=True, text=True)
    return out


def attach_pass(host: Any, ifname: str) -> None:
    """XDP_PASS in native mode on `ifname` (the redirect target), from bench/.build."""
    host.ip("link", "set", "dev", ifname, "xdpdrv", "obj", str(common.BUILD / "xdp_pass.bpf.o"), "sec", "xdp")


def detach(host: Any, ifname: str) -> None:
    host.ip("link", "set", "dev", ifname, "xdpdrv", "off", check=False)
