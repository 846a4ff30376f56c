/*
 * natrx.c - NAT replies taken at ingress (lbd --nat-replies ingress, docs/firewall.md): the packet
 * source for what lbd's netdev ingress chain on the real servers' interfaces forwards to its veth
 * pair (lb/natingress.py), around the same lb_process_pkt() as the NFQUEUE adapter (nfq.c).
 *
 * Why: a NAT reply (real server -> client) is routed by the director, and the only netfilter hook
 * that can queue a routed packet is forward; any rule there costs every routed packet ~8 % on the
 * testbed (bench/results/2026-12-06-routed-forward-hook-split.md). A netdev ingress chain is bound to
 * the interfaces it names: on the real servers' side it moves NAT replies (`fwd to`) to one end of a
 * veth pair lbd owns, and traffic arriving on every other interface meets no hook of lbd's at all.
 *
 * The socket: AF_PACKET, SOCK_RAW (PACKET_VNET_HDR needs it: the Ethernet header `fwd` pushed back
 * comes with each packet and is skipped), ETH_P_ALL (the peer's
 * protocol handlers come after its ingress hook, whose chain drops everything: only ETH_P_ALL taps
 * see a packet before that), bound to the veth peer, in a fanout group of its own with
 * PACKET_FANOUT_FLAG_DEFRAG: the kernel reassembles fragmented replies before they are queued here
 * (ip_check_defrag, under net.ipv4.ipfrag_* limits), as nf_defrag does for the NFQUEUE path.
 * PACKET_VNET_HDR says what a virtio-net header says of each packet: a partial checksum is
 * completed (lb_csum_complete), a GSO super-packet (GRO on the real servers' interface) is cut into
 * segments of its gso_size (lb_tcp_segment), as nfq.c does with NFQA_CFG_F_GSO.
 *
 * What lb_process_pkt decides:
 *   LB_V_ANSWER: a NAT reply of a connection, translated (its TTL decremented by the core, as for
 *     the NFQUEUE path), or an answer of lbd's (ICMP time exceeded): sent on the raw socket, as nfq.c.
 *   LB_V_ACCEPT / LB_V_MANGLE: not lbd's after all (the real server's own traffic from a NAT port, an
 *     ICMP message of no connection): forwarded as the kernel would have:
 *     its TTL decremented (a packet with TTL <= 1 is dropped and counted, no ICMP), sent on a raw
 *     IPPROTO_RAW socket (the kernel routes it; SO_MARK so lbd's raw OUTPUT chain leaves it
 *     untracked). A packet larger than the way out (EMSGSIZE: raw sockets never fragment) leaves
 *     as fragments of the MTU the kernel reported (lb_ip_fragment).
 *   LB_V_XMIT_L2: link header + packet on an AF_PACKET socket to the action's interface (as
 *     fragments of frag_mtu when it says so).
 *   LB_V_DROP: nothing.
 * Who reads: the NFQUEUE queue's thread named in lb_natrx_opts.host polls the socket beside its
 * queue (lb_nfq_host), so both directions of a NAT connection are processed by one thread: with a
 * thread of its own (no host) each connection's packets alternated between two threads on the
 * director's CPU, and new NAT connections were ~16 % slower than with the forward chain
 * (bench/results/2026-12-06-nat-ingress.md). Its own thread never runs the timers or the expiry.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <endian.h>
#include <errno.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <linux/virtio_net.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "lb_adapter.h"

#define NATRX_BATCH 16
#define NATRX_BUF (sizeof(struct virtio_net_hdr) + LB_L2HDR_LEN + LB_PKT_MAX)
#define NATRX_RCVBUF_BYTES (8 * 1024 * 1024)
#define NATRX_SNDBUF_BYTES (4 * 1024 * 1024)
#define NATRX_SEG_MAX 64                   /* segments per GSO packet: 64 KiB at an MSS of 1,024 and more */
#define NATRX_SEG_MIN_MTU 576
#define NATRX_FRAG_MAX 128                 /* fragments per packet: 65,535 bytes at MTU 576 need 119 */
#define NATRX_FRAG_BUF (LB_PKT_MAX + NATRX_FRAG_MAX * 60)

