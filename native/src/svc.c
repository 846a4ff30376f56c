/*
 * svc.c - virtual services and their destinations (the ip_vs_ctl.c part).
 *
 * Every public function here locks, validates completely, and then either
 * applies the whole change or returns an error having changed nothing.
 *
 * Destination lifetime (as IPVS): a destination is referenced by its service's
 * list and by every connection bound to it. Deleting it unlinks it and clears
 * LB_DEST_F_AVAILABLE; while connections still reference it, it waits on the
 * trash list, and re-adding the same destination to the same service revives
 * it (its connections then work again). It is freed when the last reference
 * goes.
 */
#include <stdlib.h>
#include <string.h>

#include "lb_sched.h"
#include "lb_xmit.h"

/* Every bit of the key mixed into the low bits, which pick the chain (2^bits of them). */
static inline uint32_t svc_hash(uint32_t bits, uint8_t proto, uint32_t addr_n, uint16_t port_n)
{
    uint32_t h = addr_n ^ ((uint32_t)port_n << 16) ^ proto;
    h ^= h >> 16;
    h *= 0x45d9f3bu;
    h ^= h >> 16;
    return h & ((1u << bits) - 1);
}

static inline uint32_t svc_bucket(const lb_t *lb, const struct lb_svc *s)
{
    return svc_hash(lb->svc_hash_bits, s->conf.proto, s->addr_n, s->port_n);
}

int lb_svc_table_init(lb_t *lb)
{
    lb->svc_hash = calloc((size_t)1 << LB_HASH_MIN_BITS, sizeof(*lb->svc_hash));
    if (!lb->svc_hash)
        return LB_ENOMEM;
    lb->svc_hash_bits = LB_HASH_MIN_BITS;
    return LB_OK;
}

/* Double the chains when services outnumber them (load factor <= 1), up to 2^LB_HASH_MAX_BITS.
 * Under lb->lock, as every lookup: the packet path never sees a half-moved table. Without memory
 * the old table stays: every service still found, on longer chains. */
static void svc_table_grow(lb_t *lb)
{
    uint32_t live = lb->nsvcs - lb->svcs_holes;
    if (live <= (1u << lb->svc_hash_bits) || lb->svc_hash_bits >= LB_HASH_MAX_BITS)
        return;
    uint32_t old_n = 1u << lb->svc_hash_bits;
    struct lb_svc **nt = calloc((size_t)old_n * 2, sizeof(*nt));
    if (!nt)
        return;
    struct lb_svc **old = lb->svc_hash;
    lb->svc_hash = nt;
    lb->svc_hash_bits++;
    for (uint32_t b = 0; b < old_n; b++) {
        struct lb_svc *s = old[b];
        while (s) {
            struct lb_svc *next = s->hnext;
            uint32_t h = svc_bucket(lb, s);
            s->hnext = nt[h];
            nt[h] = s;
            s = next;
        }
    }
    free(old);
}

struct lb_svc *lb_svc_find(const lb_t *lb, uint8_t proto, uint32_t addr_n, uint16_t port_n)
{
    struct lb_svc *s = lb->svc_hash[svc_hash(lb->svc_hash_bits, proto, addr_n, port_n)];
    for (; s; s = s->hnext)
        if (s->addr_n == addr_n && s->port_n == port_n && s->conf.proto == proto)
            return s;
    return NULL;
}

struct lb_svc *lb_svc_find_host(const lb_t *lb, uint8_t proto, uint32_t addr, uint16_t port)
{
    return lb_svc_find(lb, proto, lb_htonl(addr), lb_htons(port));
}

/* A service is <TCP|UDP, address, port>, or a fwmark service (LB_PROTO_FWMARK, mark >= 1, 0). */
static int svc_key_ok(const struct lb_svc_conf *conf)
{
    if (!conf)
        return 0;
    if (conf->proto == LB_PROTO_FWMARK)
        return conf->addr != 0 && conf->port == 0;
    return conf->proto == LB_PROTO_TCP || conf->proto == LB_PROTO_UDP;
}

/* May a SYN-proxy service have a destination with this method? (FULLNAT only: DPVS refuses DR and
 * tunnel too.) The method says so (LB_XMIT_F_SYNPROXY). */
static int synproxy_capable(int32_t fwd)
{
    const struct lb_xmit_ops *m = lb_xmit_find(fwd);
    return m && (m->flags & LB_XMIT_F_SYNPROXY);
}

/* One-packet scheduling keeps no connection entry, so a method whose replies are addressed to the
 * director itself (FULLNAT, LB_XMIT_F_NEEDS_ENTRY) cannot serve an OPS UDP service. NAT can: as in
 * the kernel, its replies find no entry and pass untranslated. -o on a TCP service is stored and
 * changes nothing, as in the kernel. */
static int ops_refuses(uint8_t proto, uint32_t svc_flags, int32_t fwd)
{
    const struct lb_xmit_ops *m = lb_xmit_find(fwd);
    return (svc_flags & LB_SVC_F_ONEPACKET) && proto == LB_PROTO_UDP && m && (m->flags & LB_XMIT_F_NEEDS_ENTRY);
}

static int any_ops_refused(const struct lb_svc *s, uint32_t svc_flags)
{
    for (uint32_t i = 0; i < s->ndests; i++)
        if (ops_refuses(s->conf.proto, svc_flags, s->dests[i]->conf.fwd))
            return 1;
    return 0;
}

/* The PROXY protocol translates sequence numbers both ways, as SYN-proxy does, and needs the same
 * capability (FULLNAT only; the kernel has neither). */
#define LB_SVC_F_PROXY (LB_SVC_F_PROXY_V1 | LB_SVC_F_PROXY_V2)
#define LB_SVC_F_SEQ (LB_SVC_F_SYNPROXY | LB_SVC_F_PROXY) /* the flags that need synproxy_capable() */

