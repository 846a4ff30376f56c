"""A damaged state file never stops lbd (issue 16 item 2): each kind of corruption is set aside,
named in one log line with the reason, and the director starts empty (from its configuration);
a snapshot cut short keeps its complete records; restored expiry times are clamped to the
timeouts; a failed save leaves no temporary file."""

from __future__ import annotations

import errno
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from lb import statefile
from lb.director import Director
from lb.staterecover import restore_or_set_aside

pytest.importorskip("lb._fastpath", reason="connection records are the compiled core's dump")

from test_daemon_restart import c_engine, configured, now_ms, syn_ack  # noqa: E402

MAGIC = statefile.STATE_MAGIC


def _split(data: bytes) -> tuple[bytes, bytes]:
    end = data.index(b"\n", len(MAGIC))
    return data[len(MAGIC):end], data[end + 1:]


def _header_edit(edit: Callable[[dict], None]) -> Callable[[bytes], bytes]:
    def corrupt(data: bytes) -> bytes:
        head, body = _split(data)
        header = json.loads(head)
        edit(header)
        return MAGIC + json.dumps(header).encode() + b"\n" + body
    return corrupt


def _flip(offset_from_magic: int) -> Callable[[bytes], bytes]:
    def corrupt(data: bytes) -> bytes:
        i = len(MAGIC) + offset_from_magic
        return data[:i] + bytes([data[i] ^ 0x80]) + data[i + 1:]
    return corrupt


def _set(key: str, value: object) -> Callable[[dict], None]:
    return lambda h: h.__setitem__(key, value)


def _first_dest_null(h: dict) -> None:
    h["services"][0]["dests"][0] = None


def _sched_flip(h: dict) -> None:
    h["services"][0]["sched"] = "rq"


CORRUPTIONS: dict[str, tuple[Callable[[bytes], bytes], str]] = {
    # kind: (corruption, words the log line's reason must hold)
    "empty file": (lambda d: b"", "empty file"),
    "garbage": (lambda d: b"\x8f\x00garbage" * 50, "not an lbd state file"),
    "magic only": (lambda d: MAGIC, "truncated header"),
    "header cut short": (lambda d: d[:len(MAGIC) + 40], "truncated header"),
    "bit flip in the magic": (lambda d: bytes([d[0] ^ 0x01]) + d[1:], "not an lbd state file"),
    "bit flip in the header's first byte": (_flip(0), "header is not JSON"),
    "header not an object": (lambda d: MAGIC + b"[1, 2]\n" + _split(d)[1], "not an object"),
    "header not UTF-8": (lambda d: MAGIC + b'{"a": "\xff\xfe"}\n', "header is not JSON"),
    "header nested too deeply": (lambda d: MAGIC + b"[" * 100_000 + b"\n", "header is not JSON"),
    "services null": (_header_edit(_set("services", None)), "services is None"),
    "a service null": (_header_edit(_set("services", [None])), "configuration cannot be applied"),
    "a destination null": (_header_edit(_first_dest_null), "configuration cannot be applied"),
    "saved_at not a number": (_header_edit(_set("saved_at", "yesterday")), "saved_at is 'yesterday'"),
    "saved_at null": (_header_edit(_set("saved_at", None)), "saved_at is None"),
    "connections not a count": (_header_edit(_set("connections", "many")), "connections is 'many'"),
    "format null": (_header_edit(_set("format", None)), "configuration cannot be applied"),
    "scheduler name flipped": (_header_edit(_sched_flip), "configuration cannot be applied"),
}


def _good_snapshot(tmp_path: Path) -> tuple[Path, Director]:
    d = configured()
    t = now_ms()
    for sport in range(1000, 1010):
        syn_ack(d, f"10.9.0.{sport % 5}", sport, t)
    path = tmp_path / "lbd-q0.state"
    statefile.save_state(d, path)
    statefile.journal_path(path).write_bytes(statefile.journal_header("feedfeedfeedfeed"))
    return path, d


