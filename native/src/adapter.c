/*
 * adapter.c - the pieces the NFQUEUE (nfq.c) and AF_XDP (xsk.c) packet sources share: one clock,
 * one way to send on the raw answer socket, to size send buffers, to start the adapter thread,
 * to wait for timers and to sweep expired connections. See lb_adapter.h.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include "lb_adapter.h"

uint64_t lb_adapter_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

int lb_adapter_send_raw(int raw_fd, const uint8_t *ip, uint32_t len)
{
    if (len < 20)
        return -EINVAL;
    struct sockaddr_in dst;
    memset(&dst, 0, sizeof(dst));
    dst.sin_family = AF_INET;
    memcpy(&dst.sin_addr, ip + 16, 4);
    return sendto(raw_fd, ip, len, MSG_DONTWAIT, (struct sockaddr *)&dst, sizeof(dst)) < 0 ? -errno : 0;
}

void lb_adapter_sndbuf(int fd, int bytes)
{
    if (setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &bytes, sizeof(bytes)) < 0)
        setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &bytes, sizeof(bytes));
}

int lb_adapter_thread_start(pthread_t *thread, int cpu, const char *name, void *(*fn)(void *), void *arg)
{
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    if (cpu >= 0) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(cpu, &set);
        pthread_attr_setaffinity_np(&attr, sizeof(set), &set);
    }
    /* The thread must not take signals meant for the Python main thread. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    int pe = pthread_create(thread, &attr, fn, arg);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    pthread_attr_destroy(&attr);
    if (pe == 0 && name)
        pthread_setname_np(*thread, name); /* only a label (top -H, /proc/<pid>/task/<tid>/comm): failure is harmless */
    return -pe;
}

int lb_adapter_timer_poll_ms(lb_t *lb, int poll_ms)
{
    pthread_mutex_lock(&lb->lock);
    uint64_t due = lb_timer_due(lb);
    pthread_mutex_unlock(&lb->lock);
    if (due == UINT64_MAX)
        return poll_ms;
    uint64_t t = lb_adapter_now_ms();
    if (due <= t)
        return 0;
    return due - t < (uint64_t)poll_ms ? (int)(due - t) : poll_ms;
}

void lb_adapter_expire_tick(lb_t *lb, uint64_t *last_expire_ms)
{
    uint64_t t = lb_adapter_now_ms();
    if (t - *last_expire_ms < LB_ADAPTER_EXPIRE_EVERY_MS)
        return;
    *last_expire_ms = t;
    uint32_t hwm = lb->hwm; /* read without the lock: only a step size */
    lb_expire(lb, t, hwm / LB_ADAPTER_EXPIRE_STEPS + 1);
}