static int all_synproxy_capable(const struct lb_svc *s)
{
    for (uint32_t i = 0; i < s->ndests; i++)
        if (!synproxy_capable(s->dests[i]->conf.fwd))
            return 0;
    return 1;
}

static int find_dest_idx(const struct lb_svc *s, uint32_t addr, uint16_t port)
{
    for (uint32_t i = 0; i < s->ndests; i++)
        if (s->dests[i]->conf.addr == addr && s->dests[i]->conf.port == port)
            return (int)i;
    return -1;
}

/* The one destination of s at addr whose connections go to the client's port (a persistent
 * port-zero or fwmark service's, lb_dest_rport_is_client): a dumped connection names the port it
 * reached, not the destination's. -1 when there is none, or more than one. */
static int find_portless_dest_idx(const struct lb_svc *s, uint32_t addr)
{
    int found = -1;
    for (uint32_t i = 0; i < s->ndests; i++) {
        if (s->dests[i]->conf.addr != addr || !lb_dest_rport_is_client(s->dests[i]))
            continue;
        if (found >= 0)
            return -1;
        found = (int)i;
    }
    return found;
}

/* ---------------------------------------------------------------- binding */

/* __ip_vs_dest_update_overload (Debian 6.1.192): with an upper threshold u and the lower value l
 * in force, set OVERLOAD when totalconns reaches u (mode 0, -1) or l (mode +1); between l and u
 * keep it as it is (mode 0), or set it (+1) or keep it (-1); below l clear it. No upper
 * threshold: clear it. It runs only where the kernel runs it: a threshold changed by add/edit
 * (mode 0), a bind making totalconns == u (+1), an unbind from totalconns == l (-1). */
static void dest_update_overload(struct lb_dest *d, int mode)
{
    uint32_t u = d->conf.u_threshold;
    if (u) {
        uint32_t l = d->l_threshold_val;
        uint32_t conns = d->totalconns;
        if (conns >= (mode > 0 ? l : u)) {
            d->flags |= LB_DEST_F_OVERLOAD;
            return;
        }
        if (conns >= (mode < 0 ? u : l))
            return;
    }
    d->flags &= ~(uint32_t)LB_DEST_F_OVERLOAD;
}

void lb_dest_bind(struct lb_dest *d, struct lb_conn *c)
{
    c->dest = d;
    d->refcnt++;
    if (c->flags & LB_CF_TEMPLATE) {
        d->persistconns++; /* templates count only there: no OVERLOAD trigger */
        return;
    }
    if (!(c->flags & LB_CF_INACTIVE))
        d->activeconns++;
    if (++d->totalconns == d->conf.u_threshold)
        dest_update_overload(d, 1);
}

void lb_dest_unbind(lb_t *lb, struct lb_dest *d, struct lb_conn *c)
{
    if (c->flags & LB_CF_TEMPLATE) {
        d->persistconns--;
    } else {
        if (!(c->flags & LB_CF_INACTIVE))
            d->activeconns--;
        if (d->totalconns-- == d->l_threshold_val)
            dest_update_overload(d, -1);
    }
    c->dest = NULL;
    lb_dest_put(lb, d);
}

/* The thresholds part of __ip_vs_update_dest, on add (new or revived) and edit: only a change
 * of either threshold recomputes the lower value in force and re-evaluates OVERLOAD (a weight
 * edit leaves the flag alone). */
static void dest_set_thresholds(struct lb_dest *d, const struct lb_dest_conf *conf)
{
    if (d->conf.u_threshold == conf->u_threshold && d->conf.l_threshold == conf->l_threshold)
        return;
    d->conf.u_threshold = conf->u_threshold;
    d->conf.l_threshold = conf->l_threshold;
    d->l_threshold_val = conf->l_threshold ? conf->l_threshold : conf->u_threshold - (conf->u_threshold >> 2);
    dest_update_overload(d, 0);
}

static void dest_free(lb_t *lb, struct lb_dest *d)
{
    lb_fp_dest(lb, d, 1); /* its fast-path slot goes free */
    free(d->fwd);
    free(d);
}

void lb_dest_put(lb_t *lb, struct lb_dest *d)
{
    if (--d->refcnt)
        return;
    /* Only an unlinked destination can reach zero; it sits on the trash list. */
    struct lb_dest **link = &lb->trash;
    while (*link && *link != d)
        link = &(*link)->trash_next;
    if (*link == d)
        *link = d->trash_next;
    dest_free(lb, d);
}

/* ---------------------------------------------------------------- services */

static int check_svc_conf(const struct lb_svc_conf *conf, const struct lb_sched_ops **sched)
{
    if (!svc_key_ok(conf))
        return LB_EINVAL;
    if (memchr(conf->sched, 0, sizeof(conf->sched)) == NULL)
        return LB_EINVAL;
    if (conf->persist_timeout_s > UINT32_MAX / 1000)
        return LB_EINVAL;
    if (conf->flags & ~(uint32_t)(LB_SVC_F_TOA | LB_SVC_F_SYNPROXY | LB_SVC_F_ONEPACKET | LB_SVC_F_SCHED1 |
                                  LB_SVC_F_SCHED2 | LB_SVC_F_SCHED3 | LB_SVC_F_PROXY))
        return LB_EINVAL;
    if ((conf->flags & LB_SVC_F_SEQ) && conf->proto != LB_PROTO_TCP)
        return LB_EINVAL; /* SYN-proxy and the PROXY protocol are TCP features */
    if ((conf->flags & LB_SVC_F_PROXY) == LB_SVC_F_PROXY || ((conf->flags & LB_SVC_F_PROXY) && (conf->flags & LB_SVC_F_TOA)))
        return LB_EINVAL; /* one version, and one carrier of the client's address per service */
    *sched = lb_sched_find(conf->sched);
    return *sched ? LB_OK : LB_ENOENT;
}

