"""Live quality: precision and recall of the positive class over the last labelled requests, with bounds.

Serving forwards ground truth (human review) as ``{"request_id", "label", "selection_probability"}``; the
prediction for that request was seen earlier in an ingested feature row. Labels must represent traffic: a
uniform random sample (no probability given), or any design that records each item's selection probability
(``visionops label select`` does), weighted by its inverse. Uncertainty-sampled reviews without their
probability are biased towards hard images and are refused (``reason: "uncertain"``).

The estimate and its interval come from :func:`visionops.evaluation.metrics.weighted_rate`, the one
estimator experiments use too. The precision alarm fires only when the *upper* bound of precision is below
the target (precision proven below it): at a true precision at the target it fires at most
``(1 - confidence) / 2`` of the checks (benchmarks/bench_guarantees.py measures it), where comparing a point
estimate from 50 labels with 0.95 fired 8-22% of the checks at a true 0.97.

Both stores are bounded: pending predictions by count and by the bytes of their ids (oldest forgotten
first), labelled pairs by the quality window.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque

from visionops.errors import ConfigError
from visionops.policy import CONFIDENCE, TARGET_PRECISION


def adjusted_count(called_share: float, tpr: float, fpr: float) -> float | None:
    """The production prevalence estimated from the share of traffic the model calls positive and its TPR/FPR
    at the served threshold (Forman's adjusted count: q = TPR p + FPR (1 - p), solved for p, clipped to
    [0, 1]); None when TPR <= FPR (the model does not separate the classes). A metric of its own, not drift:
    compare it with the prevalence the gate's promise was made for."""
    if tpr <= fpr:
        return None
    return float(min(1.0, max(0.0, (called_share - fpr) / (tpr - fpr))))


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
        confidence: float = CONFIDENCE,
    ) -> None:
        if window < 1 or max_pending < 1 or max_pending_bytes < 1:
            raise ConfigError("the quality window and the pending-prediction store need at least 1 slot")
        if not 0.0 <= target_precision <= 1.0:
            raise ConfigError(f"target precision must be in [0, 1], got {target_precision}")
        self.positive_class = positive_class
        self.target_precision = target_precision
        self.min_labels = min_labels
        self.confidence = confidence
        self.max_pending = max_pending
        self.max_pending_bytes = max_pending_bytes
        self._pending: OrderedDict[str, str] = OrderedDict()
        self._pending_bytes = 0
        self._pairs: deque[tuple[bool, bool, float]] = deque(maxlen=window)
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

    def add_label(self, request_id: str, label: str, selection_probability: float | None = None) -> bool:
        """Pair a ground-truth label with the request's prediction, weighted by 1 / ``selection_probability``
        (None = a uniform random sample); False when the request is unknown (never ingested, or forgotten
        because more than ``max_pending`` requests came after it)."""
        if selection_probability is not None and not 0.0 < selection_probability <= 1.0:
            raise ConfigError(f"selection_probability must be in (0, 1], got {selection_probability}")
        weight = 1.0 if selection_probability is None else 1.0 / selection_probability
        with self._lock:
            predicted = self._pending.pop(request_id, None)
            if predicted is None:
                self.unknown_labels += 1
                return False
            self._pending_bytes -= _entry_bytes(request_id, predicted)
            self._pairs.append((predicted == self.positive_class, label == self.positive_class, weight))
            return True

    def summary(self) -> dict:
        """precision / recall (weighted estimates, None until defined) with their intervals, labels in the
        window, target, and whether precision is proven below it."""
        from visionops.evaluation.metrics import weighted_rate

        with self._lock:
            pairs = list(self._pairs)
        called = [(t, w) for p, t, w in pairs if p]
        positives = [(p, w) for p, t, w in pairs if t]
        precision = weighted_rate([t for t, _ in called], [w for _, w in called], confidence=self.confidence)
        recall = weighted_rate(
            [p for p, _ in positives], [w for _, w in positives], confidence=self.confidence
        )
        below = (
            precision["estimate"] is not None
            and len(pairs) >= self.min_labels
            and precision["upper"] < self.target_precision
        )
        return {
            "precision": precision["estimate"],
            "precision_interval": [precision["lower"], precision["upper"]],
            "precision_effective_n": precision["effective_n"],
            "recall": recall["estimate"],
            "recall_interval": [recall["lower"], recall["upper"]],
            "labels": len(pairs),
            "target_precision": self.target_precision,
            "confidence": self.confidence,
            "min_labels": self.min_labels,
            "below_target": below,
            "rule": "precision upper bound < target (proven below)",
            "pending_predictions": len(self._pending),
            "pending_bytes": self._pending_bytes,
            "unknown_labels": self.unknown_labels,
        }


def _entry_bytes(request_id: str, predicted_class: str) -> int:
    """What one pending prediction costs: its strings plus the dict entry and object headers (about 150 B)."""
    return len(request_id) + len(predicted_class) + 150
