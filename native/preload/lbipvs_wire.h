/* The preload library's side of its exchange with lbd (docs/ipvsadm.md): requests are one JSON
 * line each, answers one JSON line, and both carry the kernel ABI's bytes as hex. Everything here
 * is pure (no I/O, no globals) so that the fuzzer and the sanitizer tests drive it directly. */
#ifndef LBIPVS_WIRE_H
#define LBIPVS_WIRE_H

#include <stddef.h>
#include <sys/types.h>

/* The largest argument the library forwards: every IP_VS_SO_* argument is far smaller (68 bytes at
 * most); a get reads only its header, so what lies beyond is not sent. */
#define LBIPVS_MAX_ARG 4096u
/* The deepest JSON nesting an answer may have (it has 2; anything deeper is refused, not recursed). */
#define LBIPVS_MAX_DEPTH 16

struct lbipvs_reply {
	int ok;               /* "ok": 1 true, 0 false, -1 absent */
	int err;              /* result.errno (a number), or the top-level errno name of a refusal */
	int has_len;          /* result.len present */
	long long len;        /* result.len: the optlen the kernel reports back */
	const char *data;     /* result.data: hex digits, inside the parsed buffer */
	size_t data_len;
	const char *note;     /* result.note: JSON string body (escapes kept), inside the buffer */
	size_t note_len;
};

/* Parses one answer line (without or with its '\n'). 0 when it is a JSON object of the expected
 * shape, -1 otherwise; never reads outside [buf, buf + len). */
int lbipvs_parse_reply(const char *buf, size_t len, struct lbipvs_reply *out);

/* The errno of a symbolic name lbd sends ("EPERM"...); EINVAL for names it does not know. */
int lbipvs_errno_by_name(const char *name, size_t len);

/* Hex digits to bytes: the number of bytes, or -1 for an odd count, a non-hex digit or more than
 * `cap` bytes (nothing beyond out[cap - 1] is written). */
ssize_t lbipvs_hex_decode(unsigned char *out, size_t cap, const char *hex, size_t hex_len);

/* Writes the request line for one sockopt call (dir "get" or "set") into out[0..cap): its length
 * without the final NUL, or -1 if it does not fit or `n` exceeds LBIPVS_MAX_ARG. */
ssize_t lbipvs_sockopt_request(char *out, size_t cap, const char *dir, int cmd, unsigned int optlen,
			       const unsigned char *arg, size_t n);

/* The request line for one /proc/net file ("ip_vs", "ip_vs_conn", "ip_vs_stats"). */
ssize_t lbipvs_proc_request(char *out, size_t cap, const char *name);

/* 1 when `path` and `argv` (NULL-terminated) run modprobe to load the kernel's IPVS: the program
 * is named "modprobe" and every module it names is ip_vs or ip_vs_*; 0 for anything else (other
 * programs, other modules, removals with -r/--remove, a NULL argv). */
int lbipvs_is_ipvs_modprobe(const char *path, char *const argv[]);

/* Room for any sockopt request line. */
#define LBIPVS_REQUEST_MAX (2u * LBIPVS_MAX_ARG + 256u)

#endif