int lb_svc_add(lb_t *lb, const struct lb_svc_conf *conf)
{
    const struct lb_sched_ops *sched = NULL;
    if (!svc_key_ok(conf))
        return LB_EINVAL;
    int err = LB_OK;
    pthread_mutex_lock(&lb->lock);
    /* Kernel order: "Service already exists" before argument errors. */
    if (lb_svc_find_host(lb, conf->proto, conf->addr, conf->port)) {
        err = LB_EEXIST;
        goto out;
    }
    if ((err = check_svc_conf(conf, &sched)) != LB_OK)
        goto out;
    if (lb->nsvcs == lb->svcs_cap) {
        uint32_t cap = lb->svcs_cap ? lb->svcs_cap * 2 : 16;
        struct lb_svc **n = realloc(lb->svcs, cap * sizeof(*n));
        if (!n) {
            err = LB_ENOMEM;
            goto out;
        }
        lb->svcs = n;
        lb->svcs_cap = cap;
    }
    if ((conf->flags & LB_SVC_F_SEQ) && (err = lb_sp_enable(lb)) != LB_OK)
        goto out; /* the side table holds both SYN-proxy's and the PROXY protocol's state */
    /* A virtual address is one of the director's own (a new connection from it is a martian). */
    int vip = conf->proto != LB_PROTO_FWMARK;
    if (vip && (err = lb_local_vip_hold(lb, lb_htonl(conf->addr))) != LB_OK)
        goto out;
    struct lb_svc *s = calloc(1, sizeof(*s));
    if (!s) {
        if (vip)
            lb_local_vip_put(lb, lb_htonl(conf->addr));
        err = LB_ENOMEM;
        goto out;
    }
    s->conf = *conf;
    s->addr_n = lb_htonl(conf->addr);
    s->port_n = lb_htons(conf->port);
    s->lb = lb;
    if ((err = lb_sched_bind(s, sched)) != LB_OK) {
        if (vip)
            lb_local_vip_put(lb, s->addr_n);
        free(s);
        goto out;
    }
    lb_sched_wants_clock(lb, s);
    s->id = ++lb->next_svc_id;
    uint32_t h = svc_bucket(lb, s);
    s->hnext = lb->svc_hash[h];
    lb->svc_hash[h] = s;
    s->list_idx = lb->nsvcs;
    lb->svcs[lb->nsvcs++] = s;
    svc_table_grow(lb);
out:
    pthread_mutex_unlock(&lb->lock);
    return err;
}

int lb_svc_edit(lb_t *lb, const struct lb_svc_conf *conf)
{
    const struct lb_sched_ops *sched = NULL;
    if (!svc_key_ok(conf))
        return LB_EINVAL;
    int err = LB_OK;
    pthread_mutex_lock(&lb->lock);
    struct lb_svc *s = lb_svc_find_host(lb, conf->proto, conf->addr, conf->port);
    if (!s) {
        err = LB_ESRCH;
    } else if ((err = check_svc_conf(conf, &sched)) != LB_OK) {
        /* err set: argument errors come after "No such service" */
    } else if ((conf->flags & LB_SVC_F_SEQ) && !all_synproxy_capable(s)) {
        err = LB_EOPNOTSUPP; /* only FULLNAT destinations can be SYN-proxied or get a PROXY header */
    } else if (any_ops_refused(s, conf->flags)) {
        err = LB_EOPNOTSUPP; /* -o on UDP with FULLNAT destinations */
    } else if ((conf->flags & LB_SVC_F_SEQ) && (err = lb_sp_enable(lb)) != LB_OK) {
        /* err set */
    } else if (s->sched != sched && (err = lb_sched_switch(s, sched)) != LB_OK) {
        /* err set: the new scheduler could not build its state; the service is unchanged */
    } else {
        lb_sched_wants_clock(lb, s);
        memcpy(s->conf.sched, conf->sched, sizeof(s->conf.sched));
        s->conf.persist_timeout_s = conf->persist_timeout_s;
        s->conf.netmask = conf->netmask;
        s->conf.flags = conf->flags;
    }
    pthread_mutex_unlock(&lb->lock);
    return err;
}

/* Unlink dest i from s (it stays alive while connections reference it); the scheduler hears of it
 * unless the whole service goes (its scheduler is unbound first, as __ip_vs_del_service does). */
static void unlink_dest(lb_t *lb, struct lb_svc *s, uint32_t i)
{
    struct lb_dest *d = s->dests[i];
    memmove(&s->dests[i], &s->dests[i + 1], (s->ndests - i - 1) * sizeof(*s->dests));
    s->ndests--;
    if (s->sched && s->sched->del_dest)
        s->sched->del_dest(s, d, i);
    d->flags &= ~(uint32_t)LB_DEST_F_AVAILABLE;
    d->svc = NULL;
    d->trash_next = lb->trash;
    lb->trash = d;
    lb_fp_dest(lb, d, 0); /* its fast-pathed flows go to the core, which drops their packets as IPVS does */
    lb_dest_put(lb, d);
}

static void svc_destroy(lb_t *lb, struct lb_svc *s)
{
    lb_est_unlink(lb, s);
    if (s->conf.proto != LB_PROTO_FWMARK)
        lb_local_vip_put(lb, s->addr_n);
    lb_sched_unbind(s);
    while (s->ndests)
        unlink_dest(lb, s, s->ndests - 1);
    for (int i = 0; i < LB_XMIT_MAX; i++) /* the methods' own per-service state (FULLNAT's pool) */
        if (lb_xmit_methods[i] && lb_xmit_methods[i]->svc_done)
            lb_xmit_methods[i]->svc_done(lb, s);
    free(s->dests);
    free(s);
}

