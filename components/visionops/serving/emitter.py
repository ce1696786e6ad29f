"""Fire-and-forget delivery of prediction events to the drift-monitor sidecar.

:meth:`MonitorEmitter.emit` is a non-blocking put on a :class:`~visionops.background.BackgroundWriter`.
Serving calls it inside the monitoring process (:mod:`visionops.serving.monitor_process`), off the serving
process's GIL. Its thread builds the rows (a row dict, or a callable returning rows), batches them and
POSTs ``{"rows": [...]}`` to ``<monitor_url>/ingest``. When the queue is full or the monitor is down,
events are dropped and counted through ``on_drop(reason, n)``; nothing waits. Shutdown follows the writer's contract (:meth:`MonitorEmitter.close`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from visionops.background import QUEUE_FULL, SHUTDOWN, SINK_ERROR, BackgroundWriter, lower_thread_priority

log = logging.getLogger(__name__)

#: Drop reasons (the ``reason`` label of ``visionops_monitor_events_dropped_total``).
MONITOR_DOWN = "monitor_down"
ROW_ERROR = "row_error"
REJECTED = "rejected"
DROP_REASONS = (QUEUE_FULL, MONITOR_DOWN, ROW_ERROR, REJECTED, SHUTDOWN, SINK_ERROR)

Item = dict[str, Any] | Callable[[], list[dict[str, Any]]]

__all__ = [
    "DROP_REASONS",
    "MONITOR_DOWN",
    "QUEUE_FULL",
    "MonitorEmitter",
    "lower_thread_priority",
]


class MonitorEmitter:
    """A background writer for ``POST {url}/ingest`` (rows, batched) and ``POST {url}/feedback``."""

    def __init__(
        self,
        url: str,
        *,
        queue_size: int = 10_000,
        batch_rows: int = 256,
        flush_seconds: float = 0.25,
        timeout: float = 2.0,
        retry_after: float = 1.0,
        on_drop: Callable[[str, int], None] | None = None,
        headers: dict[str, str] | None = None,
        path_headers: dict[str, dict[str, str]] | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.headers = dict(headers or {})  # sent with every request
        # per path, e.g. the ingest token for /ingest and the reviewer token for /feedback (the sidecar's roles)
        self.path_headers = {path: dict(h) for path, h in (path_headers or {}).items()}
        self.timeout = timeout
        self.retry_after = retry_after
        self.sent_rows = 0
        self._down_until = 0.0
        self._client = None
        self._writer: BackgroundWriter[tuple[str, Item]] = BackgroundWriter(
            self._send,
            name="visionops-monitor-emitter",
            max_items=queue_size,
            batch_size=batch_rows,
            flush_seconds=flush_seconds,
            on_drop=on_drop,
        )

    @property
    def dropped(self) -> dict[str, int]:
        """Dropped events by reason (queue full, monitor down, refused, ...)."""
        return self._writer.dropped

    # -- request path -----------------------------------------------------------------------------------------
    def emit(self, item: Item) -> bool:
        """Queue one event (a row dict, or a callable that builds rows in the sender thread). Never blocks."""
        return self._writer.put(("/ingest", item))

    def feedback(self, payload: dict[str, Any]) -> bool:
        """Queue one ground-truth label for ``POST /feedback``. Never blocks."""
        return self._writer.put(("/feedback", payload))

    # -- sender thread ----------------------------------------------------------------------------------------
    def _send(self, batch: list[tuple[str, Item]]) -> None:
        """Build the batch's rows, post them in one request, then post its feedback labels."""
        import httpx

        if self._client is None:
            self._client = httpx.Client(timeout=self.timeout, headers=self.headers)
        rows: list[dict[str, Any]] = []
        feedback: list[dict[str, Any]] = []
        for path, item in batch:
            if path == "/feedback":
                feedback.append(item)  # type: ignore[arg-type]
                continue
            try:
                rows.extend(item() if callable(item) else [item])
            except Exception:
                log.exception("building a monitor row failed; dropping it")
                self._writer.drop(ROW_ERROR, 1)
        if rows:
            self._post("/ingest", {"rows": rows}, len(rows))
        for payload in feedback:
            self._post("/feedback", payload, 1)

    def _post(self, path: str, payload: dict[str, Any], n: int) -> None:
        if time.monotonic() < self._down_until:
            self._writer.drop(MONITOR_DOWN, n)
            return
        try:
            response = self._client.post(self.url + path, json=payload, headers=self.path_headers.get(path))
            if 400 <= response.status_code < 500:
                # The monitor is up but refused (some of) it: count, keep sending, no back-off.
                self._writer.drop(REJECTED, _rejected_count(response, n))
                log.warning("monitor refused %s: %s %s", path, response.status_code, response.text[:300])
                return
            response.raise_for_status()
            if path == "/ingest":
                self.sent_rows += n
        except Exception as exc:
            self._down_until = time.monotonic() + self.retry_after
            self._writer.drop(MONITOR_DOWN, n)
            log.warning("monitor at %s unavailable (%s); dropped %d event(s)", self.url, exc, n)

    def close(self, timeout: float = 5.0) -> bool:
        """Deliver what is queued for at most ``timeout`` seconds, then drop and count the rest."""
        done = self._writer.close(timeout)
        if self._client is not None:
            self._client.close()
        return done


def _rejected_count(response, n: int) -> int:
    """Rows refused by the monitor: its ``rejected`` count when it says, else all ``n``."""
    try:
        rejected = response.json().get("rejected")
    except Exception:
        return n
    return int(rejected) if isinstance(rejected, int) else n
