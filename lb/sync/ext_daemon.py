"""The sync extension's side of the daemons (lb/sync/extension.py is its wire format).

- master: the entries the kernel protocol cannot carry (records.not_sendable: FULLNAT, SYN-proxy,
  PROXY protocol) become extension records (`ExtMaster.convert`), chosen by the same Selector as
  the standard ones (the same rule), and go to the group on `sync_ext_port`.
- backup: a second socket on that port; each record is installed through lb_conn_restore (FULLNAT:
  the same local address and port, reserved in the local port allocator) or lb_conn_restore_seq
  (with the sequence translation), bound to the backup's own service and destination.

Counters carry an `ext_` prefix (ext_datagrams_sent, ext_conns_installed, ext_dropped_<reason>, ...).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from lb import consts as C
from lb.sync import codec, extension, records, sockets

if TYPE_CHECKING:
    from lb.director import Director
    from lb.sync.manager import Counters, DaemonConf

log = logging.getLogger("lbd")

FWD_FLAGS = {**records.FWD_FLAGS, "fullnat": extension.F_FULLNAT}
PENDING = "pending"  # a SYN-proxy handshake still open: no offset yet, sent once it completes


@runtime_checkable
class SeqEngine(Protocol):
    """What the extension needs of an engine beyond the standard sync (the C engine has it)."""

    def conn_seq(self, proto: int, caddr: int, cport: int, vaddr: int, vport: int, now_ms: int) -> bytes | None: ...
    def restore_connection_seq(self, record: bytes, seq: bytes, now_ms: int) -> str: ...


def default_port(mcast_port: int) -> int:
    """The extension's port when none is given: the sync port + 1 (8849 by default)."""
    return mcast_port + 1 if mcast_port < 65535 else mcast_port - 1


def _seq_from_c(blob: bytes) -> extension.SeqState:
    from lb._ffi import ffi

    s = ffi.from_buffer("struct lb_conn_seq *", blob)
    translations = ((extension.SEQ_SYNPROXY if s.flags & C.LB_CONN_F_SYNPROXY else 0)
                    | (extension.SEQ_PROXY if s.flags & C.LB_CONN_F_PROXY else 0))
    return extension.SeqState(translations, int(s.px_len), int(s.px_flags), int(s.cookie_isn), int(s.client_isn),
                              int(s.d_in))


def _seq_to_c(seq: extension.SeqState) -> bytes:
    from lb._ffi import ffi

    s = ffi.new("struct lb_conn_seq *")
    s.flags = ((C.LB_CONN_F_SYNPROXY if seq.translations & extension.SEQ_SYNPROXY else 0)
               | (C.LB_CONN_F_PROXY if seq.translations & extension.SEQ_PROXY else 0))
    s.px_len = seq.px_len
    s.px_flags = seq.px_flags
    s.cookie_isn = seq.cookie_isn
    s.client_isn = seq.client_isn
    s.d_in = seq.d_in
    return bytes(ffi.buffer(s))


def convert(entry: records.Entry, lookup: records.Lookup, engine: object, now_ms: int) -> extension.ExtConn | str:
    """The extension record of an entry, or why there is none: "no_service" (its service or
    destination went), "unsupported_engine", PENDING (a SYN-proxy handshake still open)."""
    found = lookup(entry.proto, entry.vaddr, entry.vport, entry.daddr, entry.dport)
    if found is None or found[0] not in FWD_FLAGS:
        return "no_service"
    fwd, fwmark = found
    conn = records.to_sync(entry, lambda *_: ("route", fwmark))  # states, flags, timeout as the kernel's
    if conn is None:
        return "no_service"
    conn = dataclasses.replace(conn, flags=(conn.flags & ~codec.F_FWD_MASK) | FWD_FLAGS[fwd])
    seq: extension.SeqState | None = None
    if entry.flags & (C.LB_CONN_F_SYNPROXY | C.LB_CONN_F_PROXY):
        if not isinstance(engine, SeqEngine):
            return "unsupported_engine"
        blob = engine.conn_seq(entry.proto, int(ipaddress.IPv4Address(entry.caddr)), entry.cport,
                               int(ipaddress.IPv4Address(entry.vaddr)), entry.vport, now_ms)
        if blob is None:
            return PENDING
        seq = _seq_from_c(blob)
    laddr = entry.laddr if entry.laddr != "0.0.0.0" else None
    return extension.ExtConn(conn, laddr, entry.lport if laddr else 0, seq)


