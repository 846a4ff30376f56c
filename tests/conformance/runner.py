"""Plays every conformance scenario on kernel IPVS and on lbd; runs INSIDE the guest (or on any
host whose kernel has ip_vs), as root:

    cd tests && python -m conformance.runner --out DIR [--only NAME ...]

writes DIR/conformance.json (rewritten after every scenario: a timeout keeps what was played).

Topology: the same namespace topology twice, one instance per system, with identical
addresses (one /24: director .2, client .50-.93 (c1..c44), rs1..rs4 .11-.14, VIPs .100+i; and a
second segment for NAT, spec()), built by
lb.testbed.topology; scenarios' extra VIPs (Scenario.extra_vips) come from a second /24 that the
client routes through the director. Kernel IPVS lives in the first instance's director, lbd in the second's.
Identical addresses make the rules text, the client flows (explicit source ports) and every
listing byte-for-byte comparable; separate namespaces mean neither system ever sees the
other's packets, connection entries or leftovers, and the client's TIME_WAIT sockets of one
system never collide with the other's flows. Each scenario has its own VIP (.100+i), served by
every real server (lo, arp_ignore), so entries that outlive a scenario (TCP 2 minutes, UDP 5,
persistence templates 6) never show in a later scenario's listings or counters.

Per scenario, for each system in turn (Scenario.first plays first): `-C`, `-R < rules`, then
the steps (model.py). lbd is started once (it takes 1-2 minutes under emulation) while kernel
IPVS plays the first scenario, and restarted if it dies.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import ipaddress
import os
import resource
import shlex
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from conformance import compare
from conformance.model import (
    MANY_CLIENTS,
    MAX_EXTRA_VIPS,
    REAL_SERVERS,
    SERVICE_PORT,
    Admin,
    Connect,
    Hold,
    Listing,
    Output,
    Release,
    Scenario,
    Udp,
    Wait,
    describe,
)
from conformance.systems import LBD_TOOLS, AdminResult, KernelIpvs, LbdSystem, System
from conformance.traffic import Flow, RealServers, close_tcp, open_tcp, udp_exchange
from lb.testbed.topology import HostSpec, LinkSpec, SegmentSpec, Topology, TopologySpec

SUBNET = "10.251.7.0/24"  # inside our namespaces only; fixed so that both instances are identical
NAT_SUBNET = "10.251.9.0/24"  # the real servers' NAT addresses ({nrs1}..{nrs4}), same host indexes
NAT_TABLE = 100  # the real servers' routing table for replies from their NAT addresses
NAT_PORTS = (SERVICE_PORT, 8080)  # the real servers answer TCP and UDP on these ports of their NAT address
                                  # (and on the played scenarios' extra_ports)
EXTRA_VIP_NET = ipaddress.IPv4Network("10.251.8.0/24")  # extra VIPs (Scenario.extra_vips), also ours only
DIRECTOR_INDEX = 2
CLIENT_INDEXES = tuple(range(50, 50 + len(MANY_CLIENTS)))  # c1..c44: .50-.93
REAL_INDEXES = (11, 12, 13, 14)  # rs1..rs4
VIP_BASE_INDEX = 100  # scenario i has VIP .100+i
PORT_BASE = 10000  # scenario i's client flows use source ports PORT_BASE + PORTS_PER_SCENARIO*i + k
PORTS_PER_SCENARIO = 500
LISTING_READS_MAX = 12  # a listing is read until two reads in a row agree, at most this often
LISTING_PAUSE_S = 0.3
ESTIMATOR_PAUSE_S = 2.5  # > the kernel's 2 s estimation period, which publishes the counters
MODULES: tuple[str, ...] = ("ip_vs", "ip_vs_rr", "ip_vs_wlc", "ip_vs_sh", "veth", "bridge", "nfnetlink_queue",
                            "xt_NFQUEUE", "xt_CT", "nf_tables", "nft_compat", "iptable_raw")
MODULES += ("ip_vs_wrr", "ip_vs_lc", "ip_vs_sed", "ip_vs_nq", "ip_vs_fo", "ip_vs_ovf")  # the list schedulers
MODULES += ("ip_vs_dh", "ip_vs_mh")  # the hashing schedulers (sh above)


def spec() -> TopologySpec:
    """Segment "lan" for everything DR and IPIP; the director and the real servers hold the first VIP
    (the topology sets the DR real-server sysctls for it), add_vips() the others.

    Segment "nat" for NAT (masquerading): the director and every real server have a second address
    there ({nrs1}..{nrs4} for the real servers), and each real server routes what it sends from that
    address through the director (policy routing, build()): a NAT real server whose default route is
    the director, while its DR side (the VIPs on lo, answering the clients directly on "lan") is left
    as it is. The director forwards (ip_forward=1), as kernel IPVS needs for NAT replies."""
    return TopologySpec(
        segments=(SegmentSpec("lan", SUBNET), SegmentSpec("nat", NAT_SUBNET)),
        hosts=(HostSpec("client", (LinkSpec("lan", CLIENT_INDEXES[0]),), role="client"),
               HostSpec("director", (LinkSpec("lan", DIRECTOR_INDEX), LinkSpec("nat", DIRECTOR_INDEX)),
                        role="director", vips=(VIP_BASE_INDEX,), forwarding=True),
               *(HostSpec(name, (LinkSpec("lan", idx), LinkSpec("nat", idx)), role="real", vips=(VIP_BASE_INDEX,))
                 for name, idx in zip(REAL_SERVERS, REAL_INDEXES, strict=True))),
    )


def extra_vip_offsets() -> list[int]:
    """Where each scenario's extra VIPs start in EXTRA_VIP_NET (by position in ALL)."""
    from conformance.scenarios import ALL

    offsets, total = [], 0
    for scn in ALL:
        offsets.append(total)
        total += scn.extra_vips
    if total > min(EXTRA_VIP_NET.num_addresses - 2, MAX_EXTRA_VIPS):
        raise ValueError(f"{total} extra VIPs: more than {EXTRA_VIP_NET} holds")
    return offsets + [total]


