/*
 * pktgen.c - a paced packet generator for the zero-loss search (bench/pps).
 *
 * Why not trafgen alone: on this machine (a VM with coarse timers) trafgen's
 * `-b RATE` sends a whole second's worth of packets back to back and then
 * sleeps (its shaper resets once per second), and `-t GAP` sleeps once per
 * packet, which floors at ~60-70 us per packet (~15 kpps). Neither gives a
 * smooth offered load between 15 kpps and the path limit, which is what an
 * RFC 2544 search needs. This tool paces by the clock: packet i is due at
 * t0 + i / rate; due packets leave in batches of at most --batch frames
 * (sendmmsg on an AF_PACKET socket that bypasses the qdisc), and it never
 * catches up with a burst larger than one batch. trafgen is still used for
 * the unpaced path limit (see bench/pps.py).
 *
 * Frames: one Ethernet+IPv4+TCP template (read from --template FILE, built by
 * bench/pps.py with scapy). Each packet i varies the flow:
 *   sport = sport_base + (k % flows_per_addr)
 *   saddr = saddr_base + (k / flows_per_addr) % addrs      (k = seq_start + i % flows)
 * and gets fresh IPv4 and TCP checksums. --flows 0 = never repeat (k = seq_start + i).
 *
 * Bounded: stops after --count packets or --max-seconds, whichever first.
 * Prints one JSON line: {"sent":..,"errors":..,"elapsed_s":..,"next_seq":..}.
 *
 * Usage: pktgen --iface IF --template FILE --rate PPS(0 = unpaced) --count N
 *               [--max-seconds S] [--batch B] [--flows F] [--seq-start K]
 *               [--flows-per-addr P] [--addrs A]
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_BATCH 64
#define MAX_FRAME 256

#ifndef PACKET_QDISC_BYPASS
#define PACKET_QDISC_BYPASS 20
#endif

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

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
    uint32_t saddr_base; /* host order */
    uint16_t sport_base; /* host order */
    uint64_t flows, flows_per_addr, addrs, seq_start;
};

static void fill(const struct gen *g, uint8_t *f, uint64_t i)
{
    uint64_t k = g->flows ? g->seq_start + i % g->flows : g->seq_start + i;
    uint16_t sport = (uint16_t)(g->sport_base + k % g->flows_per_addr);
    uint32_t saddr = g->saddr_base + (uint32_t)((k / g->flows_per_addr) % g->addrs);
    memcpy(f, g->tmpl, g->len);
    uint8_t *iph = f + g->ip, *th = f + g->l4;
    uint32_t sa_n = htonl(saddr);
    memcpy(iph + 12, &sa_n, 4);
    th[0] = (uint8_t)(sport >> 8);
    th[1] = (uint8_t)sport;
    iph[10] = iph[11] = 0;
    uint16_t c = csum_fold(csum_add(iph, g->l4 - g->ip, 0));
    iph[10] = (uint8_t)(c >> 8);
    iph[11] = (uint8_t)c;
    /* TCP (6) or UDP (17) checksum over the pseudo header. */
    uint8_t proto = iph[9];
    size_t csoff = proto == 6 ? 16 : 6;
    th[csoff] = th[csoff + 1] = 0;
    uint32_t s = csum_add(iph + 12, 8, 0);
    s += proto;
    s += (uint32_t)g->l4len;
    c = csum_fold(csum_add(th, g->l4len, s));
    if (proto == 17 && c == 0)
        c = 0xffff;
    th[csoff] = (uint8_t)(c >> 8);
    th[csoff + 1] = (uint8_t)c;
}

static int usage(void)
{
    fprintf(stderr, "usage: pktgen --iface IF --template FILE --rate PPS --count N [--max-seconds S] "
                    "[--batch B] [--flows F] [--seq-start K] [--flows-per-addr P] [--addrs A]\n");
    return 2;
}

int main(int argc, char **argv)
{
    const char *iface = NULL, *tpath = NULL;
    double rate = 0, max_s = 10;
    uint64_t count = 0;
    int batch = 16;
    struct gen g;
    memset(&g, 0, sizeof(g));
    g.flows = 1024;
    g.flows_per_addr = 64000;
    g.addrs = 1;
    for (int i = 1; i + 1 < argc; i += 2) {
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
        else return usage();
    }
    if (!iface || !tpath || !count || batch < 1 || batch > MAX_BATCH || !g.flows_per_addr || !g.addrs ||
        max_s <= 0 || max_s > 600)
        return usage();

    FILE *tf = fopen(tpath, "rb");
    if (!tf) {
        perror(tpath);
        return 1;
    }
    g.len = fread(g.tmpl, 1, sizeof(g.tmpl), tf);
    fclose(tf);
    if (g.len < 14 + 20 + 8 || g.tmpl[12] != 0x08 || g.tmpl[13] != 0x00 || (g.tmpl[14] >> 4) != 4) {
        fprintf(stderr, "pktgen: template is not Ethernet/IPv4\n");
        return 1;
    }
    g.ip = 14;
    g.l4 = g.ip + (size_t)(g.tmpl[14] & 15) * 4;
    size_t tot = (size_t)(g.tmpl[16] << 8 | g.tmpl[17]);
    if ((g.tmpl[23] != 6 && g.tmpl[23] != 17) || g.ip + tot > g.len || tot < g.l4 - g.ip + 8) {
        fprintf(stderr, "pktgen: template must be TCP or UDP with a consistent total length\n");
        return 1;
    }
    g.l4len = g.ip + tot - g.l4;
    uint32_t sa;
    memcpy(&sa, g.tmpl + g.ip + 12, 4);
    g.saddr_base = ntohl(sa);
    g.sport_base = (uint16_t)(g.tmpl[g.l4] << 8 | g.tmpl[g.l4 + 1]);

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

    static uint8_t frames[MAX_BATCH][MAX_FRAME];
    struct mmsghdr msgs[MAX_BATCH];
    struct iovec iov[MAX_BATCH];
    uint64_t sent = 0, errors = 0, i = 0;
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
        for (int j = 0; j < n; j++) {
            fill(&g, frames[j], i + (uint64_t)j);
            iov[j].iov_base = frames[j];
            iov[j].iov_len = g.len;
            memset(&msgs[j], 0, sizeof(msgs[j]));
            msgs[j].msg_hdr.msg_name = &sll;
            msgs[j].msg_hdr.msg_namelen = sizeof(sll);
            msgs[j].msg_hdr.msg_iov = &iov[j];
            msgs[j].msg_hdr.msg_iovlen = 1;
        }
        int done = 0;
        while (done < n) {
            int r = sendmmsg(fd, msgs + done, (unsigned)(n - done), 0);
            if (r < 0) {
                if (errno == EINTR)
                    continue;
                errors++;
                done++; /* skip the failing frame: it counts as not sent */
                continue;
            }
            sent += (uint64_t)r;
            done += r;
        }
        i += (uint64_t)n;
        t = now_s();
    }
    double el = now_s() - t0;
    printf("{\"sent\": %llu, \"errors\": %llu, \"elapsed_s\": %.6f, \"next_seq\": %llu}\n",
           (unsigned long long)sent, (unsigned long long)errors, el,
           (unsigned long long)(g.flows ? g.seq_start : g.seq_start + i));
    close(fd);
    return 0;
}
