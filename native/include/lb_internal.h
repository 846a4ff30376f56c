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
/* Bits 9-10: the forwarding method the connection was created with (enum lb_fwd). Like the
 * kernel's cp->packet_xmit, it is fixed for the connection's life: editing a destination's
 * method affects new connections only. */
#define LB_CF_FWD_SHIFT 9
#define LB_CF_FWD_MASK (3u << LB_CF_FWD_SHIFT)
#define LB_CONN_FWD(c) ((int)(((c)->flags & LB_CF_FWD_MASK) >> LB_CF_FWD_SHIFT))
#define LB_CF_TMPL_DEAD 0x4000     /* template invalidated (its destination left): never matches */
#define LB_CF_USED 0x8000          /* slot holds a live (possibly expired, not yet reaped) entry */

/* Directions of a connection's two tuples. */
#define LB_DIR_IN 0                /* client -> VIP */
#define LB_DIR_OUT 1               /* real server -> director (FULLNAT replies) */

/* Service hash: services are few; 256 chains keep lookups at one or two probes. */
#define LB_SVC_HASH_BUCKETS 256u

/* ---------------------------------------------------------------- parsing */

/* A parsed packet. All multi-byte fields are kept in NETWORK byte order, as
 * they sit in the packet, so the hot path never byte-swaps. */
struct lb_pkt {
    const uint8_t *data;   /* start of the IPv4 header */
    uint32_t len;          /* bytes from data up to the IP total length */
    uint32_t ihl;          /* IP header length in bytes (20..60) */
    uint8_t proto;
    uint8_t tcp_flags;     /* TCP only */
    uint32_t saddr, daddr; /* network order */
    uint16_t sport, dport; /* network order */
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
uint32_t lb_csum_partial(const uint8_t *buf, uint32_t len, uint32_t sum);
uint16_t lb_ip_csum(const uint8_t *hdr, uint32_t ihl); /* 0 when the header's checksum is right */
/* RFC 1624 incremental update of a 16-bit checksum field (network order in
 * memory at `field`) for a 16-bit word changing from old to new (host order). */
void lb_csum_replace2(uint8_t *field, uint16_t old_word, uint16_t new_word);
void lb_csum_replace4(uint8_t *field, uint32_t old_n, uint32_t new_n); /* both network order */
static inline void lb_put16(uint8_t *b, uint16_t v) { b[0] = (uint8_t)(v >> 8); b[1] = (uint8_t)v; }
static inline uint16_t lb_get16(const uint8_t *b) { return (uint16_t)((b[0] << 8) | b[1]); }

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
    uint32_t flags;              /* LB_DEST_F_AVAILABLE | LB_DEST_F_OVERLOAD */
    uint32_t activeconns;
    uint32_t inactconns;
    uint32_t persistconns;
    uint32_t refcnt;             /* 1 while linked in a service + 1 per bound connection */
    struct lb_dest_fwd *fwd;          /* NULL = no valid forwarding state */
    struct lb_svc *svc;          /* NULL once unlinked (deleted) */
    uint8_t vproto;              /* service key, kept so a trashed dest can be revived */
    uint32_t vaddr;
    uint16_t vport;
    uint32_t svc_id;             /* id of the service object it was last added to */
    struct lb_stats stats;
    uint64_t syn_retrans;        /* see lb_dest_info */
    uint64_t handshakes;
    struct lb_dest *trash_next;  /* on lb->trash while unlinked and still referenced */
};

/* A FULLNAT local address of a service. Referenced by the service's pool
 * and by every connection using it; freed at zero references. */
struct lb_laddr {
    uint32_t addr;               /* host order */
    uint32_t addr_n;             /* network order */
    uint32_t refcnt;             /* 1 while in the pool + 1 per connection */
    uint32_t conns;
    uint16_t next_port;          /* allocation cursor (host order) */
    uint8_t deleted;
};

struct lb_sched_ops;

