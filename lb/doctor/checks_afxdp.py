"""Checks of lbd's AF_XDP packet source (lbd --packet-source afxdp, docs/afxdp.md): lbd's XDP
program on the interfaces lbd names, in the mode lbd reports; one AF_XDP socket per receive queue;
no lb_xdp program that the running lbd does not hold (left by a dead lbd, or another process);
over the window, the program's and the sockets' loss counters.

What lbd reports comes from `ping` ("packet_source", "afxdp": its interfaces with the program id
read from its bpf_link, the queues bound, the interface's queue count); what the kernel has from
`ip -j addr show` (each interface's "xdp": the attached program and its mode)."""

from __future__ import annotations

from typing import Any

from lb.doctor.findings import Finding, plural
from lb.doctor.inputs import Run

PROGRAM_NAME = "lb_xdp"  # the function name of native/bpf/lb_xdp.bpf.c, as the kernel lists it
XDP_MODES = {1: "native", 2: "generic", 3: "offloaded", 4: "multi"}  # XDP_ATTACHED_* of linux/if_link.h

# Per-socket counters (struct lb_xsk_stats) whose growth means packets lbd should have had were lost.
SOCKET_LOSSES = {
    "kernel_rx_ring_full": "the socket's receive ring was full (lbd's thread did not keep up)",
    "kernel_fill_empty": "the fill ring was empty (no free frame to receive into)",
    "kernel_rx_dropped": "the kernel dropped received frames (e.g. larger than a frame)",
    "fill_lost": "frames could not go back to the fill ring (never expected)",
    "bad_frames": "frames that were not untagged IPv4 (dropped)",
}


# Per-socket send errors: (severity, meaning).
SOCKET_SEND_ERRORS = {
    "xmit_l2_err": ("error", "frames towards real servers could not be sent (AF_PACKET send errors; the xmit_failed "
                    "reason)"),
    "answer_err": ("warning", "packets on lbd's raw socket (answers, FULLNAT replies) could not be sent"),
    "pass_err": ("warning", "packets handed back to the kernel could not be re-injected on the raw socket"),
}


def _attached(iface: dict[str, Any]) -> tuple[int | None, str, str]:
    """(program id, program name, mode) of the XDP program on `iface` (an `ip -j addr` object)."""
    xdp = iface.get("xdp") or {}
    prog = xdp.get("prog") or {}
    if not prog and xdp.get("attached"):
        prog = (xdp["attached"][0] or {}).get("prog") or {}
    pid = prog.get("id")
    return (int(pid) if isinstance(pid, int) else None, str(prog.get("name", "")),
            XDP_MODES.get(int(xdp.get("mode", 0) or 0), "?"))


def _lbd_interfaces(run: Run) -> list[dict[str, Any]]:
    afxdp = run.ping.get("afxdp") or {}
    return [i for i in afxdp.get("interfaces", []) if isinstance(i, dict)]


def check_afxdp(run: Run) -> list[Finding]:
    if not run.lbd_ok:
        return _stale_programs(run, set(), "lbd is not answering")
    if run.packet_source != "afxdp":
        return _stale_programs(run, set(), f"lbd uses the {run.packet_source} packet source")
    out: list[Finding] = []
    ours = _lbd_interfaces(run)
    if not ours:
        return [Finding("error", "afxdp", "lbd runs the AF_XDP packet source but reports no interface with its "
                        "XDP program", evidence=f"ping: {run.ping.get('afxdp')}",
                        fix="restart lbd with --xdp-interface IFACE; its log says why an attach failed")]
    for mine in ours:
        out += _interface(run, mine)
    out += _stale_programs(run, {str(i.get("ifname")) for i in ours}, "the running lbd does not hold it")
    fallback = bool((run.ping.get("afxdp") or {}).get("nfqueue_fallback"))
    if not fallback:
        out.append(Finding("warning", "afxdp", "no NFQUEUE fallback (lbd --no-iptables): fragmented datagrams and "
                           "director-local clients' packets to the VIPs are not balanced (they reach the director's "
                           "own stack)", fix="start lbd without --no-iptables (docs/afxdp.md \"NFQUEUE fallback\")"))
    return out


