/*
 * xmit.c - binds each packet of a connection to its destination's forwarding
 * method. One method per file: xmit_dr.c (and, later, xmit_tun.c, xmit_fnat.c).
 */
#include "lb_xmit.h"

int lb_xmit_in(const struct lb_pkt *p, const struct lb_conn *c, uint8_t *out, uint32_t out_cap,
               struct lb_action *act)
{
    switch (c->dest->conf.fwd) {
    case LB_FWD_ROUTE:
        return lb_xmit_dr(p, c, out, out_cap, act);
    default:
        /* Refused at configuration time (lb_dest_add); never reached. */
        act->verdict = LB_V_DROP;
        return LB_R_NO_L2;
    }
}