# Outcomes of the engine's restore, as counter names (after the "ext_" prefix).
_OUTCOMES = {"restored": "conns_installed", "updated": "conns_updated", "EEXIST": "conns_other_dest",
             "ESRCH": "dropped_no_service", "ENOENT": "dropped_no_dest", "ENOSPC": "dropped_table_full",
             "EINVAL": "dropped_invalid", "EOPNOTSUPP": "dropped_unsupported", "ENOMEM": "dropped_no_memory"}


def install(director: Director, ext: extension.ExtConn, now_ms: int,
            default_timeout_s: Callable[[int, int], int]) -> str:
    """One received extension record into the engine; the counter name of the outcome (without
    the ext_ prefix). ENOENT: the backup has no such destination or FULLNAT local address."""
    from lb._ffi import ffi

    blob = records.to_engine(ext.conn, default_timeout_s)
    ci = ffi.new("struct lb_conn_info *")
    ffi.memmove(ci, blob, len(blob))
    if ext.laddr is not None:
        ci.laddr = int(ipaddress.IPv4Address(ext.laddr))
        ci.lport = ext.lport
    engine = director.engine
    if ext.seq is None:
        name = next(iter(engine.restore_connections_raw(bytes(ffi.buffer(ci)), now_ms)))
    elif not isinstance(engine, SeqEngine):
        name = "EOPNOTSUPP"
    else:
        ci.flags |= ((C.LB_CONN_F_SYNPROXY if ext.seq.translations & extension.SEQ_SYNPROXY else 0)
                     | (C.LB_CONN_F_PROXY if ext.seq.translations & extension.SEQ_PROXY else 0))
        name = engine.restore_connection_seq(bytes(ffi.buffer(ci)), _seq_to_c(ext.seq), now_ms)
    return _OUTCOMES.get(name, f"dropped_{name.lower()}")


def receive(director: Director, conf: DaemonConf, counters: Counters, data: bytes,
            default_timeout_s: Callable[[int, int], int], now_ms: int | None = None) -> dict[str, int]:
    """The backup's handling of one extension datagram (no I/O); outcomes by counter name."""
    counters.add("ext_datagrams_received")
    if len(data) > conf.sync_maxlen:
        counters.add("ext_dropped_too_long")
        return {}
    decoded = extension.decode(data, conf.syncid)
    for reason, n in decoded.dropped.items():
        counters.add(f"ext_dropped_{reason}", n)
    now = int(time.monotonic() * 1000) if now_ms is None else now_ms
    outcome: dict[str, int] = {}
    for ext in decoded.conns:
        name = "ext_" + install(director, ext, now, default_timeout_s)
        outcome[name] = outcome.get(name, 0) + 1
        counters.add(name)
    return outcome


class ExtMaster:
    """The master's extension socket: sends what the Selector converted."""

    def __init__(self, conf: DaemonConf, ifindex: int, counters: Counters) -> None:
        self.conf = conf
        self.counters = counters
        self.sock = sockets.open_sender(ifindex, conf.mcast_ttl, conf.mcast_group, conf.sync_ext_port,
                                        f"extension master on {conf.mcast_ifn} port {conf.sync_ext_port}")

    def send(self, conns: list[extension.ExtConn]) -> None:
        if not conns:
            return
        sent = 0
        for datagram in extension.encode(conns, self.conf.syncid, self.conf.sync_maxlen):
            try:
                self.sock.send(datagram)
                sent += 1
            except OSError as exc:
                self.counters.add("ext_send_errors")
                log.debug("sync master: extension send failed: %s", exc)
        if sent:
            self.counters.add("ext_datagrams_sent", sent)
            self.counters.add("ext_conns_sent", len(conns))

    def close(self) -> None:
        self.sock.close()


class ExtBackup:
    """The backup's extension socket, read in the event loop."""

    def __init__(self, director: Director, conf: DaemonConf, ifindex: int, counters: Counters,
                 default_timeout_s: Callable[[int, int], int]) -> None:
        self.director = director
        self.conf = conf
        self.counters = counters
        self.default_timeout_s = default_timeout_s
        sock = sockets.open_receiver(conf.mcast_ifn, ifindex, conf.mcast_group, conf.sync_ext_port,
                                     f"extension backup on {conf.mcast_ifn} port {conf.sync_ext_port}")
        self.reader = sockets.DatagramReader(
            sock, lambda data: receive(director, conf, counters, data, default_timeout_s), counters, "ext_",
            "an extension datagram")

    def start(self) -> None:
        self.reader.start()

    def stop(self) -> None:
        self.reader.stop()
