/*
 * xsk_fp.c - the XDP fast path's user-space side (lbd --packet-source afxdp --xdp-fastpath,
 * docs/afxdp.md): the program (native/bpf/lb_xdp.bpf.c) forwards established direct-routing TCP flows
 * itself, from its maps lb_flows (a flow -> its destination slot and generation, its counters) and
 * lb_fdest (a destination's Ethernet header, interface, MTU); lbd installs and removes the flows
 * from the core's hooks (lb_fp_ops), keeps the destinations' slots current, and credits what the
 * program counted (the lb_reports ring). The AF_XDP source itself (the program's other maps, the
 * sockets and their threads) is xsk.c; xsk_fp.h is what the two share.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <bpf/bpf.h>
#include <bpf/libbpf.h>

#include "xsk_fp.h"

/* ---- the fast path's maps, as lb_xdp.bpf.c declares them ---- */
#define FP_DEST_SLOTS 65536                /* lb_fdest entries; slot 0 is never used */
#define FP_CREDIT_MS 1000                  /* the credit interval: watched flows are read this often */
#define FP_RING_MIN (256u * 1024)          /* lb_reports: 56 bytes a record, one per active flow a second */
#define FP_RING_MAX (64u * 1024 * 1024)
#define FP_RECORD_BYTES 56                 /* a record in lb_reports: its 8-byte header and struct fp_report_wire */
/* The ring is read at least this often while flows are installed, whatever their number: what the
 * thread's 100 ms poll always did. Between, the sleep is as long as the ring takes 2.5 times the
 * records the flows queue meanwhile (one per active flow a second, spread over it): at most
 * 0.4 * rb_records / nflows seconds, the margin the old 100 ms poll had with a ring of conn_max / 4
 * records (FP_RING sizing above) and every one of conn_max flows active. */
#define FP_RING_MIN_MS 100
#define FP_RING_DRAIN_PERMILLE 400

struct fp_dest_wire {                      /* struct lb_fp_dest */
    uint8_t l2[12];
    uint32_t ifindex;
    uint32_t gen;
    uint16_t mtu;
    uint8_t up;
    uint8_t pad;
};

struct fp_flow_wire {                      /* struct lb_fp_flow */
    uint32_t dest_slot;
    uint32_t gen;
    uint32_t conn_slot;
    uint32_t inst;
    uint64_t packets;
    uint64_t bytes;
    uint64_t last_seen_ns;
    uint64_t last_report_ns;
};

struct fp_report_wire {                    /* struct lb_fp_report */
    struct lb_xdp_key_wire key;
    uint32_t conn_slot;
    uint32_t inst;
    uint64_t packets;
    uint64_t bytes;
    uint64_t last_seen_ns;
};

struct fp_credit {                         /* per connection slot: what was credited of its flow so far */
    uint64_t packets;
    uint64_t bytes;
    uint32_t dest_slot, gen;               /* what its flow in lb_flows was installed with (the map's copy) */
    uint32_t inst;                         /* and its install number (the value's inst) */
    uint8_t watched;                       /* in fp_watch */
    uint8_t recorded;                      /* credited from a record since the last credit pass */
};

/* Size the fast path's maps and switch it on (lb_fastpath in .rodata), before the object loads. */
int lb_xsk_fp_prepare(struct bpf_object *obj, uint32_t flows)
{
    struct bpf_map *m, *fl = NULL, *ring = NULL, *ro = NULL;
    bpf_object__for_each_map(m, obj) {
        const char *name = bpf_map__name(m);
        size_t n = strlen(name);
        if (strcmp(name, "lb_flows") == 0)
            fl = m;
        else if (strcmp(name, "lb_reports") == 0)
            ring = m;
        else if (bpf_map__is_internal(m) && n >= 7 && strcmp(name + n - 7, ".rodata") == 0)
            ro = m;
    }
    if (!fl || !ring || !ro)
        return -ENOENT;
    if (!flows)
        return 0;
    size_t sz = 0;
    const uint32_t on = 1;
    if (!bpf_map__initial_value(ro, &sz) || sz != sizeof(on)) /* lb_fastpath is the program's only constant */
        return -EINVAL;
    int e = bpf_map__set_initial_value(ro, &on, sizeof(on));
    if (e < 0)
        return e;
    uint64_t ring_bytes = FP_RING_MIN;
    while (ring_bytes < FP_RING_MAX && ring_bytes < (uint64_t)flows * 14) /* as many records as at 32 bytes */
        ring_bytes *= 2;
    e = bpf_map__set_max_entries(fl, flows);
    return e < 0 ? e : bpf_map__set_max_entries(ring, (uint32_t)ring_bytes);
}

