"""Packet-table rows (tests/packet_table.py's format) of datagrams larger than the path MTU.

The kernel reassembles fragments before the queue (lbd's rules turn on nf_defrag_ipv4, the
reassembly kernel IPVS relies on: docs/fastpath.md "Fragments"), so the engines see whole
datagrams of up to 65,535 bytes. What they send towards a real server follows the kernel's
ensure_mtu_is_adequate (ip_vs_xmit.c): larger than the destination's path MTU with DF clear, it
leaves as fragments of that MTU (XMIT_L2 with frag_mtu: the adapter cuts them, as the kernel's
ip_fragment after IPVS); with DF set, the client gets ICMP fragmentation needed (next-hop MTU =
the path MTU; IPIP: the path MTU - 20) and the packet is dropped. Replies (NAT, FULLNAT) go back
through the kernel's IP output (ANSWER) whole; the adapter fragments what the kernel refuses.

The frames are the whole packets the engines hand over; how they are cut is lb_ip_fragment's and
lb.pyengine.frag's, checked against scapy's fragment() in tests/unit/test_frag.py.
"""

from __future__ import annotations

import packet_table as t
from packet_table import (
    CLIENT1,
    LIP1,
    RS1,
    T_ES,
    T_UDP,
    TCP80,
    UDP53,
    VIP,
    DestExpect,
    DestSetup,
    Row,
    ServiceExpect,
    ServiceSetup,
    Setup,
)

BIG = 3000  # UDP payload: a 3,028-byte datagram, the issue's


def _setup(fwd: str, mtu: int = 1500, saddr: str = "0.0.0.0") -> Setup:
    laddrs = (LIP1,) if fwd == "fullnat" else ()
    return Setup((ServiceSetup(TCP80, "rr", (DestSetup(RS1, fwd=fwd, mtu=mtu, saddr=saddr),), laddrs=laddrs),
                  ServiceSetup(UDP53, "rr", (DestSetup(RS1, 53, fwd=fwd, mtu=mtu, saddr=saddr),), laddrs=laddrs)),
                 lport_min=t.LPORT_MIN, lport_max=t.LPORT_MAX)


def _udp_row(row_id: str, description: str, setup: Setup, steps: tuple, ins: tuple[bytes, ...],
             outs: tuple[bytes, ...] = (), laddr: str = "0.0.0.0", lport: int = 0, tags: tuple[str, ...] = ()) -> Row:
    sz = t.ip_total_length
    inb, outb = sum(sz(p) for p in ins), sum(sz(p) for p in outs)
    laddrs = ((TCP80, LIP1, 0), (UDP53, LIP1, 1)) if laddr != "0.0.0.0" else ()
    return Row(row_id, description, setup, steps,
               (DestExpect(TCP80, RS1), DestExpect(UDP53, RS1, 53, inactive=1, conns=1, inpkts=len(ins), inbytes=inb,
                                                   outpkts=len(outs), outbytes=outb)),
               (ServiceExpect(TCP80), ServiceExpect(UDP53, 1, len(ins), inb, len(outs), outb)),
               (t.conn("UDP", T_UDP, RS1, cport=50000, svc=UDP53, dport=53, laddr=laddr, lport=lport),),
               check_ms=steps[-1].now_ms, tags=("frag", "mtu", "udp") + tags, laddrs=laddrs)


