/*
 * lb_sched.h - scheduler operations, shaped as the kernel's struct ip_vs_scheduler.
 *
 * One scheduler per file (sched_<name>.c defines `const struct lb_sched_ops lb_sched_<name>`),
 * one line per scheduler in lb_sched_list.h: that list is the registry.
 *
 * A scheduler owns its per-service state, svc->sched_data: init_service allocates it (zeroed:
 * calloc) and done_service frees it; struct lb_svc knows nothing about any one scheduler.
 * Every hook runs with the table lock held (configuration calls take it; the packet path runs
 * under it in the adapter, or single-threaded in tests), so hooks need no locking of their own.
 *
 * svc->dests is the destination list in the kernel's order: the most recently added first
 * (where the kernel's list_add_rcu puts it). Hooks see it already changed.
 *
 * Failure: init_service, add_dest and upd_dest may fail (LB_ENOMEM); a hook that fails leaves
 * its state as it was, and the configuration call then undoes its own change and returns the
 * error, so the service is unchanged. del_dest cannot fail: a scheduler that needs memory to
 * rebuild after a deletion keeps it from add_dest (a list only shrinks on deletion).
 */
#ifndef LB_SCHED_H
#define LB_SCHED_H

#include "lb_internal.h"

struct lb_sched_ops {
    const char *name;                  /* as ipvsadm -s names it; < LB_SCHED_NAME_MAX bytes */
    /* Optional: allocate svc->sched_data (zeroed) from svc->dests. LB_OK or LB_ENOMEM. Called when
     * a service is created with this scheduler and when an edit switches to it (after the old
     * one's done_service, whose state is then already gone). */
    int (*init_service)(struct lb_svc *svc);
    /* Optional: free svc->sched_data (service deleted, or switched to another scheduler). */
    void (*done_service)(struct lb_svc *svc);
    /* Optional: d was just linked at svc->dests[idx] (a new or revived destination). */
    int (*add_dest)(struct lb_svc *svc, struct lb_dest *d, uint32_t idx);
    /* Optional: d was just unlinked from position idx (svc->dests no longer holds it). */
    void (*del_dest)(struct lb_svc *svc, struct lb_dest *d, uint32_t idx);
    /* Optional: d's parameters were edited (weight, thresholds, method: d->conf holds the new ones). */
    int (*upd_dest)(struct lb_svc *svc, struct lb_dest *d);
    /* Pick a destination for a new connection of packet p (addresses and ports in network order,
     * for the hashing schedulers); NULL = none available. The time is svc->sched_now_ms (the core
     * sets it before every call; it never decreases). */
    struct lb_dest *(*schedule)(struct lb_svc *svc, const struct lb_pkt *p);
    /* Optional: periodic work without packets (lblc/lblcr expire their entries), run by lb_expire
     * for every service of this scheduler: the adapter's sweep, and engine.expire(). The scheduler
     * keeps its own next-due time in sched_data; now_ms never decreases. Returns when it next has
     * work (UINT64_MAX: none): the adapter's thread sleeps until then (lb->sched_next_ms). */
    uint64_t (*tick)(struct lb_svc *svc, uint64_t now_ms);
};

/* The registered scheduler of that name (NUL-terminated, at most LB_SCHED_NAME_MAX bytes), or NULL. */
const struct lb_sched_ops *lb_sched_find(const char *name);
/* Bind s (not yet bound) to sched: init_service; on failure s->sched stays NULL. */
int lb_sched_bind(struct lb_svc *s, const struct lb_sched_ops *sched);
/* Switch s to sched: the new state is built first, so a failure leaves s as it was. */
int lb_sched_switch(struct lb_svc *s, const struct lb_sched_ops *sched);
/* done_service, for a service being destroyed. */
void lb_sched_unbind(struct lb_svc *s);
/* Every service's tick hook (lb_expire, under the lock); lb->sched_next_ms is the first next time. */
void lb_sched_tick_all(lb_t *lb, uint64_t now_ms);
/* s was just bound to its scheduler: one with a tick hook wants the clock now (under the lock). */
void lb_sched_wants_clock(lb_t *lb, const struct lb_svc *s);

/* A destination may receive new connections (kernel: weight > 0 and not OVERLOAD). */
static inline int lb_dest_eligible(const struct lb_dest *d)
{
    return d->conf.weight > 0 && !(d->flags & LB_DEST_F_OVERLOAD);
}

/* ip_vs_dest_conn_overhead() of Debian's 6.1.192 (6.1.187 backported "ipvs: add totalconns for
 * dest"): (activeconns << 8) + totalconns, i.e. 257 per active and 1 per inactive connection, in
 * the kernel's `int`: it wraps past INT_MAX (8M active connections) exactly as the kernel's does
 * (two's complement, -fno-strict-overflow), written here without signed overflow. lc, wlc, lblc,
 * lblcr and twos weigh destinations with it; sed and nq use activeconns + 1 instead. */
