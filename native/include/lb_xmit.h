/*
 * lb_xmit.h - forwarding methods, bound once per connection (the kernel's cp->packet_xmit).
 *
 * One method per file (xmit_<name>.c defines `const struct lb_xmit_ops lb_xmit_<name>`), one
 * line per method in lb_xmit_list.h. A connection records its method when it is created
 * (c->fwd, an index into lb_xmit_methods: editing a destination's method affects new
 * connections only, as in the kernel); the packet path, the ICMP relation, the connection table,
 * lb_path_mtu and SYN-proxy call through that method's ops and never look at which method it is.
 *
 * Every method towards a real server ends in LB_V_XMIT_L2 on the interface and next-hop MAC the
 * control plane resolved for that destination (struct lb_dest_fwd), so balanced traffic never
 * crosses the director's FORWARD/conntrack path. Replies to clients use LB_V_ANSWER.
 *
 * The reply tuple. A method that sees the real server's replies (xmit_out != NULL) gives each of
 * its connections a second key, (proto, RIP, RPORT) -> (oaddr, oport): the real server's
 * address and port (the destination's) towards the address and port the method makes it
 * answer to, chosen by conn_bind (FULLNAT: a local address and port; NAT: the client's own,
 * CIP:CPORT). The connection table hashes it; replies and ICMP errors from the
 * real server's side find the connection by it (direction LB_DIR_OUT). A method without
 * xmit_out has no reply tuple, and its connections carry LB_CF_NOOUTPUT (the state machine's
 * INPUT-ONLY table).
 */
#ifndef LB_XMIT_H
#define LB_XMIT_H

#include "lb_internal.h"

/* Fill `act` for packet p of connection c; `out` may receive rewritten bytes. Return the reason
 * counted for the packet. */
typedef int (*lb_xmit_fn)(lb_t *lb, const struct lb_pkt *p, struct lb_conn *c, uint8_t *out, uint32_t out_cap,
                          struct lb_action *act);

/* What a method binds to a new connection (conn_bind / conn_restore fill it; zero when nothing). */
struct lb_conn_bind {
    uint32_t oaddr_n;            /* the reply tuple's director side (network order) */
    uint16_t oport_n;
    void *priv;                  /* a reference the connection holds until the method's release() */
    uint16_t rport_n;            /* the real server's port of the connection (lb_conn_rport_n): what the
                                    reply tuple's server side is; release() gets it back */
};

/* Method capabilities (lb_xmit_ops.flags). */
#define LB_XMIT_F_SYNPROXY 1     /* may serve a SYN-proxy service: its connections reach the real server
                                    from their reply tuple's director side (oaddr:oport), so synproxy.c
                                    can open them itself, and xmit_in/xmit_out carry the rest */
#define LB_XMIT_F_NEEDS_ENTRY 2  /* its replies are addressed to the director itself (FULLNAT: LIP:lport):
                                    without a connection entry they reach no one, so a one-packet (-o)
                                    UDP service, which keeps none, cannot use it */
#define LB_XMIT_F_FORWARDS_REPLIES 4 /* its replies are not addressed to the director (NAT: RIP -> CIP): the
                                    kernel forwards them, and ip_forward answers one whose TTL runs out
                                    (ICMP time exceeded) and drops it before the FORWARD hook where
                                    ip_vs_out would see it; so the core leaves such a reply's connection
                                    alone (state, timer, stats) and only calls xmit_out, which answers */