/* Close the holes deleted services left in lb->svcs, keeping the order. */
static void compact_svcs(lb_t *lb)
{
    uint32_t n = 0;
    for (uint32_t i = 0; i < lb->nsvcs; i++) {
        struct lb_svc *s = lb->svcs[i];
        if (!s)
            continue;
        s->list_idx = n;
        lb->svcs[n++] = s;
    }
    lb->nsvcs = n;
    lb->svcs_holes = 0;
}

int lb_svc_del(lb_t *lb, uint8_t proto, uint32_t addr, uint16_t port)
{
    pthread_mutex_lock(&lb->lock);
    struct lb_svc *s = lb_svc_find_host(lb, proto, addr, port);
    if (!s) {
        pthread_mutex_unlock(&lb->lock);
        return LB_ESRCH;
    }
    struct lb_svc **link = &lb->svc_hash[svc_bucket(lb, s)];
    while (*link != s)
        link = &(*link)->hnext;
    *link = s->hnext;
    lb->svcs[s->list_idx] = NULL;
    lb->svcs_holes++;
    if (lb->svcs_holes > 64 && lb->svcs_holes * 2 > lb->nsvcs)
        compact_svcs(lb);
    svc_destroy(lb, s);
    pthread_mutex_unlock(&lb->lock);
    return LB_OK;
}

int lb_clear(lb_t *lb)
{
    pthread_mutex_lock(&lb->lock);
    struct lb_svc *s;
    LB_FOR_EACH_SVC(lb, s)
        svc_destroy(lb, s);
    lb->nsvcs = 0;
    lb->svcs_holes = 0;
    memset(lb->svc_hash, 0, ((size_t)1 << lb->svc_hash_bits) * sizeof(*lb->svc_hash));
    pthread_mutex_unlock(&lb->lock);
    return LB_OK;
}

/* ---------------------------------------------------------------- destinations */

static int check_dest_conf(const struct lb_dest_conf *conf)
{
    if (!conf)
        return LB_EINVAL;
    if (conf->weight < 0) /* 0..LB_DEST_WEIGHT_MAX, the whole non-negative int32_t range, as the kernel */
        return LB_EINVAL;
    if (!lb_xmit_find(conf->fwd))
        return LB_EOPNOTSUPP; /* no such method registered (masq: not implemented) */
    if (conf->l_threshold > conf->u_threshold)
        return LB_EINVAL; /* the kernel refuses a lower threshold above the upper (ERANGE) */
    return LB_OK;
}

static struct lb_dest *trash_take(lb_t *lb, const struct lb_svc *s, uint32_t addr, uint16_t port)
{
    struct lb_dest **link = &lb->trash;
    for (; *link; link = &(*link)->trash_next) {
        struct lb_dest *d = *link;
        if (d->conf.addr == addr && d->conf.port == port && d->vproto == s->conf.proto &&
            d->vaddr == s->conf.addr && d->vport == s->conf.port) {
            *link = d->trash_next;
            d->trash_next = NULL;
            return d;
        }
    }
    return NULL;
}

int lb_dest_add(lb_t *lb, uint8_t proto, uint32_t vaddr, uint16_t vport, const struct lb_dest_conf *conf)
{
    int err = LB_OK;
    pthread_mutex_lock(&lb->lock);
    struct lb_svc *s = lb_svc_find_host(lb, proto, vaddr, vport);
    if (!s) {
        err = LB_ESRCH; /* kernel order: "Service not defined" first */
        goto out;
    }
    if ((err = check_dest_conf(conf)) != LB_OK)
        goto out;
    if ((s->conf.flags & LB_SVC_F_SEQ) && !synproxy_capable(conf->fwd)) {
        err = LB_EOPNOTSUPP; /* DR and tunnel cannot be SYN-proxied (DPVS refuses it too) nor get a PROXY header */
        goto out;
    }
    if (ops_refuses(s->conf.proto, s->conf.flags, conf->fwd)) {
        err = LB_EOPNOTSUPP; /* FULLNAT on a one-packet UDP service */
        goto out;
    }
    if (find_dest_idx(s, conf->addr, conf->port) >= 0) {
        err = LB_EEXIST;
        goto out;
    }
    if (s->ndests == s->dests_cap) {
        uint32_t cap = s->dests_cap ? s->dests_cap * 2 : 8;
        struct lb_dest **n = realloc(s->dests, cap * sizeof(*n));
        if (!n) {
            err = LB_ENOMEM;
            goto out;
        }
        s->dests = n;
        s->dests_cap = cap;
    }
    struct lb_dest *d = trash_take(lb, s, conf->addr, conf->port);
    int revived = d != NULL;
    if (!d) {
        d = calloc(1, sizeof(*d));
        if (!d) {
            err = LB_ENOMEM;
            goto out;
        }
        d->vproto = s->conf.proto;
        d->vaddr = s->conf.addr;
        d->vport = s->conf.port;
    }
    const struct lb_dest prev = *d; /* to undo with, should the scheduler refuse it */
    if (d->svc_id != s->id) {
        /* Revived into a re-created service (or new): its statistics start afresh, and its rates. */
        memset(&d->stats, 0, sizeof(d->stats));
        memset(&d->est, 0, sizeof(d->est));
        d->svc_id = s->id;
    }
    dest_set_thresholds(d, conf); /* a new one has none yet (calloc); a revived one keeps its own */
    d->conf = *conf;
    d->last_weight = conf->weight; /* set by every add, even to 0 */
    d->addr_n = lb_htonl(conf->addr);
    d->port_n = lb_htons(conf->port);
    d->flags |= LB_DEST_F_AVAILABLE;
    if (d->l2q)
        lb_wake_check(lb, 0); /* its held packets may leave now (lb_l2q_due) */
    d->svc = s;
    d->refcnt++;
    /* Kernel order: the newest destination goes to the head of the list. */
    memmove(&s->dests[1], &s->dests[0], s->ndests * sizeof(*s->dests));
    s->dests[0] = d;
    s->ndests++;
    if (s->sched->add_dest && (err = s->sched->add_dest(s, d, 0)) != LB_OK) {
        /* The scheduler kept its state: take the destination out again, as it was. */
        memmove(&s->dests[0], &s->dests[1], (s->ndests - 1) * sizeof(*s->dests));
        s->ndests--;
        *d = prev;
        if (revived) {
            d->trash_next = lb->trash; /* back to the trash, with its connections */
            lb->trash = d;
        } else {
            free(d);
        }
    } else {
        lb_fp_dest(lb, d, 0); /* back in a service (revived): its slot, if any, is up again */
        if (revived)
            lb_est_touch(s); /* its estimator is stepped again (what it counted since its last step, its
                                rates that were not 0), with its service's */
    }
out:
    pthread_mutex_unlock(&lb->lock);
    return err;
}

