"""Connection sync between kernel IPVS and lbd, both ways (issue 18 item 2); runs INSIDE the guest
(or on any host whose kernel has ip_vs), as root:

    cd tests && python -m conformance.sync_interop --out DIR

writes DIR/sync.json. The runner's topology (runner.build) twice, kernel IPVS in the first
instance's director, lbd in the second's, and one extra veth link between the two directors
(SYNC_NET): the sync daemons' multicast interface. Both directors get the same rules: one TCP
service with a DR, an IPIP and a NAT real server, one UDP service with DR real servers.

- lbd -> kernel: lbd runs the master, the kernel the backup; clients of lbd's instance hold TCP
  connections open and send UDP datagrams; the record has lbd's `-Lnc` and the kernel's.
- kernel -> lbd: the kernel runs the master, lbd the backup; the same traffic in the kernel's
  instance (each flow sends at least sync_threshold = 3 packets, the kernel's default, so the kernel
  syncs it); the record has the kernel's `-Lnc` and lbd's.

tests/kernel/test_sync_interop.py compares them.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from conformance.runner import MODULES, NAT_PORTS, REAL_INDEXES, SERVICE_PORT, build, raise_fd_limit
from conformance.systems import KernelIpvs, LbdSystem, System
from conformance.traffic import Flow, RealServers, close_tcp, open_tcp, udp_exchange
from lb.testbed.topology import Topology

SYNC_NET = "10.251.10."        # the directors' sync link: kernel .1, lbd .2 (inside our namespaces only)
SYNC_IF = ("lbsyk", "lbsyl")  # in different namespaces, so no clash with anything of the host
TCP_FLOWS = 6                   # two per real server of the TCP service (rr)
UDP_FLOWS = 4
UDP_PACKETS = 3                 # the kernel master syncs a UDP entry at its 3rd packet (sync_threshold)
SYNC_WAIT_S = 60.0              # until the backup lists every flow: a bound under emulation
PORT_BASE = {"lbd-to-kernel": 20000, "kernel-to-lbd": 21000}


def rules(vip: str, rs: dict[str, str], nrs: dict[str, str]) -> str:
    return (f"-A -t {vip}:80 -s rr\n"
            f"-a -t {vip}:80 -r {rs['rs1']}:80 -g -w 1\n"
            f"-a -t {vip}:80 -r {rs['rs2']}:80 -i -w 1\n"
            f"-a -t {vip}:80 -r {nrs['rs3']}:8080 -m -w 1\n"
            f"-A -u {vip}:80 -s rr\n"
            f"-a -u {vip}:80 -r {rs['rs1']}:80 -g -w 1\n"
            f"-a -u {vip}:80 -r {rs['rs4']}:80 -g -w 1\n")


def link_directors(ktopo: Topology, ltopo: Topology) -> None:
    kns, lns = ktopo.director.netns, ltopo.director.netns
    subprocess.run(["ip", "-n", kns, "link", "add", SYNC_IF[0], "type", "veth", "peer", "name", SYNC_IF[1],
                    "netns", lns], check=True, capture_output=True, text=True)
    for ns, ifname, host in ((kns, SYNC_IF[0], 1), (lns, SYNC_IF[1], 2)):
        subprocess.run(["ip", "-n", ns, "addr", "add", f"{SYNC_NET}{host}/24", "dev", ifname], check=True)
        subprocess.run(["ip", "-n", ns, "link", "set", ifname, "up"], check=True)


def tunnel_real_server(topo: Topology, rs: str) -> None:
    """rs decapsulates IPIP (the guest's kernel has the ipip module): tunl0 up, no rp_filter on it."""
    host = topo.host(rs)
    host.ip("link", "set", "tunl0", "up")
    host.sysctl({"net.ipv4.conf.tunl0.rp_filter": 0})


def admin(system: System, args: str) -> dict[str, Any]:
    r = system.admin(args.split())
    return {"cmd": args, "rc": r.rc, "stdout": r.stdout, "stderr": r.stderr}


def traffic(topo: Topology, vip: str, base: int) -> dict[str, Any]:
    netns, caddr = topo.client.netns, topo.client.addr
    tcp = [Flow("c1", caddr, base + k) for k in range(TCP_FLOWS)]
    for f in tcp:
        open_tcp(netns, f, vip, SERVICE_PORT)
        if f.sock is not None:  # one more packet from the client (the kernel syncs at its 3rd)
            f.sock.send(b"x")
    udp = [Flow("c1", caddr, base + 500 + k) for k in range(UDP_FLOWS)]
    for f in udp:
        for _ in range(UDP_PACKETS):
            udp_exchange(netns, f, vip, SERVICE_PORT)
    return {"tcp": tcp, "udp": udp}


def wait_listing(backup: System, want: int, vip: str, ports: set[str]) -> tuple[float, dict[str, Any]]:
    """The backup's -Lnc until it lists `want` entries of the VIP from these client ports (or the
    bound passed)."""
    t0 = time.monotonic()
    while True:
        rec = admin(backup, "-Lnc")
        n = sum(1 for line in rec["stdout"].splitlines() if f" {vip}:" in line and any(p in line for p in ports))
        if n >= want or time.monotonic() - t0 > SYNC_WAIT_S:
            return round(time.monotonic() - t0, 1), rec
        time.sleep(1.0)


def direction(name: str, master: System, backup: System, master_if: str, backup_if: str, topo: Topology,
              vip: str, syncid: int) -> dict[str, Any]:
    res: dict[str, Any] = {"steps": []}
    res["steps"].append(admin(backup, f"--start-daemon backup --mcast-interface {backup_if} --syncid {syncid}"))
    res["steps"].append(admin(master, f"--start-daemon master --mcast-interface {master_if} --syncid {syncid}"))
    res["steps"].append(admin(master, "-L --daemon"))
    res["steps"].append(admin(backup, "-L --daemon"))
    flows = traffic(topo, vip, PORT_BASE[name])
    res["flows"] = {kind: [{"port": f.port, "outcome": f.outcome} for f in fl] for kind, fl in flows.items()}
    res["master_lnc"] = admin(master, "-Lnc")
    ports = {f":{f.port} " for fl in flows.values() for f in fl}
    want = sum(1 for line in res["master_lnc"]["stdout"].splitlines()
               if f" {vip}:" in line and (line.startswith("UDP") or " ESTABLISHED " in line)
               and any(p in line for p in ports))
    res["waited_s"], res["backup_lnc"] = wait_listing(backup, want, vip, ports)
    res["master_lnc_after"] = admin(master, "-Lnc")
    for f in flows["tcp"]:
        close_tcp(f)
    res["steps"].append(admin(master, "--stop-daemon master"))
    res["steps"].append(admin(backup, "--stop-daemon backup"))
    return res


def run(out_dir: Path) -> dict[str, Any]:
    t0 = time.monotonic()
    raise_fd_limit()
    data: dict[str, Any] = {"kernel": __import__("os").uname().release, "errors": {}}
    for m in (*MODULES, "ipip"):
        subprocess.run(["modprobe", m], capture_output=True)
    servers = RealServers()
    topos: list[Topology] = []
    lbd: LbdSystem | None = None
    try:
        ktopo = build(1)
        topos.append(ktopo)
        ltopo = build(1)
        topos.append(ltopo)
        lbd = LbdSystem(ltopo.director)
        data["lbd_start"] = lbd.start()
        link_directors(ktopo, ltopo)
        kernel = KernelIpvs(ktopo.director)
        for topo, system in ((ktopo, kernel), (ltopo, lbd)):
            vip = topo.addr("lan", 100)
            rs = {name: topo.addr("lan", idx) for name, idx in zip(("rs1", "rs2", "rs3", "rs4"), REAL_INDEXES, strict=True)}
            nrs = {name: topo.addr("nat", idx) for name, idx in zip(("rs1", "rs2", "rs3", "rs4"), REAL_INDEXES, strict=True)}
            for name in rs:
                servers.serve(topo.host(name).netns, name, vip, SERVICE_PORT)
                for port in NAT_PORTS:
                    servers.serve(topo.host(name).netns, name, nrs[name], port)
            tunnel_real_server(topo, "rs2")
            r = system.admin(["-R"], stdin=rules(vip, rs, nrs))
            data[f"rules_{system.name}"] = {"rc": r.rc, "stderr": r.stderr}
        data["lbd_resolved"] = lbd.before_traffic()
        vip = ktopo.addr("lan", 100)  # the same in both instances
        data["lbd-to-kernel"] = direction("lbd-to-kernel", lbd, kernel, SYNC_IF[1], SYNC_IF[0], ltopo, vip, 18)
        data["kernel-to-lbd"] = direction("kernel-to-lbd", kernel, lbd, SYNC_IF[0], SYNC_IF[1], ktopo, vip, 19)
        data["lbd_log_tail"] = lbd.lbd.log_tail(3000)
    except Exception as exc:  # noqa: BLE001
        data["errors"]["setup"] = f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"
        print(f"sync_interop: {data['errors']['setup']}", file=sys.stderr, flush=True)
    finally:
        if lbd is not None:
            lbd.stop()
        servers.close()
        for topo in topos:
            topo.close()
        data["elapsed_s"] = round(time.monotonic() - t0, 1)
        (out_dir / "sync.json").write_text(json.dumps(data, indent=1))
    return data


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m conformance.sync_interop")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    run(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
