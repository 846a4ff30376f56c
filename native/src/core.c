/*
 * core.c - lb_process(): parse -> connection lookup -> (miss) schedule ->
 * state transition -> forwarding method -> action. No I/O, no clock, no
 * allocation: the caller passes bytes and the time and applies the action.
 * The order of decisions is docs/fastpath.md, which the Python engine mirrors.
 */
#include <stdlib.h>
#include <string.h>

#include "lb_sched.h"
#include "lb_xmit.h"

lb_t *lb_new(const struct lb_config *cfg)
{
    lb_t *lb = calloc(1, sizeof(*lb));
    if (!lb)
        return NULL;
    if (pthread_mutex_init(&lb->lock, NULL) != 0) {
        free(lb);
        return NULL;
    }
    if (lb_conn_table_init(lb, cfg) != LB_OK) {
        pthread_mutex_destroy(&lb->lock);
        free(lb);
        return NULL;
    }
    if (lb_svc_table_init(lb) != LB_OK || lb_local_init(lb) != LB_OK) {
        free(lb->svc_hash); /* either may be NULL */
        free(lb->local_hash);
        lb_conn_table_free(lb);
        pthread_mutex_destroy(&lb->lock);
        free(lb);
        return NULL;
    }
    return lb;
}

void lb_free(lb_t *lb)
{
    if (!lb)
        return;
    lb_l2q_free_all(lb); /* held packets hold their destinations */
    lb_conn_flush(lb);
    lb_clear(lb);
    lb_sp_free(lb);
    lb_local_free(lb);
    for (int i = 0; i < LB_XMIT_MAX; i++)
        if (lb_xmit_methods[i] && lb_xmit_methods[i]->done)
            lb_xmit_methods[i]->done(lb);
    /* After the flush no connection references a destination: trash is empty. */
    free(lb->svcs);
    free(lb->svc_hash);
    lb_conn_table_free(lb);
    pthread_mutex_destroy(&lb->lock);
    free(lb);
}

static inline int is_tcp_new_conn(const struct lb_pkt *p)
{
    /* SYN without ACK or RST (conn_reuse_mode: "is_new_conn"). */
    return (p->tcp_flags & (LB_TCP_SYN | LB_TCP_ACK | LB_TCP_RST)) == LB_TCP_SYN;
}

static inline int reusable_state(uint8_t state)
{
    return state == LB_S_TIME_WAIT || state == LB_S_CLOSE;
}

static int finish(lb_t *lb, struct lb_action *act, int reason)
{
    act->reason = reason;
    lb->counters[(uint32_t)reason]++; /* 0 <= reason < LB_R_COUNT; unsigned: no sign extension */
    return reason;
}

/* Persistence (ip_vs_sched_persist): the template for the client's network
 * (source address & netmask, client port 0) names the destination; without a
 * usable one the scheduler picks and a template is created. The template's
 * timer restarts with every connection it creates. */
static struct lb_dest *schedule_persist(lb_t *lb, const struct lb_pkt *p, struct lb_svc *s, uint64_t now_ms,
                                        struct lb_conn **tmpl, int *table_full)
{
    uint32_t snet = p->saddr & lb_htonl(s->conf.netmask);
    /* The template's virtual port is the service's: the packet's for a service found by its port,
     * 0 for a port-zero service, whose template covers every port of the VIP (ip_vs_sched_persist:
     * <protocol, caddr, 0, vaddr, 0>), so one client sticks to one real server across ports. A
     * fwmark service's template is <IPPROTO_IP, caddr, 0, fwmark, 0>: every protocol, address
     * and port the mark gathers. */
    int fwm = s->conf.proto == LB_PROTO_FWMARK;
    uint8_t tproto = fwm ? 0 : p->proto;
    uint32_t taddr = fwm ? lb_htonl(s->conf.addr) : p->daddr;
    uint16_t tport = lb_htons(s->conf.port);
    struct lb_conn *t = lb_tmpl_lookup(lb, tproto, snet, taddr, tport, now_ms);
    if (t && !(t->dest->flags & LB_DEST_F_AVAILABLE)) {
        lb_tmpl_invalidate(lb, t); /* its destination left: schedule afresh */
        t = NULL;
    }
    struct lb_dest *d;
    if (t) {
        d = t->dest;
    } else {
        d = s->sched->schedule(s, p);
        if (!d)
            return NULL;
        t = lb_tmpl_new(lb, tproto, snet, taddr, tport, d, s->conf.persist_timeout_s * 1000, now_ms, 1);
        if (!t) {
            *table_full = 1;
            return NULL;
        }
    }
    lb_conn_set_expiry(lb, t, now_ms + t->tmpl_timeout_ms);
    *tmpl = t;
    return d;
}

