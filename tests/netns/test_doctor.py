"""`lbadm doctor` against a real lbd in the conftest DR topology (issue 7, field reports 001/002).

- The field report's firewall on the director: doctor warns that segments lbd hands back to the
  kernel are UNTRACKED and hit the REJECT rule; a stray ACK to the VIP really gets ICMP type 3
  code 10; after the fix doctor suggests, it gets a RST and the warning is gone.
- An unresolvable destination is an error naming it and the neighbour state.
- The hypervisor's anti-spoofing filter (libvirt clean-traffic / no-ip-spoofing) reproduced with
  ebtables on the director's port of the test bridge: DR frames (client source address) are
  dropped, client SYNs are retransmitted; doctor names every affected destination and the
  anti-spoofing cause; with the filter removed the finding clears.

Doctor runs as the operator runs it: its CLI inside the director's namespace (`lbadm doctor` once
lbadm has the subcommand, else `python -m lb.doctor.cli`), or the library with a LiveContext bound
to that namespace. Extra objects (an ebtables chain lbD<token>-I-ipv4 in the switch namespace, a
filter rule on the director) are removed by finalizers; processes are ended by PID.
"""

from __future__ import annotations

import json
import secrets
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from conftest import SEED_RULESET
from packet_source import AFXDP, xdp_programs
from steering import INPUT_HOOK

from lb.doctor import LiveContext, run_checks
from lb.testbed import client
from lb.testbed.topology import Host, Topology, enter_netns

if TYPE_CHECKING:  # fixtures' types only
    from conftest import Lbd

REPO = Path(__file__).resolve().parents[2]
HTTP_PORT = 80
TOKEN = secrets.token_hex(2)
DOCTOR_TIMEOUT_S = 60.0
STALL_CONNECT_TIMEOUT_S = 8.0  # the client sends its SYN at 0 s and retransmits it at 1, 3 and 7 s
STALL_WINDOW_S = 4.0
STALL_CONNECTIONS = 6  # rr over 3 real servers: 2 stalled handshakes each


STRAY_ACK = r"""
import sys
from scapy.all import IP, TCP, ICMP, conf, sr1
conf.verb = 0
vip, port = sys.argv[1], int(sys.argv[2])
r = sr1(IP(dst=vip) / TCP(sport=40123, dport=port, flags="A", seq=1000, ack=2000), timeout=3)
if r is None:
    print("none")
elif ICMP in r:
    print(f"icmp {r[ICMP].type} {r[ICMP].code}")
elif TCP in r:
    print(f"tcp {r[TCP].flags}")
else:
    print("other " + r.summary())
"""


@pytest.fixture
def engine() -> str:
    """The C fast path (overrides conftest's c/python parametrisation): syn_retrans/handshakes are C counters."""
    return "c"


def svc(topo: Topology) -> str:
    return f"{topo.vip}:{HTTP_PORT}"


def dr_service(lbd: Lbd, topo: Topology) -> None:
    lbd.lbadm("-A", "-t", svc(topo), "-s", "rr")
    for rs in topo.reals:
        lbd.lbadm("-a", "-t", svc(topo), "-r", f"{rs.addr}:{HTTP_PORT}", "-g")


def lbadm_has_doctor(lbd: Lbd) -> bool:
    """True once lbadm dispatches `doctor` to lb.doctor.cli (its --help then documents --window)."""
    proc = lbd.lbadm("doctor", "--help", check=False)
    return proc.returncode == 0 and "--window" in proc.stdout


def run_doctor(lbd: Lbd, *args: str) -> tuple[int, dict[str, Any], str]:
    """Doctor's CLI in the director's namespace, as an operator runs it; returns (status, JSON, stderr)."""
    if lbadm_has_doctor(lbd):
        proc = lbd.lbadm("doctor", "--json", *args, check=False)
    else:
        argv = [sys.executable, "-m", "lb.doctor.cli", "--socket", lbd.socket, "--json", *args]
        proc = lbd.director.exec(["env", f"PYTHONPATH={REPO}", *argv], check=False, timeout=DOCTOR_TIMEOUT_S)
    assert proc.returncode in (0, 1), f"doctor exited {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}"
    return proc.returncode, json.loads(proc.stdout), proc.stderr


def findings(doc: dict[str, Any], check: str, severity: str | None = None) -> list[dict[str, str]]:
    return [f for f in doc["findings"] if f["check"] == check and (severity is None or f["severity"] == severity)]


def describe(doc: dict[str, Any]) -> str:
    return "\n".join(f"[{f['severity']}] {f['check']}: {f['summary']}" for f in doc["findings"])


