/*
 * nfq.c - the NFQUEUE adapter: the only file that talks netlink.
 *
 * One thread per queue, created here so it never holds the Python GIL:
 *   poll -> recvmmsg a batch of packet messages -> under the table lock run
 *   lb_process() on each -> send all verdicts in one netlink datagram (in
 *   arrival order) -> send DR frames in one sendmmsg on an AF_PACKET socket
 *   and ICMP answers on a raw IP socket.
 * The queue with LB_NFQ_F_TIMERS also runs the timers and releases expired connections; a thread
 * sleeps until a packet comes, its stop (an eventfd), or that work is due (lb_adapter.h).
 *
 * Sockets: NETLINK_NO_ENOBUFS (a full socket buffer must not wedge the loop)
 * and a large SO_RCVBUFFORCE.
 *
 * Overload: the kernel's queue is short (LB_NFQ_MAXLEN_DEFAULT, 1024 packets, ~4 ms
 * of work), not the 16,384 it used to be. Offered twice what it can carry, an lbd
 * with a long queue delivered half of its zero-loss rate (receive livelock, issue 15):
 * the kernel keeps every queued packet's buffers, so with thousands waiting each one
 * is cold in the cache by the time lbd reads it and gives its verdict, lbd's cost per
 * packet grows with the backlog, and the receive work spent on packets that are then
 * dropped at the full queue takes the rest of the core. A short queue drops the excess
 * before the backlog gets cold; measured (bench scale, overload): 0.45-0.55x of the
 * zero-loss rate delivered at 2x with 16,384 or 4,096, about 1.0x with 512-1,024. The
 * kernel's drops for the queue are reported with the adapter's stats.
 *
 * Copy range: whole packets in every mode. Each forwarding method sends the packet
 * itself again (DR and IPIP on the packet socket, FULLNAT rewritten), none lets the
 * kernel continue with a verdict, so no mode can do with the headers alone.
 *
 * Several queues (--queue-balance): one adapter and thread per queue, optionally
 * pinned to a CPU, all on one lb_t (its lock serialises the tables); the adapter
 * with LB_NFQ_F_TIMERS also runs the expiry and the SYN-proxy timers.
 *
 * LB_NFQ_F_GSO (NFQA_CFG_F_GSO): the kernel queues GSO super-packets whole and
 * leaves partial checksums (NFQA_SKB_INFO says which); here partial checksums are
 * completed and super-packets cut into segments of at most gso_mtu bytes (gso.c),
 * each segment processed like any packet; the original gets one verdict. When every
 * segment is to leave unchanged in the same frame (DR), the super-packet is sent
 * whole instead, with a virtio-net header (PACKET_VNET_HDR) asking whoever transmits
 * it to segment it at gso_mtu, as the kernel's IPVS DR sends GSO packets on; other
 * methods send their segments.
 *
 * Fragments (docs/fastpath.md "Fragments"): the kernel reassembles before the queue; a
 * packet the core marks with lb_action.frag_mtu is cut with lb_ip_fragment and its fragments
 * sent one by one. Answers on the raw socket are checked by the kernel against the device MTU
 * (raw_send_hdrinc: EMSGSIZE, never fragmented): the socket has IP_RECVERR, the error queue
 * names the MTU, and a packet with DF clear is sent again as fragments of it. Whatever cannot
 * be sent is counted (xmit_l2_err / answer_err) and moved from its reason to xmit_failed
 * (lb_count_xmit_failed), never left counted as forwarded.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netfilter/nfnetlink_queue.h>
#include <linux/virtio_net.h>
#include <libmnl/libmnl.h>
#include <libnetfilter_queue/libnetfilter_queue.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <endian.h>
#include <time.h>
#include <unistd.h>

#include "lb_adapter.h"
#include "lb_xmit.h"

#define NFQ_BATCH 64                       /* packet messages per recvmmsg */
#define NFQ_ITEMS 192                      /* packets or segments processed per flush */
#define NFQ_GSO_MTU_MIN 576
#define NFQ_FRAG_MAX 128                   /* fragments per packet: 65,535 bytes at MTU 576 need 119 */
#define NFQ_FRAG_BUF (LB_PKT_MAX + NFQ_FRAG_MAX * 60) /* the packet plus a header of up to 60 bytes each */
#define NFQ_GSO_MTU_DEFAULT 1500
#define NFQ_MSG_BUF (LB_PKT_MAX + 4096)    /* one packet message: payload + netlink/attribute headers */
#define NFQ_RCVBUF_BYTES (32 * 1024 * 1024)
#define NFQ_SNDBUF_BYTES (4 * 1024 * 1024)
#define NFQ_TX_WAITS 20                    /* ~1 ms polls for room per batch before a frame is dropped */
#define NFQ_LOOPBACK_IFINDEX 1             /* the kernel's LOOPBACK_IFINDEX: lo in every namespace */
#define NFQ_VERDICT_MSG_MAX (LB_PKT_MAX + 512)