static inline int32_t lb_dest_conn_overhead(const struct lb_dest *d)
{
    uint32_t oh = (d->activeconns << 8) + d->totalconns; /* unsigned: wraps modulo 2^32 */
    return oh <= (uint32_t)INT32_MAX ? (int32_t)oh : (int32_t)(oh - 0x80000000u) + INT32_MIN;
}

/* lb_dest_conn_overhead widened, as an lb_overhead_fn. */
static inline int64_t lb_dest_conn_overhead64(const struct lb_dest *d)
{
    return lb_dest_conn_overhead(d);
}

/* A scheduler's load measure of a destination (wlc: lb_dest_conn_overhead, sed: activeconns + 1). */
typedef int64_t lb_overhead_fn(const struct lb_dest *d);

/* The weighted least-overhead choice of ip_vs_wlc.c and ip_vs_sed.c (lblc and lblcr fall back to
 * the same loop, lb_loc_least): the first destination neither OVERLOAD-flagged nor of weight <= 0
 * is the candidate; every later one not flagged replaces it when oh_cand * w_d > oh_d * w_cand
 * (64-bit products of 32-bit values: no overflow, no division; a later weight-0 destination never
 * wins, its side being 0). NULL: none eligible. Static inline with a constant `overhead` at every
 * call site, so each scheduler's loop compiles with its measure inlined, as before. */
static inline struct lb_dest *lb_sched_least_weighted(const struct lb_svc *svc, lb_overhead_fn *overhead)
{
    uint32_t i = 0, n = svc->ndests;
    struct lb_dest *least = NULL;
    for (; i < n; i++) {
        if (lb_dest_eligible(svc->dests[i])) {
            least = svc->dests[i];
            break;
        }
    }
    if (!least)
        return NULL;
    int64_t loh = overhead(least);
    for (i++; i < n; i++) {
        struct lb_dest *d = svc->dests[i];
        if (d->flags & LB_DEST_F_OVERLOAD)
            continue;
        int64_t doh = overhead(d);
        if (loh * d->conf.weight > doh * least->conf.weight) {
            least = d;
            loh = doh;
        }
    }
    return least;
}

/* ---- shared by the hashing schedulers (sh, dh, mh) ---- */

/* include/linux/hash.h's hash_32() (x86 has no arch-specific one): the top `bits` bits of the
 * 32-bit product with GOLDEN_RATIO_32. 1 <= bits <= 32. */
static inline uint32_t lb_hash_32(uint32_t val, unsigned bits)
{
    return (uint32_t)(val * 0x61C88647u) >> (32 - bits);
}

/* What sh and mh hash besides the address when their port flag is set (ip_vs_sh_get_port,
 * ip_vs_mh_get_port): the client's source port in host order, for TCP, UDP (and SCTP), else 0. */
static inline uint32_t lb_sched_client_port(const struct lb_pkt *p)
{
    return p->proto == LB_PROTO_TCP || p->proto == LB_PROTO_UDP ? lb_ntohs(p->sport) : 0;
}

/* Where a hashing scheduler looks for a client (addr, port: host order) at try `offset` (0: its
 * own entry): an index into its table. */
typedef uint32_t lb_hash_slot_fn(uint32_t addr, uint32_t port, uint32_t offset);

/* The choice of sh and mh (ip_vs_sh_schedule + ip_vs_sh_get_fallback, ip_vs_mh_schedule +
 * ip_vs_mh_get_fallback): the client's entry ihash = slot(addr, port, 0) of table[size] if its
 * destination is available (weight > 0, not OVERLOAD); none if the entry is empty, or unavailable
 * without `fallback`; with it, the first available destination of the entries
 * slot(addr, port, (k + ihash) % size) for k = 0..size-1, stopping at an empty entry. Static
 * inline with a constant `slot` at every call site: each scheduler's hash compiles inline, as
 * before. */
static inline struct lb_dest *lb_sched_hash_pick(struct lb_dest *const *table, uint32_t size, lb_hash_slot_fn *slot,
                                                 uint32_t addr, uint32_t port, int fallback)
{
    uint32_t ihash = slot(addr, port, 0);
    struct lb_dest *d = table[ihash];
    if (!d)
        return NULL;
    if (lb_dest_eligible(d))
        return d;
    if (!fallback)
        return NULL;
    for (uint32_t offset = 0; offset < size; offset++) {
        d = table[slot(addr, port, (offset + ihash) % size)];
        if (!d)
            break;
        if (lb_dest_eligible(d))
            return d;
    }
    return NULL;
}

#define LB_SCHED(name) extern const struct lb_sched_ops lb_sched_##name;
#include "lb_sched_list.h"
#undef LB_SCHED

#endif /* LB_SCHED_H */
