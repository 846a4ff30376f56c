/*
 * csum.c - Internet checksums (RFC 1071) and incremental updates (RFC 1624).
 */
#include <string.h>

#include "lb_internal.h"

uint32_t lb_csum_partial(const uint8_t *buf, uint32_t len, uint32_t sum)
{
    /* Sum big-endian 32-bit words: a word (a << 16 | b) is congruent to a + b
     * modulo 0xffff (2^16 = 1 there), so this equals the 16-bit word sum once
     * folded, at a quarter of the additions. */
    uint64_t acc = sum;
    uint32_t i = 0;
    for (; i + 4 <= len; i += 4) {
        uint32_t w;
        memcpy(&w, buf + i, 4);
        acc += lb_ntohl(w);
    }
    if (i + 2 <= len) {
        acc += (uint32_t)((buf[i] << 8) | buf[i + 1]);
        i += 2;
    }
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

/* RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m'). */
void lb_csum_replace2(uint8_t *field, uint16_t old_word, uint16_t new_word)
{
    uint32_t sum = (uint16_t)~lb_get16(field);
    sum += (uint16_t)~old_word;
    sum += new_word;
    lb_put16(field, lb_csum_fold(sum));
}

void lb_csum_replace4(uint8_t *field, uint32_t old_n, uint32_t new_n)
{
    const uint8_t *o = (const uint8_t *)&old_n;
    const uint8_t *n = (const uint8_t *)&new_n;
    uint32_t sum = (uint16_t)~lb_get16(field);
    sum += (uint16_t)~lb_get16(o);
    sum += (uint16_t)~lb_get16(o + 2);
    sum += lb_get16(n);
    sum += lb_get16(n + 2);
    lb_put16(field, lb_csum_fold(sum));
}