struct lb_nfq {
    lb_t *lb;
    struct mnl_socket *nl;
    uint32_t portid;
    uint16_t queue_num;
    uint32_t flags;                        /* LB_NFQ_F_* */
    uint32_t gso_mtu;                      /* LB_NFQ_F_GSO: segment size (IP packet bytes) */
    uint32_t queue_maxlen;                 /* the kernel's queue length for us */
    uint32_t own_mark;                     /* SO_MARK of raw_fd: LB_SOCKET_MARK_BASE | mark_queue */
    int pkt_fd;                            /* AF_PACKET, send only (protocol 0) */
    int vnet;                              /* pkt_fd has PACKET_VNET_HDR: every frame starts with one */
    int raw_fd;                            /* AF_INET raw IPPROTO_RAW, send only */
    pthread_t thread;
    int thread_started;
    int stop;                              /* set atomically by lb_nfq_stop */
    struct lb_adapter_wait wait;           /* its eventfd (stop, the core's wake-ups), the expiry's clock */
    struct lb_adapter_overload ovl;        /* full receive batches in a row: signalled (lb_nfq_overload_fd) */
    struct lb_nfq_stats stats;
    /* batch buffers, allocated once (zeroed) */
    uint8_t *rx;                           /* NFQ_BATCH * NFQ_MSG_BUF */
    uint8_t *out;                          /* NFQ_ITEMS * LB_PKT_MAX: rewritten bytes per item */
    uint8_t *seg;                          /* LB_NFQ_F_GSO: NFQ_ITEMS * gso_mtu, segment i for item i */
    uint8_t *tx;                           /* verdict datagram */
    uint8_t *frag;                         /* NFQ_FRAG_BUF: one packet's fragments, back to back */
    uint32_t frag_len[NFQ_FRAG_MAX];
    size_t tx_cap;
    struct mmsghdr rx_msgs[NFQ_BATCH];
    struct iovec rx_iov[NFQ_BATCH];
    /* The NAT-reply reader this thread serves too (lb_nfq_host, natrx.c): the control plane's
     * request under host_lock, numbered by host_gen; the thread takes it at the top of its loop
     * (host_seen: the last number it took) and says so on host_cond. */
    pthread_mutex_t host_lock;
    pthread_cond_t host_cond;
    struct lb_natrx *host_req;             /* under host_lock */
    uint64_t host_gen;                     /* under host_lock; the thread peeks at it atomically */
    uint64_t host_seen;                    /* written by the thread under host_lock */
    int thread_exited;                     /* under host_lock: nothing will take a request any more */
    struct lb_natrx *natrx;                /* the thread's own: what it polls and serves */
};

/* Send one config message with an ACK request and wait for the kernel's answer. */
static int nfq_config(struct lb_nfq *q, uint8_t cmd, int set_params, uint32_t flags)
{
    char buf[MNL_SOCKET_BUFFER_SIZE];
    struct nlmsghdr *nlh = nfq_nlmsg_put(buf, NFQNL_MSG_CONFIG, q->queue_num);
    nlh->nlmsg_flags |= NLM_F_ACK;
    unsigned int seq = (unsigned int)time(NULL);
    nlh->nlmsg_seq = seq;
    if (cmd != NFQNL_CFG_CMD_NONE)
        nfq_nlmsg_cfg_put_cmd(nlh, AF_INET, cmd);
    if (set_params) {
        nfq_nlmsg_cfg_put_params(nlh, NFQNL_COPY_PACKET, LB_PKT_MAX);
        nfq_nlmsg_cfg_put_qmaxlen(nlh, q->queue_maxlen);
        mnl_attr_put_u32(nlh, NFQA_CFG_FLAGS, htonl(flags));
        mnl_attr_put_u32(nlh, NFQA_CFG_MASK, htonl(NFQA_CFG_F_FAIL_OPEN | NFQA_CFG_F_GSO));
    }
    if (mnl_socket_sendto(q->nl, nlh, nlh->nlmsg_len) < 0)
        return -errno;
    /* Packet messages may arrive ahead of the ACK (e.g. on unbind): skip them
     * and return the status of the first NLMSG_ERROR that answers us. */
    for (int tries = 0; tries < 256; tries++) {
        ssize_t n = mnl_socket_recvfrom(q->nl, buf, sizeof(buf));
        if (n < 0)
            return -errno;
        int len = (int)n;
        for (const struct nlmsghdr *m = (const struct nlmsghdr *)buf; mnl_nlmsg_ok(m, len);
             m = mnl_nlmsg_next(m, &len)) {
            if (m->nlmsg_type != NLMSG_ERROR || m->nlmsg_seq != seq)
                continue;
            if (m->nlmsg_len < mnl_nlmsg_size(sizeof(struct nlmsgerr)))
                return -EIO;
            const struct nlmsgerr *e = mnl_nlmsg_get_payload(m);
            return e->error; /* 0 = ACK, else -errno */
        }
    }
    return -ETIMEDOUT;
}

/* Parse one packet message; returns 0 and fills id/payload, or -1. */
/* Parse one packet message; returns 0 and fills id/payload/skb info, or -1. */
static int parse_packet_msg(const struct nlmsghdr *nlh, uint32_t *id, uint8_t **payload, uint32_t *plen,
                            uint32_t *skbinfo, uint32_t *mark, uint32_t *flags)
{
    struct nlattr *attr[NFQA_MAX + 1];
    memset(attr, 0, sizeof(attr));
    if (nfq_nlmsg_parse(nlh, attr) < 0 || !attr[NFQA_PACKET_HDR])
        return -1;
    const struct nfqnl_msg_packet_hdr *ph = mnl_attr_get_payload(attr[NFQA_PACKET_HDR]);
    *id = ntohl(ph->packet_id);
    if (attr[NFQA_PAYLOAD]) {
        *payload = mnl_attr_get_payload(attr[NFQA_PAYLOAD]);
        *plen = mnl_attr_get_payload_len(attr[NFQA_PAYLOAD]);
    } else {
        *payload = NULL;
        *plen = 0;
    }
    *skbinfo = attr[NFQA_SKB_INFO] ? ntohl(mnl_attr_get_u32(attr[NFQA_SKB_INFO])) : 0;
    /* The skb mark (fwmark services; an operator's MARK rule set it before lbd's mangle rule queued
     * the packet). Absent when 0. */
    *mark = attr[NFQA_MARK] ? ntohl(mnl_attr_get_u32(attr[NFQA_MARK])) : 0;
    /* In on the loopback device (the director's own traffic to a VIP): not subject to the martian
     * checks of input routing, which it never met. LOOPBACK_IFINDEX is 1 in every namespace. */
    *flags = attr[NFQA_IFINDEX_INDEV] && ntohl(mnl_attr_get_u32(attr[NFQA_IFINDEX_INDEV])) == NFQ_LOOPBACK_IFINDEX
                 ? LB_PKT_F_LOOPBACK
                 : 0;
    return 0;
}

