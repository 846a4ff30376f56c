/*
 * pktgen.c - a paced packet generator for the zero-loss search (bench/pps).
 *
 * Why not trafgen alone: on this machine (a VM with coarse timers) trafgen's
 * `-b RATE` sends a whole second's worth of packets back to back and then
 * sleeps (its shaper resets once per second), and `-t GAP` sleeps once per
 * packet, which floors at ~60-70 us per packet (~15 kpps). Neither gives a
 * smooth offered load between 15 kpps and the path limit, which is what an
 * RFC 2544 search needs. This tool paces by the clock: packet i is due at
 * t0 + i / rate; due packets leave in batches of at most --batch frames, and
 * it never catches up with a burst larger than one batch. trafgen is still
 * used for the unpaced path limit (see bench/pps.py).
 *
 * Transmit: sendmmsg() of up to --batch frames (<= 1024) per call on an
 * AF_PACKET socket that bypasses the qdisc (PACKET_QDISC_BYPASS: the frame
 * goes straight to the driver). Each batch slot holds a copy of the template
 * from the start; per packet only the source address, the source port and
 * the two checksums are rewritten, the checksums from precomputed partial
 * sums. Measured here (bench/genmax.py, unpaced, 60-byte frames, a veth
 * straight into a sink namespace whose receive runs on the other CPU):
 * ~1.1-1.2 Mpps on a moderately loaded machine, ~0.5 Mpps when it is busy;
 * the kernel's AF_PACKET + veth path dominates, so the previous version
 * (template copied, both checksums summed per packet) is within the noise of
 * this one (bench/README.md). What limited the bench was the wiring: through
 * a bridge the sender's CPU also runs the bridge (bench/wire.py). A
 * PACKET_TX_RING variant was tried and dropped: its frames reach the stack as
 * paged skbs that the receiver must pull, slower than sendmmsg on veth
 * (41 kpps vs 1.2 Mpps direct; 168 vs 303 kpps through a bridge).
 *
 * Frames: one Ethernet+IPv4+TCP/UDP template (read from --template FILE, built
 * by bench/pps.py with scapy). Each packet i varies the flow:
 *   sport = sport_base + (k % flows_per_addr)
 *   saddr = saddr_base + (k / flows_per_addr) % addrs      (k = seq_start + i % flows)
 * and gets fresh IPv4 and TCP (UDP) checksums. --flows 0 = never repeat
 * (k = seq_start + i).
 *
 * Counting (what the zero-loss search needs): every frame is attempted once.
 * `sent` = frames the device accepted; `errors` = frames it refused (e.g. a
 * veth whose peer's backlog is full answers ENOBUFS: the receiver's loss, not
 * retried); sent + errors = attempted. `elapsed_s` runs from the first frame
 * to the last call's return.
 *
 * Bounded: stops after --count packets or --max-seconds, whichever first.
 * Prints one JSON line:
 *   {"sent":..,"errors":..,"elapsed_s":..,"next_seq":..,"attempted":..,"calls":..,
 *    "batch":..,"last_errno":..}
 *
 * --dry-run FILE: no socket, no pacing; writes the --count frames (<= 1,000,000)
 * back to back into FILE (tests check them with scapy).
 *
 * Usage: pktgen --iface IF --template FILE --rate PPS(0 = unpaced) --count N
 *               [--max-seconds S] [--batch B] [--flows F]
 *               [--seq-start K] [--flows-per-addr P] [--addrs A] [--dry-run FILE]
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_BATCH 1024 /* sendmmsg's limit (UIO_MAXIOV) */
#define MAX_FRAME 256
#define MAX_DRY_RUN 1000000

#ifndef PACKET_QDISC_BYPASS
#define PACKET_QDISC_BYPASS 20
#endif

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Sum of the big-endian 16-bit words of b[0..len) (an odd last byte padded with zero). */
static uint32_t csum_add(const uint8_t *b, size_t len, uint32_t sum)
{
    for (size_t i = 0; i + 1 < len; i += 2)
        sum += (uint32_t)(b[i] << 8 | b[i + 1]);
    if (len & 1)
        sum += (uint32_t)b[len - 1] << 8;
    return sum;
}

