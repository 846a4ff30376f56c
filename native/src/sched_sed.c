/*
 * sched_sed.c - shortest expected delay, with ip_vs_sed.c's semantics (Linux 6.1).
 *
 * overhead = activeconns + 1 (inactive connections do not count at all). wlc's two stages: the
 * first destination neither OVERLOADED nor of weight 0 is the candidate; every later one not
 * OVERLOADED replaces it when cand_overhead * d_weight > d_overhead * cand_weight (64-bit
 * products of 32-bit values: no overflow). A later weight-0 destination never wins (its side is
 * 0). No per-service state, no hooks.
 */
#include "lb_sched.h"

static inline int64_t sed_overhead(const struct lb_dest *d)
{
    return (int64_t)d->activeconns + 1;
}

static struct lb_dest *sed_schedule(struct lb_svc *svc, const struct lb_pkt *p LB_UNUSED)
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
    int64_t loh = sed_overhead(least);
    for (i++; i < n; i++) {
        struct lb_dest *d = svc->dests[i];
        if (d->flags & LB_DEST_F_OVERLOAD)
            continue;
        int64_t doh = sed_overhead(d);
        if (loh * d->conf.weight > doh * least->conf.weight) {
            least = d;
            loh = doh;
        }
    }
    return least;
}

const struct lb_sched_ops lb_sched_sed = {
    .name = "sed",
    .schedule = sed_schedule,
};
