/*
 * sched_dh.c - destination hashing, with ip_vs_dh.c's semantics (Debian 6.1.192).
 *
 * Per-service state: a table of 2^LB_DH_TAB_BITS = 256 buckets, rebuilt when a destination is
 * added or deleted (ip_vs_dh_reassign; the kernel's dh has no upd_dest hook, so a weight edit
 * changes no bucket): one bucket per destination in list order, cyclically, weights playing no
 * part; an empty list empties the table.
 *
 * A packet's bucket is hash_32(ntohl(daddr), 8): its destination ADDRESS only, no port and no
 * flag. Its destination is the choice unless unavailable (weight 0 or OVERLOAD): then none;
 * there is no fallback. (Every packet of one lbd service has the service's VIP as destination,
 * so dh sends all of a VIP's clients to one real server, the one kernel IPVS picks for it.)
 */
#include <stdlib.h>

#include "lb_sched.h"

#define DH_TAB_SIZE (1u << LB_DH_TAB_BITS)

struct dh_data {
    struct lb_dest *buckets[DH_TAB_SIZE]; /* NULL only when the list is empty */
};

static void dh_reassign(struct lb_svc *svc)
{
    struct dh_data *dh = svc->sched_data;
    uint32_t n = svc->ndests;
    for (uint32_t b = 0; b < DH_TAB_SIZE; b++)
        dh->buckets[b] = n ? svc->dests[b % n] : NULL;
}

static int dh_init_service(struct lb_svc *svc)
{
    svc->sched_data = calloc(1, sizeof(struct dh_data));
    if (!svc->sched_data)
        return LB_ENOMEM;
    dh_reassign(svc);
    return LB_OK;
}

static void dh_done_service(struct lb_svc *svc)
{
    free(svc->sched_data);
}

static int dh_add_dest(struct lb_svc *svc, struct lb_dest *d LB_UNUSED, uint32_t idx LB_UNUSED)
{
    dh_reassign(svc);
    return LB_OK;
}

static void dh_del_dest(struct lb_svc *svc, struct lb_dest *d LB_UNUSED, uint32_t idx LB_UNUSED)
{
    dh_reassign(svc); /* the deleted destination leaves every bucket before it can be freed */
}

static struct lb_dest *dh_schedule(struct lb_svc *svc, const struct lb_pkt *p)
{
    const struct dh_data *dh = svc->sched_data;
    struct lb_dest *d = dh->buckets[lb_hash_32(lb_ntohl(p->daddr), LB_DH_TAB_BITS)];
    return d && lb_dest_eligible(d) ? d : NULL;
}

const struct lb_sched_ops lb_sched_dh = {
    .name = "dh",
    .init_service = dh_init_service,
    .done_service = dh_done_service,
    .add_dest = dh_add_dest,
    .del_dest = dh_del_dest,
    .schedule = dh_schedule,
};
