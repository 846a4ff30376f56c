/*
 * sched_mh.c - Maglev hashing, with ip_vs_mh.c's semantics (Debian 6.1.192).
 *
 * Per-service state: a lookup table of LB_MH_TAB_SIZE = 4093 entries, each naming a destination,
 * rebuilt in the control path whenever the list changes (init, add, delete, edit:
 * ip_vs_mh_dest_changed), never per packet. The hash keys are ip_vs_mh.c's fixed constants, so
 * every kernel and every lbd with the same list builds the same table: that is what lets a
 * mixed fleet behind one ECMP router agree on each client's real server.
 *
 * Rebuild (ip_vs_mh_permutate + ip_vs_mh_populate): with g the gcd of the positive last_weights
 * (a destination's latest non-zero weight, struct lb_dest.last_weight) and rshift = max(0,
 * fls(max last_weight / g) - LB_MH_TAB_BITS), each destination gets turns = (last_weight / g) >>
 * rshift, at least 1 when its last_weight is not 0 (one added with weight 0 takes no entry; one
 * edited to 0 keeps its entries and is only unavailable). Each destination has an offset
 * hash1(addr, port) % 4093 and a skip hash2(addr, port) % 4092 + 1; rounds walk the list in order,
 * each destination taking `turns` entries, each the next free one of its sequence offset, +skip,
 * ... (mod 4093), until the table is full. No positive last_weight: the table is emptied. More
 * destinations than entries: the rebuild is refused and the old table stays (the kernel's
 * -EINVAL, which its add/edit/delete ignore; init_service fails with it).
 *
 * A client's entry is hash1(ntohl(saddr) + port) % 4093, port its source port only with mh-port
 * (LB_SVC_F_SCHED2). Unavailable (weight 0 or OVERLOAD) means no destination, unless mh-fallback
 * (LB_SVC_F_SCHED1): then entry hash1(... , offset (k + h) % 4093) for k = 0..4092 (a fresh hash
 * per try, as the kernel), the first available one, stopping at an empty entry.
 *
 * hashN(x) is the kernel's hsiphash() of the u32 x with key N, on x86_64: SipHash-1-3 over x's
 * four little-endian bytes, the low 32 bits (include/linux/siphash.h; the "half" SipHash is only
 * for 32-bit kernels). Memory: the table (one pointer per entry, as the kernel's), a bitmap and
 * one setup record per destination kept from add_dest, so that del_dest needs no allocation.
 */
#include <stdlib.h>
#include <string.h>

#include "lb_sched.h"
#include "lb_siphash.h"

#define MH_TAB_SIZE ((uint32_t)LB_MH_TAB_SIZE)
#define MH_BITMAP_WORDS ((MH_TAB_SIZE + 63) / 64)

struct mh_setup {                /* ip_vs_mh_dest_setup */
    uint32_t skip;
    uint32_t perm;               /* the next entry this destination tries */
    int32_t turns;               /* entries per round */
};

struct mh_data {
    struct lb_dest *lookup[LB_MH_TAB_SIZE];
    uint64_t taken[MH_BITMAP_WORDS]; /* rebuild scratch: entries filled so far */
    struct mh_setup *setup;      /* rebuild scratch: one per destination, setup_cap allocated */
    uint32_t setup_cap;
};

/* hsiphash(&x, 4, {key, key}) on x86_64: SipHash-1-3, the 4-byte message being x's little-endian
 * bytes, i.e. the final word (4 << 56) | x whatever this machine's byte order. */
static uint32_t mh_hsiphash_u32(uint32_t x, uint64_t key)
{
    struct lb_sip s;
    lb_sip_init(&s, key, key);
    lb_sip_compress(&s, ((uint64_t)4 << 56) | x, 1);
    return (uint32_t)lb_sip_final(&s, 3);
}

/* ip_vs_mh_hashkey() for an IPv4 service: addr = ntohl(address), port in host order; the sum is
 * unsigned 32-bit, as the kernel's. */
static inline uint32_t mh_hashkey(uint32_t addr, uint32_t port, uint64_t key, uint32_t offset)
{
    return mh_hsiphash_u32(offset + port + addr, key);
}

static uint32_t gcd_u32(uint32_t a, uint32_t b)
{
    while (b) {
        uint32_t t = a % b;
        a = b;
        b = t;
    }
    return a;
}