/* ------------------------------------------------------------------ the fast path's user-space side
 * The core calls the hooks below under lb->lock (lb_fp_ops, lb_internal.h); queue 0's thread runs
 * lb_xsk_fp_tick under the same lock. Statistics: the program counts each flow's packets, bytes and
 * last-seen time in its lb_flows value and queues a record in lb_reports on a flow's first packet and then at
 * most once a second while it is active (never a wakeup: the ring is read on this thread's clock).
 * A record carries the flow's counters: what they counted since the last credit is credited from it
 * to the connection's destination and service (as lb_process counts inpkts/inbytes), the connection's
 * timer restarts from the last-seen time, and the flow's connection slot goes on the watch list. Every
 * FP_CREDIT_MS the watched flows that queued no record since the last pass are read (one lookup each:
 * what they counted after their last record is credited); one that counted nothing for a whole
 * interval leaves the list (its next packet queues a record again: more than a second after the last
 * one). So a steadily active flow costs no system call (its records arrive through the mapped ring),
 * a flow that goes quiet one or two lookups, and a flow's packets are credited within about two
 * intervals. The record's install number (the value's inst, lbd's fp->inst_seq) tells a record of
 * the current install from one queued before a re-install, whose counters are not credited. */

static void fp_key_of(const struct lb_conn *c, struct lb_xdp_key_wire *k)
{
    memset(k, 0, sizeof(*k));
    k->saddr = c->caddr;
    k->daddr = c->vaddr;
    k->sport = c->cport;
    k->dport = c->vport;
    k->proto = c->proto;
}

static int fp_key_eq(const struct lb_xdp_key_wire *a, const struct lb_xdp_key_wire *b)
{
    return a->saddr == b->saddr && a->daddr == b->daddr && a->sport == b->sport && a->dport == b->dport &&
           a->proto == b->proto;
}

/* How long the ring safely holds the records of fp->nflows flows (> 0): see FP_RING_DRAIN_PERMILLE. */
static uint64_t fp_ring_ms(const struct lb_fp *fp)
{
    uint64_t ms = (uint64_t)fp->rb_records * FP_RING_DRAIN_PERMILLE / fp->nflows;
    return ms > FP_RING_MIN_MS ? ms : FP_RING_MIN_MS;
}

static void fp_watch(struct lb_fp *fp, uint32_t slot)
{
    if (slot >= fp->conn_slots || fp->credit[slot].watched || fp->nwatch >= fp->conn_slots)
        return;
    fp->credit[slot].watched = 1;
    fp->watch[fp->nwatch++] = slot;
}

/* The program's lb_fp_flows_on: 1 before the first flow is installed, 0 only when none is (the credit
 * pass clears it, so a connection that comes and goes costs no write). Either value is correct for
 * any packet (with 0 every packet goes to lbd, which forwards it itself); 1 with no flow only costs
 * the program a lookup that misses. */
static void fp_flows_on(struct lb_fp *fp, uint8_t on)
{
    if (fp->flows_on == on)
        return;
    uint32_t zero = 0, v = on;
    if (bpf_map_update_elem(fp->flows_on_fd, &zero, &v, BPF_ANY) < 0) {
        /* 0 stays: the flows are not used (their packets take lbd's path); 1 stays: lookups that miss */
        fprintf(stderr, "lbd xdp fast path: cannot write lb_fp_flows_on: %s\n", strerror(errno));
        return;
    }
    fp->flows_on = on;
}

