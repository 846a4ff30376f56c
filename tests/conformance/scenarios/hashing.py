"""The hashing schedulers (sh, dh, mh), their flags, and -o: the ECMP requirement of issue 13.

A mixed fleet of kernel IPVS and lbd directors behind one ECMP router must send every flow to the
same real server, whichever director the router hands it to. The runner plays each scenario on
both systems with identical addresses, rules and flows, so "identical records" is exactly that
requirement, flow by flow: many client addresses (c1..c44), new source ports for the port flags,
many destination addresses for dh (extra VIPs: fwmark services do not exist in lbd, several VIPs
do), servers quiesced (weight 0), deleted and re-added, with and without fallback, and the
destination order that `-R` of a rules file gives (newest first), or of the kernel's own `-S`
output (sorted, so another order and, for mh, another table).

-o: each datagram of one UDP flow (one source port) is scheduled afresh and no entry stays.
"""

from __future__ import annotations

from conformance.model import MANY_CLIENTS, Admin, Connect, Listing, Output, Scenario, Udp

DH_VIPS = 32  # {vip} and {vip2}..{vip32}


def _rules(proto: str, sched: str, flags: str = "", weights: tuple[int, ...] = (1, 2, 3, 1), vip: str = "vip",
           ops: bool = False) -> str:
    head = f"-A {proto} {{{vip}}}:80 -s {sched}" + (" -o" if ops else "") + (f" -b {flags}" if flags else "")
    return "\n".join([head] + [f"-a {proto} {{{vip}}}:80 -r {{rs{i}}}:80 -g -w {w}"
                               for i, w in enumerate(weights, 1)]) + "\n"


def _clients(sched: str, flags: str = "", weights: tuple[int, ...] = (1, 2, 3, 1), suffix: str = "") -> Scenario:
    """Every client address once, then rs2 quiesced, rs3 deleted and re-added (weight 2)."""
    name = f"ecmp-{sched}" + (f"-{flags.split('-', 1)[1]}" if flags else "") + "-clients" + suffix
    return Scenario(
        name=name,
        why=f"{sched} {flags or '(no flag)'}: 44 client addresses each on the kernel's server, before and after "
            "rs2 goes to weight 0, rs3 is deleted and re-added with another weight",
        rules=_rules("-t", sched, flags, weights),
        steps=(Connect(44, clients=MANY_CLIENTS),
               Admin("-e -t {vip}:80 -r {rs2}:80 -g -w 0"),
               Connect(44, clients=MANY_CLIENTS),
               Admin("-d -t {vip}:80 -r {rs3}:80"),
               Connect(44, clients=MANY_CLIENTS),
               Admin("-a -t {vip}:80 -r {rs3}:80 -g -w 2"),
               Connect(44, clients=MANY_CLIENTS),
               Listing("-Ln")),
    )


def _ports(sched: str, flags: str) -> Scenario:
    """UDP with the port flag: every datagram from a new source port, two per client address."""
    return Scenario(
        name=f"ecmp-{sched}-{flags.replace(sched + '-', '').replace(',', '-')}-udp",
        why=f"{sched} {flags}: the client's source port is hashed too; 88 flows from 44 addresses, then rs1 at "
            "weight 0",
        rules=_rules("-u", sched, flags),
        steps=(Udp(88, clients=MANY_CLIENTS),
               Admin("-e -u {vip}:80 -r {rs1}:80 -g -w 0"),
               Udp(88, clients=MANY_CLIENTS),
               Listing("-Ln"), Listing("-Lnc")),
    )


def _dh_vips() -> Scenario:
    vips = ("vip", *(f"vip{k}" for k in range(2, DH_VIPS + 1)))
    rules = "".join(_rules("-t", "dh", vip=v) for v in vips)
    # One -R each (any ipvsadm command per line): 32 separate commands would take minutes in the guest.
    delete = Admin("-R", stdin="".join(f"-d -t {{{v}}}:80 -r {{rs3}}:80\n" for v in vips))
    quiesce = Admin("-R", stdin="".join(f"-e -t {{{v}}}:80 -r {{rs2}}:80 -g -w 0\n" for v in vips))
    return Scenario(
        name="ecmp-dh-vips",
        why="dh hashes the destination address: 32 VIPs (services of identical rules) each on the kernel's "
            "server, then rs3 deleted everywhere (a rebuilt table), then rs2 at weight 0 (no fallback)",
        rules=rules,
        steps=(Connect(DH_VIPS, clients=MANY_CLIENTS[:4], vips=vips),
               delete,
               Connect(DH_VIPS, clients=MANY_CLIENTS[4:8], vips=vips),
               quiesce,
               Connect(DH_VIPS, clients=MANY_CLIENTS[8:12], vips=vips),
               Listing("-Ln")),
        extra_vips=DH_VIPS - 1,
    )