/* One packet (or one segment of a GSO packet) and what to do with it. Items without
 * an id are the second and later segments of a GSO packet: the verdict for the queued
 * original rides on its first segment's item. */
struct batch_item {
    uint32_t id;
    int has_id;
    const uint8_t *pkt;
    uint32_t len;
    struct lb_action act;
    int valid;
    int whole;                             /* a GSO super-packet sent whole: gso says how to cut it */
    int failed;                            /* could not be sent: counted as xmit_failed after the flush */
    struct lb_gso_whole gso;
};

/* The batch item of queued packet `id` with its bytes, zeroed otherwise: its verdict still to decide. */
static struct batch_item *item_for(struct batch_item *it, uint32_t id, const uint8_t *pkt, uint32_t len)
{
    memset(it, 0, sizeof(*it));
    it->id = id;
    it->has_id = 1;
    it->pkt = pkt;
    it->len = len;
    it->valid = 1;
    return it;
}

/* The virtio-net header in front of a frame on a PACKET_VNET_HDR socket: none for a plain
 * frame, else TCP segmentation at gso.mss with the checksum left to complete (the packet's
 * checksum field holds the pseudo-header sum, see lb_tcp_gso_prepare). */
static void vnet_header(struct virtio_net_hdr *vh, const struct batch_item *it)
{
    memset(vh, 0, sizeof(*vh));
    if (!it->whole)
        return;
    vh->flags = VIRTIO_NET_HDR_F_NEEDS_CSUM;
    vh->gso_type = VIRTIO_NET_HDR_GSO_TCPV4 | (it->gso.cwr ? VIRTIO_NET_HDR_GSO_ECN : 0);
    vh->hdr_len = htole16((uint16_t)(LB_L2HDR_LEN + it->gso.hdr_len));
    vh->gso_size = htole16(it->gso.mss);
    vh->csum_start = htole16((uint16_t)(LB_L2HDR_LEN + it->gso.l4_off));
    vh->csum_offset = htole16(16); /* offsetof(struct tcphdr, check) */
}

/* Cut ip (len bytes) into fragments of at most mtu bytes into q->frag; their number, or 0. */
static int fragment(struct lb_nfq *q, const uint8_t *ip, uint32_t len, uint32_t mtu)
{
    int k = lb_ip_fragment(ip, len, mtu, q->frag, NFQ_FRAG_BUF, q->frag_len, NFQ_FRAG_MAX);
    return k > 0 ? k : 0;
}

/* One frame too big for its path (act.frag_mtu): its fragments, each in its own frame. Returns 1
 * when every fragment was sent. */
static int send_fragmented(struct lb_nfq *q, const struct batch_item *it, const uint8_t *ip, uint32_t len,
                           struct sockaddr_ll *sll)
{
    int k = fragment(q, ip, len, it->act.frag_mtu);
    if (k == 0)
        return 0;
    struct virtio_net_hdr vh;
    memset(&vh, 0, sizeof(vh));
    const uint8_t *f = q->frag;
    int ok = 1;
    for (int j = 0; j < k; j++) {
        struct iovec v[3];
        int nv = 0;
        if (q->vnet) {
            v[nv].iov_base = &vh;
            v[nv++].iov_len = sizeof(vh);
        }
        v[nv].iov_base = (void *)it->act.l2hdr;
        v[nv++].iov_len = LB_L2HDR_LEN;
        v[nv].iov_base = (void *)f;
        v[nv++].iov_len = q->frag_len[j];
        struct msghdr mh;
        memset(&mh, 0, sizeof(mh));
        mh.msg_name = sll;
        mh.msg_namelen = sizeof(*sll);
        mh.msg_iov = v;
        mh.msg_iovlen = (size_t)nv;
        ssize_t r;
        int waits = 0;
        while ((r = sendmsg(q->pkt_fd, &mh, MSG_DONTWAIT)) < 0 &&
               (errno == EINTR || ((errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS) &&
                                   waits++ < NFQ_TX_WAITS))) {
            struct pollfd pfd = {.fd = q->pkt_fd, .events = POLLOUT};
            if (errno != EINTR)
                poll(&pfd, 1, 1);
        }
        if (r < 0)
            ok = 0;
        f += q->frag_len[j];
    }
    if (ok) {
        q->stats.frag_packets++;
        q->stats.frag_out += (uint64_t)k;
    }
    return ok;
}