@pytest.fixture
def director_firewall(topo: Topology, lbd: Lbd) -> Iterator[Host]:
    """The report's ruleset on the director, removed before lbd's finalizer checks for leftovers."""
    d = topo.director
    d.exec(["iptables-restore", "--noflush"], input=SEED_RULESET)
    try:
        yield d
    finally:
        for argv in (["iptables", "-F", "INPUT"], ["iptables", "-F", "FORWARD"],
                     ["iptables", "-F", "RH-Firewall-1-INPUT"], ["iptables", "-X", "RH-Firewall-1-INPUT"]):
            d.exec(argv, check=False)


def stray_ack(topo: Topology) -> str:
    proc = topo.client.exec([sys.executable, "-c", STRAY_ACK, topo.vip, str(HTTP_PORT)], check=False, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


# =========================================================================== firewall


def test_doctor_explains_the_seed_firewall_and_its_fix(topo: Topology, lbd: Lbd, director_firewall: Host) -> None:
    dr_service(lbd, topo)
    got = client.fresh_gets(topo.client.netns, topo.vip, HTTP_PORT, 3)
    assert all(r.ok for r in got), got  # balanced traffic itself passes (untracked, sent on AF_PACKET)

    status, doc, _ = run_doctor(lbd, "--window", "1")
    assert status == 0, describe(doc)
    warn = [f for f in findings(doc, "firewall", "warning") if "segments lbd hands back" in f["summary"]]
    if AFXDP:
        # The AF_XDP source re-injects hand-backs on its raw socket: they come back through lo, which
        # the report's ruleset accepts (-i lo -j ACCEPT): no warning, and the local stack answers.
        assert warn == [], describe(doc)
        assert any("lbd listening" in f["summary"] for f in findings(doc, "nfqueue"))  # the NFQUEUE fallback
        assert stray_ack(topo) == "tcp R"
        return
    if INPUT_HOOK:
        # After routing, conntrack has seen a hand-back (NEW with nf_conntrack_tcp_loose=1, else INVALID):
        # doctor says so, the report's ruleset accepts the NEW ones and the local stack answers with a RST.
        assert all("INVALID/NEW" in f["summary"] for f in warn), describe(doc)
        assert stray_ack(topo) == "tcp R"
        return
    assert len(warn) == 1, describe(doc)
    assert "UNTRACKED and hit REJECT in filter RH-Firewall-1-INPUT" in warn[0]["summary"]
    assert "icmp-host-prohibited (ICMP type 3 code 10)" in warn[0]["summary"]
    assert "-A RH-Firewall-1-INPUT -j REJECT --reject-with icmp-host-prohibited" in warn[0]["evidence"]
    assert any("set lookups steer every service (1)" in f["summary"] for f in findings(doc, "nfqueue-rules"))
    assert any("lbd listening" in f["summary"] for f in findings(doc, "nfqueue"))

    # What the warning claims, for real: a segment lbd has no connection for gets ICMP 3/10 ...
    assert stray_ack(topo) == "icmp 3 10"
    # ... and with the rule doctor suggests, the local stack answers it with a RST instead.
    fix = f"iptables -I INPUT -d {topo.vip} -p tcp --dport {HTTP_PORT} -m conntrack --ctstate UNTRACKED -j ACCEPT"
    assert fix in warn[0]["fix"]
    director_firewall.exec(fix.split())
    assert stray_ack(topo) == "tcp R"
    status, doc, _ = run_doctor(lbd, "--window", "0")
    assert status == 0 and not [f for f in findings(doc, "firewall", "warning")], describe(doc)


def test_doctor_names_an_unresolved_destination(topo: Topology, lbd: Lbd) -> None:
    dr_service(lbd, topo)
    ghost = topo.addr(topo.director.ifaces[0].segment, 77)  # in the subnet, nobody there
    lbd.lbadm("-a", "-t", svc(topo), "-r", f"{ghost}:{HTTP_PORT}", "-g")
    ctx = LiveContext(lbd.socket, netns=topo.director.netns, window_s=0)
    deadline = time.monotonic() + 10.0
    while True:  # the neighbour entry goes INCOMPLETE -> FAILED within a few seconds
        errors = [f for f in run_checks(ctx) if f.check == "destinations" and f.severity == "error"]
        if errors and "FAILED" in errors[0].summary or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert len(errors) == 1, errors
    assert errors[0].summary.startswith(f"destination {ghost}:{HTTP_PORT} of TCP {svc(topo)}: forwarding state unresolved: ")
    assert f"neighbour {ghost}" in errors[0].summary and "dropped (no_l2)" in errors[0].summary


# =========================================================================== anti-spoofing


class AntiSpoofing:
    """libvirt's clean-traffic no-ip-spoofing for the director's port, in the switch namespace:

        ebtables -t nat -A PREROUTING -i <port> -p IPv4 -j <chain>
        <chain>: -p IPv4 --ip-src 0.0.0.0 --ip-proto udp -j RETURN
                 -p IPv4 --ip-src <director's address> -j RETURN
                 -j DROP
    """

    def __init__(self, topo: Topology) -> None:
        director = topo.director
        seg = director.ifaces[0].segment
        self.sw = topo.switch_ns(seg)
        self.port = self._port_of(topo, director, seg)
        self.addr = director.addr
        self.chain = f"lbD{TOKEN}-I-ipv4"
        self.installed = False

    @staticmethod
    def _port_of(topo: Topology, host: Host, seg: str) -> str:
        """The bridge port (in the switch namespace) whose veth peer is `host`'s interface."""
        peer_index = host.exec(["cat", f"/sys/class/net/{host.ifname}/iflink"]).stdout.strip()
        out = subprocess.run(["ip", "-n", topo.switch_ns(seg), "-o", "link", "show"], capture_output=True,
                             text=True, check=True, timeout=20).stdout
        for line in out.splitlines():
            idx, name = line.split(":", 2)[:2]
            if idx.strip() == peer_index:
                return name.strip().split("@")[0]
        raise AssertionError(f"no switch port for {host.name} (iflink {peer_index}) in:\n{out}")

    def _eb(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(["ip", "netns", "exec", self.sw, "ebtables", "-t", "nat", *args],
                              capture_output=True, text=True, timeout=20)
        if check and proc.returncode != 0:
            raise AssertionError(f"ebtables {' '.join(args)}: {proc.stderr}")
        return proc

    def install(self) -> None:
        self.installed = True
        self._eb("-N", self.chain, "-P", "RETURN")
        self._eb("-A", self.chain, "-p", "IPv4", "--ip-src", "0.0.0.0", "--ip-proto", "udp", "-j", "RETURN")
        self._eb("-A", self.chain, "-p", "IPv4", "--ip-src", self.addr, "-j", "RETURN")
        self._eb("-A", self.chain, "-j", "DROP")
        self._eb("-A", "PREROUTING", "-i", self.port, "-p", "IPv4", "-j", self.chain)

    def remove(self) -> None:
        if not self.installed:
            return
        self._eb("-D", "PREROUTING", "-i", self.port, "-p", "IPv4", "-j", self.chain, check=False)
        self._eb("-F", self.chain, check=False)
        self._eb("-X", self.chain, check=False)
        self.installed = False

    def listing(self) -> str:
        return self._eb("-L", "--Lc", check=False).stdout


@pytest.fixture
def anti_spoofing(topo: Topology) -> Iterator[AntiSpoofing]:
    f = AntiSpoofing(topo)
    try:
        yield f
    finally:
        f.remove()


def stalled_connects(topo: Topology, n: int) -> tuple[list[threading.Thread], list[str]]:
    """n connection attempts to the VIP from the client, in threads, each bounded by its timeout."""
    outcomes: list[str] = []

    def attempt() -> None:
        with enter_netns(topo.client.netns):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.settimeout(STALL_CONNECT_TIMEOUT_S)
            s.connect((topo.vip, HTTP_PORT))
            outcomes.append("connected")
        except OSError as exc:
            outcomes.append(type(exc).__name__)
        finally:
            s.close()

    threads = [threading.Thread(target=attempt, name=f"stall-{i}", daemon=True) for i in range(n)]
    for t in threads:
        t.start()
        time.sleep(0.02)
    return threads, outcomes


def test_doctor_names_destinations_behind_an_anti_spoofing_filter(
    topo: Topology, lbd: Lbd, anti_spoofing: AntiSpoofing
) -> None:
    dr_service(lbd, topo)
    dests = lbd.request("list")["result"]["services"][0]["dests"]
    if not all("syn_retrans" in d and "handshakes" in d for d in dests):
        pytest.skip("lbd does not report syn_retrans yet")
    assert all(r.ok for r in client.fresh_gets(topo.client.netns, topo.vip, HTTP_PORT, 3))

    anti_spoofing.install()
    threads, outcomes = stalled_connects(topo, STALL_CONNECTIONS)
    try:
        time.sleep(0.3)  # the first SYNs are forwarded (and dropped by the filter) before the first sample
        status, doc, _ = run_doctor(lbd, "--window", f"{STALL_WINDOW_S:g}")
    finally:
        for t in threads:
            t.join(STALL_CONNECT_TIMEOUT_S + 5.0)
    assert outcomes == ["TimeoutError"] * STALL_CONNECTIONS, (outcomes, anti_spoofing.listing())
    assert status == 1, describe(doc)
    stalled = findings(doc, "handshakes", "error")
    named = sorted(f["summary"].split(" ")[1].rstrip(":") for f in stalled)
    assert named == sorted(f"{rs.addr}:{HTTP_PORT}" for rs in topo.reals), describe(doc)
    per_dest = STALL_CONNECTIONS // len(topo.reals)  # rr: the stalled connections are spread evenly
    for f in stalled:
        assert f["summary"].split(": ", 1)[1].startswith(f"{per_dest} handshakes stalled"), f["summary"]
        assert f" handshakes stalled in {STALL_WINDOW_S:g} s; frames leave the director but no client ACK returns. " \
               "Likely causes: anti-spoofing on the hypervisor (libvirt nwfilter clean-traffic / no-ip-spoofing" in f["summary"]
        assert f"all {len(topo.reals)} destinations of the service stall" in f["evidence"]
        assert "anti-spoofing on the director's hypervisor port" in f["evidence"]
        assert "clean-traffic" in f["fix"]
    assert "DROP" in anti_spoofing.listing()

    # The filter goes away: new connections complete, the finding clears.
    anti_spoofing.remove()
    result: dict[str, Any] = {}

    def doctor_in_background() -> None:
        result["run"] = run_doctor(lbd, "--window", "3")

    t = threading.Thread(target=doctor_in_background, daemon=True)
    t.start()
    time.sleep(0.5)
    got = client.fresh_gets(topo.client.netns, topo.vip, HTTP_PORT, 6)
    t.join(DOCTOR_TIMEOUT_S)
    assert all(r.ok for r in got), got
    status, doc, _ = result["run"]
    assert findings(doc, "handshakes") == [], describe(doc)
    assert status == 0, describe(doc)

    # Later, nothing stalls any more: lbd remembers the episodes and doctor reports them with their
    # destination, start, end and likely cause (issue 16 item 8; before, it reported nothing).
    deadline = time.monotonic() + 30.0
    while True:
        episodes = lbd.ok("stall_history")["episodes"]
        if len(episodes) >= len(topo.reals) and not any(e["ongoing"] for e in episodes):
            break
        assert time.monotonic() < deadline, f"episodes not ended: {episodes}"
        time.sleep(0.5)
    status, doc, _ = run_doctor(lbd, "--window", "0")
    assert status == 0, describe(doc)
    past = findings(doc, "stall-history", "warning")
    assert sorted(f["summary"].split(" ")[1] for f in past) == sorted(f"{rs.addr}:{HTTP_PORT}" for rs in topo.reals)
    for f in past:
        assert " handshakes stalled from " in f["summary"] and "every destination of the service stalled at once: " \
            "the director's side" in f["summary"], f["summary"]


# =========================================================================== AF_XDP packet source


@pytest.mark.skipif(not AFXDP, reason="the AF_XDP packet source's checks: run by `make test-netns-afxdp`")
def test_doctor_checks_the_afxdp_source_and_names_a_stale_program(topo: Topology, lbd: Lbd) -> None:
    dr_service(lbd, topo)
    assert all(r.ok for r in client.fresh_gets(topo.client.netns, topo.vip, HTTP_PORT, 3))
    ping = lbd.ok("ping")
    assert ping["packet_source"] == "afxdp" and ping["afxdp"]["nfqueue_fallback"] is True, ping
    attached = xdp_programs(topo.director)
    status, doc, _ = run_doctor(lbd, "--window", "1")
    assert status == 0, describe(doc)
    info = findings(doc, "afxdp", "info")
    assert {i["ifname"] for i in ping["afxdp"]["interfaces"]} == set(attached)
    for iface in ping["afxdp"]["interfaces"]:
        name, prog_id = iface["ifname"], attached[iface["ifname"]]
        assert iface["prog_id"] == prog_id, (iface, attached)
        assert any(f["summary"].startswith(f"{name}: lbd's XDP program (id {prog_id}) attached in ") for f in info), \
            describe(doc)
    assert not findings(doc, "afxdp", "warning") and not findings(doc, "nfqueue-rules", "error"), describe(doc)
    assert any("lbd listening" in f["summary"] for f in findings(doc, "nfqueue")), describe(doc)  # the fallback

    # An lb_xdp program that the running lbd does not hold (as a dead lbd's pinned one would be).
    stale = f"lbS{TOKEN}"
    topo.director.ip("link", "add", "name", stale, "type", "veth", "peer", "name", f"{stale}p")  # no dummy module here
    try:
        topo.director.ip("link", "set", "dev", stale, "up")
        topo.director.ip("link", "set", "dev", stale, "xdpgeneric", "obj", str(REPO / "lb" / "lb_xdp.bpf.o"), "sec", "xdp")
        status, doc, _ = run_doctor(lbd, "--window", "0")
        warn = [f for f in findings(doc, "afxdp", "warning") if f["summary"].startswith(f"{stale}: ")]
        assert len(warn) == 1 and "the running lbd does not hold it" in warn[0]["summary"], describe(doc)
        assert f"ip link set dev {stale} xdp off" in warn[0]["fix"]
    finally:
        topo.director.ip("link", "del", stale, check=False)
