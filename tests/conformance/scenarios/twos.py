"""twos, which Debian's kernel does not build (CONFIG_IP_VS_TWOS is not set): the guest's kernel
refuses `-s twos`; lbd implements it (ip_vs_twos.c of the same 6.1.192 source), so it is checked on
its own here, and the difference is reported, not failed (Scenario.kernel_lacks)."""

from __future__ import annotations

from conformance.model import Hold, Listing, Release, Scenario, Udp
from conformance.scenarios.rr import rules

SCENARIOS = (
    Scenario(
        name="twos-not-in-debian-kernel",
        why="Debian builds its kernel without ip_vs_twos, so `ipvsadm -s twos` fails there; lbd has "
            "it (as the kernel source has it), which an operator moving rules from a kernel with "
            "twos needs, and which is no harm where the kernel lacks it: lbd serves, the kernel "
            "refuses. twos draws at random, so lbd's choices are checked within bounds: 24 held "
            "connections over weights 1/2/1/0 by the kernel model, in 50000 runs, never left "
            "rs1 or rs3 without one or gave rs2 fewer than 5",
        rules=rules("twos", weights=(1, 2, 1, 0)) + rules("twos", "-u", weights=(1, 2, 1, 0)),
        steps=(Hold(24, lbd_counts={"rs1": (1, 24), "rs2": (5, 24), "rs3": (1, 24), "rs4": (0, 0)}),
               Listing("-Ln"),
               Release(),
               Udp(8, lbd_counts={"rs4": (0, 0)}),
               Listing("-Ln")),
        kernel_lacks="ip_vs_twos (CONFIG_IP_VS_TWOS is not set in Debian's 6.1 kernel)",
    ),
)
