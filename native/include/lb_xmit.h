/*
 * lb_xmit.h - forwarding methods. One method per file (xmit_<method>.c),
 * selected per connection from its destination's forwarding method in xmit.c.
 */
#ifndef LB_XMIT_H
#define LB_XMIT_H

#include "lb_internal.h"

/* Fill `act` for a packet of connection `c` (input direction). `out` may be
 * used for rewritten bytes. Returns the reason counted for the packet. */
typedef int (*lb_xmit_fn)(const struct lb_pkt *p, const struct lb_conn *c,
                          uint8_t *out, uint32_t out_cap, struct lb_action *act);

int lb_xmit_dr(const struct lb_pkt *p, const struct lb_conn *c,
               uint8_t *out, uint32_t out_cap, struct lb_action *act);

/* Dispatch on the destination's forwarding method. */
int lb_xmit_in(const struct lb_pkt *p, const struct lb_conn *c,
               uint8_t *out, uint32_t out_cap, struct lb_action *act);

#endif /* LB_XMIT_H */
