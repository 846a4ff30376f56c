"""Director state as data: the table model, the commands that change it, and the plan between two states.

Three things live here, all pure (no I/O, no engine):

- `State`: what a director holds - services by identity (proto, addr, port), each with its
  destinations by (addr, port) and its FULLNAT local addresses - plus the connection timeouts.
  Dicts compare without regard to order, so two states are equal when they hold the same
  things, however they were built.
- `Command`s (lb.commands, re-exported here): one typed value per table-changing control
  operation (docs/control-protocol.md), with `State.apply` giving exactly the refusals the engines give (ESRCH, EEXIST, ENOENT,
  EINVAL) and `inverse` giving the commands that undo one. lbd validates a whole batch against
  a copy of the running state before the engine sees any of it, and rolls back with `inverse`.
- `plan(running, desired)`: the minimal list of commands that turns one state into the other.
  Invariant (the reason this module exists - see shared seed 003, where a wrong diff turned
  "add VIP 3 to [1,2,4,5]" into deleting and re-adding 4 and 5): an object present in both
  states is never deleted and re-created. A service whose scheduler, persistence, netmask or
  TOA flag changes gets one edit_service; a destination whose forwarding method, weight or
  thresholds change gets one edit_dest; an object identical in both is not mentioned at all.

SYN-proxy settings (lb.model.SynproxyConf) are part of the state too: a global default and, per
service, an optional override (None: the service follows the default). The engines cannot report
them, so lbd keeps the copy the model computes (Director). A SYN-proxy service (`-j enable`) only
takes FULLNAT destinations: the model refuses the others with EOPNOTSUPP, as the engines do.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from lb.commands import (
    COMMAND_TYPES,
    DEFAULT_TIMEOUTS,
    FWD_SWITCH,
    MAX_TIMEOUT_S,
    SPEC_FIELDS,
    SYNPROXY_FIELDS,
    AddDest,
    AddLaddr,
    AddService,
    AnyCommand,
    Clear,
    Command,
    DelDest,
    DelLaddr,
    DelService,
    EditDest,
    EditService,
    SetSynproxy,
    SetTimeout,
    StateError,
    Timeouts,
    Zero,
    as_int,
    as_mapping,
    checked,
    synproxy_from_json,
    synproxy_to_json,
)
from lb.model import (
    DestSpec,
    ServiceInfo,
    ServiceKey,
    ServiceSpec,
    SynproxyConf,
)

DestId = tuple[str, int]  # (addr, port) inside one service


@dataclass
class ServiceState:
    spec: ServiceSpec
    # Kernel list order (most recently added first) is kept for display; equality ignores it.
    dests: dict[DestId, DestSpec] = field(default_factory=dict)
    laddrs: dict[str, None] = field(default_factory=dict)  # an ordered set
    synproxy_conf: SynproxyConf | None = None  # None: the global default applies

    def copy(self) -> ServiceState:
        return ServiceState(self.spec, dict(self.dests), dict(self.laddrs), self.synproxy_conf)


# Where an object came from (a configuration file line), for error messages.
Origin = tuple[Any, ...]  # ("svc", key) | ("dest", key, addr, port) | ("laddr", key, addr) | ("timeouts",)


@dataclass
class State:
    services: dict[ServiceKey, ServiceState] = field(default_factory=dict)
    # None: not managed (a desired state without timeouts leaves the running ones alone).
    timeouts: Timeouts | None = None
    lines: dict[Origin, int] = field(default_factory=dict, compare=False)
    # The global SYN-proxy default; None: not managed, as timeouts.
    synproxy_default: SynproxyConf | None = None

    def copy(self) -> State:
        return State({k: s.copy() for k, s in self.services.items()}, self.timeouts, dict(self.lines),
                     self.synproxy_default)

    # ------------------------------------------------------------ construction
    @classmethod
    def from_services(cls, infos: Iterable[ServiceInfo], timeouts: Timeouts | None = None) -> State:
        """The state an engine reports (`Engine.services()`)."""
        services = {}
        for info in infos:
            services[info.spec.key] = ServiceState(
                info.spec,
                {(d.spec.addr, d.spec.port): d.spec for d in info.dests},
                {la.addr: None for la in info.laddrs},
            )
        return cls(services, timeouts)

    @classmethod
    def from_list_json(cls, listing: Mapping[str, Any], timeouts: Mapping[str, Any] | None = None) -> State:
        """The state lbd reports over the control socket (`list`, `get_timeout` results)."""
        services = {}
        for svc in listing.get("services", []):
            spec = ServiceSpec.from_json(svc)
            dests = {}
            for d in svc.get("dests", []):
                dest = DestSpec.from_json(d)
                dests[(dest.addr, dest.port)] = dest
            laddrs = {str(la["addr"]): None for la in svc.get("laddrs", [])}
            sp = svc.get("synproxy_conf")
            services[spec.key] = ServiceState(spec, dests, laddrs, synproxy_from_json(sp) if sp else None)
        default = listing.get("synproxy_default")
        return cls(services, Timeouts.from_json(timeouts) if timeouts is not None else None,
                   synproxy_default=synproxy_from_json(default) if default else None)

    # ------------------------------------------------------------ model of the engine
    def service(self, key: ServiceKey) -> ServiceState:
        svc = self.services.get(key)
        if svc is None:
            raise StateError("ESRCH", f"no service {key}")
        return svc

    def apply(self, cmd: Command) -> None:
        """Change this state as the engine would, or raise StateError as the engine would."""
        if isinstance(cmd, AddService):
            if cmd.spec.key in self.services:
                raise StateError("EEXIST", f"service {cmd.spec.key} already exists")
            _check_synproxy_spec(cmd.spec, {})
            _check_proxy_spec(cmd.spec, {})
            self.services[cmd.spec.key] = ServiceState(cmd.spec)
        elif isinstance(cmd, EditService):
            svc = self.service(cmd.spec.key)
            _check_synproxy_spec(cmd.spec, svc.dests)
            _check_proxy_spec(cmd.spec, svc.dests)
            _check_ops_spec(cmd.spec, svc.dests)
            svc.spec = cmd.spec
        elif isinstance(cmd, DelService):
            self.service(cmd.key)
            del self.services[cmd.key]
        elif isinstance(cmd, AddDest):
            svc = self.service(cmd.key)
            ident = (cmd.dest.addr, cmd.dest.port)
            if ident in svc.dests:
                raise StateError("EEXIST", f"destination {cmd.dest.addr}:{cmd.dest.port} already exists in {cmd.key}")
            _check_thresholds(cmd.key, cmd.dest)
            _check_synproxy_dest(svc.spec, cmd.dest)
            _check_proxy_dest(svc.spec, cmd.dest)
            _check_ops_dest(svc.spec, cmd.dest)
            svc.dests = {ident: cmd.dest, **svc.dests}  # kernel: list_add at the head
        elif isinstance(cmd, EditDest):
            svc = self.service(cmd.key)
            ident = (cmd.dest.addr, cmd.dest.port)
            if ident not in svc.dests:
                raise StateError("ENOENT", f"no destination {cmd.dest.addr}:{cmd.dest.port} in {cmd.key}")
            _check_thresholds(cmd.key, cmd.dest)
            _check_synproxy_dest(svc.spec, cmd.dest)
            _check_proxy_dest(svc.spec, cmd.dest)
            _check_ops_dest(svc.spec, cmd.dest)
            svc.dests[ident] = cmd.dest
        elif isinstance(cmd, DelDest):
            svc = self.service(cmd.key)
            if (cmd.addr, cmd.port) not in svc.dests:
                raise StateError("ENOENT", f"no destination {cmd.addr}:{cmd.port} in {cmd.key}")
            del svc.dests[(cmd.addr, cmd.port)]
        elif isinstance(cmd, AddLaddr):
            svc = self.service(cmd.key)
            if cmd.addr in ("0.0.0.0", "255.255.255.255"):
                raise StateError("EINVAL", f"local address {cmd.addr} is not a unicast address")
            if cmd.addr in svc.laddrs:
                raise StateError("EEXIST", f"local address {cmd.addr} already exists in {cmd.key}")
            svc.laddrs[cmd.addr] = None
        elif isinstance(cmd, DelLaddr):
            svc = self.service(cmd.key)
            if cmd.addr not in svc.laddrs:
                raise StateError("ENOENT", f"no local address {cmd.addr} in {cmd.key}")
            del svc.laddrs[cmd.addr]
        elif isinstance(cmd, Clear):
            self.services.clear()
        elif isinstance(cmd, Zero):
            if cmd.key is not None:
                self.service(cmd.key)
        elif isinstance(cmd, SetTimeout):
            self.timeouts = (self.timeouts or DEFAULT_TIMEOUTS).merged(cmd.timeouts)
        elif isinstance(cmd, SetSynproxy):
            if cmd.key is None:
                self.synproxy_default = cmd.conf or SynproxyConf()
            else:
                self.service(cmd.key).synproxy_conf = cmd.conf
        else:  # pragma: no cover - the union is closed
            raise StateError("EOPNOTSUPP", f"unknown command {cmd!r}")

    def apply_all(self, cmds: Iterable[Command]) -> State:
        for cmd in cmds:
            self.apply(cmd)
        return self

    def counts(self) -> tuple[int, int, int]:
        """(services, destinations, local addresses)."""
        svcs = self.services.values()
        return len(self.services), sum(len(s.dests) for s in svcs), sum(len(s.laddrs) for s in svcs)


SYNPROXY_NEEDS_FULLNAT = "SYN-proxy needs FULLNAT destinations (-b): DR and tunnel traffic cannot be proxied"


def _check_synproxy_spec(spec: ServiceSpec, dests: Mapping[DestId, DestSpec]) -> None:
    if not spec.synproxy:
        return
    if spec.key.proto_name != "TCP":
        raise StateError("EINVAL", f"service {spec.key}: SYN-proxy is for TCP services only")
    for d in dests.values():
        if d.fwd != "fullnat":
            raise StateError("EOPNOTSUPP", f"{SYNPROXY_NEEDS_FULLNAT} (service {spec.key}: destination "
                                           f"{d.addr}:{d.port} forwards with {FWD_SWITCH[d.fwd]})")


def _check_synproxy_dest(spec: ServiceSpec, dest: DestSpec) -> None:
    if spec.synproxy and dest.fwd != "fullnat":
        raise StateError("EOPNOTSUPP", f"{SYNPROXY_NEEDS_FULLNAT} (service {spec.key} has -j enable; "
                                       f"destination {dest.addr}:{dest.port} would forward with {FWD_SWITCH[dest.fwd]})")


PROXY_NEEDS_FULLNAT = ("the PROXY protocol needs FULLNAT destinations (-b): with DR, tunnel or NAT the real "
                       "server sees the client's own address")


def _check_proxy_spec(spec: ServiceSpec, dests: Mapping[DestId, DestSpec]) -> None:
    if spec.proxy_protocol is None:
        return
    if spec.key.proto_name != "TCP" or spec.key.fwmark:
        raise StateError("EINVAL", f"service {spec.key}: the PROXY protocol is for TCP services only")
    if spec.toa:
        raise StateError("EINVAL", f"service {spec.key}: --toa and --proxy-protocol both pass the client's address "
                                   "to the real servers: choose one")
    for d in dests.values():
        if d.fwd != "fullnat":
            raise StateError("EOPNOTSUPP", f"{PROXY_NEEDS_FULLNAT} (service {spec.key}: destination "
                                           f"{d.addr}:{d.port} forwards with {FWD_SWITCH[d.fwd]})")


def _check_proxy_dest(spec: ServiceSpec, dest: DestSpec) -> None:
    if spec.proxy_protocol is not None and dest.fwd != "fullnat":
        raise StateError("EOPNOTSUPP", f"{PROXY_NEEDS_FULLNAT} (service {spec.key} has --proxy-protocol "
                                       f"{spec.proxy_protocol}; destination {dest.addr}:{dest.port} would forward "
                                       f"with {FWD_SWITCH[dest.fwd]})")


OPS_NEEDS_AN_ENTRY = ("one-packet scheduling (-o) keeps no connection entry, and FULLNAT (-b) needs one: its "
                      "real servers reply to the director's local address (NAT's replies pass untranslated, as "
                      "the kernel's)")


def _ops_applies(spec: ServiceSpec) -> bool:
    """-o changes UDP services only (the kernel stores it on TCP ones and ignores it)."""
    return spec.ops and spec.key.proto_name == "UDP"


def _check_ops_spec(spec: ServiceSpec, dests: Mapping[DestId, DestSpec]) -> None:
    if not _ops_applies(spec):
        return
    for d in dests.values():
        if d.fwd == "fullnat":
            raise StateError("EOPNOTSUPP", f"{OPS_NEEDS_AN_ENTRY} (service {spec.key}: destination "
                                           f"{d.addr}:{d.port} forwards with -b)")


def _check_ops_dest(spec: ServiceSpec, dest: DestSpec) -> None:
    if _ops_applies(spec) and dest.fwd == "fullnat":
        raise StateError("EOPNOTSUPP", f"{OPS_NEEDS_AN_ENTRY} (service {spec.key} has -o; destination "
                                       f"{dest.addr}:{dest.port} would forward with -b)")


def _check_thresholds(key: ServiceKey, dest: DestSpec) -> None:
    # Kernel ip_vs_ctl.c refuses a lower threshold above the upper one, even when the upper is 0.
    if dest.l_threshold > dest.u_threshold:  # ERANGE, as the kernel: "Numerical result out of range"
        raise StateError("ERANGE", f"destination {dest.addr}:{dest.port} in {key}: lower threshold "
                                   f"{dest.l_threshold} is higher than upper threshold {dest.u_threshold}")



# ---------------------------------------------------------------------------- undo


def inverse(state: State, cmd: Command) -> list[Command]:
    """Commands that undo `cmd` when applied after it, computed from the state BEFORE it.

    Valid only if `cmd` applies to `state`. A deleted destination comes back at the head of
    its list (where IPVS puts any added destination); its connections were never lost, since
    the engines keep destinations with connections alive (IPVS's trash list) and revive them.
    `zero` changes nothing in the table model: its undo is the caller's (counter baselines).
    """
    if isinstance(cmd, AddService):
        return [DelService(cmd.spec.key)]
    if isinstance(cmd, EditService):
        return [EditService(state.service(cmd.spec.key).spec)]
    if isinstance(cmd, DelService):
        return _recreate(cmd.key, state.service(cmd.key))
    if isinstance(cmd, AddDest):
        return [DelDest(cmd.key, cmd.dest.addr, cmd.dest.port)]
    if isinstance(cmd, EditDest):
        return [EditDest(cmd.key, state.service(cmd.key).dests[(cmd.dest.addr, cmd.dest.port)])]
    if isinstance(cmd, DelDest):
        return [AddDest(cmd.key, state.service(cmd.key).dests[(cmd.addr, cmd.port)])]
    if isinstance(cmd, AddLaddr):
        return [DelLaddr(cmd.key, cmd.addr)]
    if isinstance(cmd, DelLaddr):
        return [AddLaddr(cmd.key, cmd.addr)]
    if isinstance(cmd, Clear):
        return [c for key, svc in state.services.items() for c in _recreate(key, svc)]
    if isinstance(cmd, SetTimeout):
        return [SetTimeout(state.timeouts or DEFAULT_TIMEOUTS)]
    if isinstance(cmd, SetSynproxy):
        if cmd.key is None:
            return [SetSynproxy(None, state.synproxy_default or SynproxyConf())]
        return [SetSynproxy(cmd.key, state.service(cmd.key).synproxy_conf)]
    return []


def _recreate(key: ServiceKey, svc: ServiceState) -> list[Command]:
    cmds: list[Command] = [AddService(svc.spec)]
    # Added tail first, so that the head-insertions rebuild the original list order.
    cmds += [AddDest(key, d) for d in reversed(list(svc.dests.values()))]
    cmds += [AddLaddr(key, a) for a in svc.laddrs]
    if svc.synproxy_conf is not None:
        cmds.append(SetSynproxy(key, svc.synproxy_conf))
    return cmds


# ---------------------------------------------------------------------------- plan


def plan(running: State, desired: State) -> list[Command]:
    """The minimal commands that turn `running` into `desired` (see the module docstring).

    Order: new services (complete with destinations and local addresses) first, then the
    changes inside services present in both - new local addresses and destinations before
    edits and removals, so a service never passes through "no destination" - then removed
    services, then timeouts. Each command carries the desired state's source line, if any.
    """
    lines = desired.lines
    steps: list[Command] = []
    if desired.synproxy_default is not None and desired.synproxy_default != (running.synproxy_default or SynproxyConf()):
        steps.append(SetSynproxy(None, desired.synproxy_default, line=lines.get(("synproxy",), 0)))
    for key, want in desired.services.items():
        if key in running.services:
            continue
        steps.append(AddService(want.spec, line=lines.get(("svc", key), 0)))
        if want.synproxy_conf is not None:
            steps.append(SetSynproxy(key, want.synproxy_conf, line=lines.get(("synproxy", key), 0)))
        steps += [AddDest(key, d, line=lines.get(("dest", key, d.addr, d.port), 0)) for d in want.dests.values()]
        steps += [AddLaddr(key, a, line=lines.get(("laddr", key, a), 0)) for a in want.laddrs]
    for key, want in desired.services.items():
        have = running.services.get(key)
        if have is None:
            continue
        # A service that becomes SYN-proxied must lose its non-FULLNAT destinations first, and one
        # that stops being proxied may take them only afterwards: the edit goes where it is valid.
        enabling = want.spec.synproxy and not have.spec.synproxy
        edit: list[Command] = []
        if have.spec != want.spec:
            edit.append(EditService(want.spec, was=have.spec, line=lines.get(("svc", key), 0)))
        if have.synproxy_conf != want.synproxy_conf:
            edit.append(SetSynproxy(key, want.synproxy_conf, line=lines.get(("synproxy", key), 0)))
        if not enabling:
            steps += edit
        steps += [AddLaddr(key, a, line=lines.get(("laddr", key, a), 0)) for a in want.laddrs if a not in have.laddrs]
        if enabling:  # removals and FULLNAT edits first, then the edit, then the additions
            steps += [DelDest(key, addr, port) for (addr, port) in have.dests if (addr, port) not in want.dests]
            steps += [EditDest(key, d, was=have.dests[i], line=lines.get(("dest", key, d.addr, d.port), 0))
                      for i, d in want.dests.items() if i in have.dests and have.dests[i] != d]
            steps += edit
            steps += [AddDest(key, d, line=lines.get(("dest", key, d.addr, d.port), 0))
                      for i, d in want.dests.items() if i not in have.dests]
            steps += [DelLaddr(key, a) for a in have.laddrs if a not in want.laddrs]
            continue
        for ident, d in want.dests.items():
            line = lines.get(("dest", key, d.addr, d.port), 0)
            old = have.dests.get(ident)
            if old is None:
                steps.append(AddDest(key, d, line=line))
            elif old != d:
                steps.append(EditDest(key, d, was=old, line=line))
        steps += [DelDest(key, addr, port) for (addr, port) in have.dests if (addr, port) not in want.dests]
        steps += [DelLaddr(key, a) for a in have.laddrs if a not in want.laddrs]
    steps += [DelService(key) for key in running.services if key not in desired.services]
    if desired.timeouts is not None and desired.timeouts != (running.timeouts or DEFAULT_TIMEOUTS):
        steps.append(SetTimeout(desired.timeouts, line=lines.get(("timeouts",), 0)))
    return steps


def describe_plan(steps: Iterable[Command]) -> list[str]:
    return [step.describe() for step in steps]


__all__ = [  # lb.reconcile's own names and the commands it re-exports (lb.commands)
    "AddDest",
    "AddLaddr",
    "AddService",
    "AnyCommand",
    "as_int",
    "as_mapping",
    "checked",
    "Clear",
    "Command",
    "COMMAND_TYPES",
    "DEFAULT_TIMEOUTS",
    "DelDest",
    "DelLaddr",
    "DelService",
    "describe_plan",
    "DestId",
    "EditDest",
    "EditService",
    "FWD_SWITCH",
    "inverse",
    "MAX_TIMEOUT_S",
    "OPS_NEEDS_AN_ENTRY",
    "Origin",
    "plan",
    "PROXY_NEEDS_FULLNAT",
    "ServiceState",
    "SetSynproxy",
    "SetTimeout",
    "SPEC_FIELDS",
    "State",
    "StateError",
    "SYNPROXY_FIELDS",
    "synproxy_from_json",
    "SYNPROXY_NEEDS_FULLNAT",
    "synproxy_to_json",
    "Timeouts",
    "Zero",
]
