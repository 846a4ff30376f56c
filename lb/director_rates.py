"""The director's counters and rates (lb/director.py's Director uses it).

One job: the rate estimators' ticks (lb/estimator.py), the stalled-handshake watch and its history
for lbadm doctor (lb/stallhistory.py), the log lines for refused work, and ipvsadm -Z.

Two engines, two places for the rates. The Python engine's are estimated here, from the counters the
engine lists (lb/estimator.py). The C engine keeps its own (native/src/est.c, the same arithmetic,
stepped by its adapter thread: issue 19, the director's Python tick was most of an emulated guest's
per-packet cost) and reports them with the counters (ServiceInfo.rates, DestInfo.rates); here it
only gets the stalled-handshake watch and the refusal log, and a tick is one call into C while
nothing they look at moved (Engine.rate_tick).
"""

from __future__ import annotations

import logging
import time
from typing import cast

from lb.engine import Engine, EngineError
from lb.estimator import ESTIMATOR_TICK_S, Estimator, HandshakeSample, StallEvent, StallWatch
from lb.fwdstate import DestKey
from lb.model import ServiceInfo, ServiceKey, Stats
from lb.stallhistory import StallHistory
from lb.totals import TotalStats

log = logging.getLogger("lbd")

# Keys of the rate estimators.
StatsKey = tuple[object, ...]  # ("svc", ServiceKey) | ("dest", ServiceKey, addr, port)


def svc_stats_key(key: ServiceKey) -> StatsKey:
    return ("svc", key)


def dest_stats_key(key: ServiceKey, addr: str, port: int) -> StatsKey:
    return ("dest", key, addr, port)


