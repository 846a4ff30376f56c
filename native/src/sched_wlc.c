/*
 * sched_wlc.c - weighted least-connection, with ip_vs_wlc.c's semantics.
 *
 * overhead = activeconns * 256 + inactconns. The first eligible destination
 * (weight > 0, not overloaded) is the candidate; a later non-overloaded one
 * replaces it when cand_overhead * d_weight > d_overhead * cand_weight
 * (cross-multiplication: no division, no rounding), in 128 bits: weights go up
 * to LB_DEST_WEIGHT_MAX (2^31 - 1, as the kernel) and overheads past 2^32 with
 * conn_max above 16M, so a 64-bit product could overflow.
 * A weight-0 destination can never win that comparison. No per-service state.
 */
#include "lb_sched.h"

static inline int64_t overhead(const struct lb_dest *d)
{
    return ((int64_t)d->activeconns << 8) + d->inactconns;
}

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
    int64_t loh = overhead(least);
    for (i++; i < n; i++) {
        struct lb_dest *d = svc->dests[i];
        if (d->flags & LB_DEST_F_OVERLOAD)
            continue;
        int64_t doh = overhead(d);
        if ((__int128)loh * d->conf.weight > (__int128)doh * least->conf.weight) {
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
