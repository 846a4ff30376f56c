"""Running the checks: every static check, then (lbd answering) the window, then the sampled ones."""

from __future__ import annotations

from collections.abc import Callable

from lb.doctor.checks_afxdp import check_afxdp, check_afxdp_counters
from lb.doctor.checks_firewall import check_firewall, check_nft
from lb.doctor.checks_host import check_destinations, check_forwarding, check_mtu, check_rp_filter, check_vip
from lb.doctor.checks_nat import check_nat_forwarding, check_nat_replies, check_nat_routes
from lb.doctor.checks_rules import check_lbd, check_nfqueue_rules, check_queue_listener
from lb.doctor.checks_sampled import check_counters, check_queue_drops, check_stall_history, check_stalled_handshakes
from lb.doctor.context import MAX_WINDOW_S, DoctorContext
from lb.doctor.findings import Finding, sort_findings
from lb.doctor.inputs import Run

Check = Callable[[Run], list[Finding]]


def run_checks(ctx: DoctorContext) -> list[Finding]:
    """All checks, read-only; sleeps ctx.window_s once between two samples of lbd's counters."""
    run = Run(ctx)
    findings: list[Finding] = []
    for check in STATIC_CHECKS:
        findings += _safely(check, run)
    if run.lbd_ok and run.first is not None:
        window = max(0.0, min(float(ctx.window_s), MAX_WINDOW_S))
        if window > 0:
            ctx.sleep(window)
            run.second = run.sample()
    for check in SAMPLED_CHECKS:
        findings += _safely(check, run)
    problems = getattr(ctx, "problems", None)
    if problems:
        findings.append(Finding("warning", "inputs", "some inputs could not be read; checks depending on them were skipped",
                                evidence="\n".join(dict.fromkeys(problems)),
                                fix="run `lbadm doctor` as root inside the director's network namespace"))
    return sort_findings(findings)


def _safely(check: Check, run: Run) -> list[Finding]:
    try:
        return check(run)
    except Exception as exc:  # a broken check must not hide the others
        name = check.__name__.removeprefix("check_")
        return [Finding("warning", name, f"check failed: {type(exc).__name__}: {exc}",
                        fix="report this as a bug of lbadm doctor, with the evidence of the other checks")]


STATIC_CHECKS: tuple[Check, ...] = (
    check_lbd, check_afxdp, check_nfqueue_rules, check_queue_listener, check_firewall, check_nft, check_forwarding,
    check_rp_filter, check_vip, check_mtu, check_destinations,
    check_nat_forwarding, check_nat_routes,
)
SAMPLED_CHECKS: tuple[Check, ...] = (check_stalled_handshakes, check_stall_history, check_counters, check_queue_drops,
                                     check_nat_replies, check_afxdp_counters)
