"""TOML configuration: parsing and validation into model objects.

The whole file is validated before anything is applied; an invalid file
changes nothing and the error names the file, the line where it can be placed
and the reason. Parsing uses the standard library's TOML parser (tomllib);
since tomllib does not report value positions, lines of semantic errors are
found by locating the offending table header in the text.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lb.model import PROTO_BY_NAME, ConfigError, DestSpec, ServiceKey, ServiceSpec

SERVICE_KEYS = {"proto", "addr", "port", "sched", "persistent", "netmask", "dest"}
DEST_KEYS = {"addr", "port", "fwd", "weight", "u_threshold", "l_threshold"}


@dataclass(frozen=True)
class ServiceConfig:
    spec: ServiceSpec
    dests: tuple[DestSpec, ...]


@dataclass(frozen=True)
class Config:
    path: str
    services: tuple[ServiceConfig, ...]


def _header_lines(text: str, header: str) -> list[int]:
    pattern = re.compile(r"^\s*\[\[\s*" + re.escape(header) + r"\s*\]\]\s*(#.*)?$")
    return [i + 1 for i, line in enumerate(text.splitlines()) if pattern.match(line)]


def _int(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(f"{what} must be an integer, got {value!r}")
    return value


def _str(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{what} must be a string, got {value!r}")
    return value


def _service(raw: dict[str, Any]) -> ServiceConfig:
    unknown = set(raw) - SERVICE_KEYS
    if unknown:
        raise ConfigError(f"unknown key(s) in [[service]]: {', '.join(sorted(unknown))}")
    for required in ("proto", "addr", "port"):
        if required not in raw:
            raise ConfigError(f"[[service]] needs '{required}'")
    proto = PROTO_BY_NAME.get(_str(raw["proto"], "proto").lower())
    if proto is None:
        raise ConfigError(f"proto must be 'tcp' or 'udp', got {raw['proto']!r}")
    key = ServiceKey(proto, _str(raw["addr"], "addr"), _int(raw["port"], "port"))
    persistent = raw.get("persistent")
    spec = ServiceSpec(
        key=key,
        sched=_str(raw.get("sched", "wlc"), "sched"),
        persistent=None if persistent is None else _int(persistent, "persistent"),
        netmask=_str(raw.get("netmask", "255.255.255.255"), "netmask"),
    )
    dests = []
    seen: set[tuple[str, int]] = set()
    for d in raw.get("dest", []):
        if not isinstance(d, dict):
            raise ConfigError("[[service.dest]] entries must be tables")
        unknown = set(d) - DEST_KEYS
        if unknown:
            raise ConfigError(f"unknown key(s) in [[service.dest]]: {', '.join(sorted(unknown))}")
        if "addr" not in d:
            raise ConfigError("[[service.dest]] needs 'addr'")
        dest = DestSpec(
            addr=_str(d["addr"], "dest addr"),
            port=_int(d.get("port", key.port), "dest port"),
            fwd=_str(d.get("fwd", "route"), "fwd"),
            weight=_int(d.get("weight", 1), "weight"),
            u_threshold=_int(d.get("u_threshold", 0), "u_threshold"),
            l_threshold=_int(d.get("l_threshold", 0), "l_threshold"),
        )
        if (dest.addr, dest.port) in seen:
            raise ConfigError(f"destination {dest.addr}:{dest.port} listed twice in {key}")
        seen.add((dest.addr, dest.port))
        dests.append(dest)
    return ServiceConfig(spec, tuple(dests))


def parse_config(text: str, path: str = "<string>") -> Config:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # tomllib's message already ends with "(at line N, column M)".
        raise ConfigError(f"{path}: {exc}") from exc
    unknown = set(data) - {"service"}
    if unknown:
        raise ConfigError(f"{path}: unknown top-level key(s): {', '.join(sorted(unknown))}")
    raw_services = data.get("service", [])
    if not isinstance(raw_services, list):
        raise ConfigError(f"{path}: 'service' must be an array of tables ([[service]])")
    lines = _header_lines(text, "service")
    services: list[ServiceConfig] = []
    seen: dict[ServiceKey, int] = {}
    for i, raw in enumerate(raw_services):
        line = lines[i] if i < len(lines) else 0
        where = f"{path}:{line}" if line else path
        try:
            svc = _service(raw)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from exc
        if svc.spec.key in seen:
            raise ConfigError(f"{where}: duplicate service {svc.spec.key} (first defined at line {seen[svc.spec.key]})")
        seen[svc.spec.key] = line
        services.append(svc)
    return Config(path, tuple(services))


def load_config(path: str) -> Config:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    return parse_config(text, path)


def apply_config(director: Any, config: Config) -> None:
    """Install a validated configuration into an empty director."""
    for svc in config.services:
        director.handle("add_service", svc.spec.to_json())
        for dest in svc.dests:
            director.handle("add_dest", {"service": svc.spec.key.to_json(), "dest": dest.to_json()})
