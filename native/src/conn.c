/*
 * conn.c - the connection table.
 *
 * A preallocated, zeroed pool of 64-byte entries indexed by uint32 (slot 0 is
 * never used), chained into a power-of-two bucket array by a seeded hash of a
 * 5-tuple. Each entry is hashed by its IN tuple (client -> VIP) and, when its
 * forwarding method sees replies, by its reply tuple (real server -> what the
 * method chose: FULLNAT's local address); chain links carry the direction in
 * their low bit. No allocation happens on the packet path.
 *
 * Buckets: unless lb_config names a count, the next power of two >= conn_max
 * (at least LB_HASH_BUCKETS_MIN): a full table has at most one IN link per
 * bucket on average (two with reply tuples), so a lookup reads the bucket and
 * about one entry whatever the table's size, for 4 to 8 bytes per entry.
 *
 * Expiry is exact, as with kernel timers: every live entry has a key in one of
 * two indexed min-heaps, and lb_conn_tick() (run at the start of every
 * lb_process and lb_expire) releases each entry whose time has come, in expiry
 * order, connections before templates at equal times. Packets only push an
 * entry's expiry later, so they just write expires_ms and leave the heap alone;
 * a key found early when it reaches the top is refreshed in place. Only a state
 * change that shortens the timeout moves a key earlier. So an established
 * flow's packets never touch a heap.
 *
 * The two heaps split the entries by what early drop may take: LB_EXP_DROP holds
 * the half-open and finished TCP connections (lb_conn_droppable), LB_EXP_KEEP the
 * rest. When the table is full and a packet needs a new entry, the droppable
 * entry that expires first (the older at equal times) is released to make room,
 * in O(log n): a SYN flood replaces its own oldest entries instead of locking
 * real clients out (kernel IPVS's drop_entry defence and conntrack's early_drop,
 * docs/fastpath.md). Both heaps live in one array of conn_max elements, one
 * growing from each end.
 *
 * Change marks (dirty, dirty_sum) record which slots a snapshot must rewrite:
 * lbd saves what changed every 2 s and the whole table only rarely. A second set
 * (sync_dirty, sync_dirty_sum) serves the sync master (lb/sync): it finds what
 * changed in O(changed), not by walking the table, whatever the journal took.
 */
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "lb_sched.h"
#include "lb_xmit.h"


static inline uint32_t conn_bucket(const lb_t *lb, const struct lb_conn *c, int dir)
{
    uint64_t addrs;
    uint32_t ports;
    conn_key(c, dir, &addrs, &ports);
    return tuple_hash(lb, c->proto, addrs, ports);
}

int lb_conn_table_init(lb_t *lb, const struct lb_config *cfg)
{
    uint32_t max = cfg && cfg->conn_max ? cfg->conn_max : LB_DEFAULT_CONN_MAX;
    uint16_t pmin = cfg && cfg->lport_min ? cfg->lport_min : LB_DEFAULT_LPORT_MIN;
    uint16_t pmax = cfg && cfg->lport_max ? cfg->lport_max : LB_DEFAULT_LPORT_MAX;
    if (max > LB_CONN_MAX_LIMIT || pmin > pmax)
        return LB_EINVAL;
    uint32_t buckets = cfg && cfg->hash_buckets ? cfg->hash_buckets : LB_HASH_BUCKETS_MIN;
    if (!(cfg && cfg->hash_buckets))
        while (buckets < max)
            buckets <<= 1; /* max <= 2^30 - 1: no overflow */
    if (buckets == 0 || (buckets & (buckets - 1)) != 0)
        return LB_EINVAL;
    size_t words = ((size_t)max + 1 + 63) / 64;
    /* calloc: the whole pool starts zeroed; pages are only touched when used. */
    lb->conns = calloc((size_t)max + 1, sizeof(*lb->conns));
    lb->buckets = calloc(buckets, sizeof(*lb->buckets));
    lb->exp_heap = calloc(max, sizeof(*lb->exp_heap));
    lb->exp_pos = calloc((size_t)max + 1, sizeof(*lb->exp_pos));
    lb->dirty = calloc(words, sizeof(*lb->dirty));
    lb->dirty_sum = calloc((words + 63) / 64, sizeof(*lb->dirty_sum));
    lb->sync_dirty = calloc(words, sizeof(*lb->sync_dirty));
    lb->sync_dirty_sum = calloc((words + 63) / 64, sizeof(*lb->sync_dirty_sum));
    if (!lb->conns || !lb->buckets || !lb->exp_heap || !lb->exp_pos || !lb->dirty || !lb->dirty_sum
        || !lb->sync_dirty || !lb->sync_dirty_sum) {
        lb_conn_table_free(lb);
        return LB_ENOMEM;
    }
    lb->conn_max = max;
    lb->exp_cap = max;
    lb->hash_mask = buckets - 1;
    lb->hwm = 1;
    lb->exp_next_ms = UINT64_MAX;
    lb->lport_min = pmin;
    lb->lport_max = pmax;
    lb_timeouts_init(lb->timeouts_ms);
    uint64_t seeds[2] = {0, 0};
    if (cfg && cfg->hash_seed) {
        lb->seeded = 1;
        seeds[0] = cfg->hash_seed;
        seeds[1] = cfg->hash_seed * 0xD6E8FEB86659FD93ull + 1;
    } else if (getrandom(seeds, sizeof(seeds), 0) != (ssize_t)sizeof(seeds)) {
        seeds[0] = (uint64_t)(uintptr_t)lb ^ 0xA0761D6478BD642Full;
        seeds[1] = (uint64_t)(uintptr_t)lb->conns ^ 0xE7037ED1A0B428DBull;
    }
    lb->seed0 = seeds[0];
    lb->seed1 = seeds[1];
    return LB_OK;
}

