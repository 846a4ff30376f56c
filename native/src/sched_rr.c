/*
 * sched_rr.c - round robin, with ip_vs_rr.c's semantics.
 *
 * Per-service state: the position of the last chosen destination (the kernel keeps a pointer
 * into the list; here an index, moved when the list changes around it), or the list head
 * initially. The next pick is the first eligible destination after it, wrapping round once and
 * ending with the last chosen one itself. Deleting the last chosen destination moves the cursor
 * to its predecessor (the head if it was first), so its successor is picked next
 * (ip_vs_rr_del_dest).
 */
#include <stdlib.h>

#include "lb_sched.h"

struct rr_data {
    uint32_t last1;              /* index of the last chosen destination + 1; 0 = the list head */
};

static int rr_init_service(struct lb_svc *svc)
{
    svc->sched_data = calloc(1, sizeof(struct rr_data));
    return svc->sched_data ? LB_OK : LB_ENOMEM;
}

static void rr_done_service(struct lb_svc *svc)
{
    free(svc->sched_data);
}

static struct lb_dest *rr_schedule(struct lb_svc *svc, const struct lb_pkt *p LB_UNUSED)
{
    struct rr_data *rr = svc->sched_data;
    uint32_t n = svc->ndests;
    /* From the head: every destination in order. From a cursor: those after it, then round to
     * the cursor itself. */
    uint32_t start = rr->last1 < n ? rr->last1 : 0;
    for (uint32_t step = 0; step < n; step++) {
        uint32_t i = start + step < n ? start + step : start + step - n;
        struct lb_dest *d = svc->dests[i];
        if (lb_dest_eligible(d)) {
            rr->last1 = i + 1;
            return d;
        }
    }
    return NULL;
}

static int rr_add_dest(struct lb_svc *svc, struct lb_dest *d LB_UNUSED, uint32_t idx)
{
    struct rr_data *rr = svc->sched_data;
    if (rr->last1 > idx) /* inserted at or before the cursor: it moves along; the head stays the head */
        rr->last1++;
    return LB_OK;
}

static void rr_del_dest(struct lb_svc *svc, struct lb_dest *d LB_UNUSED, uint32_t idx)
{
    struct rr_data *rr = svc->sched_data;
    if (rr->last1 > idx) /* deleted before the cursor, or the cursor itself: -> its predecessor */
        rr->last1--;
}

const struct lb_sched_ops lb_sched_rr = {
    .name = "rr",
    .init_service = rr_init_service,
    .done_service = rr_done_service,
    .add_dest = rr_add_dest,
    .del_dest = rr_del_dest,
    .schedule = rr_schedule,
};
