"""The table-changing commands as values, and the values they carry.

One typed, frozen value per table-changing control operation (docs/control-protocol.md): its
request (`op` and `args`, what lbd's engines receive) and its description in lbadm (ipvsadm)
syntax, for plans and logs. The table model that applies them and the plan between two states
live in lb.reconcile, which re-exports everything here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from lb.model import ConfigError, DestSpec, ServiceKey, ServiceSpec, SynproxyConf, sched_flag_names

MAX_TIMEOUT_S = 86400 * 31  # ipvsadm's MAX_TIMEOUT (31 days), for --set and -p


class StateError(Exception):
    """A command is refused by the table model. `errno_name` is the IPVS errno for it."""

    def __init__(self, errno_name: str, message: str) -> None:
        super().__init__(message)
        self.errno_name = errno_name


# ---------------------------------------------------------------------------- values


@dataclass(frozen=True)
class Timeouts:
    """Connection timeouts in seconds, as `ipvsadm --set tcp tcpfin udp` / `-L --timeout`."""

    tcp: int
    tcpfin: int
    udp: int

    def __post_init__(self) -> None:
        for name in ("tcp", "tcpfin", "udp"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_TIMEOUT_S:
                raise ConfigError(f"{name} timeout {value!r} out of range 0..{MAX_TIMEOUT_S} seconds")

    def merged(self, update: Timeouts) -> Timeouts:
        """`update` over self; 0 in `update` keeps the current value (ipvsadm --set semantics)."""
        return Timeouts(update.tcp or self.tcp, update.tcpfin or self.tcpfin, update.udp or self.udp)

    def to_json(self) -> dict[str, int]:
        return {"tcp": self.tcp, "tcpfin": self.tcpfin, "udp": self.udp}

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Timeouts:
        return cls(as_int(obj.get("tcp", 0), "tcp"), as_int(obj.get("tcpfin", 0), "tcpfin"),
                   as_int(obj.get("udp", 0), "udp"))


# IPVS's defaults (ip_vs_proto_tcp.c ESTABLISHED / FIN_WAIT, ip_vs_proto_udp.c NORMAL);
# native/src/proto_tcp.c uses the same values.
DEFAULT_TIMEOUTS = Timeouts(tcp=900, tcpfin=120, udp=300)


# ---------------------------------------------------------------------------- request values (lb.requests)


def as_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise StateError("EINVAL", f"{what} must be an integer, got {value!r}")
    return value


def as_mapping(value: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise StateError("EINVAL", f"{what} must be an object, got {value!r}")
    return value


def checked(build: Any) -> Any:
    """build(), with a model ConfigError as StateError EINVAL."""
    try:
        return build()
    except ConfigError as exc:
        raise StateError("EINVAL", str(exc)) from exc


# ---------------------------------------------------------------------------- commands

_PROTO_SWITCH = {"tcp": "-t", "udp": "-u"}
SPEC_FIELDS = tuple(f for f in ("sched", "sched_flags", "persistent", "netmask", "toa", "synproxy", "ops",
                                 "proxy_protocol")
                    if f in ServiceSpec.__dataclass_fields__)
FWD_SWITCH = {"route": "-g", "tunnel": "-i", "masq": "-m", "fullnat": "-b"}


def _svc_words(key: ServiceKey) -> str:
    if key.fwmark:
        return f"-f {key.fwmark}"
    return f"{_PROTO_SWITCH[key.proto_name.lower()]} {key.addr}:{key.port}"


def _spec_words(spec: ServiceSpec) -> str:
    words = f"{_svc_words(spec.key)} -s {spec.sched}"
    if spec.sched_flags:
        words += f" -b {','.join(sched_flag_names(spec.sched, spec.sched_flags))}"
    if spec.persistent is not None:
        words += f" -p {spec.persistent}"
        if spec.netmask != "255.255.255.255":
            words += f" -M {spec.netmask}"
    if spec.ops:
        words += " -o"
    if getattr(spec, "synproxy", False):
        words += " -j enable"
    if spec.toa:
        words += " --toa"
    if spec.proxy_protocol:
        words += f" --proxy-protocol {spec.proxy_protocol}"
    return words


def _dest_words(dest: DestSpec) -> str:
    words = f"-r {dest.addr}:{dest.port} {FWD_SWITCH[dest.fwd]} -w {dest.weight}"
    if dest.u_threshold:
        words += f" -x {dest.u_threshold}"
    if dest.l_threshold:
        words += f" -y {dest.l_threshold}"
    return words


def _changes(old: object, new: object, names: Iterable[str]) -> str:
    diffs = [f"{n} {getattr(old, n)!r} -> {getattr(new, n)!r}" for n in names if getattr(old, n) != getattr(new, n)]
    return f"  # {', '.join(diffs)}" if diffs else ""


@dataclass(frozen=True)
class Command:
    """Base of the table-changing commands. `line`: source line (configuration), for messages."""

    op: ClassVar[str] = ""
    line: int = field(default=0, compare=False, kw_only=True)

    def args(self) -> dict[str, Any]:
        raise NotImplementedError

    def request(self) -> dict[str, Any]:
        return {"op": self.op, "args": self.args()}

    def describe(self) -> str:
        """The command as lbadm (ipvsadm) syntax, for plan output and logs."""
        raise NotImplementedError


@dataclass(frozen=True)
class AddService(Command):
    op: ClassVar[str] = "add_service"
    spec: ServiceSpec

    def args(self) -> dict[str, Any]:
        return self.spec.to_json()

    def describe(self) -> str:
        return f"-A {_spec_words(self.spec)}"


@dataclass(frozen=True)
class EditService(Command):
    op: ClassVar[str] = "edit_service"
    spec: ServiceSpec
    was: ServiceSpec | None = field(default=None, compare=False)

    def args(self) -> dict[str, Any]:
        return self.spec.to_json()

    def describe(self) -> str:
        note = _changes(self.was, self.spec, SPEC_FIELDS) if self.was else ""
        return f"-E {_spec_words(self.spec)}{note}"


@dataclass(frozen=True)
class DelService(Command):
    op: ClassVar[str] = "del_service"
    key: ServiceKey

    def args(self) -> dict[str, Any]:
        return self.key.to_json()

    def describe(self) -> str:
        return f"-D {_svc_words(self.key)}"


@dataclass(frozen=True)
class AddDest(Command):
    op: ClassVar[str] = "add_dest"
    key: ServiceKey
    dest: DestSpec

    def args(self) -> dict[str, Any]:
        return {"service": self.key.to_json(), "dest": self.dest.to_json()}

    def describe(self) -> str:
        return f"-a {_svc_words(self.key)} {_dest_words(self.dest)}"


@dataclass(frozen=True)
class EditDest(Command):
    op: ClassVar[str] = "edit_dest"
    key: ServiceKey
    dest: DestSpec
    was: DestSpec | None = field(default=None, compare=False)

    def args(self) -> dict[str, Any]:
        return {"service": self.key.to_json(), "dest": self.dest.to_json()}

    def describe(self) -> str:
        note = _changes(self.was, self.dest, ("fwd", "weight", "u_threshold", "l_threshold")) if self.was else ""
        return f"-e {_svc_words(self.key)} {_dest_words(self.dest)}{note}"


@dataclass(frozen=True)
class DelDest(Command):
    op: ClassVar[str] = "del_dest"
    key: ServiceKey
    addr: str
    port: int

    def args(self) -> dict[str, Any]:
        return {"service": self.key.to_json(), "dest": {"addr": self.addr, "port": self.port}}

    def describe(self) -> str:
        return f"-d {_svc_words(self.key)} -r {self.addr}:{self.port}"


@dataclass(frozen=True)
class _LaddrCommand(Command):
    """A FULLNAT local address of a service: DPVS's `-P`/`-Q ... -z ADDR`."""

    switch: ClassVar[str] = ""
    key: ServiceKey
    addr: str

    def args(self) -> dict[str, Any]:
        return {"service": self.key.to_json(), "addr": self.addr}

    def describe(self) -> str:
        return f"{self.switch} {_svc_words(self.key)} -z {self.addr}"


