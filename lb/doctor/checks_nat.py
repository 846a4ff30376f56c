"""Checks of what NAT (masquerading, -m) needs of the director and its real servers.

A NAT real server sees the client's own address, so its replies reach the director only when
the real server routes them through it: its default route (or its route to the clients) must be
the director's address on their common segment. The classic mistake is a real server that keeps
its old default gateway: the director forwards the client's SYN, the real server answers straight
to the client from RIP:rport, the client drops that unknown source, and the director never sees a
single reply. The director sees that from its side as NAT destinations with incoming packets and
no outgoing ones; it can also tell when a real server is not on one of its segments at all.
"""

from __future__ import annotations

from typing import Any

from lb.doctor.findings import Finding
from lb.doctor.inputs import Run, Sample
from lb.doctor.parsers import sysctl_int

MIN_UNANSWERED_PKTS = 3  # client packets to a NAT destination, without any reply, before it is an error


def _nat_dests(run: Run) -> list[tuple[str, str, int, str, int]]:
    """(proto, vip, vport, rip, rport) of every NAT destination."""
    return [(s.proto, s.addr, s.port, str(d.get("addr")), int(d.get("port", 0)))
            for s in run.services for d in s.dests if d.get("fwd") == "masq"]


def check_nat_forwarding(run: Run) -> list[Finding]:
    nat = _nat_dests(run)
    if not nat:
        return []
    v = sysctl_int(run.ctx.sysctl("net/ipv4/ip_forward"))
    if v is None or v == 1:
        return []
    if run.nat_replies_routed():
        return [Finding(
            "error", "nat",
            f"{len(nat)} NAT destination(s) and net.ipv4.ip_forward = 0: lbd takes packets after routing "
            "(--steer-hook input, --nat-replies forward), and the real servers' replies are routed to the clients: "
            "the kernel drops them before lbd's forward hook, so no NAT connection completes (kernel IPVS needs "
            "forwarding on for NAT too)",
            evidence="NAT destinations: " + ", ".join(f"{rip}:{rport}" for _, _, _, rip, rport in nat),
            fix="sysctl -w net.ipv4.ip_forward=1 (and in /etc/sysctl.d/ to keep it), or lbd's default --nat-replies "
                "ingress")]
    return [Finding(
        "warning", "nat",
        f"{len(nat)} NAT destination(s) and net.ipv4.ip_forward = 0: lbd translates the replies of the "
        "connections it knows without it, but everything else the real servers send through the director "
        "(replies while lbd is down or restarting, their own traffic to other networks) is dropped; kernel "
        "IPVS needs forwarding on for NAT",
        evidence="NAT destinations: " + ", ".join(f"{rip}:{rport}" for _, _, _, rip, rport in nat),
        fix="sysctl -w net.ipv4.ip_forward=1 (and in /etc/sysctl.d/ to keep it)")]


def check_nat_routes(run: Run) -> list[Finding]:
    """Where the director reaches each NAT real server, and which address the real server must use as its
    gateway (the director's on that segment)."""
    out: list[Finding] = []
    gateways: dict[str, list[str]] = {}
    for rip in dict.fromkeys(rip for *_, rip, _ in _nat_dests(run)):
        route: dict[str, Any] | None = run.ctx.route_get(rip)
        if route is None:
            continue
        dev, gw, src = route.get("dev", "?"), route.get("gateway"), route.get("prefsrc")
        if gw:
            out.append(Finding(
                "warning", "nat",
                f"NAT real server {rip} is behind router {gw} (dev {dev}), not on a segment of this director: its "
                "replies come back through the director only if that router sends the clients' traffic here",
                evidence=f"ip route get {rip}: via {gw} dev {dev}" + (f" src {src}" if src else ""),
                fix="put NAT real servers on a segment the director is on, with the director's address there as "
                    "their default gateway; or use FULLNAT (-b), whose replies come back to a local address"))
        elif src:
            gateways.setdefault(f"{src} (dev {dev})", []).append(rip)
    if gateways:
        out.append(Finding(
            "info", "nat",
            "NAT real servers must send their replies through the director: their default route (or their route "
            "to the clients) must be the director's address on their segment",
            evidence="\n".join(f"{', '.join(rips)}: default via {gw}" for gw, rips in gateways.items()),
            fix="on each real server: ip route replace default via <the director's address above>"))
    return out


def _masq(sample: Sample | None) -> dict[tuple[str, str, int, str, int], dict[str, Any]]:
    found: dict[tuple[str, str, int, str, int], dict[str, Any]] = {}
    if sample is None or not sample.listing:
        return found
    for s in sample.listing.get("services", []):
        for d in s.get("dests", []):
            if d.get("fwd") == "masq":
                key = (str(s.get("proto")), str(s.get("addr")), int(s.get("port", 0)), str(d.get("addr")),
                       int(d.get("port", 0)))
                found[key] = d.get("stats") or {}
    return found


def check_nat_replies(run: Run) -> list[Finding]:
    """The classic mistake, seen from the director: packets go to a NAT real server and none come back
    (over the window when there is one, else since the destination was added)."""
    last = _masq(run.second or run.first)
    before = _masq(run.first) if run.second is not None else {}
    out: list[Finding] = []
    for key, stats in last.items():
        d0 = before.get(key, {})
        inpkts = int(stats.get("inpkts", 0)) - int(d0.get("inpkts", 0))
        outpkts = int(stats.get("outpkts", 0)) - int(d0.get("outpkts", 0))
        over = "over the sampling window" if key in before else "since it was added"
        if inpkts < MIN_UNANSWERED_PKTS or outpkts > 0:
            continue
        proto, vip, vport, rip, rport = key
        route = run.ctx.route_get(rip) or {}
        gw = route.get("prefsrc") or "the director's address on its segment"
        out.append(Finding(
            "error", "nat",
            f"NAT destination {rip}:{rport} of {proto.upper()} {vip}:{vport}: {inpkts} packets sent to it and no reply "
            f"seen {over}: the real server does not route its replies through the director (its default route is "
            "probably still its old gateway) -- the classic NAT mistake",
            evidence=f"{rip}:{rport}: inpkts +{inpkts}, outpkts +{outpkts} {over} (totals {stats.get('inpkts', 0)} "
                     f"in, {stats.get('outpkts', 0)} out)",
            fix=f"on {rip}: ip route replace default via {gw}; check with `ip route get <a client address>` on the "
                f"real server. A real server that is down shows the same: test it from the director "
                f"(curl/nc {rip} {rport})"))
    return out
