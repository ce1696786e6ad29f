"""Fire-and-forget delivery of prediction events to the drift-monitor sidecar.

The request path only calls :meth:`MonitorEmitter.emit` (a non-blocking ``put_nowait`` on a bounded queue).
A background thread drains the queue, builds the rows (feature extraction happens here, off the request
path), batches them and POSTs ``{"rows": [...]}`` to ``<monitor_url>/ingest``. When the queue is full or the
monitor is down, events are dropped and counted through ``on_drop(reason, n)``; serving never waits.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

#: Drop reasons (the ``reason`` label of ``visionops_monitor_events_dropped_total``).
QUEUE_FULL = "queue_full"
MONITOR_DOWN = "monitor_down"
ROW_ERROR = "row_error"
REJECTED = "rejected"
DROP_REASONS = (QUEUE_FULL, MONITOR_DOWN, ROW_ERROR, REJECTED)

Item = dict[str, Any] | Callable[[], list[dict[str, Any]]]


def lower_thread_priority(niceness: int = 10) -> None:
    """Make the calling thread yield CPU to request handling on a busy machine (Linux; no-op elsewhere)."""
    # Not Linux, or not permitted: the thread keeps normal priority.
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), niceness)


class LazyRows:
    """Rows built once, on first call, from whichever background thread asks first (monitor or log)."""

    def __init__(self, build: Callable[[], list[dict[str, Any]]]) -> None:
        self._build = build
        self._rows: list[dict[str, Any]] | None = None
        self._lock = threading.Lock()

    def __call__(self) -> list[dict[str, Any]]:
        with self._lock:
            if self._rows is None:
                self._rows = self._build()
            return self._rows


class MonitorEmitter:
    """A bounded queue and one sender thread for ``POST {url}/ingest`` and ``POST {url}/feedback``."""

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
    ) -> None:
        self.url = url.rstrip("/")
        self.headers = dict(headers or {})  # e.g. the reviewer token the sidecar's /feedback requires
        self.batch_rows = batch_rows
        self.flush_seconds = flush_seconds
        self.timeout = timeout
        self.retry_after = retry_after
        self.on_drop = on_drop or (lambda reason, n: None)
        self.dropped: dict[str, int] = dict.fromkeys(DROP_REASONS, 0)
        self.sent_rows = 0
        self._queue: queue.Queue[tuple[str, Item]] = queue.Queue(maxsize=queue_size)
        self._stop = threading.Event()
        self._down_until = 0.0
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # -- request path -----------------------------------------------------------------------------------------
    def emit(self, item: Item) -> bool:
        """Queue one event (a row dict, or a callable that builds rows in the sender thread). Never blocks."""
        return self._put("/ingest", item)

    def feedback(self, payload: dict[str, Any]) -> bool:
        """Queue one ground-truth label for ``POST /feedback``. Never blocks."""
        return self._put("/feedback", payload)

    def _put(self, path: str, item: Item) -> bool:
        self._ensure_started()
        try:
            self._queue.put_nowait((path, item))
            return True
        except queue.Full:
            self._drop(QUEUE_FULL, 1)
            return False

    # -- sender thread ----------------------------------------------------------------------------------------
    def _ensure_started(self) -> None:
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._run, name="visionops-monitor-emitter", daemon=True
                    )
                    self._thread.start()

    def _drop(self, reason: str, n: int) -> None:
        if n <= 0:
            return
        self.dropped[reason] = self.dropped.get(reason, 0) + n
        try:
            self.on_drop(reason, n)
        except Exception:  # a metrics hiccup must never break delivery
            log.exception("on_drop callback failed")

    def _run(self) -> None:
        import httpx

        lower_thread_priority()
        with httpx.Client(timeout=self.timeout, headers=self.headers) as client:
            while not (self._stop.is_set() and self._queue.empty()):
                rows, feedback = self._collect()
                if rows:
                    self._post(client, "/ingest", {"rows": rows}, len(rows))
                for payload in feedback:
                    self._post(client, "/feedback", payload, 1)

    def _collect(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Up to ``batch_rows`` rows, waiting at most ``flush_seconds`` after the first one."""
        rows: list[dict[str, Any]] = []
        feedback: list[dict[str, Any]] = []
        deadline = None
        while len(rows) < self.batch_rows:
            timeout = self.flush_seconds if deadline is None else deadline - time.monotonic()
            if timeout <= 0:
                break
            try:
                path, item = self._queue.get(timeout=timeout)
            except queue.Empty:
                break
            deadline = deadline or time.monotonic() + self.flush_seconds
            if path == "/feedback":
                feedback.append(item)  # type: ignore[arg-type]
                continue
            try:
                rows.extend(item() if callable(item) else [item])
            except Exception:
                log.exception("building a monitor row failed; dropping it")
                self._drop(ROW_ERROR, 1)
        return rows, feedback

    def _post(self, client, path: str, payload: dict[str, Any], n: int) -> None:
        if time.monotonic() < self._down_until:
            self._drop(MONITOR_DOWN, n)
            return
        try:
            response = client.post(self.url + path, json=payload)
            if 400 <= response.status_code < 500:
                # The monitor is up but refused (some of) it: count, keep sending, no back-off.
                self._drop(REJECTED, _rejected_count(response, n))
                log.warning("monitor refused %s: %s %s", path, response.status_code, response.text[:300])
                return
            response.raise_for_status()
            if path == "/ingest":
                self.sent_rows += n
        except Exception as exc:
            self._down_until = time.monotonic() + self.retry_after
            self._drop(MONITOR_DOWN, n)
            log.warning("monitor at %s unavailable (%s); dropped %d event(s)", self.url, exc, n)

    def close(self, timeout: float = 5.0) -> None:
        """Flush what is queued (best effort, at most ``timeout`` seconds) and stop the thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)


def _rejected_count(response, n: int) -> int:
    """Rows refused by the monitor: its ``rejected`` count when it says, else all ``n``."""
    try:
        rejected = response.json().get("rejected")
    except Exception:
        return n
    return int(rejected) if isinstance(rejected, int) else n
