/*
 * lb_internal.h - structures shared by the C sources of the fast path.
 *
 * Not part of the Python contract (that is lb_api.h alone). Invariants are
 * stated next to the fields they constrain.
 */
#ifndef LB_INTERNAL_H
#define LB_INTERNAL_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "lb_api.h"

#define LB_UNUSED __attribute__((unused))
#define LB_LIKELY(x) __builtin_expect(!!(x), 1)
#define LB_UNLIKELY(x) __builtin_expect(!!(x), 0)

#define LB_PROTO_ICMP 1
#define LB_PROTO_TCP 6
#define LB_PROTO_UDP 17

/* Internal connection flags (the low bits match LB_CONN_F_* in lb_api.h). */
#define LB_CF_INACTIVE LB_CONN_F_INACTIVE
#define LB_CF_NOOUTPUT LB_CONN_F_NOOUTPUT
#define LB_CF_TOA_DONE LB_CONN_F_TOA_DONE
#define LB_CF_TEMPLATE LB_CONN_F_TEMPLATE
#define LB_CF_SYNPROXY LB_CONN_F_SYNPROXY /* state in lb->sp[slot], sequence numbers translated */
#define LB_CF_ASSURED LB_CONN_F_ASSURED   /* templates only */
#define LB_CF_PROXY LB_CONN_F_PROXY       /* PROXY protocol: state in lb->sp[slot] (proxyproto.c) */
#define LB_CF_RPORT_CLIENT 0x2000  /* the real server's port is the client's (vport), not the destination's:
                                      a destination without a port, or any destination of a persistent
                                      port-zero or fwmark service (ip_vs_schedule, ip_vs_sched_persist) */
#define LB_CF_TMPL_DEAD 0x4000     /* template invalidated (its destination left): never matches */
#define LB_CF_USED 0x8000          /* slot holds a live (possibly expired, not yet reaped) entry */

/* Directions of a connection's two tuples. */
#define LB_DIR_IN 0                /* client -> VIP */
#define LB_DIR_OUT 1               /* real server -> director: the reply tuple (lb_xmit.h) */

/* Slots of the forwarding-method table (lb_xmit.h): one per enum lb_fwd value. */
#define LB_XMIT_MAX 4

/* The service hash (svc.c) and the local-address hash (local.c): chained, 2^bits buckets, doubled
 * whenever entries outnumber buckets, so a lookup walks about one entry however many services and
 * VIPs there are (DESIGN: steering O(1) in the number of services; the kernel's fixed 256-bucket
 * service table walks ~40 entries per lookup at 10,000 services). Never shrunk. Bounded: past
 * 2^LB_HASH_MAX_BITS entries the chains lengthen instead, and a failed allocation keeps the old
 * table (correct, only slower). */
#define LB_HASH_MIN_BITS 8u   /* 256 buckets to start */
#define LB_HASH_MAX_BITS 20u  /* 1,048,576 buckets: 8 MiB of chain heads per table at most */

/* ---------------------------------------------------------------- parsing */

/* A parsed packet. All multi-byte fields are kept in NETWORK byte order, as
 * they sit in the packet, so the hot path never byte-swaps. */
struct lb_pkt {
    const uint8_t *data;   /* start of the IPv4 header */
    uint8_t *wdata;        /* data, writable: the caller of lb_process_inplace lends its bytes, so a method that
                              changes only the TTL and header checksum (DR) does so here instead of copying the
                              packet to out; NULL otherwise (every parser sets it so) */
    uint32_t len;          /* bytes from data up to the IP total length */
    uint32_t ihl;          /* IP header length in bytes (20..60) */
    uint8_t proto;
    uint8_t tcp_flags;     /* TCP only */
    union {
        struct {
            uint32_t saddr, daddr; /* network order */
        };
        uint64_t addrs;    /* both, as lb_key_addrs(saddr, daddr): the lookup key */
    };
    union {
        struct {
            uint16_t sport, dport; /* network order */
        };
        uint32_t ports;    /* both, as lb_key_ports(sport, dport) */
    };
    uint32_t l4off;        /* offset of the transport header */
    uint32_t l4len;        /* transport header + payload bytes */
    uint32_t tcp_seq;      /* TCP sequence number, network order */
    uint32_t tcp_doff;     /* TCP header length in bytes */
    uint32_t tcp_ack;      /* TCP acknowledgment number, network order */
    uint16_t tcp_win;      /* TCP window, network order */
    uint32_t payload_len;  /* TCP/UDP payload bytes */
};

#define LB_TCP_FIN 0x01
#define LB_TCP_SYN 0x02
#define LB_TCP_RST 0x04
#define LB_TCP_ACK 0x10

/* Returns LB_R_FORWARDED when the packet is a well-formed, unfragmented IPv4
 * TCP/UDP packet (p filled), LB_R_ICMP for a well-formed ICMP packet (p filled
 * up to the IP header: l4off/l4len describe the ICMP message), else the
 * reason to give up (see docs/fastpath.md). */
int lb_parse(const uint8_t *buf, uint32_t len, struct lb_pkt *p);

static inline void lb_put16(uint8_t *b, uint16_t v) { b[0] = (uint8_t)(v >> 8); b[1] = (uint8_t)v; }
static inline uint16_t lb_get16(const uint8_t *b) { return (uint16_t)((b[0] << 8) | b[1]); }

/* The sum of the five raw (native-order) 32-bit words of an option-less IPv4 header: see
 * the checksum section for why raw words serve. */
static inline uint64_t lb_sum20_raw(const uint8_t *b)
{
    uint32_t w0, w1, w2, w3, w4;
    __builtin_memcpy(&w0, b, 4);
    __builtin_memcpy(&w1, b + 4, 4);
    __builtin_memcpy(&w2, b + 8, 4);
    __builtin_memcpy(&w3, b + 12, 4);
    __builtin_memcpy(&w4, b + 16, 4);
    return (uint64_t)w0 + w1 + w2 + w3 + w4;
}

/* Verify an IPv4 header's checksum (ihl a multiple of 4, 20..60, version 4). The header is
 * right when the one's-complement sum of its 16-bit words is all ones, i.e. when the plain
 * sum is a non-zero multiple of 0xffff: 2^16 == 1 modulo 0xffff, so the end-around carries
 * of one's-complement addition and the split into 16-bit words do not change the residue,
 * and byte order only multiplies it by 2^8, which is invertible modulo 0xffff. So native
 * 32-bit words summed into 64 bits and one remainder suffice; the version nibble (4) makes
 * the sum non-zero. */
static inline int lb_ip_hdr_csum_ok(const uint8_t *b, uint32_t ihl)
{
    uint64_t acc = lb_sum20_raw(b); /* the common 20-byte header, unrolled */
    for (uint32_t i = 20; i < ihl; i += 4) {
        uint32_t w;
        __builtin_memcpy(&w, b + i, 4);
        acc += w;
    }
    return acc % 0xffff == 0;
}

/* lb_parse, inlined into lb_process. Every read of packet bytes is preceded by a length
 * check against the smaller of the buffer length and the IP total length. The order of the
 * checks is part of the contract (docs/fastpath.md): both engines must give the same reason
 * for the same bytes. */