void lb_conn_table_free(lb_t *lb)
{
    free(lb->conns);
    free(lb->buckets);
    free(lb->exp_heap);
    free(lb->exp_pos);
    free(lb->dirty);
    free(lb->dirty_sum);
    free(lb->sync_dirty);
    free(lb->sync_dirty_sum);
    free(lb->csync);
    lb->csync = NULL;
    lb->sync_on = 0;
    lb->conns = NULL;
    lb->buckets = NULL;
    lb->exp_heap = NULL;
    lb->exp_pos = NULL;
    lb->dirty = NULL;
    lb->dirty_sum = NULL;
    lb->sync_dirty = NULL;
    lb->sync_dirty_sum = NULL;
}

/* ---------------------------------------------------------------- expiry heaps */

#define EXP_POS_HEAP 0x80000000u

/* Element i of heap h: LB_EXP_KEEP counts from the front of the shared array, LB_EXP_DROP from the
 * back. exp_len[0] + exp_len[1] <= exp_cap (one element per live entry) keeps them apart. */
static inline struct lb_exp *exp_at(lb_t *lb, int h, uint32_t i)
{
    return h ? &lb->exp_heap[lb->exp_cap - 1 - i] : &lb->exp_heap[i];
}

/* Order: deadline, then connections before templates, then creation (31-bit serials compared
 * modulo 2^31, so the order survives the counter's wrap for entries created within 2^30 of each
 * other). */
static inline int exp_less(const struct lb_exp *a, const struct lb_exp *b)
{
    if (a->due_ms != b->due_ms)
        return a->due_ms < b->due_ms;
    if ((a->ord ^ b->ord) & LB_EXP_TMPL)
        return !(a->ord & LB_EXP_TMPL);
    return (int32_t)((a->ord - b->ord) << 1) < 0;
}

static inline void exp_update_next(lb_t *lb)
{
    uint64_t a = lb->exp_len[0] ? exp_at(lb, 0, 0)->due_ms : UINT64_MAX;
    uint64_t b = lb->exp_len[1] ? exp_at(lb, 1, 0)->due_ms : UINT64_MAX;
    lb->exp_next_ms = a < b ? a : b;
    lb_wake_check_exp(lb, lb->exp_next_ms); /* a new first deadline, earlier than the sleeping thread looks */
}

static inline void exp_place(lb_t *lb, int h, uint32_t i, struct lb_exp e)
{
    *exp_at(lb, h, i) = e;
    lb->exp_pos[e.slot] = (h ? EXP_POS_HEAP : 0) | (i + 1);
}

/* Move e up from the hole at i (its slot's entry goes where the order puts it). */
static void exp_sift_up_from(lb_t *lb, int h, uint32_t i, struct lb_exp e)
{
    while (i > 0) {
        uint32_t parent = (i - 1) / 2;
        const struct lb_exp *pe = exp_at(lb, h, parent);
        if (!exp_less(&e, pe))
            break;
        exp_place(lb, h, i, *pe);
        i = parent;
    }
    exp_place(lb, h, i, e);
}

