/*
 * lb_locality.h - what lblc and lblcr share (the kernel's ip_vs_lblc.c and ip_vs_lblcr.c each carry
 * a copy): a per-service cache keyed by the packet's DESTINATION address, its bounded growth, its
 * periodic garbage collection, the "is overloaded" rule and the weighted least-connection choice
 * both fall back to. Each scheduler embeds struct lb_loc_entry at the start of its own entries.
 *
 * Time. The kernel keeps lblc/lblcr time in jiffies (HZ = 250 in Debian's build: 4 ms a jiffy);
 * here it is the caller's now_ms (schedule() reads svc->sched_now_ms, tick() gets now_ms). Every
 * kernel period is a whole number of jiffies, so each converts exactly: CHECK_EXPIRE_INTERVAL
 * 60*HZ = 15000 jiffies = 60000 ms, ENTRY_TIMEOUT 6*60*HZ = 90000 jiffies = 360000 ms,
 * DEFAULT_EXPIRATION 24*60*60*HZ = 21600000 jiffies = 86400000 ms. The comparisons keep the
 * kernel's strictness (time_before / time_after). The ms clock is finer than a jiffy: two events
 * less than 4 ms apart may fall in one jiffy in the kernel and not here.
 *
 * Timer. The kernel arms a 60 s timer when the scheduler is bound; a configuration call carries no
 * time here, so the timer is armed the first time the scheduler sees the clock (its first tick or
 * schedule after being bound: binding one asks the adapter's next expiry run for it). tick() then runs
 * every check that has come due, each as of its own due time (as the kernel's timer would have
 * run it), the next one 60 s after it (mod_timer(jiffies + CHECK_EXPIRE_INTERVAL)). A run:
 * every 30th (counter % 30 == 0) is a full check dropping every entry unused for at least the
 * expiration (24 h, sysctl lblc_expiration / lblcr_expiration), then counter = 1; otherwise, at
 * most 16384 entries: counter + 1; above: entries unused for 6 min go, whole buckets at a time
 * from the one after `rover`, until min((entries - 16384) * 4 / 3, 8192) have gone.
 */
#ifndef LB_LOCALITY_H
#define LB_LOCALITY_H

#include "lb_sched.h"

#define LB_LOC_TAB_BITS 10                     /* CONFIG_IP_VS_LBLC(R)_TAB_BITS: no Kconfig symbol, the files' 10 */
#define LB_LOC_TAB_SIZE (1u << LB_LOC_TAB_BITS) /* 1024 buckets */
#define LB_LOC_TAB_MASK (LB_LOC_TAB_SIZE - 1u)
#define LB_LOC_MAX_SIZE (LB_LOC_TAB_SIZE * 16u) /* 16384 entries: above it the timer collects */
#define LB_LOC_MAX_ENTRIES (LB_LOC_MAX_SIZE * 3u / 2u) /* 24576: no new entry at this size (6.1.192) */
#define LB_LOC_CHECK_INTERVAL_MS 60000ull      /* CHECK_EXPIRE_INTERVAL, 60*HZ */
#define LB_LOC_ENTRY_TIMEOUT_MS 360000ull      /* ENTRY_TIMEOUT, 6*60*HZ */
#define LB_LOC_EXPIRATION_MS 86400000ull       /* DEFAULT_EXPIRATION, 24*60*60*HZ */
#define LB_LOC_COUNT_FOR_FULL 30u              /* COUNT_FOR_FULL_EXPIRATION: a full check every 30 runs */

struct lb_loc_entry {
    struct lb_loc_entry *next;   /* bucket chain; a new entry goes to the head */
    uint32_t addr;               /* the packets' destination address, network order */
    uint64_t lastuse_ms;         /* refreshed by every lookup that finds the entry */
};

/* Frees an unlinked entry and puts the destination references it holds. */
typedef void lb_loc_free_fn(struct lb_svc *svc, struct lb_loc_entry *e);

struct lb_loc_table {
    struct lb_loc_entry *bucket[LB_LOC_TAB_SIZE];
    lb_loc_free_fn *free_entry;
    uint32_t entries;            /* linked entries: at most LB_LOC_MAX_ENTRIES */
    uint32_t rover;              /* last bucket the collector visited */
    uint32_t counter;            /* runs since the last full check, from 1 */
    uint8_t armed;               /* next_check_ms is set (the scheduler has seen the clock) */
    uint64_t next_check_ms;      /* when the next timer run is due */
    uint64_t expiration_ms;      /* idle time after which a full check drops an entry */
};

/* Allocate svc->sched_data as a zeroed table of `size` bytes (>= sizeof(struct lb_loc_table), the
 * table first): LB_OK or LB_ENOMEM. */
int lb_loc_init(struct lb_svc *svc, size_t size, lb_loc_free_fn *free_entry);
/* Free every entry and the table. */
void lb_loc_done(struct lb_svc *svc);
/* The entry for destination address addr (network order), or NULL. */
struct lb_loc_entry *lb_loc_get(const struct lb_loc_table *t, uint32_t addr);
/* Link e (addr set) at the head of its bucket. */
void lb_loc_link(struct lb_loc_table *t, struct lb_loc_entry *e);
/* Unlink e, count it out, free it (ip_vs_lblc_del + the counter decrement 6.1.192 added). */
void lb_loc_del(struct lb_svc *svc, struct lb_loc_table *t, struct lb_loc_entry *e);
/* The time of the schedule() call in progress; arms the timer if this is the first time seen. */
uint64_t lb_loc_now(struct lb_svc *svc, struct lb_loc_table *t);
/* The tick hook's work: arm, or run every check due by now_ms; returns when the next check is due. */
uint64_t lb_loc_tick(struct lb_svc *svc, uint64_t now_ms);

/* No new entry at 3/2 of the collector's size (6.1.192's bound on cache growth). */
static inline int lb_loc_full(const struct lb_loc_table *t) { return t->entries >= LB_LOC_MAX_ENTRIES; }

/* is_overloaded() of both files (not the OVERLOAD flag): d has more active connections than its
 * weight and some destination of the service (any: flagged, weight 0, d itself) has fewer than
 * half its weight active (activeconns * 2 < weight, strictly). */
int lb_loc_is_overloaded(const struct lb_dest *d, const struct lb_svc *svc);
/* __ip_vs_lblc_schedule / __ip_vs_lblcr_schedule: wlc's loop (lb_sched_least_weighted with
 * lb_dest_conn_overhead). NULL: none. */
struct lb_dest *lb_loc_least(const struct lb_svc *svc);

/* A reference held by a cache entry (ip_vs_dest_hold): keeps a deleted destination in the trash,
 * where re-adding it revives it with the entries still pointing at it. */
static inline void lb_dest_hold(struct lb_dest *d) { d->refcnt++; }

#endif /* LB_LOCALITY_H */
