/*
 * proxyproto.c - the PROXY protocol (haproxy's proxy-protocol.txt) on FULLNAT TCP connections.
 *
 * The real server behind FULLNAT sees the director's local address, so a service with
 * LB_SVC_F_PROXY_V1 or _V2 sends it a PROXY header before the client's first byte, naming the
 * client's address and port and the VIP:vport it connected to:
 *
 *   v1: "PROXY TCP4 <client> <vip> <cport> <vport>\r\n" (dotted quads, decimal ports; 32..56 bytes)
 *   v2: the 12-byte signature 0D 0A 0D 0A 00 0D 0A 51 55 49 54 0A, ver/cmd 0x21 (version 2, PROXY),
 *       family 0x11 (AF_INET, STREAM), length 12 (network order), then client address, VIP,
 *       client port, VIP port (network order): 28 bytes.
 *
 * The header lives in the real server's sequence space at the client's ISN + 1; every client byte
 * sits px_len further on. It reuses SYN-proxy's side table (lb->sp[slot]: client_isn, px_len,
 * px_flags) and its translation helpers, and it composes with SYN-proxy's own translation
 * (which moves the real server's numbers, while this one moves the client's):
 *
 *   client -> server: a segment at ISN + 1 with ACK and without SYN or RST carries the header
 *     before its payload (the handshake's last ACK, the first data, a FIN, or any retransmission
 *     of them: the header is rebuilt from the entry, so every copy is identical), unless it is a
 *     pure ACK after the real server acknowledged the header; every other segment's sequence
 *     number moves by px_len (a RST at ISN + 1 before any header went keeps it). SYNs pass as
 *     they are (a new ISN in a SYN restarts the state).
 *   server -> client: acknowledgment numbers and SACK edges at or past ISN + 1 + px_len move back
 *     by px_len; those inside the header become ISN + 1 (the client's data is not acked yet).
 *
 * Size: the MSS announced to the client (the real server's SYN-ACK on its way out, or the cookie
 * SYN-ACK) is lowered by the service's worst-case header (lb_svc_room), so the first segment and
 * the header fit the path MTU together; GSO cuts (lb_path_mtu) leave the same room until the
 * header is acknowledged. When they still do not fit (a client ignoring the MSS, a smaller path
 * MTU), the segment is cut short (FIN cleared) and the client resends the rest (LB_R_PROXY_CUT).
 */
#include <string.h>

#include "lb_xmit.h"

static const uint8_t px_v2_sig[12] = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};

static uint32_t put_dec(uint8_t *b, uint32_t v)
{
    uint8_t tmp[10];
    uint32_t n = 0;
    do {
        tmp[n++] = (uint8_t)('0' + v % 10);
        v /= 10;
    } while (v);
    for (uint32_t i = 0; i < n; i++)
        b[i] = tmp[n - 1 - i];
    return n;
}

static uint32_t put_quad(uint8_t *b, uint32_t addr_n)
{
    const uint8_t *a = (const uint8_t *)&addr_n;
    uint32_t n = 0;
    for (int i = 0; i < 4; i++) {
        if (i)
            b[n++] = '.';
        n += put_dec(b + n, a[i]);
    }
    return n;
}

/* The header of c: v2 when `v2`, else v1. buf holds LB_PROXY_V1_MAX_LEN bytes. */
static uint32_t px_build(const struct lb_conn *c, int v2, uint8_t *buf)
{
    if (v2) {
        memcpy(buf, px_v2_sig, sizeof(px_v2_sig));
        buf[12] = 0x21;
        buf[13] = 0x11;
        lb_put16(buf + 14, 12);
        memcpy(buf + 16, &c->caddr, 4);
        memcpy(buf + 20, &c->vaddr, 4);
        memcpy(buf + 24, &c->cport, 2);
        memcpy(buf + 26, &c->vport, 2);
        return LB_PROXY_V2_LEN;
    }
    uint32_t n = 0;
    memcpy(buf, "PROXY TCP4 ", 11);
    n = 11;
    n += put_quad(buf + n, c->caddr);
    buf[n++] = ' ';
    n += put_quad(buf + n, c->vaddr);
    buf[n++] = ' ';
    n += put_dec(buf + n, lb_ntohs(c->cport));
    buf[n++] = ' ';
    n += put_dec(buf + n, lb_ntohs(c->vport));
    buf[n++] = '\r';
    buf[n++] = '\n';
    return n; /* <= 11 + 15 + 1 + 15 + 1 + 5 + 1 + 5 + 2 = LB_PROXY_V1_MAX_LEN */
}

