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
 * Expiry is exact, as with kernel timers: every live entry has a key in an
 * indexed min-heap, and lb_conn_tick() (run at the start of every lb_process
 * and lb_expire) releases each entry whose time has come, in expiry order,
 * connections before templates at equal times. Packets only push an entry's
 * expiry later, so they just write expires_ms and leave the heap alone; a key
 * found early when it reaches the top is refreshed in place. Only a state
 * change that shortens the timeout moves a key earlier. So an established
 * flow's packets never touch the heap.
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
    uint32_t buckets = cfg && cfg->hash_buckets ? cfg->hash_buckets : LB_DEFAULT_HASH_BUCKETS;
    uint16_t pmin = cfg && cfg->lport_min ? cfg->lport_min : LB_DEFAULT_LPORT_MIN;
    uint16_t pmax = cfg && cfg->lport_max ? cfg->lport_max : LB_DEFAULT_LPORT_MAX;
    if (max > LB_CONN_MAX_LIMIT || buckets == 0 || (buckets & (buckets - 1)) != 0 || pmin > pmax)
        return LB_EINVAL;
    /* calloc: the whole pool starts zeroed; pages are only touched when used. */
    lb->conns = calloc((size_t)max + 1, sizeof(*lb->conns));
    lb->buckets = calloc(buckets, sizeof(*lb->buckets));
    lb->exp_heap = calloc((size_t)max + 1, sizeof(*lb->exp_heap));
    lb->exp_pos = calloc((size_t)max + 1, sizeof(*lb->exp_pos));
    if (!lb->conns || !lb->buckets || !lb->exp_heap || !lb->exp_pos) {
        lb_conn_table_free(lb);
        return LB_ENOMEM;
    }
    lb->conn_max = max;
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
    lb->conns = NULL;
    lb->buckets = NULL;
    lb->exp_heap = NULL;
    lb->exp_pos = NULL;
}

/* ---------------------------------------------------------------- expiry heap */

static inline int exp_less(const struct lb_exp *a, const struct lb_exp *b)
{
    return a->due_ms < b->due_ms || (a->due_ms == b->due_ms && a->tmpl < b->tmpl);
}

static inline void exp_place(lb_t *lb, uint32_t i, struct lb_exp e)
{
    lb->exp_heap[i] = e;
    lb->exp_pos[e.slot] = i + 1;
    if (i == 0)
        lb->exp_next_ms = e.due_ms;
}

/* Move e up from the hole at i (its slot's entry goes where the order puts it). */
static void exp_sift_up_from(lb_t *lb, uint32_t i, struct lb_exp e)
{
    while (i > 0) {
        uint32_t parent = (i - 1) / 2;
        if (!exp_less(&e, &lb->exp_heap[parent]))
            break;
        exp_place(lb, i, lb->exp_heap[parent]);
        i = parent;
    }
    exp_place(lb, i, e);
}

static void exp_sift_up(lb_t *lb, uint32_t i)
{
    exp_sift_up_from(lb, i, lb->exp_heap[i]);
}

static void exp_sift_down(lb_t *lb, uint32_t i)
{
    struct lb_exp e = lb->exp_heap[i];
    uint32_t n = lb->exp_len;
    for (;;) {
        uint32_t l = 2 * i + 1, r = l + 1, m = l;
        if (l >= n)
            break;
        if (r < n && exp_less(&lb->exp_heap[r], &lb->exp_heap[l]))
            m = r;
        if (!exp_less(&lb->exp_heap[m], &e))
            break;
        exp_place(lb, i, lb->exp_heap[m]);
        i = m;
    }
    exp_place(lb, i, e);
}

static void exp_push(lb_t *lb, uint32_t slot)
{
    const struct lb_conn *c = &lb->conns[slot];
    struct lb_exp e = {c->expires_ms, slot, (c->flags & LB_CF_TEMPLATE) ? 1u : 0u};
    exp_sift_up_from(lb, lb->exp_len++, e);
}

static void exp_remove(lb_t *lb, uint32_t slot)
{
    uint32_t pos = lb->exp_pos[slot];
    if (!pos)
        return;
    uint32_t i = pos - 1;
    lb->exp_pos[slot] = 0;
    if (--lb->exp_len == i) {
        if (i == 0)
            lb->exp_next_ms = UINT64_MAX;
        return;
    }
    /* Move the last element into the hole, then restore the order around it. */
    uint32_t moved = lb->exp_heap[lb->exp_len].slot;
    exp_place(lb, i, lb->exp_heap[lb->exp_len]);
    exp_sift_up(lb, i);
    exp_sift_down(lb, lb->exp_pos[moved] - 1);
}

