"""The C fast path behind the Engine protocol: CEngine, one director's tables in C (lb_t), the
calls that configure and observe them, and its NFQUEUE threads.

What crosses the boundary is converted by lb.fastpath_structs: lb.model's records to and from
lb_api.h's structs, addresses as host-order integers (lb_api.h convention), C error codes as
EngineError with IPVS's errno names. lb/_ffi.py imports the compiled module.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from lb._ffi import ffi, lib
from lb.engine import (
    ERRNO_NAMES,
    Action,
    EngineError,
    FwdState,
    Reason,
    Verdict,
)
from lb.fastpath_structs import (
    check,
    conn_info,
    dest_conf,
    dest_info,
    fwd_conf,
    int2ip,
    ip2int,
    key_args,
    rates_of,
    service_spec,
    stats_of,
    svc_conf,
    synproxy_conf,
)
from lb.model import (
    ConnInfo,
    DestInfo,
    DestSpec,
    LaddrInfo,
    ServiceInfo,
    ServiceKey,
    ServiceSpec,
    SynproxyConf,
)
from lb.sync.rule import SyncRule

_NO_TIMER = 2**64 - 1  # lb_timer_due(): UINT64_MAX when nothing is due
CHANGED_CHUNK = 1024  # services per lb_svc_list_changed call
LIST_FIRST = 16  # destinations / local addresses a service's listing asks for in its first call

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
        self._natrx: Any = None  # lbd --nat-replies ingress: the NAT replies' reader (native/src/natrx.c)

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
        check(lib.lb_process_pkt(self._lb, packet, len(packet), mark, flags, now_ms, self._out, lib.LB_PKT_MAX,
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
        return check(lib.lb_expire(self._lb, now_ms, 0), "lb_expire")

    def sched_probe(self, key: ServiceKey, packet: bytes, now_ms: int) -> tuple[str, int] | None:
        """Tests and diagnostics: the scheduler's pick for a new connection of `packet` (lb_sched_probe)."""
        daddr = ffi.new("uint32_t *")
        dport = ffi.new("uint16_t *")
        found = check(lib.lb_sched_probe(self._lb, key.proto, ip2int(key.addr), key.port, packet, len(packet),
                                          now_ms, daddr, dport), "lb_sched_probe")
        return (int2ip(daddr[0]), dport[0]) if found else None

    # ------------------------------------------------------------ configuration
    def add_service(self, spec: ServiceSpec) -> None:
        check(lib.lb_svc_add(self._lb, svc_conf(spec)), f"add service {spec.key}")

    def edit_service(self, spec: ServiceSpec) -> None:
        check(lib.lb_svc_edit(self._lb, svc_conf(spec)), f"edit service {spec.key}")

    def del_service(self, key: ServiceKey) -> None:
        check(lib.lb_svc_del(self._lb, *key_args(key)), f"delete service {key}")

    def clear(self) -> None:
        check(lib.lb_clear(self._lb), "clear")

    def add_dest(self, key: ServiceKey, dest: DestSpec) -> None:
        check(
            lib.lb_dest_add(self._lb, *key_args(key), dest_conf(dest)),
            f"add destination {dest.addr}:{dest.port} to {key}",
        )

    def edit_dest(self, key: ServiceKey, dest: DestSpec) -> None:
        check(
            lib.lb_dest_edit(self._lb, *key_args(key), dest_conf(dest)),
            f"edit destination {dest.addr}:{dest.port} of {key}",
        )

    def del_dest(self, key: ServiceKey, addr: str, port: int) -> None:
        check(
            lib.lb_dest_del(self._lb, *key_args(key), ip2int(addr), port),
            f"delete destination {addr}:{port} of {key}",
        )

    def set_fwd(self, key: ServiceKey, addr: str, port: int, fwd: FwdState | None) -> None:
        conf = fwd_conf(fwd)
        check(
            lib.lb_dest_set_fwd(self._lb, *key_args(key), ip2int(addr), port, conf),
            f"set forwarding state of {addr}:{port} in {key}",
        )

    def zero(self) -> None:
        check(lib.lb_zero(self._lb), "zero")

    def zero_service(self, key: ServiceKey) -> None:
        check(lib.lb_zero_svc(self._lb, *key_args(key)), f"zero service {key}")

    def set_timeouts(self, tcp_s: int, tcpfin_s: int, udp_s: int) -> None:
        """ipvsadm --set: ESTABLISHED, FIN_WAIT and UDP timeouts in seconds; 0 keeps a value."""
        check(lib.lb_set_timeouts(self._lb, tcp_s, tcpfin_s, udp_s), "set timeouts")

    def set_local_addrs(self, addrs: Sequence[str]) -> None:
        """The director's own addresses: a new connection from one is a martian (LOCAL_SRC)."""
        packed = [int.from_bytes(socket.inet_aton(a), "big") for a in addrs]
        arr = ffi.new("uint32_t[]", packed or [0])
        check(lib.lb_local_addrs_set(self._lb, arr, len(packed)), "set local addresses")

    def get_timeouts(self) -> tuple[int, int, int]:
        vals = ffi.new("uint32_t[3]")
        lib.lb_get_timeouts(self._lb, vals, vals + 1, vals + 2)
        return int(vals[0]), int(vals[1]), int(vals[2])

    def set_synproxy(self, key: ServiceKey | None, conf: SynproxyConf | None) -> None:
        """The global default (key None), or one service's own settings (conf None: the default)."""
        if key is None:
            if conf is None:
                raise ValueError("the global SYN-proxy default needs settings")
            check(lib.lb_synproxy_set_default(self._lb, synproxy_conf(conf)), "set SYN-proxy defaults")
        else:
            c = ffi.NULL if conf is None else synproxy_conf(conf)
            check(lib.lb_synproxy_set_svc(self._lb, *key_args(key), c), f"set SYN-proxy settings of {key}")

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
        check(lib.lb_laddr_add(self._lb, *key_args(key), ip2int(addr)), f"add local address {addr} to {key}")

    def del_laddr(self, key: ServiceKey, addr: str) -> None:
        check(lib.lb_laddr_del(self._lb, *key_args(key), ip2int(addr)), f"delete local address {addr} of {key}")

    def _listing(self, fn: Callable[..., int], ctype: str, key: ServiceKey, what: str) -> tuple[object, int]:
        """One of a service's lists (lb_dest_list, lb_laddr_list) and its length: one call when it has at
        most LIST_FIRST entries (most services), a second one sized by the first's count otherwise.
        `what` names the list in an error ("list {key}"; formatted only then: a listing of 10,000
        services makes 20,000 of these calls)."""
        arr = ffi.new(ctype, LIST_FIRST)
        args = key_args(key)
        total = fn(self._lb, *args, arr, LIST_FIRST)
        if total > LIST_FIRST:
            arr = ffi.new(ctype, total)
            total = min(fn(self._lb, *args, arr, total), total)
        if total < 0:
            check(total, what.format(key=key))
        return arr, total

    def _laddrs(self, key: ServiceKey) -> list[LaddrInfo]:
        arr, count = self._listing(lib.lb_laddr_list, "struct lb_laddr_info[]", key, "list local addresses of {key}")
        return [LaddrInfo(int2ip(arr[i].addr), arr[i].conns) for i in range(count)]  # type: ignore[index]

    # ------------------------------------------------------------ observation
    def services(self, counters: bool = True) -> list[ServiceInfo]:
        total = lib.lb_svc_list(self._lb, ffi.NULL, 0)
        arr = ffi.new("struct lb_svc_info[]", max(total, 1))
        count = min(lib.lb_svc_list(self._lb, arr, total), total)
        return [self._service_info(arr[i], counters) for i in range(count)]

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
                out.append(ServiceKey(conf.proto, int2ip(conf.addr), conf.port))
            if count < CHANGED_CHUNK:
                break
        return out

    def service(self, key: ServiceKey) -> ServiceInfo:
        """One service (O(1)); EngineError ESRCH when there is none."""
        info = ffi.new("struct lb_svc_info *")
        check(lib.lb_svc_get(self._lb, *key_args(key), info), f"service {key}")
        return self._service_info(info[0])

    def _service_info(self, s: object, counters: bool = True) -> ServiceInfo:
        spec = service_spec(s.conf)  # type: ignore[attr-defined]
        if not counters:  # Stats and rates: half of a listing's objects (Engine.services)
            return ServiceInfo(spec=spec, dests=self._dests(spec.key, counters), laddrs=self._laddrs(spec.key))
        return ServiceInfo(spec=spec, dests=self._dests(spec.key), stats=stats_of(s.stats),  # type: ignore[attr-defined]
                           laddrs=self._laddrs(spec.key), rates=rates_of(s.rates))  # type: ignore[attr-defined]

    def _dests(self, key: ServiceKey, counters: bool = True) -> list[DestInfo]:
        arr, count = self._listing(lib.lb_dest_list, "struct lb_dest_info[]", key, "list {key}")
        return [dest_info(arr[i], counters) for i in range(count)]  # type: ignore[index]

    def dest_flags(self, key: ServiceKey) -> dict[tuple[str, int], int]:
        """LB_DEST_F_* flags per destination (availability, overload, forwarding state valid)."""
        total = check(lib.lb_dest_list(self._lb, *key_args(key), ffi.NULL, 0), f"list {key}")
        arr = ffi.new("struct lb_dest_info[]", max(total, 1))
        count = min(check(lib.lb_dest_list(self._lb, *key_args(key), arr, total), f"list {key}"), total)
        return {(int2ip(arr[i].conf.addr), arr[i].conf.port): arr[i].flags for i in range(count)}

    def connections(self, now_ms: int) -> list[ConnInfo]:
        chunk = 1024
        arr = ffi.new("struct lb_conn_info[]", chunk)
        cursor = ffi.new("uint32_t *", 0)
        result: list[ConnInfo] = []
        while True:
            n = check(lib.lb_conn_dump(self._lb, now_ms, arr, chunk, cursor), "connection dump")
            result += [conn_info(arr[i]) for i in range(n)]
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
            n = check(lib.lb_conn_dump(self._lb, now_ms, arr, chunk, cursor), "connection dump")
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
            n = check(dump(self._lb, now_ms, arr, chunk, cursor), what)
            parts.append(bytes(ffi.buffer(arr, n * ffi.sizeof("struct lb_conn_info"))))
            if cursor[0] == 0:
                return b"".join(parts)

    def sync_changes_reset(self) -> None:
        lib.lb_conn_sync_changes_reset(self._lb)

    def sync_master_set(self, rule: SyncRule | None) -> None:
        if rule is None:
            lib.lb_sync_master_set(self._lb, ffi.NULL, 0)
        else:
            check(lib.lb_sync_master_set(self._lb, rule.to_c(), 1), "sync master rule")

    def dump_connections_page(self, now_ms: int, cursor: int, cap: int) -> tuple[bytes, int]:
        """Up to `cap` live entries from table position `cursor` (lb_conn_dump); the next cursor, 0
        once the table is done."""
        cap = max(cap, 1)
        arr = ffi.new("struct lb_conn_info[]", cap)
        pos = ffi.new("uint32_t *", cursor)
        n = check(lib.lb_conn_dump(self._lb, now_ms, arr, cap, pos), "connection dump")
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
        self.stop_natrx()
        while self._nfqs:
            lib.lb_nfq_stop(self._nfqs.pop())

    # ------------------------------------------------------------ NAT replies at ingress
    def start_natrx(self, ifindex: int, mark_queue: int, qdisc_bypass: bool = False, cpu: int | None = None) -> None:
        """Read the NAT replies lbd's netdev chain forwards to the veth peer `ifindex` (lb.natingress),
        replacing a reader already running (the pair was created again). With the NFQUEUE adapter
        running, its first queue's thread reads them too (one thread for both directions of a NAT
        connection; `cpu` is then unused); else a thread of its own, pinned to `cpu`."""
        self.stop_natrx()
        opts = ffi.new("struct lb_natrx_opts *")
        opts.flags = lib.LB_NATRX_F_QDISC_BYPASS if qdisc_bypass else 0
        opts.cpu = -1 if cpu is None else cpu
        opts.ifindex = ifindex
        opts.mark_queue = mark_queue
        opts.host = self._nfqs[0] if self._nfqs else ffi.NULL
        err = ffi.new("int *")
        q = lib.lb_natrx_start(self._lb, opts, err)
        if q == ffi.NULL:
            code = -err[0]
            raise NfqError(code, f"cannot read NAT replies from interface {ifindex}: {os.strerror(code)}")
        self._natrx = q

    def stop_natrx(self) -> None:
        if self._natrx is not None:
            lib.lb_natrx_stop(self._natrx)
            self._natrx = None

    def natrx_stats(self) -> dict[str, int]:
        """The NAT-reply reader's counters ({} when it does not run)."""
        if self._natrx is None:
            return {}
        st = ffi.new("struct lb_natrx_stats *")
        lib.lb_natrx_get_stats(self._natrx, st)
        return {name: getattr(st, name) for name, _ in ffi.typeof("struct lb_natrx_stats").fields}

    def nfq_stats(self) -> dict[str, int]:
        """The adapters' counters, summed over every queue."""
        return {name: sum(q[name] for q in self.nfq_queue_stats()) for name in NFQ_STAT_NAMES} if self._nfqs else {}

    def nfq_overload_fds(self) -> list[int]:
        """Each queue's overload eventfd (lb_nfq_overload_fd: its thread took a run of full receive
        batches), in queue order; owned by the adapters, valid until stop()."""
        return [int(lib.lb_nfq_overload_fd(q)) for q in self._nfqs]

    def nfq_queue_stats(self) -> list[dict[str, int]]:
        """The adapters' counters per queue, in queue order."""
        out = []
        for q in self._nfqs:
            st = ffi.new("struct lb_nfq_stats *")
            lib.lb_nfq_get_stats(q, st)
            out.append({name: getattr(st, name) for name in NFQ_STAT_NAMES})
        return out
