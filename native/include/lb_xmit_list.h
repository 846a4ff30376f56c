/*
 * lb_xmit_list.h - every forwarding method, one line each: LB_XMIT(FWD, x) binds the enum lb_fwd
 * value FWD (what ipvsadm's -g/-i/-m and DPVS's -b select) to `lb_xmit_x`, defined in
 * native/src/xmit_x.c. An X-macro list (no include guard); xmit.c builds the method table from
 * it. A value without a line is refused with LB_EOPNOTSUPP (every enum lb_fwd value has one now).
 * Adding a method: docs/extending.md.
 */
LB_XMIT(LB_FWD_ROUTE, dr)
LB_XMIT(LB_FWD_TUNNEL, tun)
LB_XMIT(LB_FWD_MASQ, nat)
LB_XMIT(LB_FWD_FULLNAT, fnat)
