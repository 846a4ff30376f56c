/*
 * sched_fo.c - weighted failover, with ip_vs_fo.c's semantics (Linux 6.1).
 *
 * The destination with the highest weight (> 0) that is not OVERLOADED, the first in list order
 * among equals; connection counts play no part. No per-service state, no hooks.
 */
#include "lb_sched.h"

static struct lb_dest *fo_schedule(struct lb_svc *svc, const struct lb_pkt *p LB_UNUSED)
{
    struct lb_dest *best = NULL;
    int32_t hw = 0;
    for (uint32_t i = 0; i < svc->ndests; i++) {
        struct lb_dest *d = svc->dests[i];
        if (!(d->flags & LB_DEST_F_OVERLOAD) && d->conf.weight > hw) {
            best = d;
            hw = d->conf.weight;
        }
    }
    return best;
}

const struct lb_sched_ops lb_sched_fo = {
    .name = "fo",
    .schedule = fo_schedule,
};
