/*
 * synproxy.c - SYN-proxy for FULLNAT services (DPVS/Alibaba LVS conventions),
 * with exponential backoff of the SYN towards the real server.
 *
 *  1. Client SYN: answered with a SYN-ACK whose ISN is a SYN cookie. No state.
 *  2. Client ACK: the cookie is validated; only then is a connection entry
 *     created, a real server scheduled and a SYN sent to it (at once, or when
 *     the client's first data arrives in defer mode).
 *  3. The SYN is retransmitted when no SYN-ACK arrives: after init_rto, then
 *     doubling up to max_rto, at most max_retries times; then the client gets
 *     a RST. Every retransmission is a freshly built packet handed to the
 *     adapter as an action of its own (so it is counted where it is sent).
 *     (The field report this answers: a fixed 3 s timer gave clients 3, 6 and
 *     9 s stalls, and retransmissions "sent" but never seen on the wire.)
 *  4. Real server's SYN-ACK: consumed; an ACK (carrying the client data held
 *     meanwhile, and TOA or the PROXY protocol header if the service uses one:
 *     proxyproto.c) completes its handshake. From
 *     then on sequence numbers are translated: the client lives in the cookie
 *     ISN's space, the real server in its own (d_in = rs_isn - cookie_isn is
 *     added to the client's ACK numbers and SACK edges, and subtracted from
 *     the real server's sequence numbers).
 *
 * SYN cookies (the supported subset, documented): the cookie keeps the
 * client's MSS (an index into {536, 1300, 1440, 1460}) and whether SACK is
 * used; window scaling and timestamps are not offered to either side, so
 * windows are unscaled. Layout as the kernel's: cookie = H1 + client_isn +
 * (minute << 24) + ((H2(minute) + data) & 0xffffff), with H1/H2 SipHash-2-4
 * of the 4-tuple under a key derived per 64-minute epoch from a master key
 * (rotation); a cookie is valid for 2 minutes.
 */
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "lb_sched.h"
#include "lb_siphash.h"
#include "lb_xmit.h"

#define SP_COOKIE_MAX_AGE_MIN 2u
#define SP_EPOCH_MIN 64u
#define SP_WINDOW 65535u         /* window announced in the cookie SYN-ACK (unscaled) */

static const uint16_t sp_msstab[4] = {536, 1300, 1440, 1460};

/* ---------------------------------------------------------------- SipHash-2-4 */

/* SipHash-2-4 of len bytes (lb_siphash.h: the rounds shared with sched_mh.c's hsiphash). */
uint64_t lb_siphash(const uint64_t key[2], const uint8_t *data, size_t len)
{
    struct lb_sip s;
    lb_sip_init(&s, key[0], key[1]);
    size_t i = 0;
    for (; i + 8 <= len; i += 8) {
        uint64_t m;
        memcpy(&m, data + i, 8);
        lb_sip_compress(&s, m, 2);
    }
    uint64_t b = (uint64_t)len << 56;
    for (size_t j = 0; i + j < len; j++)
        b |= (uint64_t)data[i + j] << (8 * j);
    lb_sip_compress(&s, b, 2);
    return lb_sip_final(&s, 4);
}

/* ---------------------------------------------------------------- configuration */

static const struct lb_synproxy_conf sp_builtin = {
    .init_rto_ms = LB_SP_INIT_RTO_MS_DEFAULT,
    .max_rto_ms = LB_SP_MAX_RTO_MS_DEFAULT,
    .max_retries = LB_SP_MAX_RETRIES_DEFAULT,
    .mss = LB_SP_MSS_DEFAULT,
    .sack = LB_SP_SACK_DEFAULT,
    .wscale = 0,
    .timestamps = 0,
    .defer = 0,
    .data_max_bytes = LB_SP_DATA_MAX_BYTES_DEFAULT,
    .ack_storm_max = LB_SP_ACK_STORM_MAX_DEFAULT,
};

