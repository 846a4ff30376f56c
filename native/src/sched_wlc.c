/*
 * sched_wlc.c - weighted least-connection, with ip_vs_wlc.c's semantics (Debian 6.1.192).
 *
 * overhead = lb_dest_conn_overhead (257 per active, 1 per inactive connection, the kernel's int).
 * The first eligible destination (weight > 0, not overloaded) is the candidate; a later
 * non-overloaded one replaces it when cand_overhead * d_weight > d_overhead * cand_weight
 * (cross-multiplication: no division, no rounding), as the kernel's 64-bit products: both
 * factors are 32-bit ints, so the product cannot overflow. A weight-0 destination can never win
 * that comparison. No per-service state.
 */
#include "lb_sched.h"

static struct lb_dest *wlc_schedule(struct lb_svc *svc, const struct lb_pkt *p LB_UNUSED)
{
    return lb_sched_least_weighted(svc, lb_dest_conn_overhead64);
}

const struct lb_sched_ops lb_sched_wlc = {
    .name = "wlc",
    .schedule = wlc_schedule,
};
