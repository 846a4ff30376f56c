"""Control-protocol requests (docs/control-protocol.md) as reconcile Commands: every field checked,
with IPVS's errno for what is wrong (EINVAL, ENOENT for an unknown scheduler, EOPNOTSUPP with
lb.unimplemented's message for what lbd does not implement), before anything is applied."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lb import unimplemented
from lb.engine import EngineError
from lb.model import (
    DEFAULT_SCHEDULER,
    PROTO_BY_NAME,
    SCHEDULERS,
    DestSpec,
    ServiceKey,
    ServiceSpec,
    parse_ipv4,
    sched_flag_bits,
    unknown_scheduler,
)
from lb.reconcile import (
    SPEC_FIELDS,
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
    SetSynproxy,
    SetTimeout,
    StateError,
    Timeouts,
    Zero,
    as_int,
    as_mapping,
    checked,
    synproxy_from_json,
)


def _unsupported(args: Mapping[str, Any], names: Mapping[str, str], what: str) -> None:
    """EOPNOTSUPP for the first request field set whose option (names: field -> lbadm option) lbd
    does not implement, with lb.unimplemented's message."""
    for name, option in names.items():
        if args.get(name):
            raise StateError("EOPNOTSUPP", f"{what}: {unimplemented.entry(option).message}")


def _ipv4_only(addr: Any) -> None:
    if ":" in str(addr):
        raise StateError("EOPNOTSUPP", unimplemented.entry("ipv6").message)


def parse_key(raw: Any) -> ServiceKey:
    args = as_mapping(raw, "service")
    if args.get("ipv6"):
        raise StateError("EOPNOTSUPP", unimplemented.entry("ipv6").message)
    if args.get("fwmark"):
        return checked(lambda: ServiceKey.for_fwmark(as_int(args["fwmark"], "fwmark")))
    proto = str(args.get("proto", "")).lower()
    if proto == "sctp":
        raise StateError("EOPNOTSUPP", unimplemented.entry("sctp-service").message)
    if proto not in PROTO_BY_NAME:
        raise StateError("EINVAL", f"protocol {args.get('proto')!r} is not supported (tcp, udp)")
    for name in ("addr", "port"):
        if name not in args:
            raise StateError("EINVAL", f"service needs '{name}'")
    _ipv4_only(args["addr"])
    return checked(lambda: ServiceKey(PROTO_BY_NAME[proto], str(args["addr"]), as_int(args["port"], "port")))


def parse_spec(raw: Any) -> ServiceSpec:
    args = as_mapping(raw, "service")
    key = parse_key(args)
    _unsupported(args, {"pe": "pe"}, f"service {key}")
    sched = args.get("sched") or DEFAULT_SCHEDULER
    if sched not in SCHEDULERS:
        # Checked before building the spec: IPVS answers ENOENT ("Scheduler or persistence
        # engine not found"), whereas ServiceSpec would only say ConfigError (EINVAL).
        raise StateError("ENOENT", unknown_scheduler(str(sched)))
    flags = args.get("sched_flags") or []
    persistent = args.get("persistent")
    extra: dict[str, Any] = {"synproxy": bool(args.get("synproxy", False))} if "synproxy" in SPEC_FIELDS else {}
    proxy = args.get("proxy_protocol")
    return checked(lambda: ServiceSpec(
        key=key,
        sched=str(sched),
        sched_flags=sched_flag_bits(str(sched), flags),
        persistent=None if persistent is None else as_int(persistent, "persistent"),
        netmask=str(args.get("netmask") or "255.255.255.255"),
        toa=bool(args.get("toa", False)),
        ops=bool(args.get("ops", False)),
        proxy_protocol=None if proxy is None else str(proxy),
        **extra,
    ))


def parse_dest(raw: Any) -> DestSpec:
    args = as_mapping(raw, "dest")
    if "addr" not in args or "port" not in args:
        raise StateError("EINVAL", "dest needs 'addr' and 'port'")
    tun_type = args.get("tun_type") or "ipip"
    if tun_type != "ipip":
        raise StateError("EOPNOTSUPP", unimplemented.entry("tun-type").message)
    _ipv4_only(args["addr"])
    return checked(lambda: DestSpec(
        addr=str(args["addr"]),
        port=as_int(args["port"], "port"),
        fwd=str(args.get("fwd", "route")),
        weight=as_int(args.get("weight", 1), "weight"),
        u_threshold=as_int(args.get("u_threshold", 0), "u_threshold"),
        l_threshold=as_int(args.get("l_threshold", 0), "l_threshold"),
    ))


def parse_command(op: str, raw_args: Any) -> Command:
    """A control-protocol request as a Command; StateError (EINVAL, ENOENT, EOPNOTSUPP) if malformed."""
    args = as_mapping(raw_args if raw_args is not None else {}, f"{op} args")
    if op == "add_service":
        return AddService(parse_spec(args))
    if op == "edit_service":
        return EditService(parse_spec(args))
    if op == "del_service":
        return DelService(parse_key(args))
    if op in ("add_dest", "edit_dest"):
        key, dest = parse_key(args.get("service")), parse_dest(args.get("dest"))
        return AddDest(key, dest) if op == "add_dest" else EditDest(key, dest)
    if op == "del_dest":
        key = parse_key(args.get("service"))
        d = as_mapping(args.get("dest"), "dest")
        if "addr" not in d or "port" not in d:
            raise StateError("EINVAL", "dest needs 'addr' and 'port'")
        _ipv4_only(d["addr"])
        probe = checked(lambda: DestSpec(addr=str(d["addr"]), port=as_int(d["port"], "port")))
        return DelDest(key, probe.addr, probe.port)
    if op in ("add_laddr", "del_laddr"):
        key = parse_key(args.get("service"))
        _ipv4_only(args.get("addr"))
        addr = checked(lambda: parse_ipv4(str(args.get("addr"))))
        return AddLaddr(key, addr) if op == "add_laddr" else DelLaddr(key, addr)
    if op == "clear":
        return Clear()
    if op == "zero":
        return Zero(parse_key(args["service"]) if args.get("service") else None)
    if op == "set_timeout":
        return SetTimeout(checked(lambda: Timeouts.from_json(args)))
    if op == "set_synproxy":
        sp_key = parse_key(args["service"]) if args.get("service") else None
        conf = args.get("conf")
        if sp_key is None and conf is None:
            raise StateError("EINVAL", "set_synproxy: the global default needs 'conf'")
        return SetSynproxy(sp_key, synproxy_from_json(conf) if conf is not None else None)
    raise StateError("EOPNOTSUPP", f"{op!r} is not a table-changing operation")


class BatchError(EngineError):
    """A refused request inside a `batch`: `index` is its position (0-based), `op` its operation."""

    def __init__(self, errno_name: str, message: str, index: int, op: str, reason: str = "") -> None:
        super().__init__(errno_name, message)
        self.index = index
        self.op = op
        self.reason = reason or message  # without the "request N (...)" prefix
