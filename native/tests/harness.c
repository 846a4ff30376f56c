/*
 * harness.c - drives the packet core without Python.
 *
 * One standard configuration (a DR, an IPIP, a FULLNAT and a NAT service with
 * forwarding state; a port-zero service and a one-packet service with NAT real servers)
 * and three entry points:
 *
 *   harness replay FILE...        process each file's bytes as one packet (twice:
 *                                  as first packet and again on a warm table), check
 *                                  the action's invariants; exit 1 on a violation
 *   harness bench N FILE...       process each packet N times (for callgrind:
 *                                  instructions per packet = total / (N * files)),
 *                                  in place as the NFQUEUE adapter does (cmd_bench)
 *   harness bench-copy N FILE...  the same through lb_process (the copying path)
 *   harness --svcs K bench ...    the same with the configuration filled up to K services
 *                                  (fill_services: the cost of lookups as the tables grow)
 *   harness churn N               N rounds of config churn (add/edit/delete/re-add of
 *                                  services, destinations, forwarding state, local
 *                                  addresses, switches between every registered
 *                                  scheduler, with and without sh/mh flags) interleaved
 *                                  with IPIP/FULLNAT traffic and one-packet datagrams to mh,
 *                                  NAT connections and replies while a NAT destination's
 *                                  method switches between masq and route;
 *                                  asserts every IPIP outer source is the installed
 *                                  route source (run with MALLOC_PERTURB_ / valgrind);
 *                                  then 15 N scheduling probes for as many destination
 *                                  addresses on lblc/lblcr/twos services (their caches
 *                                  past their bounds, their timers through days)
 *
 * Built with -DLB_FUZZ it is instead a libFuzzer target (LLVMFuzzerTestOneInput).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "lb_adapter.h"
#include "lb_internal.h"

#define VIP 0x0a000064u      /* 10.0.0.100 */
#define RS1 0x0a00000bu      /* 10.0.0.11 */
#define RS2 0x0a00000cu      /* 10.0.0.12 */
#define RS3 0x0a00000du      /* 10.0.0.13: comes and goes in locality_churn */
#define BRS1 0x0a01000bu     /* 10.1.0.11 */
#define LIP 0x0a010001u      /* 10.1.0.1 */
#define DIP 0x0a000002u      /* 10.0.0.2: the director's own address (tunnel source) */
#define NAT_PORT 85          /* the NAT service's port (TCP and UDP) */
#define NAT_RPORT 8080       /* its real servers' port */
#define VIP0 0x0a000065u     /* 10.0.0.101: persistent TCP/UDP port-zero service, NAT real servers without a port */
#define OPS_NAT_PORT 88      /* VIP:88 UDP one-packet service with NAT real servers */
#define VIP0F 0x0a000066u    /* 10.0.0.102: persistent TCP port-zero service, FULLNAT real servers without a port */

static int check(int cond, const char *what)
{
    if (!cond) {
        fprintf(stderr, "harness: invariant violated: %s\n", what);
        return 1;
    }
    return 0;
}

static void fwd_for(struct lb_fwd_conf *f, uint8_t last)
{
    memset(f, 0, sizeof(*f));
    f->ifindex = 2;
    memcpy(f->dst_mac, (uint8_t[]){0x02, 0, 0, 0, 0, last}, 6);
    memcpy(f->src_mac, (uint8_t[]){0x02, 0, 0, 0, 0, 0xaa}, 6);
    f->saddr = DIP;
    f->mtu = 1500;
}

/* proto: TCP, then UDP. */
#define FOR_TCP_UDP(proto) for (uint8_t proto = LB_PROTO_TCP; proto; proto = proto == LB_PROTO_TCP ? LB_PROTO_UDP : 0)

/* A service: its configuration zeroed but for these fields. */
static int svc_add(lb_t *lb, uint8_t proto, uint32_t addr, uint16_t port, const char *sched, uint32_t flags,
                   uint32_t persist_timeout_s)
{
    struct lb_svc_conf s;
    memset(&s, 0, sizeof(s));
    s.proto = proto;
    s.addr = addr;
    s.port = port;
    strcpy(s.sched, sched);
    s.flags = flags;
    s.persist_timeout_s = persist_timeout_s;
    return lb_svc_add(lb, &s);
}

/* A destination of service proto vaddr:vport (no thresholds) with forwarding state towards the MAC
 * 02:00:00:00:00:mac_last (fwd_for). */
static int dest_add(lb_t *lb, uint8_t proto, uint32_t vaddr, uint16_t vport, uint32_t addr, uint16_t port, int32_t fwd,
                    int32_t weight, uint8_t mac_last)
{
    struct lb_dest_conf d;
    struct lb_fwd_conf f;
    memset(&d, 0, sizeof(d));
    d.addr = addr;
    d.port = port;
    d.fwd = fwd;
    d.weight = weight;
    int rc = lb_dest_add(lb, proto, vaddr, vport, &d);
    fwd_for(&f, mac_last);
    return rc | lb_dest_set_fwd(lb, proto, vaddr, vport, addr, port, &f);
}

/* TCP and UDP VIP:90 lblc, :91 lblcr, :92 twos: RS1 weight 1, RS2 weight 2, direct routing. */
#define LOC_PORT 90
static const char *const loc_sched[3] = {"lblc", "lblcr", "twos"};

static int locality_setup(lb_t *lb)
{
    int rc = 0;
    FOR_TCP_UDP(proto) {
        for (int i = 0; i < 3; i++) {
            uint16_t port = (uint16_t)(LOC_PORT + i);
            rc |= svc_add(lb, proto, VIP, port, loc_sched[i], 0, 0);
            for (uint32_t j = 0; j < 2; j++)
                rc |= dest_add(lb, proto, VIP, port, RS1 + j, 80, LB_FWD_ROUTE, (int32_t)(1 + j), (uint8_t)(0x30 + j));
        }
    }
    return rc;
}

static int setup(lb_t *lb)
{
    int rc = 0;
    uint16_t ports[3] = {80, 81, 82};
    int32_t fwds[3] = {LB_FWD_ROUTE, LB_FWD_TUNNEL, LB_FWD_FULLNAT};
    /* TCP VIP:83: FULLNAT with SYN-proxy (defaults: 200 ms doubling, 3 retries). */
    rc |= svc_add(lb, LB_PROTO_TCP, VIP, 83, "rr", LB_SVC_F_SYNPROXY | LB_SVC_F_TOA, 0);
    rc |= dest_add(lb, LB_PROTO_TCP, VIP, 83, BRS1, 80, LB_FWD_FULLNAT, 1, 0x20);
    rc |= lb_laddr_add(lb, LB_PROTO_TCP, VIP, 83, LIP);
    for (int i = 0; i < 3; i++) {
        const char *sched = i == 1 ? "wlc" : "rr";
        uint32_t flags = fwds[i] == LB_FWD_FULLNAT ? LB_SVC_F_TOA : 0;
        rc |= svc_add(lb, LB_PROTO_TCP, VIP, ports[i], sched, flags, 0);
        rc |= svc_add(lb, LB_PROTO_UDP, VIP, ports[i], sched, flags, 0);
        FOR_TCP_UDP(proto) {
            for (int j = 0; j < 2; j++)
                rc |= dest_add(lb, proto, VIP, ports[i], (fwds[i] == LB_FWD_FULLNAT ? BRS1 : RS1) + (uint32_t)j, 80,
                               fwds[i], 1 + j, (uint8_t)(0x10 + j));
            if (fwds[i] == LB_FWD_FULLNAT)
                rc |= lb_laddr_add(lb, proto, VIP, ports[i], LIP);
        }
    }
    /* VIP:84, DR: TCP with sh, UDP with mh and one-packet scheduling, both hashing the source port
     * and falling back past the weight-0 destination. */
    FOR_TCP_UDP(proto) {
        rc |= svc_add(lb, proto, VIP, 84, proto == LB_PROTO_TCP ? "sh" : "mh",
                      LB_SVC_F_SCHED1 | LB_SVC_F_SCHED2 | (proto == LB_PROTO_UDP ? LB_SVC_F_ONEPACKET : 0), 0);
        for (int j = 0; j < 3; j++)
            rc |= dest_add(lb, proto, VIP, 84, RS1 + (uint32_t)j, 84, LB_FWD_ROUTE, j, (uint8_t)(0x30 + j));
    }
    /* VIP:85, NAT (masquerading) with port translation: TCP and UDP to 10.1.0.11-12:8080. */
    FOR_TCP_UDP(proto) {
        rc |= svc_add(lb, proto, VIP, NAT_PORT, "rr", 0, 0);
        for (int j = 0; j < 2; j++)
            rc |= dest_add(lb, proto, VIP, NAT_PORT, BRS1 + (uint32_t)j, NAT_RPORT, LB_FWD_MASQ, 1, (uint8_t)(0x40 + j));
    }
    /* VIP0:0 persistent (TCP and UDP), NAT to 10.1.0.11-12 without a port: the client's port (reply
     * tuples RIP:<client's port>); VIP:88 UDP one-packet NAT to 10.1.0.11-12:88 (no entry kept). */
    FOR_TCP_UDP(proto) {
        for (int k = 0; k < 2; k++) {
            if (k == 1 && proto == LB_PROTO_TCP)
                continue;
            uint32_t vaddr = k ? VIP : VIP0;
            uint16_t port = k ? OPS_NAT_PORT : 0;
            rc |= svc_add(lb, proto, vaddr, port, "rr", k ? LB_SVC_F_ONEPACKET : 0, k ? 0 : 300);
            for (int j = 0; j < 2; j++)
                rc |= dest_add(lb, proto, vaddr, port, BRS1 + (uint32_t)j, port, LB_FWD_MASQ, 1, (uint8_t)(0x60 + j));
        }
    }
    /* VIP0F:0 persistent TCP, FULLNAT from LIP to 10.1.0.11-12 on the client's port. */
    rc |= svc_add(lb, LB_PROTO_TCP, VIP0F, 0, "rr", 0, 300);
    for (int j = 0; j < 2; j++)
        rc |= dest_add(lb, LB_PROTO_TCP, VIP0F, 0, BRS1 + (uint32_t)j, 0, LB_FWD_FULLNAT, 1, (uint8_t)(0x70 + j));
    rc |= lb_laddr_add(lb, LB_PROTO_TCP, VIP0F, 0, LIP);
    /* VIP:86 FULLNAT with the PROXY protocol v1, VIP:87 FULLNAT with SYN-proxy and PROXY v2. */
    for (uint16_t port = 86; port <= 87; port++) {
        rc |= svc_add(lb, LB_PROTO_TCP, VIP, port, "rr",
                      port == 86 ? LB_SVC_F_PROXY_V1 : (LB_SVC_F_PROXY_V2 | LB_SVC_F_SYNPROXY), 0);
        for (int j = 0; j < 2; j++)
            rc |= dest_add(lb, LB_PROTO_TCP, VIP, port, BRS1 + (uint32_t)j, 80, LB_FWD_FULLNAT, 1, (uint8_t)(0x50 + j));
        rc |= lb_laddr_add(lb, LB_PROTO_TCP, VIP, port, LIP);
    }
    return rc | locality_setup(lb);
}

/* The XDP fast path's hooks (lb_fp_ops) as a stand-in adapter: it marks and unmarks connections as
 * xsk_fp.c does and checks what the core promises of each call (lb_internal.h). fp_bad: a broken promise. */
static struct {
    long set, del, dest, freed, sync;
    uint32_t next_slot;
    int bad;
} fp;

static void fp_fake_flow_set(void *arg, lb_t *lb, struct lb_conn *c)
{
    (void)arg;
    fp.set++;
    if (!(c->flags & LB_CF_USED) || c->proto != LB_PROTO_TCP || c->fwd != LB_FWD_ROUTE ||
        c->state != LB_S_ESTABLISHED || (c->flags & (LB_CF_SYNPROXY | LB_CF_PROXY | LB_CF_TEMPLATE)) || !c->dest ||
        !c->dest->fwd || !(c->dest->flags & LB_DEST_F_AVAILABLE) || lb->sync_on || c->xdp_fp == LB_FP_REFUSED) {
        fp.bad = 1;
        return;
    }
    if (!c->dest->fp_slot)
        c->dest->fp_slot = ++fp.next_slot;
    /* Every 5th refused, as a full map would: never offered again. */
    c->xdp_fp = fp.set % 5 == 0 ? LB_FP_REFUSED : LB_FP_ON;
}

