"""Incremental state saves (issue 15 item 3): a snapshot, then a journal of what changed.

lb/statefile.py StateSaver: the first save writes the whole table, later ones append only the slots
that changed (lb_conn_dump_changes), a journal that outgrows the snapshot is compacted into a new
snapshot, and restoring applies snapshot + journal so that the table comes back as it was at the
last save, whatever happened in between (new, changed, gone entries, reused slots).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from scapy.all import IP, TCP, raw

from lb import statefile
from lb.director import Director
from lb.engine import Verdict

pytest.importorskip("lb._fastpath", reason="the journal's records are the compiled core's dump")

from test_daemon_restart import DR, VIP, c_engine, configured, now_ms, syn_ack  # noqa: E402


def conns(d: Director) -> list[tuple[Any, ...]]:
    """The table without expiry times (those move with the clock)."""
    return sorted((c.proto, c.caddr, c.cport, c.daddr, c.state) for c in d.engine.connections(now_ms()))


def records_in(path: Path) -> list[int]:
    return [len(s.records) // statefile.conn_record_size() for s in statefile.read_journal(path).segments]


def test_first_save_is_a_snapshot_then_only_changes_are_appended(tmp_path: Path) -> None:
    d = configured()
    t = now_ms()
    for sport in range(1000, 1050):
        syn_ack(d, "10.9.0.1", sport, t)
    path = tmp_path / "lbd-q0.state"
    saver = statefile.StateSaver(d, path)
    assert saver.save().startswith("snapshot ")
    assert statefile.read_state(path)[0]["connections"] == 51  # 50 flows + 1 persistence template
    assert records_in(statefile.journal_path(path)) == []
    assert saver.save() == "unchanged"  # nothing moved: nothing written
    syn_ack(d, "10.9.0.2", 2000, t + 2)  # one new flow (and its template)
    d.engine.process(raw(IP(src="10.9.0.1", dst=VIP) / TCP(sport=1000, dport=80, flags="R")), t + 3)  # one closed
    summary = saver.save()
    assert summary.startswith("journal +") and summary.endswith(", 3 changed slots"), summary
    assert records_in(statefile.journal_path(path)) == [3]


def test_restore_applies_snapshot_and_journal(tmp_path: Path) -> None:
    old = configured()
    t = now_ms()
    for sport in range(1000, 1020):
        syn_ack(old, "10.9.0.1", sport, t)
    path = tmp_path / "lbd-q0.state"
    saver = statefile.StateSaver(old, path)
    saver.save()
    # Changes of every kind: new entries, a state change, an entry gone (its slot reused later).
    for sport in range(3000, 3005):
        syn_ack(old, "10.9.0.3", sport, t + 5)
    old.engine.process(raw(IP(src="10.9.0.1", dst=VIP) / TCP(sport=1003, dport=80, flags="FA")), t + 6)
    old.engine.expire(t + 10_000_000)  # everything dies ...
    for sport in range(4000, 4003):  # ... and new entries take the freed slots
        syn_ack(old, "10.9.0.4", sport, t + 10_000_001)
    saver.save()
    old.handle("add_service", {"proto": "tcp", "addr": VIP, "port": 8080, "sched": "wlc"})  # config change
    syn_ack(old, "10.9.0.5", 5000, t + 10_000_002)
    saver.save()
    assert len(records_in(statefile.journal_path(path))) == 2
    new = Director(c_engine(), rules=None, resolver=None)
    result = statefile.restore_state(new, path)
    # The old engine's clock ran 10,000 s ahead of the saver's: its newest entries had more time
    # left than any timeout allows, and a restore clamps that (issue 16 item 2).
    assert result["journal_segments"] == 2 and result["connections"]["restored"] == 6
    assert [s.spec.key.port for s in new.engine.services()] == [s.spec.key.port for s in old.engine.services()]
    # Times do not matter here: compare what lives in both (the old engine's clock jumped ahead).
    expected = sorted((c.proto, c.caddr, c.cport, c.daddr, c.state) for c in old.engine.connections(t + 10_000_003))
    assert conns(new) == expected


def test_journal_outgrowing_the_snapshot_is_compacted(tmp_path: Path) -> None:
    d = configured()
    path = tmp_path / "lbd-q0.state"
    saver = statefile.StateSaver(d, path, min_compact_bytes=0)
    t = now_ms()
    syn_ack(d, "10.9.0.1", 1000, t)
    first = saver.save()
    assert first.startswith("snapshot ")
    snapshot_id = statefile.read_state(path)[0]["snapshot"]
    for sport in range(1001, 1200):  # far more changes than the snapshot holds
        syn_ack(d, "10.9.0.1", sport, t)
    assert saver.save().startswith("snapshot ")
    header = statefile.read_state(path)[0]
    assert header["snapshot"] != snapshot_id and header["connections"] == 201
    assert statefile.read_journal(statefile.journal_path(path)).snapshot == header["snapshot"]


def test_a_journal_cut_short_keeps_its_complete_records(tmp_path: Path) -> None:
    old = configured()
    t = now_ms()
    path = tmp_path / "lbd-q0.state"
    saver = statefile.StateSaver(old, path)
    saver.save()
    for sport in range(1000, 1010):
        syn_ack(old, "10.9.0.1", sport, t)
    saver.save()  # 11 records: 10 flows + their template
    journal = statefile.journal_path(path)
    data = journal.read_bytes()
    journal.write_bytes(data[:len(data) - statefile.conn_record_size() // 2])  # the last record torn
    new = Director(c_engine(), rules=None, resolver=None)
    assert statefile.restore_state(new, path)["connections"] == {"restored": 10}


def test_a_journal_of_another_snapshot_is_ignored(tmp_path: Path) -> None:
    old = configured()
    path = tmp_path / "lbd-q0.state"
    saver = statefile.StateSaver(old, path)
    saver.save()
    syn_ack(old, "10.9.0.1", 1000, now_ms())
    saver.save()
    header, blob = statefile.read_state(path)
    statefile.write_state(path, {k: v for k, v in header.items() if k not in ("snapshot",)}, blob, "c", "another")
    new = Director(c_engine(), rules=None, resolver=None)
    result = statefile.restore_state(new, path)
    assert "journal_segments" not in result and "connections" in result
    assert new.engine.conn_count() == 0  # the journal held the only flow


def test_change_marks_follow_expiry_coarsely() -> None:
    """A packet that only pushes an entry's expiry later marks it only when the expiry crosses a
    multiple of 2^13 ms: active flows are not rewritten every save."""
    d = Director(c_engine(), rules=None, resolver=None)
    d.handle("add_service", {**DR, "sched": "rr"})
    d.handle("add_dest", {"service": DR, "dest": {"addr": "10.0.0.11", "port": 80, "fwd": "route", "weight": 1,
                                                  "u_threshold": 0, "l_threshold": 0}})
    t = 300 * 8192 - 900_000 - 1  # the ACK at t + 1 sets the expiry (ESTABLISHED, 900 s) to 300 * 8192 ms
    syn_ack(d, "10.9.0.1", 1000, t)
    size = statefile.conn_record_size()
    assert len(d.engine.dump_changes_raw(t + 1) or b"") == size
    ack = raw(IP(src="10.9.0.1", dst=VIP) / TCP(sport=1000, dport=80, flags="A"))
    for dt in range(2, 8000, 500):
        assert d.engine.process(ack, t + dt).verdict == Verdict.DROP  # (no forwarding state: dropped, NO_L2)
    assert d.engine.dump_changes_raw(t + 8000) == b""
    d.engine.process(ack, t + 8193)
    assert len(d.engine.dump_changes_raw(t + 8194) or b"") == size


def test_saving_a_large_table_incrementally_is_cheap(tmp_path: Path) -> None:
    """The point of it all, counted in records written (no clock): after the first snapshot of 20,000
    entries, a save after 10 changes writes 10 records, not 20,000."""
    from lb.fastpath import CEngine

    d = Director(CEngine(conn_max=30_000), rules=None, resolver=None)
    d.handle("add_service", {**DR, "sched": "rr"})
    d.handle("add_dest", {"service": DR, "dest": {"addr": "10.0.0.11", "port": 80, "fwd": "route", "weight": 1,
                                                  "u_threshold": 0, "l_threshold": 0}})
    t = now_ms()
    for i in range(20_000):
        d.engine.process(raw(IP(src=f"10.{8 + i // 60000}.{i // 250 % 240}.{i % 250 + 1}", dst=VIP) /
                             TCP(sport=1000 + i % 7, dport=80, flags="S")), t)
    path = tmp_path / "lbd-q0.state"
    saver = statefile.StateSaver(d, path)
    saver.save()
    assert statefile.read_state(path)[0]["connections"] == 20_000
    for sport in range(10):
        d.engine.process(raw(IP(src="10.99.0.1", dst=VIP) / TCP(sport=sport + 1, dport=80, flags="S")), t + 1)
    assert saver.save().endswith(", 10 changed slots")
    for i in range(6000):  # more changes than one dump chunk (4096 records): the cursor goes on
        d.engine.process(raw(IP(src=f"10.98.{i // 250}.{i % 250 + 1}", dst=VIP) / TCP(sport=7, dport=80, flags="S")),
                         t + 2)
    assert saver.save().endswith(", 6000 changed slots")
    slots = [r.slot for r in _records(statefile.read_journal(statefile.journal_path(path)).segments[-1].records)]
    assert len(set(slots)) == 6000 and slots == sorted(slots)


def _records(blob: bytes) -> list[Any]:
    from lb._ffi import ffi

    n = len(blob) // statefile.conn_record_size()
    arr = ffi.from_buffer("struct lb_conn_info[]", bytearray(blob))
    return [arr[i] for i in range(n)]


def test_a_snapshot_is_written_as_it_is_dumped(tmp_path: Path) -> None:
    """The snapshot's records go to the file chunk by chunk (never the whole table in memory); the
    header, written before the count is known, is rewritten in place with it and reads as before."""
    from lb.fastpath import CEngine

    d = Director(CEngine(conn_max=20_000), rules=None, resolver=None)
    d.handle("add_service", {**DR, "sched": "rr"})
    d.handle("add_dest", {"service": DR, "dest": {"addr": "10.0.0.11", "port": 80, "fwd": "route", "weight": 1,
                                                  "u_threshold": 0, "l_threshold": 0}})
    t = now_ms()
    for i in range(9000):  # three dump chunks (4096 records each)
        d.engine.process(raw(IP(src=f"10.8.{i // 250}.{i % 250 + 1}", dst=VIP) / TCP(sport=1000, dport=80, flags="S")),
                         t)
    pieces = d.engine.dump_connections_chunks(t)
    assert pieces is not None
    chunks = list(pieces)
    assert [len(c) // statefile.conn_record_size() for c in chunks] == [4096, 4096, 808]
    assert b"".join(chunks) == d.engine.dump_connections_raw(t)
    path = tmp_path / "lbd-q0.state"
    size, count = statefile.write_state_counted(path, d.snapshot_config(), iter(chunks), "c")
    assert (size, count) == (path.stat().st_size, 9000)
    header, blob = statefile.read_state(path)
    assert header["connections"] == 9000 and header["conn_record_size"] == statefile.conn_record_size()
    assert blob == b"".join(chunks)
    new = Director(CEngine(conn_max=20_000), rules=None, resolver=None)
    assert statefile.restore_state(new, path)["connections"] == {"restored": 9000}
    assert conns(new) == conns(d)
