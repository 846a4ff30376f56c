"""The text of /proc/net/ip_vs, /proc/net/ip_vs_conn and /proc/net/ip_vs_stats, in the kernel's
formats (ip_vs_ctl.c ip_vs_info_seq_show and ip_vs_stats_show, ip_vs_conn.c ip_vs_conn_seq_show),
from lbd's `list`, `connections` and the director's totals. ipvsadm -c reads ip_vs_conn; scripts
and exporters read the others."""

from __future__ import annotations

import socket
from collections.abc import Iterable, Mapping
from typing import Any

from lb.model import Stats

FILES = ("ip_vs", "ip_vs_conn", "ip_vs_stats")
_FWD_NAMES = {"masq": "Masq", "tunnel": "Tunnel", "route": "Route", "local": "Local"}


def _hex_addr(addr: str) -> str:
    return socket.inet_aton(addr).hex().upper()


def ip_vs(listing: Mapping[str, Any]) -> str:
    """/proc/net/ip_vs: services (address services, then fwmark ones), each with its real servers."""
    lines = [f"IP Virtual Server version 1.2.1 (size={int(listing['conn_tab_size'])})",
             "Prot LocalAddress:Port Scheduler Flags",
             "  -> RemoteAddress:Port Forward Weight ActiveConn InActConn"]
    services = list(listing.get("services") or [])
    ordered = [s for s in services if not s.get("fwmark")] + [s for s in services if s.get("fwmark")]
    for svc in ordered:
        ops = "ops " if svc.get("ops") else ""
        if svc.get("fwmark"):
            head = f"FWM  {int(svc['fwmark']):08X} {svc['sched']} {ops}"
        else:
            head = f"{str(svc['proto']).upper()}  {_hex_addr(svc['addr'])}:{int(svc['port']):04X} {svc['sched']} {ops} "
        if svc.get("persistent") is not None:
            head += f"persistent {int(svc['persistent'])} {_hex_addr(svc.get('netmask') or '255.255.255.255')}"
        lines.append(head)
        for dest in svc.get("dests") or []:
            fwd = _FWD_NAMES.get(str(dest.get("fwd")), "FullNAT")
            lines.append(f"  -> {_hex_addr(dest['addr'])}:{int(dest['port']):04X}      "
                         f"{fwd:<7} {int(dest['weight']):<6d} {int(dest.get('active') or 0):<10d} "
                         f"{int(dest.get('inactive') or 0):<10d}")
    return "".join(line + "\n" for line in lines)


def ip_vs_conn(connections: Mapping[str, Any]) -> str:
    """/proc/net/ip_vs_conn: one line per connection entry, expiry in whole seconds (no PE data)."""
    lines = ["Pro FromIP   FPrt ToIP     TPrt DestIP   DPrt State       Expires PEName PEData"]
    for c in connections.get("connections") or []:
        seconds = max(0, int(c.get("expires_ms") or 0)) // 1000
        lines.append(f"{str(c['proto']).upper():<3} {_hex_addr(c['caddr'])} {int(c['cport']):04X} "
                     f"{_hex_addr(c['vaddr'])} {int(c['vport']):04X} {_hex_addr(c['daddr'])} {int(c['dport']):04X} "
                     f"{str(c.get('state') or 'NONE'):<11} {seconds:7d}")
    return "".join(line + "\n" for line in lines)


def ip_vs_stats(totals: Stats, rates: Iterable[Mapping[str, Any]]) -> str:
    """/proc/net/ip_vs_stats: the totals (lb/totals.py) and the summed rates of the services."""
    rate = {name: 0 for name in ("cps", "inpps", "outpps", "inbps", "outbps")}
    for stats in rates:
        for name in rate:
            rate[name] += int(stats.get(name) or 0)
    return ("   Total Incoming Outgoing         Incoming         Outgoing\n"
            "   Conns  Packets  Packets            Bytes            Bytes\n"
            f"{totals.conns:8X} {totals.inpkts:8X} {totals.outpkts:8X} {totals.inbytes:16X} {totals.outbytes:16X}\n"
            "\n"
            " Conns/s   Pkts/s   Pkts/s          Bytes/s          Bytes/s\n"
            f"{rate['cps']:8X} {rate['inpps']:8X} {rate['outpps']:8X} {rate['inbps']:16X} {rate['outbps']:16X}\n")
