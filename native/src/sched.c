/*
 * sched.c - the scheduler registry (built from lb_sched_list.h) and the binding of a service to
 * its scheduler (ip_vs_sched.c's ip_vs_bind_scheduler / ip_vs_unbind_scheduler).
 */
#include <string.h>

#include "lb_sched.h"

static const struct lb_sched_ops *const schedulers[] = {
#define LB_SCHED(name) &lb_sched_##name,
#include "lb_sched_list.h"
#undef LB_SCHED
};

const struct lb_sched_ops *lb_sched_find(const char *name)
{
    for (size_t i = 0; i < sizeof(schedulers) / sizeof(schedulers[0]); i++)
        if (strncmp(schedulers[i]->name, name, LB_SCHED_NAME_MAX) == 0)
            return schedulers[i];
    return NULL;
}

int lb_sched_bind(struct lb_svc *s, const struct lb_sched_ops *sched)
{
    s->sched_data = NULL;
    if (sched->init_service) {
        int err = sched->init_service(s);
        if (err != LB_OK) {
            s->sched_data = NULL;
            return err;
        }
    }
    s->sched = sched;
    return LB_OK;
}

void lb_sched_unbind(struct lb_svc *s)
{
    if (s->sched && s->sched->done_service)
        s->sched->done_service(s);
    s->sched_data = NULL;
    s->sched = NULL;
}

int lb_sched_switch(struct lb_svc *s, const struct lb_sched_ops *sched)
{
    /* The kernel unbinds the old scheduler first and may leave the service without one when the
     * new one cannot allocate; here the new state is built aside first, so the service is
     * either switched or unchanged. */
    const struct lb_sched_ops *old = s->sched;
    void *old_data = s->sched_data;
    int err = lb_sched_bind(s, sched);
    void *new_data = s->sched_data;
    s->sched = old;
    s->sched_data = old_data;
    if (err != LB_OK)
        return err;
    lb_sched_unbind(s);
    s->sched = sched;
    s->sched_data = new_data;
    return LB_OK;
}

void lb_sched_tick_all(lb_t *lb, uint64_t now_ms)
{
    struct lb_svc *s;
    uint64_t next = UINT64_MAX;
    LB_FOR_EACH_SVC(lb, s) {
        if (s->sched->tick) {
            uint64_t t = s->sched->tick(s, now_ms);
            next = t < next ? t : next;
        }
    }
    lb->sched_next_ms = next;
}

void lb_sched_wants_clock(lb_t *lb, const struct lb_svc *s)
{
    if (!s->sched || !s->sched->tick)
        return;
    lb->sched_next_ms = 0; /* lb_loc_tick arms the timer the first time it sees the clock */
    lb_wake_check_exp(lb, 0);
}

int lb_sched_probe(lb_t *lb, uint8_t proto, uint32_t vaddr, uint16_t vport, const uint8_t *pkt, uint32_t len,
                   uint64_t now_ms, uint32_t *daddr, uint16_t *dport)
{
    struct lb_pkt p;
    if (!lb || !pkt || !daddr || !dport || lb_parse(pkt, len, &p) != LB_R_FORWARDED || p.proto != proto)
        return LB_EINVAL;
    pthread_mutex_lock(&lb->lock);
    struct lb_svc *s = lb_svc_find_host(lb, proto, vaddr, vport);
    int ret = LB_ESRCH;
    if (s) {
        if (lb->exp_next_ms <= now_ms)
            lb_conn_tick(lb, now_ms); /* counts as lb_process would see them */
        s->sched_now_ms = now_ms;
        const struct lb_dest *d = s->sched->schedule(s, &p);
        ret = d != NULL;
        if (d) {
            *daddr = d->conf.addr;
            *dport = d->conf.port;
        }
    }
    pthread_mutex_unlock(&lb->lock);
    return ret;
}