int lb_sp_check_conf(const struct lb_synproxy_conf *c)
{
    if (!c)
        return LB_EINVAL;
    if (c->wscale || c->timestamps)
        return LB_EOPNOTSUPP; /* outside the supported subset (see the file comment) */
    if (c->init_rto_ms < 1 || c->max_rto_ms < c->init_rto_ms || c->max_rto_ms > LB_SP_RTO_MS_MAX ||
        c->max_retries > LB_SP_MAX_RETRIES_MAX)
        return LB_EINVAL;
    if (c->mss < LB_SP_MSS_MIN || c->mss > LB_SP_MSS_MAX || c->data_max_bytes > LB_SP_DATA_MAX_BYTES_MAX ||
        c->sack > 1 || c->defer > 1)
        return LB_EINVAL;
    return LB_OK;
}

const struct lb_synproxy_conf *lb_sp_conf(const lb_t *lb, const struct lb_svc *s)
{
    return s && s->sp_own ? &s->sp_conf : &lb->sp_default;
}

int lb_sp_enable(lb_t *lb)
{
    if (lb->sp)
        return LB_OK;
    /* calloc: zeroed; pages are only committed for slots actually used. */
    lb->sp = calloc((size_t)lb->conn_max + 1, sizeof(*lb->sp));
    lb->sp_heap = calloc((size_t)lb->conn_max + 1, sizeof(*lb->sp_heap));
    if (!lb->sp || !lb->sp_heap) {
        free(lb->sp);
        free(lb->sp_heap);
        lb->sp = NULL;
        lb->sp_heap = NULL;
        return LB_ENOMEM;
    }
    lb->sp_heap_cap = lb->conn_max + 1;
    lb->sp_heap_len = 0;
    if (lb->sp_default.init_rto_ms == 0)
        lb->sp_default = sp_builtin;
    /* The cookie master key: derived from the hash seed when one was given (tests and
     * differential runs need identical cookies), else random. */
    if (lb->seeded || getrandom(lb->sp_key, sizeof(lb->sp_key), 0) != sizeof(lb->sp_key)) {
        lb->sp_key[0] = lb->seed0 ^ 0x5bd1e9955bd1e995ull;
        lb->sp_key[1] = lb->seed1 ^ 0x27d4eb2f165667c5ull;
    }
    return LB_OK;
}

void lb_sp_free(lb_t *lb)
{
    if (lb->sp)
        for (uint32_t i = 1; i < lb->hwm; i++)
            free(lb->sp[i].held);
    free(lb->sp);
    free(lb->sp_heap);
    lb->sp = NULL;
    lb->sp_heap = NULL;
}

void lb_sp_release(lb_t *lb, uint32_t slot)
{
    if (!lb->sp)
        return;
    free(lb->sp[slot].held);
    memset(&lb->sp[slot], 0, sizeof(lb->sp[slot])); /* a stale heap entry no longer matches */
}

int lb_synproxy_set_default(lb_t *lb, const struct lb_synproxy_conf *conf)
{
    int err = lb_sp_check_conf(conf);
    if (err)
        return err;
    pthread_mutex_lock(&lb->lock);
    lb->sp_default = *conf;
    pthread_mutex_unlock(&lb->lock);
    return LB_OK;
}

void lb_synproxy_get_stats(lb_t *lb, struct lb_synproxy_stats *out)
{
    if (!out)
        return;
    pthread_mutex_lock(&lb->lock);
    *out = lb->sp_stats;
    pthread_mutex_unlock(&lb->lock);
}

/* ---------------------------------------------------------------- cookies */

struct sp_tuple {
    uint32_t saddr, daddr;
    uint16_t sport, dport;
    uint32_t extra;
};

static uint32_t cookie_hash(const lb_t *lb, const struct lb_pkt *p, uint32_t minute, uint32_t which)
{
    uint64_t key[2];
    uint32_t epoch = minute / SP_EPOCH_MIN;
    /* Per-epoch key, derived from the master key: rotation without new randomness. */
    uint8_t e[8];
    memcpy(e, &epoch, 4);
    memcpy(e + 4, &which, 4);
    key[0] = lb_siphash(lb->sp_key, e, sizeof(e));
    key[1] = lb->sp_key[1] ^ key[0];
    struct sp_tuple t = {p->saddr, p->daddr, p->sport, p->dport, which ? minute : 0};
    return (uint32_t)lb_siphash(key, (const uint8_t *)&t, sizeof(t));
}

static uint32_t cookie_make(const lb_t *lb, const struct lb_pkt *p, uint32_t client_isn, uint32_t minute,
                            uint32_t data)
{
    /* H1 uses the epoch of the minute too, so both hashes rotate together. */
    return cookie_hash(lb, p, minute, 0) + client_isn + (minute << 24) +
           ((cookie_hash(lb, p, minute, 1) + data) & 0xffffffu);
}

