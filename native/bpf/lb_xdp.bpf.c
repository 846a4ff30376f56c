// SPDX-License-Identifier: GPL-2.0
/*
 * lb_xdp.bpf.c - the XDP program of lbd's AF_XDP packet source (--packet-source afxdp).
 *
 * Redirects to the AF_XDP socket of the receive queue (lb_xsks[rx_queue_index]) only the IPv4
 * packets lbd owns, and passes everything else to the kernel untouched. What lbd owns is in
 * lb_keys, kept in sync by lbd from its service table (native/src/xsk.c lb_xdp_key_set). Keys are
 * struct lb_xdp_key, network byte order, zero where a field does not take part:
 *   service           {0,   vip, 0,     vport, proto}   (vport 0: a port-0 service, any port)
 *   FULLNAT reply     {rip, lip, rport, 0,     proto}
 *   NAT reply         {rip, 0,   rport, 0,     proto}   (not to one of the director's own addresses, lb_local)
 * rport 0 in a reply key: a port-less destination (NAT/FULLNAT to the client's port under a port-zero
 * or fwmark service, lb.ipsets.nat_reply_port), whose replies come from any port of the RIP: the
 * per-protocol sets lbd-q<N>-nattcp0/natudp0, fnattcp0/fnatudp0 of the NFQUEUE source.
 * An ICMP error (unreachable, time exceeded, parameter problem) is redirected when the packet it
 * quotes, as sent or reversed, matches a key. Fragments (offset or MF) are passed: XDP sees them
 * before any reassembly (a non-first fragment has no ports); the kernel reassembles them and lbd's
 * NFQUEUE fallback takes the whole datagram (docs/afxdp.md).
 * lb_stats (per CPU): [0] redirected, [1] passed (not lbd's), [2] fragments passed,
 * [3] redirect failed (no socket on that queue: the packet is passed).
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

/* linux/icmp.h would pull in libc's socket headers: the 8 bytes an ICMP error starts with. */
struct lb_icmphdr {
    __u8 type;
    __u8 code;
    __u16 checksum;
    __u32 rest;
};
#define ICMP_DEST_UNREACH 3
#define ICMP_TIME_EXCEEDED 11
#define ICMP_PARAMETERPROB 12

struct lb_xdp_key {
    __u32 saddr;
    __u32 daddr;
    __u16 sport;
    __u16 dport;
    __u8 proto;
    __u8 pad[3];
};

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 262144);
    __type(key, struct lb_xdp_key);
    __type(value, __u8);
} lb_keys SEC(".maps");

/* The director's own addresses (lbd keeps them as it gives them to the packet core): a NAT reply key
 * does not take a packet to one of them. The director's own connections to a NAT real server
 * (health checks, ssh) have the same RIP:RPORT source as replies to clients; the NFQUEUE source's rule
 * excludes them the same way (-m addrtype ! --dst-type LOCAL). */
struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 4096);
    __type(key, __u32);
    __type(value, __u8);
} lb_local SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_XSKMAP);
    __uint(max_entries, 256);
    __type(key, __u32);
    __type(value, __u32);
} lb_xsks SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, 4);
    __type(key, __u32);
    __type(value, __u64);
} lb_stats SEC(".maps");

#define ST_REDIRECTED 0
#define ST_PASSED 1
#define ST_FRAG 2
#define ST_NO_SOCKET 3

static __always_inline void count(__u32 what)
{
    __u64 *v = bpf_map_lookup_elem(&lb_stats, &what);
    if (v)
        (*v)++;
}

/* outer_d: the destination of the packet (of an ICMP error: the outer packet's). */
static __always_inline int has(__u32 s, __u32 d, __u16 sp, __u16 dp, __u8 proto, __u32 outer_d)
{
    struct lb_xdp_key k;
    __builtin_memset(&k, 0, sizeof(k));
    k.proto = proto;
    k.daddr = d;
    k.dport = dp;
    if (bpf_map_lookup_elem(&lb_keys, &k))
        return 1;                                       /* service */
    k.dport = 0;
    if (bpf_map_lookup_elem(&lb_keys, &k))
        return 1;                                       /* port-0 service */
    k.saddr = s;
    if (bpf_map_lookup_elem(&lb_keys, &k))
        return 1;                                       /* FULLNAT reply of a port-less destination */
    k.sport = sp;
    if (bpf_map_lookup_elem(&lb_keys, &k))
        return 1;                                       /* FULLNAT reply */
    if (bpf_map_lookup_elem(&lb_local, &outer_d))
        return 0;                                       /* to the director itself: not a NAT reply */
    k.daddr = 0;
    if (bpf_map_lookup_elem(&lb_keys, &k))
        return 1;                                       /* NAT reply */
    k.sport = 0;
    return bpf_map_lookup_elem(&lb_keys, &k) != 0;      /* NAT reply of a port-less destination */
}

/* The ports of a TCP/UDP header at l4 (network order); 0 when it does not fit. */
static __always_inline int ports(void *l4, void *end, __u16 *sp, __u16 *dp)
{
    __u16 *p = l4;
    if ((void *)(p + 2) > end)
        return 0;
    *sp = p[0];
    *dp = p[1];
    return 1;
}

static __always_inline int icmp_about_ours(struct iphdr *ip, void *end)
{
    struct lb_icmphdr *ic = (void *)ip + ip->ihl * 4;
    if ((void *)(ic + 1) > end)
        return 0;
    if (ic->type != ICMP_DEST_UNREACH && ic->type != ICMP_TIME_EXCEEDED && ic->type != ICMP_PARAMETERPROB)
        return 0;
    struct iphdr *in = (void *)(ic + 1);
    if ((void *)(in + 1) > end || in->ihl < 5)
        return 0;
    if (in->protocol != IPPROTO_TCP && in->protocol != IPPROTO_UDP)
        return 0;
    __u16 sp, dp;
    if (!ports((void *)in + in->ihl * 4, end, &sp, &dp))
        return 0;
    return has(in->saddr, in->daddr, sp, dp, in->protocol, ip->daddr) ||
           has(in->daddr, in->saddr, dp, sp, in->protocol, ip->daddr);
}

SEC("xdp")
int lb_xdp(struct xdp_md *ctx)
{
    void *data = (void *)(long)ctx->data;
    void *end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = data;
    if ((void *)(eth + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP))
        goto pass;
    struct iphdr *ip = (void *)(eth + 1);
    if ((void *)(ip + 1) > end || ip->version != 4 || ip->ihl < 5)
        goto pass;
    if (ip->frag_off & bpf_htons(0x3fff)) {             /* MF or an offset */
        count(ST_FRAG);
        return XDP_PASS;
    }
    int ours = 0;
    if (ip->protocol == IPPROTO_TCP || ip->protocol == IPPROTO_UDP) {
        __u16 sp, dp;
        if (ports((void *)ip + ip->ihl * 4, end, &sp, &dp))
            ours = has(ip->saddr, ip->daddr, sp, dp, ip->protocol, ip->daddr);
    } else if (ip->protocol == IPPROTO_ICMP) {
        ours = icmp_about_ours(ip, end);
    }
    if (!ours)
        goto pass;
    /* XDP_PASS when no socket is bound to this queue: the kernel gets it rather than nobody. */
    int act = bpf_redirect_map(&lb_xsks, ctx->rx_queue_index, XDP_PASS);
    count(act == XDP_REDIRECT ? ST_REDIRECTED : ST_NO_SOCKET);
    return act;
pass:
    count(ST_PASSED);
    return XDP_PASS;
}

char _license[] SEC("license") = "GPL";
