/*
 * xsk.c - the AF_XDP packet source (lbd --packet-source afxdp): the XDP program and its maps
 * (lb_xdp_*), and one receive/transmit thread per receive queue (lb_xsk_*) around the same
 * lb_process_pkt() as the NFQUEUE adapter (nfq.c).
 *
 * The program (native/bpf/lb_xdp.bpf.c) redirects to this queue's socket only what lbd owns (the
 * keys in lb_keys, set by the control plane with lb_xdp_key_set) and passes the rest to the
 * kernel. It is attached through a bpf_link: the link lives as long as its file descriptor, so the
 * program goes away with lbd however lbd ends (kill -9 included); nothing is pinned.
 *
 * One umem per socket, XSK_FRAMES frames of XSK_FRAME_SIZE bytes, and a fill ring as large as the
 * umem: every frame is either owned by the kernel (fill, rx, tx, completion rings) or by this
 * thread for the length of one batch, so giving a frame back to the fill ring never fails.
 *
 * A batch: peek up to XSK_BATCH received frames, run lb_process_pkt() on each (the IPv4 packet
 * after the Ethernet header) under the table lock, then act on each verdict:
 *   LB_V_XMIT_L2 on this socket's interface: the frame is rewritten in place (l2hdr + out) and
 *     put on the TX ring, no copy out of the umem (the frame comes back on the completion ring);
 *     on another interface, or when the TX ring stays full: queued for the AF_PACKET socket, and
 *     the batch's queued frames leave in one sendmmsg() before its frames go back to the fill ring
 *     (txq_flush: a full socket or device queue is waited for, bounded, before a frame counts as
 *     not sent).
 *   LB_V_ANSWER: the IP packet on a raw IPPROTO_RAW socket (the kernel's IP output), as nfq.c.
 *   LB_V_ACCEPT / LB_V_MANGLE: XDP cannot accept a redirected frame, so the IP packet (original or
 *     mangled) is re-injected through the same raw socket: the kernel routes it, delivering
 *     it locally (e.g. a stray segment to a VIP, which the host's TCP answers) or forwarding it.
 *   LB_V_DROP: the frame goes back to the fill ring.
 * Timers (SYN-proxy, held packets) and the expiry run on the thread with LB_XSK_F_TIMERS, their
 * frames on the AF_PACKET socket. A thread sleeps until a frame comes, its stop, or its next periodic
 * work (lb_adapter.h): one without timers or the fast path's tick only for frames or its stop.
 *
 * The XDP fast path's user-space side (lbd --xdp-fastpath: its maps, the core's hooks, the credit
 * of what the program forwarded) is xsk_fp.c; queue 0's thread registers it and runs its tick.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/if_ether.h>
#include <linux/if_link.h>
#include <linux/if_packet.h>
#include <linux/if_xdp.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <xdp/xsk.h>

#include "xsk_fp.h"

#define XSK_FRAMES 4096
#define XSK_FRAME_SIZE 4096                /* XSK_UMEM__DEFAULT_FRAME_SIZE: one page per frame */
#define XSK_RING 2048                      /* rx and tx descriptors */
#define XSK_BATCH 64
#define XSK_TX_TRIES 8                     /* kicks and completion reaps before a frame goes to AF_PACKET */
#define XSK_SNDBUF_BYTES (4 * 1024 * 1024)
#define XSK_FRAG_MAX 128                   /* fragments per packet: 65,535 bytes at MTU 576 need 119 */
#define XSK_FRAG_BUF (LB_PKT_MAX + XSK_FRAG_MAX * 60) /* the packet plus a header of up to 60 bytes each */
#define XSK_TXQ_MAX (XSK_BATCH > XSK_FRAG_MAX ? XSK_BATCH : XSK_FRAG_MAX) /* frames per sendmmsg() */
#define XSK_TXQ_WAITS 4                    /* waits for room per flush before the rest counts as not sent */
#define XSK_TXQ_WAIT_MS 1                  /* EAGAIN (socket buffer full): poll(POLLOUT) at most this long */
#define XSK_TXQ_NOBUFS_US 25               /* ENOBUFS (device or veth peer queue full): sleep 25, 50, 100, 200 us */

enum xsk_txq_kind { TXQ_FORWARD, TXQ_FRAGMENTS, TXQ_TIMER };

/* Frames for the AF_PACKET socket, sent together by txq_flush(). A packet is one frame, or the
 * fragments it was cut into (counted sent only when every fragment was). The bytes a frame points
 * to (the umem frame, q->out, q->frag) stay untouched until the flush. */
struct xsk_txq {
    uint32_t n;                            /* frames queued */
    uint32_t npkt;                         /* packets they belong to */
    struct mmsghdr msg[XSK_TXQ_MAX];
    struct iovec iov[XSK_TXQ_MAX][2];      /* the Ethernet header, the IP packet */
    struct sockaddr_ll sll[XSK_TXQ_MAX];
    uint8_t l2hdr[XSK_TXQ_MAX][LB_L2HDR_LEN];
    int err[XSK_TXQ_MAX];                  /* per frame after the flush: 0 sent, else the errno */
    struct {
        uint32_t first, count;             /* its frames: msg[first .. first + count) */
        int32_t reason;                    /* lb_action.reason, for lb_count_xmit_failed */
        uint8_t kind;                      /* enum xsk_txq_kind */
    } pkt[XSK_TXQ_MAX];
};

