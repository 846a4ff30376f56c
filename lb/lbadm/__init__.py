"""lbadm: the operator's command line, flag- and output-compatible with ipvsadm 1.31.

The command line is read the way ipvsadm reads it with popt (short options
cluster, `-s rr`/`-srr`/`--scheduler=rr`, `-p` takes an optional value, the
command must be the first option, non-option words are collected and only
`--set` consumes them), checked against ipvsadm's table of legal command and
option combinations, and turned into one JSON request for lbd
(docs/control-protocol.md). Errors use ipvsadm's wording and exit statuses:

    2    invalid command line (ipvsadm's fail(2, ...)); nothing is sent
    255  usage errors popt reports, operations lbd refused (ipvsadm returns -1), and what lbd
         does not implement (lb/unimplemented.py)
    1    a listing failed (ipvsadm's exit(1))
    2    lbd cannot be reached

Additions to ipvsadm: `--socket PATH` (else $LBD_SOCKET, else
/run/lbd/lbd.sock), `-b/--fullnat` on -a/-e (DPVS; on -A/-E, `-b` is ipvsadm's
`--sched-flags`, so `ipvsadm -S` output restores), `--json` for listings, `--reload`,
`lbadm doctor` (lb/doctor/cli.py).

From DPVS's ipvsadm (iqiyi/dpvs tools/ipvsadm/ipvsadm.c), for what lbd's engines do:
`-P/--add-laddr`, `-Q/--del-laddr` with `-z/--laddr LIP` (FULLNAT local addresses; DPVS's
compulsory `-F/--ifname` is accepted and ignored: lbd sends from the director's own stack),
`-G/--get-laddr [-t|-u VIP:PORT]` printing DPVS's table, and `-j/--synproxy enable|disable`
on -A/-E (SYN-proxy; lbd refuses it on a service with non-FULLNAT destinations). lbd's own:
`--toa` on -A/-E (FULLNAT passes the client address in TCP option 254), and `--proxy-protocol
v1|v2|disable` (FULLNAT sends a PROXY protocol header before the client's data). As ipvsadm's -E,
an -E replaces the whole service: options not given (-p, -j, --toa, --proxy-protocol) return to
their defaults.
`-S` writes `-j enable`, `--toa`, `--proxy-protocol V` and one `-P` line per local address, so `-S | -R` round-trips
(DPVS's own -S loses them).

Modules: scanner (popt-compatible option scanning), legality (ipvsadm's command/option table),
values (option values with C semantics), cmdline (what one command line asks for), invocation
(argv -> Invocation; -R rule streams), errors (exit statuses, ipvsadm's messages), usage (-h),
run (talking to lbd, printing; main).
"""

from lb.lbadm.cmdline import Action, Invocation, Request
from lb.lbadm.errors import EXIT_BAD_ARGS, EXIT_OP_FAILED, PROG, UsageError, ipvs_strerror
from lb.lbadm.invocation import RestoreError, parse_args, restore_requests, rule_lines
from lb.lbadm.legality import LEGAL_OPTIONS, Command, Opt
from lb.lbadm.run import main, render, run

__all__ = [
    "EXIT_BAD_ARGS", "EXIT_OP_FAILED", "LEGAL_OPTIONS", "PROG", "Action", "Command", "Invocation", "Opt", "Request",
    "RestoreError", "UsageError", "ipvs_strerror", "main", "parse_args", "render", "restore_requests", "rule_lines", "run",
]