static uint64_t send_frames(struct lb_nfq *q, struct batch_item *items, int n)
{
    uint64_t sent = 0;
    /* Frame i = l2hdr + (rewritten bytes in out slot i, or the original packet). */
    struct mmsghdr msgs[NFQ_ITEMS];
    struct iovec iov[NFQ_ITEMS][3];
    struct sockaddr_ll sll[NFQ_ITEMS];
    struct virtio_net_hdr vh[NFQ_ITEMS];
    int idx[NFQ_ITEMS];                    /* the item of message m */
    int m = 0;
    for (int i = 0; i < n; i++) {
        struct batch_item *it = &items[i];
        if (!it->valid || it->act.verdict != LB_V_XMIT_L2)
            continue;
        idx[m] = i;
        memset(&sll[m], 0, sizeof(sll[m]));
        sll[m].sll_family = AF_PACKET;
        sll[m].sll_ifindex = it->act.ifindex;
        sll[m].sll_protocol = htons(ETH_P_IP);
        sll[m].sll_halen = 6;
        memcpy(sll[m].sll_addr, it->act.l2hdr, 6);
        struct iovec *v = iov[m];
        if (q->vnet) {
            vnet_header(&vh[m], it);
            v->iov_base = &vh[m];
            v->iov_len = sizeof(vh[m]);
            v++;
        }
        v[0].iov_base = it->act.l2hdr;
        v[0].iov_len = LB_L2HDR_LEN;
        if (it->act.out_len) {
            v[1].iov_base = q->out + (size_t)i * LB_PKT_MAX;
            v[1].iov_len = it->act.out_len;
        } else {
            v[1].iov_base = (void *)it->pkt;
            v[1].iov_len = it->len;
        }
        if (LB_UNLIKELY(it->act.frag_mtu && v[1].iov_len > it->act.frag_mtu)) {
            if (send_fragmented(q, it, v[1].iov_base, (uint32_t)v[1].iov_len, &sll[m])) {
                q->stats.xmit_l2++;
                sent++;
            } else {
                q->stats.xmit_l2_err++;
                it->failed = 1;
            }
            continue;
        }
        memset(&msgs[m], 0, sizeof(msgs[m]));
        msgs[m].msg_hdr.msg_name = &sll[m];
        msgs[m].msg_hdr.msg_namelen = sizeof(sll[m]);
        msgs[m].msg_hdr.msg_iov = iov[m];
        msgs[m].msg_hdr.msg_iovlen = q->vnet ? 3 : 2;
        m++;
    }
    int done = 0, waits = 0;
    while (done < m) {
        int r = sendmmsg(q->pkt_fd, msgs + done, (unsigned int)(m - done), MSG_DONTWAIT);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            if ((errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS) && waits < NFQ_TX_WAITS) {
                /* The device queue is full: wait briefly for room and resend the same frame,
                 * rather than losing a frame we already took responsibility for. */
                struct pollfd pfd = {.fd = q->pkt_fd, .events = POLLOUT};
                poll(&pfd, 1, 1);
                waits++;
                continue;
            }
            q->stats.xmit_l2_err++; /* give up on this frame only, keep the rest of the batch */
            items[idx[done]].failed = 1;
            done++;
            continue;
        }
        q->stats.xmit_l2 += (uint64_t)r;
        sent += (uint64_t)r;
        done += r;
    }
    return sent;
}

/* An answer the kernel refused as too big for the device (DF clear): its fragments. 1 when all left. */
static int send_raw_fragmented(struct lb_nfq *q, const uint8_t *o, uint32_t len)
{
    uint32_t mtu = lb_adapter_refused_mtu(q->raw_fd);
    int k = mtu ? fragment(q, o, len, mtu) : 0;
    if (k < 2)
        return 0;
    const uint8_t *f = q->frag;
    for (int j = 0; j < k; j++) {
        if (lb_adapter_send_raw(q->raw_fd, f, q->frag_len[j]) < 0)
            return 0;
        f += q->frag_len[j];
    }
    q->stats.frag_packets++;
    q->stats.frag_out += (uint64_t)k;
    return 1;
}

static uint64_t send_answers(struct lb_nfq *q, struct batch_item *items, int n)
{
    uint64_t sent = 0;
    for (int i = 0; i < n; i++) {
        struct batch_item *it = &items[i];
        if (!it->valid || it->act.verdict != LB_V_ANSWER)
            continue;
        const uint8_t *o = q->out + (size_t)i * LB_PKT_MAX;
        /* Never block: answers to unresolvable (e.g. spoofed) clients wait in the
         * kernel's neighbour queue holding send-buffer memory; a blocking send
         * would stall the whole queue thread. A failed send is counted. */
        int r = lb_adapter_send_raw(q->raw_fd, o, it->act.out_len);
        if (r == -EMSGSIZE && send_raw_fragmented(q, o, it->act.out_len))
            r = 0;
        if (r < 0) {
            q->stats.answer_err++;
            it->failed = 1;
        } else {
            q->stats.answers++;
            sent++;
        }
    }
    return sent;
}

/* Verdicts in arrival order, in one netlink datagram. A run of equal verdicts
 * without new bytes becomes one NFQNL_MSG_VERDICT_BATCH (it applies to every
 * queued packet with an id up to the run's last); MANGLE needs its own message. */
static void put_verdict(struct mnl_nlmsg_batch *b, struct lb_nfq *q, int type, uint32_t id, int v,
                        const uint8_t *pkt, uint32_t len)
{
    if (mnl_nlmsg_batch_size(b) + NFQ_VERDICT_MSG_MAX > q->tx_cap) {
        if (mnl_socket_sendto(q->nl, mnl_nlmsg_batch_head(b), mnl_nlmsg_batch_size(b)) < 0)
            q->stats.recv_err++;
        mnl_nlmsg_batch_reset(b);
    }
    struct nlmsghdr *nlh = nfq_nlmsg_put(mnl_nlmsg_batch_current(b), type, q->queue_num);
    nfq_nlmsg_verdict_put(nlh, (int)id, v);
    if (pkt)
        nfq_nlmsg_verdict_put_pkt(nlh, pkt, len);
    mnl_nlmsg_batch_next(b);
}

static inline int nf_verdict(const struct lb_action *a)
{
    return (a->verdict == LB_V_ACCEPT || a->verdict == LB_V_MANGLE) ? NF_ACCEPT : NF_DROP;
}