static void fp_fake_flow_del(void *arg, lb_t *lb, struct lb_conn *c)
{
    (void)arg;
    (void)lb;
    fp.del++;
    if (!(c->flags & LB_CF_USED) || !c->xdp_fp || (c->flags & LB_CF_TEMPLATE))
        fp.bad = 1;
    c->xdp_fp = 0;
}

static void fp_fake_dest(void *arg, lb_t *lb, struct lb_dest *d, int freed)
{
    (void)arg;
    (void)lb;
    fp.dest++;
    if (freed) {
        fp.freed++;
        if (d->svc || d->refcnt)
            fp.bad = 1; /* freed: unlinked, unreferenced */
        d->fp_slot = 0;
    }
}

static void fp_fake_sync(void *arg, lb_t *lb)
{
    (void)arg;
    (void)lb;
    fp.sync++;
}

static const struct lb_fp_ops fp_fake_ops = {fp_fake_flow_set, fp_fake_flow_del, fp_fake_dest, fp_fake_sync};

static uint8_t out_buf[LB_PKT_MAX];

/* lb_sched_probe on the schedulers that key on the packet's destination address (and twos), with
 * any bytes: an answer names one of the service's destinations. */
static int probe_checked(lb_t *lb, const uint8_t *pkt, uint32_t len, uint64_t now)
{
    int bad = 0;
    FOR_TCP_UDP(proto) {
        for (uint16_t port = LOC_PORT; port < LOC_PORT + 3; port++) {
            uint32_t daddr = 0;
            uint16_t dport = 0;
            int rc = lb_sched_probe(lb, proto, VIP, port, pkt, len, now, &daddr, &dport);
            bad |= check(rc == 0 || rc == 1 || rc == LB_EINVAL || rc == LB_ESRCH, "lb_sched_probe: 0, 1 or an error");
            if (rc == 1)
                bad |= check((daddr == RS1 || daddr == RS2 || daddr == RS3) && dport == 80, "a probe names a destination");
        }
    }
    return bad;
}

/* lb_ip_fragment on any bytes: an error, or fragments that each fit the MTU with a valid header
 * checksum, offsets that follow one another, MF on all but the last, and exactly the original
 * payload between them. must_cut: the core asked for it (frag_mtu), so it has to succeed. */
#define FRAG_MAX 8192
static uint8_t frag_buf[LB_PKT_MAX + FRAG_MAX * 60];
static uint32_t frag_len[FRAG_MAX];
static int frag_ok(const uint8_t *pkt, uint32_t len, uint32_t mtu, int must_cut)
{
    int bad = 0;
    int k = lb_ip_fragment(pkt, len, mtu, frag_buf, sizeof(frag_buf), frag_len, FRAG_MAX);
    bad |= check(k > 0 || k == LB_EINVAL || k == LB_ENOSPC, "lb_ip_fragment returns a count or an error");
    if (must_cut)
        bad |= check(k > 1, "a packet the core marked frag_mtu can be cut");
    if (k <= 1)
        return bad;
    uint32_t ihl = (pkt[0] & 0x0fu) * 4u, tot = lb_get16(pkt + 2), at = 0, data = 0;
    uint32_t base = (lb_get16(pkt + 6) & 0x1fffu) * 8u;
    for (int i = 0; i < k; i++) {
        const uint8_t *f = frag_buf + at;
        uint32_t fl = frag_len[i], word = lb_get16(f + 6);
        bad |= check(fl <= mtu && fl > ihl && lb_get16(f + 2) == fl, "a fragment fits the MTU, its length right");
        bad |= check(lb_ip_csum(f, ihl) == 0, "a fragment's header checksum is right");
        bad |= check((word & 0x1fffu) * 8u == base + data, "fragment offsets follow one another");
        bad |= check(i == k - 1 || (word & 0x2000u), "MF on every fragment but the last");
        bad |= check(memcmp(f + ihl, pkt + ihl + data, fl - ihl) == 0, "fragments carry the payload in order");
        data += fl - ihl;
        at += fl;
    }
    bad |= check(data == tot - ihl, "the fragments carry the whole payload");
    return bad;
}

/* A packet through the core (a new connection's or a reply's fate), then cut at mtu whatever it is. */
static int process_checked(lb_t *lb, const uint8_t *pkt, uint32_t len, uint64_t now);
static int frag_checked(lb_t *lb, const uint8_t *pkt, uint32_t len, uint32_t mtu, uint64_t now)
{
    return process_checked(lb, pkt, len, now) | frag_ok(pkt, len, mtu, 0);
}

/* Every other packet goes through lb_process_inplace on a copy (what the NFQUEUE adapter calls),
 * the others through lb_process: both paths see every kind of packet (replay: cold and warm). */
static uint8_t inplace_buf[LB_PKT_MAX];
static unsigned inplace_turn;

/* lb_process_inplace's contract: only TTL and header checksum written, and only for an XMIT_L2
 * of the lent bytes (out_len 0), the TTL one lower and the header checksum still right. */
static int inplace_ok(const uint8_t *orig, const uint8_t *lent, uint32_t len, const struct lb_action *act)
{
    if (memcmp(orig, lent, len) == 0)
        return 0;
    int bad = check(act->verdict == LB_V_XMIT_L2 && act->out_len == 0, "lent bytes change only to be sent as they are");
    bad |= check(len >= 20 && lent[8] + 1 == orig[8], "in place: the TTL one lower");
    for (uint32_t i = 0; i < len && !bad; i++)
        if (i != 8 && i != 10 && i != 11)
            bad |= check(lent[i] == orig[i], "in place: nothing but TTL and header checksum written");
    if (!bad)
        bad |= check(lb_ip_csum(lent, (uint32_t)(lent[0] & 15) * 4) == 0, "in place: the header checksum right");
    return bad;
}

static int process_checked(lb_t *lb, const uint8_t *pkt, uint32_t len, uint64_t now)
{
    struct lb_action act;
    int bad = 0;
    int rc;
    if (inplace_turn++ & 1) {
        memcpy(inplace_buf, pkt, len);
        rc = lb_process_inplace(lb, inplace_buf, len, 0, 0, now, out_buf, sizeof(out_buf), &act);
        bad |= inplace_ok(pkt, inplace_buf, len, &act);
        pkt = inplace_buf; /* what is sent when out_len is 0 */
    } else {
        rc = lb_process(lb, pkt, len, now, out_buf, sizeof(out_buf), &act);
    }
    bad |= check(rc == LB_OK, "lb_process returns LB_OK for any bytes");
    bad |= check(act.verdict >= LB_V_ACCEPT && act.verdict <= LB_V_ANSWER, "verdict in range");
    bad |= check(act.reason >= 0 && act.reason < LB_R_COUNT, "reason in range");
    bad |= check(act.out_len <= sizeof(out_buf), "out_len within the buffer");
    if (act.verdict == LB_V_ANSWER || act.verdict == LB_V_MANGLE)
        bad |= check(act.out_len >= 20, "answers carry a whole IPv4 header");
    if (act.verdict == LB_V_XMIT_L2)
        bad |= check(act.ifindex > 0, "frames go out a real interface");
    if (act.frag_mtu) {
        uint32_t frame = act.out_len ? act.out_len : len;
        bad |= check(act.verdict == LB_V_XMIT_L2 && act.frag_mtu >= 68 && frame > act.frag_mtu,
                     "frag_mtu only on frames larger than it");
        bad |= frag_ok(act.out_len ? out_buf : pkt, frame, act.frag_mtu, 1);
    }
    if (act.verdict == LB_V_XMIT_L2 && act.out_len >= 20 && out_buf[9] == 4) {
        uint32_t src;
        memcpy(&src, out_buf + 12, 4);
        bad |= check(lb_ntohl(src) == DIP, "IPIP outer source is the installed route source");
    }
    return bad;
}

/* The GSO helpers on arbitrary bytes (a copy: both write): whatever they accept, the segments
 * fit the MTU and carry exactly the original payload, and lb_process takes each of them. */
static uint8_t gso_in[LB_PKT_MAX];
static uint8_t gso_whole[LB_PKT_MAX];
static uint8_t gso_segs[128 * 1500];
static int gso_checked(lb_t *lb, const uint8_t *pkt, uint32_t len, uint32_t mtu, uint64_t now)
{
    int bad = 0;
    memcpy(gso_in, pkt, len);
    int rc = lb_csum_complete(gso_in, len);
    bad |= check(rc == LB_OK || rc == LB_EINVAL, "lb_csum_complete returns OK or EINVAL");
    /* Sent whole, then completed by the device: the same bytes as completing the original. */
    struct lb_gso_whole gw;
    memcpy(gso_whole, pkt, len);
    int wr = lb_tcp_gso_prepare(gso_whole, len, mtu, &gw);
    bad |= check(wr == LB_OK || wr == LB_EINVAL, "lb_tcp_gso_prepare returns OK or EINVAL");
    if (wr == LB_OK) {
        bad |= check(rc == LB_OK && len > mtu && gw.hdr_len < mtu && gw.mss == mtu - gw.hdr_len &&
                         gw.l4_off >= 20 && gw.l4_off + 20u <= gw.hdr_len && gw.hdr_len <= len,
                     "lb_tcp_gso_prepare: a checksummable packet over the MTU, headers inside it");
        bad |= check(lb_csum_complete(gso_whole, len) == LB_OK && memcmp(gso_whole, gso_in, len) == 0,
                     "a prepared super-packet completes to the original's full checksum");
    } else {
        bad |= check(memcmp(gso_whole, pkt, len) == 0, "lb_tcp_gso_prepare leaves refused bytes alone");
    }
    uint32_t path = lb_path_mtu(lb, pkt, len, now); /* read only, on any bytes */
    bad |= check(path == 0 || path == 1500 || path == 1500 - LB_IPIP_OVERHEAD ||
                     (path >= 1500 - LB_PROXY_V1_MAX_LEN && path <= 1500 - 32) || path == 1500 - LB_PROXY_V2_LEN,
                 "lb_path_mtu: 0, or the harness's path MTU 1500 (less the IPIP header for a tunnel, less a "
                 "PROXY header of 32..56 (v1) or 28 (v2) bytes not acknowledged yet)");
    uint32_t seg_len[128];
    int k = lb_tcp_segment(pkt, len, mtu, gso_segs, mtu, seg_len, 128);
    bad |= check(k > 0 || k == LB_EINVAL || k == LB_ENOSPC, "lb_tcp_segment returns a count or an error");
    if (k <= 0)
        return bad;
    uint32_t ihl = (pkt[0] & 0x0fu) * 4u, thl = (uint32_t)(pkt[ihl + 12] >> 4) * 4u, payload = 0;
    for (int i = 0; i < k; i++) {
        bad |= check(seg_len[i] <= mtu && seg_len[i] > ihl + thl, "a segment fits the MTU and carries data");
        payload += seg_len[i] - ihl - thl;
        bad |= process_checked(lb, gso_segs + (size_t)i * mtu, seg_len[i], now);
    }
    bad |= check(payload == len - ihl - thl, "the segments carry the whole payload");
    return bad;
}

/* Drain the sync master's change marks: every record names a slot of the table, and one the
 * per-packet rule chose (LB_CONN_F_SYNC_WANT) is a live entry. */
