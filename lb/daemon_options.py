"""lbd's command line: its options, their help text and their checks (which combinations lbd refuses
at start, with the reason, before anything is touched). lb.daemon runs what parse_args returns."""

from __future__ import annotations

import argparse
import os

from lb import __version__, logsetup
from lb import consts as C
from lb.sync.rule import SyncRule, SyncRuleError

DEFAULT_SOCKET = "/run/lbd/lbd.sock"  # in the initial network namespace; per namespace elsewhere (lb/paths.py)


# How packets reach the queue (--steering) and, for nftables, where (--steer-hook): by default lbd's
# own nftables table at the input hook, where kernel IPVS takes packets, so that traffic routed
# through the director meets nothing of lbd's (issue 15 item 1, docs/firewall.md).
DEFAULT_STEERING = "nftables"
DEFAULT_STEER_HOOK = {"nftables": "input", "iptables": "prerouting"}


def steer_hook(steering: str, hook: str | None) -> str:
    """The hook lbd's steering takes packets at: `hook` (--steer-hook) or the default of `steering`.
    ValueError for a hook the steering cannot have (iptables' rules are in the raw table)."""
    if hook is None:
        return DEFAULT_STEER_HOOK[steering]
    if steering != "nftables" and hook != "prerouting":
        raise ValueError(f"--steer-hook {hook} needs --steering nftables (iptables steering is in the raw table, "
                         "before routing)")
    return hook