struct lb_svc {
    struct lb_svc_conf conf;     /* host order */
    uint32_t addr_n;
    uint16_t port_n;
    const struct lb_sched_ops *sched;
    int32_t sched_pos;           /* rr cursor: index of the last chosen dest, -1 = list head */
    struct lb_dest **dests;      /* kernel list order: most recently added first */
    uint32_t ndests;
    uint32_t dests_cap;
    struct lb_stats stats;
    struct lb_svc *hnext;        /* service hash chain */
    uint32_t id;                 /* unique per creation: a re-created service is a new one */
    struct lb_synproxy_conf sp_conf; /* SYN-proxy settings when sp_own, else lb->sp_default applies */
    uint8_t sp_own;
    struct lb_laddr **laddrs;    /* FULLNAT local address pool */
    uint32_t nladdrs;
    uint32_t laddrs_cap;
    uint32_t laddr_rr;           /* next pool index to try first */
};

/* One connection entry: 64 bytes (one cache line).
 *
 * A connection is hashed by its IN tuple (proto, caddr, cport, vaddr, vport)
 * and, for FULLNAT, also by its OUT tuple (proto, raddr, rport, laddr, lport)
 * where raddr/rport are its destination's. Chain links are encoded as
 * (slot << 1 | dir); slot 0 is never used, so link 0 means "none". */
struct lb_conn {
    uint32_t caddr;              /* network order: client address (IN key) */
    uint32_t vaddr;              /* network order: virtual address (IN key) */
    uint16_t cport;              /* network order (IN key) */
    uint16_t vport;              /* network order (IN key) */
    uint32_t laddr_n;            /* FULLNAT: local address, network order (OUT key); 0 otherwise */
    uint16_t lport;              /* FULLNAT: local port, network order (OUT key) */
    uint8_t proto;               /* key */
    uint8_t state;               /* enum lb_conn_state */
    uint16_t flags;              /* LB_CF_* */
    uint16_t pad0;
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
    struct lb_laddr *laddr;      /* FULLNAT: holds a reference (laddr->refcnt) */
};
_Static_assert(sizeof(struct lb_conn) == 64, "struct lb_conn must stay one cache line");

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
    /* Expiry: an indexed min-heap of (deadline, slot) over every live entry. Keys may lag
     * behind an entry's expires_ms (packets only push expiry later); a popped key that is
     * early is refreshed in place. heap_pos[slot] is the 1-based heap index, 0 = none. */
    struct lb_exp *exp_heap;
    uint32_t *exp_pos;
    uint32_t exp_len;
    uint64_t exp_next_ms;        /* exp_heap[0].due_ms, or UINT64_MAX when empty: one compare per packet */
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
    struct lb_svc *svc_hash[LB_SVC_HASH_BUCKETS];
    struct lb_svc **svcs;        /* insertion order, for listing */
    uint32_t nsvcs;
    uint32_t svcs_cap;
    uint32_t next_svc_id;
    struct lb_dest *trash;       /* deleted destinations still referenced by connections */
    /* counters */
    uint64_t counters[LB_R_COUNT];
};

struct lb_exp {
    uint64_t due_ms;
    uint32_t slot;
    uint32_t tmpl;               /* 1 for templates: connections go first at equal times */
};

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
}
/* Find the live entry whose IN or OUT tuple is (proto, saddr, sport, daddr, dport);
 * *dir receives which. Dead entries met on the way are reaped. */
struct lb_conn *lb_conn_lookup(lb_t *lb, uint8_t proto, uint32_t saddr, uint16_t sport,
                               uint32_t daddr, uint16_t dport, uint64_t now_ms, int *dir);
/* Create an entry for packet p bound to dest; laddr/lport (network order) != 0 for FULLNAT. */
struct lb_conn *lb_conn_new(lb_t *lb, const struct lb_pkt *p, struct lb_dest *dest, struct lb_laddr *laddr,
                            uint16_t lport_n, uint64_t now_ms);
void lb_conn_expire_now(lb_t *lb, struct lb_conn *c);
int lb_conn_table_init(lb_t *lb, const struct lb_config *cfg);
void lb_conn_table_free(lb_t *lb);
void lb_conn_flush(lb_t *lb);

/* proto_tcp.c / proto_udp */
#define LB_TCP_STATES 11           /* NONE..SYNACK */
#define LB_TCP_DIR_INPUT 0         /* row offsets in lb_tcp_states: direction * 4 + event */
#define LB_TCP_DIR_OUTPUT 4
#define LB_TCP_DIR_INPUT_ONLY 8
extern const uint8_t lb_tcp_states[12][LB_TCP_STATES];
void lb_conn_set_state(struct lb_conn *c, uint8_t new_state);