static int sync_changes_checked(lb_t *lb, uint64_t now, uint32_t conn_max)
{
    static struct lb_conn_info info[128];
    uint32_t cursor = 0;
    int bad = 0;
    do {
        int got = lb_conn_dump_sync_changes(lb, now, info, 128, &cursor);
        bad |= check(got >= 0, "lb_conn_dump_sync_changes succeeds");
        for (int i = 0; i < got; i++) {
            bad |= check(info[i].slot >= 1 && info[i].slot <= conn_max, "a sync change names a slot of the table");
            bad |= check(!(info[i].flags & LB_CONN_F_SYNC_WANT) || info[i].proto || (info[i].flags & LB_CONN_F_TEMPLATE),
                         "an entry the sync rule chose is a live one");
        }
    } while (cursor != 0 && !bad);
    return bad;
}

#ifdef LB_FUZZ
/* A sync backup's install of a FULLNAT / SYN-proxy / PROXY record (lb_conn_restore_seq, issue 18
 * item 3) made of fuzzed bytes: the struct lb_conn_info and struct lb_conn_seq as they come, but
 * aimed at the harness's VIP half of the time (so services exist), then segments of that
 * connection from both sides with fuzzed sequence and acknowledgment numbers, through the packet
 * core's translation. Every answer is a known code; the packets are checked as any other. */
static int restore_seq_checked(lb_t *lb, const uint8_t *data, uint32_t len, uint64_t now)
{
    struct lb_conn_info ci;
    struct lb_conn_seq seq;
    if (len < sizeof(ci) + sizeof(seq) + 8)
        return 0;
    memcpy(&ci, data, sizeof(ci));
    memcpy(&seq, data + sizeof(ci), sizeof(seq));
    const uint8_t *tail = data + sizeof(ci) + sizeof(seq);
    if (tail[0] & 1) {
        ci.vaddr = VIP;
        ci.vport = (uint16_t)(80 + tail[0] % 5);
        ci.daddr = BRS1 + (tail[0] >> 7);
        ci.dport = 80;
        ci.laddr = LIP;
        ci.proto = LB_PROTO_TCP;
        ci.state = LB_S_ESTABLISHED;
        ci.expires_in_ms = 1 + tail[1] * 1000;
    }
    int rc = lb_conn_restore_seq(lb, &ci, &seq, now);
    int bad = check(rc == LB_OK || rc == LB_RESTORE_UPDATED || rc == LB_EINVAL || rc == LB_ESRCH || rc == LB_ENOENT ||
                        rc == LB_EEXIST || rc == LB_ENOSPC || rc == LB_ENOMEM || rc == LB_EOPNOTSUPP,
                    "lb_conn_restore_seq answers a known code");
    struct lb_conn_seq got;
    int g = lb_conn_seq_get(lb, ci.proto, ci.caddr, ci.cport, ci.vaddr, ci.vport, now, &got);
    bad |= check(g == LB_OK || g == LB_ESRCH || g == LB_ENOENT || g == LB_EBUSY || g == LB_EINVAL,
                 "lb_conn_seq_get answers a known code");
    if (rc == LB_OK && ci.expires_in_ms > 0) /* an already expired record is LB_OK with nothing installed */
        bad |= check(g == LB_OK && got.flags == seq.flags && got.d_in == seq.d_in && got.px_len == seq.px_len,
                     "an installed connection reports the sequence state it was given");
    uint8_t pkt[60];
    for (int dir = 0; dir < 2; dir++) {
        memset(pkt, 0, 40);
        pkt[0] = 0x45;
        pkt[3] = 40 + 4;
        pkt[8] = 64;
        pkt[9] = LB_PROTO_TCP;
        uint32_t sa = dir ? ci.daddr : ci.caddr, da = dir ? ci.laddr : ci.vaddr;
        uint16_t sp = dir ? ci.dport : ci.cport, dp = dir ? ci.lport : ci.vport;
        for (int i = 0; i < 4; i++) {
            pkt[12 + i] = (uint8_t)(sa >> (24 - 8 * i));
            pkt[16 + i] = (uint8_t)(da >> (24 - 8 * i));
        }
        pkt[20] = (uint8_t)(sp >> 8);
        pkt[21] = (uint8_t)sp;
        pkt[22] = (uint8_t)(dp >> 8);
        pkt[23] = (uint8_t)dp;
        memcpy(pkt + 24, tail + 2, 6); /* sequence number and most of the acknowledgment number */
        pkt[32] = 0x50;
        pkt[33] = (uint8_t)(0x10 | (tail[1] & 0x09)); /* ACK, maybe PSH/FIN */
        pkt[34] = 0xff;
        memcpy(pkt + 40, "data", 4);
        uint32_t sum = 0;
        for (int i = 0; i < 20; i += 2)
            sum += (uint32_t)(pkt[i] << 8 | pkt[i + 1]);
        while (sum >> 16)
            sum = (sum & 0xffff) + (sum >> 16);
        pkt[10] = (uint8_t)(~sum >> 8);
        pkt[11] = (uint8_t)~sum;
        sum = LB_PROTO_TCP + 24; /* pseudo-header: protocol, TCP length, then the addresses */
        for (int i = 12; i < 44; i += 2)
            sum += (uint32_t)(pkt[i] << 8 | pkt[i + 1]);
        while (sum >> 16)
            sum = (sum & 0xffff) + (sum >> 16);
        pkt[36] = (uint8_t)(~sum >> 8);
        pkt[37] = (uint8_t)~sum;
        bad |= process_checked(lb, pkt, 44, now);
    }
    return bad;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static lb_t *lb;
    static uint64_t now = 1000;
    if (!lb) {
        struct lb_config cfg = {.conn_max = 4096, .hash_buckets = 1024, .hash_seed = 7};
        lb = lb_new(&cfg);
        if (!lb || setup(lb) != 0)
            abort();
        lb_fp_register(lb, &fp_fake_ops, NULL); /* the fast path's decisions run on every input too */
    }
    if (size > LB_PKT_MAX)
        return 0;
    /* The first byte advances time, so entries also expire during a run. */
    if (size > 0)
        now += data[0] * 50u;
    /* ... and picks the sync master's rule (sync.c: every combination the kernel accepts kind). */
    if (size > 0 && lb_sync_master_set(lb, &(struct lb_sync_conf){data[0] % 4u, data[0] % 3u ? 50 : 0,
                                                                    (data[0] & 0x80u) ? 8000u : 0u, data[0] % 4u,
                                                                    (data[0] >> 6) & 1u}, data[0] != 255) != LB_OK)
        abort();
    if (process_checked(lb, size > 1 ? data + 1 : data, size > 1 ? (uint32_t)size - 1 : (uint32_t)size, now))
        abort();
    /* The same bytes as a new connection of the lblc/lblcr/twos services, whatever their addresses. */
    if (size > 1 && probe_checked(lb, data + 1, (uint32_t)size - 1, now))
        abort();
    /* Byte 0 also picks the fragment size: 68 to 1,088 bytes. */
    if (size > 1 && frag_checked(lb, data + 1, (uint32_t)size - 1, 68 + (data[0] % 64u) * 16u, now))
        abort();
    /* Byte 0 also picks the segment size: 576, 884, 1192 or 1500 bytes. */
    if (size > 1 && gso_checked(lb, data + 1, (uint32_t)size - 1, 576 + (data[0] % 4u) * 308u, now))
        abort();
    if (size > 1 && restore_seq_checked(lb, data + 1, (uint32_t)size - 1, now))
        abort();
    struct lb_action tact;
    while (lb_timer_next(lb, now, out_buf, sizeof(out_buf), &tact))
        ;
    lb_expire(lb, now, 64);
    if (sync_changes_checked(lb, now, 4096) || fp.bad)
        abort();
    return 0;
}
#else

static uint8_t *read_file(const char *path, uint32_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    uint8_t *buf = calloc(1, LB_PKT_MAX + 1);
    size_t n = buf ? fread(buf, 1, LB_PKT_MAX + 1, f) : 0;
    fclose(f);
    if (!buf || n > LB_PKT_MAX) {
        free(buf);
        return NULL;
    }
    *len = (uint32_t)n;
    return buf;
}

static const struct lb_sync_conf kernel_sync_defaults = {LB_SYNC_THRESHOLD_DEFAULT, LB_SYNC_PERIOD_DEFAULT,
                                                         LB_SYNC_REFRESH_PERIOD_MS_DEFAULT, LB_SYNC_RETRIES_DEFAULT, 0};

static lb_t *new_lb(void)
{
    struct lb_config cfg = {.conn_max = 65536, .hash_buckets = 4096, .hash_seed = 7};
    lb_t *lb = lb_new(&cfg);
    if (!lb || setup(lb) != 0 || lb_sync_master_set(lb, &kernel_sync_defaults, 1) != LB_OK) {
        fprintf(stderr, "harness: setup failed\n");
        exit(2);
    }
    return lb;
}

static int est_invariants(lb_t *lb);

static int cmd_replay(int argc, char **argv)
{
    lb_t *lb = new_lb();
    int bad = 0;
    uint64_t now = 1000;
    for (int pass = 0; pass < 2; pass++) {
        for (int i = 0; i < argc; i++) {
            uint32_t len = 0;
            uint8_t *pkt = read_file(argv[i], &len);
            if (!pkt) {
                fprintf(stderr, "harness: cannot read %s\n", argv[i]);
                lb_free(lb);
                return 2;
            }
            if (process_checked(lb, pkt, len, now) || gso_checked(lb, pkt + 1, len ? len - 1 : 0, 1500, now) ||
                probe_checked(lb, pkt, len, now) || frag_checked(lb, pkt + 1, len ? len - 1 : 0, 576, now)) {
                fprintf(stderr, "harness: in %s\n", argv[i]);
                bad = 1;
            }
            free(pkt);
            now += 7;
        }
        now += 10000; /* past every SYN-proxy retransmission and give-up */
        struct lb_action tact;
        while (lb_timer_next(lb, now, out_buf, sizeof(out_buf), &tact))
            bad |= check(tact.verdict == LB_V_XMIT_L2 || tact.verdict == LB_V_ANSWER, "timer actions send");
        lb_expire(lb, now, 0);
        lb_est_step(lb);
        bad |= est_invariants(lb);
    }
    lb_expire(lb, now + 3600 * 1000, 0);
    bad |= check(lb_conn_count(lb) == 0, "every entry expires");
    lb_free(lb);
    printf("replayed %d packets twice: %s\n", argc, bad ? "FAILED" : "ok");
    return bad;
}

/* Fill lb up to `total` services, added after the standard ones so that each of these sits in
 * front of them in whatever chain they share (the standard services are then found last: the
 * worst case of a chained lookup). Like kube-proxy's: TCP, on distinct VIPs 10.200.x.y:80 (so the
 * director's local-address set grows too), rr, one DR destination with forwarding state. */
static int fill_services(lb_t *lb, long total)
{
    int have = lb_svc_list(lb, NULL, 0);
    int rc = 0;
    for (long i = have; i < total && rc == 0; i++) {
        uint32_t vaddr = 0x0ac80000u + (uint32_t)(i - have) + 1; /* 10.200.0.1 and up */
        rc |= svc_add(lb, LB_PROTO_TCP, vaddr, 80, "rr", 0, 0);
        rc |= dest_add(lb, LB_PROTO_TCP, vaddr, 80, RS1, 80, LB_FWD_ROUTE, 1, 0x10);
    }
    fprintf(stderr, "harness: %d services configured\n", lb_svc_list(lb, NULL, 0));
    return rc;
}

static long fill_svcs; /* harness --svcs K: fill_services(K) after setup (0: the standard set only) */

/* bench: lb_process_inplace, as the NFQUEUE adapter calls it; the bytes it may write (TTL, header
 * checksum: its contract) are put back after each call, so every round sees the same packet.
 * bench-copy: lb_process, the copying path (every other caller). */
