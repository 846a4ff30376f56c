/*
 * xmit_tun.c - IP-in-IP tunnelling (ipvsadm -i), as ip_vs_tunnel_xmit.
 *
 * The client's packet, its TTL decremented (decrement_ttl; TTL <= 1: ICMP time exceeded to the
 * client, before the MTU check, as __ip_vs_get_out_rt), is carried inside an outer IPv4 header:
 *   version 4, IHL 5, TOS = inner TOS, DF = inner DF, ID = 0 with DF else the
 *   inner ID, TTL 64 (a fresh header the director originates), protocol 4,
 *   source = the address the kernel's route to the real server selects
 *   (installed by the control plane in the destination's forwarding state;
 *   never the VIP, never a guess), destination = the real server.
 * Without complete forwarding state the packet is dropped and counted (the
 * ip_vs_dest_dst bug: an uninitialised source address must be impossible).
 * Too big for the path MTU after encapsulation: with DF, ICMP fragmentation
 * needed (next-hop MTU = path MTU - 20: the kernel's tunnel mtu = dst_mtu -
 * sizeof(struct iphdr)) goes back to the client from the VIP, quoting its packet
 * with the TTL already decremented (lb_icmp_frag_needed); without DF
 * the outer packet (DF clear too) leaves as fragments of the path MTU, as
 * ip_vs_tunnel_xmit's ip_local_out fragments it (lb_action.frag_mtu, set by
 * the core's path-MTU check); the real server reassembles, then decapsulates.
 * An inner packet with no room for the outer header (> 65515 bytes) is dropped
 * and counted as frag_needed.
 */
#include <string.h>

#include "lb_xmit.h"

/* Outer header + inner packet into out for destination d with forwarding state f; bytes or 0. */
static inline uint32_t encap(const struct lb_dest *d, const struct lb_dest_fwd *f, const uint8_t *inner,
                             uint32_t len, uint8_t *out, uint32_t out_cap)
{
    uint32_t total = len + LB_IPIP_OVERHEAD;
    if (total > out_cap || total > 0xffff || len < 20)
        return 0;
    uint8_t *o = out;
    int df = (inner[6] & 0x40) != 0;
    o[0] = 0x45;
    o[1] = inner[1];
    lb_put16(o + 2, (uint16_t)total);
    if (df) {
        o[4] = 0;
        o[5] = 0;
    } else {
        o[4] = inner[4];
        o[5] = inner[5];
    }
    o[6] = df ? 0x40 : 0;
    o[7] = 0;
    o[8] = 64;
    o[9] = 4; /* IPPROTO_IPIP */
    o[10] = 0;
    o[11] = 0;
    uint32_t saddr_n = lb_htonl(f->conf.saddr);
    memcpy(o + 12, &saddr_n, 4);
    memcpy(o + 16, &d->addr_n, 4);
    uint16_t csum = (uint16_t)~lb_csum_fold_raw(lb_sum20_raw(o)); /* raw order, stored as is */
    memcpy(o + 10, &csum, 2);
    memcpy(o + 20, inner, len);
    LB_IP_TTL_DEC(o + 20); /* the inner header, as decrement_ttl before ip_vs_tunnel_xmit encapsulates */
    return total;
}

static int tun_xmit_in(lb_t *lb LB_UNUSED, const struct lb_pkt *p, struct lb_conn *c, uint8_t *out, uint32_t out_cap,
                       struct lb_action *act)
{
    const struct lb_dest *d = c->dest;
    const struct lb_dest_fwd *f = d->fwd;
    if (LB_UNLIKELY(!f || f->conf.saddr == 0)) {
        act->verdict = LB_V_DROP;
        return LB_R_NO_L2;
    }
    if (LB_UNLIKELY(p->data[8] <= 1))
        return lb_xmit_ttl_exceeded(p, p->daddr, out, out_cap, act);
    uint32_t mtu = f->conf.mtu ? f->conf.mtu : 1500;
    if (p->len + LB_IPIP_OVERHEAD > mtu) {
        if (p->data[6] & 0x40) {
            uint32_t n = lb_icmp_frag_needed(p, (uint16_t)(mtu - LB_IPIP_OVERHEAD), out, out_cap);
            act->verdict = n ? LB_V_ANSWER : LB_V_DROP;
            act->out_len = n;
            return LB_R_FRAG_NEEDED;
        }
        if (p->len + LB_IPIP_OVERHEAD > 0xffff) {
            act->verdict = LB_V_DROP;
            return LB_R_FRAG_NEEDED;
        }
    }
    uint32_t n = encap(d, f, p->data, p->len, out, out_cap);
    if (!n) {
        act->verdict = LB_V_DROP;
        return LB_R_NO_L2;
    }
    lb_xmit_l2_fill(f, act);
    act->out_len = n;
    return LB_R_FORWARDED;
}

/* An ICMP error from the client's side: encapsulated to the real server like the connection's own
 * packets (never with an outer source we did not get from a route), without the MTU check. */
static int tun_icmp_in(lb_t *lb LB_UNUSED, const struct lb_pkt *p, struct lb_conn *c, uint8_t *out, uint32_t out_cap,
                       struct lb_action *act)
{
    const struct lb_dest *d = c->dest;
    const struct lb_dest_fwd *f = d->fwd;
    if (f && f->conf.saddr && p->data[8] <= 1) {
        act->verdict = LB_V_DROP; /* no ICMP error about an ICMP error */
        return LB_R_TTL_EXCEEDED;
    }
    uint32_t n = f && f->conf.saddr ? encap(d, f, p->data, p->len, out, out_cap) : 0;
    if (!n) {
        act->verdict = LB_V_DROP;
        return LB_R_NO_L2;
    }
    lb_xmit_l2_fill(f, act);
    act->out_len = n;
    return LB_R_ICMP;
}

const struct lb_xmit_ops lb_xmit_tun = {
    .name = "tunnel",
    .mtu_overhead = LB_IPIP_OVERHEAD,
    .xmit_in = tun_xmit_in,
    .icmp_in = tun_icmp_in,
};