/* Returns the data bits (0..7) of a valid cookie, or -1. */
static int cookie_check(const lb_t *lb, const struct lb_pkt *p, uint32_t cookie, uint32_t client_isn, uint32_t now_min)
{
    for (uint32_t age = 0; age <= SP_COOKIE_MAX_AGE_MIN; age++) {
        if (now_min < age)
            break;
        uint32_t minute = now_min - age;
        uint32_t diff = cookie - cookie_hash(lb, p, minute, 0) - client_isn;
        if ((diff >> 24) != (minute & 0xffu))
            continue;
        uint32_t data = (diff - cookie_hash(lb, p, minute, 1)) & 0xffffffu;
        if (data < 8)
            return (int)data;
    }
    return -1;
}

/* ---------------------------------------------------------------- packet builders */

/* TCP options of a SYN: MSS, optional SACK-permitted. */
static uint32_t put_syn_opts(uint8_t *o, uint16_t mss, int sack)
{
    o[0] = 2;
    o[1] = 4;
    lb_put16(o + 2, mss);
    if (!sack)
        return 4;
    o[4] = 1;
    o[5] = 1;
    o[6] = 4;
    o[7] = 2;
    return 8;
}

/* A TCP segment: IPv4 (ID 0, DF, TTL 64) + TCP header + options + payload. Addresses/ports
 * network order, seq/ack host order. Returns the length, 0 if it does not fit. */
static uint32_t build_tcp(uint8_t *out, uint32_t cap, uint32_t saddr, uint16_t sport, uint32_t daddr, uint16_t dport,
                          uint32_t seq, uint32_t ack, uint8_t flags, uint16_t win, const uint8_t *opts,
                          uint32_t optlen, const uint8_t *payload, uint32_t plen)
{
    uint32_t thl = 20 + optlen;
    uint32_t total = 20 + thl + plen;
    if (total > cap || total > 0xffff || optlen > 40 || (optlen & 3))
        return 0;
    memset(out, 0, 20 + thl);
    out[0] = 0x45;
    lb_put16(out + 2, (uint16_t)total);
    out[6] = 0x40;
    out[8] = 64;
    out[9] = LB_PROTO_TCP;
    memcpy(out + 12, &saddr, 4);
    memcpy(out + 16, &daddr, 4);
    lb_put16(out + 10, lb_ip_csum(out, 20));
    uint8_t *th = out + 20;
    memcpy(th, &sport, 2);
    memcpy(th + 2, &dport, 2);
    uint32_t seq_n = lb_htonl(seq), ack_n = lb_htonl(ack);
    memcpy(th + 4, &seq_n, 4);
    memcpy(th + 8, &ack_n, 4);
    th[12] = (uint8_t)((thl / 4) << 4);
    th[13] = flags;
    lb_put16(th + 14, win);
    if (optlen)
        memcpy(th + 20, opts, optlen);
    if (plen)
        memcpy(th + thl, payload, plen);
    uint32_t sum = lb_csum_partial(out + 12, 8, 0) + LB_PROTO_TCP + thl + plen;
    lb_put16(th + 16, lb_csum_fold(lb_csum_partial(th, thl + plen, sum)));
    return total;
}

/* The client's MSS and SACK-permitted from its SYN's options. */
static void parse_syn_opts(const struct lb_pkt *p, uint16_t *mss, int *sack)
{
    const uint8_t *th = p->data + p->l4off;
    uint32_t i = 20, at;
    uint8_t kind, len;
    *mss = 536;
    *sack = 0;
    while (lb_tcp_opt_next(th, p->tcp_doff, &i, &kind, &len, &at)) {
        if (kind == 2 && len == 4)
            *mss = lb_get16(th + at + 2);
        else if (kind == 4 && len == 2)
            *sack = 1;
    }
}

static const struct lb_svc *conn_svc(const struct lb_conn *c) { return c->dest ? c->dest->svc : NULL; }

/* The SYN to the real server (first or retransmitted): from the reply tuple's director side
 * (FULLNAT: LIP:lport) to RIP:rport. Only methods with LB_XMIT_F_SYNPROXY get here. */
