"""Text output exactly as ipvsadm 1.31 prints it, from lbd's `list`/`connections` results.

Pure functions over the dicts of docs/control-protocol.md; no I/O except the
reading of /etc/hosts and /etc/services for non-numeric output, by the NameDB of
lb.namedb (never DNS). The printf formats, column widths, truncations (33
characters for a service label, 28 for a destination), number suffixes and sort
order (lb.ipvsadm_order) are those of ipvsadm 1.31 and libipvs, so scripts written against ipvsadm
parse our output unchanged. Lines keep ipvsadm's trailing blanks (its last columns are
left-aligned and padded).

Optional result fields beyond the contract, all defaulting to "absent/zero":
service `fwmark`, `ipv6`, `ops`, `pe`, `sched_flags` (list of names); stats
`cps`, `inpps`, `outpps`, `inbps`, `outbps` (rates for --rate); dest `tun_type`
("ipip"|"gue"|"gre"), `tun_port`, `tun_flags` ("nocsum"|"csum"|"remcsum");
connection `pe_name`, `pe_data`; service `synproxy`, `toa` (booleans), `laddrs`
(list of {"addr", "conns"}).

DPVS additions (iqiyi/dpvs tools/ipvsadm/ipvsadm.c): listings flag a SYN-proxy service with
" synproxy" as DPVS does (and a TOA one with " toa", lbd's); `-S` writes `-j enable`, `--toa` and
one `-P ... -z LIP` line per local address (DPVS's -S writes none of them, so its output does not
restore a FULLNAT service); `format_laddrs` is DPVS's `-G` table.
"""

from __future__ import annotations

from collections.abc import Mapping

from lb.ipvsadm_order import AF_INET6 as _AF_INET6
from lb.ipvsadm_order import PROTO_NUMBERS as _PROTO_NUMBERS
from lb.ipvsadm_order import service_af as _service_af
from lb.ipvsadm_order import sorted_dests, sorted_services
from lb.namedb import NameDB
from lb.records import NamedTuple
from lb.vocab import FORWARD_NAMES

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    Json = Mapping[str, Any]

ALL_ONES_NETMASK = "255.255.255.255"
IPV6_FULL_PREFIX = 128

# ipvsadm's names: fwd_name() for listings, fwd_switch() for -S rules.
_FORWARD_LABELS = {**FORWARD_NAMES, "local": "Local"}
_FORWARD_SWITCHES = {"masq": "-m", "tunnel": "-i", "local": "-g", "route": "-g", "fullnat": "-b"}
_SERVICE_OPTIONS = {"tcp": "-t", "udp": "-u", "sctp": "--sctp-service"}
_TUN_FLAG_LABELS = {"nocsum": "-c", "csum": "+c", "remcsum": "r+c"}
_TUN_FLAG_OPTIONS = {"nocsum": "--tun-nocsum", "csum": "--tun-csum", "remcsum": "--tun-remcsum"}

# Label widths in ipvsadm's listings.
SERVICE_LABEL_WIDTH = 33
DEST_LABEL_WIDTH = 28


class ListFormat(NamedTuple):
    """ipvsadm's FMT_* flags. The first true one of stats, rate, thresholds,
    persistent_conn, tun_info chooses the layout, in that order."""

    numeric: bool = False
    stats: bool = False
    rate: bool = False
    thresholds: bool = False
    persistent_conn: bool = False
    tun_info: bool = False
    nosort: bool = False
    exact: bool = False


# --------------------------------------------------------------------------
# Names (from lb.namedb: /etc/hosts and /etc/services only).


def _is_ipv6_addr(text: str) -> bool:
    return ":" in text


def addrport_to_anyname(addr: str, port: int, proto: str, numeric: bool, names: NameDB) -> str:
    """ipvsadm's addrport_to_anyname: "addr:port", IPv6 in brackets, names unless numeric."""
    open_b, close_b = ("[", "]") if _is_ipv6_addr(addr) else ("", "")
    if numeric:
        return f"{open_b}{addr}{close_b}:{port}"
    host = names.host_for_addr(addr) or addr
    service = names.service_for_port(port, proto.lower()) or str(port)
    return f"{open_b}{host}{close_b}:{service}"


# --------------------------------------------------------------------------
# Numbers.


