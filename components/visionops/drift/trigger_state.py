"""The retraining trigger's memory: when the last run started and which conditions are active.

Kept in a small JSON document in object storage (``VISIONOPS_TRIGGER_STATE_URI``), read when the sidecar starts
and rewritten (atomically: one PUT, or a temp file renamed locally) after every change, so a restart neither
resets the cooldown nor forgets an episode that already started its run. The time of the last run is re-read
before a run is started, so replicas sharing the document also share the cooldown.

Conditions expire: one not raised again within ``ttl_s`` (Alertmanager repeats a firing alert every
``repeatInterval``; drift is re-raised every window) is dropped, so an alert whose "resolved" never arrives
cannot pin the trigger forever. At most ``max_alerts`` alert names are held at once; further names are refused
(counted as the ``overflow`` outcome) until some clear or expire.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any

from visionops.errors import ConfigError

log = logging.getLogger(__name__)

FORMAT = "visionops-trigger-state/1"
#: Longest reason kept per condition (the document stays small whatever a payload says).
MAX_REASON_CHARS = 300
#: Longest condition name (``alert:<alertname>``) accepted.
MAX_SOURCE_CHARS = 160


class TriggerState:
    """Last run time and active conditions ``{source: {"reason", "since", "seen"}}``; thread-safe."""

    def __init__(
        self,
        uri: str = "",
        *,
        ttl_s: float = 86400.0,
        max_alerts: int = 100,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if ttl_s <= 0 or max_alerts < 1:
            raise ConfigError(f"trigger state needs ttl_s > 0 and max_alerts >= 1, got {ttl_s}, {max_alerts}")
        self.uri, self.ttl_s, self.max_alerts, self._clock = uri, float(ttl_s), int(max_alerts), clock
        self.active: dict[str, dict[str, Any]] = {}
        self.last_run_at: float | None = None
        self.save_errors = 0
        self._lock = threading.RLock()
        if uri:
            self._load()

    # -- persistence ----------------------------------------------------------------------------------------
    def _read(self) -> dict[str, Any] | None:
        """The stored document (None when there is none yet)."""
        from visionops import storage

        if not storage.exists(self.uri):
            return None
        doc = json.loads(storage.read_text(self.uri))
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} document")
        return doc

    def _load(self) -> None:
        """Read the document at start. An unreadable one counts as a run just now: the cooldown then holds
        (a corrupt or unreachable state must never let a restart start runs back to back)."""
        try:
            doc = self._read()
        except Exception as exc:
            self.last_run_at = self._clock()
            log.error(
                "trigger state %s unreadable (%s); assuming a run just started (cooldown)", self.uri, exc
            )
            return
        if doc is None:
            log.info("no trigger state at %s yet; it is written on the first change", self.uri)
            return
        self.last_run_at = _time_or_none(doc.get("last_run_at"))
        for source, entry in (doc.get("active") or {}).items():
            if isinstance(source, str) and isinstance(entry, dict) and len(source) <= MAX_SOURCE_CHARS:
                seen = _time_or_none(entry.get("seen")) or self._clock()
                since = _time_or_none(entry.get("since")) or seen
                reason = str(entry.get("reason", ""))[:MAX_REASON_CHARS]
                self.active[source] = {"reason": reason, "since": since, "seen": seen}
        self._trim_alerts()
        log.info(
            "trigger state read from %s: last run %s, active %s",
            self.uri,
            self.last_run_at,
            sorted(self.active),
        )

    def save(self) -> None:
        """Write the document (errors are logged and counted; the trigger keeps its memory either way)."""
        if not self.uri:
            return
        from visionops import storage

        with self._lock:
            doc = {
                "format": FORMAT,
                "updated_at": self._clock(),
                "last_run_at": self.last_run_at,
                "active": {k: dict(v) for k, v in self.active.items()},
            }
        try:
            storage.write_text(self.uri, json.dumps(doc, sort_keys=True))
        except Exception as exc:
            self.save_errors += 1
            log.error("cannot write the trigger state to %s: %s", self.uri, exc)

    def fresh_last_run(self) -> float | None:
        """The last run time, re-read from the document (another replica or an earlier process may have run)."""
        if self.uri:
            try:
                doc = self._read()
            except Exception as exc:
                log.error(
                    "trigger state %s unreadable before a run (%s); using the one in memory", self.uri, exc
                )
            else:
                stored = _time_or_none(doc.get("last_run_at")) if doc else None
                if stored is not None and (self.last_run_at is None or stored > self.last_run_at):
                    self.last_run_at = stored
        return self.last_run_at

    # -- conditions -----------------------------------------------------------------------------------------
    def expire(self, now: float | None = None) -> list[str]:
        """Drop the conditions not raised within ``ttl_s``; returns their names."""
        now = self._clock() if now is None else now
        with self._lock:
            gone = [s for s, e in self.active.items() if now - e["seen"] > self.ttl_s]
            for source in gone:
                del self.active[source]
        if gone:
            log.warning("trigger conditions expired (not raised for %.0fs): %s", self.ttl_s, gone[:10])
            self.save()
        return gone

    def admits(self, source: str) -> bool:
        """False for a new alert name while ``max_alerts`` alert names are active."""
        if source in self.active or not source.startswith("alert:"):
            return True
        return sum(1 for s in self.active if s.startswith("alert:")) < self.max_alerts

    def touch(self, source: str, now: float) -> None:
        """An active condition was raised again: it does not expire for another ``ttl_s``."""
        with self._lock:
            entry = self.active.get(source)
            if entry is not None:
                entry["seen"] = now

    def activate(self, source: str, reason: str, now: float) -> None:
        with self._lock:
            self.active[source] = {"reason": reason[:MAX_REASON_CHARS], "since": now, "seen": now}
        self.save()

    def deactivate(self, source: str) -> bool:
        with self._lock:
            gone = self.active.pop(source, None) is not None
        if gone:
            self.save()
        return gone

    def record_run(self, now: float) -> None:
        with self._lock:
            self.last_run_at = now
        self.save()

    def _trim_alerts(self) -> None:
        """Keep the ``max_alerts`` most recently raised alert names (a document written with a larger cap)."""
        alerts = sorted(
            (s for s in self.active if s.startswith("alert:")), key=lambda s: self.active[s]["seen"]
        )
        for source in alerts[: max(0, len(alerts) - self.max_alerts)]:
            del self.active[source]


def _time_or_none(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)
