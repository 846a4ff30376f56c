"""What a sync master sends for one busy connection (issue 18 item 1; docs/sync.md "What the master
sends"): with the kernel's defaults (sync_threshold 3 50) a connection goes on the 3rd packet from
its client and every 50th after, not by time. One TCP connection through an lbd master carries a
known number of packets (one byte per segment, each acknowledged before the next, so the kernel
never merges two); a listener on the sync group counts the records that name it.

Own topology: client .50, da .2 (lbd, the VIP), db .3 (the listener), real servers .11/.12 with a
discarding TCP server; all on one segment.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import REPO
from sync_pair import LbdOn, wait_until

from lb.testbed.topology import (
    CLIENT_INDEX,
    DIRECTOR_INDEX,
    REAL_BASE_INDEX,
    VIP_INDEX,
    HostSpec,
    LinkSpec,
    SegmentSpec,
    Topology,
    TopologySpec,
)

pytestmark = pytest.mark.netns

PORT = 9000
WAIT_S = 15.0  # a bound for a loaded machine (the master sends once a second), not a threshold

SINK = """
import socket, threading
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", %d))
srv.listen(16)
def drain(c):
    while c.recv(65536):
        pass
    c.close()
while True:
    c, _ = srv.accept()
    threading.Thread(target=drain, args=(c,), daemon=True).start()
""" % PORT

# One byte a segment: TCP_NODELAY, and the next byte only once the previous one is acknowledged
# (SIOCOUTQ 0), so every byte is one packet from the client.
CLIENT = """
import fcntl, socket, struct, sys, termios, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
print(s.getsockname()[1], flush=True)
for line in sys.stdin:
    cmd, n = line.split()
    if cmd == "send":
        for _ in range(int(n)):
            s.send(b"x")
            deadline = time.monotonic() + 10
            while struct.unpack("i", fcntl.ioctl(s, termios.TIOCOUTQ, b"\\0" * 4))[0]:
                if time.monotonic() > deadline:
                    sys.exit("a byte was not acknowledged in 10 s")
                time.sleep(0.001)
        print("sent", flush=True)
    else:
        s.close()
        print("closed", flush=True)
        break
"""

# Joins the sync group on the interface with address argv[1]; one JSON line per record received.
LISTENER = """
import json, socket, sys
from lb.sync import codec
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((codec.SYNC_GROUP, codec.SYNC_PORT))
s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
             socket.inet_aton(codec.SYNC_GROUP) + socket.inet_aton(sys.argv[1]))
print(json.dumps("ready"), flush=True)
while True:
    for c in codec.decode(s.recv(65535), 0).conns:
        print(json.dumps([c.caddr, c.cport, c.state, c.template]), flush=True)
"""


def _spec() -> TopologySpec:
    hosts = [
        HostSpec("client", (LinkSpec("lan", CLIENT_INDEX),), role="client"),
        HostSpec("da", (LinkSpec("lan", DIRECTOR_INDEX),), role="director", vips=(VIP_INDEX,)),
        HostSpec("db", (LinkSpec("lan", DIRECTOR_INDEX + 1),), role="host"),
        HostSpec("rs1", (LinkSpec("lan", REAL_BASE_INDEX + 1),), role="real", vips=(VIP_INDEX,)),
        HostSpec("rs2", (LinkSpec("lan", REAL_BASE_INDEX + 2),), role="real", vips=(VIP_INDEX,)),
    ]
    return TopologySpec(segments=(SegmentSpec("lan"),), hosts=tuple(hosts))


class Lines:
    """The lines a process prints, collected by a thread."""

    def __init__(self, proc: subprocess.Popen[Any]) -> None:
        self.lines: list[str] = []
        self._proc = proc
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            self.lines.append(line.strip())


@pytest.fixture(scope="module")
def master() -> Iterator[tuple[Topology, LbdOn]]:
    with Topology(_spec()) as topo:
        for rs in topo.reals:
            rs.popen([sys.executable, "-c", SINK])
        lbd = LbdOn(topo, topo.host("da"))
        try:
            lbd.start()
            lbd.lbadm("-A", "-t", f"{topo.vip}:{PORT}", "-s", "rr")
            for rs in topo.reals:
                lbd.lbadm("-a", "-t", f"{topo.vip}:{PORT}", "-r", f"{rs.addr}:{PORT}", "-g")
            lbd.wait_resolved()
            yield topo, lbd
        finally:
            lbd.discard()


def test_a_busy_connection_is_sent_on_its_3rd_packet_and_every_50th_after(master: tuple[Topology, LbdOn]) -> None:
    topo, lbd = master
    db = topo.host("db")
    listener = Lines(db.popen([sys.executable, "-c", LISTENER, db.addr], stdout=subprocess.PIPE, text=True,
                              env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}))
    wait_until(lambda: listener.lines, WAIT_S, "the listener joining the sync group")
    # The bulk pass only at start (the table is empty then): every record after it is the rule's.
    lbd.ok("start_daemon", {"state": "master", "mcast_ifn": lbd.director.ifname, "bulk_period": 0})
    try:
        proc = topo.client.popen([sys.executable, "-c", CLIENT, topo.vip, str(PORT)], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True)
        out = Lines(proc)
        cport = int(wait_until(lambda: out.lines[:1], WAIT_S, "the client connected")[0])
        key = [topo.client.addr, cport]

        def records(state: int | None = None) -> list[list[Any]]:
            return [r for r in map(json.loads, listener.lines[1:])
                    if r[:2] == key and not r[3] and (state is None or r[2] == state)]

        def inpkts() -> int:
            (svc,) = lbd.ok("list")["services"]
            return int(svc["stats"]["inpkts"])

        def command(line: str, answer: str) -> None:
            assert proc.stdin is not None
            before = out.lines.count(answer)
            proc.stdin.write(line + "\n")
            proc.stdin.flush()
            wait_until(lambda: out.lines.count(answer) > before, 60, f"the client's {line!r}")

        established = 1  # lb_api.h LB_S_ESTABLISHED, the kernel's IP_VS_TCP_S_ESTABLISHED
        count = 2        # SYN and the handshake's ACK
        wait_until(lambda: inpkts() == count, WAIT_S, "lbd counting the handshake")
        for target in (3, 53, 103, 130):
            command(f"send {target - count}", "sent")
            count = target
            wait_until(lambda n=count: inpkts() == n, WAIT_S, f"lbd counting {count} packets")
            chosen = len(range(3, count + 1, 50))  # packets 3, 53, 103, ...
            wait_until(lambda n=chosen: len(records(established)) >= n, WAIT_S,
                       f"{chosen} records of the connection after {count} packets")
        # The client's FIN (a new closing state) is sent at once: once it is in, every earlier tick
        # has been read, and the 127 packets in between sent nothing more.
        command("close 0", "closed")
        wait_until(lambda: [r for r in records() if r[2] != established], WAIT_S, "the record of the client's FIN")
        assert len(records(established)) == 3, records()
        daemon = lbd.ok("get_daemon")["daemons"][0]
        assert daemon["counters"].get("bulk_passes") == 1
    finally:
        lbd.ok("stop_daemon", {"state": "master"})