struct lb_xmit_ops {
    const char *name;            /* as lbadm names it (route, tunnel, fullnat) */
    uint32_t flags;              /* LB_XMIT_F_* */
    uint32_t mtu_overhead;       /* bytes the method adds in front of the client's packet (IPIP: 20):
                                    lb_path_mtu is the destination's path MTU less this */
    /* Client -> real server (every method). */
    lb_xmit_fn xmit_in;
    /* Real server -> client, found by the reply tuple; NULL: the method never sees replies. */
    lb_xmit_fn xmit_out;
    /* An ICMP error about c from the client's side (p is the ICMP packet; its checksum is checked,
     * the stats counted and p->len <= out_cap). Every method. Returns LB_R_ICMP when passed on. */
    lb_xmit_fn icmp_in;
    /* The same from the real server's side (found by the reply tuple): methods with xmit_out. */
    lb_xmit_fn icmp_out;
    /* Optional: choose what a new connection of p to d needs (FULLNAT: a local address and port),
     * taking its references. LB_R_FORWARDED, or the reason to drop the packet (LB_R_NO_LADDR). */
    int (*conn_bind)(lb_t *lb, struct lb_svc *s, const struct lb_dest *d, const struct lb_pkt *p, uint64_t now_ms,
                     struct lb_conn_bind *b);
    /* Optional: the same for a connection recreated from a dump (lb_conn_restore): LB_OK or LB_E*. */
    int (*conn_restore)(lb_t *lb, struct lb_svc *s, const struct lb_dest *d, const struct lb_conn_info *ci,
                        uint64_t now_ms, struct lb_conn_bind *b);
    /* Optional: drop what conn_bind/conn_restore took (b: what it filled, or the connection's
     * reply tuple and xmit_priv; proto and d: the connection's), when the connection goes or was
     * never created. */
    void (*release)(lb_t *lb, uint8_t proto, const struct lb_dest *d, const struct lb_conn_bind *b);
    /* Optional: the method's fields of a dump entry (FULLNAT: laddr, lport). */
    void (*conn_dump)(const struct lb_conn *c, struct lb_conn_info *o);
    /* Optional: free the method's per-service state, s->xmit_data[its enum lb_fwd value] (FULLNAT:
     * the local address pool), when the service goes. The method creates it when first needed. */
    void (*svc_done)(lb_t *lb, struct lb_svc *s);
    /* Optional: free the method's instance-wide state, lb->xmit_state[its enum lb_fwd value], when
     * the instance goes (after every connection and service). */
    void (*done)(lb_t *lb);
};

#define LB_XMIT(fwd, name) extern const struct lb_xmit_ops lb_xmit_##name;
#include "lb_xmit_list.h"
#undef LB_XMIT

/* The method table, indexed by enum lb_fwd; NULL where no method is registered. */
extern const struct lb_xmit_ops *const lb_xmit_methods[LB_XMIT_MAX];

/* The method of a destination's configured forwarding method, or NULL when none is registered. */
static inline const struct lb_xmit_ops *lb_xmit_find(int32_t fwd)
{
    return fwd >= 0 && fwd < LB_XMIT_MAX ? lb_xmit_methods[fwd] : NULL;
}

/* The method a connection was created with (c->fwd is always a registered method's index). */
static inline const struct lb_xmit_ops *lb_conn_xmit(const struct lb_conn *c)
{
    return lb_xmit_methods[c->fwd];
}

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

/* Decrement the TTL of the IPv4 header at ip (TTL > 1) and update its checksum incrementally, as the
 * kernel's ip_decrease_ttl: the TTL is the high byte of its 16-bit word, so the word drops by 0x0100
 * and the checksum (its one's complement sum's complement) rises by 0x0100 with the end-around
 * carry. Done on the checksum as stored (native order), the network-order 0x0100 is 0x0001 on a
 * little-endian host. It gives the bytes RFC 1624 eqn. 3 gives for every TTL, protocol and
 * checksum (checked exhaustively against that form when it changed), in ~6 instructions instead of
 * ~23. A macro, so that lb_xmit_dr_in (a C99 inline definition) may use it: it may call no static
 * function. For every method that sends a client's packet on (decrement_ttl). */
#define LB_IP_TTL_DEC(ip)                                                                            \
    do {                                                                                            \
        uint8_t *ip_ = (ip);                                                                        \
        uint16_t c_;                                                                                \
        __builtin_memcpy(&c_, ip_ + 10, 2);                                                         \
        uint32_t s_ = (uint32_t)c_ + (__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__ ? 0x0001u : 0x0100u); \
        c_ = (uint16_t)(s_ + (s_ >= 0xffffu));                                                      \
        __builtin_memcpy(ip_ + 10, &c_, 2);                                                         \
        ip_[8] = (uint8_t)(ip_[8] - 1);                                                             \
    } while (0)

/* lb_xmit_rewrite: which side of the packet it writes. */
#define LB_XMIT_RW_SRC 1u
#define LB_XMIT_RW_DST 2u

/* The NAT and FULLNAT rewrite of the copy at o of TCP/UDP packet p: the source address and port
 * (LB_XMIT_RW_SRC) and/or the destination address and port (LB_XMIT_RW_DST), all network order,
 * with the TTL decremented. Checksums are updated incrementally (RFC 1624) for the words that
 * change; a UDP checksum of 0 (none) stays 0, an updated one that comes out 0 is sent as 0xffff.
 * Returns -1, nothing written, when the TTL runs out (decrement_ttl: TTL <= 1). */
