"""The sync master's sending rule: kernel IPVS's sysctls net.ipv4.vs.sync_threshold,
sync_refresh_period, sync_retries and sync_persist_mode, as lbd options (--sync-threshold,
--sync-refresh-period, --sync-retries, --sync-persist-mode).

The C core applies the rule per packet (native/src/sync.c, lb_sync_needed: the kernel's
ip_vs_sync_conn_needed) and marks what it chooses; the master (manager.py) sends what was marked.
Defaults and validation are the kernel's (ip_vs_ctl.c): threshold 3 and period 50 (the 3rd packet of
a connection and every 50th after), both >= 0 and threshold < period unless period is 0; no refresh
period (0: the packet rule alone); retries 0..3; persist mode off.
"""

from __future__ import annotations

from dataclasses import dataclass

from lb import consts as C


class SyncRuleError(ValueError):
    """A value the kernel's sysctl would refuse (EINVAL), with the reason."""


@dataclass(frozen=True)
class SyncRule:
    threshold: int = C.LB_SYNC_THRESHOLD_DEFAULT
    period: int = C.LB_SYNC_PERIOD_DEFAULT
    refresh_period_s: int = C.LB_SYNC_REFRESH_PERIOD_MS_DEFAULT // 1000
    retries: int = C.LB_SYNC_RETRIES_DEFAULT
    persist_mode: int = 0

    def __post_init__(self) -> None:
        for name in ("threshold", "period", "refresh_period_s", "retries", "persist_mode"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise SyncRuleError(f"{name} must be an integer, not {value!r}")
        if self.threshold < 0 or self.period < 0:
            raise SyncRuleError(f"sync_threshold {self.threshold} {self.period}: both values must be >= 0")
        if self.period and self.threshold >= self.period:
            raise SyncRuleError(f"sync_threshold {self.threshold} {self.period}: the threshold must be less than "
                                "the period (or the period 0: sync once, on the threshold's packet)")
        max_s = C.LB_SYNC_REFRESH_PERIOD_MS_MAX // 1000
        if not 0 <= self.refresh_period_s <= max_s:
            raise SyncRuleError(f"sync_refresh_period {self.refresh_period_s}: must be 0..{max_s} seconds")
        if not 0 <= self.retries <= C.LB_SYNC_RETRIES_MAX:
            raise SyncRuleError(f"sync_retries {self.retries}: must be 0..{C.LB_SYNC_RETRIES_MAX}")
        if self.persist_mode not in (0, 1):
            raise SyncRuleError(f"sync_persist_mode {self.persist_mode}: must be 0 or 1")

    def describe(self) -> str:
        """The effective values, as the kernel's sysctls name them (for the log)."""
        return (f"sync_threshold = {self.threshold} {self.period}, sync_refresh_period = {self.refresh_period_s}, "
                f"sync_retries = {self.retries}, sync_persist_mode = {self.persist_mode}")

    def to_json(self) -> dict[str, int]:
        return {"sync_threshold": self.threshold, "sync_period": self.period,
                "sync_refresh_period": self.refresh_period_s, "sync_retries": self.retries,
                "sync_persist_mode": self.persist_mode}

    def to_c(self) -> object:
        """A struct lb_sync_conf for lb_sync_master_set / lb_sync_needed."""
        from lb._ffi import ffi

        conf = ffi.new("struct lb_sync_conf *")
        conf.threshold = self.threshold
        conf.period = self.period
        conf.refresh_period_ms = self.refresh_period_s * 1000
        conf.retries = self.retries
        conf.persist_mode = self.persist_mode
        return conf