/* The destination for a new connection of packet p on service s (ip_vs_schedule: persistence, else
 * the scheduler), with its persistence template in *tmpl; NULL with *reason and act saying why not. */
static struct lb_dest *schedule_dest(lb_t *lb, const struct lb_pkt *p, struct lb_svc *s, uint64_t now_ms,
                                     uint8_t *out, uint32_t out_cap, struct lb_action *act, struct lb_conn **tmpl,
                                     int *reason)
{
    int table_full = 0;
    s->sched_now_ms = now_ms; /* the schedulers' clock (lb_sched.h) */
    struct lb_dest *d;
    if (s->conf.persist_timeout_s)
        d = schedule_persist(lb, p, s, now_ms, tmpl, &table_full);
    else if (LB_UNLIKELY(p->dport != lb_htons(s->conf.port) && s->conf.proto != LB_PROTO_FWMARK))
        d = NULL; /* ip_vs_schedule: "port zero only supported in persistent services": unreachable */
    else
        d = s->sched->schedule(s, p);
    if (table_full) {
        act->verdict = LB_V_DROP;
        *reason = LB_R_TABLE_FULL;
        return NULL;
    }
    if (!d) {
        uint32_t n = lb_icmp_port_unreach(p, out, out_cap);
        act->verdict = n ? LB_V_ANSWER : LB_V_DROP;
        act->out_len = n;
        *reason = LB_R_NO_DEST;
    }
    return d;
}

/* Schedule a new connection for packet p on service s. */
struct lb_conn *lb_schedule_conn(lb_t *lb, const struct lb_pkt *p, struct lb_svc *s, uint64_t now_ms, uint8_t *out,
                                 uint32_t out_cap, struct lb_action *act, int *reason)
{
    struct lb_conn *tmpl = NULL;
    struct lb_dest *d = schedule_dest(lb, p, s, now_ms, out, out_cap, act, &tmpl, reason);
    if (!d)
        return NULL;
    /* The destination's method binds what the connection needs (FULLNAT: a local address and port). */
    const struct lb_xmit_ops *m = lb_xmit_methods[d->conf.fwd];
    struct lb_conn_bind b = {0, 0, NULL, 0};
    if (m->conn_bind) {
        int r = m->conn_bind(lb, s, d, p, now_ms, &b);
        if (r != LB_R_FORWARDED) {
            act->verdict = LB_V_DROP;
            *reason = r;
            return NULL;
        }
    }
    struct lb_conn *c = lb_conn_new(lb, p, d, &b, now_ms, 1);
    if (!c) {
        if (m->release)
            m->release(lb, p->proto, d, &b);
        act->verdict = LB_V_DROP;
        *reason = LB_R_TABLE_FULL;
        return NULL;
    }
    if (tmpl) {
        c->ctl = (uint32_t)(tmpl - lb->conns);
        tmpl->n_control++;
    }
    d->stats.conns++;
    s->stats.conns++;
    lb_est_touch(s);
    lb->hs_events++;
    *reason = LB_R_FORWARDED;
    return c;
}