/* Credit what c's flow (value v) counted since the last credit; returns the packets credited. */
static uint64_t fp_credit_flow(struct lb_fp *fp, lb_t *lb, struct lb_conn *c, const struct fp_flow_wire *v)
{
    uint32_t slot = (uint32_t)(c - lb->conns);
    struct fp_credit *cr = &fp->credit[slot];
    if (v->packets <= cr->packets) {
        cr->bytes = v->bytes < cr->bytes ? v->bytes : cr->bytes;
        return 0;
    }
    uint64_t dp = v->packets - cr->packets, db = v->bytes >= cr->bytes ? v->bytes - cr->bytes : 0;
    cr->packets = v->packets;
    cr->bytes = v->bytes;
    struct lb_dest *d = c->dest;
    if (d) {
        d->stats.inpkts += dp;
        d->stats.inbytes += db;
        if ((d->flags & LB_DEST_F_AVAILABLE) && d->svc) {
            d->svc->stats.inpkts += dp;
            d->svc->stats.inbytes += db;
            lb_est_touch(d->svc); /* the estimators read these credited counters */
        }
    }
    if (fp->batching) {
        fp->batch_packets += dp;
    } else {
        __atomic_fetch_add(&lb->counters[LB_R_FORWARDED], dp, __ATOMIC_RELAXED);
        __atomic_fetch_add(&fp->credited, dp, __ATOMIC_RELAXED);
    }
    if (c->state == LB_S_ESTABLISHED) { /* the timer restarts from the flow's last packet, as lb_process would */
        uint64_t t = v->last_seen_ns / 1000000u + lb->timeouts_ms[LB_S_ESTABLISHED];
        if (t > c->expires_ms)
            lb_conn_set_expiry(lb, c, t);
    }
    return dp;
}

static void fp_dest_write(struct lb_xdp *x, struct lb_dest *d)
{
    struct fp_dest_wire w;
    memset(&w, 0, sizeof(w));
    if (++x->fp.gen == 0)
        x->fp.gen = 1;
    d->fp_gen = x->fp.gen;
    w.gen = d->fp_gen;
    const struct lb_dest_fwd *f = d->fwd;
    if (f && (d->flags & LB_DEST_F_AVAILABLE) && d->svc) {
        memcpy(w.l2, f->l2hdr, 12);
        w.ifindex = (uint32_t)f->conf.ifindex;
        uint32_t mtu = f->conf.mtu ? f->conf.mtu : 1500u;
        w.mtu = (uint16_t)(mtu > 0xffff ? 0xffff : mtu);
        w.up = 1;
    }
    uint32_t slot = d->fp_slot;
    if (bpf_map_update_elem(x->fdest_fd, &slot, &w, BPF_ANY) < 0) {
        /* the old entry stays, with the old generation: the flows installed next carry a new one, so they
         * are not forwarded by a stale entry; installed ones may be until the next write. Never expected
         * for an array slot in range. */
        fprintf(stderr, "lbd xdp fast path: cannot write destination slot %u: %s\n", slot, strerror(errno));
    }
}

static void fp_hook_dest(void *arg, lb_t *lb, struct lb_dest *d, int freed)
{
    struct lb_xdp *x = arg;
    (void)lb;
    if (!d->fp_slot)
        return; /* no flow was ever installed to it */
    if (!freed) {
        fp_dest_write(x, d);
        return;
    }
    struct fp_dest_wire w;
    memset(&w, 0, sizeof(w));
    uint32_t slot = d->fp_slot;
    bpf_map_update_elem(x->fdest_fd, &slot, &w, BPF_ANY);
    if (x->fp.nfree < FP_DEST_SLOTS)
        x->fp.free_slots[x->fp.nfree++] = slot;
    d->fp_slot = 0;
}

/* Read c's flow, credit it, and delete it (del) or not. 1 when it was found. */
static int fp_flow_read(struct lb_xdp *x, lb_t *lb, struct lb_conn *c, int del)
{
    struct lb_xdp_key_wire k;
    struct fp_flow_wire v;
    fp_key_of(c, &k);
    memset(&v, 0, sizeof(v));
    if (bpf_map_lookup_elem(x->flows_fd, &k, &v) < 0)
        return 0;
    if (v.conn_slot == (uint32_t)(c - lb->conns))
        fp_credit_flow(&x->fp, lb, c, &v);
    if (del)
        bpf_map_delete_elem(x->flows_fd, &k);
    return 1;
}