def largenum(value: int, exact: bool = False) -> str:
    """ipvsadm's print_largenum: 9 columns, K/M/G/T suffixes from 10^8 on."""
    if exact:
        digits = str(value)
        width = 9 if len(digits) <= 8 else len(digits) + 1
        return digits.rjust(width)
    if value < 100_000_000:
        return f"{value:9d}"
    if value < 1_000_000_000:
        return f"{value // 1000:8d}K"
    if value < 100_000_000_000:
        return f"{value // 1_000_000:8d}M"
    if value < 100_000_000_000_000:
        return f"{value // 1_000_000_000:8d}G"
    return f"{value // 1_000_000_000_000:8d}T"


def _stat(stats: Json | None, name: str) -> int:
    if not stats:
        return 0
    return int(stats.get(name) or 0)


def _service_port(svc: Json) -> int:
    return 0 if svc.get("fwmark") else int(svc.get("port") or 0)


# --------------------------------------------------------------------------
# Services and destinations.


def _protocol_label(proto: str) -> str:
    return proto.upper() if proto.lower() in _PROTO_NUMBERS else "?"


def service_label(svc: Json, numeric: bool, names: NameDB, rule: bool = False) -> str:
    """ipvsadm's svc_name: "TCP  10.0.0.1:80", "FWM  1", or "-t 10.0.0.1:80" in rules."""
    fwmark = int(svc.get("fwmark") or 0)
    ipv6 = _service_af(svc) == _AF_INET6
    if fwmark:
        if rule:
            return f"-f {fwmark} -6" if ipv6 else f"-f {fwmark}"
        return f"FWM  {fwmark} IPv6" if ipv6 else f"FWM  {fwmark}"
    proto = str(svc.get("proto") or "").lower()
    vname = addrport_to_anyname(str(svc["addr"]), int(svc["port"]), proto, numeric, names)
    if rule:
        return f"{_SERVICE_OPTIONS.get(proto, '--xxx-service')} {vname}"
    label = f"{_protocol_label(proto):<4} {vname}"
    return label if ipv6 else label[:SERVICE_LABEL_WIDTH]


def _persistence_suffix(svc: Json, persist_word: str, mask_word: str) -> str:
    """' persistent 300 mask 255.255.255.0' in listings, ' -p 300 -M 255.255.255.0' in rules."""
    text = f" {persist_word} {int(svc['persistent'])}"
    netmask = svc.get("netmask")
    if _service_af(svc) == _AF_INET6:
        if netmask not in (None, IPV6_FULL_PREFIX, str(IPV6_FULL_PREFIX)):
            text += f" {mask_word} {netmask}"
    elif netmask not in (None, ALL_ONES_NETMASK):
        text += f" {mask_word} {netmask}"
    return text


def _sched_flags(svc: Json) -> str:
    """ipvsadm 1.31's print_sched_flags(): sh and mh name their first two bits (sh-fallback, sh-port;
    mh-fallback, mh-port) and print nothing for the third; every other scheduler prints flag-1..3.
    So `-s sh -b flag-3` lists as `sh ()` and saves as `-b ` with nothing after it, as ipvsadm does
    (read from Debian's ipvsadm 1:1.31-1 binary). `sched_flags` holds names that restore the bits
    (lb.model.sched_flag_names: flag-3 for sh/mh)."""
    names = [str(flag) for flag in svc.get("sched_flags") or []]
    if svc.get("sched") in ("sh", "mh"):
        names = [name for name in names if name != "flag-3"]
    return ",".join(names)


def _service_line(svc: Json, label: str, fmt: ListFormat) -> str:
    if fmt.stats:
        stats = svc.get("stats")
        numbers = ("conns", "inpkts", "outpkts", "inbytes", "outbytes")
        return f"{label:<{SERVICE_LABEL_WIDTH}}" + "".join(largenum(_stat(stats, n), fmt.exact) for n in numbers)
    if fmt.rate:
        stats = svc.get("stats")
        numbers = ("cps", "inpps", "outpps", "inbps", "outbps")
        return f"{label:<{SERVICE_LABEL_WIDTH}}" + "".join(largenum(_stat(stats, n), fmt.exact) for n in numbers)
    line = f"{label} {svc.get('sched', '')}"
    if svc.get("sched_flags"):  # any of the three bits, even one print_sched_flags prints nothing for
        line += f" ({_sched_flags(svc)})"
    if svc.get("persistent"):
        line += _persistence_suffix(svc, "persistent", "mask")
        if svc.get("pe"):
            line += f" pe {svc['pe']}"
    if svc.get("ops"):
        line += " ops"
    if svc.get("synproxy"):
        line += " synproxy"
    if svc.get("toa"):
        line += " toa"
    if svc.get("proxy_protocol"):
        line += f" proxy-protocol {svc['proxy_protocol']}"
    return line