/* ip_vs_mh_reassign(): LB_EINVAL (table unchanged) when there are more destinations than entries. */
static int mh_reassign(struct lb_svc *svc)
{
    struct mh_data *mh = svc->sched_data;
    uint32_t n = svc->ndests;
    if (n > MH_TAB_SIZE)
        return LB_EINVAL;
    /* ip_vs_mh_gcd_weight, ip_vs_mh_shift_weight: last_weight is 0..INT_MAX */
    uint32_t g = 0, max = 0;
    for (uint32_t i = 0; i < n; i++) {
        uint32_t lw = (uint32_t)svc->dests[i]->last_weight;
        if (lw > 0)
            g = g ? gcd_u32(lw, g) : lw;
        if (lw > max)
            max = lw;
    }
    if (g == 0) { /* no positive last_weight (or no destination): an empty table */
        memset(mh->lookup, 0, sizeof(mh->lookup));
        return LB_OK;
    }
    uint32_t mw = max / g; /* >= 1 */
    int fls = 32 - __builtin_clz(mw);
    int rshift = fls > LB_MH_TAB_BITS ? fls - LB_MH_TAB_BITS : 0;
    for (uint32_t i = 0; i < n; i++) { /* ip_vs_mh_permutate */
        const struct lb_dest *d = svc->dests[i];
        struct mh_setup *ds = &mh->setup[i];
        uint32_t lw = (uint32_t)d->last_weight;
        ds->perm = mh_hashkey(d->conf.addr, d->conf.port, LB_MH_HASH1_KEY, 0) % MH_TAB_SIZE;
        ds->skip = mh_hashkey(d->conf.addr, d->conf.port, LB_MH_HASH2_KEY, 0) % (MH_TAB_SIZE - 1) + 1;
        uint32_t turns = (lw / g) >> rshift;
        ds->turns = (int32_t)(turns ? turns : (lw != 0));
    }
    /* ip_vs_mh_populate: rounds over the list until every entry is taken. Some destination has
     * turns >= 1 (g > 0), and each one's sequence visits every entry (the skip is below the prime
     * table size), so each step finds a free entry and the loop ends. */
    memset(mh->taken, 0, sizeof(mh->taken));
    uint32_t filled = 0;
    int32_t dt_count = 0;
    for (;;) {
        for (uint32_t i = 0; i < n;) {
            struct mh_setup *ds = &mh->setup[i];
            if (ds->turns < 1) {
                i++;
                continue;
            }
            uint32_t c = ds->perm;
            while (mh->taken[c / 64] & (1ull << (c % 64))) {
                ds->perm += ds->skip;
                if (ds->perm >= MH_TAB_SIZE)
                    ds->perm -= MH_TAB_SIZE;
                c = ds->perm;
            }
            mh->taken[c / 64] |= 1ull << (c % 64);
            mh->lookup[c] = svc->dests[i];
            if (++filled == MH_TAB_SIZE)
                return LB_OK;
            if (++dt_count >= ds->turns) {
                dt_count = 0;
                i++;
            }
        }
    }
}

/* Room for one setup record per destination (kept: deletions then need no memory). */
static int mh_reserve(struct mh_data *mh, uint32_t n)
{
    if (n <= mh->setup_cap)
        return LB_OK;
    uint32_t cap = mh->setup_cap ? mh->setup_cap : 8;
    while (cap < n)
        cap = cap > UINT32_MAX / 2 ? n : cap * 2;
    struct mh_setup *setup = calloc(cap, sizeof(*setup));
    if (!setup)
        return LB_ENOMEM;
    free(mh->setup);
    mh->setup = setup;
    mh->setup_cap = cap;
    return LB_OK;
}

static void mh_done_service(struct lb_svc *svc)
{
    struct mh_data *mh = svc->sched_data;
    if (mh)
        free(mh->setup);
    free(mh);
}

static int mh_init_service(struct lb_svc *svc)
{
    struct mh_data *mh = calloc(1, sizeof(*mh));
    if (!mh)
        return LB_ENOMEM;
    svc->sched_data = mh;
    int err = mh_reserve(mh, svc->ndests);
    if (err == LB_OK)
        err = mh_reassign(svc); /* LB_EINVAL with more destinations than entries, as the kernel */
    if (err != LB_OK) {
        mh_done_service(svc);
        svc->sched_data = NULL;
    }
    return err;
}

static int mh_add_dest(struct lb_svc *svc, struct lb_dest *d LB_UNUSED, uint32_t idx LB_UNUSED)
{
    int err = mh_reserve(svc->sched_data, svc->ndests);
    if (err != LB_OK)
        return err; /* the table is untouched: the add is undone */
    mh_reassign(svc); /* refused above LB_MH_TAB_SIZE destinations: the old table stays, as the kernel's */
    return LB_OK;
}

static void mh_del_dest(struct lb_svc *svc, struct lb_dest *d, uint32_t idx LB_UNUSED)
{
    if (mh_reassign(svc) == LB_OK)
        return;
    /* Refused (still more destinations than entries): the kernel keeps its old table, whose entries
     * hold a reference on the deleted destination; here they must not outlive it. */
    struct mh_data *mh = svc->sched_data;
    for (uint32_t i = 0; i < MH_TAB_SIZE; i++)
        if (mh->lookup[i] == d)
            mh->lookup[i] = NULL;
}

static int mh_upd_dest(struct lb_svc *svc, struct lb_dest *d LB_UNUSED)
{
    mh_reassign(svc);
    return LB_OK;
}

/* A client's entry at try `offset` (lb_hash_slot_fn): hash1 of the offset sum, mod the table size. */
static inline uint32_t mh_slot(uint32_t addr, uint32_t port, uint32_t offset)
{
    return mh_hashkey(addr, port, LB_MH_HASH1_KEY, offset) % MH_TAB_SIZE;
}

static struct lb_dest *mh_schedule(struct lb_svc *svc, const struct lb_pkt *p)
{
    const struct mh_data *mh = svc->sched_data;
    uint32_t flags = svc->conf.flags;
    uint32_t port = (flags & LB_SVC_F_SCHED2) ? lb_sched_client_port(p) : 0;
    return lb_sched_hash_pick(mh->lookup, MH_TAB_SIZE, mh_slot, lb_ntohl(p->saddr), port, flags & LB_SVC_F_SCHED1);
}

const struct lb_sched_ops lb_sched_mh = {
    .name = "mh",
    .init_service = mh_init_service,
    .done_service = mh_done_service,
    .add_dest = mh_add_dest,
    .del_dest = mh_del_dest,
    .upd_dest = mh_upd_dest,
    .schedule = mh_schedule,
};