struct lb_xsk {
    lb_t *lb;
    struct lb_xdp *xdp;
    uint32_t queue_id;
    uint32_t flags;
    uint8_t *umem_area;                    /* XSK_FRAMES * XSK_FRAME_SIZE, page aligned */
    struct xsk_umem *umem;
    struct xsk_socket *xsk;
    struct xsk_ring_prod fq, tx;
    struct xsk_ring_cons cq, rx;
    int zerocopy;
    int pkt_fd;                            /* AF_PACKET, send only */
    int raw_fd;                            /* AF_INET raw IPPROTO_RAW, send only */
    uint8_t *out;                          /* XSK_BATCH * LB_PKT_MAX */
    uint8_t *frag;                         /* XSK_FRAG_BUF: one packet's fragments, back to back */
    uint32_t frag_len[XSK_FRAG_MAX];
    struct xsk_txq *txq;                   /* the AF_PACKET socket's batch */
    uint32_t tx_pending;                   /* frames on the TX ring not yet completed */
    pthread_t thread;
    int thread_started;
    int stop;
    int fp;                                /* this thread runs the fast path's tick (it registered it) */
    struct lb_adapter_wait wait;           /* its eventfd (stop, the core's wake-ups), the expiry's clock */
    struct lb_xsk_stats stats;
};

/* ------------------------------------------------------------------ the XDP program */

static int libbpf_quiet(enum libbpf_print_level level, const char *fmt, va_list ap)
{
    if (level == LIBBPF_WARN)
        return vfprintf(stderr, fmt, ap);
    return 0;
}

/* Open obj_path, load it and attach its program prog_name to ifindex (native mode first unless generic
 * was asked for; its refusal is reported in *native_err). share: another program's handle whose
 * lb_shed map this one uses (one bucket for every interface), or NULL. */
static lb_xdp_t *xdp_attach(const char *obj_path, uint32_t ifindex, int mode_pref, uint32_t fastpath_flows,
                            const char *prog_name, const lb_xdp_t *share, int *mode, int *native_err, int *err)
{
    int e = 0;
    *mode = 0;
    *native_err = 0;
    if (!obj_path || ifindex == 0 || mode_pref < 0 || mode_pref > LB_XDP_MODE_GENERIC) {
        *err = -EINVAL;
        return NULL;
    }
    libbpf_set_print(libbpf_quiet);
    struct lb_xdp *x = calloc(1, sizeof(*x));
    if (!x) {
        *err = -ENOMEM;
        return NULL;
    }
    x->link_fd = -1;
    x->ifindex = ifindex;
    x->fastpath_flows = fastpath_flows;
    x->obj = bpf_object__open_file(obj_path, NULL);
    if (!x->obj) {
        e = -errno;
        goto fail;
    }
    if ((e = lb_xsk_fp_prepare(x->obj, fastpath_flows)) < 0)
        goto fail;
    if (share) {
        struct bpf_map *shed = bpf_object__find_map_by_name(x->obj, "lb_shed");
        if (!shed) {
            e = -ENOENT;
            goto fail;
        }
        if ((e = bpf_map__reuse_fd(shed, share->shed_fd)) < 0)
            goto fail;
    }
    if ((e = bpf_object__load(x->obj)) < 0)
        goto fail;
    struct bpf_program *prog = bpf_object__find_program_by_name(x->obj, prog_name);
    x->keys_fd = bpf_object__find_map_fd_by_name(x->obj, "lb_keys");
    x->xsks_fd = bpf_object__find_map_fd_by_name(x->obj, "lb_xsks");
    x->stats_fd = bpf_object__find_map_fd_by_name(x->obj, "lb_stats");
    x->local_fd = bpf_object__find_map_fd_by_name(x->obj, "lb_local");
    x->flows_fd = bpf_object__find_map_fd_by_name(x->obj, "lb_flows");
    x->fdest_fd = bpf_object__find_map_fd_by_name(x->obj, "lb_fdest");
    x->reports_fd = bpf_object__find_map_fd_by_name(x->obj, "lb_reports");
    x->shed_fd = bpf_object__find_map_fd_by_name(x->obj, "lb_shed");
    if (!prog || x->keys_fd < 0 || x->xsks_fd < 0 || x->stats_fd < 0 || x->local_fd < 0 || x->flows_fd < 0 ||
        x->fdest_fd < 0 || x->reports_fd < 0 || x->shed_fd < 0) {
        e = -ENOENT;
        goto fail;
    }
    int prog_fd = bpf_program__fd(prog);
    if (mode_pref != LB_XDP_MODE_GENERIC) {
        LIBBPF_OPTS(bpf_link_create_opts, lo, .flags = XDP_FLAGS_DRV_MODE);
        x->link_fd = bpf_link_create(prog_fd, (int)ifindex, BPF_XDP, &lo);
        if (x->link_fd >= 0)
            x->mode = LB_XDP_MODE_NATIVE;
        else
            *native_err = x->link_fd;
    }
    if (x->link_fd < 0 && mode_pref != LB_XDP_MODE_NATIVE) {
        LIBBPF_OPTS(bpf_link_create_opts, lo, .flags = XDP_FLAGS_SKB_MODE);
        x->link_fd = bpf_link_create(prog_fd, (int)ifindex, BPF_XDP, &lo);
        if (x->link_fd >= 0)
            x->mode = LB_XDP_MODE_GENERIC;
    }
    if (x->link_fd < 0) {
        e = x->link_fd;
        goto fail;
    }
    *mode = x->mode;
    *err = 0;
    return x;
fail:
    *err = e ? e : -EIO;
    lb_xdp_detach(x);
    return NULL;
}