/* One-packet scheduling (ipvsadm -o on a UDP service): the datagram is scheduled afresh and its
 * connection lives only while it is sent, as the kernel's IP_VS_CONN_F_ONE_PACKET entries, which
 * ip_vs_conn_new never hashes and ip_vs_conn_put expires at once. So it counts as the kernel
 * counts it (conns, inpkts and inbytes; the InActConn it holds and any OVERLOAD it sets or clears
 * on the way), it refreshes a persistence template like any connection, and it leaves no entry:
 * nothing in -Lnc, the next datagram of the same flow is scheduled again. It lives on the stack:
 * no table slot, so a full table does not refuse it. The entry is never looked up: a NAT real
 * server's reply finds no connection and passes untranslated, as the kernel's (ip_vs_out finds no
 * unhashed OPS entry; "no reply is expected"); svc.c refuses FULLNAT, whose replies are addressed
 * to the director itself (LB_XMIT_F_NEEDS_ENTRY). */
static int ops_datagram(lb_t *lb, const struct lb_pkt *p, struct lb_svc *s, uint64_t now_ms, uint8_t *out,
                        uint32_t out_cap, struct lb_action *act)
{
    struct lb_conn *tmpl = NULL;
    int reason = LB_R_FORWARDED;
    struct lb_dest *d = schedule_dest(lb, p, s, now_ms, out, out_cap, act, &tmpl, &reason);
    if (!d)
        return reason;
    struct lb_conn c;
    memset(&c, 0, sizeof(c));
    c.caddr = p->saddr;
    c.vaddr = p->daddr;
    c.cport = p->sport;
    c.vport = p->dport;
    c.proto = LB_PROTO_UDP;
    c.state = LB_S_UDP;
    c.fwd = (uint8_t)d->conf.fwd;
    c.flags = (uint16_t)(LB_CF_USED | LB_CF_INACTIVE | LB_CF_NOOUTPUT);
    if (lb_dest_rport_is_client(d))
        c.flags |= LB_CF_RPORT_CLIENT; /* NAT writes the client's port in */
    lb_dest_bind(d, &c);
    d->stats.conns++;
    s->stats.conns++;
    lb->hs_events++;
    lb_stats_in_available(d, p->len); /* lb_est_touch(s) */
    reason = lb_fit_path_mtu(p, &c, out, out_cap, act, lb_conn_xmit_in(lb, p, &c, out, out_cap, act));
    lb_dest_unbind(lb, d, &c); /* d stays linked in s: never its last reference */
    if (LB_UNLIKELY(lb->sync_on) && tmpl)
        lb_sync_in(lb, NULL, (uint32_t)(tmpl - lb->conns), now_ms); /* a one-packet entry is never sent itself */
    return reason;
}

/* TCP bookkeeping for a packet from the client: the stalled-handshake signal
 * (an identical SYN repeated while the entry still waits for the client's ACK)
 * and completed handshakes, per destination. */
static inline void tcp_in_signals(lb_t *lb, struct lb_conn *c, const struct lb_pkt *p, uint8_t old_state)
{
    if (LB_LIKELY(old_state != LB_S_SYN_RECV))
        return;
    if (is_tcp_new_conn(p) && p->tcp_seq == c->syn_seq) {
        c->dest->syn_retrans++;
        lb->hs_events++;
    } else if (c->state == LB_S_ESTABLISHED) {
        c->dest->handshakes++;
        lb->hs_events++;
    }
}

/* The XDP fast path (lb_fp_ops), after a TCP packet from the client of connection c was handled
 * with reason r: a connection that qualifies gets its flow installed by a packet that was forwarded
 * (once, or again when one the program would have forwarded still reached the core: a stale
 * generation, a flow evicted); one that stopped qualifying (FIN, RST, a sync master started, its
 * destination removed or unresolved) loses it. */
