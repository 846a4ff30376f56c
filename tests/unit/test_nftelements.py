"""lb.nftelements and lb.nfnlbatch without privileges: the keys nft would send for each of lbd's set
types, the batch's framing, the acknowledgements awaited, and lb.nftsteer sending a small delta
over netlink (a large one, or one with chains, by `nft -f`). tests/netns/test_nft_steering.py
writes them into a real kernel and reads them back with nft."""

from __future__ import annotations

import struct
from typing import Any

import pytest

from lb import ipsets as ips
from lb import nfnlbatch as nb
from lb import nftelements as ne
from lb import nftsteer as ns
from lb.steerwatch import _attrs
from test_nftsteer import FakeNft, attr_map, healthy_listing, manager, messages

KEY_CASES = [
    ("hash:ip", "10.0.0.1", bytes([10, 0, 0, 1])),
    ("hash:ip,port", "10.0.0.1,tcp:80", bytes([10, 0, 0, 1, 6, 0, 0, 0, 0, 80, 0, 0])),
    ("hash:ip,port", "192.168.1.2,udp:53", bytes([192, 168, 1, 2, 17, 0, 0, 0, 0, 53, 0, 0])),
    ("hash:ip,port", "10.0.0.1,tcp:65535", bytes([10, 0, 0, 1, 6, 0, 0, 0, 0xFF, 0xFF, 0, 0])),
    ("hash:ip,port,ip", "10.0.0.2,tcp:8080,10.9.0.1",
     bytes([10, 0, 0, 2, 6, 0, 0, 0, 0x1F, 0x90, 0, 0, 10, 9, 0, 1])),
]


@pytest.mark.parametrize(("set_type", "element", "key"), KEY_CASES)
def test_keys_are_nfts_registers(set_type: str, element: str, key: bytes) -> None:
    assert ne.key(set_type, element) == key


@pytest.mark.parametrize(("set_type", "element"), [
    ("hash:ip", "10.0.0"), ("hash:ip", "10.0.0.256"), ("hash:ip", "10.0.0.010"), ("hash:ip", "1"), ("hash:ip", "10.0.0.1,tcp:80"),
    ("hash:ip,port", "10.0.0.1"), ("hash:ip,port", "10.0.0.1,icmp:0"), ("hash:ip,port", "10.0.0.1,tcp:65536"),
    ("hash:ip,port", "10.0.0.1,tcp:http"), ("hash:ip,port,ip", "10.0.0.1,tcp:80,nope"), ("hash:net", "10.0.0.0/8"),
])
def test_an_element_not_of_the_type_is_refused_with_its_text(set_type: str, element: str) -> None:
    with pytest.raises(ValueError, match="element|set type"):
        ne.key(set_type, element)


def test_every_set_kind_has_a_key_layout() -> None:
    assert {k.type for k in ips.KINDS} <= set(ne.FIELDS)


def test_a_batch_wraps_requests_and_asks_each_for_an_acknowledgement() -> None:
    adds = ne.request("lbd-q3", "addr", "hash:ip", {"10.0.0.2", "10.0.0.1"}, add=True)
    dels = ne.request("lbd-q3", "svc", "hash:ip,port", {"10.0.0.9,tcp:80"}, add=False)
    data, seqs = nb.batch([adds, dels], seq=40)
    msgs = messages(data)
    assert [m[0] for m in msgs] == [nb.NFNL_MSG_BATCH_BEGIN, (10 << 8) | ne.NFT_MSG_NEWSETELEM,
                                    (10 << 8) | ne.NFT_MSG_DELSETELEM, nb.NFNL_MSG_BATCH_END]
    assert [m[2] for m in msgs] == [40, 41, 42, 43] and seqs == [41, 42]
    assert msgs[1][1] == nb.NLM_F_REQUEST | nb.NLM_F_ACK | nb.NLM_F_CREATE  # add: no EXCL, as `nft add element`
    assert msgs[2][1] == nb.NLM_F_REQUEST | nb.NLM_F_ACK
    attrs = attr_map(msgs[1][3], 4)  # after nfgenmsg
    assert attrs[ne.NFTA_SET_ELEM_LIST_TABLE] == b"lbd-q3\0" and attrs[ne.NFTA_SET_ELEM_LIST_SET] == b"addr\0"
    elements = attrs[ne.NFTA_SET_ELEM_LIST_ELEMENTS]  # each LIST_ELEM { KEY { DATA_VALUE } }, sorted
    each = [elements[a:b] for _t, a, b in _attrs(elements, 0, len(elements))]
    keys = [attr_map(attr_map(e)[ne.NFTA_SET_ELEM_KEY])[ne.NFTA_DATA_VALUE] for e in each]
    assert keys == [bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])]


def _ack(seq: int, err: int) -> bytes:
    return struct.pack("=IHHII", 36, nb.NLMSG_ERROR, 0, seq, 0) + struct.pack("=i", -err) + b"\0" * 16


def test_acks_are_read_bounded() -> None:
    data = _ack(5, 0) + _ack(6, 2)
    assert list(nb.acks(data)) == [(5, 0), (6, 2)]
    assert list(nb.acks(data[:40])) == [(5, 0)]  # the second truncated: not read past the end
    assert nb.ack_errno(data, 5) == 0 and nb.ack_errno(_ack(5, 0), 9) is None