def _restored_order(sched: str) -> Scenario:
    """The kernel's -S lists destinations sorted; restoring it gives another list order than the
    rules file gave, and mh's table depends on the order: both systems restore the kernel's save."""
    return Scenario(
        name=f"ecmp-{sched}-restore-order",
        why=f"{sched}: the list order of -R (newest first) decides the table; after -C and -R of the kernel's "
            "own -S (sorted) the order, and the table, are another, the same in both systems",
        rules=_rules("-t", sched, weights=(3, 1, 4, 2)),
        steps=(Connect(44, clients=MANY_CLIENTS),
               Admin("-S -n", name="save"),
               Admin("-C"),
               Admin("-R", stdin=Output("save", "kernel")),
               Connect(44, clients=MANY_CLIENTS),
               Listing("-Ln")),
    )


SCENARIOS = (
    _clients("sh"),
    _clients("sh", "sh-fallback"),
    _ports("sh", "sh-port"),
    _ports("sh", "sh-fallback,sh-port"),
    _clients("mh"),
    _clients("mh", "mh-fallback"),
    _clients("mh", "mh-fallback", weights=(100, 1, 50, 257), suffix="-weights"),  # gcd 1, 257:1 shifted to 6 bits
    _ports("mh", "mh-port"),
    _ports("mh", "mh-fallback,mh-port"),
    _dh_vips(),
    _restored_order("mh"),
    _restored_order("sh"),
    Scenario(
        name="ops-rr-udp",
        why="-o: every datagram of one UDP flow is scheduled afresh (rr turns), none leaves an entry; without "
            "-o (-E) the flow keeps its server",
        rules=_rules("-u", "rr", weights=(1, 1, 1), ops=True),
        steps=(Udp(6, clients=("c1",), same_port=True),
               Udp(8, clients=MANY_CLIENTS[:4], same_port=True),
               Listing("-Ln"), Listing("-Ln --stats"), Listing("-Lnc"),
               Admin("-E -u {vip}:80 -s rr"),
               Udp(4, clients=("c5",), same_port=True),
               Listing("-Ln"), Listing("-Lnc")),
    ),
    Scenario(
        name="ops-mh-fallback-port-udp",
        why="-o with mh-fallback,mh-port: each datagram is scheduled, but by the hash of its flow, so a flow stays "
            "on its server; rs1 at weight 0 sends its flows elsewhere",
        rules=_rules("-u", "mh", "mh-fallback,mh-port", ops=True),
        steps=(Udp(88, clients=MANY_CLIENTS, same_port=True),
               Admin("-e -u {vip}:80 -r {rs1}:80 -g -w 0"),
               Udp(88, clients=MANY_CLIENTS, same_port=True),
               Listing("-Ln"), Listing("-Ln --stats"), Listing("-Lnc")),
    ),
    Scenario(
        name="ops-persistent-udp",
        why="-o with -p: the client's template holds its server, each datagram refreshes it; -Lnc shows the "
            "templates only",
        rules="-A -u {vip}:80 -s rr -p 60 -o\n" + "".join(f"-a -u {{vip}}:80 -r {{rs{i}}}:80 -g -w 1\n"
                                                         for i in (1, 2, 3)),
        steps=(Udp(8, clients=MANY_CLIENTS[:4], same_port=True),
               Udp(4, clients=MANY_CLIENTS[:4]),
               Listing("-Ln"), Listing("-Lnc")),
    ),
    Scenario(
        name="sched-flags-listing",
        why="how ipvsadm 1.31 lists and saves the flags (sh/mh names, no name for their third bit: 'sh ()'), "
            "-o, and refuses flags of another scheduler or -o on TCP",
        rules=("-A -t {vip}:80 -s sh -b flag-3\n"
               "-A -t {vip}:81 -s mh -b flag-1,flag-2,flag-3\n"
               "-A -t {vip}:82 -s rr -b flag-2\n"
               "-A -u {vip}:80 -s dh -b flag-1 -o\n"
               "-A -u {vip}:81 -s sh -b sh-port -o\n"),
        steps=(Listing("-Ln"),
               Admin("-S -n"),
               Admin("-E -t {vip}:80 -s mh -b mh-port"),
               Admin("-E -t {vip}:82 -s sh"),
               Admin("-A -t {vip}:83 -s rr -b mh-port"),
               Admin("-A -t {vip}:83 -s sh -b sh-port,bogus"),
               Admin("-A -u {vip}:84 -b sh-port"),
               Admin("-A -t {vip}:85 -s sh -o"),
               Listing("-Ln"), Admin("-S -n")),
    ),
)
