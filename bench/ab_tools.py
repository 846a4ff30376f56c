"""Which tool configures each side of the A/B against kernel IPVS, and the commands it runs.

Issue 17 item 4: one rules file (`ipvsadm -S -n` format) and ONE tool for both systems. By default
Debian's unmodified `ipvsadm` configures kernel IPVS directly and lbd through `lbd-exec` (lbd's
IPVS preload library, docs/ipvsadm.md): the same binary, the same `-C` and `-R < rules`.
`lbadm` remains an option (`--lbd-tool lbadm`): lbd is then configured by lbadm -R, or, for the
throughput and HTTP runs, by rewriting its --config file and reloading it (lbd's own
ipvsadm-save parser; one lbadm start costs 10-30 s of Python start-up under emulation).

Nothing here runs a command: bench/ab_guest.py does, in its own namespaces.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from bench import common

LBD_TOOLS = ("ipvsadm", "lbadm")
DEFAULT_LBD_TOOL = "ipvsadm"
IPVSADM = "ipvsadm"  # Debian's binary, found on PATH in the guest as in the director's namespace


def ipvs_command(args: Sequence[str]) -> list[str]:
    """ipvsadm ARGS against the kernel's IPVS."""
    return [IPVSADM, *args]


def lbd_command(tool: str, socket: str, args: Sequence[str], lbd_exec: Path | None = None,
                lbadm: Path | None = None) -> list[str]:
    """The same ipvsadm ARGS against lbd (control socket `socket`), with `tool`."""
    if tool == "ipvsadm":
        return [str(lbd_exec or common.LBD_EXEC), "--socket", socket, IPVSADM, *args]
    if tool == "lbadm":
        return [str(lbadm or common.LBADM), "--socket", socket, *args]
    raise ValueError(f"lbd's tool must be one of {', '.join(LBD_TOOLS)}, not {tool!r}")


def configured_by(tool: str) -> dict[str, str]:
    """What the bench output says configured each side (recorded with the results)."""
    if tool not in LBD_TOOLS:
        raise ValueError(f"lbd's tool must be one of {', '.join(LBD_TOOLS)}, not {tool!r}")
    lbd = ("the same ipvsadm binary through lbd-exec: `lbd-exec --socket SOCK ipvsadm -C`, "
           "`lbd-exec --socket SOCK ipvsadm -R < rules`" if tool == "ipvsadm" else
           "lbadm: `lbadm -R < rules` (functional cases); the throughput and HTTP runs rewrite lbd's "
           "--config file and reload it (lbd's ipvsadm-save parser, the one lbadm -R uses)")
    return {"tool": tool, "ipvs": "ipvsadm: `ipvsadm -C`, `ipvsadm -R < rules`", "lbd": lbd}