static void fp_after_in(lb_t *lb, const struct lb_pkt *p, struct lb_conn *c, const struct lb_action *act, int r)
{
    const struct lb_dest *d = c->dest;
    int ok = c->fwd == LB_FWD_ROUTE && c->state == LB_S_ESTABLISHED && !(c->flags & (LB_CF_SYNPROXY | LB_CF_PROXY)) &&
             !lb->sync_on && d && d->fwd && (d->flags & LB_DEST_F_AVAILABLE) && !d->l2q;
    if (!ok) {
        if (c->xdp_fp)
            lb->fp_ops->flow_del(lb->fp_arg, lb, c);
        return;
    }
    if (r != LB_R_FORWARDED || act->verdict != LB_V_XMIT_L2 || c->xdp_fp == LB_FP_REFUSED)
        return;
    /* one the program forwards too (not cut into fragments: over the MTU, it stays lbd's) */
    int fastable = (p->tcp_flags & (LB_TCP_SYN | LB_TCP_FIN | LB_TCP_RST | LB_TCP_ACK)) == LB_TCP_ACK && p->ihl == 20 &&
                   !act->frag_mtu;
    if (!c->xdp_fp || fastable)
        lb->fp_ops->flow_set(lb->fp_arg, lb, c);
}

int lb_process(lb_t *lb, const uint8_t *pkt, uint32_t len, uint64_t now_ms, uint8_t *out, uint32_t out_cap,
               struct lb_action *act)
{
    return lb_process_mark(lb, pkt, len, 0, now_ms, out, out_cap, act);
}

/* ip_vs_service_find's order: the fwmark service of the packet's mark, the exact <protocol, VIP,
 * port>, then the VIP's port-zero ("all ports") service, which receives every port of the VIP
 * without an exact service. */
static inline struct lb_svc *find_service(const lb_t *lb, const struct lb_pkt *p, uint32_t mark)
{
    struct lb_svc *s = NULL;
    if (mark)
        s = lb_svc_find(lb, LB_PROTO_FWMARK, lb_htonl(mark), 0);
    if (!s)
        s = lb_svc_find(lb, p->proto, p->daddr, p->dport);
    if (!s && p->dport)
        s = lb_svc_find(lb, p->proto, p->daddr, 0);
    return s;
}

int lb_process_mark(lb_t *lb, const uint8_t *pkt, uint32_t len, uint32_t mark, uint64_t now_ms, uint8_t *out,
                    uint32_t out_cap, struct lb_action *act)
{
    return lb_process_pkt(lb, pkt, len, mark, 0, now_ms, out, out_cap, act);
}

/* The bytes a method may change in place (p.wdata): the caller's, lent (wpkt), unless link-layer
 * padding follows the IP packet: a packet sent as it is would carry it, a copy (p->len bytes) not. */
static inline uint8_t *lent_bytes(const struct lb_pkt *p, uint8_t *wpkt, uint32_t len)
{
    return wpkt && LB_LIKELY(p->len == len) ? wpkt : NULL;
}

/* The packet path of lb_process_pkt and lb_process_inplace: wpkt is pkt when the caller lends its
 * bytes (DR then rewrites the TTL and checksum there, lb_xmit_dr_in), else NULL. Inlined into both, so
 * that neither pays a call or a test it does not need. */
