"""lbd's state file (issue 8: restarts lose nothing): its format, and saving/restoring a Director.

Two files per queue, in the state directory (issue 15: saving costs what changed, not the table):

- the snapshot, `lbd-q<N>.state`: STATE_MAGIC, one line of JSON (the configuration as
  Director.snapshot_config() gives it, plus when and by which engine it was saved, a random
  snapshot id, and the size and number of the connection records), then the connection table as
  raw struct lb_conn_info records (lb_api.h), as the C engine's dump_connections_raw() produces
  them, in slot order. Written atomically (temporary file, fsync, rename) as it is dumped, 4096
  records at a time, so the table is never in memory at once (the header's count is filled in
  last, in room left for it), mode 0600,
  when lbd starts saving and whenever the journal has grown past the snapshot's own size (so the
  whole table is written at most once per table's worth of changes).
- the journal, `lbd-q<N>.journal`: JOURNAL_MAGIC, a line of JSON naming the snapshot it belongs to,
  then segments appended every SAVE interval in which something changed: a line of JSON (when,
  how many records, and the configuration if it changed since the last one written) and that many
  records of the slots that changed (lb_conn_dump_changes: a record with proto 0 is a slot whose
  entry went). Appended with O_APPEND and fsync.

Restoring applies the snapshot, then every segment of a journal that names it, in order: the last
record of a slot wins. Each record is aged by the time since its own segment was saved. A journal
of another snapshot (the snapshot was rewritten, then lbd died before the journal was) is ignored:
the snapshot holds everything it did. A segment cut short (lbd killed while appending) keeps its
complete records; the rest of that journal is ignored, with a warning naming the file.

A damaged snapshot (issue 16 item 2) never stops lbd: the state file is an optimisation.
restore_or_set_aside() renames it (and its journal) to `<name>.damaged-<UTC time>`, kept for
inspection, says so in one log line naming the file and the reason, and lbd starts from its
configuration with an empty table. Everything is validated before anything is applied; the
configuration part is applied all or nothing (Director.restore_config). A snapshot whose records
are cut short keeps its complete records. Restored expiry times are clamped to the longest timeout
that can apply (clamp_expiry()): a bit flip must not make an entry immortal.

An engine that cannot dump (the Python engine) saves the configuration only ("connections": null),
as a snapshot, whenever it changed. Files of format 1 (LBDSTATE1: a snapshot only, no slots) are
still read.
"""

from __future__ import annotations

import json
import logging
import math
import os
import secrets
import struct
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lb.engine import EngineError

if TYPE_CHECKING:
    from lb.director import Director

log = logging.getLogger("lbd")

STATE_MAGIC = b"LBDSTATE2\n"
STATE_MAGIC_V1 = b"LBDSTATE1\n"  # snapshots of lbd before issue 15: read, never written
JOURNAL_MAGIC = b"LBDJOURNAL1\n"
# The journal is compacted into a new snapshot once it is larger than this fraction of the
# snapshot (and than MIN_COMPACT_BYTES): the whole table is rewritten at most once per table's worth
# of changes, so saving costs O(changes) amortized.
COMPACT_RATIO = 1.0
MIN_COMPACT_BYTES = 4 << 20


def state_path(state_dir: str, queue_num: int) -> Path:
    return Path(state_dir) / f"lbd-q{queue_num}.state"


def journal_path(state: Path) -> Path:
    """The journal that goes with a snapshot path."""
    return state.with_suffix(".journal")


def conn_record_size() -> int:
    """Bytes of one connection record: struct lb_conn_info of the compiled core (only engines that
    dump have records, and only the compiled core dumps)."""
    from lb._ffi import ffi

    return int(ffi.sizeof("struct lb_conn_info"))


def _slot_offset() -> int:
    from lb._ffi import ffi

    return int(ffi.offsetof("struct lb_conn_info", "slot"))


