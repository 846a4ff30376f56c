/*
 * frag.c - IPv4 fragmentation of what leaves towards real servers, as the kernel's ip_fragment.
 *
 * Reassembly is not here: lbd's rules turn on the kernel's own (nf_defrag_ipv4, the same
 * ip_defrag kernel IPVS relies on, with its memory cap, timeout and overlap rules), so the queue
 * carries whole datagrams (docs/fastpath.md "Fragments"). What the core decides to send may
 * then be larger than the destination's path MTU: a packet with DF clear leaves as fragments
 * (lb_action.frag_mtu), cut here by the adapter; one with DF set was answered with ICMP
 * fragmentation needed by the core instead. Pure function on bytes: no state, no I/O.
 */
#include <string.h>

#include "lb_internal.h"

#define IP_DF 0x4000u
#define IP_MF 0x2000u
#define IP_OFFMASK 0x1fffu
#define IPOPT_COPIED 0x80u

/* ip_options_fragment: in the header copy of a later fragment, the options without the copied
 * flag become NOPs (the header keeps its length). Stops at EOL or at a malformed length. */
static void options_fragment(uint8_t *hdr, uint32_t ihl)
{
    uint32_t i = 20;
    while (i < ihl) {
        uint8_t kind = hdr[i];
        if (kind == 0)
            return;
        if (kind == 1) {
            i++;
            continue;
        }
        if (i + 1 >= ihl)
            return;
        uint32_t olen = hdr[i + 1];
        if (olen < 2 || olen > ihl - i)
            return;
        if (!(kind & IPOPT_COPIED))
            memset(hdr + i, 1, olen);
        i += olen;
    }
}

int lb_ip_fragment(const uint8_t *pkt, uint32_t len, uint32_t mtu, uint8_t *out, uint32_t out_cap,
                   uint32_t *frag_len, uint32_t max_frags)
{
    if (!pkt || !out || !frag_len || len < 20 || (pkt[0] >> 4) != 4)
        return LB_EINVAL;
    uint32_t ihl = (uint32_t)(pkt[0] & 0x0f) * 4;
    uint32_t tot = lb_get16(pkt + 2);
    if (ihl < 20 || tot < ihl || tot > len)
        return LB_EINVAL;
    if (tot <= mtu) {
        if (max_frags < 1 || out_cap < tot)
            return LB_ENOSPC;
        memcpy(out, pkt, tot);
        frag_len[0] = tot;
        return 1;
    }
    uint32_t fw = lb_get16(pkt + 6);
    if ((fw & IP_DF) || mtu < ihl + 8)
        return LB_EINVAL;
    uint32_t unit = (mtu - ihl) & ~7u;       /* payload bytes per fragment but the last */
    uint32_t data = tot - ihl;
    uint32_t base = (fw & IP_OFFMASK) * 8;   /* the packet may itself be a fragment */
    if (base + data > 0xffff)
        return LB_EINVAL;
    uint32_t n = (data + unit - 1) / unit;
    if (n > max_frags)
        return LB_ENOSPC;
    if ((uint64_t)tot + (uint64_t)(n - 1) * ihl > out_cap)
        return LB_ENOSPC;
    uint8_t *o = out;
    for (uint32_t i = 0; i < n; i++) {
        uint32_t off = i * unit;
        uint32_t chunk = data - off < unit ? data - off : unit;
        memcpy(o, pkt, ihl);
        if (i > 0)
            options_fragment(o, ihl);
        memcpy(o + ihl, pkt + ihl + off, chunk);
        uint32_t last = i + 1 == n;
        uint16_t word = (uint16_t)((fw & ~(IP_OFFMASK | IP_MF)) | ((base + off) / 8) |
                                   (!last || (fw & IP_MF) ? IP_MF : 0));
        lb_put16(o + 2, (uint16_t)(ihl + chunk));
        lb_put16(o + 6, word);
        o[10] = 0;
        o[11] = 0;
        lb_put16(o + 10, lb_ip_csum(o, ihl));
        frag_len[i] = ihl + chunk;
        o += ihl + chunk;
    }
    return (int)n;
}
