/*
 * lb_api.h - THE contract between the Python control plane and the C fast path.
 *
 * native/build_ffi.py hands this file verbatim to cffi's cdef(), so it must stay
 * cdef-parseable: no #include, no #if, no macros other than integer #defines,
 * no inline code. C sources include it through lb_internal.h, which includes
 * <stdint.h> first. Include it exactly once per translation unit (no guard: cffi
 * cannot parse one).
 *
 * Conventions:
 *   - IPv4 addresses and ports are in HOST byte order in this API.
 *   - Times are milliseconds of CLOCK_MONOTONIC ("now_ms"), supplied by the caller:
 *     the core never reads a clock, so tests and benchmarks are deterministic.
 *   - Functions returning int return LB_OK (0) or a negative LB_E* code
 *     (numerically the negative Linux errno, so the control plane can speak
 *     IPVS's errno vocabulary), or a non-negative count where documented.
 *   - Every object the library allocates is allocated zeroed.
 */

/* ---- limits and sizes (units in the names) ---- */
#define LB_L2HDR_LEN 14
#define LB_SCHED_NAME_MAX 16
#define LB_PKT_MAX 65535
#define LB_DEST_WEIGHT_MAX 2147483647      /* INT_MAX: the kernel accepts any non-negative weight */
#define LB_DEFAULT_CONN_MAX 1048576
#define LB_CONN_MAX_LIMIT 1073741823       /* largest struct lb_config.conn_max, entries (2^30 - 1) */
#define LB_HASH_BUCKETS_MIN 1024            /* hash buckets when lb_config leaves them 0: the next power of two
                                              >= conn_max, at least this many (docs/fastpath.md) */
#define LB_DEFAULT_LPORT_MIN 1024          /* FULLNAT local ports when lb_config leaves them 0 */
#define LB_DEFAULT_LPORT_MAX 65535

/* ---- errors ---- */
enum lb_err {
    LB_OK = 0,
    LB_ENOENT = -2,     /* no such destination / unknown scheduler */
    LB_ESRCH = -3,      /* no such service */
    LB_EIO = -5,        /* I/O error in an adapter */
    LB_ENOMEM = -12,
    LB_EBUSY = -16,
    LB_EEXIST = -17,
    LB_EINVAL = -22,
    LB_ENOSPC = -28,    /* table full */
    LB_EOPNOTSUPP = -95
};

/* ---- what lb_process() tells the caller to do with a packet ---- */
enum lb_verdict {
    LB_V_ACCEPT = 0,   /* continue in the kernel, bytes unchanged */
    LB_V_DROP = 1,     /* drop */
    LB_V_MANGLE = 2,   /* continue in the kernel with the bytes in out[0..out_len) */
    LB_V_XMIT_L2 = 3,  /* drop the original; send l2hdr + (out_len ? out[0..out_len) : the original bytes)
                          on ifindex through an AF_PACKET socket (towards real servers, every method) */
    LB_V_ANSWER = 4    /* drop the original; send out[0..out_len) (a complete IPv4 packet) through the
                          kernel's IP output (raw socket marked LB_SOCKET_MARK_BASE | queue): ICMP
                          answers, FULLNAT replies to clients, oversized non-DF tunnel packets */
};

/* Why: one per packet, counted globally (lb_counters) and returned in the action. */
enum lb_reason {
    LB_R_FORWARDED = 0,        /* handed to a forwarding method */
    LB_R_NOT_IPV4 = 1,         /* IPv6: passed through */
    LB_R_MALFORMED = 2,        /* truncated / inconsistent headers (UDP: a length field < 8 or beyond the
                                  IP payload): dropped */
    LB_R_BAD_CSUM = 3,         /* bad IPv4 header checksum: dropped */
    LB_R_FRAGMENT = 4,         /* IP fragment: dropped. lbd's rules turn on the kernel's reassembly
                                  (nf_defrag_ipv4) in its netns, so the queue carries whole datagrams;
                                  a fragment here was steered by someone else's rule (docs/fastpath.md) */
    LB_R_NOT_LB_PROTO = 5,     /* not TCP/UDP: passed through */
    LB_R_NO_SERVICE = 6,       /* no virtual service for the destination: passed through */
    LB_R_NO_CONN = 7,          /* TCP non-SYN without a connection entry: passed through */
    LB_R_NO_DEST = 8,          /* scheduler found no destination: ICMP port unreachable */
    LB_R_TABLE_FULL = 9,       /* connection table full: dropped */
    LB_R_DEST_UNAVAILABLE = 10,/* connection's destination was deleted: dropped */
    LB_R_NO_L2 = 11,           /* destination has no valid forwarding state (MAC / tunnel source): dropped */
    LB_R_FRAG_NEEDED = 12,     /* too big after encapsulation with DF set: ICMP fragmentation needed */
    LB_R_NO_LADDR = 13,        /* FULLNAT: no local address/port free: dropped */
    LB_R_ICMP = 14,            /* ICMP error about a connection: translated / forwarded */
    LB_R_TOA_NO_ROOM = 15,     /* FULLNAT: no room for the TOA option: forwarded without it */
    LB_R_TTL_EXCEEDED = 16,    /* FULLNAT: TTL would reach 0 on the director: dropped */
    LB_R_SP_COOKIE = 17,       /* SYN-proxy: SYN answered with a cookie SYN-ACK, no state kept */
    LB_R_SP_BAD_COOKIE = 18,   /* SYN-proxy: ACK with an invalid or expired cookie: dropped */
    LB_R_SP_HELD = 19,         /* SYN-proxy: client segment held or dropped while the real server's
                                  handshake is pending (bounded buffer; ACK-storm guard) */
    LB_R_SP_HANDSHAKE = 20,    /* SYN-proxy: real server's SYN-ACK consumed, handshake completed */
    LB_R_PROXY_CUT = 21,       /* FULLNAT PROXY protocol: the client's first segment and the header did not
                                  fit the path MTU together: sent cut short (the client resends the
                                  rest), or dropped when not even the header fits */
    LB_R_XMIT_FAILED = 22,     /* the adapter could not send what the core decided (socket error): never
                                  also counted as forwarded (lb_count_xmit_failed moves the count here) */
    LB_R_MARTIAN_SRC = 23,     /* source address the kernel's routing refuses (ip_route_input_slow): 0.0.0.0/8,
                                  127.0.0.0/8, multicast 224.0.0.0/4, 255.255.255.255: dropped */
    LB_R_LOCAL_SRC = 24,       /* new connection from one of the director's own addresses (a VIP, or one
                                  lb_local_addrs_set installed: fib_validate_source's martian): dropped */
    LB_R_BAD_L4_CSUM = 25,     /* TCP checksum wrong on a segment lbd answers itself (SYN-proxy's SYN and
                                  cookie ACK): dropped, as the kernel's TCP would */
    LB_R_L2_QUEUED = 26,       /* destination's MAC not resolved yet: the packet is held (a copy, bounded per
                                  destination) and sent by the timers once the forwarding state is installed;
                                  not resolved within LB_L2Q_TIMEOUT_MS: dropped and counted again as no_l2 */
    LB_R_COUNT = 27
};

/* Forwarding methods (ipvsadm -g / -i / -m, DPVS -b). */
enum lb_fwd {
    LB_FWD_ROUTE = 0,
    LB_FWD_TUNNEL = 1,
    LB_FWD_MASQ = 2,
    LB_FWD_FULLNAT = 3
};

