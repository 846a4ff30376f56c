/*
 * lb_xmit.h - forwarding methods. One method per file (xmit_<method>.c),
 * selected per connection from its destination's forwarding method in xmit.c.
 *
 * Every method towards a real server ends in LB_V_XMIT_L2 on the interface
 * and next-hop MAC the control plane resolved for that destination (struct
 * lb_dest_fwd), so balanced traffic never crosses the director's
 * FORWARD/conntrack path. Replies to clients (FULLNAT) use LB_V_ANSWER.
 */
#ifndef LB_XMIT_H
#define LB_XMIT_H

#include "lb_internal.h"

/* Fill `act` for packet p of connection c; `out` may receive rewritten bytes.
 * Return the reason counted for the packet. */
typedef int (*lb_xmit_fn)(lb_t *lb, const struct lb_pkt *p, struct lb_conn *c, uint8_t *out, uint32_t out_cap,
                          struct lb_action *act);

int lb_xmit_dr(lb_t *lb, const struct lb_pkt *p, struct lb_conn *c, uint8_t *out, uint32_t out_cap,
               struct lb_action *act);
int lb_xmit_tun(lb_t *lb, const struct lb_pkt *p, struct lb_conn *c, uint8_t *out, uint32_t out_cap,
                struct lb_action *act);
int lb_xmit_fnat_in(lb_t *lb, const struct lb_pkt *p, struct lb_conn *c, uint8_t *out, uint32_t out_cap,
                    struct lb_action *act);
int lb_xmit_fnat_out(lb_t *lb, const struct lb_pkt *p, struct lb_conn *c, uint8_t *out, uint32_t out_cap,
                     struct lb_action *act);


/* Encapsulate `len` bytes at `inner` (IPIP) for destination d into out; returns bytes or 0. */
uint32_t lb_tun_encap(const struct lb_dest *d, const uint8_t *inner, uint32_t len, uint8_t *out, uint32_t out_cap);

/* Point act at the L2 path of forwarding state f. */
static inline void lb_xmit_l2_fill(const struct lb_dest_fwd *f, struct lb_action *act)
{
    act->verdict = LB_V_XMIT_L2;
    act->ifindex = f->conf.ifindex;
    __builtin_memcpy(act->l2hdr, f->l2hdr, LB_L2HDR_LEN);
}

/* Shared by methods: point act at the destination's L2 path. Returns 0, or -1 without valid state. */
static inline int lb_xmit_l2_to(const struct lb_dest *d, struct lb_action *act)
{
    const struct lb_dest_fwd *f = d->fwd;
    if (LB_UNLIKELY(!f))
        return -1;
    lb_xmit_l2_fill(f, act);
    return 0;
}

int lb_xmit_other(lb_t *lb, const struct lb_pkt *p, struct lb_conn *c, int dir, uint8_t *out, uint32_t out_cap,
                  struct lb_action *act);

/* Dispatch a packet of direction dir on the destination's forwarding method. */
static inline int lb_xmit(lb_t *lb, const struct lb_pkt *p, struct lb_conn *c, int dir, uint8_t *out,
                          uint32_t out_cap, struct lb_action *act)
{
    if (LB_LIKELY(LB_CONN_FWD(c) == LB_FWD_ROUTE)) {
        if (LB_UNLIKELY(lb_xmit_l2_to(c->dest, act) < 0)) {
            act->verdict = LB_V_DROP;
            return LB_R_NO_L2;
        }
        return LB_R_FORWARDED;
    }
    return lb_xmit_other(lb, p, c, dir, out, out_cap, act);
}

#endif /* LB_XMIT_H */
