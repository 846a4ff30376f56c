/*
 * l2q.c - packets held while a destination's forwarding state is resolved.
 *
 * A real server just added has no MAC yet: the control plane resolves it (an ARP exchange) and
 * installs the forwarding state with lb_dest_set_fwd. The kernel does not drop what arrives
 * meanwhile: the neighbour entry queues it (unres_qlen_bytes) and sends it once the neighbour
 * answers, or drops it when resolution fails (mcast_solicit probes retrans_time apart). So does lbd:
 * a connection's packet that finds no forwarding state is copied into its destination's queue
 * (at most LB_L2Q_BYTES_MAX bytes: when full, the oldest held packets are dropped to make room,
 * counted no_l2, as the kernel's neighbour queue does); the timers (lb_timer_next, run by the adapter) send the queue
 * in order through the connection's method once the state exists, and drop it, counted no_l2,
 * LB_L2Q_TIMEOUT_MS after its first packet if it never comes.
 *
 * Order: the kernel's neighbour entry sends its queue the moment the neighbour answers, before any
 * later packet; lbd's queue leaves from the timers, which run after the forwarding state arrives.
 * So while a destination has a queue (d->l2q), its connections' packets join it even once the
 * state is there (the packet path checks d->l2q first): nothing overtakes a held packet.
 *
 * A held packet was counted (l2_queued), its connection's state and stats updated when it arrived;
 * when it leaves, it is looked up again (its connection may have gone, or been bound elsewhere: then
 * it is dropped, counted no_l2) and transmitted exactly as the packet path would have sent it: the
 * connection's method, then the PROXY header (or the sequence shift past it) and the path-MTU check
 * (lb_xmit_in_finish), all with the forwarding state now installed. The kernel's neighbour queue
 * holds packets IPVS has already transmitted; lbd holds them before the method, because the path
 * MTU (and the tunnel's source) come with the same forwarding state. The action (an L2 frame,
 * possibly with frag_mtu, or an ICMP fragmentation needed answer) is not counted again; one the
 * method drops then counts no_l2. The queue holds a reference on its destination.
 */
#include <stdlib.h>
#include <string.h>

#include "lb_xmit.h"

struct lb_l2q_pkt {
    struct lb_l2q_pkt *next;
    uint32_t len;
    uint8_t data[];
};

struct lb_l2q {
    struct lb_dest *dest;        /* holds a reference */
    struct lb_l2q *next;         /* on lb->l2q_list */
    struct lb_l2q_pkt *head, *tail;
    uint32_t bytes;              /* IP bytes held */
    uint64_t deadline_ms;        /* first packet's arrival + LB_L2Q_TIMEOUT_MS */
};

/* A full queue makes room for the newest packet by dropping its oldest ones, counted no_l2, as the
 * kernel's __neigh_event_send does when unres_qlen_bytes would be exceeded (unres_discards). */
static void make_room(lb_t *lb, struct lb_l2q *q, uint32_t len)
{
    while (q->head && q->bytes + len > LB_L2Q_BYTES_MAX) {
        struct lb_l2q_pkt *old = q->head;
        q->head = old->next;
        if (!q->head)
            q->tail = NULL;
        q->bytes -= old->len;
        lb->counters[LB_R_NO_L2]++;
        free(old);
    }
}

int lb_l2q_hold(lb_t *lb, struct lb_conn *c, const struct lb_pkt *p, uint64_t now_ms)
{
    struct lb_dest *d = c->dest;
    struct lb_l2q *q = d->l2q;
    if (p->len > LB_L2Q_BYTES_MAX)
        return -1;
    struct lb_l2q_pkt *k = calloc(1, sizeof(*k) + p->len);
    if (!k)
        return -1;
    if (q)
        make_room(lb, q, p->len);
    if (!q) {
        q = calloc(1, sizeof(*q));
        if (!q) {
            free(k);
            return -1;
        }
        q->dest = d;
        d->refcnt++;
        d->l2q = q;
        q->deadline_ms = now_ms + LB_L2Q_TIMEOUT_MS;
        q->next = lb->l2q_list;
        lb->l2q_list = q;
        lb_wake_check(lb, q->deadline_ms);
    }
    k->len = p->len;
    memcpy(k->data, p->data, p->len);
    if (q->tail)
        q->tail->next = k;
    else
        q->head = k;
    q->tail = k;
    q->bytes += p->len;
    return 0;
}

