"""What crosses the boundary between lb.model's records and the C core's structs (lb_api.h), for
lb.fastpath's CEngine: addresses as host-order integers (lb_api.h convention), the configuration
structs of a service, a destination, its forwarding state and SYN-proxy settings with their flag
bits, the info structs read back as ServiceSpec / DestInfo / ConnInfo / Stats, and C error codes as
EngineError with IPVS's errno names.

One job: conversions, both ways, kept side by side (a flag bit is written and read in one place).
No engine state: CEngine holds the lb_t and makes the calls.
"""

from __future__ import annotations

import functools
import ipaddress
import socket
from typing import Any

from lb._ffi import ffi, lib
from lb.engine import ERRNO_NAMES, FWD_IDS, FWD_NAMES, ConnState, EngineError, FwdState
from lb.model import TEMPLATE_ASSURED, ConnInfo, DestInfo, DestSpec, ServiceKey, ServiceSpec, Stats, SynproxyConf

# ServiceSpec.sched_flags bit i (flag-1, -2, -3) <-> struct lb_svc_conf.flags bit:
SCHED_FLAG_BITS = (lib.LB_SVC_F_SCHED1, lib.LB_SVC_F_SCHED2, lib.LB_SVC_F_SCHED3)
# ServiceSpec.proxy_protocol <-> struct lb_svc_conf.flags bit:
PROXY_BITS: dict[str | None, int] = {"v1": lib.LB_SVC_F_PROXY_V1, "v2": lib.LB_SVC_F_PROXY_V2}

RATE_NAMES: tuple[str, ...] = tuple(name for name, _ in ffi.typeof("struct lb_rates").fields)


@functools.lru_cache(maxsize=1 << 16)
def ip2int(addr: str) -> int:
    # Cached, and inet_aton (~10x cheaper than ipaddress): restoring 10,000 services converts
    # 30,000 addresses, listing them as many (issue 15). Addresses reach here canonical (lb.model).
    try:
        return int.from_bytes(socket.inet_aton(addr), "big")
    except OSError:
        return int(ipaddress.IPv4Address(addr))  # ipaddress's own error for what is not an address


def int2ip(value: int) -> str:
    # inet_ntoa is ~20x cheaper than ipaddress and gives the same dotted quad.
    return socket.inet_ntoa(value.to_bytes(4, "big"))


def check(rc: int, what: str) -> int:
    if rc < 0:
        name = ERRNO_NAMES.get(rc, "EIO")
        raise EngineError(name, f"{what}: {ffi.string(lib.lb_strerror(rc)).decode()}")
    return rc


def rates_of(r: object) -> dict[str, int]:
    """struct lb_rates as lbadm's rate fields (lb.estimator.RATE_FIELDS)."""
    return {name: getattr(r, name) for name in RATE_NAMES}


def stats_of(c: object) -> Stats:
    return Stats(
        conns=c.conns,  # type: ignore[attr-defined]
        inpkts=c.inpkts,  # type: ignore[attr-defined]
        outpkts=c.outpkts,  # type: ignore[attr-defined]
        inbytes=c.inbytes,  # type: ignore[attr-defined]
        outbytes=c.outbytes,  # type: ignore[attr-defined]
    )


def key_args(key: ServiceKey) -> tuple[int, int, int]:
    """A service's key as the C calls take it: protocol, address, port."""
    return key.proto, ip2int(key.addr), key.port


def svc_conf(spec: ServiceSpec) -> object:
    conf = ffi.new("struct lb_svc_conf *")
    conf.proto = spec.key.proto
    conf.addr = ip2int(spec.key.addr)
    conf.port = spec.key.port
    conf.sched = spec.sched.encode()
    conf.persist_timeout_s = spec.persistent or 0
    conf.netmask = ip2int(spec.netmask)
    conf.flags = ((lib.LB_SVC_F_TOA if spec.toa else 0) | (lib.LB_SVC_F_SYNPROXY if spec.synproxy else 0)
                  | (lib.LB_SVC_F_ONEPACKET if spec.ops else 0) | PROXY_BITS.get(spec.proxy_protocol, 0))
    for i, bit in enumerate(SCHED_FLAG_BITS):
        if spec.sched_flags & (1 << i):
            conf.flags |= bit
    return conf