int lb_xmit_rewrite(uint8_t *o, const struct lb_pkt *p, unsigned which, uint32_t saddr, uint16_t sport,
                    uint32_t daddr, uint16_t dport);

/* The copy at out that a rewriting method edits: 0, or -1 with act dropped when p does not fit. */
static inline int lb_xmit_copy(const struct lb_pkt *p, uint8_t *out, uint32_t out_cap, struct lb_action *act)
{
    if (p->len > out_cap) {
        act->verdict = LB_V_DROP;
        return -1;
    }
    __builtin_memcpy(out, p->data, p->len);
    return 0;
}

/* A client's packet whose TTL runs out on the director (decrement_ttl: TTL <= 1): ICMP time
 * exceeded back to its source from saddr_n, or dropped when it does not fit. */
static inline int lb_xmit_ttl_exceeded(const struct lb_pkt *p, uint32_t saddr_n, uint8_t *out, uint32_t out_cap,
                                       struct lb_action *act)
{
    uint32_t n = lb_icmp_time_exceeded(p, saddr_n, out, out_cap);
    act->verdict = n ? LB_V_ANSWER : LB_V_DROP;
    act->out_len = n;
    return LB_R_TTL_EXCEEDED;
}

/* ---------------------------------------------------------------- the hot call */

/* Direct routing's xmit_in: the client's packet leaves with its TTL decremented (the kernel's
 * __ip_vs_get_out_rt -> decrement_ttl, for every method) on the destination's L2 path; at TTL <= 1
 * the client gets ICMP time exceeded from the VIP instead. xmit_dr.c describes the method and holds
 * this function's one external definition and its ops. Its body is here, as a C99 inline
 * definition, only so that lb_conn_xmit_in can inline it; being one, it can use no static function
 * (lb_xmit_l2_to and lb_xmit_ttl_exceeded, spelled out). */
inline __attribute__((always_inline)) int lb_xmit_dr_in(lb_t *lb LB_UNUSED, const struct lb_pkt *p,
                                                        struct lb_conn *c, uint8_t *out, uint32_t out_cap,
                                                        struct lb_action *act)
{
    const struct lb_dest_fwd *f = c->dest->fwd;
    if (LB_UNLIKELY(!f)) {
        act->verdict = LB_V_DROP;
        return LB_R_NO_L2;
    }
    if (LB_UNLIKELY(p->data[8] <= 1)) {
        uint32_t n = lb_icmp_time_exceeded(p, p->daddr, out, out_cap);
        act->verdict = n ? LB_V_ANSWER : LB_V_DROP;
        act->out_len = n;
        return LB_R_TTL_EXCEEDED;
    }
    if (LB_LIKELY(p->wdata != NULL) && LB_LIKELY(p->len <= (f->conf.mtu ? f->conf.mtu : 1500u))) {
        /* The caller lent its bytes (lb_process_inplace) and the packet leaves whole: the TTL and
         * checksum change where they are, out_len 0 sends them. A packet over the path MTU takes
         * the copy below, so that an ICMP 'fragmentation needed' quotes it as it came. */
        LB_IP_TTL_DEC(p->wdata);
        act->out_len = 0;
    } else {
        if (LB_UNLIKELY(p->len > out_cap)) {
            act->verdict = LB_V_DROP;
            return LB_R_MALFORMED;
        }
        __builtin_memcpy(out, p->data, p->len);
        LB_IP_TTL_DEC(out);
        act->out_len = p->len;
    }
    act->verdict = LB_V_XMIT_L2;
    act->ifindex = f->conf.ifindex;
    __builtin_memcpy(act->l2hdr, f->l2hdr, LB_L2HDR_LEN);
    return LB_R_FORWARDED;
}

/* The packet path's call of c's xmit_in. When c's method is direct routing, the likely case, its
 * xmit_in is called directly and inlined: the kernel's INDIRECT_CALL_1
 * (include/linux/indirect_call_wrapper.h) for the same reason. It is the method's own function
 * either way (the compare is with its ops, not with an enum); the indirect call would cost about
 * a dozen instructions of the ~285 an established DR packet takes (bench cost). */
