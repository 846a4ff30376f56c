"""Normalising what the systems printed, and rendering a run as text lines to compare.

Normalisation (the only places where the two records may legitimately differ):
- connection listings (`-Lnc`, `-L -c`, `--connection`): only entries whose virtual address is
  one of this scenario's VIPs (the tables also hold entries of scenarios played before, which live on
  until they expire), sorted (the kernel lists in hash-table order), expiry times ("01:59")
  masked as "--:--": the same packets reach both systems seconds apart;
- the tool's own name: "lbadm" reads "ipvsadm" in lbd's messages;
- the connection table's size in the `-L` header ("IP Virtual Server version 1.2.1
  (size=4096)"): the kernel's is 2^conn_tab_bits (a module parameter), lbd's its own table's;
  both print their truth, so it reads "(size=N)";
- with `--lbd-tool ipvsadm` only: the kernel's ` --tun-type ipip` in `-S` output is dropped. ipvsadm
  prints it from the genetlink attribute; through the socket options (lbd-exec's path, the only
  one lbd serves) a tunnel has no type, and ipip is the kernel's default (docs/ipvsadm.md);
Everything else, every byte of every listing, message and exit status, must be identical.

One difference is explained rather than masked: the inbound packet counters of `--stats` listings
when the clients demonstrably sent a different number of packets to the two systems (a TCP
retransmission under emulation: the guest is slow, and a late segment is sent twice). The runner
counts the client namespace's IP packets sent (Ip OutRequests) over each play;
stats_explained_by_clients() accepts the difference only if everything else is identical and each
listing's extra inbound packets are no more than the client's extra packets, in the same direction.
"""

from __future__ import annotations

import difflib
import re
import shlex
from typing import Any

EXPIRY_RE = re.compile(r"^(\S+\s+)\d{2,}:\d{2}(\s)")
TABLE_SIZE_RE = re.compile(r"^(IP Virtual Server version \S+ )\(size=\d+\)$", re.M)


def is_connection_listing(cmd: str) -> bool:
    words = shlex.split(cmd)
    if any(w in ("--connection",) for w in words):
        return True
    return any(w.startswith("-") and not w.startswith("--") and "c" in w[1:] for w in words)


def normalise_connections(text: str, vip: str | tuple[str, ...]) -> str:
    """Keep the header and these VIPs' entries, mask expiry times, sort the entries."""
    vips = (vip,) if isinstance(vip, str) else vip
    head: list[str] = []
    rows: list[str] = []
    for line in text.splitlines():
        cols = line.split()
        if len(cols) >= 6 and cols[0] in ("TCP", "UDP", "SCTP", "IP"):
            if cols[4].rsplit(":", 1)[0] in vips:
                rows.append(EXPIRY_RE.sub(r"\1--:--\2", line))
        elif not rows:
            head.append(line)
        else:
            rows.append(line)  # never expected; kept so that it shows in a diff
    return "\n".join(head + sorted(rows)) + ("\n" if text.endswith("\n") else "")


def normalise_listing(cmd: str, text: str, vip: str | tuple[str, ...]) -> str:
    if is_connection_listing(cmd):
        return normalise_connections(text, vip)
    return TABLE_SIZE_RE.sub(r"\1(size=N)", text)


def chosen_by_connection_table(text: str, client: str, port: int) -> str | None:
    """The destination address of the entry whose source is client:port (not a template)."""
    for line in text.splitlines():
        cols = line.split()
        if len(cols) >= 6 and cols[3] == f"{client}:{port}":
            return cols[5].rsplit(":", 1)[0]
    return None


def _tool_names(text: str, system: str) -> str:
    return re.sub(r"\blbadm\b", "ipvsadm", text) if system == "lbd" else text


DEFAULT_TUN_TYPE_RE = re.compile(r" --tun-type ipip(?=\s|$)", re.M)