static uint16_t csum_fold(uint32_t sum)
{
    while (sum >> 16)
        sum = (sum & 0xffff) + (sum >> 16);
    return (uint16_t)~sum;
}

struct gen {
    uint8_t tmpl[MAX_FRAME];
    size_t len;
    size_t ip;      /* offset of the IPv4 header */
    size_t l4;      /* offset of the TCP/UDP header */
    size_t l4len;
    size_t csoff;   /* offset of the L4 checksum inside the L4 header */
    uint8_t proto;
    uint32_t ip_part;  /* IPv4 header sum without the source address and the checksum */
    uint32_t l4_part;  /* pseudo header + segment sum without saddr, sport and the checksum */
    uint32_t saddr_base; /* host order */
    uint16_t sport_base; /* host order */
    uint64_t flows, flows_per_addr, addrs, seq_start;
};

/* Parses and checks the template (every offset used later is inside g->len), precomputes the
 * partial checksums. Returns NULL or why the template is unusable. */
static const char *gen_prepare(struct gen *g)
{
    if (g->len < 14 + 20 + 8 || g->tmpl[12] != 0x08 || g->tmpl[13] != 0x00 || (g->tmpl[14] >> 4) != 4)
        return "template is not Ethernet/IPv4";
    g->ip = 14;
    size_t ihl = (size_t)(g->tmpl[14] & 15) * 4;
    if (ihl < 20 || g->ip + ihl > g->len)
        return "template's IPv4 header length is out of bounds";
    g->l4 = g->ip + ihl;
    size_t tot = (size_t)(g->tmpl[g->ip + 2] << 8 | g->tmpl[g->ip + 3]);
    g->proto = g->tmpl[g->ip + 9];
    if ((g->proto != 6 && g->proto != 17) || g->ip + tot > g->len || tot < ihl + 8)
        return "template must be TCP or UDP with a consistent total length";
    g->l4len = g->ip + tot - g->l4;
    g->csoff = g->proto == 6 ? 16 : 6;
    if (g->proto == 6 && g->l4len < 20)
        return "template's TCP header is truncated";
    uint32_t sa;
    memcpy(&sa, g->tmpl + g->ip + 12, 4);
    g->saddr_base = ntohl(sa);
    g->sport_base = (uint16_t)(g->tmpl[g->l4] << 8 | g->tmpl[g->l4 + 1]);

    uint8_t tmp[MAX_FRAME];
    memcpy(tmp, g->tmpl + g->ip, ihl);
    memset(tmp + 10, 0, 6); /* checksum and source address */
    g->ip_part = csum_add(tmp, ihl, 0);
    memcpy(tmp, g->tmpl + g->l4, g->l4len);
    memset(tmp, 0, 2);            /* source port */
    memset(tmp + g->csoff, 0, 2); /* checksum */
    uint32_t s = csum_add(g->tmpl + g->ip + 16, 4, 0); /* destination address */
    s += g->proto;
    s += (uint32_t)g->l4len;
    g->l4_part = csum_add(tmp, g->l4len, s);
    return NULL;
}

/* Rewrites frame f (a copy of the template, g->len bytes) for packet i: source address,
 * source port, both checksums. */
static void fill(const struct gen *g, uint8_t *f, uint64_t i)
{
    uint64_t k = g->flows ? g->seq_start + i % g->flows : g->seq_start + i;
    uint16_t sport = (uint16_t)(g->sport_base + k % g->flows_per_addr);
    uint32_t saddr = g->saddr_base + (uint32_t)((k / g->flows_per_addr) % g->addrs);
    uint8_t *iph = f + g->ip, *th = f + g->l4;
    uint32_t sa_words = (saddr >> 16) + (saddr & 0xffff);
    iph[12] = (uint8_t)(saddr >> 24);
    iph[13] = (uint8_t)(saddr >> 16);
    iph[14] = (uint8_t)(saddr >> 8);
    iph[15] = (uint8_t)saddr;
    th[0] = (uint8_t)(sport >> 8);
    th[1] = (uint8_t)sport;
    uint16_t c = csum_fold(g->ip_part + sa_words);
    iph[10] = (uint8_t)(c >> 8);
    iph[11] = (uint8_t)c;
    c = csum_fold(g->l4_part + sa_words + sport);
    if (g->proto == 17 && c == 0)
        c = 0xffff;
    th[g->csoff] = (uint8_t)(c >> 8);
    th[g->csoff + 1] = (uint8_t)c;
}