struct lb_natrx {
    lb_t *lb;
    int rx_fd;                             /* AF_PACKET SOCK_RAW ETH_P_ALL on the veth peer, fanout + defrag */
    int raw_fd;                            /* AF_INET raw IPPROTO_RAW, send only */
    int pkt_fd;                            /* AF_PACKET SOCK_RAW, send only (LB_V_XMIT_L2) */
    uint8_t *rx;                           /* NATRX_BATCH * NATRX_BUF: virtio-net header, Ethernet header, IP packet */
    uint8_t *out;                          /* LB_PKT_MAX: lb_process_pkt's output */
    uint8_t *seg;                          /* NATRX_SEG_MAX slots of seg_slot bytes: a GSO packet's segments */
    uint32_t seg_slot;
    uint32_t seg_len[NATRX_SEG_MAX];
    uint8_t *frag;                         /* NATRX_FRAG_BUF */
    uint32_t frag_len[NATRX_FRAG_MAX];
    lb_nfq_t *host;                        /* the queue whose thread reads the socket; NULL: our own thread */
    int hosted;                            /* attached to host (lb_nfq_host) */
    int gone;                              /* the pair was removed (lbd's teardown, or someone): nothing to read */
    pthread_t thread;
    int thread_started;
    int stop;
    struct lb_adapter_wait wait;           /* its eventfd: the stop path writes it */
    struct lb_natrx_stats stats;
    uint64_t kernel_drops;                 /* PACKET_STATISTICS' tp_drops, summed (each read resets them) */
};

/* One frame, the action's link header then the IP packet, on the AF_PACKET socket fd. */
static int send_frame(int fd, const struct lb_action *a, const uint8_t *ip, uint32_t len)
{
    struct sockaddr_ll sll;
    memset(&sll, 0, sizeof(sll));
    sll.sll_family = AF_PACKET;
    sll.sll_ifindex = a->ifindex;
    sll.sll_protocol = htons(ETH_P_IP);
    struct iovec v[2] = {{.iov_base = (void *)a->l2hdr, .iov_len = LB_L2HDR_LEN},
                         {.iov_base = (void *)ip, .iov_len = len}};
    struct msghdr mh = {.msg_name = &sll, .msg_namelen = sizeof(sll), .msg_iov = v, .msg_iovlen = 2};
    return sendmsg(fd, &mh, MSG_DONTWAIT) < 0 ? -errno : 0;
}

/* ip[0..len) as fragments of at most mtu bytes: frames on fd when a is given (LB_V_XMIT_L2), else
 * packets on the raw socket fd. 0 when every fragment left, else the first error. */
static int send_fragments(struct lb_natrx *q, const uint8_t *ip, uint32_t len, uint32_t mtu, int fd,
                          const struct lb_action *a)
{
    int k = lb_ip_fragment(ip, len, mtu, q->frag, NATRX_FRAG_BUF, q->frag_len, NATRX_FRAG_MAX);
    if (k < 1)
        return -EINVAL;
    const uint8_t *f = q->frag;
    for (int j = 0; j < k; j++) {
        int r = a ? send_frame(fd, a, f, q->frag_len[j]) : lb_adapter_send_raw(fd, f, q->frag_len[j]);
        if (r < 0)
            return r;
        f += q->frag_len[j];
    }
    q->stats.frag_packets++;
    q->stats.frag_out += (uint64_t)k;
    return 0;
}

/* On the raw socket; a packet the kernel refuses as too big (DF clear) leaves as fragments. */
static int send_raw(struct lb_natrx *q, const uint8_t *ip, uint32_t len)
{
    int r = lb_adapter_send_raw(q->raw_fd, ip, len);
    if (r == -EMSGSIZE) {
        uint32_t mtu = lb_adapter_refused_mtu(q->raw_fd);
        if (mtu)
            r = send_fragments(q, ip, len, mtu, q->raw_fd, NULL);
    }
    return r;
}

static int send_l2(struct lb_natrx *q, const struct lb_action *a, const uint8_t *ip, uint32_t len)
{
    if (a->frag_mtu && len > a->frag_mtu)
        return send_fragments(q, ip, len, a->frag_mtu, q->pkt_fd, a);
    return send_frame(q->pkt_fd, a, ip, len);
}

/* Forwarded as the kernel's ip_forward would: TTL decremented, TTL <= 1 dropped (counted, no
 * ICMP). The header checksum is the raw socket's to write (raw_send_hdrinc computes it for every
 * IP_HDRINCL packet; lb_ip_fragment for fragments). res is q->out or the receive buffer: both
 * writable here. */