def _atomic_write(path: Path, data: bytes) -> None:
    _atomic_write_parts(path, [data])


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _atomic_write_parts(path: Path, parts: Iterable[bytes], finish: Callable[[int], None] | None = None) -> None:
    """Write `parts` as they come to a temporary file beside `path`, then `finish(fd)` (a last
    touch before it is made durable), fsync, rename over `path`."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for data in parts:
            _write_all(fd, data)
        if finish is not None:
            finish(fd)
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(tmp, path)
    except BaseException:  # a failed save leaves no temporary file behind (issue 16 item 2)
        if fd >= 0:
            os.close(fd)
        tmp.unlink(missing_ok=True)
        raise


# Room left after the header's JSON for the connection count, which a streamed snapshot knows only
# once its records are written: the header is written with count 0 and this many spaces before its
# newline, then rewritten in place with the real count (JSON allows the trailing blanks).
HEADER_SLACK = 16


def write_state(path: Path, config: dict[str, Any], blob: bytes | Iterable[bytes] | None, engine: str,
                snapshot_id: str | None = None) -> int:
    """Write a snapshot atomically; returns its size in bytes. `blob`: the raw connection records,
    whole or in pieces (written as they come, so that the table is never in memory at once), None
    when the engine cannot dump them."""
    return write_state_counted(path, config, blob, engine, snapshot_id)[0]


def write_state_counted(path: Path, config: dict[str, Any], blob: bytes | Iterable[bytes] | None, engine: str,
                        snapshot_id: str | None = None) -> tuple[int, int | None]:
    """write_state(), returning (bytes written, connection records or None)."""
    saved_at, sid = time.time(), snapshot_id or secrets.token_hex(8)
    record = conn_record_size() if blob is not None else 1

    def header(count: int | None) -> bytes:
        return json.dumps({**config, "saved_at": saved_at, "engine": engine, "snapshot": sid,
                           "conn_record_size": None if count is None else record, "connections": count},
                          separators=(",", ":")).encode()

    if blob is None or isinstance(blob, bytes):
        count = None if blob is None else len(blob) // record
        data = STATE_MAGIC + header(count) + b"\n" + (blob or b"")
        _atomic_write(path, data)
        return len(data), count
    first = header(0)
    width = len(first) + HEADER_SLACK
    records = [0]  # bytes of records written so far

    def parts() -> Iterator[bytes]:
        yield STATE_MAGIC + first.ljust(width) + b"\n"
        for chunk in blob:
            records[0] += len(chunk)
            yield chunk

    def finish(fd: int) -> None:
        final = header(records[0] // record)
        if len(final) > width:  # cannot happen: a count has at most 10 digits more than "0"
            raise ValueError(f"{path}: state header grew by {len(final) - len(first)} bytes")
        os.pwrite(fd, final.ljust(width), len(STATE_MAGIC))

    _atomic_write_parts(path, parts(), finish)
    return len(STATE_MAGIC) + width + 1 + records[0], records[0] // record


class DamagedState(ValueError):
    """A state file that cannot be used as it is; `reason` says why, for one log line."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path, self.reason = path, reason
        super().__init__(f"{path}: {reason}")


