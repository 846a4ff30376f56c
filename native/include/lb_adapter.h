/*
 * lb_adapter.h - what the packet sources (nfq.c, xsk.c, natrx.c) share around lb_process_pkt(): the clock,
 * the raw answer socket, socket buffers, the adapter thread, how it waits (its poll timeout and
 * wake-ups) and the expiry. Internal: not part of the cffi contract (lb_api.h).
 *
 * Waiting. A packet thread sleeps in poll() until a packet comes, its stop is asked for (the
 * eventfd of struct lb_adapter_wait, written by the stop path) or its next periodic work is due,
 * and no longer: an idle thread costs a wake-up only when there is something to do (issue 19:
 * in an emulated guest each wake-up of a thread costs ~0.2 ms of CPU). The thread that runs the
 * timers (LB_NFQ_F_TIMERS / LB_XSK_F_TIMERS) sleeps until the first of: a timer (SYN-proxy
 * retransmission, a held packet: lb_timer_due), the first connection's expiry (lb->exp_next_ms,
 * exact: conn.c's heaps), a scheduler's periodic work (lb->sched_next_ms), the XDP fast path's next
 * pass (xsk_fp.c), the rate estimators' next step (est.c: every 2 s while some service has traffic
 * or rates not yet 0, never for an idle director), and at most LB_ADAPTER_IDLE_MS. What another thread or the control plane makes
 * due earlier wakes it through the core's hook (struct lb_wake, lb_internal.h). The expiry and the
 * schedulers' ticks run together, at most every LB_ADAPTER_EXPIRE_EVERY_MS.
 */
#ifndef LB_ADAPTER_H
#define LB_ADAPTER_H

#include <pthread.h>
#include <stdint.h>

#include "lb_internal.h"

/* The expiry (lb_conn_tick: every entry whose time has come, in expiry order) and the schedulers'
 * ticks run at most this often: entries due within 100 ms of each other leave together, in one
 * hold of the lock, as when the thread woke every 100 ms (so an entry leaves at most ~100 ms after
 * its time, and a run releases what came due in ~100 ms, not more). */
#define LB_ADAPTER_EXPIRE_EVERY_MS 100
/* The longest sleep of a thread with periodic work (the timers' thread, the fast path's): 1 s,
 * the fast path's credit interval (FP_CREDIT_MS). The XDP program never wakes lbd (its records
 * wait in the ring) and flows installed by other threads join the watch list without a wake-up,
 * so a pass a second keeps every fast-pathed packet credited within about two intervals, as
 * before. It is also a safety net for the timers' thread: a due time that moved earlier without
 * announcing it through lb->wake (none is known) would be served at most 1 s late, not never. */
#define LB_ADAPTER_IDLE_MS 1000

/* CLOCK_MONOTONIC in milliseconds: the time base of lb_process_pkt, timers and expiry. */
uint64_t lb_adapter_now_ms(void);

/* Send the IPv4 packet ip[0..len) on a raw IPPROTO_RAW socket to its own destination address,
 * never blocking. 0 or -errno (-EINVAL for less than an IPv4 header). */
int lb_adapter_send_raw(int raw_fd, const uint8_t *ip, uint32_t len);

/* The MTU the kernel refused a raw-socket packet for, from raw_fd's error queue (IP_RECVERR:
 * ip_local_error's SO_EE_ORIGIN_LOCAL EMSGSIZE with the device MTU); 0 when none is there. The
 * queue is drained. */
uint32_t lb_adapter_refused_mtu(int raw_fd);

/* SO_SNDBUFFORCE to `bytes`, falling back to SO_SNDBUF (capped by wmem_max) without the privilege. */
void lb_adapter_sndbuf(int fd, int bytes);

/* Start fn(arg) on a thread pinned to cpu (>= 0) that takes no signals (they are the Python main
 * thread's), named `name` (at most 15 bytes, e.g. "lbd-xsk0"; NULL: the process's name). 0 or
 * -errno (EINVAL also when the CPU is not one this process may run on). */
int lb_adapter_thread_start(pthread_t *thread, int cpu, const char *name, void *(*fn)(void *), void *arg);

/* A packet thread's waiting (see the header comment). Zeroed, efd -1, then lb_adapter_wait_open. */
struct lb_adapter_wait {
    int efd;                               /* eventfd (-1: not open): the stop path and the wake-ups write it */
    struct lb_wake *timers;                /* &lb->wake when this thread is the timers' (registered), else NULL */
    struct lb_wake *fp;                    /* the fast path's (xsk_fp.c) when this thread runs its tick */
    uint64_t last_expire_ms;               /* the last expiry run */
    uint8_t est;                           /* a timers' thread: it steps the rate estimators (est.c) */
    uint64_t est_check_ms;                 /* when lb_adapter_est_tick looks again (under lb->lock) */
};

/* Open w's eventfd; with timers, register it as lb's timers' thread (lb->wake: the first one to ask
 * gets it; another runs its timers but sleeps at most LB_ADAPTER_POLL_UNREGISTERED_MS). 0 or -errno. */
