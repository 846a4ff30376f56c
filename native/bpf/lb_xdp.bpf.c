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
 * [3] redirect failed (no socket on that queue: the packet is passed), [4] fast-pathed,
 * [5] activity reports lost (ring buffer full), [6] shed (lb_xdp_shed, below).
 *
 * The fast path (lbd --xdp-fastpath, lb_fastpath set before loading; docs/afxdp.md): an established
 * direct-routing TCP flow that lbd's core installed in lb_flows (client 5-tuple as it arrives ->
 * destination slot and generation) is forwarded here, as lb_process would forward it: TTL
 * decremented, checksum updated, the destination's Ethernet header, out of XDP_TX (same interface) or
 * bpf_redirect. Only a packet the core would treat exactly so qualifies: IPv4 without options, not a
 * fragment, a right header checksum, TTL > 1, not over the destination's MTU, TCP with ACK and none
 * of SYN, FIN, RST, and a destination slot that is up with the flow's generation (lbd bumps the
 * generation whenever the destination's forwarding state changes or it is removed). Anything else
 * takes the path above, to lbd. The flow's packets, bytes and last-seen time are counted in its
 * value; at most once a second per active flow a record in lb_reports carries them to lbd, which
 * credits them from it (native/src/xsk_fp.c).
 *
 * The overload guard's shedding (lbd --overload-xdp, with the NFQUEUE packet source; lb/xdpshed.py):
 * the second program, lb_xdp_shed, redirects nothing. While lbd's overload guard is armed it drops
 * the packets lbd owns (the same keys) above the guard's rate, by a token bucket in lb_shed (one
 * entry, shared by every interface's program: the rate is lbd's, not an interface's), and passes
 * everything else to the kernel's stack, where lbd's steering queues it. This is where a NIC's
 * driver sees the packet first: a shed packet costs neither an skb's receive path nor a hook nor
 * the queue (issue 15 item 5). Disarmed (rate 0), a packet costs one array lookup.
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
    __uint(max_entries, 7);
    __type(key, __u32);
    __type(value, __u64);
} lb_stats SEC(".maps");

#define ST_REDIRECTED 0
#define ST_PASSED 1
#define ST_FRAG 2
#define ST_NO_SOCKET 3
#define ST_FASTPATH 4
#define ST_REPORT_LOST 5
#define ST_SHED 6

/* The shedding bucket (lb_xdp_shed), as GCRA: a packet conforms while the theoretical arrival time
 * `tat` is at most `tolerance_ns` ahead of now; a conforming packet moves it `interval_ns` on (1e9 /
 * the rate). lbd writes interval and tolerance (BPF_F_LOCK, tat reset); interval 0: not armed. */
struct lb_shed {
    struct bpf_spin_lock lock;
    __u32 pad;
    __u64 interval_ns;
    __u64 tolerance_ns;                 /* (burst - 1) intervals */
    __u64 tat;
};

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, struct lb_shed);
} lb_shed SEC(".maps");

/* ---- the fast path (all three maps stay empty without --xdp-fastpath) ---- */
#define FP_TOT_MAX 16383 /* longer IP packets take lbd's path */
const volatile __u32 lb_fastpath = 0; /* set by lbd before loading (.rodata): 0 = no lookup at all */
/* Written by lbd (.bss) while it runs: 1 while it may have a flow installed in lb_flows, 0 when it has
 * none (set before its first install, cleared within a second of its last removal). With none, a
 * packet is spared the lookup: a miss in a table of --conn-max buckets, i.e. a cache and TLB miss
 * per packet for all the traffic the fast path never takes (FULLNAT, NAT, IPIP, UDP to a director
 * without established DR flows; bench/results/2026-12-05-fastpath-fnat.md). */
volatile __u32 lb_fp_flows_on = 0;

struct lb_fp_dest {                     /* lb_fdest[slot], written by lbd only */
    __u8 l2[12];                        /* destination MAC, source MAC */
    __u32 ifindex;                      /* egress interface */
    __u32 gen;                          /* generation: a flow of another one goes to lbd */
    __u16 mtu;                          /* the path MTU the core forwards up to */
    __u8 up;                            /* 1: forwarding state resolved, destination in its service */
    __u8 pad;
};

