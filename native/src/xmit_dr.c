/*
 * xmit_dr.c - direct routing (ipvsadm -g): the IP packet leaves with its TTL decremented (IPVS DR
 * does so too: __ip_vs_get_out_rt -> decrement_ttl; TTL <= 1: ICMP time exceeded to the client) in
 * a frame addressed to the real server's MAC on the interface the route to it uses. The adapter
 * sends l2hdr + the copy in out on an AF_PACKET socket and drops the original. ICMP
 * errors about the connection from the client's side go to the real server the same way. The
 * director never sees the replies (no reply tuple).
 */
#include "lb_xmit.h"

/* The external definition of the inline one in lb_xmit.h (the packet path inlines it). */
extern int lb_xmit_dr_in(lb_t *lb, const struct lb_pkt *p, struct lb_conn *c, uint8_t *out, uint32_t out_cap,
                         struct lb_action *act);

/* An ICMP error about the connection goes on like its packets, TTL decremented; one whose TTL runs
 * out is dropped (no ICMP error is sent about an ICMP error). */
static int dr_icmp_in(lb_t *lb, const struct lb_pkt *p, struct lb_conn *c, uint8_t *out, uint32_t out_cap,
                      struct lb_action *act)
{
    if (c->dest->fwd && p->data[8] <= 1) {
        act->verdict = LB_V_DROP;
        return LB_R_TTL_EXCEEDED;
    }
    int r = lb_xmit_dr_in(lb, p, c, out, out_cap, act);
    return r == LB_R_FORWARDED ? LB_R_ICMP : r;
}

const struct lb_xmit_ops lb_xmit_dr = {
    .name = "route",
    .xmit_in = lb_xmit_dr_in,
    .icmp_in = dr_icmp_in,
};
