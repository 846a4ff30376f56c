/*
 * httpd.c - a small epoll HTTP/1.1 server for bench/http: the real server.
 *
 * The test bed's Python server (lb/testbed/httpd.py) handles a few thousand
 * requests per second; measured through the director it would hide what the
 * director adds. This one answers every request with 200 and the body
 * "<name>\n", keeps connections alive unless the client asks to close
 * (or speaks HTTP/1.0), single-threaded, non-blocking, one epoll loop.
 *
 * Usage: httpd --name NAME [--port 80] [--max-seconds S]   (bounded: exits after S seconds, default 3600)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_EVENTS 256
#define BUF 4096
#define MAX_FD 65536

struct conn {
    char buf[BUF];
    size_t len;
};

static struct conn *conns[MAX_FD];
static volatile sig_atomic_t stop;

static void on_signal(int sig)
{
    (void)sig;
    stop = 1;
}

static void drop(int ep, int fd)
{
    epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL);
    close(fd);
    free(conns[fd]);
    conns[fd] = NULL;
}

int main(int argc, char **argv)
{
    const char *name = "rs";
    int port = 80;
    double max_s = 3600;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--name")) name = argv[i + 1];
        else if (!strcmp(argv[i], "--port")) port = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--max-seconds")) max_s = atof(argv[i + 1]);
        else {
            fprintf(stderr, "usage: httpd --name NAME [--port P] [--max-seconds S]\n");
            return 2;
        }
    }
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);
    signal(SIGPIPE, SIG_IGN);
    char resp_ka[512], resp_close[512];
    size_t body = strlen(name) + 1;
    int n_ka = snprintf(resp_ka, sizeof(resp_ka),
                        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %zu\r\nX-Server: %s\r\n\r\n%s\n",
                        body, name, name);
    int n_close = snprintf(resp_close, sizeof(resp_close),
                           "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %zu\r\nX-Server: %s\r\n"
                           "Connection: close\r\n\r\n%s\n",
                           body, name, name);

    int ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (bind(ls, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(ls, 4096) < 0) {
        perror("bind/listen");
        return 1;
    }
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = ls};
    epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev);
    struct epoll_event evs[MAX_EVENTS];
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    fprintf(stderr, "httpd %s listening on port %d\n", name, port);
    while (!stop) {
        clock_gettime(CLOCK_MONOTONIC, &t);
        if ((double)(t.tv_sec - t0.tv_sec) > max_s)
            break;
        int n = epoll_wait(ep, evs, MAX_EVENTS, 500);
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd == ls) {
                for (;;) {
                    int c = accept4(ls, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                    if (c < 0)
                        break;
                    if (c >= MAX_FD) {
                        close(c);
                        continue;
                    }
                    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
                    conns[c] = calloc(1, sizeof(struct conn));
                    struct epoll_event ce = {.events = EPOLLIN | EPOLLRDHUP, .data.fd = c};
                    epoll_ctl(ep, EPOLL_CTL_ADD, c, &ce);
                }
                continue;
            }
            struct conn *cn = conns[fd];
            if (!cn)
                continue;
            ssize_t r = read(fd, cn->buf + cn->len, BUF - 1 - cn->len);
            if (r <= 0) {
                if (r < 0 && (errno == EAGAIN || errno == EINTR))
                    continue;
                drop(ep, fd);
                continue;
            }
            cn->len += (size_t)r;
            cn->buf[cn->len] = 0;
            int close_after = 0;
            char *end;
            while ((end = strstr(cn->buf, "\r\n\r\n")) != NULL) {
                size_t reqlen = (size_t)(end - cn->buf) + 4;
                char save = cn->buf[reqlen];
                cn->buf[reqlen] = 0;
                close_after = strcasestr(cn->buf, "connection: close") != NULL ||
                              (strstr(cn->buf, "HTTP/1.0") && !strcasestr(cn->buf, "keep-alive"));
                cn->buf[reqlen] = save;
                const char *resp = close_after ? resp_close : resp_ka;
                int rl = close_after ? n_close : n_ka;
                if (write(fd, resp, (size_t)rl) != rl) {
                    close_after = 1;
                    break;
                }
                memmove(cn->buf, cn->buf + reqlen, cn->len - reqlen + 1);
                cn->len -= reqlen;
                if (close_after)
                    break;
            }
            if (close_after || cn->len >= BUF - 1)
                drop(ep, fd);
        }
    }
    return 0;
}
