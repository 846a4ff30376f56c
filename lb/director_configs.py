"""The director's configuration files and restart snapshots (lb/director.py's Director uses it).

One job: turn a whole desired configuration - a TOML or ipvsadm-save file (`reload`, lbd --config)
or lbd's own state snapshot (restart) - into the minimal plan of commands and hand it to
Director.execute, which applies it all or nothing.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from lb.engine import EngineError
from lb.model import ConfigError, ServiceKey, SynproxyConf
from lb.reconcile import Command, State, StateError, Timeouts, plan, synproxy_to_json
from lb.requests import BatchError

log = logging.getLogger("lbd")


class DirectorConfigs:
    """Director's whole-configuration operations: apply_config, reload, snapshot_config, restore_config."""

    config_path: str | None
    config_generation: int
    state: State
    timeouts: Timeouts
    synproxy_default: SynproxyConf
    synproxy_confs: dict[ServiceKey, SynproxyConf]
    _snapshot_cache: tuple[int, dict[str, Any]] | None

    if TYPE_CHECKING:  # Director's own
        def execute(self, cmds: list[Command], batch: bool = False, log_level: int = logging.INFO) -> None: ...

        def running_state(self) -> State: ...

    # ------------------------------------------------------------ configuration files
    def apply_config(self, config: Any, what: str = "reload") -> dict[str, Any]:
        """Make the running state what `config` (lb.config.Config) describes, by the minimal plan."""
        steps = plan(self.running_state(), config.state())
        if not steps:
            log.info("%s of %s: no changes", what, config.path)
            return {"path": config.path, "plan": [], "applied": 0}
        log.info("%s of %s: %d change(s):", what, config.path, len(steps))
        for step in steps:
            log.info("  %s", step.describe())
        try:
            self.execute(steps, batch=True, log_level=logging.DEBUG)
        except BatchError as exc:
            step = steps[exc.index]
            where = f"{config.path}:{step.line}" if step.line else config.path
            message = f"{where}: {step.describe()}: {exc.reason}"
            log.error("%s of %s rejected, running state unchanged: %s", what, config.path, message)
            raise EngineError(exc.errno_name, message) from exc
        return {"path": config.path, "plan": [step.describe() for step in steps], "applied": len(steps)}

    def _reload(self, _args: dict[str, Any]) -> dict[str, Any]:
        from lb.config import load_config

        if self.config_path is None:
            raise EngineError("EINVAL", "lbd was started without --config: there is no configuration file to reload")
        try:
            config = load_config(self.config_path)
        except ConfigError as exc:
            log.error("reload of %s rejected, running state unchanged:\n%s", self.config_path, exc)
            raise EngineError("EINVAL", f"configuration rejected, running state unchanged:\n{exc}") from exc
        try:
            return self.apply_config(config, "reload")
        except EngineError as exc:
            raise EngineError(exc.errno_name, f"configuration rejected, running state unchanged: {exc}") from exc

    # ------------------------------------------------------------ restart snapshots
    SNAPSHOT_FORMAT = 1

    def snapshot_config(self) -> dict[str, Any]:
        """The whole configuration as JSON (lbd's state file): what `restore_config` re-applies.

        Services in lbd's order; each service's destinations in the order they must be added
        to come back in the same list order (IPVS adds at the head: the reverse of `list`).
        Built from the model, and only once per `config_generation` (the state saver asks every
        2 s; the same object comes back while nothing changed: callers must not modify it).
        """
        cached = self._snapshot_cache
        if cached is not None and cached[0] == self.config_generation:
            return cached[1]
        services = []
        for key, s in self.state.services.items():
            own = self.synproxy_confs.get(key)
            services.append({
                **s.spec.to_json(),
                "dests": [d.to_json() for d in reversed(s.dests.values())],
                "laddrs": [{"addr": la} for la in s.laddrs],
                "synproxy_conf": synproxy_to_json(own) if own is not None else None,
            })
        snapshot = {"format": self.SNAPSHOT_FORMAT, "timeouts": self.timeouts.to_json(),
                    "synproxy_default": synproxy_to_json(self.synproxy_default), "services": services}
        self._snapshot_cache = (self.config_generation, snapshot)
        return snapshot

    def restore_config(self, snapshot: dict[str, Any], what: str = "restore") -> int:
        """Make the running state the snapshot's (the minimal plan, all or nothing); returns the
        number of commands applied. EngineError if the snapshot is unusable or refused."""
        if not isinstance(snapshot, dict) or snapshot.get("format") != self.SNAPSHOT_FORMAT:
            raise EngineError("EINVAL", f"{what}: not a format-{self.SNAPSHOT_FORMAT} lbd state snapshot")
        try:
            desired = State.from_list_json(snapshot, snapshot.get("timeouts"))
        except (StateError, ConfigError, KeyError, TypeError, ValueError, AttributeError) as exc:  # a null where an object belongs
            raise EngineError("EINVAL", f"{what}: snapshot does not parse: {exc}") from exc
        steps = plan(self.running_state(), desired)
        if steps:
            self.execute(steps, batch=True, log_level=logging.DEBUG)
        n_svc, n_dest, n_laddr = desired.counts()
        log.info("%s: %d services, %d destinations, %d local addresses (%d commands)",
                 what, n_svc, n_dest, n_laddr, len(steps))
        return len(steps)
