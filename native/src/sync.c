/*
 * The sync master's choice of what to send, made per packet as kernel IPVS makes it
 * (net/netfilter/ipvs: ip_vs_in counts every packet from the client on its connection, then
 * ip_vs_sync_conn asks ip_vs_sync_conn_needed, for the connection and for its persistence
 * template). The sysctls are lb_sync_conf (lb_api.h); lbd's sync master (lb/sync/manager.py)
 * sends each entry this marks (LB_CONN_F_SYNC_WANT in lb_conn_dump_sync_changes) at its next tick.
 *
 * The rule, for an entry whose packet count has just become pkts:
 *  - a template is considered on every packet of a connection it controls (its own count goes up
 *    then); with sync_persist_mode a connection under a template is never sent itself;
 *  - a TCP connection is sent only in ESTABLISHED, FIN_WAIT, CLOSE, CLOSE_WAIT and TIME_WAIT; its
 *    first packet in a state other than ESTABLISHED since the last send sends it at once ("force");
 *  - otherwise (UDP, templates, a TCP connection in ESTABLISHED or in an unchanged state), with a
 *    refresh period: an entry whose announced expiry would move by less than
 *    min(refresh period, max(timeout / 2, 10 s)) is not sent, unless a retry is left (sync_retries,
 *    counted in the two low bits of the announced expiry) and refresh period / 8 has passed since
 *    the last send;
 *  - then the packet rule: with a period, a connection is sent when pkts % period == threshold
 *    (templates skip this test); without a period and without a refresh period, only when
 *    pkts == threshold (once).
 * Everything here runs under lb->lock, so the kernel's compare-and-swap of sync_endtime is a plain
 * store, and its answer always yes.
 */
#include <stdlib.h>
#include <string.h>

#include "lb_internal.h"

#define SYNCED_TCP_STATES ((1u << LB_S_ESTABLISHED) | (1u << LB_S_FIN_WAIT) | (1u << LB_S_CLOSE) | \
                           (1u << LB_S_CLOSE_WAIT) | (1u << LB_S_TIME_WAIT))

int lb_sync_conf_check(const struct lb_sync_conf *conf)
{
    if (!conf || conf->threshold < 0 || conf->period < 0 || (conf->period && conf->threshold >= conf->period))
        return LB_EINVAL;
    if (conf->retries > LB_SYNC_RETRIES_MAX || conf->refresh_period_ms > LB_SYNC_REFRESH_PERIOD_MS_MAX ||
        conf->persist_mode > 1)
        return LB_EINVAL;
    return LB_OK;
}

int lb_sync_needed(const struct lb_sync_conf *conf, struct lb_sync_state *st, uint8_t proto, uint8_t state,
                   uint32_t conn_flags, int in_persistence, uint32_t pkts, uint32_t timeout_ms, uint64_t now_ms)
{
    if (!conf || !st)
        return 0;
    uint64_t orig = st->sync_end_ms;
    uint64_t n = (now_ms + timeout_ms) & ~3ull; /* the expiry a record sent now announces */
    int tmpl = (conn_flags & LB_CONN_F_TEMPLATE) != 0;
    /* The kernel's packet counter is an int: past 2^31 packets it counts on from INT_MIN. */
    int32_t count = (int32_t)pkts;
    if (tmpl) {
        /* templates: no state to follow */
    } else if (conf->persist_mode && in_persistence) {
        return 0;
    } else if (proto == LB_PROTO_TCP) {
        if (state >= 32 || !((1u << state) & SYNCED_TCP_STATES))
            return 0;
        if (state != st->old_state && state != LB_S_ESTABLISHED)
            goto send; /* a new closing state: sent at once */
    }
    if (conf->refresh_period_ms) {
        int64_t diff = (int64_t)(n - orig);
        uint64_t moved = diff < 0 ? (uint64_t)0 - (uint64_t)diff : (uint64_t)diff;
        uint64_t min_diff = timeout_ms / 2 > LB_SYNC_REFRESH_MIN_MS ? timeout_ms / 2 : LB_SYNC_REFRESH_MIN_MS;
        uint64_t limit = conf->refresh_period_ms < min_diff ? conf->refresh_period_ms : min_diff;
        if (moved < limit) {
            uint32_t retries = (uint32_t)(orig & 3);
            if (retries >= conf->retries)
                return 0;
            /* a retry, once refresh_period / 8 has passed since the last send (its announced
             * expiry less the timeout) */
            uint64_t due = orig - timeout_ms + conf->refresh_period_ms / 8;
            if ((int64_t)(now_ms - due) < 0)
                return 0;
            n |= retries + 1;
        }
    }
    if (conf->period > 0) {
        if (!tmpl && count % conf->period != conf->threshold)
            return 0;
    } else if (!conf->refresh_period_ms && count != conf->threshold) {
        return 0;
    }
send:
    st->old_state = state;
    st->sync_end_ms = n;
    return 1;
}