int lb_adapter_wait_open(struct lb_adapter_wait *w, lb_t *lb, int timers);
/* A struct lb_wake's hook (arg: the struct lb_adapter_wait): wakes that thread (lb_adapter_wait_kick). */
void lb_adapter_wake(void *arg);
/* Remove the registration and close the eventfd (after the thread was joined; again: nothing). */
void lb_adapter_wait_close(struct lb_adapter_wait *w, lb_t *lb);
/* Wake the thread now (its stop was asked for). */
void lb_adapter_wait_kick(struct lb_adapter_wait *w);
/* poll() fd (for `events`) and w's eventfd for timeout_ms (-1: no limit); drains the eventfd and
 * marks the thread awake. Returns fd's revents (0 on timeout, a wake-up or an error). */
short lb_adapter_poll(struct lb_adapter_wait *w, int fd, short events, int timeout_ms);
/* The same with a second descriptor fd2 (for POLLIN; -1: none), its revents in *rev2 (0 on timeout). */
short lb_adapter_poll2(struct lb_adapter_wait *w, int fd, short events, int fd2, short *rev2, int timeout_ms);

/* A NAT-reply reader served by an NFQUEUE queue's thread (lb_natrx_opts.host): one thread for both
 * directions of a NAT connection. nfq.c's thread polls lb_natrx_fd (-1: nothing to read: the pair is
 * gone) beside its queue and hands its revents to lb_natrx_ready; lb_nfq_host attaches a reader
 * (NULL: detaches it) and returns once the thread took the change: after a detach the thread never
 * touches the reader again. -ESRCH when the queue's thread is not running (attach only). */
struct lb_natrx;
int lb_natrx_fd(const struct lb_natrx *x);
void lb_natrx_ready(struct lb_natrx *x, short revents);
int lb_nfq_host(lb_nfq_t *q, struct lb_natrx *x);

/* Under lb->lock: when the timers' thread next has work: a timer, or the expiry and the schedulers'
 * ticks (never sooner than LB_ADAPTER_EXPIRE_EVERY_MS after the last run). UINT64_MAX: none. */
uint64_t lb_adapter_due_locked(lb_t *lb, const struct lb_adapter_wait *w);
/* Under lb->lock: ms to sleep from now until due, at most cap_ms; the thread publishes when it will
 * look again (w->timers, w->fp), so an earlier change wakes it. */
int lb_adapter_sleep_ms_locked(const struct lb_adapter_wait *w, uint64_t due, uint64_t now, int cap_ms);
/* An unregistered timers' thread sleeps at most this long: nothing wakes it when another thread arms a timer. */
#define LB_ADAPTER_POLL_UNREGISTERED_MS 100

/* Overload seen from the packet thread (issue 15 item 5): receive batches taken full (as many
 * messages as one read may take, or as the kernel's queue holds when that is fewer) this many times
 * in a row mean the thread drained a whole default queue (LB_NFQ_MAXLEN_DEFAULT packets at 64 a
 * read) without ever catching up: the kernel is probably dropping at the full queue. The thread then
 * writes an eventfd the control plane watches (lb/overload.py), which measures the drops at once
 * instead of at its next 1-second poll. At most one signal per run of full batches, and at most one
 * per LB_ADAPTER_OVERLOAD_SIGNAL_MS, so a thread overloaded for a long time, or in bursts, costs
 * the control plane a few wake-ups, not one per batch. */
#define LB_ADAPTER_OVERLOAD_RUN 16
#define LB_ADAPTER_OVERLOAD_SIGNAL_MS 100
struct lb_adapter_overload {
    int efd;                               /* eventfd (-1: not open), EFD_NONBLOCK; the control plane reads it */
    uint32_t full;                         /* a batch this big is full */
    uint32_t run;                          /* full batches in a row */
    uint8_t sent;                          /* this run was signalled */
    uint64_t last_ms;                      /* the last signal */
    uint64_t signals;                      /* signals written */
};
/* Open o's eventfd and start counting afresh; `full` the size of a full batch (at least 1). 0 or -errno. */
int lb_adapter_overload_open(struct lb_adapter_overload *o, uint32_t full);
/* The packet thread took a batch of n messages (n > 0): count it, signal when the run is long enough. */
void lb_adapter_overload_note(struct lb_adapter_overload *o, uint32_t n);
/* Close the eventfd (again: nothing). */
void lb_adapter_overload_close(struct lb_adapter_overload *o);

/* The expiry and the schedulers' ticks, when due (lb_expire), at most every LB_ADAPTER_EXPIRE_EVERY_MS. */
void lb_adapter_expire_tick(lb_t *lb, struct lb_adapter_wait *w);

/* A timers' thread's step of the rate estimators (est.c), when its 2-second grid says so and some
 * service has traffic or rates not yet 0 (lb_adapter_due_locked wakes it for that, and only then).
 * Run after the XDP fast path's tick: the step reads the counters it credited. */
void lb_adapter_est_tick(lb_t *lb, struct lb_adapter_wait *w);

#endif
