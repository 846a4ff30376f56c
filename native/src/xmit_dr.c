/*
 * xmit_dr.c - direct routing: the IP packet leaves unchanged (no TTL
 * decrement, as IPVS DR) in a frame addressed to the real server's MAC on the
 * interface the route to it uses. The adapter sends l2hdr + original bytes on
 * an AF_PACKET socket and drops the original.
 */
#include <string.h>

#include "lb_xmit.h"

int lb_xmit_dr(const struct lb_pkt *p LB_UNUSED, const struct lb_conn *c, uint8_t *out LB_UNUSED,
               uint32_t out_cap LB_UNUSED, struct lb_action *act)
{
    const struct lb_dest_fwd *f = c->dest->fwd;
    if (LB_UNLIKELY(!f)) {
        act->verdict = LB_V_DROP;
        return LB_R_NO_L2;
    }
    act->verdict = LB_V_XMIT_L2;
    act->ifindex = f->conf.ifindex;
    memcpy(act->l2hdr, f->l2hdr, LB_L2HDR_LEN);
    return LB_R_FORWARDED;
}
