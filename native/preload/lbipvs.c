/* lbd's preload library: unmodified ipvsadm and keepalived drive lbd (docs/ipvsadm.md).
 *
 * Loaded with LD_PRELOAD (lbd-exec sets it), it answers exactly these calls from lbd's control
 * socket ($LBD_SOCKET) and passes every other call to libc untouched (dlsym RTLD_NEXT):
 *   - getsockopt/setsockopt(IPPROTO_IP, IP_VS_SO_*): the tool's bytes go to lbd (`ipvs_sockopt`),
 *     which answers as the kernel's do_ip_vs_{get,set}_ctl would (lb/ipvsabi); this library only
 *     moves bytes, never writes more into the tool's buffer than its optlen;
 *   - read-only opens of /proc/net/ip_vs, ip_vs_conn, ip_vs_stats: a memfd with lbd's text;
 *   - genl_ctrl_resolve("IPVS") fails, so that the tools use the sockopt path even on a host whose
 *     kernel has ip_vs (they would otherwise configure the kernel's IPVS, not lbd);
 *   - execv/execve of "modprobe ip_vs" (the tools' retry when IPVS is missing) fails: their IPVS
 *     is lbd, the kernel's module must not be loaded for them.
 * keepalived gives up on IPVS for good when its first call fails, so a missing lbd socket is
 * waited for ($LBD_IPVS_WAIT_S seconds, default 5) once per process before calls fail with
 * ENOPROTOOPT, what the kernel says without ip_vs. */
#define _GNU_SOURCE
#include "lbipvs_wire.h"

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/ip_vs.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_SOCKET "/run/lbd/lbd.sock"
#define DEFAULT_WAIT_S 5
#define MAX_WAIT_S 600
#define RETRY_STEP_MS 100
#define IO_TIMEOUT_S 60
/* A connection table dump of a busy director is large; a line beyond this is refused. */
#define MAX_REPLY_BYTES (1024u * 1024u * 1024u)
/* Built with -fvisibility=hidden: only the interposed calls are exported into the tool. */
#define INTERPOSE __attribute__((visibility("default")))

/* libnl's NLE_OBJ_NOTFOUND: what genl_ctrl_resolve returns for a family the kernel lacks. */
#define NLE_OBJ_NOTFOUND 12

static pthread_mutex_t ctl_lock = PTHREAD_MUTEX_INITIALIZER;
static int ctl_fd = -1;
static pid_t ctl_pid;      /* the process that opened ctl_fd: a forked child opens its own */
static int waited_out;     /* the bounded wait for lbd's socket ran out once: later calls try once */
static int told_unreachable;

/* A fork while another thread is inside an exchange must not leave the child a held lock:
 * fork waits for the exchange, and both sides release the lock after it. */
static void fork_prepare(void)
{
	pthread_mutex_lock(&ctl_lock);
}

static void fork_release(void)
{
	pthread_mutex_unlock(&ctl_lock);
}

__attribute__((constructor)) static void lbipvs_init(void)
{
	pthread_atfork(fork_prepare, fork_release, fork_release);
}

static void say(const char *text, size_t n)
{
	ssize_t ignored = write(STDERR_FILENO, text, n);
	(void)ignored;
}

static void sayf(const char *fmt, ...)
{
	char line[512];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	if (n > 0)
		say(line, (size_t)n < sizeof(line) ? (size_t)n : sizeof(line) - 1);
}

static void *next_symbol(const char *name)
{
	return dlsym(RTLD_NEXT, name);
}

static const char *socket_path(void)
{
	const char *path = getenv("LBD_SOCKET");
	return path && *path ? path : DEFAULT_SOCKET;
}

static long wait_budget_ms(void)
{
	const char *text = getenv("LBD_IPVS_WAIT_S");
	long s = DEFAULT_WAIT_S;
	if (text && *text) {
		char *end;
		s = strtol(text, &end, 10);
		if (*end || s < 0)
			s = DEFAULT_WAIT_S;
		if (s > MAX_WAIT_S)
			s = MAX_WAIT_S;
	}
	return s * 1000;
}

