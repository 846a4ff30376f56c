"""Checks of the director's host settings: forwarding, rp_filter, VIPs on interfaces, tunnel MTU,
destinations lbd could not resolve."""

from __future__ import annotations

import json

from lb import consts as C
from lb.doctor.findings import Finding
from lb.doctor.inputs import Run, addr_key
from lb.doctor.parsers import sysctl_int

CLIENT_PACKET_B = 1500  # bytes: full-size IPv4 packets of clients on an Ethernet path
IPIP_OVERHEAD_B = C.LB_IPIP_OVERHEAD  # bytes: the outer IPv4 header IPIP adds (lb_api.h)


def check_forwarding(run: Run) -> list[Finding]:
    v = sysctl_int(run.ctx.sysctl("net/ipv4/ip_forward"))
    if v is None:
        return []
    if run.nat_replies_routed() and v == 1:
        return [Finding("info", "sysctl", "net.ipv4.ip_forward = 1: lbd (--steer-hook input) needs it for NAT, whose "
                        "replies are routed; FORWARD rules after lbd's forward hook never see the replies lbd takes")]
    if v == 0:
        if "masq" in run.fwds():
            return []  # NAT's own finding (checks_nat.check_nat_forwarding) says what it means there
        return [Finding("info", "sysctl", "net.ipv4.ip_forward = 0: fine, lbd transmits balanced packets itself "
                        "(AF_PACKET), nothing is routed through the director's FORWARD path")]
    return [Finding("info", "sysctl", "net.ipv4.ip_forward = 1: lbd does not need it; FORWARD rules only concern "
                    "traffic the director routes (e.g. replies of real servers that use it as their gateway)")]


def check_rp_filter(run: Run) -> list[Finding]:
    ifaces: dict[str, str] = {}
    for vip in run.vips():
        name = run.vip_iface(vip)
        if name:
            ifaces.setdefault(name, f"VIP {vip}")
    for svc in run.services:
        for d in svc.dests:
            name = (d.get("l2") or {}).get("ifname")
            if name:
                ifaces.setdefault(name, f"towards {d.get('addr')}")
    if not ifaces:
        return []
    all_v = sysctl_int(run.ctx.sysctl("net/ipv4/conf/all/rp_filter")) or 0
    default_v = sysctl_int(run.ctx.sysctl("net/ipv4/conf/default/rp_filter"))
    rows, strict = [], []
    for name, why in sorted(ifaces.items()):
        own = sysctl_int(run.ctx.sysctl(f"net/ipv4/conf/{name}/rp_filter"))
        eff = max(all_v, own or 0)
        rows.append(f"{name} ({why}): rp_filter {own}, all {all_v} -> effective {eff} "
                    f"({['off', 'strict', 'loose'][eff] if 0 <= eff <= 2 else '?'})")
        if eff == 1:
            strict.append(name)
    if default_v is not None:
        rows.append(f"default {default_v} (applies to interfaces created later)")
    tunnel = "tunnel" in run.fwds()
    text = ("lbd takes balanced packets in raw PREROUTING, before the routing decision where rp_filter applies, "
            "so rp_filter never drops them on the director")
    if run.input_hook():
        text = ("lbd takes balanced packets after routing (--steer-hook input), as kernel IPVS: rp_filter applies to "
                "them; strict mode drops a client's packet that arrives on an interface its reverse route does not use")
    elif strict:
        text += f"; strict mode on {', '.join(strict)} only affects packets lbd hands back (and VIP traffic while lbd is down)"
    fix = ("on IPIP real servers set rp_filter to 0 or 2 on the tunnel interface and on `all` "
           "(decapsulated packets arrive there with the client's source address)") if tunnel else ""
    return [Finding("info", "rp_filter", text, evidence="\n".join(rows), fix=fix)]