static void fp_hook_flow_del(void *arg, lb_t *lb, struct lb_conn *c)
{
    struct lb_xdp *x = arg;
    if (c->xdp_fp == LB_FP_ON) {
        fp_flow_read(x, lb, c, 1);
        __atomic_fetch_add(&x->fp.removed, 1, __ATOMIC_RELAXED);
        x->fp.nflows -= x->fp.nflows > 0;
    }
    c->xdp_fp = 0;
}

static void fp_hook_flow_set(void *arg, lb_t *lb, struct lb_conn *c)
{
    struct lb_xdp *x = arg;
    struct lb_fp *fp = &x->fp;
    struct lb_dest *d = c->dest;
    uint32_t slot = (uint32_t)(c - lb->conns);
    if (!d->fp_slot) {
        uint32_t s = fp->nfree ? fp->free_slots[--fp->nfree] : fp->next_slot < FP_DEST_SLOTS ? fp->next_slot++ : 0;
        if (!s) {
            c->xdp_fp = LB_FP_REFUSED;
            __atomic_fetch_add(&fp->refused, 1, __ATOMIC_RELAXED);
            return;
        }
        d->fp_slot = s;
        fp_dest_write(x, d);
    }
    struct fp_credit *cr = &fp->credit[slot < fp->conn_slots ? slot : 0];
    if (c->xdp_fp == LB_FP_ON && slot < fp->conn_slots && cr->dest_slot == d->fp_slot && cr->gen == d->fp_gen)
        return; /* the flow is current: this packet was on its way to lbd before the install took effect */
    if (c->xdp_fp == LB_FP_ON)
        fp_flow_read(x, lb, c, 0); /* a re-install: what the old value counted is credited first */
    struct lb_xdp_key_wire k;
    struct fp_flow_wire v;
    fp_key_of(c, &k);
    memset(&v, 0, sizeof(v));
    v.dest_slot = d->fp_slot;
    v.gen = d->fp_gen;
    v.conn_slot = slot;
    if (++fp->inst_seq == 0)
        fp->inst_seq = 1;
    v.inst = fp->inst_seq;
    fp_flows_on(fp, 1); /* before the flow: its next packet is looked up */
    if (slot >= fp->conn_slots || bpf_map_update_elem(x->flows_fd, &k, &v, BPF_ANY) < 0) {
        if (c->xdp_fp == LB_FP_ON) {
            bpf_map_delete_elem(x->flows_fd, &k);
            fp->nflows -= fp->nflows > 0;
        }
        c->xdp_fp = LB_FP_REFUSED;
        __atomic_fetch_add(&fp->refused, 1, __ATOMIC_RELAXED);
        return;
    }
    if (c->xdp_fp != LB_FP_ON) {
        fp->nflows++;
        /* So many flows that the ring may need reading before the tick's thread meant to look again. */
        uint64_t ring_ms = fp_ring_ms(fp);
        if (ring_ms < LB_ADAPTER_IDLE_MS)
            lb_wake_due(&fp->wake, lb_adapter_now_ms() + ring_ms);
    }
    c->xdp_fp = LB_FP_ON;
    cr->packets = 0;
    cr->bytes = 0;
    cr->dest_slot = v.dest_slot;
    cr->gen = v.gen;
    cr->inst = v.inst;
    cr->recorded = 0;
    fp_watch(fp, slot);
    __atomic_fetch_add(&fp->installed, 1, __ATOMIC_RELAXED);
}

/* The sync master started or stopped: the tick removes the flows (or resets its mark) now. */
static void fp_hook_sync(void *arg, lb_t *lb)
{
    struct lb_xdp *x = arg;
    (void)lb;
    lb_wake_due(&x->fp.wake, 0);
}

static const struct lb_fp_ops fp_ops = {
    .flow_set = fp_hook_flow_set,
    .flow_del = fp_hook_flow_del,
    .dest = fp_hook_dest,
    .sync = fp_hook_sync,
};

