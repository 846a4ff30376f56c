"""Frozen value types shared by the control plane, both engines and lbadm.

These describe *configuration* (what the operator asked for) and *observations*
(what an engine reports). They carry no behaviour beyond validation and
conversion, so every module can import them without pulling in I/O.
"""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from lb import consts as C
from lb.vocab import (  # noqa: F401 (the vocabulary, re-exported: lb.model is every value type's home)
    _FLAG_BIT,
    DEFAULT_SCHEDULER,
    FORWARD_NAMES,
    FWMARK_MAX,
    FWMARK_PROTO,
    MAX_THRESHOLD,
    MAX_WEIGHT,
    PROTO_BY_NAME,
    PROTO_NAMES,
    PROTO_TCP,
    PROTO_UDP,
    SCHED_FLAG_ALL,
    SCHED_FLAG_WORDS,
    SCHEDULERS,
    ConfigError,
    _flag_names,
    sched_flag_bits,
    sched_flag_names,
    unknown_scheduler,
)

if TYPE_CHECKING:
    from lb.vocab import Forward  # noqa: F401 (re-exported for type annotations)


@functools.lru_cache(maxsize=1 << 16)
def parse_ipv4(text: str) -> str:
    """Return the canonical dotted-quad form of an IPv4 address or raise ConfigError.
    Cached: 10,000 services and their destinations are parsed on every listing (issue 15)."""
    try:
        addr = ipaddress.IPv4Address(text)
    except (ipaddress.AddressValueError, ValueError) as exc:
        raise ConfigError(f"invalid IPv4 address {text!r}") from exc
    return str(addr)


def check_port(port: int, *, allow_zero: bool = False) -> int:
    if not isinstance(port, int) or isinstance(port, bool):
        raise ConfigError(f"port must be an integer, got {port!r}")
    low = 0 if allow_zero else 1
    if not low <= port <= 65535:
        raise ConfigError(f"port {port} out of range {low}..65535")
    return port


@dataclass(frozen=True, order=True)
class ServiceKey:
    """Identifies a virtual service: protocol, virtual address, virtual port."""

    proto: int
    addr: str
    port: int

    def __post_init__(self) -> None:
        if self.proto == FWMARK_PROTO:
            object.__setattr__(self, "addr", parse_ipv4(self.addr))
            if self.port != 0 or self.addr == "0.0.0.0":
                raise ConfigError("a fwmark service has a mark of 1 or more and no port")
            return
        if self.proto not in PROTO_NAMES:
            raise ConfigError(f"unsupported protocol {self.proto}")
        object.__setattr__(self, "addr", parse_ipv4(self.addr))
        check_port(self.port, allow_zero=True)

    @classmethod
    def for_fwmark(cls, mark: int) -> ServiceKey:
        if isinstance(mark, bool) or not isinstance(mark, int) or not 1 <= mark <= FWMARK_MAX:
            raise ConfigError(f"fwmark {mark!r} out of range 1..{FWMARK_MAX}")
        return cls(FWMARK_PROTO, str(ipaddress.IPv4Address(mark)), 0)

    @property
    def fwmark(self) -> int:
        """The mark of a fwmark service, 0 for a <protocol, address, port> one."""
        return int(ipaddress.IPv4Address(self.addr)) if self.proto == FWMARK_PROTO else 0

    @property
    def proto_name(self) -> str:
        return "FWM" if self.proto == FWMARK_PROTO else PROTO_NAMES[self.proto]

    def __str__(self) -> str:
        if self.proto == FWMARK_PROTO:
            return f"FWM {self.fwmark}"
        return f"{self.proto_name} {self.addr}:{self.port}"

    def to_json(self) -> dict[str, object]:
        if self.proto == FWMARK_PROTO:
            # as the kernel reports one (ipvsadm sets protocol TCP, unused; no address, no port)
            return {"fwmark": self.fwmark, "proto": "tcp", "addr": "0.0.0.0", "port": 0}
        return {"proto": self.proto_name.lower(), "addr": self.addr, "port": self.port}

    @classmethod
    def from_json(cls, obj: dict[str, object]) -> ServiceKey:
        if obj.get("fwmark"):
            return cls.for_fwmark(int(obj["fwmark"]))  # type: ignore[call-overload]
        proto = PROTO_BY_NAME.get(str(obj.get("proto", "")).lower())
        if proto is None:
            raise ConfigError(f"unknown protocol {obj.get('proto')!r}")
        return cls(proto, str(obj["addr"]), int(obj["port"]))  # type: ignore[call-overload]


PROXY_PROTOCOL_VERSIONS = (None, "v1", "v2")  # ServiceSpec.proxy_protocol: off, text, binary