lb_xdp_t *lb_xdp_attach(const char *obj_path, uint32_t ifindex, int mode_pref, uint32_t fastpath_flows, int *mode,
                        int *native_err, int *err)
{
    return xdp_attach(obj_path, ifindex, mode_pref, fastpath_flows, "lb_xdp", NULL, mode, native_err, err);
}

lb_xdp_t *lb_xdp_attach_shed(const char *obj_path, uint32_t ifindex, int mode_pref, const lb_xdp_t *share, int *mode,
                             int *native_err, int *err)
{
    return xdp_attach(obj_path, ifindex, mode_pref, 0, "lb_xdp_shed", share, mode, native_err, err);
}

/* struct lb_shed of lb_xdp.bpf.c: what lbd writes (BPF_F_LOCK leaves the lock alone). */
struct shed_wire {
    uint32_t lock;
    uint32_t pad;
    uint64_t interval_ns;
    uint64_t tolerance_ns;
    uint64_t tat;
};
_Static_assert(sizeof(struct shed_wire) == 32, "struct lb_shed is 32 bytes (a 4-byte lock, padding, 3 x u64)");

int lb_xdp_shed_set(lb_xdp_t *x, uint64_t rate_pps, uint32_t burst)
{
    if (!x)
        return LB_EINVAL;
    struct shed_wire w;
    memset(&w, 0, sizeof(w));
    if (rate_pps) {
        w.interval_ns = rate_pps >= 1000000000ull ? 1 : 1000000000ull / rate_pps;
        w.tolerance_ns = (uint64_t)(burst ? burst - 1 : 0) * w.interval_ns;
    }
    uint32_t zero = 0;
    int r = bpf_map_update_elem(x->shed_fd, &zero, &w, BPF_F_LOCK);
    return r < 0 ? r : LB_OK;
}

void lb_xdp_detach(lb_xdp_t *x)
{
    if (!x)
        return;
    if (x->link_fd >= 0)
        close(x->link_fd); /* the last reference to the link: the program leaves the interface */
    lb_xsk_fp_free(&x->fp);
    if (x->obj)
        bpf_object__close(x->obj);
    free(x);
}

int lb_xdp_key_set(lb_xdp_t *x, const struct lb_xdp_key *k, int present)
{
    if (!x || !k)
        return LB_EINVAL;
    struct lb_xdp_key_wire w;
    memset(&w, 0, sizeof(w));
    w.saddr = htonl(k->saddr);
    w.daddr = htonl(k->daddr);
    w.sport = htons(k->sport);
    w.dport = htons(k->dport);
    w.proto = k->proto;
    uint8_t one = 1;
    int r = present ? bpf_map_update_elem(x->keys_fd, &w, &one, BPF_ANY) : bpf_map_delete_elem(x->keys_fd, &w);
    if (r < 0 && !(r == -ENOENT && !present))
        return r;
    return LB_OK;
}

int lb_xdp_local_set(lb_xdp_t *x, uint32_t addr, int present)
{
    if (!x)
        return LB_EINVAL;
    uint32_t a = htonl(addr);
    uint8_t one = 1;
    int r = present ? bpf_map_update_elem(x->local_fd, &a, &one, BPF_ANY) : bpf_map_delete_elem(x->local_fd, &a);
    if (r < 0 && !(r == -ENOENT && !present))
        return r;
    return LB_OK;
}

void lb_xdp_get_stats(lb_xdp_t *x, struct lb_xdp_stats *out)
{
    if (!x || !out)
        return;
    memset(out, 0, sizeof(*out));
    int ncpu = libbpf_num_possible_cpus();
    if (ncpu <= 0)
        return;
    uint64_t *v = calloc((size_t)ncpu, sizeof(uint64_t));
    if (!v)
        return;
    /* lb_stats' keys in order (lb_xdp.bpf.c ST_*) */
    uint64_t *dst[] = {&out->redirected, &out->passed, &out->fragments_passed, &out->no_socket,
                       &out->fastpath, &out->fp_report_lost, &out->shed};
    for (uint32_t key = 0; key < sizeof(dst) / sizeof(dst[0]); key++) {
        if (bpf_map_lookup_elem(x->stats_fd, &key, v) < 0)
            continue;
        for (int c = 0; c < ncpu; c++)
            *dst[key] += v[c];
    }
    free(v);
    /* The adapter's counts: read without the engine's lock (monotonic, a torn read is harmless). */
    out->fp_installed = __atomic_load_n(&x->fp.installed, __ATOMIC_RELAXED);
    out->fp_removed = __atomic_load_n(&x->fp.removed, __ATOMIC_RELAXED);
    out->fp_refused = __atomic_load_n(&x->fp.refused, __ATOMIC_RELAXED);
    out->fp_credited = __atomic_load_n(&x->fp.credited, __ATOMIC_RELAXED);
    out->fp_stale = __atomic_load_n(&x->fp.stale, __ATOMIC_RELAXED);
}

