/*
 * xmit.c - binds each packet of a connection to its destination's forwarding
 * method: xmit_dr.c, xmit_tun.c, xmit_fnat.c.
 */
#include "lb_xmit.h"

/* lb_xmit() is inline in lb_xmit.h (the DR branch stays on the hot path). */
int lb_xmit_other(lb_t *lb, const struct lb_pkt *p, struct lb_conn *c, int dir, uint8_t *out, uint32_t out_cap,
                  struct lb_action *act)
{
    switch (LB_CONN_FWD(c)) {
    case LB_FWD_TUNNEL:
        return lb_xmit_tun(lb, p, c, out, out_cap, act);
    case LB_FWD_FULLNAT:
        return dir == LB_DIR_IN ? lb_xmit_fnat_in(lb, p, c, out, out_cap, act)
                                : lb_xmit_fnat_out(lb, p, c, out, out_cap, act);
    default:
        /* Refused at configuration time (lb_dest_add); never reached. */
        act->verdict = LB_V_DROP;
        return LB_R_NO_L2;
    }
}