/* Event index as tcp_state_idx(): RST wins, then SYN, FIN, ACK; -1 = none. */
static inline int lb_tcp_event(uint8_t flags)
{
    if (flags & LB_TCP_RST)
        return 3;
    if (flags & LB_TCP_SYN)
        return 0;
    if (flags & LB_TCP_FIN)
        return 1;
    if (flags & LB_TCP_ACK)
        return 2;
    return -1;
}

/* The IPVS TCP state machine (set_tcp_state). */
static inline void lb_tcp_set_state(struct lb_conn *c, int dir, uint8_t tcp_flags)
{
    int off = dir == LB_DIR_OUT ? LB_TCP_DIR_OUTPUT : LB_TCP_DIR_INPUT;
    if (c->flags & LB_CF_NOOUTPUT) {
        if (off == LB_TCP_DIR_OUTPUT)
            c->flags &= (uint16_t)~LB_CF_NOOUTPUT;
        else
            off = LB_TCP_DIR_INPUT_ONLY;
    }
    /* As set_tcp_state: a segment with none of RST/SYN/FIN/ACK goes to CLOSE. */
    uint8_t new_state = LB_S_CLOSE;
    int ev = lb_tcp_event(tcp_flags);
    if (ev >= 0 && c->state < LB_TCP_STATES)
        new_state = lb_tcp_states[off + ev][c->state];
    if (new_state != c->state)
        lb_conn_set_state(c, new_state);
}
void lb_timeouts_init(uint32_t *timeouts_ms);
/* The timeout an entry gets when touched: its state's (or a template's own). */
static inline uint32_t lb_conn_timeout_ms(const lb_t *lb, const struct lb_conn *c);
/* Persistence templates (conn.c). */
struct lb_conn *lb_tmpl_lookup(lb_t *lb, uint8_t proto, uint32_t snet, uint32_t vaddr, uint16_t vport,
                               uint64_t now_ms);
struct lb_conn *lb_tmpl_new(lb_t *lb, uint8_t proto, uint32_t snet, uint32_t vaddr, uint16_t vport,
                            struct lb_dest *dest, uint32_t timeout_ms, uint64_t now_ms);
void lb_tmpl_invalidate(lb_t *lb, struct lb_conn *t);

/* svc.c */
struct lb_svc *lb_svc_find(const lb_t *lb, uint8_t proto, uint32_t addr_n, uint16_t port_n);
void lb_dest_bind(struct lb_dest *d, struct lb_conn *c);
void lb_dest_unbind(lb_t *lb, struct lb_dest *d, struct lb_conn *c);
/* Undo only the active/inactive accounting of lb_dest_bind (the reference stays). */
void lb_dest_unbind_counts(struct lb_dest *d, const struct lb_conn *c);
void lb_dest_put(lb_t *lb, struct lb_dest *d);
void lb_laddr_put(struct lb_laddr *la);
/* FULLNAT: pick a local address and a free local port for a new connection to d. */
int lb_fnat_alloc(lb_t *lb, struct lb_svc *s, const struct lb_dest *d, uint8_t proto, uint64_t now_ms,
                  struct lb_laddr **la_out, uint16_t *lport_n_out);

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
    uint8_t pad;
    uint32_t pure_acks;
};
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
/* Bind a connection entry to a destination chosen for p (scheduling, FULLNAT allocation). */
int lb_schedule_conn(lb_t *lb, const struct lb_pkt *p, struct lb_svc *s, uint64_t now_ms, uint8_t *out,
                     uint32_t out_cap, struct lb_action *act, struct lb_conn **cp);
/* proto_tcp.c: move to a state with IPVS's active/inactive accounting. */
void lb_conn_set_state(struct lb_conn *c, uint8_t new_state);
uint64_t lb_siphash(const uint64_t key[2], const uint8_t *data, size_t len);

/* icmp.c: ICMP errors the director originates (source = the packet's destination, i.e. the VIP),
 * quoting `p`; return bytes written or 0 if they do not fit. */