def extra_vip(k: int) -> str:
    return str(EXTRA_VIP_NET[1 + k])


def build(n_scenarios: int, n_extra_vips: int = 0) -> Topology:
    """Builds spec() and adds the other VIPs and client addresses, one `ip -batch` per
    namespace: every process start costs ~0.25 s under emulation."""
    if not 1 <= n_scenarios <= 150:
        raise ValueError("1..150 scenarios (one VIP each in the /24)")
    topo = Topology(spec()).build()
    try:
        vips = [topo.addr("lan", VIP_BASE_INDEX + i) for i in range(1, n_scenarios)]
        vips += [extra_vip(k) for k in range(n_extra_vips)]
        director_addr = topo.addr("lan", DIRECTOR_INDEX)
        batches = {topo.director.netns: [f"addr add {v}/32 dev {topo.director.ifname}" for v in vips],
                   topo.client.netns: [f"addr add {topo.addr('lan', i)}/24 dev {topo.client.ifname}"
                                       for i in CLIENT_INDEXES[1:]]
                   + ([f"route add {EXTRA_VIP_NET} via {director_addr}"] if n_extra_vips else [])}
        batches.update({topo.host(rs).netns: [f"addr add {v}/32 dev lo" for v in vips] for rs in REAL_SERVERS})
        nat_gw = topo.addr("nat", DIRECTOR_INDEX)
        for rs in REAL_SERVERS:  # NAT: what a real server sends from its NAT address goes via the director
            batches[topo.host(rs).netns] += [f"rule add from {NAT_SUBNET} lookup {NAT_TABLE}",
                                             f"route add default via {nat_gw} dev {topo.host(rs).iface('nat').ifname} "
                                             f"table {NAT_TABLE}"]
        for netns, cmds in batches.items():
            if cmds:
                subprocess.run(["ip", "-n", netns, "-batch", "-"], input="\n".join(cmds) + "\n",
                               text=True, check=True, capture_output=True, timeout=60)
    except BaseException:
        topo.close()
        raise
    return topo


