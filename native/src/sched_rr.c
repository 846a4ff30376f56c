/*
 * sched_rr.c - round robin, with ip_vs_rr.c's semantics.
 *
 * svc->sched_pos is the index of the last chosen destination, or -1 for the
 * list head. The next pick is the first eligible destination after it,
 * wrapping around once. Deleting the last chosen destination moves the cursor
 * to its predecessor, so its successor is picked next.
 */
#include "lb_sched.h"

static struct lb_dest *rr_schedule(struct lb_svc *svc)
{
    uint32_t n = svc->ndests;
    if (n == 0)
        return NULL;
    int32_t last = svc->sched_pos;
    /* Visit every destination once, starting after `last`. */
    for (uint32_t step = 1; step <= n; step++) {
        uint32_t i = (uint32_t)((last + (int32_t)step) % (int32_t)n);
        if (last < 0)
            i = step - 1;
        struct lb_dest *d = svc->dests[i];
        if (lb_dest_eligible(d)) {
            svc->sched_pos = (int32_t)i;
            return d;
        }
    }
    return NULL;
}

static void rr_add_dest(struct lb_svc *svc, uint32_t idx)
{
    /* Inserting before the cursor shifts it; the head (-1) stays the head. */
    if (svc->sched_pos >= 0 && (uint32_t)svc->sched_pos >= idx)
        svc->sched_pos++;
}

static void rr_del_dest(struct lb_svc *svc, uint32_t idx)
{
    if (svc->sched_pos < 0)
        return;
    if ((uint32_t)svc->sched_pos >= idx)
        svc->sched_pos--; /* deleted the cursor itself -> its predecessor (or the head) */
}

static void rr_init_svc(struct lb_svc *svc) { svc->sched_pos = -1; }

const struct lb_sched_ops lb_sched_rr = {
    .name = "rr",
    .schedule = rr_schedule,
    .add_dest = rr_add_dest,
    .del_dest = rr_del_dest,
    .init_svc = rr_init_svc,
};
