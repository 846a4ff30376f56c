"""The steering (lb.ipsets set elements, fwmarks) kept up to date change by change (issue 15 item 2).

Director.steering() builds the whole Steering from the model, and SetManager.sync diffs every
set's full content: both walk every service. At 10,000 services that was ~30-40 ms of lbd's
time per `lbadm` command, most of the command's cost. This cache keeps, for each service, the
set elements it contributes (its "contribution"), and for each element the number of services
contributing it (a VIP with several ports, a NAT real server or a local address shared between
services). A change recomputes the contributions of only the services its commands name, and
the elements whose count goes 0 -> 1 (added) or 1 -> 0 (removed) are the delta that one
`ipset restore` sends (SetManager.apply): the cost of a command is what it changes.

Invariant: between changes, `elements()` equals `steering_of(model).elements()` (Director.
steering) for the model the cache was last updated from; tests/unit/test_steeringcache.py
checks it over random command sequences. The cache is tied to one model object: a model that
was replaced (re-read from the engine) or a change that failed halfway (`drop()`) makes the next
change rebuild it from the whole model and sync the sets to the whole content, as before.

The contribution of a service mirrors Director.steering() followed by Steering.elements():
- a service with a port: ADDR gets its VIP, SVC "vip,proto:port"; a port-0 service: TCP0/UDP0
  its VIP; its local addresses go to ADDR;
- a FULLNAT destination: FNAT "rip,proto:rport,lip" (port-less: FNATTCP0/FNATUDP0 "rip") and
  ADDR lip, for each local address (and each protocol of a fwmark service);
- a NAT (masq) destination: NATRIP its address, NAT "rip,proto:rport" when its replies come from a
  fixed port, else NATTCP0/NATUDP0 its address (lb.ipsets.nat_reply_port); a fwmark service's NAT
  destination for both TCP and UDP: the mark may gather both;
- a fwmark service: only its mark (queued from mangle, lb.iptables), and its NAT destinations.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Protocol

from lb.ipsets import (
    ADDR,
    KINDS,
    NATRIP,
    SetDelta,
    SetKind,
    _addr,
    _fnat_element,
    _nat_element,
    _service_element,
    nat_reply_port,
)
from lb.model import FWMARK_PROTO, ServiceKey
from lb.reconcile import Clear, Command, State

Element = tuple[SetKind, str]  # (set kind, element text as `ipset save` prints it)

# A change naming more services than this share of the model is applied by a rebuild (a large
# restore or reload): the same result, without per-service bookkeeping for each command.
REBUILD_SHARE = 0.5


def _nat_protos(key: ServiceKey) -> tuple[int, ...]:
    return (6, 17) if key.fwmark else (key.proto,)


def contribution(key: ServiceKey, svc: Any) -> tuple[tuple[Element, ...], int | None]:
    """(set elements, fwmark or None) that one service (lb.reconcile.ServiceState) needs, each once."""
    out: dict[Element, None] = {}
    fwmark = key.proto == FWMARK_PROTO
    if not fwmark:
        kind, vip, element = _service_element(key.proto, key.addr, key.port)
        out[(ADDR, vip)] = None
        out[(kind, element)] = None
    for la in svc.laddrs:
        out[(ADDR, _addr(la))] = None
    for spec in svc.dests.values():
        if spec.fwd == "masq":
            rport = nat_reply_port(key.port, svc.spec.persistent is not None, spec.port)
            for proto in _nat_protos(key):
                out[_nat_element(proto, spec.addr, rport)] = None
                out[(NATRIP, _addr(spec.addr))] = None
        elif spec.fwd == "fullnat":
            rport = nat_reply_port(key.port, svc.spec.persistent is not None, spec.port)
            for proto in _nat_protos(key):
                for la in svc.laddrs:
                    kind, element, lip = _fnat_element(proto, spec.addr, rport, la)
                    out[(kind, element)] = None
                    out[(ADDR, lip)] = None
    return tuple(out), (key.fwmark if fwmark else None)


class SteeringCache:
    """Per-service contributions and element reference counts of one model (module doc)."""

    def __init__(self) -> None:
        self._model: State | None = None  # the model the cache describes (None: build it first)
        self._contrib: dict[ServiceKey, tuple[tuple[Element, ...], int | None]] = {}
        self._counts: dict[Element, int] = {}
        self._marks: dict[int, int] = {}

    @property
    def valid(self) -> bool:
        return self._model is not None

    def drop(self) -> None:
        """Forget everything: the next update rebuilds from the whole model."""
        self._model = None
        self._contrib = {}
        self._counts = {}
        self._marks = {}

    def elements(self) -> dict[SetKind, set[str]]:
        """Every set's whole content (what Steering.elements() gives for the same model)."""
        out: dict[SetKind, set[str]] = {k: set() for k in KINDS}
        for kind, element in self._counts:
            out[kind].add(element)
        return out

    def fwmarks(self) -> set[int]:
        return set(self._marks)

    def rebuild(self, model: State) -> None:
        self.drop()
        for key, svc in model.services.items():
            self._add(key, contribution(key, svc), None)
        self._model = model

    def update(self, model: State, cmds: Iterable[Command]) -> SetDelta | None:
        """Bring the cache from the model it describes to `model` after `cmds` were applied to it.
        Returns the delta, or None when the cache was (re)built from the whole model (it was
        invalid, the model object changed, or the change was a Clear or touched most services):
        the caller then syncs the sets to elements()."""
        keys: dict[ServiceKey, None] = {}
        for cmd in cmds:
            if isinstance(cmd, Clear):
                self.rebuild(model)
                return None
            key = getattr(cmd, "key", None)
            spec = getattr(cmd, "spec", None)
            if key is None and spec is not None:
                key = spec.key
            if key is not None:
                keys[key] = None
        if self._model is not model or len(keys) > REBUILD_SHARE * max(len(model.services), 1) + 16:
            self.rebuild(model)
            return None
        delta = SetDelta()
        for key in keys:
            old = self._contrib.pop(key, None)
            svc = model.services.get(key)
            if old is not None:
                self._remove(old, delta)
            if svc is not None:
                self._add(key, contribution(key, svc), delta)
        # an element removed and re-added by the same change (e.g. an edited service) is no change
        for kind in KINDS:
            both = delta.added[kind] & delta.removed[kind]
            if both:
                delta.added[kind] -= both
                delta.removed[kind] -= both
        return delta

    def _add(self, key: ServiceKey, contrib: tuple[tuple[Element, ...], int | None], delta: SetDelta | None) -> None:
        self._contrib[key] = contrib
        counts = self._counts
        elements, mark = contrib
        for e in elements:
            n = counts.get(e, 0)
            counts[e] = n + 1
            if n == 0 and delta is not None:
                delta.added[e[0]].add(e[1])
        if mark is not None:
            self._marks[mark] = self._marks.get(mark, 0) + 1

    def _remove(self, contrib: tuple[tuple[Element, ...], int | None], delta: SetDelta) -> None:
        counts = self._counts
        elements, mark = contrib
        for e in elements:
            n = counts[e] - 1
            if n:
                counts[e] = n
            else:
                del counts[e]
                delta.removed[e[0]].add(e[1])
        if mark is not None:
            n = self._marks[mark] - 1
            if n:
                self._marks[mark] = n
            else:
                del self._marks[mark]


class IncrementalRules(Protocol):
    """What lb.iptables.RuleManager offers for a change (besides sync)."""

    def apply(self, delta: SetDelta | None, elements: Callable[[], dict[SetKind, set[str]]],
              fwmarks: set[int]) -> object: ...


def sync_change(rules: Any, cache: SteeringCache, model: State, cmds: list[Command], full: Any) -> None:
    """Make `rules` steer `model` after `cmds` changed it: only the delta when the rules can take
    one (RuleManager.apply), else the whole steering (`full()`, Director.steering) through
    rules.sync. On any failure the cache is dropped (the caller rolls the model back and syncs
    the whole steering again)."""
    if not hasattr(rules, "apply"):
        rules.sync(full())
        return
    try:
        delta = cache.update(model, cmds)
        rules.apply(delta, cache.elements, cache.fwmarks())
    except BaseException:
        cache.drop()
        raise
