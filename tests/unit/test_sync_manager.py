"""The sync daemons' logic without sockets (lb/sync/manager.py, lb/sync/records.py): what a master
sends, what a backup installs, through the C engine's dump and restore paths."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from scapy.all import IP, TCP, raw

from lb import consts as C
from lb.director import Director
from lb.engine import EngineError, FwdState
from lb.fastpath import CEngine
from lb.sync import codec, manager
from lb.sync.manager import Counters, DaemonConf, Selector
from lb.sync.rule import SyncRule

VIP = "10.0.0.100"
SVC = {"proto": "tcp", "addr": VIP, "port": 80}


KERNEL_DEFAULTS = SyncRule()


def _director(persistent: int | None = None, rule: SyncRule | None = KERNEL_DEFAULTS) -> Director:
    """A director with three destinations; the core chooses what to sync by `rule` (what a started
    master sets: the kernel's defaults, the 3rd packet of a connection and every 50th after)."""
    d = Director(CEngine(conn_max=256), rules=None, resolver=None)
    d.engine.sync_master_set(rule)
    d.handle("add_service", {**SVC, "sched": "rr", **({"persistent": persistent} if persistent else {})})
    for i, fwd in ((1, "route"), (2, "tunnel"), (3, "masq")):
        d.handle("add_dest", {"service": SVC, "dest": {"addr": f"10.0.0.1{i}", "port": 80, "fwd": fwd, "weight": 1}})
        d.engine.set_fwd(d.state.services[next(iter(d.state.services))].spec.key, f"10.0.0.1{i}", 80,
                         FwdState(ifindex=5, dst_mac=bytes([2, 0, 0, 0, 0, i]), src_mac=b"\x02" * 6))
    return d


def _pkt(src: str, sport: int, flags: str) -> bytes:
    return raw(IP(src=src, dst=VIP) / TCP(sport=sport, dport=80, flags=flags))


def _conns(d: Director) -> list[tuple[Any, ...]]:
    return sorted((c.caddr, c.cport, c.daddr, c.state) for c in d.engine.connections(10_000))


def test_master_sends_established_not_half_open_and_backup_installs_them() -> None:
    master, backup = _director(), _director()
    for sport in (1000, 1001, 1002):
        master.engine.process(_pkt("10.9.0.5", sport, "S"), 1000)
    selector = Selector(master, Counters())
    assert selector.pending(1000) == []  # SYN_RECV: the kernel does not sync it
    for sport in (1000, 1001):
        master.engine.process(_pkt("10.9.0.5", sport, "A"), 1001)
    assert selector.pending(1001) == []  # ESTABLISHED on the 2nd packet: the kernel waits for the 3rd
    for sport in (1000, 1001):
        master.engine.process(_pkt("10.9.0.5", sport, "PA"), 1001)
    sent = selector.pending(1001)
    assert sorted(c.cport for c in sent) == [1000, 1001]
    assert {c.flags & codec.F_FWD_MASK for c in sent} <= {codec.F_DROUTE, codec.F_TUNNEL, codec.F_MASQ}
    assert all(c.state == C.LB_S_ESTABLISHED and c.timeout_s == 900 for c in sent)
    assert selector.pending(1002) == []  # nothing changed: nothing resent
    counters = Counters()
    conf = DaemonConf("backup", "lo", sync_maxlen=1472)
    for datagram in codec.encode(sent, 0, 1472):
        manager.receive(backup, conf, counters, datagram, 5000)
    assert counters.values == {"datagrams_received": 1, "conns_installed": 2}
    expected = [(c[0], c[1], c[2], "ESTABLISHED") for c in _conns(master) if c[3] == "ESTABLISHED"]
    assert _conns(backup) == expected
    # Listed with the master's timeout, and counted active on the backup's destinations.
    assert all(abs(c.expires_ms - 900_000) <= 1000 for c in backup.engine.connections(5000))
    assert sum(d.active for s in backup.engine.services() for d in s.dests) == 2
    # A record of an entry the backup has updates it (the kernel's ip_vs_proc_conn): the master's
    # state and expiry, and the active/inactive counts move with the state.
    closing = [codec.SyncConn(**{**c.__dict__, "state": C.LB_S_CLOSE_WAIT, "flags": c.flags | codec.F_INACTIVE,
                                 "timeout_s": 60}) for c in sent]
    manager.receive(backup, conf, counters, codec.encode(closing, 0, 1472)[0], 6000)
    assert counters.values["conns_updated"] == 2 and len(_conns(backup)) == 2
    assert {c.state for c in backup.engine.connections(6000)} == {"CLOSE_WAIT"}
    assert all(abs(c.expires_ms - 60_000) <= 1000 for c in backup.engine.connections(6000))
    assert sum(d.active for s in backup.engine.services() for d in s.dests) == 0
    # A record naming another real server than the backup's entry leaves the entry alone.
    moved = codec.SyncConn(**{**sent[0].__dict__, "daddr": "10.0.0.12" if sent[0].daddr != "10.0.0.12" else "10.0.0.11"})
    manager.receive(backup, conf, counters, codec.encode([moved], 0, 1472)[0], 6001)
    assert counters.values["conns_other_dest"] == 1


def test_state_changes_and_templates_are_sent() -> None:
    master = _director(persistent=300)
    master.engine.process(_pkt("10.9.0.7", 2000, "S"), 1000)
    master.engine.process(_pkt("10.9.0.7", 2000, "A"), 1001)
    master.engine.process(_pkt("10.9.0.7", 2000, "PA"), 1001)
    selector = Selector(master, Counters())
    first = selector.pending(1001)
    assert sorted(c.template for c in first) == [False, True]
    template = next(c for c in first if c.template)
    assert template.cport == 0 and template.flags & codec.F_TEMPLATE and template.state == 1  # ASSURED
    master.engine.process(_pkt("10.9.0.7", 2000, "FA"), 1002)
    # The closing state goes at once; the template goes with every packet of its connections (the
    # kernel's rule with a sync period: templates skip the packet test).
    sent = selector.pending(1002)
    assert sorted(c.template for c in sent) == [False, True]
    (fin,) = [c for c in sent if not c.template]
    assert fin.state == C.LB_S_CLOSE_WAIT and fin.flags & codec.F_INACTIVE  # IPVS: ES + client FIN

    backup = _director(persistent=300)
    counters = Counters()
    for datagram in codec.encode(first, 3, 1472):
        manager.receive(backup, DaemonConf("backup", "lo", syncid=3, sync_maxlen=1472), counters, datagram, 1)
    assert counters.values["conns_installed"] == 2
    assert sorted(c.state for c in backup.engine.connections(1)) == ["ASSURED", "ESTABLISHED"]


def test_backup_drops_records_of_unknown_services_and_forged_datagrams() -> None:
    backup = _director()
    counters = Counters()
    conf = DaemonConf("backup", "lo", syncid=5, sync_maxlen=1472)
    other = codec.SyncConn(6, codec.F_DROUTE, 1, "10.9.0.9", 5, "10.0.0.200", 80, "10.0.0.11", 80, 0, 60)
    no_dest = codec.SyncConn(6, codec.F_DROUTE, 1, "10.9.0.9", 6, VIP, 80, "10.0.0.99", 80, 0, 60)
    manager.receive(backup, conf, counters, codec.encode([other, no_dest], 5, 1472)[0], 1)
    manager.receive(backup, conf, counters, codec.encode([other], 6, 1472)[0], 1)  # another syncid
    manager.receive(backup, conf, counters, b"\0" * 2000, 1)                       # longer than maxlen
    manager.receive(backup, conf, counters, b"garbage", 1)
    assert counters.values == {"datagrams_received": 4, "dropped_no_service": 1, "dropped_no_dest": 1,
                               "dropped_syncid_mismatch": 1, "dropped_too_long": 1, "dropped_bad_version": 1}
    assert _conns(backup) == []


def test_daemon_operations_outside_the_event_loop_and_bad_arguments() -> None:
    d = _director()
    assert d.handle("get_daemon", {}) == {"daemons": []}
    with pytest.raises(EngineError) as info:
        d.handle("stop_daemon", {"state": "master"})
    assert info.value.errno_name == "ESRCH"
    for bad in ({"state": "primary", "mcast_ifn": "lo"}, {"state": "master", "mcast_ifn": ""},
                {"state": "master", "mcast_ifn": "lo", "syncid": 256},
                {"state": "master", "mcast_ifn": "lo", "mcast_group": "10.0.0.1"},
                {"state": "master", "mcast_ifn": "lo", "bulk_period": -1},
                {"state": "master", "mcast_ifn": "lo", "bulk_rate": 0}):
        with pytest.raises(EngineError) as info:
            d.handle("start_daemon", bad)
        assert info.value.errno_name == "EINVAL", bad
    with pytest.raises(EngineError) as info:
        d.handle("start_daemon", {"state": "master", "mcast_ifn": "lo"})
    assert info.value.errno_name == "EOPNOTSUPP"


def test_start_list_stop_in_the_event_loop() -> None:
    d = _director()

    async def run() -> None:
        with pytest.raises(EngineError) as info:
            d.handle("start_daemon", {"state": "backup", "mcast_ifn": "nosuchif0"})
        assert info.value.errno_name == "ENODEV"
        d.handle("start_daemon", {"state": "master", "mcast_ifn": "lo", "syncid": 9})
        with pytest.raises(EngineError) as again:
            d.handle("start_daemon", {"state": "master", "mcast_ifn": "lo"})
        assert again.value.errno_name == "EEXIST"
        (daemon,) = d.handle("get_daemon", {})["daemons"]
        assert {k: daemon[k] for k in ("state", "mcast_ifn", "syncid", "sync_maxlen", "mcast_group",
                                       "mcast_port", "mcast_ttl")} == {
            "state": "master", "mcast_ifn": "lo", "syncid": 9, "sync_maxlen": 1472, "mcast_group": "224.0.0.81",
            "mcast_port": 8848, "mcast_ttl": 1}
        assert (daemon["bulk_period"], daemon["bulk_rate"]) == (manager.BULK_PERIOD_S, manager.BULK_RATE)
        assert {k: daemon[k] for k in ("sync_threshold", "sync_period", "sync_refresh_period", "sync_retries",
                                       "sync_persist_mode")} == {"sync_threshold": 3, "sync_period": 50,
                                                                 "sync_refresh_period": 0, "sync_retries": 0,
                                                                 "sync_persist_mode": 0}
        d.handle("stop_daemon", {"state": "master"})
        d.handle("start_daemon", {"state": "master", "mcast_ifn": "lo", "bulk_period": 0, "bulk_rate": 500})
        (daemon,) = d.handle("get_daemon", {})["daemons"]
        assert (daemon["bulk_period"], daemon["bulk_rate"]) == (0, 500)
        d.handle("stop_daemon", {"state": "master"})
        assert d.handle("get_daemon", {}) == {"daemons": []}

    asyncio.run(run())


def test_fuzzed_datagrams_install_nothing_bogus() -> None:
    """Random and mutated datagrams through the whole backup path (decode + lb_conn_restore): no
    exception, and every entry that appears is of the backup's own service and real servers."""
    import random

    backup = _director()
    counters = Counters()
    conf = DaemonConf("backup", "lo", sync_maxlen=1472)
    rng = random.Random(1818)
    valid = codec.encode([codec.SyncConn(6, codec.F_DROUTE, 1, "10.9.0.5", 1000 + i, VIP, 80, f"10.0.0.1{1 + i % 3}", 80,
                                         0, 900) for i in range(8)], 0, 1472)[0]
    for n in range(5000):
        data = bytearray(valid)
        for _ in range(rng.randint(1, 6)):
            data[rng.randrange(8, len(data))] = rng.randrange(256)
        if n % 3 == 0:
            data = bytearray(rng.randbytes(rng.randrange(200)))
        manager.receive(backup, conf, counters, bytes(data), 1000 + n)
    dests = {"10.0.0.11", "10.0.0.12", "10.0.0.13"}
    for c in backup.engine.connections(6000):
        assert (c.vaddr, c.vport) == (VIP, 80) or c.state in ("NONE", "ASSURED"), c
        assert c.daddr in dests, c
    assert counters.values["datagrams_received"] == 5000
    assert sum(v for k, v in counters.values.items() if k.startswith("dropped_")) > 0


def _established(d: Director, n: int, now: int) -> None:
    """n connections, each with 3 packets from the client: the 3rd is the one the kernel syncs."""
    for sport in range(3000, 3000 + n):
        for flags in ("S", "A", "PA"):
            d.engine.process(_pkt("10.9.0.8", sport, flags), now)


def test_bulk_pass_sends_the_whole_table_paced_and_again_each_period() -> None:
    """Issue 18 item 4: a backup that joins late gets every entry from the next bulk pass, which
    walks the table `bulk_rate` entries per tick; between passes only changes are sent."""
    master = _director()
    _established(master, 7, 1000)
    selector = Selector(master, Counters(), bulk_period_ms=30_000, bulk_rate=3)
    selector.start()  # forgets the change marks: the bulk pass alone sends the table
    pages = [selector.pending(1000 + i) for i in range(3)]
    assert [len(p) for p in pages] == [3, 3, 1]
    assert sorted(c.cport for p in pages for c in p) == list(range(3000, 3007))
    assert selector.pending(1010) == []          # pass done, nothing changed
    assert selector.pending(30_999) == []        # the next pass starts 30 s after this one started
    late_joiner = _director()
    counters = Counters()
    conf = DaemonConf("backup", "lo", sync_maxlen=1472)
    for now in range(31_000, 31_003):
        for datagram in codec.encode(selector.pending(now), 0, 1472):
            manager.receive(late_joiner, conf, counters, datagram, now)
    assert counters.values["conns_installed"] == 7
    assert _conns(late_joiner) == _conns(master)
    assert selector.counters.values["bulk_passes"] == 2 and selector.counters.values["bulk_conns_sent"] == 14


def test_a_lost_datagram_is_repaired_by_the_next_bulk_pass() -> None:
    """Item 6: the protocol has no retransmission (neither has the kernel's); what a lost datagram
    carried reaches the backup with the next bulk pass."""
    master, backup = _director(), _director()
    selector = Selector(master, Counters(), bulk_period_ms=10_000)
    selector.start()
    assert selector.pending(1000) == []
    _established(master, 2, 1001)
    lost = selector.pending(1001)                # the change: this datagram never arrives
    assert len(lost) == 2
    assert selector.pending(1002) == []
    counters = Counters()
    for datagram in codec.encode(selector.pending(11_000), 0, 1472):
        manager.receive(backup, DaemonConf("backup", "lo", sync_maxlen=1472), counters, datagram, 11_000)
    assert counters.values["conns_installed"] == 2 and _conns(backup) == _conns(master)


def test_sync_change_marks_are_not_taken_by_the_journal() -> None:
    """The sync's change marks are its own (lb_conn_dump_sync_changes): the state file's journal
    reading its marks leaves the sync's set, and each tick reads only what changed."""
    master = _director()
    selector = Selector(master, Counters(), bulk_period_ms=0)  # a bulk pass at start only
    selector.start()
    assert selector.pending(1000) == []
    _established(master, 3, 1001)
    master.engine.dump_changes_raw(1001)          # the journal's pass
    assert sorted(c.cport for c in selector.pending(1002)) == [3000, 3001, 3002]
    assert master.engine.dump_sync_changes_raw(1003) == b""  # nothing changed since
    master.engine.process(_pkt("10.9.0.8", 3001, "FA"), 1004)
    (fin,) = selector.pending(1005)
    assert fin.cport == 3001 and fin.state != C.LB_S_ESTABLISHED and fin.flags & codec.F_INACTIVE
    assert selector.pending(100_000) == []        # bulk_period 0: no further pass


def test_reordered_records_leave_the_backup_with_a_real_entry() -> None:
    """Item 6: datagrams carry no sequence number (the kernel's neither): an older record arriving
    after a newer one sets the older state, bound to the same real server; the next change or bulk
    pass corrects it. Nothing is created for another destination."""
    backup = _director()
    counters = Counters()
    conf = DaemonConf("backup", "lo", sync_maxlen=1472)
    est = codec.SyncConn(6, codec.F_DROUTE, C.LB_S_ESTABLISHED, "10.9.0.9", 7, VIP, 80, "10.0.0.11", 80, 0, 900)
    closing = codec.SyncConn(**{**est.__dict__, "state": C.LB_S_CLOSE_WAIT, "flags": est.flags | codec.F_INACTIVE,
                                "timeout_s": 60})
    for conn in (closing, est):  # reordered: the CLOSE_WAIT record overtook the ESTABLISHED one
        manager.receive(backup, conf, counters, codec.encode([conn], 0, 1472)[0], 1)
    assert counters.values == {"datagrams_received": 2, "conns_installed": 1, "conns_updated": 1}
    assert _conns(backup) == [("10.9.0.9", 7, "10.0.0.11", "ESTABLISHED")]


def test_sync_counters_are_in_the_metrics() -> None:
    """Item 6: what a backup dropped and why is on the metrics endpoint (docs/metrics.md)."""
    from dataclasses import replace

    from prometheus_client import CollectorRegistry, generate_latest

    from lb import metrics

    backup = _director()
    counters = Counters()
    manager.receive(backup, DaemonConf("backup", "lo", syncid=5, sync_maxlen=1472), counters, b"garbage", 1)
    daemon = {**DaemonConf("backup", "eth1", syncid=5).to_json(), "counters": dict(counters.values)}
    snap = replace(metrics.take_snapshot(backup), daemons=[daemon])
    registry = CollectorRegistry()
    registry.register(metrics.DirectorCollector(lambda: snap))
    text = generate_latest(registry).decode()
    assert 'lbd_sync_daemon_info{mcast_ifn="eth1",state="backup",syncid="5"} 1.0' in text
    assert 'lbd_sync_events_total{counter="dropped_bad_version",state="backup"} 1.0' in text
    assert 'lbd_sync_events_total{counter="datagrams_received",state="backup"} 1.0' in text
