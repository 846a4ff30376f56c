"""Packet-table rows (tests/packet_table.py's format) of the hashing schedulers sh, dh and mh, whose
choice depends on the packet's addresses and ports, and of one-packet scheduling (-o).

Which real server the kernel picks for a packet is read from tests/oracles (Debian 6.1.192's
schedulers in plain Python, independent of both engines); the client addresses and ports of each
row are the first of the documentation range that show what the row is about (two clients on
different servers, one client's two ports on different servers with sh-port, ...).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import packet_table as t
from packet_table import (
    T_SR,
    T_UDP,
    TCP80,
    UDP53,
    ConfigStep,
    ConnExpect,
    DestExpect,
    DestSetup,
    PacketStep,
    Row,
    ServiceExpect,
    ServiceSetup,
    Setup,
    SvcRef,
)

# lb.model's flag bits (ServiceSpec.sched_flags) and the kernel's (tests/oracles)
FALLBACK, PORT = 1, 2
_KERNEL_BITS = {FALLBACK: 0x08, PORT: 0x10}


def kernel_choice(svc: ServiceSetup, proto: int, src: str, sport: int, dst: str, dport: int,
                  edits: Sequence[DestSetup] = ()) -> str | None:
    """The real server the kernel's scheduler picks for this packet as the first of a new flow,
    with svc's destinations added in order, then `edits` applied (the oracle's own model of the
    list and tables)."""
    import oracles

    flags = sum(bits for bit, bits in _KERNEL_BITS.items() if svc.sched_flags & bit)
    model = oracles.Service(svc.sched, protocol=svc.ref[0], port=svc.ref[2], flags=flags)
    for dest in svc.dests:
        model.add_dest(dest.addr, dest.port, weight=dest.weight)
    for dest in edits:
        model.edit_dest(dest.addr, dest.port, weight=dest.weight)
    chosen = model.schedule(oracles.PacketInfo.of(src, dst, sport, dport, proto))
    return None if chosen is None else str(chosen.addr)


def clients(n: int = 250) -> list[str]:
    return [f"192.0.2.{i}" for i in range(1, n + 1)]


def first_client(svc: ServiceSetup, dest: str | None, *, sport: int, avoid: Sequence[str] = ()) -> str:
    """The first documentation-range client (not in `avoid`) the kernel sends to `dest`."""
    proto, vip, vport = svc.ref
    for client in clients():
        if client not in avoid and kernel_choice(svc, proto, client, sport, vip, vport) == dest:
            return client
    raise AssertionError(f"no client of 192.0.2.0/24 goes to {dest} in {svc}")


def flows_row(row_id: str, description: str, setup: Setup, flows: Sequence[tuple[bytes, str | None]],
              tags: tuple[str, ...], edits: Sequence[DestSetup] = ()) -> Row:
    """A row of new flows (one TCP SYN or UDP datagram each, one per millisecond) into setup's
    services (the one of each packet's destination address and port), each forwarded to its real
    server or answered (None: no destination), and the counts and entries they leave. `edits`
    (ipvsadm -e of the first service's destinations) come first."""
    refs = {svc.ref: svc for svc in setup.services}
    steps: list[PacketStep | ConfigStep] = [ConfigStep("edit_dest", setup.services[0].ref, d) for d in edits]
    per_dest = {(svc.ref, d.addr): [0, 0] for svc in setup.services for d in svc.dests}  # conns, inbytes
    conns: list[ConnExpect] = []
    last = len(flows) - 1
    for i, (pkt, dest) in enumerate(flows):
        if dest is None:
            steps.append(t.answer(pkt, i))
            continue
        ref = (pkt[9], ".".join(str(b) for b in pkt[16:20]), int.from_bytes(pkt[22:24], "big"))
        assert ref in refs, f"{row_id}: no service {ref}"
        steps.append(t.fwd(pkt, i, dest))
        per_dest[(ref, dest)][0] += 1
        per_dest[(ref, dest)][1] += t.ip_total_length(pkt)
        state, timeout = ("SYN_RECV", T_SR) if ref[0] == t.PROTO_TCP else ("UDP", T_UDP)
        conns.append(t.conn(state, timeout - (last - i), dest, cport=int.from_bytes(pkt[20:22], "big"),
                            caddr=".".join(str(b) for b in pkt[12:16]), svc=ref, dport=ref[2]))
    dests = []
    services = []
    for svc in setup.services:
        tcp = svc.ref[0] == t.PROTO_TCP
        counted: list[tuple[str, int, int]] = [
            (d.addr, per_dest[(svc.ref, d.addr)][0], per_dest[(svc.ref, d.addr)][1])
            for d in reversed(svc.dests)]  # listed newest first
        dests += [DestExpect(svc.ref, addr, svc.ref[2], active=n if tcp else 0, inactive=0 if tcp else n, conns=n,
                             inpkts=n, inbytes=b) for addr, n, b in counted]
        n, b = sum(c[1] for c in counted), sum(c[2] for c in counted)
        services.append(ServiceExpect(svc.ref, n, n, b))
    return Row(row_id, description, setup, tuple(steps), tuple(dests), tuple(services), tuple(conns),
               check_ms=last, tags=("sched", "hashing") + tags)


def service(sched: str, ref: SvcRef = TCP80, weights: Sequence[int] = (1, 1, 1), flags: int = 0, **kw: Any) -> Setup:
    port = ref[2]
    dests = tuple(DestSetup(addr, port, weight=w) for addr, w in zip((t.RS1, t.RS2, t.RS3), weights, strict=False))
    return Setup((ServiceSetup(ref, sched, dests, sched_flags=flags, **kw),))


def packet_for(ref: SvcRef, src: str, sport: int) -> bytes:
    if ref[0] == t.PROTO_TCP:
        return t.tcp(sport=sport, src=src, dst=ref[1], dport=ref[2])
    return t.udp(sport=sport, src=src, dst=ref[1], dport=ref[2])


def _client_rows(sched: str, address_text: str, port_text: str) -> tuple[list[Row], tuple[str, str, str]]:
    """The two rows sh and mh share (`sched`-source-address, `sched`-port): a client's address picks its
    real server, its port too with the port flag; and the first clients the kernel sends to RS1, RS2
    and RS3 (source port 0), which the weight-0 rows reuse."""
    setup = service(sched)
    svc = setup.services[0]
    a, b, c = (first_client(svc, rs, sport=0) for rs in (t.RS1, t.RS2, t.RS3))
    rows = [flows_row(
        f"{sched}-source-address", f"{sched}: {address_text}",
        setup, [(packet_for(TCP80, a, 41000), t.RS1), (packet_for(TCP80, b, 41001), t.RS2),
                (packet_for(TCP80, a, 41002), t.RS1), (packet_for(TCP80, c, 41003), t.RS3)], (sched,))]

    setup = service(sched, UDP53, flags=PORT)
    svc = setup.services[0]
    by_port = {p: kernel_choice(svc, t.PROTO_UDP, t.CLIENT1, p, t.VIP, 53) for p in range(50000, 50100)}
    p2 = next(p for p in by_port if by_port[p] != by_port[50000])
    rows.append(flows_row(
        f"{sched}-port", f"{sched}-port: {port_text}", setup,
        [(packet_for(UDP53, t.CLIENT1, 50000), by_port[50000]), (packet_for(UDP53, t.CLIENT1, p2), by_port[p2])],
        (sched, "udp")))
    return rows, (a, b, c)


# ---- sh ---------------------------------------------------------------------------------------


def _sh_rows() -> list[Row]:
    rows, (_, b, _) = _client_rows(
        "sh", "the client's address alone picks the real server (256 buckets); the same client from another "
        "port goes to the same one", "the client's source port is hashed too, so one client's flows spread "
        "over the real servers")

    # RS2 at weight 0 still holds one bucket per round of the table (++count >= weight), the very
    # buckets it holds at weight 1: the client `a` above is one of its clients. They have no server
    # without sh-fallback, and with it go on to the first available of the buckets (2h + k) & 255.
    for flags, row_id in ((0, "sh-weight0-no-fallback"), (FALLBACK, "sh-fallback")):
        setup = service("sh", weights=(1, 0, 1), flags=flags)
        svc = setup.services[0]
        home_rs2 = b
        other = first_client(svc, t.RS3, sport=0)
        fallback = kernel_choice(svc, t.PROTO_TCP, home_rs2, 0, t.VIP, 80)
        assert (fallback is None) == (not flags) and fallback != t.RS2
        rows.append(flows_row(
            row_id, "sh, RS2 at weight 0: " + ("its clients get no server (ICMP answer)" if not flags else
                                                 "its clients fall back to the next available bucket's server"),
            setup, [(packet_for(TCP80, home_rs2, 42000), fallback), (packet_for(TCP80, other, 42001), t.RS3)],
            ("sh", "weight0", "fallback" if flags else "no-dest")))
    return rows


# ---- dh ---------------------------------------------------------------------------------------


def _dh_rows() -> list[Row]:
    rows = []
    base = service("dh")
    svc = base.services[0]
    home = kernel_choice(svc, t.PROTO_TCP, t.CLIENT1, 0, t.VIP, 80)
    # A second VIP whose hash lands on another real server: dh hashes the destination address.
    vip2 = next(f"198.51.100.{i}" for i in range(2, 255)
                if kernel_choice(svc, t.PROTO_TCP, t.CLIENT1, 0, f"198.51.100.{i}", 80) not in (home, None))
    other = ServiceSetup((t.PROTO_TCP, vip2, 80), "dh", svc.dests)
    setup = Setup((svc, other))
    home2 = kernel_choice(other, t.PROTO_TCP, t.CLIENT1, 0, vip2, 80)
    rows.append(flows_row(
        "dh-destination-address", "dh: the destination address alone picks the real server, so every client "
        "of one VIP goes to one server, whatever its address or port; another VIP, another server",
        setup, [(t.tcp(sport=41000, src=t.CLIENT1), home), (t.tcp(sport=41001, src=t.CLIENT2), home),
                (t.tcp(sport=41002, src="192.0.2.99", flags="S"), home),
                (t.tcp(sport=41003, src=t.CLIENT1, dst=vip2), home2)], ("dh",)))

    weights = tuple(0 if rs == home else 1 for rs in (t.RS1, t.RS2, t.RS3))
    setup = service("dh", weights=weights, flags=FALLBACK)  # dh reads no flag: no fallback
    rows.append(flows_row(
        "dh-weight0", "dh: the VIP's server at weight 0 means no server for its clients (dh has no fallback, "
        "and ignores the scheduler flags)", setup, [(t.tcp(sport=42000), None), (t.tcp(sport=42001, src=t.CLIENT2), None)],
        ("dh", "weight0", "no-dest")))
    return rows


# ---- mh ---------------------------------------------------------------------------------------


def _mh_rows() -> list[Row]:
    rows, (a, b, c) = _client_rows(
        "mh", "the client's address picks the real server through the 4093-entry Maglev table (fixed keys: the "
        "kernel's table); the same client from another port goes to the same one",
        "the client's source port is hashed too")

    # RS2 edited to weight 0 keeps its entries (mh builds from last_weight, the latest non-zero
    # weight): its client b has no server without mh-fallback, a fallback with it; a and c stay.
    quiesce = (DestSetup(t.RS2, 80, weight=0),)
    for flags, row_id in ((0, "mh-quiesced-keeps-entries"), (FALLBACK, "mh-fallback")):
        setup = service("mh", flags=flags)
        svc = setup.services[0]
        fallback = kernel_choice(svc, t.PROTO_TCP, b, 0, t.VIP, 80, quiesce)
        assert (fallback is None) == (not flags) and fallback != t.RS2
        assert kernel_choice(svc, t.PROTO_TCP, a, 0, t.VIP, 80, quiesce) == t.RS1
        rows.append(flows_row(
            row_id, "mh, RS2 edited to weight 0: " + (
                "it keeps its table entries, so its clients get no server (ICMP answer), the others stay"
                if not flags else "its clients fall back (a fresh hash per try), the others stay"),
            setup, [(packet_for(TCP80, b, 42000), fallback), (packet_for(TCP80, a, 42001), t.RS1),
                    (packet_for(TCP80, c, 42002), t.RS3)],
            ("mh", "weight0", "fallback" if flags else "no-dest"), edits=quiesce))

    # Added with weight 0, RS2 takes no entry at all: its would-be client b is someone else's.
    setup = service("mh", weights=(1, 0, 1))
    other = kernel_choice(setup.services[0], t.PROTO_TCP, b, 0, t.VIP, 80)
    assert other in (t.RS1, t.RS3)
    rows.append(flows_row(
        "mh-added-weight0", "mh: a destination added with weight 0 takes no table entry (turns 0), so every "
        "client has a server", setup, [(packet_for(TCP80, b, 43000), other),
                                       (packet_for(TCP80, a, 43001), kernel_choice(setup.services[0], t.PROTO_TCP, a, 0,
                                                                                    t.VIP, 80))],
        ("mh", "weight0")))
    return rows


# ---- -o: one-packet scheduling ---------------------------------------------------------------


def _ops_rows() -> list[Row]:
    rows = []
    q1, q2, q3 = (t.udp(payload=b"query-%02d" % i) for i in range(3))  # one flow: the same ports
    size = t.ip_total_length(q1)
    setup = Setup((ServiceSetup(UDP53, "rr", (DestSetup(t.RS1, 53), DestSetup(t.RS2, 53)), ops=True),))
    rows.append(Row(
        "ops-each-datagram", "-o: every datagram of one UDP flow is scheduled afresh (rr: RS2, RS1, RS2) and no "
        "connection entry stays; each counts as a connection (conns, inpkts), none as InActConn",
        setup, (t.fwd(q1, 0, t.RS2), t.fwd(q2, 1, t.RS1), t.fwd(q3, 2, t.RS2)),
        (DestExpect(UDP53, t.RS2, 53, conns=2, inpkts=2, inbytes=2 * size),
         DestExpect(UDP53, t.RS1, 53, conns=1, inpkts=1, inbytes=size)),
        (ServiceExpect(UDP53, 3, 3, 3 * size),), (), check_ms=2, tags=("ops", "udp")))

    setup = Setup((ServiceSetup(UDP53, "rr", (DestSetup(t.RS1, 53, u_threshold=1),), ops=True),))
    rows.append(Row(
        "ops-threshold", "-o: the one-packet entry holds its destination only while its datagram is sent, so "
        "an upper threshold of 1 never keeps the next datagram out",
        setup, (t.fwd(q1, 0, t.RS1), t.fwd(q2, 1, t.RS1)),
        (DestExpect(UDP53, t.RS1, 53, conns=2, inpkts=2, inbytes=2 * size),),
        (ServiceExpect(UDP53, 2, 2, 2 * size),), (), check_ms=1, tags=("ops", "udp", "threshold")))

    setup = Setup((ServiceSetup(UDP53, "rr", (DestSetup(t.RS1, 53), DestSetup(t.RS2, 53)), ops=True,
                                persistent=60),))
    other = t.udp(sport=50001, src=t.CLIENT2)
    rows.append(Row(
        "ops-persistent", "-o with -p: the client's template is made and refreshed as for any connection, so its "
        "datagrams stay on one server; only the template is left in the table",
        setup, (t.fwd(q1, 0, t.RS2), t.fwd(q2, 1000, t.RS2), t.fwd(other, 2000, t.RS1)),
        (DestExpect(UDP53, t.RS2, 53, conns=2, inpkts=2, inbytes=2 * size, persist=1),
         DestExpect(UDP53, t.RS1, 53, conns=1, inpkts=1, inbytes=t.ip_total_length(other), persist=1)),
        (ServiceExpect(UDP53, 3, 3, 2 * size + t.ip_total_length(other)),),
        (ConnExpect(t.PROTO_UDP, t.CLIENT1, 0, t.VIP, 53, t.RS2, 53, "NONE", 60_000 - 1000),
         ConnExpect(t.PROTO_UDP, t.CLIENT2, 0, t.VIP, 53, t.RS1, 53, "NONE", 60_000)),
        check_ms=2000, tags=("ops", "udp", "persist")))

    setup = Setup((ServiceSetup(TCP80, "rr", (DestSetup(t.RS1), DestSetup(t.RS2)), ops=True),))
    syn, ack = t.tcp(sport=46000), t.tcp(sport=46000, flags="A", seq=1001, ack=1)
    rows.append(Row(
        "ops-tcp-ignored", "-o on a TCP service is kept but changes nothing (the kernel applies it to UDP only): "
        "the flow has its entry and stays on its server",
        setup, (t.fwd(syn, 0, t.RS2), t.fwd(ack, 1, t.RS2)),
        (DestExpect(TCP80, t.RS2, active=1, conns=1, inpkts=2, inbytes=t.ip_total_length(syn) + t.ip_total_length(ack),
                    handshakes=1), DestExpect(TCP80, t.RS1)),
        (ServiceExpect(TCP80, 1, 2, t.ip_total_length(syn) + t.ip_total_length(ack)),),
        (t.conn("ESTABLISHED", t.T_ES, t.RS2, cport=46000),), check_ms=1, tags=("ops",)))
    return rows


def rows() -> list[Row]:
    return _sh_rows() + _dh_rows() + _mh_rows() + _ops_rows()