static inline __attribute__((always_inline)) int lb_parse_inline(const uint8_t *buf, uint32_t len,
                                                                 struct lb_pkt *p)
{
    if (LB_UNLIKELY(len < 20 || (buf[0] >> 4) != 4)) {
        /* In the contract's order: empty -> malformed, IPv6 -> not_ipv4, else malformed. */
        if (len >= 1 && (buf[0] >> 4) == 6)
            return LB_R_NOT_IPV4;
        return LB_R_MALFORMED;
    }
    uint32_t ihl = (uint32_t)(buf[0] & 0x0f) * 4;
    uint32_t tot_len = lb_get16(buf + 2);
    /* ihl <= tot_len <= len also keeps the header inside the buffer. */
    if (ihl < 20 || tot_len < ihl || tot_len > len)
        return LB_R_MALFORMED;
    if (!lb_ip_hdr_csum_ok(buf, ihl))
        return LB_R_BAD_CSUM;
    uint16_t frag_n;
    __builtin_memcpy(&frag_n, buf + 6, 2);
    if (frag_n & __builtin_bswap16(0x3fff)) /* MF flag or a non-zero fragment offset */
        return LB_R_FRAGMENT;

    p->data = buf;
    p->wdata = NULL;
    p->len = tot_len; /* link-layer padding after the IP total length is ignored */
    p->ihl = ihl;
    p->proto = buf[9];
    __builtin_memcpy(&p->addrs, buf + 12, 8); /* saddr, daddr: adjacent in both */
    p->l4off = ihl;
    p->l4len = tot_len - ihl;

    if (LB_LIKELY(p->proto == LB_PROTO_TCP)) {
        if (p->l4len < 20)
            return LB_R_MALFORMED;
        const uint8_t *th = buf + ihl;
        uint32_t doff = (uint32_t)(th[12] >> 4) * 4;
        if (doff < 20 || doff > p->l4len)
            return LB_R_MALFORMED;
        __builtin_memcpy(&p->ports, th, 4); /* sport, dport */
        __builtin_memcpy(&p->tcp_seq, th + 4, 4);
        __builtin_memcpy(&p->tcp_ack, th + 8, 4);
        __builtin_memcpy(&p->tcp_win, th + 14, 2);
        p->tcp_doff = doff;
        p->payload_len = p->l4len - doff;
        p->tcp_flags = th[13];
        return LB_R_FORWARDED;
    }
    /* Not TCP: the TCP fields are defined as zero. */
    p->tcp_flags = 0;
    p->tcp_seq = 0;
    p->tcp_ack = 0;
    p->tcp_win = 0;
    p->tcp_doff = 0;
    p->ports = 0;
    p->payload_len = 0;
    if (p->proto == LB_PROTO_UDP) {
        if (p->l4len < 8)
            return LB_R_MALFORMED;
        /* RFC 768's length covers header and data: below 8 or beyond the IP payload the datagram
         * is malformed, and the real server's udp_rcv would drop it (short_packet). A shorter
         * length with trailing bytes is valid (the receiver trims). */
        uint32_t ulen = lb_get16(buf + ihl + 4);
        if (ulen - 8u > p->l4len - 8u) /* ulen < 8 wraps around: one unsigned compare for both bounds */
            return LB_R_MALFORMED;
        __builtin_memcpy(&p->ports, buf + ihl, 4); /* sport, dport */
        p->payload_len = p->l4len - 8;
        return LB_R_FORWARDED;
    }
    if (p->proto == LB_PROTO_ICMP) {
        if (p->l4len < 8)
            return LB_R_MALFORMED;
        return LB_R_ICMP;
    }
    return LB_R_NOT_LB_PROTO;
}
/* Walk TCP options: th is the TCP header, doff its length. Call with *i = 20; each call moves
 * to the next option and returns 1 with its kind, length and offset (*at), or 0 at the end of
 * the list (EOL, or a malformed length: nothing past it is trusted). NOPs are skipped. */
static inline int lb_tcp_opt_next(const uint8_t *th, uint32_t doff, uint32_t *i, uint8_t *kind, uint8_t *len,
                                  uint32_t *at)
{
    while (*i < doff) {
        uint8_t k = th[*i];
        if (k == 0)
            return 0;
        if (k == 1) {
            (*i)++;
            continue;
        }
        if (*i + 1 >= doff)
            return 0;
        uint8_t l = th[*i + 1];
        if (l < 2 || *i + l > doff)
            return 0;
        *kind = k;
        *len = l;
        *at = *i;
        *i += l;
        return 1;
    }
    return 0;
}

/* Parse the packet quoted by an ICMP error (IP header + at least 8 bytes):
 * fills q with addresses, ports (TCP/UDP) and protocol; q->len is the quoted
 * byte count. Returns 0, or -1 when the quote is unusable. */
int lb_parse_quoted(const uint8_t *quote, uint32_t len, struct lb_pkt *q);

/* ---------------------------------------------------------------- checksums */
uint16_t lb_csum_fold(uint32_t sum);
/* Partial sum of buf in host order (as the sum of big-endian 16-bit words, modulo 0xffff and
 * zero only for all-zero data): add host-order values to it, finish with lb_csum_fold. */
uint32_t lb_csum_partial(const uint8_t *buf, uint32_t len, uint32_t sum);
uint16_t lb_ip_csum(const uint8_t *hdr, uint32_t ihl); /* 0 when the header's checksum is right */
/* RFC 1624 incremental update of a 16-bit checksum field (network order in
 * memory at `field`) for a 16-bit word changing from old to new (host order). */
void lb_csum_replace2(uint8_t *field, uint16_t old_word, uint16_t new_word);
void lb_csum_replace4(uint8_t *field, uint32_t old_n, uint32_t new_n); /* both network order */

/* The same arithmetic in "raw" order: words summed as they sit in memory (native loads, no
 * byte swaps) and the result stored the same way give the very bytes that big-endian
 * arithmetic gives, because the one's-complement sum does not depend on byte order
 * (RFC 1071 2.B). Raw 32- and 64-bit words may be added whole: 2^16 == 1 modulo 0xffff. */

/* Fold a sum of raw words to 16 bits with end-around carries: congruent to s modulo 0xffff,
 * in 1..0xffff unless s == 0 (exactly lb_csum_fold's result, in raw order). */
static inline uint16_t lb_csum_fold_raw(uint64_t s)
{
    uint32_t lo = (uint32_t)s;
    uint32_t t = lo + (uint32_t)(s >> 32);
    t += t < lo; /* the carry out of bit 31 comes back in at bit 0 */
    uint16_t a = (uint16_t)t;
    uint16_t u = (uint16_t)(a + (uint16_t)(t >> 16));
    u = (uint16_t)(u + (u < a));
    return u;
}

/* The change of one raw 32-bit (or 16-bit) word from old to new, for lb_csum_apply_raw;
 * deltas of several words add up (a handful of them stays far below 2^64). */
static inline uint64_t lb_csum_delta32(uint32_t old_raw, uint32_t new_raw)
{
    return (uint64_t)(uint32_t)~old_raw + new_raw;
}

static inline uint64_t lb_csum_delta16(uint16_t old_raw, uint16_t new_raw)
{
    return (uint64_t)(uint16_t)~old_raw + new_raw;
}

/* RFC 1624 eqn. 3, HC' = ~(~HC + ~m + m'), for all the changed words of a packet at once: the
 * same result as one update per word, since each fold keeps the sum's residue and its
 * being zero. */
static inline void lb_csum_apply_raw(uint8_t *field, uint64_t delta)
{
    uint16_t hc;
    __builtin_memcpy(&hc, field, 2);
    hc = (uint16_t)~lb_csum_fold_raw(delta + (uint16_t)~hc);
    __builtin_memcpy(field, &hc, 2);
}

/* ---------------------------------------------------------------- tables */

/* Per-destination forwarding state. Invariant: a destination's `fwd` is either
 * NULL or points to a calloc'ed struct that was filled completely from one
 * successful control-plane lookup before being published; it is never edited
 * in place (replaced whole, or dropped to NULL on invalidation). */
struct lb_dest_fwd {
    struct lb_fwd_conf conf;
    uint8_t l2hdr[LB_L2HDR_LEN]; /* DR: precomputed Ethernet header */
};

