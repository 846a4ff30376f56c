"""`lbadm doctor`: read-only diagnostics of a director running lbd.

`run_checks(ctx)` inspects the director through a `DoctorContext` and returns `Finding`s
(severity "error" | "warning" | "info", the check's name, a one-line summary, the evidence it is
based on and the fix). `format_text()` / `format_json()` render them. Nothing here changes
anything: the live context only runs `iptables-save`, `nft list ruleset`, `ip -j addr|route get`,
reads /proc, and sends read-only requests (`ping`, `list`, `counters`) to lbd.

What lbd's traffic meets on the director (the model every firewall finding is explained with):

- Packets for a virtual service are taken in raw PREROUTING (`LBD-Q<N>`: `CT --notrack`, then
  NFQUEUE), before conntrack's hook and before the routing decision. Packets lbd forwards leave
  on an AF_PACKET socket (DR, IPIP, FULLNAT towards real servers): they never meet mangle,
  filter, FORWARD, rp_filter or conntrack on the director.
- Packets lbd hands back to the kernel (fast-path ACCEPT: TCP segments of connections lbd has no
  entry for -- after an lbd restart, or idle longer than the state timeout --, other protocols
  such as ICMP to the VIP) continue with conntrack state UNTRACKED through mangle PREROUTING,
  the routing decision (rp_filter), mangle INPUT and filter INPUT. With `--queue-bypass` the same
  holds for all VIP traffic while lbd is not running.
- Packets lbd sends on its raw socket (FULLNAT replies to clients, ICMP answers) carry
  SO_MARK = 0x4c420000|N, are untracked in raw OUTPUT (`LBD-Q<N>-OUT`) and then meet mangle
  OUTPUT, filter OUTPUT and mangle POSTROUTING as UNTRACKED.
- UNTRACKED matches neither `--state NEW` nor `--state RELATED,ESTABLISHED`, and is not INVALID.

The stalled-handshake check samples lbd's `list` twice, `ctx.window_s` apart: per destination,
`syn_retrans` (client SYN retransmissions with an unchanged sequence number on connections already
forwarded to it) growing while `handshakes` (connections whose client ACK completed the handshake)
does not means frames leave the director but the real server's answer never reaches the client.

Modules: findings (Finding, text/JSON output), context (DoctorContext, LiveContext), parsers
(nfnetlink_queue, sysctl values, nft rulesets; iptables rule text is lb.iptrules's), ipteval
(the iptables rule evaluator and the paths of lbd's traffic), inputs (one run's shared inputs),
checks_* (the checks, by subject), runner (run_checks), cli (`lbadm doctor`'s command line).
"""

from lb.doctor.checks_sampled import STALL_CAUSES
from lb.doctor.context import DEFAULT_WINDOW_S, MAX_WINDOW_S, DoctorContext, LbdRefused, LbdUnavailable, LiveContext
from lb.doctor.findings import Finding, format_json, format_text, has_errors, sort_findings
from lb.doctor.ipteval import HANDBACK_PATH, Probe, walk, walk_path
from lb.doctor.parsers import parse_nfnetlink_queue
from lb.doctor.runner import run_checks
from lb.iptrules import parse_iptables_save

__all__ = [
    "DEFAULT_WINDOW_S", "HANDBACK_PATH", "MAX_WINDOW_S", "STALL_CAUSES", "DoctorContext", "Finding", "LbdRefused",
    "LbdUnavailable", "LiveContext", "Probe", "format_json", "format_text", "has_errors", "parse_iptables_save",
    "parse_nfnetlink_queue", "run_checks", "sort_findings", "walk", "walk_path",
]
