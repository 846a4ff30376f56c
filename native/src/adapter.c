/*
 * adapter.c - the pieces the NFQUEUE (nfq.c), AF_XDP (xsk.c) and NAT-reply (natrx.c) packet sources
 * share: one clock, one way to send on the raw answer socket (and read the MTU of a refusal), to
 * size send buffers, to start the adapter thread, to wait (for packets, timers, expiry, a stop) and to release expired connections. See lb_adapter.h.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
/* after time.h: it uses struct timespec */
#include <linux/errqueue.h>
#include <unistd.h>

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

uint32_t lb_adapter_refused_mtu(int raw_fd)
{
    uint32_t mtu = 0;
    for (int tries = 0; tries < 8; tries++) {
        uint8_t data[64];
        union {
            uint8_t buf[CMSG_SPACE(sizeof(struct sock_extended_err) + sizeof(struct sockaddr_in))];
            struct cmsghdr align;
        } ctl;
        struct iovec v = {.iov_base = data, .iov_len = sizeof(data)};
        struct msghdr mh;
        memset(&mh, 0, sizeof(mh));
        mh.msg_iov = &v;
        mh.msg_iovlen = 1;
        mh.msg_control = ctl.buf;
        mh.msg_controllen = sizeof(ctl.buf);
        if (recvmsg(raw_fd, &mh, MSG_ERRQUEUE | MSG_DONTWAIT) < 0)
            break;
        for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm)) {
            if (cm->cmsg_level != IPPROTO_IP || cm->cmsg_type != IP_RECVERR)
                continue;
            struct sock_extended_err ee;
            memcpy(&ee, CMSG_DATA(cm), sizeof(ee));
            if (ee.ee_origin == SO_EE_ORIGIN_LOCAL && ee.ee_errno == EMSGSIZE)
                mtu = ee.ee_info;
        }
    }
    return mtu;
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

/* A struct lb_wake's hook: the core made something due before the thread meant to look (under lb->lock). */
void lb_adapter_wake(void *arg)
{
    lb_adapter_wait_kick(arg);
}

int lb_adapter_wait_open(struct lb_adapter_wait *w, lb_t *lb, int timers)
{
    w->timers = NULL;
    w->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (w->efd < 0)
        return -errno;
    if (timers && lb_wake_register(lb, lb_adapter_wake, w))
        w->timers = &lb->wake;
    if (timers) { /* it steps the rate estimators (est.c): lb_est_tick no longer does */
        pthread_mutex_lock(&lb->lock);
        lb->est_drivers++;
        pthread_mutex_unlock(&lb->lock);
        w->est = 1;
    }
    return 0;
}

void lb_adapter_wait_close(struct lb_adapter_wait *w, lb_t *lb)
{
    if (w->timers)
        lb_wake_register(lb, NULL, w);
    w->timers = NULL;
    if (w->est) {
        pthread_mutex_lock(&lb->lock);
        lb->est_drivers--;
        pthread_mutex_unlock(&lb->lock);
        w->est = 0;
    }
    if (w->efd >= 0)
        close(w->efd);
    w->efd = -1;
}

/* Add 1 to eventfd efd. EAGAIN only when its counter is about to overflow: its reader has a
 * wake-up pending anyway; any other error is reported with `what`. */
static void efd_signal(int efd, const char *what)
{
    uint64_t one = 1;
    if (write(efd, &one, sizeof(one)) < 0 && errno != EAGAIN)
        fprintf(stderr, "lbd: cannot %s: %s\n", what, strerror(errno));
}

void lb_adapter_wait_kick(struct lb_adapter_wait *w)
{
    efd_signal(w->efd, "wake a packet thread");
}

short lb_adapter_poll(struct lb_adapter_wait *w, int fd, short events, int timeout_ms)
{
    return lb_adapter_poll2(w, fd, events, -1, NULL, timeout_ms);
}

short lb_adapter_poll2(struct lb_adapter_wait *w, int fd, short events, int fd2, short *rev2, int timeout_ms)
{
    /* A negative fd is ignored by poll() (its revents 0): one call whether fd2 is there or not. */
    struct pollfd pfd[3] = {{.fd = fd, .events = events}, {.fd = w->efd, .events = POLLIN},
                            {.fd = fd2, .events = POLLIN}};
    int r = poll(pfd, 3, timeout_ms);
    if (rev2)
        *rev2 = r > 0 ? pfd[2].revents : 0;
    /* Awake: it reads the due times again before it sleeps; till then nothing needs to wake it. */
    if (w->timers)
        __atomic_store_n(&w->timers->at_ms, 0, __ATOMIC_RELAXED);
    if (w->fp)
        __atomic_store_n(&w->fp->at_ms, 0, __ATOMIC_RELAXED);
    if (r <= 0)
        return 0;
    if (pfd[1].revents & POLLIN) {
        uint64_t n;
        if (read(w->efd, &n, sizeof(n)) < 0 && errno != EAGAIN)
            fprintf(stderr, "lbd: cannot read a packet thread's eventfd: %s\n", strerror(errno));
    }
    return pfd[0].revents;
}