struct lb_svc;

struct lb_dest {
    struct lb_dest_conf conf;    /* host order (API form) */
    uint32_t addr_n;             /* conf.addr, network order */
    uint16_t port_n;             /* conf.port, network order */
    uint32_t flags;              /* LB_DEST_F_AVAILABLE (exactly while svc != NULL) | LB_DEST_F_OVERLOAD */
    int32_t last_weight;         /* the kernel's last_weight: the weight of the last add, or of the last edit
                                    to a non-zero weight (__ip_vs_update_dest); mh sizes its share by it */
    /* Connection counts as the kernel keeps them since Debian's 6.1.187 ("ipvs: add totalconns for
     * dest"): every bound connection (not template) in totalconns, the active ones also in
     * activeconns; InActConn is derived (lb_dest_inactconns). */
    uint32_t activeconns;
    uint32_t totalconns;
    uint32_t persistconns;       /* persistence templates */
    uint32_t l_threshold_val;    /* the lower threshold in force: conf.l_threshold, or u - u/4 */
    uint32_t refcnt;             /* 1 while linked in a service + 1 per bound connection + 1 per scheduler
                                    reference (lblc/lblcr cache entries: lb_dest_hold, lb_dest_put) */
    struct lb_dest_fwd *fwd;          /* NULL = no valid forwarding state */
    struct lb_svc *svc;          /* NULL once unlinked (deleted) */
    uint8_t vproto;              /* service key, kept so a trashed dest can be revived */
    uint32_t vaddr;
    uint16_t vport;
    uint32_t svc_id;             /* id of the service object it was last added to */
    struct lb_stats stats;
    struct lb_est est;           /* its rate estimator (est.c): stepped with its service's */
    uint64_t syn_retrans;        /* see lb_dest_info */
    uint64_t handshakes;
    struct lb_dest *trash_next;  /* on lb->trash while unlinked and still referenced */
    struct lb_l2q *l2q;          /* packets held until the forwarding state is installed (l2q.c), or NULL */
    uint32_t fp_slot;            /* its slot in the XDP fast path's destination array (0 = none; lb_fp_ops) */
    uint32_t fp_gen;             /* the generation written there last */
};

/* InActConn as ipvsadm shows it (ip_vs_dest_inactconns): max(totalconns - activeconns, 0). */
static inline uint32_t lb_dest_inactconns(const struct lb_dest *d)
{
    return d->totalconns > d->activeconns ? d->totalconns - d->activeconns : 0;
}

struct lb_sched_ops;

struct lb_svc {
    struct lb_svc_conf conf;     /* host order */
    uint32_t list_idx;           /* its slot in lb->svcs */
    uint32_t addr_n;
    uint16_t port_n;
    const struct lb_sched_ops *sched;
    void *sched_data;            /* the scheduler's own per-service state (lb_sched.h) */
    lb_t *lb;                    /* the instance it is in (schedulers put their destination references there) */
    uint64_t sched_now_ms;       /* the caller's now_ms of the schedule() call in progress: the clock of
                                    schedulers that keep time (lblc, lblcr), as the kernel's jiffies */
    struct lb_dest **dests;      /* kernel list order: most recently added first */
    uint32_t ndests;
    uint32_t dests_cap;
    struct lb_stats stats;
    struct lb_stats stats_seen;  /* stats as lb_svc_list_changed last reported them */
    struct lb_est est;           /* its rate estimator (est.c) */
    struct lb_svc *est_prev;     /* lb->est_head's list: the services the estimator steps (est_on) */
    struct lb_svc *est_next;
    uint8_t est_on;              /* in that list: its counters moved since it last stood still at rates 0 */
    struct lb_svc *hnext;        /* service hash chain */
    uint32_t id;                 /* unique per creation: a re-created service is a new one */
    struct lb_synproxy_conf sp_conf; /* SYN-proxy settings when sp_own, else lb->sp_default applies */
    uint8_t sp_own;
    void *xmit_data[LB_XMIT_MAX]; /* each forwarding method's own per-service state (lb_xmit.h; FULLNAT:
                                    its local address pool), indexed by enum lb_fwd; NULL = none */
};

/* One connection entry: 64 bytes (one cache line).
 *
 * A connection is hashed by its IN tuple (proto, caddr, cport, vaddr, vport) and, when its
 * forwarding method sees replies, also by its reply (OUT) tuple (proto, raddr, rport, oaddr,
 * oport), where raddr/rport are its destination's and oaddr/oport what the method chose
 * (lb_xmit.h). Chain links are encoded as (slot << 1 | dir); slot 0 is never used, so link 0
 * means "none". */
struct lb_conn {
    union {                      /* the IN key's addresses; `addrs` compares both at once */
        struct {
            uint32_t caddr;      /* network order: client address (IN key) */
            uint32_t vaddr;      /* network order: virtual address (IN key) */
        };
        uint64_t addrs;          /* == lb_key_addrs(caddr, vaddr) */
    };
    union {                      /* the IN key's ports; `ports` compares both at once */
        struct {
            uint16_t cport;      /* network order (IN key) */
            uint16_t vport;      /* network order (IN key) */
        };
        uint32_t ports;          /* == lb_key_ports(cport, vport) */
    };
    uint32_t oaddr_n;            /* reply tuple's director side, network order (FULLNAT: the local address) */
    uint16_t oport;              /* its port, network order (FULLNAT: the local port) */
    uint8_t proto;               /* key */
    uint8_t state;               /* enum lb_conn_state */
    uint16_t flags;              /* LB_CF_* */
    uint8_t fwd;                 /* its forwarding method, bound at creation: lb_xmit_methods[fwd]. Like the
                                    kernel's cp->packet_xmit it is fixed for the connection's life: editing
                                    a destination's method affects new connections only */
    uint8_t xdp_fp;              /* the XDP fast path (lb_fp_ops): LB_FP_* */
    uint32_t hnext[2];           /* chain links of the IN / OUT tuples; free list: hnext[0] */
    union {
        uint32_t ctl;            /* connection: slot of its persistence template (0 = none) */
        uint32_t n_control;      /* template: connections it controls (it never expires while > 0) */
    };
    union {
        uint32_t syn_seq;        /* connection: sequence number of the client's first SYN (network order) */
        uint32_t tmpl_timeout_ms;/* template: the persistence timeout */
    };
    uint64_t expires_ms;         /* dead when now_ms >= expires_ms */
    struct lb_dest *dest;        /* holds a reference (dest->refcnt) */
    void *xmit_priv;             /* the method's per-connection reference (FULLNAT: its local address),
                                    dropped by the method's release() */
};
_Static_assert(sizeof(struct lb_conn) == 64, "struct lb_conn must stay one cache line");

/* ---------------------------------------------------------------- a sleeping thread's wake-up
 * An adapter thread with periodic work (lb_adapter.h) sleeps until it is due and publishes when that
 * is (at_ms). A change made on another thread, or by the control plane, that makes something due
 * before at_ms calls the thread's hook (fn, set by the adapter: it writes the thread's eventfd; the
 * core itself stays free of I/O). lb->wake is the thread that runs the timers and the expiry: a new
 * earliest connection expiry, a SYN-proxy timer, a held packet's destination resolved, a scheduler
 * that needs the clock wake it. (The XDP fast path's thread has its own, xsk_fp.c.) Under lb->lock,
 * except that the thread stores 0 in at_ms when it wakes (atomic): the hook runs at most once a sleep. */
