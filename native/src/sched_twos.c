/*
 * sched_twos.c - weighted random "power of two choices", with ip_vs_twos.c's semantics (Linux
 * 6.1.192; Debian does not build it: CONFIG_IP_VS_TWOS is not set, so its kernel refuses -s twos).
 *
 * total = the sum of the weights of destinations neither OVERLOAD-flagged nor of weight <= 0 (none:
 * no destination), plus 1. Two draws r1, r2 uniform in [0, total) (prandom_u32_max(total): the
 * kernel's multiply-shift reduction with rejection, __get_random_u32_below); walking those
 * destinations in list order and subtracting each weight, the first to bring r1 to <= 0 is
 * choice 1, likewise r2 for choice 2. So the first of them gets (w + 1) / total of the draws,
 * every other one w / total. Choice 2 replaces choice 1 only when strictly less loaded:
 * w2 * overhead1 > w1 * overhead2, in C ints. All of it is the kernel's int arithmetic, done
 * here in 32-bit unsigned and read as signed (the kernel is built with -fno-strict-overflow: it
 * wraps), so weights near INT_MAX behave as there.
 *
 * Randomness without I/O: a per-service splitmix64 generator in sched_data, seeded from the
 * instance's seed (lb_config.hash_seed, else getrandom at lb_new) and the service's key, so a
 * seeded engine draws the same sequence every run, in both engines (lb/pyengine/sched_twos.py).
 */
#include <stdlib.h>

#include "lb_sched.h"

struct twos_data {
    uint64_t state;              /* splitmix64 */
};

static int twos_init_service(struct lb_svc *svc)
{
    struct twos_data *t = calloc(1, sizeof(*t));
    if (!t)
        return LB_ENOMEM;
    t->state = svc->lb->seed0 ^ ((uint64_t)svc->conf.proto << 48) ^ ((uint64_t)svc->conf.port << 32) ^ svc->conf.addr;
    svc->sched_data = t;
    return LB_OK;
}

static void twos_done_service(struct lb_svc *svc)
{
    free(svc->sched_data);
}

static uint32_t next_u32(struct twos_data *t)
{
    uint64_t z = (t->state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return (uint32_t)(z >> 32);
}

/* __get_random_u32_below(ceil): uniform in [0, ceil); 0 for ceil 0, as the kernel's. */
static uint32_t below(struct twos_data *t, uint32_t ceil)
{
    uint64_t mult = (uint64_t)ceil * next_u32(t);
    if ((uint32_t)mult < ceil) {
        uint32_t bound = (0u - ceil) % ceil;
        while ((uint32_t)mult < bound)
            mult = (uint64_t)ceil * next_u32(t);
    }
    return (uint32_t)(mult >> 32);
}

static inline int32_t s32_sub(int32_t a, int32_t b) { return (int32_t)((uint32_t)a - (uint32_t)b); }
static inline int32_t s32_mul(int32_t a, int32_t b) { return (int32_t)((uint32_t)a * (uint32_t)b); }

static struct lb_dest *twos_schedule(struct lb_svc *svc, const struct lb_pkt *p LB_UNUSED)
{
    struct twos_data *t = svc->sched_data;
    struct lb_dest *choice1 = NULL, *choice2 = NULL;
    uint32_t total = 0;
    uint32_t n = svc->ndests;
    for (uint32_t i = 0; i < n; i++) {
        struct lb_dest *d = svc->dests[i];
        if (!(d->flags & LB_DEST_F_OVERLOAD) && d->conf.weight > 0) {
            total += (uint32_t)d->conf.weight;
            choice1 = d; /* the kernel leaves the last eligible one here */
        }
    }
    if (!choice1)
        return NULL;
    total += 1;
    int32_t r1 = (int32_t)below(t, total);
    int32_t r2 = (int32_t)below(t, total);
    int32_t w1 = -1, w2 = -1, oh1 = 0, oh2 = 0;
    for (uint32_t i = 0; i < n; i++) {
        struct lb_dest *d = svc->dests[i];
        if (d->flags & LB_DEST_F_OVERLOAD)
            continue;
        int32_t w = d->conf.weight;
        if (w <= 0)
            continue;
        r1 = s32_sub(r1, w);
        r2 = s32_sub(r2, w);
        if (r1 <= 0 && w1 == -1) {
            choice1 = d;
            w1 = w;
            oh1 = lb_dest_conn_overhead(d);
        }
        if (r2 <= 0 && w2 == -1) {
            choice2 = d;
            w2 = w;
            oh2 = lb_dest_conn_overhead(d);
        }
        if (w1 != -1 && w2 != -1)
            break;
    }
    if (choice2 && s32_mul(w2, oh1) > s32_mul(w1, oh2))
        choice1 = choice2;
    return choice1;
}

const struct lb_sched_ops lb_sched_twos = {
    .name = "twos",
    .init_service = twos_init_service,
    .done_service = twos_done_service,
    .schedule = twos_schedule,
};
