/* JSON answers from lbd, hex coding, request lines: see lbipvs_wire.h. Every read is checked
 * against the end of the buffer; nesting is bounded by LBIPVS_MAX_DEPTH. */
#include "lbipvs_wire.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

struct scan {
	const char *p;
	const char *end;
};

static void skip_ws(struct scan *s)
{
	while (s->p < s->end && (*s->p == ' ' || *s->p == '\t' || *s->p == '\n' || *s->p == '\r'))
		s->p++;
}

static int peek(struct scan *s)
{
	skip_ws(s);
	return s->p < s->end ? (unsigned char)*s->p : -1;
}

static int expect(struct scan *s, char c)
{
	if (peek(s) != (unsigned char)c)
		return -1;
	s->p++;
	return 0;
}

/* A string: its body (escapes kept) in [*body, *body + *n). */
static int scan_string(struct scan *s, const char **body, size_t *n)
{
	if (expect(s, '"') < 0)
		return -1;
	const char *start = s->p;
	while (s->p < s->end) {
		unsigned char c = (unsigned char)*s->p;
		if (c == '"') {
			*body = start;
			*n = (size_t)(s->p - start);
			s->p++;
			return 0;
		}
		if (c < 0x20)
			return -1;
		if (c == '\\') {
			if (s->end - s->p < 2)
				return -1;
			s->p++;
		}
		s->p++;
	}
	return -1;
}

/* An integer (lbd sends no fractions where numbers matter); a number with a fraction or exponent
 * is skipped and reported in *is_int = 0. Bounded: more than 18 digits is refused. */
static int scan_number(struct scan *s, long long *value, int *is_int)
{
	skip_ws(s);
	int neg = 0, digits = 0;
	long long v = 0;
	*is_int = 1;
	if (s->p < s->end && *s->p == '-') {
		neg = 1;
		s->p++;
	}
	while (s->p < s->end && *s->p >= '0' && *s->p <= '9') {
		if (++digits > 18)
			return -1;
		v = v * 10 + (*s->p - '0');
		s->p++;
	}
	if (!digits)
		return -1;
	while (s->p < s->end && (*s->p == '.' || *s->p == 'e' || *s->p == 'E' || *s->p == '+' || *s->p == '-' ||
				 (*s->p >= '0' && *s->p <= '9'))) {
		*is_int = 0;
		s->p++;
	}
	*value = neg ? -v : v;
	return 0;
}

static int scan_literal(struct scan *s, const char *word)
{
	size_t n = strlen(word);
	skip_ws(s);
	if ((size_t)(s->end - s->p) < n || memcmp(s->p, word, n) != 0)
		return -1;
	s->p += n;
	return 0;
}

static int skip_value(struct scan *s, int depth);

static int skip_container(struct scan *s, int depth, char open, char close)
{
	if (depth >= LBIPVS_MAX_DEPTH || expect(s, open) < 0)
		return -1;
	if (peek(s) == (unsigned char)close) {
		s->p++;
		return 0;
	}
	for (;;) {
		if (open == '{') {
			const char *k;
			size_t kn;
			if (scan_string(s, &k, &kn) < 0 || expect(s, ':') < 0)
				return -1;
		}
		if (skip_value(s, depth + 1) < 0)
			return -1;
		int c = peek(s);
		if (c == ',') {
			s->p++;
			continue;
		}
		if (c == (unsigned char)close) {
			s->p++;
			return 0;
		}
		return -1;
	}
}

static int skip_value(struct scan *s, int depth)
{
	long long v;
	int is_int;
	const char *b;
	size_t n;
	switch (peek(s)) {
	case '{':
		return skip_container(s, depth, '{', '}');
	case '[':
		return skip_container(s, depth, '[', ']');
	case '"':
		return scan_string(s, &b, &n);
	case 't':
		return scan_literal(s, "true");
	case 'f':
		return scan_literal(s, "false");
	case 'n':
		return scan_literal(s, "null");
	default:
		return scan_number(s, &v, &is_int);
	}
}

static int key_is(const char *k, size_t kn, const char *want)
{
	return strlen(want) == kn && memcmp(k, want, kn) == 0;
}

/* The "result" object: errno, len, data, note; anything else is skipped. */
static int scan_result(struct scan *s, struct lbipvs_reply *r)
{
	if (peek(s) != '{')
		return skip_value(s, 1);
	s->p++;
	if (peek(s) == '}') {
		s->p++;
		return 0;
	}
	for (;;) {
		const char *k;
		size_t kn;
		long long v;
		int is_int;
		if (scan_string(s, &k, &kn) < 0 || expect(s, ':') < 0)
			return -1;
		if (key_is(k, kn, "errno") && peek(s) != '"') {
			if (scan_number(s, &v, &is_int) < 0 || !is_int || v < 0 || v > 4095)
				return -1;
			r->err = (int)v;
		} else if (key_is(k, kn, "len")) {
			if (scan_number(s, &v, &is_int) < 0 || !is_int || v < 0)
				return -1;
			r->has_len = 1;
			r->len = v;
		} else if (key_is(k, kn, "data")) {
			if (scan_string(s, &r->data, &r->data_len) < 0)
				return -1;
		} else if (key_is(k, kn, "note")) {
			if (scan_string(s, &r->note, &r->note_len) < 0)
				return -1;
		} else if (skip_value(s, 2) < 0) {
			return -1;
		}
		int c = peek(s);
		if (c == ',') {
			s->p++;
			continue;
		}
		if (c == '}') {
			s->p++;
			return 0;
		}
		return -1;
	}
}

