/*
 * xmit_fnat.c - FULLNAT (DPVS conventions): both addresses rewritten.
 *
 *   IN  (client -> VIP):  CIP:cport -> VIP:vport  becomes  LIP:lport -> RIP:rport,
 *                         sent on the destination's L2 path (LB_V_XMIT_L2).
 *   OUT (server -> LIP):  RIP:rport -> LIP:lport  becomes  VIP:vport -> CIP:cport,
 *                         sent through the kernel's IP output (LB_V_ANSWER).
 *
 * The director routes these packets itself, so it decrements the TTL (and
 * drops a packet whose TTL would reach 0). Checksums are updated
 * incrementally (RFC 1624); a UDP checksum of 0 (none) stays 0.
 *
 * TOA (service flag LB_SVC_F_TOA): the client's address and port travel to the
 * real server in TCP option 254 (length 8) added to the client's first ACK
 * without SYN (the one that completes the handshake, which the real server's
 * TOA module reads), or to the next packet if that one has no room (header
 * already 60 bytes, or the path MTU). To leave room in full-sized segments the
 * MSS the real server announces in its SYN-ACK is lowered by 8 on the way out (by the
 * longest header for the PROXY protocol, which proxyproto.c inserts after this rewrite).
 *
 * What is FULLNAT's own: the service's local address pool (per-service state in
 * s->xmit_data[LB_FWD_FULLNAT], created with the first address, lb_laddr_add/del/list), the
 * choice of a local address and port for each new connection (its reply tuple
 * RIP:rport -> LIP:lport), the reference each connection holds on its local address (a deleted
 * address lives on until its last connection goes), and the ICMP translation both ways.
 *
 * Local addresses: the pool is a ring; starting at the ring cursor, each address takes the first
 * port at or after its own cursor (wrapping in lport_min..lport_max) whose reply tuple is not a
 * live connection's, and its cursor moves past it; the ring cursor then moves past the address
 * used. An address without a free port is passed over (its cursor stays). An address's cursor
 * starts at a seeded offset, so a restarted director does not reuse the tuples its predecessor
 * left in TIME_WAIT on the real servers.
 *
 * Which ports are taken is kept per (protocol, real server address and port, local address) in
 * a two-level bitmap (struct lport_map: a bit per port, a bit per full word), created with the
 * first connection of that tuple and freed with the last, in one hash per instance. So finding a
 * free port, or finding there is none, costs a hash lookup and at most a few dozen word reads per
 * local address, whatever the range and however full: a refused SYN costs about what an accepted
 * one does (bench cost), exactly when an attacker exhausts the pool.
 */
#include <stdlib.h>
#include <string.h>

#include "lb_xmit.h"

/* ---------------------------------------------------------------- taken ports */

#define LPORT_WORDS 1024u        /* 65536 ports / 64 */
#define LPORT_GROUPS 16u         /* LPORT_WORDS / 64 */

/* The ports taken towards one real server from one local address. */
struct lport_map {
    struct lport_map *next;      /* hash chain */
    uint32_t raddr_n, laddr_n;
    uint16_t rport_n;
    uint8_t proto;
    uint32_t used;               /* bits set in `bits`; the map is freed at 0 */
    uint64_t full[LPORT_GROUPS]; /* bit w: bits[w] is all ones */
    uint64_t bits[LPORT_WORDS];  /* bit p: port p (host order) taken */
};

/* Every map of an instance (lb->xmit_state[LB_FWD_FULLNAT]), chained by a hash that doubles its
 * buckets when the maps outnumber them. */
struct lport_maps {
    struct lport_map **buckets;
    uint32_t mask;
    uint32_t count;
};

static inline uint32_t lport_hash(uint8_t proto, uint32_t raddr_n, uint16_t rport_n, uint32_t laddr_n)
{
    uint64_t h = ((uint64_t)raddr_n << 32 | laddr_n) * 0x9E3779B97F4A7C15ull ^
                 ((uint64_t)rport_n << 8 | proto) * 0xC2B2AE3D27D4EB4Full;
    return (uint32_t)(h ^ (h >> 29) ^ (h >> 41));
}

static struct lport_map **lport_slot(struct lport_maps *ms, uint8_t proto, uint32_t raddr_n, uint16_t rport_n,
                                     uint32_t laddr_n)
{
    struct lport_map **pp = &ms->buckets[lport_hash(proto, raddr_n, rport_n, laddr_n) & ms->mask];
    while (*pp && !((*pp)->raddr_n == raddr_n && (*pp)->laddr_n == laddr_n && (*pp)->rport_n == rport_n &&
                    (*pp)->proto == proto))
        pp = &(*pp)->next;
    return pp;
}