/* TCP states, numbered as IPVS's IP_VS_TCP_S_*; UDP entries report LB_S_UDP. */
enum lb_conn_state {
    LB_S_NONE = 0,
    LB_S_ESTABLISHED = 1,
    LB_S_SYN_SENT = 2,
    LB_S_SYN_RECV = 3,
    LB_S_FIN_WAIT = 4,
    LB_S_TIME_WAIT = 5,
    LB_S_CLOSE = 6,
    LB_S_CLOSE_WAIT = 7,
    LB_S_LAST_ACK = 8,
    LB_S_LISTEN = 9,
    LB_S_SYNACK = 10,
    LB_S_UDP = 11,
    LB_S_COUNT = 12
};

/* Destination flags reported by lb_dest_list(). */
#define LB_DEST_F_AVAILABLE 1
#define LB_DEST_F_OVERLOAD 2
#define LB_DEST_F_FWD_VALID 4

/* Connection flags reported by lb_conn_dump(). */
#define LB_CONN_F_INACTIVE 1
#define LB_CONN_F_NOOUTPUT 2
#define LB_CONN_F_TOA_DONE 4
#define LB_CONN_F_TEMPLATE 8       /* a persistence template (client port 0, state NONE) */
#define LB_CONN_F_SYNPROXY 16      /* SYN-proxied (sequence numbers translated) */
#define LB_CONN_F_ASSURED 32       /* a template one of whose connections reached ESTABLISHED (TCP) or had a
                                      reply (UDP): ipvsadm -Lnc shows it ASSURED, else NONE (the kernel's
                                      IP_VS_CTPL_S_ASSURED, ip_vs_control_assure_ct) */
#define LB_CONN_F_PROXY 64         /* PROXY protocol header inserted before the client's data (sequence
                                      numbers translated; not restorable from a dump, as SYNPROXY) */
#define LB_CONN_F_UPDATE 128       /* lb_conn_restore only (a sync backup's record): an existing entry of the same
                                      destination takes the record's state and expiry (templates: expiry and
                                      ASSURED) and LB_RESTORE_UPDATED is returned, instead of LB_EEXIST */
#define LB_RESTORE_UPDATED 1       /* lb_conn_restore with LB_CONN_F_UPDATE: an existing entry was updated */

/* Service flags (struct lb_svc_conf.flags). */
#define LB_SVC_F_TOA 1             /* FULLNAT: put the client address in TCP option 254 (TOA) */
#define LB_SVC_F_SYNPROXY 2        /* answer SYNs with cookies; open to the real server after the ACK */
#define LB_SVC_F_ONEPACKET 4       /* ipvsadm -o (the kernel's IP_VS_SVC_F_ONEPACKET, same value): every UDP
                                      datagram is scheduled afresh and leaves no connection entry; stored but
                                      without effect on TCP, as in the kernel. Refused with destinations whose
                                      method must see replies (FULLNAT): their translation needs the entry */
/* Scheduler flags (ipvsadm -b / --sched-flags), the kernel's IP_VS_SVC_F_SCHED1..3 (same values):
 * stored and reported; what they mean is the scheduler's: sh and mh read SCHED1 as fallback (an
 * unavailable server's clients go on to the next in the table) and SCHED2 as port (the client's
 * source port is hashed too); every other scheduler ignores all three, as the kernel's do. */
#define LB_SVC_F_SCHED1 8
#define LB_SVC_F_SCHED2 16
#define LB_SVC_F_SCHED3 32
/* PROXY protocol (haproxy's proxy-protocol.txt) on FULLNAT TCP services: the header, version 1 (text)
 * or 2 (binary), goes to the real server before the client's first byte; sequence and
 * acknowledgment numbers are translated for the inserted bytes for the connection's life. At most
 * one of the two; refused with LB_SVC_F_TOA (one carrier of the client's address per service), on
 * UDP and fwmark services (LB_EINVAL), and with destinations of other methods (LB_EOPNOTSUPP). */
#define LB_SVC_F_PROXY_V1 64
#define LB_SVC_F_PROXY_V2 128

/* The hashing schedulers' tables, sized as Debian 12's 6.1 kernel builds them (its
 * /boot/config-6.1.0-*-amd64; tests/oracles/kernel_config.py), so that lbd and kernel IPVS
 * directors map every client to the same real server. */
#define LB_SH_TAB_BITS 8           /* sh: 256 buckets (CONFIG_IP_VS_SH_TAB_BITS=8) */
#define LB_DH_TAB_BITS 8           /* dh: 256 buckets (no Kconfig symbol: ip_vs_dh.c's default) */
#define LB_MH_TAB_SIZE 4093        /* mh: lookup entries (CONFIG_IP_VS_MH_TAB_INDEX=12 -> the prime 4093) */
#define LB_MH_TAB_BITS 6           /* mh: weights are scaled down to this many bits (MH_TAB_INDEX / 2) */
#define LB_MH_HASH1_KEY 2654435761 /* mh: ip_vs_mh.c's fixed hsiphash keys, both words of each key */
#define LB_MH_HASH2_KEY 2654446892

/* Packets held while a destination's forwarding state is being resolved (the kernel queues them in
 * the neighbour entry: unres_qlen_bytes, then drops them when resolution fails after mcast_solicit
 * probes retrans_time apart). Per destination: */
#define LB_L2Q_BYTES_MAX 65536     /* bytes of IP packets held; beyond that a packet is dropped (no_l2) */
#define LB_L2Q_TIMEOUT_MS 3000     /* from the first held packet: 3 probes 1 s apart, as the kernel's ARP */

/* Encapsulation overhead of IPIP, bytes. */
#define LB_IPIP_OVERHEAD 20
/* Size of the TOA option (kind 254, length 8: port, IPv4 address), bytes. */
#define LB_TOA_LEN 8
/* PROXY protocol header sizes, bytes: v1's longest over IPv4 ("PROXY TCP4 " + two dotted quads of
 * 15 + two ports of 5 + three spaces + CRLF), v2's for TCP over IPv4 (16-byte fixed part + 12
 * bytes of addresses and ports). The MSS announced to the client is lowered by these. */
#define LB_PROXY_V1_MAX_LEN 56
#define LB_PROXY_V2_LEN 28
/* SO_MARK of the raw socket the adapter sends LB_V_ANSWER packets on (| queue number),
 * so the director's raw OUTPUT table can leave them untracked. */
#define LB_SOCKET_MARK_BASE 0x4C420000

typedef struct lb lb_t;            /* one director instance: tables, counters, lock */
typedef struct lb_nfq lb_nfq_t;    /* one NFQUEUE adapter thread */

struct lb_config {
    uint32_t conn_max;             /* maximum connection entries; 0 = LB_DEFAULT_CONN_MAX; at most LB_CONN_MAX_LIMIT */
    uint32_t hash_buckets;         /* power of two; 0 = the next power of two >= conn_max (>= LB_HASH_BUCKETS_MIN) */
    uint64_t hash_seed;            /* 0 = pick one at random */
    uint16_t lport_min;            /* FULLNAT local ports: first (0 = LB_DEFAULT_LPORT_MIN) */
    uint16_t lport_max;            /* FULLNAT local ports: last (0 = LB_DEFAULT_LPORT_MAX) */
};

struct lb_action {
    int32_t verdict;               /* enum lb_verdict */
    int32_t reason;                /* enum lb_reason */
    int32_t ifindex;               /* LB_V_XMIT_L2: output interface */
    uint32_t out_len;              /* LB_V_MANGLE / LB_V_ANSWER: bytes written to out */
    uint8_t l2hdr[14];             /* LB_V_XMIT_L2: dst MAC, src MAC, ethertype */
    uint32_t frag_mtu;             /* LB_V_XMIT_L2: 0, or the packet (DF clear) is larger than the destination's
                                      path MTU and leaves as fragments of at most frag_mtu bytes (lb_ip_fragment),
                                      as the kernel's ip_fragment cuts what IPVS sends on */
};

