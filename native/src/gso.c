/*
 * gso.c - what the kernel would have done before queueing, done after it instead.
 *
 * With NFQA_CFG_F_GSO the queue hands over a GSO super-packet (up to 64 KiB, one
 * netlink message and one verdict instead of dozens) and packets whose L4 checksum
 * is still partial (CHECKSUM_PARTIAL: the field holds the pseudo-header sum only).
 * The adapter completes such checksums and cuts super-packets into segments here,
 * then feeds each segment to lb_process like any packet. Pure functions on bytes.
 */
#include <string.h>

#include "lb_internal.h"

#define IP_PROTO_TCP 6
#define IP_PROTO_UDP 17
#define TCP_FLAG_FIN 0x01
#define TCP_FLAG_PSH 0x08
#define TCP_FLAG_URG 0x20
#define TCP_FLAG_CWR 0x80

static void put16(uint8_t *b, uint16_t v)
{
    b[0] = (uint8_t)(v >> 8);
    b[1] = (uint8_t)v;
}

static void put32(uint8_t *b, uint32_t v)
{
    b[0] = (uint8_t)(v >> 24);
    b[1] = (uint8_t)(v >> 16);
    b[2] = (uint8_t)(v >> 8);
    b[3] = (uint8_t)v;
}

static uint32_t get32(const uint8_t *b)
{
    return (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3];
}

/* IPv4 header length if pkt[0..len) is a complete, unfragmented IPv4 packet, else 0. */
static uint32_t ipv4_hlen(const uint8_t *pkt, uint32_t len)
{
    if (len < 20 || (pkt[0] >> 4) != 4)
        return 0;
    uint32_t ihl = (uint32_t)(pkt[0] & 0x0f) * 4;
    if (ihl < 20 || ihl > len || lb_get16(pkt + 2) != len)
        return 0;
    if (lb_get16(pkt + 6) & 0x3fff) /* MF or a fragment offset */
        return 0;
    return ihl;
}

/* Full L4 checksum of pkt's transport part (bytes ihl..len), pseudo-header included. */
static uint16_t l4_csum(const uint8_t *pkt, uint32_t ihl, uint32_t len)
{
    uint32_t l4len = len - ihl;
    uint32_t sum = lb_csum_partial(pkt + 12, 8, 0); /* source and destination addresses */
    sum = lb_csum_partial(pkt + ihl, l4len, sum + pkt[9] + l4len);
    return lb_csum_fold(sum);
}

int lb_csum_complete(uint8_t *pkt, uint32_t len)
{
    uint32_t ihl = ipv4_hlen(pkt, len);
    if (!ihl)
        return LB_EINVAL;
    uint32_t off;
    if (pkt[9] == IP_PROTO_TCP && len - ihl >= 20)
        off = ihl + 16;
    else if (pkt[9] == IP_PROTO_UDP && len - ihl >= 8)
        off = ihl + 6;
    else
        return LB_EINVAL;
    put16(pkt + off, 0);
    uint16_t c = l4_csum(pkt, ihl, len);
    if (pkt[9] == IP_PROTO_UDP && c == 0)
        c = 0xffff; /* 0 means "no checksum" in UDP */
    put16(pkt + off, c);
    return LB_OK;
}

/* IP + TCP header length if pkt[0..len) is a complete, unfragmented TCP/IPv4 packet (*ihl: the
 * IP header's), else 0. */
static uint32_t tcp_hlen(const uint8_t *pkt, uint32_t len, uint32_t *ihl)
{
    *ihl = ipv4_hlen(pkt, len);
    if (!*ihl || pkt[9] != IP_PROTO_TCP || len - *ihl < 20)
        return 0;
    uint32_t thl = (uint32_t)(pkt[*ihl + 12] >> 4) * 4;
    if (thl < 20 || *ihl + thl > len)
        return 0;
    return *ihl + thl;
}

int lb_tcp_segment(const uint8_t *pkt, uint32_t len, uint32_t mtu, uint8_t *out, uint32_t slot_len,
                   uint32_t *seg_len, uint32_t max_segs)
{
    uint32_t ihl, hlen = tcp_hlen(pkt, len, &ihl);
    if (!hlen)
        return LB_EINVAL;
    uint32_t payload = len - hlen;
    uint8_t flags = pkt[ihl + 13];
    if (payload == 0 || (flags & TCP_FLAG_URG))
        return LB_EINVAL;
    if (mtu <= hlen)
        return LB_EINVAL;
    uint32_t mss = mtu - hlen;
    uint32_t nsegs = (payload + mss - 1) / mss;
    if (nsegs > max_segs || slot_len < (nsegs == 1 ? len : hlen + mss))
        return LB_ENOSPC;
    uint16_t ip_id = lb_get16(pkt + 4);
    uint32_t seq = get32(pkt + ihl + 4);
    for (uint32_t i = 0; i < nsegs; i++) {
        uint8_t *s = out + (size_t)i * slot_len;
        uint32_t off = i * mss;
        uint32_t plen = payload - off < mss ? payload - off : mss;
        uint32_t slen = hlen + plen;
        memcpy(s, pkt, hlen);
        memcpy(s + hlen, pkt + hlen + off, plen);
        put16(s + 2, (uint16_t)slen);
        put16(s + 4, (uint16_t)(ip_id + i));
        put16(s + 10, 0);
        put16(s + 10, lb_ip_csum(s, ihl));
        put32(s + ihl + 4, seq + off);
        uint8_t f = flags;
        if (i > 0)
            f &= (uint8_t)~TCP_FLAG_CWR;
        if (i + 1 < nsegs)
            f &= (uint8_t)~(TCP_FLAG_FIN | TCP_FLAG_PSH);
        s[ihl + 13] = f;
        put16(s + ihl + 16, 0);
        put16(s + ihl + 16, l4_csum(s, ihl, slen));
        seg_len[i] = slen;
    }
    return (int)nsegs;
}

int lb_tcp_gso_prepare(uint8_t *pkt, uint32_t len, uint32_t mtu, struct lb_gso_whole *out)
{
    uint32_t ihl, hlen = tcp_hlen(pkt, len, &ihl);
    if (!hlen)
        return LB_EINVAL;
    uint8_t flags = pkt[ihl + 13];
    if (len <= mtu || mtu <= hlen || (flags & TCP_FLAG_URG))
        return LB_EINVAL; /* fits already, nothing to cut, or cut differently (URG) */
    /* CHECKSUM_PARTIAL form: the field holds the folded pseudo-header sum, not complemented;
     * whoever segments the packet adds each segment's bytes and complements. */
    uint32_t l4len = len - ihl;
    uint32_t sum = lb_csum_partial(pkt + 12, 8, pkt[9] + l4len);
    put16(pkt + ihl + 16, (uint16_t)~lb_csum_fold(sum));
    out->l4_off = (uint16_t)ihl;
    out->hdr_len = (uint16_t)hlen;
    out->mss = (uint16_t)(mtu - hlen);
    out->cwr = (flags & TCP_FLAG_CWR) ? 1 : 0;
    return LB_OK;
}
