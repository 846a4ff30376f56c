/*
 * lb_sched_list.h - the scheduler registry: exactly one LB_SCHED(name) line per scheduler
 * (an X-macro: the C registry defines LB_SCHED and includes this file), nothing else but
 * comments. lb/consts.py reads the names from this text (lbadm's help and checks, config
 * validation, the pure-Python engine's registry test), so adding a scheduler is one line here.
 */
LB_SCHED(rr)
LB_SCHED(wlc)
