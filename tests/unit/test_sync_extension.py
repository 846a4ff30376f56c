"""lbd's sync extension (lb/sync/extension.py, lb/sync/ext_daemon.py; issue 18 item 3): the byte
layout, malformed datagrams dropped and counted, fuzzing of the receiver, and a FULLNAT and a
SYN-proxied connection going from a master's C engine to a backup's through the extension, with
the same local address and port and the same sequence translation."""

from __future__ import annotations

import random
import struct
from typing import Any

import pytest
from scapy.all import IP, TCP, Raw, raw

from lb import consts as C
from lb.director import Director
from lb.engine import FwdState, Reason, Verdict
from lb.fastpath import CEngine
from lb.model import ServiceKey
from lb.sync import codec, ext_daemon, extension, manager
from lb.sync.manager import Counters, DaemonConf, Selector
from lb.sync.rule import SyncRule

VIP, CLIENT, RS, LIP = "10.0.0.100", "198.51.100.7", "10.1.0.11", "10.1.0.1"
FNAT = {"proto": "tcp", "addr": VIP, "port": 80}
KEY = ServiceKey(6, VIP, 80)
T0 = 1_000_000

CONN = codec.SyncConn(protocol=6, flags=extension.F_FULLNAT, state=C.LB_S_ESTABLISHED, caddr=CLIENT, cport=40000,
                      vaddr=VIP, vport=80, daddr=RS, dport=8080, timeout_s=900)
SEQ = extension.SeqState(extension.SEQ_SYNPROXY, 0, 0, 123456, 1000, 0xFFFF0000)


def test_layout_header_and_record() -> None:
    ext = extension.ExtConn(CONN, LIP, 5001, SEQ)
    (datagram,) = extension.encode([ext], syncid=9, maxlen=1472)
    # Header: the kernel's 8 bytes, version 76 ('L') and "LB" where the kernel has spare zeroes.
    assert datagram[:8] == struct.pack("!BBHBbH", 0, 9, len(datagram), 1, 76, 0x4C42)
    # Record: the kernel's 36-byte IPv4 record, its size counting both options.
    assert len(datagram) == 8 + 36 + (2 + 8) + (2 + 20)
    assert struct.unpack_from("!H", datagram, 8 + 2)[0] == 36 + 10 + 22
    assert struct.unpack_from("!I", datagram, 8 + 4)[0] & codec.F_FWD_MASK == 5  # FULLNAT
    assert datagram[44:46] == bytes((0x21, 8)) and datagram[46:54] == bytes((10, 1, 0, 1)) + struct.pack("!HH", 5001, 0)
    assert datagram[54:56] == bytes((0x22, 20))
    assert struct.unpack_from("!HHB3sIII", datagram, 56) == (1, 0, 0, bytes(3), 123456, 1000, 0xFFFF0000)


def test_round_trip_and_alignment() -> None:
    conns = [extension.ExtConn(CONN, LIP, 5000 + i, None) for i in range(300)]
    conns.append(extension.ExtConn(CONN, None, 0, extension.SeqState(extension.SEQ_PROXY | extension.SEQ_SYNPROXY,
                                                                   28, extension.PX_V2 | extension.PX_SENT, 1, 2, 3)))
    datagrams = extension.encode(conns, 0, 1472)
    assert all(len(d) <= 1472 for d in datagrams) and len(datagrams) > 1
    got = [c for d in datagrams for c in extension.decode(d).conns]
    assert [(g.laddr, g.lport, g.seq, g.conn.flags) for g in got] == [
        (LIP, 5000 + i, None, extension.F_FULLNAT | codec.F_SYNC) for i in range(300)]
    # The last one names no local address: its method bits must then not say FULLNAT.
    assert extension.decode(datagrams[-1]).dropped == {"bad_record": 1}
    masq = codec.SyncConn(**{**CONN.__dict__, "flags": codec.F_MASQ})
    seq = extension.SeqState(extension.SEQ_PROXY, 40, extension.PX_ACKED)
    (only,) = extension.decode(extension.encode([extension.ExtConn(masq, None, 0, seq)], 0, 1472)[0]).conns
    assert only.seq == seq and only.conn.flags == codec.F_MASQ | codec.F_SYNC