def socket_path(cli_value: str | None) -> str:
    from lb.ctlclient import resolve_socket_path  # the same rule as lbadm's, namespace included

    return resolve_socket_path(cli_value)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="lbd",
        description="Userspace LVS director: queues virtual-service packets from iptables (NFQUEUE) "
        "and forwards them to real servers. Configure it with lbadm (ipvsadm syntax).",
    )
    p.add_argument("--config", metavar="FILE",
                   help="configuration to load at start and on SIGHUP / lbadm --reload "
                   "(TOML, see configs/reference.toml, or ipvsadm -S output)")
    p.add_argument("--check", action="store_true",
                   help="validate FILE (or --config) and exit: every error with file and line; exit 1 on errors")
    p.add_argument("--diff", action="store_true",
                   help="with --check: print the changes a reload with FILE would make to the running lbd")
    p.add_argument("file", nargs="?", metavar="FILE", help="configuration file for --check")
    p.add_argument("--socket", metavar="PATH",
                   help=f"control socket (default: $LBD_SOCKET, else per network namespace: {DEFAULT_SOCKET} "
                   "in the initial one, /run/lbd/netns/NAME/lbd.sock in a named one)")
    p.add_argument("--queue-num", type=int, default=None, metavar="N", help="NFQUEUE number to bind (default 0)")
    p.add_argument("--queue-balance", metavar="FIRST:LAST",
                   help="bind every queue of the range, one fast-path thread each (C engine), and spread "
                   "packets over them (iptables NFQUEUE --queue-balance: by a hash of the addresses). FIRST "
                   "names the instance (chains, state file) as --queue-num does")
    p.add_argument("--queue-cpus", metavar="LIST",
                   help="CPU of each queue's thread, in queue order (e.g. 0,2-3). Default with --queue-balance: "
                   "the CPUs lbd may run on, round robin; one queue: not pinned. With --packet-source afxdp: the "
                   "CPU of each AF_XDP socket's thread (the --xdp-interface order, each one's receive queues "
                   "ascending; one CPU per socket); default not pinned")
    p.add_argument("--queue-cpu-fanout", action="store_true",
                   help="with --queue-balance: the kernel picks the queue by the CPU handling the packet "
                   "(FIRST + cpu %% count) and queue i's thread runs on CPU i, so a packet stays on the CPU "
                   "(RSS/RPS) that received it")
    p.add_argument("--gso", action="store_true",
                   help="take GSO/GRO packets whole from the queue (NFQA_CFG_F_GSO: one message and one verdict "
                   "per up to 64 KiB); the packet core sees their segments, DR sends them on whole for the device "
                   "to cut, IPIP and FULLNAT send the segments (C engine; TCP only)")
    p.add_argument("--gso-mtu", type=int, default=1500, metavar="BYTES",
                   help="with --gso: largest IP packet a segment becomes (default 1500; the smallest MTU on the "
                   "way to the real servers, e.g. 9000 on a jumbo-frame network)")
    p.add_argument("--packet-source", choices=("nfqueue", "afxdp"), default="nfqueue",
                   help="where packets come from. nfqueue (default): iptables rules queue the services' "
                   "packets (NFQUEUE). afxdp: an XDP program on each --xdp-interface redirects them to "
                   "AF_XDP sockets, one per receive queue; lbd's --steering stays as the NFQUEUE fallback for IP "
                   "fragments and director-local clients, unless --no-iptables (C engine; docs/afxdp.md lists what it "
                   "does not do)")
    p.add_argument("--xdp-interface", action="append", default=[], metavar="IFACE",
                   help="with --packet-source afxdp: an interface whose received packets lbd serves "
                   "(repeat for several)")
    p.add_argument("--xdp-mode", choices=("auto", "native", "generic"), default="auto",
                   help="with --packet-source afxdp or --overload-xdp: XDP in the driver (native), in the kernel's generic "
                   "path (generic, slower, any interface), or native where the driver has it (auto, default)")
    p.add_argument("--xdp-copy", action="store_true",
                   help="with --packet-source afxdp: AF_XDP copy mode even where the driver offers zero-copy")
    p.add_argument("--xdp-fastpath", action="store_true",
                   help="with --packet-source afxdp and one --xdp-interface: the XDP program forwards the packets "
                   "of established direct-routing TCP connections itself; lbd still decides everything else, and "
                   "credits their packets to the statistics and timers within ~2 s (docs/afxdp.md)")
    p.add_argument("--engine", choices=("c", "python"), default="c",
                   help="packet engine: the C fast path (default) or the pure-Python reference engine")
    p.add_argument("--qdisc-bypass", action="store_true",
                   help="send forwarded frames straight to the driver (PACKET_QDISC_BYPASS, C engine): faster, "
                        "but tcpdump on the director's own interfaces no longer sees them")
    p.add_argument("--fail-open", action="store_true",
                   help="when the queue overflows, let the kernel accept packets instead of dropping them")
    p.add_argument("--queue-maxlen", type=int, default=None, metavar="PACKETS",
                   help="packets the kernel queues for lbd before it drops (default 1024, C engine: a short queue "
                   "keeps an overloaded director from livelocking; longer absorbs longer bursts)")
    p.add_argument("--overload-guard", choices=("on", "off"), default="on",
                   help="while the kernel drops packets at lbd's full queue, shed the excess at the first hook "
                   "instead, where it costs a fraction (lb/overload.py; nftables steering; default on)")
    p.add_argument("--overload-xdp", action="append", default=[], metavar="IFACE",
                   help="with the NFQUEUE packet source: the overload guard sheds in an XDP "
                   "program on IFACE (repeat it for each interface clients' packets arrive on) instead of at the "
                   "first nftables hook, where the driver sees a packet first and a shed packet costs almost "
                   "nothing (lb/xdpshed.py; any --steering; --xdp-mode chooses the XDP mode)")
    p.add_argument("--overload-napi", action="append", default=[], metavar="IFACE",
                   help="run IFACE's receive work in NAPI kernel threads at the lowest priority (nice 19; repeat "
                   "it for each interface clients' packets arrive on): when lbd is saturated the threads wait and "
                   "the NIC's ring drops the excess before the kernel spends anything on it, so an overloaded "
                   "director still forwards what its core can (lb/napibelow.py; any packet source; the interface "
                   "is left as found on exit)")
    p.add_argument("--no-steering", "--no-iptables", dest="no_iptables", action="store_true",
                   help="do not manage any steering, neither lbd's nftables table nor iptables rules (the operator "
                   "queues packets to --queue-num; --no-iptables is its older name); with "
                   "--packet-source afxdp: no NFQUEUE fallback (fragments and director-local clients are not balanced)")
    p.add_argument("--steering", choices=("iptables", "nftables"), default=DEFAULT_STEERING,
                   help="how packets reach the queue. nftables (default): one native nftables table of lbd's own, "
                   "`ip lbd-q<N>`, with native sets (the nft command, package nftables): routed traffic through the "
                   "director meets nothing of lbd's (docs/firewall.md). iptables: rules in iptables' raw table "
                   "testing ip sets (lb/iptables.py), before routing. With --packet-source afxdp, its NFQUEUE fallback")
    p.add_argument("--steer-hook", choices=("prerouting", "input"), default=None,
                   help="with --steering nftables, where lbd's table takes packets. input (default): where kernel "
                   "IPVS takes them, in the input hook after routing (NAT replies: --nat-replies), first there, "
                   "before the firewall's INPUT rules: routed "
                   "traffic meets no hook of lbd's; VIPs and FULLNAT local addresses must be addresses of this host "
                   "and NAT needs net.ipv4.ip_forward=1, as for IPVS. prerouting: before routing, conntrack and the "
                   "firewall, at raw priority, for any address routed to the director (docs/firewall.md). "
                   "--steering iptables is always prerouting")
    p.add_argument("--nat-replies", choices=("forward", "ingress"), default=None,
                   help="with --steer-hook input, where NAT real servers' replies are taken. ingress (the default "
                   "where it works: C engine, NFQUEUE packet source, lbd's nftables table at the input hook): a "
                   "netdev ingress chain bound to the NAT real servers' interfaces only hands their replies to lbd "
                   "through a veth pair of its own (lbnr<N>, lbnr<N>p), reassembled by the kernel; traffic arriving "
                   "on any other interface meets nothing of lbd's. forward (the default otherwise): a chain at the "
                   "forward hook while NAT real servers exist, which every routed packet meets (~8 %% more of its "
                   "cost on the testbed) (docs/firewall.md, \"NAT replies at ingress\")")
    p.add_argument("--conntrack", action="store_true",
                   help="let the director's conntrack see what lbd hands back to the kernel and what it sends "
                   "on its raw socket (no CT --notrack rules): the analogue of IPVS's net.ipv4.vs.conntrack "
                   "sysctl, off by default. Narrower than IPVS's: packets lbd forwards are queued before "
                   "conntrack's hook and never get an entry (docs/firewall.md)")
    p.add_argument("--down-policy", choices=("open", "closed"), default="open",
                   help="what packets to the VIPs do while no lbd runs. open (default): the NFQUEUE rules "
                   "carry --queue-bypass and are removed on exit, so the director's own stack gets them "
                   "(not balanced; established flows are reset). closed: rules without --queue-bypass that "
                   "stay in place on exit, so the kernel drops the packets (clients retransmit) and a "
                   "restarted lbd resumes the flows from its state file; `lbd --cleanup` removes them")
    p.add_argument("--cleanup", action="store_true",
                   help="remove the steering of --queue-num (left by a --down-policy closed lbd; with --steering nftables its "
                   "table ip lbd-q<N>) and exit")
    p.add_argument("--state-dir", metavar="DIR", default=None,
                   help="where lbd keeps its state file lbd-q<N>.state: the configuration and the connection "
                   "table, saved every 2 s and on exit (atomically), re-applied at start when there is no "
                   "--config (default: the control socket's directory, /run/lbd or /run/lbd/netns/NAME; "
                   "'' disables it)")
    p.add_argument("--restore", action="store_true",
                   help="re-apply the state file even with --config (first the saved state and its connections, "
                   "then the file's differences, as a reload)")
    p.add_argument("--conn-max", type=int, default=0, metavar="N", help="connection table size (C engine)")
    sync = p.add_argument_group(
        "connection sync (the kernel's net.ipv4.vs sysctls; what a sync master started with lbadm "
        "--start-daemon master sends, docs/sync.md)")
    sync.add_argument("--sync-threshold", type=int, nargs=2, metavar=("THRESHOLD", "PERIOD"),
                      default=[C.LB_SYNC_THRESHOLD_DEFAULT, C.LB_SYNC_PERIOD_DEFAULT],
                      help="send a connection on its THRESHOLD-th packet from the client and every PERIOD-th "
                      "after (packets %% PERIOD == THRESHOLD); PERIOD 0: once, on the THRESHOLD-th "
                      f"(default {C.LB_SYNC_THRESHOLD_DEFAULT} {C.LB_SYNC_PERIOD_DEFAULT}, sync_threshold)")
    sync.add_argument("--sync-refresh-period", type=int, default=C.LB_SYNC_REFRESH_PERIOD_MS_DEFAULT // 1000,
                      metavar="SECONDS",
                      help="also hold a connection back until its expiry moved by min(SECONDS, max(timeout/2, "
                      "10 s)) since it was last sent; 0: the packet rule alone (default %(default)s, "
                      "sync_refresh_period)")
    sync.add_argument("--sync-retries", type=int, default=C.LB_SYNC_RETRIES_DEFAULT, metavar="N",
                      help="with --sync-refresh-period: resend an unchanged connection up to N (0..3) times, "
                      "SECONDS/8 apart (default %(default)s, sync_retries)")
    sync.add_argument("--sync-persist-mode", type=int, choices=(0, 1), default=0, metavar="0|1",
                      help="1: send the persistence templates but not the connections they control "
                      "(default %(default)s, sync_persist_mode)")
    p.add_argument("--metrics", metavar="ADDR:PORT", type=_metrics_listen,
                   help="serve Prometheus metrics over HTTP on ADDR:PORT (e.g. 127.0.0.1:9170; :PORT for every "
                   "IPv4 address): node_exporter's node_ipvs_* names, and lbd_* (docs/metrics.md)")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    p.add_argument("--log-format", choices=logsetup.LOG_FORMATS, default="text",
                   help="text (default): one line per event for people; json: one JSON object per line "
                   "(time, level, logger, pid, message and the event's own fields) for log shippers")
    p.add_argument("--version", action="version", version=f"lbd {__version__}")
    args = p.parse_args(argv)
    _check_queue_options(p, args)
    _check_packet_source(p, args)
    args.sync_rule = _sync_rule(p, args)
    if args.state_dir is None:
        args.state_dir = os.path.dirname(socket_path(args.socket)) or "."
    if args.check:
        if args.file and args.config and args.file != args.config:
            p.error("give the file to check either as FILE or as --config, not both")
        args.file = args.file or args.config
        if not args.file:
            p.error("--check needs a configuration FILE")
    elif args.diff:
        p.error("--diff only goes with --check")
    elif args.file:
        p.error(f"unexpected argument {args.file!r} (to load a configuration: --config FILE)")
    return args