/* A fwmark service (ipvsadm -f MARK) is keyed (LB_PROTO_FWMARK, MARK, 0): lb_svc_conf.proto
 * LB_PROTO_FWMARK, .addr the mark, .port 0; every call naming a service takes it so. Packets find
 * it by the mark lb_process_mark() is given (the skb mark NFQUEUE reports), before any
 * <protocol, address, port> service, whatever their protocol (TCP or UDP). */
#define LB_PROTO_FWMARK 0

struct lb_svc_conf {
    uint8_t proto;                 /* 6 = TCP, 17 = UDP, LB_PROTO_FWMARK */
    uint32_t addr;
    uint16_t port;
    char sched[16];                /* NUL-terminated scheduler name: "rr", "wlc" */
    uint32_t persist_timeout_s;    /* 0 = not persistent; else the template timeout, seconds */
    uint32_t netmask;              /* persistence granularity: client address mask (host order) */
    uint32_t flags;                /* LB_SVC_F_* */
};

struct lb_dest_conf {
    uint32_t addr;
    uint16_t port;
    int32_t fwd;                   /* enum lb_fwd */
    int32_t weight;                /* 0..LB_DEST_WEIGHT_MAX */
    uint32_t u_threshold;          /* 0 = none */
    uint32_t l_threshold;          /* 0 = none */
};

/* Per-destination forwarding state computed by the control plane (route,
 * neighbour, source address). Installed whole; the core keeps it in a zeroed
 * allocation and never uses a partly filled one. */
struct lb_fwd_conf {
    int32_t ifindex;               /* output interface; 0 = invalid (nothing resolved) */
    uint8_t dst_mac[6];            /* DR: real server's (or next hop's) MAC */
    uint8_t src_mac[6];            /* DR: director's interface MAC */
    uint32_t saddr;                /* tunnel: outer source chosen by the route */
    uint32_t mtu;                  /* path MTU towards the destination, bytes */
};

struct lb_stats {
    uint64_t conns;
    uint64_t inpkts;
    uint64_t outpkts;
    uint64_t inbytes;
    uint64_t outbytes;
};

/* Rates (ipvsadm -L --rate), per second: connections, packets in and out, bytes in and out, as
 * the kernel's ip_vs_read_estimator rounds them from its averages (struct lb_est, below). */
struct lb_rates {
    uint64_t cps;
    uint64_t inpps;
    uint64_t outpps;
    uint64_t inbps;
    uint64_t outbps;
};

struct lb_svc_info {
    struct lb_svc_conf conf;
    uint32_t num_dests;
    struct lb_stats stats;
    struct lb_rates rates;         /* its rate estimator's (lb_est_tick) */
};

struct lb_dest_info {
    struct lb_dest_conf conf;
    uint32_t active;
    uint32_t inactive;
    uint32_t persist;
    uint32_t flags;                /* LB_DEST_F_* */
    struct lb_stats stats;
    uint64_t syn_retrans;          /* client SYNs repeated with the same sequence number on a
                                      connection already forwarded here (stalled-handshake signal) */
    uint64_t handshakes;           /* connections to this destination whose handshake completed
                                      (the client's ACK arrived: SYN_RECV -> ESTABLISHED) */
    struct lb_rates rates;         /* its rate estimator's (lb_est_tick) */
};

struct lb_conn_info {
    uint8_t proto;
    uint8_t state;                 /* enum lb_conn_state */
    uint16_t flags;                /* LB_CONN_F_* */
    uint32_t caddr;
    uint16_t cport;
    uint32_t vaddr;
    uint16_t vport;
    uint32_t daddr;
    uint16_t dport;
    uint32_t laddr;                /* FULLNAT local address (0 otherwise) */
    uint16_t lport;
    uint32_t slot;                 /* the entry's table slot: the key of incremental snapshots (lb_conn_dump_changes) */
    int64_t expires_in_ms;         /* time left until expiry */
};

/* The connection table's figures (lb_conn_stats). */
struct lb_conn_stats {
    uint32_t entries;              /* live entries (connections and templates) */
    uint32_t max;                  /* conn_max */
    uint32_t buckets;              /* hash buckets */
    uint32_t droppable;            /* entries early drop may release (half-open or finished TCP connections) */
    uint64_t early_drops;          /* entries released to make room for new ones while the table was full */
};

/* SYN-proxy settings (global default, or per service). Units in the names. The built-in
 * defaults and the accepted ranges (lb_synproxy_set_* refuse others with LB_EINVAL): */
#define LB_SP_INIT_RTO_MS_DEFAULT 200
#define LB_SP_MAX_RTO_MS_DEFAULT 3000
#define LB_SP_RTO_MS_MAX 120000            /* largest max_rto_ms (and init_rto_ms <= max_rto_ms) */
#define LB_SP_MAX_RETRIES_DEFAULT 3
#define LB_SP_MAX_RETRIES_MAX 15
#define LB_SP_MSS_DEFAULT 1460
#define LB_SP_MSS_MIN 536
#define LB_SP_MSS_MAX 9000
#define LB_SP_SACK_DEFAULT 1
#define LB_SP_DATA_MAX_BYTES_DEFAULT 1460
#define LB_SP_DATA_MAX_BYTES_MAX 1460
#define LB_SP_ACK_STORM_MAX_DEFAULT 10
struct lb_synproxy_conf {
    uint32_t init_rto_ms;          /* first retransmission of the SYN to the real server (>= 1) */
    uint32_t max_rto_ms;           /* cap of the doubling timeout */
    uint32_t max_retries;          /* retransmissions before giving up with a RST to the client */
    uint16_t mss;                  /* MSS announced to clients in the cookie SYN-ACK */
    uint8_t sack;                  /* offer SACK when the client does (0 or 1) */
    uint8_t wscale;                /* 0: no window scaling (the supported subset); other values refused */
    uint8_t timestamps;            /* 0: no timestamps (the supported subset); other values refused */
    uint8_t defer;                 /* 1: open to the real server only when the client's first data arrives */
    uint16_t data_max_bytes;       /* client data held per connection while the real server's handshake
                                      is pending */
    uint32_t ack_storm_max;        /* pure ACKs tolerated per pending connection before it is reset */
};

struct lb_synproxy_stats {
    uint64_t cookies_sent;         /* SYN-ACKs with a cookie */
    uint64_t cookies_valid;        /* ACKs whose cookie validated */
    uint64_t cookies_invalid;      /* ACKs whose cookie did not */
    uint64_t syns_to_rs;           /* first SYNs sent to real servers */
    uint64_t syn_retransmits;      /* SYNs retransmitted to real servers (generated; the adapter counts sends) */
    uint64_t give_ups;             /* connections reset after max_retries */
    uint64_t handshakes;           /* real-server handshakes completed */
    uint64_t held_dropped;         /* client segments dropped while pending (buffer full, ACK storm) */
    uint64_t rs_resets;            /* real servers that answered our SYN with RST (nothing listening): client reset */
};

struct lb_laddr_info {
    uint32_t addr;
    uint32_t conns;                /* connections currently using this local address */
};