/* ------------------------------------------------------------------ the fast path (xsk_fp.c) */

/* Register the fast path with the engine (queue 0's socket, once per program); this thread runs its
 * tick and gets its wake-ups (q->wait open). */
static int fp_start(struct lb_xsk *q)
{
    if (q->queue_id != 0)
        return 0;
    int r = lb_xsk_fp_start(q->xdp, q->lb, &q->wait);
    if (r < 0)
        return r;
    q->fp = r;
    if (r)
        q->wait.fp = &q->xdp->fp.wake;
    return 0;
}

static void fp_stop(struct lb_xsk *q)
{
    if (!q->fp)
        return;
    lb_xsk_fp_stop(q->xdp, q->lb);
    q->wait.fp = NULL;
    q->fp = 0;
}

/* ------------------------------------------------------------------ the socket and its thread */

static void fill_frames(struct lb_xsk *q, const uint64_t *addrs, uint32_t n)
{
    uint32_t idx;
    /* The fill ring holds the whole umem: there is always room (see the header comment). */
    if (n == 0 || xsk_ring_prod__reserve(&q->fq, n, &idx) != n) {
        if (n)
            q->stats.fill_lost += n;
        return;
    }
    for (uint32_t i = 0; i < n; i++)
        *xsk_ring_prod__fill_addr(&q->fq, idx + i) = addrs[i];
    xsk_ring_prod__submit(&q->fq, n);
}

/* Frames the kernel finished sending go back to the fill ring. */
static void reap_completions(struct lb_xsk *q)
{
    uint64_t addrs[XSK_BATCH];
    for (;;) {
        uint32_t idx, n = xsk_ring_cons__peek(&q->cq, XSK_BATCH, &idx);
        if (n == 0)
            return;
        for (uint32_t i = 0; i < n; i++)
            addrs[i] = *xsk_ring_cons__comp_addr(&q->cq, idx + i);
        xsk_ring_cons__release(&q->cq, n);
        q->tx_pending -= n <= q->tx_pending ? n : q->tx_pending;
        fill_frames(q, addrs, n);
    }
}

static void kick_tx(struct lb_xsk *q)
{
    if (!q->tx_pending)
        return;
    /* Copy mode always needs the syscall to transmit; zero-copy only when the driver asks. */
    if (!q->zerocopy || xsk_ring_prod__needs_wakeup(&q->tx))
        sendto(xsk_socket__fd(q->xsk), NULL, 0, MSG_DONTWAIT, NULL, 0);
}

/* Put frame addr (len bytes) on the TX ring; 0 when the ring stays full. */
static int tx_frame(struct lb_xsk *q, uint64_t addr, uint32_t len)
{
    uint32_t idx;
    for (int tries = 0; tries < XSK_TX_TRIES; tries++) {
        if (xsk_ring_prod__reserve(&q->tx, 1, &idx) == 1) {
            struct xdp_desc *d = xsk_ring_prod__tx_desc(&q->tx, idx);
            d->addr = addr;
            d->len = len;
            xsk_ring_prod__submit(&q->tx, 1);
            q->tx_pending++;
            return 1;
        }
        kick_tx(q);
        reap_completions(q);
    }
    return 0;
}

/* Count each queued packet sent or not, then empty the queue. */
static void txq_account(struct lb_xsk *q, struct xsk_txq *t)
{
    for (uint32_t p = 0; p < t->npkt; p++) {
        int ok = 1;
        for (uint32_t j = 0; j < t->pkt[p].count; j++)
            if (t->err[t->pkt[p].first + j])
                ok = 0;
        if (t->pkt[p].kind == TXQ_TIMER) {
            if (ok)
                q->stats.timer_frames++;
            else
                q->stats.xmit_l2_err++;
            if (ok && t->pkt[p].count > 1) { /* a held packet sent as fragments */
                q->stats.frag_packets++;
                q->stats.frag_out += t->pkt[p].count;
            }
            continue;
        }
        if (!ok) {
            q->stats.xmit_l2_err++;
            lb_count_xmit_failed(q->lb, t->pkt[p].reason);
            continue;
        }
        q->stats.xmit_l2++;
        if (t->pkt[p].kind == TXQ_FRAGMENTS) {
            q->stats.frag_packets++;
            q->stats.frag_out += t->pkt[p].count;
        }
    }
    t->n = 0;
    t->npkt = 0;
}

/* Send every queued frame: one sendmmsg() for all of them when the socket takes them. sendmmsg()
 * stops at the first frame that fails; a full socket buffer (EAGAIN: poll for POLLOUT) or device
 * queue (ENOBUFS: the frame was dropped, so sending it again is no duplicate; the socket stays
 * writable, so poll would not wait: a short sleep lets the queue drain) is waited for, at most
 * XSK_TXQ_WAITS times per flush, after which the rest counts as not sent; any other error
 * (EMSGSIZE, ENETDOWN, ENXIO: the frame's interface) fails that frame alone. */
