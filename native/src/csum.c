/*
 * csum.c - Internet checksums (RFC 1071) and incremental updates (RFC 1624).
 */
#include "lb_internal.h"

uint32_t lb_csum_partial(const uint8_t *buf, uint32_t len, uint32_t sum)
{
    uint64_t acc = sum;
    uint32_t i = 0;
    for (; i + 1 < len; i += 2)
        acc += (uint32_t)((buf[i] << 8) | buf[i + 1]);
    if (i < len) /* odd trailing byte is padded with zero on the right */
        acc += (uint32_t)buf[i] << 8;
    while (acc >> 32)
        acc = (acc & 0xffffffffu) + (acc >> 32);
    return (uint32_t)acc;
}

uint16_t lb_csum_fold(uint32_t sum)
{
    while (sum >> 16)
        sum = (sum & 0xffffu) + (sum >> 16);
    return (uint16_t)~sum;
}

uint16_t lb_ip_csum(const uint8_t *hdr, uint32_t ihl)
{
    return lb_csum_fold(lb_csum_partial(hdr, ihl, 0));
}
