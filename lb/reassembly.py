"""The kernel's IPv4 reassembly in lbd's network namespace, as lbd reports it.

lbd's rules turn on nf_defrag_ipv4 in its namespace (lb.iptlayout, "Fragments"): fragments of
every datagram arriving there are reassembled by the kernel before the raw table, so the queue
carries whole datagrams. Hostile fragments meet the kernel's limits, not lbd's: memory per
namespace capped by net.ipv4.ipfrag_high_thresh (a new fragment is dropped while the queues hold
more; ReasmFails), incomplete datagrams expire after net.ipv4.ipfrag_time seconds (ReasmTimeout,
ReasmFails), a datagram with overlapping fragments is dropped whole (RFC 5722; ReasmOverlaps,
ReasmFails). `read()` gathers those figures for `lbadm`'s counters and the metrics: the
namespace's own /proc/net files (lbd runs inside it).
"""

from __future__ import annotations

from pathlib import Path

PROC_NET = Path("/proc/net")
PROC_SYS_IPV4 = Path("/proc/sys/net/ipv4")

# Counters: our name -> (file, section, field).
COUNTERS: dict[str, tuple[str, str, str]] = {
    "reasm_reqds": ("snmp", "Ip", "ReasmReqds"),  # fragments that needed reassembly
    "reasm_oks": ("snmp", "Ip", "ReasmOKs"),  # datagrams reassembled
    "reasm_fails": ("snmp", "Ip", "ReasmFails"),  # failures of any kind (memory cap, timeout, overlap, ...)
    "reasm_timeouts": ("snmp", "Ip", "ReasmTimeout"),  # datagrams never completed within ipfrag_time
    "reasm_overlaps": ("netstat", "IpExt", "ReasmOverlaps"),  # datagrams dropped for overlapping fragments
    "frag_oks": ("snmp", "Ip", "FragOKs"),  # the kernel's own output fragmentation (not lbd's)
    "frag_creates": ("snmp", "Ip", "FragCreates"),
}


def _table(text: str) -> dict[str, dict[str, int]]:
    """/proc/net/snmp and /proc/net/netstat: pairs of lines "Section: names" / "Section: values"."""
    out: dict[str, dict[str, int]] = {}
    lines = text.splitlines()
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        section, _, keys = names.partition(":")
        _, _, nums = values.partition(":")
        try:
            out[section] = dict(zip(keys.split(), (int(v) for v in nums.split()), strict=False))
        except ValueError:
            continue
    return out


def _sockstat_frag(text: str) -> tuple[int, int]:
    """(datagrams being reassembled, bytes they hold) from /proc/net/sockstat's FRAG line."""
    for line in text.splitlines():
        if line.startswith("FRAG:"):
            f = line.split()
            values = dict(zip(f[1::2], f[2::2], strict=False))
            return int(values.get("inuse", 0)), int(values.get("memory", 0))
    return 0, 0


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def read(proc_net: Path = PROC_NET, proc_sys: Path = PROC_SYS_IPV4) -> dict[str, int]:
    """The namespace's reassembly counters, what is being reassembled now and the limits (0 when
    a file cannot be read)."""
    tables = {name: _table(_read(proc_net / name)) for name in ("snmp", "netstat")}
    out = {key: tables[f].get(section, {}).get(field, 0) for key, (f, section, field) in COUNTERS.items()}
    out["pending"], out["memory_bytes"] = _sockstat_frag(_read(proc_net / "sockstat"))
    for key, name in (("high_thresh_bytes", "ipfrag_high_thresh"), ("timeout_s", "ipfrag_time")):
        try:
            out[key] = int(_read(proc_sys / name).strip() or 0)
        except ValueError:
            out[key] = 0
    return out
