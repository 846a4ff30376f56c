/*
 * sched_nq.c - never queue, with ip_vs_nq.c's semantics (Linux 6.1).
 *
 * In list order, skipping OVERLOADED and weight-0 destinations: the first one with no active
 * connection is chosen at once, whatever its weight (an idle server needs no queue); failing
 * that, the smallest (activeconns + 1) / weight as sed, by cross-multiplication, the first
 * among equals. No per-service state, no hooks.
 */
#include "lb_sched.h"

static struct lb_dest *nq_schedule(struct lb_svc *svc, const struct lb_pkt *p LB_UNUSED)
{
    struct lb_dest *least = NULL;
    int64_t loh = 0;
    for (uint32_t i = 0; i < svc->ndests; i++) {
        struct lb_dest *d = svc->dests[i];
        if ((d->flags & LB_DEST_F_OVERLOAD) || !d->conf.weight)
            continue;
        if (d->activeconns == 0)
            return d;
        int64_t doh = (int64_t)d->activeconns + 1;
        if (!least || loh * d->conf.weight > doh * least->conf.weight) {
            least = d;
            loh = doh;
        }
    }
    return least;
}

const struct lb_sched_ops lb_sched_nq = {
    .name = "nq",
    .schedule = nq_schedule,
};