static int connect_once(const char *path)
{
	struct sockaddr_un sun;
	memset(&sun, 0, sizeof(sun));
	sun.sun_family = AF_UNIX;
	if (strlen(path) >= sizeof(sun.sun_path)) {
		errno = ENAMETOOLONG;
		return -1;
	}
	memcpy(sun.sun_path, path, strlen(path));
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -1;
	if (connect(fd, (struct sockaddr *)&sun, sizeof(sun)) < 0) {
		int saved = errno;
		close(fd);
		errno = saved;
		return -1;
	}
	struct timeval tv = {.tv_sec = IO_TIMEOUT_S};
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	return fd;
}

/* Under ctl_lock: a connection to lbd, waiting (bounded, once per process) for its socket. */
static int ctl_connection(void)
{
	if (ctl_fd >= 0 && ctl_pid == getpid())
		return ctl_fd;
	if (ctl_fd >= 0)
		close(ctl_fd); /* the parent's connection: this child's copy only */
	ctl_fd = -1;
	const char *path = socket_path();
	long left_ms = waited_out ? 0 : wait_budget_ms();
	for (;;) {
		int fd = connect_once(path);
		if (fd >= 0) {
			ctl_fd = fd;
			ctl_pid = getpid();
			waited_out = 0;
			return fd;
		}
		int reason = errno;
		if (left_ms <= 0 || (reason != ENOENT && reason != ECONNREFUSED && reason != EAGAIN)) {
			waited_out = 1;
			if (!told_unreachable) {
				told_unreachable = 1;
				sayf("lbd: cannot reach lbd at %s: %s (is lbd running? LBD_SOCKET names its socket)\n",
				     path, strerror(reason));
			}
			errno = reason;
			return -1;
		}
		struct timespec step = {.tv_sec = 0, .tv_nsec = RETRY_STEP_MS * 1000000L};
		nanosleep(&step, NULL);
		left_ms -= RETRY_STEP_MS;
	}
}

static int send_all(int fd, const char *buf, size_t n)
{
	while (n) {
		ssize_t w = send(fd, buf, n, MSG_NOSIGNAL);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return -1;
		buf += w;
		n -= (size_t)w;
	}
	return 0;
}

/* One answer line, malloc'ed (the caller frees), its length without '\n' in *n. */
static char *recv_line(int fd, size_t *n)
{
	size_t cap = 4096, len = 0;
	char *buf = malloc(cap);
	if (!buf)
		return NULL;
	for (;;) {
		if (len == cap) {
			if (cap >= MAX_REPLY_BYTES)
				break;
			char *bigger = realloc(buf, cap * 2);
			if (!bigger)
				break;
			buf = bigger;
			cap *= 2;
		}
		ssize_t r = recv(fd, buf + len, cap - len, 0);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			break;
		char *nl = memchr(buf + len, '\n', (size_t)r);
		len += (size_t)r;
		if (nl) {
			*n = (size_t)(nl - buf);
			return buf;
		}
	}
	free(buf);
	return NULL;
}

/* Sends one request and parses the answer into *reply (pointing into *raw, which the caller
 * frees). -1 with errno ENOPROTOOPT when lbd cannot be reached or answers nonsense. */
static int exchange(const char *req, size_t req_len, char **raw, struct lbipvs_reply *reply)
{
	*raw = NULL;
	pthread_mutex_lock(&ctl_lock);
	int rc = -1;
	for (int attempt = 0; attempt < 2; attempt++) {
		int fd = ctl_connection();
		if (fd < 0)
			break;
		if (send_all(fd, req, req_len) < 0) {
			close(ctl_fd); /* lbd restarted since: one new connection, the request was not sent */
			ctl_fd = -1;
			continue;
		}
		size_t n = 0;
		char *line = recv_line(fd, &n);
		if (!line || lbipvs_parse_reply(line, n, reply) < 0) {
			free(line);
			close(ctl_fd);
			ctl_fd = -1;
			sayf("lbd: no valid answer from lbd at %s\n", socket_path());
			break;
		}
		*raw = line;
		rc = 0;
		break;
	}
	pthread_mutex_unlock(&ctl_lock);
	if (rc < 0)
		errno = ENOPROTOOPT;
	return rc;
}

