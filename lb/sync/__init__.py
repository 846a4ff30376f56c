"""Connection synchronisation between directors: the kernel IPVS sync protocol (issue 18)."""