def addresses(topo: Topology, index: int) -> dict[str, str]:
    """Template values of scenario `index`: vip (and vip2.. when it has extra VIPs), rs1..rs4, c1..c44."""
    from conformance.scenarios import ALL

    vals = {"vip": topo.addr("lan", VIP_BASE_INDEX + index)}
    first = extra_vip_offsets()[index]
    vals.update({f"vip{k}": extra_vip(first + k - 2) for k in range(2, 2 + ALL[index].extra_vips)})
    vals.update({name: topo.addr("lan", idx) for name, idx in zip(REAL_SERVERS, REAL_INDEXES, strict=True)})
    vals.update({f"n{name}": topo.addr("nat", idx) for name, idx in zip(REAL_SERVERS, REAL_INDEXES, strict=True)})
    vals.update({name: topo.addr("lan", idx) for name, idx in zip(MANY_CLIENTS, CLIENT_INDEXES, strict=True)})
    return vals


def scenario_vips(scn: Scenario, vals: dict[str, str]) -> tuple[str, ...]:
    return tuple(vals[name] for name in scn.vip_names)


def packets_sent(host: Any) -> int | None:
    """The IP packets `host`'s namespace has sent (Ip OutRequests of its /proc/net/snmp): compared
    across the two systems' plays, it tells a client retransmission from a director's miscount."""
    r = host.exec(["cat", "/proc/net/snmp"], check=False)
    lines = [line.split() for line in r.stdout.splitlines() if line.startswith("Ip:")]
    if r.returncode != 0 or len(lines) < 2 or "OutRequests" not in lines[0]:
        return None
    value = lines[1][lines[0].index("OutRequests")]
    return int(value) if value.isdigit() else None


