/*
 * sched_lblc.c - locality-based least-connection, with ip_vs_lblc.c's semantics (Linux 6.1.192).
 *
 * Per-service state: the destination-address cache of lb_locality.h, each entry naming one
 * destination (and holding a reference on it). schedule(): the entry for the packet's destination
 * address is refreshed (lastuse = now) and its destination used if it is still in the service
 * (AVAILABLE: a deleted one is not, until it is re-added from the trash, which makes the old
 * entries valid again), has weight > 0 and is not overloaded in lb_loc_is_overloaded's sense; the
 * OVERLOAD flag is NOT checked on a hit. Otherwise the wlc choice (lb_loc_least), and the entry
 * points at it: an entry for another destination is replaced by a new one (new lastuse), unless
 * the table is full (24576 entries: then there is none), or the allocation fails (then the
 * choice is still used, as the kernel's GFP_ATOMIC failure). No add/del/upd hooks, as the kernel.
 */
#include <stdlib.h>

#include "lb_locality.h"

struct lblc_entry {
    struct lb_loc_entry e;       /* first: the table's part */
    struct lb_dest *dest;        /* holds a reference */
};

static void lblc_free_entry(struct lb_svc *svc, struct lb_loc_entry *e)
{
    struct lblc_entry *en = (struct lblc_entry *)e;
    lb_dest_put(svc->lb, en->dest);
    free(en);
}

static int lblc_init_service(struct lb_svc *svc)
{
    return lb_loc_init(svc, sizeof(struct lb_loc_table), lblc_free_entry);
}

/* ip_vs_lblc_new: point the entry for addr at d. */
static void lblc_new(struct lb_svc *svc, struct lb_loc_table *t, uint32_t addr, struct lb_dest *d, uint64_t now)
{
    struct lblc_entry *en = (struct lblc_entry *)lb_loc_get(t, addr);
    if (en) {
        if (en->dest == d)
            return;
        lb_loc_del(svc, t, &en->e);
    }
    if (lb_loc_full(t))
        return;
    en = calloc(1, sizeof(*en));
    if (!en)
        return;
    en->e.addr = addr;
    en->e.lastuse_ms = now;
    lb_dest_hold(d);
    en->dest = d;
    lb_loc_link(t, &en->e);
}

static struct lb_dest *lblc_schedule(struct lb_svc *svc, const struct lb_pkt *p)
{
    struct lb_loc_table *t = svc->sched_data;
    uint64_t now = lb_loc_now(svc, t);
    struct lblc_entry *en = (struct lblc_entry *)lb_loc_get(t, p->daddr);
    if (en) {
        en->e.lastuse_ms = now;
        struct lb_dest *d = en->dest;
        if ((d->flags & LB_DEST_F_AVAILABLE) && d->conf.weight > 0 && !lb_loc_is_overloaded(d, svc))
            return d;
    }
    struct lb_dest *d = lb_loc_least(svc);
    if (!d)
        return NULL;
    lblc_new(svc, t, p->daddr, d, now);
    return d;
}

const struct lb_sched_ops lb_sched_lblc = {
    .name = "lblc",
    .init_service = lblc_init_service,
    .done_service = lb_loc_done,
    .schedule = lblc_schedule,
    .tick = lb_loc_tick,
};