def rows() -> list[Row]:
    out: list[Row] = []
    big = t.udp(payload=b"D" * BIG)
    big_df = t.udp(payload=b"D" * BIG, flags="DF")
    fits = t.udp(payload=b"F" * 1472)  # 1,500 bytes: no fragments
    over = t.udp(payload=b"O" * 1473)  # 1,501 bytes: the smallest that needs them
    dr = _setup("route")

    out.append(_udp_row("frag-dr-udp", "DR: a reassembled 3,028-byte datagram (DF clear) leaves unchanged as fragments "
                        "of the path MTU (XMIT_L2, frag_mtu 1500), counted as forwarded",
                        dr, (t.fwd_frag(big, 0, RS1, 1500),), (big,)))
    out.append(_udp_row("frag-dr-edges", "DR: 1,500 bytes fit whole; 1,501 bytes leave as fragments",
                        dr, (t.fwd(fits, 0, RS1), t.fwd_frag(over, 1, RS1, 1500)), (fits, over)))
    out.append(_udp_row("frag-dr-df", "DR: too big with DF set: ICMP fragmentation needed (next-hop MTU 1500) to the "
                        "client, the packet dropped (ensure_mtu_is_adequate); entry and stats as forwarded",
                        dr, (t.answered(big_df, t.director_icmp(big_df, 4, 1500), 0, "FRAG_NEEDED"),), (big_df,)))
    small = _setup("route", mtu=600)
    mid = t.udp(payload=b"M" * 1000)
    out.append(_udp_row("frag-dr-path-mtu", "DR: the destination's path MTU (600) decides the fragment size",
                        small, (t.fwd_frag(mid, 0, RS1, 600),), (mid,)))

    nat = _setup("masq")
    to_rs = t.nat(big, CLIENT1, 50000, RS1, 53)
    reply = t.udp(sport=53, dport=50000, src=RS1, dst=CLIENT1, payload=b"R" * BIG)
    out.append(_udp_row("frag-nat-udp", "NAT: the rewritten 3,028-byte datagram leaves as fragments (frag_mtu 1500); "
                        "the real server's 3,028-byte reply goes back whole through the kernel (ANSWER)", nat,
                        (t.xmit(big, to_rs, 0, RS1, frag_mtu=1500), t.answered(reply, t.nat(reply, VIP, 53, CLIENT1,
                                                                                           50000), 5)),
                        (big,), (reply,), tags=("nat",)))
    out.append(_udp_row("frag-nat-df", "NAT: too big with DF: ICMP fragmentation needed to the client", nat,
                        (t.answered(big_df, t.director_icmp(big_df, 4, 1500), 0, "FRAG_NEEDED"),), (big_df,),
                        tags=("nat",)))

    fnat = _setup("fullnat")
    ulp = t.local_port(LIP1)
    freply = t.udp(sport=53, dport=ulp, src=RS1, dst=LIP1, payload=b"R" * BIG)
    out.append(_udp_row("frag-fnat-udp", "FULLNAT: the 3,028-byte datagram leaves as LIP -> RIP fragments (frag_mtu "
                        "1500); the 3,028-byte reply goes back whole as VIP -> client (ANSWER)", fnat,
                        (t.xmit(big, t.nat(big, LIP1, ulp, RS1, 53), 0, RS1, frag_mtu=1500),
                         t.answered(freply, t.nat(freply, VIP, 53, CLIENT1, 50000), 5)),
                        (big,), (freply,), laddr=LIP1, lport=ulp, tags=("fnat",)))

    tun = _setup("tunnel", saddr=t.TUN_SRC)
    out.append(_udp_row("frag-tun-udp", "IPIP: DF clear: the 3,048-byte outer packet (DF clear) leaves as fragments "
                        "of the path MTU; the real server reassembles, then decapsulates", tun,
                        (t.xmit(big, t.ipip(big), 0, RS1, frag_mtu=1500),), (big,), tags=("tun",)))
    out.append(_udp_row("frag-tun-df", "IPIP: DF set: ICMP fragmentation needed with next-hop MTU 1480", tun,
                        (t.answered(big_df, t.director_icmp(big_df, 4, 1480), 0, "FRAG_NEEDED"),), (big_df,),
                        tags=("tun",)))

    # TCP: a reassembled segment (a sender that fragments TCP, DF clear) goes the same way.
    syn = t.tcp(flags="S")
    ack = t.tcp(flags="A", seq=1001, ack=5001)
    seg = t.tcp(flags="PA", seq=1001, ack=5001, payload=b"T" * 4000)
    sz = t.ip_total_length
    out.append(Row("frag-dr-tcp", "DR TCP: a reassembled 4,040-byte segment leaves as fragments (frag_mtu 1500)", dr,
                   (t.fwd(syn, 0, RS1), t.fwd(ack, 1, RS1), t.fwd_frag(seg, 2, RS1, 1500)),
                   (DestExpect(TCP80, RS1, active=1, conns=1, inpkts=3, inbytes=sz(syn) + sz(ack) + sz(seg),
                               handshakes=1), DestExpect(UDP53, RS1, 53)),
                   (ServiceExpect(TCP80, 1, 3, sz(syn) + sz(ack) + sz(seg)), ServiceExpect(UDP53)),
                   (t.conn("ESTABLISHED", T_ES, RS1),), check_ms=2, tags=("frag", "mtu", "tcp")))
    return out