struct lb_wake {
    void (*fn)(void *arg);       /* NULL: no thread registered (at_ms stays 0) */
    void *arg;
    uint64_t at_ms;              /* the thread looks at the due times again then; 0: it is awake */
    uint64_t exp_floor_ms;       /* and runs the expiry no earlier than this (its 100 ms coalescing) */
};

struct lb {
    pthread_mutex_t lock;        /* serialises configuration against adapter threads */
    /* connection table */
    struct lb_conn *conns;       /* conn_max + 1 slots, calloc'ed */
    uint32_t *buckets;           /* hash_buckets chain heads (slot indices) */
    uint32_t conn_max;
    uint32_t hash_mask;
    uint32_t conn_count;         /* live entries */
    uint32_t free_head;          /* free list (via hnext) of once-used slots */
    uint32_t hwm;                /* slots [1, hwm) have been used at least once */
    /* Expiry: two indexed min-heaps of (deadline, creation order, slot) sharing one array of
     * conn_max elements: heap LB_EXP_KEEP grows from the front, heap LB_EXP_DROP (the entries
     * early drop may take: lb_conn_droppable) from the back, so together they never need more
     * than one element per slot. Keys may lag behind an entry's expires_ms (packets only push
     * expiry later); a key found early when it reaches a top is refreshed in place.
     * exp_pos[slot] is (heap << 31) | (1-based index), 0 = none. */
    struct lb_exp *exp_heap;
    uint32_t *exp_pos;
    uint32_t exp_len[2];
    uint32_t exp_cap;            /* elements in exp_heap (conn_max) */
    uint64_t exp_next_ms;        /* the earlier of the two tops, or UINT64_MAX: one compare per packet */
    uint32_t conn_serial;        /* creation counter: the order of entries with equal deadlines */
    uint64_t early_drops;        /* entries released to make room for a new one (lb_conn_stats) */
    /* Change marks for incremental snapshots (lb_conn_dump_changes): one bit per slot, and one
     * bit per word of those in dirty_sum, so a pass costs what changed, not the table. */
    uint64_t *dirty;
    uint64_t *dirty_sum;
    /* The sync master's own change marks (lb_conn_dump_sync_changes), set with the above, cleared
     * by their own consumer: the journal's passes and the sync's never take each other's marks. */
    uint64_t *sync_dirty;
    uint64_t *sync_dirty_sum;
    /* The sync master's per-packet choice (sync.c): on while a master runs; csync (conn_max + 1
     * entries, parallel to conns) is allocated zeroed when it first starts and kept after. */
    struct lb_sync_state *csync;
    struct lb_sync_conf sync_conf;
    uint8_t sync_on;
    uint64_t seed0, seed1;
    uint8_t seeded;              /* seeds came from lb_config.hash_seed (deterministic mode) */
    uint16_t lport_min, lport_max; /* FULLNAT local port range, host order */
    uint32_t timeouts_ms[LB_S_COUNT]; /* per state (LB_S_UDP: UDP), ipvsadm --set */
    /* SYN-proxy (synproxy.c): side table parallel to conns, allocated with the first
     * SYN-proxy service; a min-heap of retransmission deadlines with lazy deletion. */
    struct lb_sp *sp;
    struct lb_sp_timer *sp_heap;
    uint32_t sp_heap_len;
    uint32_t sp_heap_cap;
    uint64_t sp_key[2];          /* master key of the cookie secrets (per-epoch keys derive from it) */
    struct lb_synproxy_conf sp_default;
    struct lb_synproxy_stats sp_stats;
    /* services */
    struct lb_svc **svc_hash;    /* 2^svc_hash_bits chains, calloc'ed (lb_svc_table_init), grown by lb_svc_add */
    uint32_t svc_hash_bits;
    struct lb_svc **svcs;        /* insertion order, for listing: slots [0, nsvcs), a deleted service's slot
                                    NULL (svcs_holes of them) until lb_svc_del compacts the array, once
                                    holes are half of it: deleting stays O(1) amortized, not a search
                                    and a shift of every later service. Walk it with LB_FOR_EACH_SVC. */
    uint32_t nsvcs;
    uint32_t svcs_holes;
    uint32_t svcs_cap;
    uint32_t next_svc_id;
    struct lb_dest *trash;       /* deleted destinations still referenced by connections */
    void *xmit_state[LB_XMIT_MAX]; /* each forwarding method's own instance-wide state (FULLNAT: which
                                    local ports each real server sees taken), indexed by enum lb_fwd,
                                    freed by its ops' done() */
    /* Destinations with packets held for their forwarding state (l2q.c). */
    struct lb_l2q *l2q_list;
    /* The director's own addresses (local.c): a new connection from one is a martian source. */
    struct lb_local **local_hash; /* 2^local_hash_bits chains, calloc'ed (lb_local_init), grown with nlocal */
    uint32_t local_hash_bits;
    uint32_t nlocal;             /* nodes in local_hash */
    /* The XDP fast path (xsk_fp.c, lbd --xdp-fastpath): NULL = off. Called under lock. */
    const struct lb_fp_ops *fp_ops;
    void *fp_arg;
    /* The schedulers' next periodic work (their tick hooks, lb_sched_tick_all): UINT64_MAX none,
     * 0 a scheduler just bound wants the clock. Run with the expiry (lb_expire). */
    uint64_t sched_next_ms;
    /* The housekeeping thread's wake-up (lb_wake_check, below). */
    struct lb_wake wake;
    /* The rate estimators (est.c): the services they step (counters moved, or rates not yet 0),
     * the next step of an adapter thread's 2-second grid, the threads that step them. */
    struct lb_svc *est_head;
    uint32_t est_active;         /* services in the list */
    uint32_t est_drivers;        /* adapter threads stepping (lb_adapter_wait_open with timers) */
    uint64_t est_next_ms;
    uint64_t hs_events;          /* + 1 per change of a destination's handshake counters or a zeroing (lb_est_tick) */
    /* counters */
    uint64_t counters[LB_R_COUNT];
};

/* ---------------------------------------------------------------- the XDP fast path
 * An adapter that forwards established flows itself (xsk_fp.c: the XDP program forwards established
 * DR TCP flows, docs/afxdp.md) registers these hooks; the core stays free of I/O and tells it what
 * changes, under lb->lock:
 *   flow_set: connection c (TCP, DR, ESTABLISHED, its destination resolved and available, no
 *     SYN-proxy/PROXY, no sync master running) was just forwarded: install (or re-install) its flow;
 *     sets c->xdp_fp to LB_FP_ON, or LB_FP_REFUSED when it cannot (never retried for c).
 *   flow_del: c (c->xdp_fp set) no longer qualifies or is being released (still intact, its
 *     destination still bound): remove its flow, crediting what it counted; clears c->xdp_fp.
 *   dest: d's forwarding state, method or membership changed (freed: d is about to be freed).
 *   sync: lb->sync_on changed (a sync master started or stopped). */
#define LB_FP_ON 1
#define LB_FP_REFUSED 2
struct lb_fp_ops {
    void (*flow_set)(void *arg, lb_t *lb, struct lb_conn *c);
    void (*flow_del)(void *arg, lb_t *lb, struct lb_conn *c);
    void (*dest)(void *arg, lb_t *lb, struct lb_dest *d, int freed);
    void (*sync)(void *arg, lb_t *lb);   /* lb->sync_on changed (the adapter's tick acts on it) */
};
/* Register (ops non-NULL) or remove the hooks; locks. Every destination's fp_slot restarts at 0. */
void lb_fp_register(lb_t *lb, const struct lb_fp_ops *ops, void *arg);
static inline void lb_fp_dest(lb_t *lb, struct lb_dest *d, int freed)
{
    if (LB_UNLIKELY(lb->fp_ops != NULL))
        lb->fp_ops->dest(lb->fp_arg, lb, d, freed);
}
static inline void lb_fp_sync(lb_t *lb)
{
    if (LB_UNLIKELY(lb->fp_ops != NULL))
        lb->fp_ops->sync(lb->fp_arg, lb);
}

