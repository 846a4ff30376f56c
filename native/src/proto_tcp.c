/*
 * proto_tcp.c - the IPVS TCP state machine (ip_vs_proto_tcp.c semantics) and
 * the per-state timeouts, plus UDP's single timeout.
 */
#include "lb_internal.h"

#define sNO LB_S_NONE
#define sES LB_S_ESTABLISHED
#define sSS LB_S_SYN_SENT
#define sSR LB_S_SYN_RECV
#define sFW LB_S_FIN_WAIT
#define sTW LB_S_TIME_WAIT
#define sCL LB_S_CLOSE
#define sCW LB_S_CLOSE_WAIT
#define sLA LB_S_LAST_ACK
#define sLI LB_S_LISTEN
#define sSA LB_S_SYNACK

/* tcp_state_idx(): RST wins, then SYN, FIN, ACK (PSH is irrelevant). */
#define EV(f)                                                                                                    \
    ((f) & LB_TCP_RST   ? LB_TCP_EV_RST                                                                          \
     : (f) & LB_TCP_SYN ? LB_TCP_EV_SYN                                                                          \
     : (f) & LB_TCP_FIN ? LB_TCP_EV_FIN                                                                          \
     : (f) & LB_TCP_ACK ? LB_TCP_EV_ACK                                                                          \
                        : LB_TCP_EV_NONE)
#define EV4(f) EV(f), EV((f) + 1), EV((f) + 2), EV((f) + 3)
const uint8_t lb_tcp_event_of[32] = {EV4(0), EV4(4), EV4(8), EV4(12), EV4(16), EV4(20), EV4(24), EV4(28)};
_Static_assert(LB_TCP_FIN == 0x01 && LB_TCP_SYN == 0x02 && LB_TCP_RST == 0x04 && LB_TCP_ACK == 0x10,
               "lb_tcp_event_of is indexed by the low five flag bits");

/* The kernel's tables; the last column (UDP, not a TCP state) and the `none` rows go to CLOSE. */
const uint8_t lb_tcp_states[3][LB_TCP_EVENTS][LB_S_COUNT] = {
    {
        /* INPUT        sNO  sES  sSS  sSR  sFW  sTW  sCL  sCW  sLA  sLI  sSA  UDP */
        /* syn */  {sSR, sES, sES, sSR, sSR, sSR, sSR, sSR, sSR, sSR, sSR, sCL},
        /* fin */  {sCL, sCW, sSS, sTW, sTW, sTW, sCL, sCW, sLA, sLI, sTW, sCL},
        /* ack */  {sCL, sES, sSS, sES, sFW, sTW, sCL, sCW, sCL, sLI, sES, sCL},
        /* rst */  {sCL, sCL, sCL, sSR, sCL, sCL, sCL, sCL, sLA, sLI, sSR, sCL},
        /* none */ {sCL, sCL, sCL, sCL, sCL, sCL, sCL, sCL, sCL, sCL, sCL, sCL},
    },
    {
        /* OUTPUT */
        /* syn */  {sSS, sES, sSS, sSR, sSS, sSS, sSS, sSS, sSS, sLI, sSR, sCL},
        /* fin */  {sTW, sFW, sSS, sTW, sFW, sTW, sCL, sTW, sLA, sLI, sTW, sCL},
        /* ack */  {sES, sES, sSS, sES, sFW, sTW, sCL, sCW, sLA, sES, sES, sCL},
        /* rst */  {sCL, sCL, sSS, sCL, sCL, sTW, sCL, sCL, sCL, sCL, sCL, sCL},
        /* none */ {sCL, sCL, sCL, sCL, sCL, sCL, sCL, sCL, sCL, sCL, sCL, sCL},
    },
    {
        /* INPUT-ONLY */
        /* syn */  {sSR, sES, sES, sSR, sSR, sSR, sSR, sSR, sSR, sSR, sSR, sCL},
        /* fin */  {sCL, sFW, sSS, sTW, sFW, sTW, sCL, sCW, sLA, sLI, sTW, sCL},
        /* ack */  {sCL, sES, sSS, sES, sFW, sTW, sCL, sCW, sCL, sLI, sES, sCL},
        /* rst */  {sCL, sCL, sCL, sSR, sCL, sCL, sCL, sCL, sLA, sLI, sCL, sCL},
        /* none */ {sCL, sCL, sCL, sCL, sCL, sCL, sCL, sCL, sCL, sCL, sCL, sCL},
    },
};