static void exp_sift_down(lb_t *lb, int h, uint32_t i)
{
    struct lb_exp e = *exp_at(lb, h, i);
    uint32_t n = lb->exp_len[h];
    for (;;) {
        uint32_t l = 2 * i + 1, r = l + 1, m = l;
        if (l >= n)
            break;
        if (r < n && exp_less(exp_at(lb, h, r), exp_at(lb, h, l)))
            m = r;
        if (!exp_less(exp_at(lb, h, m), &e))
            break;
        exp_place(lb, h, i, *exp_at(lb, h, m));
        i = m;
    }
    exp_place(lb, h, i, e);
}

static void exp_push_elem(lb_t *lb, int h, struct lb_exp e)
{
    exp_sift_up_from(lb, h, lb->exp_len[h]++, e);
    exp_update_next(lb);
}

static void exp_push(lb_t *lb, uint32_t slot)
{
    const struct lb_conn *c = &lb->conns[slot];
    uint32_t ord = ((c->flags & LB_CF_TEMPLATE) ? LB_EXP_TMPL : 0) | (lb->conn_serial++ & ~LB_EXP_TMPL);
    struct lb_exp e = {c->expires_ms, slot, ord};
    exp_push_elem(lb, lb_conn_droppable(c) ? LB_EXP_DROP : LB_EXP_KEEP, e);
}

/* Take slot's element out of its heap; returns it (slot 0 when it had none). */
static struct lb_exp exp_remove(lb_t *lb, uint32_t slot)
{
    struct lb_exp gone = {0, 0, 0};
    uint32_t pos = lb->exp_pos[slot];
    if (!pos)
        return gone;
    int h = (pos & EXP_POS_HEAP) ? 1 : 0;
    uint32_t i = (pos & ~EXP_POS_HEAP) - 1;
    gone = *exp_at(lb, h, i);
    lb->exp_pos[slot] = 0;
    uint32_t last = --lb->exp_len[h];
    if (last != i) {
        /* Move the last element into the hole, then restore the order around it. */
        struct lb_exp moved = *exp_at(lb, h, last);
        exp_sift_up_from(lb, h, i, moved);
        uint32_t mp = lb->exp_pos[moved.slot];
        exp_sift_down(lb, h, (mp & ~EXP_POS_HEAP) - 1);
    }
    exp_update_next(lb);
    return gone;
}

/* Set slot's key to its entry's current expires_ms (later or earlier). */
static void exp_rekey(lb_t *lb, uint32_t slot)
{
    uint32_t pos = lb->exp_pos[slot];
    if (!pos)
        return;
    int h = (pos & EXP_POS_HEAP) ? 1 : 0;
    uint32_t i = (pos & ~EXP_POS_HEAP) - 1;
    struct lb_exp *e = exp_at(lb, h, i);
    uint64_t old = e->due_ms;
    e->due_ms = lb->conns[slot].expires_ms;
    if (e->due_ms < old)
        exp_sift_up_from(lb, h, i, *e);
    else
        exp_sift_down(lb, h, i);
    exp_update_next(lb);
}

void lb_conn_expiry_earlier(lb_t *lb, struct lb_conn *c)
{
    uint32_t slot = (uint32_t)(c - lb->conns);
    uint32_t pos = lb->exp_pos[slot];
    lb_conn_dirty(lb, slot);
    if (pos && c->expires_ms < exp_at(lb, (pos & EXP_POS_HEAP) ? 1 : 0, (pos & ~EXP_POS_HEAP) - 1)->due_ms)
        exp_rekey(lb, slot);
}

void lb_conn_changed(lb_t *lb, struct lb_conn *c)
{
    uint32_t slot = (uint32_t)(c - lb->conns);
    uint32_t pos = lb->exp_pos[slot];
    lb_conn_dirty(lb, slot);
    if (!pos)
        return;
    int want = lb_conn_droppable(c) ? LB_EXP_DROP : LB_EXP_KEEP;
    if (((pos & EXP_POS_HEAP) ? 1 : 0) == want)
        return;
    struct lb_exp e = exp_remove(lb, slot); /* keeps its key and creation order */
    exp_push_elem(lb, want, e);
}

static void chain_insert(lb_t *lb, uint32_t slot, int dir)
{
    struct lb_conn *c = &lb->conns[slot];
    uint32_t b = conn_bucket(lb, c, dir);
    c->hnext[dir] = lb->buckets[b];
    lb->buckets[b] = LINK(slot, dir);
}

