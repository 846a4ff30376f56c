"""The director's read-only control operations: `list`, `connections`, `counters` (lb/director.py's
Director uses it; docs/control-protocol.md).

One job: what lbadm -L, -Lc and --counters show, from the engine's listings, the rate estimators,
the stalled-handshake watch and the forwarding state.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from lb import reassembly
from lb.director_rates import DirectorRates, dest_stats_key, svc_stats_key
from lb.engine import EngineError
from lb.fwdstate import DestKey, FwdStatus
from lb.model import ServiceKey, SynproxyConf
from lb.reconcile import State, synproxy_to_json
from lb.requests import parse_key

# A destination's forwarding state before lbd first resolved it (or with no state at all).
_NOT_RESOLVED_YET = FwdStatus("unresolved", reason="not resolved yet")


class DirectorViews(DirectorRates):
    """Director's listing operations (see the module docstring)."""

    state: State
    synproxy_default: SynproxyConf
    synproxy_confs: dict[ServiceKey, SynproxyConf]

    if TYPE_CHECKING:  # Director's own
        @property
        def fwd_status(self) -> dict[DestKey, FwdStatus]: ...

    def _list(self, args: dict[str, Any]) -> dict[str, Any]:
        """`list`. With `"brief": true` (lbadm's text listings) only what ipvsadm's listings print:
        no destination diagnosis (`syn_retrans`, `handshakes`, `stalled`, `stalled_episodes`, `l2`),
        no `synproxy_conf`, and the counters (`stats`) only with `"stats": true`: at 10,000
        services a third of the JSON to build, encode and decode (issue 15)."""
        only = parse_key(args["service"]) if args.get("service") else None
        if only is not None and only not in self.state.services:
            raise EngineError("ESRCH", f"no such service {only}")
        brief = bool(args.get("brief"))
        with_stats = not brief or bool(args.get("stats"))
        services = self.engine.services(counters=with_stats) if only is None else [self.engine.service(only)]
        table_size = self.engine.table_size()
        fwd_status = self.fwd_status
        out = []
        for s in services:
            key = s.spec.key
            if only is not None and key != only:
                continue
            dests = []
            for d in s.dests:
                entry: dict[str, Any] = {**d.spec.to_json(), "active": d.active, "inactive": d.inactive, "persist": d.persist}
                if with_stats:
                    entry["stats"] = self._shown(dest_stats_key(key, d.spec.addr, d.spec.port), d.stats, d.rates)
                if not brief:
                    dkey = (key, d.spec.addr, d.spec.port)
                    st = fwd_status.get(dkey, _NOT_RESOLVED_YET)
                    entry.update(syn_retrans=d.syn_retrans, handshakes=d.handshakes, stalled=self.stalls.stalled(dkey),
                                 stalled_episodes=self.stalls.episodes(dkey),
                                 l2={"state": st.state, "ifname": st.ifname, "mac": st.mac, "reason": st.reason})
                dests.append(entry)
            svc: dict[str, Any] = s.spec.to_json()
            if with_stats:
                svc["stats"] = self._shown(svc_stats_key(key), s.stats, s.rates)
            svc["dests"] = dests
            svc["laddrs"] = [{"addr": la.addr, "conns": la.conns} for la in s.laddrs]
            if not brief:
                own = self.synproxy_confs.get(key)
                svc["synproxy_conf"] = synproxy_to_json(own) if own is not None else None
            out.append(svc)
        return {"version": "1.2.1", "conn_tab_size": table_size, "services": out,
                "synproxy_default": synproxy_to_json(self.synproxy_default)}

    def _connections(self, _args: dict[str, Any]) -> dict[str, Any]:
        now_ms = int(time.monotonic() * 1000)
        return {"connections": [c.to_json() for c in self.engine.connections(now_ms)]}

    def _counters(self, _args: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = {"reasons": self.engine.counters()}
        # One snapshot: the totals are the sum of exactly the per-queue figures shown.
        queues = self.engine.nfq_queue_stats()  # in queue order (lbd --queue-balance: one per thread)
        result["nfq_queues"] = queues
        result["nfq"] = {k: sum(q[k] for q in queues) for k in queues[0]} if queues else {}
        result["synproxy"] = self.engine.synproxy_stats()
        result["table"] = self.engine.conn_stats()  # entries, max, buckets, droppable, early_drops
        result["reassembly"] = reassembly.read()  # the kernel's, before the queue (lb/reassembly.py)
        natrx = self.engine.natrx_stats()  # lbd --nat-replies ingress: the replies' reader
        if natrx:
            result["natrx"] = natrx
        guard = getattr(self, "overload", None)  # lbd --overload-guard (lb/overload.py)
        if guard is not None:
            result["overload"] = guard.counters()
        napi = getattr(self, "napi", None)  # lbd --overload-napi (lb/napibelow.py)
        if napi is not None:
            result["napi"] = napi.counters()
        afxdp = getattr(getattr(self, "rules", None), "afxdp_counters", None)  # lbd --packet-source afxdp
        if afxdp is not None:
            result["afxdp"] = afxdp()
        return result