def test_kernel_and_standard_receivers_never_read_the_extension() -> None:
    (datagram,) = extension.encode([extension.ExtConn(CONN, LIP, 5001, SEQ)], 0, 1472)
    # ip_vs_process_message: reserved 0 and a version other than SYNC_PROTO_VER: dropped whole.
    assert datagram[0] == 0 and datagram[6] != codec.SYNC_PROTO_VER
    assert codec.decode(datagram).dropped == {"bad_version": 1}
    # Were the header read anyway, each record has a mandatory option the kernel does not know.
    assert not datagram[44] & codec.IPVS_OPT_F_PARAM and datagram[44] not in (1, 2, 3)
    # And a standard datagram is nothing the extension reads.
    (std,) = codec.encode([CONN], 0, 1472)
    assert extension.decode(std).dropped == {"bad_version": 1}


def _one(laddr: str | None = LIP, lport: int = 5001, seq: extension.SeqState | None = SEQ) -> bytearray:
    return bytearray(extension.encode([extension.ExtConn(CONN, laddr, lport, seq)], 3, 1472)[0])


def _set_size(d: bytearray) -> bytes:
    struct.pack_into("!H", d, 2, len(d))
    return bytes(d)


@pytest.mark.parametrize("mutate, reason", [
    (lambda d: d[:5], "short"),
    (lambda d: d[:-1], "bad_size"),
    (lambda d: bytes(d[:1]) + b"\x05" + bytes(d[2:]), "syncid_mismatch"),
    (lambda d: bytes(d[:7]) + b"\x00" + bytes(d[8:]), "bad_version"),          # magic
    (lambda d: _set_size(d[:40]), "truncated"),
    (lambda d: bytes(d[:45]) + b"\x07" + bytes(d[46:]), "bad_option"),        # laddr option length
    (lambda d: bytes(d[:54]) + b"\x21" + bytes(d[55:]), "bad_option"),        # two laddr options
    (lambda d: bytes(d[:54]) + b"\x30" + bytes(d[55:]), "unknown_option"),    # unknown mandatory
    (lambda d: bytes(d[:46]) + bytes(4) + bytes(d[50:]), "bad_laddr"),        # 0.0.0.0
    (lambda d: bytes(d[:50]) + bytes(2) + bytes(d[52:]), "bad_laddr"),        # port 0
    (lambda d: bytes(d[:56]) + b"\x00\x04" + bytes(d[58:]), "bad_seq"),       # unknown translation
    (lambda d: bytes(d[:58]) + b"\x00\x10" + bytes(d[60:]), "bad_seq"),       # PROXY length without PROXY
    (lambda d: bytes(d[:9]) + b"\x11" + bytes(d[10:]), "bad_protocol"),       # UDP with sequence state
    (lambda d: bytes(d[:16]) + b"\x00\x0b" + bytes(d[18:]), "bad_state"),
    (lambda d: bytes(d[:8]) + b"\x01" + bytes(d[9:]), "bad_record"),          # IPv6 record type
])
def test_malformed_datagrams_are_dropped_and_counted(mutate: Any, reason: str) -> None:
    decoded = extension.decode(bytes(mutate(_one())), syncid=3)
    assert decoded.conns == [] and decoded.dropped == {reason: 1}


def test_an_optional_unknown_option_is_read_past() -> None:
    d = _one(seq=None)
    d += bytes((0x40 | 0x30, 2, 0, 0))
    struct.pack_into("!H", d, 10, 36 + 10 + 4)
    (got,) = extension.decode(_set_size(d)).conns
    assert (got.laddr, got.lport) == (LIP, 5001)