static inline __attribute__((always_inline)) int process(lb_t *lb, const uint8_t *pkt, uint8_t *wpkt, uint32_t len,
                                                         uint32_t mark, uint32_t flags, uint64_t now_ms,
                                                         uint8_t *out, uint32_t out_cap, struct lb_action *act)
{
    struct lb_pkt p;
    if (LB_UNLIKELY(!lb || !act || (!pkt && len)))
        return LB_EINVAL;
    /* l2hdr is written only with LB_V_XMIT_L2, the only verdict that defines it. */
    act->verdict = LB_V_DROP;
    act->reason = 0;
    act->ifindex = 0;
    act->out_len = 0;
    act->frag_mtu = 0;
    /* Exact expiry: entries whose time has come leave before this packet is seen. */
    if (LB_UNLIKELY(lb->exp_next_ms <= now_ms))
        lb_conn_tick(lb, now_ms);

    int r = lb_parse_inline(pkt, len, &p);
    if (LB_UNLIKELY(r != LB_R_FORWARDED)) {
        if (r == LB_R_ICMP && !(flags & LB_PKT_F_LOOPBACK) && lb_martian_src(p.saddr)) {
            act->verdict = LB_V_DROP; /* the kernel's routing drops it (ip_route_input_slow) */
            r = LB_R_MARTIAN_SRC;
        } else if (r == LB_R_ICMP) {
            p.wdata = lent_bytes(&p, wpkt, len); /* DR's icmp_in sends the error on like its packets */
            r = lb_icmp_in(lb, &p, now_ms, out, out_cap, act);
        } else {
            act->verdict = (r == LB_R_NOT_IPV4 || r == LB_R_NOT_LB_PROTO) ? LB_V_ACCEPT : LB_V_DROP;
        }
        finish(lb, act, r);
        return LB_OK;
    }

    p.wdata = lent_bytes(&p, wpkt, len);
    int dir = LB_DIR_IN;
    struct lb_conn *c = lb_conn_lookup_key(lb, p.proto, p.addrs, p.ports, now_ms, &dir, 1);
    if (LB_UNLIKELY(p.tcp_flags & LB_TCP_SYN) && c && dir == LB_DIR_IN && p.proto == LB_PROTO_TCP &&
        reusable_state(c->state)) {
        /* conn_reuse_mode=1 (is_new_conn: any SYN): a SYN on a closing entry starts a new connection. */
        lb_conn_expire_now(lb, c);
        c = NULL;
    }

    if (c && (c->flags & LB_CF_SYNPROXY)) {
        if (dir == LB_DIR_OUT)
            r = lb_sp_out(lb, &p, c, now_ms, out, out_cap, act);
        else if (!(c->dest->flags & LB_DEST_F_AVAILABLE)) {
            act->verdict = LB_V_DROP;
            r = LB_R_DEST_UNAVAILABLE;
        } else {
            r = lb_sp_in(lb, &p, c, now_ms, out, out_cap, act);
            lb_sync_packet(lb, c, now_ms);
        }
        finish(lb, act, r);
        return LB_OK;
    }

    if (c && dir == LB_DIR_OUT) {
        /* A reply from a real server, found by the reply tuple of its connection's method. */
        const struct lb_xmit_ops *m = lb_conn_xmit(c);
        if (LB_UNLIKELY(p.data[8] <= 1) && (m->flags & LB_XMIT_F_FORWARDS_REPLIES)) {
            /* ip_forward's TTL check comes before ip_vs_out: the entry never sees it. */
            finish(lb, act, m->xmit_out(lb, &p, c, out, out_cap, act));
            return LB_OK;
        }
        if (p.proto == LB_PROTO_TCP)
            lb_tcp_set_state(lb, c, LB_DIR_OUT, p.tcp_flags);
        else
            lb_conn_assure_template(lb, c); /* UDP: a reply assures the template (udp_state_transition) */
        lb_conn_set_expiry(lb, c, now_ms + lb_conn_timeout_ms(lb, c));
        lb_stats_out(c->dest, p.len);
        r = m->xmit_out(lb, &p, c, out, out_cap, act);
        if (LB_UNLIKELY(c->flags & LB_CF_PROXY))
            lb_proxy_out(lb, &p, c, out, act); /* acknowledgments back before the PROXY header */
        finish(lb, act, r);
        return LB_OK;
    }

    if (c) {
        struct lb_dest *d = c->dest;
        if (LB_UNLIKELY(!(d->flags & LB_DEST_F_AVAILABLE))) {
            /* IPVS: don't restart the timer, silently drop. */
            act->verdict = LB_V_DROP;
            finish(lb, act, LB_R_DEST_UNAVAILABLE);
            return LB_OK;
        }
    } else {
        /* A martian source is refused by the kernel's routing before IPVS would see it
         * (ip_route_input_slow). Checked on a miss only: no entry can have such a source, so the
         * packets of established flows pay nothing for it. A looped-back packet (the director's
         * own) never met input routing: exempt. */
        if (LB_UNLIKELY(lb_martian_src(p.saddr)) && !(flags & LB_PKT_F_LOOPBACK)) {
            act->verdict = LB_V_DROP;
            finish(lb, act, LB_R_MARTIAN_SRC);
            return LB_OK;
        }
        struct lb_svc *s = find_service(lb, &p, mark);
        if (!s) {
            act->verdict = LB_V_ACCEPT;
            finish(lb, act, LB_R_NO_SERVICE);
            return LB_OK;
        }
        if (LB_UNLIKELY(lb_is_local(lb, p.saddr)) && !(flags & LB_PKT_F_LOOPBACK)) {
            /* A source that is the director's own (fib_validate_source): spoofed, or looped back. */
            act->verdict = LB_V_DROP;
            finish(lb, act, LB_R_LOCAL_SRC);
            return LB_OK;
        }
        if (s->conf.flags & LB_SVC_F_SYNPROXY && p.proto == LB_PROTO_TCP) {
            finish(lb, act, lb_sp_miss(lb, &p, s, now_ms, out, out_cap, act));
            return LB_OK;
        }
        if (LB_UNLIKELY(s->conf.flags & LB_SVC_F_ONEPACKET) && p.proto == LB_PROTO_UDP) {
            finish(lb, act, ops_datagram(lb, &p, s, now_ms, out, out_cap, act));
            return LB_OK;
        }
        if (p.proto == LB_PROTO_TCP && (p.tcp_flags & (LB_TCP_SYN | LB_TCP_RST)) != LB_TCP_SYN) {
            /* tcp_conn_schedule: only a SYN without RST is scheduled. */
            act->verdict = LB_V_ACCEPT;
            finish(lb, act, LB_R_NO_CONN);
            return LB_OK;
        }
        int why;
        c = lb_schedule_conn(lb, &p, s, now_ms, out, out_cap, act, &why);
        if (!c) {
            finish(lb, act, why);
            return LB_OK;
        }
        if (LB_UNLIKELY(s->conf.flags & (LB_SVC_F_PROXY_V1 | LB_SVC_F_PROXY_V2)) && p.proto == LB_PROTO_TCP)
            lb_proxy_conn_init(lb, c, s->conf.flags, lb_ntohl(p.tcp_seq));
    }

    /* c is a connection, not a template (lookups skip templates; lb_schedule_conn makes
     * connections), of protocol p.proto, and its destination is AVAILABLE (checked above, or
     * just scheduled from the service's list). */
    uint32_t timeout_ms;
    if (LB_LIKELY(p.proto == LB_PROTO_TCP)) {
        uint8_t old_state = c->state;
        lb_tcp_set_state(lb, c, LB_DIR_IN, p.tcp_flags);
        tcp_in_signals(lb, c, &p, old_state);
        timeout_ms = lb->timeouts_ms[c->state]; /* lb_conn_timeout_ms of a TCP connection */
    } else {
        timeout_ms = lb_conn_timeout_ms(lb, c);
    }
    lb_conn_set_expiry(lb, c, now_ms + timeout_ms);
    lb_stats_in_available(c->dest, p.len);
    const struct lb_dest *d = c->dest;
    if (LB_LIKELY(!d->l2q))
        r = lb_conn_xmit_in(lb, &p, c, out, out_cap, act);
    else
        r = LB_R_NO_L2; /* d's held packets have not all left yet: this one goes behind them (act: DROP) */
    lb_sync_packet(lb, c, now_ms); /* counted once sent, as ip_vs_in counts in_pkts */
    if (LB_UNLIKELY(r == LB_R_NO_L2) && (!d->fwd || d->l2q) && lb_l2q_hold(lb, c, &p, now_ms) == 0)
        r = LB_R_L2_QUEUED; /* the timers send it once the destination is resolved (l2q.c), then finished */
    else
        r = lb_xmit_in_finish(lb, &p, c, out, out_cap, act, r);
    if (LB_UNLIKELY(lb->fp_ops != NULL) && p.proto == LB_PROTO_TCP)
        fp_after_in(lb, &p, c, act, r);
    finish(lb, act, r);
    return LB_OK;
}

