"""What a netns test checks depends on the packet source it runs against (LB_TEST_PACKET_SOURCE,
tests/netns/conftest.py): the NFQUEUE source steers with iptables rules and ip sets, the AF_XDP
source with the XDP program's BPF map lb_keys (docs/afxdp.md). Helpers for tests that look at
either, and the skip for what has no AF_XDP form (lbd refuses it at start or when configured).
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import PACKET_SOURCE, Lbd

from lb.testbed.topology import Host

AFXDP = PACKET_SOURCE == "afxdp"
PROTO_NAMES = {6: "tcp", 17: "udp"}

# (saddr, daddr, sport, dport, proto) of struct lb_xdp_key (lb_xdp.bpf.c), "0.0.0.0"/0 where a
# field does not take part: a service (0, vip, 0, port), a FULLNAT reply (rip, lip, rport, 0), a NAT
# reply (rip, 0, rport, 0); rport 0: a port-less destination (replies from any port).
XdpKey = tuple[str, str, int, int, str]


def nfqueue_only(what: str) -> pytest.MarkDecorator:
    """Skip under the AF_XDP source: `what` is the NFQUEUE-only thing the test is about."""
    return pytest.mark.skipif(AFXDP, reason=f"NFQUEUE-only: {what}: see docs/afxdp.md")


def skip_if_afxdp(what: str) -> None:
    """The same, from inside a test (a parametrised case, a fixture)."""
    if AFXDP:
        pytest.skip(f"NFQUEUE-only: {what}: see docs/afxdp.md")


def xdp_keys(lbd: Lbd) -> set[XdpKey]:
    """The keys of lb_keys in the program(s) `lbd` attached, read from the kernel by bpftool."""
    return {_key(raw) for raw in xdp_map_keys(lbd, "lb_keys")}


def xdp_local(lbd: Lbd) -> set[str]:
    """The director's own addresses in lb_local (NAT reply keys do not redirect packets to them)."""
    return {str(ipaddress.IPv4Address(raw[:4])) for raw in xdp_map_keys(lbd, "lb_local")}


def xdp_map_keys(lbd: Lbd, name: str) -> set[bytes]:
    """The raw keys of map `name` of lbd's program(s). Maps are not per network namespace: they are
    found by the lbd process that holds them (one program per interface, each with its own maps,
    which must agree)."""
    assert lbd.proc is not None
    pid = lbd.proc.pid
    names = {m["id"]: m.get("name") for m in json.loads(_bpftool("map", "show"))}
    ids = [i for i in _map_ids(pid) if names.get(i) == name]
    assert ids, f"no {name} map held by lbd pid {pid} (its maps: {[names.get(i) for i in _map_ids(pid)]})"
    keys: set[bytes] | None = None
    for map_id in ids:
        these = {bytes(int(b, 16) for b in e["key"]) for e in json.loads(_bpftool("map", "dump", "id", str(map_id)))}
        assert keys is None or these == keys, f"{name} maps of lbd {pid} differ: {keys ^ these}"
        keys = these
    return keys or set()


def xdp_global_section(lbd: Lbd, section: str) -> bytes:
    """The bytes of the program's global-data map `section` (".bss", ".rodata": libbpf names it
    <object name, cut>.bss), as lbd's one program holds it."""
    assert lbd.proc is not None
    pid = lbd.proc.pid
    names = {m["id"]: m.get("name") or "" for m in json.loads(_bpftool("map", "show"))}
    ids = [i for i in _map_ids(pid) if names.get(i, "").endswith(section)]
    assert len(ids) == 1, f"{len(ids)} {section} maps held by lbd pid {pid} (its maps: {[names.get(i) for i in _map_ids(pid)]})"
    (entry,) = json.loads(_bpftool("map", "dump", "id", str(ids[0])))
    return bytes(int(b, 16) for b in entry["value"])


def _map_ids(pid: int) -> set[int]:
    """The ids of the BPF maps process `pid` holds a descriptor of (their fdinfo's map_id)."""
    ids = set()
    for fd in os.listdir(f"/proc/{pid}/fdinfo"):
        try:
            text = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
        except OSError:  # closed meanwhile
            continue
        found = re.search(r"^map_id:\s+(\d+)$", text, re.M)
        if found:
            ids.add(int(found.group(1)))
    return ids


def _bpftool(*args: str) -> str:
    return subprocess.run(["bpftool", "-j", *args], capture_output=True, text=True, check=True, timeout=30).stdout


def _key(raw: bytes) -> XdpKey:
    def addr(b: bytes) -> str:
        return str(ipaddress.IPv4Address(b))

    return (addr(raw[0:4]), addr(raw[4:8]), int.from_bytes(raw[8:10], "big"), int.from_bytes(raw[10:12], "big"),
            PROTO_NAMES.get(raw[12], str(raw[12])))


def xdp_nat_replies(lbd: Lbd, proto: str) -> set[tuple[str, int]]:
    """(rip, rport) of the NAT reply keys of `proto` (rport 0: port-less)."""
    return {(s, sp) for s, d, sp, dp, p in xdp_keys(lbd) if p == proto and s != "0.0.0.0" and d == "0.0.0.0"}


def xdp_fnat_replies(lbd: Lbd, proto: str) -> set[tuple[str, int, str]]:
    """(rip, rport, lip) of the FULLNAT reply keys of `proto` (rport 0: port-less)."""
    return {(s, sp, d) for s, d, sp, dp, p in xdp_keys(lbd) if p == proto and s != "0.0.0.0" and d != "0.0.0.0"}


def timer_frames(counters: dict[str, Any]) -> int:
    """Timer-generated frames (SYN-proxy SYN retransmissions) lbd sent, from the control operation
    `counters`: the NFQUEUE queues' counter (under AF_XDP its NFQUEUE fallback's queue runs the
    timers), plus under AF_XDP the sum over its sockets (without the fallback the first
    interface's queue 0 runs them)."""
    total = int((counters.get("nfq") or {}).get("timer_frames", 0))
    if AFXDP:
        total += sum(int(s["timer_frames"]) for s in counters["afxdp"]["sockets"])
    return total


def xdp_programs(host: Host) -> dict[str, int]:
    """Interface -> id of the XDP program attached to it, in `host`'s namespace (`ip -d link`)."""
    out = host.ip("-d", "-o", "link", "show").stdout
    found = (re.match(r"^\d+: ([^:@]+)[:@].*?prog/xdp id (\d+)", line) for line in out.splitlines())
    return {m.group(1): int(m.group(2)) for m in found if m}
