"""Regression test for seeds/000: IPIP outer source addresses under configuration churn.

The field report: kernel IPVS (CentOS 7) sent IPIP packets with a garbage outer
source after configuration refreshes, because the per-destination route cache
(`ip_vs_dest_dst`, with the route's source address) was kmalloc'ed and not
zeroed; a real server's ActiveConn stayed 0 while packets kept leaving.

Here lbd runs with glibc's MALLOC_PERTURB_=165, so every allocation starts
filled with 0x5a bytes (freed memory 0xa5): a source address taken from an
uninitialised or stale struct shows up as 90.90.90.90, 165.165.165.165 or a
leftover address. For ~24 s a client sends short HTTP requests to an IPIP
service while the test

- churns lbd's configuration hundreds of times through the control socket (what
  lbadm uses): edits, deletes and re-adds of the service's destinations, its
  scheduler, whole-service re-creation, and services and destinations on other
  ports of the VIP (tunnel and DR, fwd switches included);
- every PHASE_S changes the director's addresses and routes: a secondary
  address and a /32 address come and go, /32 routes with a `src` hint to one
  real server, the route to the far subnet with and without `src`; deleting an
  address makes the kernel flush the routes that use it as `src`.

tcpdump captures every IPIP packet leaving the director, on the director's port
of the bridge (lbd sends with PACKET_QDISC_BYPASS, so a capture on the director's
own interface sees none of its frames). Each outer source must
be one of the director's addresses AND the one `ip route get RIP` gives for the
route state at that moment (the state before a change is also accepted for
WINDOW_S after it: packets in flight and lbd's netlink reaction). No real server
may be starved: in every BUCKET_S slice each one answered requests, received
IPIP packets and had connections counted in ActiveConn/InActConn.

Topology: client, director (VIP .100), router, rs1 and rs2 on segment "lan";
rs3 on segment "far" behind the router (the director's route to it goes via the
router, like the report's 192.168.12.x real server). The real servers hold the
VIP on lo and decapsulate with lb.testbed.ipip_decap (no ipip module here).
"""

from __future__ import annotations

import bisect
import json
import os
import random
import re
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import Lbd, running_lbd
from netns_traffic import serve_http

from lb.testbed import client
from lb.testbed.ipip_decap import start_in
from lb.testbed.pcap import Capture
from lb.testbed.topology import HostSpec, LinkSpec, SegmentSpec, Topology, TopologySpec

REPO = Path(__file__).resolve().parents[2]
PORT = 80
OTHER_PORTS = (81, 82, 83, 84, 85)
DURATION_S = 24.0  # traffic and churn
PHASE_S = 2.0  # one address/route change every PHASE_S
WINDOW_S = 1.0  # after a change, the previous route state is still accepted this long
BUCKET_S = 6.0  # starvation is judged per slice of this length
INTERVAL_S = 0.02  # client: at most 50 requests/s
CLIENT_TIMEOUT_S = 1.5
MAX_REQUESTS = 2000
OP_PAUSE_S = 0.02  # between configuration changes (at most ~50/s)
MAX_OPS = 1500
MIN_OPS = 300
SEED = int(os.environ.get("LB_CHURN_SEED", "3"))


def churn_spec() -> TopologySpec:
    return TopologySpec(
        segments=(SegmentSpec("lan"), SegmentSpec("far")),
        hosts=(
            HostSpec("client", (LinkSpec("lan", 50),), role="client"),
            HostSpec("director", (LinkSpec("lan", 2),), role="director", vips=(100,)),
            HostSpec("router", (LinkSpec("lan", 1), LinkSpec("far", 1)), role="router", forwarding=True),
            HostSpec("rs1", (LinkSpec("lan", 11),), role="real", vips=(100,)),
            HostSpec("rs2", (LinkSpec("lan", 12),), role="real", vips=(100,)),
            HostSpec("rs3", (LinkSpec("far", 13),), role="real", vips=(100,), vip_segment="lan",
                     gateway=("far", 1)),
        ),
    )


