"""Real-server helper for IPIP (tunnel) mode: decapsulate protocol-4 packets in userspace.

Why: a real server behind `lbadm -a ... -i` receives the client's packet inside
an outer IPv4 header (protocol 4). On a real host the kernel's `ipip` module
strips it::

    modprobe ipip                      # creates tunl0
    ip link set tunl0 up
    ip addr add VIP/32 dev lo          # the real server owns the VIP, like DR
    sysctl -w net.ipv4.conf.tunl0.rp_filter=0 net.ipv4.conf.all.rp_filter=0
    sysctl -w net.ipv4.conf.all.arp_ignore=1 net.ipv4.conf.all.arp_announce=2

This machine's kernel has no `ipip` module, so tests and `make demo` run this
helper in each real server's namespace instead. It reads every protocol-4
packet addressed to the host on a raw socket (raw sockets see the whole IP
packet, and a raw listener keeps the kernel from answering "protocol
unreachable"), strips the outer header, and writes the inner packet to a TUN
device: the kernel then receives it as if it had arrived on that device and
delivers it to the VIP on `lo`. Replies leave directly to the client, as in DR.

Usage (inside the real server's namespace, as root)::

    python -m lb.testbed.ipip_decap [--dev lbipip0] [--count N] [--seconds S]

From Python, `start_in(host, dev)` starts it in a test-bed host and waits until
it is ready; the topology ends it (by PID) with everything else.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lb.testbed.topology import Host

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IPPROTO_IPIP = 4
MAX_PACKET = 65535


def open_tun(name: str) -> int:
    """Create (or attach to) a TUN device without packet info headers; return its fd."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    ifr = struct.pack("16sH22x", name.encode(), IFF_TUN | IFF_NO_PI)
    fcntl.ioctl(fd, TUNSETIFF, ifr)
    return fd


def configure(dev: str) -> None:
    """Bring the device up and let the kernel accept packets whose source routes elsewhere."""
    subprocess.run(["ip", "link", "set", dev, "up"], check=True)
    for key in ("all", dev):
        subprocess.run(["sysctl", "-q", "-w", f"net.ipv4.conf.{key}.rp_filter=0"], check=True)


def inner_packet(outer: bytes) -> bytes | None:
    """The packet carried by an IPIP packet, or None if this is not a well-formed one."""
    if len(outer) < 20 or outer[0] >> 4 != 4 or outer[9] != IPPROTO_IPIP:
        return None
    ihl = (outer[0] & 0x0F) * 4
    total = int.from_bytes(outer[2:4], "big")
    if ihl < 20 or total < ihl + 20 or total > len(outer):
        return None
    inner = outer[ihl:total]
    if inner[0] >> 4 != 4:
        return None
    return inner


def run(dev: str, max_count: int, max_seconds: float) -> int:
    raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, IPPROTO_IPIP)
    tun = open_tun(dev)
    configure(dev)
    stop = {"now": False}

    def on_signal(_sig: int, _frame: object) -> None:
        stop["now"] = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print(f"ipip_decap: {dev} ready", flush=True)
    deadline = time.monotonic() + max_seconds
    forwarded = 0
    try:
        while not stop["now"] and forwarded < max_count and time.monotonic() < deadline:
            ready, _, _ = select.select([raw], [], [], 0.2)
            if not ready:
                continue
            outer = raw.recv(MAX_PACKET)
            inner = inner_packet(outer)
            if inner is None:
                continue
            os.write(tun, inner)
            forwarded += 1
    finally:
        os.close(tun)  # a non-persistent TUN device disappears with its last fd
        raw.close()
    print(f"ipip_decap: {forwarded} packets decapsulated", flush=True)
    return 0


def start_in(host: Host, dev: str, seconds: float = 3600.0,
             ready_timeout: float = 10.0) -> subprocess.Popen[bytes]:
    """Start this helper inside test-bed host `host` (its namespace), creating TUN `dev`.

    Returns once it printed "ready"; raises RuntimeError with its output otherwise.
    The process belongs to the host's topology, which ends it by PID on close.
    """
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, PYTHONPATH=repo)
    proc = host.popen([sys.executable, "-m", "lb.testbed.ipip_decap", "--dev", dev,
                       "--seconds", str(seconds)],
                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    assert proc.stdout is not None
    deadline = time.monotonic() + ready_timeout
    seen = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.1)
        if ready:
            line = proc.stdout.readline()
            seen += line
            if b"ready" in line:
                return proc
            if not line:  # EOF: it exited
                break
    host.topo.stop_process(proc)
    raise RuntimeError(f"ipip_decap in {host.name} not ready: {seen.decode(errors='replace')}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="ipip_decap", description=__doc__.split("\n\n")[0])
    p.add_argument("--dev", default="lbipip0", help="TUN device to create (default lbipip0)")
    p.add_argument("--count", type=int, default=10_000_000, help="stop after N packets")
    p.add_argument("--seconds", type=float, default=3600.0, help="stop after S seconds")
    args = p.parse_args(argv)
    return run(args.dev, args.count, args.seconds)


if __name__ == "__main__":
    sys.exit(main())