static void chain_remove(lb_t *lb, uint32_t slot, int dir)
{
    struct lb_conn *c = &lb->conns[slot];
    uint32_t want = LINK(slot, dir);
    uint32_t *link = &lb->buckets[conn_bucket(lb, c, dir)];
    while (*link && *link != want)
        link = &lb->conns[LINK_SLOT(*link)].hnext[LINK_DIR(*link)];
    if (*link == want)
        *link = c->hnext[dir];
}

/* Unlink slot `idx`, drop its references and put it on the free list. */
static void conn_release(lb_t *lb, uint32_t idx)
{
    struct lb_conn *c = &lb->conns[idx];
    if (LB_UNLIKELY(c->xdp_fp) && lb->fp_ops)
        lb->fp_ops->flow_del(lb->fp_arg, lb, c); /* first: it credits the flow's last packets to c's destination */
    exp_remove(lb, idx);
    chain_remove(lb, idx, LB_DIR_IN);
    if (!(c->flags & LB_CF_TEMPLATE)) {
        const struct lb_xmit_ops *m = lb_conn_xmit(c);
        if (c->ctl)
            lb->conns[c->ctl].n_control--; /* templates outlive the connections they control */
        if (m->xmit_out)
            chain_remove(lb, idx, LB_DIR_OUT); /* needs c->dest: remove before unbinding */
        if (m->release) {
            struct lb_conn_bind b = {c->oaddr_n, c->oport, c->xmit_priv, lb_conn_rport_n(c)};
            m->release(lb, c->proto, c->dest, &b);
        }
    }
    if (c->flags & (LB_CF_SYNPROXY | LB_CF_PROXY))
        lb_sp_release(lb, idx);
    if (c->dest)
        lb_dest_unbind(lb, c->dest, c);
    memset(c, 0, sizeof(*c));
    c->hnext[0] = lb->free_head;
    lb->free_head = idx;
    lb->conn_count--;
    lb_conn_dirty(lb, idx);
}

void lb_conn_expire_now(lb_t *lb, struct lb_conn *c)
{
    conn_release(lb, (uint32_t)(c - lb->conns));
}

/* The heap whose top comes first (-1: both empty). */
static int exp_first_heap(lb_t *lb)
{
    if (!lb->exp_len[LB_EXP_DROP])
        return lb->exp_len[LB_EXP_KEEP] ? LB_EXP_KEEP : -1;
    if (!lb->exp_len[LB_EXP_KEEP])
        return LB_EXP_DROP;
    return exp_less(exp_at(lb, LB_EXP_DROP, 0), exp_at(lb, LB_EXP_KEEP, 0)) ? LB_EXP_DROP : LB_EXP_KEEP;
}

void lb_conn_tick(lb_t *lb, uint64_t now_ms)
{
    while (lb->exp_next_ms <= now_ms) {
        int h = exp_first_heap(lb);
        struct lb_exp top = *exp_at(lb, h, 0);
        struct lb_conn *c = &lb->conns[top.slot];
        if (c->expires_ms > top.due_ms) {
            exp_rekey(lb, top.slot); /* the key lagged: packets pushed the expiry later */
            continue;
        }
        if ((c->flags & LB_CF_TEMPLATE) && c->n_control) {
            /* IPVS: a template controlling connections does not expire; its timer restarts. */
            c->expires_ms = top.due_ms + c->tmpl_timeout_ms;
            exp_rekey(lb, top.slot);
            lb_conn_dirty(lb, top.slot);
            continue;
        }
        conn_release(lb, top.slot);
    }
}

/* Early drop: release the droppable entry that expires first (the older at equal times). Its key
 * may lag (packets pushed its expiry later): refreshed until the top's key is its expiry, the top is
 * the true first (every other key is at most its entry's expiry). Returns 1 if one went. */
static int conn_early_drop(lb_t *lb)
{
    while (lb->exp_len[LB_EXP_DROP]) {
        struct lb_exp top = *exp_at(lb, LB_EXP_DROP, 0);
        if (lb->conns[top.slot].expires_ms > top.due_ms) {
            exp_rekey(lb, top.slot);
            continue;
        }
        conn_release(lb, top.slot);
        lb->early_drops++;
        return 1;
    }
    return 0;
}