@pytest.fixture(scope="module")
def ctopo() -> Iterator[Topology]:
    with Topology(churn_spec()) as t:
        router = t.host("router")
        t.director.ip("route", "add", str(t.subnets["far"]), "via", router.iface("lan").addr)
        for rs in t.reals:
            start_in(rs, f"{t.prefix}ipip", seconds=600.0)
        serve_http(t, (PORT,), router)  # the router reaches every real server directly
        yield t


# --------------------------------------------------------------------------- route state


@dataclass
class Phase:
    """Route state from `t_start` (change begun) / `t_end` (change done) on."""

    name: str
    t_start: float
    t_end: float
    expected: dict[str, str]  # RIP -> source address `ip route get RIP` selects
    addrs: set[str]  # the director's IPv4 addresses


def route_state(t: Topology, rips: list[str]) -> tuple[dict[str, str], set[str]]:
    d = t.director
    expected = {}
    for rip in rips:
        out = d.ip("-o", "route", "get", rip).stdout
        m = re.search(r"\bsrc (\d+\.\d+\.\d+\.\d+)", out)
        assert m, f"ip route get {rip}: {out!r}"
        expected[rip] = m.group(1)
    addrs = set(re.findall(r"inet (\d+\.\d+\.\d+\.\d+)/", d.ip("-o", "-4", "addr", "show").stdout))
    return expected, addrs


def route_phases(t: Topology) -> list[tuple[str, list[list[str]]]]:
    """A cycle of address/route changes that ends in the state it starts from."""
    lan = t.director.ifname
    s3, s4 = t.addr("lan", 3), t.addr("lan", 4)
    rs1, rs2 = t.host("rs1").addr, t.host("rs2").addr
    far, gw = str(t.subnets["far"]), t.host("router").iface("lan").addr
    return [
        ("add secondary .3; rs1 via /32 src .3",
         [["addr", "add", f"{s3}/24", "dev", lan], ["route", "replace", f"{rs1}/32", "dev", lan, "src", s3]]),
        ("far subnet via router src .3", [["route", "replace", far, "via", gw, "src", s3]]),
        ("add .4/32; rs2 via /32 src .4",
         [["addr", "add", f"{s4}/32", "dev", lan], ["route", "replace", f"{rs2}/32", "dev", lan, "src", s4]]),
        ("far subnet via router (no src); rs1 src .4",
         [["route", "replace", far, "via", gw], ["route", "replace", f"{rs1}/32", "dev", lan, "src", s4]]),
        ("delete .3", [["addr", "del", f"{s3}/24", "dev", lan]]),
        ("delete .4 (the kernel flushes the /32 routes with src .4)", [["addr", "del", f"{s4}/32", "dev", lan]]),
    ]


def restore_routes(t: Topology) -> None:
    d, lan = t.director, t.director.ifname
    for args in (["addr", "del", f"{t.addr('lan', 3)}/24", "dev", lan],
                 ["addr", "del", f"{t.addr('lan', 4)}/32", "dev", lan],
                 ["route", "del", f"{t.host('rs1').addr}/32"], ["route", "del", f"{t.host('rs2').addr}/32"]):
        d.ip(*args, check=False)
    d.ip("route", "replace", str(t.subnets["far"]), "via", t.host("router").iface("lan").addr)


# --------------------------------------------------------------------------- configuration churn


