"""Configuration files: TOML (configs/reference.toml) or ipvsadm-save output, validated whole.

`load_config(path)` returns a `Config` or raises `ConfigErrors` listing EVERY problem found,
each as "FILE:LINE: reason". Nothing is applied from a file with any error (keepalived's
approach: validate completely, then act).

tomllib reports positions only for syntax errors: lb.tomllines finds the line of each table and
key itself.

ipvsadm-save files (`ipvsadm -S`, `lbadm -S`) are recognised by content: their first statement
starts with "-" (or the word ipvsadm/lbadm), which no TOML statement can. They are parsed line
by line with lbadm's own command-line parser, so they mean exactly what `lbadm -R` makes of them
(lb/config_ipvsadm.py).
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lb import consts as C
from lb.model import (
    DEFAULT_SCHEDULER,
    FORWARD_NAMES,
    FWMARK_MAX,
    MAX_THRESHOLD,
    MAX_WEIGHT,
    PROTO_BY_NAME,
    SCHED_FLAG_WORDS,
    SCHEDULERS,
    ConfigError,
    DestSpec,
    ServiceKey,
    ServiceSpec,
    SynproxyConf,
    sched_flag_bits,
)
from lb.reconcile import (
    DEFAULT_TIMEOUTS,
    MAX_TIMEOUT_S,
    ServiceState,
    State,
    Timeouts,
)
from lb.tomllines import Path_, TomlLines

SERVICE_KEYS = ("proto", "addr", "port", "fwmark", "sched", "sched_flags", "ops", "persistent", "netmask", "toa", "synproxy",
                "proxy_protocol", "laddrs", "dest")
PROXY_PROTOCOL_CHOICES = ("off", "v1", "v2")  # [[service]] proxy_protocol: "off" is ServiceSpec's None
DEST_KEYS = ("addr", "port", "fwd", "weight", "u_threshold", "l_threshold")
TIMEOUT_KEYS = ("tcp", "tcpfin", "udp")
TOP_KEYS = ("service", "timeouts", "synproxy")
# lb.model.SynproxyConf's fields, with their ranges (lb_api.h struct lb_synproxy_conf). wscale and
# timestamps are the documented subset: only 0 / false.
SYNPROXY_INTS = {
    "init_rto_ms": (1, C.LB_SP_RTO_MS_MAX),
    "max_rto_ms": (1, C.LB_SP_RTO_MS_MAX),
    "max_retries": (0, C.LB_SP_MAX_RETRIES_MAX),
    "mss": (C.LB_SP_MSS_MIN, C.LB_SP_MSS_MAX),
    "wscale": (0, 0),
    "data_max_bytes": (0, C.LB_SP_DATA_MAX_BYTES_MAX),
    "ack_storm_max": (0, 2**32 - 1),  # uint32_t
}
_BUILTIN_SYNPROXY = SynproxyConf()  # the settings of a service without [service.synproxy] and no [synproxy]
SYNPROXY_BOOLS = ("sack", "timestamps", "defer")
SYNPROXY_KEYS = tuple(SynproxyConf.__dataclass_fields__)
SERVICE_SYNPROXY_KEYS = ("enabled", *SYNPROXY_KEYS)



# ---------------------------------------------------------------------------- errors


@dataclass(frozen=True)
class ConfigIssue:
    path: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.reason}"


class ConfigErrors(ConfigError):
    """Every problem of one configuration file, in line order."""

    def __init__(self, issues: list[ConfigIssue]) -> None:
        self.issues = sorted(issues, key=lambda i: i.line)
        super().__init__("\n".join(str(i) for i in self.issues))


# ---------------------------------------------------------------------------- result


@dataclass(frozen=True)
class DestConfig:
    spec: DestSpec
    line: int


@dataclass(frozen=True)
class ServiceConfig:
    spec: ServiceSpec
    dests: tuple[DestConfig, ...] = ()
    laddrs: tuple[str, ...] = ()
    line: int = 0
    laddrs_line: int = 0
    synproxy_conf: SynproxyConf | None = None  # [service.synproxy] settings; None: the global ones
    synproxy_line: int = 0


@dataclass(frozen=True)
class Config:
    path: str
    services: tuple[ServiceConfig, ...] = ()
    timeouts: Timeouts | None = None  # None: the file does not manage timeouts
    timeouts_line: int = 0
    kind: str = "toml"  # "toml" | "ipvsadm-save"
    synproxy_default: SynproxyConf | None = None  # [synproxy]; None: not managed by the file
    synproxy_line: int = 0

    def state(self) -> State:
        """The desired state this file describes, with source lines for messages."""
        state = State(timeouts=self.timeouts, synproxy_default=self.synproxy_default)
        if self.timeouts is not None:
            state.lines[("timeouts",)] = self.timeouts_line
        if self.synproxy_default is not None:
            state.lines[("synproxy",)] = self.synproxy_line
        for svc in self.services:
            key = svc.spec.key
            state.services[key] = ServiceState(
                svc.spec, {(d.spec.addr, d.spec.port): d.spec for d in svc.dests}, dict.fromkeys(svc.laddrs),
                svc.synproxy_conf,
            )
            state.lines[("svc", key)] = svc.line
            if svc.synproxy_conf is not None:
                state.lines[("synproxy", key)] = svc.synproxy_line or svc.line
            for d in svc.dests:
                state.lines[("dest", key, d.spec.addr, d.spec.port)] = d.line
            for a in svc.laddrs:
                state.lines[("laddr", key, a)] = svc.laddrs_line or svc.line
        return state

    def summary(self) -> str:
        n_dests = sum(len(s.dests) for s in self.services)
        n_laddrs = sum(len(s.laddrs) for s in self.services)
        return f"{len(self.services)} services, {n_dests} destinations, {n_laddrs} local addresses"


# ---------------------------------------------------------------------------- validation


def _type_name(value: Any) -> str:
    return {bool: "boolean", int: "integer", float: "float", str: "string", list: "array", dict: "table"}.get(
        type(value), type(value).__name__)


class _Checker:
    """Collects issues against one file; value getters report and return None when invalid."""

    def __init__(self, path: str, lines: TomlLines) -> None:
        self.path = path
        self.lines = lines
        self.issues: list[ConfigIssue] = []

    def add(self, where: Path_, key: str | None, reason: str) -> None:
        self.issues.append(ConfigIssue(self.path, self.lines.line(where, key), reason))

    def unknown(self, where: Path_, table: dict[str, Any], known: tuple[str, ...], what: str) -> None:
        for k in table:
            if k not in known:
                self.add(where, k, f"unknown key '{k}' in {what} (known: {', '.join(known)})")

    def integer(self, where: Path_, table: dict[str, Any], key: str, low: int, high: int,
                default: int | None = None) -> int | None:
        if key not in table:
            return default
        value = table[key]
        if isinstance(value, bool) or not isinstance(value, int):
            self.add(where, key, f"'{key}' must be an integer, got {_type_name(value)} {value!r}")
            return None
        if not low <= value <= high:
            self.add(where, key, f"'{key}' {value} out of range {low}..{high}")
            return None
        return value

    def string(self, where: Path_, table: dict[str, Any], key: str, default: str | None = None) -> str | None:
        if key not in table:
            return default
        value = table[key]
        if not isinstance(value, str):
            self.add(where, key, f"'{key}' must be a string, got {_type_name(value)} {value!r}")
            return None
        return value

    def choice(self, where: Path_, table: dict[str, Any], key: str, choices: tuple[str, ...],
               default: str) -> str | None:
        value = self.string(where, table, key, default)
        if value is not None and value not in choices:
            self.add(where, key, f"'{key}' must be one of {', '.join(choices)}, got {value!r}")
            return None
        return value

    def boolean(self, where: Path_, table: dict[str, Any], key: str) -> bool | None:
        value = table.get(key, False)
        if not isinstance(value, bool):
            self.add(where, key, f"'{key}' must be a boolean (true/false), got {_type_name(value)} {value!r}")
            return None
        return value

    def address(self, where: Path_, table: dict[str, Any], key: str, what: str) -> str | None:
        value = self.string(where, table, key)
        if value is None:
            return None
        try:
            return str(ipaddress.IPv4Address(value))
        except ValueError:
            self.add(where, key, f"bad {what} {value!r}: not an IPv4 address")
            return None

    def require(self, where: Path_, table: dict[str, Any], keys: tuple[str, ...], what: str) -> bool:
        missing = [k for k in keys if k not in table]
        for k in missing:
            self.add(where, None, f"{what} needs '{k}'")
        return not missing


def _check_sched_flags(c: _Checker, where: Path_, raw: dict[str, Any], sched: str | None) -> int | None:
    """`sched_flags`: ipvsadm's -b names as an array (sh-fallback, sh-port, mh-fallback, mh-port for
    their own scheduler; flag-1..3 for any), as lb.model reads them; the bits, or None (reported)."""
    value = raw.get("sched_flags", [])
    if not isinstance(value, list) or not all(isinstance(name, str) for name in value):
        c.add(where, "sched_flags", "'sched_flags' must be an array of flag names (e.g. [\"sh-fallback\", "
                                    f"\"sh-port\"]), got {_type_name(value)} {value!r}")
        return None
    if sched is None:
        return None  # the scheduler itself is wrong: reported already
    try:
        return sched_flag_bits(sched, value)
    except ConfigError as exc:
        c.add(where, "sched_flags", f"{exc} (flags: {', '.join(SCHED_FLAG_WORDS)}; sh-* only with sched = \"sh\", "
                                    "mh-* only with sched = \"mh\")")
        return None


def _netmask_ok(text: str) -> bool:
    try:
        ipaddress.IPv4Network(f"0.0.0.0/{text}")
    except ValueError:
        return False
    return True


def _check_dest(c: _Checker, where: Path_, raw: Any, svc_port: int | None) -> DestConfig | None:
    if not isinstance(raw, dict):
        c.add(where, None, f"[[service.dest]] entries must be tables, got {_type_name(raw)}")
        return None
    c.unknown(where, raw, DEST_KEYS, "[[service.dest]]")
    if not c.require(where, raw, ("addr",), "[[service.dest]]"):
        return None
    addr = c.address(where, raw, "addr", "destination address")
    fwd = c.choice(where, raw, "fwd", tuple(FORWARD_NAMES), "route")
    port = c.integer(where, raw, "port", 0, 65535, svc_port)
    weight = c.integer(where, raw, "weight", 0, MAX_WEIGHT, 1)
    u_thr = c.integer(where, raw, "u_threshold", 0, MAX_THRESHOLD, 0)
    l_thr = c.integer(where, raw, "l_threshold", 0, MAX_THRESHOLD, 0)
    if u_thr is not None and l_thr is not None and l_thr > u_thr:
        c.add(where, "l_threshold", f"l_threshold {l_thr} is higher than u_threshold {u_thr}")
        return None
    if (fwd in ("route", "tunnel") and svc_port is not None and port is not None and "port" in raw
            and port != svc_port):
        c.add(where, "port", f"fwd = \"{fwd}\" cannot change the port: the real server receives the "
                             f"service's port {svc_port}; omit 'port' or set it to {svc_port}")
        return None
    if None in (addr, fwd, port, weight, u_thr, l_thr):
        return None
    assert addr is not None and fwd is not None and port is not None and weight is not None
    assert u_thr is not None and l_thr is not None
    spec = DestSpec(addr=addr, port=port, fwd=fwd, weight=weight, u_threshold=u_thr, l_threshold=l_thr)
    return DestConfig(spec, c.lines.line(where))


def _check_synproxy(c: _Checker, where: Path_, raw: Any, base: SynproxyConf, known: tuple[str, ...],
                    what: str) -> tuple[SynproxyConf | None, bool]:
    """A [synproxy] / [service.synproxy] table over `base`: (settings, ok). Settings None: no key given."""
    if not isinstance(raw, dict):
        c.add(where[:-1], where[-1], f"{what} must be a table, got {_type_name(raw)}")
        return None, False
    c.unknown(where, raw, known, what)
    ok = all(k in known for k in raw)
    values: dict[str, Any] = {}
    for key, (low, high) in SYNPROXY_INTS.items():
        if key not in raw:
            continue
        if (low, high) == (0, 0) and raw[key] != 0 and isinstance(raw[key], int) and not isinstance(raw[key], bool):
            c.add(where, key, f"'{key}' must be 0: SYN-proxy supports no window scaling (the documented subset)")
            ok = False
            continue
        value = c.integer(where, raw, key, low, high)
        if value is None:
            ok = False
        else:
            values[key] = value
    for key in SYNPROXY_BOOLS:
        if key not in raw:
            continue
        value = c.boolean(where, raw, key)
        if value is None:
            ok = False
        elif key == "timestamps" and value:
            c.add(where, key, "'timestamps' must be false: SYN-proxy supports no timestamps (the documented subset)")
            ok = False
        else:
            values[key] = value
    if not ok:
        return None, False
    if not values:
        return None, True
    merged = {**base.to_json(), **values}
    if merged["init_rto_ms"] > merged["max_rto_ms"]:
        key = "init_rto_ms" if "init_rto_ms" in values else "max_rto_ms"
        c.add(where, key, f"init_rto_ms {merged['init_rto_ms']} is higher than max_rto_ms {merged['max_rto_ms']}")
        return None, False
    try:
        return SynproxyConf(**merged), True
    except ConfigError as exc:
        c.add(where, None, f"{what}: {exc}")
        return None, False


def _check_service(c: _Checker, where: Path_, raw: Any, sp_base: SynproxyConf = _BUILTIN_SYNPROXY) -> ServiceConfig | None:
    if not isinstance(raw, dict):
        c.add(where, None, f"[[service]] entries must be tables, got {_type_name(raw)}")
        return None
    c.unknown(where, raw, SERVICE_KEYS, "[[service]]")
    persistent = c.integer(where, raw, "persistent", 1, MAX_TIMEOUT_S)
    fwmark: int | None = None
    if "fwmark" in raw:  # ipvsadm -f MARK: the operator's MARK rules say which packets it takes
        fwmark = c.integer(where, raw, "fwmark", 1, FWMARK_MAX)
        clash = [k for k in ("proto", "addr", "port") if k in raw]
        if clash:
            c.add(where, clash[0], f"a fwmark service has no {', '.join(clash)}: its packets are those the "
                                   "firewall marks with it")
        complete = not clash and fwmark is not None
        proto: str | None = "tcp"  # ipvsadm's placeholder; the key is the mark's
        addr: str | None = "0.0.0.0"
        port: int | None = 0
    else:
        complete = c.require(where, raw, ("proto", "addr", "port"), "[[service]]")
        proto = c.choice(where, raw, "proto", tuple(PROTO_BY_NAME), "tcp") if "proto" in raw else None
        addr = c.address(where, raw, "addr", "service address") if "addr" in raw else None
        port = c.integer(where, raw, "port", 0, 65535) if "port" in raw else None
        if port == 0 and "persistent" not in raw:
            c.add(where, "port", "port 0 (any port) is only allowed for a persistent service")
            port = None
    sched = c.choice(where, raw, "sched", SCHEDULERS, DEFAULT_SCHEDULER)
    sched_flags = _check_sched_flags(c, where, raw, sched)
    ops = c.boolean(where, raw, "ops")
    if ops and proto == "tcp" and fwmark is None:
        c.add(where, "ops", "'ops' (one-packet scheduling, ipvsadm -o) is only for UDP services")
        ops = None
    netmask = c.string(where, raw, "netmask", "255.255.255.255")
    if netmask is not None and not _netmask_ok(netmask):
        c.add(where, "netmask", f"bad netmask {netmask!r}: not a contiguous IPv4 netmask")
        netmask = None
    toa = c.boolean(where, raw, "toa")
    proxy = c.choice(where, raw, "proxy_protocol", PROXY_PROTOCOL_CHOICES, "off")
    if proxy not in (None, "off") and (proto != "tcp" or fwmark is not None):
        c.add(where, "proxy_protocol", "'proxy_protocol' only applies to TCP services (FULLNAT)")
        proxy = None
    elif proxy not in (None, "off") and toa:
        c.add(where, "proxy_protocol", "'proxy_protocol' and 'toa' both pass the client's address to the real "
                                       "servers: choose one")
        proxy = None
    sp_conf: SynproxyConf | None = None
    sp_line = 0
    if isinstance(raw.get("synproxy"), dict):
        # [service.synproxy]: SYN-proxy on (unless enabled = false), with these settings over [synproxy]
        table = raw["synproxy"]
        sp_where = (*where, "synproxy")
        enabled = c.boolean(sp_where, table, "enabled") if "enabled" in table else True
        sp_conf, sp_ok = _check_synproxy(c, sp_where, table, sp_base, SERVICE_SYNPROXY_KEYS, "[service.synproxy]")
        synproxy = enabled if sp_ok else None
        sp_line = c.lines.line(sp_where)
    else:
        synproxy = c.boolean(where, raw, "synproxy")
    if synproxy and proto == "udp":
        c.add(where, "synproxy", "'synproxy' only applies to TCP services")
        synproxy = None
    laddrs = _check_laddrs(c, where, raw)
    label = f"{proto or '?'} {addr or '?'}:{port if port is not None else '?'}"

    dests: list[DestConfig] = []
    raw_dests = raw.get("dest", [])
    if not isinstance(raw_dests, list):
        c.add(where, "dest", f"'dest' must be an array of tables ([[service.dest]]), got {_type_name(raw_dests)}")
        raw_dests = []
    seen: dict[tuple[str, int], int] = {}
    for j, raw_dest in enumerate(raw_dests):
        dwhere = (*where, "dest", j)
        dest = _check_dest(c, dwhere, raw_dest, port)
        if dest is None:
            continue
        ident = (dest.spec.addr, dest.spec.port)
        if ident in seen:
            c.add(dwhere, None, f"duplicate destination {ident[0]}:{ident[1]} in {label} (first at line {seen[ident]})")
            continue
        seen[ident] = dest.line
        dests.append(dest)

    fullnat = any(d.spec.fwd == "fullnat" for d in dests)
    if fullnat and laddrs is not None and not laddrs:
        first = next(d for d in dests if d.spec.fwd == "fullnat")
        c.issues.append(ConfigIssue(c.path, first.line, f"fwd = \"fullnat\" needs local addresses: add "
                                                         f"laddrs = [\"...\"] to service {label}"))
    if ops:
        for d in dests:
            if d.spec.fwd == "fullnat":
                c.issues.append(ConfigIssue(c.path, d.line, "a one-packet service (ops = true) keeps no connection "
                                                             "entry, and fwd = \"fullnat\" needs one for the replies"))
                ops = None
    if synproxy:
        for d in dests:
            if d.spec.fwd != "fullnat":
                c.issues.append(ConfigIssue(c.path, d.line, f"a SYN-proxy service only forwards with fwd = \"fullnat\", "
                                                             f"not {d.spec.fwd!r}"))
                synproxy = None
    if proxy not in (None, "off"):
        for d in dests:
            if d.spec.fwd != "fullnat":
                c.issues.append(ConfigIssue(c.path, d.line, f"a PROXY protocol service (proxy_protocol = {proxy!r}) "
                                                             f"only forwards with fwd = \"fullnat\", not {d.spec.fwd!r}"))
                proxy = None
    if dests and not fullnat:
        if laddrs:
            c.add(where, "laddrs", "'laddrs' only applies to FULLNAT: no destination of this service has fwd = \"fullnat\"")
        if toa is True:
            c.add(where, "toa", "'toa' only applies to FULLNAT: no destination of this service has fwd = \"fullnat\"")
    if not complete or None in (proto, addr, port, sched, sched_flags, ops, netmask, toa, synproxy, proxy, laddrs) or (
            "persistent" in raw and persistent is None):
        return None
    assert proto is not None and addr is not None and port is not None and sched is not None and netmask is not None
    assert sched_flags is not None
    key = ServiceKey.for_fwmark(fwmark) if fwmark is not None else ServiceKey(PROTO_BY_NAME[proto], addr, port)
    extra: dict[str, Any] = {"synproxy": True} if synproxy else {}  # only passed when set: older models lack the field
    spec = ServiceSpec(key=key, sched=sched, persistent=persistent, netmask=netmask, toa=bool(toa),
                       sched_flags=sched_flags, ops=bool(ops), proxy_protocol=None if proxy == "off" else proxy,
                       **extra)
    return ServiceConfig(spec, tuple(dests), tuple(laddrs or ()), c.lines.line(where),
                         c.lines.line(where, "laddrs") if "laddrs" in raw else 0, sp_conf, sp_line)


def _check_laddrs(c: _Checker, where: Path_, raw: dict[str, Any]) -> list[str] | None:
    value = raw.get("laddrs", [])
    if not isinstance(value, list):
        c.add(where, "laddrs", f"'laddrs' must be an array of IPv4 addresses, got {_type_name(value)}")
        return None
    out: list[str] = []
    ok = True
    for item in value:
        try:
            if not isinstance(item, str):
                raise ValueError
            addr = str(ipaddress.IPv4Address(item))
        except ValueError:
            c.add(where, "laddrs", f"bad local address {item!r} in 'laddrs': not an IPv4 address")
            ok = False
            continue
        if addr in ("0.0.0.0", "255.255.255.255"):
            c.add(where, "laddrs", f"bad local address {addr} in 'laddrs': not a unicast address")
            ok = False
        elif addr in out:
            c.add(where, "laddrs", f"local address {addr} listed twice in 'laddrs'")
            ok = False
        else:
            out.append(addr)
    return out if ok else None


def _check_timeouts(c: _Checker, raw: Any) -> Timeouts | None:
    where: Path_ = ("timeouts",)
    if not isinstance(raw, dict):
        c.add((), "timeouts", f"'timeouts' must be a table ([timeouts]), got {_type_name(raw)}")
        return None
    c.unknown(where, raw, TIMEOUT_KEYS, "[timeouts]")
    values = [c.integer(where, raw, k, 1, MAX_TIMEOUT_S, getattr(DEFAULT_TIMEOUTS, k)) for k in TIMEOUT_KEYS]
    if None in values:
        return None
    tcp, tcpfin, udp = values
    assert tcp is not None and tcpfin is not None and udp is not None
    return Timeouts(tcp, tcpfin, udp)


def parse_toml(text: str, path: str = "<string>") -> Config:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"\(at line (\d+), column (\d+)\)", str(exc))
        line = int(m.group(1)) if m else 1
        reason = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(exc)) + (f" (column {m.group(2)})" if m else "")
        raise ConfigErrors([ConfigIssue(path, line, f"TOML syntax: {reason}")]) from exc
    c = _Checker(path, TomlLines(text))
    c.unknown((), data, TOP_KEYS, "the top level")
    timeouts = _check_timeouts(c, data["timeouts"]) if "timeouts" in data else None
    sp_default: SynproxyConf | None = None
    if "synproxy" in data:
        sp_default, sp_ok = _check_synproxy(c, ("synproxy",), data["synproxy"], SynproxyConf(), SYNPROXY_KEYS, "[synproxy]")
        if sp_ok and sp_default is None:
            sp_default = SynproxyConf()  # an empty [synproxy] table: the built-in defaults, managed
    raw_services = data.get("service", [])
    if not isinstance(raw_services, list):
        c.add((), "service", f"'service' must be an array of tables ([[service]]), got {_type_name(raw_services)}")
        raw_services = []
    services: list[ServiceConfig] = []
    seen: dict[ServiceKey, int] = {}
    for i, raw in enumerate(raw_services):
        svc = _check_service(c, ("service", i), raw, sp_default or SynproxyConf())
        if svc is None:
            continue
        if svc.spec.key in seen:
            c.add(("service", i), None, f"duplicate service {svc.spec.key} (first defined at line {seen[svc.spec.key]})")
            continue
        seen[svc.spec.key] = svc.line
        services.append(svc)
    if c.issues:
        raise ConfigErrors(c.issues)
    t_line = c.lines.line(("timeouts",)) if timeouts is not None else 0
    sp_line = c.lines.line(("synproxy",)) if sp_default is not None else 0
    return Config(path, tuple(services), timeouts, t_line, "toml", sp_default, sp_line)


# ---------------------------------------------------------------------------- ipvsadm-save


def is_ipvsadm_save(text: str) -> bool:
    for line in text.splitlines():
        stripped = line.split("#", 1)[0].strip()
        if stripped:
            return stripped.startswith("-") or stripped.split()[0] in ("ipvsadm", "lbadm")
    return False


# ---------------------------------------------------------------------------- entry points


def parse_config(text: str, path: str = "<string>") -> Config:
    if is_ipvsadm_save(text):
        from lb.config_ipvsadm import parse_ipvsadm_save  # it builds on this module's Config

        return parse_ipvsadm_save(text, path)
    return parse_toml(text, path)


# The last configuration parsed from each path, by content: reloading an unchanged file costs a
# read and a hash, not a parse (issue 15: a no-op reload of 10,000 services in well under 1 s).
_LOADED: dict[str, tuple[str, Config]] = {}


def load_config(path: str) -> Config:
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else f"not UTF-8 text ({exc.reason})"
        raise ConfigErrors([ConfigIssue(path, 0, f"cannot read: {reason}")]) from exc
    digest = hashlib.sha256(text.encode()).hexdigest()
    cached = _LOADED.get(path)
    if cached is not None and cached[0] == digest:
        return cached[1]
    config = parse_config(text, path)
    _LOADED[path] = (digest, config)
    return config

