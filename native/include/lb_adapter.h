/*
 * lb_adapter.h - what the packet sources (nfq.c, xsk.c) share around lb_process_pkt(): the clock,
 * the raw answer socket, socket buffers, the adapter thread, the timer-driven poll timeout and the
 * bounded expiry sweep. Internal: not part of the cffi contract (lb_api.h).
 */
#ifndef LB_ADAPTER_H
#define LB_ADAPTER_H

#include <pthread.h>
#include <stdint.h>

#include "lb_internal.h"

#define LB_ADAPTER_EXPIRE_EVERY_MS 100
#define LB_ADAPTER_EXPIRE_STEPS 10         /* the whole table is swept every 10 ticks (~1 s) */

/* CLOCK_MONOTONIC in milliseconds: the time base of lb_process_pkt, timers and expiry. */
uint64_t lb_adapter_now_ms(void);

/* Send the IPv4 packet ip[0..len) on a raw IPPROTO_RAW socket to its own destination address,
 * never blocking. 0 or -errno (-EINVAL for less than an IPv4 header). */
int lb_adapter_send_raw(int raw_fd, const uint8_t *ip, uint32_t len);

/* SO_SNDBUFFORCE to `bytes`, falling back to SO_SNDBUF (capped by wmem_max) without the privilege. */
void lb_adapter_sndbuf(int fd, int bytes);

/* Start fn(arg) on a thread pinned to cpu (>= 0) that takes no signals (they are the Python main
 * thread's), named `name` (at most 15 bytes, e.g. "lbd-xsk0"; NULL: the process's name). 0 or
 * -errno (EINVAL also when the CPU is not one this process may run on). */
int lb_adapter_thread_start(pthread_t *thread, int cpu, const char *name, void *(*fn)(void *), void *arg);

/* How long to poll: until the next timer of lb is due, at most poll_ms. */
int lb_adapter_timer_poll_ms(lb_t *lb, int poll_ms);

/* Every LB_ADAPTER_EXPIRE_EVERY_MS, reap expired connections in a bounded step. */
void lb_adapter_expire_tick(lb_t *lb, uint64_t *last_expire_ms);

#endif