/* A record from the program: the flow of key is active. */
static int fp_on_report(void *ctx, void *data, size_t size)
{
    struct lb_xdp *x = ctx;
    struct lb_fp *fp = &x->fp;
    lb_t *lb = fp->lb;
    if (size < sizeof(struct fp_report_wire))
        return 0;
    struct fp_report_wire r;
    memcpy(&r, data, sizeof(r));
    /* A record of the current install of a live connection's flow: credited from the record itself. */
    if (r.conn_slot > 0 && r.conn_slot < fp->conn_slots && r.inst && fp->credit[r.conn_slot].inst == r.inst) {
        struct lb_conn *c = &lb->conns[r.conn_slot];
        struct lb_xdp_key_wire k;
        fp_key_of(c, &k);
        if ((c->flags & LB_CF_USED) && c->xdp_fp == LB_FP_ON && fp_key_eq(&k, &r.key)) {
            struct fp_flow_wire v;
            memset(&v, 0, sizeof(v));
            v.conn_slot = r.conn_slot;
            v.packets = r.packets;
            v.bytes = r.bytes;
            v.last_seen_ns = r.last_seen_ns;
            fp_credit_flow(fp, lb, c, &v);
            fp_watch(fp, r.conn_slot);
            fp->credit[r.conn_slot].recorded = 1;
            if (fp->batching)
                fp->batch_records++;
            else
                __atomic_fetch_add(&fp->from_records, 1, __ATOMIC_RELAXED);
            return 0;
        }
    }
    /* The value's connection slot is the truth (the record may be older than a re-install). */
    struct fp_flow_wire v;
    if (bpf_map_lookup_elem(x->flows_fd, &r.key, &v) < 0)
        return 0; /* removed meanwhile */
    if (v.conn_slot < fp->conn_slots && v.conn_slot > 0) {
        struct lb_conn *c = &lb->conns[v.conn_slot];
        struct lb_xdp_key_wire k;
        fp_key_of(c, &k);
        if ((c->flags & LB_CF_USED) && c->xdp_fp == LB_FP_ON && fp_key_eq(&k, &r.key)) {
            fp_watch(fp, v.conn_slot);
            return 0;
        }
    }
    bpf_map_delete_elem(x->flows_fd, &r.key); /* a flow without its connection */
    __atomic_fetch_add(&fp->stale, 1, __ATOMIC_RELAXED);
    return 0;
}

/* Whether the tick has nothing to do, decided without lb->lock (it runs on every round of the thread,
 * i.e. every receive batch). Nothing to do: no report waits in the ring, the credit interval has not
 * run out, and the sync master's rule has nothing to change. The memory ordering relied on:
 *  - last_credit_ms, sync_cleared and the ring's consumer position are written by this thread alone
 *    (the consumer position by libbpf in ring_buffer__consume, called from the tick): plain program
 *    order; the consumer position is read through an atomic load so that the compiler reads the page
 *    again every time (libbpf writes it through its own mapping of the same page).
 *  - the producer position is advanced by the program (bpf_ringbuf_reserve, smp_store_release) on any
 *    CPU; it is read with an acquire load. Equal positions mean that every record reserved before
 *    that load was consumed: the tick would have found nothing at that instant. A record reserved
 *    after it is found by the next round, exactly as one reserved just after ring_buffer__consume
 *    returned always was (the program never wakes the thread: BPF_RB_NO_WAKEUP). A reserved record
 *    still being written (positions unequal, its header busy) takes the lock; consume then stops at
 *    it as before and the next round takes it.
 *  - lb->sync_on is written under lb->lock by the control plane (lb_sync_*); a relaxed load may see
 *    the old value for as long as the writer has not yet released the lock, i.e. the tick acts on the
 *    change one round later at most: the same as when the change lands just after the tick's unlock.
 *    The core itself installs no flow while sync_on is set (core.c fp_after_in, under the lock).
 * Anything else (now a little past the interval, the ring not mapped) takes the lock and does what
 * the tick always did. */