def _sync_rule(p: argparse.ArgumentParser, args: argparse.Namespace) -> SyncRule:
    """The sync master's rule from --sync-*, refused with the kernel's validation (its EINVAL)."""
    try:
        return SyncRule(threshold=args.sync_threshold[0], period=args.sync_threshold[1],
                        refresh_period_s=args.sync_refresh_period, retries=args.sync_retries,
                        persist_mode=args.sync_persist_mode)
    except SyncRuleError as exc:
        p.error(str(exc))


def _metrics_listen(text: str) -> tuple[str, int]:
    from lb.metrics import parse_listen

    try:
        return parse_listen(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


# What the AF_XDP source cannot do, refused at start (docs/afxdp.md says why for each).
AFXDP_REFUSED = (
    ("--queue-balance", "balance", "AF_XDP uses one socket per receive queue of the interface (RSS spreads the packets)"),
    ("--queue-cpu-fanout", "queue_cpu_fanout", "AF_XDP sockets follow the receive queues already"),
    ("--gso", "gso", "XDP frames are never GSO packets"),
    ("--fail-open", "fail_open", "it is an NFQUEUE option"),
    ("--queue-maxlen", "queue_maxlen", "it is an NFQUEUE option (the AF_XDP rings are fixed)"),
    ("--conntrack", "conntrack", "packets redirected by XDP never reach conntrack"),
)


def _check_packet_source(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.packet_source != "afxdp":
        for flag, value in (("--xdp-interface", args.xdp_interface), ("--xdp-copy", args.xdp_copy),
                            ("--xdp-mode", args.xdp_mode != "auto" and not args.overload_xdp),
                            ("--xdp-fastpath", args.xdp_fastpath)):
            if value:
                p.error(f"{flag} goes with --packet-source afxdp" + (" or --overload-xdp" if flag == "--xdp-mode"
                                                                      else ""))
        if args.overload_xdp and args.overload_guard != "on" and not args.check:
            p.error("--overload-xdp is where the overload guard sheds: it does not go with --overload-guard off")
        return
    if args.overload_xdp:
        p.error("--overload-xdp goes with the NFQUEUE packet source: under --packet-source afxdp lbd's own XDP "
                "program takes the packets")
    if args.check:
        return
    if args.engine != "c":
        p.error("--packet-source afxdp needs the C engine")
    if not args.xdp_interface:
        p.error("--packet-source afxdp needs at least one --xdp-interface")
    if args.xdp_fastpath and len(args.xdp_interface) != 1:
        p.error("--xdp-fastpath works on one --xdp-interface: an established flow is installed in one interface's "
                "XDP program")
    for flag, name, why in AFXDP_REFUSED:
        value = args.queues.balance if name == "balance" else getattr(args, name, None)
        if value:
            p.error(f"{flag} does not go with --packet-source afxdp: {why}")
    if args.down_policy == "closed":
        p.error("--down-policy closed does not go with --packet-source afxdp: the XDP program leaves with lbd, "
                "so the VIPs' packets reach the director's own stack while no lbd runs (policy open)")


def nat_replies(p: argparse.ArgumentParser, args: argparse.Namespace) -> str:
    """--nat-replies, or its default: ingress where it works (lbd's nftables table at the input hook
    with NFQUEUE and the C engine), else forward. An explicit ingress where it cannot work is an error."""
    table = args.steering == "nftables" and args.steer_hook == "input" and not args.no_iptables
    reader = args.engine == "c" and args.packet_source == "nfqueue"
    asked = getattr(args, "nat_replies", None)
    if asked is None:
        return "ingress" if table and reader else "forward"
    if asked == "ingress" and not table:
        p.error("--nat-replies ingress goes with --steering nftables --steer-hook input (the defaults): it is "
                "a netdev table beside lbd's own")
    if asked == "ingress" and not reader:
        p.error("--nat-replies ingress needs the C engine and --packet-source nfqueue (its reader is C, "
                "beside the NFQUEUE adapter)")
    return str(asked)


def _check_queue_options(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Resolve --queue-num/--queue-balance/--queue-cpus/--gso into args.queues (a QueuePlan); under
    --packet-source afxdp --queue-cpus pins the AF_XDP sockets' threads instead (args.xdp_cpus)."""
    from lb.queues import QueueSpecError, afxdp_cpus, plan

    if args.queue_balance and args.queue_num is not None:
        p.error("give either --queue-num or --queue-balance (its FIRST names the instance)")
    try:
        args.steer_hook = steer_hook(getattr(args, "steering", DEFAULT_STEERING), getattr(args, "steer_hook", None))
    except ValueError as exc:
        p.error(str(exc))
    args.nat_replies = nat_replies(p, args)
    if args.queue_num is None:
        args.queue_num = 0
    if not 0 <= args.queue_num <= 65535:
        p.error(f"--queue-num {args.queue_num} out of range 0..65535")
    if args.engine == "python":
        for flag, used in (("--queue-balance", args.queue_balance), ("--queue-cpus", args.queue_cpus),
                           ("--queue-cpu-fanout", args.queue_cpu_fanout), ("--gso", args.gso)):
            if used:
                p.error(f"{flag} needs the C engine (the Python engine serves one queue with one thread)")
    if not 576 <= args.gso_mtu <= 65535:
        p.error(f"--gso-mtu {args.gso_mtu} out of range 576..65535")
    if args.queue_maxlen is not None and not 1 <= args.queue_maxlen <= 1 << 20:
        p.error(f"--queue-maxlen {args.queue_maxlen} out of range 1..1048576")
    xdp = args.packet_source == "afxdp"
    try:
        args.xdp_cpus = afxdp_cpus(args.queue_cpus) if xdp else []
        args.queues = plan(args.queue_num, args.queue_balance, None if xdp else args.queue_cpus,
                           args.queue_cpu_fanout)
    except QueueSpecError as exc:
        p.error(str(exc))
    args.queue_num = args.queues.first