/* Set slot's key to its entry's current expires_ms (later or earlier). */
static void exp_rekey(lb_t *lb, uint32_t slot)
{
    uint32_t pos = lb->exp_pos[slot];
    if (!pos)
        return;
    uint32_t i = pos - 1;
    uint64_t old = lb->exp_heap[i].due_ms;
    lb->exp_heap[i].due_ms = lb->conns[slot].expires_ms;
    lb->exp_heap[i].tmpl = (lb->conns[slot].flags & LB_CF_TEMPLATE) ? 1u : 0u;
    if (lb->exp_heap[i].due_ms < old)
        exp_sift_up(lb, i);
    else
        exp_sift_down(lb, i);
}

void lb_conn_expiry_earlier(lb_t *lb, struct lb_conn *c)
{
    uint32_t slot = (uint32_t)(c - lb->conns);
    uint32_t pos = lb->exp_pos[slot];
    if (pos && c->expires_ms < lb->exp_heap[pos - 1].due_ms)
        exp_rekey(lb, slot);
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
    exp_remove(lb, idx);
    chain_remove(lb, idx, LB_DIR_IN);
    if (!(c->flags & LB_CF_TEMPLATE)) {
        const struct lb_xmit_ops *m = lb_conn_xmit(c);
        if (c->ctl)
            lb->conns[c->ctl].n_control--; /* templates outlive the connections they control */
        if (m->xmit_out)
            chain_remove(lb, idx, LB_DIR_OUT); /* needs c->dest: remove before unbinding */
        if (m->release)
            m->release(lb, c->xmit_priv);
    }
    if (c->flags & LB_CF_SYNPROXY)
        lb_sp_release(lb, idx);
    if (c->dest)
        lb_dest_unbind(lb, c->dest, c);
    memset(c, 0, sizeof(*c));
    c->hnext[0] = lb->free_head;
    lb->free_head = idx;
    lb->conn_count--;
}

void lb_conn_expire_now(lb_t *lb, struct lb_conn *c)
{
    conn_release(lb, (uint32_t)(c - lb->conns));
}

void lb_conn_tick(lb_t *lb, uint64_t now_ms)
{
    while (lb->exp_len && lb->exp_heap[0].due_ms <= now_ms) {
        struct lb_exp top = lb->exp_heap[0];
        struct lb_conn *c = &lb->conns[top.slot];
        if (c->expires_ms > top.due_ms) {
            exp_rekey(lb, top.slot); /* the key lagged: packets pushed the expiry later */
            continue;
        }
        if ((c->flags & LB_CF_TEMPLATE) && c->n_control) {
            /* IPVS: a template controlling connections does not expire; its timer restarts. */
            c->expires_ms = top.due_ms + c->tmpl_timeout_ms;
            exp_rekey(lb, top.slot);
            continue;
        }
        conn_release(lb, top.slot);
    }
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

/* A zeroed slot from the free list or the never-used tail; NULL when the table is full. */
static struct lb_conn *conn_alloc(lb_t *lb)
{
    uint32_t idx;
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
                            struct lb_dest *dest, uint32_t timeout_ms, uint64_t now_ms)
{
    struct lb_conn *t = conn_alloc(lb);
    if (!t)
        return NULL;
    uint32_t idx = (uint32_t)(t - lb->conns);
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
    return t;
}

void lb_tmpl_invalidate(lb_t *lb, struct lb_conn *t)
{
    t->flags |= LB_CF_TMPL_DEAD;
    if (!t->n_control)
        conn_release(lb, (uint32_t)(t - lb->conns));
}

struct lb_conn *lb_conn_new(lb_t *lb, const struct lb_pkt *p, struct lb_dest *dest, const struct lb_conn_bind *b,
                            uint64_t now_ms)
{
    struct lb_conn *c = conn_alloc(lb);
    if (!c)
        return NULL;
    uint32_t idx = (uint32_t)(c - lb->conns);
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

int lb_conn_dump(lb_t *lb, uint64_t now_ms, struct lb_conn_info *out, uint32_t cap, uint32_t *cursor)
{
    if (!out || !cursor)
        return LB_EINVAL;
    pthread_mutex_lock(&lb->lock);
    uint32_t n = 0;
    uint32_t i = *cursor ? *cursor : 1;
    for (; i < lb->hwm && n < cap; i++) {
        const struct lb_conn *c = &lb->conns[i];
        if (!(c->flags & LB_CF_USED) || now_ms >= c->expires_ms)
            continue;
        struct lb_conn_info *o = &out[n++];
        memset(o, 0, sizeof(*o));
        o->proto = c->proto;
        o->state = c->state;
        o->flags = c->flags & (LB_CONN_F_INACTIVE | LB_CONN_F_NOOUTPUT | LB_CONN_F_TOA_DONE | LB_CONN_F_TEMPLATE |
                               LB_CONN_F_SYNPROXY | LB_CONN_F_ASSURED);
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
    *cursor = i;
    pthread_mutex_unlock(&lb->lock);
    return (int)n;
}
