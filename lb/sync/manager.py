"""lbd's connection sync daemons (ipvsadm --start-daemon master|backup): the kernel's sync protocol
version 1 over UDP multicast (lb/sync/codec.py), in lbd's event loop.

- master: the C core chooses per packet what the kernel's ip_vs_sync_conn would send (its
  ip_vs_sync_conn_needed with the sysctls of lb/sync/rule.py: by default the 3rd packet of a
  connection and every 50th after, a TCP connection's first packet in a new closing state, a
  template with every packet of its connections) and marks it (LB_CONN_F_SYNC_WANT in
  lb_conn_dump_sync_changes: the cost is what changed, not the table); every SYNC_TICK_S what was
  marked goes out in datagrams of at most sync_maxlen bytes, each entry once however many of its
  packets chose it in the tick. Bulk passes (Selector) send the whole table at start and
  every BULK_PERIOD_S, at most BULK_RATE entries a tick, so a (re)joining backup gets everything
  (issue 18 item 4; the protocol has no request message). FULLNAT, SYN-proxied and
  PROXY-protocol entries, which the kernel protocol cannot carry, go in lbd's extension on its own
  port (lb/sync/ext_daemon.py; issue 18 item 3), or are counted as not sent when the extension is
  off (sync_ext_port 0).
- backup: joins the group on the interface, reads datagrams (robust decoding, every drop counted by
  reason) and installs each record through the restore path of lbd's state file
  (Engine.restore_connections_raw -> lb_conn_restore), bound to the backup's own services and
  destinations. A record of no configured service or destination is dropped and counted (the
  kernel keeps it unbound until one appears; lbd has no unbound entries).

Options and defaults are the kernel's (ip_vs_ctl.c/ip_vs_sync.c start_sync_thread): group
224.0.0.81, port 8848, TTL 1, maximum message length the interface MTU less 28 bytes (1500 - 28 for
a master), syncid 0 (a backup with syncid 0 takes every syncid). One master and one backup may run
at once; starting a running one is EEXIST, stopping a stopped one ESRCH, an unknown interface ENODEV.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lb import consts as C
from lb.engine import EngineError
from lb.sync import codec, ext_daemon, records, sockets
from lb.sync.rule import SyncRule

if TYPE_CHECKING:
    from lb.director import Director

log = logging.getLogger("lbd")

SYNC_TICK_S = 1.0          # the master's send period (the kernel flushes a buffer within 2 s)
DEFAULT_TTL = 1
IP_UDP_HLEN = 20 + 8       # sizeof(struct iphdr) + sizeof(struct udphdr)
MAXLEN_MAX = 65535 - IP_UDP_HLEN
MASTER_MTU = 1500          # the kernel sizes a master's messages for 1500 whatever the MTU
BULK_PERIOD_S = 30         # a bulk pass (the whole table) starts this often at most (0: at start only)
BULK_RATE = 2000           # entries per tick of a bulk pass at most (about 50 datagrams of 1472 bytes)
STATES = {"master": 1, "backup": 2}  # IP_VS_STATE_MASTER / BACKUP


@dataclass
class DaemonConf:
    state: str
    mcast_ifn: str
    syncid: int = 0
    sync_maxlen: int = 0
    mcast_group: str = codec.SYNC_GROUP
    mcast_port: int = codec.SYNC_PORT
    mcast_ttl: int = DEFAULT_TTL
    bulk_period: int = BULK_PERIOD_S  # lbd's own (control protocol only): see Selector
    bulk_rate: int = BULK_RATE
    sync_ext_port: int = codec.SYNC_PORT + 1  # lbd's extension (ext_daemon); 0 = off

    def to_json(self) -> dict[str, Any]:
        return {"state": self.state, "mcast_ifn": self.mcast_ifn, "syncid": self.syncid,
                "sync_maxlen": self.sync_maxlen, "mcast_group": self.mcast_group,
                "mcast_port": self.mcast_port, "mcast_ttl": self.mcast_ttl,
                "bulk_period": self.bulk_period, "bulk_rate": self.bulk_rate,
                "sync_ext_port": self.sync_ext_port}


def _conf_from_args(args: dict[str, Any]) -> DaemonConf:
    state = args.get("state")
    if state not in STATES:
        raise EngineError("EINVAL", f"start_daemon: state must be master or backup, not {state!r}")
    ifn = args.get("mcast_ifn")
    if not isinstance(ifn, str) or not ifn or len(ifn) >= 16:
        raise EngineError("EINVAL", "start_daemon: mcast_ifn must name an interface (at most 15 characters)")
    conf = DaemonConf(state=state, mcast_ifn=ifn)
    for name, low, high in (("syncid", 0, 255), ("mcast_port", 1, 65535), ("mcast_ttl", 1, 255),
                            ("sync_maxlen", 1, 65535), ("bulk_period", 0, 86400), ("bulk_rate", 1, 1_000_000)):
        value = args.get(name)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise EngineError("EINVAL", f"start_daemon: {name} must be an integer in {low}..{high}")
        setattr(conf, name, value)
    group = args.get("mcast_group")
    if group is not None:
        try:
            addr = ipaddress.ip_address(group)
        except ValueError as exc:
            raise EngineError("EINVAL", f"start_daemon: mcast_group {group!r}: {exc}") from exc
        if addr.version != 4 or not addr.is_multicast:
            raise EngineError("EINVAL", f"start_daemon: mcast_group {group} is not an IPv4 multicast address "
                              "(lbd syncs over IPv4 only)")
        conf.mcast_group = str(addr)
    # lbd's extension (FULLNAT, SYN-proxy): on by default, on the sync port + 1.
    ext_port = args.get("sync_ext_port")
    if ext_port is None:
        conf.sync_ext_port = ext_daemon.default_port(conf.mcast_port)
    elif not isinstance(ext_port, int) or isinstance(ext_port, bool) or not 0 <= ext_port <= 65535:
        raise EngineError("EINVAL", "start_daemon: sync_ext_port must be an integer in 0..65535 (0: off)")
    elif ext_port == conf.mcast_port:
        raise EngineError("EINVAL", f"start_daemon: sync_ext_port {ext_port} is the sync port: the extension needs "
                          "a port of its own, where kernel backups do not listen")
    else:
        conf.sync_ext_port = ext_port
    return conf


def _ifindex(name: str) -> int:
    try:
        return socket.if_nametoindex(name)
    except OSError as exc:
        raise EngineError("ENODEV", f"start_daemon: no interface {name!r}") from exc


def _mtu(name: str) -> int:
    try:
        with open(f"/sys/class/net/{name}/mtu", encoding="ascii") as f:
            return int(f.read())
    except (OSError, ValueError):
        return MASTER_MTU


@dataclass
class Counters:
    values: dict[str, int] = field(default_factory=dict)

    def add(self, name: str, n: int = 1) -> None:
        self.values[name] = self.values.get(name, 0) + n


@dataclass(frozen=True)
class _Sent:
    """The entry in a slot that was sent (state -1: one the protocol cannot carry, counted once)."""

    key: tuple[int, str, int, str, int, bool]
    state: int


class Selector:
    """The master's choice of what to send (no I/O): see the module docstring.

    Changes come from the core's sync change marks (lb_conn_dump_sync_changes): a tick costs what
    changed, not the table, and sends the entries the core chose (LB_CONN_F_SYNC_WANT: the
    kernel's rule, applied per packet). The bulk transfer walks the table in pages of at most `bulk_rate`
    entries per tick, a pass starting when the master starts and then every `bulk_period_ms`
    (once the previous pass is done), and sends every entry it finds: a backup that (re)joins has
    the whole table after one pass."""

    def __init__(self, director: Director, counters: Counters, bulk_period_ms: int = BULK_PERIOD_S * 1000,
                 bulk_rate: int = BULK_RATE, extension: bool = False) -> None:
        self.director = director
        self.counters = counters
        self.bulk_period_ms = bulk_period_ms
        self.bulk_rate = max(bulk_rate, 1)
        self._sent: dict[int, _Sent] = {}
        self._bulk_cursor: int | None = None  # None: no pass under way
        self._bulk_started_ms: int | None = None
        # The sync extension: entries the kernel protocol cannot carry, chosen by pending() too.
        self.extension = extension
        self.ext_pending: list[ext_daemon.extension.ExtConn] = []

    def _lookup(self, proto: int, vaddr: str, vport: int, daddr: str, dport: int) -> tuple[str, int] | None:
        return lookup_dest(self.director, proto, vaddr, vport, daddr, dport)

    def start(self) -> None:
        """Forget the change marks: the first bulk pass (at the first tick) sends everything."""
        self.director.engine.sync_changes_reset()
        self._sent.clear()

    def _consider(self, entry: records.Entry, now_ms: int) -> codec.SyncConn | None:
        """The record to send for `entry` (chosen by the core, or met by a bulk pass), or None. An entry
        the kernel protocol cannot carry goes to ext_pending instead (the extension) when it is on."""
        if not records.wanted(entry):
            return None
        key = entry.key
        last = self._sent.get(entry.slot)
        if last is not None and last.key != key:
            last = None  # the slot holds another entry now
        why = records.not_sendable(entry)
        if why and not self.extension:
            if last is None:
                self.counters.add(f"not_sent_{why}")
                self._sent[entry.slot] = _Sent(key, -1)
            return None
        if why:  # ---- the sync extension (ext_daemon)
            ext = ext_daemon.convert(entry, self._lookup, self.director.engine, now_ms)
            if ext == ext_daemon.PENDING:
                return None  # not remembered as sent: tried again when a packet chooses it or a bulk pass meets it
            if isinstance(ext, str):
                self.counters.add(f"ext_not_sent_{ext}")
                return None
            self.ext_pending.append(ext)
            self._sent[entry.slot] = _Sent(key, entry.state)
            return None
        conn = records.to_sync(entry, self._lookup)
        if conn is None:
            self.counters.add("not_sent_no_service")
            return None
        self._sent[entry.slot] = _Sent(key, entry.state)
        return conn

    def pending(self, now_ms: int) -> list[codec.SyncConn]:
        """What to send now (and remember as sent): the changes, then the next page of a bulk pass."""
        engine = self.director.engine
        changes = engine.dump_sync_changes_raw(now_ms)
        if changes is None:
            return []
        out: list[codec.SyncConn] = []
        self.ext_pending = []
        done: set[int] = set()
        for slot in records.gone_slots(changes):
            self._sent.pop(slot, None)
        for entry in records.entries(changes):
            if not entry.flags & C.LB_CONN_F_SYNC_WANT:
                continue  # changed (for the state file's journal too) but not chosen by the rule
            queued = len(self.ext_pending)
            conn = self._consider(entry, now_ms)
            if conn is not None:
                out.append(conn)
            if conn is not None or len(self.ext_pending) > queued:
                done.add(entry.slot)
        if self._bulk_cursor is None and (self._bulk_started_ms is None
                                          or self.bulk_period_ms and now_ms - self._bulk_started_ms >= self.bulk_period_ms):
            self._bulk_cursor, self._bulk_started_ms = 0, now_ms
            self.counters.add("bulk_passes")
        if self._bulk_cursor is not None:
            page = engine.dump_connections_page(now_ms, self._bulk_cursor, self.bulk_rate)
            blob, cursor = page if page is not None else (b"", 0)
            bulk = 0
            for entry in records.entries(blob):
                if entry.slot in done:
                    continue
                queued = len(self.ext_pending)
                conn = self._consider(entry, now_ms)
                if conn is not None:
                    out.append(conn)
                # The extension's entries count too: a bulk pass carries them (to ext_pending).
                if conn is not None or len(self.ext_pending) > queued:
                    bulk += 1
            if bulk:
                self.counters.add("bulk_conns_sent", bulk)
            self._bulk_cursor = cursor or None
        return out


class Master:
    def __init__(self, director: Director, conf: DaemonConf, rule: SyncRule | None = None) -> None:
        self.director = director
        self.conf = conf
        self.rule = rule if rule is not None else SyncRule()
        self.counters = Counters()
        self.selector = Selector(director, self.counters, conf.bulk_period * 1000, conf.bulk_rate,
                                 extension=bool(conf.sync_ext_port))
        ifindex = _ifindex(conf.mcast_ifn)
        if not conf.sync_maxlen:
            conf.sync_maxlen = MASTER_MTU - IP_UDP_HLEN
        conf.sync_maxlen = min(max(conf.sync_maxlen, 1), MAXLEN_MAX)
        if director.engine.dump_connections_chunks(0) is None:  # lazy: nothing is dumped yet
            raise EngineError("EOPNOTSUPP", f"start_daemon: the {director.engine.name} engine cannot list its "
                              "connections for a sync master")
        sock = sockets.open_sender(ifindex, conf.mcast_ttl, conf.mcast_group, conf.mcast_port,
                                   f"master on {conf.mcast_ifn}")
        self.sock = sock
        self.task: asyncio.Task[None] | None = None
        try:
            self.ext = ext_daemon.ExtMaster(conf, ifindex, self.counters) if conf.sync_ext_port else None
        except EngineError:
            sock.close()
            raise

    def start(self) -> None:
        self.director.engine.sync_master_set(self.rule)  # the core chooses per packet from now on
        self.selector.start()
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            try:
                self.tick()
            except Exception:  # never let one bad tick stop the daemon
                log.exception("sync master: tick failed")
            await asyncio.sleep(SYNC_TICK_S)

    def tick(self, now_ms: int | None = None) -> int:
        now = int(time.monotonic() * 1000) if now_ms is None else now_ms
        conns = self.selector.pending(now)
        sent = 0
        for datagram in codec.encode(conns, self.conf.syncid, self.conf.sync_maxlen):
            try:
                self.sock.send(datagram)
                sent += 1
            except OSError as exc:  # the kernel drops what it cannot queue, too
                self.counters.add("send_errors")
                log.debug("sync master: send failed: %s", exc)
        if sent:
            self.counters.add("datagrams_sent", sent)
            self.counters.add("conns_sent", len(conns))
        if self.ext is not None:
            self.ext.send(self.selector.ext_pending)
        return len(conns) + len(self.selector.ext_pending)

    def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
        self.director.engine.sync_master_set(None)
        self.sock.close()
        if self.ext is not None:
            self.ext.close()


class Backup:
    def __init__(self, director: Director, conf: DaemonConf) -> None:
        self.director = director
        self.conf = conf
        self.counters = Counters()
        ifindex = _ifindex(conf.mcast_ifn)
        mtu = min(max(_mtu(conf.mcast_ifn), 1500), 65535)
        if conf.sync_maxlen:
            conf.sync_maxlen = min(max(conf.sync_maxlen, 1024), MAXLEN_MAX)
        else:
            conf.sync_maxlen = mtu - IP_UDP_HLEN
        sock = sockets.open_receiver(conf.mcast_ifn, ifindex, conf.mcast_group, conf.mcast_port,
                                     f"backup on {conf.mcast_ifn}")
        self.reader = sockets.DatagramReader(sock, self.receive, self.counters, "", "a datagram")
        try:
            self.ext = (ext_daemon.ExtBackup(director, conf, ifindex, self.counters,
                                             lambda proto, state: _default_timeout_s(director, proto, state))
                        if conf.sync_ext_port else None)
        except EngineError:
            sock.close()
            raise

    def start(self) -> None:
        self.reader.start()
        if self.ext is not None:
            self.ext.start()

    def receive(self, data: bytes, now_ms: int | None = None) -> dict[str, int]:
        return receive(self.director, self.conf, self.counters, data, now_ms)

    def stop(self) -> None:
        self.reader.stop()
        if self.ext is not None:
            self.ext.stop()


def receive(director: Director, conf: DaemonConf, counters: Counters, data: bytes,
            now_ms: int | None = None) -> dict[str, int]:
    """The backup's handling of one datagram (no I/O): decode, count what is dropped, install the
    rest; returns the outcome of its records by counter name."""
    counters.add("datagrams_received")
    if len(data) > conf.sync_maxlen:
        counters.add("dropped_too_long")
        return {}
    decoded = codec.decode(data, conf.syncid)
    for reason, n in decoded.dropped.items():
        counters.add(f"dropped_{reason}", n)
    now = int(time.monotonic() * 1000) if now_ms is None else now_ms
    outcome: dict[str, int] = {}
    for conn in decoded.conns:
        name = install(director, conn, now)
        outcome[name] = outcome.get(name, 0) + 1
        counters.add(name)
    return outcome


# Outcomes of lb_conn_restore for a received record, as counter names.
_INSTALL_OUTCOMES = {"restored": "conns_installed", "updated": "conns_updated", "EEXIST": "conns_other_dest", "ESRCH": "dropped_no_service",
                     "ENOENT": "dropped_no_dest", "ENOSPC": "dropped_table_full", "EINVAL": "dropped_invalid",
                     "EOPNOTSUPP": "dropped_unsupported"}


def _default_timeout_s(director: Director, proto: int, state: int) -> int:
    from lb.engine import ConnState
    from lb.pyengine.proto_tcp import TCP_TIMEOUTS_MS

    t = director.timeouts
    if proto == codec.IPPROTO_UDP:
        return t.udp
    if state == C.LB_S_ESTABLISHED:
        return t.tcp
    if state == C.LB_S_FIN_WAIT:
        return t.tcpfin
    return TCP_TIMEOUTS_MS.get(ConnState(state), 60_000) // 1000


def install(director: Director, conn: codec.SyncConn, now_ms: int) -> str:
    """One received record into the engine, bound to this director's own service and destination;
    returns the counter name of the outcome."""
    if conn.flags & codec.F_FWD_MASK not in records.FWD_BY_FLAG and not conn.template:
        return "dropped_unsupported_method"  # localnode / bypass: nothing lbd forwards
    blob = records.to_engine(conn, lambda proto, state: _default_timeout_s(director, proto, state))
    outcome = director.engine.restore_connections_raw(blob, now_ms)
    (name,) = outcome.keys()
    return _INSTALL_OUTCOMES.get(name, f"dropped_{name.lower()}")


def lookup_dest(director: Director, proto: int, vaddr: str, vport: int, daddr: str, dport: int) -> tuple[str, int] | None:
    """(forwarding method, fwmark) of the destination an entry is bound to, from the model: the
    <proto, VIP, port> service, the port-0 one, or a fwmark service holding the destination."""
    from lb.model import ConfigError, ServiceKey

    services = director.state.services
    if proto == 0:  # a fwmark service's template: <IPPROTO_IP, client, 0, the mark as an address, 0>
        try:
            svc = services.get(ServiceKey(proto=0, addr=vaddr, port=0))
        except ConfigError:
            return None
        spec = svc.dests.get((daddr, dport)) or svc.dests.get((daddr, 0)) if svc is not None else None
        return (spec.fwd, int(ipaddress.IPv4Address(vaddr))) if spec is not None else None
    for key in (ServiceKey(proto=proto, addr=vaddr, port=vport), ServiceKey(proto=proto, addr=vaddr, port=0)):
        svc = services.get(key)
        if svc is None:
            continue
        spec = svc.dests.get((daddr, dport)) or svc.dests.get((daddr, 0))
        return (spec.fwd, 0) if spec is not None else None
    for key, svc in services.items():
        if not key.fwmark:
            continue
        spec = svc.dests.get((daddr, dport)) or svc.dests.get((daddr, 0))
        if spec is not None:
            return spec.fwd, key.fwmark
    return None


class SyncDaemons:
    """The director's sync daemons: what get_daemon / start_daemon / stop_daemon operate on."""

    def __init__(self, director: Director, rule: SyncRule | None = None) -> None:
        self.director = director
        self.running: dict[str, Master | Backup] = {}
        self.rule = rule if rule is not None else SyncRule()  # lbd's --sync-threshold etc.

    def get(self, _args: dict[str, Any]) -> dict[str, Any]:
        return {"daemons": [{**d.conf.to_json(), **(d.rule.to_json() if isinstance(d, Master) else {}),
                             "counters": dict(d.counters.values)}
                            for state in ("master", "backup") if (d := self.running.get(state)) is not None]}

    def start(self, args: dict[str, Any]) -> None:
        conf = _conf_from_args(args)
        if conf.state in self.running:
            raise EngineError("EEXIST", f"a {conf.state} sync daemon is running already")
        try:
            asyncio.get_running_loop()
        except RuntimeError as exc:
            raise EngineError("EOPNOTSUPP", "start_daemon: sync daemons run in lbd's event loop only") from exc
        daemon: Master | Backup = (Master(self.director, conf, self.rule) if conf.state == "master"
                                   else Backup(self.director, conf))
        try:
            daemon.start()
        except EngineError:
            daemon.stop()
            raise
        self.running[conf.state] = daemon
        log.info("sync daemon started: state = %s, mcast_ifn = %s, syncid = %d, maxlen = %d, group = %s, "
                 "port = %d, ttl = %d, ext_port = %d%s", conf.state.upper(), conf.mcast_ifn, conf.syncid,
                 conf.sync_maxlen, conf.mcast_group, conf.mcast_port, conf.mcast_ttl, conf.sync_ext_port,
                 f", {self.rule.describe()}" if conf.state == "master" else "")

    def stop(self, args: dict[str, Any]) -> None:
        state = args.get("state")
        states = [state] if state in STATES else list(self.running) if state is None else None
        if states is None:
            raise EngineError("EINVAL", f"stop_daemon: state must be master or backup, not {state!r}")
        if not any(s in self.running for s in states):
            raise EngineError("ESRCH", f"no {state} sync daemon is running" if state else "no sync daemon is running")
        for s in states:
            daemon = self.running.pop(s, None)
            if daemon is not None:
                daemon.stop()
                log.info("sync daemon stopped: state = %s, mcast_ifn = %s, syncid = %d", s.upper(),
                         daemon.conf.mcast_ifn, daemon.conf.syncid)

    def stop_all(self) -> None:
        for state in list(self.running):
            self.running.pop(state).stop()
