/* XDP program of bench/routed_cost.py's sink: drop every frame as early as the receiving veth
 * allows (in the NAPI poll of the CPU that transmitted to it), counted by the veth's per-queue
 * xdp_drops. The sink then costs the sending director almost nothing and needs no IPI. */
#include <linux/bpf.h>

__attribute__((section("xdp"), used)) int xdp_drop(struct xdp_md *ctx)
{
	(void)ctx;
	return XDP_DROP;
}

char _license[] __attribute__((section("license"), used)) = "GPL";