def test_fuzzed_datagrams_never_raise() -> None:
    rng = random.Random(18_3)
    seeds = [bytes(_one()), bytes(_one(seq=None)), bytes(_one(laddr=None))]
    for i in range(20_000):
        d = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 6)):
            op = rng.randrange(3)
            if op == 0 and d:
                d[rng.randrange(len(d))] = rng.randrange(256)
            elif op == 1:
                d = d[:rng.randrange(len(d) + 1)]
            else:
                d += bytes(rng.randrange(256) for _ in range(rng.randrange(8)))
        if i % 2:
            _set_size(d) if len(d) >= 4 else None
        decoded = extension.decode(bytes(d))
        for ext in decoded.conns:
            assert ext.laddr is not None or ext.seq is not None
            assert ext.seq is None or not ext.seq.problem()


# ---- through the C engines: master -> datagram -> backup


def _director(synproxy: bool = False, proxy: str | None = None, rule: SyncRule | None = None) -> Director:
    """A FULLNAT director; with `rule`, the core chooses what to sync per packet (as a started master)."""
    d = Director(CEngine(conn_max=256, hash_seed=7), rules=None, resolver=None)
    d.engine.sync_master_set(rule)
    d.handle("add_service", {**FNAT, "sched": "rr", **({"synproxy": True} if synproxy else {}),
                             **({"proxy_protocol": proxy} if proxy else {})})
    d.handle("add_laddr", {"service": FNAT, "addr": LIP})
    d.handle("add_dest", {"service": FNAT, "dest": {"addr": RS, "port": 8080, "fwd": "fullnat", "weight": 1}})
    d.engine.set_fwd(KEY, RS, 8080, FwdState(ifindex=3, dst_mac=b"\x02\0\0\0\0\x11", src_mac=b"\x02" * 6,
                                             saddr=LIP, mtu=1500))
    return d


def _client(flags: str, sport: int, **kw: Any) -> bytes:
    payload = kw.pop("payload", None)
    pkt = IP(src=CLIENT, dst=VIP) / TCP(sport=sport, dport=80, flags=flags, **kw)
    return raw(pkt / Raw(payload) if payload is not None else pkt)


def _unbulked(values: dict[str, int]) -> dict[str, int]:
    """A master's counters without the bulk passes' (every first tick starts one)."""
    return {k: v for k, v in values.items() if not k.startswith("bulk_")}


def _to_backup(master: Director, backup: Director, now: int, selector: Selector | None = None) -> tuple[Counters, Counters]:
    sent, got = Counters(), Counters()
    selector = selector or Selector(master, sent, extension=True)
    assert selector.pending(now) == []  # nothing for the kernel's protocol
    conf = DaemonConf("backup", "lo", sync_maxlen=1472)
    for datagram in extension.encode(selector.ext_pending, 0, 1472):
        ext_daemon.receive(backup, conf, got, datagram, lambda proto, state: 900, now)
    return sent, got


def _fullnat_established(master: Director, sport: int) -> int:
    """A FULLNAT connection from the client's `sport` through its handshake; its local port."""
    a = master.engine.process(_client("S", sport, seq=1000), T0)
    lport: int = IP(a.out)[TCP].sport
    master.engine.process(raw(IP(src=RS, dst=LIP) / TCP(sport=8080, dport=lport, flags="SA", seq=5, ack=1001)), T0)
    master.engine.process(_client("A", sport, seq=1001, ack=6), T0)
    return lport


