// SPDX-License-Identifier: GPL-2.0
/*
 * xdp_fwd.bpf.c - a bench-only reference: what XDP-side forwarding of DR traffic would cost
 * (bench/xdp_fwd.py). Every untagged IPv4 TCP frame to port 80 gets the real server's MAC as
 * destination and the director's back interface MAC as source and is redirected to that interface
 * (bpf_redirect), in the same softirq that received it; anything else is passed. No connection
 * table, no scheduling: the floor under an lbd whose program forwarded established DR flows itself
 * (Katran's approach), not a load balancer. The addresses come in as -D macros at build time.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#ifndef FWD_IFINDEX
#error "build with -DFWD_IFINDEX=<back ifindex> -DFWD_DST=<6 bytes> -DFWD_SRC=<6 bytes>"
#endif

struct tcp_ports {
    __u16 sport;
    __u16 dport;
};

SEC("xdp")
int xdp_fwd(struct xdp_md *ctx)
{
    void *data = (void *)(long)ctx->data;
    void *end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = data;
    if ((void *)(eth + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP))
        return XDP_PASS;
    struct iphdr *ip = (void *)(eth + 1);
    if ((void *)(ip + 1) > end || ip->ihl != 5 || ip->protocol != IPPROTO_TCP)
        return XDP_PASS;
    struct tcp_ports *p = (void *)(ip + 1);
    if ((void *)(p + 1) > end || p->dport != bpf_htons(80))
        return XDP_PASS;
    const unsigned char dst[ETH_ALEN] = {FWD_DST};
    const unsigned char src[ETH_ALEN] = {FWD_SRC};
    __builtin_memcpy(eth->h_dest, dst, ETH_ALEN);
    __builtin_memcpy(eth->h_source, src, ETH_ALEN);
    return bpf_redirect(FWD_IFINDEX, 0);
}

char _license[] SEC("license") = "GPL";
