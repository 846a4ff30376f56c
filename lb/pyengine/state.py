"""The tables of one director that PyEngine's parts share (struct lb in native/include/lb_internal.h).

PyEngine is assembled from one mixin a C file (lb/pyengine/entries.py: conn.c, svc.py: svc.c,
schedule.py: core.c's scheduling, synproxy_path.py: synproxy.c and proxyproto.c's glue, listing.py:
the listing and counter calls); this module declares the state they all read, which PyEngine.__init__
(lb/pyengine/engine.py) creates, and the per-state constants they share.
"""

from __future__ import annotations

import collections
import threading
from typing import TYPE_CHECKING

from lb.engine import Action, ConnState, Reason, Verdict
from lb.model import SynproxyConf
from lb.pyengine import synproxy as sp
from lb.pyengine.conn import ConnectionTable, Destination, DestKey
from lb.pyengine.l2q import HeldPackets

if TYPE_CHECKING:
    from lb.pyengine.nfq import NfqAdapter
    from lb.pyengine.svc import Service, SvcKey
    from lb.pyengine.xmit import BindContext

ESTABLISHED = int(ConnState.ESTABLISHED)
SYN_SENT = int(ConnState.SYN_SENT)
SYN_RECV = int(ConnState.SYN_RECV)
FIN_WAIT = int(ConnState.FIN_WAIT)
NONE = int(ConnState.NONE)
UDP = int(ConnState.UDP)  # the last index of the timeout list

TABLE_FULL = Action(Verdict.DROP, Reason.TABLE_FULL)
NO_CONN = Action(Verdict.ACCEPT, Reason.NO_CONN)


class EngineState:
    """What every part of PyEngine reads and changes; one lock guards all of it."""

    _seed0: int
    _hash_buckets: int
    _lport_min: int
    _lport_max: int
    _lock: threading.RLock
    _services: dict[SvcKey, Service]  # insertion order = listing order
    # The director's own addresses (native/src/local.c): the control plane's set, and the
    # services' virtual addresses, counted per service (fwmark services have none).
    _host_addrs: frozenset[bytes]
    _vips: collections.Counter[bytes]
    _trash: dict[DestKey, Destination]
    _conns: ConnectionTable
    _bind_ctx: BindContext
    _timeouts_ms: list[int]  # by ConnState value, UDP last
    _reason_counts: list[int]
    _cookies: sp.Cookies
    _sp_default: SynproxyConf
    _sp_stats: dict[str, int]
    _sp_timers: sp.TimerHeap
    _held: HeldPackets  # packets waiting for their destination's forwarding state
    _nfq: NfqAdapter | None