static int cmd_bench(long n, int argc, char **argv, int copy)
{
    lb_t *lb = new_lb();
    struct lb_action act;
    if (fill_svcs > 0 && fill_services(lb, fill_svcs) != 0) {
        fprintf(stderr, "harness: filling to %ld services failed\n", fill_svcs);
        return 2;
    }
    for (int i = 0; i < argc; i++) {
        uint32_t len = 0;
        uint8_t *pkt = read_file(argv[i], &len);
        if (!pkt)
            return 2;
        if (copy || len < 12) {
            for (long k = 0; k < n; k++)
                lb_process(lb, pkt, len, 1000, out_buf, sizeof(out_buf), &act);
        } else {
            uint8_t ttl = pkt[8], c0 = pkt[10], c1 = pkt[11];
            for (long k = 0; k < n; k++) {
                lb_process_inplace(lb, pkt, len, 0, 0, 1000, out_buf, sizeof(out_buf), &act);
                pkt[8] = ttl;
                pkt[10] = c0;
                pkt[11] = c1;
            }
        }
        free(pkt);
    }
    lb_free(lb);
    return 0;
}

/* Build a TCP SYN (or UDP datagram) from src:sport to VIP:dport. */
static uint32_t make_packet(uint8_t *b, uint8_t proto, uint32_t src, uint16_t sport, uint16_t dport, uint8_t flags)
{
    uint32_t l4 = proto == LB_PROTO_TCP ? 20 : 8;
    uint32_t len = 20 + l4;
    memset(b, 0, len);
    b[0] = 0x45;
    lb_put16(b + 2, (uint16_t)len);
    b[6] = 0x40;
    b[8] = 64;
    b[9] = proto;
    uint32_t s = lb_htonl(src), d = lb_htonl(VIP);
    memcpy(b + 12, &s, 4);
    memcpy(b + 16, &d, 4);
    lb_put16(b + 10, lb_ip_csum(b, 20));
    lb_put16(b + 20, sport);
    lb_put16(b + 22, dport);
    if (proto == LB_PROTO_TCP) {
        b[32] = 0x50;
        b[33] = flags;
    } else {
        lb_put16(b + 24, 8);
    }
    return len;
}

/* Another address (host order) at offset `at` of a packet's IPv4 header (12: the source, 16: the
 * destination), the header checksum made right again. */
static void set_ip_addr(uint8_t *pkt, uint32_t at, uint32_t addr)
{
    uint32_t addr_n = lb_htonl(addr);
    memcpy(pkt + at, &addr_n, 4);
    lb_put16(pkt + 10, 0);
    lb_put16(pkt + 10, lb_ip_csum(pkt, 20));
}

/* The accounting invariants of every listed destination (ip_vs_bind_dest / ip_vs_unbind_dest /
 * __ip_vs_dest_update_overload): activeconns never above totalconns (no unsigned wrap), and
 * OVERLOAD only with an upper threshold and at least the lower threshold value of connections
 * (the unbind that crosses l_threshold_val clears it). With `idle`, no connection is left. */
static int check_accounting(lb_t *lb, int idle)
{
    int bad = 0;
    const struct lb_svc *s;
    LB_FOR_EACH_SVC(lb, s) {
        for (uint32_t j = 0; j < s->ndests; j++) {
            const struct lb_dest *d = s->dests[j];
            bad |= check(d->activeconns <= d->totalconns, "activeconns <= totalconns");
            if (d->flags & LB_DEST_F_OVERLOAD)
                bad |= check(d->conf.u_threshold && d->totalconns >= d->l_threshold_val,
                             "OVERLOAD only with an upper threshold and >= l_threshold_val connections");
            if (idle)
                bad |= check(!d->totalconns && !d->activeconns && !d->persistconns && !(d->flags & LB_DEST_F_OVERLOAD),
                             "no connection, no template, no OVERLOAD once everything expired");
        }
    }
    return bad;
}

/* lblc, lblcr, twos: n probes, each for its own destination address (so the caches pass 16384 and
 * 24576 entries when n is large), with connections held to the VIP, destinations deleted and
 * re-added (a cache entry then holds the only reference), switches away and back, a service deleted
 * under its cache, and time jumps past the collector's 6 min, the full check's 30 min and 24 h. */
/* The sync master's per-packet rule with the kernel's defaults (sync.c): one TCP connection to
 * VIP:80 (direct routing) is chosen on its 3rd packet from the client and every 50th after, and on
 * its first packet in a closing state; nothing is chosen while the master is off; values the
 * kernel's sysctls refuse are refused. */
static int sync_rule_check(void)
{
    struct lb_config cfg = {.conn_max = 64, .hash_seed = 5};
    lb_t *lb = lb_new(&cfg);
    if (!lb || setup(lb) != 0)
        return 1;
    int bad = 0;
    struct lb_sync_conf invalid[] = {{50, 50, 0, 0, 0}, {-1, 50, 0, 0, 0}, {3, -1, 0, 0, 0}, {3, 50, 0, 4, 0},
                                     {3, 50, 0, 0, 2}};
    for (size_t i = 0; i < sizeof(invalid) / sizeof(invalid[0]); i++)
        bad |= check(lb_sync_master_set(lb, &invalid[i], 1) == LB_EINVAL, "lb_sync_master_set refuses what the kernel does");
    uint8_t pkt[64];
    uint64_t now = 1000;
    struct lb_conn_info info[128];
    uint32_t chosen[8], n_chosen = 0;
    for (uint32_t n = 1; n <= 130; n++) {
        if (n == 6)
            bad |= check(lb_sync_master_set(lb, &kernel_sync_defaults, 1) == LB_OK, "lb_sync_master_set takes the defaults");
        uint8_t flags = n == 1 ? 0x02 : n == 2 ? 0x10 : n == 130 ? 0x11 : 0x18;
        uint32_t len = make_packet(pkt, LB_PROTO_TCP, 0xc0000464u, 4000, 80, flags);
        bad |= process_checked(lb, pkt, len, now++);
        uint32_t cursor = 0;
        int got = lb_conn_dump_sync_changes(lb, now, info, 128, &cursor);
        for (int i = 0; i < got; i++)
            if ((info[i].flags & LB_CONN_F_SYNC_WANT) && n_chosen < 8)
                chosen[n_chosen++] = n;
    }
    /* Off for packets 1..5; counted from the master's start (packet 6 is the 1st): 8, 58, 108, and
     * the FIN (130: CLOSE_WAIT, a new closing state). */
    bad |= check(n_chosen == 4 && chosen[0] == 8 && chosen[1] == 58 && chosen[2] == 108 && chosen[3] == 130,
                 "the sync rule chooses packets 8, 58, 108 and the FIN");
    lb_free(lb);
    return bad;
}

/* The XDP fast path's hooks: one DR TCP connection to VIP:80 is offered to the fast path by the
 * ACK that makes it ESTABLISHED (once), again by a segment that reached the core although installed
 * (stale), never by one with IP options; a FIN takes it off; a second one leaves it when it is
 * released (expiry); a forwarding-state change, a removal and the last reference of a destination
 * with a slot call the destination hook; with the sync master running nothing is offered. */
static int fastpath_check(void)
{
    struct lb_config cfg = {.conn_max = 64, .hash_seed = 9};
    lb_t *lb = lb_new(&cfg);
    if (!lb || setup(lb) != 0)
        return 1;
    memset(&fp, 0, sizeof(fp));
    lb_fp_register(lb, &fp_fake_ops, NULL);
    int bad = 0;
    uint8_t pkt[64];
    uint64_t now = 1000;
    const uint32_t client = 0xc0000464u;
    uint8_t seq[] = {0x02, 0x10, 0x18, 0x18, 0x11};
    long after[] = {0, 1, 2, 3, 3};
    for (size_t i = 0; i < sizeof(seq); i++) {
        uint32_t len = make_packet(pkt, LB_PROTO_TCP, client, 4000, 80, seq[i]);
        bad |= process_checked(lb, pkt, len, now++);
        if (i == 4)
            bad |= check(fp.del == 1, "the FIN takes the flow off the fast path");
        else
            bad |= check(fp.set == after[i], "flow_set by the ESTABLISHED ACK and by segments that reach the core");
    }
    /* A segment with IP options is not one the program forwards: no re-install for it. */
    {
        uint32_t len = make_packet(pkt, LB_PROTO_TCP, client, 4001, 80, 0x02);
        bad |= process_checked(lb, pkt, len, now++);
        len = make_packet(pkt, LB_PROTO_TCP, client, 4001, 80, 0x10);
        bad |= process_checked(lb, pkt, len, now++);
        long set = fp.set;
        uint8_t opt[64];
        memset(opt, 0, sizeof(opt));
        memcpy(opt, pkt, 20);
        opt[0] = 0x46;                        /* IHL 6: one word of options (NOPs, then EOL) */
        opt[20] = 1;
        opt[21] = 1;
        opt[22] = 1;
        opt[23] = 0;
        memcpy(opt + 24, pkt + 20, 20);
        lb_put16(opt + 2, 44);
        lb_put16(opt + 10, 0);
        lb_put16(opt + 10, lb_ip_csum(opt, 24));
        bad |= process_checked(lb, opt, 44, now++);
        bad |= check(fp.set == set, "no re-install for a segment with IP options");
    }
    /* The new MAC of VIP:80's destinations: the destination hook for each with a slot. */
    long dest = fp.dest;
    struct lb_fwd_conf f;
    fwd_for(&f, 0x99);
    lb_dest_set_fwd(lb, LB_PROTO_TCP, VIP, 80, RS1, 80, &f);
    lb_dest_set_fwd(lb, LB_PROTO_TCP, VIP, 80, RS2, 80, &f);
    bad |= check(fp.dest > dest, "a forwarding-state change reaches the destination hook");
    dest = fp.dest;
    lb_dest_set_fwd(lb, LB_PROTO_TCP, VIP, 80, RS1, 80, &f); /* the same state again (a neighbour event) */
    bad |= check(fp.dest == dest, "unchanged forwarding state is no change for the fast path");
    /* Expiry releases the second connection: flow_del before its slot is cleared. */
    long del = fp.del;
    lb_expire(lb, now + 3600u * 1000u, 0);
    now += 3600u * 1000u;
    bad |= check(fp.del == del + 1, "a released connection leaves the fast path");
    /* Removal, then the last reference: the hook sees both. */
    dest = fp.dest;
    lb_dest_del(lb, LB_PROTO_TCP, VIP, 80, RS1, 80);
    lb_dest_del(lb, LB_PROTO_TCP, VIP, 80, RS2, 80);
    bad |= check(fp.dest > dest && fp.freed >= 1, "removed and freed destinations reach the hook");
    /* With the sync master running nothing is offered. */
    bad |= check(lb_sync_master_set(lb, &kernel_sync_defaults, 1) == LB_OK, "sync master on");
    bad |= check(lb_sync_master_set(lb, &kernel_sync_defaults, 1) == LB_OK && fp.sync == 1,
                 "the sync hook runs when the master starts, not when it is set again");
    long set = fp.set;
    for (uint8_t i = 0; i < 4; i++) {
        uint32_t len = make_packet(pkt, LB_PROTO_TCP, client, 5000, 84, i == 0 ? 0x02 : 0x10);
        bad |= process_checked(lb, pkt, len, now++);
    }
    bad |= check(fp.set == set, "no flow offered while the sync master runs");
    bad |= check(lb_sync_master_set(lb, NULL, 0) == LB_OK && fp.sync == 2, "and when it stops");
    bad |= check(!fp.bad, "every hook call kept the core's promises");
    lb_fp_register(lb, NULL, NULL);
    lb_free(lb);
    return bad;
}

/* The rate estimators' list (est.c): exactly the services marked est_on, est_active of them; a service
 * outside it stood still since its last step with every rate 0, and so did its destinations (a step
 * would change nothing: what makes leaving the list exact). */
static int est_invariants(lb_t *lb)
{
    int bad = 0;
    uint32_t listed = 0;
    for (const struct lb_svc *s = lb->est_head; s && listed <= lb->nsvcs; s = s->est_next) {
        bad |= check(s->est_on && (s->est_next == NULL || s->est_next->est_prev == s), "est list links");
        listed++;
    }
    bad |= check(listed == lb->est_active, "est_active counts the list");
    const struct lb_svc *s;
    LB_FOR_EACH_SVC(lb, s) {
        if (s->est_on)
            continue;
        struct lb_est e = s->est;
        lb_est_step_one(&e, &s->stats);
        bad |= check(!memcmp(&e, &s->est, sizeof(e)), "a service left out of the steps would not change");
        for (uint32_t i = 0; i < s->ndests; i++) {
            e = s->dests[i]->est;
            lb_est_step_one(&e, &s->dests[i]->stats);
            bad |= check(!memcmp(&e, &s->dests[i]->est, sizeof(e)), "nor would its destinations");
        }
    }
    return bad;
}