def _service_rule(svc: Json, label: str) -> str:
    line = f"-A {label} -s {svc.get('sched', '')}"
    if svc.get("persistent"):
        line += _persistence_suffix(svc, "-p", "-M")
    if svc.get("pe"):
        line += f" --pe {svc['pe']}"
    if svc.get("ops"):
        line += " -o"
    if svc.get("sched_flags"):
        line += f" -b {_sched_flags(svc)}"  # as ipvsadm -S: on -A, lbadm reads -b as --sched-flags too
    if svc.get("synproxy"):
        line += " -j enable"
    if svc.get("toa"):
        line += " --toa"
    if svc.get("proxy_protocol"):
        line += f" --proxy-protocol {svc['proxy_protocol']}"
    return line


def _tunnel_info(dest: Json) -> str | None:
    if dest.get("fwd") != "tunnel":
        return None
    tun_type = str(dest.get("tun_type") or "ipip")
    flag = _TUN_FLAG_LABELS.get(str(dest.get("tun_flags") or "nocsum"), "-c")
    if tun_type == "gue":
        return f"gue:{int(dest.get('tun_port') or 0)}:{flag}"
    if tun_type == "gre":
        return f"gre:{flag}"
    return tun_type


def _dest_rule(dest: Json, svc_label: str, dname: str) -> str:
    fwd = str(dest.get("fwd") or "route")
    weight = int(dest.get("weight", 1))
    switch = _FORWARD_SWITCHES.get(fwd, "(null)")
    line = f"-a {svc_label} -r {dname} {switch} -w {weight}"
    if fwd != "tunnel":
        return line
    tun_type = str(dest.get("tun_type") or "ipip")
    flag_option = _TUN_FLAG_OPTIONS.get(str(dest.get("tun_flags") or "nocsum"), "--tun-nocsum")
    if tun_type == "gue":
        return f"{line} --tun-type gue --tun-port {int(dest.get('tun_port') or 0)} {flag_option}"
    if tun_type == "gre":
        return f"{line} --tun-type gre {flag_option}"
    return f"{line} --tun-type {tun_type}"


def _dest_line(dest: Json, dname: str, fmt: ListFormat) -> str:
    active = int(dest.get("active") or 0)
    inactive = int(dest.get("inactive") or 0)
    weight = int(dest.get("weight", 1))
    stats = dest.get("stats")
    if fmt.stats:
        numbers = ("conns", "inpkts", "outpkts", "inbytes", "outbytes")
        return f"  -> {dname:<{DEST_LABEL_WIDTH}}" + "".join(largenum(_stat(stats, n), fmt.exact) for n in numbers)
    if fmt.rate:
        # ipvsadm prints the three per-second counts raw and only the byte rates as large numbers.
        packets = " ".join(f"{_stat(stats, name):8d}" for name in ("cps", "inpps", "outpps"))
        byte_rates = largenum(_stat(stats, "inbps"), fmt.exact) + largenum(_stat(stats, "outbps"), fmt.exact)
        return f"  -> {dname:<{DEST_LABEL_WIDTH}} {packets}{byte_rates}"
    if fmt.thresholds:
        u_thr, l_thr = int(dest.get("u_threshold") or 0), int(dest.get("l_threshold") or 0)
        return f"  -> {dname:<{DEST_LABEL_WIDTH}} {u_thr:<10d} {l_thr:<10d} {active:<10d} {inactive:<10d}"
    if fmt.persistent_conn:
        persist = int(dest.get("persist") or 0)
        return f"  -> {dname:<{DEST_LABEL_WIDTH}} {weight:<9d} {persist:<11d} {active:<10d} {inactive:<10d}"
    fwd = _FORWARD_LABELS.get(str(dest.get("fwd") or ""), "(null)")
    if fmt.tun_info:
        info = _tunnel_info(dest) or "n/a"
        return f"  -> {dname:<{DEST_LABEL_WIDTH}} {fwd:<7} {info:<13} {weight:<6d} {active:<10d} {inactive:<10d}"
    return f"  -> {dname:<{DEST_LABEL_WIDTH}} {fwd:<7} {weight:<6d} {active:<10d} {inactive:<10d}"