struct lb_conn *lb_conn_lookup(lb_t *lb, uint8_t proto, uint32_t saddr, uint16_t sport,
                               uint32_t daddr, uint16_t dport, uint64_t now_ms, int *dir)
{
    return lb_conn_lookup_inline(lb, proto, saddr, sport, daddr, dport, now_ms, dir);
}

struct lb_conn *lb_tmpl_lookup(lb_t *lb, uint8_t proto, uint32_t snet, uint32_t vaddr, uint16_t vport,
                               uint64_t now_ms)
{
    uint32_t link = lb->buckets[tuple_hash(lb, proto, lb_key_addrs(snet, vaddr), lb_key_ports(0, vport))];
    while (link) {
        uint32_t slot = LINK_SLOT(link);
        struct lb_conn *c = &lb->conns[slot];
        link = c->hnext[LINK_DIR(link)];
        if ((c->flags & (LB_CF_TEMPLATE | LB_CF_TMPL_DEAD)) == LB_CF_TEMPLATE && c->proto == proto &&
            c->caddr == snet && c->vaddr == vaddr && c->vport == vport && c->cport == 0) {
            if (now_ms >= c->expires_ms)
                return NULL; /* dead; lb_conn_tick releases it */
            return c;
        }
    }
    return NULL;
}

/* A zeroed slot from the free list or the never-used tail; when the table is full and the caller
 * is a packet (may_evict), the slot early drop frees; NULL when there is none. */
static struct lb_conn *conn_alloc(lb_t *lb, int may_evict)
{
    uint32_t idx;
    if (lb->conn_count >= lb->conn_max && !(may_evict && conn_early_drop(lb)))
        return NULL;
    if (lb->free_head) {
        idx = lb->free_head;
        lb->free_head = lb->conns[idx].hnext[0];
    } else if (lb->hwm <= lb->conn_max) {
        idx = lb->hwm++;
    } else {
        return NULL;
    }
    struct lb_conn *c = &lb->conns[idx];
    memset(c, 0, sizeof(*c));
    return c;
}

struct lb_conn *lb_tmpl_new(lb_t *lb, uint8_t proto, uint32_t snet, uint32_t vaddr, uint16_t vport,
                            struct lb_dest *dest, uint32_t timeout_ms, uint64_t now_ms, int may_evict)
{
    struct lb_conn *t = conn_alloc(lb, may_evict);
    if (!t)
        return NULL;
    uint32_t idx = (uint32_t)(t - lb->conns);
    lb_sync_entry_new(lb, idx, now_ms);
    t->caddr = snet; /* client port 0 */
    t->vaddr = vaddr;
    t->vport = vport;
    t->proto = proto;
    t->state = LB_S_NONE;
    t->flags = LB_CF_USED | LB_CF_TEMPLATE; /* no forwarding method: templates never carry packets */
    t->tmpl_timeout_ms = timeout_ms;
    t->expires_ms = now_ms + timeout_ms;
    lb_dest_bind(dest, t); /* counted in persistconns (ip_vs_bind_dest) */
    chain_insert(lb, idx, LB_DIR_IN);
    exp_push(lb, idx);
    lb->conn_count++;
    lb_conn_dirty(lb, idx);
    return t;
}

void lb_tmpl_invalidate(lb_t *lb, struct lb_conn *t)
{
    t->flags |= LB_CF_TMPL_DEAD;
    if (!t->n_control)
        conn_release(lb, (uint32_t)(t - lb->conns));
}

struct lb_conn *lb_conn_new(lb_t *lb, const struct lb_pkt *p, struct lb_dest *dest, const struct lb_conn_bind *b,
                            uint64_t now_ms, int may_evict)
{
    struct lb_conn *c = conn_alloc(lb, may_evict);
    if (!c)
        return NULL;
    uint32_t idx = (uint32_t)(c - lb->conns);
    lb_sync_entry_new(lb, idx, now_ms);
    const struct lb_xmit_ops *m = lb_xmit_methods[dest->conf.fwd]; /* validated when dest was configured */
    c->caddr = p->saddr;
    c->vaddr = p->daddr;
    c->cport = p->sport;
    c->vport = p->dport;
    c->proto = p->proto;
    c->syn_seq = p->tcp_seq;
    c->state = p->proto == LB_PROTO_UDP ? LB_S_UDP : LB_S_NONE;
    c->fwd = (uint8_t)dest->conf.fwd;
    /* Every new connection starts INACTIVE, as the kernel's dest->conn_flags has it. */
    c->flags = (uint16_t)(LB_CF_USED | LB_CF_INACTIVE);
    if (!m->xmit_out)
        c->flags |= LB_CF_NOOUTPUT; /* the director sees only the client's side */
    if (lb_dest_rport_is_client(dest))
        c->flags |= LB_CF_RPORT_CLIENT; /* before its reply tuple is hashed: the tuple holds that port */
    c->oaddr_n = b->oaddr_n;
    c->oport = b->oport_n;
    c->xmit_priv = b->priv;
    c->expires_ms = now_ms + lb_conn_timeout_ms(lb, c);
    lb_dest_bind(dest, c);
    chain_insert(lb, idx, LB_DIR_IN);
    if (m->xmit_out)
        chain_insert(lb, idx, LB_DIR_OUT);
    exp_push(lb, idx);
    lb->conn_count++;
    lb_conn_dirty(lb, idx);
    return c;
}