static struct lport_map *lport_find(lb_t *lb, uint8_t proto, const struct lb_dest *d, uint16_t rport_n,
                                    uint32_t laddr_n)
{
    struct lport_maps *ms = lb->xmit_state[LB_FWD_FULLNAT];
    return ms ? *lport_slot(ms, proto, d->addr_n, rport_n, laddr_n) : NULL;
}

static int lport_maps_grow(struct lport_maps *ms)
{
    uint32_t n = ms->buckets ? (ms->mask + 1) * 2 : 64;
    struct lport_map **b = calloc(n, sizeof(*b));
    if (!b)
        return -1;
    for (uint32_t i = 0; ms->buckets && i <= ms->mask; i++) {
        struct lport_map *m = ms->buckets[i];
        while (m) {
            struct lport_map *next = m->next;
            uint32_t h = lport_hash(m->proto, m->raddr_n, m->rport_n, m->laddr_n) & (n - 1);
            m->next = b[h];
            b[h] = m;
            m = next;
        }
    }
    free(ms->buckets);
    ms->buckets = b;
    ms->mask = n - 1;
    return 0;
}

/* The map of the tuple, created empty if needed; NULL when memory runs out. */
static struct lport_map *lport_get(lb_t *lb, uint8_t proto, const struct lb_dest *d, uint16_t rport_n,
                                   uint32_t laddr_n)
{
    struct lport_maps *ms = lb->xmit_state[LB_FWD_FULLNAT];
    if (!ms) {
        ms = calloc(1, sizeof(*ms));
        if (!ms || lport_maps_grow(ms) < 0) {
            free(ms);
            return NULL;
        }
        lb->xmit_state[LB_FWD_FULLNAT] = ms;
    }
    struct lport_map **pp = lport_slot(ms, proto, d->addr_n, rport_n, laddr_n);
    if (*pp)
        return *pp;
    if (ms->count >= ms->mask + 1) {
        if (lport_maps_grow(ms) < 0)
            return NULL;
        pp = lport_slot(ms, proto, d->addr_n, rport_n, laddr_n);
    }
    struct lport_map *m = calloc(1, sizeof(*m));
    if (!m)
        return NULL;
    m->raddr_n = d->addr_n;
    m->rport_n = rport_n;
    m->laddr_n = laddr_n;
    m->proto = proto;
    *pp = m;
    ms->count++;
    return m;
}

static inline int lport_taken(const struct lport_map *m, uint32_t port)
{
    return m && ((m->bits[port >> 6] >> (port & 63)) & 1u);
}

static void lport_set(struct lport_map *m, uint32_t port)
{
    uint32_t w = port >> 6;
    m->bits[w] |= 1ull << (port & 63);
    if (m->bits[w] == ~0ull)
        m->full[w >> 6] |= 1ull << (w & 63);
    m->used++;
}

static void lport_clear(lb_t *lb, uint8_t proto, const struct lb_dest *d, uint16_t rport_n, uint32_t laddr_n,
                        uint32_t port)
{
    struct lport_maps *ms = lb->xmit_state[LB_FWD_FULLNAT];
    struct lport_map **pp = ms ? lport_slot(ms, proto, d->addr_n, rport_n, laddr_n) : NULL;
    struct lport_map *m = pp ? *pp : NULL;
    if (!m || !lport_taken(m, port))
        return;
    uint32_t w = port >> 6;
    m->bits[w] &= ~(1ull << (port & 63));
    m->full[w >> 6] &= ~(1ull << (w & 63));
    if (--m->used == 0) {
        *pp = m->next;
        ms->count--;
        free(m);
    }
}

/* The first port in from..to (host order, from <= to) not taken in m; -1 when every one is. At most
 * LPORT_GROUPS summary words and two port words are read. */