def read_state(path: Path) -> tuple[dict[str, Any], bytes]:
    """(header, connection blob) of a snapshot; DamagedState (a ValueError) if it is not a usable one.
    The header's own fields are checked here; the configuration in it by Director.restore_config."""
    data = path.read_bytes()
    if not data:
        raise DamagedState(path, "empty file")
    if not (data.startswith(STATE_MAGIC) or data.startswith(STATE_MAGIC_V1)):
        raise DamagedState(path, "not an lbd state file (no LBDSTATE magic)")
    end = data.find(b"\n", len(STATE_MAGIC))
    if end < 0:
        raise DamagedState(path, "truncated header (no end of line after it)")
    try:
        header = json.loads(data[len(STATE_MAGIC):end])
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise DamagedState(path, f"header is not JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise DamagedState(path, f"header is a JSON {type(header).__name__}, not an object")
    problem = _header_problem(header)
    if problem:
        raise DamagedState(path, problem)
    return header, data[end + 1:]


def _header_problem(header: dict[str, Any]) -> str:
    """What is wrong with the fields write_state() puts in every header ("" when nothing)."""
    saved_at = header.get("saved_at")
    if not isinstance(saved_at, int | float) or isinstance(saved_at, bool) or not math.isfinite(saved_at) \
            or saved_at < 0:
        return f"saved_at is {saved_at!r}, not a time"
    for name in ("connections", "conn_record_size"):
        value = header.get(name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            return f"{name} is {value!r}, not a count"
    if header.get("connections") is not None and header.get("conn_record_size") is None:
        return "connections without conn_record_size"
    if not isinstance(header.get("services"), list):
        return f"services is {header.get('services')!r}, not a list"
    if not isinstance(header.get("snapshot", ""), str) or not isinstance(header.get("engine", ""), str):
        return "snapshot or engine is not a string"
    return ""


# ---------------------------------------------------------------------------- the journal


@dataclass
class Segment:
    """One save's worth of changes: records (slot-keyed) and, if it changed, the configuration."""

    saved_at: float
    records: bytes
    config: dict[str, Any] | None = None


@dataclass
class Journal:
    snapshot: str
    segments: list[Segment] = field(default_factory=list)
    problem: str = ""  # why reading stopped early ("" when the file was read to its end)


def _line(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


def journal_header(snapshot_id: str) -> bytes:
    return JOURNAL_MAGIC + _line({"snapshot": snapshot_id})


def encode_segment(records: bytes, config: dict[str, Any] | None, saved_at: float | None = None) -> bytes:
    meta: dict[str, Any] = {"saved_at": time.time() if saved_at is None else saved_at,
                            "records": len(records) // conn_record_size()}
    if config is not None:
        meta["config"] = config
    return _line(meta) + records


def read_journal(path: Path) -> Journal:
    """The segments of a journal, up to the first damaged one (kept up to its last complete record).
    ValueError if the file is not a journal at all."""
    data = path.read_bytes()
    if not data.startswith(JOURNAL_MAGIC):
        raise ValueError(f"{path}: not an lbd journal")
    pos = len(JOURNAL_MAGIC)
    end = data.find(b"\n", pos)
    if end < 0:
        raise ValueError(f"{path}: truncated header")
    try:
        head = json.loads(data[pos:end])
    except RecursionError as exc:
        raise ValueError(f"{path}: header nested too deeply") from exc
    if not isinstance(head, dict) or not isinstance(head.get("snapshot"), str):
        raise ValueError(f"{path}: header names no snapshot")
    journal = Journal(head["snapshot"])
    size = conn_record_size()
    pos = end + 1
    while pos < len(data):
        end = data.find(b"\n", pos)
        try:
            if end < 0:
                raise ValueError("segment header cut short")
            meta = json.loads(data[pos:end])
            count = int(meta["records"])
            saved_at = float(meta["saved_at"])
            config = meta.get("config")
            if count < 0 or not math.isfinite(saved_at) or (config is not None and not isinstance(config, dict)):
                raise ValueError("segment header out of range")
        except (ValueError, KeyError, TypeError, RecursionError) as exc:
            journal.problem = f"damaged segment at byte {pos}: {exc}"
            break
        body = data[end + 1:end + 1 + count * size]
        complete = len(body) // size
        journal.segments.append(Segment(saved_at, body[:complete * size], config))
        if complete < count:
            journal.problem = f"last segment cut short: {complete} of {count} records"
            break
        pos = end + 1 + count * size
    return journal


class _Slots:
    """The slot column of a record blob, as a sequence (for bisect)."""

    def __init__(self, blob: bytes, size: int, offset: int) -> None:
        self.blob, self.size, self.offset = blob, size, offset

    def __len__(self) -> int:
        return len(self.blob) // self.size

    def __getitem__(self, i: int) -> int:
        return int(struct.unpack_from("=I", self.blob, i * self.size + self.offset)[0])


def merge_records(snapshot: bytes, snapshot_age_ms: int, segments: list[tuple[bytes, int]]) -> tuple[bytes, int]:
    """The records of the latest version of every slot, each aged by its own save's age; returns
    (records, how many had expired meanwhile). `snapshot` is in slot order (lb_conn_dump); a segment's
    record replaces the snapshot's and earlier segments' record of the same slot, and one with proto 0
    removes it. Costs O(changes x log(table)) plus copying, not a pass over the table in Python."""
    size, offset = conn_record_size(), _slot_offset()
    latest: dict[int, tuple[bytes, int]] = {}
    for records, age_ms in segments:
        for i in range(0, len(records) - size + 1, size):
            rec = records[i:i + size]
            latest[int(struct.unpack_from("=I", rec, offset)[0])] = (rec, age_ms)
    column = _Slots(snapshot, size, offset)
    drop = sorted({j for slot in latest if (j := bisect_left(column, slot)) < len(column) and column[j] == slot})
    parts, start = [], 0
    for j in drop:
        parts.append(snapshot[start * size:j * size])
        start = j + 1
    parts.append(snapshot[start * size:])
    kept, expired = age_connections(b"".join(parts), snapshot_age_ms)
    by_age: dict[int, list[bytes]] = {}
    for rec, age_ms in latest.values():
        if rec[0] != 0:  # proto 0: the slot's entry went
            by_age.setdefault(age_ms, []).append(rec)
    out = [kept]
    for age_ms, recs in by_age.items():
        aged, gone = age_connections(b"".join(recs), age_ms)
        out.append(aged)
        expired += gone
    return b"".join(out), expired


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


# ---------------------------------------------------------------------------- saving


def _remove_stale_temporaries(path: Path) -> None:
    """Temporary files a killed lbd left beside the state file (one lbd per queue: none is live)."""
    for name in (path.name, journal_path(path).name):
        for tmp in path.parent.glob(f".{name}.*.tmp"):
            tmp.unlink(missing_ok=True)
            log.info("removed %s, left by an lbd stopped while saving", tmp)


class StateSaver:
    """lbd's periodic saves: a full snapshot first, then journal segments of what changed, and a
    new snapshot when the journal has outgrown the last one (COMPACT_RATIO)."""

    def __init__(self, director: Director, path: Path, compact_ratio: float = COMPACT_RATIO,
                 min_compact_bytes: int = MIN_COMPACT_BYTES) -> None:
        self.director = director
        self.path = path
        self.journal = journal_path(path)
        self.compact_ratio = compact_ratio
        self.min_compact_bytes = min_compact_bytes
        self.snapshot_id: str | None = None  # None: the next save writes a snapshot
        self.snapshot_bytes = 0
        self.journal_bytes = 0
        self._config_json = ""
        self._json_cache: tuple[int, str] | None = None  # (director.config_generation, its JSON)
        _remove_stale_temporaries(path)

    def save(self) -> str:
        """One save; returns a summary for the log."""
        engine = self.director.engine
        config = self.director.snapshot_config()  # cached by the director per config_generation
        # Encoded once per configuration change, not every save: 10,000 services are megabytes of
        # JSON, and an idle lbd saves every 2 s (issue 15: idle below 1 % of a core).
        generation = self.director.config_generation
        if self._json_cache is None or self._json_cache[0] != generation:
            self._json_cache = (generation, json.dumps(config, sort_keys=True, separators=(",", ":")))
        config_json = self._json_cache[1]
        changed_config = config_json != self._config_json
        if self.snapshot_id is None:
            return self._snapshot(config, config_json)
        now = int(time.monotonic() * 1000)
        changes = engine.dump_changes_raw(now)
        if changes is None:  # an engine that cannot dump: the configuration is all there is
            return self._snapshot(config, config_json) if changed_config else "unchanged"
        if not changes and not changed_config:
            return "unchanged"
        limit = max(self.min_compact_bytes, int(self.snapshot_bytes * self.compact_ratio))
        segment = encode_segment(changes, config if changed_config else None)
        if self.journal_bytes + len(segment) > limit:
            return self._snapshot(config, config_json)
        self._append(segment)
        self._config_json = config_json
        return f"journal +{len(segment)} bytes, {len(changes) // conn_record_size()} changed slots"

    def _snapshot(self, config: dict[str, Any], config_json: str) -> str:
        engine = self.director.engine
        # In pieces, written as they are dumped: the table is never in memory at once.
        chunks = engine.dump_connections_chunks(int(time.monotonic() * 1000), reset_changes=True)
        snapshot_id = secrets.token_hex(8)
        size, count = write_state_counted(self.path, config, chunks, engine.name, snapshot_id)
        if count is None:
            self.journal.unlink(missing_ok=True)
            self.snapshot_id = None
            self._config_json = config_json
            return f"{size} bytes, connections not saved (engine {engine.name} cannot dump them)"
        # A journal of the previous snapshot is now void: replace it by an empty one of this one
        # (a crash between the two renames leaves a journal naming the old snapshot: ignored).
        _atomic_write(self.journal, journal_header(snapshot_id))
        self.snapshot_id = snapshot_id
        self.snapshot_bytes = size
        self.journal_bytes = 0
        self._config_json = config_json
        return f"snapshot {size} bytes, {count} connections"

    def _append(self, segment: bytes) -> None:
        fd = os.open(self.journal, os.O_WRONLY | os.O_APPEND)
        try:
            view = memoryview(segment)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        self.journal_bytes += len(segment)


def save_state(director: Director, path: Path) -> str:
    """One full snapshot of `director` to `path` (no journal); returns a summary for the log."""
    engine = director.engine
    chunks = engine.dump_connections_chunks(int(time.monotonic() * 1000))
    size, count = write_state_counted(path, director.snapshot_config(), chunks, engine.name)
    journal_path(path).unlink(missing_ok=True)
    conns = f"not saved (engine {engine.name} cannot dump them)" if count is None else f"{count} connections"
    return f"{size} bytes, {conns}"


# ---------------------------------------------------------------------------- restoring


def restore_state(director: Director, path: Path) -> dict[str, Any]:
    """Re-apply a snapshot and its journal: configuration, then connections. Returns what happened."""
    header, blob = read_state(path)
    now = time.time()
    age_s = max(0.0, now - float(header["saved_at"]))
    segments = _journal_segments(header, journal_path(path))
    config = header
    for seg in segments:
        if seg.config is not None:
            config = {**header, **seg.config}
    try:
        applied = director.restore_config(config, f"restore from {path}")
    except EngineError as exc:  # all or nothing: nothing was applied
        detail = str(exc).replace(f"restore from {path}: ", "")
        raise DamagedState(path, f"its configuration cannot be applied: {detail}") from exc
    result: dict[str, Any] = {"age_s": round(age_s, 3), "commands": applied}
    if segments:
        result["journal_segments"] = len(segments)
    if header.get("connections") is None:
        log.info("restore from %s: the snapshot holds no connection table (saved by engine %s)",
                 path, header.get("engine"))
        return result
    try:
        outcome = _restore_connections(director, header, blob, age_s, segments, now)
    except (EngineError, ImportError) as exc:  # ImportError: records, but no compiled core to read them
        log.warning("restore from %s: %s connections not restored: %s", path, header["connections"], exc)
        return result
    result["connections"] = outcome
    log.info("restore from %s (saved %.1f s ago, %d journal segments): connections %s", path, age_s, len(segments),
             ", ".join(f"{k} {v}" for k, v in sorted(outcome.items())) or "none")
    return result


def _journal_segments(header: dict[str, Any], path: Path) -> list[Segment]:
    """The segments that apply to the snapshot `header` describes ([] when there is no such journal)."""
    if not path.exists() or not isinstance(header.get("snapshot"), str):
        return []
    try:
        journal = read_journal(path)
    except (OSError, ValueError) as exc:
        log.warning("restore: journal %s ignored: %s", path, exc)
        return []
    if journal.snapshot != header["snapshot"]:
        log.info("restore: journal %s belongs to another snapshot (%s, not %s): ignored", path,
                 journal.snapshot, header["snapshot"])
        return []
    if journal.problem:
        log.warning("restore: journal %s: %s; the changes before it are applied", path, journal.problem)
    return journal.segments


def _restore_connections(director: Director, header: dict[str, Any], blob: bytes, age_s: float,
                         segments: list[Segment], now: float) -> dict[str, int]:
    size = conn_record_size()
    if header.get("conn_record_size") != size:
        raise EngineError("EINVAL", f"records of {header.get('conn_record_size')} bytes, this lbd's are {size}")
    complete = len(blob) // size
    if len(blob) % size or complete != header.get("connections"):
        # lbd (or the disk) stopped while writing: every complete record is still good
        log.warning("restore: snapshot cut short: %d complete records of %s (%d bytes left over); keeping them",
                    complete, header.get("connections"), len(blob) % size)
        blob = blob[:complete * size]
    aged, expired = merge_records(blob, int(age_s * 1000),
                                  [(s.records, int(max(0.0, now - s.saved_at) * 1000)) for s in segments])
    aged, clamped = clamp_expiry(aged, expiry_limits_ms(director))
    outcome = director.engine.restore_connections_raw(aged, int(time.monotonic() * 1000))
    if expired:
        outcome["expired"] = expired
    if clamped:
        outcome["clamped"] = clamped
        log.warning("restore: %d connection records had more time left than any timeout allows; "
                    "clamped to the timeouts", clamped)
    return outcome


def expiry_limits_ms(director: Director) -> tuple[int, int]:
    """(connections, persistence templates): the most time an entry can have left. A connection's
    timeout is one of its protocol state's; tcp/tcpfin/udp are the configurable ones and the fixed
    per-state timeouts of the core (2 min at most) are shorter than their defaults; a template
    lives as long as its service's persistence timeout."""
    t = director.timeouts
    conn_s = max(t.tcp, t.tcpfin, t.udp)
    persist_s = max((s.spec.persistent or 0 for s in director.state.services.values()), default=0)
    return conn_s * 1000, max(persist_s, conn_s) * 1000


def clamp_expiry(blob: bytes, limits_ms: tuple[int, int]) -> tuple[bytes, int]:
    """Records with expires_in_ms cut to `limits_ms` (connections, templates); returns (records,
    how many were cut)."""
    from lb import consts as C
    from lb._ffi import ffi

    size = conn_record_size()
    n = len(blob) // size
    if n == 0:
        return blob, 0
    buf = bytearray(blob)
    arr = ffi.from_buffer("struct lb_conn_info[]", buf)
    clamped = 0
    for i in range(n):
        limit = limits_ms[1] if arr[i].flags & C.LB_CONN_F_TEMPLATE else limits_ms[0]
        if arr[i].expires_in_ms > limit:
            arr[i].expires_in_ms = limit
            clamped += 1
    return (bytes(buf), clamped) if clamped else (blob, 0)
