"""One doctor run's inputs, read once and shared by the checks: lbd's answers, the firewall,
the interfaces, and lbd's queue number."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from lb import ipsets as ips
from lb import iptlayout as iptl
from lb.doctor.context import DoctorContext, LbdRefused, LbdUnavailable
from lb.doctor.parsers import QueueStats, parse_nfnetlink_queue
from lb.iptrules import Tables, parse_iptables_save


@dataclass
class Service:
    proto: str
    addr: str
    port: int
    dests: list[dict[str, Any]]
    laddrs: list[str] = field(default_factory=list)  # FULLNAT local addresses
    persistent: bool = False

    @property
    def name(self) -> str:
        return f"{self.proto.upper()} {self.addr}:{self.port}"

    @property
    def proto_num(self) -> int:
        return iptl.PROTO_TCP if self.proto == "tcp" else iptl.PROTO_UDP


@dataclass
class Sample:
    t: float
    listing: dict[str, Any] | None = None
    counters: dict[str, Any] | None = None
    queues: dict[int, QueueStats] | None = None
    problems: list[str] = field(default_factory=list)


class Run:
    """One doctor run: inputs read once and shared by the checks."""

    def __init__(self, ctx: DoctorContext) -> None:
        self.ctx = ctx
        self.lbd_error: str | None = None
        self.ping: dict[str, Any] = {}
        try:
            self.ping = ctx.lbd("ping") or {}
        except (LbdUnavailable, LbdRefused) as exc:
            self.lbd_error = str(exc)
        self.packet_source = str(self.ping.get("packet_source") or "nfqueue")  # lbd --packet-source
        self.save_text = ctx.iptables_save()
        self.tables: Tables = parse_iptables_save(self.save_text) if self.save_text else {}
        self.ipset_text = ctx.ipset_save()
        self.ipsets: dict[str, set[str]] | None = ips.parse_save(self.ipset_text)[1] if self.ipset_text is not None else None
        self.ifaces = ctx.interfaces()
        self.first = self.sample() if self.lbd_error is None else None
        self.second: Sample | None = None
        self.services: list[Service] = []
        self.fwmarks: list[int] = []  # fwmark services (steered from mangle, not by the raw sets)
        if self.first is not None and self.first.listing:
            for s in self.first.listing.get("services", []):
                if s.get("fwmark"):
                    self.fwmarks.append(int(s["fwmark"]))
                    continue
                self.services.append(Service(str(s.get("proto", "tcp")), str(s.get("addr")), int(s.get("port", 0)),
                                             list(s.get("dests", [])),
                                             [str(la.get("addr")) for la in s.get("laddrs", []) if isinstance(la, dict)],
                                             bool(s.get("persistent"))))
        self.queue_num, self.queue_source = self._find_queue()
        self.services_from_rules = False
        if not self.services and self.lbd_error is not None and self.queue_num is not None:
            self.services = self._services_from_rules()
            self.services_from_rules = bool(self.services)

    # ---- lbd

    def sample(self) -> Sample:
        s = Sample(self.ctx.monotonic())
        for op, attr in (("list", "listing"), ("counters", "counters")):
            try:
                setattr(s, attr, self.ctx.lbd(op))
            except (LbdUnavailable, LbdRefused) as exc:
                s.problems.append(f"{op}: {exc}")
        text = self.ctx.read_file("/proc/net/netfilter/nfnetlink_queue")
        s.queues = parse_nfnetlink_queue(text) if text is not None else None
        return s

    @property
    def lbd_ok(self) -> bool:
        return self.lbd_error is None

    @property
    def nfqueue_used(self) -> bool:
        """lbd takes packets from NFQUEUE: its own packet source, or the AF_XDP source's fallback
        (fragments, director-local clients); unknown (lbd down) counts as used."""
        if not self.lbd_ok or self.packet_source != "afxdp":
            return True
        return bool((self.ping.get("afxdp") or {}).get("nfqueue_fallback"))

    def _find_queue(self) -> tuple[int | None, str]:
        if self.ctx.queue_num is not None:
            return self.ctx.queue_num, "given"
        for key in ("queue_num", "queue"):
            if isinstance(self.ping.get(key), int):
                return int(self.ping[key]), "lbd"
        found = sorted({int(m.group(1)) for name in self.tables.get("raw", {})
                        if (m := re.fullmatch(rf"{re.escape(iptl.CHAIN_PREFIX)}(\d+)", name))})
        if len(found) == 1:
            return found[0], "raw table"
        return None, f"raw table has {len(found)} LBD-Q<N> chains" if found else "no LBD-Q<N> chain in the raw table"

    def set_members(self, kind: ips.SetKind) -> set[str]:
        """Elements of lbd's set of this kind (empty when unknown)."""
        if self.ipsets is None or self.queue_num is None:
            return set()
        return self.ipsets.get(ips.set_name(self.queue_num, kind), set())

    def _services_from_rules(self) -> list[Service]:
        """lbd is down: the services its (bypassed) queue rules still steer, read from its sets."""
        found: dict[tuple[str, str, int], Service] = {}
        for e in sorted(self.set_members(ips.SVC)):
            addr, _, pp = e.partition(",")
            proto, _, port = pp.partition(":")
            if proto in ("tcp", "udp") and port.isdigit():
                found.setdefault((proto, addr, int(port)), Service(proto, addr, int(port), []))
        for kind, proto in ((ips.TCP0, "tcp"), (ips.UDP0, "udp")):
            for addr in sorted(self.set_members(kind)):
                found.setdefault((proto, addr, 0), Service(proto, addr, 0, []))
        return list(found.values())

    # ---- host

    def addrs(self) -> dict[str, list[str]]:
        """IPv4 address -> interfaces carrying it."""
        out: dict[str, list[str]] = {}
        for iface in self.ifaces:
            for a in iface.get("addr_info", []):
                if a.get("family") == "inet" and a.get("local"):
                    out.setdefault(a["local"], []).append(iface.get("ifname", "?"))
        return out

    def iface(self, name: str) -> dict[str, Any] | None:
        return next((i for i in self.ifaces if i.get("ifname") == name), None)

    def laddrs(self) -> list[str]:
        return sorted({la for s in self.services for la in s.laddrs}, key=addr_key)

    def vips(self) -> list[str]:
        return sorted({s.addr for s in self.services}, key=addr_key)

    def vip_iface(self, vip: str) -> str | None:
        names = [n for n in self.addrs().get(vip, []) if n != "lo"]
        return names[0] if names else None

    def track_mode(self) -> bool:
        """lbd's LBD-Q<N>-GO holds its NFQUEUE rule but no CT --notrack: the conntrack opt-in; or lbd
        takes packets after routing (--steer-hook input): conntrack has seen what it hands back."""
        if self.input_hook():
            return True
        if self.queue_num is None:
            return False
        chain = self.tables.get("raw", {}).get(iptl.go_chain_name(self.queue_num))
        if chain is None or not chain.rules:
            return False
        return not any(r.target == "CT" and "--notrack" in r.target_args for r in chain.rules)

    def input_hook(self) -> bool:
        """lbd takes packets after routing (`--steering nftables --steer-hook input`, docs/firewall.md).
        Not under the AF_XDP source: its XDP program takes the balanced packets before any hook, and the
        table at input is only its NFQUEUE fallback's (fragments, director-local clients: docs/afxdp.md)."""
        return self.ping.get("steering_hook") == "input" and self.packet_source != "afxdp"

    def nat_replies_routed(self) -> bool:
        """NAT replies reach lbd only if the director routes them: the input hook with the forward chain
        (--nat-replies forward), not lbd's default netdev chain, which takes them before routing."""
        return self.input_hook() and self.ping.get("nat_replies", "forward") != "ingress"

    def states(self) -> frozenset[str]:
        # Without notrack, a segment of a flow conntrack has not seen is NEW (nf_conntrack_tcp_loose=1)
        # or INVALID; with it, UNTRACKED.
        return frozenset({"NEW", "INVALID"}) if self.track_mode() else frozenset({"UNTRACKED"})

    def mark(self) -> int | None:
        return iptl.socket_mark(self.queue_num) if self.queue_num is not None else None

    def fwds(self) -> set[str]:
        return {str(d.get("fwd")) for s in self.services for d in s.dests}


def addr_key(a: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in a.split("."))
    except ValueError:
        return (999,)