def test_fullnat_connection_keeps_its_local_address_and_port_on_the_backup() -> None:
    master, backup = _director(), _director()
    lports = [_fullnat_established(master, sport) for sport in (40000, 40001)]
    selector = Selector(master, Counters(), extension=True)
    _, got = _to_backup(master, backup, T0, selector)
    assert got.values == {"ext_datagrams_received": 1, "ext_conns_installed": 2}
    listed = sorted((c.cport, c.laddr, c.lport, c.state) for c in backup.engine.connections(T0))
    assert listed == [(40000, LIP, lports[0], "ESTABLISHED"), (40001, LIP, lports[1], "ESTABLISHED")]
    # The reply tuple is the backup's: the real server's packet to (LIP, lport) reaches the client.
    a = backup.engine.process(raw(IP(src=RS, dst=LIP) / TCP(sport=8080, dport=lports[0], flags="A", seq=6, ack=1001)
                                  / Raw(b"hi")), T0 + 5)
    assert a.verdict == Verdict.ANSWER and (IP(a.out).src, IP(a.out).dst, IP(a.out)[TCP].dport) == (VIP, CLIENT, 40000)
    # The port is reserved: another client's record naming it is refused.
    other = extension.ExtConn(codec.SyncConn(**{**CONN.__dict__, "caddr": "198.51.100.8"}), LIP, lports[0], None)
    assert ext_daemon.install(backup, other, T0, lambda p, s: 900) == "conns_other_dest"
    # A second pass: unchanged entries are not resent.
    _, got2 = _to_backup(master, backup, T0 + 1, selector)
    assert "ext_datagrams_received" not in got2.values


def test_synproxy_connection_keeps_its_sequence_translation_on_the_backup() -> None:
    master, backup = _director(synproxy=True, rule=SyncRule()), _director(synproxy=True)
    a = master.engine.process(_client("S", 40000, seq=1000, options=[("MSS", 1460)]), T0)
    cookie = IP(a.out)[TCP].seq
    a = master.engine.process(_client("PA", 40000, seq=1001, ack=cookie + 1, payload=b"GET /\r\n"), T0 + 1)
    lport = IP(a.out)[TCP].sport
    # Handshake with the real server still open: nothing is sent yet (no offset), and retried.
    counters = Counters()
    selector = Selector(master, counters, extension=True)
    _, got = _to_backup(master, backup, T0 + 2, selector)
    assert got.values == {} and _unbulked(counters.values) == {}
    a = master.engine.process(raw(IP(src=RS, dst=LIP) / TCP(sport=8080, dport=lport, flags="SA", seq=777_000,
                                                            ack=1001)), T0 + 3)
    assert a.reason == Reason.SP_HANDSHAKE
    _, got = _to_backup(master, backup, T0 + 4, selector)
    assert got.values == {}  # established, but the kernel's rule waits for the client's 3rd packet
    for _ in range(3):  # counted from the first packet after the client's handshake (the entry's creation)
        master.engine.process(_client("A", 40000, seq=1008, ack=cookie + 1), T0 + 4)
    _, got = _to_backup(master, backup, T0 + 4, selector)
    assert got.values == {"ext_datagrams_received": 1, "ext_conns_installed": 1}
    reply = raw(IP(src=RS, dst=LIP) / TCP(sport=8080, dport=lport, flags="PA", seq=777_001, ack=1008) / Raw(b"200"))
    on_master, on_backup = master.engine.process(reply, T0 + 5), backup.engine.process(reply, T0 + 5)
    assert on_backup.verdict == Verdict.ANSWER and on_backup.out == on_master.out
    assert IP(on_backup.out)[TCP].seq == cookie + 1
    data = _client("PA", 40000, seq=1008, ack=cookie + 4, payload=b"more")
    on_master, on_backup = master.engine.process(data, T0 + 6), backup.engine.process(data, T0 + 6)
    assert on_backup.verdict == Verdict.XMIT_L2 and IP(on_backup.out)[TCP].ack == 777_004
    assert IP(on_backup.out)[TCP].sport == lport


