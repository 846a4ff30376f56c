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


def sequence(rec: dict[str, Any]) -> list[str]:
    return [f["outcome"] for f in rec.get("flows", [])]
