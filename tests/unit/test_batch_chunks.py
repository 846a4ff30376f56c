"""A chunked `batch` (docs/control-protocol.md, issue 15): `lbadm -R` of a stream larger than lbd's
1 MiB request line goes in chunks ("more": true), applied all at once with the last one; a chunk
that is refused, a refusal of the whole, or a connection that ends before the last chunk changes
nothing.

Against a real Director (C engine, no queue) behind the daemon's own request dispatch on a Unix
socket (one BatchSession per connection, as lbd), driven by the control client and by lbadm's main().
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest

from lb.ctlclient import ControlClient, ControlError
from lb.ctlserver import MAX_REQUEST_BYTES
from lb.director import BatchError, BatchSession, Director
from lb.engine import EngineError
from lb.lbadm.run import RESTORE_CHUNK_BYTES, _chunks
from lb.reconcile import State
from line_server import director_socket, lbadm  # tests/unit helpers
from refusing_engine import REFUSED_RIP, refusing


def c_engine() -> Any:
    from lb.fastpath import CEngine

    return CEngine(conn_max=1024)


def vip(i: int) -> str:
    return f"10.{64 + (i >> 16)}.{(i >> 8) & 255}.{i & 255}"


def key(i: int) -> dict[str, Any]:
    return {"proto": "tcp", "addr": vip(i), "port": 80}


def add_service(i: int) -> dict[str, Any]:
    return {"op": "add_service", "args": {**key(i), "sched": "rr"}}


def add_dest(i: int, rs: str = "172.30.0.1") -> dict[str, Any]:
    return {"op": "add_dest", "args": {"service": key(i), "dest": {"addr": rs, "port": 80, "fwd": "route", "weight": 1}}}


# What the model accepts and the engine refuses: a destination at REFUSED_RIP (refusing_engine).
OPS_SVC = {"proto": "udp", "addr": "10.200.0.53", "port": 53}
ENGINE_REFUSES = [{"op": "add_service", "args": {**OPS_SVC, "sched": "rr", "ops": True}},
                  {"op": "add_dest", "args": {"service": OPS_SVC, "dest": {"addr": REFUSED_RIP, "port": 53,
                                                                          "fwd": "masq"}}}]


def services(d: Director) -> list[str]:
    return [s["addr"] for s in d.handle("list", {})["services"]]


@pytest.fixture
def served() -> Iterator[tuple[str, Director]]:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "s")
        d = Director(c_engine(), rules=None, resolver=None)
        with director_socket(path, d):
            yield path, d


# ---------------------------------------------------------------------------- the Director


def test_chunks_queue_until_the_last_one_applies_them_all() -> None:
    d = Director(c_engine(), rules=None, resolver=None)
    session = BatchSession()
    assert d.handle("batch", {"requests": [add_service(0), add_dest(0)], "more": True}, session) == {"queued": 2}
    assert d.handle("batch", {"requests": [add_service(1)], "more": True}, session) == {"queued": 3}
    assert services(d) == []  # nothing applied before the last chunk
    assert d.handle("batch", {"requests": [add_dest(1)]}, session) == {"applied": 4}
    assert services(d) == [vip(0), vip(1)]
    assert session.pending == []
    # The next batch on the same connection starts afresh.
    assert d.handle("batch", {"requests": [add_service(2)]}, session) == {"applied": 1}


def test_a_refused_request_in_a_later_chunk_names_its_place_in_the_whole_batch() -> None:
    d = Director(c_engine(), rules=None, resolver=None)
    session = BatchSession()
    d.handle("batch", {"requests": [add_service(0), add_dest(0)], "more": True}, session)
    with pytest.raises(BatchError) as exc:  # malformed: refused as the chunk arrives
        d.handle("batch", {"requests": [add_service(1), {"op": "add_dest", "args": {"service": key(1)}}],
                           "more": True}, session)
    assert (exc.value.index, exc.value.op, exc.value.errno_name) == (3, "add_dest", "EINVAL")
    assert "request 4" in str(exc.value)
    assert session.pending == [] and services(d) == []
    # A refusal of the whole (a destination of a service no chunk defines) at the last chunk.
    d.handle("batch", {"requests": [add_service(0)], "more": True}, session)
    with pytest.raises(BatchError) as exc2:
        d.handle("batch", {"requests": [add_dest(0), add_dest(7)]}, session)
    assert (exc2.value.index, exc2.value.op, exc2.value.errno_name) == (2, "add_dest", "ESRCH")
    assert services(d) == [] and session.pending == []


def test_an_engine_refusal_at_the_last_chunk_undoes_the_earlier_chunks() -> None:
    d = Director(refusing(c_engine()), rules=None, resolver=None)
    d.handle("add_service", {**key(9), "sched": "rr"})
    before = d.handle("list", {})
    session = BatchSession()
    d.handle("batch", {"requests": [add_service(0), add_dest(0), {"op": "del_service", "args": key(9)}],
                       "more": True}, session)
    with pytest.raises(BatchError) as exc:  # the model accepts it, the engines refuse it
        d.handle("batch", {"requests": ENGINE_REFUSES}, session)
    assert exc.value.index == 4
    assert d.handle("list", {})["services"] == before["services"]
    assert d.state.services == State.from_services(d.engine.services()).services  # the model followed


def test_more_without_a_connection_and_bad_more_are_refused() -> None:
    d = Director(c_engine(), rules=None, resolver=None)
    with pytest.raises(EngineError) as exc:
        d.handle("batch", {"requests": [add_service(0)], "more": True})
    assert exc.value.errno_name == "EINVAL"
    with pytest.raises(EngineError) as exc2:
        d.handle("batch", {"requests": [add_service(0)], "more": "yes"}, BatchSession())
    assert exc2.value.errno_name == "EINVAL"
    assert services(d) == []


# ---------------------------------------------------------------------------- over the socket


def test_a_connection_that_ends_before_the_last_chunk_changes_nothing(served: tuple[str, Director]) -> None:
    path, d = served
    with ControlClient(path) as client:
        assert client.request("batch", {"requests": [add_service(0)], "more": True}) == {"queued": 1}
    with ControlClient(path) as client:  # a new connection: the old chunk is gone
        assert client.request("batch", {"requests": [add_service(1)]}) == {"applied": 1}
    assert services(d) == [vip(1)]


def test_chunks_of_two_connections_do_not_mix(served: tuple[str, Director]) -> None:
    path, d = served
    with ControlClient(path) as a, ControlClient(path) as b:
        a.request("batch", {"requests": [add_service(0)], "more": True})
        b.request("batch", {"requests": [add_service(1)], "more": True})
        assert a.request("batch", {"requests": [add_dest(0)]}) == {"applied": 2}
        assert services(d) == [vip(0)]
        with pytest.raises(ControlError) as exc:
            b.request("batch", {"requests": [add_dest(0)]})  # a's batch added this destination already
        assert exc.value.errno_name == "EEXIST"  # b's batch is refused whole: its service 1 too
    assert services(d) == [vip(0)]


# ---------------------------------------------------------------------------- lbadm -R


def rules(n: int) -> str:
    lines = []
    for i in range(n):
        lines += [f"-A -t {vip(i)}:80 -s rr", f"-a -t {vip(i)}:80 -r 172.30.{i >> 8}.{i & 255}:80 -g -w 1"]
    return "\n".join(lines) + "\n"


N_BIG = 4000  # 8,000 requests: about 1.4 MB of batch JSON, more than one request line may hold


def test_restore_larger_than_one_request_line_applies_whole(served: tuple[str, Director]) -> None:
    path, d = served
    text = rules(N_BIG)
    as_one_line = json.dumps({"op": "batch", "args": {"requests": [add_service(i) for i in range(N_BIG)]
                                                      + [add_dest(i) for i in range(N_BIG)]}})
    assert len(as_one_line) > MAX_REQUEST_BYTES  # the stream that used to fail with "Broken pipe"
    rc, out, err = lbadm(path, "-R", stdin=text)
    assert (rc, err) == (0, "")
    listing = d.handle("list", {})["services"]
    assert len(listing) == N_BIG and all(len(s["dests"]) == 1 for s in listing)
    # -S | -R round-trips after a clear.
    saved = lbadm(path, "-S", "-n")[1]
    assert lbadm(path, "-C")[0] == 0
    assert lbadm(path, "-R", stdin=saved)[0] == 0
    assert len(d.handle("list", {})["services"]) == N_BIG


def test_restore_with_a_bad_line_at_the_end_changes_nothing(served: tuple[str, Director]) -> None:
    path, d = served
    lbadm(path, "-A", "-t", "10.9.9.9:80", "-s", "wlc")
    before = d.handle("list", {})["services"]
    # Valid syntax, refused by lbd: a destination of a service no line defines (the last chunk).
    text = rules(N_BIG) + "-a -t 10.9.9.8:80 -r 172.31.0.1:80 -g -w 1\n"
    rc, _, err = lbadm(path, "-R", stdin=text)
    assert rc == 255
    assert "Service not defined" in err and f"command {2 * N_BIG + 1} failed; nothing was changed" in err
    assert d.handle("list", {})["services"] == before
    # Invalid syntax on the last line: lbadm refuses before sending anything.
    rc, _, err = lbadm(path, "-R", stdin=rules(N_BIG) + "-a -t 10.9.9.9:80 -r 172.31.0.1:80 -g -w nine\n")
    assert rc != 0 and "nothing was changed" in err
    assert d.handle("list", {})["services"] == before


def test_restore_chunks_stay_under_the_request_limit() -> None:
    requests = [add_dest(i, f"172.30.{i >> 8}.{i & 255}")["args"] for i in range(20000)]
    chunks = list(_chunks(requests))
    assert len(chunks) > 1
    assert [more for _, more in chunks] == [True] * (len(chunks) - 1) + [False]
    assert [r for chunk, _ in chunks for r in chunk] == requests
    for chunk, _ in chunks:
        line = json.dumps({"op": "batch", "args": {"requests": chunk, "more": True}}, separators=(",", ":"))
        assert len(line) < RESTORE_CHUNK_BYTES + 100 < MAX_REQUEST_BYTES


# ---------------------------------------------------------------------------- the model follows the engine


def test_a_failed_rollback_step_leaves_the_model_equal_to_the_engine(caplog: pytest.LogCaptureFixture) -> None:
    from lb.fastpath import CEngine
    from lb.model import ServiceSpec

    class NoReAdd(CEngine):
        """Refuses to re-create a service once it was deleted (a rollback step that fails)."""

        deleted: set[Any] = set()

        def del_service(self, key: Any) -> None:
            super().del_service(key)
            self.deleted.add(key)

        def add_service(self, spec: ServiceSpec) -> None:
            if spec.key in self.deleted:
                raise EngineError("ENOMEM", "no room")
            super().add_service(spec)

    d = Director(refusing(NoReAdd(conn_max=64)), rules=None, resolver=None)
    d.handle("batch", {"requests": [add_service(0), add_dest(0), add_service(1)]})
    with pytest.raises(BatchError):
        d.handle("batch", {"requests": [{"op": "del_service", "args": key(0)}, *ENGINE_REFUSES]})
    assert "rollback step" in caplog.text
    assert d.state.services == State.from_services(d.engine.services()).services
    assert [k.addr for k in d.state.services] == [vip(1)]  # service 0 could not come back