static int32_t lport_first_free(const struct lport_map *m, uint32_t from, uint32_t to)
{
    if (!m)
        return (int32_t)from;
    uint32_t w = from >> 6, last = to >> 6;
    uint64_t free_bits = ~m->bits[w] & (~0ull << (from & 63));
    while (!free_bits) {
        if (++w > last)
            return -1;
        /* The next word that is not full, from the summary. */
        uint32_t g = w >> 6;
        uint64_t open = ~m->full[g] & (~0ull << (w & 63));
        while (!open) {
            if (++g >= LPORT_GROUPS || g * 64 > last)
                return -1;
            open = ~m->full[g];
        }
        w = g * 64 + (uint32_t)__builtin_ctzll(open);
        if (w > last)
            return -1;
        free_bits = ~m->bits[w];
    }
    uint32_t port = w * 64 + (uint32_t)__builtin_ctzll(free_bits);
    return port <= to ? (int32_t)port : -1;
}

static void fnat_done(lb_t *lb)
{
    struct lport_maps *ms = lb->xmit_state[LB_FWD_FULLNAT];
    if (!ms)
        return;
    for (uint32_t i = 0; i <= ms->mask; i++) {
        struct lport_map *m = ms->buckets[i];
        while (m) {
            struct lport_map *next = m->next;
            free(m);
            m = next;
        }
    }
    free(ms->buckets);
    free(ms);
    lb->xmit_state[LB_FWD_FULLNAT] = NULL;
}

/* A local address of a service. Referenced by the service's pool and by every connection using
 * it (their xmit_priv); freed at zero references. */
struct lb_laddr {
    uint32_t addr;               /* host order */
    uint32_t addr_n;             /* network order */
    uint32_t refcnt;             /* 1 while in the pool + 1 per connection */
    uint32_t conns;
    uint16_t next_port;          /* allocation cursor (host order) */
};

/* FULLNAT's per-service state: the local address pool. */
struct fnat_svc {
    struct lb_laddr **laddrs;    /* in the order added */
    uint32_t n;
    uint32_t cap;
    uint32_t rr;                 /* next pool index to try first */
};

static inline struct fnat_svc *fnat_of(const struct lb_svc *s) { return s->xmit_data[LB_FWD_FULLNAT]; }

static void laddr_put(struct lb_laddr *la)
{
    if (--la->refcnt == 0)
        free(la);
}

/* Full TCP checksum over the pseudo-header and segment at o. */
static void tcp_csum_full(uint8_t *o, uint32_t ihl, uint32_t tot_len)
{
    uint8_t *th = o + ihl;
    uint32_t tcp_len = tot_len - ihl;
    th[16] = th[17] = 0;
    uint32_t sum = lb_csum_partial(o + 12, 8, 0);
    sum += LB_PROTO_TCP;
    sum += tcp_len;
    sum = lb_csum_partial(th, tcp_len, sum);
    lb_put16(th + 16, lb_csum_fold(sum));
}

/* Insert the TOA option (client address and port) after the TCP options.
 * o holds a packet of p->len bytes; returns the new length, or 0 if no room. */
static uint32_t toa_insert(uint8_t *o, const struct lb_pkt *p, const struct lb_conn *c, uint32_t limit)
{
    uint32_t ihl = p->ihl, doff = p->tcp_doff;
    uint32_t new_len = p->len + LB_TOA_LEN;
    if (doff + LB_TOA_LEN > 60 || new_len > limit)
        return 0;
    uint32_t opt_end = ihl + doff;
    memmove(o + opt_end + LB_TOA_LEN, o + opt_end, p->len - opt_end);
    uint8_t *t = o + opt_end;
    t[0] = 254;
    t[1] = LB_TOA_LEN;
    memcpy(t + 2, &c->cport, 2);
    memcpy(t + 4, &c->caddr, 4);
    o[ihl + 12] = (uint8_t)((((doff + LB_TOA_LEN) / 4) << 4) | (o[ihl + 12] & 0x0f));
    lb_put16(o + 2, (uint16_t)new_len);
    o[10] = o[11] = 0;
    lb_put16(o + 10, lb_ip_csum(o, ihl));
    tcp_csum_full(o, ihl, new_len);
    return new_len;
}

/* Lower the MSS option of a SYN by `by` bytes (checksum updated). */
static void mss_lower(uint8_t *o, const struct lb_pkt *p, uint16_t by)
{
    uint8_t *th = o + p->l4off;
    uint32_t i = 20, at;
    uint8_t kind, len;
    while (lb_tcp_opt_next(th, p->tcp_doff, &i, &kind, &len, &at)) {
        if (kind == 2 && len == 4) {
            uint16_t mss = lb_get16(th + at + 2);
            if (mss > by + 536u) {
                uint16_t nmss = (uint16_t)(mss - by);
                lb_put16(th + at + 2, nmss);
                lb_csum_replace2(th + 16, mss, nmss);
            }
            return;
        }
    }
}

