/*
 * icmp.c - ICMP errors the director originates, and ICMP errors about
 * connections it balances.
 *
 * Originated errors (port unreachable when no destination is available, as
 * ip_vs_leave; fragmentation needed when a tunnelled packet would exceed the
 * path MTU; time exceeded when a packet's TTL runs out on the director, as
 * decrement_ttl): an IPv4 packet from the original destination (the VIP; for
 * time exceeded, the address the method gives) to the original source:
 * version 4, IHL 5, TOS = the original's TOS bits (0x1e) | precedence
 * "internetwork control" (0xc0), ID 0, no DF, TTL 64, protocol ICMP; ICMP
 * type 3 code 3 or 4, or type 11 code 0, 2 unused bytes, 2 bytes "next-hop
 * MTU" (code 4) or 0, then as much of the original packet as keeps the error
 * within 576 bytes (its first 548 bytes, the whole packet when shorter), as the
 * kernel's __icmp_send does (RFC 1812 4.3.2.3); fragmentation needed quotes the
 * header with its TTL already decremented, as the kernel's does (lb_icmp_frag_needed).
 *
 * Errors about connections (ip_vs_in_icmp / ip_vs_out_icmp): the quoted
 * packet identifies the connection.
 *   - From the client side, quoting VIP:vport -> CIP:cport (a reply):
 *       DR: forwarded unchanged to the real server; TUN: encapsulated to it;
 *       FULLNAT: translated to LIP -> RIP quoting RIP:rport -> LIP:lport.
 *   - From the real-server side, quoting LIP:lport -> RIP:rport (FULLNAT):
 *       translated to VIP -> CIP quoting CIP:cport -> VIP:vport.
 * The quoted IP header checksum and the ICMP checksum are recomputed; the
 * quoted transport checksum is left alone, as IPVS does.
 */
#include <string.h>

#include "lb_xmit.h"

/* __icmp_send: "return as much as we can without exceeding 576 bytes" (or the MTU of the route
 * back when that is smaller: the core does not know it; links under 576 bytes are not supported). */
#define LB_ICMP_ERROR_MAX 576u

/* quote_ttl_dec: the quoted header with its TTL decremented (header checksum updated), as the
 * packet was when the kernel found it too big (see lb_icmp_frag_needed). */
static uint32_t icmp_error(const struct lb_pkt *p, uint8_t type, uint8_t code, uint16_t mtu, uint32_t saddr_n,
                           int quote_ttl_dec, uint8_t *out, uint32_t out_cap)
{
    uint32_t quote = p->len;
    if (quote > LB_ICMP_ERROR_MAX - 28)
        quote = LB_ICMP_ERROR_MAX - 28;
    uint32_t total = 20 + 8 + quote;
    if (!out || out_cap < total)
        return 0;
    memset(out, 0, 28);
    out[0] = 0x45;
    out[1] = (uint8_t)((p->data[1] & 0x1e) | 0xc0); /* __icmp_send: RT_TOS | IPTOS_PREC_INTERNETCONTROL */
    lb_put16(out + 2, (uint16_t)total);
    out[8] = 64;
    out[9] = LB_PROTO_ICMP;
    memcpy(out + 12, &saddr_n, 4);
    memcpy(out + 16, &p->saddr, 4);
    lb_put16(out + 10, lb_ip_csum(out, 20));
    uint8_t *icmp = out + 20;
    icmp[0] = type;
    icmp[1] = code;
    lb_put16(icmp + 6, mtu);
    memcpy(icmp + 8, p->data, quote);
    if (quote_ttl_dec && icmp[8 + 8] > 1)
        LB_IP_TTL_DEC(icmp + 8); /* quote >= p->ihl >= 20: the whole header is there */
    lb_put16(icmp + 2, lb_csum_fold(lb_csum_partial(icmp, 8 + quote, 0)));
    return total;
}

uint32_t lb_icmp_port_unreach(const struct lb_pkt *p, uint8_t *out, uint32_t out_cap)
{
    return icmp_error(p, 3, 3, 0, p->daddr, 0, out, out_cap);
}

/* The kernel checks the MTU after the TTL: __ip_vs_get_out_rt runs decrement_ttl (ip_decrease_ttl
 * writes the skb's header) before ensure_mtu_is_adequate's icmp_send, so the error quotes the
 * client's packet with its TTL already decremented (addresses not yet rewritten: NAT mangles after
 * the route). From the VIP: the skb still has its input route, local (RTCF_LOCAL), so __icmp_send
 * answers from the packet's destination. Every caller has checked TTL > 1. */
uint32_t lb_icmp_frag_needed(const struct lb_pkt *p, uint16_t mtu, uint8_t *out, uint32_t out_cap)
{
    return icmp_error(p, 3, 4, mtu, p->daddr, 1, out, out_cap);
}

uint32_t lb_icmp_time_exceeded(const struct lb_pkt *p, uint32_t saddr_n, uint8_t *out, uint32_t out_cap)
{
    return icmp_error(p, 11, 0, 0, saddr_n, 0, out, out_cap); /* time exceeded in transit */
}

