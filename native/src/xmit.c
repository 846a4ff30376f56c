/*
 * xmit.c - the forwarding-method table, built from lb_xmit_list.h (lb_xmit.h describes the ops).
 */
#include "lb_xmit.h"

const struct lb_xmit_ops *const lb_xmit_methods[LB_XMIT_MAX] = {
#define LB_XMIT(fwd, name) [fwd] = &lb_xmit_##name,
#include "lb_xmit_list.h"
#undef LB_XMIT
};

/* Every listed value must index the table (LB_XMIT_MAX, lb_internal.h, is its size). */
#define LB_XMIT(fwd, name) _Static_assert((fwd) >= 0 && (fwd) < LB_XMIT_MAX, "lb_xmit_list.h: " #name " out of range");
#include "lb_xmit_list.h"
#undef LB_XMIT