int lb_dest_edit(lb_t *lb, uint8_t proto, uint32_t vaddr, uint16_t vport, const struct lb_dest_conf *conf)
{
    int err = LB_OK;
    pthread_mutex_lock(&lb->lock);
    struct lb_svc *s = lb_svc_find_host(lb, proto, vaddr, vport);
    int i = s && conf ? find_dest_idx(s, conf->addr, conf->port) : -1;
    if (!s) {
        err = LB_ESRCH;
    } else if ((err = check_dest_conf(conf)) != LB_OK) {
        /* err set */
    } else if ((s->conf.flags & LB_SVC_F_SEQ) && !synproxy_capable(conf->fwd)) {
        err = LB_EOPNOTSUPP;
    } else if (ops_refuses(s->conf.proto, s->conf.flags, conf->fwd)) {
        err = LB_EOPNOTSUPP;
    } else if (i < 0) {
        err = LB_ENOENT;
    } else {
        struct lb_dest *d = s->dests[i];
        const struct lb_dest prev = *d;
        dest_set_thresholds(d, conf);
        d->conf = *conf;
        if (conf->weight != 0) /* an edit to weight 0 keeps the last non-zero weight */
            d->last_weight = conf->weight;
        if (s->sched->upd_dest && (err = s->sched->upd_dest(s, d)) != LB_OK) {
            d->conf = prev.conf; /* the scheduler kept its state: so does the destination */
            d->flags = prev.flags;
            d->l_threshold_val = prev.l_threshold_val;
            d->last_weight = prev.last_weight;
        } else if (prev.conf.fwd != conf->fwd) {
            /* A new method needs new forwarding state: drop the old one. */
            free(d->fwd);
            d->fwd = NULL;
            lb_fp_dest(lb, d, 0);
        }
    }
    pthread_mutex_unlock(&lb->lock);
    return err;
}

int lb_dest_del(lb_t *lb, uint8_t proto, uint32_t vaddr, uint16_t vport, uint32_t daddr, uint16_t dport)
{
    int err = LB_OK;
    pthread_mutex_lock(&lb->lock);
    struct lb_svc *s = lb_svc_find_host(lb, proto, vaddr, vport);
    int i = s ? find_dest_idx(s, daddr, dport) : -1;
    if (!s)
        err = LB_ESRCH;
    else if (i < 0)
        err = LB_ENOENT;
    else
        unlink_dest(lb, s, (uint32_t)i);
    pthread_mutex_unlock(&lb->lock);
    return err;
}

/* The same forwarding state for the fast path (lb_fp_ops): the control plane re-installs unchanged
 * state on every neighbour event, which must not send every flow back through lbd. */
static int fwd_same(const struct lb_dest_fwd *a, const struct lb_dest_fwd *b)
{
    if (!a || !b)
        return a == b;
    return a->conf.ifindex == b->conf.ifindex && a->conf.mtu == b->conf.mtu && a->conf.saddr == b->conf.saddr &&
           memcmp(a->l2hdr, b->l2hdr, LB_L2HDR_LEN) == 0;
}

int lb_dest_set_fwd(lb_t *lb, uint8_t proto, uint32_t vaddr, uint16_t vport, uint32_t daddr, uint16_t dport,
                    const struct lb_fwd_conf *fwd)
{
    struct lb_dest_fwd *nf = NULL;
    if (fwd && fwd->ifindex > 0) {
        /* Build the new state completely, in zeroed memory, before publishing it. */
        nf = calloc(1, sizeof(*nf));
        if (!nf)
            return LB_ENOMEM;
        nf->conf = *fwd;
        memcpy(nf->l2hdr, fwd->dst_mac, 6);
        memcpy(nf->l2hdr + 6, fwd->src_mac, 6);
        nf->l2hdr[12] = 0x08;
        nf->l2hdr[13] = 0x00;
    }
    int err = LB_OK;
    pthread_mutex_lock(&lb->lock);
    struct lb_svc *s = lb_svc_find_host(lb, proto, vaddr, vport);
    int i = s ? find_dest_idx(s, daddr, dport) : -1;
    if (!s) {
        err = LB_ESRCH;
    } else if (fwd && fwd->ifindex < 0) {
        err = LB_EINVAL;
    } else if (i < 0) {
        err = LB_ENOENT;
    } else {
        struct lb_dest *d = s->dests[i];
        struct lb_dest_fwd *old = d->fwd;
        d->fwd = nf;
        nf = old; /* freed below */
        if (d->l2q)
            lb_wake_check(lb, 0); /* its held packets may leave now (lb_l2q_due) */
        if (!fwd_same(old, d->fwd))
            lb_fp_dest(lb, d, 0); /* a new MAC, interface or MTU: a new generation in the fast path */
    }
    pthread_mutex_unlock(&lb->lock);
    free(nf);
    return err;
}

