"""The C fast path behind the Engine protocol.

With lb/_ffi.py, the only module that touches `ffi`/`lib`. C error codes become
EngineError with IPVS's errno names; addresses cross the boundary as host-order
integers (lb_api.h convention).
"""

from __future__ import annotations

import functools
import ipaddress
import os
import socket
from collections.abc import Callable, Iterator, Sequence

from lb._ffi import ffi, lib
from lb.engine import (
    ERRNO_NAMES,
    FWD_IDS,
    FWD_NAMES,
    Action,
    ConnState,
    EngineError,
    FwdState,
    Reason,
    Verdict,
)
from lb.model import (
    TEMPLATE_ASSURED,
    ConnInfo,
    DestInfo,
    DestSpec,
    LaddrInfo,
    ServiceInfo,
    ServiceKey,
    ServiceSpec,
    Stats,
    SynproxyConf,
)
from lb.sync.rule import SyncRule


@functools.lru_cache(maxsize=1 << 16)
def _ip2int(addr: str) -> int:
    # Cached, and inet_aton (~10x cheaper than ipaddress): restoring 10,000 services converts
    # 30,000 addresses, listing them as many (issue 15). Addresses reach here canonical (lb.model).
    try:
        return int.from_bytes(socket.inet_aton(addr), "big")
    except OSError:
        return int(ipaddress.IPv4Address(addr))  # ipaddress's own error for what is not an address


def _int2ip(value: int) -> str:
    # inet_ntoa is ~20x cheaper than ipaddress and gives the same dotted quad.
    return socket.inet_ntoa(value.to_bytes(4, "big"))


def _check(rc: int, what: str) -> int:
    if rc < 0:
        name = ERRNO_NAMES.get(rc, "EIO")
        raise EngineError(name, f"{what}: {ffi.string(lib.lb_strerror(rc)).decode()}")
    return rc


def _rates(r: object) -> dict[str, int]:
    """struct lb_rates as lbadm's rate fields (lb.estimator.RATE_FIELDS)."""
    return {name: getattr(r, name) for name in RATE_NAMES}


def _stats(c: object) -> Stats:
    return Stats(
        conns=c.conns,  # type: ignore[attr-defined]
        inpkts=c.inpkts,  # type: ignore[attr-defined]
        outpkts=c.outpkts,  # type: ignore[attr-defined]
        inbytes=c.inbytes,  # type: ignore[attr-defined]
        outbytes=c.outbytes,  # type: ignore[attr-defined]
    )


# ServiceSpec.sched_flags bit i (flag-1, -2, -3) <-> struct lb_svc_conf.flags bit:
_SCHED_FLAG_BITS = (lib.LB_SVC_F_SCHED1, lib.LB_SVC_F_SCHED2, lib.LB_SVC_F_SCHED3)
# ServiceSpec.proxy_protocol <-> struct lb_svc_conf.flags bit:
_PROXY_BITS: dict[str | None, int] = {"v1": lib.LB_SVC_F_PROXY_V1, "v2": lib.LB_SVC_F_PROXY_V2}
_NO_TIMER = 2**64 - 1  # lb_timer_due(): UINT64_MAX when nothing is due
CHANGED_CHUNK = 1024  # services per lb_svc_list_changed call
LIST_FIRST = 16  # destinations / local addresses a service's listing asks for in its first call

RATE_NAMES: tuple[str, ...] = tuple(name for name, _ in ffi.typeof("struct lb_rates").fields)
# lb_reason_name(i) for every reason, read once (counters() runs on every tick that has work).
REASON_NAMES: tuple[str, ...] = tuple(ffi.string(lib.lb_reason_name(i)).decode() for i in range(lib.LB_R_COUNT))
# Fields of struct lb_nfq_stats (lb_api.h), in declaration order.
NFQ_STAT_NAMES: tuple[str, ...] = tuple(name for name, _ in ffi.typeof("struct lb_nfq_stats").fields)