static inline __attribute__((always_inline)) int lb_conn_xmit_in(lb_t *lb, const struct lb_pkt *p,
                                                                  struct lb_conn *c, uint8_t *out,
                                                                  uint32_t out_cap, struct lb_action *act)
{
    const struct lb_xmit_ops *m = lb_conn_xmit(c);
    if (LB_LIKELY(m == &lb_xmit_dr))
        return lb_xmit_dr_in(lb, p, c, out, out_cap, act);
    return m->xmit_in(lb, p, c, out, out_cap, act);
}

/* ensure_mtu_is_adequate (ip_vs_xmit.c) for what a method sends towards its real server on L2:
 * larger than the destination's path MTU with DF set, the client gets ICMP fragmentation needed
 * (the packet is dropped); with DF clear it leaves as fragments of at most that MTU (the adapter
 * cuts them with lb_ip_fragment, as the kernel's ip_fragment does after IPVS). One compare for
 * every packet that fits. IPIP checks DF against the MTU less its header itself (the next-hop
 * MTU it quotes is the inner one); its outer packet, DF clear, is fragmented here. */
static inline __attribute__((always_inline)) int lb_fit_path_mtu(const struct lb_pkt *p, const struct lb_conn *c,
                                                                  uint8_t *out, uint32_t out_cap,
                                                                  struct lb_action *act, int reason)
{
    if (act->verdict != LB_V_XMIT_L2)
        return reason;
    const struct lb_dest_fwd *f = c->dest->fwd; /* the method sent on it: installed */
    uint32_t mtu = f->conf.mtu ? f->conf.mtu : 1500;
    uint32_t len = act->out_len ? act->out_len : p->len;
    if (LB_LIKELY(len <= mtu))
        return reason;
    const uint8_t *sent = act->out_len ? out : p->data;
    if (sent[6] & 0x40) {
        uint32_t n = lb_icmp_frag_needed(p, (uint16_t)(mtu < 0xffff ? mtu : 0xffff), out, out_cap);
        act->verdict = n ? LB_V_ANSWER : LB_V_DROP;
        act->out_len = n;
        act->ifindex = 0;
        return LB_R_FRAG_NEEDED;
    }
    act->frag_mtu = mtu;
    return reason;
}

/* What follows c's xmit_in for a client's packet, wherever it leaves from: the packet path, or the
 * timers for a packet held while its destination was resolved (l2q.c), so that a held packet
 * leaves exactly as it would have: the PROXY header or the shift past it (proxyproto.c), then the
 * path-MTU check (fragmentation needed, or frag_mtu). */
static inline __attribute__((always_inline)) int lb_xmit_in_finish(lb_t *lb, const struct lb_pkt *p,
                                                                    struct lb_conn *c, uint8_t *out,
                                                                    uint32_t out_cap, struct lb_action *act,
                                                                    int reason)
{
    if (LB_UNLIKELY(c->flags & LB_CF_PROXY))
        reason = lb_proxy_in(lb, p, c, out, out_cap, act, reason); /* the PROXY header, or the shift past it */
    return lb_fit_path_mtu(p, c, out, out_cap, act, reason);
}

/* icmp.c: rewrite the copy at o of an ICMP error (outer packet p): outer addresses, quoted
 * addresses and ports (network order), checksums; outer TTL decremented. -1 when the TTL runs out. */
int lb_icmp_translate(uint8_t *o, const struct lb_pkt *p, uint32_t outer_s, uint32_t outer_d, uint32_t q_s,
                      uint16_t q_sp, uint32_t q_d, uint16_t q_dp);

/* icmp.c, the ICMP ops of methods that rewrite addresses (NAT, FULLNAT): an error from the client's
 * side goes to c's real server as outer_s -> RIP, quoting RIP:rport -> q_d:q_dp (LB_V_XMIT_L2); one
 * from the real server's side goes to the client as VIP -> CIP, quoting CIP:cport -> VIP:vport
 * (LB_V_ANSWER). Both return the reason (LB_R_ICMP, or why the error was dropped). */
int lb_icmp_to_dest(const struct lb_pkt *p, const struct lb_conn *c, uint8_t *out, struct lb_action *act,
                    uint32_t outer_s, uint32_t q_d, uint16_t q_dp);
int lb_icmp_to_client(const struct lb_pkt *p, const struct lb_conn *c, uint8_t *out, struct lb_action *act);

#endif /* LB_XMIT_H */