static int ready(const struct lb_l2q *q)
{
    return q->dest->fwd != NULL && (q->dest->flags & LB_DEST_F_AVAILABLE);
}

uint64_t lb_l2q_due(const lb_t *lb)
{
    uint64_t due = UINT64_MAX;
    for (const struct lb_l2q *q = lb->l2q_list; q; q = q->next) {
        uint64_t t = ready(q) ? 0 : q->deadline_ms;
        if (t < due)
            due = t;
    }
    return due;
}

/* Unlink and free q (its packets counted no_l2 if any are left). */
static void release(lb_t *lb, struct lb_l2q **link)
{
    struct lb_l2q *q = *link;
    *link = q->next;
    while (q->head) {
        struct lb_l2q_pkt *k = q->head;
        q->head = k->next;
        lb->counters[LB_R_NO_L2]++;
        free(k);
    }
    q->dest->l2q = NULL;
    lb_dest_put(lb, q->dest);
    free(q);
}

/* Send held packet k of destination d: its connection's method, as when it arrived. */
static int send_one(lb_t *lb, struct lb_dest *d, const struct lb_l2q_pkt *k, uint64_t now_ms, uint8_t *out,
                    uint32_t out_cap, struct lb_action *act)
{
    struct lb_pkt p;
    if (lb_parse_inline(k->data, k->len, &p) != LB_R_FORWARDED)
        return -1;
    int dir = LB_DIR_IN;
    struct lb_conn *c = lb_conn_lookup_key(lb, p.proto, p.addrs, p.ports, now_ms, &dir, 0);
    if (!c || dir != LB_DIR_IN || c->dest != d || (c->flags & LB_CF_SYNPROXY))
        return -1;
    memset(act, 0, sizeof(*act));
    act->verdict = LB_V_DROP;
    /* The whole transmit of a client's packet, as process() would have done had the state been there:
     * the method (TTL, rewrite, TOA, IPIP with its own MTU check), then the PROXY header and the
     * path-MTU check (fragmentation needed answers the client; DF clear: frag_mtu). */
    int r = lb_xmit_in_finish(lb, &p, c, out, out_cap, act, lb_conn_xmit_in(lb, &p, c, out, out_cap, act));
    if (act->verdict == LB_V_DROP)
        return -1;
    if (!act->out_len) {
        /* The method sent the packet as it came (none does today: DR copies it here, its p lends no bytes):
         * a timer action has no original, so it goes in out. */
        if (k->len > out_cap)
            return -1;
        memcpy(out, k->data, k->len);
        act->out_len = k->len;
    }
    act->reason = r;
    return 0;
}

int lb_l2q_next(lb_t *lb, uint64_t now_ms, uint8_t *out, uint32_t out_cap, struct lb_action *act)
{
    struct lb_l2q **link = &lb->l2q_list;
    while (*link) {
        struct lb_l2q *q = *link;
        if (!(q->dest->flags & LB_DEST_F_AVAILABLE) || (!q->dest->fwd && q->deadline_ms <= now_ms)) {
            release(lb, link); /* deleted, or never resolved in time */
            continue;
        }
        if (!q->dest->fwd) {
            link = &q->next;
            continue;
        }
        while (q->head) {
            struct lb_l2q_pkt *k = q->head;
            q->head = k->next;
            if (!q->head)
                q->tail = NULL;
            q->bytes -= k->len;
            int sent = send_one(lb, q->dest, k, now_ms, out, out_cap, act) == 0;
            free(k);
            if (sent)
                return 1;
            lb->counters[LB_R_NO_L2]++;
        }
        release(lb, link);
    }
    return 0;
}

void lb_l2q_free_all(lb_t *lb)
{
    while (lb->l2q_list) {
        struct lb_l2q *q = lb->l2q_list;
        lb->l2q_list = q->next;
        while (q->head) {
            struct lb_l2q_pkt *k = q->head;
            q->head = k->next;
            free(k);
        }
        q->dest->l2q = NULL;
        lb_dest_put(lb, q->dest);
        free(q);
    }
}