/* Counters and rates of s and its destinations restart at 0 (ip_vs_zero_stats, ip_vs_zero_estimator). */
static void svc_zero(lb_t *lb, struct lb_svc *s)
{
    memset(&s->stats, 0, sizeof(s->stats));
    lb_est_zero(&s->est, &s->stats);
    for (uint32_t j = 0; j < s->ndests; j++) {
        struct lb_dest *d = s->dests[j];
        memset(&d->stats, 0, sizeof(d->stats));
        lb_est_zero(&d->est, &d->stats);
    }
    lb->hs_events++; /* the destinations' connection counts went back to 0 (the stalled-handshake watch) */
}

int lb_zero_svc(lb_t *lb, uint8_t proto, uint32_t addr, uint16_t port)
{
    pthread_mutex_lock(&lb->lock);
    struct lb_svc *s = lb_svc_find_host(lb, proto, addr, port);
    if (s)
        svc_zero(lb, s);
    pthread_mutex_unlock(&lb->lock);
    return s ? LB_OK : LB_ESRCH;
}

int lb_zero(lb_t *lb)
{
    pthread_mutex_lock(&lb->lock);
    struct lb_svc *s;
    LB_FOR_EACH_SVC(lb, s)
        svc_zero(lb, s);
    pthread_mutex_unlock(&lb->lock);
    return LB_OK;
}

/* ---------------------------------------------------------------- observation */

int lb_svc_list(lb_t *lb, struct lb_svc_info *out, uint32_t cap)
{
    pthread_mutex_lock(&lb->lock);
    uint32_t n = 0;
    const struct lb_svc *s;
    LB_FOR_EACH_SVC(lb, s) {
        if (n < cap && out) {
            memset(&out[n], 0, sizeof(out[n]));
            out[n].conf = s->conf;
            out[n].num_dests = s->ndests;
            out[n].stats = s->stats;
            lb_est_read(&s->est, &out[n].rates);
        }
        n++;
    }
    pthread_mutex_unlock(&lb->lock);
    return (int)n;
}

int lb_svc_list_changed(lb_t *lb, struct lb_svc_info *out, uint32_t cap)
{
    if (!out)
        return 0;
    uint32_t n = 0;
    pthread_mutex_lock(&lb->lock);
    for (uint32_t i = 0; i < lb->nsvcs && n < cap; i++) {
        struct lb_svc *s = lb->svcs[i];
        if (!s || !memcmp(&s->stats, &s->stats_seen, sizeof(s->stats)))
            continue;
        s->stats_seen = s->stats;
        memset(&out[n], 0, sizeof(out[n]));
        out[n].conf = s->conf;
        out[n].num_dests = s->ndests;
        out[n].stats = s->stats;
        lb_est_read(&s->est, &out[n].rates);
        n++;
    }
    pthread_mutex_unlock(&lb->lock);
    return (int)n;
}

int lb_svc_get(lb_t *lb, uint8_t proto, uint32_t vaddr, uint16_t vport, struct lb_svc_info *out)
{
    if (!out)
        return LB_EINVAL;
    pthread_mutex_lock(&lb->lock);
    const struct lb_svc *s = lb_svc_find_host(lb, proto, vaddr, vport);
    int ret = LB_ESRCH;
    if (s) {
        memset(out, 0, sizeof(*out));
        out->conf = s->conf;
        out->num_dests = s->ndests;
        out->stats = s->stats;
        lb_est_read(&s->est, &out->rates);
        ret = 0;
    }
    pthread_mutex_unlock(&lb->lock);
    return ret;
}

int lb_dest_list(lb_t *lb, uint8_t proto, uint32_t vaddr, uint16_t vport, struct lb_dest_info *out, uint32_t cap)
{
    pthread_mutex_lock(&lb->lock);
    const struct lb_svc *s = lb_svc_find_host(lb, proto, vaddr, vport);
    int ret = LB_ESRCH;
    if (s) {
        ret = (int)s->ndests;
        for (uint32_t i = 0; i < s->ndests && i < cap && out; i++) {
            const struct lb_dest *d = s->dests[i];
            memset(&out[i], 0, sizeof(out[i]));
            out[i].conf = d->conf;
            out[i].active = d->activeconns;
            out[i].inactive = lb_dest_inactconns(d);
            out[i].persist = d->persistconns;
            out[i].flags = d->flags | (d->fwd ? LB_DEST_F_FWD_VALID : 0);
            out[i].stats = d->stats;
            out[i].syn_retrans = d->syn_retrans;
            out[i].handshakes = d->handshakes;
            lb_est_read(&d->est, &out[i].rates);
        }
    }
    pthread_mutex_unlock(&lb->lock);
    return ret;
}

int lb_synproxy_set_svc(lb_t *lb, uint8_t proto, uint32_t addr, uint16_t port, const struct lb_synproxy_conf *conf)
{
    pthread_mutex_lock(&lb->lock);
    struct lb_svc *s = lb_svc_find_host(lb, proto, addr, port);
    int err = s ? (conf ? lb_sp_check_conf(conf) : LB_OK) : LB_ESRCH;
    if (err) {
        pthread_mutex_unlock(&lb->lock);
        return err;
    }
    if (s) {
        if (conf)
            s->sp_conf = *conf;
        s->sp_own = conf != NULL;
    }
    pthread_mutex_unlock(&lb->lock);
    return s ? LB_OK : LB_ESRCH;
}

/* ---------------------------------------------------------------- restart recovery */

/* The fwmark service a restored connection of (daddr, dport) belonged to: the dump does not name
 * it, so the first fwmark service holding that destination (or the address with port 0, the
 * client's port) is taken. Only reached for entries of no <protocol, VIP, port> service. */