uint32_t lb_proxy_header(const struct lb_conn *c, uint32_t svc_flags, uint8_t *buf)
{
    if (svc_flags & LB_SVC_F_PROXY_V2)
        return px_build(c, 1, buf);
    if (svc_flags & LB_SVC_F_PROXY_V1)
        return px_build(c, 0, buf);
    return 0;
}

static inline struct lb_sp *px_state(lb_t *lb, const struct lb_conn *c) { return &lb->sp[c - lb->conns]; }

void lb_proxy_conn_init(lb_t *lb, struct lb_conn *c, uint32_t svc_flags, uint32_t isn)
{
    uint8_t hdr[LB_PROXY_V1_MAX_LEN];
    uint32_t n = lb_proxy_header(c, svc_flags, hdr);
    if (!lb->sp || !n)
        return; /* lb_svc_add/edit allocated the side table with the flag: cannot happen */
    struct lb_sp *sp = px_state(lb, c);
    if (!(c->flags & LB_CF_SYNPROXY))
        memset(sp, 0, sizeof(*sp)); /* a SYN-proxied entry's fields were set just before */
    sp->client_isn = isn;
    sp->px_len = (uint16_t)n;
    sp->px_flags = (svc_flags & LB_SVC_F_PROXY_V2) ? LB_PX_V2 : 0;
    c->flags |= LB_CF_PROXY;
    lb_conn_dirty(lb, (uint32_t)(c - lb->conns));
}

static inline uint32_t get32(const uint8_t *b)
{
    return ((uint32_t)b[0] << 24) | ((uint32_t)b[1] << 16) | ((uint32_t)b[2] << 8) | b[3];
}

static uint32_t dest_mtu(const struct lb_conn *c)
{
    const struct lb_dest_fwd *f = c->dest ? c->dest->fwd : NULL;
    return f && f->conf.mtu ? f->conf.mtu : 1500;
}

/* Put the header in front of the payload of the segment at out (len bytes, headers hdrs bytes). */
static int px_insert(struct lb_sp *sp, const struct lb_conn *c, uint8_t *out, uint32_t out_cap,
                     uint32_t ihl, uint32_t hdrs, struct lb_action *act, int reason)
{
    uint8_t hdr[LB_PROXY_V1_MAX_LEN];
    uint32_t h = px_build(c, sp->px_flags & LB_PX_V2, hdr);
    uint32_t len = act->out_len;
    uint32_t mtu = dest_mtu(c);
    uint32_t limit = mtu < out_cap ? mtu : out_cap;
    if (limit > LB_PKT_MAX)
        limit = LB_PKT_MAX;
    if (hdrs + h > limit) {
        act->verdict = LB_V_DROP;
        act->out_len = 0;
        return LB_R_PROXY_CUT;
    }
    uint32_t keep = len - hdrs;
    if (len + h > limit) {
        keep = limit - hdrs - h;
        out[ihl + 13] &= (uint8_t)~LB_TCP_FIN; /* the FIN follows bytes not sent yet */
        reason = LB_R_PROXY_CUT;
    }
    memmove(out + hdrs + h, out + hdrs, keep);
    memcpy(out + hdrs, hdr, h);
    uint32_t new_len = hdrs + h + keep;
    lb_put16(out + 2, (uint16_t)new_len);
    out[10] = out[11] = 0;
    lb_put16(out + 10, lb_ip_csum(out, ihl));
    uint8_t *th = out + ihl;
    th[16] = th[17] = 0;
    uint32_t sum = lb_csum_partial(out + 12, 8, 0) + LB_PROTO_TCP + (new_len - ihl);
    lb_put16(th + 16, lb_csum_fold(lb_csum_partial(th, new_len - ihl, sum)));
    act->out_len = new_len;
    sp->px_flags |= LB_PX_SENT;
    return reason;
}

