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
    return lb_sched_least_weighted(svc, sed_overhead);
}

const struct lb_sched_ops lb_sched_sed = {
    .name = "sed",
    .schedule = sed_schedule,
};