struct lb_fp_flow {                     /* lb_flows value: lbd writes it whole (zeroed counters) */
    __u32 dest_slot;
    __u32 gen;
    __u32 conn_slot;                    /* the core's entry (lbd checks it against the key) */
    __u32 inst;                         /* lbd's install number, copied into the flow's records */
    __u64 packets;                      /* since the install, atomic adds */
    __u64 bytes;                        /* IP bytes, as the core counts inbytes */
    __u64 last_seen_ns;                 /* bpf_ktime_get_ns (CLOCK_MONOTONIC) */
    __u64 last_report_ns;
};

struct lb_fp_report {                   /* lb_reports record: "this flow is active, credit it" */
    struct lb_xdp_key key;
    __u32 conn_slot;
    __u32 inst;
    __u64 packets;                      /* the flow's counters as this record was queued: lbd credits */
    __u64 bytes;                        /* them without reading lb_flows */
    __u64 last_seen_ns;
};

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 65536);
    __type(key, __u32);
    __type(value, struct lb_fp_dest);
} lb_fdest SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(map_flags, BPF_F_NO_PREALLOC);
    __uint(max_entries, 1);             /* lbd sets --conn-max before loading */
    __type(key, struct lb_xdp_key);
    __type(value, struct lb_fp_flow);
} lb_flows SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_RINGBUF);
    __uint(max_entries, 4096);          /* lbd sizes it before loading */
} lb_reports SEC(".maps");

#define FP_REPORT_NS 1000000000ull

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

/* The IPv4 header of an Ethernet frame, its Ethernet header in *eth and the frame's end in *end;
 * NULL when it is not IPv4 or is cut short. */
static __always_inline struct iphdr *ipv4_of(struct xdp_md *ctx, struct ethhdr **eth, void **end)
{
    *end = (void *)(long)ctx->data_end;
    *eth = (void *)(long)ctx->data;
    if ((void *)(*eth + 1) > *end || (*eth)->h_proto != bpf_htons(ETH_P_IP))
        return NULL;
    struct iphdr *ip = (void *)(*eth + 1);
    if ((void *)(ip + 1) > *end || ip->version != 4 || ip->ihl < 5)
        return NULL;
    return ip;
}

/* A whole (not fragmented) IPv4 packet lbd owns: a key's, or an ICMP error about one. */
static __always_inline int owned(struct iphdr *ip, void *end)
{
    if (ip->protocol == IPPROTO_TCP || ip->protocol == IPPROTO_UDP) {
        __u16 sp, dp;
        if (!ports((void *)ip + ip->ihl * 4, end, &sp, &dp))
            return 0;
        return has(ip->saddr, ip->daddr, sp, dp, ip->protocol, ip->daddr);
    }
    if (ip->protocol == IPPROTO_ICMP)
        return icmp_about_ours(ip, end);
    return 0;
}