uint32_t lb_icmp_port_unreach(const struct lb_pkt *p, uint8_t *out, uint32_t out_cap);
uint32_t lb_icmp_frag_needed(const struct lb_pkt *p, uint16_t mtu, uint8_t *out, uint32_t out_cap);
/* icmp.c: an ICMP error about a known connection (p parsed as ICMP). */
int lb_icmp_in(lb_t *lb, const struct lb_pkt *p, uint64_t now_ms, uint8_t *out, uint32_t out_cap,
               struct lb_action *act);

static inline uint32_t lb_conn_timeout_ms(const lb_t *lb, const struct lb_conn *c)
{
    if (c->flags & LB_CF_TEMPLATE)
        return c->tmpl_timeout_ms;
    return lb->timeouts_ms[c->proto == LB_PROTO_UDP ? LB_S_UDP : c->state];
}

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
    }
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
    }
}

static inline uint16_t lb_ntohs(uint16_t v) { return __builtin_bswap16(v); }

/* ---------------------------------------------------------------- hot lookup (inlined into lb_process) */

/* Chain links encode (slot << 1 | direction); slot 0 is never used, so 0 means "none". */
#define LINK(slot, dir) (((slot) << 1) | (uint32_t)(dir))
#define LINK_SLOT(l) ((l) >> 1)
#define LINK_DIR(l) ((int)((l) & 1u))

static inline uint32_t tuple_hash(const lb_t *lb, uint8_t proto, uint32_t saddr, uint16_t sport,
                                  uint32_t daddr, uint16_t dport)
{
    /* Keyed multiply-xor over the 5-tuple, then a full avalanche (MurmurHash3's fmix64):
     * a multiply only carries bits upward, so without the finalizer the address bytes that
     * sit high in the word (a /24's last octet) would never reach the bucket bits and one
     * subnet would share a chain. The random seeds keep remote senders from aiming at one. */
    uint64_t a = ((uint64_t)saddr << 32) | ((uint32_t)sport << 16) | dport;
    uint64_t b = ((uint64_t)daddr << 8) | proto;
    uint64_t h = ((a ^ lb->seed0) * 0x9E3779B97F4A7C15ull) ^ ((b ^ lb->seed1) * 0xC2B2AE3D27D4EB4Full);
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    return (uint32_t)h & lb->hash_mask;
}

/* The tuple of direction dir of c: (saddr, sport, daddr, dport), network order. */
static inline void conn_tuple(const struct lb_conn *c, int dir, uint32_t *sa, uint16_t *sp, uint32_t *da,
                              uint16_t *dp)
{
    if (dir == LB_DIR_IN) {
        *sa = c->caddr;
        *sp = c->cport;
        *da = c->vaddr;
        *dp = c->vport;
    } else {
        *sa = c->dest->addr_n;
        *sp = c->dest->port_n;
        *da = c->laddr_n;
        *dp = c->lport;
    }
}

static inline __attribute__((always_inline)) struct lb_conn *
lb_conn_lookup_inline(lb_t *lb, uint8_t proto, uint32_t saddr, uint16_t sport,
                      uint32_t daddr, uint16_t dport, uint64_t now_ms, int *dir)
{
    uint32_t link = lb->buckets[tuple_hash(lb, proto, saddr, sport, daddr, dport)];
    while (link) {
        uint32_t slot = LINK_SLOT(link);
        int d = LINK_DIR(link);
        struct lb_conn *c = &lb->conns[slot];
        uint32_t next = c->hnext[d];
        if (c->proto == proto && !(c->flags & LB_CF_TEMPLATE)) {
            uint32_t sa, da;
            uint16_t sp, dp;
            conn_tuple(c, d, &sa, &sp, &da, &dp);
            if (sa == saddr && da == daddr && sp == sport && dp == dport) {
                if (LB_UNLIKELY(now_ms >= c->expires_ms))
                    return NULL; /* dead; lb_conn_tick releases it */
                if (dir)
                    *dir = d;
                return c;
            }
        }
        link = next;
    }
    return NULL;
}


static inline uint16_t lb_htons(uint16_t v) { return __builtin_bswap16(v); }
static inline uint32_t lb_ntohl(uint32_t v) { return __builtin_bswap32(v); }
static inline uint32_t lb_htonl(uint32_t v) { return __builtin_bswap32(v); }

#endif /* LB_INTERNAL_H */