static int fnat_xmit_in(lb_t *lb, const struct lb_pkt *p, struct lb_conn *c, uint8_t *out,
                        uint32_t out_cap, struct lb_action *act)
{
    const struct lb_dest *d = c->dest;
    if (LB_UNLIKELY(!d->fwd)) {
        act->verdict = LB_V_DROP;
        return LB_R_NO_L2;
    }
    if (lb_xmit_copy(p, out, out_cap, act) < 0)
        return LB_R_MALFORMED;
    if (lb_xmit_rewrite(out, p, LB_XMIT_RW_SRC | LB_XMIT_RW_DST, c->oaddr_n, c->oport, d->addr_n,
                        lb_conn_rport_n(c)) < 0)
        return lb_xmit_ttl_exceeded(p, p->daddr, out, out_cap, act); /* from the VIP */
    uint32_t len = p->len;
    int reason = LB_R_FORWARDED;
    const struct lb_svc *s = d->svc;
    if (p->proto == LB_PROTO_TCP && s && (s->conf.flags & LB_SVC_F_TOA) && !(c->flags & LB_CF_TOA_DONE) &&
        (p->tcp_flags & (LB_TCP_SYN | LB_TCP_RST | LB_TCP_ACK)) == LB_TCP_ACK) {
        uint32_t mtu = d->fwd->conf.mtu ? d->fwd->conf.mtu : 1500;
        uint32_t limit = mtu < out_cap ? mtu : out_cap;
        uint32_t n = toa_insert(out, p, c, limit);
        if (n) {
            len = n;
            c->flags |= LB_CF_TOA_DONE;
            lb_conn_dirty(lb, (uint32_t)(c - lb->conns));
        } else {
            reason = LB_R_TOA_NO_ROOM;
        }
    }
    lb_xmit_l2_to(d, act);
    act->out_len = len;
    return reason;
}

static int fnat_xmit_out(lb_t *lb LB_UNUSED, const struct lb_pkt *p, struct lb_conn *c, uint8_t *out,
                         uint32_t out_cap, struct lb_action *act)
{
    if (lb_xmit_copy(p, out, out_cap, act) < 0)
        return LB_R_MALFORMED;
    const struct lb_svc *s = c->dest->svc;
    /* Room in the client's segments for what this service adds (TOA, or the PROXY header). */
    if (p->proto == LB_PROTO_TCP && s && lb_svc_room(s->conf.flags) && (p->tcp_flags & LB_TCP_SYN))
        mss_lower(out, p, lb_svc_room(s->conf.flags));
    if (lb_xmit_rewrite(out, p, LB_XMIT_RW_SRC | LB_XMIT_RW_DST, c->vaddr, c->vport, c->caddr, c->cport) < 0)
        return lb_xmit_ttl_exceeded(p, p->daddr, out, out_cap, act); /* to the real server, from the LIP */
    act->verdict = LB_V_ANSWER;
    act->out_len = p->len;
    return LB_R_FORWARDED;
}

/* ---------------------------------------------------------------- ICMP errors */

/* From the client's side, quoting VIP:vport -> CIP:cport: to the real server as LIP -> RIP,
 * quoting RIP:rport -> LIP:lport. */
static int fnat_icmp_in(lb_t *lb LB_UNUSED, const struct lb_pkt *p, struct lb_conn *c, uint8_t *out,
                        uint32_t out_cap LB_UNUSED, struct lb_action *act)
{
    return lb_icmp_to_dest(p, c, out, act, c->oaddr_n, c->oaddr_n, c->oport);
}

/* From the real server's side, quoting LIP:lport -> RIP:rport: to the client as VIP -> CIP,
 * quoting CIP:cport -> VIP:vport. */
static int fnat_icmp_out(lb_t *lb LB_UNUSED, const struct lb_pkt *p, struct lb_conn *c, uint8_t *out,
                         uint32_t out_cap LB_UNUSED, struct lb_action *act)
{
    return lb_icmp_to_client(p, c, out, act);
}

/* ---------------------------------------------------------------- connections */