/* The estimators' arithmetic on known values (ip_vs_est.c), and who steps them: lb_est_tick while no
 * adapter thread does, the timers' thread (lb_adapter_est_tick, on its 2-second grid) once one does;
 * an idle director's thread has no estimator step to wake for. */
static int est_check(void)
{
    int bad = 0;
    struct lb_est e;
    struct lb_stats st = {0};
    struct lb_rates r;
    memset(&e, 0, sizeof(e));
    for (int i = 1; i <= 60; i++) { /* 100 conns, 1000 packets in, 64000 bytes in per 2 s */
        st.conns += 100;
        st.inpkts += 1000;
        st.inbytes += 64000;
        lb_est_step_one(&e, &st);
    }
    lb_est_read(&e, &r);
    bad |= check(r.cps == 50 && r.inpps == 500 && r.inbps == 32000 && r.outpps == 0 && r.outbps == 0,
                 "steady counters give their rates per second");
    st.conns = 3; /* reset underneath: no rate for that step, then counted from there */
    lb_est_step_one(&e, &st);
    bad |= check(e.last[0] == 3 && e.avg[0] < (50 << 10), "a counter going backwards adds no rate");
    lb_est_zero(&e, &st);
    lb_est_read(&e, &r);
    bad |= check(r.cps == 0 && r.inpps == 0 && e.last[1] == st.inpkts, "zeroing: rates 0 from the current counters");

    lb_t *lb = new_lb();
    uint8_t pkt[64];
    uint32_t len = make_packet(pkt, LB_PROTO_UDP, 0xc0000701u, 7000, 80, 0);
    bad |= process_checked(lb, pkt, len, 1000);
    bad |= check(lb_est_active(lb) == 1 && lb_est_driven(lb) == 0, "a service with traffic is stepped");
    uint64_t m0 = lb_est_tick(lb);
    struct lb_svc_info si;
    bad |= check(lb_svc_get(lb, LB_PROTO_UDP, VIP, 80, &si) == 0 && si.rates.cps == 0 && si.rates.inbps > 0,
                 "lb_est_tick steps while no thread does; the listing carries the rates");
    bad |= check(lb_est_tick(lb) == m0, "the watch mark stands still without handshakes or refusals");
    for (int i = 0; i < 80 && lb_est_active(lb); i++)
        lb_est_tick(lb);
    bad |= check(lb_est_active(lb) == 0 && lb_svc_get(lb, LB_PROTO_UDP, VIP, 80, &si) == 0 && si.rates.inbps == 0,
                 "rates decay to 0, then the service leaves the steps");
    bad |= est_invariants(lb);
    lb_zero(lb);
    bad |= check(lb_est_tick(lb) != m0, "a zeroing moves the watch mark");

    struct lb_adapter_wait w = {.efd = -1};
    if (lb_adapter_wait_open(&w, lb, 1) != 0) {
        lb_free(lb);
        return check(0, "the timers' thread registers");
    }
    bad |= check(lb_est_driven(lb) == 1, "a timers' thread steps the estimators");
    pthread_mutex_lock(&lb->lock);
    bad |= check(lb_est_due_locked(lb) == UINT64_MAX, "idle: no estimator step to wake for");
    pthread_mutex_unlock(&lb->lock);
    len = make_packet(pkt, LB_PROTO_UDP, 0xc0000702u, 7001, 80, 0);
    bad |= process_checked(lb, pkt, len, 2000);
    lb_est_tick(lb);
    bad |= check(lb_svc_get(lb, LB_PROTO_UDP, VIP, 80, &si) == 0 && si.rates.inbps == 0,
                 "lb_est_tick leaves the steps to the thread");
    pthread_mutex_lock(&lb->lock);
    bad |= check(lb_adapter_due_locked(lb, &w) == 0, "traffic after a silence: a step due at once");
    pthread_mutex_unlock(&lb->lock);
    lb_adapter_est_tick(lb, &w);
    uint64_t t = lb_adapter_now_ms();
    bad |= check(lb_svc_get(lb, LB_PROTO_UDP, VIP, 80, &si) == 0 && si.rates.inbps > 0 &&
                     lb->est_next_ms > t && lb->est_next_ms <= t + LB_EST_TICK_MS,
                 "the thread steps, then every 2 s");
    lb_adapter_est_tick(lb, &w); /* not due yet: no step */
    struct lb_svc_info again;
    bad |= check(lb_svc_get(lb, LB_PROTO_UDP, VIP, 80, &again) == 0 && again.rates.inbps == si.rates.inbps,
                 "no step before the grid says so");
    lb_adapter_wait_close(&w, lb);
    bad |= check(lb_est_driven(lb) == 0, "the thread gone: lb_est_tick steps again");
    bad |= est_invariants(lb);
    lb_free(lb);
    return bad;
}

/* Wake-ups written to the eventfd since the last look (0: none). */
static uint64_t kicks(const struct lb_adapter_wait *w)
{
    uint64_t n = 0;
    return read(w->efd, &n, sizeof(n)) == (ssize_t)sizeof(n) ? n : 0;
}

/* The timers' thread going to sleep at now: when it means to look again, in ms (lb_adapter.h). */
static int sleep_ms(lb_t *lb, struct lb_adapter_wait *w, uint64_t now, int cap_ms)
{
    pthread_mutex_lock(&lb->lock);
    int ms = lb_adapter_sleep_ms_locked(w, lb_adapter_due_locked(lb, w), now, cap_ms);
    pthread_mutex_unlock(&lb->lock);
    return ms;
}

/* A sleeping timers' thread (struct lb_adapter_wait, struct lb_wake): what becomes due before it
 * means to look writes its eventfd, once a sleep; what is due later does not; its due time is the
 * first entry's expiry (no sweep), never sooner than the expiry's 100 ms after the last run. */
static int wake_check(void)
{
    lb_t *lb = new_lb();
    int bad = 0;
    struct lb_adapter_wait w = {.efd = -1}, w2 = {.efd = -1};
    if (lb_adapter_wait_open(&w, lb, 1) != 0 || !w.timers) {
        lb_adapter_wait_close(&w, lb);
        lb_free(lb);
        return check(0, "the timers' thread registers");
    }
    bad |= check(lb_adapter_wait_open(&w2, lb, 1) == 0 && !w2.timers, "one timers' thread per engine");
    lb_adapter_wait_close(&w2, lb);
    uint64_t now = 1000;
    uint8_t pkt[64];
    lb_expire(lb, now, 0); /* the schedulers see the clock: lblc/lblcr's next check 60 s on */
    w.last_expire_ms = now;
    bad |= check(sleep_ms(lb, &w, now, 3600 * 1000) == 60000, "empty table: asleep until the schedulers' next check");
    bad |= check(kicks(&w) == 0, "nothing woke it yet");
    uint32_t len = make_packet(pkt, LB_PROTO_UDP, 0xc0000501u, 5000, 80, 0);
    bad |= process_checked(lb, pkt, len, now + 10); /* 300 s: due after it looks */
    bad |= check(kicks(&w) == 0, "an entry due later than it looks does not wake it");
    lb_set_timeouts(lb, 0, 0, 1);
    len = make_packet(pkt, LB_PROTO_UDP, 0xc0000502u, 5001, 80, 0);
    bad |= process_checked(lb, pkt, len, now + 20);
    len = make_packet(pkt, LB_PROTO_UDP, 0xc0000503u, 5002, 80, 0);
    bad |= process_checked(lb, pkt, len, now + 30);
    bad |= check(kicks(&w) == 1, "an entry due sooner wakes it, once a sleep");
    /* It wakes: then it sleeps until that entry's expiry (1 s after its datagram), and runs it then. */
    short rev = lb_adapter_poll(&w, -1, 0, 0);
    bad |= check(rev == 0 && __atomic_load_n(&lb->wake.at_ms, __ATOMIC_RELAXED) == 0, "awake: nothing to wake");
    lb_adapter_est_tick(lb, &w); /* the service's first estimator step (traffic after a silence): the next
                                    one is 2 s on, on the real clock (far past `now`) */
    bad |= check(sleep_ms(lb, &w, now + 40, 3600 * 1000) == 2020 - 1040, "asleep until the first expiry");
    uint32_t n0 = lb_conn_count(lb);
    lb_adapter_expire_tick(lb, &w); /* the clock (CLOCK_MONOTONIC) is far past `now`: the 1 s entries go */
    bad |= check(lb_conn_count(lb) + 2 <= n0 && w.last_expire_ms > now, "the expiry runs when due");
    /* Its next run is no sooner than 100 ms after this one. */
    bad |= check(sleep_ms(lb, &w, w.last_expire_ms, 3600 * 1000) >= 100, "after the run: asleep 100 ms at least");
    kicks(&w);
    struct lb_fwd_conf f;
    fwd_for(&f, 0x21);
    lb_dest_set_fwd(lb, LB_PROTO_TCP, VIP, 80, RS1, 80, &f);
    bad |= check(kicks(&w) == 0, "a destination without held packets wakes nobody");
    lb_adapter_wait_close(&w, lb);
    bad |= check(lb->wake.fn == NULL && w.efd == -1, "closed: unregistered");
    lb_free(lb);
    return bad;
}

/* Signals on an overload eventfd since the last look (0: none). */
static uint64_t overload_signals_read(const struct lb_adapter_overload *o)
{
    uint64_t n = 0;
    return read(o->efd, &n, sizeof(n)) == (ssize_t)sizeof(n) ? n : 0;
}

/* lb_adapter_overload (lb_adapter.h): LB_ADAPTER_OVERLOAD_RUN full batches in a row signal once per
 * run; a short batch ends the run; a new run within LB_ADAPTER_OVERLOAD_SIGNAL_MS of the last signal
 * waits for the interval, then signals at its next full batch; `full` is the read's size or a
 * shorter queue's. */
static int overload_check(void)
{
    int bad = 0;
    struct lb_adapter_overload o;
    memset(&o, 0, sizeof(o));
    if (lb_adapter_overload_open(&o, 64) != 0)
        return check(0, "the overload eventfd opens");
    for (int i = 0; i < LB_ADAPTER_OVERLOAD_RUN - 1; i++)
        lb_adapter_overload_note(&o, 64);
    bad |= check(overload_signals_read(&o) == 0 && o.signals == 0, "a run one batch short: no signal");
    lb_adapter_overload_note(&o, 64);
    bad |= check(overload_signals_read(&o) == 1 && o.signals == 1, "a full run: one signal");
    for (int i = 0; i < 3 * LB_ADAPTER_OVERLOAD_RUN; i++)
        lb_adapter_overload_note(&o, 64);
    bad |= check(overload_signals_read(&o) == 0, "the run goes on: no second signal");
    lb_adapter_overload_note(&o, 63); /* the thread caught up: the run ends */
    for (int i = 0; i < LB_ADAPTER_OVERLOAD_RUN; i++)
        lb_adapter_overload_note(&o, 64);
    bad |= check(overload_signals_read(&o) == 0 && o.signals == 1, "a new run within the interval waits");
    struct timespec ts = {.tv_sec = 0, .tv_nsec = (LB_ADAPTER_OVERLOAD_SIGNAL_MS + 20) * 1000000L};
    nanosleep(&ts, NULL);
    lb_adapter_overload_note(&o, 64);
    bad |= check(overload_signals_read(&o) == 1 && o.signals == 2, "after the interval, the run signals");
    lb_adapter_overload_close(&o);
    bad |= check(o.efd == -1, "closed");
    lb_adapter_overload_close(&o);
    if (lb_adapter_overload_open(&o, 16) != 0) /* --queue-maxlen 16: a batch of 16 is the whole queue */
        return bad | check(0, "the overload eventfd opens again");
    for (int i = 0; i < LB_ADAPTER_OVERLOAD_RUN; i++)
        lb_adapter_overload_note(&o, 16);
    bad |= check(overload_signals_read(&o) == 1, "a short queue's full batches signal too");
    lb_adapter_overload_close(&o);
    return bad;
}