static void send_verdicts(struct lb_nfq *q, struct batch_item *items, int n)
{
    struct mnl_nlmsg_batch *b = mnl_nlmsg_batch_start(q->tx, q->tx_cap);
    if (!b)
        return;
    int i = 0;
    while (i < n) {
        struct batch_item *it = &items[i];
        if (!it->has_id) {
            i++;
            continue;
        }
        if (it->act.verdict == LB_V_MANGLE) {
            put_verdict(b, q, NFQNL_MSG_VERDICT, it->id, NF_ACCEPT, q->out + (size_t)i * LB_PKT_MAX, it->act.out_len);
            q->stats.verdicts++;
            i++;
            continue;
        }
        /* Extend the run while the verdict stays the same; segments without an id do not end it. */
        int v = nf_verdict(&it->act), j = i + 1, count = 1;
        uint32_t last = it->id;
        for (; j < n; j++) {
            if (!items[j].has_id)
                continue;
            if (items[j].act.verdict == LB_V_MANGLE || nf_verdict(&items[j].act) != v)
                break;
            last = items[j].id;
            count++;
        }
        put_verdict(b, q, count == 1 ? NFQNL_MSG_VERDICT : NFQNL_MSG_VERDICT_BATCH, last, v, NULL, 0);
        q->stats.verdicts += (uint64_t)count;
        i = j;
    }
    if (!mnl_nlmsg_batch_is_empty(b) &&
        mnl_socket_sendto(q->nl, mnl_nlmsg_batch_head(b), mnl_nlmsg_batch_size(b)) < 0)
        q->stats.recv_err++;
    mnl_nlmsg_batch_stop(b);
}

/* Frames first: the original is dropped by its verdict either way. What could not be sent
 * leaves its reason's counter for xmit_failed. */
static void flush_items(struct lb_nfq *q, struct batch_item *items, int n)
{
    if (n == 0)
        return;
    send_frames(q, items, n);
    send_answers(q, items, n);
    send_verdicts(q, items, n);
    q->stats.batches++;
    for (int i = 0; i < n; i++)
        if (LB_UNLIKELY(items[i].failed) && items[i].has_id)
            lb_count_xmit_failed(q->lb, items[i].act.reason);
}

/* Segments items[first..n) of one super-packet were all processed. If each is to leave unchanged
 * but for its TTL (DR: decremented, the header checksum updated) in the same frame (the packet core
 * decided per segment, so its states and counters saw every segment), they become one item: the
 * super-packet, its TTL decremented the same way, sent whole for the device to cut.
 * Returns the items used. */
/* A DR segment leaves with only its TTL decremented and its header checksum updated: out differs from
 * the segment in bytes 8, 10 and 11 alone (and the TTL by one). */
static int ttl_only(const uint8_t *seg, uint32_t seg_len, const uint8_t *out, uint32_t out_len)
{
    return seg && out_len == seg_len && seg_len >= 20 && memcmp(seg, out, 8) == 0 && out[8] + 1 == seg[8] &&
           out[9] == seg[9] && memcmp(seg + 12, out + 12, seg_len - 12) == 0;
}

static int send_whole(struct lb_nfq *q, struct batch_item *items, int first, int n, uint8_t *pkt, uint32_t len,
                      uint32_t mtu)
{
    if (!q->vnet || n - first < 2)
        return n;
    const struct lb_action *a = &items[first].act;
    int ttl_dec = items[first].act.out_len != 0;
    for (int i = first; i < n; i++) {
        const struct lb_action *b = &items[i].act;
        if (b->verdict != LB_V_XMIT_L2 || b->ifindex != a->ifindex ||
            memcmp(b->l2hdr, a->l2hdr, LB_L2HDR_LEN) != 0)
            return n;
        if (ttl_dec ? !ttl_only(items[i].pkt, items[i].len, q->out + (size_t)i * LB_PKT_MAX, b->out_len)
                    : b->out_len != 0)
            return n;
    }
    struct batch_item *it = &items[first];
    if (ttl_dec && pkt[8] <= 1)
        return n;
    uint8_t ttl = pkt[8], csum_hi = pkt[10], csum_lo = pkt[11];
    if (ttl_dec)
        LB_IP_TTL_DEC(pkt); /* as every segment's: the device copies the header into each */
    if (lb_tcp_gso_prepare(pkt, len, mtu, &it->gso) != LB_OK) {
        pkt[8] = ttl; /* the segments are sent instead: the original stays as it came */
        pkt[10] = csum_hi;
        pkt[11] = csum_lo;
        return n;
    }
    it->pkt = pkt;
    it->len = len;
    it->act.out_len = 0; /* the super-packet itself, from pkt */
    it->whole = 1;
    q->stats.gso_whole++;
    return first + 1;
}

/* A GSO packet: cut it into segments (items n..), process each; returns the items used.
 * Called with the lock held; may release it to flush when the items run out. */
static int process_gso(struct lb_nfq *q, struct batch_item *items, int n, uint32_t id, uint8_t *pkt,
                       uint32_t len, uint32_t mark, uint32_t pflags, uint64_t t)
{
    uint32_t seg_len[NFQ_ITEMS];
    q->stats.gso_packets++;
    /* Segments as large as --gso-mtu allows and the connection's way on takes whole (e.g. 1480 bytes
     * into a 1500-byte IPIP tunnel): the sender's own segment size is not in the message. */
    uint32_t mtu = q->gso_mtu, path = lb_path_mtu(q->lb, pkt, len, t);
    if (path && path < mtu)
        mtu = path > NFQ_GSO_MTU_MIN ? path : NFQ_GSO_MTU_MIN;
    int k = lb_tcp_segment(pkt, len, mtu, q->seg + (size_t)n * q->gso_mtu, q->gso_mtu, seg_len,
                           (uint32_t)(NFQ_ITEMS - n));
    if (k == LB_ENOSPC && n > 0) {
        pthread_mutex_unlock(&q->lb->lock);
        flush_items(q, items, n);
        pthread_mutex_lock(&q->lb->lock);
        n = 0;
        k = lb_tcp_segment(pkt, len, mtu, q->seg, q->gso_mtu, seg_len, NFQ_ITEMS);
    }
    if (k <= 0) {
        /* Not TCP, or URG: the kernel could have segmented it, we cannot; dropped and counted. */
        q->stats.gso_errors++;
        struct batch_item *it = &items[n];
        memset(it, 0, sizeof(*it));
        it->id = id;
        it->has_id = 1;
        it->act.verdict = LB_V_DROP;
        return n + 1;
    }
    q->stats.gso_segments += (uint64_t)k;
    int first = n;
    for (int s = 0; s < k; s++) {
        struct batch_item *it = &items[n];
        memset(it, 0, sizeof(*it));
        it->id = id;
        it->has_id = (s == 0);
        it->pkt = q->seg + (size_t)n * q->gso_mtu;
        it->len = seg_len[s];
        it->valid = 1;
        lb_process_pkt(q->lb, it->pkt, it->len, mark, pflags, t, q->out + (size_t)n * LB_PKT_MAX, LB_PKT_MAX,
                       &it->act);
        n++;
        /* Not ours (e.g. no connection): the kernel gets the original whole, as without GSO. */
        if (s == 0 && it->act.verdict == LB_V_ACCEPT)
            return n;
    }
    return send_whole(q, items, first, n, pkt, len, mtu);
}