static int fp_tick_idle(const struct lb_fp *fp, const lb_t *lb, uint64_t now)
{
    if (!fp->rb_cons || !fp->rb_prod)
        return 0;
    if (now - fp->last_credit_ms >= FP_CREDIT_MS)
        return 0;
    int sync_on = __atomic_load_n(&lb->sync_on, __ATOMIC_RELAXED) != 0;
    if (sync_on != (fp->sync_cleared != 0))
        return 0; /* the master started (flows to remove) or stopped (its mark to reset) */
    uint64_t prod = __atomic_load_n(fp->rb_prod, __ATOMIC_ACQUIRE);
    return prod == __atomic_load_n(fp->rb_cons, __ATOMIC_RELAXED);
}

uint64_t lb_xsk_fp_due_locked(struct lb_xdp *x, lb_t *lb, uint64_t now)
{
    const struct lb_fp *fp = &x->fp;
    if ((lb->sync_on != 0) != (fp->sync_cleared != 0))
        return now; /* the master started (flows to remove) or stopped (its mark to reset) */
    if (fp->rb_cons && fp->rb_prod &&
        __atomic_load_n(fp->rb_prod, __ATOMIC_ACQUIRE) != __atomic_load_n(fp->rb_cons, __ATOMIC_RELAXED))
        return now; /* records queued since the tick (or one still being written) */
    uint64_t due = UINT64_MAX;
    if (fp->nwatch || (fp->flows_on && !fp->nflows))
        due = fp->last_credit_ms + FP_CREDIT_MS; /* the credit pass: watched flows, or lb_fp_flows_on to clear */
    if (fp->nflows) {
        /* Installed flows queue records without waking anyone: the ring is read before it can fill. */
        uint64_t r = now + fp_ring_ms(fp);
        due = r < due ? r : due;
    }
    return due;
}

/* The tick's sums (batching, struct lb_fp) to the shared counters; under lb->lock, before it is released. */
static void fp_batch_end(struct lb_fp *fp, lb_t *lb)
{
    if (fp->batch_packets) {
        __atomic_fetch_add(&lb->counters[LB_R_FORWARDED], fp->batch_packets, __ATOMIC_RELAXED);
        __atomic_fetch_add(&fp->credited, fp->batch_packets, __ATOMIC_RELAXED);
    }
    if (fp->batch_records)
        __atomic_fetch_add(&fp->from_records, fp->batch_records, __ATOMIC_RELAXED);
    fp->batch_packets = 0;
    fp->batch_records = 0;
    fp->batching = 0;
}

void lb_xsk_fp_tick(struct lb_xdp *x, lb_t *lb)
{
    struct lb_fp *fp = &x->fp;
    if (fp_tick_idle(fp, lb, lb_adapter_now_ms()))
        return;
    pthread_mutex_lock(&lb->lock);
    fp->batching = 1;
    if (lb->sync_on && !fp->sync_cleared) {
        /* The sync master decides per packet what to send (sync.c): no flow may bypass the core. */
        for (uint32_t i = 1; i < lb->hwm && i < fp->conn_slots; i++)
            if ((lb->conns[i].flags & LB_CF_USED) && lb->conns[i].xdp_fp)
                fp_hook_flow_del(x, lb, &lb->conns[i]);
        fp->sync_cleared = 1;
    } else if (!lb->sync_on) {
        fp->sync_cleared = 0;
    }
    ring_buffer__consume(fp->rb);
    uint64_t now = lb_adapter_now_ms();
    if (now - fp->last_credit_ms >= FP_CREDIT_MS) {
        fp->last_credit_ms = now;
        if (!fp->nflows)
            fp_flows_on(fp, 0);
        uint32_t kept = 0;
        for (uint32_t i = 0; i < fp->nwatch; i++) {
            uint32_t slot = fp->watch[i];
            struct lb_conn *c = &lb->conns[slot];
            struct lb_xdp_key_wire k;
            struct fp_flow_wire v;
            int active = 0;
            if (fp->credit[slot].recorded) {
                fp->credit[slot].recorded = 0; /* credited from its record(s) this interval: still active */
                active = (c->flags & LB_CF_USED) && c->xdp_fp == LB_FP_ON;
            } else if ((c->flags & LB_CF_USED) && c->xdp_fp == LB_FP_ON) {
                fp_key_of(c, &k);
                if (bpf_map_lookup_elem(x->flows_fd, &k, &v) == 0 && v.conn_slot == slot)
                    active = fp_credit_flow(fp, lb, c, &v) > 0;
            }
            if (active)
                fp->watch[kept++] = slot;
            else
                fp->credit[slot].watched = 0;
        }
        fp->nwatch = kept;
    }
    fp_batch_end(fp, lb);
    pthread_mutex_unlock(&lb->lock);
}