static void show_note(const struct lbipvs_reply *r)
{
	if (r->note && r->note_len) {
		say("lbd: ", 5);
		say(r->note, r->note_len);
		say("\n", 1);
	}
}

/* ------------------------------------------------------------------ sockopts */

static int is_ipvs_get(int level, int optname)
{
	return level == IPPROTO_IP && optname >= IP_VS_BASE_CTL && optname <= IP_VS_SO_GET_MAX;
}

static int is_ipvs_set(int level, int optname)
{
	return level == IPPROTO_IP && optname >= IP_VS_BASE_CTL && optname <= IP_VS_SO_SET_MAX;
}

/* One sockopt asked of lbd: the request ("get" or "set", the option, the tool's length len and the
 * first n bytes of arg), lbd's answer in *r (its text in *raw, for the caller to free) and the note
 * shown. 0, or -1 with errno set when no answer came (the request did not fit: EINVAL). */
static int ask(const char *dir, int optname, socklen_t len, const void *arg, size_t n, char **raw,
	       struct lbipvs_reply *r)
{
	char req[LBIPVS_REQUEST_MAX];
	ssize_t req_len = lbipvs_sockopt_request(req, sizeof(req), dir, optname, len, arg, n);
	if (req_len < 0) {
		errno = EINVAL;
		return -1;
	}
	if (exchange(req, (size_t)req_len, raw, r) < 0)
		return -1;
	show_note(r);
	return 0;
}

INTERPOSE int getsockopt(int fd, int level, int optname, void *optval, socklen_t *optlen)
{
	static int (*real)(int, int, int, void *, socklen_t *);
	if (!is_ipvs_get(level, optname)) {
		if (!real)
			real = (int (*)(int, int, int, void *, socklen_t *))next_symbol("getsockopt");
		if (!real) {
			errno = ENOSYS;
			return -1;
		}
		return real(fd, level, optname, optval, optlen);
	}
	if (!optlen || (*optlen && !optval)) {
		errno = EFAULT;
		return -1;
	}
	socklen_t cap = *optlen;
	size_t n = cap < LBIPVS_MAX_ARG ? cap : LBIPVS_MAX_ARG;
	char *raw;
	struct lbipvs_reply r;
	if (ask("get", optname, cap, optval, n, &raw, &r) < 0)
		return -1;
	int rc = -1;
	if (!r.ok) {
		errno = r.err ? r.err : EINVAL;
	} else if (r.err) {
		errno = r.err;
	} else if (r.data_len / 2 > cap || (r.has_len && r.len > (long long)cap)) {
		errno = EIO; /* never more than the tool's buffer holds */
	} else if (lbipvs_hex_decode(optval, cap, r.data ? r.data : "", r.data_len) < 0) {
		errno = EIO;
	} else {
		if (r.has_len)
			*optlen = (socklen_t)r.len;
		rc = 0;
	}
	free(raw);
	return rc;
}

INTERPOSE int setsockopt(int fd, int level, int optname, const void *optval, socklen_t optlen)
{
	static int (*real)(int, int, int, const void *, socklen_t);
	if (!is_ipvs_set(level, optname)) {
		if (!real)
			real = (int (*)(int, int, int, const void *, socklen_t))next_symbol("setsockopt");
		if (!real) {
			errno = ENOSYS;
			return -1;
		}
		return real(fd, level, optname, optval, optlen);
	}
	if (optlen > LBIPVS_MAX_ARG) {
		errno = EINVAL; /* longer than any set_arglen: the kernel's length check */
		return -1;
	}
	if (optlen && !optval) {
		errno = EFAULT;
		return -1;
	}
	char *raw;
	struct lbipvs_reply r;
	if (ask("set", optname, optlen, optval, optlen, &raw, &r) < 0)
		return -1;
	int rc = 0;
	if (!r.ok || r.err) {
		errno = r.err ? r.err : EINVAL;
		rc = -1;
	}
	free(raw);
	return rc;
}

