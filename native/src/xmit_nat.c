/*
 * xmit_nat.c - NAT (masquerading, ipvsadm -m): the destination address and port are rewritten on
 * the way in, the source address and port on the way back, as kernel IPVS's NAT.
 *
 *   IN  (client -> VIP):  CIP:cport -> VIP:vport  becomes  CIP:cport -> RIP:rport,
 *                         sent on the destination's L2 path (LB_V_XMIT_L2).
 *   OUT (server -> CIP):  RIP:rport -> CIP:cport  becomes  VIP:vport -> CIP:cport,
 *                         sent through the kernel's IP output (LB_V_ANSWER).
 *
 * The real server sees the client's own address, so its replies must be routed back through the
 * director (its default route, or a route to the clients, via the director): that is what makes
 * the director see both directions. The reply tuple is therefore (proto, RIP, RPORT) ->
 * (CIP, CPORT): the client's own address and port, chosen by conn_bind. Two connections of
 * different services to the same RIP:rport from the same CIP:cport would share it; the kernel's
 * ip_vs_conn_out_get has the same ambiguity and takes one of them, as the table does (the newest).
 *
 * Port translation (-r RIP:8080 under VIP:80) is the same rewrite: the destination's port is the
 * one written in and the service's port the one written back.
 *
 * The director routes these packets itself, so it decrements the TTL both ways (a packet whose TTL
 * would reach 0 is answered with ICMP time exceeded, LB_R_TTL_EXCEEDED), as the kernel's NAT
 * transmitter does on the way in and IP forwarding does for the replies. A reply whose TTL runs out
 * never reaches the kernel's ip_vs_out (ip_forward drops it first): its connection's state, timer
 * and stats stay as they were (LB_XMIT_F_FORWARDS_REPLIES). Checksums are updated incrementally (RFC 1624) for the
 * words that change; a UDP checksum of 0 (none) stays 0, an updated one that comes out 0 is sent
 * as 0xffff.
 *
 * ICMP errors: from the client's side (quoting VIP:vport -> CIP:cport) they go to the real server
 * as <sender> -> RIP quoting RIP:rport -> CIP:cport; from the real server's side (quoting
 * CIP:cport -> RIP:rport) to the client as VIP -> CIP quoting CIP:cport -> VIP:vport, the
 * rewrites the kernel's ip_vs_nat_icmp makes. The sender of an error from the client's side keeps
 * its address (a router on the way may have sent it).
 *
 * No per-service state and no reference per connection. FTP's NAT helper (ip_vs_ftp, which
 * rewrites PORT/PASV addresses in the control connection) is not implemented.
 */
#include "lb_xmit.h"

static int nat_xmit_in(lb_t *lb LB_UNUSED, const struct lb_pkt *p, struct lb_conn *c, uint8_t *out,
                       uint32_t out_cap, struct lb_action *act)
{
    const struct lb_dest *d = c->dest;
    if (LB_UNLIKELY(!d->fwd)) {
        act->verdict = LB_V_DROP;
        return LB_R_NO_L2;
    }
    if (lb_xmit_copy(p, out, out_cap, act) < 0)
        return LB_R_MALFORMED;
    if (lb_xmit_rewrite(out, p, LB_XMIT_RW_DST, 0, 0, d->addr_n, lb_conn_rport_n(c)) < 0)
        return lb_xmit_ttl_exceeded(p, p->daddr, out, out_cap, act); /* from the VIP, as decrement_ttl */
    lb_xmit_l2_to(d, act);
    act->out_len = p->len;
    return LB_R_FORWARDED;
}

static int nat_xmit_out(lb_t *lb LB_UNUSED, const struct lb_pkt *p, struct lb_conn *c, uint8_t *out,
                        uint32_t out_cap, struct lb_action *act)
{
    if (lb_xmit_copy(p, out, out_cap, act) < 0)
        return LB_R_MALFORMED;
    if (lb_xmit_rewrite(out, p, LB_XMIT_RW_SRC, c->vaddr, c->vport, 0, 0) < 0) {
        /* The reply is forwarded by the director: ip_forward answers TTL <= 1 with icmp_send, whose
         * skb has a forwarding route (not RTCF_LOCAL), so __icmp_send takes source 0 (with the
         * default icmp_errors_use_inbound_ifaddr = 0) and icmp_route_lookup picks the source of the
         * route back to the real server. That is the forwarding state's saddr (the control plane
         * reads it from that route). Without forwarding state, source 0.0.0.0: the answer leaves
         * through the adapters' raw IPPROTO_RAW socket, whose raw_send_hdrinc fills in a zero
         * source from the same route lookup (raw(7)). The core (no routes) leaves it to the kernel
         * rather than drop the answer. */
        const struct lb_dest_fwd *f = c->dest->fwd;
        return lb_xmit_ttl_exceeded(p, f ? lb_htonl(f->conf.saddr) : 0, out, out_cap, act);
    }
    act->verdict = LB_V_ANSWER;
    act->out_len = p->len;
    return LB_R_FORWARDED;
}

/* From the client's side, quoting VIP:vport -> CIP:cport: to the real server (the sender keeps its
 * address), quoting RIP:rport -> CIP:cport. */
static int nat_icmp_in(lb_t *lb LB_UNUSED, const struct lb_pkt *p, struct lb_conn *c, uint8_t *out,
                       uint32_t out_cap LB_UNUSED, struct lb_action *act)
{
    return lb_icmp_to_dest(p, c, out, act, p->saddr, c->caddr, c->cport);
}

/* From the real server's side, quoting CIP:cport -> RIP:rport: to the client as VIP -> CIP,
 * quoting CIP:cport -> VIP:vport. */
static int nat_icmp_out(lb_t *lb LB_UNUSED, const struct lb_pkt *p, struct lb_conn *c, uint8_t *out,
                        uint32_t out_cap LB_UNUSED, struct lb_action *act)
{
    return lb_icmp_to_client(p, c, out, act);
}

/* The reply tuple's director side is the client's own address and port. */
static int nat_conn_bind(lb_t *lb LB_UNUSED, struct lb_svc *s LB_UNUSED, const struct lb_dest *d LB_UNUSED,
                         const struct lb_pkt *p, uint64_t now_ms LB_UNUSED, struct lb_conn_bind *b)
{
    b->oaddr_n = p->saddr;
    b->oport_n = p->sport;
    return LB_R_FORWARDED;
}

static int nat_conn_restore(lb_t *lb LB_UNUSED, struct lb_svc *s LB_UNUSED, const struct lb_dest *d LB_UNUSED,
                            const struct lb_conn_info *ci, uint64_t now_ms LB_UNUSED, struct lb_conn_bind *b)
{
    b->oaddr_n = lb_htonl(ci->caddr);
    b->oport_n = lb_htons(ci->cport);
    return LB_OK;
}

const struct lb_xmit_ops lb_xmit_nat = {
    .name = "masq",
    .flags = LB_XMIT_F_FORWARDS_REPLIES,
    .xmit_in = nat_xmit_in,
    .xmit_out = nat_xmit_out,
    .icmp_in = nat_icmp_in,
    .icmp_out = nat_icmp_out,
    .conn_bind = nat_conn_bind,
    .conn_restore = nat_conn_restore,
};