static uint32_t build_rs_syn(const struct lb_conn *c, const struct lb_sp *sp, uint8_t *out, uint32_t cap)
{
    uint8_t opts[8];
    uint32_t optlen = put_syn_opts(opts, sp->mss, sp->sack);
    return build_tcp(out, cap, c->oaddr_n, c->oport, c->dest->addr_n, lb_conn_rport_n(c), sp->client_isn, 0, LB_TCP_SYN,
                     sp->client_win, opts, optlen, NULL, 0);
}

/* RST to the client (give-up): VIP:vport -> CIP:cport, in the cookie's sequence space. */
static uint32_t build_client_rst(const struct lb_conn *c, const struct lb_sp *sp, uint8_t *out, uint32_t cap)
{
    return build_tcp(out, cap, c->vaddr, c->vport, c->caddr, c->cport, sp->cookie_isn + 1, sp->client_isn + 1,
                     LB_TCP_RST | LB_TCP_ACK, 0, NULL, 0, NULL, 0);
}

/* ---------------------------------------------------------------- timers */

static void heap_swap(struct lb_sp_timer *h, uint32_t a, uint32_t b)
{
    struct lb_sp_timer t = h[a];
    h[a] = h[b];
    h[b] = t;
}

static void heap_push(lb_t *lb, uint64_t due, uint32_t slot)
{
    if (lb->sp_heap_len >= lb->sp_heap_cap)
        return; /* cannot happen: one live entry per slot at most, plus stale ones reaped on pop */
    struct lb_sp_timer *h = lb->sp_heap;
    uint32_t i = lb->sp_heap_len++;
    h[i].due_ms = due;
    h[i].slot = slot;
    while (i > 0 && h[(i - 1) / 2].due_ms > h[i].due_ms) {
        heap_swap(h, i, (i - 1) / 2);
        i = (i - 1) / 2;
    }
}

static void heap_pop(lb_t *lb)
{
    struct lb_sp_timer *h = lb->sp_heap;
    h[0] = h[--lb->sp_heap_len];
    uint32_t i = 0, n = lb->sp_heap_len;
    for (;;) {
        uint32_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < n && h[l].due_ms < h[m].due_ms)
            m = l;
        if (r < n && h[r].due_ms < h[m].due_ms)
            m = r;
        if (m == i)
            break;
        heap_swap(h, i, m);
        i = m;
    }
}

static int heap_entry_live(const lb_t *lb, const struct lb_sp_timer *t)
{
    const struct lb_sp *sp = &lb->sp[t->slot];
    return sp->phase == LB_SP_SYN_SENT && sp->due_ms == t->due_ms && (lb->conns[t->slot].flags & LB_CF_USED);
}

/* The next SYN-proxy timer. */
static uint64_t sp_due(lb_t *lb)
{
    while (lb->sp_heap_len && !heap_entry_live(lb, &lb->sp_heap[0]))
        heap_pop(lb);
    return lb->sp_heap_len ? lb->sp_heap[0].due_ms : UINT64_MAX;
}

/* Timers: SYN-proxy's, and the packets held for unresolved destinations (l2q.c). */
uint64_t lb_timer_due(lb_t *lb)
{
    uint64_t due = sp_due(lb);
    uint64_t l2 = lb->l2q_list ? lb_l2q_due(lb) : UINT64_MAX;
    return l2 < due ? l2 : due;
}

static void arm(lb_t *lb, uint32_t slot, uint64_t due)
{
    lb->sp[slot].due_ms = due;
    heap_push(lb, due, slot);
    lb_wake_check(lb, due);
}

/* Send the SYN for a connection whose cookie validated (first transmission). */
static int send_first_syn(lb_t *lb, struct lb_conn *c, uint64_t now_ms, uint8_t *out, uint32_t out_cap,
                          struct lb_action *act)
{
    uint32_t slot = (uint32_t)(c - lb->conns);
    struct lb_sp *sp = &lb->sp[slot];
    const struct lb_synproxy_conf *conf = lb_sp_conf(lb, conn_svc(c));
    sp->phase = LB_SP_SYN_SENT;
    sp->rto_ms = conf->init_rto_ms;
    arm(lb, slot, now_ms + sp->rto_ms);
    lb->sp_stats.syns_to_rs++;
    uint32_t n = build_rs_syn(c, sp, out, out_cap);
    if (!n || lb_xmit_l2_to(c->dest, act) < 0) {
        act->verdict = LB_V_DROP; /* the timer retries once forwarding state exists */
        return LB_R_NO_L2;
    }
    act->out_len = n;
    return LB_R_FORWARDED;
}

