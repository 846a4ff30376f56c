/*
 * parse.c - bounds-checked IPv4/TCP/UDP parsing.
 *
 * Every read of packet bytes is preceded by a length check against the
 * smaller of the buffer length and the IP total length. The order of the
 * checks is part of the contract (docs/fastpath.md): both engines must give
 * the same reason for the same bytes. The packet parser lives in lb_internal.h
 * (lb_parse_inline) so that lb_process inlines it.
 */
#include <string.h>

#include "lb_internal.h"

/* The parser itself is lb_parse_inline (lb_internal.h), inlined into lb_process. */
int lb_parse(const uint8_t *buf, uint32_t len, struct lb_pkt *p)
{
    return lb_parse_inline(buf, len, p);
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