static void forward(struct lb_natrx *q, uint8_t *res, uint32_t len)
{
    if (len < 20 || res[8] <= 1) {
        q->stats.ttl_expired++;
        return;
    }
    res[8]--;
    if (send_raw(q, res, len) < 0)
        q->stats.pass_err++;
    else
        q->stats.passed++;
}

/* One IP packet (or GSO segment) pkt[0..len), writable. */
static void process_one(struct lb_natrx *q, uint8_t *pkt, uint32_t len)
{
    struct lb_action a;
    memset(&a, 0, sizeof(a));
    pthread_mutex_lock(&q->lb->lock);
    lb_process_pkt(q->lb, pkt, len, 0, 0, lb_adapter_now_ms(), q->out, LB_PKT_MAX, &a);
    pthread_mutex_unlock(&q->lb->lock);
    uint8_t *res = a.out_len ? q->out : pkt;
    uint32_t res_len = a.out_len ? a.out_len : len;
    int r;
    switch (a.verdict) {
    case LB_V_ACCEPT:
    case LB_V_MANGLE:
        forward(q, res, res_len);
        break;
    case LB_V_ANSWER: /* a NAT reply translated, or lbd's own answer */
        if (send_raw(q, q->out, a.out_len) < 0) {
            q->stats.answer_err++;
            lb_count_xmit_failed(q->lb, a.reason);
        } else {
            q->stats.answers++;
        }
        break;
    case LB_V_XMIT_L2:
        r = send_l2(q, &a, res, res_len);
        if (r < 0) {
            q->stats.xmit_l2_err++;
            lb_count_xmit_failed(q->lb, a.reason);
        } else {
            q->stats.xmit_l2++;
        }
        break;
    default:
        break;
    }
}

/* A GSO super-packet: its segments, each processed as a packet. */
static void process_gso(struct lb_natrx *q, uint8_t *pkt, uint32_t len, const struct virtio_net_hdr *vh)
{
    q->stats.gso_packets++;
    uint8_t kind = vh->gso_type & (uint8_t)~VIRTIO_NET_HDR_GSO_ECN;
    uint32_t ihl = len >= 20 ? (uint32_t)(pkt[0] & 0x0f) * 4 : 0;
    uint32_t thl = ihl && len >= ihl + 20 ? (uint32_t)(pkt[ihl + 12] >> 4) * 4 : 0;
    uint32_t mss = le16toh(vh->gso_size);
    uint32_t mtu = ihl + thl + mss;
    if (kind != VIRTIO_NET_HDR_GSO_TCPV4 || !thl || mss == 0 || mtu < NATRX_SEG_MIN_MTU) {
        q->stats.gso_errors++;
        return;
    }
    int k = lb_tcp_segment(pkt, len, mtu, q->seg, q->seg_slot, q->seg_len, NATRX_SEG_MAX);
    if (k < 1) {
        q->stats.gso_errors++;
        return;
    }
    q->stats.gso_segments += (uint64_t)k;
    for (int i = 0; i < k; i++)
        process_one(q, q->seg + (size_t)i * q->seg_slot, q->seg_len[i]);
}

