"""The scheduler and forwarding-method registries, and the hooks part 2 of issue 13 builds on.

- native/include/lb_sched_list.h (one `LB_SCHED(name)` per line) is the registry: each name has
  native/src/sched_<name>.c and lb/pyengine/sched_<name>.py, both engines accept it, and the
  Python registry (found from the modules) holds exactly those names.
- native/include/lb_xmit_list.h (`LB_XMIT(LB_FWD_X, name)`) likewise for forwarding methods:
  xmit_<name>.c, a Python method module whose name lb.engine.FWD_IDS maps to that enum value;
  every enum value has its line (masq was the last).
- Scheduler state belongs to the scheduler: a switch starts the new one afresh (rr at the list
  head) and a switch back does too; PyEngine.expire runs the schedulers' tick hook.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import packet_table as table  # noqa: E402
from lb.engine import FWD_IDS, EngineError, FwdState  # noqa: E402
from lb.model import DestSpec, ServiceKey, ServiceSpec  # noqa: E402
from lb.pyengine import PyEngine  # noqa: E402
from lb.pyengine import sched as pysched  # noqa: E402
from lb.pyengine import xmit as pyxmit  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
INCLUDE = REPO / "native" / "include"
FACTORIES = [
    pytest.param(f, id=f.id, marks=[pytest.mark.skip(reason=f.unavailable)] if f.make is None else [])
    for f in table.engine_factories()
]
KEY = ServiceKey(6, table.VIP, 80)


def sched_names() -> list[str]:
    text = (INCLUDE / "lb_sched_list.h").read_text()
    return re.findall(r"^LB_SCHED\((\w+)\)", text, flags=re.MULTILINE)


def xmit_lines() -> list[tuple[str, str]]:
    text = (INCLUDE / "lb_xmit_list.h").read_text()
    return re.findall(r"^LB_XMIT\((LB_FWD_\w+), (\w+)\)", text, flags=re.MULTILINE)


def test_sched_list_has_only_scheduler_lines() -> None:
    """One LB_SCHED(name) per line and nothing but comments besides (Python reads it as text)."""
    text = (INCLUDE / "lb_sched_list.h").read_text()
    without_comments = re.sub(r"/\*.*?\*/", "", text, flags=re.DOTALL)
    lines = [line.strip() for line in without_comments.splitlines() if line.strip()]
    assert lines == [f"LB_SCHED({name})" for name in sched_names()]
    assert len(set(sched_names())) == len(sched_names()) >= 2


def test_every_scheduler_has_its_files_and_python_twin() -> None:
    for name in sched_names():
        assert (REPO / "native" / "src" / f"sched_{name}.c").is_file(), name
        assert (REPO / "lb" / "pyengine" / f"sched_{name}.py").is_file(), name
    assert sorted(pysched.schedulers()) == sorted(sched_names())


@pytest.mark.parametrize("factory", FACTORIES)
def test_both_engines_accept_every_listed_scheduler(factory: table.EngineFactory) -> None:
    engine = factory.make(0)  # type: ignore[operator]
    for port, name in enumerate(sched_names(), start=1000):
        engine.add_service(ServiceSpec(ServiceKey(6, table.VIP, port), name))
    unknown = ServiceSpec(ServiceKey(6, table.VIP, 999), "rr")
    object.__setattr__(unknown, "sched", "nosuchsched")  # past lb.model's own check: the engine's answer
    with pytest.raises(EngineError) as exc:
        engine.add_service(unknown)
    assert exc.value.errno_name == "ENOENT"


def test_every_method_has_its_files_and_python_twin() -> None:
    from lb._ffi import lib

    lines = xmit_lines()
    assert lines, "lb_xmit_list.h lists no method"
    by_value = {value: name for name, value in FWD_IDS.items()}
    for enum_name, c_name in lines:
        assert (REPO / "native" / "src" / f"xmit_{c_name}.c").is_file(), c_name
        assert pyxmit.find_method(by_value[getattr(lib, enum_name)]) is not None, enum_name
    assert sorted(pyxmit.methods()) == sorted(by_value[getattr(lib, e)] for e, _ in lines)


def test_every_forwarding_method_is_registered() -> None:
    """Every enum lb_fwd value has its method (masq, issue 14, was the last one missing)."""
    assert sorted(pyxmit.methods()) == sorted(FWD_IDS)
    assert sorted(enum for enum, _ in xmit_lines()) == sorted(f"LB_FWD_{name.upper()}" for name in FWD_IDS)


@pytest.mark.parametrize("factory", FACTORIES)
def test_every_method_is_accepted(factory: table.EngineFactory) -> None:
    engine = factory.make(0)  # type: ignore[operator]
    engine.add_service(ServiceSpec(KEY, "rr"))
    for port, name in enumerate(sorted(FWD_IDS), start=8000):
        engine.add_dest(KEY, DestSpec(table.RS1, port, name))
    assert sorted(d.spec.fwd for s in engine.services() for d in s.dests) == sorted(FWD_IDS)


def _picks(engine: object, sports: range) -> list[str]:
    macs = {mac: addr for addr, mac in table.RS_MACS.items()}
    return [macs[engine.process(table.tcp(sport=p), 0).l2hdr[:6]] for p in sports]  # type: ignore[attr-defined]


@pytest.mark.parametrize("factory", FACTORIES)
def test_scheduler_switch_starts_the_new_state_afresh(factory: table.EngineFactory) -> None:
    engine = factory.make(0)  # type: ignore[operator]
    engine.add_service(ServiceSpec(KEY, "rr"))
    for rs in (table.RS1, table.RS2, table.RS3):
        engine.add_dest(KEY, DestSpec(rs, 80))
        engine.set_fwd(KEY, rs, 80, FwdState(ifindex=table.IFINDEX, dst_mac=table.RS_MACS[rs],
                                             src_mac=table.DIRECTOR_MAC))
    # Kernel list RS3, RS2, RS1: rr from the head.
    assert _picks(engine, range(41000, 41002)) == [table.RS3, table.RS2]
    engine.edit_service(ServiceSpec(KEY, "rr"))  # same scheduler: its cursor stays
    assert _picks(engine, range(41002, 41003)) == [table.RS1]
    engine.edit_service(ServiceSpec(KEY, "wlc"))
    engine.edit_service(ServiceSpec(KEY, "rr"))  # back to rr: a new cursor, at the head again
    assert _picks(engine, range(41003, 41005)) == [table.RS3, table.RS2]


def test_pyengine_expire_runs_every_services_tick(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[int, int]] = []
    rr = pysched.find_scheduler("rr")
    monkeypatch.setattr(type(rr), "tick", lambda self, service, now_ms: seen.append((service.key[2], now_ms)))
    engine = PyEngine()
    engine.add_service(ServiceSpec(KEY, "rr"))
    engine.add_service(ServiceSpec(ServiceKey(6, table.VIP, 81), "rr"))
    engine.add_service(ServiceSpec(ServiceKey(6, table.VIP, 82), "wlc"))
    engine.expire(1234)
    assert sorted(seen) == [(80, 1234), (81, 1234)]