@dataclass(frozen=True)
class AddLaddr(_LaddrCommand):
    op: ClassVar[str] = "add_laddr"
    switch: ClassVar[str] = "-P"


@dataclass(frozen=True)
class DelLaddr(_LaddrCommand):
    op: ClassVar[str] = "del_laddr"
    switch: ClassVar[str] = "-Q"


@dataclass(frozen=True)
class Clear(Command):
    op: ClassVar[str] = "clear"

    def args(self) -> dict[str, Any]:
        return {}

    def describe(self) -> str:
        return "-C"


@dataclass(frozen=True)
class Zero(Command):
    op: ClassVar[str] = "zero"
    key: ServiceKey | None = None

    def args(self) -> dict[str, Any]:
        return {"service": self.key.to_json()} if self.key is not None else {}

    def describe(self) -> str:
        return f"-Z {_svc_words(self.key)}" if self.key is not None else "-Z"


@dataclass(frozen=True)
class SetTimeout(Command):
    op: ClassVar[str] = "set_timeout"
    timeouts: Timeouts

    def args(self) -> dict[str, Any]:
        return self.timeouts.to_json()

    def describe(self) -> str:
        t = self.timeouts
        return f"--set {t.tcp} {t.tcpfin} {t.udp}"


SYNPROXY_FIELDS = tuple(SynproxyConf.__dataclass_fields__)