class FakeSocket:
    """A netlink socket that answers each message of a batch with an ack, or refuses one."""

    def __init__(self, refuse: int | None = None) -> None:
        self.sent: list[bytes] = []
        self.refuse = refuse

    def __enter__(self) -> FakeSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def settimeout(self, _t: float) -> None:
        pass

    def bind(self, _a: Any) -> None:
        pass

    def setsockopt(self, level: int, opt: int, value: int) -> None:
        self.options = (level, opt, value)

    def send(self, data: bytes) -> None:
        self.sent.append(data)

    def recv(self, _n: int) -> bytes:
        msgs = messages(self.sent[-1])[1:-1]
        return b"".join(_ack(seq, 22 if i == self.refuse else 0) for i, (_t, _f, seq, _b) in enumerate(msgs))


def test_transact_waits_for_every_ack_and_reports_a_refusal(monkeypatch: pytest.MonkeyPatch) -> None:
    sock = FakeSocket()
    monkeypatch.setattr(nb, "socket_in", lambda netns: sock)
    ne.write("lbd-q3", [("addr", "hash:ip", {"10.0.0.1"})], [("svc", "hash:ip,port", {"10.0.0.1,tcp:80"})])
    assert len(messages(sock.sent[0])) == 4
    assert sock.options == (nb.SOL_NETLINK, nb.NETLINK_CAP_ACK, 1)  # a refusal's ack stays small
    sock = FakeSocket(refuse=1)
    monkeypatch.setattr(nb, "socket_in", lambda netns: sock)
    with pytest.raises(nb.NetlinkError, match="refused the set elements of ip lbd-q3: Invalid argument") as err:
        ne.write("lbd-q3", [("addr", "hash:ip", {"10.0.0.1"})], [("svc", "hash:ip,port", {"10.0.0.1,tcp:80"})])
    assert err.value.errno == 22
    sent = len(sock.sent)
    ne.write("lbd-q3", [("addr", "hash:ip", set())], [])  # nothing to change: nothing sent
    assert len(sock.sent) == sent


def _delta_manager(**kw: Any) -> tuple[FakeNft, ns.NftManager, list[Any]]:
    fake = FakeNft()
    written: list[Any] = []
    m = manager(fake, element_writer=lambda *a, **k: written.append((a, k)), **kw)
    fake.listing = healthy_listing(m)
    m._generation = lambda: 7
    m.sync(ips.Steering())
    fake.calls.clear()
    return fake, m, written


def test_a_small_delta_goes_over_netlink_in_nft_fs_order() -> None:
    fake, m, written = _delta_manager()
    delta = ips.SetDelta()
    delta.added[ips.SVC].add("10.0.0.1,tcp:80")
    delta.added[ips.ADDR].add("10.0.0.1")
    plan = m.apply(delta, lambda: {}, set())
    assert fake.scripts() == [] and (plan.added, plan.deleted) == (2, 0)
    ((table, adds, dels), kw), = written
    assert table == "lbd-q3" and kw == {"netns": None} and dels == []
    assert adds == [("addr", "hash:ip", {"10.0.0.1"}), ("svc", "hash:ip,port", {"10.0.0.1,tcp:80"})]  # pre-filter first
    assert m._intact_gen is None  # the fake generation did not move by lbd's one commit: read next time
    written.clear()
    m._intact_gen = 7
    delta = ips.SetDelta()
    delta.removed[ips.SVC].add("10.0.0.1,tcp:80")
    delta.removed[ips.ADDR].add("10.0.0.1")
    m.apply(delta, lambda: {}, set())
    ((_t, adds, dels), _kw), = written
    assert adds == [] and dels == [("svc", "hash:ip,port", {"10.0.0.1,tcp:80"}), ("addr", "hash:ip", {"10.0.0.1"})]  # pre-filter last


def test_a_large_delta_or_one_with_chains_goes_by_nft_f() -> None:
    fake, m, written = _delta_manager()
    delta = ips.SetDelta()
    delta.added[ips.ADDR].update(f"10.1.{i // 250}.{i % 250 + 1}" for i in range(ns.NETLINK_ELEMENTS_MAX + 1))
    m.apply(delta, lambda: {}, set())
    assert written == [] and len(fake.scripts()) == 1
    fake, m, written = _delta_manager(hook="input")
    m.ipt_available = lambda: False  # type: ignore[method-assign]
    delta = ips.SetDelta()
    delta.added[ips.NATRIP].add("10.9.0.5")  # the forward chain comes with it: one nft -f
    m._check_forwarding = lambda: None  # type: ignore[method-assign]
    m.apply(delta, lambda: {}, set())
    assert written == [] and "add element ip lbd-q3 natrip { 10.9.0.5 }" in fake.scripts()[0]


def test_a_refused_netlink_delta_is_an_nft_error_and_forces_a_full_sync() -> None:
    fake, m, _written = _delta_manager()

    def refuse(*_a: Any, **_k: Any) -> None:
        raise nb.NetlinkError(2, "nf_tables refused the set elements of ip lbd-q3: No such file or directory")

    m._element_writer = refuse
    delta = ips.SetDelta()
    delta.added[ips.ADDR].add("10.0.0.1")
    with pytest.raises(ns.NftError, match="NEWSETELEM.*No such file"):
        m.apply(delta, lambda: {}, set())
    assert m.installed is None
