/*
 * sched_lblcr.c - locality-based least-connection with replication, with ip_vs_lblcr.c's
 * semantics (Linux 6.1.192).
 *
 * Per-service state: the destination-address cache of lb_locality.h, each entry holding a SET of
 * destinations (newest first, each member holding a reference) and `lastmod`, the time of the
 * set's last insertion or removal (inserting a member already there changes nothing).
 * schedule(), on a hit (lastuse = now):
 *  1. d = the set's least loaded member (dest_set_min: the first member neither OVERLOAD-flagged
 *     nor of weight <= 0 nor deleted seeds; later members not flagged replace it when strictly less
 *     loaded and not deleted);
 *  2. when the set has more than one member and more than the expiration (24 h) has passed since
 *     lastmod (strictly), its most loaded member (dest_set_max: among members of weight > 0, flag
 *     and deletion ignored, the first among equals) leaves the set, even when it is d;
 *  3. d is used if found and not overloaded in lb_loc_is_overloaded's sense;
 *  4. otherwise the wlc choice (lb_loc_least) joins the set (lastmod = now) and is used.
 * On a miss: the wlc choice, and a new entry whose set holds it, unless the table is full (24576
 * entries). A failed allocation leaves a member out (or the new entry with an empty set), as the
 * kernel's GFP_ATOMIC failures do. No add/del/upd hooks, as the kernel: a deleted destination
 * stays in the sets (and in the trash) and is valid again once re-added.
 */
#include <stdlib.h>

#include "lb_locality.h"

struct lblcr_member {
    struct lblcr_member *next;
    struct lb_dest *dest;        /* holds a reference */
};

struct lblcr_entry {
    struct lb_loc_entry e;       /* first: the table's part */
    struct lblcr_member *set;    /* newest first */
    uint32_t size;
    uint64_t lastmod_ms;
};

static void lblcr_free_entry(struct lb_svc *svc, struct lb_loc_entry *e)
{
    struct lblcr_entry *en = (struct lblcr_entry *)e;
    struct lblcr_member *m = en->set;
    while (m) {
        struct lblcr_member *next = m->next;
        lb_dest_put(svc->lb, m->dest);
        free(m);
        m = next;
    }
    free(en);
}

static int lblcr_init_service(struct lb_svc *svc)
{
    return lb_loc_init(svc, sizeof(struct lb_loc_table), lblcr_free_entry);
}

/* ip_vs_dest_set_insert */
static void set_insert(struct lblcr_entry *en, struct lb_dest *d, int check, uint64_t now)
{
    if (check)
        for (const struct lblcr_member *m = en->set; m; m = m->next)
            if (m->dest == d)
                return;
    struct lblcr_member *m = calloc(1, sizeof(*m));
    if (!m)
        return;
    lb_dest_hold(d);
    m->dest = d;
    m->next = en->set;
    en->set = m;
    en->size++;
    en->lastmod_ms = now;
}

/* ip_vs_dest_set_erase */
static void set_erase(struct lb_svc *svc, struct lblcr_entry *en, const struct lb_dest *d, uint64_t now)
{
    for (struct lblcr_member **link = &en->set; *link; link = &(*link)->next) {
        struct lblcr_member *m = *link;
        if (m->dest != d)
            continue;
        en->size--;
        en->lastmod_ms = now;
        *link = m->next;
        lb_dest_put(svc->lb, m->dest);
        free(m);
        return;
    }
}

/* ip_vs_dest_set_min */
static struct lb_dest *set_min(const struct lblcr_entry *en)
{
    const struct lblcr_member *m = en->set;
    struct lb_dest *least = NULL;
    for (; m; m = m->next) {
        struct lb_dest *d = m->dest;
        if (d->flags & LB_DEST_F_OVERLOAD)
            continue;
        if (d->conf.weight > 0 && (d->flags & LB_DEST_F_AVAILABLE)) {
            least = d;
            break;
        }
    }
    if (!least)
        return NULL;
    int32_t loh = lb_dest_conn_overhead(least);
    for (m = m->next; m; m = m->next) {
        struct lb_dest *d = m->dest;
        if (d->flags & LB_DEST_F_OVERLOAD)
            continue;
        int32_t doh = lb_dest_conn_overhead(d);
        if ((int64_t)loh * d->conf.weight > (int64_t)doh * least->conf.weight && (d->flags & LB_DEST_F_AVAILABLE)) {
            least = d;
            loh = doh;
        }
    }
    return least;
}

/* ip_vs_dest_set_max */
static struct lb_dest *set_max(const struct lblcr_entry *en)
{
    const struct lblcr_member *m = en->set;
    struct lb_dest *most = NULL;
    for (; m; m = m->next) {
        if (m->dest->conf.weight > 0) {
            most = m->dest;
            break;
        }
    }
    if (!most)
        return NULL;
    int32_t moh = lb_dest_conn_overhead(most);
    for (m = m->next; m; m = m->next) {
        struct lb_dest *d = m->dest;
        int32_t doh = lb_dest_conn_overhead(d);
        if ((int64_t)moh * d->conf.weight < (int64_t)doh * most->conf.weight && d->conf.weight > 0) {
            most = d;
            moh = doh;
        }
    }
    return most;
}

static struct lb_dest *lblcr_schedule(struct lb_svc *svc, const struct lb_pkt *p)
{
    struct lb_loc_table *t = svc->sched_data;
    uint64_t now = lb_loc_now(svc, t);
    struct lblcr_entry *en = (struct lblcr_entry *)lb_loc_get(t, p->daddr);
    struct lb_dest *d;
    if (en) {
        en->e.lastuse_ms = now;
        d = set_min(en);
        if (en->size > 1 && now > en->lastmod_ms + t->expiration_ms) { /* time_after(jiffies, lastmod + E) */
            const struct lb_dest *most = set_max(en);
            if (most)
                set_erase(svc, en, most, now); /* d stays valid: AVAILABLE, the service holds it */
        }
        if (d && !lb_loc_is_overloaded(d, svc))
            return d;
        d = lb_loc_least(svc);
        if (!d)
            return NULL;
        set_insert(en, d, 1, now);
        return d;
    }
    d = lb_loc_least(svc);
    if (!d)
        return NULL;
    if (lb_loc_full(t))
        return d;
    en = calloc(1, sizeof(*en));
    if (!en)
        return d;
    en->e.addr = p->daddr;
    en->e.lastuse_ms = now;
    set_insert(en, d, 0, now);
    lb_loc_link(t, &en->e);
    return d;
}

const struct lb_sched_ops lb_sched_lblcr = {
    .name = "lblcr",
    .init_service = lblcr_init_service,
    .done_service = lb_loc_done,
    .schedule = lblcr_schedule,
    .tick = lb_loc_tick,
};