def _interface(run: Run, mine: dict[str, Any]) -> list[Finding]:
    name = str(mine.get("ifname"))
    iface = run.iface(name)
    if iface is None:
        return [Finding("error", "afxdp", f"{name}: lbd serves it, but this network namespace has no such interface",
                        fix="run lbadm doctor in lbd's network namespace; if the interface was removed, restart lbd")]
    pid, pname, mode = _attached(iface)
    want = mine.get("prog_id")
    if pid is None:
        return [Finding("error", "afxdp", f"{name}: no XDP program attached although lbd reports one: its packets "
                        "reach the kernel's own stack, not lbd", evidence=f"lbd: {mine}",
                        fix="restart lbd (it attaches its program at start)")]
    if want is not None and pid != want:
        return [Finding("error", "afxdp", f"{name}: the attached XDP program is id {pid} ({pname or '?'}), not lbd's "
                        f"id {want}: lbd sees none of this interface's packets",
                        evidence=f"kernel: prog id {pid} name {pname} mode {mode}; lbd: {mine}",
                        fix="find its owner (bpftool net show; bpftool prog show id N), detach it, restart lbd")]
    out: list[Finding] = []
    if mode != mine.get("mode"):
        out.append(Finding("warning", "afxdp", f"{name}: XDP attached in {mode} mode, lbd reports {mine.get('mode')}",
                           evidence=f"kernel: {iface.get('xdp')}"))
    rxq = int(mine.get("rx_queues") or 0)
    bound = sorted(int(q) for q in mine.get("sockets", []))
    queues = (f"{plural(len(bound), 'AF_XDP socket')} (queues {', '.join(map(str, bound)) or 'none'}), "
              f"{name} has {plural(rxq, 'receive queue')}")
    missing = [q for q in range(rxq) if q not in bound]
    extra = [q for q in bound if q >= rxq]
    if missing:
        out.append(Finding("error", "afxdp", f"{name}: receive queues {', '.join(map(str, missing))} have no AF_XDP "
                           "socket: lbd's packets RSS puts there are passed to the kernel (counted no_socket)",
                           evidence=queues, fix=f"restart lbd (it binds a socket per queue at start), or reduce the "
                           f"queues to those bound: ethtool -L {name} combined {len(bound)}"))
    if extra:
        out.append(Finding("warning", "afxdp", f"{name}: lbd has sockets on queues {', '.join(map(str, extra))} the "
                           "interface no longer has (its queues were reduced after lbd started)", evidence=queues,
                           fix="restart lbd so that its sockets follow the interface's queues"))
    if not missing and not extra:
        zc = mine.get("zerocopy") or []
        how = "zero-copy" if zc and all(zc) else "copy mode" if not any(zc) else "partly zero-copy"
        text = f"{name}: lbd's XDP program (id {pid}) attached in {mode} mode, {queues} ({how})"
        fix = ("generic mode costs an skb per packet: use a driver with native XDP (lbd --xdp-mode native fails "
               "rather than falling back)") if mode == "generic" else ""
        out.append(Finding("info", "afxdp", text, evidence=f"kernel: {iface.get('xdp')}", fix=fix))
    return out


def _stale_programs(run: Run, ours: set[str], why: str) -> list[Finding]:
    """lb_xdp programs on interfaces that are not the running lbd's: held by a process that is not
    (or no longer) the lbd answering here, e.g. pinned, or an lbd stuck while exiting."""
    out = []
    for iface in run.ifaces:
        name = str(iface.get("ifname"))
        pid, pname, mode = _attached(iface)
        if pid is None or pname != PROGRAM_NAME or name in ours:
            continue
        severity = "error" if run.lbd_ok and run.packet_source == "nfqueue" else "warning"
        out.append(Finding(severity, "afxdp", f"{name}: an lbd XDP program (id {pid}, {mode} mode) is attached, and "
                           f"{why}: the packets it redirects go to sockets of another process or, with none, to "
                           "the kernel", evidence=f"kernel: {iface.get('xdp')}",
                           fix=f"find its holder (bpftool prog show id {pid}: pids; bpftool link) and stop it; "
                               f"a pinned link: rm its pin under /sys/fs/bpf; ip link set dev {name} xdp off"))
    return out


def check_afxdp_counters(run: Run) -> list[Finding]:
    if run.packet_source != "afxdp" or run.first is None or run.second is None:
        return []
    c0, c1 = (run.first.counters or {}).get("afxdp"), (run.second.counters or {}).get("afxdp")
    if not c0 or not c1:
        return []
    out: list[Finding] = []
    p0, p1 = c0.get("program", {}), c1.get("program", {})
    d_nosock = int(p1.get("no_socket", 0)) - int(p0.get("no_socket", 0))
    if d_nosock > 0:
        out.append(Finding("error", "afxdp", f"{d_nosock} packets for lbd arrived on a receive queue without an "
                           "AF_XDP socket during the window: the program passed them to the kernel",
                           evidence=f"program counters before: {p0}\nafter: {p1}",
                           fix="compare the interface's queues (ethtool -l) with lbd's sockets (the afxdp finding "
                               "above); restart lbd after changing the queue count"))
    d_frag = int(p1.get("fragments_passed", 0)) - int(p0.get("fragments_passed", 0))
    if d_frag > 0 and not (run.ping.get("afxdp") or {}).get("nfqueue_fallback"):
        out.append(Finding("warning", "afxdp", f"{d_frag} IP fragments passed to the kernel during the window, and "
                           "lbd has no NFQUEUE fallback: fragmented datagrams to the VIPs are not balanced",
                           fix="start lbd without --no-iptables (docs/afxdp.md)"))
    s0, s1 = c0.get("sockets", []), c1.get("sockets", [])
    rows = []
    for i, (a, b) in enumerate(zip(s0, s1, strict=False)):
        for key, meaning in SOCKET_LOSSES.items():
            d = int(b.get(key, 0)) - int(a.get(key, 0))
            if d > 0:
                rows.append(f"socket {i}: {key} +{d}: {meaning}")
    for key, (severity, meaning) in SOCKET_SEND_ERRORS.items():
        grew = sum(int(b.get(key, 0)) - int(a.get(key, 0)) for a, b in zip(s0, s1, strict=False))
        if grew > 0:
            out.append(Finding(severity, "afxdp", f"{key} +{grew} during the window: {meaning}",
                               fix="check the destinations' interfaces (down? MTU?) and lbd's log"))
    if rows:
        out.append(Finding("warning", "afxdp", f"AF_XDP sockets lost packets during the window ({len(rows)} counters grew)",
                           evidence="\n".join(rows),
                           fix="give lbd's threads CPU (taskset on the receive queues' CPUs, docs/afxdp.md), "
                               "or spread the load over more receive queues"))
    return out