class Player:
    """Plays one scenario on one system; its records go to `out`."""

    def __init__(self, scn: Scenario, index: int, system: System, topo: Topology,
                 outputs: dict[tuple[str, str], str]) -> None:
        self.scn, self.system, self.topo = scn, system, topo
        self.vals = addresses(topo, index)
        self.vips = scenario_vips(scn, self.vals)
        self.by_addr = {self.vals[n]: n for n in REAL_SERVERS}
        self.by_addr.update({self.vals[f"n{n}"]: n for n in REAL_SERVERS})  # NAT addresses
        self.by_template_addr = {addr: name for name, addr in self.vals.items()}
        self.next_port = PORT_BASE + PORTS_PER_SCENARIO * index
        self.step_ports: dict[str, int] = {}  # Udp(same_port=True): each client's port in this step
        self.outputs = outputs  # (system, step name) -> stdout, shared by both systems' players
        self.held: dict[str, list[Flow]] = {}
        self.records: list[dict[str, Any]] = []
        self.notes: list[str] = []
        self.client_sent: int | None = None  # IP packets the clients sent during play()

    def text(self, template: str) -> str:
        return template.format(**self.vals)

    def admin_record(self, what: str, r: AdminResult) -> dict[str, Any]:
        rec = {"what": what, "rc": r.rc, "stdout": r.stdout, "stderr": r.stderr}
        self.records.append(rec)
        return rec

    def play(self) -> None:
        director = self.system.director
        marks = [shlex.split(self.text(m)) for m in self.scn.marks]
        for words in reversed(marks):  # at the top, in the scenario's order: before any jump of lbd's
            director.exec(["iptables", "-t", "mangle", "-I", "PREROUTING", "1", *words])
        sent_before = packets_sent(self.topo.client)
        try:
            self.admin_record("ADMIN -C", self.system.admin(["-C"]))
            if self.scn.rules:
                self.admin_record("ADMIN -R < rules", self.system.admin(["-R"], stdin=self.text(self.scn.rules)))
            try:
                for step in self.scn.steps:
                    self.step(step)
            finally:
                for flows in self.held.values():
                    for f in flows:
                        close_tcp(f)
        finally:
            sent_after = packets_sent(self.topo.client)
            if sent_before is not None and sent_after is not None:
                self.client_sent = sent_after - sent_before
            for words in marks:
                director.exec(["iptables", "-t", "mangle", "-D", "PREROUTING", *words], check=False)

    def step(self, step: Any) -> None:
        what = describe(step)
        if isinstance(step, Admin):
            stdin = None
            if isinstance(step.stdin, Output):
                stdin = self.outputs[(step.stdin.system, step.stdin.step)]
            elif step.stdin is not None:
                stdin = self.text(step.stdin)
            r = self.system.admin(shlex.split(self.text(step.cmd)), stdin=stdin)
            self.admin_record(what, r)
            if step.name:
                self.outputs[(self.system.name, step.name)] = r.stdout
        elif isinstance(step, Listing):
            r = self.listing(step.cmd)
            self.admin_record(what, r)
            if step.name:
                self.outputs[(self.system.name, step.name)] = r.stdout
        elif isinstance(step, (Connect, Hold, Udp)):
            problem = self.system.before_traffic()
            if problem:
                self.notes.append(f"before {what}: {problem}")
            self.step_ports = {}
            flows = [self.flow(step, k) for k in range(step.n)]
            self.records.append({"what": what, "flows": [
                {"client": f.client, "port": f.port, "outcome": f.outcome} for f in flows]})
            if isinstance(step, Hold):
                self.held.setdefault(step.group, []).extend(f for f in flows if f.sock is not None)
        elif isinstance(step, Release):
            flows = self.held.pop(step.group, [])
            for f in flows:
                close_tcp(f)
            self.records.append({"what": what, "flows": [
                {"client": f.client, "port": f.port, "outcome": "closed"} for f in flows]})
        elif isinstance(step, Wait):
            time.sleep(step.seconds)
            self.records.append({"what": what, "flows": []})  # rendered as its line alone
        else:
            raise TypeError(f"unknown step {step!r}")

    def listing(self, cmd: str) -> AdminResult:
        """Read until two reads in a row agree after normalisation: packets in flight landed.

        Counters (--stats, --rate) are what kernel IPVS last published: its estimation timer sums
        the per-CPU counters every 2 s (ip_vs_est.c), so a read right after traffic may show the
        old values twice. Those are read ESTIMATOR_PAUSE_S apart until three reads agree: at least
        two estimation periods without a change."""
        argv = shlex.split(self.text(cmd))
        counters = any(w in ("--stats", "--rate") for w in argv)
        pause, agreeing_wanted = (ESTIMATOR_PAUSE_S, 2) if counters else (LISTING_PAUSE_S, 1)
        last = self.system.admin(argv)
        agreeing = 0
        for _ in range(LISTING_READS_MAX - 1):
            time.sleep(pause)
            r = self.system.admin(argv)
            same = (r.rc == last.rc and r.stderr == last.stderr and
                    compare.normalise_listing(cmd, r.stdout, self.vips) ==
                    compare.normalise_listing(cmd, last.stdout, self.vips))
            last = r
            agreeing = agreeing + 1 if same else 0
            if agreeing >= agreeing_wanted:
                break
        else:
            self.notes.append(f"{cmd}: still changing after {LISTING_READS_MAX} reads")
        return AdminResult(last.rc, compare.normalise_listing(cmd, last.stdout, self.vips), last.stderr)

    def flow(self, step: Connect | Hold | Udp, k: int) -> Flow:
        client = step.clients[k % len(step.clients)]
        port = self.step_ports.get(client) if isinstance(step, Udp) and step.same_port else None
        if port is None:
            port = self.next_port
            self.next_port += 1
            self.step_ports[client] = port
        f = Flow(client=client, addr=self.vals[client], port=port)
        netns, vip = self.topo.client.netns, self.vals[step.vips[k % len(step.vips)]]
        dport = getattr(step, "port", 0) or SERVICE_PORT
        if isinstance(step, Udp):
            udp_exchange(netns, f, vip, dport, ttl=step.ttl, size=step.size, any_source=step.any_source)
            if step.ttl and f.ttl is not None:
                f.outcome = f"{f.outcome} ttl={f.ttl}"  # what the director did to the TTL
            if step.any_source and f.source is not None and f.source != (vip, dport):
                addr, sport = f.source  # not translated back: say who, by template name ("nrs1")
                f.outcome = f"{f.outcome} from {self.by_template_addr.get(addr, addr)}:{sport}"
            return f
        open_tcp(netns, f, vip, dport)
        if f.outcome == "refused":
            table = self.system.admin(["-Lnc"]).stdout
            dest = compare.chosen_by_connection_table(table, f.addr, f.port)
            # No entry: the director had no real server for it and answered ICMP port unreachable.
            f.outcome = f"refused:{self.by_addr.get(dest, dest) if dest else 'none'}"
        if isinstance(step, Connect):
            close_tcp(f)
        return f