static int fnat_conn_bind(lb_t *lb, struct lb_svc *s, const struct lb_dest *d, const struct lb_pkt *p,
                          uint64_t now_ms LB_UNUSED, struct lb_conn_bind *b)
{
    struct fnat_svc *fs = fnat_of(s);
    uint32_t n = fs ? fs->n : 0;
    /* The real server's port of this connection: the destination's, or the client's (a port-zero or
     * fwmark service, lb_dest_rport_is_client); the local ports are taken per that port. */
    uint16_t rport_n = lb_dest_rport_is_client(d) ? p->dport : d->port_n;
    for (uint32_t k = 0; k < n; k++) {
        struct lb_laddr *la = fs->laddrs[(fs->rr + k) % n];
        uint32_t start = la->next_port;
        if (start < lb->lport_min || start > lb->lport_max)
            start = lb->lport_min;
        /* Never reuse a live (proto, RIP, RPORT, LIP, LPORT) tuple. */
        const struct lport_map *taken = lport_find(lb, p->proto, d, rport_n, la->addr_n);
        int32_t port = lport_first_free(taken, start, lb->lport_max);
        if (port < 0 && start > lb->lport_min)
            port = lport_first_free(taken, lb->lport_min, start - 1);
        if (port < 0)
            continue; /* every port of this address is taken towards d */
        struct lport_map *m = lport_get(lb, p->proto, d, rport_n, la->addr_n);
        if (!m)
            return LB_R_NO_LADDR; /* out of memory: as good as exhausted */
        lport_set(m, (uint32_t)port);
        la->next_port = (uint16_t)(port == lb->lport_max ? lb->lport_min : port + 1);
        fs->rr = (fs->rr + k + 1) % n;
        la->refcnt++;
        la->conns++;
        b->oaddr_n = la->addr_n;
        b->oport_n = lb_htons((uint16_t)port);
        b->priv = la;
        b->rport_n = rport_n;
        return LB_R_FORWARDED;
    }
    return LB_R_NO_LADDR;
}

static int find_laddr_idx(const struct fnat_svc *fs, uint32_t addr)
{
    for (uint32_t i = 0; fs && i < fs->n; i++)
        if (fs->laddrs[i]->addr == addr)
            return (int)i;
    return -1;
}

static int fnat_conn_restore(lb_t *lb, struct lb_svc *s, const struct lb_dest *d, const struct lb_conn_info *ci,
                             uint64_t now_ms LB_UNUSED, struct lb_conn_bind *b)
{
    struct fnat_svc *fs = fnat_of(s);
    int i = find_laddr_idx(fs, ci->laddr);
    if (i < 0)
        return LB_ENOENT;
    struct lb_laddr *la = fs->laddrs[i];
    uint16_t port_n = lb_htons(ci->lport);
    uint16_t rport_n = lb_dest_rport_is_client(d) ? lb_htons(ci->vport) : d->port_n; /* as lb_conn_rport_n */
    if (lport_taken(lport_find(lb, ci->proto, d, rport_n, la->addr_n), ci->lport))
        return LB_EEXIST;
    struct lport_map *m = lport_get(lb, ci->proto, d, rport_n, la->addr_n);
    if (!m)
        return LB_ENOMEM;
    lport_set(m, ci->lport);
    la->refcnt++;
    la->conns++;
    b->oaddr_n = la->addr_n;
    b->oport_n = port_n;
    b->priv = la;
    b->rport_n = rport_n;
    return LB_OK;
}

static void fnat_release(lb_t *lb, uint8_t proto, const struct lb_dest *d, const struct lb_conn_bind *b)
{
    struct lb_laddr *la = b->priv;
    lport_clear(lb, proto, d, b->rport_n, b->oaddr_n, lb_ntohs(b->oport_n));
    la->conns--;
    laddr_put(la);
}

static void fnat_conn_dump(const struct lb_conn *c, struct lb_conn_info *o)
{
    o->laddr = lb_ntohl(c->oaddr_n);
    o->lport = lb_ntohs(c->oport);
}

static void fnat_svc_done(lb_t *lb LB_UNUSED, struct lb_svc *s)
{
    struct fnat_svc *fs = fnat_of(s);
    if (!fs)
        return;
    for (uint32_t i = 0; i < fs->n; i++)
        laddr_put(fs->laddrs[i]); /* connections keep theirs until they expire */
    free(fs->laddrs);
    free(fs);
    s->xmit_data[LB_FWD_FULLNAT] = NULL;
}