uint64_t lb_adapter_due_locked(lb_t *lb, const struct lb_adapter_wait *w)
{
    uint64_t due = lb_timer_due(lb);
    if (w->est) { /* the estimators' next step, no sooner than this thread means to look (est_check_ms) */
        uint64_t est = lb_est_due_locked(lb);
        est = est > w->est_check_ms ? est : w->est_check_ms;
        due = est < due ? est : due;
    }
    uint64_t exp = lb->exp_next_ms < lb->sched_next_ms ? lb->exp_next_ms : lb->sched_next_ms;
    if (exp != UINT64_MAX) {
        uint64_t floor = w->last_expire_ms + LB_ADAPTER_EXPIRE_EVERY_MS;
        exp = exp > floor ? exp : floor;
    }
    return exp < due ? exp : due;
}

int lb_adapter_sleep_ms_locked(const struct lb_adapter_wait *w, uint64_t due, uint64_t now, int cap_ms)
{
    int ms = due <= now ? 0 : due - now < (uint64_t)cap_ms ? (int)(due - now) : cap_ms;
    uint64_t at = ms ? now + (uint64_t)ms : 0; /* 0: it does not sleep, nothing needs to wake it */
    if (w->timers) {
        w->timers->exp_floor_ms = w->last_expire_ms + LB_ADAPTER_EXPIRE_EVERY_MS;
        __atomic_store_n(&w->timers->at_ms, at, __ATOMIC_RELAXED);
    }
    if (w->fp)
        __atomic_store_n(&w->fp->at_ms, at, __ATOMIC_RELAXED);
    return ms;
}

void lb_adapter_expire_tick(lb_t *lb, struct lb_adapter_wait *w)
{
    uint64_t t = lb_adapter_now_ms();
    if (t - w->last_expire_ms < LB_ADAPTER_EXPIRE_EVERY_MS)
        return;
    pthread_mutex_lock(&lb->lock);
    uint64_t next = lb->exp_next_ms < lb->sched_next_ms ? lb->exp_next_ms : lb->sched_next_ms;
    pthread_mutex_unlock(&lb->lock);
    if (next >= t + LB_ADAPTER_EXPIRE_EVERY_MS)
        return; /* nothing due in this window: no wake-up, no run (an empty table costs none) */
    /* Something is due now or within the window: the window starts now, and what comes due in it
     * leaves together at its end. Also when nothing is due yet: lb_timer_next (synproxy.c) runs
     * lb_conn_tick itself before this, and refreshes the lagging keys that came due (entries whose
     * packets pushed their expiry later, e.g. the SYN_RECV keys of connections established since):
     * without starting the window then, the thread slept until the next such key, 1 ms later,
     * again and again (~230 wake-ups in a quarter of a second for 1,024 connections' keys). */
    w->last_expire_ms = t;
    if (next <= t)
        lb_expire(lb, t, 0);
}

void lb_adapter_est_tick(lb_t *lb, struct lb_adapter_wait *w)
{
    if (!w->est)
        return;
    uint64_t t = lb_adapter_now_ms();
    if (t < w->est_check_ms)
        return; /* no lock taken on every round of a busy thread */
    pthread_mutex_lock(&lb->lock);
    lb_est_run_due_locked(lb, t);
    /* The next look: the next step, or (no service to step) a second on: a service whose traffic starts
     * meanwhile is stepped within ~1 s, its first step having no phase to keep. */
    uint64_t next = lb_est_due_locked(lb);
    w->est_check_ms = next != UINT64_MAX ? next : t + LB_ADAPTER_IDLE_MS;
    pthread_mutex_unlock(&lb->lock);
}

int lb_adapter_overload_open(struct lb_adapter_overload *o, uint32_t full)
{
    o->full = full ? full : 1;
    o->run = 0;
    o->sent = 0;
    o->last_ms = 0;
    o->signals = 0;
    o->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    return o->efd < 0 ? -errno : 0;
}

void lb_adapter_overload_note(struct lb_adapter_overload *o, uint32_t n)
{
    if (n < o->full) {
        o->run = 0;
        o->sent = 0;
        return;
    }
    if (o->sent || ++o->run < LB_ADAPTER_OVERLOAD_RUN)
        return;
    uint64_t now = lb_adapter_now_ms();
    if (o->signals && now - o->last_ms < LB_ADAPTER_OVERLOAD_SIGNAL_MS)
        return; /* the run goes on: looked at again at its next full batch */
    o->sent = 1;
    o->last_ms = now;
    __atomic_store_n(&o->signals, o->signals + 1, __ATOMIC_RELAXED); /* lb_nfq_get_stats reads it from another thread */
    if (o->efd >= 0)
        efd_signal(o->efd, "signal overload to lbd's guard");
}

void lb_adapter_overload_close(struct lb_adapter_overload *o)
{
    if (o->efd >= 0)
        close(o->efd);
    o->efd = -1;
}