def _proxy_protocol(value: object) -> str | None:
    return None if value is None else str(value)


@dataclass(frozen=True)
class ServiceSpec:
    key: ServiceKey
    sched: str = DEFAULT_SCHEDULER
    persistent: int | None = None  # persistence timeout in seconds, None = off
    netmask: str = "255.255.255.255"
    toa: bool = False  # FULLNAT: client address to real servers in TCP option 254
    synproxy: bool = False  # answer SYNs with cookies, open to the real server after the ACK
    sched_flags: int = 0  # bits 1, 2, 4: ipvsadm's flag-1..3 (sched_flag_names)
    ops: bool = False  # ipvsadm -o: one-packet scheduling (each UDP datagram scheduled afresh, no entry kept)
    proxy_protocol: str | None = None  # FULLNAT TCP: "v1" or "v2": a PROXY header before the client's data

    def __post_init__(self) -> None:
        if self.proxy_protocol not in PROXY_PROTOCOL_VERSIONS:
            raise ConfigError(f"PROXY protocol version {self.proxy_protocol!r} is not one of v1, v2")
        if self.sched not in SCHEDULERS:
            raise ConfigError(unknown_scheduler(self.sched))
        if not isinstance(self.sched_flags, int) or not 0 <= self.sched_flags <= SCHED_FLAG_ALL:
            raise ConfigError(f"scheduler flags {self.sched_flags!r} out of range 0..{SCHED_FLAG_ALL}")
        if self.persistent is not None and not 1 <= self.persistent <= 2**31 - 1:
            raise ConfigError(f"persistence timeout {self.persistent} out of range")
        parse_ipv4(self.netmask)

    def to_json(self) -> dict[str, object]:
        return {
            **self.key.to_json(),
            "sched": self.sched,
            "persistent": self.persistent,
            "netmask": self.netmask,
            "toa": self.toa,
            "synproxy": self.synproxy,
            "sched_flags": sched_flag_names(self.sched, self.sched_flags),
            "ops": self.ops,
            "proxy_protocol": self.proxy_protocol,
        }

    @classmethod
    def from_json(cls, obj: dict[str, object]) -> ServiceSpec:
        persistent = obj.get("persistent")
        return cls(
            key=ServiceKey.from_json(obj),
            sched=str(obj.get("sched", DEFAULT_SCHEDULER)),
            persistent=None if persistent is None else int(persistent),  # type: ignore[call-overload]
            netmask=str(obj.get("netmask", "255.255.255.255")),
            toa=bool(obj.get("toa", False)),
            synproxy=bool(obj.get("synproxy", False)),
            sched_flags=sched_flag_bits(str(obj.get("sched", DEFAULT_SCHEDULER)), obj.get("sched_flags") or []),
            ops=bool(obj.get("ops", False)),
            proxy_protocol=_proxy_protocol(obj.get("proxy_protocol")),
        )