static struct lb_svc *fwmark_svc_of(const lb_t *lb, uint32_t daddr, uint16_t dport, int *di)
{
    for (uint32_t i = 0; i < lb->nsvcs; i++) {
        struct lb_svc *s = lb->svcs[i];
        if (!s || s->conf.proto != LB_PROTO_FWMARK)
            continue;
        int k = find_dest_idx(s, daddr, dport);
        if (k < 0)
            k = find_dest_idx(s, daddr, 0);
        if (k < 0)
            k = find_portless_dest_idx(s, daddr);
        if (k >= 0) {
            *di = k;
            return s;
        }
    }
    return NULL;
}

_Static_assert(LB_CONN_SEQ_PX_SENT == LB_PX_SENT && LB_CONN_SEQ_PX_ACKED == LB_PX_ACKED && LB_CONN_SEQ_PX_V2 == LB_PX_V2,
               "lb_conn_seq's PROXY flags are the side table's");

/* The sequence state a sync record brings is consistent: SYN-proxy and PROXY only on TCP
 * connections (not templates), flags matching the entry's, a PROXY header length one of the
 * service flags could have produced, no unknown bits. */
static int seq_valid(const struct lb_conn_info *ci, const struct lb_conn_seq *seq)
{
    uint16_t want = (uint16_t)(ci->flags & (LB_CONN_F_SYNPROXY | LB_CONN_F_PROXY));
    if (!want || ci->proto != LB_PROTO_TCP || (ci->flags & LB_CONN_F_TEMPLATE) || seq->flags != want)
        return 0;
    if (seq->px_flags & ~(uint8_t)(LB_CONN_SEQ_PX_SENT | LB_CONN_SEQ_PX_ACKED | LB_CONN_SEQ_PX_V2))
        return 0;
    if (!(want & LB_CONN_F_PROXY))
        return seq->px_len == 0 && seq->px_flags == 0;
    if (seq->px_flags & LB_CONN_SEQ_PX_V2)
        return seq->px_len == LB_PROXY_V2_LEN;
    return seq->px_len >= 32 && seq->px_len <= LB_PROXY_V1_MAX_LEN; /* v1: 32..56 bytes */
}

static int conn_restore(lb_t *lb, const struct lb_conn_info *ci, const struct lb_conn_seq *seq, uint64_t now_ms);

int lb_conn_restore(lb_t *lb, const struct lb_conn_info *ci, uint64_t now_ms)
{
    return conn_restore(lb, ci, NULL, now_ms);
}

int lb_conn_restore_seq(lb_t *lb, const struct lb_conn_info *ci, const struct lb_conn_seq *seq, uint64_t now_ms)
{
    if (!ci || !seq || !seq_valid(ci, seq))
        return LB_EINVAL;
    return conn_restore(lb, ci, seq, now_ms);
}

int lb_conn_seq_get(lb_t *lb, uint8_t proto, uint32_t caddr, uint16_t cport, uint32_t vaddr, uint16_t vport,
                    uint64_t now_ms, struct lb_conn_seq *out)
{
    if (!out || proto != LB_PROTO_TCP)
        return LB_EINVAL;
    memset(out, 0, sizeof(*out));
    int err = LB_ESRCH;
    pthread_mutex_lock(&lb->lock);
    struct lb_conn *c = lb_conn_lookup(lb, proto, lb_htonl(caddr), lb_htons(cport), lb_htonl(vaddr),
                                       lb_htons(vport), now_ms, NULL);
    if (c) {
        uint16_t fl = (uint16_t)(c->flags & (LB_CF_SYNPROXY | LB_CF_PROXY));
        const struct lb_sp *sp = lb->sp ? &lb->sp[c - lb->conns] : NULL;
        if (!fl || !sp)
            err = LB_ENOENT;
        else if ((fl & LB_CF_SYNPROXY) && sp->phase != LB_SP_DONE)
            err = LB_EBUSY; /* the real server's handshake is not complete: no offset yet */
        else {
            out->flags = fl;
            out->px_flags = sp->px_flags;
            out->px_len = sp->px_len;
            out->cookie_isn = sp->cookie_isn;
            out->client_isn = sp->client_isn;
            out->d_in = sp->d_in;
            err = LB_OK;
        }
    }
    pthread_mutex_unlock(&lb->lock);
    return err;
}

/* A restored entry's sequence state into the side table (allocated if no service needed it yet). */
static int seq_install(lb_t *lb, struct lb_conn *c, const struct lb_conn_seq *seq)
{
    int err = lb_sp_enable(lb);
    if (err != LB_OK)
        return err;
    struct lb_sp *sp = &lb->sp[c - lb->conns];
    memset(sp, 0, sizeof(*sp));
    sp->cookie_isn = seq->cookie_isn;
    sp->client_isn = seq->client_isn;
    sp->d_in = seq->d_in;
    sp->px_len = seq->px_len;
    sp->px_flags = seq->px_flags;
    if (seq->flags & LB_CONN_F_SYNPROXY)
        sp->phase = LB_SP_DONE;
    c->flags |= (uint16_t)(seq->flags & (LB_CF_SYNPROXY | LB_CF_PROXY));
    lb_conn_dirty(lb, (uint32_t)(c - lb->conns));
    return LB_OK;
}

