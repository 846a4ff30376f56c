/*
 * sched_lc.c - least-connection, with ip_vs_lc.c's semantics (Debian 6.1.192).
 *
 * Every destination that is neither OVERLOADED nor of weight 0, in list order; the smallest
 * overhead wins (lb_dest_conn_overhead: 257 per active, 1 per inactive connection), compared as
 * the kernel's `unsigned int`, the first one among equals. Weights play no other part. No
 * per-service state, no hooks.
 */
#include "lb_sched.h"

static struct lb_dest *lc_schedule(struct lb_svc *svc, const struct lb_pkt *p LB_UNUSED)
{
    struct lb_dest *least = NULL;
    uint32_t loh = 0;
    for (uint32_t i = 0; i < svc->ndests; i++) {
        struct lb_dest *d = svc->dests[i];
        if ((d->flags & LB_DEST_F_OVERLOAD) || d->conf.weight == 0)
            continue;
        uint32_t doh = (uint32_t)lb_dest_conn_overhead(d); /* `unsigned int doh` */
        if (!least || doh < loh) {
            least = d;
            loh = doh;
        }
    }
    return least;
}

const struct lb_sched_ops lb_sched_lc = {
    .name = "lc",
    .schedule = lc_schedule,
};