def _sorted_dests(svc: Json, nosort: bool) -> list[Json]:
    dests = list(svc.get("dests") or [])
    return dests if nosort else sorted_dests(dests)


def format_service_entry(svc: Json, fmt: ListFormat, names: NameDB, rule: bool = False) -> str:
    """One service and its destinations (ipvsadm's print_service_entry)."""
    label = service_label(svc, fmt.numeric, names, rule)
    lines = [_service_rule(svc, label) if rule else _service_line(svc, label, fmt)]
    if rule:  # the local addresses right after their service, before traffic can need them
        lines += [f"-P {label} -z {la['addr']}" for la in svc.get("laddrs") or []]
    proto = str(svc.get("proto") or "tcp").lower()
    for dest in _sorted_dests(svc, fmt.nosort):
        dname = addrport_to_anyname(str(dest["addr"]), int(dest["port"]), proto, fmt.numeric, names)
        if rule:
            lines.append(_dest_rule(dest, label, dname))
            continue
        if not _is_ipv6_addr(str(dest["addr"])):
            dname = dname[:DEST_LABEL_WIDTH]
        lines.append(_dest_line(dest, dname, fmt))
    return "".join(line + "\n" for line in lines)


def format_title(fmt: ListFormat) -> str:
    """The column header lines (ipvsadm's print_title)."""
    remote = "  -> RemoteAddress:Port\n"
    local = "Prot LocalAddress:Port"
    if fmt.stats:
        return f"{local:<33} {'Conns':>8} {'InPkts':>8} {'OutPkts':>8} {'InBytes':>8} {'OutBytes':>8}\n" + remote
    if fmt.rate:
        return f"{local:<33} {'CPS':>8} {'InPPS':>8} {'OutPPS':>8} {'InBPS':>8} {'OutBPS':>8}\n" + remote
    if fmt.thresholds:
        return f"{local:<33} {'Uthreshold':<10} {'Lthreshold':<10} {'ActiveConn':<10} {'InActConn':<10}\n" + remote
    if fmt.persistent_conn:
        return f"{local:<33} {'Weight':<9} {'PersistConn':<11} {'ActiveConn':<10} {'InActConn':<10}\n" + remote
    if fmt.tun_info:
        return (
            "Prot LocalAddress:Port Scheduler Flags\n"
            "  -> RemoteAddress:Port           Forward TunnelInfo    Weight ActiveConn InActConn\n"
        )
    return (
        "Prot LocalAddress:Port Scheduler Flags\n"
        "  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\n"
    )


def _sorted_services(result: Json, nosort: bool) -> list[Json]:
    services = list(result.get("services") or [])
    return services if nosort else sorted_services(services)


def format_list(result: Json, fmt: ListFormat, names: NameDB | None = None) -> str:
    """`ipvsadm -L` (all services): version header, title, services."""
    names = names or NameDB()
    version, size = result.get("version", "1.2.1"), int(result.get("conn_tab_size", 0))
    header = f"IP Virtual Server version {version} (size={size})\n"
    body = "".join(format_service_entry(svc, fmt, names) for svc in _sorted_services(result, fmt.nosort))
    return header + format_title(fmt) + body


def format_one_service(result: Json, fmt: ListFormat, names: NameDB | None = None) -> str:
    """`ipvsadm -L -t VIP:PORT`: title and that service, no version header."""
    names = names or NameDB()
    services = list(result.get("services") or [])
    return format_title(fmt) + "".join(format_service_entry(svc, fmt, names) for svc in services)


def format_save(result: Json, numeric: bool, nosort: bool = False, names: NameDB | None = None) -> str:
    """`ipvsadm -S`: restorable rules, one command per line."""
    names = names or NameDB()
    fmt = ListFormat(numeric=numeric, nosort=nosort)
    return "".join(format_service_entry(svc, fmt, names, rule=True) for svc in _sorted_services(result, nosort))


# --------------------------------------------------------------------------
# DPVS -G: FULLNAT local addresses (list_laddrs_print_title / _service / _laddr)


