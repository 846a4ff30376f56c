/*
 * lb_sched.h - scheduler operations. One scheduler per file (sched_<name>.c),
 * registered in the single list in sched.c, as the kernel's ip_vs_<name>.c.
 */
#ifndef LB_SCHED_H
#define LB_SCHED_H

#include "lb_internal.h"

struct lb_sched_ops {
    const char *name;
    /* Pick a destination for a new connection; NULL = none available.
     * Called with the table lock held (or from the single packet thread). */
    struct lb_dest *(*schedule)(struct lb_svc *svc);
    /* Optional hooks when the destination list changes; `idx` is the position
     * the destination had (del) or has (add) in svc->dests. */
    void (*add_dest)(struct lb_svc *svc, uint32_t idx);
    void (*del_dest)(struct lb_svc *svc, uint32_t idx);
    /* Optional: reset per-service state when the service (re)binds to this scheduler. */
    void (*init_svc)(struct lb_svc *svc);
};

const struct lb_sched_ops *lb_sched_find(const char *name);

/* A destination may receive new connections (kernel: weight > 0 and not OVERLOAD). */
static inline int lb_dest_eligible(const struct lb_dest *d)
{
    return d->conf.weight > 0 && !(d->flags & LB_DEST_F_OVERLOAD);
}

extern const struct lb_sched_ops lb_sched_rr;
extern const struct lb_sched_ops lb_sched_wlc;

#endif /* LB_SCHED_H */