int lb_timer_next(lb_t *lb, uint64_t now_ms, uint8_t *out, uint32_t out_cap, struct lb_action *act)
{
    memset(act, 0, sizeof(*act));
    /* Entries whose time has come leave first: a dead connection retransmits nothing. As the
     * Python engine, also where no service has SYN-proxy state at all. */
    if (lb->exp_next_ms <= now_ms)
        lb_conn_tick(lb, now_ms);
    if (lb->l2q_list && lb_l2q_next(lb, now_ms, out, out_cap, act))
        return 1;
    if (!lb->sp)
        return 0;
    while (sp_due(lb) <= now_ms) {
        uint32_t slot = lb->sp_heap[0].slot;
        heap_pop(lb);
        struct lb_conn *c = &lb->conns[slot];
        struct lb_sp *sp = &lb->sp[slot];
        const struct lb_synproxy_conf *conf = lb_sp_conf(lb, conn_svc(c));
        if (sp->retries < conf->max_retries) {
            /* Exponential backoff: init, 2*init, 4*init, ... capped at max_rto. */
            sp->retries++;
            sp->rto_ms = sp->rto_ms * 2 > conf->max_rto_ms ? conf->max_rto_ms : sp->rto_ms * 2;
            arm(lb, slot, now_ms + sp->rto_ms);
            uint32_t n = build_rs_syn(c, sp, out, out_cap);
            if (!n || lb_xmit_l2_to(c->dest, act) < 0) {
                memset(act, 0, sizeof(*act));
                continue; /* no forwarding state: nothing can leave; the next round retries */
            }
            act->out_len = n;
            act->reason = LB_R_FORWARDED;
            lb->sp_stats.syn_retransmits++;
            return 1;
        }
        /* Give up: reset the client and forget the connection. */
        uint32_t n = build_client_rst(c, sp, out, out_cap);
        lb->sp_stats.give_ups++;
        lb_conn_expire_now(lb, c);
        if (n) {
            act->verdict = LB_V_ANSWER;
            act->out_len = n;
            act->reason = LB_R_FORWARDED;
            return 1;
        }
    }
    return 0;
}

/* ---------------------------------------------------------------- packet path */

/* A connection-less packet for a SYN-proxy service. */
/* The TCP checksum of p (pseudo-header, header and data up to the IP total length) is right.
 * SYN-proxy terminates the client's handshake: like the kernel's TCP (tcp_v4_rcv ->
 * tcp_checksum_complete) it must not answer, or open a connection for, a corrupted segment. The
 * adapter hands over complete checksums (nfq.c completes partial ones). */
static int tcp_csum_ok(const struct lb_pkt *p)
{
    uint32_t sum = lb_csum_partial(p->data + 12, 8, 0) + LB_PROTO_TCP + p->l4len;
    return lb_csum_fold(lb_csum_partial(p->data + p->l4off, p->l4len, sum)) == 0;
}