struct lb_nfq_stats {
    uint64_t packets;              /* packets received from the queue */
    uint64_t batches;              /* recv batches processed */
    uint64_t verdicts;             /* verdicts sent */
    uint64_t xmit_l2;              /* frames sent on the packet socket */
    uint64_t xmit_l2_err;          /* packet socket send failures */
    uint64_t answers;              /* packets sent on the raw socket */
    uint64_t answer_err;
    uint64_t recv_err;             /* recv errors other than EAGAIN (e.g. ENOBUFS) */
    uint64_t timer_frames;         /* timer-generated frames (SYN-proxy SYN retransmissions) actually sent */
    uint64_t timer_answers;        /* timer-generated IP packets (SYN-proxy give-up RSTs) actually sent */
    uint64_t gso_packets;          /* GSO packets received (LB_NFQ_F_GSO) */
    uint64_t gso_segments;         /* segments they were cut into, each then processed as a packet */
    uint64_t gso_whole;            /* of them, sent on whole (DR: every segment unchanged, one frame) */
    uint64_t gso_errors;           /* GSO packets that could not be segmented (not TCP, URG): dropped */
    uint64_t csum_completed;       /* packets whose partial L4 checksum was completed here */
    /* The kernel's own counts for this queue (/proc/net/netfilter/nfnetlink_queue, read when the
     * stats are asked for): packets it dropped before lbd could see them. */
    uint64_t kernel_queue_dropped; /* the queue held queue_maxlen packets (and no fail-open) */
    uint64_t kernel_user_dropped;  /* the packet could not be put in lbd's socket buffer */
    uint64_t frag_packets;         /* packets larger than their path MTU sent as fragments (lb_ip_fragment) */
    uint64_t frag_out;             /* the fragments they were cut into */
    uint64_t own_passed;           /* packets lbd itself sent on its raw socket (its mark) that came back to
                                      the queue (to a local address, through lo): accepted, not processed again */
    uint64_t overload_signals;     /* runs of full receive batches signalled on lb_nfq_overload_fd */
};

/* ---- lifecycle ---- */
lb_t *lb_new(const struct lb_config *cfg);        /* NULL on allocation failure or bad config */
void lb_free(lb_t *lb);
const char *lb_strerror(int err);
const char *lb_reason_name(int reason);
const char *lb_state_name(int state);

/* ---- the packet path (no I/O; not locked: single caller, or an adapter holding the lock) ---- */
int lb_process(lb_t *lb, const uint8_t *pkt, uint32_t len, uint64_t now_ms,
               uint8_t *out, uint32_t out_cap, struct lb_action *act);
/* lb_process for a packet that carries a firewall mark (0: none; the NFQUEUE adapter passes
 * NFQA_MARK): a new connection looks up the fwmark service of that mark first, as
 * ip_vs_service_find does. lb_process(...) is lb_process_mark(..., 0, ...). */
int lb_process_mark(lb_t *lb, const uint8_t *pkt, uint32_t len, uint32_t mark, uint64_t now_ms,
                    uint8_t *out, uint32_t out_cap, struct lb_action *act);
/* lb_process_mark for a packet with flags: LB_PKT_F_LOOPBACK says it came in on the loopback device
 * (the director's own traffic to a VIP, looped back: the adapter passes NFQA_IFINDEX_INDEV == 1). Such a
 * packet never met input routing, so the martian-source checks (LB_R_MARTIAN_SRC, LB_R_LOCAL_SRC) do
 * not apply to it. lb_process_mark(...) is lb_process_pkt(..., flags 0, ...). */
#define LB_PKT_F_LOOPBACK 1
int lb_process_pkt(lb_t *lb, const uint8_t *pkt, uint32_t len, uint32_t mark, uint32_t flags, uint64_t now_ms,
                   uint8_t *out, uint32_t out_cap, struct lb_action *act);
/* Expire up to `budget` table slots' worth of dead entries (0 = whole table); returns entries freed. Locks. */
int lb_expire(lb_t *lb, uint64_t now_ms, uint32_t budget);

/* ---- configuration (each call locks, validates fully, then changes or changes nothing) ---- */
int lb_svc_add(lb_t *lb, const struct lb_svc_conf *conf);
int lb_svc_edit(lb_t *lb, const struct lb_svc_conf *conf);
int lb_svc_del(lb_t *lb, uint8_t proto, uint32_t addr, uint16_t port);
int lb_clear(lb_t *lb);
int lb_dest_add(lb_t *lb, uint8_t proto, uint32_t vaddr, uint16_t vport, const struct lb_dest_conf *conf);
int lb_dest_edit(lb_t *lb, uint8_t proto, uint32_t vaddr, uint16_t vport, const struct lb_dest_conf *conf);
int lb_dest_del(lb_t *lb, uint8_t proto, uint32_t vaddr, uint16_t vport, uint32_t daddr, uint16_t dport);
/* Install (ifindex != 0) or invalidate (fwd == NULL or ifindex == 0) a destination's forwarding state. */
int lb_dest_set_fwd(lb_t *lb, uint8_t proto, uint32_t vaddr, uint16_t vport, uint32_t daddr, uint16_t dport,
                    const struct lb_fwd_conf *fwd);
int lb_zero(lb_t *lb);                            /* zero every service's and destination's stats */
int lb_zero_svc(lb_t *lb, uint8_t proto, uint32_t addr, uint16_t port); /* one service's; LB_ESRCH */
/* ipvsadm --set tcp tcpfin udp: ESTABLISHED, FIN_WAIT and UDP timeouts in seconds; 0 = unchanged. */
int lb_set_timeouts(lb_t *lb, uint32_t tcp_s, uint32_t tcpfin_s, uint32_t udp_s);
void lb_get_timeouts(lb_t *lb, uint32_t *tcp_s, uint32_t *tcpfin_s, uint32_t *udp_s);
/* SYN-proxy: the global default settings, and one service's own (conf NULL: back to the default). */
int lb_synproxy_set_default(lb_t *lb, const struct lb_synproxy_conf *conf);
int lb_synproxy_set_svc(lb_t *lb, uint8_t proto, uint32_t addr, uint16_t port, const struct lb_synproxy_conf *conf);
void lb_synproxy_get_stats(lb_t *lb, struct lb_synproxy_stats *out);
/* Timers (SYN retransmissions to real servers, give-ups): when the next one is due (UINT64_MAX: none),
 * and produce the next due action (returns 1 with *act filled, 0 when nothing is due). Not locked,
 * like lb_process. */
uint64_t lb_timer_due(lb_t *lb);
int lb_timer_next(lb_t *lb, uint64_t now_ms, uint8_t *out, uint32_t out_cap, struct lb_action *act);
/* FULLNAT local address pool of a service (DPVS -P/-Q). */
int lb_laddr_add(lb_t *lb, uint8_t proto, uint32_t vaddr, uint16_t vport, uint32_t laddr);
int lb_laddr_del(lb_t *lb, uint8_t proto, uint32_t vaddr, uint16_t vport, uint32_t laddr);
int lb_laddr_list(lb_t *lb, uint8_t proto, uint32_t vaddr, uint16_t vport,
                  struct lb_laddr_info *out, uint32_t cap);                 /* returns total count or LB_ESRCH */

/* The director's own addresses (host order): its interfaces' local and broadcast addresses, as the
 * control plane reads them. A new connection whose source is one of them, or the virtual address of
 * any service (always local, whatever this set says), is dropped with LB_R_LOCAL_SRC: the kernel's
 * fib_validate_source refuses a local source on input. Replaces the whole set; LB_ENOMEM changes
 * nothing. Locks. */
int lb_local_addrs_set(lb_t *lb, const uint32_t *addrs, uint32_t n);

/* ---- observation (lock; copy out) ---- */
int lb_svc_list(lb_t *lb, struct lb_svc_info *out, uint32_t cap);          /* returns total count */
/* The services whose counters moved since this function last reported them (a packet or a connection
 * counted, a zeroing), up to cap of them, in list order; each one reported is marked as seen, so
 * calling again until it returns less than cap reports every moved service once. Returns the number
 * copied. What lbd's rate estimator reads every 2 s: it touches only the services with traffic,
 * not all of them (O(services) in C, O(moved) for the caller). */
int lb_svc_list_changed(lb_t *lb, struct lb_svc_info *out, uint32_t cap);
/* One service's conf and counters (O(1): the control plane must not list every service to read
 * one); returns 0, or LB_ESRCH when there is no such service. */
