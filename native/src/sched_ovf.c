/*
 * sched_ovf.c - weighted overflow, with ip_vs_ovf.c's semantics (Linux 6.1).
 *
 * As fo, the destination of the highest weight, the first in list order among equals, skipping
 * OVERLOADED ones, weight 0, and those whose active connections EXCEED their weight (a
 * destination still takes connections while activeconns == weight: weight 3 takes a 4th). So the
 * heaviest fills up to its weight, then the next heaviest, and so on. No per-service state, no
 * hooks.
 */
#include "lb_sched.h"

static struct lb_dest *ovf_schedule(struct lb_svc *svc, const struct lb_pkt *p LB_UNUSED)
{
    struct lb_dest *best = NULL;
    int32_t hw = 0;
    for (uint32_t i = 0; i < svc->ndests; i++) {
        struct lb_dest *d = svc->dests[i];
        int32_t w = d->conf.weight;
        if ((d->flags & LB_DEST_F_OVERLOAD) || (int64_t)d->activeconns > w || w == 0)
            continue;
        if (!best || w > hw) {
            best = d;
            hw = w;
        }
    }
    return best;
}

const struct lb_sched_ops lb_sched_ovf = {
    .name = "ovf",
    .schedule = ovf_schedule,
};