int lb_sp_miss(lb_t *lb, const struct lb_pkt *p, struct lb_svc *s, uint64_t now_ms, uint8_t *out, uint32_t out_cap,
               struct lb_action *act)
{
    const struct lb_synproxy_conf *conf = lb_sp_conf(lb, s);
    uint8_t fl = p->tcp_flags & (LB_TCP_SYN | LB_TCP_ACK | LB_TCP_RST | LB_TCP_FIN);
    uint32_t minute = (uint32_t)(now_ms / 60000u);
    if ((fl == LB_TCP_SYN || fl == LB_TCP_ACK) && !tcp_csum_ok(p)) {
        act->verdict = LB_V_DROP;
        return LB_R_BAD_L4_CSUM;
    }
    if (fl == LB_TCP_SYN) {
        uint16_t cmss;
        int csack;
        parse_syn_opts(p, &cmss, &csack);
        uint32_t idx = 0;
        for (uint32_t i = 0; i < 4; i++)
            if (sp_msstab[i] <= cmss)
                idx = i;
        int sack = csack && conf->sack;
        uint32_t client_isn = lb_ntohl(p->tcp_seq);
        uint32_t cookie = cookie_make(lb, p, client_isn, minute, idx | ((uint32_t)sack << 2));
        uint8_t opts[8];
        /* Room for what FULLNAT adds to the client's segments: the TOA option or the PROXY header. */
        uint16_t mss = (uint16_t)(conf->mss - lb_svc_room(s->conf.flags));
        uint32_t optlen = put_syn_opts(opts, mss, sack);
        uint32_t n = build_tcp(out, out_cap, p->daddr, p->dport, p->saddr, p->sport, cookie, client_isn + 1,
                               LB_TCP_SYN | LB_TCP_ACK, SP_WINDOW, opts, optlen, NULL, 0);
        act->verdict = n ? LB_V_ANSWER : LB_V_DROP;
        act->out_len = n;
        lb->sp_stats.cookies_sent++;
        return LB_R_SP_COOKIE;
    }
    if (fl != LB_TCP_ACK) {
        act->verdict = LB_V_ACCEPT; /* as IPVS for non-SYN without a connection */
        return LB_R_NO_CONN;
    }
    uint32_t cookie = lb_ntohl(p->tcp_ack) - 1;
    uint32_t client_isn = lb_ntohl(p->tcp_seq) - 1;
    int data = cookie_check(lb, p, cookie, client_isn, minute);
    if (data < 0) {
        lb->sp_stats.cookies_invalid++;
        act->verdict = LB_V_DROP;
        return LB_R_SP_BAD_COOKIE;
    }
    lb->sp_stats.cookies_valid++;
    int r;
    struct lb_conn *c = lb_schedule_conn(lb, p, s, now_ms, out, out_cap, act, &r);
    if (!c)
        return r;
    uint32_t slot = (uint32_t)(c - lb->conns);
    struct lb_sp *sp = &lb->sp[slot];
    memset(sp, 0, sizeof(*sp));
    c->flags |= LB_CF_SYNPROXY | LB_CF_TOA_DONE; /* TOA rides on our own handshake ACK */
    sp->cookie_isn = cookie;
    sp->client_isn = client_isn;
    sp->mss = sp_msstab[data & 3];
    sp->sack = (uint8_t)((data >> 2) & 1);
    sp->client_win = lb_ntohs(p->tcp_win);
    if (s->conf.flags & (LB_SVC_F_PROXY_V1 | LB_SVC_F_PROXY_V2))
        lb_proxy_conn_init(lb, c, s->conf.flags, client_isn); /* the header rides on our handshake ACK */
    lb_conn_set_state(lb, c, LB_S_SYN_SENT);
    lb_conn_set_expiry(lb, c, now_ms + lb_conn_timeout_ms(lb, c));
    lb_stats_in(c->dest, p->len);
    if (p->payload_len && p->payload_len <= conf->data_max_bytes) {
        sp->held = malloc(p->payload_len);
        if (sp->held) {
            memcpy(sp->held, p->data + p->l4off + p->tcp_doff, p->payload_len);
            sp->held_len = (uint16_t)p->payload_len;
        }
    }
    if (conf->defer && !sp->held_len) {
        sp->phase = LB_SP_WAIT_DATA;
        act->verdict = LB_V_DROP;
        return LB_R_SP_HELD;
    }
    return send_first_syn(lb, c, now_ms, out, out_cap, act);
}

void lb_tcp_add32(uint8_t *f, uint32_t delta, uint8_t *csum)
{
    uint32_t old_n, new_n;
    memcpy(&old_n, f, 4);
    new_n = lb_htonl(lb_ntohl(old_n) + delta);
    memcpy(f, &new_n, 4);
    lb_csum_replace4(csum, old_n, new_n);
}

/* Shift the SACK block edges in the TCP options of the segment at th by delta. */
static void sack_shift(uint8_t *th, uint32_t doff, uint32_t delta)
{
    uint32_t i = 20, at;
    uint8_t kind, len;
    while (lb_tcp_opt_next(th, doff, &i, &kind, &len, &at))
        if (kind == 5 && len >= 10 && (len - 2) % 8 == 0)
            for (uint32_t e = at + 2; e + 4 <= at + len; e += 4)
                lb_tcp_add32(th + e, delta, th + 16);
}