int lb_svc_get(lb_t *lb, uint8_t proto, uint32_t vaddr, uint16_t vport, struct lb_svc_info *out);
int lb_dest_list(lb_t *lb, uint8_t proto, uint32_t vaddr, uint16_t vport,
                 struct lb_dest_info *out, uint32_t cap);                  /* returns total count or LB_ESRCH */
/* Copy up to cap live entries starting at *cursor (0 to begin); updates *cursor; returns the number copied. */
int lb_conn_dump(lb_t *lb, uint64_t now_ms, struct lb_conn_info *out, uint32_t cap, uint32_t *cursor);
/* Incremental snapshots: copy up to cap (>= 64) records of the slots whose entry changed (created,
 * released, new state or flags, expiry moved across a multiple of 8.2 s) since they were last
 * reported, in slot order from *cursor (0 to begin); returns the number copied and sets *cursor
 * where to go on, 0 once the pass is complete. A slot with no live entry any more gives a record
 * with proto 0 (only .slot set). Each reported slot's mark is cleared. Locks (per call). */
int lb_conn_dump_changes(lb_t *lb, uint64_t now_ms, struct lb_conn_info *out, uint32_t cap, uint32_t *cursor);
/* Clear every change mark: call before the lb_conn_dump pass that starts a new full snapshot (what
 * changes during that pass is marked again). Locks. */
void lb_conn_changes_reset(lb_t *lb);
void lb_conn_stats(lb_t *lb, struct lb_conn_stats *out);  /* locks */
/* Recreate an entry from a dump (restart recovery; see lbd's state snapshots). Its service and
 * destination (and FULLNAT local address) must exist: LB_ESRCH / LB_ENOENT otherwise; LB_EEXIST if
 * the entry exists; LB_ENOSPC when the table is full; LB_EOPNOTSUPP for SYN-proxy entries (their
 * sequence translation is not in the dump). Templates come back as templates. With LB_CONN_F_UPDATE
 * in ci->flags, an existing entry bound to the same destination is updated (LB_RESTORE_UPDATED);
 * one bound elsewhere is left alone (LB_EEXIST). Locks. */
int lb_conn_restore(lb_t *lb, const struct lb_conn_info *ci, uint64_t now_ms);
/* Tests and diagnostics: the real server the service's scheduler picks for a new connection of pkt
 * (a complete unfragmented IPv4 packet of the service's protocol), as lb_process does on a miss at
 * now_ms, but without persistence and without creating a connection. The packet's addresses need
 * not be the service's: the lookup a fwmark service makes (issue 14) gives a service packets for
 * many destination addresses, on which lblc/lblcr key their caches. The scheduler's state moves
 * as for a real packet (rr's cursor, lblc's cache); entries due by now_ms expire first. Returns 1
 * with *daddr, *dport (host order), 0 when no destination is available, LB_ESRCH, LB_EINVAL. Locks. */
int lb_sched_probe(lb_t *lb, uint8_t proto, uint32_t vaddr, uint16_t vport, const uint8_t *pkt, uint32_t len,
                   uint64_t now_ms, uint32_t *daddr, uint16_t *dport);
uint32_t lb_conn_count(lb_t *lb);
uint32_t lb_conn_max(lb_t *lb);
uint32_t lb_hash_buckets(lb_t *lb);
void lb_counters(lb_t *lb, uint64_t *out, uint32_t n);                     /* per-reason packet counters */

/* ---- GSO helpers (pure functions on bytes; the adapter uses them with LB_NFQ_F_GSO) ---- */
/* Write the full TCP/UDP checksum of an IPv4 packet whose L4 checksum field holds only the
 * pseudo-header sum (the kernel's CHECKSUM_PARTIAL, NFQA_SKB_CSUMNOTREADY). LB_OK, or
 * LB_EINVAL when the packet is not a complete unfragmented IPv4 TCP/UDP packet. */
int lb_csum_complete(uint8_t *pkt, uint32_t len);
/* Split a TCP/IPv4 packet (a GSO super-packet) into segments whose IP packets are at most
 * mtu bytes, as the kernel's TCP segmentation does: same headers and options, sequence
 * numbers advanced, IP ID incremented per segment, CWR on the first only, FIN and PSH on
 * the last only, every checksum computed in full. Segment i is written at
 * out + i * slot_len and its length to seg_len[i]. Returns the number of segments (1 when
 * the packet already fits), LB_EINVAL for anything but a complete TCP/IPv4 packet with a
 * payload (or one carrying URG), LB_ENOSPC when max_segs or slot_len is too small. */
int lb_tcp_segment(const uint8_t *pkt, uint32_t len, uint32_t mtu, uint8_t *out, uint32_t slot_len,
                   uint32_t *seg_len, uint32_t max_segs);
/* Prepare a TCP/IPv4 super-packet longer than mtu to leave whole, for whoever sends it on
 * (a device with TSO, or the kernel's software GSO) to segment into IP packets of at most mtu
 * bytes: the TCP checksum field gets the pseudo-header sum (the CHECKSUM_PARTIAL form, whatever
 * it held before: a partial sum, or a GRO'd packet's stale full sum); *out says where the
 * checksum starts, the header length and the segment payload size. Bytes change only on LB_OK.
 * LB_EINVAL for anything lb_tcp_segment refuses, or a packet that already fits. */
struct lb_gso_whole {
    uint16_t l4_off;               /* offset of the TCP header in the IP packet: the checksum starts there */
    uint16_t hdr_len;              /* IP + TCP header bytes */
    uint16_t mss;                  /* TCP payload bytes per segment */
    uint8_t cwr;                   /* CWR set: the segmenter must keep it on the first segment only (ECN) */
};
int lb_tcp_gso_prepare(uint8_t *pkt, uint32_t len, uint32_t mtu, struct lb_gso_whole *out);

/* ---- fragmentation (pure functions on bytes) ---- */
/* Cut an IPv4 packet into fragments of at most mtu bytes, as the kernel's ip_fragment: the first
 * keeps the whole header, later ones keep only the options whose copied flag is set (the others
 * become NOPs, ip_options_fragment), offsets in 8-byte units, MF on all but the last (and on the
 * last too when the packet was itself a non-last fragment), header checksums computed in full,
 * the identification and everything else unchanged. The fragments are written back to back into
 * out, fragment i's length in frag_len[i]. Returns the number of fragments (1: the packet
 * already fits, copied unchanged), LB_EINVAL for anything but a complete IPv4 packet, a packet
 * with DF set that does not fit, or an mtu leaving no room for 8 payload bytes after the header;
 * LB_ENOSPC when out_cap or max_frags is too small. */
int lb_ip_fragment(const uint8_t *pkt, uint32_t len, uint32_t mtu, uint8_t *out, uint32_t out_cap,
                   uint32_t *frag_len, uint32_t max_frags);
/* An adapter could not send what lb_process decided for a packet counted under `reason` (an
 * lb_action.reason): the packet moves from that reason's counter to LB_R_XMIT_FAILED, so that
 * what failed is never counted as forwarded. Locks. */
void lb_count_xmit_failed(lb_t *lb, int reason);

/* The largest IP packet of pkt's connection that its forwarding method sends on without an ICMP
 * 'fragmentation needed': the destination's path MTU, less the outer header for IPIP. 0 when pkt
 * belongs to no connection (client side) or does not parse. Reads only: no state, counter or
 * expiry changes (an adapter holding the lock picks the cut size of a GSO packet with it). */
uint32_t lb_path_mtu(lb_t *lb, const uint8_t *pkt, uint32_t len, uint64_t now_ms);

