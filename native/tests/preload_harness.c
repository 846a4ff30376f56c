/* The preload library's parsing of what lbd sends and encoding of what the tool passes
 * (native/preload/lbipvs_wire.c), driven without I/O:
 *   - built with -DLB_FUZZ: a libFuzzer target (`make fuzz`);
 *   - otherwise: `preload-harness check` runs fixed cases, `preload-harness replay FILE...` feeds
 *     files through the fuzz target's body (`make test-sanitize`, under ASan/UBSan and valgrind).
 * Invariants abort: a decoded answer never exceeds its buffer, a parsed data span lies inside the
 * input, a request line always ends in '\n'. */
#include "../preload/lbipvs_wire.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK(cond)                                                                        \
	do {                                                                               \
		if (!(cond)) {                                                             \
			fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
			abort();                                                           \
		}                                                                          \
	} while (0)

static void inside(const char *buf, size_t len, const char *p, size_t n)
{
	if (!p) {
		CHECK(n == 0);
		return;
	}
	CHECK(p >= buf && p + n <= buf + len);
}

static void one_input(const uint8_t *data, size_t size)
{
	/* the answer, as lbd would send it: in its own allocation, so ASan sees every overread */
	char *copy = calloc(1, size ? size : 1);
	CHECK(copy);
	if (size)
		memcpy(copy, data, size);
	struct lbipvs_reply r;
	if (lbipvs_parse_reply(copy, size, &r) == 0) {
		CHECK(r.ok == 0 || r.ok == 1);
		inside(copy, size, r.data, r.data_len);
		inside(copy, size, r.note, r.note_len);
		/* the tool's buffer: small, and exactly the decoded size */
		size_t caps[] = {0, 12, 48, r.data_len / 2};
		for (size_t i = 0; i < sizeof(caps) / sizeof(caps[0]); i++) {
			unsigned char *out = calloc(1, caps[i] ? caps[i] : 1);
			CHECK(out);
			ssize_t n = lbipvs_hex_decode(out, caps[i], r.data ? r.data : "", r.data_len);
			CHECK(n < 0 || (size_t)n <= caps[i]);
			free(out);
		}
	}
	(void)lbipvs_errno_by_name(copy, size < 16 ? size : 16);
	free(copy);

	/* an exec's path and argv: the input split at NUL bytes, each piece its own allocation */
	enum { MAX_ARGS = 8 };
	char *argv[MAX_ARGS + 1] = {0};
	size_t nargs = 0, start = 0;
	for (size_t i = 0; i <= size && nargs < MAX_ARGS; i++) {
		if (i == size || data[i] == 0) {
			argv[nargs] = calloc(1, i - start + 1);
			CHECK(argv[nargs]);
			if (i > start)
				memcpy(argv[nargs], data + start, i - start);
			nargs++;
			start = i + 1;
		}
	}
	int verdict = lbipvs_is_ipvs_modprobe(argv[0], argv);
	CHECK(verdict == 0 || verdict == 1);
	for (size_t i = 0; i < nargs; i++)
		free(argv[i]);

	/* what the tool passes: the first 4 bytes pick cmd and optlen, the rest is the argument */
	if (size >= 4) {
		int cmd = 1152 + (data[0] & 0x1f);
		unsigned int optlen = (unsigned int)data[1] << 8 | data[2];
		char req[LBIPVS_REQUEST_MAX];
		size_t n = size - 4 > LBIPVS_MAX_ARG + 1 ? LBIPVS_MAX_ARG + 1 : size - 4;
		ssize_t len = lbipvs_sockopt_request(req, data[3] & 1 ? sizeof(req) : 64, data[3] & 2 ? "get" : "set",
						     cmd, optlen, data + 4, n);
		if (len >= 0) {
			CHECK((size_t)len < sizeof(req) && req[len - 1] == '\n' && req[len] == '\0');
		} else {
			CHECK(n > LBIPVS_MAX_ARG || !(data[3] & 1));
		}
	}
}

#ifdef LB_FUZZ
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	one_input(data, size);
	return 0;
}
#else
static void parses(const char *line, int ok, int err, const char *hex)
{
	struct lbipvs_reply r;
	CHECK(lbipvs_parse_reply(line, strlen(line), &r) == 0);
	CHECK(r.ok == ok && r.err == err);
	if (hex) {
		CHECK(r.data_len == strlen(hex) && memcmp(r.data, hex, r.data_len) == 0);
	}
}

static void refuses(const char *line)
{
	struct lbipvs_reply r;
	CHECK(lbipvs_parse_reply(line, strlen(line), &r) < 0);
}

