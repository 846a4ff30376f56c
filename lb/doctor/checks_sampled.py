"""Checks over the sampling window (lbd's counters read twice, ctx.window_s apart): stalled
handshakes, refusal counters, NFQUEUE drops."""

from __future__ import annotations

import time
from typing import Any

from lb.doctor.context import LbdRefused, LbdUnavailable
from lb.doctor.findings import Finding
from lb.doctor.inputs import Run, Sample
from lb.doctor.parsers import queue_line

STALL_CAUSES = (
    "anti-spoofing on the hypervisor (libvirt nwfilter clean-traffic / no-ip-spoofing, cloud "
    "source/destination checks), VIP not configured on the real server's loopback, "
    "arp_ignore/arp_announce, the real server's firewall"
)


def _dests(sample: Sample | None) -> dict[tuple[str, str, int, str, int], dict[str, Any]]:
    out: dict[tuple[str, str, int, str, int], dict[str, Any]] = {}
    if sample is None or not sample.listing:
        return out
    for s in sample.listing.get("services", []):
        for d in s.get("dests", []):
            out[(str(s.get("proto")), str(s.get("addr")), int(s.get("port", 0)), str(d.get("addr")), int(d.get("port", 0)))] = d
    return out


def _window(run: Run) -> float:
    if run.first is None or run.second is None:
        return 0.0
    return max(0.0, run.second.t - run.first.t)


def check_stalled_handshakes(run: Run) -> list[Finding]:
    if run.first is None or run.second is None:
        return []
    before, after = _dests(run.first), _dests(run.second)
    if after and not any("syn_retrans" in d and "handshakes" in d for d in after.values()):
        return [Finding("info", "handshakes", "lbd does not report syn_retrans/handshakes per destination: "
                        "stalled handshakes cannot be detected", fix="upgrade lbd")]
    nominal = float(run.ctx.window_s)
    stalled: list[tuple[tuple[str, str, int, str, int], int, dict[str, int]]] = []
    per_service: dict[tuple[str, str, int], list[str]] = {}
    for key, d1 in after.items():
        d0 = before.get(key)
        if d0 is None or "syn_retrans" not in d1 or "syn_retrans" not in d0:
            continue
        dr = int(d1["syn_retrans"]) - int(d0["syn_retrans"])
        dh = int(d1.get("handshakes", 0)) - int(d0.get("handshakes", 0))
        dc = int((d1.get("stats") or {}).get("conns", 0)) - int((d0.get("stats") or {}).get("conns", 0))
        per_service.setdefault(key[:3], [])
        if dr > 0 and dh <= 0:
            # N: SYN retransmissions, bounded by the new connections when those are known (refined below
            # by the connections still in SYN_RECV, when lbd lists them)
            n = min(dr, dc) if dc > 0 else dr
            stalled.append((key, n, {"syn_retrans": dr, "handshakes": dh, "conns": dc,
                                     "syn_retrans_total": int(d1["syn_retrans"]), "handshakes_total": int(d1.get("handshakes", 0))}))
            per_service[key[:3]].append(f"{key[3]}:{key[4]}")
    syn_recv = _syn_recv_counts(run) if stalled else {}
    out: list[Finding] = []
    for key, n, delta in stalled:
        proto, vip, vport, rip, rport = key
        pending = syn_recv.get(key)
        if pending:  # connections still waiting for the client's ACK: the best count of stalled handshakes
            n = min(delta["syn_retrans"], pending)
        d1 = after[key]
        fwd = d1.get("fwd", "route")
        total = sum(1 for k in after if k[:3] == key[:3])
        n_stalled = len(per_service[key[:3]])
        ev = [f"service {proto.upper()} {vip}:{vport}, destination {rip}:{rport} ({fwd}): over {_window(run):.1f} s "
              f"syn_retrans +{delta['syn_retrans']} (total {delta['syn_retrans_total']}), handshakes +{delta['handshakes']} "
              f"(total {delta['handshakes_total']}), new connections +{delta['conns']}"
              + (f", connections in SYN_RECV now {pending}" if pending is not None else "")]
        if n_stalled == total and total > 1:
            ev.append(f"all {total} destinations of the service stall: the common factor is the director's side -- "
                      "frames it sends with the client's source address are dropped on the way (anti-spoofing on the "
                      "director's hypervisor port / cloud source-destination check)")
        elif total > 1:
            ev.append(f"{n_stalled} of {total} destinations stall: look at these real servers first")
        if fwd == "route":
            fix = ("DR frames leave the director with the client's source IP: allow that on the director's port "
                   "(libvirt: remove the clean-traffic filterref or its no-ip-spoofing rule for the director's interface; "
                   "cloud: disable the source/destination check on the director's NIC). On the real server: VIP on lo "
                   f"(ip addr add {vip}/32 dev lo), arp_ignore=1/arp_announce=2, firewall accepting {vip}:{vport}. "
                   f"Capture on the real server (tcpdump -ni any host {vip} and port {vport}) to see whether the SYNs arrive")
        elif fwd == "tunnel":
            fix = ("On the real server: IPIP decapsulation (tunl0 up / ipip module), rp_filter 0 or 2 on the tunnel "
                   f"interface and `all`, VIP on lo ({vip}/32), firewall accepting {vip}:{vport}. Capture on the real "
                   f"server (tcpdump -ni any proto 4 or host {vip}) to see whether the encapsulated SYNs arrive")
        elif fwd == "masq":
            fix = ("NAT: the real server must send its replies through the director (default route via the director's "
                   "address on its segment); otherwise its SYN-ACKs go straight to the client, which drops them "
                   f"and repeats its SYN. Capture on the real server (tcpdump -ni any port {rport}) to see where "
                   "its SYN-ACKs go")
        else:
            fix = (f"Capture on the real server (tcpdump -ni any port {rport}) and on the director to see where the "
                   "SYNs or the answers are lost")
        out.append(Finding(
            "error", "handshakes",
            f"destination {rip}:{rport}: {n} handshakes stalled in {nominal:g} s; frames leave the director but no "
            f"client ACK returns. Likely causes: {STALL_CAUSES}",
            evidence="\n".join(ev), fix=fix,
        ))
    return out