/* Something becomes due at due_ms for w's thread: its hook runs if that is before it meant to look
 * (lb_wake_fire, core.c). lb_wake_check for lb->wake's timers, lb_wake_check_exp for its expiry or a
 * scheduler's tick (those run together, coalesced). */
void lb_wake_fire(struct lb_wake *w);
static inline void lb_wake_due(struct lb_wake *w, uint64_t due_ms)
{
    if (LB_UNLIKELY(due_ms < __atomic_load_n(&w->at_ms, __ATOMIC_RELAXED)))
        lb_wake_fire(w);
}
/* The adapter's thread registers (fn non-NULL: 1, or 0 when another thread is registered) or removes
 * (fn NULL: only if arg is the registered one) its hook; locks. */
int lb_wake_register(lb_t *lb, void (*fn)(void *arg), void *arg);
static inline void lb_wake_check(lb_t *lb, uint64_t due_ms)
{
    lb_wake_due(&lb->wake, due_ms);
}
static inline void lb_wake_check_exp(lb_t *lb, uint64_t due_ms)
{
    lb_wake_check(lb, due_ms > lb->wake.exp_floor_ms ? due_ms : lb->wake.exp_floor_ms);
}

/* Every live service s of lb, in insertion order (lb->svcs skipping deleted slots). */
#define LB_FOR_EACH_SVC(lb, s)                                                                    \
    for (uint32_t svc_i_ = 0; svc_i_ < (lb)->nsvcs; svc_i_++)                                     \
        if (((s) = (lb)->svcs[svc_i_]) != NULL)

/* One of the director's own addresses (local.c). A node is live while vip_refs or host is set. */
struct lb_local {
    uint32_t addr_n;             /* network order */
    uint32_t vip_refs;           /* services whose virtual address it is */
    uint8_t host;                /* in the control plane's set (lb_local_addrs_set) */
    struct lb_local *next;
};

/* Fibonacci hashing: the top local_hash_bits (8..20) bits of the product. */
static inline uint32_t lb_local_hash(const lb_t *lb, uint32_t addr_n)
{
    return (addr_n * 0x9e3779b1u) >> (32u - lb->local_hash_bits);
}

/* Is addr_n (network order) one of the director's own addresses? O(1): one short chain. */
static inline int lb_is_local(const lb_t *lb, uint32_t addr_n)
{
    for (const struct lb_local *l = lb->local_hash[lb_local_hash(lb, addr_n)]; l; l = l->next)
        if (l->addr_n == addr_n)
            return l->vip_refs || l->host;
    return 0;
}

/* A source address the kernel's routing drops as martian whatever its tables say
 * (ip_route_input_slow): 0.0.0.0/8, 127.0.0.0/8 (route_localnet off), multicast 224.0.0.0/4 and
 * the limited broadcast 255.255.255.255. Class E (240.0.0.0/4) is not among them: the kernel
 * routes it like any unicast address. addr_n in network order: its first octet is the first byte. */
static inline int lb_martian_src(uint32_t addr_n)
{
    uint8_t a;
    __builtin_memcpy(&a, &addr_n, 1);
    return a == 0 || a == 127 || (a >= 224 && a < 240) || addr_n == 0xffffffffu;
}

/* l2q.c: hold packets of connections whose destination has no forwarding state yet. */
struct lb_l2q;
/* Hold a copy of p (a packet of connection c, counted and its state moved already) until c's
 * destination gets forwarding state: 0 when held, -1 when not (queue full, no memory). */
int lb_l2q_hold(lb_t *lb, struct lb_conn *c, const struct lb_pkt *p, uint64_t now_ms);
/* The earliest time a held packet needs the timers (now for a resolved destination), or UINT64_MAX. */
uint64_t lb_l2q_due(const lb_t *lb);
/* Produce the next held packet that can leave (1, *act filled); drops those whose destination was not
 * resolved in time (counted no_l2). 0 when nothing is due. */
int lb_l2q_next(lb_t *lb, uint64_t now_ms, uint8_t *out, uint32_t out_cap, struct lb_action *act);
void lb_l2q_free_all(lb_t *lb);

/* local.c: a service's virtual address is local while the service exists. */
int lb_local_init(lb_t *lb); /* the empty local-address hash (lb_new); LB_ENOMEM */
int lb_local_vip_hold(lb_t *lb, uint32_t addr_n);
void lb_local_vip_put(lb_t *lb, uint32_t addr_n);
void lb_local_free(lb_t *lb);

struct lb_exp {
    uint64_t due_ms;
    uint32_t slot;
    uint32_t ord;                /* LB_EXP_TMPL for templates (connections go first at equal times) |
                                    the entry's creation serial (31 bits): older first */
};
#define LB_EXP_TMPL 0x80000000u
#define LB_EXP_KEEP 0
#define LB_EXP_DROP 1

/* Early drop (docs/fastpath.md "When the table is full"): TCP connections in these states, neither
 * templates nor SYN-proxied, may be released to make room for a new entry: the half-open ones (the
 * states a spoofed SYN leaves, kernel ip_vs_random_dropentry's SYN_RECV and SYNACK) and the
 * finished ones (TIME_WAIT, CLOSE: kept only for late segments). */
#define LB_DROPPABLE_STATES ((1u << LB_S_NONE) | (1u << LB_S_SYN_SENT) | (1u << LB_S_SYN_RECV) | \
                             (1u << LB_S_SYNACK) | (1u << LB_S_TIME_WAIT) | (1u << LB_S_CLOSE))
static inline int lb_conn_droppable(const struct lb_conn *c)
{
    return c->proto == LB_PROTO_TCP && !(c->flags & (LB_CF_TEMPLATE | LB_CF_SYNPROXY)) &&
           ((LB_DROPPABLE_STATES >> c->state) & 1u);
}

/* An entry's expiry moving later by packets marks it changed only when it crosses a multiple of
 * 2^LB_DIRTY_EXP_SHIFT ms (8.2 s): an incremental snapshot then holds every entry's expiry to within
 * that (a restored entry may leave up to 8.2 s early), without rewriting every active flow every
 * time. Anything else that a snapshot record shows marks it at once. */
#define LB_DIRTY_EXP_SHIFT 13

static inline void lb_conn_dirty(lb_t *lb, uint32_t slot)
{
    uint32_t w = slot >> 6;
    lb->dirty[w] |= 1ull << (slot & 63);
    lb->dirty_sum[w >> 6] |= 1ull << (w & 63);
    lb->sync_dirty[w] |= 1ull << (slot & 63);
    lb->sync_dirty_sum[w >> 6] |= 1ull << (w & 63);
}

/* sync.c: the sync master's choice, per packet from the client (the kernel's ip_vs_in calling
 * ip_vs_sync_conn): count it on connection c and on its template (slot tmpl, 0 = none), and mark
 * for the sync (sync_dirty and want, not the journal's marks) what lb_sync_needed chooses. c NULL:
 * a one-packet scheduling datagram (no entry in the table; only its template counts). */
void lb_sync_in(lb_t *lb, struct lb_conn *c, uint32_t tmpl, uint64_t now_ms);
/* A new entry in slot (sync_endtime as the kernel's ip_vs_conn_new sets it), and a restored or
 * sync-updated one (in_pkts = threshold, old_state = its state: ip_vs_proc_conn). */
