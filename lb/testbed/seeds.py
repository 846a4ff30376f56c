"""Configurations from the field reports (../shared/seeds) that tests replay.

Shared by the unit tests (doctor checks read it as text) and the netns tests (loaded with
iptables-restore on the director and the real servers).
"""

from __future__ import annotations

# Field report 001's RH-Firewall ruleset, as /etc/sysconfig/iptables had it: stateful, REJECTs
# what is neither NEW to :80 nor ESTABLISHED/RELATED.
FIELD_REPORT_001_FILTER = """*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:RH-Firewall-1-INPUT - [0:0]
-A FORWARD -j RH-Firewall-1-INPUT
-A INPUT -j RH-Firewall-1-INPUT
-A RH-Firewall-1-INPUT -i lo -j ACCEPT
-A RH-Firewall-1-INPUT -p icmp -m icmp --icmp-type any -j ACCEPT
-A RH-Firewall-1-INPUT -m state --state RELATED,ESTABLISHED -j ACCEPT
-A RH-Firewall-1-INPUT -p tcp -m state -m tcp --dport 80 --state NEW -j ACCEPT
-A RH-Firewall-1-INPUT -j REJECT --reject-with icmp-host-prohibited
COMMIT
"""
