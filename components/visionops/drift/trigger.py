"""The retraining trigger: ONE code path for the sidecar's own conditions and Alertmanager's webhook.

Sources (``"drift"``, ``"live_precision"``, ``"alert:<name>"``) *raise* and *clear* conditions. An episode
starts when the first condition is raised while none is active and ends when every condition has cleared.
The first raise of an episode starts one KFP run (unless inside the cooldown after the previous run, or in
dry-run mode); later raises in the same episode start nothing. ``alert`` (the ``visionops_retrain_alert``
gauge) is 1 while any condition is active, whatever the outcome, so Alertmanager sees it either way.

One run per episode for the whole fleet: every replica's sidecar (and a canary's or shadow's, which carry
other model versions and so other episodes) names its runs ``retrain-<model version>-...`` and starts one
through :func:`visionops.pipeline.client.create_run_once`, which joins a run of that episode created within
the cooldown by another replica instead of starting a second (outcome ``joined``).

The last run time and the active conditions live in a :class:`~visionops.drift.trigger_state.TriggerState`
(persisted in object storage when it has a URI, so a restart does not reset the cooldown; conditions expire and
alert names are bounded in number).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from visionops.drift.trigger_state import MAX_SOURCE_CHARS, TriggerState
from visionops.errors import ConfigError, MalformedRequest, VisionOpsError

log = logging.getLogger(__name__)

OUTCOMES = ("created", "joined", "dry_run", "cooldown", "suppressed", "failed", "not_configured", "overflow")


@dataclass(frozen=True)
class TriggerSettings:
    """Where and how a retraining run is started."""

    kfp_host: str = ""
    pipeline: str = "visionops-training"
    experiment: str = "visionops-retraining"
    #: run parameters on top of the warm start ones (e.g. {"data_uri": "s3://..."})
    params: dict[str, Any] = field(default_factory=dict)
    cooldown_s: float = 3600.0
    dry_run: bool = False
    token: str | None = None
    token_path: str | None = None
    namespace: str | None = None

    def __post_init__(self) -> None:
        if self.cooldown_s < 0:
            raise ConfigError(f"cooldown must be >= 0 seconds, got {self.cooldown_s}")


def warm_start_params(model_uri: str) -> dict[str, Any]:
    """Parameters of the training pipeline that fine-tune the current model (the champion)."""
    return {"champion_uri": model_uri, "warm_start": True}


class RetrainTrigger:
    """Starts at most one training run per episode; thread-safe."""

    def __init__(
        self,
        settings: TriggerSettings,
        *,
        model_uri: str,
        model_version: str = "",
        on_outcome: Callable[[str], None] | None = None,
        create_run: Callable[..., tuple[str, bool]] | None = None,
        clock: Callable[[], float] = time.time,
        state: TriggerState | None = None,
    ) -> None:
        self.settings = settings
        self.model_uri = model_uri
        self.model_version = model_version
        self._on_outcome = on_outcome or (lambda outcome: None)
        self._create_run = create_run
        self._clock = clock
        self._lock = threading.Lock()
        self.state = state if state is not None else TriggerState(clock=clock)
        self.events: deque[dict] = deque(maxlen=100)

    @property
    def alert(self) -> int:
        return 1 if self.state.active else 0

    @property
    def active_sources(self) -> list[str]:
        return sorted(self.state.active)

    def raise_(self, source: str, reason: str) -> dict:
        """A condition holds (drift for M windows, precision below target, an alert firing)."""
        with self._lock:
            now = self._clock()
            self.state.expire(now)
            if source in self.state.active:
                self.state.touch(source, now)
                return self._record(source, "suppressed", reason, why="this condition already fired")
            if not self.state.admits(source):
                why = f"{self.state.max_alerts} alert names already active (VISIONOPS_MAX_ALERTS)"
                return self._record(source, "overflow", reason, why=why)
            episode_running = bool(self.state.active)
            self.state.activate(source, reason, now)
            if episode_running:
                return self._record(source, "suppressed", reason, why="an episode is already active")
            last_run_at = self.state.fresh_last_run()
            if last_run_at is not None and now - last_run_at < self.settings.cooldown_s:
                left = self.settings.cooldown_s - (now - last_run_at)
                return self._record(source, "cooldown", reason, why=f"cooldown: {left:.0f}s left")
            return self._start_run(source, reason, now)

    def clear(self, source: str) -> None:
        """The condition no longer holds; the episode ends when none does."""
        with self._lock:
            if self.state.deactivate(source):
                self.events.append({"time": self._clock(), "source": source, "outcome": "cleared"})

    @property
    def episode(self) -> str:
        """The prefix of every run name of this model's retraining: the same on every replica."""
        return f"retrain-{self.model_version or 'model'}"

    def expire(self) -> list[str]:
        """Drop the conditions not raised again within the state's TTL (the sidecar's worker calls this)."""
        with self._lock:
            gone = self.state.expire(self._clock())
            for source in gone:
                self.events.append({"time": self._clock(), "source": source, "outcome": "expired"})
        return gone

    def _start_run(self, source: str, reason: str, now: float) -> dict:
        s = self.settings
        params = {**warm_start_params(self.model_uri), **s.params}
        run_name = f"{self.episode}-{source.replace(':', '-')}-{int(now)}"
        if s.dry_run:
            self.state.record_run(now)
            return self._record(source, "dry_run", reason, params=params, run_name=run_name)
        if not s.kfp_host:
            return self._record(source, "not_configured", reason, why="no KFP host configured", params=params)
        create = self._create_run
        if create is None:
            from visionops.pipeline.client import create_run_once as create
        try:
            run_id, created = create(
                s.kfp_host,
                pipeline_name=s.pipeline,
                params=params,
                experiment=s.experiment,
                run_name=run_name,
                episode=self.episode,
                window_s=s.cooldown_s,
                token=s.token,
                token_path=s.token_path,
                namespace=s.namespace,
            )
        except VisionOpsError as exc:
            # Not counted as this episode's run: the next raise (next window, next alert repeat) retries.
            self.state.deactivate(source)
            log.error("retraining trigger failed: %s", exc)
            return self._record(source, "failed", reason, why=str(exc))
        self.state.record_run(now)
        outcome = "created" if created else "joined"
        return self._record(source, outcome, reason, run_id=run_id, params=params, run_name=run_name)

    def _record(self, source: str, outcome: str, reason: str, **extra: Any) -> dict:
        event = {"time": self._clock(), "source": source, "reason": reason, "outcome": outcome, **extra}
        self.events.append(event)
        self._on_outcome(outcome)
        if outcome in ("created", "joined", "dry_run", "failed", "cooldown", "not_configured"):
            log.warning("retraining trigger (%s): %s -- %s", source, outcome, reason)
        return event

    def handle_alertmanager(self, payload: dict) -> list[dict]:
        """An Alertmanager webhook payload: firing alerts raise ``alert:<alertname>``, resolved ones clear it."""
        if not isinstance(payload, dict) or not isinstance(payload.get("alerts"), list):
            raise MalformedRequest(
                "not an Alertmanager webhook payload: expected a JSON object with an 'alerts' list"
            )
        results = []
        for alert in payload["alerts"]:
            if not isinstance(alert, dict):
                raise MalformedRequest("each alert in the Alertmanager payload must be a JSON object")
            labels = alert.get("labels") or {}
            name = str(labels.get("alertname", "unnamed"))
            if len(name) > MAX_SOURCE_CHARS - len("alert:"):
                raise MalformedRequest(f"alertname of {len(name)} characters; at most {MAX_SOURCE_CHARS - 6}")
            status = alert.get("status") or payload.get("status")
            if status == "firing":
                summary = (alert.get("annotations") or {}).get("summary") or name
                results.append(self.raise_(f"alert:{name}", str(summary)[:300]))
            elif status == "resolved":
                self.clear(f"alert:{name}")
                results.append({"source": f"alert:{name}", "outcome": "cleared"})
            else:
                raise MalformedRequest(
                    f"alert {name!r} has status {status!r}; expected 'firing' or 'resolved'"
                )
        return results