class NfqError(OSError):
    """The NFQUEUE adapter could not start."""


class CEngine:
    """One director instance in C: tables, counters and (optionally) an NFQUEUE thread."""

    name = "c"

    def __init__(
        self,
        conn_max: int = 0,
        hash_buckets: int = 0,
        hash_seed: int = 0,
        lport_min: int = 0,
        lport_max: int = 0,
    ) -> None:
        cfg = ffi.new("struct lb_config *")
        cfg.conn_max = conn_max
        cfg.hash_buckets = hash_buckets
        cfg.hash_seed = hash_seed
        cfg.lport_min = lport_min
        cfg.lport_max = lport_max
        handle = lib.lb_new(cfg)
        if handle == ffi.NULL:
            raise EngineError("EINVAL", f"lb_new failed (conn_max={conn_max}, hash_buckets={hash_buckets})")
        self._lb = ffi.gc(handle, lib.lb_free)
        self._out = ffi.new("uint8_t[]", lib.LB_PKT_MAX)
        self._act = ffi.new("struct lb_action *")
        self._nfqs: list[object] = []  # one adapter (thread) per queue, in queue order

    @property
    def handle(self) -> object:
        """The lb_t * (cdata) for another adapter on the same tables (lb/afxdp.py)."""
        return self._lb

    # ------------------------------------------------------------ packet path
    def process(self, packet: bytes, now_ms: int, mark: int = 0, loopback: bool = False) -> Action:
        """One packet; `mark` is its firewall mark (fwmark services are looked up by it first); `loopback`:
        it came in on lo (the director's own, exempt from the martian-source checks)."""
        act = self._act
        flags = lib.LB_PKT_F_LOOPBACK if loopback else 0
        _check(lib.lb_process_pkt(self._lb, packet, len(packet), mark, flags, now_ms, self._out, lib.LB_PKT_MAX,
                                  act), "lb_process")
        return self._action()

    def _action(self) -> Action:
        """The Action of the last packet processed (its struct lb_action and out bytes)."""
        act = self._act
        verdict = Verdict(act.verdict)
        out = bytes(ffi.buffer(self._out, act.out_len)) if verdict != Verdict.DROP and act.out_len else b""
        l2hdr = bytes(act.l2hdr) if verdict == Verdict.XMIT_L2 else b""
        if verdict == Verdict.XMIT_L2:
            return Action(verdict=verdict, reason=Reason(act.reason), out=out, ifindex=act.ifindex, l2hdr=l2hdr,
                          frag_mtu=act.frag_mtu)
        return Action(verdict=verdict, reason=Reason(act.reason), out=out)

    def expire(self, now_ms: int) -> int:
        return _check(lib.lb_expire(self._lb, now_ms, 0), "lb_expire")

    def sched_probe(self, key: ServiceKey, packet: bytes, now_ms: int) -> tuple[str, int] | None:
        """Tests and diagnostics: the scheduler's pick for a new connection of `packet` (lb_sched_probe)."""
        daddr = ffi.new("uint32_t *")
        dport = ffi.new("uint16_t *")
        found = _check(lib.lb_sched_probe(self._lb, key.proto, _ip2int(key.addr), key.port, packet, len(packet),
                                          now_ms, daddr, dport), "lb_sched_probe")
        return (_int2ip(daddr[0]), dport[0]) if found else None

    # ------------------------------------------------------------ configuration
    @staticmethod
    def _svc_conf(spec: ServiceSpec) -> object:
        conf = ffi.new("struct lb_svc_conf *")
        conf.proto = spec.key.proto
        conf.addr = _ip2int(spec.key.addr)
        conf.port = spec.key.port
        conf.sched = spec.sched.encode()
        conf.persist_timeout_s = spec.persistent or 0
        conf.netmask = _ip2int(spec.netmask)
        conf.flags = ((lib.LB_SVC_F_TOA if spec.toa else 0) | (lib.LB_SVC_F_SYNPROXY if spec.synproxy else 0)
                      | (lib.LB_SVC_F_ONEPACKET if spec.ops else 0) | _PROXY_BITS.get(spec.proxy_protocol, 0))
        for i, bit in enumerate(_SCHED_FLAG_BITS):
            if spec.sched_flags & (1 << i):
                conf.flags |= bit
        return conf

    @staticmethod
    def _dest_conf(dest: DestSpec) -> object:
        conf = ffi.new("struct lb_dest_conf *")
        conf.addr = _ip2int(dest.addr)
        conf.port = dest.port
        conf.fwd = FWD_IDS[dest.fwd]
        conf.weight = dest.weight
        conf.u_threshold = dest.u_threshold
        conf.l_threshold = dest.l_threshold
        return conf

    @staticmethod
    def _key(key: ServiceKey) -> tuple[int, int, int]:
        return key.proto, _ip2int(key.addr), key.port

    def add_service(self, spec: ServiceSpec) -> None:
        _check(lib.lb_svc_add(self._lb, self._svc_conf(spec)), f"add service {spec.key}")

    def edit_service(self, spec: ServiceSpec) -> None:
        _check(lib.lb_svc_edit(self._lb, self._svc_conf(spec)), f"edit service {spec.key}")

    def del_service(self, key: ServiceKey) -> None:
        _check(lib.lb_svc_del(self._lb, *self._key(key)), f"delete service {key}")

    def clear(self) -> None:
        _check(lib.lb_clear(self._lb), "clear")

    def add_dest(self, key: ServiceKey, dest: DestSpec) -> None:
        _check(
            lib.lb_dest_add(self._lb, *self._key(key), self._dest_conf(dest)),
            f"add destination {dest.addr}:{dest.port} to {key}",
        )

    def edit_dest(self, key: ServiceKey, dest: DestSpec) -> None:
        _check(
            lib.lb_dest_edit(self._lb, *self._key(key), self._dest_conf(dest)),
            f"edit destination {dest.addr}:{dest.port} of {key}",
        )

    def del_dest(self, key: ServiceKey, addr: str, port: int) -> None:
        _check(
            lib.lb_dest_del(self._lb, *self._key(key), _ip2int(addr), port),
            f"delete destination {addr}:{port} of {key}",
        )

    def set_fwd(self, key: ServiceKey, addr: str, port: int, fwd: FwdState | None) -> None:
        conf = ffi.NULL
        if fwd is not None:
            conf = ffi.new("struct lb_fwd_conf *")
            conf.ifindex = fwd.ifindex
            conf.dst_mac = fwd.dst_mac
            conf.src_mac = fwd.src_mac
            conf.saddr = _ip2int(fwd.saddr)
            conf.mtu = fwd.mtu
        _check(
            lib.lb_dest_set_fwd(self._lb, *self._key(key), _ip2int(addr), port, conf),
            f"set forwarding state of {addr}:{port} in {key}",
        )

    def zero(self) -> None:
        _check(lib.lb_zero(self._lb), "zero")

    def zero_service(self, key: ServiceKey) -> None:
        _check(lib.lb_zero_svc(self._lb, *self._key(key)), f"zero service {key}")

    def set_timeouts(self, tcp_s: int, tcpfin_s: int, udp_s: int) -> None:
        """ipvsadm --set: ESTABLISHED, FIN_WAIT and UDP timeouts in seconds; 0 keeps a value."""
        _check(lib.lb_set_timeouts(self._lb, tcp_s, tcpfin_s, udp_s), "set timeouts")

    def set_local_addrs(self, addrs: Sequence[str]) -> None:
        """The director's own addresses: a new connection from one is a martian (LOCAL_SRC)."""
        packed = [int.from_bytes(socket.inet_aton(a), "big") for a in addrs]
        arr = ffi.new("uint32_t[]", packed or [0])
        _check(lib.lb_local_addrs_set(self._lb, arr, len(packed)), "set local addresses")

    def get_timeouts(self) -> tuple[int, int, int]:
        vals = ffi.new("uint32_t[3]")
        lib.lb_get_timeouts(self._lb, vals, vals + 1, vals + 2)
        return int(vals[0]), int(vals[1]), int(vals[2])

    @staticmethod
    def _sp_conf(conf: SynproxyConf) -> object:
        c = ffi.new("struct lb_synproxy_conf *")
        for name, value in conf.to_json().items():
            setattr(c, name, int(value))  # type: ignore[call-overload]
        return c

    def set_synproxy(self, key: ServiceKey | None, conf: SynproxyConf | None) -> None:
        """The global default (key None), or one service's own settings (conf None: the default)."""
        if key is None:
            if conf is None:
                raise ValueError("the global SYN-proxy default needs settings")
            _check(lib.lb_synproxy_set_default(self._lb, self._sp_conf(conf)), "set SYN-proxy defaults")
        else:
            c = ffi.NULL if conf is None else self._sp_conf(conf)
            _check(lib.lb_synproxy_set_svc(self._lb, *self._key(key), c), f"set SYN-proxy settings of {key}")

    def synproxy_stats(self) -> dict[str, int]:
        st = ffi.new("struct lb_synproxy_stats *")
        lib.lb_synproxy_get_stats(self._lb, st)
        return {name: getattr(st, name) for name in dir(st)}

    def timer_due(self) -> int | None:
        """When the next timer is due (None: none pending); the NFQUEUE thread polls by it itself."""
        due = int(lib.lb_timer_due(self._lb))
        return None if due == _NO_TIMER else due

    def timers(self, now_ms: int) -> list[Action]:
        """Run due timers (single-threaded use: tests); the NFQUEUE thread does this itself."""
        actions = []
        while lib.lb_timer_next(self._lb, now_ms, self._out, lib.LB_PKT_MAX, self._act):
            a = self._act
            actions.append(
                Action(
                    verdict=Verdict(a.verdict),
                    reason=Reason(a.reason),
                    out=bytes(ffi.buffer(self._out, a.out_len)),
                    ifindex=a.ifindex if a.verdict == lib.LB_V_XMIT_L2 else 0,
                    l2hdr=bytes(a.l2hdr) if a.verdict == lib.LB_V_XMIT_L2 else b"",
                    frag_mtu=a.frag_mtu if a.verdict == lib.LB_V_XMIT_L2 else 0,
                )
            )
        return actions

    def add_laddr(self, key: ServiceKey, addr: str) -> None:
        _check(lib.lb_laddr_add(self._lb, *self._key(key), _ip2int(addr)), f"add local address {addr} to {key}")

    def del_laddr(self, key: ServiceKey, addr: str) -> None:
        _check(lib.lb_laddr_del(self._lb, *self._key(key), _ip2int(addr)), f"delete local address {addr} of {key}")

    def _listing(self, fn: Callable[..., int], ctype: str, key: ServiceKey, what: str) -> tuple[object, int]:
        """One of a service's lists (lb_dest_list, lb_laddr_list) and its length: one call when it has at
        most LIST_FIRST entries (most services), a second one sized by the first's count otherwise."""
        arr = ffi.new(ctype, LIST_FIRST)
        total = _check(fn(self._lb, *self._key(key), arr, LIST_FIRST), what)
        if total > LIST_FIRST:
            arr = ffi.new(ctype, total)
            total = min(_check(fn(self._lb, *self._key(key), arr, total), what), total)
        return arr, total

    def _laddrs(self, key: ServiceKey) -> list[LaddrInfo]:
        arr, count = self._listing(lib.lb_laddr_list, "struct lb_laddr_info[]", key, f"list local addresses of {key}")
        return [LaddrInfo(_int2ip(arr[i].addr), arr[i].conns) for i in range(count)]  # type: ignore[index]

    # ------------------------------------------------------------ observation
    def services(self) -> list[ServiceInfo]:
        total = lib.lb_svc_list(self._lb, ffi.NULL, 0)
        arr = ffi.new("struct lb_svc_info[]", max(total, 1))
        count = min(lib.lb_svc_list(self._lb, arr, total), total)
        return [self._service_info(arr[i]) for i in range(count)]

    def rate_tick(self) -> int:
        """One step of the C rate estimators unless an adapter thread steps them; the watch mark (lb_est_tick)."""
        return int(lib.lb_est_tick(self._lb))

    def changed_services(self) -> list[ServiceKey]:
        """The services whose counters moved since the last call (lb_svc_list_changed), each once."""
        out: list[ServiceKey] = []
        arr = ffi.new("struct lb_svc_info[]", CHANGED_CHUNK)
        # each call reports services not reported before (or moved again since): bounded passes
        for _ in range(max(1, lib.lb_svc_list(self._lb, ffi.NULL, 0) // CHANGED_CHUNK + 2)):
            count = lib.lb_svc_list_changed(self._lb, arr, CHANGED_CHUNK)
            for i in range(count):
                conf = arr[i].conf
                out.append(ServiceKey(conf.proto, _int2ip(conf.addr), conf.port))
            if count < CHANGED_CHUNK:
                break
        return out

    def service(self, key: ServiceKey) -> ServiceInfo:
        """One service (O(1)); EngineError ESRCH when there is none."""
        info = ffi.new("struct lb_svc_info *")
        _check(lib.lb_svc_get(self._lb, *self._key(key), info), f"service {key}")
        return self._service_info(info[0])

    def _service_info(self, s: object) -> ServiceInfo:
        conf = s.conf  # type: ignore[attr-defined]
        key = ServiceKey(conf.proto, _int2ip(conf.addr), conf.port)
        spec = ServiceSpec(
            key=key,
            sched=ffi.string(conf.sched).decode(),
            persistent=conf.persist_timeout_s or None,
            netmask=_int2ip(conf.netmask) if conf.netmask else "255.255.255.255",
            toa=bool(conf.flags & lib.LB_SVC_F_TOA),
            synproxy=bool(conf.flags & lib.LB_SVC_F_SYNPROXY),
            sched_flags=sum(1 << i for i, bit in enumerate(_SCHED_FLAG_BITS) if conf.flags & bit),
            ops=bool(conf.flags & lib.LB_SVC_F_ONEPACKET),
            proxy_protocol=next((v for v, bit in _PROXY_BITS.items() if conf.flags & bit), None),
        )
        return ServiceInfo(spec=spec, dests=self._dests(key), stats=_stats(s.stats),  # type: ignore[attr-defined]
                           laddrs=self._laddrs(key), rates=_rates(s.rates))  # type: ignore[attr-defined]

    def _dests(self, key: ServiceKey) -> list[DestInfo]:
        arr, count = self._listing(lib.lb_dest_list, "struct lb_dest_info[]", key, f"list {key}")
        dests = []
        for i in range(count):
            d = arr[i]  # type: ignore[index]
            spec = DestSpec(
                addr=_int2ip(d.conf.addr),
                port=d.conf.port,
                fwd=FWD_NAMES[d.conf.fwd],
                weight=d.conf.weight,
                u_threshold=d.conf.u_threshold,
                l_threshold=d.conf.l_threshold,
            )
            dests.append(
                DestInfo(
                    spec=spec,
                    active=d.active,
                    inactive=d.inactive,
                    persist=d.persist,
                    stats=_stats(d.stats),
                    syn_retrans=d.syn_retrans,
                    handshakes=d.handshakes,
                    rates=_rates(d.rates),
                )
            )
        return dests

    def dest_flags(self, key: ServiceKey) -> dict[tuple[str, int], int]:
        """LB_DEST_F_* flags per destination (availability, overload, forwarding state valid)."""
        total = _check(lib.lb_dest_list(self._lb, *self._key(key), ffi.NULL, 0), f"list {key}")
        arr = ffi.new("struct lb_dest_info[]", max(total, 1))
        count = min(_check(lib.lb_dest_list(self._lb, *self._key(key), arr, total), f"list {key}"), total)
        return {(_int2ip(arr[i].conf.addr), arr[i].conf.port): arr[i].flags for i in range(count)}

    def connections(self, now_ms: int) -> list[ConnInfo]:
        chunk = 1024
        arr = ffi.new("struct lb_conn_info[]", chunk)
        cursor = ffi.new("uint32_t *", 0)
        result: list[ConnInfo] = []
        while True:
            n = _check(lib.lb_conn_dump(self._lb, now_ms, arr, chunk, cursor), "connection dump")
            for i in range(n):
                c = arr[i]
                result.append(
                    ConnInfo(
                        proto=c.proto,
                        caddr=_int2ip(c.caddr),
                        cport=c.cport,
                        vaddr=_int2ip(c.vaddr),
                        vport=c.vport,
                        daddr=_int2ip(c.daddr),
                        dport=c.dport,
                        state=TEMPLATE_ASSURED if c.flags & lib.LB_CONN_F_ASSURED else ConnState(c.state).name,
                        expires_ms=c.expires_in_ms,
                        laddr=_int2ip(c.laddr),
                        lport=c.lport,
                    )
                )
            if n < chunk:
                return result

    def dump_connections_raw(self, now_ms: int, reset_changes: bool = False) -> bytes:
        """Every live entry as packed struct lb_conn_info records (a restart snapshot). The table is
        locked per chunk of 4096 entries, not for the whole pass: packets keep flowing."""
        return b"".join(self.dump_connections_chunks(now_ms, reset_changes))

    def dump_connections_chunks(self, now_ms: int, reset_changes: bool = False) -> Iterator[bytes]:
        """dump_connections_raw() in pieces of at most 4096 records, each made when it is asked
        for: a snapshot written as it is dumped never holds the whole table in memory (at 4M
        entries that would be 192 MB, twice, every time the journal is compacted)."""
        if reset_changes:
            lib.lb_conn_changes_reset(self._lb)
        chunk = 4096
        arr = ffi.new("struct lb_conn_info[]", chunk)
        cursor = ffi.new("uint32_t *", 0)
        while True:
            n = _check(lib.lb_conn_dump(self._lb, now_ms, arr, chunk, cursor), "connection dump")
            if n:
                yield bytes(ffi.buffer(arr, n * ffi.sizeof("struct lb_conn_info")))
            if n < chunk:
                return

    def dump_changes_raw(self, now_ms: int) -> bytes:
        """The records of the slots changed since last reported (lb_conn_dump_changes), proto 0 for
        a slot whose entry went."""
        return self._dump_changes(lib.lb_conn_dump_changes, now_ms, "change dump")

    def dump_sync_changes_raw(self, now_ms: int) -> bytes:
        """As dump_changes_raw, over the sync master's own change marks (lb_conn_dump_sync_changes)."""
        return self._dump_changes(lib.lb_conn_dump_sync_changes, now_ms, "sync change dump")

    def _dump_changes(self, dump: Callable[..., int], now_ms: int, what: str) -> bytes:
        """Every record `dump` (one of the lb_conn_dump_*changes calls) reports, chunk by chunk
        until its cursor comes back to 0."""
        chunk = 4096
        arr = ffi.new("struct lb_conn_info[]", chunk)
        cursor = ffi.new("uint32_t *", 0)
        parts = []
        while True:
            n = _check(dump(self._lb, now_ms, arr, chunk, cursor), what)
            parts.append(bytes(ffi.buffer(arr, n * ffi.sizeof("struct lb_conn_info"))))
            if cursor[0] == 0:
                return b"".join(parts)

    def sync_changes_reset(self) -> None:
        lib.lb_conn_sync_changes_reset(self._lb)

    def sync_master_set(self, rule: SyncRule | None) -> None:
        if rule is None:
            lib.lb_sync_master_set(self._lb, ffi.NULL, 0)
        else:
            _check(lib.lb_sync_master_set(self._lb, rule.to_c(), 1), "sync master rule")

    def dump_connections_page(self, now_ms: int, cursor: int, cap: int) -> tuple[bytes, int]:
        """Up to `cap` live entries from table position `cursor` (lb_conn_dump); the next cursor, 0
        once the table is done."""
        cap = max(cap, 1)
        arr = ffi.new("struct lb_conn_info[]", cap)
        pos = ffi.new("uint32_t *", cursor)
        n = _check(lib.lb_conn_dump(self._lb, now_ms, arr, cap, pos), "connection dump")
        blob = bytes(ffi.buffer(arr, n * ffi.sizeof("struct lb_conn_info")))
        return blob, (int(pos[0]) if n == cap else 0)

    def restore_connections_raw(self, blob: bytes, now_ms: int) -> dict[str, int]:
        """Recreate entries from dump_connections_raw() output; returns outcome counts by errno name."""
        size = ffi.sizeof("struct lb_conn_info")
        if len(blob) % size:
            raise EngineError("EINVAL", f"snapshot size {len(blob)} is not a multiple of {size}")
        n = len(blob) // size
        arr = ffi.new("struct lb_conn_info[]", max(n, 1))
        ffi.memmove(arr, blob, len(blob))
        outcome: dict[str, int] = {}
        for i in range(n):
            rc = lib.lb_conn_restore(self._lb, arr + i, now_ms)
            name = ("restored" if rc == 0 else "updated" if rc == lib.LB_RESTORE_UPDATED  # LB_CONN_F_UPDATE
                    else ERRNO_NAMES.get(rc, str(rc)))
            outcome[name] = outcome.get(name, 0) + 1
        return outcome

    def conn_seq(self, proto: int, caddr: int, cport: int, vaddr: int, vport: int, now_ms: int) -> bytes | None:
        """The packed struct lb_conn_seq of a SYN-proxied / PROXY-protocol connection (the sync
        extension's payload, lb_conn_seq_get), None when it has none yet (no such connection, no
        translation, or a SYN-proxy handshake still open)."""
        out = ffi.new("struct lb_conn_seq *")
        if lib.lb_conn_seq_get(self._lb, proto, caddr, cport, vaddr, vport, now_ms, out) != 0:
            return None
        return bytes(ffi.buffer(out))

    def restore_connection_seq(self, record: bytes, seq: bytes, now_ms: int) -> str:
        """lb_conn_restore_seq of one struct lb_conn_info record with its struct lb_conn_seq: the
        outcome's name as in restore_connections_raw."""
        if len(record) != ffi.sizeof("struct lb_conn_info") or len(seq) != ffi.sizeof("struct lb_conn_seq"):
            raise EngineError("EINVAL", "restore_connection_seq: record sizes do not match the C structs")
        ci = ffi.new("struct lb_conn_info *")
        ffi.memmove(ci, record, len(record))
        cs = ffi.new("struct lb_conn_seq *")
        ffi.memmove(cs, seq, len(seq))
        rc = lib.lb_conn_restore_seq(self._lb, ci, cs, now_ms)
        return "restored" if rc == 0 else "updated" if rc == lib.LB_RESTORE_UPDATED else ERRNO_NAMES.get(rc, str(rc))

    def count_xmit_failed(self, reason: Reason) -> None:
        lib.lb_count_xmit_failed(self._lb, int(reason))

    def counters(self) -> dict[str, int]:
        n = lib.LB_R_COUNT
        arr = ffi.new("uint64_t[]", n)
        lib.lb_counters(self._lb, arr, n)
        return {name: arr[i] for i, name in enumerate(REASON_NAMES)}

    def conn_count(self) -> int:
        return int(lib.lb_conn_count(self._lb))

    def conn_max(self) -> int:
        """Connection table size: entries beyond it are refused (reason table_full)."""
        return int(lib.lb_conn_max(self._lb))

    def table_size(self) -> int:
        return int(lib.lb_hash_buckets(self._lb))

    def conn_stats(self) -> dict[str, int]:
        """The table's figures (lb_conn_stats): entries, max, buckets, droppable, early_drops."""
        out = ffi.new("struct lb_conn_stats *")
        lib.lb_conn_stats(self._lb, out)
        return {"entries": out.entries, "max": out.max, "buckets": out.buckets, "droppable": out.droppable,
                "early_drops": out.early_drops}

    # ------------------------------------------------------------ NFQUEUE
    def start(self, queue_num: int, fail_open: bool = False, qdisc_bypass: bool = False, *,
              queues: Sequence[int] | None = None, cpus: Sequence[int | None] | None = None,
              gso_mtu: int | None = None, queue_maxlen: int | None = None) -> None:
        """Bind NFQUEUE `queue_num`, or every queue of `queues` (lbd --queue-balance; queue_num is the
        first, the one named in the answer socket's mark and the one that runs the timers): one
        thread each, pinned to cpus[i] when that is not None. `gso_mtu` turns on NFQA_CFG_F_GSO,
        GSO packets being cut into segments of at most that many bytes; `queue_maxlen` is the
        kernel's queue length (None: LB_NFQ_MAXLEN_DEFAULT). All or nothing: a queue that cannot
        be bound stops those already started."""
        if self._nfqs:
            raise RuntimeError("NFQUEUE adapter already running")
        queues = list(queues) if queues is not None else [queue_num]
        cpus = list(cpus) if cpus is not None else [None] * len(queues)
        if len(cpus) != len(queues):
            raise ValueError(f"{len(cpus)} CPUs for {len(queues)} queues")
        flags = (lib.LB_NFQ_F_FAIL_OPEN if fail_open else 0) | (lib.LB_NFQ_F_QDISC_BYPASS if qdisc_bypass else 0)
        if gso_mtu is not None:
            flags |= lib.LB_NFQ_F_GSO
        err = ffi.new("int *")
        try:
            for q_num, cpu in zip(queues, cpus, strict=True):
                opts = ffi.new("struct lb_nfq_opts *")
                opts.flags = flags | (lib.LB_NFQ_F_TIMERS if q_num == queue_num else 0)
                opts.cpu = -1 if cpu is None else cpu
                opts.mark_queue = queue_num
                opts.gso_mtu = gso_mtu or 0
                opts.queue_maxlen = queue_maxlen or 0
                q = lib.lb_nfq_start(self._lb, q_num, opts, err)
                if q == ffi.NULL:
                    code = -err[0]
                    where = f" on CPU {cpu}" if cpu is not None else ""
                    raise NfqError(code, f"cannot bind NFQUEUE {q_num}{where}: {os.strerror(code)}")
                self._nfqs.append(q)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        while self._nfqs:
            lib.lb_nfq_stop(self._nfqs.pop())

    def nfq_stats(self) -> dict[str, int]:
        """The adapters' counters, summed over every queue."""
        return {name: sum(q[name] for q in self.nfq_queue_stats()) for name in NFQ_STAT_NAMES} if self._nfqs else {}

    def nfq_queue_stats(self) -> list[dict[str, int]]:
        """The adapters' counters per queue, in queue order."""
        out = []
        for q in self._nfqs:
            st = ffi.new("struct lb_nfq_stats *")
            lib.lb_nfq_get_stats(q, st)
            out.append({name: getattr(st, name) for name in NFQ_STAT_NAMES})
        return out
