"""Sampled payload capture: a share of requests (image + answer) written to object storage as labeling candidates.

``VISIONOPS_CAPTURE_URI`` (local dir or s3:// prefix) and ``VISIONOPS_CAPTURE_RATE`` (0..1). Each sampled
request becomes ``<uri>/<YYYY-MM-DD>/<request_id>.jpg`` (the original bytes when they are JPEG, else a JPEG
re-encoding) and ``<uri>/<YYYY-MM-DD>/<request_id>.json`` (the answer, time, model version, variant, original
format). Writes happen in a background thread with a bounded queue; a full queue drops the capture.
"""

from __future__ import annotations

import json
import logging
import random
from datetime import UTC, datetime
from typing import Any

from visionops import storage
from visionops.background import BackgroundWriter

log = logging.getLogger(__name__)

Capture = tuple[bytes, Any, dict[str, Any]]


class PayloadCapture:
    """Decides per request whether to capture (``rate``) and writes captures off the request path."""

    def __init__(self, uri: str, rate: float, *, queue_size: int = 256, seed: int | None = None) -> None:
        self.uri = str(uri).rstrip("/")
        self.rate = float(rate)
        self.captured = 0
        self._random = random.Random(seed)
        self._writer: BackgroundWriter[Capture] = BackgroundWriter(
            self._write_batch, name="visionops-capture", max_items=queue_size, batch_size=16, flush_seconds=0
        )

    @property
    def dropped(self) -> int:
        """Captures not written (queue full, storage trouble, close deadline)."""
        return sum(self._writer.dropped.values())

    def sample(self) -> bool:
        """True for about ``rate`` of the calls."""
        return self.rate > 0 and self._random.random() < self.rate

    def submit(self, data: bytes, image, record: dict[str, Any]) -> bool:
        """Queue one capture: original bytes, the decoded PIL image, and the answer record (with request_id)."""
        return self._writer.put((data, image, record))

    def _write_batch(self, batch: list[Capture]) -> None:
        for data, image, record in batch:
            try:
                self.write(data, image, record)
            except Exception as exc:
                self._writer.drop("storage_error", 1)
                log.warning("payload capture to %s failed (%s)", self.uri, exc)

    def close(self, timeout: float = 5.0) -> bool:
        """Write what is queued within ``timeout`` seconds (then drop and count the rest)."""
        return self._writer.close(timeout)

    def write(self, data: bytes, image, record: dict[str, Any]) -> str:
        """Write one capture now; returns the image URI."""
        from visionops.images import encode_image

        day = datetime.now(UTC).strftime("%Y-%m-%d")
        request_id = _safe_name(str(record["request_id"]))
        source_format = getattr(image, "info", {}).get("source_format")
        jpeg = data if source_format == "JPEG" else encode_image(image, "JPEG")
        image_uri = storage.join(self.uri, day, f"{request_id}.jpg")
        storage.write_bytes(image_uri, jpeg)
        meta = {**record, "image": image_uri, "source_format": source_format}
        storage.write_text(storage.join(self.uri, day, f"{request_id}.json"), json.dumps(meta, default=str))
        self.captured += 1
        return image_uri


def _safe_name(value: str) -> str:
    """A request id as a file name (ids come from clients via X-Request-ID)."""
    cleaned = "".join(c if c.isalnum() or c in "-_." else "_" for c in value)[:128].lstrip(".")
    return cleaned or "request"