static void process_rx(struct lb_natrx *q)
{
    struct mmsghdr msgs[NATRX_BATCH];
    struct iovec iov[NATRX_BATCH];
    struct sockaddr_ll from[NATRX_BATCH];
    memset(msgs, 0, sizeof(msgs));
    for (int i = 0; i < NATRX_BATCH; i++) {
        iov[i].iov_base = q->rx + (size_t)i * NATRX_BUF;
        iov[i].iov_len = NATRX_BUF;
        msgs[i].msg_hdr.msg_iov = &iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
        msgs[i].msg_hdr.msg_name = &from[i];
        msgs[i].msg_hdr.msg_namelen = sizeof(from[i]);
    }
    int n = recvmmsg(q->rx_fd, msgs, NATRX_BATCH, MSG_DONTWAIT, NULL);
    if (n <= 0)
        return;
    q->stats.batches++;
    for (int i = 0; i < n; i++) {
        uint8_t *buf = q->rx + (size_t)i * NATRX_BUF;
        uint32_t got = msgs[i].msg_len;
        struct virtio_net_hdr vh;
        /* Only IPv4 packets the chain forwarded: the peer's own traffic (IPv6 neighbour discovery
         * of the pair, whatever) is outgoing or of another protocol. */
        if (from[i].sll_pkttype == PACKET_OUTGOING || from[i].sll_protocol != htons(ETH_P_IP)) {
            q->stats.not_ipv4++;
            continue;
        }
        if (got < sizeof(vh) + LB_L2HDR_LEN + 20 || (msgs[i].msg_hdr.msg_flags & MSG_TRUNC) ||
            buf[sizeof(vh) + 12] != 0x08 || buf[sizeof(vh) + 13] != 0x00) {
            q->stats.bad_packets++;
            continue;
        }
        memcpy(&vh, buf, sizeof(vh));
        uint8_t *pkt = buf + sizeof(vh) + LB_L2HDR_LEN;
        uint32_t len = got - (uint32_t)sizeof(vh) - LB_L2HDR_LEN;
        q->stats.packets++;
        if (vh.gso_type != VIRTIO_NET_HDR_GSO_NONE) {
            process_gso(q, pkt, len, &vh); /* lb_tcp_segment computes every checksum in full */
            continue;
        }
        if ((vh.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM) && lb_csum_complete(pkt, len) == LB_OK)
            q->stats.csum_completed++;
        process_one(q, pkt, len);
    }
}

int lb_natrx_fd(const struct lb_natrx *q)
{
    return q->gone ? -1 : q->rx_fd;
}

void lb_natrx_ready(struct lb_natrx *q, short rev)
{
    if (rev & POLLIN)
        process_rx(q);
    if (rev & (POLLERR | POLLHUP | POLLNVAL)) {
        int soerr = 0;
        socklen_t sl = sizeof(soerr);
        getsockopt(q->rx_fd, SOL_SOCKET, SO_ERROR, &soerr, &sl); /* reading it clears it */
        q->stats.socket_errors++;
        if (soerr == ENETDOWN || soerr == ENODEV || (rev & POLLNVAL))
            q->gone = 1; /* wait for the stop only */
    }
}

static void *natrx_thread(void *arg)
{
    struct lb_natrx *q = arg;
    while (!__atomic_load_n(&q->stop, __ATOMIC_ACQUIRE)) {
        short rev = lb_adapter_poll(&q->wait, lb_natrx_fd(q), POLLIN, -1);
        lb_natrx_ready(q, rev);
    }
    return NULL;
}

static void natrx_free(struct lb_natrx *q)
{
    if (!q)
        return;
    if (q->rx_fd >= 0)
        close(q->rx_fd);
    if (q->raw_fd >= 0)
        close(q->raw_fd);
    if (q->pkt_fd >= 0)
        close(q->pkt_fd);
    lb_adapter_wait_close(&q->wait, q->lb);
    free(q->rx);
    free(q->out);
    free(q->seg);
    free(q->frag);
    free(q);
}

static int natrx_open(struct lb_natrx *q, const struct lb_natrx_opts *o)
{
    q->rx_fd = socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, htons(ETH_P_ALL));
    q->raw_fd = socket(AF_INET, SOCK_RAW | SOCK_CLOEXEC, IPPROTO_RAW);
    q->pkt_fd = socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, 0);
    if (q->rx_fd < 0 || q->raw_fd < 0 || q->pkt_fd < 0)
        return -errno;
    int one = 1;
    if (setsockopt(q->rx_fd, SOL_PACKET, PACKET_VNET_HDR, &one, sizeof(one)) < 0)
        return -errno;
    int rcvbuf = NATRX_RCVBUF_BYTES;
    if (setsockopt(q->rx_fd, SOL_SOCKET, SO_RCVBUFFORCE, &rcvbuf, sizeof(rcvbuf)) < 0)
        setsockopt(q->rx_fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));
    struct sockaddr_ll sll;
    memset(&sll, 0, sizeof(sll));
    sll.sll_family = AF_PACKET;
    sll.sll_protocol = htons(ETH_P_ALL);
    sll.sll_ifindex = (int)o->ifindex;
    if (bind(q->rx_fd, (struct sockaddr *)&sll, sizeof(sll)) < 0)
        return -errno;
    /* A fanout group of this socket alone, for its defragmentation (the id is the kernel's pick). */
    uint32_t fanout = (uint32_t)(PACKET_FANOUT_HASH | PACKET_FANOUT_FLAG_DEFRAG | PACKET_FANOUT_FLAG_UNIQUEID) << 16;
    if (setsockopt(q->rx_fd, SOL_PACKET, PACKET_FANOUT, &fanout, sizeof(fanout)) < 0)
        return -errno;
    lb_adapter_sndbuf(q->raw_fd, NATRX_SNDBUF_BYTES);
    lb_adapter_sndbuf(q->pkt_fd, NATRX_SNDBUF_BYTES);
    if (o->flags & LB_NATRX_F_QDISC_BYPASS)
        setsockopt(q->pkt_fd, SOL_PACKET, PACKET_QDISC_BYPASS, &one, sizeof(one));
    setsockopt(q->raw_fd, IPPROTO_IP, IP_RECVERR, &one, sizeof(one)); /* the MTU of a refused packet */
    uint32_t mark = LB_SOCKET_MARK_BASE | o->mark_queue;
    if (setsockopt(q->raw_fd, SOL_SOCKET, SO_MARK, &mark, sizeof(mark)) < 0)
        return -errno;
    return 0;
}