void lb_wake_fire(struct lb_wake *w)
{
    __atomic_store_n(&w->at_ms, 0, __ATOMIC_RELAXED); /* once per sleep: the thread sets it again */
    if (w->fn)
        w->fn(w->arg);
}

int lb_wake_register(lb_t *lb, void (*fn)(void *arg), void *arg)
{
    int ok = 0;
    pthread_mutex_lock(&lb->lock);
    if (fn && !lb->wake.fn) {
        lb->wake.fn = fn;
        lb->wake.arg = arg;
        ok = 1;
    } else if (!fn && lb->wake.fn && lb->wake.arg == arg) {
        lb->wake.fn = NULL;
        lb->wake.arg = NULL;
        __atomic_store_n(&lb->wake.at_ms, 0, __ATOMIC_RELAXED);
        lb->wake.exp_floor_ms = 0;
        ok = 1;
    }
    pthread_mutex_unlock(&lb->lock);
    return ok;
}

void lb_fp_register(lb_t *lb, const struct lb_fp_ops *ops, void *arg)
{
    pthread_mutex_lock(&lb->lock);
    struct lb_svc *s;
    LB_FOR_EACH_SVC(lb, s)
        for (uint32_t i = 0; i < s->ndests; i++)
            s->dests[i]->fp_slot = 0;
    for (struct lb_dest *d = lb->trash; d; d = d->trash_next)
        d->fp_slot = 0;
    lb->fp_ops = ops;
    lb->fp_arg = ops ? arg : NULL;
    pthread_mutex_unlock(&lb->lock);
}
int lb_process_pkt(lb_t *lb, const uint8_t *pkt, uint32_t len, uint32_t mark, uint32_t flags, uint64_t now_ms,
                   uint8_t *out, uint32_t out_cap, struct lb_action *act)
{
    return process(lb, pkt, NULL, len, mark, flags, now_ms, out, out_cap, act);
}