def format_laddrs(result: Json) -> str:
    """DPVS's `ipvsadm -G [service]`: every service (or the one asked for) with its local addresses.

    The title precedes the first service only and nothing is printed without services, as DPVS
    does; addresses are always numeric. DPVS's CONFLICTS column (source ports found taken when
    allocating) has no counterpart in lbd, whose port allocation never collides: it shows 0.
    """
    out: list[str] = []
    for i, svc in enumerate(result.get("services") or []):
        if i == 0:
            out.append("%-20s %-8s %-20s %-10s %-10s\n" % ("VIP:VPORT", "TOTAL", "SNAT_IP", "CONFLICTS", "CONNS"))
        laddrs = list(svc.get("laddrs") or [])
        vname = f"{svc.get('addr')}:{_service_port(svc)}"
        if _service_af(svc) == _AF_INET6:
            vname = f"[{svc.get('addr')}]:{_service_port(svc)}"
        out.append("%-20s %-8u \n" % (vname, len(laddrs)))
        for la in laddrs:
            out.append("%-20s %-8s %-20s %-10u %-10u\n" % ("", "", la.get("addr"), 0, int(la.get("conns") or 0)))
    return "".join(out)


# --------------------------------------------------------------------------
# Connections, timeouts, sync daemons.


def expire_mmss(expires_ms: int) -> str:
    """Remaining lifetime as the kernel's whole seconds, printed "%02d:%02d"."""
    seconds = max(0, int(expires_ms)) // 1000
    return f"{seconds // 60:02d}:{seconds % 60:02d}"


def format_connections(result: Json, fmt: ListFormat, names: NameDB | None = None) -> str:
    """`ipvsadm -Lc` (connection entries, in the order lbd reports them)."""
    names = names or NameDB()
    lines = ["IPVS connection entries"]
    if fmt.persistent_conn:
        columns = f"{'state':<11} {'source':<18} {'virtual':<18} {'destination':<18} {'pe name':<16} pe_data"
        lines.append(f"pro expire {columns}")
    else:
        lines.append(f"pro expire {'state':<11} {'source':<18} {'virtual':<18} destination")
    for conn in result.get("connections") or []:
        lines.append(_connection_line(conn, fmt, names))
    return "".join(line + "\n" for line in lines)


def _connection_line(conn: Json, fmt: ListFormat, names: NameDB) -> str:
    proto = str(conn.get("proto") or "").lower()
    source = addrport_to_anyname(str(conn["caddr"]), int(conn["cport"]), proto, fmt.numeric, names)
    virtual = addrport_to_anyname(str(conn["vaddr"]), int(conn["vport"]), proto, fmt.numeric, names)
    dest = addrport_to_anyname(str(conn["daddr"]), int(conn["dport"]), proto, fmt.numeric, names)
    head = f"{proto.upper():<3} {expire_mmss(int(conn.get('expires_ms') or 0)):<6} {conn.get('state', '')!s:<11}"
    if fmt.persistent_conn and conn.get("pe_name") is not None and conn.get("pe_data") is not None:
        return f"{head} {source:<18} {virtual:<18} {dest:<16} {conn['pe_name']:<18} {conn['pe_data']}"
    return f"{head} {source:<18} {virtual:<18} {dest}"


def format_timeout(result: Json) -> str:
    """`ipvsadm -L --timeout`."""
    return f"Timeout (tcp tcpfin udp): {int(result['tcp'])} {int(result['tcpfin'])} {int(result['udp'])}\n"


def format_daemons(result: Json) -> str:
    """`ipvsadm -L --daemon`: one line per running sync daemon."""
    lines = []
    for daemon in result.get("daemons") or []:
        state = str(daemon.get("state", ""))
        if state not in ("master", "backup"):
            continue
        line = f"{state} sync daemon (mcast={daemon.get('mcast_ifn', '')}, syncid={int(daemon.get('syncid', 0))}"
        if daemon.get("sync_maxlen"):
            line += f", maxlen={int(daemon['sync_maxlen'])}"
        if daemon.get("mcast_group"):
            line += f", group={daemon['mcast_group']}"
        if daemon.get("mcast_port"):
            line += f", port={int(daemon['mcast_port'])}"
        if daemon.get("mcast_ttl"):
            line += f", ttl={int(daemon['mcast_ttl'])}"
        if daemon.get("sync_ext_port"):  # lbd's extension (docs/sync.md): not in ipvsadm's line
            line += f", ext-port={int(daemon['sync_ext_port'])}"
        lines.append(line + ")")
    return "".join(line + "\n" for line in lines)