static int check(void)
{
	parses("{\"ok\":true,\"result\":{\"errno\":0,\"data\":\"010201000000100000000000\"}}\n", 1, 0,
	       "010201000000100000000000");
	parses("{\"ok\":true,\"result\":{\"errno\":3,\"data\":\"\",\"note\":\"a \\\"b\\\"\",\"len\":7}}", 1, 3, "");
	parses("{\"ok\":false,\"errno\":\"EPERM\",\"error\":\"Permission denied (you must be root)\"}\n", 0, EPERM,
	       NULL);
	parses("{\"ok\":false,\"errno\":\"EWHAT\",\"x\":[1,2.5e3,{\"y\":null}]}", 0, EINVAL, NULL);
	refuses("");
	refuses("{}");
	refuses("{\"ok\":true");
	refuses("{\"ok\":true,\"result\":{\"errno\":-1}}");
	refuses("{\"ok\":true,\"result\":{\"errno\":1.5}}");
	refuses("{\"ok\":true} trailing");
	refuses("[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]");
	char deep[256];
	memset(deep, '[', sizeof(deep));
	memcpy(deep, "{\"ok\":true,\"x\":", 15);
	deep[sizeof(deep) - 1] = '\0';
	refuses(deep);
	unsigned char out[4];
	CHECK(lbipvs_hex_decode(out, sizeof(out), "00ff7Aa0", 8) == 4 && out[1] == 0xff && out[2] == 0x7a);
	CHECK(lbipvs_hex_decode(out, sizeof(out), "00ff7Aa0bb", 10) < 0);
	CHECK(lbipvs_hex_decode(out, sizeof(out), "0g", 2) < 0);
	CHECK(lbipvs_hex_decode(out, sizeof(out), "012", 3) < 0);
	char req[LBIPVS_REQUEST_MAX];
	const unsigned char arg[] = {1, 2, 0xab};
	ssize_t n = lbipvs_sockopt_request(req, sizeof(req), "get", 1153, 12, arg, sizeof(arg));
	CHECK(n > 0 && strcmp(req, "{\"op\":\"ipvs_sockopt\",\"args\":{\"dir\":\"get\",\"cmd\":1153,\"len\":12,"
				   "\"data\":\"0102ab\"}}\n") == 0);
	CHECK(lbipvs_sockopt_request(req, 40, "get", 1153, 12, arg, sizeof(arg)) < 0);
	CHECK(lbipvs_proc_request(req, sizeof(req), "ip_vs_conn") > 0);
	char *keepalived_argv[] = {"/sbin/modprobe", "-s", "--", "ip_vs", NULL};
	char *ipvsadm_argv[] = {"/sbin/modprobe", "--", "ip_vs", NULL};
	char *retry_argv[] = {"modprobe", "ip_vs", "ip_vs_rr", NULL};
	char *set_argv[] = {"/sbin/modprobe", "-s", "--", "xt_set", NULL};
	char *mixed_argv[] = {"/sbin/modprobe", "-a", "ip_vs", "xt_set", NULL};
	char *remove_argv[] = {"/sbin/modprobe", "-r", "ip_vs", NULL};
	char *bare_argv[] = {"/sbin/modprobe", "-s", NULL};
	char *dashdash_argv[] = {"/sbin/modprobe", "--", "--", "ip_vs", NULL};
	CHECK(lbipvs_is_ipvs_modprobe("/sbin/modprobe", keepalived_argv) == 1);
	CHECK(lbipvs_is_ipvs_modprobe("/usr/sbin/modprobe", ipvsadm_argv) == 1);
	CHECK(lbipvs_is_ipvs_modprobe("modprobe", retry_argv) == 1);
	CHECK(lbipvs_is_ipvs_modprobe("/sbin/modprobe", set_argv) == 0);
	CHECK(lbipvs_is_ipvs_modprobe("/sbin/modprobe", mixed_argv) == 0);
	CHECK(lbipvs_is_ipvs_modprobe("/sbin/modprobe", remove_argv) == 0);
	CHECK(lbipvs_is_ipvs_modprobe("/sbin/modprobe", bare_argv) == 0);
	CHECK(lbipvs_is_ipvs_modprobe("/sbin/modprobe", dashdash_argv) == 0);
	CHECK(lbipvs_is_ipvs_modprobe("/bin/insmod", ipvsadm_argv) == 0);
	CHECK(lbipvs_is_ipvs_modprobe("/sbin/modprobe", NULL) == 0);
	CHECK(lbipvs_is_ipvs_modprobe(NULL, ipvsadm_argv) == 0);
	printf("preload harness: all checks passed\n");
	return 0;
}

static int replay(int argc, char **argv)
{
	for (int i = 0; i < argc; i++) {
		FILE *f = fopen(argv[i], "rb");
		if (!f) {
			perror(argv[i]);
			return 1;
		}
		static uint8_t buf[1 << 20];
		size_t n = fread(buf, 1, sizeof(buf), f);
		fclose(f);
		one_input(buf, n);
	}
	printf("preload harness: replayed %d inputs\n", argc);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc >= 2 && strcmp(argv[1], "check") == 0)
		return check();
	if (argc >= 2 && strcmp(argv[1], "replay") == 0)
		return replay(argc - 2, argv + 2);
	fprintf(stderr, "usage: %s check | replay FILE...\n", argv[0]);
	return 2;
}
#endif