FDS_WANTED = 16384  # each VIP of each topology has a TCP listener and a UDP socket per real server


def raise_fd_limit(want: int = FDS_WANTED) -> None:
    """The real servers' sockets outgrow the usual 1024 descriptors (76 VIPs x 4 servers x 2 sockets
    x 2 topologies): raise the soft limit, and the hard one when it is lower (root may)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= want:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(want, hard)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _load(only: list[str]) -> list[tuple[int, Scenario]]:
    from conformance.scenarios import ALL

    chosen = [(i, s) for i, s in enumerate(ALL) if not only or s.name in only]
    unknown = set(only) - {s.name for s in ALL}
    if unknown:
        raise SystemExit(f"unknown scenarios: {sorted(unknown)}")
    return chosen


def _write(out_dir: Path, data: dict[str, Any]) -> None:
    import json

    tmp = out_dir / "conformance.json.tmp"
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(out_dir / "conformance.json")


class LbdStarter:
    """Starts lbd in a thread that lives until stop(): lbd gets PR_SET_PDEATHSIG (Host.popen),
    which fires when the THREAD that started it ends."""

    def __init__(self, lbd: LbdSystem) -> None:
        self.lbd = lbd
        self.result: dict[str, Any] = {}
        self.ready, self._finished = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._run, name="lbd-start", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        t = time.monotonic()
        try:
            self.result["ping"] = self.lbd.start()
        except Exception as exc:  # noqa: BLE001 - reported by every lbd play
            self.result["error"] = f"{type(exc).__name__}: {exc}"
        self.result["seconds"] = round(time.monotonic() - t, 1)
        self.ready.set()
        self._finished.wait()

    def stop(self) -> None:
        self.lbd.stop()
        self._finished.set()


def play_one(scn: Scenario, index: int, system: System, topo: Topology,
             outputs: dict[tuple[str, str], str], before: Any = None) -> dict[str, Any]:
    """One system's play of one scenario: its records and notes, or the error that ended it."""
    t = time.monotonic()
    entry: dict[str, Any] = {"records": [], "notes": []}
    try:
        if before is not None:
            note = before()
            if note:
                entry["notes"].append(note)
        player = Player(scn, index, system, topo, outputs)
        try:
            player.play()
        finally:
            entry["records"], entry["notes"] = player.records, entry["notes"] + player.notes
            entry["client_sent"] = player.client_sent
    except Exception as exc:  # noqa: BLE001 - recorded; the other system still plays
        entry["error"] = f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"
    entry["seconds"] = round(time.monotonic() - t, 1)
    first_error = entry["error"].splitlines()[0] if "error" in entry else ""
    print(f"[{time.strftime('%H:%M:%S')}] {scn.name} {system.name}: {entry['seconds']} s {first_error}",
          file=sys.stderr, flush=True)
    return entry