static void process_batch(struct lb_nfq *q, int nmsgs)
{
    struct batch_item items[NFQ_ITEMS];
    int n = 0;
    uint64_t t = lb_adapter_now_ms();
    pthread_mutex_lock(&q->lb->lock);
    for (int i = 0; i < nmsgs; i++) {
        uint8_t *buf = q->rx + (size_t)i * NFQ_MSG_BUF;
        int len = (int)q->rx_msgs[i].msg_len;
        const struct nlmsghdr *nlh = (const struct nlmsghdr *)buf;
        for (; mnl_nlmsg_ok(nlh, len); nlh = mnl_nlmsg_next(nlh, &len)) {
            if (NFNL_MSG_TYPE(nlh->nlmsg_type) != NFQNL_MSG_PACKET)
                continue;
            uint32_t id, plen, info, mark, pflags;
            uint8_t *pkt;
            if (parse_packet_msg(nlh, &id, &pkt, &plen, &info, &mark, &pflags) < 0)
                continue;
            q->stats.packets++;
            if (mark == q->own_mark) {
                /* lbd's own raw-socket packet looped back to the queue (sent to a local address, e.g. a
                 * segment the AF_XDP source re-injects, an answer to a director-local client): it was
                 * processed once already; the kernel delivers it. */
                item_for(&items[n++], id, pkt, plen)->act.verdict = LB_V_ACCEPT;
                q->stats.own_passed++;
            } else if ((info & NFQA_SKB_GSO) && q->seg) {
                n = process_gso(q, items, n, id, pkt, plen, mark, pflags, t);
            } else {
                /* Partial checksum (with NFQA_CFG_F_GSO only): complete it, as the kernel would have. */
                if ((info & NFQA_SKB_CSUMNOTREADY) && pkt && lb_csum_complete(pkt, plen) == LB_OK)
                    q->stats.csum_completed++;
                struct batch_item *it = item_for(&items[n], id, pkt, plen);
                /* pkt is this adapter's receive buffer, read again only to send it (out_len 0): lent to
                 * the core, which decrements a DR packet's TTL there instead of copying it to out. */
                lb_process_inplace(q->lb, pkt, it->len, mark, pflags, t, q->out + (size_t)n * LB_PKT_MAX, LB_PKT_MAX,
                                   &it->act);
                n++;
            }
            if (n >= NFQ_ITEMS - 1) {
                pthread_mutex_unlock(&q->lb->lock);
                flush_items(q, items, n);
                pthread_mutex_lock(&q->lb->lock);
                n = 0;
            }
        }
    }
    pthread_mutex_unlock(&q->lb->lock);
    flush_items(q, items, n);
}

/* Run due timers (SYN-proxy retransmissions and give-ups); each produced
 * packet is a fresh copy sent here and counted only if the send succeeded. */
static void process_timers(struct lb_nfq *q)
{
    struct batch_item items[NFQ_BATCH];
    for (;;) {
        int n = 0;
        uint64_t t = lb_adapter_now_ms();
        pthread_mutex_lock(&q->lb->lock);
        while (n < NFQ_BATCH) {
            memset(&items[n], 0, sizeof(items[n]));
            if (!lb_timer_next(q->lb, t, q->out + (size_t)n * LB_PKT_MAX, LB_PKT_MAX, &items[n].act))
                break;
            items[n].valid = 1;
            n++;
        }
        pthread_mutex_unlock(&q->lb->lock);
        if (n == 0)
            return;
        q->stats.timer_frames += send_frames(q, items, n);
        q->stats.timer_answers += send_answers(q, items, n);
        if (n < NFQ_BATCH)
            return;
    }
}

/* How long to sleep: without timers until a packet or the stop; with them until they or the expiry
 * have work (lb_adapter.h), at most LB_ADAPTER_IDLE_MS. */
static int poll_timeout_ms(struct lb_nfq *q)
{
    if (!(q->flags & LB_NFQ_F_TIMERS))
        return -1;
    uint64_t now = lb_adapter_now_ms();
    pthread_mutex_lock(&q->lb->lock);
    uint64_t due = lb_adapter_due_locked(q->lb, &q->wait);
    int ms = lb_adapter_sleep_ms_locked(&q->wait, due, now,
                                        q->wait.timers ? LB_ADAPTER_IDLE_MS : LB_ADAPTER_POLL_UNREGISTERED_MS);
    pthread_mutex_unlock(&q->lb->lock);
    return ms;
}

/* The thread takes the control plane's latest lb_nfq_host request, if there is a new one. */
static void host_take(struct lb_nfq *q)
{
    if (__atomic_load_n(&q->host_gen, __ATOMIC_ACQUIRE) == q->host_seen)
        return;
    pthread_mutex_lock(&q->host_lock);
    q->natrx = q->host_req;
    q->host_seen = q->host_gen;
    pthread_cond_broadcast(&q->host_cond);
    pthread_mutex_unlock(&q->host_lock);
}

