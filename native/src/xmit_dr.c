/*
 * xmit_dr.c - direct routing: the IP packet leaves unchanged (no TTL
 * decrement, as IPVS DR) in a frame addressed to the real server's MAC on the
 * interface the route to it uses. The adapter sends l2hdr + original bytes on
 * an AF_PACKET socket and drops the original.
 */
#include "lb_xmit.h"

int lb_xmit_dr(lb_t *lb LB_UNUSED, const struct lb_pkt *p LB_UNUSED, struct lb_conn *c, uint8_t *out LB_UNUSED,
               uint32_t out_cap LB_UNUSED, struct lb_action *act)
{
    if (lb_xmit_l2_to(c->dest, act) < 0) {
        act->verdict = LB_V_DROP;
        return LB_R_NO_L2;
    }
    return LB_R_FORWARDED;
}