/* Keys the timers' own lb_conn_tick refreshes (lb_timer_next, before the expiry tick looks) start the
 * expiry's 100 ms window as a run would: two entries whose keys lag (their packets pushed the expiry
 * later) and come due 5 ms apart: after the first one's refresh the thread sleeps the window, not
 * until the second key (it slept 1 ms at a time through a burst of such keys). */
/* The expiry window starts on a key due within it (adapter.c). Real clock: the scenario needs the
 * second key still ahead when the check runs; a run slowed past it (valgrind on a loaded machine) is
 * not a failure of the code, so it is set up again (at most WINDOW_TRIES times). */
#define WINDOW_TRIES 5
static int window_attempt(int *valid)
{
    lb_t *lb = new_lb();
    int bad = 0;
    struct lb_adapter_wait w = {.efd = -1};
    uint8_t pkt[64];
    struct lb_action a;
    lb_set_timeouts(lb, 0, 0, 1);
    uint64_t now = lb_adapter_now_ms();
    lb_expire(lb, now - 1000, 0); /* the schedulers see the clock: their next check 60 s on */
    uint32_t len = make_packet(pkt, LB_PROTO_UDP, 0xc0000601u, 6000, 80, 0);
    bad |= process_checked(lb, pkt, len, now - 995); /* key: now + 5 */
    bad |= process_checked(lb, pkt, len, now); /* expiry: now + 1000, the key lags */
    len = make_packet(pkt, LB_PROTO_UDP, 0xc0000602u, 6001, 80, 0);
    bad |= process_checked(lb, pkt, len, now - 910); /* key: now + 90, within the window of any t < now + 90 */
    bad |= process_checked(lb, pkt, len, now);
    w.last_expire_ms = now - 1000;
    int ms = sleep_ms(lb, &w, now, 3600 * 1000);
    bad |= check(ms > 0 && ms <= 5, "asleep until the first lagging key");
    struct timespec ts = {.tv_sec = 0, .tv_nsec = 6 * 1000 * 1000};
    nanosleep(&ts, NULL);
    uint64_t t = lb_adapter_now_ms();
    *valid = t < now + 90; /* else the second key lagged too by the time we looked */
    if (*valid) {
        while (lb_timer_next(lb, t, out_buf, sizeof(out_buf), &a)) /* its lb_conn_tick refreshes the first key */
            ;
        lb_adapter_expire_tick(lb, &w);
        bad |= check(lb_conn_count(lb) == 2, "lagging keys are refreshed, their entries stay");
        bad |= check(w.last_expire_ms >= t, "a key due within the window starts it");
        bad |= check(sleep_ms(lb, &w, t, 3600 * 1000) >= 90, "then asleep for the window, not until the next key");
    }
    lb_free(lb);
    return bad;
}

static int window_check(void)
{
    for (int i = 0; i < WINDOW_TRIES; i++) {
        int valid = 0;
        int bad = window_attempt(&valid);
        if (bad || valid)
            return bad;
    }
    printf("window_check: the machine was too slow for the scenario %d times; not checked\n", WINDOW_TRIES);
    return 0;
}

static int locality_churn(long n)
{
    lb_t *lb = new_lb();
    uint8_t pkt[64];
    int bad = 0;
    uint64_t now = 1000;
    struct lb_fwd_conf f;
    lb_expire(lb, now, 0); /* arms the timers */
    for (long k = 0; k < n; k++) {
        uint16_t port = (uint16_t)(LOC_PORT + k % 3);
        uint32_t len = make_packet(pkt, LB_PROTO_TCP, 0xc0000200u + (uint32_t)(k % 200), (uint16_t)(1000 + k % 60000),
                                   port, 0x02);
        set_ip_addr(pkt, 16, 0x0a400000u + (uint32_t)k); /* 10.64.0.0 + k: a new key each time */
        bad |= probe_checked(lb, pkt, len, now);
        if (k % 97 == 0 && (k % 1009 < 10 || k % 1009 > 400)) { /* a connection to the VIP (not to RS3) */
            len = make_packet(pkt, LB_PROTO_TCP, 0xc0000300u + (uint32_t)(k % 50), (uint16_t)(1000 + k % 60000), port,
                              0x02);
            bad |= process_checked(lb, pkt, len, now);
        }
        if (k % 1009 == 10) { /* RS3, idle and heavy: new entries name it */
            struct lb_dest_conf d = {.addr = RS3, .port = 80, .fwd = LB_FWD_ROUTE, .weight = 100};
            lb_dest_add(lb, LB_PROTO_TCP, VIP, port, &d);
        }
        if (k % 1009 == 400) { /* ... until it goes: entries hold the only references left to it */
            lb_dest_del(lb, LB_PROTO_TCP, VIP, port, RS3, 80);
            for (long j = k - 60; j < k; j++) { /* their addresses again: RS3 is deleted, not freed */
                set_ip_addr(pkt, 16, 0x0a400000u + (uint32_t)j);
                bad |= probe_checked(lb, pkt, len, now);
            }
        }
        if (k % 1009 == 0) { /* RS1 deleted, probes name RS2 meanwhile, RS1 back */
            lb_dest_del(lb, LB_PROTO_TCP, VIP, port, RS1, 80);
            bad |= probe_checked(lb, pkt, len, now);
            struct lb_dest_conf d = {.addr = RS1, .port = 80, .fwd = LB_FWD_ROUTE, .weight = (int32_t)(k % 4)};
            bad |= check(lb_dest_add(lb, LB_PROTO_TCP, VIP, port, &d) == LB_OK, "a deleted destination comes back");
            fwd_for(&f, 0x30);
            lb_dest_set_fwd(lb, LB_PROTO_TCP, VIP, port, RS1, 80, &f);
        }
        if (k % 5003 == 0) { /* the service goes with its cache and destinations, and comes back */
            lb_svc_del(lb, LB_PROTO_UDP, VIP, port);
            struct lb_svc_conf s = {.proto = LB_PROTO_UDP, .addr = VIP, .port = port};
            strcpy(s.sched, loc_sched[k % 3]);
            bad |= check(lb_svc_add(lb, &s) == LB_OK, "re-create a service");
            for (uint32_t j = 0; j < 2; j++) {
                struct lb_dest_conf d = {.addr = RS1 + j, .port = 80, .fwd = LB_FWD_ROUTE, .weight = 1};
                lb_dest_add(lb, LB_PROTO_UDP, VIP, port, &d);
            }
        }
        now += 1; /* 24576 probes in less than the collector's 6 min: the caches reach their bound */
        if (k % 10000 == 9999) {
            now += 60000;
            lb_expire(lb, now, 0);
        }
    }
    /* Then the collector (idle 6 min, above 16384 entries), a switch away to rr and back (the
     * caches go with their references), a full check, a day: with some new entries between. */
    static const uint64_t jumps[5] = {420000, 60000, 1800000, 86400000, 86400000};
    for (int j = 0; j < 5; j++) {
        now += jumps[j];
        lb_expire(lb, now, 0);
        for (int i = 0; j == 2 && i < 3; i++) {
            struct lb_svc_conf s = {.proto = LB_PROTO_TCP, .addr = VIP, .port = (uint16_t)(LOC_PORT + i)};
            strcpy(s.sched, "rr");
            bad |= check(lb_svc_edit(lb, &s) == LB_OK, "switch to rr");
            strcpy(s.sched, loc_sched[i]);
            bad |= check(lb_svc_edit(lb, &s) == LB_OK, "switch back");
        }
        for (uint32_t k = 0; k < 300; k++) {
            uint32_t len = make_packet(pkt, LB_PROTO_TCP, 0xc0000200u, (uint16_t)(1000 + k), LOC_PORT, 0x02);
            set_ip_addr(pkt, 16, 0x0a500000u + k * 7 + (uint32_t)j);
            bad |= probe_checked(lb, pkt, len, now);
        }
    }
    lb_free(lb);
    return bad;
}

/* Every registered scheduler, so churn runs each one's hooks (init/done on a switch, add/del/upd). */
static const char *const sched_names[] = {
#define LB_SCHED(name) #name,
#include "lb_sched_list.h"
#undef LB_SCHED
};
#define N_SCHED (sizeof(sched_names) / sizeof(sched_names[0]))

/* A table that is always full and a FULLNAT pool that is always exhausted (issue 15): 48 entries,
 * 4 local ports, clients opening, completing, closing and resetting connections on DR (:80),
 * FULLNAT+TOA (:82), FULLNAT+SYN-proxy (:83) and FULLNAT with the PROXY protocol (:86, :87 with
 * SYN-proxy) while time moves, with the change marks read
 * (lb_conn_dump_changes, lb_conn_dump_sync_changes) and the table dumped as lbd's saves do. Checks: never more entries than
 * conn_max, early drops happen, each change record names a slot below the high-water mark, the
 * accounting invariants hold; ASan/valgrind watch the expiry heaps, port maps and marks. */