static void txq_flush(struct lb_xsk *q)
{
    struct xsk_txq *t = q->txq;
    if (t->n == 0)
        return;
    uint32_t i = 0;
    int waits = 0;
    while (i < t->n) {
        q->stats.xmit_l2_calls++;
        int r = sendmmsg(q->pkt_fd, t->msg + i, t->n - i, MSG_DONTWAIT);
        if (r > 0) {
            for (uint32_t j = 0; j < (uint32_t)r && i < t->n; j++)
                t->err[i++] = 0;
            continue;
        }
        int e = r < 0 ? errno : EIO;
        int full = e == EAGAIN || e == EWOULDBLOCK || e == ENOBUFS || e == EINTR;
        if (full && waits < XSK_TXQ_WAITS) {
            q->stats.xmit_l2_waits++;
            if (e == ENOBUFS) {
                struct timespec ts = {.tv_sec = 0, .tv_nsec = (long)XSK_TXQ_NOBUFS_US * 1000L << waits};
                nanosleep(&ts, NULL);
            } else {
                struct pollfd pfd = {.fd = q->pkt_fd, .events = POLLOUT};
                poll(&pfd, 1, XSK_TXQ_WAIT_MS);
            }
            waits++;
            continue;
        }
        if (full) {
            while (i < t->n)
                t->err[i++] = e;
            break;
        }
        t->err[i++] = e;
    }
    txq_account(q, t);
}

/* Queue packet ip[0..len) (or its fragments, nfrag > 0: frag_len[] bytes each, back to back from
 * ip) behind a's Ethernet header; the caller makes room (txq_room) first. */
static void txq_add(struct lb_xsk *q, const struct lb_action *a, const uint8_t *ip, uint32_t len,
                    const uint32_t *frag_len, uint32_t nfrag, enum xsk_txq_kind kind)
{
    struct xsk_txq *t = q->txq;
    uint32_t count = nfrag ? nfrag : 1;
    if (count > XSK_TXQ_MAX - t->n || t->npkt >= XSK_TXQ_MAX) { /* txq_room prevents it; counted, never lost */
        q->stats.xmit_l2_err++;
        if (kind != TXQ_TIMER)
            lb_count_xmit_failed(q->lb, a->reason);
        return;
    }
    t->pkt[t->npkt].first = t->n;
    t->pkt[t->npkt].count = count;
    t->pkt[t->npkt].reason = a->reason;
    t->pkt[t->npkt].kind = (uint8_t)kind;
    t->npkt++;
    const uint8_t *p = ip;
    for (uint32_t j = 0; j < count; j++) {
        uint32_t k = t->n++;
        uint32_t plen = nfrag ? frag_len[j] : len;
        memcpy(t->l2hdr[k], a->l2hdr, LB_L2HDR_LEN);
        struct sockaddr_ll *sll = &t->sll[k];
        memset(sll, 0, sizeof(*sll));
        sll->sll_family = AF_PACKET;
        sll->sll_ifindex = a->ifindex;
        sll->sll_protocol = htons(ETH_P_IP);
        sll->sll_halen = 6;
        memcpy(sll->sll_addr, a->l2hdr, 6);
        t->iov[k][0].iov_base = t->l2hdr[k];
        t->iov[k][0].iov_len = LB_L2HDR_LEN;
        t->iov[k][1].iov_base = (void *)p;
        t->iov[k][1].iov_len = plen;
        memset(&t->msg[k], 0, sizeof(t->msg[k]));
        t->msg[k].msg_hdr.msg_name = sll;
        t->msg[k].msg_hdr.msg_namelen = sizeof(*sll);
        t->msg[k].msg_hdr.msg_iov = t->iov[k];
        t->msg[k].msg_hdr.msg_iovlen = 2;
        t->err[k] = 0;
        p += plen;
    }
}

/* Room for count more frames, flushing what is queued when there is not. */
static void txq_room(struct lb_xsk *q, uint32_t count)
{
    if (count > XSK_TXQ_MAX - q->txq->n || q->txq->npkt >= XSK_TXQ_MAX)
        txq_flush(q);
}

/* A packet larger than its path MTU with DF clear (a->frag_mtu), as the kernel's ip_fragment cuts
 * what IPVS sends on: its fragments, each in its own frame on the packet socket. They are cut into
 * q->frag, which the next fragmented packet reuses: sent at once, after what was queued before
 * them (the order of a connection's packets stays). Returns 0 (the frame goes back to the fill ring). */
static int send_fragmented(struct lb_xsk *q, const struct lb_action *a, const uint8_t *ip, uint32_t len,
                           enum xsk_txq_kind kind)
{
    int k = lb_ip_fragment(ip, len, a->frag_mtu, q->frag, XSK_FRAG_BUF, q->frag_len, XSK_FRAG_MAX);
    if (k <= 0 || (uint32_t)k > XSK_TXQ_MAX) {
        q->stats.xmit_l2_err++;
        if (kind != TXQ_TIMER) /* a held packet was counted l2_queued, never forwarded */
            lb_count_xmit_failed(q->lb, a->reason);
        return 0;
    }
    txq_room(q, (uint32_t)k);
    txq_add(q, a, q->frag, 0, q->frag_len, (uint32_t)k, kind);
    txq_flush(q);
    return 0;
}