static int conn_restore(lb_t *lb, const struct lb_conn_info *ci, const struct lb_conn_seq *seq, uint64_t now_ms)
{
    /* protocol 0: a fwmark service's template (<IPPROTO_IP, client, 0, fwmark, 0>) */
    int fwm_tmpl = ci && ci->proto == LB_PROTO_FWMARK && (ci->flags & LB_CONN_F_TEMPLATE);
    if (!ci || (ci->proto != LB_PROTO_TCP && ci->proto != LB_PROTO_UDP && !fwm_tmpl) || ci->state >= LB_S_COUNT)
        return LB_EINVAL;
    if ((ci->flags & (LB_CONN_F_SYNPROXY | LB_CONN_F_PROXY)) && !seq)
        return LB_EOPNOTSUPP; /* their sequence translation is not in the dump */
    if (ci->expires_in_ms <= 0)
        return LB_OK; /* already dead: nothing to restore */
    int err = LB_OK;
    pthread_mutex_lock(&lb->lock);
    struct lb_svc *s = lb_svc_find_host(lb, ci->proto, ci->vaddr, ci->vport);
    if (!s && ci->vport)
        s = lb_svc_find_host(lb, ci->proto, ci->vaddr, 0); /* a connection of a port-zero service */
    int di = s ? find_dest_idx(s, ci->daddr, ci->dport) : -1;
    if (s && di < 0 && !s->conf.port)
        di = find_dest_idx(s, ci->daddr, 0); /* dumped with the client's port (lb_conn_dump) */
    if (s && di < 0 && !s->conf.port)
        di = find_portless_dest_idx(s, ci->daddr); /* RIP:8080 under a persistent VIP:0, dumped as RIP:443 */
    if (!s && !(ci->flags & LB_CONN_F_TEMPLATE))
        s = fwmark_svc_of(lb, ci->daddr, ci->dport, &di);
    if (!s) {
        err = LB_ESRCH;
        goto out;
    }
    if (di < 0) {
        err = LB_ENOENT;
        goto out;
    }
    struct lb_dest *d = s->dests[di];
    struct lb_pkt p;
    memset(&p, 0, sizeof(p));
    p.proto = ci->proto;
    p.saddr = lb_htonl(ci->caddr);
    p.sport = lb_htons(ci->cport);
    p.daddr = lb_htonl(ci->vaddr);
    p.dport = lb_htons(ci->vport);
    if (ci->flags & LB_CONN_F_TEMPLATE) {
        struct lb_conn *t = lb_tmpl_lookup(lb, p.proto, p.saddr, p.daddr, p.dport, now_ms);
        if (t) {
            err = LB_EEXIST;
            if ((ci->flags & LB_CONN_F_UPDATE) && t->dest == d) {
                uint16_t assured = (uint16_t)(ci->flags & LB_CONN_F_ASSURED);
                if ((t->flags & LB_CONN_F_ASSURED) != assured) {
                    t->flags = (uint16_t)((t->flags & ~LB_CONN_F_ASSURED) | assured);
                    lb_conn_changed(lb, t);
                }
                lb_conn_set_expiry(lb, t, now_ms + (uint64_t)ci->expires_in_ms);
                lb_sync_entry_restored(lb, (uint32_t)(t - lb->conns));
                err = LB_RESTORE_UPDATED;
            }
            goto out;
        }
        t = lb_tmpl_new(lb, p.proto, p.saddr, p.daddr, p.dport, d,
                                        s->conf.persist_timeout_s ? s->conf.persist_timeout_s * 1000 : 300000, now_ms, 0);
        if (!t) {
            err = LB_ENOSPC;
            goto out;
        }
        t->flags |= (uint16_t)(ci->flags & LB_CONN_F_ASSURED);
        lb_conn_set_expiry(lb, t, now_ms + (uint64_t)ci->expires_in_ms);
        lb_sync_entry_restored(lb, (uint32_t)(t - lb->conns));
        goto out;
    }
    struct lb_conn *old = lb_conn_lookup(lb, p.proto, p.saddr, p.sport, p.daddr, p.dport, now_ms, NULL);
    if (old) {
        err = LB_EEXIST;
        if ((ci->flags & LB_CONN_F_UPDATE) && old->dest == d &&
            (old->flags & (LB_CF_SYNPROXY | LB_CF_PROXY)) == (ci->flags & (LB_CONN_F_SYNPROXY | LB_CONN_F_PROXY))) {
            if (seq && lb->sp && (seq->flags & LB_CONN_F_PROXY))
                lb->sp[old - lb->conns].px_flags |= (uint8_t)(seq->px_flags & (LB_PX_SENT | LB_PX_ACKED));
            lb_conn_set_state(lb, old, ci->state); /* with IPVS's active/inactive accounting */
            lb_conn_set_expiry(lb, old, now_ms + (uint64_t)ci->expires_in_ms);
            lb_sync_entry_restored(lb, (uint32_t)(old - lb->conns));
            err = LB_RESTORE_UPDATED;
        }
        goto out;
    }
    /* The method binds what it needs (FULLNAT: the dumped local address, which must exist, and
     * port, whose reply tuple must be free). */
    const struct lb_xmit_ops *m = lb_xmit_methods[d->conf.fwd];
    struct lb_conn_bind b = {0, 0, NULL, 0};
    if (m->conn_restore && (err = m->conn_restore(lb, s, d, ci, now_ms, &b)) != LB_OK)
        goto out;
    struct lb_conn *c = lb_conn_new(lb, &p, d, &b, now_ms, 0);
    if (!c) {
        if (m->release)
            m->release(lb, p.proto, d, &b);
        err = LB_ENOSPC;
        goto out;
    }
    if (seq && (err = seq_install(lb, c, seq)) != LB_OK) {
        lb_conn_expire_now(lb, c);
        goto out;
    }
    lb_conn_set_state(lb, c, ci->state); /* with IPVS's active/inactive accounting */
    c->flags |= (uint16_t)(ci->flags & LB_CONN_F_TOA_DONE);
    lb_conn_set_expiry(lb, c, now_ms + (uint64_t)ci->expires_in_ms);
    lb_sync_entry_restored(lb, (uint32_t)(c - lb->conns)); /* as a received record: ip_vs_proc_conn */
out:
    pthread_mutex_unlock(&lb->lock);
    return err;
}
