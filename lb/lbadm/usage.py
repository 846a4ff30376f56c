"""lbadm -h and -v. The help marks every option lb.unimplemented lists (data-driven: the table
decides, not this text)."""

from __future__ import annotations

import re

import lb
from lb import unimplemented
from lb.lbadm.errors import PROG
from lb.lbadm.values import DEFAULT_PERSISTENT_TIMEOUT_S, INT_MAX
from lb.vocab import DEFAULT_SCHEDULER, SCHEDULERS


def version_text() -> str:
    return f"{PROG} v{lb.__version__} (ipvsadm v1.31 command line and output, IPVS v1.2.1 semantics, served by lbd)\n"


_OPTION_LINE = re.compile(r"^  (--[a-z0-9-]+)")


def usage_text() -> str:
    return _mark_unimplemented(version_text() + _text())


def _mark_unimplemented(text: str) -> str:
    """Append "[<mark>]" to the help line of each option lbd does not implement."""
    marks = {f"--{m.option}": m.mark for m in unimplemented.NOT_IMPLEMENTED}
    lines = []
    for line in text.splitlines():
        match = _OPTION_LINE.match(line)
        if match and match.group(1) in marks:
            line = f"{line}  [{marks[match.group(1)]}]"
        lines.append(line)
    return "\n".join(lines) + "\n"