lb_natrx_t *lb_natrx_start(lb_t *lb, const struct lb_natrx_opts *o, int *err)
{
    int e = 0;
    if (!lb || !o || o->ifindex == 0 || o->cpu < -1) {
        if (err)
            *err = -EINVAL;
        return NULL;
    }
    struct lb_natrx *q = calloc(1, sizeof(*q));
    if (!q) {
        if (err)
            *err = -ENOMEM;
        return NULL;
    }
    q->lb = lb;
    q->rx_fd = q->raw_fd = q->pkt_fd = -1;
    q->wait.efd = -1;
    q->seg_slot = LB_PKT_MAX; /* a segment is never longer than the packet it was cut from */
    q->rx = calloc(NATRX_BATCH, NATRX_BUF);
    q->out = calloc(1, LB_PKT_MAX);
    q->seg = calloc(NATRX_SEG_MAX, q->seg_slot);
    q->frag = calloc(1, NATRX_FRAG_BUF);
    if (!q->rx || !q->out || !q->seg || !q->frag) {
        e = -ENOMEM;
        goto fail;
    }
    if ((e = natrx_open(q, o)) < 0)
        goto fail;
    if (o->host) {
        q->host = o->host;
        if ((e = lb_nfq_host(q->host, q)) < 0)
            goto fail;
        q->hosted = 1;
        if (err)
            *err = 0;
        return q;
    }
    if ((e = lb_adapter_wait_open(&q->wait, lb, 0)) < 0)
        goto fail;
    if ((e = lb_adapter_thread_start(&q->thread, o->cpu, "lbd-natrx", natrx_thread, q)) < 0)
        goto fail;
    q->thread_started = 1;
    if (err)
        *err = 0;
    return q;
fail:
    if (err)
        *err = e ? e : -EIO;
    natrx_free(q);
    return NULL;
}

int lb_natrx_stop(lb_natrx_t *q)
{
    if (!q)
        return 0;
    if (q->hosted)
        lb_nfq_host(q->host, NULL); /* returns once the queue's thread let go of q */
    if (q->thread_started) {
        __atomic_store_n(&q->stop, 1, __ATOMIC_RELEASE);
        lb_adapter_wait_kick(&q->wait);
        pthread_join(q->thread, NULL);
    }
    natrx_free(q);
    return 0;
}

void lb_natrx_get_stats(lb_natrx_t *q, struct lb_natrx_stats *out)
{
    if (!q || !out)
        return;
    *out = q->stats; /* counters are monotonic; a torn snapshot is harmless */
    struct tpacket_stats ts;
    socklen_t sl = sizeof(ts);
    memset(&ts, 0, sizeof(ts));
    /* PACKET_STATISTICS resets the kernel's counters on each read: keep a running sum. */
    if (getsockopt(q->rx_fd, SOL_PACKET, PACKET_STATISTICS, &ts, &sl) == 0)
        __atomic_add_fetch(&q->kernel_drops, ts.tp_drops, __ATOMIC_RELAXED);
    out->kernel_dropped = __atomic_load_n(&q->kernel_drops, __ATOMIC_RELAXED);
}
