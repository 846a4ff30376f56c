/*
 * sched_sh.c - source hashing, with ip_vs_sh.c's semantics (Debian 6.1.192).
 *
 * Per-service state: a table of 2^LB_SH_TAB_BITS = 256 buckets, each naming a destination.
 * It is rebuilt from the list on every change (init, add, delete, edit: ip_vs_sh_reassign),
 * never on the packet path: walking the list cyclically from its head, each destination takes
 * `weight` consecutive buckets, and at least one (the kernel moves on when ++count >= weight,
 * so a weight-0 destination still holds one bucket per round), until all 256 are filled. An
 * empty list empties the table.
 *
 * A client's bucket is hash_32(port + ntohl(saddr), 8), where port is its source port only with
 * sh-port (LB_SVC_F_SCHED2), else 0: a 32-bit sum, as the kernel's. Its destination is the
 * choice unless it is unavailable (weight 0, or OVERLOAD): then none, or with sh-fallback
 * (LB_SVC_F_SCHED1) the first available one of the buckets (offset + 2 * hash) & 255,
 * offset = 0..255 (ip_vs_sh_get_fallback adds the hash to (offset + hash) % 256 again), stopping
 * at an empty bucket. So a kernel director and lbd with the same list pick the same server for
 * every client.
 */
#include <stdlib.h>

#include "lb_sched.h"

#define SH_TAB_SIZE (1u << LB_SH_TAB_BITS)
#define SH_TAB_MASK (SH_TAB_SIZE - 1)

struct sh_data {
    struct lb_dest *buckets[SH_TAB_SIZE]; /* NULL only when the list is empty */
};

static void sh_reassign(struct lb_svc *svc)
{
    struct sh_data *sh = svc->sched_data;
    uint32_t n = svc->ndests, idx = 0;
    int32_t count = 0; /* at most 256: ++count cannot overflow */
    for (uint32_t b = 0; b < SH_TAB_SIZE; b++) {
        if (n == 0) {
            sh->buckets[b] = NULL;
            continue;
        }
        struct lb_dest *d = svc->dests[idx];
        sh->buckets[b] = d;
        if (++count >= d->conf.weight) {
            idx = idx + 1 < n ? idx + 1 : 0;
            count = 0;
        }
    }
}

static int sh_init_service(struct lb_svc *svc)
{
    svc->sched_data = calloc(1, sizeof(struct sh_data));
    if (!svc->sched_data)
        return LB_ENOMEM;
    sh_reassign(svc);
    return LB_OK;
}

static void sh_done_service(struct lb_svc *svc)
{
    free(svc->sched_data);
}

static int sh_add_dest(struct lb_svc *svc, struct lb_dest *d LB_UNUSED, uint32_t idx LB_UNUSED)
{
    sh_reassign(svc);
    return LB_OK;
}

static void sh_del_dest(struct lb_svc *svc, struct lb_dest *d LB_UNUSED, uint32_t idx LB_UNUSED)
{
    sh_reassign(svc); /* the deleted destination leaves every bucket before it can be freed */
}

static int sh_upd_dest(struct lb_svc *svc, struct lb_dest *d LB_UNUSED)
{
    sh_reassign(svc);
    return LB_OK;
}

/* ip_vs_sh_hashkey() for an IPv4 service: addr is ntohl(saddr), port in host order. */
static inline uint32_t sh_hashkey(uint32_t addr, uint32_t port, uint32_t offset)
{
    return (offset + lb_hash_32(port + addr, LB_SH_TAB_BITS)) & SH_TAB_MASK;
}

static struct lb_dest *sh_schedule(struct lb_svc *svc, const struct lb_pkt *p)
{
    const struct sh_data *sh = svc->sched_data;
    uint32_t flags = svc->conf.flags;
    uint32_t port = (flags & LB_SVC_F_SCHED2) ? lb_sched_client_port(p) : 0;
    return lb_sched_hash_pick(sh->buckets, SH_TAB_SIZE, sh_hashkey, lb_ntohl(p->saddr), port,
                              flags & LB_SVC_F_SCHED1);
}

const struct lb_sched_ops lb_sched_sh = {
    .name = "sh",
    .init_service = sh_init_service,
    .done_service = sh_done_service,
    .add_dest = sh_add_dest,
    .del_dest = sh_del_dest,
    .upd_dest = sh_upd_dest,
    .schedule = sh_schedule,
};