void lb_conn_flush(lb_t *lb)
{
    for (uint32_t i = 1; i < lb->hwm; i++)
        if (lb->conns[i].flags & LB_CF_USED)
            conn_release(lb, i);
}

int lb_expire(lb_t *lb, uint64_t now_ms, uint32_t budget LB_UNUSED)
{
    pthread_mutex_lock(&lb->lock);
    uint32_t before = lb->conn_count;
    lb_conn_tick(lb, now_ms);
    int freed = (int)(before - lb->conn_count);
    lb_sched_tick_all(lb, now_ms); /* schedulers' periodic work (lb_sched.h) */
    pthread_mutex_unlock(&lb->lock);
    return freed;
}

uint32_t lb_conn_count(lb_t *lb)
{
    pthread_mutex_lock(&lb->lock);
    uint32_t n = lb->conn_count;
    pthread_mutex_unlock(&lb->lock);
    return n;
}

uint32_t lb_conn_max(lb_t *lb) { return lb->conn_max; }
uint32_t lb_hash_buckets(lb_t *lb) { return lb->hash_mask + 1; }

/* Fill o from the live entry in slot i. */
static void conn_info(const lb_t *lb, uint32_t i, uint64_t now_ms, struct lb_conn_info *o)
{
    const struct lb_conn *c = &lb->conns[i];
    memset(o, 0, sizeof(*o));
    o->slot = i;
    o->proto = c->proto;
    o->state = c->state;
    o->flags = c->flags & (LB_CONN_F_INACTIVE | LB_CONN_F_NOOUTPUT | LB_CONN_F_TOA_DONE | LB_CONN_F_TEMPLATE |
                           LB_CONN_F_SYNPROXY | LB_CONN_F_ASSURED | LB_CONN_F_PROXY);
    o->caddr = lb_ntohl(c->caddr);
    o->cport = lb_ntohs(c->cport);
    o->vaddr = lb_ntohl(c->vaddr);
    o->vport = lb_ntohs(c->vport);
    o->daddr = c->dest ? c->dest->conf.addr : 0;
    o->dport = c->dest ? c->dest->conf.port : 0;
    if (c->dest && (!o->dport || (c->dest->svc && !c->dest->svc->conf.port && c->dest->svc->conf.persist_timeout_s)))
        /* a persistent port-zero or fwmark service: the real server's port is the client's
         * (ip_vs_sched_persist), its templates cover every port (0); a destination without a
         * port takes the client's too (ip_vs_schedule) */
        o->dport = (c->flags & LB_CF_TEMPLATE) ? 0 : o->vport;
    if (!(c->flags & LB_CF_TEMPLATE) && lb_conn_xmit(c)->conn_dump)
        lb_conn_xmit(c)->conn_dump(c, o); /* the method's fields (FULLNAT: laddr, lport) */
    o->expires_in_ms = (int64_t)(c->expires_ms - now_ms);
}

static inline int conn_live(const lb_t *lb, uint32_t i, uint64_t now_ms)
{
    const struct lb_conn *c = &lb->conns[i];
    return (c->flags & LB_CF_USED) && now_ms < c->expires_ms;
}

int lb_conn_dump(lb_t *lb, uint64_t now_ms, struct lb_conn_info *out, uint32_t cap, uint32_t *cursor)
{
    if (!out || !cursor)
        return LB_EINVAL;
    pthread_mutex_lock(&lb->lock);
    uint32_t n = 0;
    uint32_t i = *cursor ? *cursor : 1;
    for (; i < lb->hwm && n < cap; i++)
        if (conn_live(lb, i, now_ms))
            conn_info(lb, i, now_ms, &out[n++]);
    *cursor = i;
    pthread_mutex_unlock(&lb->lock);
    return (int)n;
}

