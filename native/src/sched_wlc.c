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
    uint32_t i = 0, n = svc->ndests;
    struct lb_dest *least = NULL;
    for (; i < n; i++) {
        if (lb_dest_eligible(svc->dests[i])) {
            least = svc->dests[i];
            break;
        }
    }
    if (!least)
        return NULL;
    int64_t loh = lb_dest_conn_overhead(least);
    for (i++; i < n; i++) {
        struct lb_dest *d = svc->dests[i];
        if (d->flags & LB_DEST_F_OVERLOAD)
            continue;
        int64_t doh = lb_dest_conn_overhead(d);
        if (loh * d->conf.weight > doh * least->conf.weight) {
            least = d;
            loh = doh;
        }
    }
    return least;
}

const struct lb_sched_ops lb_sched_wlc = {
    .name = "wlc",
    .schedule = wlc_schedule,
};