static int pressure_churn(long n)
{
    struct lb_config cfg = {.conn_max = 48, .hash_seed = 11, .lport_min = 2000, .lport_max = 2003};
    lb_t *lb = lb_new(&cfg);
    struct lb_sync_conf refresh = {1, 0, 8000, 3, 1}; /* the time rule with retries, persist mode */
    if (!lb || setup(lb) != 0 || lb_sync_master_set(lb, &refresh, 1) != LB_OK)
        return 1;
    uint8_t pkt[64];
    int bad = 0;
    uint64_t now = 1000;
    static const uint8_t flags[] = {0x02, 0x02, 0x02, 0x10, 0x10, 0x18, 0x11, 0x04};
    static const uint16_t ports[] = {80, 80, 82, 83, 80, 80, 86, 87}; /* DR half the time: a full table */
    struct lb_conn_info info[128];
    long seq_installed = 0;
    for (long k = 0; k < n; k++) {
        uint32_t x = (uint32_t)k * 2654435761u;
        uint16_t port = ports[(x >> 8) % 8];
        uint32_t len = make_packet(pkt, (x >> 20) % 7 ? LB_PROTO_TCP : LB_PROTO_UDP, 0xc0000400u + (x >> 24) % 40,
                                   (uint16_t)(3000 + (x >> 12) % 16), port, flags[(x >> 4) % 8]);
        bad |= process_checked(lb, pkt, len, now);
        bad |= check(lb_conn_count(lb) <= 48, "never more entries than conn_max");
        now += (x >> 16) % 5 ? 3 : 4001;
        if (k % 64 == 0) {
            uint32_t cursor = 0;
            do {
                int got = lb_conn_dump_changes(lb, now, info, 128, &cursor);
                bad |= check(got >= 0, "lb_conn_dump_changes succeeds");
                for (int i = 0; i < got; i++)
                    bad |= check(info[i].slot >= 1 && info[i].slot <= 48, "a change names a slot of the table");
            } while (cursor != 0);
            /* The sync master's own marks (read every other time: each set keeps its own) */
            if (k % 128 == 0)
                bad |= sync_changes_checked(lb, now, 48);
            if (k % 1024 == 0) /* switch between the kernel's packet rule and the time rule */
                bad |= check(lb_sync_master_set(lb, (k / 1024) % 2 ? &kernel_sync_defaults : &refresh, 1) == LB_OK,
                             "lb_sync_master_set takes a valid rule");
            if (k % 4096 == 0)
                lb_conn_sync_changes_reset(lb);
            cursor = 0;
            int got;
            while ((got = lb_conn_dump(lb, now, info, 128, &cursor)) == 128)
                ;
            /* A sync backup's updates (LB_CONN_F_UPDATE) of the entries just dumped: another TCP
             * state and expiry, through the active/inactive accounting checked below. */
            for (int i = 0; i < got; i++) {
                struct lb_conn_info u = info[i];
                u.flags |= LB_CONN_F_UPDATE;
                if (u.proto == LB_PROTO_TCP && !(u.flags & LB_CONN_F_TEMPLATE))
                    u.state = (uint8_t)((x >> 3) % LB_S_UDP);
                u.expires_in_ms = 1 + (int64_t)((x >> 5) % 120000);
                int rc = lb_conn_restore(lb, &u, now);
                bad |= check(rc == LB_RESTORE_UPDATED || rc == LB_EOPNOTSUPP || rc == LB_ESRCH || rc == LB_ENOENT ||
                             rc == LB_EEXIST || rc == LB_OK || rc == LB_EINVAL || rc == LB_ENOSPC,
                             "lb_conn_restore with LB_CONN_F_UPDATE answers a known code");
            }
            /* A sync backup's installs of SYN-proxied FULLNAT connections (lb_conn_restore_seq,
             * issue 18 item 3) into the same full table, with a local port that may be taken. */
            struct lb_conn_info ni = {.proto = LB_PROTO_TCP, .state = LB_S_ESTABLISHED,
                                      .flags = LB_CONN_F_SYNPROXY | LB_CONN_F_UPDATE,
                                      .caddr = 0xc6336400u + (x >> 24) % 40, .cport = (uint16_t)(5000 + k % 256),
                                      .vaddr = VIP, .vport = 83, .daddr = BRS1, .dport = 80, .laddr = LIP,
                                      .lport = (uint16_t)(2000 + (x >> 9) % 6), .expires_in_ms = 30000};
            struct lb_conn_seq sq = {.flags = LB_CONN_F_SYNPROXY, .cookie_isn = x, .client_isn = x >> 3, .d_in = x * 7u};
            int rs = lb_conn_restore_seq(lb, &ni, &sq, now);
            seq_installed += rs == LB_OK;
            bad |= check(rs == LB_OK || rs == LB_RESTORE_UPDATED || rs == LB_EEXIST || rs == LB_ENOSPC,
                         "lb_conn_restore_seq of a SYN-proxied FULLNAT connection answers a known code");
            struct lb_conn_seq sg;
            if (rs == LB_OK)
                bad |= check(lb_conn_seq_get(lb, LB_PROTO_TCP, ni.caddr, ni.cport, VIP, 83, now, &sg) == LB_OK &&
                                 sg.d_in == sq.d_in && sg.flags == LB_CONN_F_SYNPROXY,
                             "an installed SYN-proxied connection reports its offset");
            sq.px_len = 3; /* no PROXY header is 3 bytes, and there is no PROXY flag */
            bad |= check(lb_conn_restore_seq(lb, &ni, &sq, now) == LB_EINVAL, "inconsistent sequence state is refused");
            struct lb_action tact;
            while (lb_timer_next(lb, now, out_buf, sizeof(out_buf), &tact))
                ;
            bad |= check_accounting(lb, 0);
        }
    }
    struct lb_conn_stats st;
    lb_conn_stats(lb, &st);
    bad |= check(st.early_drops > 0, "a full table of half-open entries early-drops");
    bad |= check(seq_installed > 0, "sync installs of SYN-proxied FULLNAT connections happened");
    lb_expire(lb, now + 24 * 3600 * 1000ull, 0);
    bad |= check_accounting(lb, 1);
    lb_free(lb);
    return bad;
}

/* The service and local-address hashes through their growth (lb_internal.h LB_HASH_*): n services
 * on distinct VIPs added, half of them deleted, the rest cleared, with the control plane's host set
 * replaced in between; after each step every service is found, every VIP (and only those, and the
 * host addresses) is local, traffic reaches the services, and the listing keeps insertion order. */
#define GROW_VIP(i) (0x0ac80000u + 1u + (uint32_t)(i)) /* 10.200.0.1 and up */
static int growth_check(lb_t *lb, long n, long step_deleted, int cleared)
{
    int bad = 0;
    uint8_t pkt[64];
    struct lb_action act;
    struct lb_svc_info info;
    for (long i = 0; i < n; i++) {
        int live = !cleared && !(step_deleted && i % 2 == 1);
        bad |= check((lb_svc_get(lb, LB_PROTO_TCP, GROW_VIP(i), 80, &info) == LB_OK) == live,
                     "growth: a service is found exactly while it exists");
        bad |= check(lb_is_local(lb, lb_htonl(GROW_VIP(i))) == (live || i % 97 == 0),
                     "growth: a VIP or host address is local, nothing else");
        if (!live || i % 50)
            continue;
        uint32_t len = make_packet(pkt, LB_PROTO_TCP, 0xc0000201u + (uint32_t)i, 40000, 80, 0x02);
        set_ip_addr(pkt, 16, GROW_VIP(i));
        lb_process(lb, pkt, len, 1000, out_buf, sizeof(out_buf), &act);
        bad |= check(act.reason == LB_R_FORWARDED, "growth: a SYN to a service is forwarded");
        set_ip_addr(pkt, 12, GROW_VIP(i)); /* from the VIP itself: a local source */
        lb_process(lb, pkt, len, 1000, out_buf, sizeof(out_buf), &act);
        bad |= check(act.reason == LB_R_LOCAL_SRC, "growth: a SYN from a VIP is a local source");
    }
    bad |= check(!lb_is_local(lb, lb_htonl(0x0ac90001u)), "growth: an address never added is not local");
    return bad;
}

static int growth_churn(long n)
{
    lb_t *lb = new_lb();
    int bad = 0;
    int base = lb_svc_list(lb, NULL, 0);
    uint32_t *hosts = calloc((size_t)n, sizeof(*hosts));
    struct lb_svc_info *list = calloc((size_t)(base + n), sizeof(*list));
    if (!hosts || !list)
        exit(2);
    uint32_t nhosts = 0;
    for (long i = 0; i < n; i++) {
        bad |= check(svc_add(lb, LB_PROTO_TCP, GROW_VIP(i), 80, "rr", 0, 0) == LB_OK, "growth: add a service");
        bad |= check(dest_add(lb, LB_PROTO_TCP, GROW_VIP(i), 80, RS1, 80, LB_FWD_ROUTE, 1, 0x10) == LB_OK,
                     "growth: add its destination with its forwarding");
        if (i % 97 == 0) { /* the host set: some VIPs too, replaced whole while the table grows */
            hosts[nhosts++] = GROW_VIP(i);
            bad |= check(lb_local_addrs_set(lb, hosts, nhosts) == LB_OK, "growth: set the host addresses");
        }
    }
    bad |= growth_check(lb, n, 0, 0);
    for (long i = 1; i < n; i += 2)
        bad |= check(lb_svc_del(lb, LB_PROTO_TCP, GROW_VIP(i), 80) == LB_OK, "growth: delete a service");
    bad |= growth_check(lb, n, 1, 0);
    int listed = lb_svc_list(lb, list, (uint32_t)(base + n));
    bad |= check(listed == base + (int)(n + 1) / 2, "growth: the listing holds the live services");
    for (int k = base; k < listed && k < base + n; k++)
        bad |= check(list[k].conf.addr == GROW_VIP(2 * (k - base)), "growth: the listing keeps insertion order");
    lb_clear(lb);
    bad |= growth_check(lb, n, 1, 1);
    bad |= check(lb_local_addrs_set(lb, NULL, 0) == LB_OK, "growth: empty the host set");
    for (long i = 0; i < n; i += 97)
        bad |= check(!lb_is_local(lb, lb_htonl(GROW_VIP(i))), "growth: nothing is local once all is gone");
    free(hosts);
    free(list);
    lb_free(lb);
    return bad;
}

static int cmd_churn(long rounds)
{
    lb_t *lb = new_lb();
    uint8_t pkt[64];
    int bad = 0;
    uint64_t now = 1000;
    struct lb_fwd_conf f;
    for (long r = 0; r < rounds; r++) {
        uint32_t rs = RS1 + (uint32_t)(r % 2);
        /* Churn: delete and re-add a tunnel destination, invalidate and reinstall state,
         * edit weights, recreate the whole tunnel service every 7 rounds. */
        struct lb_dest_conf d = {.addr = rs, .port = 80, .fwd = LB_FWD_TUNNEL, .weight = (int32_t)(r % 3),
                                 .u_threshold = (uint32_t)(r % 4), .l_threshold = r % 4 ? (uint32_t)(r % 2) : 0};
        lb_dest_del(lb, LB_PROTO_TCP, VIP, 81, rs, 80);
        lb_dest_add(lb, LB_PROTO_TCP, VIP, 81, &d);
        if (r % 3 == 0)
            lb_dest_set_fwd(lb, LB_PROTO_TCP, VIP, 81, rs, 80, NULL);
        else {
            fwd_for(&f, (uint8_t)r);
            lb_dest_set_fwd(lb, LB_PROTO_TCP, VIP, 81, rs, 80, &f);
        }
        d.weight = 1;
        d.u_threshold = (uint32_t)((r / 4) % 5); /* thresholds changing under connections: OVERLOAD re-evaluated */
        d.l_threshold = 0;
        lb_dest_edit(lb, LB_PROTO_TCP, VIP, 81, &d);
        if (r % 7 == 0) {
            lb_svc_del(lb, LB_PROTO_TCP, VIP, 81);
            svc_add(lb, LB_PROTO_TCP, VIP, 81, "wlc", 0, 0);
            for (uint32_t j = 0; j < 2; j++)
                dest_add(lb, LB_PROTO_TCP, VIP, 81, RS1 + j, 80, LB_FWD_TUNNEL, 1, (uint8_t)j);
        }
        if (r % 3 == 1) {
            /* Switch the tunnel service's scheduler (keeps its destinations and connections). */
            struct lb_svc_conf s = {.proto = LB_PROTO_TCP, .addr = VIP, .port = 81};
            strcpy(s.sched, sched_names[(size_t)(r / 3) % N_SCHED]);
            s.flags = (r / 3) % 2 ? LB_SVC_F_SCHED1 | LB_SVC_F_SCHED2 : 0; /* sh/mh: fallback and port */
            bad |= check(lb_svc_edit(lb, &s) == LB_OK, "every registered scheduler can be switched to");
        }
        if (r % 5 == 0) {
            lb_laddr_del(lb, LB_PROTO_TCP, VIP, 82, LIP);
            lb_laddr_add(lb, LB_PROTO_TCP, VIP, 82, LIP);
        }
        for (int k = 0; k < 8; k++) {
            uint32_t len = make_packet(pkt, LB_PROTO_TCP, 0xc0000200u + (uint32_t)k, (uint16_t)(1000 + r % 50000),
                                       (uint16_t)(81 + (k & 1)), 0x02);
            bad |= process_checked(lb, pkt, len, now);
        }
        /* Packets held while the tunnel destination had no forwarding state leave from the timers
         * once it has (or are dropped 3 s on): a timer frame always carries its bytes. */
        struct lb_action tact;
        while (lb_timer_next(lb, now, out_buf, sizeof(out_buf), &tact)) {
            bad |= check(tact.verdict != LB_V_XMIT_L2 || (tact.out_len > 0 && tact.ifindex != 0),
                         "a timer frame has its bytes and an interface");
            bad |= check(tact.out_len <= sizeof(out_buf), "a timer action fits its buffer");
        }
        now += r % 11 == 0 ? LB_L2Q_TIMEOUT_MS : 1;
        /* One-packet datagrams to mh (VIP:84) while its destinations' weights change: each is
         * scheduled and leaves nothing behind. */
        struct lb_dest_conf w = {.addr = RS1 + (uint32_t)(r % 3), .port = 84, .fwd = LB_FWD_ROUTE,
                                 .weight = (int32_t)(r % 4)};
        lb_dest_edit(lb, LB_PROTO_UDP, VIP, 84, &w);
        uint32_t before = lb_conn_count(lb);
        for (int k = 0; k < 4; k++) {
            uint32_t len = make_packet(pkt, LB_PROTO_UDP, 0xc0000300u + (uint32_t)k, (uint16_t)(2000 + r % 50000),
                                       84, 0);
            bad |= process_checked(lb, pkt, len, now);
        }
        bad |= check(lb_conn_count(lb) <= before, "one-packet datagrams leave no connection entry");
        /* NAT: a destination's method switches between masq and route (new connections only: the
         * existing ones keep their reply tuple until they go); SYNs in, the real servers' replies
         * (source RIP:8080 towards the client) out. */
        struct lb_dest_conf m = {.addr = BRS1 + (uint32_t)(r % 2), .port = NAT_RPORT,
                                 .fwd = r % 4 == 3 ? LB_FWD_ROUTE : LB_FWD_MASQ, .weight = 1};
        lb_dest_edit(lb, LB_PROTO_TCP, VIP, NAT_PORT, &m);
        for (int k = 0; k < 4; k++) {
            uint32_t client = 0xc0000400u + (uint32_t)k;
            uint16_t cport = (uint16_t)(3000 + r % 50000);
            uint32_t len = make_packet(pkt, LB_PROTO_TCP, client, cport, NAT_PORT, k == 3 ? 0x04 : 0x02);
            bad |= process_checked(lb, pkt, len, now);
            len = make_packet(pkt, LB_PROTO_TCP, BRS1 + (uint32_t)(k & 1), NAT_RPORT, cport, k & 2 ? 0x11 : 0x12);
            set_ip_addr(pkt, 16, client); /* to the client: the reply tuple */
            bad |= process_checked(lb, pkt, len, now);
        }
        now += 37;
        if (r % 100 == 0)
            lb_expire(lb, now, 0);
        bad |= check_accounting(lb, 0);
        /* The estimator's read of what moved: small pieces drain it, then nothing is left. */
        struct lb_svc_info moved[2];
        int got, passes = 0;
        while ((got = lb_svc_list_changed(lb, moved, 2)) == 2 && ++passes < 64)
            bad |= check(moved[0].conf.proto != 0 && moved[1].conf.proto != 0, "moved services are reported");
        bad |= check(got >= 0 && got < 2, "lb_svc_list_changed drains in pieces of cap");
        bad |= check(lb_svc_list_changed(lb, moved, 2) == 0, "each moved service is reported once");
        if (r % 7 == 0) { /* the rate estimators' step among the churn (deleted, revived, zeroed) */
            if (r % 91 == 0)
                lb_zero_svc(lb, LB_PROTO_TCP, VIP, 80);
            lb_est_step(lb);
            bad |= est_invariants(lb);
        }
    }
    lb_expire(lb, now + 24 * 3600 * 1000ull, 0); /* every entry dies */
    bad |= check_accounting(lb, 1);
    uint64_t counts[LB_R_COUNT];
    lb_counters(lb, counts, LB_R_COUNT);
    bad |= check(rounds < 10 || counts[LB_R_L2_QUEUED] > 0, "churn holds packets for unresolved destinations");
    lb_free(lb);
    bad |= locality_churn(rounds * 15);
    bad |= sync_rule_check();
    bad |= fastpath_check();
    bad |= wake_check();
    bad |= overload_check();
    bad |= est_check();
    bad |= window_check();
    bad |= pressure_churn(rounds * 4);
    bad |= growth_churn(512 + rounds); /* past 256 services and VIPs: both hashes grow */
    printf("churned %ld rounds: %s\n", rounds, bad ? "FAILED" : "ok");
    return bad;
}