/* One step of a pass over a set of change marks (the journal's or the sync's): see lb_api.h. */
static int dump_marked(lb_t *lb, uint64_t *dirty, uint64_t *dirty_sum, int sync, uint64_t now_ms,
                       struct lb_conn_info *out, uint32_t cap, uint32_t *cursor)
{
    if (!out || !cursor || cap < 64)
        return LB_EINVAL; /* room for one word's slots at least: a word is reported whole */
    pthread_mutex_lock(&lb->lock);
    uint32_t n = 0;
    uint32_t words = (lb->conn_max + 1 + 63) / 64;
    uint32_t w = *cursor / 64; /* the cursor is always a word boundary (a word is reported whole) */
    while (w < words && n + 64 <= cap) {
        uint64_t sum = dirty_sum[w / 64] >> (w % 64);
        if (!sum) {
            w = (w / 64 + 1) * 64; /* nothing marked in the rest of this group of 64 words */
            continue;
        }
        w += (uint32_t)__builtin_ctzll(sum);
        if (w >= words)
            break;
        uint64_t bits = dirty[w];
        dirty[w] = 0;
        dirty_sum[w / 64] &= ~(1ull << (w % 64));
        while (bits) {
            uint32_t slot = w * 64 + (uint32_t)__builtin_ctzll(bits);
            bits &= bits - 1;
            if (slot == 0)
                continue;
            if (conn_live(lb, slot, now_ms)) {
                conn_info(lb, slot, now_ms, &out[n]);
                if (sync && lb->csync && lb->csync[slot].want)
                    out[n].flags |= LB_CONN_F_SYNC_WANT; /* chosen by a packet (sync.c) */
                n++;
            } else {
                memset(&out[n], 0, sizeof(out[n])); /* gone (or dead, soon reaped): proto 0 */
                out[n++].slot = slot;
            }
            if (sync && lb->csync)
                lb->csync[slot].want = 0;
        }
        w++;
    }
    *cursor = w < words ? w * 64 : 0; /* 0: the pass is complete */
    pthread_mutex_unlock(&lb->lock);
    return (int)n;
}

int lb_conn_dump_changes(lb_t *lb, uint64_t now_ms, struct lb_conn_info *out, uint32_t cap, uint32_t *cursor)
{
    return dump_marked(lb, lb->dirty, lb->dirty_sum, 0, now_ms, out, cap, cursor);
}

int lb_conn_dump_sync_changes(lb_t *lb, uint64_t now_ms, struct lb_conn_info *out, uint32_t cap, uint32_t *cursor)
{
    return dump_marked(lb, lb->sync_dirty, lb->sync_dirty_sum, 1, now_ms, out, cap, cursor);
}

void lb_conn_changes_reset(lb_t *lb)
{
    pthread_mutex_lock(&lb->lock);
    uint32_t words = (lb->conn_max + 1 + 63) / 64;
    memset(lb->dirty, 0, (size_t)words * sizeof(*lb->dirty));
    memset(lb->dirty_sum, 0, (size_t)((words + 63) / 64) * sizeof(*lb->dirty_sum));
    pthread_mutex_unlock(&lb->lock);
}

void lb_conn_sync_changes_reset(lb_t *lb)
{
    pthread_mutex_lock(&lb->lock);
    uint32_t words = (lb->conn_max + 1 + 63) / 64;
    memset(lb->sync_dirty, 0, (size_t)words * sizeof(*lb->sync_dirty));
    memset(lb->sync_dirty_sum, 0, (size_t)((words + 63) / 64) * sizeof(*lb->sync_dirty_sum));
    pthread_mutex_unlock(&lb->lock);
}

void lb_conn_stats(lb_t *lb, struct lb_conn_stats *out)
{
    if (!out)
        return;
    pthread_mutex_lock(&lb->lock);
    memset(out, 0, sizeof(*out));
    out->entries = lb->conn_count;
    out->max = lb->conn_max;
    out->buckets = lb->hash_mask + 1;
    out->droppable = lb->exp_len[LB_EXP_DROP];
    out->early_drops = lb->early_drops;
    pthread_mutex_unlock(&lb->lock);
}
