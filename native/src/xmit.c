/*
 * xmit.c - the forwarding-method table, built from lb_xmit_list.h (lb_xmit.h describes the ops),
 * and the address and port rewrite the NAT and FULLNAT methods share.
 */
#include <string.h>

#include "lb_xmit.h"

const struct lb_xmit_ops *const lb_xmit_methods[LB_XMIT_MAX] = {
#define LB_XMIT(fwd, name) [fwd] = &lb_xmit_##name,
#include "lb_xmit_list.h"
#undef LB_XMIT
};

/* Every listed value must index the table (LB_XMIT_MAX, lb_internal.h, is its size). */
#define LB_XMIT(fwd, name) _Static_assert((fwd) >= 0 && (fwd) < LB_XMIT_MAX, "lb_xmit_list.h: " #name " out of range");
#include "lb_xmit_list.h"
#undef LB_XMIT

/* One raw 32-bit (16-bit) field at f set to v; its checksum delta. */
static uint64_t put32(uint8_t *f, uint32_t v)
{
    uint32_t old;
    memcpy(&old, f, 4);
    memcpy(f, &v, 4);
    return lb_csum_delta32(old, v);
}

static uint64_t put16(uint8_t *f, uint16_t v)
{
    uint16_t old;
    memcpy(&old, f, 2);
    memcpy(f, &v, 2);
    return lb_csum_delta16(old, v);
}

int lb_xmit_rewrite(uint8_t *o, const struct lb_pkt *p, unsigned which, uint32_t saddr, uint16_t sport,
                    uint32_t daddr, uint16_t dport)
{
    if (o[8] <= 1)
        return -1;
    /* The TTL shares its 16-bit word with the protocol. */
    uint16_t old_ttl_proto, new_ttl_proto;
    memcpy(&old_ttl_proto, o + 8, 2);
    o[8]--;
    memcpy(&new_ttl_proto, o + 8, 2);

    uint8_t *l4 = o + p->l4off;
    uint64_t addrs_delta = 0, ports_delta = 0; /* the addresses: in the IP header and the pseudo-header */
    if (which & LB_XMIT_RW_SRC) {
        addrs_delta += put32(o + 12, saddr);
        ports_delta += put16(l4, sport);
    }
    if (which & LB_XMIT_RW_DST) {
        addrs_delta += put32(o + 16, daddr);
        ports_delta += put16(l4 + 2, dport);
    }
    lb_csum_apply_raw(o + 10, addrs_delta + lb_csum_delta16(old_ttl_proto, new_ttl_proto));

    uint8_t *csum = NULL;
    if (p->proto == LB_PROTO_TCP)
        csum = l4 + 16;
    else if (p->proto == LB_PROTO_UDP && (l4[6] | l4[7]))
        csum = l4 + 6;
    if (csum) {
        lb_csum_apply_raw(csum, addrs_delta + ports_delta);
        if (p->proto == LB_PROTO_UDP && csum[0] == 0 && csum[1] == 0)
            csum[0] = csum[1] = 0xff; /* 0 means "no checksum" in UDP: send 0xffff */
    }
    return 0;
}