@dataclass
class Churn:
    """Valid configuration changes, chosen at random from a model of lbd's table."""

    lbd: Lbd
    vip: str
    rips: list[str]
    dr_rips: list[str]  # on the director's segment: may also be DR destinations
    rng: random.Random
    dests: dict[str, int] = field(default_factory=dict)  # traffic service: RIP -> weight
    sched: str = "rr"
    others: dict[int, dict[str, str]] = field(default_factory=dict)  # port -> {RIP: fwd}
    pending: list[str] = field(default_factory=list)  # traffic dests to re-add next
    ops: Counter[str] = field(default_factory=Counter)

    def key(self, port: int) -> dict[str, Any]:
        return {"proto": "tcp", "addr": self.vip, "port": port}

    def do(self, kind: str, op: str, args: dict[str, Any]) -> None:
        resp = self.lbd.request(op, args)
        assert resp.get("ok"), f"{op} {args}: {resp}\nlbd log:\n{self.lbd.log_tail()}"
        self.ops[kind] += 1

    def svc(self, port: int, sched: str) -> dict[str, Any]:
        return {**self.key(port), "sched": sched, "persistent": None, "netmask": "255.255.255.255",
                "toa": False, "synproxy": False}

    @staticmethod
    def dest(rip: str, port: int, fwd: str, weight: int) -> dict[str, Any]:
        return {"addr": rip, "port": port, "fwd": fwd, "weight": weight, "u_threshold": 0, "l_threshold": 0}

    def setup(self) -> None:
        self.do("add_service", "add_service", self.svc(PORT, "rr"))
        for rip in self.rips:
            self.do("add_dest", "add_dest", {"service": self.key(PORT), "dest": self.dest(rip, PORT, "tunnel", 1)})
            self.dests[rip] = 1

    def step(self) -> None:
        if self.pending:  # a deleted traffic destination comes back right away
            rip = self.pending.pop()
            w = self.rng.randint(1, 3)
            self.do("re-add dest", "add_dest", {"service": self.key(PORT), "dest": self.dest(rip, PORT, "tunnel", w)})
            self.dests[rip] = w
            return
        r = self.rng.random()
        if r < 0.30:
            rip = self.rng.choice(sorted(self.dests))
            w = self.rng.randint(1, 3)
            self.do("edit dest", "edit_dest", {"service": self.key(PORT), "dest": self.dest(rip, PORT, "tunnel", w)})
            self.dests[rip] = w
        elif r < 0.38 and len(self.dests) == len(self.rips):
            rip = self.rng.choice(sorted(self.dests))
            self.do("delete dest", "del_dest", {"service": self.key(PORT), "dest": {"addr": rip, "port": PORT}})
            del self.dests[rip]
            self.pending.append(rip)
        elif r < 0.46:
            self.sched = "wlc" if self.sched == "rr" else "rr"
            self.do("edit service", "edit_service", self.svc(PORT, self.sched))
        elif r < 0.48 and len(self.dests) == len(self.rips):
            # Delete and re-create the whole service with its destinations in one batch.
            reqs = [{"op": "del_service", "args": self.key(PORT)},
                    {"op": "add_service", "args": self.svc(PORT, self.sched)}]
            reqs += [{"op": "add_dest", "args": {"service": self.key(PORT),
                                                 "dest": self.dest(rip, PORT, "tunnel", w)}}
                     for rip, w in sorted(self.dests.items())]
            self.do("re-create service", "batch", {"requests": reqs})
        else:
            self.step_other()

    def step_other(self) -> None:
        port = self.rng.choice(OTHER_PORTS)
        dests = self.others.get(port)
        if dests is None:
            self.do("add service", "add_service", self.svc(port, self.rng.choice(["rr", "wlc"])))
            self.others[port] = {}
            return
        r = self.rng.random()
        free = [rip for rip in self.rips if rip not in dests]
        if free and (r < 0.5 or not dests):
            rip = self.rng.choice(free)
            fwd = "route" if rip in self.dr_rips and self.rng.random() < 0.3 else "tunnel"
            self.do("add dest", "add_dest", {"service": self.key(port), "dest": self.dest(rip, port, fwd, 1)})
            dests[rip] = fwd
        elif dests and r < 0.75:
            rip = self.rng.choice(sorted(dests))
            fwd = dests[rip]
            if rip in self.dr_rips and self.rng.random() < 0.5:
                fwd = "route" if fwd == "tunnel" else "tunnel"
            self.do("edit dest", "edit_dest", {"service": self.key(port),
                                               "dest": self.dest(rip, port, fwd, self.rng.randint(0, 4))})
            dests[rip] = fwd
        elif dests and r < 0.9:
            rip = self.rng.choice(sorted(dests))
            self.do("delete dest", "del_dest", {"service": self.key(port), "dest": {"addr": rip, "port": port}})
            del dests[rip]
        else:
            self.do("delete service", "del_service", self.key(port))
            del self.others[port]

    @property
    def total(self) -> int:
        return sum(self.ops.values())


# --------------------------------------------------------------------------- the test