/* Client -> real server on a SYN-proxied connection. */
int lb_sp_in(lb_t *lb, const struct lb_pkt *p, struct lb_conn *c, uint64_t now_ms, uint8_t *out, uint32_t out_cap,
             struct lb_action *act)
{
    uint32_t slot = (uint32_t)(c - lb->conns);
    struct lb_sp *sp = &lb->sp[slot];
    const struct lb_synproxy_conf *conf = lb_sp_conf(lb, conn_svc(c));
    lb_conn_set_expiry(lb, c, now_ms + lb_conn_timeout_ms(lb, c));
    if (sp->phase == LB_SP_WAIT_DATA || sp->phase == LB_SP_SYN_SENT) {
        act->verdict = LB_V_DROP;
        if (p->tcp_flags & (LB_TCP_RST | LB_TCP_FIN)) {
            lb_conn_expire_now(lb, c); /* the client gave up first */
            return LB_R_SP_HELD;
        }
        if (p->payload_len == 0) {
            if (++sp->pure_acks > conf->ack_storm_max) {
                /* ACK-storm guard: reset the client, forget the connection. */
                uint32_t n = build_client_rst(c, sp, out, out_cap);
                lb->sp_stats.give_ups++;
                lb_conn_expire_now(lb, c);
                act->verdict = n ? LB_V_ANSWER : LB_V_DROP;
                act->out_len = n;
            }
            lb->sp_stats.held_dropped++;
            return LB_R_SP_HELD;
        }
        if (!sp->held_len && lb_ntohl(p->tcp_seq) == sp->client_isn + 1 && p->payload_len <= conf->data_max_bytes) {
            sp->held = malloc(p->payload_len);
            if (sp->held) {
                memcpy(sp->held, p->data + p->l4off + p->tcp_doff, p->payload_len);
                sp->held_len = (uint16_t)p->payload_len;
            }
        } else {
            lb->sp_stats.held_dropped++; /* the client retransmits it */
        }
        if (sp->phase == LB_SP_WAIT_DATA && sp->held_len)
            return send_first_syn(lb, c, now_ms, out, out_cap, act);
        return LB_R_SP_HELD;
    }
    /* Established: the method's rewrite (FULLNAT), then the client's ACK and SACK edges into the server's space. */
    lb_tcp_set_state(lb, c, LB_DIR_IN, p->tcp_flags);
    lb_conn_set_expiry(lb, c, now_ms + lb_conn_timeout_ms(lb, c));
    lb_stats_in(c->dest, p->len);
    int r = lb_conn_xmit(c)->xmit_in(lb, p, c, out, out_cap, act);
    if (act->verdict == LB_V_XMIT_L2 && act->out_len) {
        uint8_t *th = out + p->ihl;
        if (th[13] & LB_TCP_ACK)
            lb_tcp_add32(th + 8, sp->d_in, th + 16);
        sack_shift(th, (uint32_t)(th[12] >> 4) * 4, sp->d_in);
    }
    if (c->flags & LB_CF_PROXY)
        r = lb_proxy_in(lb, p, c, out, out_cap, act, r); /* the client's own numbers past the header */
    return r;
}