def test_proxy_protocol_connection_keeps_its_header_state_on_the_backup() -> None:
    master, backup = _director(proxy="v2"), _director(proxy="v2")
    a = master.engine.process(_client("S", 40000, seq=1000), T0)
    lport = IP(a.out)[TCP].sport
    master.engine.process(raw(IP(src=RS, dst=LIP) / TCP(sport=8080, dport=lport, flags="SA", seq=5, ack=1001)), T0)
    a = master.engine.process(_client("PA", 40000, seq=1001, ack=6, payload=b"GET /\r\n"), T0 + 1)
    assert len(IP(a.out)[TCP].payload) == 28 + 7  # the v2 header went first
    master.engine.process(raw(IP(src=RS, dst=LIP) / TCP(sport=8080, dport=lport, flags="A", seq=6, ack=1001 + 35)), T0 + 2)
    selector = Selector(master, Counters(), extension=True)
    _, got = _to_backup(master, backup, T0 + 3, selector)
    assert got.values == {"ext_datagrams_received": 1, "ext_conns_installed": 1}
    (ext,) = selector.ext_pending
    assert ext.seq == extension.SeqState(extension.SEQ_PROXY, 28, extension.PX_V2 | extension.PX_SENT | extension.PX_ACKED,
                                         0, 1000, 0)
    # The client's next bytes and the server's acknowledgments move by the header on the backup as on the master.
    for pkt in (_client("PA", 40000, seq=1008, ack=6, payload=b"more"),
                raw(IP(src=RS, dst=LIP) / TCP(sport=8080, dport=lport, flags="A", seq=6, ack=1001 + 35 + 4))):
        on_master, on_backup = master.engine.process(pkt, T0 + 4), backup.engine.process(pkt, T0 + 4)
        assert on_backup.verdict == on_master.verdict and on_backup.out == on_master.out


def test_bulk_passes_carry_and_count_extension_entries() -> None:
    """Issue 18 item 5, the way back: a backup that (re)joins learns the FULLNAT entries from the
    next bulk pass, as the standard ones, and `bulk_conns_sent` counts them."""
    master, backup = _director(), _director()
    lport = _fullnat_established(master, 40000)
    counters = Counters()
    selector = Selector(master, counters, bulk_period_ms=10_000, extension=True)
    selector.start()  # forgets the change marks: the bulk pass alone sends the entry
    _, got = _to_backup(master, backup, T0, selector)
    assert got.values == {"ext_datagrams_received": 1, "ext_conns_installed": 1}
    assert counters.values["bulk_passes"] == 1 and counters.values["bulk_conns_sent"] == 1
    _, got = _to_backup(master, backup, T0 + 1_000, selector)  # unchanged, no pass under way: nothing
    assert got.values == {}
    late = _director()  # a backup that joins now gets it from the next pass
    _, got = _to_backup(master, late, T0 + 10_000, selector)
    assert got.values == {"ext_datagrams_received": 1, "ext_conns_installed": 1}
    assert counters.values["bulk_passes"] == 2 and counters.values["bulk_conns_sent"] == 2
    assert [(c.laddr, c.lport) for c in late.engine.connections(T0 + 10_000)] == [(LIP, lport)]


def test_with_the_extension_off_they_are_counted_as_not_sent() -> None:
    master = _director()
    _fullnat_established(master, 40000)
    counters = Counters()
    selector = Selector(master, counters)
    assert selector.pending(T0) == [] and selector.ext_pending == []
    assert _unbulked(counters.values) == {"not_sent_fullnat": 1}


def test_restore_seq_refuses_inconsistent_state() -> None:
    backup = _director(synproxy=True)
    bad = extension.ExtConn(CONN, LIP, 5001, extension.SeqState(extension.SEQ_PROXY, 3))  # v1 is 32..56 bytes
    assert ext_daemon.install(backup, bad, T0, lambda p, s: 900) == "dropped_invalid"
    assert backup.engine.connections(T0) == []


def test_daemon_conf_ext_port() -> None:
    conf = manager._conf_from_args({"state": "master", "mcast_ifn": "lo"})
    assert conf.sync_ext_port == 8849 and conf.to_json()["sync_ext_port"] == 8849
    assert manager._conf_from_args({"state": "master", "mcast_ifn": "lo", "mcast_port": 9000}).sync_ext_port == 9001
    assert manager._conf_from_args({"state": "backup", "mcast_ifn": "lo", "sync_ext_port": 0}).sync_ext_port == 0
    from lb.engine import EngineError

    for bad in (8848, -1, 70000, "x", True):
        with pytest.raises(EngineError):
            manager._conf_from_args({"state": "master", "mcast_ifn": "lo", "sync_ext_port": bad})