def check_vip(run: Run) -> list[Finding]:
    out: list[Finding] = []
    addrs = run.addrs()
    for vip in run.vips():
        names = addrs.get(vip, [])
        svcs = ", ".join(s.name for s in run.services if s.addr == vip)
        if not names:
            out.append(Finding("error", "vip", f"VIP {vip} ({svcs}) is not configured on any interface: clients on the "
                               "LAN cannot ARP it, so its packets never reach this director",
                               evidence="local IPv4 addresses: " + (", ".join(sorted(addrs, key=addr_key)) or "(none)"),
                               fix=f"ip addr add {vip}/32 dev <client-facing interface> (unless a router routes {vip} "
                                   "to this director, then nothing is needed)"))
            continue
        non_lo = [n for n in names if n != "lo"]
        if non_lo:
            iface = run.iface(non_lo[0]) or {}
            up = "UP" in iface.get("flags", []) and iface.get("operstate") in ("UP", "UNKNOWN", None)
            if not up:
                out.append(Finding("error", "vip", f"VIP {vip} is on {non_lo[0]}, which is down",
                                   evidence=f"{non_lo[0]}: flags {iface.get('flags')}, operstate {iface.get('operstate')}",
                                   fix=f"ip link set dev {non_lo[0]} up"))
            else:
                out.append(Finding("info", "vip", f"VIP {vip} is configured on {', '.join(names)}"))
            continue
        ignores = {}
        all_ign = sysctl_int(run.ctx.sysctl("net/ipv4/conf/all/arp_ignore")) or 0
        for i in run.ifaces:
            n = i.get("ifname")
            if n and n != "lo":
                ignores[n] = max(all_ign, sysctl_int(run.ctx.sysctl(f"net/ipv4/conf/{n}/arp_ignore")) or 0)
        if ignores and all(v >= 1 for v in ignores.values()):
            out.append(Finding("error", "vip", f"VIP {vip} is only on lo and arp_ignore >= 1 everywhere: "
                               "the director does not answer ARP for it",
                               evidence=", ".join(f"{k} arp_ignore {v}" for k, v in sorted(ignores.items())),
                               fix=f"put {vip}/32 on the client-facing interface instead of lo"))
        else:
            out.append(Finding("info", "vip", f"VIP {vip} is only on lo: the director answers ARP for it where "
                               "arp_ignore is 0", evidence=", ".join(f"{k} arp_ignore {v}" for k, v in sorted(ignores.items()))))
    return out


def check_mtu(run: Run) -> list[Finding]:
    out: list[Finding] = []
    for svc in run.services:
        for d in svc.dests:
            if d.get("fwd") != "tunnel":
                continue
            rip = str(d.get("addr"))
            route = run.ctx.route_get(rip)
            if route is None:
                out.append(Finding("warning", "mtu", f"destination {rip}: no route, cannot check the tunnel MTU"))
                continue
            dev = route.get("dev", "?")
            link_mtu = (run.iface(dev) or {}).get("mtu")
            route_mtu = next((m.get("mtu") for m in route.get("metrics", []) if isinstance(m, dict) and "mtu" in m), None)
            mtu = route_mtu or link_mtu
            if not isinstance(mtu, int):
                continue
            inner = mtu - IPIP_OVERHEAD_B
            ev = (f"route to {rip}: dev {dev}, interface MTU {link_mtu}" + (f", route MTU {route_mtu}" if route_mtu else "")
                  + f"; IPIP adds {IPIP_OVERHEAD_B} bytes -> largest client packet {inner} bytes")
            if inner < CLIENT_PACKET_B:
                out.append(Finding(
                    "warning", "mtu",
                    f"destination {rip}:{d.get('port')} (IPIP): {CLIENT_PACKET_B}-byte client packets do not fit "
                    f"the tunnel ({mtu} - {IPIP_OVERHEAD_B} = {inner})",
                    evidence=ev,
                    fix=f"raise the MTU of the director -> real-server path to >= {CLIENT_PACKET_B + IPIP_OVERHEAD_B} "
                        f"(ip link set dev {dev} mtu {CLIENT_PACKET_B + IPIP_OVERHEAD_B}, also on the switch and the real "
                        f"servers), or make the real servers announce a smaller MSS (iptables -t mangle -A OUTPUT -p tcp "
                        f"--tcp-flags SYN,RST SYN -j TCPMSS --set-mss {inner - 40}) so clients never send more than {inner} bytes",
                ))
            else:
                out.append(Finding("info", "mtu", f"destination {rip}:{d.get('port')} (IPIP): tunnel MTU fits "
                                   f"{CLIENT_PACKET_B}-byte client packets", evidence=ev))
    return out


def check_destinations(run: Run) -> list[Finding]:
    out: list[Finding] = []
    for svc in run.services:
        for d in svc.dests:
            l2 = d.get("l2") or {}
            state = l2.get("state")
            name = f"{d.get('addr')}:{d.get('port')}"
            if state == "unresolved":
                out.append(Finding("error", "destinations",
                                   f"destination {name} of {svc.name}: forwarding state unresolved: "
                                   f"{l2.get('reason') or 'no reason given'}; its packets are dropped (no_l2)",
                                   evidence=f"l2: {json.dumps(l2, sort_keys=True)}",
                                   fix=f"check `ip route get {d.get('addr')}` and `ip neigh show {d.get('addr')}`: the "
                                       "real server (or the next hop) must answer ARP from the director's interface"))
            elif state == "n/a":
                out.append(Finding("info", "destinations", f"destination {name} of {svc.name}: no forwarding state "
                                   f"(lbd runs without a resolver: {l2.get('reason', '')})"))
    return out