int lb_xsk_fp_start(struct lb_xdp *x, lb_t *lb, struct lb_adapter_wait *w)
{
    struct lb_fp *fp = &x->fp;
    if (!x->fastpath_flows || fp->lb)
        return 0;
    fp->flows_on_fd = -1;
    struct bpf_map *m;
    bpf_object__for_each_map(m, x->obj) {
        const char *name = bpf_map__name(m);
        size_t n = strlen(name);
        if (bpf_map__is_internal(m) && n >= 4 && strcmp(name + n - 4, ".bss") == 0 &&
            bpf_map__value_size(m) == sizeof(uint32_t)) /* lb_fp_flows_on is the program's only variable */
            fp->flows_on_fd = bpf_map__fd(m);
    }
    if (fp->flows_on_fd < 0)
        return -ENOENT;
    fp->conn_slots = lb_conn_max(lb) + 1;
    fp->credit = calloc(fp->conn_slots, sizeof(*fp->credit));
    fp->watch = calloc(fp->conn_slots, sizeof(*fp->watch));
    fp->free_slots = calloc(FP_DEST_SLOTS, sizeof(*fp->free_slots));
    if (!fp->credit || !fp->watch || !fp->free_slots)
        return -ENOMEM;
    fp->rb = ring_buffer__new(x->reports_fd, fp_on_report, x, NULL);
    if (!fp->rb)
        return errno ? -errno : -EIO;
    struct bpf_map *ring = bpf_object__find_map_by_name(x->obj, "lb_reports");
    fp->rb_records = ring ? bpf_map__max_entries(ring) / FP_RECORD_BYTES : 0;
    if (fp->rb_records == 0)
        return -ENOENT;
    /* The ring's two position pages, for the tick's test without the lock (fp_tick_idle): the
     * consumer page at offset 0 and the producer page after it, as libbpf maps them (read-only here;
     * without them the tick consumes every round, as it did). */
    long page = sysconf(_SC_PAGESIZE);
    if (page > 0) {
        void *cons = mmap(NULL, (size_t)page, PROT_READ, MAP_SHARED, x->reports_fd, 0);
        void *prod = mmap(NULL, (size_t)page, PROT_READ, MAP_SHARED, x->reports_fd, (off_t)page);
        if (cons != MAP_FAILED && prod != MAP_FAILED) {
            fp->rb_cons = cons;
            fp->rb_prod = prod;
            fp->rb_page = (size_t)page;
        } else {
            if (cons != MAP_FAILED)
                munmap(cons, (size_t)page);
            if (prod != MAP_FAILED)
                munmap(prod, (size_t)page);
        }
    }
    fp->next_slot = 1;
    fp->lb = lb;
    fp->wake.fn = lb_adapter_wake; /* before the hooks that may call it, published by lb_fp_register's lock */
    fp->wake.arg = w;
    lb_fp_register(lb, &fp_ops, x);
    return 1;
}

void lb_xsk_fp_stop(struct lb_xdp *x, lb_t *lb)
{
    lb_fp_register(lb, NULL, NULL);
    /* the program's flows stay until it is detached; the connections' marks are cleared lazily */
    pthread_mutex_lock(&lb->lock); /* no hook runs any more: the wake-ups go with them */
    x->fp.wake.fn = NULL;
    x->fp.wake.arg = NULL;
    __atomic_store_n(&x->fp.wake.at_ms, 0, __ATOMIC_RELAXED);
    pthread_mutex_unlock(&lb->lock);
}

void lb_xsk_fp_free(struct lb_fp *fp)
{
    if (fp->rb_cons)
        munmap((void *)fp->rb_cons, fp->rb_page);
    if (fp->rb_prod)
        munmap((void *)fp->rb_prod, fp->rb_page);
    if (fp->rb)
        ring_buffer__free(fp->rb);
    free(fp->credit);
    free(fp->watch);
    free(fp->free_slots);
}