int lb_process_inplace(lb_t *lb, uint8_t *pkt, uint32_t len, uint32_t mark, uint32_t flags, uint64_t now_ms,
                       uint8_t *out, uint32_t out_cap, struct lb_action *act)
{
    return process(lb, pkt, pkt, len, mark, flags, now_ms, out, out_cap, act);
}

void lb_count_xmit_failed(lb_t *lb, int reason)
{
    if (!lb || reason < 0 || reason >= LB_R_COUNT)
        return;
    pthread_mutex_lock(&lb->lock);
    if (lb->counters[reason])
        lb->counters[reason]--;
    lb->counters[LB_R_XMIT_FAILED]++;
    pthread_mutex_unlock(&lb->lock);
}

uint32_t lb_path_mtu(lb_t *lb, const uint8_t *pkt, uint32_t len, uint64_t now_ms)
{
    struct lb_pkt p;
    if (!lb || !pkt || lb_parse_inline(pkt, len, &p) != LB_R_FORWARDED)
        return 0;
    int dir = LB_DIR_IN;
    const struct lb_conn *c = lb_conn_lookup_key(lb, p.proto, p.addrs, p.ports, now_ms, &dir, 0);
    if (!c || dir != LB_DIR_IN || !c->dest || !c->dest->fwd)
        return 0;
    uint32_t mtu = c->dest->fwd->conf.mtu ? c->dest->fwd->conf.mtu : 1500;
    uint32_t overhead = lb_conn_xmit(c)->mtu_overhead; /* room for the method's outer header (IPIP) */
    mtu = lb_proxy_mtu(lb, c, mtu);                   /* and for a PROXY header still to be inserted */
    return mtu > overhead ? mtu - overhead : 0;
}