static inline int is_icmp_error(uint8_t type)
{
    return type == 3 || type == 4 || type == 11 || type == 12;
}

int lb_icmp_translate(uint8_t *o, const struct lb_pkt *p, uint32_t outer_s, uint32_t outer_d, uint32_t q_s,
                      uint16_t q_sp, uint32_t q_d, uint16_t q_dp)
{
    if (o[8] <= 1)
        return -1;
    o[8]--;
    memcpy(o + 12, &outer_s, 4);
    memcpy(o + 16, &outer_d, 4);
    o[10] = o[11] = 0;
    lb_put16(o + 10, lb_ip_csum(o, p->ihl));
    uint8_t *icmp = o + p->l4off;
    uint8_t *q = icmp + 8;
    uint32_t qihl = (uint32_t)(q[0] & 0x0f) * 4;
    memcpy(q + 12, &q_s, 4);
    memcpy(q + 16, &q_d, 4);
    q[10] = q[11] = 0;
    lb_put16(q + 10, lb_ip_csum(q, qihl));
    memcpy(q + qihl, &q_sp, 2);
    memcpy(q + qihl + 2, &q_dp, 2);
    icmp[2] = icmp[3] = 0;
    lb_put16(icmp + 2, lb_csum_fold(lb_csum_partial(icmp, p->l4len, 0)));
    return 0;
}

int lb_icmp_in(lb_t *lb, const struct lb_pkt *p, uint64_t now_ms, uint8_t *out, uint32_t out_cap,
               struct lb_action *act)
{
    const uint8_t *icmp = p->data + p->l4off;
    struct lb_pkt q;
    act->verdict = LB_V_ACCEPT;
    if (!is_icmp_error(icmp[0]) || lb_parse_quoted(icmp + 8, p->l4len - 8, &q) < 0)
        return LB_R_NOT_LB_PROTO;
    /* The quoted packet went from q.saddr to q.daddr: the connection's tuple is its reverse. */
    int dir = LB_DIR_IN;
    struct lb_conn *c = lb_conn_lookup(lb, q.proto, q.daddr, q.dport, q.saddr, q.sport, now_ms, &dir);
    if (!c)
        return LB_R_NOT_LB_PROTO;
    const struct lb_xmit_ops *m = lb_conn_xmit(c);
    if (LB_UNLIKELY(p->data[8] <= 1) && dir == LB_DIR_OUT && (m->flags & LB_XMIT_F_FORWARDS_REPLIES)) {
        /* A forwarded error (NAT: RIP -> CIP) whose TTL runs out dies in ip_forward, before the FORWARD
         * hook's ip_vs_out_icmp: not counted, and no ICMP error about an ICMP error. */
        act->verdict = LB_V_DROP;
        return LB_R_TTL_EXCEEDED;
    }
    if (lb_csum_fold(lb_csum_partial(icmp, p->l4len, 0)) != 0) {
        act->verdict = LB_V_DROP; /* ip_vs_in_icmp: "failed checksum" */
        return LB_R_BAD_CSUM;
    }
    if (p->len > out_cap) {
        act->verdict = LB_V_DROP;
        return LB_R_MALFORMED;
    }
    /* The connection's method passes it on (only methods that see replies have an OUT tuple). */
    if (dir == LB_DIR_IN) {
        lb_stats_in(c->dest, p->len);
        return m->icmp_in(lb, p, c, out, out_cap, act);
    }
    lb_stats_out(c->dest, p->len);
    return m->icmp_out(lb, p, c, out, out_cap, act);
}

int lb_icmp_to_dest(const struct lb_pkt *p, const struct lb_conn *c, uint8_t *out, struct lb_action *act,
                    uint32_t outer_s, uint32_t q_d, uint16_t q_dp)
{
    const struct lb_dest *d = c->dest;
    memcpy(out, p->data, p->len);
    if (lb_icmp_translate(out, p, outer_s, d->addr_n, d->addr_n, lb_conn_rport_n(c), q_d, q_dp) < 0) {
        act->verdict = LB_V_DROP;
        return LB_R_TTL_EXCEEDED;
    }
    if (lb_xmit_l2_to(d, act) < 0) {
        act->verdict = LB_V_DROP;
        return LB_R_NO_L2;
    }
    act->out_len = p->len;
    return LB_R_ICMP;
}

int lb_icmp_to_client(const struct lb_pkt *p, const struct lb_conn *c, uint8_t *out, struct lb_action *act)
{
    memcpy(out, p->data, p->len);
    if (lb_icmp_translate(out, p, c->vaddr, c->caddr, c->caddr, c->cport, c->vaddr, c->vport) < 0) {
        act->verdict = LB_V_DROP;
        return LB_R_TTL_EXCEEDED;
    }
    act->verdict = LB_V_ANSWER;
    act->out_len = p->len;
    return LB_R_ICMP;
}
