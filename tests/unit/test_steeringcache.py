"""lb.steeringcache: the ip sets' content kept change by change equals the whole steering built
from the model (Director.steering().elements()) after any sequence of commands, and a command
sends only its difference (no listing of the raw table or of the sets). No privileges: iptables
and ipset are the fake of test_iptables_rules, which keeps ip sets like the kernel."""

from __future__ import annotations

import random
import subprocess
from collections.abc import Sequence
from typing import Any

import pytest

from lb.director import Director
from lb.engine import EngineError
from lb.ipsets import ADDR, KINDS, NAT, NATRIP, NATTCP0, NATUDP0, SetKind
from lb.iptables import RuleManager
from lb.model import DestSpec, ServiceKey, ServiceSpec
from lb.reconcile import AddDest, AddLaddr, AddService, DelDest, DelService, State, StateError
from lb.requests import parse_command
from lb.steeringcache import SteeringCache
from test_iptables_rules import HEALTHY, Fake

QUEUE = 3
VIPS = ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
RIPS = ["10.1.0.1", "10.1.0.2", "10.1.0.3", "10.1.0.4"]
LIPS = ["10.2.0.1", "10.2.0.2", "10.2.0.3"]
FWDS = ["route", "tunnel", "masq", "fullnat"]


def _director() -> tuple[Director, Fake, RuleManager]:
    from lb.pyengine import PyEngine

    fake = Fake("\n".join(HEALTHY))
    rules = RuleManager(QUEUE, runner=fake)
    d = Director(PyEngine(conn_max=1024), rules=rules, resolver=None)
    d.sync_rules()  # what lbd does at start (lb.daemon._install_rules)
    return d, fake, rules


def _kernel_sets(fake: Fake, rules: RuleManager) -> dict[SetKind, set[str]]:
    return {k: set(fake.sets[rules.sets.names[k]][1]) for k in KINDS}


def _svc(rng: random.Random, existing: Sequence[ServiceKey] = ()) -> dict[str, Any]:
    if existing and rng.random() < 0.7:  # mostly services that exist: their commands apply
        key = rng.choice(existing)
        if key.fwmark:
            return {"fwmark": key.fwmark}
        return {"proto": {6: "tcp", 17: "udp"}[key.proto], "addr": key.addr, "port": key.port}
    if rng.random() < 0.15:
        return {"fwmark": rng.choice([1, 2])}
    return {"proto": rng.choice(["tcp", "udp"]), "addr": rng.choice(VIPS), "port": rng.choice([0, 80, 443])}


def _request(rng: random.Random, existing: Sequence[ServiceKey] = ()) -> tuple[str, dict[str, Any]]:
    svc = _svc(rng, existing)
    dest = {"addr": rng.choice(RIPS), "port": rng.choice([0, 80, 8080]), "fwd": rng.choice(FWDS),
            "weight": rng.randint(0, 3)}
    choice = rng.choices(["add_service", "edit_service", "del_service", "add_dest", "edit_dest", "del_dest",
                          "add_laddr", "del_laddr", "clear"], weights=[6, 2, 2, 8, 3, 3, 4, 2, 0.3])[0]
    if choice in ("add_service", "edit_service"):
        # persistence on or off: a port-zero or fwmark service's NAT destinations change their reply steering
        return choice, {**svc, "sched": rng.choice(["rr", "wlc"]), **({"persistent": 60} if rng.random() < 0.5 else {})}
    if choice == "del_service":
        return choice, svc
    if choice in ("add_dest", "edit_dest"):
        return choice, {"service": svc, "dest": dest}
    if choice == "del_dest":
        return choice, {"service": svc, "dest": {"addr": dest["addr"], "port": dest["port"]}}
    if choice in ("add_laddr", "del_laddr"):
        return choice, {"service": svc, "addr": rng.choice(LIPS)}
    return choice, {}