int lb_proxy_in(lb_t *lb, const struct lb_pkt *p, struct lb_conn *c, uint8_t *out, uint32_t out_cap,
                struct lb_action *act, int reason)
{
    /* The method wrote the rewritten copy (same headers as p) into out, or dropped it. */
    if (act->verdict != LB_V_XMIT_L2 || !lb->sp || act->out_len < p->ihl + p->tcp_doff || p->proto != LB_PROTO_TCP)
        return reason;
    struct lb_sp *sp = px_state(lb, c);
    uint8_t *th = out + p->ihl;
    uint8_t fl = th[13];
    uint32_t seq = get32(th + 4);
    if (fl & LB_TCP_SYN) {
        if (!(fl & LB_TCP_ACK) && !(c->flags & LB_CF_SYNPROXY) && seq != sp->client_isn) {
            sp->client_isn = seq; /* a new ISN: the header starts over */
            sp->px_flags &= LB_PX_V2;
        }
        return reason;
    }
    uint32_t first = sp->client_isn + 1;
    uint32_t hdrs = p->ihl + p->tcp_doff;
    uint32_t payload = act->out_len - hdrs;
    if (seq == first && (fl & LB_TCP_ACK) && !(fl & LB_TCP_RST) &&
        (payload || (fl & LB_TCP_FIN) || !(sp->px_flags & LB_PX_ACKED)))
        return px_insert(sp, c, out, out_cap, p->ihl, hdrs, act, reason);
    if (seq == first && (fl & LB_TCP_RST) && !(sp->px_flags & LB_PX_SENT))
        return reason; /* the real server never saw the header: its next byte is still ISN + 1 */
    lb_tcp_add32(th + 4, sp->px_len, th + 16);
    return reason;
}

/* An acknowledged position of the real server's sequence space in the client's. */
static uint32_t px_back(const struct lb_sp *sp, uint32_t v, int *acked)
{
    uint32_t first = sp->client_isn + 1;
    if ((int32_t)(v - (first + sp->px_len)) >= 0) {
        *acked = 1;
        return v - sp->px_len;
    }
    if ((int32_t)(v - first) > 0)
        return first; /* inside the header: none of the client's bytes yet */
    return v;
}

void lb_proxy_out(lb_t *lb, const struct lb_pkt *p, struct lb_conn *c, uint8_t *out, const struct lb_action *act)
{
    if (act->verdict != LB_V_ANSWER || !lb->sp || act->out_len < p->ihl + p->tcp_doff || p->proto != LB_PROTO_TCP)
        return;
    struct lb_sp *sp = px_state(lb, c);
    uint8_t *th = out + p->ihl;
    int acked = 0, unused = 0;
    if (th[13] & LB_TCP_ACK) {
        uint32_t a = get32(th + 8);
        uint32_t b = px_back(sp, a, &acked);
        if (b != a)
            lb_tcp_add32(th + 8, b - a, th + 16);
        if (acked)
            sp->px_flags |= LB_PX_ACKED;
    }
    uint32_t i = 20, at;
    uint8_t kind, len;
    while (lb_tcp_opt_next(th, p->tcp_doff, &i, &kind, &len, &at))
        if (kind == 5 && len >= 10 && (len - 2) % 8 == 0)
            for (uint32_t e = at + 2; e + 4 <= at + len; e += 4) {
                uint32_t a = get32(th + e);
                uint32_t b = px_back(sp, a, &unused);
                if (b != a)
                    lb_tcp_add32(th + e, b - a, th + 16);
            }
}

uint32_t lb_proxy_first_payload(lb_t *lb, const struct lb_conn *c, const uint8_t *held, uint32_t held_len,
                                uint8_t *buf, uint32_t cap)
{
    if (!lb->sp || !(c->flags & LB_CF_PROXY))
        return 0;
    struct lb_sp *sp = px_state(lb, c);
    uint8_t hdr[LB_PROXY_V1_MAX_LEN];
    uint32_t h = px_build(c, sp->px_flags & LB_PX_V2, hdr);
    if (h > cap)
        return 0;
    uint32_t keep = held_len < cap - h ? held_len : cap - h;
    memcpy(buf, hdr, h);
    if (keep)
        memcpy(buf + h, held, keep);
    sp->px_flags |= LB_PX_SENT;
    return h + keep;
}

uint32_t lb_proxy_mtu(const lb_t *lb, const struct lb_conn *c, uint32_t mtu)
{
    if (!lb->sp || !(c->flags & LB_CF_PROXY))
        return mtu;
    const struct lb_sp *sp = &lb->sp[c - lb->conns];
    if (sp->px_flags & LB_PX_ACKED)
        return mtu;
    return mtu > sp->px_len ? mtu - sp->px_len : 0;
}