void lb_sync_entry_new(lb_t *lb, uint32_t slot, uint64_t now_ms);
void lb_sync_entry_restored(lb_t *lb, uint32_t slot);
static inline void lb_sync_packet(lb_t *lb, struct lb_conn *c, uint64_t now_ms)
{
    if (LB_UNLIKELY(lb->sync_on))
        lb_sync_in(lb, c, c ? c->ctl : 0, now_ms);
}

/* conn.c */
/* Release every entry whose time has come (exact expiry, as kernel timers). */
void lb_conn_tick(lb_t *lb, uint64_t now_ms);
/* Set an entry's expiry; an earlier expiry than before also moves its heap key. */
void lb_conn_expiry_earlier(lb_t *lb, struct lb_conn *c);
static inline void lb_conn_set_expiry(lb_t *lb, struct lb_conn *c, uint64_t t)
{
    uint64_t old = c->expires_ms;
    c->expires_ms = t;
    if (LB_UNLIKELY(t < old))
        lb_conn_expiry_earlier(lb, c);
    else if (LB_UNLIKELY((old ^ t) >> LB_DIRTY_EXP_SHIFT))
        lb_conn_dirty(lb, (uint32_t)(c - lb->conns));
}
/* c's state or flags changed: mark it for the next incremental snapshot and move it to the
 * expiry heap its class now belongs to (lb_conn_droppable). */
void lb_conn_changed(lb_t *lb, struct lb_conn *c);
/* Find the live entry whose IN or OUT tuple is (proto, saddr, sport, daddr, dport);
 * *dir receives which. Dead entries met on the way are reaped. */
struct lb_conn *lb_conn_lookup(lb_t *lb, uint8_t proto, uint32_t saddr, uint16_t sport,
                               uint32_t daddr, uint16_t dport, uint64_t now_ms, int *dir);
struct lb_conn_bind;
/* Create a connection for packet p bound to dest, with what its method chose (b: reply tuple,
 * reference; see lb_xmit.h); the method is dest's. A full table makes room by early drop when
 * may_evict (the packet path; not a restore). NULL when the table is full (the caller then drops
 * the method's reference). */
struct lb_conn *lb_conn_new(lb_t *lb, const struct lb_pkt *p, struct lb_dest *dest, const struct lb_conn_bind *b,
                            uint64_t now_ms, int may_evict);
void lb_conn_expire_now(lb_t *lb, struct lb_conn *c);
int lb_conn_table_init(lb_t *lb, const struct lb_config *cfg);
void lb_conn_table_free(lb_t *lb);
void lb_conn_flush(lb_t *lb);

/* proto_tcp.c / proto_udp */
/* Events of the IPVS TCP state machine, as tcp_state_idx(): RST wins, then SYN, FIN, ACK; a
 * segment with none of them is LB_TCP_EV_NONE (set_tcp_state sends it to CLOSE). */
enum { LB_TCP_EV_SYN, LB_TCP_EV_FIN, LB_TCP_EV_ACK, LB_TCP_EV_RST, LB_TCP_EV_NONE, LB_TCP_EVENTS };
/* The event of each combination of the FIN, SYN, RST, PSH and ACK bits (tcp_flags & 0x1f). */
extern const uint8_t lb_tcp_event_of[32];
/* The three tables of set_tcp_state: packets from the client, from the real server, and
 * from the client when the director never sees the server's side (NOOUTPUT). */
#define LB_TCP_DIR_INPUT 0
#define LB_TCP_DIR_OUTPUT 1
#define LB_TCP_DIR_INPUT_ONLY 2
/* Next state by [table][event][state]. Every state has a column: LB_S_UDP (never a TCP
 * entry's state) goes to CLOSE on every event; so does every state on LB_TCP_EV_NONE. */
extern const uint8_t lb_tcp_states[3][LB_TCP_EVENTS][LB_S_COUNT];
/* Move c to a state with IPVS's active/inactive accounting (set_tcp_state's): a connection counts
 * as active in SYN_SENT, SYN_RECV, ESTABLISHED and SYNACK (tcp_state_active), inactive in every
 * other state and from its creation until its first change; reaching ESTABLISHED assures its
 * persistence template. */
void lb_conn_set_state(lb_t *lb, struct lb_conn *c, uint8_t new_state);
/* Mark c's persistence template, if any, ASSURED (ip_vs_control_assure_ct). */
static inline void lb_conn_assure_template(lb_t *lb, const struct lb_conn *c)
{
    if (LB_UNLIKELY(c->ctl) && !(lb->conns[c->ctl].flags & LB_CF_ASSURED)) {
        lb->conns[c->ctl].flags |= LB_CF_ASSURED; /* ctl names a template (it outlives c) */
        lb_conn_dirty(lb, c->ctl);
    }
}

static inline int lb_tcp_event(uint8_t flags) { return lb_tcp_event_of[flags & 0x1f]; }

/* The IPVS TCP state machine (set_tcp_state). An entry's state is always < LB_S_COUNT (every
 * writer takes it from these tables, from lb_conn_new, or checked from lb_conn_restore). */
static inline void lb_tcp_set_state(lb_t *lb, struct lb_conn *c, int dir, uint8_t tcp_flags)
{
    const uint8_t(*next)[LB_S_COUNT];
    if (dir == LB_DIR_OUT) {
        next = lb_tcp_states[LB_TCP_DIR_OUTPUT];
        if (c->flags & LB_CF_NOOUTPUT) { /* the server's side shows after all */
            c->flags &= (uint16_t)~LB_CF_NOOUTPUT;
            lb_conn_dirty(lb, (uint32_t)(c - lb->conns));
        }
    } else if (c->flags & LB_CF_NOOUTPUT) {
        next = lb_tcp_states[LB_TCP_DIR_INPUT_ONLY];
    } else {
        next = lb_tcp_states[LB_TCP_DIR_INPUT];
    }
    uint8_t state = c->state;
    uint8_t new_state = LB_LIKELY(state < LB_S_COUNT) ? next[lb_tcp_event(tcp_flags)][state] : LB_S_CLOSE;
    if (new_state != state)
        lb_conn_set_state(lb, c, new_state);
}
void lb_timeouts_init(uint32_t *timeouts_ms);
/* The timeout an entry gets when touched: its state's (or a template's own). */
static inline uint32_t lb_conn_timeout_ms(const lb_t *lb, const struct lb_conn *c);
/* Persistence templates (conn.c). */
struct lb_conn *lb_tmpl_lookup(lb_t *lb, uint8_t proto, uint32_t snet, uint32_t vaddr, uint16_t vport,
                               uint64_t now_ms);
struct lb_conn *lb_tmpl_new(lb_t *lb, uint8_t proto, uint32_t snet, uint32_t vaddr, uint16_t vport,
                            struct lb_dest *dest, uint32_t timeout_ms, uint64_t now_ms, int may_evict);
void lb_tmpl_invalidate(lb_t *lb, struct lb_conn *t);

/* svc.c */
int lb_svc_table_init(lb_t *lb); /* the empty service hash (lb_new); LB_ENOMEM */
struct lb_svc *lb_svc_find(const lb_t *lb, uint8_t proto, uint32_t addr_n, uint16_t port_n);
/* The same with the address and port in host order (the API's). */
struct lb_svc *lb_svc_find_host(const lb_t *lb, uint8_t proto, uint32_t addr, uint16_t port);
/* ip_vs_bind_dest / ip_vs_unbind_dest: reference and count an entry, with the OVERLOAD triggers. */
void lb_dest_bind(struct lb_dest *d, struct lb_conn *c);
void lb_dest_unbind(lb_t *lb, struct lb_dest *d, struct lb_conn *c);
void lb_dest_put(lb_t *lb, struct lb_dest *d);

