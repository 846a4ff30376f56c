/*
 * sched_wrr.c - weighted round robin, with ip_vs_wrr.c's semantics (Linux 6.1).
 *
 * Per-service state (struct ip_vs_wrr_mark): the cursor cl (a list position, or the list head),
 * di = the gcd of the positive weights (1 without any), mw = the highest weight - (di - 1), and cw,
 * the weight a destination must reach in the current pass.
 *
 * schedule: walk on from the cursor; the first destination that is not overloaded and whose
 * weight >= cw is chosen and becomes the cursor. At the end of the list cw drops by di and the
 * walk goes on from the head; when cw reaches 0 or below it restarts at mw. The walk gives up
 * ("all destinations are overloaded") once every destination was checked in the last pass
 * (cw <= di): from the head, or, when the walk started after some destination `last`, up to
 * and including `last` (the kernel's `stop`); the cursor then rests on `last`, or the head.
 * mw == 0 (no positive weight): nothing, the cursor stays.
 *
 * add/del/upd (ip_vs_wrr_dest_changed, on every edit, even one that changes nothing): the cursor
 * goes back to the head, di and mw are recomputed, and cw becomes mw when it was above it or 0,
 * else (di > 1) it is rounded down to a multiple of di plus 1.
 *
 * One liberty, which changes no result: the kernel walks every pass one by one, so a destination
 * of weight 2^31 - 1 that is overloaded makes it walk ~2^31 empty passes per new connection.
 * Here a run of passes that cannot find anything (cw above every eligible weight, before the
 * last pass) is skipped in one subtraction, landing on exactly the cw the kernel's walk reaches.
 */
#include <stdlib.h>

#include "lb_sched.h"

#define WRR_HEAD UINT32_MAX /* the cursor on the list head (before the first destination) */

struct wrr_data {
    uint32_t cl; /* index of the last chosen destination, or WRR_HEAD */
    int32_t cw;  /* current weight */
    int32_t mw;  /* maximum weight - (di - 1) */
    int32_t di;  /* decreasing interval: gcd of the positive weights, 1 without any */
};

static int32_t gcd32(int32_t a, int32_t b)
{
    while (b) {
        int32_t t = a % b;
        a = b;
        b = t;
    }
    return a;
}

/* ip_vs_wrr_gcd_weight and ip_vs_wrr_max_weight. */
static void wrr_weights(const struct lb_svc *svc, int32_t *di, int32_t *mw)
{
    int32_t g = 0, max = 0;
    for (uint32_t i = 0; i < svc->ndests; i++) {
        int32_t w = svc->dests[i]->conf.weight;
        if (w > 0)
            g = g > 0 ? gcd32(w, g) : w;
        if (w > max)
            max = w;
    }
    *di = g ? g : 1;
    *mw = max - (*di - 1);
}

static int wrr_init_service(struct lb_svc *svc)
{
    struct wrr_data *m = calloc(1, sizeof(*m));
    if (!m)
        return LB_ENOMEM;
    m->cl = WRR_HEAD;
    wrr_weights(svc, &m->di, &m->mw);
    m->cw = m->mw;
    svc->sched_data = m;
    return LB_OK;
}

static void wrr_done_service(struct lb_svc *svc)
{
    free(svc->sched_data);
}

static void wrr_dest_changed(struct lb_svc *svc)
{
    struct wrr_data *m = svc->sched_data;
    m->cl = WRR_HEAD;
    wrr_weights(svc, &m->di, &m->mw);
    if (m->cw > m->mw || !m->cw)
        m->cw = m->mw;
    else if (m->di > 1)
        m->cw = (m->cw / m->di) * m->di + 1;
}

static int wrr_add_dest(struct lb_svc *svc, struct lb_dest *d LB_UNUSED, uint32_t idx LB_UNUSED)
{
    wrr_dest_changed(svc);
    return LB_OK;
}

static void wrr_del_dest(struct lb_svc *svc, struct lb_dest *d LB_UNUSED, uint32_t idx LB_UNUSED)
{
    wrr_dest_changed(svc);
}

static int wrr_upd_dest(struct lb_svc *svc, struct lb_dest *d LB_UNUSED)
{
    wrr_dest_changed(svc);
    return LB_OK;
}

static struct lb_dest *wrr_schedule(struct lb_svc *svc, const struct lb_pkt *p LB_UNUSED)
{
    struct wrr_data *m = svc->sched_data;
    uint32_t n = svc->ndests;
    if (m->mw == 0)
        return NULL; /* no positive weight: the cursor stays */
    /* The highest weight a pass can accept: no pass with cw above it finds anything. */
    int32_t reach = 0;
    for (uint32_t i = 0; i < n; i++)
        if (!(svc->dests[i]->flags & LB_DEST_F_OVERLOAD) && svc->dests[i]->conf.weight > reach)
            reach = svc->dests[i]->conf.weight;
    const uint32_t last = m->cl < n ? m->cl : WRR_HEAD;
    uint32_t stop = WRR_HEAD; /* none */
    int last_pass = 0, restarted = 0;
    uint32_t start = last == WRR_HEAD ? 0 : last + 1;
    for (;;) {
        for (uint32_t i = start; i < n; i++) {
            struct lb_dest *d = svc->dests[i];
            if (!(d->flags & LB_DEST_F_OVERLOAD) && d->conf.weight >= m->cw) {
                m->cl = i;
                return d;
            }
            if (i == stop) {
                m->cl = i; /* err_over: the cursor rests on `last` */
                return NULL;
            }
        }
        start = 0;
        /* From the head, no stop yet: passes with cw - di still above both the reach and di find
         * nothing and change nothing but cw (last_pass stays false): take them all at once. */
        int32_t floor = reach > m->di ? reach : m->di;
        if (stop == WRR_HEAD && m->cw - m->di > floor)
            m->cw -= ((m->cw - floor - 1) / m->di) * m->di;
        m->cw -= m->di;
        if (m->cw <= 0) {
            m->cw = m->mw;
            if (last_pass || last == WRR_HEAD) {
                m->cl = WRR_HEAD; /* err_over at the head */
                return NULL;
            }
            restarted = 1;
        }
        last_pass = m->cw <= m->di;
        if (last_pass && restarted && last != WRR_HEAD)
            stop = last;
    }
}

const struct lb_sched_ops lb_sched_wrr = {
    .name = "wrr",
    .init_service = wrr_init_service,
    .done_service = wrr_done_service,
    .add_dest = wrr_add_dest,
    .del_dest = wrr_del_dest,
    .upd_dest = wrr_upd_dest,
    .schedule = wrr_schedule,
};