@dataclass(frozen=True)
class DestSpec:
    addr: str
    port: int
    fwd: str = "route"  # ipvsadm's default (-g)
    weight: int = 1
    u_threshold: int = 0
    l_threshold: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "addr", parse_ipv4(self.addr))
        check_port(self.port, allow_zero=True)
        if self.fwd not in FORWARD_NAMES:
            raise ConfigError(f"unknown forwarding method {self.fwd!r}")
        if not isinstance(self.weight, int) or not 0 <= self.weight <= MAX_WEIGHT:
            raise ConfigError(f"weight {self.weight!r} out of range 0..{MAX_WEIGHT}")
        for name in ("u_threshold", "l_threshold"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 0 <= value <= MAX_THRESHOLD:
                raise ConfigError(f"{name} {value!r} out of range 0..{MAX_THRESHOLD}")

    def to_json(self) -> dict[str, object]:
        return {
            "addr": self.addr,
            "port": self.port,
            "fwd": self.fwd,
            "weight": self.weight,
            "u_threshold": self.u_threshold,
            "l_threshold": self.l_threshold,
        }

    @classmethod
    def from_json(cls, obj: dict[str, object]) -> DestSpec:
        return cls(
            addr=str(obj["addr"]),
            port=int(obj["port"]),  # type: ignore[call-overload]
            fwd=str(obj.get("fwd", "route")),
            weight=int(obj.get("weight", 1)),  # type: ignore[call-overload]
            u_threshold=int(obj.get("u_threshold", 0)),  # type: ignore[call-overload]
            l_threshold=int(obj.get("l_threshold", 0)),  # type: ignore[call-overload]
        )


@dataclass
class Stats:
    """Cumulative counters, as IPVS keeps per service and per destination."""

    conns: int = 0
    inpkts: int = 0
    outpkts: int = 0
    inbytes: int = 0
    outbytes: int = 0

    def to_json(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class DestInfo:
    spec: DestSpec
    active: int = 0
    inactive: int = 0
    persist: int = 0
    stats: Stats = field(default_factory=Stats)
    syn_retrans: int = 0  # client SYNs repeated on connections already forwarded here
    handshakes: int = 0  # connections whose handshake completed (client ACK seen)
    # The engine's own rate estimates (cps, inpps, outpps, inbps, outbps: the C engine's, lb_est_tick);
    # None: the director estimates them (lb/estimator.py, the Python engine). Not part of equality.
    rates: dict[str, int] | None = field(default=None, compare=False)


@dataclass(frozen=True)
class SynproxyConf:
    """SYN-proxy settings (lb_api.h struct lb_synproxy_conf), global or per service."""

    init_rto_ms: int = C.LB_SP_INIT_RTO_MS_DEFAULT
    max_rto_ms: int = C.LB_SP_MAX_RTO_MS_DEFAULT
    max_retries: int = C.LB_SP_MAX_RETRIES_DEFAULT
    mss: int = C.LB_SP_MSS_DEFAULT
    sack: bool = bool(C.LB_SP_SACK_DEFAULT)
    wscale: int = 0  # only 0 (no window scaling) is supported
    timestamps: bool = False  # only off is supported
    defer: bool = False
    data_max_bytes: int = C.LB_SP_DATA_MAX_BYTES_DEFAULT
    ack_storm_max: int = C.LB_SP_ACK_STORM_MAX_DEFAULT

    def __post_init__(self) -> None:
        if not 1 <= self.init_rto_ms <= self.max_rto_ms <= C.LB_SP_RTO_MS_MAX:
            raise ConfigError(f"SYN-proxy timeouts need 1 <= init_rto_ms <= max_rto_ms <= {C.LB_SP_RTO_MS_MAX}")
        if not 0 <= self.max_retries <= C.LB_SP_MAX_RETRIES_MAX:
            raise ConfigError(f"SYN-proxy max_retries {self.max_retries} out of range 0..{C.LB_SP_MAX_RETRIES_MAX}")
        if not C.LB_SP_MSS_MIN <= self.mss <= C.LB_SP_MSS_MAX:
            raise ConfigError(f"SYN-proxy mss {self.mss} out of range {C.LB_SP_MSS_MIN}..{C.LB_SP_MSS_MAX}")
        if self.wscale or self.timestamps:
            raise ConfigError("SYN-proxy supports neither window scaling nor timestamps (documented subset)")
        if not 0 <= self.data_max_bytes <= C.LB_SP_DATA_MAX_BYTES_MAX:
            raise ConfigError(f"SYN-proxy data_max_bytes {self.data_max_bytes} out of range "
                              f"0..{C.LB_SP_DATA_MAX_BYTES_MAX}")

    def to_json(self) -> dict[str, object]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class LaddrInfo:
    """A FULLNAT local address of a service and how many connections use it."""

    addr: str
    conns: int = 0


@dataclass
class ServiceInfo:
    spec: ServiceSpec
    dests: list[DestInfo] = field(default_factory=list)
    stats: Stats = field(default_factory=Stats)
    laddrs: list[LaddrInfo] = field(default_factory=list)
    rates: dict[str, int] | None = field(default=None, compare=False)  # as DestInfo.rates


# ipvsadm -Lnc's state of a persistence template once one of its connections was established (TCP) or
# answered (UDP): the kernel's ip_vs_ctpl_state_name_table; before that a template shows NONE.
TEMPLATE_ASSURED = "ASSURED"


@dataclass(frozen=True)
class ConnInfo:
    """One connection entry, as `ipvsadm -Lnc` shows it."""

    proto: int
    caddr: str
    cport: int
    vaddr: str
    vport: int
    daddr: str
    dport: int
    state: str
    expires_ms: int
    laddr: str = "0.0.0.0"  # FULLNAT local address
    lport: int = 0

    def to_json(self) -> dict[str, object]:
        return {
            "proto": PROTO_NAMES[self.proto].lower() if self.proto in PROTO_NAMES else "ip",  # fwmark templates: IP
            "caddr": self.caddr,
            "cport": self.cport,
            "vaddr": self.vaddr,
            "vport": self.vport,
            "daddr": self.daddr,
            "dport": self.dport,
            "state": self.state,
            "expires_ms": self.expires_ms,
            "laddr": self.laddr,
            "lport": self.lport,
        }