def render(records: list[dict[str, Any]], system: str, lbd_tool: str = "lbadm") -> list[str]:
    """One system's records as lines; both systems' lines must be equal. `lbd_tool` "ipvsadm":
    the kernel's default tunnel type is dropped from its save output (see the module docstring)."""
    lines: list[str] = []
    for i, rec in enumerate(records, 1):
        lines.append(f"[{i}] {rec['what']}")
        if "flows" in rec:
            for n, f in enumerate(rec["flows"], 1):
                lines.append(f"    #{n:<3} {f['client']}:{f['port']} -> {f['outcome']}")
            continue
        lines.append(f"    exit status {rec['rc']}")
        for stream in ("stdout", "stderr"):
            text = _tool_names(rec[stream], system)
            if system == "kernel" and lbd_tool == "ipvsadm" and "-S" in rec["what"].split():
                text = DEFAULT_TUN_TYPE_RE.sub("", text)
            for ln in text.splitlines():
                lines.append(f"    {stream} | {ln}")
            if text and not text.endswith("\n"):
                lines.append(f"    {stream} (no newline at the end)")
    return lines


def diff(kernel: list[str], lbd: list[str], lbd_tool: str = "lbadm") -> str:
    return "\n".join(difflib.unified_diff(kernel, lbd, "kernel IPVS + ipvsadm", f"lbd + {lbd_tool}", n=4, lineterm=""))


STATS_ROW_IN_PKTS, STATS_ROW_IN_BYTES = 3, 5  # columns of a --stats row ("TCP VIP:P" or "-> RIP:P" first)


def _is_stats_listing(rec: dict[str, Any]) -> bool:
    return "flows" not in rec and "--stats" in rec["what"].split()


def _stats_rows(text: str) -> list[list[str]]:
    return [line.split() for line in text.splitlines()]


def _inbound_difference(kernel_text: str, lbd_text: str) -> int | None:
    """lbd's inbound packets minus the kernel's, summed over the service rows of one --stats listing,
    if the listings differ in nothing but the inbound packet and byte counters (and the bytes move
    with the packets); None otherwise."""
    k_rows, l_rows = _stats_rows(kernel_text), _stats_rows(lbd_text)
    if len(k_rows) != len(l_rows):
        return None
    total = 0
    for k, b in zip(k_rows, l_rows, strict=True):
        if k == b:
            continue
        if len(k) != 7 or len(b) != 7 or not all(c.isdigit() for c in (*k[2:], *b[2:])):
            return None
        masked = (STATS_ROW_IN_PKTS, STATS_ROW_IN_BYTES)
        if [c for i, c in enumerate(k) if i not in masked] != [c for i, c in enumerate(b) if i not in masked]:
            return None
        pkts = int(b[STATS_ROW_IN_PKTS]) - int(k[STATS_ROW_IN_PKTS])
        octets = int(b[STATS_ROW_IN_BYTES]) - int(k[STATS_ROW_IN_BYTES])
        if pkts == 0 or (pkts > 0) != (octets > 0):
            return None
        if k[0] != "->":
            total += pkts
    return total


def stats_explained_by_clients(kernel: list[dict[str, Any]], lbd: list[dict[str, Any]],
                               kernel_sent: int | None, lbd_sent: int | None) -> str | None:
    """Why the two records differ, if the only differences are inbound counters of --stats listings
    and the clients sent lbd `lbd_sent - kernel_sent` packets more (or fewer): each differing listing
    must show between 1 and that many extra (or missing) inbound packets. None: not explained."""
    if kernel_sent is None or lbd_sent is None or kernel_sent == lbd_sent or len(kernel) != len(lbd):
        return None
    extra = lbd_sent - kernel_sent
    seen: list[int] = []
    for k, b in zip(kernel, lbd, strict=True):
        if k == b:
            continue
        if not (_is_stats_listing(k) and k["what"] == b["what"] and k["rc"] == b["rc"]
                and k["stderr"] == b["stderr"]):
            return None
        diff = _inbound_difference(k["stdout"], b["stdout"])
        if diff is None or diff == 0 or (diff > 0) != (extra > 0) or abs(diff) > abs(extra):
            return None
        seen.append(diff)
    if not seen:
        return None
    return (f"the clients sent {lbd_sent} packets to lbd and {kernel_sent} to kernel IPVS (a retransmission): "
            f"the --stats listings count {', '.join(f'{d:+d}' for d in seen)} inbound packets on lbd's side "
            "and are otherwise identical")


def sequence(rec: dict[str, Any]) -> list[str]:
    return [f["outcome"] for f in rec.get("flows", [])]
