/*
 * csum.c - Internet checksums (RFC 1071) and incremental updates (RFC 1624).
 *
 * Sums are taken in raw order (see lb_internal.h): 64-bit words as they sit in
 * memory, with end-around carries, and converted to host order only where a
 * caller wants a host-order value.
 */
#include <string.h>

#include "lb_internal.h"

/* Sum of buf's raw 16-bit words (a trailing odd byte padded with zero on the right),
 * modulo 2^64 - 1: congruent to their sum modulo 0xffff, and zero only for zero data. */
static inline uint64_t sum_raw(const uint8_t *buf, uint32_t len)
{
    uint64_t acc = 0;
    uint32_t i = 0;
    for (; i + 8 <= len; i += 8) {
        uint64_t w;
        memcpy(&w, buf + i, 8);
        acc += w;
        acc += acc < w; /* end-around carry: 2^64 == 1 modulo 0xffff */
    }
    if (i + 4 <= len) {
        uint32_t w;
        memcpy(&w, buf + i, 4);
        acc += w;
        acc += acc < w;
        i += 4;
    }
    if (i + 2 <= len) {
        uint16_t w;
        memcpy(&w, buf + i, 2);
        acc += w;
        acc += acc < w;
        i += 2;
    }
    if (i < len) {
        uint8_t last[2] = {buf[i], 0};
        uint16_t w;
        memcpy(&w, last, 2);
        acc += w;
        acc += acc < w;
    }
    return acc;
}

uint32_t lb_csum_partial(const uint8_t *buf, uint32_t len, uint32_t sum)
{
    uint64_t r = (uint64_t)sum + lb_ntohs(lb_csum_fold_raw(sum_raw(buf, len)));
    return (uint32_t)r + (uint32_t)(r >> 32); /* end-around carry; cannot carry again */
}

uint16_t lb_csum_fold(uint32_t sum)
{
    while (sum >> 16)
        sum = (sum & 0xffffu) + (sum >> 16);
    return (uint16_t)~sum;
}

uint16_t lb_ip_csum(const uint8_t *hdr, uint32_t ihl)
{
    uint64_t sum = ihl == 20 ? lb_sum20_raw(hdr) : sum_raw(hdr, ihl); /* mostly no options */
    return lb_ntohs((uint16_t)~lb_csum_fold_raw(sum));
}

/* RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m'). */
void lb_csum_replace2(uint8_t *field, uint16_t old_word, uint16_t new_word)
{
    lb_csum_apply_raw(field, lb_csum_delta16(lb_htons(old_word), lb_htons(new_word)));
}

void lb_csum_replace4(uint8_t *field, uint32_t old_n, uint32_t new_n)
{
    lb_csum_apply_raw(field, lb_csum_delta32(old_n, new_n));
}