/* libnl-genl: the tools resolve the "IPVS" family first; failing it sends them to the sockopts. */
struct nl_sock;
INTERPOSE int genl_ctrl_resolve(struct nl_sock *sk, const char *name)
{
	static int (*real)(struct nl_sock *, const char *);
	if (name && strcmp(name, IPVS_GENL_NAME) == 0)
		return -NLE_OBJ_NOTFOUND;
	if (!real)
		real = (int (*)(struct nl_sock *, const char *))next_symbol("genl_ctrl_resolve");
	return real ? real(sk, name) : -NLE_OBJ_NOTFOUND;
}

/* ------------------------------------------------------------------ modprobe ip_vs */

/* When their first IPVS call fails, keepalived and ipvsadm fork and execv "/sbin/modprobe ip_vs"
 * (keepalived: the path in /proc/sys/kernel/modprobe) and try once more. Under this library
 * their IPVS is lbd: loading the kernel's module would not help them, and on a host that has one
 * it would start kernel IPVS beside lbd. So that exec fails (the child exits non-zero, as when
 * modprobe finds no module) and says why; every other exec passes through. */
static int refuse_ipvs_modprobe(const char *path, char *const argv[])
{
	if (!lbipvs_is_ipvs_modprobe(path, argv))
		return 0;
	sayf("lbd: not loading the kernel's ip_vs module (%s): this program's IPVS is lbd, at %s\n", path,
	     socket_path());
	errno = EPERM;
	return 1;
}

INTERPOSE int execv(const char *path, char *const argv[])
{
	static int (*real)(const char *, char *const[]);
	if (refuse_ipvs_modprobe(path, argv))
		return -1;
	if (!real)
		real = (int (*)(const char *, char *const[]))next_symbol("execv");
	if (!real) {
		errno = ENOSYS;
		return -1;
	}
	return real(path, argv);
}

INTERPOSE int execve(const char *path, char *const argv[], char *const envp[])
{
	static int (*real)(const char *, char *const[], char *const[]);
	if (refuse_ipvs_modprobe(path, argv))
		return -1;
	if (!real)
		real = (int (*)(const char *, char *const[], char *const[]))next_symbol("execve");
	if (!real) {
		errno = ENOSYS;
		return -1;
	}
	return real(path, argv, envp);
}

/* ------------------------------------------------------------------ /proc/net/ip_vs* */

static const char *proc_name(const char *path)
{
	static const char *const names[] = {"ip_vs", "ip_vs_conn", "ip_vs_stats"};
	static const char *const dirs[] = {"/proc/net/", "/proc/self/net/"};
	if (!path)
		return NULL;
	for (size_t d = 0; d < sizeof(dirs) / sizeof(dirs[0]); d++) {
		size_t dl = strlen(dirs[d]);
		if (strncmp(path, dirs[d], dl) != 0)
			continue;
		for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
			if (strcmp(path + dl, names[i]) == 0)
				return names[i];
	}
	return NULL;
}

/* A memfd holding lbd's text of the file, at offset 0; -1 with errno ENOENT when lbd cannot
 * answer (what opening these files says on a kernel without ip_vs). */
static int proc_memfd(const char *name, int flags)
{
	char req[128];
	ssize_t req_len = lbipvs_proc_request(req, sizeof(req), name);
	char *raw;
	struct lbipvs_reply r;
	if (req_len < 0 || exchange(req, (size_t)req_len, &raw, &r) < 0) {
		errno = ENOENT;
		return -1;
	}
	int fd = -1;
	unsigned char *text = NULL;
	size_t cap = r.data_len / 2;
	if (r.ok == 1 && !r.err && (text = malloc(cap ? cap : 1)) != NULL &&
	    lbipvs_hex_decode(text, cap, r.data ? r.data : "", r.data_len) >= 0) {
		fd = memfd_create(name, (flags & O_CLOEXEC) ? MFD_CLOEXEC : 0);
		size_t done = 0;
		while (fd >= 0 && done < cap) {
			ssize_t w = write(fd, text + done, cap - done);
			if (w < 0 && errno == EINTR)
				continue;
			if (w <= 0) {
				close(fd);
				fd = -1;
				break;
			}
			done += (size_t)w;
		}
		if (fd >= 0 && lseek(fd, 0, SEEK_SET) != 0) {
			close(fd);
			fd = -1;
		}
	}
	free(text);
	free(raw);
	if (fd < 0)
		errno = ENOENT;
	return fd;
}