/* Real server -> director on a SYN-proxied connection. */
int lb_sp_out(lb_t *lb, const struct lb_pkt *p, struct lb_conn *c, uint64_t now_ms, uint8_t *out, uint32_t out_cap,
              struct lb_action *act)
{
    uint32_t slot = (uint32_t)(c - lb->conns);
    struct lb_sp *sp = &lb->sp[slot];
    lb_conn_set_expiry(lb, c, now_ms + lb_conn_timeout_ms(lb, c));
    if (sp->phase != LB_SP_DONE) {
        uint8_t fl = p->tcp_flags & (LB_TCP_SYN | LB_TCP_ACK | LB_TCP_RST);
        if (sp->phase == LB_SP_SYN_SENT && fl == (LB_TCP_SYN | LB_TCP_ACK) &&
            lb_ntohl(p->tcp_ack) == sp->client_isn + 1) {
            uint32_t rs_isn = lb_ntohl(p->tcp_seq);
            sp->d_in = rs_isn - sp->cookie_isn;
            sp->phase = LB_SP_DONE;
            sp->due_ms = 0; /* disarms the pending retransmission */
            lb->sp_stats.handshakes++;
            lb_conn_set_state(lb, c, LB_S_ESTABLISHED);
            c->dest->handshakes++;
            lb->hs_events++;
            lb_conn_set_expiry(lb, c, now_ms + lb_conn_timeout_ms(lb, c));
            /* Complete the server's handshake: ACK + held data (+ TOA). */
            uint8_t opts[8];
            uint32_t optlen = 0;
            const struct lb_svc *s = conn_svc(c);
            if (s && (s->conf.flags & LB_SVC_F_TOA)) {
                opts[0] = 254;
                opts[1] = LB_TOA_LEN;
                memcpy(opts + 2, &c->cport, 2);
                memcpy(opts + 4, &c->caddr, 4);
                optlen = LB_TOA_LEN;
            }
            /* With the PROXY protocol the header goes first, then as much held data as the path MTU
             * leaves room for (the client resends what is cut: it was never acknowledged). */
            uint8_t first[LB_PROXY_V1_MAX_LEN + LB_SP_DATA_MAX_BYTES_MAX];
            const uint8_t *data = sp->held;
            uint32_t data_len = sp->held_len;
            if (c->flags & LB_CF_PROXY) {
                uint32_t mtu = c->dest->fwd && c->dest->fwd->conf.mtu ? c->dest->fwd->conf.mtu : 1500;
                uint32_t room = mtu > 40 + optlen ? mtu - 40 - optlen : 0;
                data = first;
                data_len = lb_proxy_first_payload(lb, c, sp->held, sp->held_len, first,
                                                  room < sizeof(first) ? room : (uint32_t)sizeof(first));
            }
            uint32_t n = build_tcp(out, out_cap, c->oaddr_n, c->oport, c->dest->addr_n, lb_conn_rport_n(c),
                                   sp->client_isn + 1, rs_isn + 1,
                                   (uint8_t)(LB_TCP_ACK | (data_len ? 0x08 : 0)), sp->client_win, opts, optlen,
                                   data, data_len);
            free(sp->held);
            sp->held = NULL;
            sp->held_len = 0;
            if (!n || lb_xmit_l2_to(c->dest, act) < 0) {
                act->verdict = LB_V_DROP;
                return LB_R_NO_L2;
            }
            act->out_len = n;
            return LB_R_SP_HANDSHAKE;
        }
        if (sp->phase == LB_SP_SYN_SENT && (fl & LB_TCP_ACK) && !(fl & LB_TCP_RST)) {
            /* An ACK that does not answer our SYN (e.g. a TIME_WAIT's challenge ACK):
             * as a client in SYN-SENT does (RFC 793), reset it with SEQ = its ACK; the
             * next retransmission of the SYN then finds a clean slate. */
            uint32_t n = build_tcp(out, out_cap, c->oaddr_n, c->oport, c->dest->addr_n, lb_conn_rport_n(c),
                                   lb_ntohl(p->tcp_ack), 0, LB_TCP_RST, 0, NULL, 0, NULL, 0);
            if (n && lb_xmit_l2_to(c->dest, act) == 0) {
                act->out_len = n;
                return LB_R_SP_HELD;
            }
            act->verdict = LB_V_DROP;
            return LB_R_SP_HELD;
        }
        if (fl & LB_TCP_RST) {
            /* The server refused: reset the client and forget the connection. */
            uint32_t n = build_client_rst(c, sp, out, out_cap);
            lb->sp_stats.rs_resets++;
            lb_conn_expire_now(lb, c);
            act->verdict = n ? LB_V_ANSWER : LB_V_DROP;
            act->out_len = n;
            return LB_R_FORWARDED;
        }
        act->verdict = LB_V_DROP;
        return LB_R_SP_HELD;
    }
    lb_tcp_set_state(lb, c, LB_DIR_OUT, p->tcp_flags);
    lb_conn_set_expiry(lb, c, now_ms + lb_conn_timeout_ms(lb, c));
    lb_stats_out(c->dest, p->len);
    int r = lb_conn_xmit(c)->xmit_out(lb, p, c, out, out_cap, act);
    if (act->verdict == LB_V_ANSWER && act->out_len) {
        uint8_t *th = out + p->ihl;
        lb_tcp_add32(th + 4, (uint32_t)0 - sp->d_in, th + 16);
    }
    if (c->flags & LB_CF_PROXY)
        lb_proxy_out(lb, p, c, out, act); /* its ACK and SACK edges back before the header */
    return r;
}
