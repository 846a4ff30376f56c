/*
 * locality.c - the destination-address cache lblc and lblcr share (lb_locality.h): hash buckets,
 * bounded growth, the periodic collector, the overload rule, the least-connection fallback.
 */
#include <stdlib.h>

#include "lb_locality.h"

#define GOLDEN_RATIO_32 0x61C88647u

/* ip_vs_lblc_hashkey: hash_32(ntohl(addr), 10) (IPv4: no folding). */
static inline uint32_t hashkey(uint32_t addr_n)
{
    return (lb_ntohl(addr_n) * GOLDEN_RATIO_32) >> (32 - LB_LOC_TAB_BITS);
}

int lb_loc_init(struct lb_svc *svc, size_t size, lb_loc_free_fn *free_entry)
{
    struct lb_loc_table *t = calloc(1, size);
    if (!t)
        return LB_ENOMEM;
    t->free_entry = free_entry;
    t->counter = 1;
    t->expiration_ms = LB_LOC_EXPIRATION_MS;
    svc->sched_data = t;
    return LB_OK;
}

void lb_loc_done(struct lb_svc *svc)
{
    struct lb_loc_table *t = svc->sched_data;
    for (uint32_t i = 0; i < LB_LOC_TAB_SIZE; i++) {
        struct lb_loc_entry *e = t->bucket[i];
        while (e) {
            struct lb_loc_entry *next = e->next;
            t->free_entry(svc, e);
            e = next;
        }
    }
    free(t);
}

struct lb_loc_entry *lb_loc_get(const struct lb_loc_table *t, uint32_t addr)
{
    for (struct lb_loc_entry *e = t->bucket[hashkey(addr)]; e; e = e->next)
        if (e->addr == addr)
            return e;
    return NULL;
}

void lb_loc_link(struct lb_loc_table *t, struct lb_loc_entry *e)
{
    struct lb_loc_entry **head = &t->bucket[hashkey(e->addr)];
    e->next = *head;
    *head = e;
    t->entries++;
}

void lb_loc_del(struct lb_svc *svc, struct lb_loc_table *t, struct lb_loc_entry *e)
{
    struct lb_loc_entry **link = &t->bucket[hashkey(e->addr)];
    while (*link != e)
        link = &(*link)->next; /* e is linked: the walk ends at it */
    *link = e->next;
    t->entries--;
    t->free_entry(svc, e);
}

static void arm(struct lb_loc_table *t, uint64_t now_ms)
{
    t->next_check_ms = now_ms + LB_LOC_CHECK_INTERVAL_MS;
    t->armed = 1;
}

uint64_t lb_loc_now(struct lb_svc *svc, struct lb_loc_table *t)
{
    if (LB_UNLIKELY(!t->armed))
        arm(t, svc->sched_now_ms);
    return svc->sched_now_ms;
}

/* Drop, bucket by bucket from the one after the rover, every entry unused for at least idle_ms as
 * of now_ms: through every bucket (goal NULL: ip_vs_lblc_full_check), or until the bucket in which
 * *goal entries have gone (the partial collection of ip_vs_lblc_check_expire). */
static void sweep(struct lb_svc *svc, struct lb_loc_table *t, uint64_t now_ms, uint64_t idle_ms, int64_t *goal)
{
    uint32_t j = t->rover;
    for (uint32_t i = 0; i < LB_LOC_TAB_SIZE; i++) {
        j = (j + 1) & LB_LOC_TAB_MASK;
        struct lb_loc_entry **link = &t->bucket[j];
        while (*link) {
            struct lb_loc_entry *e = *link;
            if (now_ms < e->lastuse_ms + idle_ms) { /* time_before(now, lastuse + idle): kept */
                link = &e->next;
                continue;
            }
            *link = e->next;
            t->entries--;
            t->free_entry(svc, e);
            if (goal)
                (*goal)--;
        }
        if (goal && *goal <= 0)
            break;
    }
    t->rover = j;
}

/* One run of ip_vs_lblc_check_expire / ip_vs_lblcr_check_expire, as of its due time. */
static void check_expire(struct lb_svc *svc, struct lb_loc_table *t, uint64_t now_ms)
{
    if (t->counter % LB_LOC_COUNT_FOR_FULL == 0) {
        sweep(svc, t, now_ms, t->expiration_ms, NULL);
        t->counter = 1;
        return;
    }
    if (t->entries <= LB_LOC_MAX_SIZE) {
        t->counter++;
        return;
    }
    int64_t goal = ((int64_t)t->entries - LB_LOC_MAX_SIZE) * 4 / 3;
    if (goal > LB_LOC_MAX_SIZE / 2)
        goal = LB_LOC_MAX_SIZE / 2;
    sweep(svc, t, now_ms, LB_LOC_ENTRY_TIMEOUT_MS, &goal);
}

uint64_t lb_loc_tick(struct lb_svc *svc, uint64_t now_ms)
{
    struct lb_loc_table *t = svc->sched_data;
    if (!t->armed) {
        arm(t, now_ms);
        return t->next_check_ms;
    }
    /* Every run that came due since the last tick, each as of its own time, the next 60 s later
     * (the kernel re-arms from the handler: jiffies + CHECK_EXPIRE_INTERVAL). */
    while (t->next_check_ms <= now_ms) {
        check_expire(svc, t, t->next_check_ms);
        t->next_check_ms += LB_LOC_CHECK_INTERVAL_MS;
    }
    return t->next_check_ms;
}

int lb_loc_is_overloaded(const struct lb_dest *d, const struct lb_svc *svc)
{
    if ((int64_t)d->activeconns <= d->conf.weight)
        return 0;
    for (uint32_t i = 0; i < svc->ndests; i++) {
        const struct lb_dest *x = svc->dests[i];
        if ((int64_t)x->activeconns * 2 < x->conf.weight)
            return 1;
    }
    return 0;
}

struct lb_dest *lb_loc_least(const struct lb_svc *svc)
{
    return lb_sched_least_weighted(svc, lb_dest_conn_overhead64);
}