/* What lb_process decided for the packet ip[0..len) of frame addr (whose bytes start at frame).
 * Returns 1 when the frame went on the TX ring (the completion ring gives it back), else 0. */
static int act_on(struct lb_xsk *q, const struct lb_action *a, uint8_t *frame, uint64_t addr, const uint8_t *ip,
                  uint32_t len, const uint8_t *out)
{
    const uint8_t *res = a->out_len ? out : ip;
    uint32_t res_len = a->out_len ? a->out_len : len;
    switch (a->verdict) {
    case LB_V_XMIT_L2:
        /* The frame's room: from its data (addr, after the headroom) to the end of its chunk. */
        if ((uint32_t)a->ifindex == q->xdp->ifindex && !a->frag_mtu &&
            LB_L2HDR_LEN + res_len <= XSK_FRAME_SIZE - (uint32_t)(addr & (XSK_FRAME_SIZE - 1))) {
            if (a->out_len)
                memmove(frame + LB_L2HDR_LEN, out, a->out_len);
            memcpy(frame, a->l2hdr, LB_L2HDR_LEN);
            if (tx_frame(q, addr, LB_L2HDR_LEN + res_len)) {
                q->stats.xmit_xsk++;
                return 1;
            }
        }
        if (a->frag_mtu && res_len > a->frag_mtu)
            return send_fragmented(q, a, res, res_len, TXQ_FRAGMENTS);
        /* res is the umem frame's packet or q->out's slot: both stay until process_rx's flush. */
        txq_room(q, 1);
        txq_add(q, a, res, res_len, NULL, 0, TXQ_FORWARD);
        return 0;
    case LB_V_ANSWER:
        if (lb_adapter_send_raw(q->raw_fd, out, a->out_len) < 0) {
            q->stats.answer_err++;
            lb_count_xmit_failed(q->lb, a->reason);
        } else {
            q->stats.answers++;
        }
        return 0;
    case LB_V_ACCEPT:
    case LB_V_MANGLE:
        if (lb_adapter_send_raw(q->raw_fd, res, res_len) < 0)
            q->stats.pass_err++;
        else
            q->stats.passed++;
        return 0;
    default:
        return 0;
    }
}

static void process_rx(struct lb_xsk *q)
{
    uint32_t idx;
    uint32_t n = xsk_ring_cons__peek(&q->rx, XSK_BATCH, &idx);
    if (n == 0)
        return;
    uint64_t addrs[XSK_BATCH], back[XSK_BATCH];
    uint32_t lens[XSK_BATCH];
    struct lb_action acts[XSK_BATCH];
    for (uint32_t i = 0; i < n; i++) {
        const struct xdp_desc *d = xsk_ring_cons__rx_desc(&q->rx, idx + i);
        addrs[i] = d->addr;
        lens[i] = d->len;
    }
    xsk_ring_cons__release(&q->rx, n);
    q->stats.packets += n;
    q->stats.batches++;
    uint64_t t = lb_adapter_now_ms();
    pthread_mutex_lock(&q->lb->lock);
    for (uint32_t i = 0; i < n; i++) {
        memset(&acts[i], 0, sizeof(acts[i]));
        uint8_t *f = xsk_umem__get_data(q->umem_area, addrs[i]);
        /* The XDP program only redirects untagged IPv4 frames; check anyway. */
        if (lens[i] <= LB_L2HDR_LEN || lens[i] > XSK_FRAME_SIZE || f[12] != 0x08 || f[13] != 0x00) {
            acts[i].verdict = LB_V_DROP;
            q->stats.bad_frames++;
            continue;
        }
        lb_process_pkt(q->lb, f + LB_L2HDR_LEN, lens[i] - LB_L2HDR_LEN, 0, 0, t, q->out + (size_t)i * LB_PKT_MAX,
                       LB_PKT_MAX, &acts[i]);
    }
    pthread_mutex_unlock(&q->lb->lock);
    uint32_t nback = 0;
    for (uint32_t i = 0; i < n; i++) {
        uint8_t *f = xsk_umem__get_data(q->umem_area, addrs[i]);
        /* Malformed frames were given LB_V_DROP above: only frames of more than a header get here. */
        int on_tx = acts[i].verdict == LB_V_DROP
                        ? 0
                        : act_on(q, &acts[i], f, addrs[i], f + LB_L2HDR_LEN, lens[i] - LB_L2HDR_LEN,
                                 q->out + (size_t)i * LB_PKT_MAX);
        if (!on_tx)
            back[nback++] = addrs[i];
    }
    txq_flush(q); /* before the frames it points into go back to the fill ring */
    kick_tx(q);
    fill_frames(q, back, nback);
}