int lb_nfq_host(lb_nfq_t *q, struct lb_natrx *x)
{
    if (!q)
        return -EINVAL;
    int r = 0;
    pthread_mutex_lock(&q->host_lock);
    if (!q->thread_started || q->thread_exited) {
        r = x ? -ESRCH : 0; /* a thread that is gone serves nothing: a detach is done */
    } else {
        q->host_req = x;
        uint64_t gen = q->host_gen + 1;
        __atomic_store_n(&q->host_gen, gen, __ATOMIC_RELEASE);
        lb_adapter_wait_kick(&q->wait);
        while (q->host_seen < gen && !q->thread_exited)
            pthread_cond_wait(&q->host_cond, &q->host_lock);
    }
    pthread_mutex_unlock(&q->host_lock);
    return r;
}

static void *nfq_thread(void *arg)
{
    struct lb_nfq *q = arg;
    int fd = mnl_socket_get_fd(q->nl);
    while (!__atomic_load_n(&q->stop, __ATOMIC_ACQUIRE)) {
        host_take(q);
        short natrx_rev = 0;
        int natrx_fd = q->natrx ? lb_natrx_fd(q->natrx) : -1;
        short rev = lb_adapter_poll2(&q->wait, fd, POLLIN, natrx_fd, &natrx_rev, poll_timeout_ms(q));
        if (natrx_rev)
            lb_natrx_ready(q->natrx, natrx_rev);
        if (rev & POLLIN) {
            for (int i = 0; i < NFQ_BATCH; i++) {
                q->rx_iov[i].iov_base = q->rx + (size_t)i * NFQ_MSG_BUF;
                q->rx_iov[i].iov_len = NFQ_MSG_BUF;
                memset(&q->rx_msgs[i], 0, sizeof(q->rx_msgs[i]));
                q->rx_msgs[i].msg_hdr.msg_iov = &q->rx_iov[i];
                q->rx_msgs[i].msg_hdr.msg_iovlen = 1;
            }
            int r = recvmmsg(fd, q->rx_msgs, NFQ_BATCH, MSG_DONTWAIT, NULL);
            if (r > 0) {
                lb_adapter_overload_note(&q->ovl, (uint32_t)r);
                process_batch(q, r);
            } else if (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
                q->stats.recv_err++;
        }
        if (!(q->flags & LB_NFQ_F_TIMERS))
            continue;
        process_timers(q);
        lb_adapter_expire_tick(q->lb, &q->wait);
        lb_adapter_est_tick(q->lb, &q->wait);
    }
    pthread_mutex_lock(&q->host_lock);
    q->natrx = NULL;
    q->thread_exited = 1;
    pthread_cond_broadcast(&q->host_cond);
    pthread_mutex_unlock(&q->host_lock);
    return NULL;
}

static void nfq_free(struct lb_nfq *q)
{
    if (!q)
        return;
    if (q->nl)
        mnl_socket_close(q->nl);
    if (q->pkt_fd >= 0)
        close(q->pkt_fd);
    if (q->raw_fd >= 0)
        close(q->raw_fd);
    lb_adapter_wait_close(&q->wait, q->lb);
    lb_adapter_overload_close(&q->ovl);
    free(q->rx);
    free(q->out);
    free(q->seg);
    free(q->tx);
    free(q->frag);
    pthread_cond_destroy(&q->host_cond);
    pthread_mutex_destroy(&q->host_lock);
    free(q);
}

lb_nfq_t *lb_nfq_start(lb_t *lb, uint16_t queue_num, const struct lb_nfq_opts *opts, int *err)
{
    struct lb_nfq_opts dflt = {.flags = LB_NFQ_F_TIMERS, .cpu = -1, .mark_queue = queue_num, .gso_mtu = 0,
                               .queue_maxlen = 0};
    if (!opts)
        opts = &dflt;
    uint32_t gso_mtu = opts->gso_mtu ? opts->gso_mtu : NFQ_GSO_MTU_DEFAULT;
    if (!lb || opts->cpu < -1 || opts->cpu >= CPU_SETSIZE || gso_mtu < NFQ_GSO_MTU_MIN) {
        if (err)
            *err = -EINVAL;
        return NULL;
    }
    int e = 0;
    struct lb_nfq *q = calloc(1, sizeof(*q));
    if (!q) {
        if (err)
            *err = -ENOMEM;
        return NULL;
    }
    pthread_mutex_init(&q->host_lock, NULL);
    pthread_cond_init(&q->host_cond, NULL);
    q->lb = lb;
    q->queue_num = queue_num;
    q->flags = opts->flags;
    q->gso_mtu = gso_mtu;
    q->queue_maxlen = opts->queue_maxlen ? opts->queue_maxlen : LB_NFQ_MAXLEN_DEFAULT;
    q->pkt_fd = -1;
    q->raw_fd = -1;
    q->wait.efd = -1;
    q->ovl.efd = -1;
    q->tx_cap = (size_t)NFQ_ITEMS * 64 + 2 * NFQ_VERDICT_MSG_MAX;
    q->rx = calloc(NFQ_BATCH, NFQ_MSG_BUF);
    q->out = calloc(NFQ_ITEMS, LB_PKT_MAX);
    q->tx = calloc(1, q->tx_cap);
    q->frag = calloc(1, NFQ_FRAG_BUF);
    if (q->flags & LB_NFQ_F_GSO)
        q->seg = calloc(NFQ_ITEMS, gso_mtu);
    if (!q->rx || !q->out || !q->tx || !q->frag || ((q->flags & LB_NFQ_F_GSO) && !q->seg)) {
        e = -ENOMEM;
        goto fail;
    }
    q->nl = mnl_socket_open(NETLINK_NETFILTER);
    if (!q->nl || mnl_socket_bind(q->nl, 0, MNL_SOCKET_AUTOPID) < 0) {
        e = -errno;
        goto fail;
    }
    q->portid = mnl_socket_get_portid(q->nl);
    int one = 1;
    mnl_socket_setsockopt(q->nl, NETLINK_NO_ENOBUFS, &one, sizeof(one));
    int rcvbuf = NFQ_RCVBUF_BYTES;
    if (setsockopt(mnl_socket_get_fd(q->nl), SOL_SOCKET, SO_RCVBUFFORCE, &rcvbuf, sizeof(rcvbuf)) < 0)
        setsockopt(mnl_socket_get_fd(q->nl), SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));

    q->pkt_fd = socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, 0);
    q->raw_fd = socket(AF_INET, SOCK_RAW | SOCK_CLOEXEC, IPPROTO_RAW);
    if (q->pkt_fd < 0 || q->raw_fd < 0) {
        e = -errno;
        goto fail;
    }
    /* With GSO, DR super-packets leave whole: every frame then carries a virtio-net header. */
    if (q->flags & LB_NFQ_F_GSO) {
        int vnet = 1;
        if (setsockopt(q->pkt_fd, SOL_PACKET, PACKET_VNET_HDR, &vnet, sizeof(vnet)) < 0) {
            e = -errno;
            goto fail;
        }
        q->vnet = 1;
    }
    lb_adapter_sndbuf(q->raw_fd, NFQ_SNDBUF_BYTES);
    lb_adapter_sndbuf(q->pkt_fd, NFQ_SNDBUF_BYTES);
    /* Opt-in only: frames that bypass the qdisc are not seen by tcpdump on the director's own
     * interface, and a capture there is how operators find forwarding bugs (field report 000). */
    if (q->flags & LB_NFQ_F_QDISC_BYPASS) {
        int bypass = 1;
        setsockopt(q->pkt_fd, SOL_PACKET, PACKET_QDISC_BYPASS, &bypass, sizeof(bypass));
    }
    /* The device MTU of a refused (too big) answer comes back on the error queue. */
    int recverr = 1;
    setsockopt(q->raw_fd, IPPROTO_IP, IP_RECVERR, &recverr, sizeof(recverr));
    /* Marked so the director's raw OUTPUT table can leave our packets untracked. */
    uint32_t mark = LB_SOCKET_MARK_BASE | opts->mark_queue;
    q->own_mark = mark;
    if (setsockopt(q->raw_fd, SOL_SOCKET, SO_MARK, &mark, sizeof(mark)) < 0) {
        e = -errno;
        goto fail;
    }
    if ((e = nfq_config(q, NFQNL_CFG_CMD_BIND, 0, 0)) < 0)
        goto fail;
    uint32_t cfg_flags = ((q->flags & LB_NFQ_F_FAIL_OPEN) ? NFQA_CFG_F_FAIL_OPEN : 0) |
                         ((q->flags & LB_NFQ_F_GSO) ? NFQA_CFG_F_GSO : 0);
    if ((e = nfq_config(q, NFQNL_CFG_CMD_NONE, 1, cfg_flags)) < 0)
        goto fail;

    if ((e = lb_adapter_wait_open(&q->wait, lb, (q->flags & LB_NFQ_F_TIMERS) != 0)) < 0)
        goto fail;
    /* full: a whole read, or the whole queue when it is shorter than a read */
    if ((e = lb_adapter_overload_open(&q->ovl, q->queue_maxlen < NFQ_BATCH ? q->queue_maxlen : NFQ_BATCH)) < 0)
        goto fail;
    char name[16];
    snprintf(name, sizeof(name), "lbd-nfq%u", (unsigned)queue_num);
    if ((e = lb_adapter_thread_start(&q->thread, opts->cpu, name, nfq_thread, q)) < 0)
        goto fail;
    q->thread_started = 1;
    if (err)
        *err = 0;
    return q;