def synproxy_to_json(conf: SynproxyConf) -> dict[str, Any]:
    return {name: getattr(conf, name) for name in SYNPROXY_FIELDS}


def synproxy_from_json(obj: Any) -> SynproxyConf:
    """A complete or partial settings object (missing fields take SynproxyConf's defaults)."""
    args = as_mapping(obj, "SYN-proxy settings")
    unknown = [k for k in args if k not in SYNPROXY_FIELDS]
    if unknown:
        raise StateError("EINVAL", f"unknown SYN-proxy setting(s) {', '.join(map(repr, unknown))} "
                                   f"(known: {', '.join(SYNPROXY_FIELDS)})")
    values: dict[str, Any] = {}
    for name, value in args.items():
        if name in ("sack", "timestamps", "defer"):
            if not isinstance(value, bool):
                raise StateError("EINVAL", f"SYN-proxy {name} must be a boolean, got {value!r}")
            values[name] = value
        else:
            values[name] = as_int(value, f"SYN-proxy {name}")
    return checked(lambda: SynproxyConf(**values))


def _synproxy_words(conf: SynproxyConf | None) -> str:
    if conf is None:
        return "default"
    base = SynproxyConf()
    diffs = [f"{n}={getattr(conf, n)}" for n in SYNPROXY_FIELDS if getattr(conf, n) != getattr(base, n)]
    return " ".join(diffs) if diffs else "(built-in defaults)"


@dataclass(frozen=True)
class SetSynproxy(Command):
    """SYN-proxy settings: the global default (key None) or one service's override (conf None: back
    to the default). No ipvsadm/DPVS syntax: TOML `[synproxy]` / `[service.synproxy]` tables."""

    op: ClassVar[str] = "set_synproxy"
    key: ServiceKey | None
    conf: SynproxyConf | None

    def args(self) -> dict[str, Any]:
        out: dict[str, Any] = {"conf": synproxy_to_json(self.conf) if self.conf is not None else None}
        if self.key is not None:
            out["service"] = self.key.to_json()
        return out

    def describe(self) -> str:
        where = _svc_words(self.key) if self.key is not None else "default"
        return f"# synproxy {where}: {_synproxy_words(self.conf)}"


AnyCommand = (AddService | EditService | DelService | AddDest | EditDest | DelDest | AddLaddr | DelLaddr
              | Clear | Zero | SetTimeout | SetSynproxy)
COMMAND_TYPES: dict[str, type[Command]] = {
    c.op: c for c in (AddService, EditService, DelService, AddDest, EditDest, DelDest,
                      AddLaddr, DelLaddr, Clear, Zero, SetTimeout, SetSynproxy)
}