struct counts {
    uint64_t sent, errors, calls;
    int last_errno;
};

/* ------------------------------------------------------------------ sendmmsg */

struct mmsg_tx {
    int fd;
    struct sockaddr_ll sll;
    uint8_t (*frames)[MAX_FRAME];
    struct mmsghdr msgs[MAX_BATCH];
    struct iovec iov[MAX_BATCH];
};

static void mmsg_init(struct mmsg_tx *t, const struct gen *g, int batch)
{
    for (int j = 0; j < batch; j++) {
        memcpy(t->frames[j], g->tmpl, g->len);
        t->iov[j].iov_base = t->frames[j];
        t->iov[j].iov_len = g->len;
        memset(&t->msgs[j], 0, sizeof(t->msgs[j]));
        t->msgs[j].msg_hdr.msg_name = &t->sll;
        t->msgs[j].msg_hdr.msg_namelen = sizeof(t->sll);
        t->msgs[j].msg_hdr.msg_iov = &t->iov[j];
        t->msgs[j].msg_hdr.msg_iovlen = 1;
    }
}

/* Packets i .. i+n-1, each attempted once. sendmmsg stops at the first frame that fails (and
 * reports the error only when it is the first): that frame counts as refused and is skipped. */
static void mmsg_send(struct mmsg_tx *t, const struct gen *g, uint64_t i, int n, struct counts *c)
{
    for (int j = 0; j < n; j++)
        fill(g, t->frames[j], i + (uint64_t)j);
    int done = 0;
    while (done < n) {
        int r = sendmmsg(t->fd, t->msgs + done, (unsigned)(n - done), 0);
        c->calls++;
        if (r < 0) {
            if (errno == EINTR)
                continue;
            c->last_errno = errno;
            c->errors++;
            done++;
            continue;
        }
        c->sent += (uint64_t)r;
        done += r;
        if (done < n) { /* stopped at frame `done`: it failed (its errno is not reported) */
            c->errors++;
            done++;
        }
    }
}

/* ------------------------------------------------------------------ main */

static int usage(void)
{
    fprintf(stderr, "usage: pktgen --iface IF --template FILE --rate PPS --count N [--max-seconds S] "
                    "[--batch B] [--flows F] [--seq-start K] [--flows-per-addr P] "
                    "[--addrs A] [--dry-run FILE]\n");
    return 2;
}

static int dry_run(const struct gen *g, const char *path, uint64_t count)
{
    FILE *f = fopen(path, "wb");
    if (!f) {
        perror(path);
        return 1;
    }
    uint8_t frame[MAX_FRAME];
    memcpy(frame, g->tmpl, g->len);
    for (uint64_t i = 0; i < count; i++) {
        fill(g, frame, i);
        if (fwrite(frame, 1, g->len, f) != g->len) {
            perror(path);
            fclose(f);
            return 1;
        }
    }
    if (fclose(f) != 0) {
        perror(path);
        return 1;
    }
    printf("{\"sent\": 0, \"errors\": 0, \"elapsed_s\": 0, \"next_seq\": %llu, \"dry_run\": %llu, "
           "\"frame_len\": %zu}\n",
           (unsigned long long)(g->flows ? g->seq_start : g->seq_start + count), (unsigned long long)count,
           g->len);
    return 0;
}

