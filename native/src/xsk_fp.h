/*
 * xsk_fp.h - what the AF_XDP packet source (xsk.c) shares with its XDP fast path's user-space side
 * (xsk_fp.c, lbd --xdp-fastpath): the program's maps (struct lb_xdp), the fast path's state (struct
 * lb_fp) and the fast path's entry points. Internal to those two files.
 */
#ifndef LB_XSK_FP_H
#define LB_XSK_FP_H

#include <stdint.h>

#include <bpf/libbpf.h>

#include "lb_adapter.h"

struct lb_xdp_key_wire {                   /* struct lb_xdp_key of lb_xdp.bpf.c: network order */
    uint32_t saddr;
    uint32_t daddr;
    uint16_t sport;
    uint16_t dport;
    uint8_t proto;
    uint8_t pad[3];
};

struct fp_credit;

/* The fast path's user-space side (lbd --xdp-fastpath). Every field is used under lb->lock (by the
 * core's hooks, lb_fp_ops, and by the tick of queue 0's thread, lb_xsk_fp_tick) except those only
 * that tick uses: rb_cons, rb_prod, last_credit_ms, sync_cleared. */
struct lb_fp {
    lb_t *lb;                              /* registered with (NULL: not yet) */
    struct ring_buffer *rb;
    const uint64_t *rb_cons;               /* lb_reports' consumer and producer positions, mapped read-only */
    const uint64_t *rb_prod;               /* (NULL: not mapped, the tick always consumes) */
    size_t rb_page;                        /* the size of each of those two mappings */
    uint32_t rb_records;                   /* records lb_reports holds (its bytes / FP_RECORD_BYTES) */
    int flows_on_fd;                       /* the program's .bss: lb_fp_flows_on */
    uint32_t nflows;                       /* connections with xdp_fp == LB_FP_ON: their flows are installed */
    uint8_t flows_on;                      /* what lb_fp_flows_on says (1: the program looks flows up) */
    uint32_t conn_slots;                   /* conn_max + 1 */
    struct fp_credit *credit;              /* conn_slots entries */
    uint32_t *watch;                       /* slots whose flows were active lately: read every FP_CREDIT_MS */
    uint32_t nwatch;
    uint32_t *free_slots;                  /* destination slots given back */
    uint32_t nfree;
    uint32_t next_slot;                    /* slots [1, next_slot) were handed out once */
    uint32_t gen;
    uint32_t inst_seq;                     /* the last install number written into a flow's value */
    uint64_t last_credit_ms;
    int sync_cleared;                      /* flows removed for the running sync master */
    uint64_t installed, removed, refused, credited, stale;
    uint64_t from_records;                 /* records credited without a lookup */
    /* While the tick holds lb->lock (batching set), what it credits is summed here and added to the
     * shared counters (forwarded, credited, from_records: atomics the control plane reads) once, before
     * it lets go of the lock: one locked add per pass, not three per record. */
    int batching;
    uint64_t batch_packets, batch_records;
    struct lb_wake wake;                   /* the tick's thread: woken when the ring must be read sooner than
                                              it meant to (many flows installed) or the sync master changed */
};

struct lb_xdp {
    struct bpf_object *obj;
    int link_fd;
    int keys_fd;
    int xsks_fd;
    int stats_fd;
    int local_fd;
    int flows_fd;
    int fdest_fd;
    int reports_fd;
    int shed_fd;                           /* lb_shed: lb_xdp_shed's bucket (shared between interfaces) */
    uint32_t ifindex;
    int mode;                              /* LB_XDP_MODE_NATIVE / _GENERIC */
    uint32_t fastpath_flows;               /* 0: no fast path */
    struct lb_fp fp;
};

/* Size the fast path's maps and switch it on (lb_fastpath in .rodata), before the object loads;
 * flows 0: only checks that the maps are there. 0 or -errno. */
int lb_xsk_fp_prepare(struct bpf_object *obj, uint32_t flows);
/* Register the fast path with engine lb (once per program: queue 0's socket calls it). 1 when it was
 * registered now (the caller then runs lb_xsk_fp_tick and lb_xsk_fp_stop, and waits on w: its wake-ups
 * go there), 0 when there is nothing to register (no fast path, or registered already), -errno. */
int lb_xsk_fp_start(struct lb_xdp *x, lb_t *lb, struct lb_adapter_wait *w);
/* Remove the hooks and the wake-ups (the program's flows stay until it is detached; the connections'
 * marks are cleared lazily). */
void lb_xsk_fp_stop(struct lb_xdp *x, lb_t *lb);
/* The registering thread, every round: the reports, the credit interval's reads, the sync master's rule. */
void lb_xsk_fp_tick(struct lb_xdp *x, lb_t *lb);
/* Under lb->lock, that thread before it sleeps: when the tick next has work (UINT64_MAX: none). */
uint64_t lb_xsk_fp_due_locked(struct lb_xdp *x, lb_t *lb, uint64_t now);
/* Free what lb_xsk_fp_start allocated (lb_xdp_detach). */
void lb_xsk_fp_free(struct lb_fp *fp);

#endif