def _text() -> str:
    p = PROG
    return f"""\
Usage:
  {p} -A|E virtual-service [-s scheduler] [-p [timeout]] [-M netmask] [--pe persistence_engine] [-b sched-flags]
        [-j enable|disable] [--toa] [--proxy-protocol v1|v2|disable]
  {p} -D virtual-service
  {p} -C
  {p} -R
  {p} -S [-n]
  {p} -a|e virtual-service -r server-address [options]
  {p} -d virtual-service -r server-address
  {p} -L|l [virtual-service] [options]
  {p} -Z [virtual-service]
  {p} -P|Q virtual-service -z local-address [-F ifname]
  {p} -G [virtual-service]
  {p} --set tcp tcpfin udp
  {p} --start-daemon {{master|backup}} [daemon-options]
  {p} --stop-daemon {{master|backup}}
  {p} --reload
  {p} doctor [--json] [--window SECONDS] [--queue-num N]
  {p} -h

Commands (long or short form; the command comes first):
  --add-service     -A        add a virtual service
  --edit-service    -E        change a virtual service (unset options return to defaults)
  --delete-service  -D        delete a virtual service and its real servers
  --clear           -C        delete every virtual service
  --restore         -R        read rules (ipvsadm -S / {p} -S output) from stdin, all or nothing
  --save            -S        print the rules in restorable form
  --add-server      -a        add a real server to a virtual service
  --edit-server     -e        change a real server (unset options return to defaults)
  --delete-server   -d        remove a real server
  --list            -L|-l     list the table
  --zero            -Z        zero the counters of one or all services
  --add-laddr       -P        add a FULLNAT local address to a virtual service (DPVS)
  --del-laddr       -Q        remove a FULLNAT local address (DPVS; its connections keep it)
  --get-laddr       -G        list the local addresses of one or all services (DPVS)
  --set tcp tcpfin udp        set connection timeouts in seconds (0 leaves one unchanged)
  --start-daemon              start the connection sync daemon
  --stop-daemon               stop the connection sync daemon
  --reload                    make lbd reload its configuration file (like SIGHUP)
  doctor                      diagnose the director: firewall rules meeting balanced traffic,
                              rp_filter, ip_forward, VIPs, lbd's NFQUEUE rules and queue drops,
                              tunnel MTU, stalled handshakes (read-only; docs/firewall.md)
  --help            -h        print this text

virtual-service:
  --tcp-service|-t  service-address   service-address is host[:port]
  --udp-service|-u  service-address   service-address is host[:port]
  --sctp-service    service-address   service-address is host[:port]
  --fwmark-service|-f fwmark          fwmark is an integer greater than zero

Options:
  --ipv6         -6                   the fwmark service is IPv6
  --scheduler    -s scheduler         {", ".join(SCHEDULERS)}; default {DEFAULT_SCHEDULER}
  --pe            engine              persistence engine (none by default)
  --persistent   -p [timeout]         persistent service, timeout in seconds (default {DEFAULT_PERSISTENT_TIMEOUT_S})
  --netmask      -M netmask           persistence granularity mask
  --real-server  -r server-address    server-address is host[:port]
  --gatewaying   -g                   direct routing (the default)
  --ipip         -i                   IPIP tunneling
  --masquerading -m                   NAT
  --fullnat      -b                   full NAT, with -a/-e (DPVS; with -A/-E, -b is --sched-flags as in ipvsadm)
  --tun-type      type                ipip, gue or gre; default ipip
  --tun-port      port                tunnel destination port
  --tun-nocsum                        tunnel without checksum
  --tun-csum                          tunnel with checksum
  --tun-remcsum                       tunnel with remote checksum
  --weight       -w weight            capacity of the real server, 0..{INT_MAX} (default 1)
  --u-threshold  -x uthreshold        upper connection threshold
  --l-threshold  -y lthreshold        lower connection threshold
  --connection   -c                   list connection entries
  --timeout                           list timeouts (tcp tcpfin udp)
  --daemon                            list sync daemons
  --stats                             list cumulative counters
  --rate                              list rates (per second)
  --exact                             print exact numbers instead of K/M/G/T
  --thresholds                        list thresholds
  --persistent-conn                   list persistent connections
  --tun-info                          list tunnel details
  --nosort                            keep lbd's order instead of sorting
  --sort                              no effect (kept for compatibility)
  --ops          -o                   one-packet scheduling (UDP): each datagram scheduled afresh
  --numeric      -n                   numeric addresses and ports
  --sched-flags  -b flags             scheduler flags with -A/-E, comma-separated: sh-fallback,
                                      sh-port (sh), mh-fallback, mh-port (mh), flag-1..flag-3
  --laddr        -z local-address     FULLNAT local address (IPv4), with -P/-Q (DPVS)
  --ifname       -F ifname            accepted for DPVS scripts, not needed by lbd
  --synproxy     -j enable|disable    SYN-proxy with -A/-E (DPVS): SYN cookies, then the real
                                      server's handshake; TCP with FULLNAT destinations only
  --toa                               with -A/-E: FULLNAT passes the client address to the real
                                      servers in TCP option 254 (lbd's; the TOA kernel module reads it)
  --proxy-protocol v1|v2|disable      with -A/-E: FULLNAT sends a PROXY protocol header (client and
                                      virtual address and port) before the client's data (haproxy
                                      accept-proxy, nginx proxy_protocol read it); not with --toa
                                      -E replaces the whole service: -p, -j, --toa, --proxy-protocol
                                      not given are off

Daemon Options:
  --syncid sid                        sync id (0..255)
  --sync-maxlen length                largest sync message
  --mcast-interface interface         multicast interface for sync
  --mcast-group address               IPv4/IPv6 multicast group
  --mcast-port port                   UDP port
  --mcast-ttl ttl                     multicast TTL
  --sync-ext-port port                lbd's extension for FULLNAT and SYN-proxy connections:
                                      UDP port (default the mcast-port + 1, 8849; 0: off)

{p} additions:
  --socket PATH                       lbd's control socket; else $LBD_SOCKET, else /run/lbd/lbd.sock
  --json                              listings as JSON, exactly as lbd reports them
  Names in addresses and ports come from /etc/hosts and /etc/services only, never DNS.
  [not implemented by lbd] marks what lbd does not do (yet): {p} refuses it (exit status 255)
  saying what lbd offers instead, as it refuses a scheduler lbd does not have.
"""