int main(int argc, char **argv)
{
    const char *iface = NULL, *tpath = NULL, *dry = NULL;
    double rate = 0, max_s = 10;
    uint64_t count = 0;
    int batch = 32;
    static struct gen g;
    g.flows = 1024;
    g.flows_per_addr = 64000;
    g.addrs = 1;
    for (int i = 1; i < argc; i += 2) {
        if (i + 1 >= argc)
            return usage();
        const char *k = argv[i], *v = argv[i + 1];
        if (!strcmp(k, "--iface")) iface = v;
        else if (!strcmp(k, "--template")) tpath = v;
        else if (!strcmp(k, "--rate")) rate = atof(v);
        else if (!strcmp(k, "--count")) count = strtoull(v, NULL, 10);
        else if (!strcmp(k, "--max-seconds")) max_s = atof(v);
        else if (!strcmp(k, "--batch")) batch = atoi(v);
        else if (!strcmp(k, "--flows")) g.flows = strtoull(v, NULL, 10);
        else if (!strcmp(k, "--seq-start")) g.seq_start = strtoull(v, NULL, 10);
        else if (!strcmp(k, "--flows-per-addr")) g.flows_per_addr = strtoull(v, NULL, 10);
        else if (!strcmp(k, "--addrs")) g.addrs = strtoull(v, NULL, 10);
        else if (!strcmp(k, "--dry-run")) dry = v;
        else return usage();
    }
    if ((!iface && !dry) || !tpath || !count || batch < 1 || batch > MAX_BATCH || !g.flows_per_addr || !g.addrs ||
        !(max_s > 0 && max_s <= 600) || !(rate >= 0 && rate <= 1e9) || (dry && count > MAX_DRY_RUN))
        return usage();

    FILE *tf = fopen(tpath, "rb");
    if (!tf) {
        perror(tpath);
        return 1;
    }
    g.len = fread(g.tmpl, 1, sizeof(g.tmpl), tf);
    fclose(tf);
    const char *why = gen_prepare(&g);
    if (why) {
        fprintf(stderr, "pktgen: %s\n", why);
        return 1;
    }
    if (dry)
        return dry_run(&g, dry, count);

    int fd = socket(AF_PACKET, SOCK_RAW, 0);
    if (fd < 0) {
        perror("socket(AF_PACKET)");
        return 1;
    }
    int one = 1;
    setsockopt(fd, SOL_PACKET, PACKET_QDISC_BYPASS, &one, sizeof(one));
    struct sockaddr_ll sll;
    memset(&sll, 0, sizeof(sll));
    sll.sll_family = AF_PACKET;
    sll.sll_ifindex = (int)if_nametoindex(iface);
    sll.sll_protocol = htons(ETH_P_IP);
    if (!sll.sll_ifindex) {
        fprintf(stderr, "pktgen: no interface %s\n", iface);
        return 1;
    }

    static struct mmsg_tx mt;
    mt.fd = fd;
    mt.sll = sll;
    mt.frames = calloc((size_t)batch, MAX_FRAME);
    if (!mt.frames) {
        perror("calloc");
        return 1;
    }
    mmsg_init(&mt, &g, batch);

    struct counts c = {0, 0, 0, 0};
    uint64_t i = 0;
    double t0 = now_s(), t = t0, deadline = t0 + max_s;
    while (i < count && t < deadline) {
        int n;
        if (rate > 0) {
            /* Packets due by now, at most one batch. Spin (no sleep: timers are coarse here),
             * yielding the CPU while more than 50 us ahead. */
            uint64_t due = (uint64_t)((t - t0) * rate) + 1;
            if (due > count)
                due = count;
            if (due <= i) {
                double wait = (double)(i) / rate - (t - t0);
                if (wait > 50e-6)
                    sched_yield();
                t = now_s();
                continue;
            }
            n = (int)(due - i < (uint64_t)batch ? due - i : (uint64_t)batch);
        } else {
            n = (int)(count - i < (uint64_t)batch ? count - i : (uint64_t)batch);
        }
        mmsg_send(&mt, &g, i, n, &c);
        i += (uint64_t)n;
        t = now_s();
    }
    double el = now_s() - t0;
    printf("{\"sent\": %llu, \"errors\": %llu, \"elapsed_s\": %.6f, \"next_seq\": %llu, \"attempted\": %llu, "
           "\"calls\": %llu, \"batch\": %d, \"last_errno\": %d}\n",
           (unsigned long long)c.sent, (unsigned long long)c.errors, el,
           (unsigned long long)(g.flows ? g.seq_start : g.seq_start + i), (unsigned long long)i,
           (unsigned long long)c.calls, batch, c.last_errno);
    free(mt.frames);
    close(fd);
    return 0;
}