def service_spec(conf: Any) -> ServiceSpec:
    """struct lb_svc_conf read back (svc_conf's inverse)."""
    return _service_spec(conf.proto, conf.addr, conf.port, ffi.string(conf.sched), conf.persist_timeout_s,
                         conf.netmask, conf.flags)


# Cached by the struct's values: a listing of 10,000 services reads back as many unchanged specs,
# each validated anew by ServiceSpec and DestSpec (~5 us each; the specs are frozen, so shared).
@functools.lru_cache(maxsize=1 << 16)
def _service_spec(proto: int, addr: int, port: int, sched: bytes, persist_timeout_s: int, netmask: int,
                  flags: int) -> ServiceSpec:
    return ServiceSpec(
        key=ServiceKey(proto, int2ip(addr), port),
        sched=sched.decode(),
        persistent=persist_timeout_s or None,
        netmask=int2ip(netmask) if netmask else "255.255.255.255",
        toa=bool(flags & lib.LB_SVC_F_TOA),
        synproxy=bool(flags & lib.LB_SVC_F_SYNPROXY),
        sched_flags=sum(1 << i for i, bit in enumerate(SCHED_FLAG_BITS) if flags & bit),
        ops=bool(flags & lib.LB_SVC_F_ONEPACKET),
        proxy_protocol=next((v for v, bit in PROXY_BITS.items() if flags & bit), None),
    )


def dest_conf(dest: DestSpec) -> object:
    conf = ffi.new("struct lb_dest_conf *")
    conf.addr = ip2int(dest.addr)
    conf.port = dest.port
    conf.fwd = FWD_IDS[dest.fwd]
    conf.weight = dest.weight
    conf.u_threshold = dest.u_threshold
    conf.l_threshold = dest.l_threshold
    return conf


def dest_info(d: Any, counters: bool = True) -> DestInfo:
    """One struct lb_dest_info of lb_dest_list (counters=False: stats zero, rates None)."""
    conf = d.conf
    spec = _dest_spec(conf.addr, conf.port, conf.fwd, conf.weight, conf.u_threshold, conf.l_threshold)
    if not counters:
        return DestInfo(spec=spec, active=d.active, inactive=d.inactive, persist=d.persist,
                        syn_retrans=d.syn_retrans, handshakes=d.handshakes)
    return DestInfo(
        spec=spec,
        active=d.active,
        inactive=d.inactive,
        persist=d.persist,
        stats=stats_of(d.stats),
        syn_retrans=d.syn_retrans,
        handshakes=d.handshakes,
        rates=rates_of(d.rates),
    )


@functools.lru_cache(maxsize=1 << 17)
def _dest_spec(addr: int, port: int, fwd: int, weight: int, u_threshold: int, l_threshold: int) -> DestSpec:
    """struct lb_dest_conf's values read back (cached as _service_spec)."""
    return DestSpec(addr=int2ip(addr), port=port, fwd=FWD_NAMES[fwd], weight=weight, u_threshold=u_threshold,
                    l_threshold=l_threshold)


def fwd_conf(fwd: FwdState | None) -> object:
    """struct lb_fwd_conf of a destination's forwarding state; NULL for none."""
    conf = ffi.NULL
    if fwd is not None:
        conf = ffi.new("struct lb_fwd_conf *")
        conf.ifindex = fwd.ifindex
        conf.dst_mac = fwd.dst_mac
        conf.src_mac = fwd.src_mac
        conf.saddr = ip2int(fwd.saddr)
        conf.mtu = fwd.mtu
    return conf


def synproxy_conf(conf: SynproxyConf) -> object:
    c = ffi.new("struct lb_synproxy_conf *")
    for name, value in conf.to_json().items():
        setattr(c, name, int(value))  # type: ignore[call-overload]
    return c


def conn_info(c: Any) -> ConnInfo:
    """One struct lb_conn_info of lb_conn_dump."""
    return ConnInfo(
        proto=c.proto,
        caddr=int2ip(c.caddr),
        cport=c.cport,
        vaddr=int2ip(c.vaddr),
        vport=c.vport,
        daddr=int2ip(c.daddr),
        dport=c.dport,
        state=TEMPLATE_ASSURED if c.flags & lib.LB_CONN_F_ASSURED else ConnState(c.state).name,
        expires_ms=c.expires_in_ms,
        laddr=int2ip(c.laddr),
        lport=c.lport,
    )
