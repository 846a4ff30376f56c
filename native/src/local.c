/*
 * local.c - the director's own addresses, for the martian-source check of new connections.
 *
 * The kernel's routing drops a packet whose source is one of the host's own addresses
 * (fib_validate_source: a RTN_LOCAL or RTN_BROADCAST source, unless accept_local); lbd sees packets
 * before routing, so it applies the rule itself. The set is the union of the control plane's
 * (lb_local_addrs_set: interface and broadcast addresses) and the services' virtual addresses,
 * which are local by definition (the director answers for them), counted per service so that it
 * holds without any control plane. A small chained hash: one lookup per new connection.
 */
#include <stdlib.h>

#include "lb_internal.h"

static struct lb_local *find(const lb_t *lb, uint32_t addr_n)
{
    for (struct lb_local *l = lb->local_hash[lb_local_hash(addr_n)]; l; l = l->next)
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
    uint32_t h = lb_local_hash(addr_n);
    l->addr_n = addr_n;
    l->next = lb->local_hash[h];
    lb->local_hash[h] = l;
    return l;
}

/* Free every node that is neither a VIP nor in the host set. */
static void sweep(lb_t *lb)
{
    for (uint32_t h = 0; h < LB_LOCAL_HASH_BUCKETS; h++) {
        struct lb_local **link = &lb->local_hash[h];
        while (*link) {
            struct lb_local *l = *link;
            if (l->vip_refs || l->host) {
                link = &l->next;
                continue;
            }
            *link = l->next;
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
    struct lb_local **link = &lb->local_hash[lb_local_hash(addr_n)];
    while (*link && (*link)->addr_n != addr_n)
        link = &(*link)->next;
    struct lb_local *l = *link;
    if (!l || !l->vip_refs)
        return;
    if (--l->vip_refs == 0 && !l->host) {
        *link = l->next;
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
    for (uint32_t h = 0; h < LB_LOCAL_HASH_BUCKETS; h++)
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
    for (uint32_t h = 0; h < LB_LOCAL_HASH_BUCKETS; h++) {
        struct lb_local *l = lb->local_hash[h];
        while (l) {
            struct lb_local *next = l->next;
            free(l);
            l = next;
        }
        lb->local_hash[h] = NULL;
    }
}
