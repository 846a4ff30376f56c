"""lvs-userspace benchmark suite: pps, http, cost, ab and the report (see bench/README.md)."""