/* An established flow's packet forwarded here (XDP_TX or XDP_REDIRECT), or -1: lbd's path. */
static __always_inline int fast_path(struct xdp_md *ctx, struct ethhdr *eth, struct iphdr *ip, void *end)
{
    if (ip->ihl != 5 || ip->protocol != IPPROTO_TCP || ip->ttl <= 1)
        return -1;
    __u8 *th = (__u8 *)(ip + 1);
    if ((void *)(th + 20) > end)
        return -1;
    __u8 flags = th[13];
    if ((flags & 0x17) != 0x10)                         /* ACK, and none of FIN, SYN, RST */
        return -1;
    __u32 tot = bpf_ntohs(ip->tot_len);
    /* An explicit upper bound: older verifiers (Debian 12's 6.1) know nothing of a byte-swapped value
     * and refuse to add it to a packet pointer ("unbounded min value"); a jumbo frame's 9,000 fits. */
    if (tot > FP_TOT_MAX)
        return -1;
    __u32 doff = (__u32)(th[12] >> 4) * 4;
    if (tot < 40 || doff < 20 || doff > tot - 20 || (void *)ip + tot > end)
        return -1;
    struct lb_xdp_key k;
    __builtin_memset(&k, 0, sizeof(k));
    k.saddr = ip->saddr;
    k.daddr = ip->daddr;
    k.sport = ((__u16 *)th)[0];
    k.dport = ((__u16 *)th)[1];
    k.proto = IPPROTO_TCP;
    struct lb_fp_flow *f = bpf_map_lookup_elem(&lb_flows, &k);
    if (!f)
        return -1;
    __u16 *w = (__u16 *)ip;                             /* the header checksum, as ip_rcv checks it */
    __u32 sum = 0;
#pragma unroll
    for (int i = 0; i < 10; i++)
        sum += w[i];
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    if (sum != 0xffff)
        return -1;                                      /* lbd drops it (bad_csum) */
    __u32 slot = f->dest_slot;
    struct lb_fp_dest *d = bpf_map_lookup_elem(&lb_fdest, &slot);
    if (!d || !d->up || d->gen != f->gen || tot > d->mtu || !d->ifindex)
        return -1;
    /* decrement_ttl, RFC 1624 (as LB_IP_TTL_DEC): the TTL is the high byte of its 16-bit word */
    __u32 c = (__u32)ip->check + bpf_htons(0x0100);
    ip->check = (__u16)(c + (c >= 0xffff));
    ip->ttl--;
    __builtin_memcpy(eth->h_dest, d->l2, 6);
    __builtin_memcpy(eth->h_source, d->l2 + 6, 6);
    __u64 now = bpf_ktime_get_ns();
    __sync_fetch_and_add(&f->packets, 1);
    __sync_fetch_and_add(&f->bytes, tot);
    f->last_seen_ns = now;
    if (now - f->last_report_ns >= FP_REPORT_NS) {
        struct lb_fp_report *r = bpf_ringbuf_reserve(&lb_reports, sizeof(*r), 0);
        if (r) {
            f->last_report_ns = now;
            r->key = k;
            r->conn_slot = f->conn_slot;
            r->inst = f->inst;
            r->packets = f->packets;
            r->bytes = f->bytes;
            r->last_seen_ns = now;
            bpf_ringbuf_submit(r, BPF_RB_NO_WAKEUP); /* lbd reads the ring on its own clock */
        } else {
            count(ST_REPORT_LOST);
        }
    }
    count(ST_FASTPATH);
    if (d->ifindex == ctx->ingress_ifindex)
        return XDP_TX;
    return bpf_redirect(d->ifindex, 0);
}

SEC("xdp")
int lb_xdp(struct xdp_md *ctx)
{
    void *end;
    struct ethhdr *eth;
    struct iphdr *ip = ipv4_of(ctx, &eth, &end);
    if (!ip)
        goto pass;
    if (lb_fastpath && lb_fp_flows_on && !(ip->frag_off & bpf_htons(0x3fff))) {
        int fp = fast_path(ctx, eth, ip, end);
        if (fp >= 0)
            return fp;
    }
    if (ip->frag_off & bpf_htons(0x3fff)) {             /* MF or an offset */
        count(ST_FRAG);
        return XDP_PASS;
    }
    if (!owned(ip, end))
        goto pass;
    /* XDP_PASS when no socket is bound to this queue: the kernel gets it rather than nobody. */
    int act = bpf_redirect_map(&lb_xsks, ctx->rx_queue_index, XDP_PASS);
    count(act == XDP_REDIRECT ? ST_REDIRECTED : ST_NO_SOCKET);
    return act;
pass:
    count(ST_PASSED);
    return XDP_PASS;
}

SEC("xdp")
int lb_xdp_shed(struct xdp_md *ctx)
{
    __u32 zero = 0;
    struct lb_shed *b = bpf_map_lookup_elem(&lb_shed, &zero);
    if (!b || !b->interval_ns)                          /* not armed: nothing parsed, nothing counted */
        return XDP_PASS;
    void *end;
    struct ethhdr *eth;
    struct iphdr *ip = ipv4_of(ctx, &eth, &end);
    if (!ip || (ip->frag_off & bpf_htons(0x3fff)) || !owned(ip, end))
        return XDP_PASS;                                /* fragments: the kernel reassembles, lbd's steering queues */
    __u64 now = bpf_ktime_get_ns();
    int conform;
    bpf_spin_lock(&b->lock);
    __u64 tat = b->tat > now ? b->tat : now;
    /* interval 0: disarmed since the read above, and a disarmed guard drops nothing */
    conform = !b->interval_ns || tat - now <= b->tolerance_ns;
    if (conform)
        b->tat = tat + b->interval_ns;
    bpf_spin_unlock(&b->lock);
    if (conform)
        return XDP_PASS;
    count(ST_SHED);
    return XDP_DROP;
}

char _license[] SEC("license") = "GPL";
