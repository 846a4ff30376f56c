"""fwmark services' steering: mangle LBD-Q<N>-MARK, jumped to from mangle PREROUTING after the
operator's MARK rules, one rule per fwmark service queueing its mark (lb.iptlayout's mark_rules).

One job: keep that chain holding exactly the fwmark services' marks, notice when it does not, and
remove it. A MarkChain belongs to a RuleManager (lb/iptables.py), which lends it its command
execution (netns, runner, errors) and removes it with its own chains; lb.nftsteer's NftManager
queues fwmark services through the same RuleManager, so this chain is iptables under either
--steering.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from lb.iptlayout import (
    HOOK_CHAIN,
    MARK_TABLE,
    chain_damage,
    delete_line,
    mark_chain_name,
    mark_jump_rule,
    mark_rules,
    remove_lines,
    same_rules,
)
from lb.iptrules import TableState, parse_iptables_save, parse_table

log = logging.getLogger("lb.iptables")  # its lines were lb.iptables' before the split: same logger

Exec = Callable[[list[str]], str]  # runs a command (in lbd's netns), returns its output
Restore = Callable[[list[str], str], None]  # one iptables-restore --noflush of lines into a table


class MarkChain:
    """mangle LBD-Q<N>-MARK of queue `queue_num`; `target` is the queue's NFQUEUE target
    (lb.iptlayout.queue_target), `listing` the command that prints the mangle table (`iptables -S`)."""

    def __init__(self, queue_num: int, target: str, listing: list[str], run: Exec, restore: Restore) -> None:
        self.queue_num = queue_num
        self.target = target
        self.chain = mark_chain_name(queue_num)
        self.marks: set[int] | None = None  # the marks LBD-Q<N>-MARK holds (None: unknown, read it)
        self._listing_cmd = listing
        self._exec = run
        self._restore = restore

    def state(self) -> TableState:
        return self.listing()[0]

    def listing(self) -> tuple[TableState, list[str]]:
        """(LBD-Q<N>-MARK, the rules of mangle PREROUTING in order) from one listing."""
        text = self._exec(self._listing_cmd)
        hook = parse_iptables_save(text, default_table=MARK_TABLE).get(MARK_TABLE, {}).get(HOOK_CHAIN)
        return parse_table(text, self.chain, MARK_TABLE), [r.line for r in hook.rules] if hook else []

    def remove(self) -> None:
        """Remove LBD-Q<N>-MARK and the jumps to it (mangle), if any."""
        state = self.state()
        self._restore(remove_lines([(state, self.chain)]), MARK_TABLE)
        self.marks = set()

    def damage(self) -> list[str]:
        """What is missing from or altered in the chain, one phrase each (lb.iptables RuleManager.damage);
        nothing, and no listing, while there is no fwmark service."""
        if not self.marks:
            return []
        state, _hook = self.listing()
        return chain_damage(MARK_TABLE, self.chain, state, mark_rules(self.queue_num, self.marks, self.target),
                            hook=HOOK_CHAIN)

    def sync(self, marks: set[int]) -> bool:
        """Make LBD-Q<N>-MARK queue exactly `marks` (one transaction), jumped to from mangle
        PREROUTING. The raw table runs before mangle, where operators set marks, so a fwmark
        service's packets are queued here: after every operator MARK rule that precedes lbd's
        jump (appended when the first fwmark service appears), with the mark the operator set,
        which lbd never changes. Conntrack (priority -200) has seen them by then: a packet lbd
        forwards leaves an unconfirmed entry that dies with the packet; CT --notrack is not
        possible after conntrack. Costs nothing while there is no fwmark service. Returns whether
        anything changed."""
        if self.marks is not None and marks == self.marks:
            return False
        state, hook = self.listing()
        want = mark_rules(self.queue_num, marks, self.target)
        jumps = [j for j in state.jumps if j.startswith(f"-A {HOOK_CHAIN} ")]
        # The jump goes last: MARK rules an operator appended since the jump was made come before it
        # again (only lbd's own rule moves; a change of fwmark services is the moment).
        last = bool(hook) and hook[-1] in jumps and len(jumps) == 1
        if not marks and not state.chain_exists:
            self.marks = set()
            return False
        if state.chain_exists and same_rules(state.rules, want) and (last or not marks):
            self.marks = set(marks)
            return False
        lines = [f":{self.chain} - [0:0]", *want]  # declaring flushes it in this transaction
        if marks and not last:
            lines = [delete_line(j) for j in jumps] + lines + [mark_jump_rule(self.queue_num)]
        self._restore(lines, MARK_TABLE)
        self.marks = set(marks)
        log.info("mangle %s: queues fwmark(s) %s", self.chain, ", ".join(str(m) for m in sorted(marks)) or "none")
        return True
