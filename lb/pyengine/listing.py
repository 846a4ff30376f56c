"""What PyEngine shows of its tables: services, destinations' flags, connections, counters
(native/src/svc.c lb_svc_list/lb_svc_get/lb_dest_list, native/src/conn.c's conn_info and
lb_conn_stats, native/src/core.c lb_counters and lb_count_xmit_failed).

One job: read-only views, built under the engine's lock; nothing here releases or changes an entry
(except count_xmit_failed, the adapter's correction of a counter).
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import TYPE_CHECKING

from lb import consts as C
from lb.engine import ConnState, EngineError, Reason
from lb.model import TEMPLATE_ASSURED, ConnInfo, DestInfo, LaddrInfo, ServiceInfo, ServiceKey, Stats
from lb.pyengine import xmit_fnat
from lb.pyengine.conn import Counters
from lb.pyengine.svc import Service
from lb.pyengine.synproxy_path import SynproxyPath

if TYPE_CHECKING:
    from lb.sync.rule import SyncRule

DEST_F_AVAILABLE = C.LB_DEST_F_AVAILABLE
DEST_F_OVERLOAD = C.LB_DEST_F_OVERLOAD
DEST_F_FWD_VALID = C.LB_DEST_F_FWD_VALID


def stats_of(counters: Counters) -> Stats:
    return Stats(
        conns=counters.conns,
        inpkts=counters.inpkts,
        outpkts=counters.outpkts,
        inbytes=counters.inbytes,
        outbytes=counters.outbytes,
    )


def service_info(service: Service) -> ServiceInfo:
    return ServiceInfo(
        spec=service.spec,
        dests=[
            DestInfo(
                spec=dest.spec,
                active=dest.active,
                inactive=dest.inactive,
                persist=dest.persist,
                stats=stats_of(dest.stats),
                syn_retrans=dest.syn_retrans,
                handshakes=dest.handshakes,
            )
            for dest in service.dests
        ],
        stats=stats_of(service.stats),
        laddrs=[LaddrInfo(socket.inet_ntoa(la.addr), la.conns) for la in xmit_fnat.laddr_list(service)],
    )


class Listing(SynproxyPath):
    """PyEngine's views of its tables (see the module docstring)."""

    def services(self, counters: bool = True) -> list[ServiceInfo]:  # counters: always (Engine.services)
        with self._lock:
            return [service_info(service) for service in self._services.values()]

    def rate_tick(self) -> None:
        """No estimators of its own: the director runs lb/estimator.py (Engine.rate_tick)."""
        return None

    def changed_services(self) -> list[ServiceKey]:
        """The services whose counters moved since the last call, each once (lb_svc_list_changed)."""
        with self._lock:
            out = []
            for service in self._services.values():
                now = stats_of(service.stats)
                if now != service.stats_seen:
                    service.stats_seen = now
                    out.append(service.spec.key)
            return out

    def service(self, key: ServiceKey) -> ServiceInfo:
        """One service (O(1)); EngineError ESRCH when there is none."""
        with self._lock:
            return service_info(self._service(key))

    def dest_flags(self, key: ServiceKey) -> dict[tuple[str, int], int]:
        """LB_DEST_F_* flags per destination (availability, overload, forwarding state valid)."""
        with self._lock:
            service = self._service(key)
            return {
                (socket.inet_ntoa(d.addr), d.port): DEST_F_AVAILABLE | (DEST_F_OVERLOAD if d.overloaded else 0)
                | (DEST_F_FWD_VALID if d.fwd is not None else 0)
                for d in service.dests
            }

    def connections(self, now_ms: int) -> list[ConnInfo]:
        """Live entries at now_ms, templates included (client port 0, state NONE or ASSURED), as
        ipvsadm -Lnc. Nothing is released here: that is expire's job."""
        with self._lock:
            result = []
            for conn in self._conns:
                if conn.expires_at_ms <= now_ms:
                    continue
                dest = conn.dest
                laddr, lport = (b"\0\0\0\0", 0) if conn.is_template else conn.xmit.listing_laddr(conn)
                result.append(
                    ConnInfo(
                        proto=conn.proto,
                        caddr=socket.inet_ntoa(conn.caddr),
                        cport=conn.cport,
                        vaddr=socket.inet_ntoa(conn.vaddr),
                        vport=conn.vport,
                        daddr=socket.inet_ntoa(dest.addr),
                        # a port-zero service: the real server's port is the client's; templates: 0
                        dport=dest.port if dest.port and (dest.owner.spec.key.port or
                                                          dest.owner.spec.persistent is None) else
                        (0 if conn.is_template else conn.vport),
                        state=TEMPLATE_ASSURED if conn.assured else ConnState(conn.state).name,
                        expires_ms=conn.expires_at_ms - now_ms,
                        laddr=socket.inet_ntoa(laddr),
                        lport=lport,
                    )
                )
            return result

    def dump_connections_raw(self, now_ms: int, reset_changes: bool = False) -> bytes | None:
        """None: the restart snapshot's records are the C core's struct lb_conn_info, which this
        engine does not produce (lbd --engine python saves and restores the configuration only)."""
        return None

    def dump_connections_chunks(self, now_ms: int, reset_changes: bool = False) -> Iterator[bytes] | None:
        """None, as dump_connections_raw."""
        return None

    def dump_changes_raw(self, now_ms: int) -> bytes | None:
        """None, as dump_connections_raw."""
        return None

    def dump_sync_changes_raw(self, now_ms: int) -> bytes | None:
        """None, as dump_connections_raw."""
        return None

    def sync_changes_reset(self) -> None:
        """Nothing to forget: this engine keeps no change marks."""

    def sync_master_set(self, rule: SyncRule | None) -> None:
        """Nothing to choose: this engine has no sync master (it cannot dump its table)."""

    def dump_connections_page(self, now_ms: int, cursor: int, cap: int) -> tuple[bytes, int] | None:
        """None, as dump_connections_raw."""
        return None

    def restore_connections_raw(self, blob: bytes, now_ms: int) -> dict[str, int]:
        raise EngineError("EOPNOTSUPP", "the Python engine cannot restore a C connection dump")

    def count_xmit_failed(self, reason: Reason) -> None:
        """lb_count_xmit_failed: the packet counted under `reason` could not be sent."""
        with self._lock:
            if self._reason_counts[reason]:
                self._reason_counts[reason] -= 1
            self._reason_counts[Reason.XMIT_FAILED] += 1

    def counters(self) -> dict[str, int]:
        """Packets per reason since the engine started, keyed by reason name in lower case."""
        with self._lock:
            return {reason.name.lower(): self._reason_counts[reason] for reason in Reason}

    def conn_count(self) -> int:
        with self._lock:
            return len(self._conns)

    def conn_max(self) -> int:
        """Connection table size: entries beyond it are refused (reason table_full) unless early drop
        makes room."""
        return self._conns.max_entries

    def conn_stats(self) -> dict[str, int]:
        """The table's figures, as C's lb_conn_stats: entries, max, buckets, droppable, early_drops."""
        with self._lock:
            table = self._conns
            return {"entries": len(table), "max": table.max_entries, "buckets": self._hash_buckets,
                    "droppable": table.droppable_count(), "early_drops": table.early_drops}

    def table_size(self) -> int:
        return self._hash_buckets
