/*
 * icmp.c - the ICMP errors the director originates itself.
 *
 * Port unreachable (ip_vs_leave's answer when no destination is available):
 * an IPv4 packet from the original destination (the VIP) to the original
 * source: version 4, IHL 5, TOS 0, ID 0, no DF, TTL 64, protocol ICMP; ICMP
 * type 3 code 3, 4 unused zero bytes, then the original IP header plus the
 * first 8 bytes of its payload (less if the packet is shorter).
 */
#include <string.h>

#include "lb_internal.h"

uint32_t lb_icmp_port_unreach(const struct lb_pkt *p, uint8_t *out, uint32_t out_cap)
{
    uint32_t quote = p->ihl + 8;
    if (quote > p->len)
        quote = p->len;
    uint32_t total = 20 + 8 + quote;
    if (!out || out_cap < total)
        return 0;
    memset(out, 0, 28);
    out[0] = 0x45;
    out[2] = (uint8_t)(total >> 8);
    out[3] = (uint8_t)total;
    out[8] = 64;
    out[9] = LB_PROTO_ICMP;
    memcpy(out + 12, &p->daddr, 4);
    memcpy(out + 16, &p->saddr, 4);
    uint16_t ipc = lb_ip_csum(out, 20);
    out[10] = (uint8_t)(ipc >> 8);
    out[11] = (uint8_t)ipc;
    uint8_t *icmp = out + 20;
    icmp[0] = 3; /* destination unreachable */
    icmp[1] = 3; /* port unreachable */
    memcpy(icmp + 8, p->data, quote);
    uint16_t ic = lb_csum_fold(lb_csum_partial(icmp, 8 + quote, 0));
    icmp[2] = (uint8_t)(ic >> 8);
    icmp[3] = (uint8_t)ic;
    return total;
}
