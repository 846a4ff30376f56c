/*
 * lb_sched_list.h - every scheduler, one line each: LB_SCHED(x) names `lb_sched_x`, defined in
 * native/src/sched_x.c. An X-macro list (no include guard: it is included once per use with
 * LB_SCHED defined); sched.c builds the registry from it. Python reads the names from this
 * text with the pattern ^LB_SCHED\((\w+)\) : keep one scheduler per line, nothing else but
 * comments. Adding a scheduler: docs/extending.md.
 */
LB_SCHED(rr)
LB_SCHED(wlc)
LB_SCHED(wrr)
LB_SCHED(lc)
LB_SCHED(sed)
LB_SCHED(nq)
LB_SCHED(fo)
LB_SCHED(ovf)
LB_SCHED(lblc)
LB_SCHED(lblcr)
LB_SCHED(twos)
LB_SCHED(sh)
LB_SCHED(dh)
LB_SCHED(mh)