/* synproxy.c */
struct lb_sp {                   /* per SYN-proxied connection; zero = unused */
    uint32_t cookie_isn;         /* our ISN towards the client, host order */
    uint32_t client_isn;         /* the client's ISN, host order */
    uint32_t d_in;               /* rs_isn - cookie_isn: added to client ACK/SACK numbers */
    uint32_t rto_ms;
    uint64_t due_ms;             /* next retransmission; 0 = none pending */
    uint8_t *held;               /* client data held while pending (malloc'ed, <= data_max_bytes) */
    uint16_t held_len;
    uint16_t mss;                /* the client's MSS (from the cookie) */
    uint16_t client_win;         /* the client's window (host order, unscaled) */
    uint8_t phase;               /* LB_SP_* */
    uint8_t retries;
    uint8_t sack;
    uint8_t px_flags;            /* PROXY protocol (LB_CF_PROXY entries): LB_PX_* */
    uint16_t px_len;             /* PROXY protocol: header bytes in front of the client's first byte; the
                                    client's sequence numbers past its ISN are shifted by this much */
    uint32_t pure_acks;
};
/* The side table also serves PROXY protocol entries (with or without SYN-proxy): client_isn is
 * the client's ISN (its latest SYN's), px_len and px_flags the header's state. */
#define LB_PX_SENT 1             /* the header has gone to the real server at least once */
#define LB_PX_ACKED 2            /* the real server acknowledged every header byte */
#define LB_PX_V2 4               /* the entry's header is version 2 (fixed when it is created) */
#define LB_SP_NONE 0
#define LB_SP_WAIT_DATA 1        /* defer mode: cookie valid, waiting for the client's first data */
#define LB_SP_SYN_SENT 2         /* SYN sent to the real server, waiting for its SYN-ACK */
#define LB_SP_DONE 3             /* both handshakes complete: translating sequence numbers */
struct lb_sp_timer {
    uint64_t due_ms;
    uint32_t slot;
};
int lb_sp_enable(lb_t *lb);      /* allocate the side tables; LB_ENOMEM */
void lb_sp_free(lb_t *lb);
void lb_sp_release(lb_t *lb, uint32_t slot);
int lb_sp_check_conf(const struct lb_synproxy_conf *conf);
const struct lb_synproxy_conf *lb_sp_conf(const lb_t *lb, const struct lb_svc *s);
int lb_sp_miss(lb_t *lb, const struct lb_pkt *p, struct lb_svc *s, uint64_t now_ms, uint8_t *out,
               uint32_t out_cap, struct lb_action *act);
int lb_sp_in(lb_t *lb, const struct lb_pkt *p, struct lb_conn *c, uint64_t now_ms, uint8_t *out,
             uint32_t out_cap, struct lb_action *act);
int lb_sp_out(lb_t *lb, const struct lb_pkt *p, struct lb_conn *c, uint64_t now_ms, uint8_t *out,
              uint32_t out_cap, struct lb_action *act);
/* Create a connection for p on s: scheduling (and persistence), then what the destination's method
 * binds (FULLNAT: a local address and port). NULL with *reason (and act) saying why not. */
struct lb_conn *lb_schedule_conn(lb_t *lb, const struct lb_pkt *p, struct lb_svc *s, uint64_t now_ms, uint8_t *out,
                                 uint32_t out_cap, struct lb_action *act, int *reason);
uint64_t lb_siphash(const uint64_t key[2], const uint8_t *data, size_t len);
/* Add delta to the 32-bit TCP field at f (network order: a sequence, acknowledgment or SACK edge),
 * fixing the TCP checksum at csum incrementally: SYN-proxy's and the PROXY protocol's translation. */
void lb_tcp_add32(uint8_t *f, uint32_t delta, uint8_t *csum);

/* proxyproto.c: the PROXY protocol (docs/fastpath.md "PROXY protocol"). */
/* The header of c for the service flags (LB_SVC_F_PROXY_V1 / _V2) into buf (>= LB_PROXY_V1_MAX_LEN
 * bytes); returns its length, 0 when the flags ask for none. */
uint32_t lb_proxy_header(const struct lb_conn *c, uint32_t svc_flags, uint8_t *buf);
/* Bytes a service's segments must leave free for what FULLNAT adds (TOA or the PROXY header): the
 * MSS announced to clients is lowered by this. */
static inline uint16_t lb_svc_room(uint32_t svc_flags)
{
    if (svc_flags & LB_SVC_F_TOA)
        return LB_TOA_LEN;
    if (svc_flags & LB_SVC_F_PROXY_V1)
        return LB_PROXY_V1_MAX_LEN;
    if (svc_flags & LB_SVC_F_PROXY_V2)
        return LB_PROXY_V2_LEN;
    return 0;
}
/* A new connection c of a PROXY service (p: the client's SYN, or the cookie ACK under SYN-proxy with
 * isn its ISN): marks it LB_CF_PROXY and sets up its side-table state. */
void lb_proxy_conn_init(lb_t *lb, struct lb_conn *c, uint32_t svc_flags, uint32_t isn);
/* After c's method rewrote a client segment into out (act, reason: what it returned): insert the
 * header, or shift the sequence number past it. Returns the reason to count. */
int lb_proxy_in(lb_t *lb, const struct lb_pkt *p, struct lb_conn *c, uint8_t *out, uint32_t out_cap,
                struct lb_action *act, int reason);
/* After c's method rewrote a real server's segment into out: the acknowledgment number and SACK
 * edges back into the client's sequence space. */
void lb_proxy_out(lb_t *lb, const struct lb_pkt *p, struct lb_conn *c, uint8_t *out, const struct lb_action *act);
/* The first segment under SYN-proxy: the director's own handshake ACK carries the header before the
 * held data; writes header + held into buf (cap bytes), returns the length (0: does not fit). */
uint32_t lb_proxy_first_payload(lb_t *lb, const struct lb_conn *c, const uint8_t *held, uint32_t held_len,
                                uint8_t *buf, uint32_t cap);
/* The path MTU less the header while it may still have to be inserted (lb_path_mtu). */
uint32_t lb_proxy_mtu(const lb_t *lb, const struct lb_conn *c, uint32_t mtu);

/* icmp.c: ICMP errors the director originates (source = the packet's destination, i.e. the VIP),
 * quoting `p`; return bytes written or 0 if they do not fit. */
uint32_t lb_icmp_port_unreach(const struct lb_pkt *p, uint8_t *out, uint32_t out_cap);
uint32_t lb_icmp_frag_needed(const struct lb_pkt *p, uint16_t mtu, uint8_t *out, uint32_t out_cap);
/* ICMP time exceeded (type 11, code 0) quoting p, from saddr_n (network order) to p's source. */
uint32_t lb_icmp_time_exceeded(const struct lb_pkt *p, uint32_t saddr_n, uint8_t *out, uint32_t out_cap);
/* icmp.c: an ICMP error about a known connection (p parsed as ICMP). */
int lb_icmp_in(lb_t *lb, const struct lb_pkt *p, uint64_t now_ms, uint8_t *out, uint32_t out_cap,
               struct lb_action *act);

static inline uint32_t lb_conn_timeout_ms(const lb_t *lb, const struct lb_conn *c)
{
    if (c->flags & LB_CF_TEMPLATE)
        return c->tmpl_timeout_ms;
    return lb->timeouts_ms[c->proto == LB_PROTO_UDP ? LB_S_UDP : c->state];
}

/* est.c: service s's counters moved: it joins the services the estimators step (once: until its
 * rates decayed to 0 with its counters standing still). Under lb->lock, as the counting. */