@pytest.mark.parametrize("seed", range(12))
def test_incremental_sets_equal_the_whole_steering_after_random_commands(seed: int) -> None:
    rng = random.Random(seed)
    d, fake, rules = _director()
    applied = 0
    for step in range(200):
        if rng.random() < 0.2:  # a batch: several commands, all or nothing
            pairs = [_request(rng, list(d.state.services)) for _ in range(rng.randint(2, 6))]
            reqs = [{"op": o, "args": a} for o, a in pairs]
            op, args = "batch", {"requests": reqs}
        else:
            op, args = _request(rng, list(d.state.services))
        try:
            d.handle(op, args)
            applied += 1
        except EngineError:
            pass  # refused (already exists, no such service, FULLNAT without local address...): changes nothing
        want = d.steering().elements()
        assert d.steering_cache.elements() == want, f"step {step}: {op} {args}"
        assert _kernel_sets(fake, rules) == want, f"step {step}: {op} {args}"
        assert d.steering_cache.fwmarks() == d.steering().fwmarks
        # lb.iptables' first rule lets routed traffic pass unless its source is in natrip: every
        # source a NAT reply rule matches must be there
        nat_sources = {e.split(",")[0] for e in want[NAT]} | want[NATTCP0] | want[NATUDP0]
        assert nat_sources <= want[NATRIP], f"step {step}: {op} {args}"
    assert applied > 30  # the sequence did change things


def test_cache_follows_model_updates_without_a_director() -> None:
    """The property on the model alone: random applied commands, cache.update against a rebuild."""
    rng = random.Random(99)
    state = State()
    cache = SteeringCache()
    cache.rebuild(state)

    for _ in range(400):
        op, args = _request(rng, list(state.services))
        try:
            cmd = parse_command(op, args)
            state.apply(cmd)
        except StateError:
            continue
        delta = cache.update(state, [cmd])
        fresh = SteeringCache()
        fresh.rebuild(state)
        assert cache.elements() == fresh.elements()
        if delta is not None:
            assert not any(delta.added[k] & delta.removed[k] for k in KINDS)


def test_a_command_sends_only_its_difference_and_reads_no_listing() -> None:
    d, fake, _rules = _director()
    d.handle("add_service", {"proto": "tcp", "addr": VIPS[0], "port": 80, "sched": "rr"})  # builds the cache
    d.handle("add_service", {"proto": "tcp", "addr": VIPS[0], "port": 443, "sched": "rr"})
    fake.calls.clear()
    d.handle("add_dest", {"service": {"proto": "tcp", "addr": VIPS[0], "port": 80},
                          "dest": {"addr": RIPS[0], "port": 8080, "fwd": "masq"}})
    ipset = [c for c in fake.calls if "ipset" in c[0]]
    assert [c[0][-2:] for c in ipset] == [["restore", "-exist"]]  # no `ipset list`/`save`
    assert ipset[0][1] == f"add lbd-q{QUEUE}-nat {RIPS[0]},tcp:8080\nadd lbd-q{QUEUE}-natrip {RIPS[0]}\n"
    # A fake runner has no nftables generation: the raw table is still read (the real lbd reads
    # it only when the generation moved).
    fake.calls.clear()
    # the VIP stays in the address set while its other service needs it
    d.handle("del_service", {"proto": "tcp", "addr": VIPS[0], "port": 443})
    script = [c[1] for c in fake.calls if "ipset" in c[0]][0]
    assert script == f"del lbd-q{QUEUE}-svc {VIPS[0]},tcp:443\n"