/* ---- NFQUEUE adapter: one thread per queue, runs without the GIL ---- */
#define LB_NFQ_F_FAIL_OPEN 1       /* kernel accepts instead of dropping when the queue is full */
#define LB_NFQ_F_QDISC_BYPASS 2    /* frames skip the qdisc: faster, but invisible to tcpdump on the director */
#define LB_NFQ_F_GSO 4             /* NFQA_CFG_F_GSO: one message per GSO packet, segmented here */
#define LB_NFQ_F_TIMERS 8          /* this queue's thread runs the expiry and the SYN-proxy timers */
#define LB_NFQ_MAXLEN_DEFAULT 1024 /* packets the kernel queues for lbd before it drops (docs/fastpath.md
                                      "Overload": a long queue makes an overloaded director livelock) */
struct lb_nfq_opts {
    uint32_t flags;                /* LB_NFQ_F_* */
    int32_t cpu;                   /* pin the thread to this CPU; -1: not pinned */
    uint16_t mark_queue;           /* queue number in the answer socket's SO_MARK (an instance's first queue) */
    uint16_t gso_mtu;              /* LB_NFQ_F_GSO: IP packet size segments are cut to; 0 = 1500 */
    uint32_t queue_maxlen;         /* the kernel's queue length (NFQA_CFG_QUEUE_MAXLEN); 0 = LB_NFQ_MAXLEN_DEFAULT */
};
/* Several queues (--queue-balance) share one lb_t: one adapter each; exactly one of them
 * should have LB_NFQ_F_TIMERS. opts NULL = flags 0 | LB_NFQ_F_TIMERS, unpinned, own mark. */
lb_nfq_t *lb_nfq_start(lb_t *lb, uint16_t queue_num, const struct lb_nfq_opts *opts, int *err);
int lb_nfq_stop(lb_nfq_t *q);                      /* joins the thread and frees q */
void lb_nfq_get_stats(lb_nfq_t *q, struct lb_nfq_stats *out);
/* An eventfd (non-blocking, owned by q: closed by lb_nfq_stop) that q's thread writes when it took
 * LB_ADAPTER_OVERLOAD_RUN (16) full receive batches in a row, at most every 100 ms: the queue is
 * probably overflowing (lbd's overload guard, lb/overload.py). Read its 8 bytes to clear it. -1: q NULL. */
int lb_nfq_overload_fd(lb_nfq_t *q);

/* The sync master's own change marks (lb/sync/manager.py), set whenever the incremental
 * snapshots' are and cleared only by these calls: lb_conn_dump_sync_changes is
 * lb_conn_dump_changes over them (same records, cursor and cap rules), lb_conn_sync_changes_reset
 * clears them all (before the full pass that starts a sync master). Locks (per call). */
int lb_conn_dump_sync_changes(lb_t *lb, uint64_t now_ms, struct lb_conn_info *out, uint32_t cap, uint32_t *cursor);
void lb_conn_sync_changes_reset(lb_t *lb);

/* ---- the packet path, in place ---- */
/* lb_process_pkt for a caller that owns pkt's bytes and lends them (an adapter's receive buffer): a
 * packet that leaves with only its TTL decremented and its IPv4 header checksum updated (DR, when it
 * fits the destination's path MTU and len is its IP total length: no link padding) is changed in pkt itself, RFC 1624 incrementally as the kernel's
 * ip_decrease_ttl, and the action says LB_V_XMIT_L2 with out_len 0: send l2hdr + pkt[0..len). Only
 * bytes 8 (TTL), 10 and 11 (header checksum) of pkt are ever written, and only with that action;
 * everything else (IPIP, FULLNAT, NAT, PROXY, answers: the packet grows or is rewritten) is written
 * to out exactly as lb_process_pkt writes it. */
int lb_process_inplace(lb_t *lb, uint8_t *pkt, uint32_t len, uint32_t mark, uint32_t flags, uint64_t now_ms,
                       uint8_t *out, uint32_t out_cap, struct lb_action *act);

/* ---- connection sync extension (issue 18 item 3; docs/sync.md "The extension") ---- */
/* What the kernel's sync protocol cannot carry of a SYN-proxied or PROXY-protocol connection: its
 * sequence translation (SYN-proxy's side table). Host order. */
#define LB_CONN_SEQ_PX_SENT 1      /* the PROXY header has gone to the real server at least once */
#define LB_CONN_SEQ_PX_ACKED 2     /* the real server acknowledged every header byte */
#define LB_CONN_SEQ_PX_V2 4        /* the header is version 2 (LB_PROXY_V2_LEN bytes) */
struct lb_conn_seq {
    uint16_t flags;                /* LB_CONN_F_SYNPROXY | LB_CONN_F_PROXY: which translations apply */
    uint16_t px_len;               /* PROXY: header bytes before the client's first (0 without PROXY) */
    uint8_t px_flags;              /* PROXY: LB_CONN_SEQ_PX_* */
    uint8_t pad[3];
    uint32_t cookie_isn;           /* SYN-proxy: the director's ISN towards the client */
    uint32_t client_isn;           /* the client's ISN */
    uint32_t d_in;                 /* SYN-proxy: real server's ISN - cookie_isn, added to client ACK numbers */
};
/* The sequence state of the TCP connection <caddr:cport -> vaddr:vport> (host order). LB_OK;
 * LB_ESRCH: no such connection; LB_ENOENT: it translates no sequence numbers; LB_EBUSY: SYN-proxied
 * but the real server's handshake is not complete (no offset yet). Locks. */
int lb_conn_seq_get(lb_t *lb, uint8_t proto, uint32_t caddr, uint16_t cport, uint32_t vaddr, uint16_t vport,
                    uint64_t now_ms, struct lb_conn_seq *out);
/* lb_conn_restore for a SYN-proxied / PROXY-protocol connection (a sync backup's record): ci as for
 * lb_conn_restore with LB_CONN_F_SYNPROXY / LB_CONN_F_PROXY in ci->flags, seq its translation (flags
 * equal to ci's, PROXY header length 32..56 for v1, LB_PROXY_V2_LEN for v2, 0 without PROXY; TCP
 * connections only): LB_EINVAL otherwise. With FULLNAT, ci->laddr / ci->lport bind the entry to that
 * local address and port (reserved in the local port allocator). An existing entry is updated only
 * when it has the same translations (PROXY: the header's SENT/ACKED marks accumulate). Locks. */
int lb_conn_restore_seq(lb_t *lb, const struct lb_conn_info *ci, const struct lb_conn_seq *seq, uint64_t now_ms);

/* ---- AF_XDP packet source (lbd --packet-source afxdp; native/src/xsk.c, docs/afxdp.md) ---- */
/* The XDP program (lb_xdp.bpf.o) on one interface, attached through a bpf_link: it leaves the
 * interface when lbd exits or dies (the link's descriptor is its only reference). */
typedef struct lb_xdp lb_xdp_t;
typedef struct lb_xsk lb_xsk_t;    /* one AF_XDP socket and its thread (one receive queue) */
#define LB_XDP_MODE_AUTO 0         /* mode_pref: native (driver) mode, else generic (skb) mode */
#define LB_XDP_MODE_NATIVE 1
#define LB_XDP_MODE_GENERIC 2
/* What the program redirects to lbd (host order; fields that do not take part are 0):
 * a service {0, vip, 0, vport (0: port-0 service), proto}; a FULLNAT reply {rip, lip, rport, 0, proto};
 * a NAT reply {rip, 0, rport, 0, proto}. ICMP errors quoting a packet of any of them follow. */