static void process_timers(struct lb_xsk *q)
{
    for (int rounds = 0; rounds < 64; rounds++) {
        struct lb_action a;
        memset(&a, 0, sizeof(a));
        pthread_mutex_lock(&q->lb->lock);
        int got = lb_timer_next(q->lb, lb_adapter_now_ms(), q->out, LB_PKT_MAX, &a);
        pthread_mutex_unlock(&q->lb->lock);
        if (!got)
            return;
        if (a.verdict == LB_V_XMIT_L2 && a.out_len && a.frag_mtu) {
            /* a held packet over the path MTU without DF: its fragments, as an unheld one's */
            send_fragmented(q, &a, q->out, a.out_len, TXQ_TIMER);
        } else if (a.verdict == LB_V_XMIT_L2 && a.out_len) {
            /* q->out is the next round's buffer: sent now (the receive batch's queue is empty here) */
            txq_room(q, 1);
            txq_add(q, &a, q->out, a.out_len, NULL, 0, TXQ_TIMER);
            txq_flush(q);
        } else if (a.verdict == LB_V_ANSWER) {
            if (lb_adapter_send_raw(q->raw_fd, q->out, a.out_len) == 0)
                q->stats.timer_frames++;
            else
                q->stats.xmit_l2_err++;
        }
    }
}

/* How long to sleep: 1 ms with frames on the TX ring (completions to reap); else until the timers,
 * the expiry or the fast path's tick have work (lb_adapter.h), at most LB_ADAPTER_IDLE_MS; a thread
 * with neither waits for frames or its stop only. */
static int poll_timeout_ms(struct lb_xsk *q)
{
    if (q->tx_pending)
        return 1;
    int timers = (q->flags & LB_XSK_F_TIMERS) != 0;
    if (!timers && !q->fp)
        return -1;
    uint64_t now = lb_adapter_now_ms();
    pthread_mutex_lock(&q->lb->lock);
    uint64_t due = timers ? lb_adapter_due_locked(q->lb, &q->wait) : UINT64_MAX;
    if (q->fp) {
        uint64_t f = lb_xsk_fp_due_locked(q->xdp, q->lb, now);
        due = f < due ? f : due;
    }
    int cap = timers && !q->wait.timers ? LB_ADAPTER_POLL_UNREGISTERED_MS : LB_ADAPTER_IDLE_MS;
    int ms = lb_adapter_sleep_ms_locked(&q->wait, due, now, cap);
    pthread_mutex_unlock(&q->lb->lock);
    return ms;
}

static void *xsk_thread(void *arg)
{
    struct lb_xsk *q = arg;
    int fd = xsk_socket__fd(q->xsk);
    while (!__atomic_load_n(&q->stop, __ATOMIC_ACQUIRE)) {
        short rev = lb_adapter_poll(&q->wait, fd, POLLIN, poll_timeout_ms(q));
        if (rev & POLLIN)
            process_rx(q);
        reap_completions(q);
        if (q->fp)
            lb_xsk_fp_tick(q->xdp, q->lb);
        if (!(q->flags & LB_XSK_F_TIMERS))
            continue;
        process_timers(q);
        lb_adapter_expire_tick(q->lb, &q->wait);
        lb_adapter_est_tick(q->lb, &q->wait);
    }
    return NULL;
}

static void xsk_free(struct lb_xsk *q)
{
    if (!q)
        return;
    fp_stop(q);
    if (q->xsk) {
        uint32_t key = q->queue_id;
        bpf_map_delete_elem(q->xdp->xsks_fd, &key);
        xsk_socket__delete(q->xsk);
    }
    if (q->umem)
        xsk_umem__delete(q->umem);
    if (q->umem_area)
        munmap(q->umem_area, (size_t)XSK_FRAMES * XSK_FRAME_SIZE);
    if (q->pkt_fd >= 0)
        close(q->pkt_fd);
    if (q->raw_fd >= 0)
        close(q->raw_fd);
    lb_adapter_wait_close(&q->wait, q->lb);
    free(q->out);
    free(q->frag);
    free(q->txq);
    free(q);
}

static int xsk_open(struct lb_xsk *q, const char *ifname, int zerocopy)
{
    struct xsk_socket_config cfg;
    memset(&cfg, 0, sizeof(cfg));
    cfg.rx_size = XSK_RING;
    cfg.tx_size = XSK_RING;
    cfg.libxdp_flags = XSK_LIBXDP_FLAGS__INHIBIT_PROG_LOAD; /* our program, attached by lb_xdp_attach */
    cfg.bind_flags = (uint16_t)((zerocopy ? XDP_ZEROCOPY : XDP_COPY) | XDP_USE_NEED_WAKEUP);
    return xsk_socket__create(&q->xsk, ifname, q->queue_id, q->umem, &q->rx, &q->tx, &cfg);
}

