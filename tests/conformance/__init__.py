"""The kernel-IPVS conformance harness (tests/kernel/README.md): scenario model, the two
systems, client and real-server traffic, the in-guest runner, and the comparison."""