/* Default timeouts in milliseconds, indexed by enum lb_conn_state (IPVS defaults). */
static const uint32_t default_timeout_ms[LB_S_COUNT] = {
    [LB_S_NONE] = 2 * 1000,
    [LB_S_ESTABLISHED] = 15 * 60 * 1000,
    [LB_S_SYN_SENT] = 2 * 60 * 1000,
    [LB_S_SYN_RECV] = 1 * 60 * 1000,
    [LB_S_FIN_WAIT] = 2 * 60 * 1000,
    [LB_S_TIME_WAIT] = 2 * 60 * 1000,
    [LB_S_CLOSE] = 10 * 1000,
    [LB_S_CLOSE_WAIT] = 60 * 1000,
    [LB_S_LAST_ACK] = 30 * 1000,
    [LB_S_LISTEN] = 2 * 60 * 1000,
    [LB_S_SYNACK] = 120 * 1000,
    [LB_S_UDP] = 5 * 60 * 1000,
};

void lb_timeouts_init(uint32_t *timeouts_ms)
{
    for (int i = 0; i < LB_S_COUNT; i++)
        timeouts_ms[i] = default_timeout_ms[i];
}

int lb_set_timeouts(lb_t *lb, uint32_t tcp_s, uint32_t tcpfin_s, uint32_t udp_s)
{
    /* ipvsadm accepts up to INT_MAX / HZ seconds; keep milliseconds in 32 bits. */
    const uint32_t max_s = UINT32_MAX / 1000;
    if (tcp_s > max_s || tcpfin_s > max_s || udp_s > max_s)
        return LB_EINVAL;
    pthread_mutex_lock(&lb->lock);
    if (tcp_s)
        lb->timeouts_ms[LB_S_ESTABLISHED] = tcp_s * 1000;
    if (tcpfin_s)
        lb->timeouts_ms[LB_S_FIN_WAIT] = tcpfin_s * 1000;
    if (udp_s)
        lb->timeouts_ms[LB_S_UDP] = udp_s * 1000;
    pthread_mutex_unlock(&lb->lock);
    return LB_OK;
}

void lb_get_timeouts(lb_t *lb, uint32_t *tcp_s, uint32_t *tcpfin_s, uint32_t *udp_s)
{
    pthread_mutex_lock(&lb->lock);
    if (tcp_s)
        *tcp_s = lb->timeouts_ms[LB_S_ESTABLISHED] / 1000;
    if (tcpfin_s)
        *tcpfin_s = lb->timeouts_ms[LB_S_FIN_WAIT] / 1000;
    if (udp_s)
        *udp_s = lb->timeouts_ms[LB_S_UDP] / 1000;
    pthread_mutex_unlock(&lb->lock);
}

/* The states a TCP connection counts as active in: the kernel's tcp_state_active_table
 * (ip_vs_proto_tcp.c, 6.1): the handshake states and ESTABLISHED. LB_S_UDP is not a TCP state
 * (and UDP entries never change state: they stay inactive, as udp_state_transition leaves them). */
static const uint8_t state_active[LB_S_COUNT] = {
    [LB_S_ESTABLISHED] = 1,
    [LB_S_SYN_SENT] = 1,
    [LB_S_SYN_RECV] = 1,
    [LB_S_SYNACK] = 1,
};

void lb_conn_set_state(lb_t *lb, struct lb_conn *c, uint8_t new_state)
{
    if (new_state != c->state) {
        struct lb_dest *d = c->dest;
        if (d) {
            if (!(c->flags & LB_CF_INACTIVE) && !state_active[new_state]) {
                d->activeconns--; /* totalconns counts it either way */
                c->flags |= LB_CF_INACTIVE;
            } else if ((c->flags & LB_CF_INACTIVE) && state_active[new_state]) {
                d->activeconns++;
                c->flags &= (uint16_t)~LB_CF_INACTIVE;
            }
        }
        if (new_state == LB_S_ESTABLISHED)
            lb_conn_assure_template(lb, c);
        c->state = new_state;
        lb_conn_changed(lb, c); /* a snapshot shows the state; early drop may take it, or no longer */
    }
}
