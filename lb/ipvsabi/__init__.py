"""The kernel's IPVS sockopt ABI and /proc/net/ip_vs* files, served by lbd for unmodified tools.

Debian's ipvsadm and keepalived, on a kernel without ip_vs, fall back from generic netlink to
getsockopt/setsockopt(IPPROTO_IP, IP_VS_SO_*) with the structs of linux/ip_vs.h, and ipvsadm reads
/proc/net/ip_vs_conn for -c. lbd's preload library (native/preload/, started by `lbd-exec`) passes
those calls, bytes as the tool gave them, to lbd's control socket (`ipvs_sockopt`, `ipvs_proc`);
this package decodes them into control-protocol requests with the kernel's length checks and
errno values (net/netfilter/ipvs/ip_vs_ctl.c: do_ip_vs_set_ctl, do_ip_vs_get_ctl) and encodes the
answers in the kernel's layouts. The C side stays a bounds-checked byte pipe.
"""
