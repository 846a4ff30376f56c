/*
 * parse.c - bounds-checked IPv4/TCP/UDP parsing.
 *
 * Every read of packet bytes is preceded by a length check against the
 * smaller of the buffer length and the IP total length. The order of the
 * checks is part of the contract (docs/fastpath.md): both engines must give
 * the same reason for the same bytes.
 */
#include <string.h>

#include "lb_internal.h"

static inline uint16_t rd16(const uint8_t *b) { return (uint16_t)((b[0] << 8) | b[1]); }

/* Verify an IPv4 header checksum (ihl a multiple of 4, 20..60): the
 * one's-complement sum of all its words is all ones in either byte order, so
 * native 32-bit loads suffice. */
static inline int ip_hdr_csum_ok(const uint8_t *b, uint32_t ihl)
{
    uint64_t acc = 0;
    uint32_t w[15];
    memcpy(w, b, 20);
    acc = (uint64_t)w[0] + w[1] + w[2] + w[3] + w[4]; /* the common 20-byte header, unrolled */
    for (uint32_t i = 20; i < ihl; i += 4) {
        memcpy(&w[i / 4], b + i, 4);
        acc += w[i / 4];
    }
    acc = (acc & 0xffffffffu) + (acc >> 32);
    acc = (acc & 0xffffffffu) + (acc >> 32);
    uint32_t s = (uint32_t)acc;
    s = (s & 0xffffu) + (s >> 16);
    s = (s & 0xffffu) + (s >> 16);
    return s == 0xffffu;
}

int lb_parse(const uint8_t *buf, uint32_t len, struct lb_pkt *p)
{
    if (len < 1)
        return LB_R_MALFORMED;
    uint8_t version = buf[0] >> 4;
    if (version == 6)
        return LB_R_NOT_IPV4;
    if (version != 4 || len < 20)
        return LB_R_MALFORMED;

    uint32_t ihl = (uint32_t)(buf[0] & 0x0f) * 4;
    uint32_t tot_len = rd16(buf + 2);
    if (ihl < 20 || ihl > len || tot_len < ihl || tot_len > len)
        return LB_R_MALFORMED;
    if (!ip_hdr_csum_ok(buf, ihl))
        return LB_R_BAD_CSUM;

    uint16_t frag = rd16(buf + 6);
    if (frag & 0x3fff) /* MF flag or a non-zero fragment offset */
        return LB_R_FRAGMENT;

    p->data = buf;
    p->len = tot_len; /* link-layer padding after the IP total length is ignored */
    p->ihl = ihl;
    p->proto = buf[9];
    memcpy(&p->saddr, buf + 12, 4);
    memcpy(&p->daddr, buf + 16, 4);
    p->l4off = ihl;
    p->l4len = tot_len - ihl;

    if (p->proto == LB_PROTO_TCP) {
        if (p->l4len < 20)
            return LB_R_MALFORMED;
        const uint8_t *th = buf + ihl;
        uint32_t doff = (uint32_t)(th[12] >> 4) * 4;
        if (doff < 20 || doff > p->l4len)
            return LB_R_MALFORMED;
        memcpy(&p->sport, th, 2);
        memcpy(&p->dport, th + 2, 2);
        memcpy(&p->tcp_seq, th + 4, 4);
        memcpy(&p->tcp_ack, th + 8, 4);
        memcpy(&p->tcp_win, th + 14, 2);
        p->tcp_doff = doff;
        p->payload_len = p->l4len - doff;
        p->tcp_flags = th[13];
        return LB_R_FORWARDED;
    }
    /* Not TCP: the TCP fields are defined as zero. */
    p->tcp_flags = 0;
    p->tcp_seq = 0;
    p->tcp_ack = 0;
    p->tcp_win = 0;
    p->tcp_doff = 0;
    p->sport = 0;
    p->dport = 0;
    p->payload_len = 0;
    if (p->proto == LB_PROTO_UDP) {
        if (p->l4len < 8)
            return LB_R_MALFORMED;
        const uint8_t *uh = buf + ihl;
        memcpy(&p->sport, uh, 2);
        memcpy(&p->dport, uh + 2, 2);
        p->payload_len = p->l4len - 8;
    } else if (p->proto == LB_PROTO_ICMP) {
        if (p->l4len < 8)
            return LB_R_MALFORMED;
        return LB_R_ICMP;
    } else {
        return LB_R_NOT_LB_PROTO;
    }
    return LB_R_FORWARDED;
}

int lb_parse_quoted(const uint8_t *quote, uint32_t len, struct lb_pkt *q)
{
    /* The quote is whatever the sender kept: an IP header and at least the
     * first 8 transport bytes (RFC 792), possibly truncated. Only fields
     * inside `len` are read; its total length need not match. */
    if (len < 20 || (quote[0] >> 4) != 4)
        return -1;
    uint32_t ihl = (uint32_t)(quote[0] & 0x0f) * 4;
    if (ihl < 20 || ihl + 8 > len)
        return -1;
    if (lb_get16(quote + 6) & 0x1fff) /* a later fragment has no ports */
        return -1;
    memset(q, 0, sizeof(*q));
    q->data = quote;
    q->len = len;
    q->ihl = ihl;
    q->proto = quote[9];
    memcpy(&q->saddr, quote + 12, 4);
    memcpy(&q->daddr, quote + 16, 4);
    q->l4off = ihl;
    q->l4len = len - ihl;
    if (q->proto != LB_PROTO_TCP && q->proto != LB_PROTO_UDP)
        return -1;
    memcpy(&q->sport, quote + ihl, 2);
    memcpy(&q->dport, quote + ihl + 2, 2);
    return 0;
}