static void want(lb_t *lb, uint32_t slot)
{
    uint32_t w = slot >> 6;
    lb->csync[slot].want = 1;
    lb->sync_dirty[w] |= 1ull << (slot & 63);
    lb->sync_dirty_sum[w >> 6] |= 1ull << (w & 63);
}

void lb_sync_in(lb_t *lb, struct lb_conn *c, uint32_t tmpl, uint64_t now_ms)
{
    const struct lb_sync_conf *k = &lb->sync_conf;
    if (c) {
        uint32_t slot = (uint32_t)(c - lb->conns);
        struct lb_sync_state *st = &lb->csync[slot];
        uint32_t pkts = ++st->in_pkts;
        if (lb_sync_needed(k, st, c->proto, c->state, c->flags & LB_CF_TEMPLATE, c->ctl != 0, pkts,
                           lb_conn_timeout_ms(lb, c), now_ms))
            want(lb, slot);
    }
    if (tmpl && (lb->conns[tmpl].flags & (LB_CF_USED | LB_CF_TEMPLATE)) == (LB_CF_USED | LB_CF_TEMPLATE)) {
        const struct lb_conn *t = &lb->conns[tmpl];
        struct lb_sync_state *ts = &lb->csync[tmpl];
        uint32_t pkts = ++ts->in_pkts;
        if (lb_sync_needed(k, ts, t->proto, t->state, LB_CONN_F_TEMPLATE, 0, pkts, t->tmpl_timeout_ms, now_ms))
            want(lb, tmpl);
    }
}

void lb_sync_entry_new(lb_t *lb, uint32_t slot, uint64_t now_ms)
{
    if (!lb->csync)
        return;
    memset(&lb->csync[slot], 0, sizeof(lb->csync[slot]));
    lb->csync[slot].sync_end_ms = now_ms & ~3ull;
}

void lb_sync_entry_restored(lb_t *lb, uint32_t slot)
{
    if (!lb->csync)
        return;
    lb->csync[slot].in_pkts = (uint32_t)lb->sync_conf.threshold;
    lb->csync[slot].old_state = lb->conns[slot].state;
}

int lb_sync_master_set(lb_t *lb, const struct lb_sync_conf *conf, int on)
{
    if (!lb || (on && lb_sync_conf_check(conf) != LB_OK))
        return LB_EINVAL;
    int err = LB_OK;
    pthread_mutex_lock(&lb->lock);
    if (on && !lb->csync) {
        lb->csync = calloc((size_t)lb->conn_max + 1, sizeof(*lb->csync));
        if (!lb->csync)
            err = LB_ENOMEM;
    }
    if (err == LB_OK) {
        if (on)
            lb->sync_conf = *conf;
        int changed = lb->sync_on != (on ? 1 : 0);
        lb->sync_on = on ? 1 : 0;
        if (changed)
            lb_fp_sync(lb); /* the fast path's tick acts on it (xsk_fp.c) */
    }
    pthread_mutex_unlock(&lb->lock);
    return err;
}