def run(out_dir: Path, only: list[str], play: tuple[str, ...] = ("kernel", "lbd"), lbd_tool: str = "lbadm") -> dict[str, Any]:
    t0 = time.monotonic()
    raise_fd_limit()
    data: dict[str, Any] = {"kernel": os.uname().release, "started": time.ctime(), "scenarios": {}, "errors": {},
                            "lbd_tool": lbd_tool}
    for m in MODULES:
        subprocess.run(["modprobe", m], capture_output=True)
    data["ipvsadm_version"] = subprocess.run(["ipvsadm", "--version"], capture_output=True, text=True).stdout.strip()
    chosen = _load(only)
    n_all = max(i for i, _ in chosen) + 1
    n_extra = extra_vip_offsets()[n_all]
    servers = RealServers()
    starter: LbdStarter | None = None
    topos: list[Topology] = []
    try:
        # Both instances are built at once (the build waits on process starts), and lbd starts
        # (a minute under emulation) as soon as its own instance stands.
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            kfuture = pool.submit(build, n_all, n_extra)
            try:
                ltopo = build(n_all, n_extra)
                topos.append(ltopo)
                starter = LbdStarter(LbdSystem(ltopo.director, lbd_tool))
                if "lbd" in play:
                    starter.start()
            finally:
                kerr = kfuture.exception()
                if kerr is None:
                    topos.append(kfuture.result())
            if kerr is not None:
                raise kerr
        ktopo = topos[-1]
        data["setup_s"] = round(time.monotonic() - t0, 1)
        for topo in topos:
            for i, scn in chosen:
                for vip in scenario_vips(scn, addresses(topo, i)):
                    for rs in REAL_SERVERS:
                        for port in (SERVICE_PORT, *scn.extra_ports):
                            servers.serve(topo.host(rs).netns, rs, vip, port, tcp=rs not in scn.refuse)
            # NAT real servers are reached on the client's port under port-zero and fwmark services:
            # their NAT addresses answer on the scenarios' extra ports too.
            nat_ports = sorted({*NAT_PORTS, *(p for _, scn in chosen for p in scn.extra_ports)})
            for rs, idx in zip(REAL_SERVERS, REAL_INDEXES, strict=True):
                for port in nat_ports:
                    servers.serve(topo.host(rs).netns, rs, topo.addr("nat", idx), port)
        lbd = starter.lbd

        def lbd_ready() -> str | None:
            starter.ready.wait()
            data["lbd_start"] = starter.result
            if "error" in starter.result:
                raise RuntimeError(f"lbd did not start: {starter.result['error']}")
            return lbd.ensure_running()

        plays: dict[str, tuple[System, Topology, Any]] = {
            "kernel": (KernelIpvs(ktopo.director), ktopo, None), "lbd": (lbd, ltopo, lbd_ready)}
        for i, scn in chosen:
            res: dict[str, Any] = {"vip": addresses(ktopo, i)["vip"]}
            data["scenarios"][scn.name] = res
            outputs: dict[tuple[str, str], str] = {}  # both systems' named outputs
            order = ("kernel", "lbd") if scn.first == "kernel" else ("lbd", "kernel")
            for name in (n for n in order if n in play):
                system, topo, before = plays[name]
                res[name] = play_one(scn, i, system, topo, outputs, before)
            _write(out_dir, data)
        data["lbd_log_tail"] = lbd.lbd.log_tail(3000)
    except Exception as exc:  # noqa: BLE001
        data["errors"]["setup"] = f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"
        print(f"runner: {data['errors']['setup']}", file=sys.stderr, flush=True)
    finally:
        if starter is not None:
            starter.stop()
        servers.close()
        for topo in topos:
            topo.close()
        data["elapsed_s"] = round(time.monotonic() - t0, 1)
        _write(out_dir, data)
    return data


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m conformance.runner")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--only", nargs="*", default=[], help="scenario names (default: all)")
    ap.add_argument("--systems", default="kernel,lbd",
                    help="which systems play (default kernel,lbd; lbd alone: harness work on a host without ip_vs)")
    ap.add_argument("--lbd-tool", choices=LBD_TOOLS, default="lbadm",
                    help="what configures lbd: lbadm (default) or the kernel's own ipvsadm through lbd-exec")
    args = ap.parse_args(argv)
    run(args.out, args.only, tuple(args.systems.split(",")), args.lbd_tool)
    return 0


if __name__ == "__main__":
    sys.exit(main())
