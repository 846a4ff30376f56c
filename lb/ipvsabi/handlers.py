"""lbd's control operations for the preload library (docs/control-protocol.md, `ipvs_sockopt` and
`ipvs_proc`): the tool's bytes in, the kernel's answer out, both hex-encoded in the JSON line.

The answer is always `ok: true` with the kernel's `errno` inside (0: success): a refused sockopt is
the tool's business, not a failed request."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from lb.engine import EngineError
from lb.ipvsabi import procfs
from lb.ipvsabi.sockopt import Sockopt
from lb.model import Stats
from lb.totals import STAT_FIELDS, TotalStats

# Far more than any IP_VS_SO_* argument (the largest, ip_vs_service_user + ip_vs_dest_user, is 68
# bytes): what a get passes beyond its header is never read.
MAX_ARG_BYTES = 4096
MAX_OPTLEN = 1 << 30


class Handles(Protocol):
    totals: TotalStats

    def handle(self, op: str, args: dict[str, Any], session: Any = None) -> Any: ...


def _hex_arg(args: dict[str, Any]) -> bytes:
    text = args.get("data") or ""
    if not isinstance(text, str) or len(text) > 2 * MAX_ARG_BYTES:
        raise EngineError("EINVAL", "ipvs_sockopt: 'data' must be a hex string of at most "
                                    f"{MAX_ARG_BYTES} bytes")
    try:
        return bytes.fromhex(text)
    except ValueError as exc:
        raise EngineError("EINVAL", f"ipvs_sockopt: 'data' is not hex: {exc}") from exc


def _int_arg(args: dict[str, Any], name: str, low: int, high: int) -> int:
    value = args.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise EngineError("EINVAL", f"ipvs_sockopt: '{name}' must be an integer in {low}..{high}")
    return value


def ipvs_sockopt(director: Handles, args: dict[str, Any]) -> dict[str, Any]:
    """{"dir": "get"|"set", "cmd": IP_VS_SO_*, "data": hex of the tool's buffer, "len": its optlen
    (get)} -> {"errno", "data": hex of what the kernel writes, "len": the optlen it reports (only
    when it changes it), "note": text for the tool's stderr (optional)}."""
    direction = args.get("dir")
    cmd = _int_arg(args, "cmd", 0, 0x7FFFFFFF)
    data = _hex_arg(args)
    sockopt = Sockopt(lambda op, a: director.handle(op, a))
    if direction == "set":
        return sockopt.set(cmd, data).to_json()
    if direction == "get":
        return sockopt.get(cmd, data, _int_arg(args, "len", 0, MAX_OPTLEN)).to_json()
    raise EngineError("EINVAL", "ipvs_sockopt: 'dir' must be \"get\" or \"set\"")


def ipvs_proc(director: Handles, args: dict[str, Any]) -> dict[str, Any]:
    """{"name": "ip_vs"|"ip_vs_conn"|"ip_vs_stats"} -> {"errno": 0, "data": hex of the file's text}."""
    name = args.get("name")
    if name == "ip_vs":
        text = procfs.ip_vs(director.handle("list", {}))
    elif name == "ip_vs_conn":
        text = procfs.ip_vs_conn(director.handle("connections", {}))
    elif name == "ip_vs_stats":
        services = director.handle("list", {})["services"]
        live = (Stats(**{f: int(svc["stats"][f]) for f in STAT_FIELDS}) for svc in services)
        text = procfs.ip_vs_stats(director.totals.total(live), (svc["stats"] for svc in services))
    else:
        raise EngineError("EINVAL", f"ipvs_proc: 'name' must be one of {', '.join(procfs.FILES)}")
    return {"errno": 0, "data": text.encode().hex()}


def operations(director: Handles) -> dict[str, Callable[[dict[str, Any]], Any]]:
    """The two operations, bound to one director, for its operation table."""
    return {"ipvs_sockopt": lambda args: ipvs_sockopt(director, args),
            "ipvs_proc": lambda args: ipvs_proc(director, args)}