struct lb_xdp_key {
    uint32_t saddr;
    uint32_t daddr;
    uint16_t sport;
    uint16_t dport;
    uint8_t proto;
};
struct lb_xdp_stats {              /* the program's counters, summed over the CPUs */
    uint64_t redirected;           /* packets handed to lbd's sockets */
    uint64_t passed;               /* packets left to the kernel (not lbd's) */
    uint64_t fragments_passed;     /* IPv4 fragments left to the kernel (XDP sees them before reassembly) */
    uint64_t no_socket;            /* lbd's, but no socket on their receive queue: left to the kernel */
    /* The fast path (fastpath_flows > 0 at attach; docs/afxdp.md "The XDP fast path"): */
    uint64_t fastpath;             /* packets of established DR flows the program forwarded itself */
    uint64_t fp_report_lost;       /* activity reports the program could not queue (ring full): credited later */
    uint64_t fp_installed;         /* flows lbd installed (or re-installed: stale generation) */
    uint64_t fp_removed;           /* flows lbd removed (FIN/RST seen, connection expired or gone, ...) */
    uint64_t fp_refused;           /* flows not installed (map or destination slots full): left to lbd */
    uint64_t fp_credited;          /* fast-pathed packets credited to the connections' statistics */
    uint64_t fp_stale;             /* flows lbd found without their connection and removed */
    uint64_t shed;                 /* lb_xdp_shed: packets of lbd's dropped over the overload guard's rate */
};
/* Load obj_path and attach its program to ifindex: *mode gets the mode used, *native_err the
 * (negative) error of the native attempt when generic mode was used instead. fastpath_flows > 0: the
 * fast path of established DR TCP flows, with room for that many flows (the connection table's size);
 * the first lb_xsk_start on queue 0 then registers it with the engine. NULL and *err on failure. */
lb_xdp_t *lb_xdp_attach(const char *obj_path, uint32_t ifindex, int mode_pref, uint32_t fastpath_flows, int *mode,
                        int *native_err, int *err);
void lb_xdp_detach(lb_xdp_t *x);  /* stop every lb_xsk of x first */
int lb_xdp_key_set(lb_xdp_t *x, const struct lb_xdp_key *k, int present);  /* add (1) or remove (0) */
/* One of the director's own addresses (host order), added (1) or removed (0): a NAT reply key does not
 * redirect packets to it (the director's own connections to a NAT real server stay the kernel's). */
int lb_xdp_local_set(lb_xdp_t *x, uint32_t addr, int present);
void lb_xdp_get_stats(lb_xdp_t *x, struct lb_xdp_stats *out);
/* The overload guard's shedding program (lbd --overload-xdp, NFQUEUE source; lb/xdpshed.py): the same
 * object's lb_xdp_shed on ifindex, which drops lbd's packets (lb_xdp_key_set's keys, lb_xdp_local_set)
 * above the rate lb_xdp_shed_set gives and passes everything else. share: an attached shedding
 * program whose bucket this one uses (one rate for all interfaces), or NULL. Detach with lb_xdp_detach. */
lb_xdp_t *lb_xdp_attach_shed(const char *obj_path, uint32_t ifindex, int mode_pref, const lb_xdp_t *share, int *mode,
                             int *native_err, int *err);
/* The bucket: rate_pps packets/s with a burst of `burst` packets (a full bucket when written); 0: off
 * (the program passes everything without parsing it). LB_OK or -errno. */
int lb_xdp_shed_set(lb_xdp_t *x, uint64_t rate_pps, uint32_t burst);

#define LB_XSK_F_TIMERS 8          /* this socket's thread runs the expiry and the timers */
#define LB_XSK_F_COPY 16           /* copy mode even where the driver offers zero-copy */
#define LB_XSK_F_QDISC_BYPASS 32   /* AF_PACKET frames skip the qdisc (PACKET_QDISC_BYPASS, as LB_NFQ_F_QDISC_BYPASS) */
struct lb_xsk_opts {
    uint32_t flags;                /* LB_XSK_F_* */
    int32_t cpu;                   /* pin the thread to this CPU; -1: not pinned */
    uint32_t queue_id;             /* the interface's receive queue */
    uint16_t mark_queue;           /* the instance number in the raw socket's SO_MARK (as lb_nfq_opts) */
};
struct lb_xsk_stats {
    uint64_t packets;              /* frames received */
    uint64_t batches;
    uint64_t xmit_xsk;             /* frames sent back out of the umem on the AF_XDP TX ring */
    uint64_t xmit_l2;              /* frames sent on the AF_PACKET socket (another interface; timers) */
    uint64_t xmit_l2_err;
    uint64_t answers;              /* LB_V_ANSWER packets sent on the raw socket */
    uint64_t answer_err;
    uint64_t passed;               /* LB_V_ACCEPT / LB_V_MANGLE packets re-injected on the raw socket */
    uint64_t pass_err;
    uint64_t timer_frames;
    uint64_t bad_frames;           /* not an untagged IPv4 frame: dropped */
    uint64_t fill_lost;            /* frames that could not go back to the fill ring (never expected) */
    uint64_t zerocopy_err;         /* errno of the refused zero-copy bind (0: zero-copy, or not tried) */
    uint64_t kernel_rx_dropped;    /* XDP_STATISTICS */
    uint64_t kernel_rx_ring_full;
    uint64_t kernel_fill_empty;
    uint64_t frag_packets;         /* packets larger than their path MTU (DF clear) sent as fragments */
    uint64_t frag_out;             /* the fragments they were cut into (lb_ip_fragment, on the packet socket) */
    uint64_t xmit_l2_calls;        /* sendmmsg() calls on the AF_PACKET socket (frames / calls: the batching) */
    uint64_t xmit_l2_waits;        /* times it was full (EAGAIN/ENOBUFS) and the thread waited for room, bounded */
};
lb_xsk_t *lb_xsk_start(lb_t *lb, lb_xdp_t *xdp, const struct lb_xsk_opts *opts, int *err);
int lb_xsk_stop(lb_xsk_t *q);     /* joins the thread, closes the socket, frees q */
int lb_xsk_zerocopy(lb_xsk_t *q); /* 1 when bound in zero-copy mode */
void lb_xsk_get_stats(lb_xsk_t *q, struct lb_xsk_stats *out);

/* ---- NAT replies taken at ingress (lbd --nat-replies ingress; native/src/natrx.c, lb/natingress.py) ---- */
/* A reader of what lbd's netdev ingress chain forwarded to its veth pair (the peer's ifindex),
 * reassembled by the kernel, through lb_process_pkt; what it forwards leaves on a raw socket marked
 * LB_SOCKET_MARK_BASE | mark_queue. Read by the thread of the NFQUEUE queue `host` (one thread for
 * both directions of a NAT connection; stop the reader before its host), or with host NULL by a
 * thread of its own, which never runs the timers or the expiry. */
