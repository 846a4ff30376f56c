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
 * MSS the real server announces in its SYN-ACK is lowered by 8 on the way out.
 */
#include <string.h>

#include "lb_xmit.h"

/* Rewrite addresses/ports in the packet at o (already a copy) and fix checksums.
 * new addresses/ports are network order. Returns -1 if the TTL runs out. Each
 * checksum gets one incremental update for all its changed words (the same
 * result as one update per word, lb_csum_apply_raw). */
static int rewrite(uint8_t *o, const struct lb_pkt *p, uint32_t saddr, uint16_t sport, uint32_t daddr,
                   uint16_t dport)
{
    if (o[8] <= 1)
        return -1;
    /* TTL lives in the 16-bit word with the protocol. */
    uint16_t old_ttl_proto, new_ttl_proto;
    memcpy(&old_ttl_proto, o + 8, 2);
    o[8]--;
    memcpy(&new_ttl_proto, o + 8, 2);

    uint32_t old_s, old_d;
    memcpy(&old_s, o + 12, 4);
    memcpy(&old_d, o + 16, 4);
    memcpy(o + 12, &saddr, 4);
    memcpy(o + 16, &daddr, 4);
    /* The addresses are in the IP header and in the TCP/UDP pseudo-header. */
    uint64_t addrs_delta = lb_csum_delta32(old_s, saddr) + lb_csum_delta32(old_d, daddr);
    lb_csum_apply_raw(o + 10, addrs_delta + lb_csum_delta16(old_ttl_proto, new_ttl_proto));

    uint8_t *l4 = o + p->l4off;
    uint8_t *csum = NULL;
    if (p->proto == LB_PROTO_TCP)
        csum = l4 + 16;
    else if (p->proto == LB_PROTO_UDP && (l4[6] | l4[7]))
        csum = l4 + 6;
    uint32_t old_ports, new_ports = lb_key_ports(sport, dport); /* source, destination port */
    memcpy(&old_ports, l4, 4);
    memcpy(l4, &new_ports, 4);
    if (csum) {
        lb_csum_apply_raw(csum, addrs_delta + lb_csum_delta32(old_ports, new_ports));
        if (p->proto == LB_PROTO_UDP && csum[0] == 0 && csum[1] == 0)
            csum[0] = csum[1] = 0xff; /* 0 means "no checksum" in UDP: send 0xffff */
    }
    return 0;
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

int lb_xmit_fnat_in(lb_t *lb LB_UNUSED, const struct lb_pkt *p, struct lb_conn *c, uint8_t *out, uint32_t out_cap,
                    struct lb_action *act)
{
    const struct lb_dest *d = c->dest;
    if (LB_UNLIKELY(!d->fwd)) {
        act->verdict = LB_V_DROP;
        return LB_R_NO_L2;
    }
    if (p->len > out_cap) {
        act->verdict = LB_V_DROP;
        return LB_R_MALFORMED;
    }
    memcpy(out, p->data, p->len);
    if (rewrite(out, p, c->laddr_n, c->lport, d->addr_n, d->port_n) < 0) {
        act->verdict = LB_V_DROP;
        return LB_R_TTL_EXCEEDED;
    }
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
        } else {
            reason = LB_R_TOA_NO_ROOM;
        }
    }
    lb_xmit_l2_to(d, act);
    act->out_len = len;
    return reason;
}

int lb_xmit_fnat_out(lb_t *lb LB_UNUSED, const struct lb_pkt *p, struct lb_conn *c, uint8_t *out, uint32_t out_cap,
                     struct lb_action *act)
{
    if (p->len > out_cap) {
        act->verdict = LB_V_DROP;
        return LB_R_MALFORMED;
    }
    memcpy(out, p->data, p->len);
    const struct lb_svc *s = c->dest->svc;
    if (p->proto == LB_PROTO_TCP && s && (s->conf.flags & LB_SVC_F_TOA) && (p->tcp_flags & LB_TCP_SYN))
        mss_lower(out, p, LB_TOA_LEN);
    if (rewrite(out, p, c->vaddr, c->vport, c->caddr, c->cport) < 0) {
        act->verdict = LB_V_DROP;
        return LB_R_TTL_EXCEEDED;
    }
    act->verdict = LB_V_ANSWER;
    act->out_len = p->len;
    return LB_R_FORWARDED;
}
