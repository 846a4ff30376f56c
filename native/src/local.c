/*
 * local.c - the director's own addresses, for the martian-source check of new connections.
 *
 * The kernel's routing drops a packet whose source is one of the host's own addresses
 * (fib_validate_source: a RTN_LOCAL or RTN_BROADCAST source, unless accept_local); lbd sees packets
 * before routing, so it applies the rule itself. The set is the union of the control plane's
 * (lb_local_addrs_set: interface and broadcast addresses) and the services' virtual addresses,
 * which are local by definition (the director answers for them), counted per service so that it
 * holds without any control plane. A chained hash that grows with its nodes (one per VIP: a
 * director with 10,000 services may have 10,000 of them): one short chain per new connection.
 */
#include <stdlib.h>

#include "lb_internal.h"

int lb_local_init(lb_t *lb)
{
    lb->local_hash = calloc((size_t)1 << LB_HASH_MIN_BITS, sizeof(*lb->local_hash));
    if (!lb->local_hash)
        return LB_ENOMEM;
    lb->local_hash_bits = LB_HASH_MIN_BITS;
    return LB_OK;
}

static inline uint32_t nbuckets(const lb_t *lb)
{
    return 1u << lb->local_hash_bits;
}

/* Double the chains when nodes outnumber them (load factor <= 1), up to 2^LB_HASH_MAX_BITS; under
 * lb->lock, as every lookup. Without memory the old table stays (longer chains, same answers). */
static void grow(lb_t *lb)
{
    if (lb->nlocal <= nbuckets(lb) || lb->local_hash_bits >= LB_HASH_MAX_BITS)
        return;
    uint32_t old_n = nbuckets(lb);
    struct lb_local **nt = calloc((size_t)old_n * 2, sizeof(*nt));
    if (!nt)
        return;
    struct lb_local **old = lb->local_hash;
    lb->local_hash = nt;
    lb->local_hash_bits++;
    for (uint32_t b = 0; b < old_n; b++) {
        struct lb_local *l = old[b];
        while (l) {
            struct lb_local *next = l->next;
            uint32_t h = lb_local_hash(lb, l->addr_n);
            l->next = nt[h];
            nt[h] = l;
            l = next;
        }
    }
    free(old);
}

static struct lb_local *find(const lb_t *lb, uint32_t addr_n)
{
    for (struct lb_local *l = lb->local_hash[lb_local_hash(lb, addr_n)]; l; l = l->next)
        if (l->addr_n == addr_n)
            return l;
    return NULL;
}

/* The node of addr_n, created empty (neither VIP nor host: not local yet) if missing. */
static struct lb_local *find_or_add(lb_t *lb, uint32_t addr_n)
{
    struct lb_local *l = find(lb, addr_n);
    if (l)
        return l;
    l = calloc(1, sizeof(*l));
    if (!l)
        return NULL;
    uint32_t h = lb_local_hash(lb, addr_n);
    l->addr_n = addr_n;
    l->next = lb->local_hash[h];
    lb->local_hash[h] = l;
    lb->nlocal++;
    grow(lb);
    return l;
}

/* Free every node that is neither a VIP nor in the host set. */
static void sweep(lb_t *lb)
{
    for (uint32_t h = 0; h < nbuckets(lb); h++) {
        struct lb_local **link = &lb->local_hash[h];
        while (*link) {
            struct lb_local *l = *link;
            if (l->vip_refs || l->host) {
                link = &l->next;
                continue;
            }
            *link = l->next;
            lb->nlocal--;
            free(l);
        }
    }
}

int lb_local_vip_hold(lb_t *lb, uint32_t addr_n)
{
    struct lb_local *l = find_or_add(lb, addr_n);
    if (!l)
        return LB_ENOMEM;
    l->vip_refs++;
    return LB_OK;
}

/* The last service of a VIP going frees that node alone: O(its chain), not a sweep of every node
 * (a sweep made deleting one of 10,000 services walk all 10,000 VIPs). */
void lb_local_vip_put(lb_t *lb, uint32_t addr_n)
{
    struct lb_local **link = &lb->local_hash[lb_local_hash(lb, addr_n)];
    while (*link && (*link)->addr_n != addr_n)
        link = &(*link)->next;
    struct lb_local *l = *link;
    if (!l || !l->vip_refs)
        return;
    if (--l->vip_refs == 0 && !l->host) {
        *link = l->next;
        lb->nlocal--;
        free(l);
    }
}

int lb_local_addrs_set(lb_t *lb, const uint32_t *addrs, uint32_t n)
{
    if (!lb || (!addrs && n))
        return LB_EINVAL;
    pthread_mutex_lock(&lb->lock);
    /* First make a node for every address (empty ones are not local), so that a failed
     * allocation can leave the set as it was. */
    for (uint32_t i = 0; i < n; i++) {
        if (!find_or_add(lb, lb_htonl(addrs[i]))) {
            sweep(lb);
            pthread_mutex_unlock(&lb->lock);
            return LB_ENOMEM;
        }
    }
    for (uint32_t h = 0; h < nbuckets(lb); h++)
        for (struct lb_local *l = lb->local_hash[h]; l; l = l->next)
            l->host = 0;
    for (uint32_t i = 0; i < n; i++)
        find(lb, lb_htonl(addrs[i]))->host = 1;
    sweep(lb);
    pthread_mutex_unlock(&lb->lock);
    return LB_OK;
}

void lb_local_free(lb_t *lb)
{
    for (uint32_t h = 0; lb->local_hash && h < nbuckets(lb); h++) {
        struct lb_local *l = lb->local_hash[h];
        while (l) {
            struct lb_local *next = l->next;
            free(l);
            l = next;
        }
    }
    free(lb->local_hash);
    lb->local_hash = NULL;
    lb->nlocal = 0;
}