def test_ipip_outer_source_under_churn(ctopo: Topology, tmp_path: Path) -> None:
    t = ctopo
    d = t.director
    rips = [rs.addr for rs in t.reals]
    name_of = {rs.addr: rs.name for rs in t.reals}
    rng = random.Random(SEED)
    phases_def = route_phases(t)
    with running_lbd(t, "c", env={"MALLOC_PERTURB_": "165"}) as lbd:
        churn = Churn(lbd, t.vip, rips, [t.host("rs1").addr, t.host("rs2").addr], rng)
        try:
            churn.setup()
            lbd.wait_resolved()
            warm = client.fresh_gets(t.client.netns, t.vip, PORT, 6, timeout=3.0)
            assert {r.server for r in warm if r.ok} == {rs.name for rs in t.reals}, warm

            expected, addrs = route_state(t, rips)
            phases = [Phase("initial", 0.0, 0.0, expected, addrs)]
            forwarded_before = lbd.ok("counters")["reasons"]["forwarded"]
            # On the director's bridge port: lbd sends with PACKET_QDISC_BYPASS, which taps on
            # the director's own interface do not see; this is the first hop of the wire.
            cap = Capture(t.switch_host("lan"), "ip proto 4", iface=t.switch_port("director", "lan"),
                          direction="in", snaplen=96, buffer_kib=8192, path=tmp_path / "ipip.pcap").start()
            samples: list[tuple[float, dict[str, int]]] = []
            traffic_log = tmp_path / "traffic.jsonl"
            with open(traffic_log, "w") as out:
                traffic = t.client.popen(
                    [sys.executable, "-m", "lb.testbed.client", t.vip, "-p", str(PORT),
                     "--seconds", str(DURATION_S), "--interval", str(INTERVAL_S), "-n", str(MAX_REQUESTS),
                     "--timeout", str(CLIENT_TIMEOUT_S), "--jsonl"],
                    stdout=out, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONPATH=str(REPO)))
            t_begin = time.time()
            next_phase = time.monotonic() + PHASE_S
            next_sample = 0.0
            phase_i = 0
            end = time.monotonic() + DURATION_S
            while time.monotonic() < end and churn.total < MAX_OPS and traffic.poll() is None:
                now = time.monotonic()
                if now >= next_phase:
                    pname, cmds = phases_def[phase_i % len(phases_def)]
                    t0 = time.time()
                    for cmd in cmds:
                        d.ip(*cmd)
                    t1 = time.time()
                    expected, addrs = route_state(t, rips)
                    phases.append(Phase(pname, t0, t1, expected, addrs))
                    phase_i += 1
                    next_phase = now + PHASE_S
                if now >= next_sample:
                    svc = [s for s in lbd.ok("list")["services"] if s["port"] == PORT]
                    counts = {x["addr"]: x["active"] + x["inactive"] for x in svc[0]["dests"]} if svc else {}
                    samples.append((time.time(), counts))
                    next_sample = now + 0.25
                churn.step()
                time.sleep(OP_PAUSE_S)
            churn_end = time.time()
            traffic_rc = traffic.wait(timeout=DURATION_S + 30)
            packets = cap.stop(settle=0.5)
            dropped = cap.dropped()
            reasons = lbd.ok("counters")["reasons"]
        finally:
            restore_routes(t)

    # ---------------------------------------------------------------- verdicts
    assert traffic_rc == 0, traffic_log.read_text()[-2000:]
    requests = [json.loads(line) for line in traffic_log.read_text().splitlines() if line.startswith("{")]
    t_end = max(r["t"] for r in requests)
    starts = [p.t_start for p in phases]
    wrong: list[str] = []
    srcs: Counter[str] = Counter()
    per_rip: Counter[str] = Counter()
    lag: dict[str, float] = {}
    ipip = [p for p in packets if p.ip.proto == 4]
    for p in ipip:
        ip = p.ip
        srcs[ip.src] += 1
        per_rip[ip.dst] += 1
        i = max(0, bisect.bisect_right(starts, p.ts) - 1)
        allowed, own = {phases[i].expected.get(ip.dst)}, set(phases[i].addrs)
        in_window = i > 0 and p.ts <= phases[i].t_end + WINDOW_S
        if in_window:
            allowed.add(phases[i - 1].expected.get(ip.dst))
            own |= phases[i - 1].addrs
            if ip.src != phases[i].expected.get(ip.dst):
                lag[phases[i].name] = max(lag.get(phases[i].name, 0.0), p.ts - phases[i].t_end)
        problem = None
        if ip.dst not in rips:
            problem = "outer destination is not a real server"
        elif ip.src not in own:
            problem = "outer source is not one of the director's addresses"
        elif ip.src not in allowed:
            problem = f"outer source is not the route's (expected {sorted(a for a in allowed if a)})"
        elif ip.inner is None or ip.inner.dst != t.vip or ip.inner.src != t.client.addr:
            problem = "inner packet is not client -> VIP"
        if problem and len(wrong) < 20:
            wrong.append(f"{p.ts:.6f} {ip.src} -> {ip.dst} during '{phases[i].name}': {problem}")
        elif problem:
            wrong.append("...")

    ok_replies = [r for r in requests if r["server"]]
    summary = (
        f"\n{len(ipip)} IPIP packets captured leaving the director (lbd forwarded "
        f"{reasons['forwarded'] - forwarded_before}; tcpdump dropped {dropped}); "
        f"outer sources {dict(srcs)}; per real server {dict((name_of.get(k, k), v) for k, v in per_rip.items())}\n"
        f"{churn.total} configuration changes ({dict(churn.ops)}), {len(phases) - 1} address/route changes, "
        f"seed {SEED}; lbd's reaction to route changes: old source seen up to "
        f"{max(lag.values(), default=0.0) * 1000:.0f} ms after a change\n"
        f"{len(requests)} requests, {len(ok_replies)} answered "
        f"{dict(Counter(r['server'] for r in ok_replies))}; lbd counters: "
        f"{ {k: v for k, v in reasons.items() if v} }"
    )
    print(summary)
    assert ipip, "no IPIP packet captured"
    # Only the tunnel service carries traffic: every packet lbd forwarded is on the wire.
    forwarded = reasons["forwarded"] - forwarded_before
    if dropped == 0:
        assert len(ipip) == forwarded, f"lbd forwarded {forwarded} packets, {len(ipip)} captured" + summary
    assert not wrong, "IPIP packets with a wrong outer source:\n" + "\n".join(wrong) + summary
    assert churn.total >= MIN_OPS, summary
    assert len(phases) - 1 >= len(phases_def), summary
    # Every distinct route source of the cycle was used on the wire.
    wanted = {src for ph in phases for src in ph.expected.values()}
    assert wanted <= set(srcs), f"route sources never seen on the wire: {wanted - set(srcs)}" + summary

    # ---------------------------------------------------------------- starvation
    t_first = min(r["t"] for r in requests)
    n_buckets = max(1, int((min(t_end, churn_end) - t_first) // BUCKET_S))
    starved = []
    answered: dict[tuple[int, str], int] = defaultdict(int)
    for r in ok_replies:
        answered[(int((r["t"] - t_first) // BUCKET_S), r["server"])] += 1
    tunnelled: dict[tuple[int, str], int] = defaultdict(int)
    for p in ipip:
        tunnelled[(int((p.ts - t_first) // BUCKET_S), name_of.get(p.ip.dst, "?"))] += 1
    counted: dict[tuple[int, str], int] = defaultdict(int)
    for ts, counts in samples:
        for addr, n in counts.items():
            b = int((ts - t_first) // BUCKET_S)
            counted[(b, name_of[addr])] = max(counted[(b, name_of[addr])], n)
    for b in range(n_buckets):
        for rs in t.reals:
            k = (b, rs.name)
            if not answered[k] or not tunnelled[k] or not counted[k]:
                starved.append(f"{rs.name} in [{b * BUCKET_S:.0f}s, {(b + 1) * BUCKET_S:.0f}s): "
                               f"{answered[k]} answers, {tunnelled[k]} IPIP packets, "
                               f"max ActiveConn+InActConn {counted[k]}")
    assert not starved, "starved real servers:\n" + "\n".join(starved) + summary
    assert len(ok_replies) >= 0.8 * len(requests), summary
    assert t_begin < t_end