void lb_counters(lb_t *lb, uint64_t *out, uint32_t n)
{
    if (!out)
        return;
    for (uint32_t i = 0; i < n; i++)
        out[i] = i < LB_R_COUNT ? __atomic_load_n(&lb->counters[i], __ATOMIC_RELAXED) : 0;
}

const char *lb_strerror(int err)
{
    switch (err) {
    case LB_OK: return "success";
    case LB_ENOENT: return "no such destination or scheduler";
    case LB_ESRCH: return "no such service";
    case LB_EIO: return "I/O error";
    case LB_ENOMEM: return "out of memory";
    case LB_EBUSY: return "busy";
    case LB_EEXIST: return "already exists";
    case LB_EINVAL: return "invalid argument";
    case LB_ENOSPC: return "table full";
    case LB_EOPNOTSUPP: return "not supported";
    default: return "unknown error";
    }
}

const char *lb_reason_name(int reason)
{
    static const char *const names[LB_R_COUNT] = {
        [LB_R_FORWARDED] = "forwarded",
        [LB_R_NOT_IPV4] = "not_ipv4",
        [LB_R_MALFORMED] = "malformed",
        [LB_R_BAD_CSUM] = "bad_csum",
        [LB_R_FRAGMENT] = "fragment",
        [LB_R_NOT_LB_PROTO] = "not_lb_proto",
        [LB_R_NO_SERVICE] = "no_service",
        [LB_R_NO_CONN] = "no_conn",
        [LB_R_NO_DEST] = "no_dest",
        [LB_R_TABLE_FULL] = "table_full",
        [LB_R_DEST_UNAVAILABLE] = "dest_unavailable",
        [LB_R_NO_L2] = "no_l2",
        [LB_R_FRAG_NEEDED] = "frag_needed",
        [LB_R_NO_LADDR] = "no_laddr",
        [LB_R_ICMP] = "icmp",
        [LB_R_TOA_NO_ROOM] = "toa_no_room",
        [LB_R_TTL_EXCEEDED] = "ttl_exceeded",
        [LB_R_SP_COOKIE] = "sp_cookie",
        [LB_R_SP_BAD_COOKIE] = "sp_bad_cookie",
        [LB_R_SP_HELD] = "sp_held",
        [LB_R_SP_HANDSHAKE] = "sp_handshake",
        [LB_R_PROXY_CUT] = "proxy_cut",
        [LB_R_XMIT_FAILED] = "xmit_failed",
        [LB_R_MARTIAN_SRC] = "martian_src",
        [LB_R_LOCAL_SRC] = "local_src",
        [LB_R_BAD_L4_CSUM] = "bad_l4_csum",
        [LB_R_L2_QUEUED] = "l2_queued",
    };
    return reason >= 0 && reason < LB_R_COUNT ? names[reason] : "unknown";
}

const char *lb_state_name(int state)
{
    /* Spelled as ipvsadm -Lnc prints them. */
    static const char *const names[LB_S_COUNT] = {
        [LB_S_NONE] = "NONE",
        [LB_S_ESTABLISHED] = "ESTABLISHED",
        [LB_S_SYN_SENT] = "SYN_SENT",
        [LB_S_SYN_RECV] = "SYN_RECV",
        [LB_S_FIN_WAIT] = "FIN_WAIT",
        [LB_S_TIME_WAIT] = "TIME_WAIT",
        [LB_S_CLOSE] = "CLOSE",
        [LB_S_CLOSE_WAIT] = "CLOSE_WAIT",
        [LB_S_LAST_ACK] = "LAST_ACK",
        [LB_S_LISTEN] = "LISTEN",
        [LB_S_SYNACK] = "SYNACK",
        [LB_S_UDP] = "UDP",
    };
    return state >= 0 && state < LB_S_COUNT ? names[state] : "ERR!";
}
