/*
 * lb_siphash.h - SipHash's state, round, compression and finalisation (Aumasson & Bernstein; the
 * kernel's SIPHASH_PERMUTATION of include/linux/siphash.h), one copy for its two users:
 *  - synproxy.c: SipHash-2-4 of the SYN cookies (lb_siphash);
 *  - sched_mh.c: the kernel's hsiphash() on x86_64, SipHash-1-3 truncated to 32 bits.
 * Static inline, the round counts constants at every call site: each use compiles to the unrolled
 * rounds on four registers, as the macros each file carried before.
 *
 * Use: lb_sip_init with the 128-bit key, lb_sip_compress for each 8-byte message word (the last
 * one holding the tail bytes and the length in its top byte), lb_sip_final for the 64-bit hash.
 */
#ifndef LB_SIPHASH_H
#define LB_SIPHASH_H

#include <stdint.h>

struct lb_sip {
    uint64_t v0, v1, v2, v3;
};

static inline uint64_t lb_sip_rotl(uint64_t x, int b)
{
    return (x << b) | (x >> (64 - b));
}

static inline void lb_sip_init(struct lb_sip *s, uint64_t k0, uint64_t k1)
{
    s->v0 = 0x736f6d6570736575ull ^ k0; /* "somepseudorandomlygeneratedbytes" */
    s->v1 = 0x646f72616e646f6dull ^ k1;
    s->v2 = 0x6c7967656e657261ull ^ k0;
    s->v3 = 0x7465646279746573ull ^ k1;
}

/* n SipRounds. */
static inline void lb_sip_rounds(struct lb_sip *s, int n)
{
    uint64_t v0 = s->v0, v1 = s->v1, v2 = s->v2, v3 = s->v3;
    for (int i = 0; i < n; i++) {
        v0 += v1;
        v1 = lb_sip_rotl(v1, 13);
        v1 ^= v0;
        v0 = lb_sip_rotl(v0, 32);
        v2 += v3;
        v3 = lb_sip_rotl(v3, 16);
        v3 ^= v2;
        v0 += v3;
        v3 = lb_sip_rotl(v3, 21);
        v3 ^= v0;
        v2 += v1;
        v1 = lb_sip_rotl(v1, 17);
        v1 ^= v2;
        v2 = lb_sip_rotl(v2, 32);
    }
    s->v0 = v0;
    s->v1 = v1;
    s->v2 = v2;
    s->v3 = v3;
}

/* One message word m (its 8 bytes little-endian) with c_rounds SipRounds: SipHash-c-d's c. */
static inline void lb_sip_compress(struct lb_sip *s, uint64_t m, int c_rounds)
{
    s->v3 ^= m;
    lb_sip_rounds(s, c_rounds);
    s->v0 ^= m;
}

/* The finalisation with d_rounds SipRounds: SipHash-c-d's d; the 64-bit hash. */
static inline uint64_t lb_sip_final(struct lb_sip *s, int d_rounds)
{
    s->v2 ^= 0xff;
    lb_sip_rounds(s, d_rounds);
    return s->v0 ^ s->v1 ^ s->v2 ^ s->v3;
}

#endif /* LB_SIPHASH_H */