def check_stall_history(run: Run) -> list[Finding]:
    """Episodes lbd remembers (op stall_history, the last 15 minutes): the stalls that happened
    before this run's window, which the sampled check above cannot see (issue 16 item 8). An
    episode still going on is the sampled check's when there was a window to sample."""
    if not run.lbd_ok:
        return []
    try:
        history = run.ctx.lbd("stall_history") or {}
    except LbdRefused:  # an lbd from before the operation existed
        return [Finding("info", "stall-history", "lbd does not remember stalled-handshake episodes: only stalls "
                        "during this run's window can be seen", fix="upgrade lbd")]
    except LbdUnavailable:
        return []
    out: list[Finding] = []
    for ep in history.get("episodes", []):
        if ep.get("ongoing") and run.second is not None:
            continue  # the sampled check reports it, with this window's counts
        svc = ep.get("service") or {}
        label = (f"FWM {svc['fwmark']}" if svc.get("fwmark")
                 else f"{str(svc.get('proto', '')).upper()} {svc.get('addr')}:{svc.get('port')}")
        started = _clock(ep.get("started"))
        when = (f"since {started} ({_duration(ep.get('lasted_s'))}, still going on)" if ep.get("ongoing") else
                f"from {started} to {_clock(ep.get('ended'))} ({_duration(ep.get('lasted_s'))}; ended "
                f"{_duration(ep.get('ago_s'))} ago: {ep.get('end_reason') or 'no stall seen since'})")
        out.append(Finding(
            "error" if ep.get("ongoing") else "warning", "stall-history",
            f"destination {ep.get('addr')}:{ep.get('port')} of {label}: handshakes stalled {when}. "
            f"Likely cause: {ep.get('likely_cause') or STALL_CAUSES}",
            evidence=(f"lbd saw it start with {ep.get('stalled')} handshakes stalled in {ep.get('window_s')} s "
                      f"(client SYN retransmissions +{ep.get('syn_retrans')}, completed handshakes "
                      f"+{ep.get('handshakes')}), forwarding {ep.get('fwd')}; lbd keeps the episodes of the last "
                      f"{_duration(history.get('history_s'))}"),
            fix=("if it happens again, run `lbadm doctor` while it does (its window samples the counters) and "
                 "capture on the real server (tcpdump -ni any host VIP) to see whether the SYNs arrive"),
        ))
    return out


def _clock(wall: Any) -> str:
    if not isinstance(wall, int | float):
        return "?"
    return time.strftime("%H:%M:%S", time.localtime(wall))


def _duration(seconds: Any) -> str:
    if not isinstance(seconds, int | float):
        return "?"
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def _syn_recv_counts(run: Run) -> dict[tuple[str, str, int, str, int], int]:
    """Connections per destination still in SYN_RECV (client SYN seen, its ACK never came)."""
    try:
        conns = (run.ctx.lbd("connections") or {}).get("connections", [])
    except (LbdUnavailable, LbdRefused):
        return {}
    out: dict[tuple[str, str, int, str, int], int] = {}
    for c in conns:
        if c.get("state") == "SYN_RECV":
            key = (str(c.get("proto")), str(c.get("vaddr")), int(c.get("vport", 0)), str(c.get("daddr")), int(c.get("dport", 0)))
            out[key] = out.get(key, 0) + 1
    return out


