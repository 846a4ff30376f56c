/*
 * est.c - the rate estimators (ipvsadm -L --rate): the kernel's net/netfilter/ipvs/ip_vs_est.c,
 * the same fixed-point arithmetic (lb_api.h "rate estimators"; lb/estimator.py is the Python
 * engine's copy, and the unit tests hold the two to the same results).
 *
 * Cost (issue 19): a step touches the services in lb->est_head's list and their destinations only.
 * A service joins the list when its counters move (lb_est_touch, where the packet path and the XDP
 * fast path's credit count them, under lb->lock) and leaves it on the first step that finds it and
 * every one of its destinations at rates 0: a step of a service that left would change nothing
 * (zero deltas on zero averages). Destinations are stepped with their service: a destination's
 * counters move only with its service's (every packet and connection is counted in both).
 *
 * Locking: the estimators' state lives in the services and destinations it belongs to and is read
 * and written under lb->lock only: the steps (an adapter thread, or lb_est_tick), the counting
 * (packet threads hold the lock), the readers (lb_svc_list, lb_svc_get, lb_dest_list).
 */
#include <string.h>

#include "lb_internal.h"

#define EST_N 5
/* Per counter: the shift of its per-step delta (2^10 / 2 s, 2^5 / 2 s), the read rounding and shift. */
static const unsigned est_shift[EST_N] = {9, 9, 9, 4, 4};
static const uint64_t est_round[EST_N] = {0x1FF, 0x1FF, 0x1FF, 0xF, 0xF};
static const unsigned est_out[EST_N] = {10, 10, 10, 5, 5};

static void stats_words(const struct lb_stats *st, uint64_t w[EST_N])
{
    w[0] = st->conns;
    w[1] = st->inpkts;
    w[2] = st->outpkts;
    w[3] = st->inbytes;
    w[4] = st->outbytes;
}

void lb_est_step_one(struct lb_est *e, const struct lb_stats *now)
{
    uint64_t w[EST_N];
    stats_words(now, w);
    for (int i = 0; i < EST_N; i++) {
        uint64_t delta = w[i] >= e->last[i] ? w[i] - e->last[i] : 0; /* reset underneath: no rate */
        e->last[i] = w[i];
        /* The kernel's (s64)rate - (s64)avg, >> 2 arithmetic (gcc's >> on a negative int64_t: the
         * sign is kept, as Python's >>); sums in unsigned arithmetic, so that no overflow is UB. */
        int64_t rate = (int64_t)(delta << est_shift[i]);
        int64_t diff = (int64_t)((uint64_t)rate - (uint64_t)e->avg[i]);
        e->avg[i] = (int64_t)((uint64_t)e->avg[i] + (uint64_t)(diff >> 2));
    }
}

void lb_est_read(const struct lb_est *e, struct lb_rates *out)
{
    uint64_t r[EST_N];
    for (int i = 0; i < EST_N; i++) /* averages never go below 0: rates are >= 0, steps a quarter of the way */
        r[i] = ((uint64_t)e->avg[i] + est_round[i]) >> est_out[i];
    out->cps = r[0];
    out->inpps = r[1];
    out->outpps = r[2];
    out->inbps = r[3];
    out->outbps = r[4];
}

void lb_est_zero(struct lb_est *e, const struct lb_stats *now)
{
    memset(e, 0, sizeof(*e));
    stats_words(now, e->last);
}

static int est_moving(const struct lb_est *e)
{
    for (int i = 0; i < EST_N; i++)
        if (e->avg[i])
            return 1;
    return 0;
}

void lb_est_link(struct lb_svc *s)
{
    lb_t *lb = s->lb;
    s->est_on = 1;
    s->est_prev = NULL;
    s->est_next = lb->est_head;
    if (lb->est_head)
        lb->est_head->est_prev = s;
    lb->est_head = s;
    lb->est_active++;
    /* No wake-up: a sleeping timers' thread looks again within LB_ADAPTER_IDLE_MS and steps then (the
     * first step after a silence has no phase to keep), and the thread that counted this is often it. */
}

void lb_est_unlink(lb_t *lb, struct lb_svc *s)
{
    if (!s->est_on)
        return;
    if (s->est_prev)
        s->est_prev->est_next = s->est_next;
    else
        lb->est_head = s->est_next;
    if (s->est_next)
        s->est_next->est_prev = s->est_prev;
    s->est_prev = s->est_next = NULL;
    s->est_on = 0;
    lb->est_active--;
}

static void est_step_locked(lb_t *lb)
{
    struct lb_svc *next;
    for (struct lb_svc *s = lb->est_head; s; s = next) {
        next = s->est_next;
        lb_est_step_one(&s->est, &s->stats);
        int moving = est_moving(&s->est);
        for (uint32_t i = 0; i < s->ndests; i++) {
            struct lb_dest *d = s->dests[i];
            lb_est_step_one(&d->est, &d->stats);
            moving |= est_moving(&d->est);
        }
        if (!moving)
            lb_est_unlink(lb, s); /* its counters stood still this step and every rate is 0 */
    }
}

void lb_est_step(lb_t *lb)
{
    pthread_mutex_lock(&lb->lock);
    est_step_locked(lb);
    pthread_mutex_unlock(&lb->lock);
}

uint64_t lb_est_due_locked(const lb_t *lb)
{
    return lb->est_head ? lb->est_next_ms : UINT64_MAX;
}

void lb_est_run_due_locked(lb_t *lb, uint64_t now_ms)
{
    if (!lb->est_head || now_ms < lb->est_next_ms)
        return;
    est_step_locked(lb);
    /* The grid goes on 2 s at a time; after a silence (no step due then) it restarts from now. */
    lb->est_next_ms = now_ms - lb->est_next_ms < LB_EST_TICK_MS ? lb->est_next_ms + LB_EST_TICK_MS
                                                                : now_ms + LB_EST_TICK_MS;
}

uint64_t lb_est_tick(lb_t *lb)
{
    pthread_mutex_lock(&lb->lock);
    if (!lb->est_drivers)
        est_step_locked(lb);
    uint64_t mark = lb->hs_events + lb->early_drops;
    static const int refusals[] = {LB_R_TABLE_FULL, LB_R_NO_LADDR, LB_R_XMIT_FAILED};
    for (size_t i = 0; i < sizeof(refusals) / sizeof(refusals[0]); i++)
        mark += __atomic_load_n(&lb->counters[refusals[i]], __ATOMIC_RELAXED);
    pthread_mutex_unlock(&lb->lock);
    return mark;
}

uint32_t lb_est_driven(lb_t *lb)
{
    pthread_mutex_lock(&lb->lock);
    uint32_t n = lb->est_drivers;
    pthread_mutex_unlock(&lb->lock);
    return n;
}

uint32_t lb_est_active(lb_t *lb)
{
    pthread_mutex_lock(&lb->lock);
    uint32_t n = lb->est_active;
    pthread_mutex_unlock(&lb->lock);
    return n;
}