const struct lb_xmit_ops lb_xmit_fnat = {
    .name = "fullnat",
    .flags = LB_XMIT_F_SYNPROXY | LB_XMIT_F_NEEDS_ENTRY,
    .xmit_in = fnat_xmit_in,
    .xmit_out = fnat_xmit_out,
    .icmp_in = fnat_icmp_in,
    .icmp_out = fnat_icmp_out,
    .conn_bind = fnat_conn_bind,
    .conn_restore = fnat_conn_restore,
    .release = fnat_release,
    .conn_dump = fnat_conn_dump,
    .svc_done = fnat_svc_done,
    .done = fnat_done,
};

/* ---------------------------------------------------------------- the local address pool (DPVS -P/-Q) */

int lb_laddr_add(lb_t *lb, uint8_t proto, uint32_t vaddr, uint16_t vport, uint32_t laddr)
{
    int err = LB_OK;
    pthread_mutex_lock(&lb->lock);
    struct lb_svc *s = lb_svc_find_host(lb, proto, vaddr, vport);
    struct fnat_svc *fs = s ? fnat_of(s) : NULL;
    if (!s) {
        err = LB_ESRCH;
        goto out;
    }
    if (laddr == 0 || laddr == 0xffffffffu) {
        err = LB_EINVAL;
        goto out;
    }
    if (find_laddr_idx(fs, laddr) >= 0) {
        err = LB_EEXIST;
        goto out;
    }
    if (!fs) {
        fs = calloc(1, sizeof(*fs));
        if (!fs) {
            err = LB_ENOMEM;
            goto out;
        }
        s->xmit_data[LB_FWD_FULLNAT] = fs; /* an empty pool is a valid state: kept until the service goes */
    }
    if (fs->n == fs->cap) {
        uint32_t cap = fs->cap ? fs->cap * 2 : 4;
        struct lb_laddr **n = realloc(fs->laddrs, cap * sizeof(*n));
        if (!n) {
            err = LB_ENOMEM;
            goto out;
        }
        fs->laddrs = n;
        fs->cap = cap;
    }
    struct lb_laddr *la = calloc(1, sizeof(*la));
    if (!la) {
        err = LB_ENOMEM;
        goto out;
    }
    la->addr = laddr;
    la->addr_n = lb_htonl(laddr);
    la->refcnt = 1;
    uint32_t range = (uint32_t)lb->lport_max - lb->lport_min + 1;
    la->next_port = (uint16_t)(lb->lport_min + (uint32_t)((laddr * 0x9E3779B1u + (uint32_t)lb->seed0) % range));
    fs->laddrs[fs->n++] = la;
out:
    pthread_mutex_unlock(&lb->lock);
    return err;
}

int lb_laddr_del(lb_t *lb, uint8_t proto, uint32_t vaddr, uint16_t vport, uint32_t laddr)
{
    int err = LB_OK;
    pthread_mutex_lock(&lb->lock);
    struct lb_svc *s = lb_svc_find_host(lb, proto, vaddr, vport);
    struct fnat_svc *fs = s ? fnat_of(s) : NULL;
    int i = find_laddr_idx(fs, laddr);
    if (!s) {
        err = LB_ESRCH;
    } else if (i < 0) {
        err = LB_ENOENT;
    } else {
        struct lb_laddr *la = fs->laddrs[i];
        memmove(&fs->laddrs[i], &fs->laddrs[i + 1], (fs->n - (uint32_t)i - 1) * sizeof(*fs->laddrs));
        fs->n--;
        if (fs->n == 0 || fs->rr >= fs->n)
            fs->rr = 0;
        laddr_put(la); /* its connections keep it until they expire */
    }
    pthread_mutex_unlock(&lb->lock);
    return err;
}

int lb_laddr_list(lb_t *lb, uint8_t proto, uint32_t vaddr, uint16_t vport, struct lb_laddr_info *out, uint32_t cap)
{
    pthread_mutex_lock(&lb->lock);
    const struct lb_svc *s = lb_svc_find_host(lb, proto, vaddr, vport);
    const struct fnat_svc *fs = s ? fnat_of(s) : NULL;
    int ret = s ? (int)(fs ? fs->n : 0) : LB_ESRCH;
    for (uint32_t i = 0; fs && i < fs->n && i < cap && out; i++) {
        out[i].addr = fs->laddrs[i]->addr;
        out[i].conns = fs->laddrs[i]->conns;
    }
    pthread_mutex_unlock(&lb->lock);
    return ret;
}