void lb_est_link(struct lb_svc *s);
static inline void lb_est_touch(struct lb_svc *s)
{
    if (LB_UNLIKELY(!s->est_on))
        lb_est_link(s);
}
/* est.c: s leaves that list (deleted, or rates 0). */
void lb_est_unlink(lb_t *lb, struct lb_svc *s);
/* est.c: under lb->lock, an adapter thread's step when its 2-second grid says so (and some service
 * needs one), and when that is (UINT64_MAX: none). */
void lb_est_run_due_locked(lb_t *lb, uint64_t now_ms);
uint64_t lb_est_due_locked(const lb_t *lb);

/* Packet statistics count only while the destination is AVAILABLE, as
 * ip_vs_in_stats/ip_vs_out_stats (a deleted destination's traffic is not counted). */
static inline void lb_stats_in(struct lb_dest *d, uint32_t bytes)
{
    if (LB_UNLIKELY(!(d->flags & LB_DEST_F_AVAILABLE)))
        return;
    d->stats.inpkts++;
    d->stats.inbytes += bytes;
    if (d->svc) {
        d->svc->stats.inpkts++;
        d->svc->stats.inbytes += bytes;
        lb_est_touch(d->svc);
    }
}

/* lb_stats_in for a destination known to be AVAILABLE, hence linked in a service (svc.c sets
 * and clears LB_DEST_F_AVAILABLE together with d->svc). */
static inline void lb_stats_in_available(struct lb_dest *d, uint32_t bytes)
{
    d->stats.inpkts++;
    d->stats.inbytes += bytes;
    d->svc->stats.inpkts++;
    d->svc->stats.inbytes += bytes;
    lb_est_touch(d->svc);
}

static inline void lb_stats_out(struct lb_dest *d, uint32_t bytes)
{
    if (LB_UNLIKELY(!(d->flags & LB_DEST_F_AVAILABLE)))
        return;
    d->stats.outpkts++;
    d->stats.outbytes += bytes;
    if (d->svc) {
        d->svc->stats.outpkts++;
        d->svc->stats.outbytes += bytes;
        lb_est_touch(d->svc);
    }
}

static inline uint16_t lb_ntohs(uint16_t v) { return __builtin_bswap16(v); }

/* ---------------------------------------------------------------- hot lookup (inlined into lb_process) */

/* Chain links encode (slot << 1 | direction); slot 0 is never used, so 0 means "none". */
#define LINK(slot, dir) (((slot) << 1) | (uint32_t)(dir))
#define LINK_SLOT(l) ((l) >> 1)
#define LINK_DIR(l) ((int)((l) & 1u))

/* A 5-tuple's two addresses (source first) and two ports as single words, in the layout of
 * struct lb_pkt's and struct lb_conn's unions: a key compares, and feeds the hash, whole. */
static inline uint64_t lb_key_addrs(uint32_t saddr, uint32_t daddr)
{
    union {
        struct {
            uint32_t s, d;
        };
        uint64_t both;
    } k;
    k.s = saddr;
    k.d = daddr;
    return k.both;
}

static inline uint32_t lb_key_ports(uint16_t sport, uint16_t dport)
{
    union {
        struct {
            uint16_t s, d;
        };
        uint32_t both;
    } k;
    k.s = sport;
    k.d = dport;
    return k.both;
}

static inline uint32_t tuple_hash(const lb_t *lb, uint8_t proto, uint64_t addrs, uint32_t ports)
{
    /* Keyed multiply-xor over the 5-tuple (both addresses in one word; ports and protocol in
     * the other), then a full avalanche (MurmurHash3's fmix64): a multiply only carries bits
     * upward, so without the finalizer the address bytes that sit high in the word (a /24's
     * last octet) would never reach the bucket bits and one subnet would share a chain. The
     * random seeds keep remote senders from aiming at one. */
    uint64_t b = ((uint64_t)proto << 32) | ports;
    uint64_t h = ((addrs ^ lb->seed0) * 0x9E3779B97F4A7C15ull) ^ ((b ^ lb->seed1) * 0xC2B2AE3D27D4EB4Full);
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    return (uint32_t)h & lb->hash_mask;
}

/* Does a new connection to d reach the real server on the client's port (LB_CF_RPORT_CLIENT)? As
 * the kernel's cp->dport: dest->port ? dest->port : vport for a scheduled connection, and the
 * client's port for every connection of a persistent port-zero or fwmark service (whose port is 0,
 * which no client asks for). A non-persistent port-zero service schedules nothing. */
static inline int lb_dest_rport_is_client(const struct lb_dest *d)
{
    return !d->port_n || (d->svc && !d->svc->conf.port && d->svc->conf.persist_timeout_s);
}

/* The real server's port of connection c, network order (what NAT writes in, what the reply
 * tuple's server side holds). */
static inline uint16_t lb_conn_rport_n(const struct lb_conn *c)
{
    return (c->flags & LB_CF_RPORT_CLIENT) ? c->vport : c->dest->port_n;
}

/* The key of direction dir of c (its addresses and ports as lb_key_addrs/lb_key_ports): the IN
 * tuple, or the reply tuple its method chose (lb_xmit.h). */
static inline void conn_key(const struct lb_conn *c, int dir, uint64_t *addrs, uint32_t *ports)
{
    if (LB_LIKELY(dir == LB_DIR_IN)) {
        *addrs = c->addrs;
        *ports = c->ports;
    } else {
        *addrs = lb_key_addrs(c->dest->addr_n, c->oaddr_n);
        *ports = lb_key_ports(lb_conn_rport_n(c), c->oport);
    }
}

/* Find the live entry whose IN or OUT key is (proto, addrs, ports); *dir (if not NULL)
 * receives which. Templates never match; an expired entry is not returned. With to_front (the
 * packet path), a live entry found behind others moves to the head of its chain: a flow that
 * carries packets is then found with the first entry read, whatever idle entries share its
 * bucket (a table full of idle entries costs an active flow one lookup's worth of misses, once). */
static inline __attribute__((always_inline)) struct lb_conn *
lb_conn_lookup_key(lb_t *lb, uint8_t proto, uint64_t addrs, uint32_t ports, uint64_t now_ms, int *dir, int to_front)
{
    uint32_t *head = &lb->buckets[tuple_hash(lb, proto, addrs, ports)];
    uint32_t *prev = head;
    uint32_t link = *head;
    while (link) {
        struct lb_conn *c = &lb->conns[LINK_SLOT(link)];
        int d = LINK_DIR(link);
        uint32_t next = c->hnext[d];
        if (c->proto == proto && !(c->flags & LB_CF_TEMPLATE)) {
            uint64_t ca;
            uint32_t cp;
            conn_key(c, d, &ca, &cp);
            if (ca == addrs && cp == ports) {
                if (LB_UNLIKELY(now_ms >= c->expires_ms))
                    return NULL; /* dead; lb_conn_tick releases it */
                if (to_front && prev != head) {
                    *prev = next;
                    c->hnext[d] = *head;
                    *head = link;
                }
                if (dir)
                    *dir = d;
                return c;
            }
        }
        prev = &c->hnext[d];
        link = next;
    }
    return NULL;
}

static inline struct lb_conn *lb_conn_lookup_inline(lb_t *lb, uint8_t proto, uint32_t saddr, uint16_t sport,
                                                    uint32_t daddr, uint16_t dport, uint64_t now_ms, int *dir)
{
    return lb_conn_lookup_key(lb, proto, lb_key_addrs(saddr, daddr), lb_key_ports(sport, dport), now_ms, dir, 0);
}


static inline uint16_t lb_htons(uint16_t v) { return __builtin_bswap16(v); }
static inline uint32_t lb_ntohl(uint32_t v) { return __builtin_bswap32(v); }
static inline uint32_t lb_htonl(uint32_t v) { return __builtin_bswap32(v); }

#endif /* LB_INTERNAL_H */
