"""reconcile.plan: minimal, correct, and never deletes what exists on both sides.

The property tests draw random running and desired states over a small universe of
services, destinations and local addresses (so that overlaps, edits and identical objects
are frequent) and check, for every pair:

- applying the plan to the running state (with the model that refuses what the engines
  refuse) yields exactly the desired state;
- the plan is minimal: one command per differing object and nothing else;
- a service present in both states is never deleted and re-created, and one that is
  identical in both is not mentioned at all; likewise for destinations and local addresses.

Shared seed 003 (a diff that turned "add VIP 3 to [1,2,4,5]" into deleting and re-adding 4
and 5) is one explicit case, through the engine as well.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lb.model import SCHEDULERS, DestSpec, ServiceKey, ServiceSpec
from lb.reconcile import (
    DEFAULT_TIMEOUTS,
    AddDest,
    AddLaddr,
    AddService,
    Clear,
    Command,
    DelDest,
    DelLaddr,
    DelService,
    EditDest,
    EditService,
    ServiceState,
    SetTimeout,
    State,
    StateError,
    Timeouts,
    Zero,
    inverse,
    plan,
)
from lb.requests import parse_command

VIPS = ["10.1.0.1", "10.1.0.2", "10.1.0.3"]
PORTS = [80, 443]
RIPS = ["10.2.0.1", "10.2.0.2", "10.2.0.3", "10.2.0.4"]
LIPS = ["10.3.0.1", "10.3.0.2", "10.3.0.3"]

keys = st.builds(ServiceKey, st.sampled_from([6, 17]), st.sampled_from(VIPS), st.sampled_from(PORTS))


@st.composite
def service_states(draw: Any, key: ServiceKey) -> ServiceState:
    spec = ServiceSpec(key=key, sched=draw(st.sampled_from(SCHEDULERS)),
                       persistent=draw(st.sampled_from([None, 300])), toa=draw(st.booleans()))
    dests = {}
    for addr in draw(st.lists(st.sampled_from(RIPS), unique=True, max_size=4)):
        u = draw(st.sampled_from([0, 100]))
        dests[(addr, 80)] = DestSpec(addr=addr, port=80, fwd=draw(st.sampled_from(["route", "tunnel", "fullnat"])),
                                     weight=draw(st.integers(0, 3)), u_threshold=u,
                                     l_threshold=draw(st.sampled_from([0, u // 2])))
    laddrs = dict.fromkeys(draw(st.lists(st.sampled_from(LIPS), unique=True, max_size=3)))
    return ServiceState(spec, dests, laddrs)


@st.composite
def states(draw: Any) -> State:
    chosen = draw(st.lists(keys, unique=True, max_size=6))
    timeouts = draw(st.sampled_from([None, DEFAULT_TIMEOUTS, Timeouts(3600, 120, 300)]))
    return State({k: draw(service_states(k)) for k in chosen}, timeouts)


@st.composite
def related_pairs(draw: Any) -> tuple[State, State]:
    """(running, desired) where desired is running with random changes: many shared objects."""
    running = draw(states())
    desired = running.copy()
    for key in list(desired.services):
        choice = draw(st.sampled_from(["keep", "keep", "drop", "respec", "redraw"]))
        if choice == "drop":
            del desired.services[key]
        elif choice == "respec":
            svc = desired.services[key]
            svc.spec = ServiceSpec(key=key, sched="rr" if svc.spec.sched == "wlc" else "wlc")
        elif choice == "redraw":
            desired.services[key] = draw(service_states(key))
    for key in draw(st.lists(keys, unique=True, max_size=3)):
        if key not in desired.services:
            desired.services[key] = draw(service_states(key))
    desired.timeouts = draw(st.sampled_from([None, DEFAULT_TIMEOUTS, Timeouts(60, 60, 60)]))
    return running, desired


def expected_size(running: State, desired: State) -> int:
    """The lower bound: one command per object that differs."""
    n = 0
    for key, want in desired.services.items():
        have = running.services.get(key)
        if have is None:
            n += 1 + len(want.dests) + len(want.laddrs)
            continue
        n += have.spec != want.spec
        n += sum(1 for i, d in want.dests.items() if have.dests.get(i) != d)
        n += sum(1 for i in have.dests if i not in want.dests)
        n += len(set(want.laddrs) ^ set(have.laddrs))
    n += sum(1 for key in running.services if key not in desired.services)
    n += desired.timeouts is not None and desired.timeouts != (running.timeouts or DEFAULT_TIMEOUTS)
    return n


def touched_keys(cmd: Command) -> ServiceKey | None:
    if isinstance(cmd, (AddService, EditService)):
        return cmd.spec.key
    return getattr(cmd, "key", None)


def check_plan(running: State, desired: State) -> list[Command]:
    steps = plan(running, desired)
    result = running.copy().apply_all(steps)
    assert result.services == desired.services
    if desired.timeouts is not None:
        assert (result.timeouts or DEFAULT_TIMEOUTS) == desired.timeouts
    assert len(steps) == expected_size(running, desired)
    common = running.services.keys() & desired.services.keys()
    for step in steps:
        key = touched_keys(step)
        if key in common:
            assert not isinstance(step, (DelService, AddService)), f"{step} deletes/re-creates a kept service"
            assert running.services[key] != desired.services[key], f"{step} touches an unchanged service"
            have, want = running.services[key], desired.services[key]
            if isinstance(step, (AddDest, EditDest)):
                ident = (step.dest.addr, step.dest.port)
                assert have.dests.get(ident) != want.dests.get(ident)
                assert isinstance(step, EditDest) == (ident in have.dests), f"{step}: edit iff it exists"
            if isinstance(step, DelDest):
                assert (step.addr, step.port) not in want.dests
            if isinstance(step, AddLaddr):
                assert step.addr in want.laddrs and step.addr not in have.laddrs
            if isinstance(step, DelLaddr):
                assert step.addr in have.laddrs and step.addr not in want.laddrs
    return steps


@settings(max_examples=400, deadline=None)
@given(related_pairs())
def test_plan_for_related_states(pair: tuple[State, State]) -> None:
    check_plan(*pair)


@settings(max_examples=200, deadline=None)
@given(states(), states())
def test_plan_for_independent_states(running: State, desired: State) -> None:
    check_plan(running, desired)


@settings(max_examples=100, deadline=None)
@given(states())
def test_plan_from_a_state_to_itself_is_empty(state: State) -> None:
    assert plan(state, state.copy()) == []


def test_seed_003_add_vip_3_to_1_2_4_5() -> None:
    """The DC/OS navstar failure: [1,2,4,5] -> [1,2,3,4,5] must add 3 and do nothing else."""

    def svc(n: int) -> tuple[ServiceKey, ServiceState]:
        key = ServiceKey(6, f"10.9.0.{n}", 80)
        return key, ServiceState(ServiceSpec(key=key, sched="rr"),
                                 {(f"10.8.0.{n}", 80): DestSpec(addr=f"10.8.0.{n}", port=80)})

    running = State(dict(svc(n) for n in (1, 2, 4, 5)))
    desired = State(dict(svc(n) for n in (1, 2, 3, 4, 5)))
    steps = check_plan(running, desired)
    key3 = ServiceKey(6, "10.9.0.3", 80)
    assert steps == [AddService(ServiceSpec(key=key3, sched="rr")),
                     AddDest(key3, DestSpec(addr="10.8.0.3", port=80))]
    # And the other way round, through the sorted-list shape that went wrong: removing 3 only.
    assert plan(desired, running) == [DelService(key3)]


def test_scheduler_change_is_an_edit_and_weight_change_is_an_edit() -> None:
    key = ServiceKey(6, "10.9.0.1", 80)
    d1 = DestSpec(addr="10.8.0.1", port=80, weight=1)
    running = State({key: ServiceState(ServiceSpec(key=key, sched="rr"), {("10.8.0.1", 80): d1})})
    d2 = DestSpec(addr="10.8.0.1", port=80, weight=5, fwd="tunnel", u_threshold=10, l_threshold=2)
    desired = State({key: ServiceState(ServiceSpec(key=key, sched="wlc"), {("10.8.0.1", 80): d2})})
    steps = check_plan(running, desired)
    assert steps == [EditService(ServiceSpec(key=key, sched="wlc")), EditDest(key, d2)]
    assert "sched 'rr' -> 'wlc'" in steps[0].describe()
    assert "weight 1 -> 5" in steps[1].describe()


def test_plan_carries_source_lines() -> None:
    key = ServiceKey(6, "10.9.0.1", 80)
    desired = State({key: ServiceState(ServiceSpec(key=key), {("10.8.0.1", 80): DestSpec(addr="10.8.0.1", port=80)})})
    desired.lines.update({("svc", key): 3, ("dest", key, "10.8.0.1", 80): 9})
    assert [s.line for s in plan(State(), desired)] == [3, 9]


# ---------------------------------------------------------------------------- the model and undo


@settings(max_examples=300, deadline=None)
@given(related_pairs())
def test_inverse_undoes_every_command(pair: tuple[State, State]) -> None:
    running, desired = pair
    steps = plan(running, desired) + [Clear(), Zero()]
    state = running.copy()
    for step in steps:
        before = state.copy()
        undo = inverse(state, step)
        state.apply(step)
        restored = state.copy().apply_all(undo)
        assert restored.services == before.services, step
        if isinstance(step, SetTimeout):
            assert restored.timeouts == (before.timeouts or DEFAULT_TIMEOUTS)


def test_inverse_of_del_service_restores_destination_order() -> None:
    key = ServiceKey(6, "10.9.0.1", 80)
    state = State()
    state.apply_all([AddService(ServiceSpec(key=key))] + [AddDest(key, DestSpec(addr=a, port=80)) for a in RIPS])
    order = list(state.services[key].dests)
    undo = inverse(state, DelService(key))
    state.apply(DelService(key))
    state.apply_all(undo)
    assert list(state.services[key].dests) == order  # kernel order: most recently added first
    assert order[0] == (RIPS[-1], 80)


@pytest.mark.parametrize(
    ("cmds", "errno"),
    [
        ([AddService(ServiceSpec(key=ServiceKey(6, "10.9.0.1", 80)))] * 2, "EEXIST"),
        ([EditService(ServiceSpec(key=ServiceKey(6, "10.9.0.1", 80)))], "ESRCH"),
        ([AddDest(ServiceKey(6, "10.9.0.1", 80), DestSpec(addr="10.8.0.1", port=80))], "ESRCH"),
        ([AddService(ServiceSpec(key=ServiceKey(6, "10.9.0.1", 80))),
          DelDest(ServiceKey(6, "10.9.0.1", 80), "10.8.0.1", 80)], "ENOENT"),
        ([AddService(ServiceSpec(key=ServiceKey(6, "10.9.0.1", 80))),
          AddDest(ServiceKey(6, "10.9.0.1", 80), DestSpec(addr="10.8.0.1", port=80, l_threshold=3))], "ERANGE"),
        ([AddService(ServiceSpec(key=ServiceKey(6, "10.9.0.1", 80))),
          AddLaddr(ServiceKey(6, "10.9.0.1", 80), "10.3.0.1"),
          AddLaddr(ServiceKey(6, "10.9.0.1", 80), "10.3.0.1")], "EEXIST"),
        ([AddService(ServiceSpec(key=ServiceKey(6, "10.9.0.1", 80))),
          DelLaddr(ServiceKey(6, "10.9.0.1", 80), "10.3.0.1")], "ENOENT"),
        ([Zero(ServiceKey(6, "10.9.0.1", 80))], "ESRCH"),
    ],
)
def test_model_refuses_like_the_engines(cmds: list[Command], errno: str) -> None:
    state = State()
    with pytest.raises(StateError) as info:
        state.apply_all(cmds)
    assert info.value.errno_name == errno


@pytest.mark.parametrize(
    ("op", "args", "errno"),
    [
        ("add_service", {"proto": "tcp", "addr": "10.0.0.1", "port": 80, "sched": "nosuch"}, "ENOENT"),
        ("add_service", {"proto": "tcp", "addr": "10.0.0.1", "port": 80, "sched": "rr", "pe": "sip"}, "EOPNOTSUPP"),
        ("add_service", {"proto": "tcp", "addr": "10.0.0.1", "port": "80"}, "EINVAL"),
        ("add_service", {"proto": "tcp", "addr": "10.0.0.1"}, "EINVAL"),
        ("add_dest", {"service": {"proto": "tcp", "addr": "10.0.0.1", "port": 80},
                      "dest": {"addr": "10.0.0.2", "port": 80, "tun_type": "gue"}}, "EOPNOTSUPP"),
        ("add_dest", {"service": {"proto": "tcp", "addr": "10.0.0.1", "port": 80},
                      "dest": {"addr": "10.0.0.2", "port": 80, "weight": 2**31}}, "EINVAL"),
        ("set_timeout", {"tcp": 1, "tcpfin": 2, "udp": 86400 * 32}, "EINVAL"),
        ("list", {}, "EOPNOTSUPP"),
    ],
)
def test_parse_command_refusals(op: str, args: dict[str, Any], errno: str) -> None:
    with pytest.raises(StateError) as info:
        parse_command(op, args)
    assert info.value.errno_name == errno


@settings(max_examples=200, deadline=None)
@given(related_pairs())
def test_commands_round_trip_through_requests(pair: tuple[State, State]) -> None:
    for step in plan(*pair):
        req = step.request()
        assert parse_command(req["op"], req["args"]) == step


def test_describe_uses_lbadm_syntax() -> None:
    key = ServiceKey(17, "10.9.0.1", 53)
    assert AddService(ServiceSpec(key=key, sched="rr", persistent=60, netmask="255.255.255.0")).describe() == \
        "-A -u 10.9.0.1:53 -s rr -p 60 -M 255.255.255.0"
    assert AddDest(key, DestSpec(addr="10.8.0.1", port=53, fwd="tunnel", weight=2, u_threshold=9)).describe() == \
        "-a -u 10.9.0.1:53 -r 10.8.0.1:53 -i -w 2 -x 9"
    assert DelDest(key, "10.8.0.1", 53).describe() == "-d -u 10.9.0.1:53 -r 10.8.0.1:53"
    assert AddLaddr(key, "10.3.0.1").describe() == "-P -u 10.9.0.1:53 -z 10.3.0.1"
    assert SetTimeout(Timeouts(1, 2, 3)).describe() == "--set 1 2 3"


# ---------------------------------------------------------------------------- through an engine


@pytest.fixture(params=["c", "python"])
def engine(request: pytest.FixtureRequest) -> Any:
    from test_director import make_engine

    return make_engine(request.param)


def test_seed_003_through_an_engine_touches_only_service_3(engine: Any) -> None:
    """Director.apply_config: the engine sees exactly "add 3 and its destination", nothing of 1, 2, 4, 5."""
    from lb.director import Director

    d = Director(engine, rules=None, resolver=None)

    def svc(n: int) -> tuple[ServiceKey, ServiceState]:
        key = ServiceKey(6, f"10.9.0.{n}", 80)
        return key, ServiceState(ServiceSpec(key=key, sched="rr"),
                                 {(f"10.8.0.{n}", 80): DestSpec(addr=f"10.8.0.{n}", port=80)})

    class Conf:
        path = "<test>"

        def __init__(self, ns: tuple[int, ...]) -> None:
            self.ns = ns

        def state(self) -> State:
            return State(dict(svc(n) for n in self.ns))

    calls: list[str] = []
    d.apply_config(Conf((1, 2, 4, 5)))
    def counting(name: str, original: Any) -> Any:
        def call(*args: Any) -> Any:
            calls.append(name)
            return original(*args)
        return call

    for name in ("add_service", "del_service", "add_dest", "del_dest", "edit_service", "edit_dest"):
        setattr(engine, name, counting(name, getattr(engine, name)))
    result = d.apply_config(Conf((1, 2, 3, 4, 5)))
    assert calls == ["add_service", "add_dest"]
    assert result["plan"] == ["-A -t 10.9.0.3:80 -s rr", "-a -t 10.9.0.3:80 -r 10.8.0.3:80 -g -w 1"]
