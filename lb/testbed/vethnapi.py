"""A veth that receives through its NAPI instance (for lbd --overload-napi on a testbed).

A veth has a NAPI instance only with GRO on, and hands a sender's packets past it while the
sender does TSO (veth_skb_is_eligible_for_gro). So: GRO on the receiving veth, TSO off on the
interface that sends to it, both put back after. Used by tests/netns/test_overload_napi.py and
bench scale's overload section (`--overload-guards napi`).
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator


@contextlib.contextmanager
def receiving_through_napi(netns: str, ifname: str, sender_netns: str, sender_ifname: str) -> Iterator[None]:
    def ethtool(ns: str, dev: str, feature: str, value: str, check: bool = True) -> None:
        subprocess.run(["ip", "netns", "exec", ns, "ethtool", "-K", dev, feature, value], check=check,
                       capture_output=True, text=True)

    ethtool(sender_netns, sender_ifname, "tso", "off")
    try:
        ethtool(netns, ifname, "gro", "on")
        yield
    finally:
        ethtool(netns, ifname, "gro", "off", check=False)
        ethtool(sender_netns, sender_ifname, "tso", "on", check=False)