class DirectorRates:
    """Director's counters and rates (see the module docstring)."""

    engine: Engine
    config_generation: int
    estimator: Estimator[StatsKey]
    stalls: StallWatch[DestKey]
    stall_history: StallHistory
    totals: TotalStats
    _last_refusals: dict[str, int]
    _estimated_at: tuple[int, int] | None
    _moved_at: dict[ServiceKey, float]
    _watch_mark: int | None
    _watch_moved_at: float

    # ------------------------------------------------------------ counters and rates
    def _stats_samples(self, services: list[ServiceInfo]) -> dict[StatsKey, Stats]:
        samples: dict[StatsKey, Stats] = {}
        for s in services:
            samples[svc_stats_key(s.spec.key)] = s.stats
            for d in s.dests:
                samples[dest_stats_key(s.spec.key, d.spec.addr, d.spec.port)] = d.stats
        return samples

    def estimate(self, now: float | None = None) -> None:
        """One estimator tick (lbd runs it every ESTIMATOR_TICK_S): rates, and stalled handshakes:
        the engine's own (rate_tick: the C engine's, then _watch), or lb/estimator.py's (_estimate_here)."""
        now = time.monotonic() if now is None else now
        mark = self.engine.rate_tick()
        if mark is None:
            self._estimate_here(now)
        else:
            self._watch(now, mark)

    def _watch(self, now: float, mark: int) -> None:
        """A tick for an engine with its own rate estimators (the C engine: rate_tick stepped them, or
        its adapter thread does): the stalled-handshake watch and the refusal log only.

        O(1), the one call of rate_tick, while its mark (every change of a destination's handshake
        counters, of a refusal counter, a zeroing) stood still for longer than the stall window and
        no stall episode goes on: a destination whose handshake counters did not move since a sample
        older than the window is found not stalled again (StallWatch.update), and no refusal grew.
        Else as _estimate_here without the rates: O(services whose counters moved lately)."""
        if mark != self._watch_mark:
            self._watch_mark = mark
            self._watch_moved_at = now
        elif now - self._watch_moved_at > self.stalls.window_s + ESTIMATOR_TICK_S and not self.stalls.any_stalled():
            return
        services = [s for s in map(self._service_or_none, self._estimated_services(now)) if s is not None]
        self._watch_stalls(now, services)
        self._log_refusals(self.engine.counters())

    def _watch_stalls(self, now: float, services: list[ServiceInfo]) -> None:
        samples = {
            (s.spec.key, d.spec.addr, d.spec.port): HandshakeSample(d.syn_retrans, d.handshakes, d.stats.conns)
            for s in services for d in s.dests
        }
        events = self.stalls.update(now, samples)
        for event in events:
            self._log_stall(event)
        self._remember_stalls(events, services, now)

    def _estimate_here(self, now: float) -> None:
        """A tick of lb/estimator.py's rates and the stalled-handshake watch (the Python engine).

        O(1) while the director is idle (issue 15): when no packet was counted since the last tick
        (every packet is counted under exactly one reason), the configuration did not change, every
        rate has decayed to 0 and no stall episode is going on, a tick would change nothing (the
        same arithmetic on zero deltas), so the services are not listed at all. With traffic,
        O(services with traffic): only the services the engine reports as moved (and those still
        moving, _estimated_services) are read and stepped; at 10,000 services a full listing
        every 2 s took ~175 ms of the director's CPU, in one burst that overflowed the queue.
        """
        counters = self.engine.counters()
        mark = (sum(counters.values()), self.config_generation)
        if mark == self._estimated_at and self.estimator.settled() and not self.stalls.any_stalled():
            self._log_refusals(counters)
            return
        self._estimated_at = mark
        services = [s for s in map(self._service_or_none, self._estimated_services(now)) if s is not None]
        self.estimator.update(self._stats_samples(services))
        self._watch_stalls(now, services)
        self._log_refusals(counters)

    def _estimated_services(self, now: float) -> set[ServiceKey]:
        """The services a tick must step: O(services with traffic), not O(services) (issue 15).

        Those whose counters moved within the stall window (their destinations' handshake history
        still moves), those whose rates are still decaying, and those with a stall episode going
        on. Every other service stood still for longer than the window with all rates at 0: a
        step would give it the same values (Estimator.update, StallWatch.update). Counters of a
        destination move only with its service's (every packet and connection is counted in both)."""
        for key in self.engine.changed_services():
            self._moved_at[key] = now
        horizon = now - self.stalls.window_s - ESTIMATOR_TICK_S
        for key in [k for k, t in self._moved_at.items() if t < horizon]:
            del self._moved_at[key]
        keys = set(self._moved_at)
        keys.update(cast(ServiceKey, skey[1]) for skey in self.estimator.moving())
        keys.update(dkey[0] for dkey in self.stalls.stalled_keys())
        return keys

    def _service_or_none(self, key: ServiceKey) -> ServiceInfo | None:
        try:
            return self.engine.service(key)
        except EngineError:  # deleted since it moved
            self._moved_at.pop(key, None)
            return None

    def _remember_stalls(self, events: list[StallEvent[DestKey]], services: list[ServiceInfo], now: float) -> None:
        """Keep the episodes for `lbadm doctor` (lb.stallhistory): O(destinations) only while one goes on."""
        history = self.stall_history
        if not events and not history.ongoing():
            return
        history.forget_missing([(s.spec.key, d.spec.addr, d.spec.port) for s in services for d in s.dests], now)
        stalled = {s.spec.key: [self.stalls.stalled((s.spec.key, d.spec.addr, d.spec.port)) for d in s.dests]
                   for s in services}
        whole = {key for key, flags in stalled.items() if len(flags) > 1 and all(flags)}
        fwd = {(s.spec.key, d.spec.addr, d.spec.port): d.spec.fwd for s in services for d in s.dests}
        for event in events:
            history.record(event, fwd.get(event.key, "route"), event.key[0] in whole, now)
        history.still_stalled([k for k in fwd if self.stalls.stalled(k)], whole)

    # Drop reasons that mean "we refused new work": logged once per tick in which they grew.
    REFUSAL_LOGS = {
        "table_full": "connection table full ({entries} entries): {n} new connections refused in the last tick "
                      "(raise lbd --conn-max, or shorten timeouts with lbadm --set)",
        "no_laddr": "FULLNAT local addresses exhausted: {n} new connections refused in the last tick "
                    "(add local addresses with lbadm -P, or more real-server ports)",
        "xmit_failed": "{n} packets could not be sent in the last tick (socket errors: counted as xmit_failed, "
                       "not forwarded; the nfq counters xmit_l2_err / answer_err say which socket, "
                       "`lbadm doctor` what to check)",
    }

    EARLY_DROP_LOG = ("connection table full ({entries} entries): {n} half-open or finished entries dropped "
                      "to make room for new connections in the last tick (early drop; a SYN flood, or raise "
                      "lbd --conn-max)")

    def _log_refusals(self, counters: dict[str, int]) -> None:
        """Counted refusals become log lines too (issue 3: exhausted pools; issue 8: full table), and so
        do the entries early drop released to make room (issue 15), once per tick in which they grew."""
        counters = dict(counters)
        counters["early_drop"] = self.engine.conn_stats()["early_drops"]
        last = self._last_refusals
        entries = self.engine.conn_count()
        for reason, text in {**self.REFUSAL_LOGS, "early_drop": self.EARLY_DROP_LOG}.items():
            n = counters.get(reason, 0) - last.get(reason, counters.get(reason, 0))
            if n > 0:
                log.warning(text.format(n=n, entries=entries))
        self._last_refusals = {r: counters.get(r, 0) for r in (*self.REFUSAL_LOGS, "early_drop")}

    @staticmethod
    def _log_stall(event: StallEvent[DestKey]) -> None:
        """Once per episode: a WARNING with issue 7's diagnosis when it starts, an INFO when it ends."""
        key, addr, port = event.key
        if event.started:
            from lb.doctor.checks_sampled import STALL_CAUSES

            log.warning("destination %s:%d of %s: %d handshakes stalled in %g s; frames leave the director "
                        "but no client ACK returns. Likely causes: %s (client SYN retransmissions +%d, "
                        "completed handshakes +%d; `lbadm doctor` has the details)",
                        addr, port, key, event.stalled, event.window_s, STALL_CAUSES,
                        event.syn_retrans, event.handshakes)
        else:
            log.info("destination %s:%d of %s: handshakes no longer stalled (over the last %g s: "
                     "client SYN retransmissions +%d, completed handshakes +%d)",
                     addr, port, key, event.window_s, event.syn_retrans, event.handshakes)

    def _zero(self, key: ServiceKey | None) -> None:
        """ipvsadm -Z [service]: counters and rates of the service(s) and their destinations restart at 0:
        the engine zeroes its counters (the C engine its estimators too), lb/estimator.py's estimators
        restart from 0 (ip_vs_zero_estimator; one it has none for starts from 0 anyway). The totals
        restart at 0 with everything, and keep what one service had counted when it alone is zeroed."""
        if key is None:
            self.totals.zero()
            self.engine.zero()
        else:
            self.totals.retire(self.engine.service(key).stats)
            self.engine.zero_service(key)
        for skey in self.estimator.keys():
            if key is None or skey[1] == key:
                self.estimator.zero(skey, Stats())

    def _shown(self, skey: StatsKey, raw: Stats, rates: dict[str, int] | None = None) -> dict[str, int]:
        """Counters since the object was created or last zeroed, plus rates (the engine's own when it
        keeps them, else lb/estimator.py's): a `stats` object of `list`."""
        return {**raw.to_json(), **(rates if rates is not None else self.estimator.read(skey).to_json())}
