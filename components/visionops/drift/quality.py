"""Live quality: precision and recall of the positive class over the last labelled requests.

Serving forwards ground truth (human review) as ``{"request_id", "label"}``; the prediction for that request
was seen earlier in an ingested feature row. Both stores are bounded: pending predictions by count and by the
bytes of their ids (oldest forgotten first), labelled pairs by the quality window.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque

from visionops.errors import ConfigError
from visionops.policy import TARGET_PRECISION


class LiveQuality:
    """Windowed precision/recall of ``positive_class`` against ``target_precision``."""

    def __init__(
        self,
        positive_class: str,
        *,
        window: int = 500,
        max_pending: int = 50_000,
        max_pending_bytes: int = 16 * 1024 * 1024,
        target_precision: float = TARGET_PRECISION,
        min_labels: int = 50,
    ) -> None:
        if window < 1 or max_pending < 1 or max_pending_bytes < 1:
            raise ConfigError("the quality window and the pending-prediction store need at least 1 slot")
        if not 0.0 <= target_precision <= 1.0:
            raise ConfigError(f"target precision must be in [0, 1], got {target_precision}")
        self.positive_class = positive_class
        self.target_precision = target_precision
        self.min_labels = min_labels
        self.max_pending = max_pending
        self.max_pending_bytes = max_pending_bytes
        self._pending: OrderedDict[str, str] = OrderedDict()
        self._pending_bytes = 0
        self._pairs: deque[tuple[bool, bool]] = deque(maxlen=window)
        self._lock = threading.Lock()
        self.unknown_labels = 0

    def record_prediction(self, request_id: str, predicted_class: str) -> None:
        with self._lock:
            old = self._pending.pop(request_id, None)
            if old is not None:
                self._pending_bytes -= _entry_bytes(request_id, old)
            self._pending[request_id] = predicted_class
            self._pending_bytes += _entry_bytes(request_id, predicted_class)
            while len(self._pending) > self.max_pending or self._pending_bytes > self.max_pending_bytes:
                rid, cls = self._pending.popitem(last=False)
                self._pending_bytes -= _entry_bytes(rid, cls)

    def add_label(self, request_id: str, label: str) -> bool:
        """Pair a ground-truth label with the request's prediction; False when the request is unknown
        (never ingested, or forgotten because more than ``max_pending`` requests came after it)."""
        with self._lock:
            predicted = self._pending.pop(request_id, None)
            if predicted is None:
                self.unknown_labels += 1
                return False
            self._pending_bytes -= _entry_bytes(request_id, predicted)
            self._pairs.append((predicted == self.positive_class, label == self.positive_class))
            return True

    def summary(self) -> dict:
        """precision / recall (None until defined), labels in the window, target, and whether it is missed."""
        with self._lock:
            pairs = list(self._pairs)
        tp = sum(1 for p, t in pairs if p and t)
        fp = sum(1 for p, t in pairs if p and not t)
        fn = sum(1 for p, t in pairs if not p and t)
        precision = tp / (tp + fp) if tp + fp else None
        recall = tp / (tp + fn) if tp + fn else None
        below = precision is not None and len(pairs) >= self.min_labels and precision < self.target_precision
        return {
            "precision": precision,
            "recall": recall,
            "labels": len(pairs),
            "target_precision": self.target_precision,
            "min_labels": self.min_labels,
            "below_target": below,
            "pending_predictions": len(self._pending),
            "pending_bytes": self._pending_bytes,
            "unknown_labels": self.unknown_labels,
        }


def _entry_bytes(request_id: str, predicted_class: str) -> int:
    """What one pending prediction costs: its strings plus the dict entry and object headers (about 150 B)."""
    return len(request_id) + len(predicted_class) + 150