@pytest.mark.parametrize("kind", list(CORRUPTIONS))
def test_a_damaged_state_file_is_set_aside_and_lbd_starts_empty(tmp_path: Path, kind: str,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    corrupt, reason = CORRUPTIONS[kind]
    path, _ = _good_snapshot(tmp_path)
    damaged = corrupt(path.read_bytes())
    path.write_bytes(damaged)
    fresh = Director(c_engine(), rules=None, resolver=None)
    caplog.set_level(logging.INFO, logger="lbd")
    assert restore_or_set_aside(fresh, path) is None
    assert fresh.engine.services() == [] and fresh.engine.conn_count() == 0  # nothing half-applied
    assert not path.exists()
    (aside,) = [p for p in tmp_path.iterdir() if p.name.startswith("lbd-q0.state.damaged-")]
    assert aside.read_bytes() == damaged  # kept as it was, for inspection
    assert [p.name.split(".damaged-")[0] for p in tmp_path.iterdir() if ".journal" in p.name] == ["lbd-q0.journal"]
    lines = [r.getMessage() for r in caplog.records if "is damaged" in r.getMessage()]
    assert len(lines) == 1, lines
    assert str(path) in lines[0] and reason in lines[0] and aside.name in lines[0], lines[0]
    assert "Traceback" not in caplog.text


def test_after_setting_aside_the_next_save_starts_afresh(tmp_path: Path) -> None:
    path, d = _good_snapshot(tmp_path)
    path.write_bytes(b"")
    fresh = Director(c_engine(), rules=None, resolver=None)
    restore_or_set_aside(fresh, path)
    statefile.StateSaver(d, path).save()
    again = Director(c_engine(), rules=None, resolver=None)
    assert restore_or_set_aside(again, path) is not None and again.engine.conn_count() == 15


@pytest.mark.parametrize("cut", [1, statefile.conn_record_size() - 1, statefile.conn_record_size() + 3])
def test_a_snapshot_cut_short_keeps_every_complete_record(tmp_path: Path, cut: int,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    path, _ = _good_snapshot(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[:-cut])
    fresh = Director(c_engine(), rules=None, resolver=None)
    complete = (len(_split(data)[1]) - cut) // statefile.conn_record_size()
    result = restore_or_set_aside(fresh, path)
    assert result is not None and result["connections"] == {"restored": complete}
    assert fresh.engine.conn_count() == complete == 15 - (cut + statefile.conn_record_size() - 1) // statefile.conn_record_size()
    assert "cut short" in caplog.text and f"{complete} complete records of 15" in caplog.text


def test_restored_expiry_is_clamped_to_the_timeouts(tmp_path: Path) -> None:
    from lb._ffi import ffi

    path, old = _good_snapshot(tmp_path)
    head, body = _split(path.read_bytes())
    records = bytearray(body)
    arr = ffi.from_buffer("struct lb_conn_info[]", records)
    for i in range(len(records) // statefile.conn_record_size()):
        arr[i].expires_in_ms = 1 << 62  # what a bit flip (or a bug) may leave: never expires
    path.write_bytes(MAGIC + head + b"\n" + bytes(records))
    fresh = Director(c_engine(), rules=None, resolver=None)
    result = restore_or_set_aside(fresh, path)
    assert result is not None and result["connections"]["clamped"] == 15
    conn_ms, template_ms = statefile.expiry_limits_ms(fresh)
    assert conn_ms == 600_000 and template_ms == 600_000  # tcp 600 s (configured()), persistence 60 s
    left = [c.expires_ms for c in fresh.engine.connections(now_ms())]
    assert len(left) == 15 and max(left) <= conn_ms


@pytest.mark.parametrize("fail", ["write", "fsync", "replace"])
def test_a_failed_save_leaves_no_temporary_file(tmp_path: Path, fail: str, monkeypatch: pytest.MonkeyPatch) -> None:
    d = configured()
    path = tmp_path / "lbd-q0.state"

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(statefile.os, fail, refuse)
    with pytest.raises(OSError):
        statefile.StateSaver(d, path).save()
    monkeypatch.undo()
    assert os.listdir(tmp_path) == []


def test_temporaries_of_a_killed_lbd_are_removed(tmp_path: Path) -> None:
    d = configured()
    path = tmp_path / "lbd-q0.state"
    (tmp_path / ".lbd-q0.state.4242.tmp").write_bytes(b"half")
    (tmp_path / ".lbd-q0.journal.4242.tmp").write_bytes(b"half")
    (tmp_path / ".other.4242.tmp").write_bytes(b"not ours")
    statefile.StateSaver(d, path).save()
    assert sorted(os.listdir(tmp_path)) == [".other.4242.tmp", "lbd-q0.journal", "lbd-q0.state"]
