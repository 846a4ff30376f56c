"""lbd's state file (issue 8: restarts lose nothing): its format, and saving/restoring a Director.

Layout: STATE_MAGIC, one line of JSON (the configuration as Director.snapshot_config() gives
it, plus when and by which engine it was saved, and the size and number of the connection
records), then the connection table as raw struct lb_conn_info records (lb_api.h), as the C
engine's dump_connections_raw() produces them. An engine that cannot dump (the Python engine)
saves the configuration only ("connections": null). The file is written atomically
(temporary file, fsync, rename), mode 0600.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lb.engine import EngineError

if TYPE_CHECKING:
    from lb.director import Director

log = logging.getLogger("lbd")

STATE_MAGIC = b"LBDSTATE1\n"


def state_path(state_dir: str, queue_num: int) -> Path:
    return Path(state_dir) / f"lbd-q{queue_num}.state"


def conn_record_size() -> int:
    """Bytes of one connection record: struct lb_conn_info of the compiled core (only engines that
    dump have records, and only the compiled core dumps)."""
    from lb._ffi import ffi

    return int(ffi.sizeof("struct lb_conn_info"))


def write_state(path: Path, config: dict[str, Any], blob: bytes | None, engine: str) -> int:
    """Write a snapshot atomically; returns its size in bytes. `blob`: the raw connection records,
    None when the engine cannot dump them."""
    header = {
        **config,
        "saved_at": time.time(),
        "engine": engine,
        "conn_record_size": conn_record_size() if blob is not None else None,
        "connections": None if blob is None else len(blob) // conn_record_size(),
    }
    data = STATE_MAGIC + json.dumps(header, separators=(",", ":")).encode() + b"\n" + (blob or b"")
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return len(data)


def read_state(path: Path) -> tuple[dict[str, Any], bytes]:
    """(header, connection blob) of a state file; ValueError if it is not one."""
    data = path.read_bytes()
    if not data.startswith(STATE_MAGIC):
        raise ValueError(f"{path}: not an lbd state file")
    end = data.find(b"\n", len(STATE_MAGIC))
    if end < 0:
        raise ValueError(f"{path}: truncated header")
    header = json.loads(data[len(STATE_MAGIC):end])
    if not isinstance(header, dict):
        raise ValueError(f"{path}: header is not an object")
    return header, data[end + 1:]


def age_connections(blob: bytes, elapsed_ms: int) -> tuple[bytes, int]:
    """Records with `elapsed_ms` less time left (lbd was down that long); drops the expired ones.

    The dump stores time left, so a restore counts from the new process's clock; taking the
    downtime off keeps every entry's deadline where it was (wall clock, to the second).
    """
    from lb._ffi import ffi

    size = conn_record_size()
    n = len(blob) // size
    if n == 0 or elapsed_ms <= 0:
        return blob, 0
    arr = ffi.from_buffer("struct lb_conn_info[]", bytearray(blob))
    kept = []
    expired = 0
    for i in range(n):
        left = int(arr[i].expires_in_ms) - elapsed_ms
        if left <= 0:
            expired += 1
            continue
        arr[i].expires_in_ms = left
        kept.append(bytes(ffi.buffer(arr + i, size)))
    return b"".join(kept), expired


def save_state(director: Director, path: Path) -> str:
    """One snapshot of `director` to `path`; returns a summary for the log."""
    engine = director.engine
    blob = engine.dump_connections_raw(int(time.monotonic() * 1000))
    size = write_state(path, director.snapshot_config(), blob, engine.name)
    conns = f"not saved (engine {engine.name} cannot dump them)" if blob is None else \
        f"{len(blob) // conn_record_size()} connections"
    return f"{size} bytes, {conns}"


def restore_state(director: Director, path: Path) -> dict[str, Any]:
    """Re-apply a state file: configuration, then connections. Returns what happened."""
    header, blob = read_state(path)
    age_s = max(0.0, time.time() - float(header.get("saved_at") or time.time()))
    applied = director.restore_config(header, f"restore from {path}")
    result: dict[str, Any] = {"age_s": round(age_s, 3), "commands": applied}
    if header.get("connections") is None:
        log.info("restore from %s: the snapshot holds no connection table (saved by engine %s)",
                 path, header.get("engine"))
        return result
    try:
        outcome = _restore_connections(director, header, blob, age_s)
    except (EngineError, ImportError) as exc:  # ImportError: records, but no compiled core to read them
        log.warning("restore from %s: %s connections not restored: %s", path, header["connections"], exc)
        return result
    result["connections"] = outcome
    log.info("restore from %s (saved %.1f s ago): connections %s", path, age_s,
             ", ".join(f"{k} {v}" for k, v in sorted(outcome.items())) or "none")
    return result


def _restore_connections(director: Director, header: dict[str, Any], blob: bytes, age_s: float) -> dict[str, int]:
    size = conn_record_size()
    if header.get("conn_record_size") != size or len(blob) % size:
        raise EngineError("EINVAL", f"records of {header.get('conn_record_size')} bytes, this lbd's are {size}")
    aged, expired = age_connections(blob, int(age_s * 1000))
    outcome = director.engine.restore_connections_raw(aged, int(time.monotonic() * 1000))
    if expired:
        outcome["expired"] = expired
    return outcome
