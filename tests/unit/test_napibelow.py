"""lb.napibelow (lbd --overload-napi): threading an interface's receive work below lbd, and putting it back.

sysfs is a temporary directory; thread discovery and niceness are faked, so these run unprivileged.
The real thing (a veth's NAPI thread, lowered, gone after lbd) is tests/netns/test_overload_napi.py.
"""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path
from typing import Any

import pytest

from lb import napibelow
from lb.daemon_options import parse_args
from lb.napibelow import NapiBelow, NapiBelowError, name_matches


def _iface(root: Path, name: str, threaded: str | None = "0", drops: tuple[int, int, int] = (0, 0, 0)) -> None:
    d = root / name / "statistics"
    d.mkdir(parents=True)
    if threaded is not None:
        (root / name / "threaded").write_text(threaded + "\n")
    for fname, v in zip(("rx_dropped", "rx_missed_errors", "rx_fifo_errors"), drops, strict=True):
        (d / fname).write_text(f"{v}\n")


class Niceness:
    """os.getpriority/os.setpriority over a dict of pid -> nice."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, nice: dict[int, int]) -> None:
        self.nice = nice
        monkeypatch.setattr(napibelow.os, "getpriority", self.get)
        monkeypatch.setattr(napibelow.os, "setpriority", self.set)

    def get(self, which: int, pid: int) -> int:
        if pid == 0 and 0 not in self.nice:
            return 0  # lbd itself, at the default
        if pid not in self.nice:
            raise ProcessLookupError(errno.ESRCH, "No such process")
        return self.nice[pid]

    def set(self, which: int, pid: int, value: int) -> None:
        if pid not in self.nice:
            raise ProcessLookupError(errno.ESRCH, "No such process")
        self.nice[pid] = value


def test_a_raised_priority_is_warned_about(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           caplog: pytest.LogCaptureFixture) -> None:
    _iface(tmp_path, "eth0", "0")
    Niceness(monkeypatch, {0: -10, 101: 0})  # pid 0: lbd itself
    _below(tmp_path, ["eth0"], {"eth0": [101]}).start()
    assert "lbd runs at nice -10" in caplog.text and "run lbd at nice 0" in caplog.text
    caplog.clear()
    Niceness(monkeypatch, {0: 0, 101: 0})
    _below(tmp_path, ["eth0"], {"eth0": [101]}).start()
    assert "lbd runs at nice" not in caplog.text


def _below(root: Path, names: list[str], threads: dict[str, list[int]], **kw: Any) -> NapiBelow:
    return NapiBelow(names, sys_net=root, find=lambda name, index: list(threads.get(name, [])),
                     ifindex=lambda name: 7, **kw)


def test_start_threads_and_lowers_then_stop_unthreads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _iface(tmp_path, "eth0", "0")
    nice = Niceness(monkeypatch, {101: 0, 102: -5})
    below = _below(tmp_path, ["eth0"], {"eth0": [101, 102]})
    below.start()
    assert (tmp_path / "eth0" / "threaded").read_text() == "1"
    assert nice.nice == {101: 19, 102: 19}
    assert below.counters() == [{"interface": "eth0", "threads": 2, "rx_dropped": 0, "rx_missed": 0, "rx_fifo": 0}]
    below.stop()
    assert (tmp_path / "eth0" / "threaded").read_text() == "0"  # lbd turned it on: off again
    assert nice.nice == {101: 0, 102: -5}  # and the threads as found (an older kernel keeps them)
    assert below.counters() == []


def test_already_threaded_keeps_threading_and_restores_niceness(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    _iface(tmp_path, "eth0", "1")
    nice = Niceness(monkeypatch, {101: -2})
    below = _below(tmp_path, ["eth0"], {"eth0": [101]})
    below.start()
    assert nice.nice == {101: 19}
    below.stop()
    assert (tmp_path / "eth0" / "threaded").read_text().strip() == "1"
    assert nice.nice == {101: -2}


def test_drops_counted_since_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _iface(tmp_path, "eth0", "0", drops=(5, 10, 1))
    Niceness(monkeypatch, {101: 0})
    below = _below(tmp_path, ["eth0"], {"eth0": [101]})
    below.start()
    (tmp_path / "eth0" / "statistics" / "rx_missed_errors").write_text("1010\n")
    (tmp_path / "eth0" / "statistics" / "rx_dropped").write_text("7\n")
    assert below.counters()[0] == {"interface": "eth0", "threads": 1, "rx_dropped": 2, "rx_missed": 1000,
                                   "rx_fifo": 0}


def test_refresh_lowers_new_threads_and_rethreads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="lbd.napibelow")
    _iface(tmp_path, "eth0", "0")
    nice = Niceness(monkeypatch, {101: 0, 103: 0})
    threads = {"eth0": [101]}
    below = _below(tmp_path, ["eth0"], threads)
    below.start()
    threads["eth0"] = [103]  # a driver reset: the old instance gone, a new one at the default priority
    (tmp_path / "eth0" / "threaded").write_text("0")  # and someone turned threading off
    below.refresh()
    assert nice.nice[103] == 19
    assert (tmp_path / "eth0" / "threaded").read_text() == "1"
    assert below.counters()[0]["threads"] == 1
    assert "turned off while lbd runs" in caplog.text and "1 new NAPI thread(s) lowered" in caplog.text


def test_no_napi_refused_with_reason_and_nothing_left(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _iface(tmp_path, "eth0", "0")
    _iface(tmp_path, "veth1", "0")
    nice = Niceness(monkeypatch, {101: 0})
    below = _below(tmp_path, ["eth0", "veth1"], {"eth0": [101]})
    real_write = Path.write_text

    def write_text(self: Path, data: str, *a: Any, **kw: Any) -> int:
        if self.parent.name == "veth1" and data == "1":
            raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))
        return real_write(self, data, *a, **kw)

    monkeypatch.setattr(Path, "write_text", write_text)
    with pytest.raises(NapiBelowError, match=r"--overload-napi veth1: cannot thread its receive work: .*veth has "
                                             r"one only with GRO on"):
        below.start()
    # all or nothing: eth0, threaded a moment before, is put back
    assert (tmp_path / "eth0" / "threaded").read_text() == "0"
    assert nice.nice == {101: 0}  # put back too (older kernels keep the threads after threading goes off)


def test_missing_interface_and_old_kernel(tmp_path: Path) -> None:
    with pytest.raises(NapiBelowError, match="--overload-napi eth9: no such interface"):
        _below(tmp_path, ["eth9"], {}).start()
    _iface(tmp_path, "eth0", None)
    with pytest.raises(NapiBelowError, match="no threaded NAPI .*Linux 5.12"):
        _below(tmp_path, ["eth0"], {}).start()


def test_no_thread_appears(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _iface(tmp_path, "eth0", "0")
    monkeypatch.setattr(napibelow, "FIND_TIMEOUT_S", 0.1)
    with pytest.raises(NapiBelowError, match=r"no napi/eth0-\* thread appeared"):
        _below(tmp_path, ["eth0"], {}).start()
    assert (tmp_path / "eth0" / "threaded").read_text() == "0"


def test_thread_that_ends_meanwhile_is_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _iface(tmp_path, "eth0", "0")
    nice = Niceness(monkeypatch, {102: 0})  # 101 listed, then gone
    below = _below(tmp_path, ["eth0"], {"eth0": [101, 102]})
    below.start()
    assert nice.nice == {102: 19} and below.counters()[0]["threads"] == 1


def test_name_matches_cut_names_and_other_interfaces() -> None:
    tasks = [(1, "napi/eth0-8193"), (2, "napi/eth0-8194"), (3, "napi/eth01-8195"), (4, "napi/eth0-x"),
             (5, "napi/lbB0-d-lan"), (6, "ksoftirqd/0")]
    assert name_matches("eth0", tasks) == [1, 2]
    assert name_matches("lbB0-d-lan", tasks) == [5]  # napi/lbB0-d-lan-<id> cut at 15 characters


def test_option_parses_repeated() -> None:
    args = parse_args(["--overload-napi", "eth0", "--overload-napi", "eth1"])
    assert args.overload_napi == ["eth0", "eth1"]
    assert parse_args([]).overload_napi == []
    with pytest.raises(ValueError, match="at least one interface"):
        NapiBelow([]).start()


def test_a_killed_lbds_record_puts_the_interface_back_as_first_found(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    sys_net, run = tmp_path / "net", tmp_path / "run"
    run.mkdir()
    _iface(sys_net, "eth0", "0")
    nice = Niceness(monkeypatch, {101: 0})
    first = _below(sys_net, ["eth0"], {"eth0": [101]}, record_dir=run)
    first.start()
    assert (run / "napi-eth0.json").exists()
    # killed: no stop(); the next lbd finds the interface threaded and its thread at 19
    second = _below(sys_net, ["eth0"], {"eth0": [101]}, record_dir=run)
    second.start()
    assert nice.nice == {101: 19}
    second.stop()
    assert (sys_net / "eth0" / "threaded").read_text() == "0"  # as the first lbd found it
    assert not (run / "napi-eth0.json").exists()


def test_cleanup_puts_back_what_a_killed_lbd_left(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sys_net, run = tmp_path / "net", tmp_path / "run"
    run.mkdir()
    _iface(sys_net, "eth0", "1")
    _iface(sys_net, "eth1", "0")
    nice = Niceness(monkeypatch, {101: -3, 201: 0})
    _below(sys_net, ["eth0", "eth1"], {"eth0": [101], "eth1": [201]}, record_dir=run).start()  # then killed
    assert nice.nice == {101: 19, 201: 19}
    (run / "napi-broken.json").write_text("{not json")
    cleaner = _below(sys_net, [], {}, record_dir=run)
    assert cleaner.put_back_leftovers() == ["eth0", "eth1"]
    assert nice.nice[101] == -3 and (sys_net / "eth0" / "threaded").read_text().strip() == "1"
    assert (sys_net / "eth1" / "threaded").read_text() == "0"
    assert sorted(p.name for p in run.iterdir()) == ["napi-broken.json"]  # unreadable: left, and logged
    assert _below(sys_net, [], {}, record_dir=tmp_path / "none").put_back_leftovers() == []


def test_interface_drops_are_a_labelled_counter_only_under_overload_napi() -> None:
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from lb.metrics import DirectorCollector, Snapshot
    from lb.model import Stats

    def families(counters: dict[str, Any]) -> dict[str, Any]:
        snap = Snapshot(info={"engine": "c", "queue_num": 0}, listing={"services": []}, counters=counters,
                        totals=Stats(), queues=(0,), conn_entries=0, conn_limit=1, hash_buckets=1, read_seconds=0.0)
        registry = CollectorRegistry()
        registry.register(DirectorCollector(lambda: snap))
        return {f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())}

    napi = [{"interface": "eth0", "threads": 4, "rx_dropped": 3, "rx_missed": 1200, "rx_fifo": 0}]
    got = {tuple(sorted(s.labels.items())): s.value
           for s in families({"reasons": {}, "napi": napi})["lbd_interface_rx_dropped"].samples
           if s.name.endswith("_total")}
    assert got == {(("counter", "rx_dropped"), ("interface", "eth0")): 3,
                   (("counter", "rx_missed"), ("interface", "eth0")): 1200,
                   (("counter", "rx_fifo"), ("interface", "eth0")): 0}
    assert "lbd_interface_rx_dropped" not in families({"reasons": {}})