def test_a_failed_set_change_rolls_back_and_rebuilds_the_cache() -> None:
    d, fake, rules = _director()
    d.handle("add_service", {"proto": "tcp", "addr": VIPS[0], "port": 80, "sched": "rr"})
    assert d.steering_cache.valid
    real_ipset = fake._ipset
    failures = iter([True])

    def failing(args: list[str], stdin: str | None) -> Any:
        if args[0] == "restore" and next(failures, False):
            return subprocess.CompletedProcess(args, 1, "", "ipset v7.17: Kernel error")
        return real_ipset(args, stdin)

    fake._ipset = failing  # type: ignore[method-assign]
    with pytest.raises(EngineError) as info:
        d.handle("add_service", {"proto": "tcp", "addr": VIPS[1], "port": 80, "sched": "rr"})
    assert info.value.errno_name == "EIO"
    # dropped, then rebuilt from the rolled-back model by the rollback's full sync
    assert d.steering_cache.valid and d.steering_cache.elements() == d.steering().elements()
    assert list(d.state.services) == [ServiceKey(6, VIPS[0], 80)]
    assert _kernel_sets(fake, rules) == d.steering().elements()  # the full sync after the rollback
    d.handle("add_service", {"proto": "tcp", "addr": VIPS[1], "port": 80, "sched": "rr"})  # rebuilds
    assert _kernel_sets(fake, rules) == d.steering().elements()


def test_shared_addresses_are_counted() -> None:
    state = State()
    key1, key2 = ServiceKey(6, VIPS[0], 80), ServiceKey(17, VIPS[0], 80)
    cache = SteeringCache()
    cache.rebuild(state)
    cmds = [AddService(ServiceSpec(key1)), AddService(ServiceSpec(key2)),
            AddDest(key1, DestSpec(RIPS[0], 80, fwd="masq")), AddDest(key2, DestSpec(RIPS[0], 80, fwd="masq")),
            AddLaddr(key1, LIPS[0])]
    state.apply_all(cmds)
    cache.update(state, cmds)
    state.apply(DelDest(key1, RIPS[0], 80))
    delta = cache.update(state, [DelDest(key1, RIPS[0], 80)])
    assert delta is not None
    assert delta.removed[NAT] == {f"{RIPS[0]},tcp:80"} and delta.removed[NATRIP] == set()  # key2 still needs the RIP
    state.apply(DelService(key1))
    delta = cache.update(state, [DelService(key1)])
    assert delta is not None
    assert delta.removed[ADDR] == {LIPS[0]}  # the VIP stays: key2 (UDP) has it


def test_the_raw_table_is_read_only_when_the_nftables_generation_moved() -> None:
    d, fake, rules = _director()
    generation = [7]
    rules._generation = lambda: generation[0]  # what lb.steerwatch.nft_generation says in lbd's own netns

    def listings() -> int:
        return sum(1 for cmd, _ in fake.calls if "-S" in cmd)

    svc = {"proto": "tcp", "addr": VIPS[0], "port": 80}
    d.handle("add_service", {**svc, "sched": "rr"})  # first change: the chains are checked once
    fake.calls.clear()
    d.handle("add_dest", {"service": svc, "dest": {"addr": RIPS[0], "port": 80}})
    d.handle("del_dest", {"service": svc, "dest": {"addr": RIPS[0], "port": 80}})
    assert listings() == 0  # nothing changed in nftables: no `iptables -S`
    generation[0] += 1  # someone changed a rule somewhere: the next change checks lbd's chains
    d.handle("add_dest", {"service": svc, "dest": {"addr": RIPS[1], "port": 80}})
    assert listings() == 1
    # a flushed chain found that way is put back, not refused
    fake.listing = "\n".join(line for line in HEALTHY if not line.startswith("-A LBD-Q3 "))
    generation[0] += 1
    fake.calls.clear()
    d.handle("del_dest", {"service": svc, "dest": {"addr": RIPS[1], "port": 80}})
    assert any(":LBD-Q3 - [0:0]" in script for script in fake.scripts())
    # the whole chain gone (`iptables -t raw -F; -X`): recreated with its jump by the change
    fake.listing = "\n".join(line for line in HEALTHY if "LBD-Q3" not in line or "LBD-Q3-" in line.split(" -j ")[0])
    generation[0] += 1
    fake.calls.clear()
    d.handle("add_dest", {"service": svc, "dest": {"addr": RIPS[2], "port": 80}})
    script = fake.scripts()[-1]
    assert ":LBD-Q3 - [0:0]" in script and "-A PREROUTING -j LBD-Q3" in script
