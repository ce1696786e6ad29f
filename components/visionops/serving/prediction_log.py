"""The prediction log: every answer (and every feedback label) as one JSON line, for later evaluation.

``VISIONOPS_PREDICTION_LOG`` is a local directory or an ``s3://`` prefix. Events are written off the request
path by one background thread: locally appended to ``<log>/<YYYY-MM-DD>/<host>-<pid>.jsonl``; on object
storage (no appends there) as one object per flush, ``<log>/<YYYY-MM-DD>/<host>-<pid>-<time>-<seq>.jsonl``.
:func:`read_prediction_log` reads them all back.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from visionops import storage
from visionops.background import BackgroundWriter

log = logging.getLogger(__name__)

Item = dict[str, Any] | Callable[[], list[dict[str, Any]]]


class PredictionLog:
    """A :class:`~visionops.background.BackgroundWriter` of JSON lines; :meth:`append` never blocks."""

    def __init__(
        self,
        uri: str,
        *,
        queue_size: int = 10_000,
        flush_rows: int = 500,
        flush_seconds: float = 2.0,
        on_drop: Callable[[int], None] | None = None,
    ) -> None:
        self.uri = str(uri).rstrip("/")
        self.written = 0
        self._name = f"{socket.gethostname()}-{os.getpid()}"
        self._seq = 0
        notify = on_drop or (lambda n: None)
        self._writer: BackgroundWriter[Item] = BackgroundWriter(
            self._write_batch,
            name="visionops-prediction-log",
            max_items=queue_size,
            batch_size=flush_rows,
            flush_seconds=flush_seconds,
            on_drop=lambda reason, n: notify(n),
        )

    @property
    def dropped(self) -> int:
        """Events that were not written (queue full, storage trouble, close deadline)."""
        return sum(self._writer.dropped.values())

    def append(self, item: Item) -> bool:
        """Queue one event (a dict, or a callable returning a list of dicts, built in the writer thread)."""
        return self._writer.put(item)

    def _write_batch(self, items: list[Item]) -> None:
        rows: list[dict[str, Any]] = []
        for item in items:
            try:
                rows.extend(item() if callable(item) else [item])
            except Exception:
                log.exception("building a prediction-log row failed; dropping it")
                self._writer.drop("row_error", 1)
        if rows:
            self._write(rows)

    def _write(self, rows: list[dict[str, Any]]) -> None:
        day = datetime.now(UTC).strftime("%Y-%m-%d")
        text = "".join(json.dumps(row, default=_jsonable, separators=(",", ":")) + "\n" for row in rows)
        try:
            if storage.is_remote(self.uri):
                self._seq += 1
                stamp = datetime.now(UTC).strftime("%H%M%S")
                storage.write_text(
                    storage.join(self.uri, day, f"{self._name}-{stamp}-{self._seq:06d}.jsonl"), text
                )
            else:
                path = Path(self.uri, day, f"{self._name}.jsonl")
                path.parent.mkdir(parents=True, exist_ok=True)
                with path.open("a", encoding="utf-8") as fh:
                    fh.write(text)
            self.written += len(rows)
        except Exception as exc:  # storage trouble must never reach the request path
            self._writer.drop("storage_error", len(rows))
            log.warning("prediction log %s not writable (%s); dropped %d row(s)", self.uri, exc, len(rows))

    def close(self, timeout: float = 10.0) -> bool:
        """Write what is queued within ``timeout`` seconds (then drop and count the rest); stop the thread."""
        return self._writer.close(timeout)


def _jsonable(value: Any) -> Any:
    """numpy scalars/arrays and other odd values -> JSON-friendly values."""
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def read_prediction_log(uri: str) -> list[dict[str, Any]]:
    """All events under a prediction log (local directory or s3:// prefix), oldest file first."""
    events: list[dict[str, Any]] = []
    for file_uri in sorted(u for u in storage.list_uris(uri) if u.endswith(".jsonl")):
        for line in storage.read_text(file_uri).splitlines():
            if line.strip():
                events.append(json.loads(line))
    return events