_COUNTER_FINDINGS = {
    "no_l2": ("error", "packets dropped because a destination has no resolved MAC address",
              "see the destinations findings; check routes and ARP towards the real servers"),
    "table_full": ("error", "new connections dropped: lbd's connection table is full",
                   "start lbd with a larger --conn-max, or lower TCP timeouts (lbadm --set)"),
    "dest_unavailable": ("warning", "packets of connections to deleted destinations dropped (as IPVS does)",
                         "expected for a while after `lbadm -d`; the entries expire with their state timeout"),
    "no_dest": ("warning", "no destination available: clients were answered with ICMP port unreachable",
                "add destinations or give them weight > 0"),
    "malformed": ("info", "malformed packets dropped", ""),
    "bad_csum": ("info", "packets with a bad IPv4 header checksum dropped", ""),
    "fragment": ("warning", "IP fragments reached the fast path: they were not reassembled before the raw table",
                 "lbd's LBD-Q<N>-GO chain ends with an xt_socket rule that turns the kernel's reassembly on "
                 "(docs/fastpath.md \"Fragments\"): check it is there, and which other rule queues fragments"),
    "xmit_failed": ("error", "packets lbd decided to send could not be sent (counted as xmit_failed, not forwarded)",
                    "see the nfq send errors and lbd's log"),
    "martian_src": ("info", "packets from martian sources (0/8, 127/8, multicast, 255.255.255.255) dropped, as the "
                    "kernel's routing drops them", ""),
    "l2_queued": ("info", "packets held while a real server's MAC was resolved (sent once it was, or counted no_l2 "
                  "after 3 s)", ""),
    "bad_l4_csum": ("info", "SYN-proxy: SYNs or cookie ACKs with a wrong TCP checksum dropped unanswered", ""),
    "local_src": ("warning", "new connections whose source is the director's own address (a VIP or an interface "
                  "address) dropped: spoofed, or looped back", "look for spoofing, or a routing loop"),
}
_NFQ_FINDINGS = {
    "recv_err": ("warning", "errors receiving from the queue (ENOBUFS: the kernel dropped packets lbd could not take)",
                 "give lbd more CPU; a larger socket buffer"),
    "xmit_l2_err": ("error", "frames towards real servers could not be sent (AF_PACKET send errors)",
                    "check the destinations' interfaces (down? MTU?) and lbd's log"),
    "answer_err": ("warning", "packets on lbd's raw socket could not be sent", "check lbd's log"),
}

_OVERLOAD_FINDINGS = {
    "dropped": ("warning", "lbd's overload guard shed packets before the queue: lbd was offered more than it takes "
                "(lbd --overload-guard, docs/fastpath.md)",
                "give lbd CPU (pinning, no competing load) or more queues (--queue-balance); the guard only keeps "
                "an overloaded lbd delivering what it can"),
}


def check_counters(run: Run) -> list[Finding]:
    if run.first is None or run.first.counters is None:
        return []
    out: list[Finding] = []
    c0 = run.first.counters or {}
    c1 = (run.second.counters if run.second is not None else None) or {}
    window = _window(run)
    for group, table in (("reasons", _COUNTER_FINDINGS), ("nfq", _NFQ_FINDINGS), ("overload", _OVERLOAD_FINDINGS)):
        v0, v1 = c0.get(group) or {}, c1.get(group) or {}
        for name, (sev, text, fix) in table.items():
            if name not in v0:
                continue
            before = int(v0[name])
            if run.second is not None and name in v1:
                grew = int(v1[name]) - before
                if grew > 0:
                    out.append(Finding(sev, "counters", f"{name} +{grew} in {window:.1f} s: {text}",
                                       evidence=f"{group}.{name}: {before} -> {v1[name]}", fix=fix))
                    continue
            if before > 0:
                out.append(Finding("info", "counters", f"{name} = {before} since lbd started (not growing now): {text}",
                                   evidence=f"{group}.{name}: {before}"))
    return out


def check_queue_drops(run: Run) -> list[Finding]:
    if not run.nfqueue_used or run.first is None or run.queue_num is None or run.first.queues is None:
        return []
    q0 = run.first.queues.get(run.queue_num)
    if q0 is None:
        return []
    q1 = run.second.queues.get(run.queue_num) if run.second is not None and run.second.queues else None
    fix = ("lbd is too slow for the offered load: give it CPU (pinning, no competing load), or start it with "
           "--fail-open so overflow is accepted (unbalanced) instead of dropped")
    if q1 is not None and q1.portid == q0.portid:
        dq, du = q1.queue_dropped - q0.queue_dropped, q1.user_dropped - q0.user_dropped
        if dq > 0 or du > 0:
            return [Finding("error", "nfqueue", f"queue {q0.queue} dropped {dq + du} packets in {_window(run):.1f} s "
                            f"(queue full: {dq}, netlink buffer overrun: {du})",
                            evidence=f"before: {queue_line(q0)}\nafter:  {queue_line(q1)}", fix=fix)]
    if q0.queue_dropped or q0.user_dropped:
        return [Finding("info", "nfqueue", f"queue {q0.queue} dropped packets earlier (cumulative since lbd bound it; "
                        "not growing now)", evidence=queue_line(q0), fix=fix)]
    return [Finding("info", "nfqueue", f"queue {q0.queue}: lbd listening (portid {q0.portid}), no drops",
                    evidence=queue_line(q0))]