lb_xsk_t *lb_xsk_start(lb_t *lb, lb_xdp_t *xdp, const struct lb_xsk_opts *opts, int *err)
{
    int e = 0;
    char ifname[IF_NAMESIZE];
    if (!lb || !xdp || !opts || opts->cpu < -1 || opts->cpu >= CPU_SETSIZE || !if_indextoname(xdp->ifindex, ifname)) {
        *err = -EINVAL;
        return NULL;
    }
    struct lb_xsk *q = calloc(1, sizeof(*q));
    if (!q) {
        *err = -ENOMEM;
        return NULL;
    }
    q->lb = lb;
    q->xdp = xdp;
    q->queue_id = opts->queue_id;
    q->flags = opts->flags;
    q->pkt_fd = -1;
    q->raw_fd = -1;
    q->wait.efd = -1;
    q->out = calloc(XSK_BATCH, LB_PKT_MAX);
    q->frag = calloc(1, XSK_FRAG_BUF);
    q->txq = calloc(1, sizeof(*q->txq));
    q->umem_area = mmap(NULL, (size_t)XSK_FRAMES * XSK_FRAME_SIZE, PROT_READ | PROT_WRITE,
                        MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (q->umem_area == MAP_FAILED) {
        q->umem_area = NULL;
        e = -errno;
        goto fail;
    }
    if (!q->out || !q->frag || !q->txq) {
        e = -ENOMEM;
        goto fail;
    }
    struct xsk_umem_config ucfg = {.fill_size = XSK_FRAMES, .comp_size = XSK_FRAMES, .frame_size = XSK_FRAME_SIZE,
                                   .frame_headroom = 0, .flags = 0};
    if ((e = xsk_umem__create(&q->umem, q->umem_area, (uint64_t)XSK_FRAMES * XSK_FRAME_SIZE, &q->fq, &q->cq,
                              &ucfg)) < 0)
        goto fail;
    /* Zero-copy when the driver offers it (and it was not refused by the caller), copy otherwise. */
    e = -EOPNOTSUPP;
    if (!(opts->flags & LB_XSK_F_COPY))
        e = xsk_open(q, ifname, 1);
    if (e == 0) {
        q->zerocopy = 1;
    } else {
        q->stats.zerocopy_err = (uint64_t)-e;
        if ((e = xsk_open(q, ifname, 0)) < 0)
            goto fail;
    }
    uint64_t addrs[XSK_BATCH];
    for (uint32_t f = 0; f < XSK_FRAMES; f += XSK_BATCH) {
        for (uint32_t i = 0; i < XSK_BATCH; i++)
            addrs[i] = (uint64_t)(f + i) * XSK_FRAME_SIZE;
        fill_frames(q, addrs, XSK_BATCH);
    }
    q->pkt_fd = socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, 0);
    q->raw_fd = socket(AF_INET, SOCK_RAW | SOCK_CLOEXEC, IPPROTO_RAW);
    if (q->pkt_fd < 0 || q->raw_fd < 0) {
        e = -errno;
        goto fail;
    }
    lb_adapter_sndbuf(q->raw_fd, XSK_SNDBUF_BYTES);
    lb_adapter_sndbuf(q->pkt_fd, XSK_SNDBUF_BYTES);
    if (opts->flags & LB_XSK_F_QDISC_BYPASS) {
        int bypass = 1;
        if (setsockopt(q->pkt_fd, SOL_PACKET, PACKET_QDISC_BYPASS, &bypass, sizeof(bypass)) < 0) {
            e = -errno;
            goto fail;
        }
    }
    uint32_t mark = LB_SOCKET_MARK_BASE | opts->mark_queue;
    if (setsockopt(q->raw_fd, SOL_SOCKET, SO_MARK, &mark, sizeof(mark)) < 0) {
        e = -errno;
        goto fail;
    }
    /* Only now may the program redirect this queue's packets here. */
    uint32_t key = q->queue_id;
    int fd = xsk_socket__fd(q->xsk);
    if (bpf_map_update_elem(xdp->xsks_fd, &key, &fd, BPF_ANY) < 0) {
        e = -errno;
        goto fail;
    }
    if ((e = lb_adapter_wait_open(&q->wait, lb, (opts->flags & LB_XSK_F_TIMERS) != 0)) < 0)
        goto fail;
    if ((e = fp_start(q)) < 0)
        goto fail;
    char name[16];
    snprintf(name, sizeof(name), "lbd-xsk%u", q->queue_id % 10000u);
    if ((e = lb_adapter_thread_start(&q->thread, opts->cpu, name, xsk_thread, q)) < 0)
        goto fail;
    q->thread_started = 1;
    *err = 0;
    return q;
fail:
    *err = e ? e : -EIO;
    xsk_free(q);
    return NULL;
}

int lb_xsk_stop(lb_xsk_t *q)
{
    if (!q)
        return LB_EINVAL;
    __atomic_store_n(&q->stop, 1, __ATOMIC_RELEASE);
    if (q->thread_started) {
        lb_adapter_wait_kick(&q->wait); /* out of its poll now, not at its next timeout */
        pthread_join(q->thread, NULL);
    }
    fp_stop(q);
    xsk_free(q);
    return LB_OK;
}

int lb_xsk_zerocopy(lb_xsk_t *q)
{
    return q ? q->zerocopy : 0;
}

void lb_xsk_get_stats(lb_xsk_t *q, struct lb_xsk_stats *out)
{
    if (!q || !out)
        return;
    *out = q->stats; /* monotonic counters; a torn snapshot is harmless */
    struct xdp_statistics xs;
    socklen_t len = sizeof(xs);
    memset(&xs, 0, sizeof(xs));
    if (getsockopt(xsk_socket__fd(q->xsk), SOL_XDP, XDP_STATISTICS, &xs, &len) == 0) {
        out->kernel_rx_dropped = xs.rx_dropped;
        out->kernel_rx_ring_full = xs.rx_ring_full;
        out->kernel_fill_empty = xs.rx_fill_ring_empty_descs;
    }
}