typedef struct lb_natrx lb_natrx_t;
#define LB_NATRX_F_QDISC_BYPASS 32 /* LB_V_XMIT_L2 frames skip the qdisc (as LB_NFQ_F_QDISC_BYPASS) */
struct lb_natrx_opts {
    uint32_t flags;                /* LB_NATRX_F_* */
    int32_t cpu;                   /* pin the thread to this CPU; -1: not pinned */
    uint32_t ifindex;              /* the veth peer the packets arrive on */
    uint16_t mark_queue;           /* the instance number in the raw socket's SO_MARK (as lb_nfq_opts) */
    lb_nfq_t *host;                /* the queue whose thread reads it (cpu then unused); NULL: its own thread */
};
struct lb_natrx_stats {
    uint64_t packets;              /* IPv4 packets received (a reassembled datagram counts once) */
    uint64_t batches;              /* recvmmsg() calls that returned packets */
    uint64_t passed;               /* packets forwarded on the raw socket (LB_V_ACCEPT / LB_V_MANGLE) */
    uint64_t pass_err;
    uint64_t ttl_expired;          /* packets not forwarded: TTL <= 1 */
    uint64_t answers;              /* LB_V_ANSWER packets sent on the raw socket */
    uint64_t answer_err;
    uint64_t xmit_l2;              /* LB_V_XMIT_L2 frames sent on the AF_PACKET socket */
    uint64_t xmit_l2_err;
    uint64_t csum_completed;       /* partial checksums completed (the sender's checksum offload) */
    uint64_t gso_packets;          /* GSO super-packets received (GRO on the real servers' interface) */
    uint64_t gso_segments;         /* segments they were cut into, each processed as a packet */
    uint64_t gso_errors;           /* GSO packets that could not be segmented: dropped */
    uint64_t frag_packets;         /* packets larger than the way out, sent as fragments */
    uint64_t frag_out;
    uint64_t not_ipv4;             /* the pair's own traffic, other protocols: ignored */
    uint64_t bad_packets;          /* truncated or shorter than an IPv4 header: dropped */
    uint64_t kernel_dropped;       /* the socket's receive queue was full (PACKET_STATISTICS tp_drops) */
    uint64_t socket_errors;        /* errors on the socket (ENETDOWN: the pair is gone; it then reads nothing) */
};
lb_natrx_t *lb_natrx_start(lb_t *lb, const struct lb_natrx_opts *opts, int *err);
int lb_natrx_stop(lb_natrx_t *q);  /* detaches from its host or joins its thread, closes its sockets, frees q */
void lb_natrx_get_stats(lb_natrx_t *q, struct lb_natrx_stats *out);

/* ---- sync master: which entries to send, per packet (issue 18 item 1; docs/sync.md "What the master sends") ---- */
/* The kernel's sysctls net.ipv4.vs.sync_threshold (threshold, period), sync_refresh_period,
 * sync_retries and sync_persist_mode, with the kernel's defaults and validation
 * (ip_vs_ctl.c): threshold and period >= 0, threshold < period unless period is 0; retries 0..3. */
#define LB_SYNC_THRESHOLD_DEFAULT 3
#define LB_SYNC_PERIOD_DEFAULT 50
#define LB_SYNC_REFRESH_PERIOD_MS_DEFAULT 0
#define LB_SYNC_RETRIES_DEFAULT 0
#define LB_SYNC_RETRIES_MAX 3
#define LB_SYNC_REFRESH_PERIOD_MS_MAX 2147483000 /* the kernel's: seconds that fit an int of jiffies (HZ 1000) */
#define LB_SYNC_REFRESH_MIN_MS 10000             /* the time rule's floor: max(timeout / 2, 10 s) */
struct lb_sync_conf {
    int32_t threshold;             /* sync_threshold[0] */
    int32_t period;                /* sync_threshold[1] */
    uint32_t refresh_period_ms;    /* sync_refresh_period (0: the packet rule alone) */
    uint32_t retries;              /* sync_retries */
    uint32_t persist_mode;         /* sync_persist_mode: 1 = connections under a persistence template are not sent */
};
/* What the decision keeps per entry (the kernel's in_pkts, old_state and sync_endtime, whose two low
 * bits count the retries of the time rule). */
struct lb_sync_state {
    uint64_t sync_end_ms;          /* the expiry the last sent record announced, & ~3, | retries */
    uint32_t in_pkts;              /* packets from the client (templates: from their connections) */
    uint8_t old_state;             /* the state last sent */
    uint8_t want;                  /* chosen since the last lb_conn_dump_sync_changes */
    uint16_t pad;
};
/* Output flag of lb_conn_dump_sync_changes: the entry was chosen (by a packet) since the last dump. */
#define LB_CONN_F_SYNC_WANT 256
/* LB_OK, or LB_EINVAL for values the kernel's sysctls refuse. */
int lb_sync_conf_check(const struct lb_sync_conf *conf);
/* Switch the per-packet choice on (on = 1, conf checked: LB_EINVAL; its per-entry state allocated
 * zeroed at the first call: LB_ENOMEM) or off (on = 0). Locks. */
int lb_sync_master_set(lb_t *lb, const struct lb_sync_conf *conf, int on);
/* The kernel's ip_vs_sync_conn_needed for one entry (pure, st updated when it says yes): 1 when
 * the packet that made its count `pkts` (state `state` after it, timeout `timeout_ms`) sends it.
 * conn_flags: LB_CONN_F_TEMPLATE; in_persistence: a connection controlled by a template. */
int lb_sync_needed(const struct lb_sync_conf *conf, struct lb_sync_state *st, uint8_t proto, uint8_t state,
                   uint32_t conn_flags, int in_persistence, uint32_t pkts, uint32_t timeout_ms, uint64_t now_ms);

/* ---- rate estimators (native/src/est.c; the kernel's net/netfilter/ipvs/ip_vs_est.c) ---- */
/* Every LB_EST_TICK_MS each service's and destination's estimator takes the increase of its
 * counters since the last step, per second in fixed point (connections and packets: delta << 9,
 * i.e. * 2^10 / 2 s; bytes: delta << 4, * 2^5 / 2 s), and moves its average a quarter of the way:
 * avg += (rate - avg) >> 2, an arithmetic shift on signed 64 bits. Reading rounds: (avg + 0x1FF) >> 10
 * for cps and pps, (avg + 0xF) >> 5 for bps (ip_vs_read_estimator). A counter that went backwards
 * contributes 0 for that step; zeroing (lb_zero, lb_zero_svc) takes the current counters (0) as
 * "last" and clears the averages (ip_vs_zero_estimator). The state of a service or destination is
 * allocated zeroed with it: its first step counts from 0, as the kernel's. A destination revived
 * from the trash into the same service keeps its counters and its estimator (the kernel's). Who
 * steps: the thread of an adapter that runs the timers (LB_NFQ_F_TIMERS, LB_XSK_F_TIMERS), on its
 * own 2-second grid and only while some service has traffic or decaying rates; without such a
 * thread, each lb_est_tick call is one step. A step costs the services with traffic (a service
 * whose counters move joins the stepped list, one that stood still with every rate 0 leaves it)
 * and their destinations, never the connections. lb_api.h's pure functions below are the
 * arithmetic, for tests. */
#define LB_EST_TICK_MS 2000
struct lb_est {
    uint64_t last[5];              /* counters at the last step: conns, inpkts, outpkts, inbytes, outbytes */
    int64_t avg[5];                /* averages: cps, inpps, outpps (scaled 2^10), inbps, outbps (scaled 2^5) */
};
/* One step of e with the counters `now`; read e's rates; zero e at the counters `now`. Pure. */
void lb_est_step_one(struct lb_est *e, const struct lb_stats *now);
void lb_est_read(const struct lb_est *e, struct lb_rates *out);
void lb_est_zero(struct lb_est *e, const struct lb_stats *now);
/* The control plane's tick (lbd, every LB_EST_TICK_MS): one step of the estimators unless an adapter
 * thread steps them, then the watch mark: a number that changes whenever a destination's
 * handshake counters (connections scheduled, SYN retransmissions, completed handshakes) or a
 * refusal counter (table_full, no_laddr, xmit_failed, early drops) moved, or counters were zeroed:
 * the director's stalled-handshake watch and refusal log have nothing to do while it stands still.
 * Locks (once). */
uint64_t lb_est_tick(lb_t *lb);
/* One step of every estimator that needs one, now (the adapter's and lb_est_tick's). Locks. */
void lb_est_step(lb_t *lb);
/* Adapter threads stepping the estimators (0: lb_est_tick does), and the services in the stepped list. */
uint32_t lb_est_driven(lb_t *lb);
uint32_t lb_est_active(lb_t *lb);