int lbipvs_parse_reply(const char *buf, size_t len, struct lbipvs_reply *r)
{
	struct scan s = {buf, buf + len};
	memset(r, 0, sizeof(*r));
	r->ok = -1;
	if (expect(&s, '{') < 0)
		return -1;
	if (peek(&s) == '}')
		return -1;
	for (;;) {
		const char *k;
		size_t kn;
		if (scan_string(&s, &k, &kn) < 0 || expect(&s, ':') < 0)
			return -1;
		if (key_is(k, kn, "ok")) {
			int c = peek(&s);
			if (c == 't' && scan_literal(&s, "true") == 0)
				r->ok = 1;
			else if (c == 'f' && scan_literal(&s, "false") == 0)
				r->ok = 0;
			else
				return -1;
		} else if (key_is(k, kn, "result")) {
			if (scan_result(&s, r) < 0)
				return -1;
		} else if (key_is(k, kn, "errno") && peek(&s) == '"') {
			const char *name;
			size_t nn;
			if (scan_string(&s, &name, &nn) < 0)
				return -1;
			r->err = lbipvs_errno_by_name(name, nn);
		} else if (skip_value(&s, 1) < 0) {
			return -1;
		}
		int c = peek(&s);
		if (c == ',') {
			s.p++;
			continue;
		}
		if (c == '}') {
			s.p++;
			break;
		}
		return -1;
	}
	return peek(&s) == -1 && r->ok >= 0 ? 0 : -1;
}

int lbipvs_errno_by_name(const char *name, size_t len)
{
	static const struct {
		const char *name;
		int value;
	} names[] = {
		{"EPERM", EPERM}, {"ENOENT", ENOENT}, {"ESRCH", ESRCH}, {"EIO", EIO}, {"ENOMEM", ENOMEM},
		{"EFAULT", EFAULT}, {"EBUSY", EBUSY}, {"EEXIST", EEXIST}, {"EINVAL", EINVAL}, {"ERANGE", ERANGE},
		{"ENOSYS", ENOSYS}, {"EOPNOTSUPP", EOPNOTSUPP}, {"EAFNOSUPPORT", EAFNOSUPPORT},
	};
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
		if (key_is(name, len, names[i].name))
			return names[i].value;
	return EINVAL;
}

static int hex_digit(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

ssize_t lbipvs_hex_decode(unsigned char *out, size_t cap, const char *hex, size_t hex_len)
{
	if (hex_len % 2 || hex_len / 2 > cap)
		return -1;
	for (size_t i = 0; i < hex_len / 2; i++) {
		int hi = hex_digit(hex[2 * i]), lo = hex_digit(hex[2 * i + 1]);
		if (hi < 0 || lo < 0)
			return -1;
		out[i] = (unsigned char)(hi << 4 | lo);
	}
	return (ssize_t)(hex_len / 2);
}

ssize_t lbipvs_sockopt_request(char *out, size_t cap, const char *dir, int cmd, unsigned int optlen,
			       const unsigned char *arg, size_t n)
{
	static const char digits[] = "0123456789abcdef";
	if (n > LBIPVS_MAX_ARG || (n && !arg))
		return -1;
	int head = snprintf(out, cap, "{\"op\":\"ipvs_sockopt\",\"args\":{\"dir\":\"%s\",\"cmd\":%d,\"len\":%u,\"data\":\"",
			    dir, cmd, optlen);
	if (head < 0 || (size_t)head >= cap)
		return -1;
	size_t pos = (size_t)head;
	if (cap - pos < 2 * n + sizeof("\"}}\n"))
		return -1;
	for (size_t i = 0; i < n; i++) {
		out[pos++] = digits[arg[i] >> 4];
		out[pos++] = digits[arg[i] & 0xf];
	}
	memcpy(out + pos, "\"}}\n", sizeof("\"}}\n"));
	return (ssize_t)(pos + sizeof("\"}}\n") - 1);
}

ssize_t lbipvs_proc_request(char *out, size_t cap, const char *name)
{
	int n = snprintf(out, cap, "{\"op\":\"ipvs_proc\",\"args\":{\"name\":\"%s\"}}\n", name);
	return n < 0 || (size_t)n >= cap ? -1 : n;
}

static int is_ipvs_module(const char *name)
{
	return strcmp(name, "ip_vs") == 0 || strncmp(name, "ip_vs_", 6) == 0;
}

int lbipvs_is_ipvs_modprobe(const char *path, char *const argv[])
{
	if (!path || !argv || !argv[0])
		return 0;
	const char *base = strrchr(path, '/');
	base = base ? base + 1 : path;
	if (strcmp(base, "modprobe") != 0)
		return 0;
	int modules = 0, options_end = 0;
	for (size_t i = 1; argv[i]; i++) {
		const char *arg = argv[i];
		if (!options_end && strcmp(arg, "--") == 0) {
			options_end = 1;
		} else if (!options_end && arg[0] == '-') {
			if (strcmp(arg, "-r") == 0 || strcmp(arg, "--remove") == 0)
				return 0;
		} else if (is_ipvs_module(arg)) {
			modules++;
		} else {
			return 0; /* another module (or a module's parameter): not ours to refuse */
		}
	}
	return modules > 0;
}
