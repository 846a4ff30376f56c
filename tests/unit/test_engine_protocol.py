"""lb.engine.Engine is the contract: both engines implement every method of it.

The typed assignments under TYPE_CHECKING are the proof mypy checks (`make lint`): if either engine lacks a
method or has an incompatible signature, `engine: Engine = ...` does not type-check. The tests
repeat the check at run time (names and parameters), so it holds where mypy is not run.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING

import pytest

from lb.engine import Engine
from lb.pyengine import PyEngine

if TYPE_CHECKING:  # the static proof (mypy), whether or not the C extension is built here
    from lb.fastpath import CEngine

    _c_engine: Engine = CEngine()
    _py_engine: Engine = PyEngine()


def protocol_methods() -> dict[str, inspect.Signature]:
    return {name: inspect.signature(member) for name, member in vars(Engine).items()
            if callable(member) and not name.startswith("_")}


def _params(sig: inspect.Signature) -> list[tuple[str, object, object]]:
    return [(p.name, p.kind, p.default) for p in sig.parameters.values()]


def test_python_engine_satisfies_the_protocol() -> None:
    engine = PyEngine(conn_max=16)
    assert engine.name == "python"
    for name, sig in protocol_methods().items():
        assert _params(inspect.signature(getattr(PyEngine, name))) == _params(sig), name


def test_c_engine_satisfies_the_protocol() -> None:
    fastpath = pytest.importorskip("lb.fastpath", reason="the C extension lb._fastpath is not built")
    engine = fastpath.CEngine(conn_max=16)
    assert engine.name == "c"
    for name, sig in protocol_methods().items():
        assert _params(inspect.signature(getattr(fastpath.CEngine, name))) == _params(sig), name


def test_the_protocol_names_what_the_control_plane_uses() -> None:
    """Every engine method lb.director / lb.statefile / lb.daemon call is on the protocol."""
    import re
    from pathlib import Path

    lb_dir = Path(__file__).resolve().parents[2] / "lb"
    called: set[str] = set()
    for module in ("director.py", "statefile.py", "daemon.py"):
        text = (lb_dir / module).read_text()
        called |= set(re.findall(r"\bengine\.([a-z_]+)\(", text)) | set(re.findall(r"\be\.([a-z_]+)\(", text))
        assert not re.search(r"(getattr|hasattr)\((self\.)?(director\.)?engine\b", text), module
    assert called, "no engine call found: the pattern is stale"
    assert called <= set(protocol_methods()), called - set(protocol_methods())