static long rss_kib(void)
{
    long pages = 0, resident = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (f) {
        if (fscanf(f, "%ld %ld", &pages, &resident) != 2)
            resident = 0;
        fclose(f);
    }
    return resident * (sysconf(_SC_PAGESIZE) / 1024);
}

/* The connection table at a size (bench scale): `active` established TCP flows to VIP:80 (DR) are
 * made first, then `idle` UDP entries to VIP:80, so idle entries sit in front of active ones in
 * their chains (the less favourable order); then `passes` rounds of one ACK per active flow are
 * timed. Prints one JSON line: the time per packet (the fastest of 20 blocks, and the mean), and
 * the resident memory the table took per entry (every array it allocated, as far as entries
 * touched it). */
static int cmd_table(long idle, long active, long passes)
{
    if (idle < 0 || active < 1 || passes < 1 || idle + active > LB_CONN_MAX_LIMIT - 16)
        return 2;
    long rss0 = rss_kib();
    struct lb_config cfg = {.conn_max = (uint32_t)(idle + active + 16), .hash_seed = 7};
    lb_t *lb = lb_new(&cfg);
    if (!lb || setup(lb) != 0)
        return 2;
    long rss1 = rss_kib();
    uint8_t (*acks)[64] = calloc((size_t)active, 64);
    uint32_t *lens = calloc((size_t)active, sizeof(*lens));
    if (!acks || !lens)
        return 2;
    uint8_t pkt[64];
    struct lb_action act;
    const uint64_t now = 1000;
    for (long i = 0; i < active; i++) {
        uint32_t src = 0xc0000000u + (uint32_t)(i / 60000), len;
        uint16_t sport = (uint16_t)(1024 + i % 60000);
        len = make_packet(pkt, LB_PROTO_TCP, src, sport, 80, 0x02);
        lb_process(lb, pkt, len, now, out_buf, sizeof(out_buf), &act);
        lens[i] = make_packet(acks[i], LB_PROTO_TCP, src, sport, 80, 0x10);
        lb_process(lb, acks[i], lens[i], now, out_buf, sizeof(out_buf), &act);
    }
    for (long i = 0; i < idle; i++) {
        uint32_t len = make_packet(pkt, LB_PROTO_UDP, 0x0b000000u + (uint32_t)(i / 60000), (uint16_t)(1024 + i % 60000),
                                   80, 0);
        lb_process(lb, pkt, len, now, out_buf, sizeof(out_buf), &act);
    }
    long rss2 = rss_kib();
    uint32_t entries = lb_conn_count(lb);
    /* Timed in TABLE_BLOCKS blocks of passes: the fastest block is the table's own cost (on a
     * shared machine other work preempts some blocks or evicts the cache under them); the mean
     * over all blocks is printed too. */
    enum { TABLE_BLOCKS = 20 };
    uint64_t forwarded = 0;
    double best_ns = 0, total_ns = 0;
    long done = 0;
    for (int b = 0; b < TABLE_BLOCKS; b++) {
        long n = passes * (b + 1) / TABLE_BLOCKS - passes * b / TABLE_BLOCKS;
        if (n <= 0)
            continue;
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        for (long p = 0; p < n; p++)
            for (long i = 0; i < active; i++) {
                lb_process(lb, acks[i], lens[i], now + 1, out_buf, sizeof(out_buf), &act);
                forwarded += act.verdict == LB_V_XMIT_L2;
            }
        clock_gettime(CLOCK_MONOTONIC, &t1);
        double ns = (double)(t1.tv_sec - t0.tv_sec) * 1e9 + (double)(t1.tv_nsec - t0.tv_nsec);
        double per = ns / ((double)n * active);
        if (done == 0 || per < best_ns)
            best_ns = per;
        total_ns += ns;
        done += n;
    }
    printf("{\"idle\": %ld, \"active\": %ld, \"entries\": %u, \"buckets\": %u, \"forwarded\": %llu, "
           "\"ns_per_pkt\": %.1f, \"ns_per_pkt_mean\": %.1f, \"rss_empty_table_kib\": %ld, "
           "\"rss_full_table_kib\": %ld, \"bytes_per_entry\": %.1f}\n",
           idle, active, entries, lb_hash_buckets(lb), (unsigned long long)forwarded, best_ns,
           total_ns / ((double)done * active), rss1 - rss0, rss2 - rss0,
           entries ? (double)(rss2 - rss0) * 1024.0 / entries : 0.0);
    free(acks);
    free(lens);
    lb_free(lb);
    return entries == (uint32_t)(idle + active) && forwarded == (uint64_t)(passes * active) ? 0 : 1;
}

/* The packets bench scale counts instructions of (callgrind --toggle-collect=measured_process). */
__attribute__((noinline)) int measured_process(lb_t *lb, const uint8_t *pkt, uint32_t len, uint64_t now,
                                               struct lb_action *act);
__attribute__((noinline)) int measured_process(lb_t *lb, const uint8_t *pkt, uint32_t len, uint64_t now,
                                               struct lb_action *act)
{
    return lb_process(lb, pkt, len, now, out_buf, sizeof(out_buf), act);
}

/* FULLNAT new connections (bench scale): `m` SYNs of new clients to VIP:82 (FULLNAT+TOA, two real
 * servers, one local address, ports 1024..65535), either with the pool free (accept) or after
 * every port of the local address was taken towards both real servers (refuse: 129,024
 * connections first). Only the m SYNs go through measured_process. Exit 1 if a SYN's outcome is
 * not the mode's. */
static int cmd_fnatcost(const char *mode, long m)
{
    int refuse = strcmp(mode, "refuse") == 0;
    struct lb_config cfg = {.conn_max = 262144, .hash_seed = 7};
    lb_t *lb = lb_new(&cfg);
    if (!lb || setup(lb) != 0 || m < 1)
        return 2;
    uint8_t pkt[64];
    struct lb_action act;
    long filled = 0, refused_in_a_row = 0;
    while (refuse && refused_in_a_row < 2 && filled < 200000) {
        uint32_t len = make_packet(pkt, LB_PROTO_TCP, 0x0b000000u + (uint32_t)(filled / 60000),
                                   (uint16_t)(1024 + filled % 60000), 82, 0x02);
        lb_process(lb, pkt, len, 1000, out_buf, sizeof(out_buf), &act);
        refused_in_a_row = act.reason == LB_R_NO_LADDR ? refused_in_a_row + 1 : 0;
        filled++;
    }
    int bad = 0;
    for (long i = 0; i < m; i++) {
        uint32_t len = make_packet(pkt, LB_PROTO_TCP, 0xc0000000u + (uint32_t)(i / 60000), (uint16_t)(1024 + i % 60000),
                                   82, 0x02);
        measured_process(lb, pkt, len, 1000, &act);
        bad |= act.reason != (refuse ? LB_R_NO_LADDR : LB_R_FORWARDED);
    }
    printf("{\"mode\": \"%s\", \"m\": %ld, \"filled\": %ld, \"entries\": %u, \"as_expected\": %s}\n", mode, m,
           filled, lb_conn_count(lb), bad ? "false" : "true");
    lb_free(lb);
    return bad;
}

int main(int argc, char **argv)
{
    if (argc >= 3 && strcmp(argv[1], "--svcs") == 0) {
        fill_svcs = strtol(argv[2], NULL, 10);
        argv[2] = argv[0];
        argc -= 2;
        argv += 2;
    }
    if (argc >= 3 && strcmp(argv[1], "replay") == 0)
        return cmd_replay(argc - 2, argv + 2);
    if (argc >= 4 && strcmp(argv[1], "bench") == 0)
        return cmd_bench(strtol(argv[2], NULL, 10), argc - 3, argv + 3, 0);
    if (argc >= 4 && strcmp(argv[1], "bench-copy") == 0)
        return cmd_bench(strtol(argv[2], NULL, 10), argc - 3, argv + 3, 1);
    if (argc == 3 && strcmp(argv[1], "churn") == 0)
        return cmd_churn(strtol(argv[2], NULL, 10));
    if (argc == 4 && strcmp(argv[1], "fnatcost") == 0)
        return cmd_fnatcost(argv[2], strtol(argv[3], NULL, 10));
    if (argc == 5 && strcmp(argv[1], "table") == 0)
        return cmd_table(strtol(argv[2], NULL, 10), strtol(argv[3], NULL, 10), strtol(argv[4], NULL, 10));
    fprintf(stderr, "usage: harness replay FILE... | [--svcs K] bench N FILE... | [--svcs K] bench-copy N FILE... | churn ROUNDS | table IDLE ACTIVE PASSES | fnatcost accept|refuse M\n");
    return 2;
}
#endif
