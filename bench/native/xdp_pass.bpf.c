/* XDP program of bench/guest_wire.py: pass every frame. virtio_net (Debian 6.1) takes XDP frames
 * redirected to it (ndo_xdp_xmit: lbd --xdp-fastpath's bpf_redirect to the back interface) only
 * while a program is attached to it in native mode ("XDP resources allocated"); this is that
 * program, and it changes nothing for what the interface receives. */
#include <linux/bpf.h>

__attribute__((section("xdp"), used)) int xdp_pass(struct xdp_md *ctx)
{
	(void)ctx;
	return XDP_PASS;
}

char _license[] __attribute__((section("license"), used)) = "GPL";