static int wants_proc(const char *path, int flags)
{
	return (flags & O_ACCMODE) == O_RDONLY && proc_name(path) != NULL;
}

/* openat: only absolute paths name the files (a relative one depends on dirfd). */
static int wants_absolute_proc(const char *path, int flags)
{
	return path && path[0] == '/' && wants_proc(path, flags);
}

static mode_t mode_arg(int flags, va_list ap)
{
	return (flags & O_CREAT) || (flags & O_TMPFILE) == O_TMPFILE ? (mode_t)va_arg(ap, int) : 0;
}

#define OPEN_WRAPPER(fn)                                                                         \
	INTERPOSE int fn(const char *path, int flags, ...)                                       \
	{                                                                                        \
		static int (*real)(const char *, int, ...);                                      \
		va_list ap;                                                                      \
		va_start(ap, flags);                                                             \
		mode_t mode = mode_arg(flags, ap);                                               \
		va_end(ap);                                                                      \
		if (wants_proc(path, flags))                                                     \
			return proc_memfd(proc_name(path), flags);                               \
		if (!real)                                                                       \
			real = (int (*)(const char *, int, ...))next_symbol(#fn);                \
		if (!real) {                                                                     \
			errno = ENOSYS;                                                          \
			return -1;                                                               \
		}                                                                                \
		return real(path, flags, mode);                                                  \
	}

#define OPENAT_WRAPPER(fn)                                                                       \
	INTERPOSE int fn(int dirfd, const char *path, int flags, ...)                            \
	{                                                                                        \
		static int (*real)(int, const char *, int, ...);                                 \
		va_list ap;                                                                      \
		va_start(ap, flags);                                                             \
		mode_t mode = mode_arg(flags, ap);                                               \
		va_end(ap);                                                                      \
		if (wants_absolute_proc(path, flags))                               \
			return proc_memfd(proc_name(path), flags);                               \
		if (!real)                                                                       \
			real = (int (*)(int, const char *, int, ...))next_symbol(#fn);           \
		if (!real) {                                                                     \
			errno = ENOSYS;                                                          \
			return -1;                                                               \
		}                                                                                \
		return real(dirfd, path, flags, mode);                                           \
	}

#define FOPEN_WRAPPER(fn)                                                                        \
	INTERPOSE FILE *fn(const char *path, const char *mode)                                   \
	{                                                                                        \
		static FILE *(*real)(const char *, const char *);                                \
		if (mode && mode[0] == 'r' && !strchr(mode, '+') && proc_name(path)) {           \
			int fd = proc_memfd(proc_name(path), strchr(mode, 'e') ? O_CLOEXEC : 0); \
			if (fd < 0)                                                              \
				return NULL;                                                     \
			FILE *f = fdopen(fd, "r");                                               \
			if (!f)                                                                  \
				close(fd);                                                       \
			return f;                                                                \
		}                                                                                \
		if (!real)                                                                       \
			real = (FILE * (*)(const char *, const char *)) next_symbol(#fn);        \
		if (!real) {                                                                     \
			errno = ENOSYS;                                                          \
			return NULL;                                                             \
		}                                                                                \
		return real(path, mode);                                                         \
	}

OPEN_WRAPPER(open)
OPEN_WRAPPER(open64)
OPENAT_WRAPPER(openat)
OPENAT_WRAPPER(openat64)
FOPEN_WRAPPER(fopen)
FOPEN_WRAPPER(fopen64)
