"""PyEngine offers CEngine's public API method for method (lbd --engine python drives every mode).

Only the restart snapshot (dump_connections_raw / restore_connections_raw, a packed C
struct) is C-only. The Python engine's extra timer_due() lets its adapter sleep until
the next SYN-proxy timer.
"""

from __future__ import annotations

import inspect

import pytest

import packet_table as table
from lb.engine import EngineError
from lb.model import DestSpec, ServiceKey, ServiceSpec, SynproxyConf
from lb.pyengine import PyEngine

C_ONLY = {"dump_connections_raw", "dump_connections_chunks", "dump_changes_raw", "restore_connections_raw",
          # the sync extension's C records (lb/sync/ext_daemon.py checks for them: SeqEngine)
          "conn_seq", "restore_connection_seq"}


def public(cls: type) -> dict[str, inspect.Signature]:
    """The public methods of `cls`, inherited ones included (PyEngine is assembled from mixins)."""
    return {name: inspect.signature(member) for name, member in inspect.getmembers(cls)
            if callable(member) and not name.startswith("_")}


def test_same_methods_and_parameters() -> None:
    fastpath = pytest.importorskip("lb.fastpath")
    c_api, py_api = public(fastpath.CEngine), public(PyEngine)
    missing = set(c_api) - set(py_api) - C_ONLY
    assert not missing, f"PyEngine lacks {sorted(missing)}"
    for name in set(c_api) - C_ONLY:
        c_params = [(p.name, p.kind, p.default) for p in c_api[name].parameters.values()]
        py_params = [(p.name, p.kind, p.default) for p in py_api[name].parameters.values()]
        assert py_params == c_params, name
    c_init = [(p.name, p.default) for p in inspect.signature(fastpath.CEngine.__init__).parameters.values()]
    py_init = [(p.name, p.default) for p in inspect.signature(PyEngine.__init__).parameters.values()]
    assert py_init == c_init


def test_observations_have_the_same_shape() -> None:
    """services() (with local addresses), dest_flags(), synproxy_stats(), counters(), table_size()."""
    fastpath = pytest.importorskip("lb.fastpath")
    key = ServiceKey(6, table.VIP, 80)
    results = []
    for engine in (PyEngine(conn_max=16, hash_seed=3), fastpath.CEngine(conn_max=16, hash_seed=3)):
        engine.add_service(ServiceSpec(key, "rr", synproxy=True, toa=True))
        engine.add_laddr(key, table.LIP1)
        engine.add_dest(key, DestSpec(table.RS1, 80, "fullnat"))
        engine.set_synproxy(key, SynproxyConf(defer=True))
        engine.set_synproxy(None, SynproxyConf(init_rto_ms=100, max_rto_ms=100))
        results.append((engine.services(), engine.dest_flags(key), engine.synproxy_stats(), engine.counters(),
                        engine.table_size(), engine.get_timeouts(), engine.conn_count(), engine.nfq_stats(),
                        engine.timers(0)))
    assert results[0] == results[1]


def test_global_synproxy_default_needs_settings() -> None:
    with pytest.raises(ValueError):
        PyEngine().set_synproxy(None, None)


def test_bad_configuration_is_refused() -> None:
    for kwargs in ({"hash_buckets": 3}, {"lport_min": 2000, "lport_max": 1000}, {"conn_max": 1 << 30}):
        with pytest.raises(EngineError):
            PyEngine(**kwargs)


def test_fail_open_is_not_available_in_python() -> None:
    with pytest.raises(OSError):
        PyEngine().start(0, fail_open=True)