fail:
    if (err)
        *err = e ? e : -EIO;
    nfq_free(q);
    return NULL;
}

int lb_nfq_stop(lb_nfq_t *q)
{
    if (!q)
        return LB_EINVAL;
    __atomic_store_n(&q->stop, 1, __ATOMIC_RELEASE);
    if (q->thread_started) {
        lb_adapter_wait_kick(&q->wait); /* out of its poll now, not at its next timeout */
        pthread_join(q->thread, NULL);
    }
    /* Unbinding is best effort: closing the socket releases the queue anyway. */
    nfq_config(q, NFQNL_CFG_CMD_UNBIND, 0, 0);
    nfq_free(q);
    return LB_OK;
}

/* The kernel's drop counters of queue `num` in this network namespace (0 when not listed). Line
 * format (nfnetlink_queue.c seq_show): queue portid waiting copy_mode copy_range queue_dropped
 * user_dropped id_sequence 1. */
static void kernel_queue_drops(uint16_t num, uint64_t *queue_dropped, uint64_t *user_dropped)
{
    FILE *f = fopen("/proc/net/netfilter/nfnetlink_queue", "re");
    *queue_dropped = *user_dropped = 0;
    if (!f)
        return;
    char line[256];
    while (fgets(line, sizeof(line), f)) {
        unsigned long long v[8];
        if (sscanf(line, "%llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5],
                   &v[6], &v[7]) == 8 && v[0] == num) {
            *queue_dropped = v[5];
            *user_dropped = v[6];
            break;
        }
    }
    fclose(f);
}

void lb_nfq_get_stats(lb_nfq_t *q, struct lb_nfq_stats *out)
{
    if (!q || !out)
        return;
    *out = q->stats; /* counters are monotonic; a torn snapshot is harmless */
    out->overload_signals = __atomic_load_n(&q->ovl.signals, __ATOMIC_RELAXED);
    kernel_queue_drops(q->queue_num, &out->kernel_queue_dropped, &out->kernel_user_dropped);
}

int lb_nfq_overload_fd(lb_nfq_t *q)
{
    return q ? q->ovl.efd : -1;
}
