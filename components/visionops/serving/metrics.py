"""The serving Prometheus metrics (names fixed by docs/ARCHITECTURE.md; dashboards and alerts use them).

They are plain ``prometheus_client`` metrics created once per process. Under ``bentoml serve`` the
multiprocess directory is set, so BentoML's own ``/metrics`` endpoint exposes them next to its ``bentoml_*``
metrics.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0)
CONFIDENCE_BUCKETS = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98, 0.99, 1.0)

METRIC_NAMES = (
    "visionops_requests_total",
    "visionops_request_latency_seconds",
    "visionops_predictions_total",
    "visionops_prediction_confidence",
    "visionops_monitor_events_dropped_total",
    "visionops_model_info",
)


@dataclass(frozen=True)
class ServingMetrics:
    requests: Any
    latency: Any
    predictions: Any
    confidence: Any
    dropped: Any
    model_info: Any


@functools.cache
def serving_metrics() -> ServingMetrics:
    """The metric objects of this process (registered on first call, in the default registry)."""
    from prometheus_client import Counter, Gauge, Histogram

    return ServingMetrics(
        requests=Counter(
            "visionops_requests",
            "Requests by endpoint and HTTP status.",
            ["endpoint", "status", "model_version"],
        ),
        latency=Histogram(
            "visionops_request_latency_seconds",
            "Request latency inside the service (validation, batching, inference).",
            ["endpoint", "model_version"],
            buckets=LATENCY_BUCKETS,
        ),
        predictions=Counter("visionops_predictions", "Predicted labels.", ["label", "model_version"]),
        confidence=Histogram(
            "visionops_prediction_confidence",
            "Probability of the predicted label.",
            ["model_version"],
            buckets=CONFIDENCE_BUCKETS,
        ),
        dropped=Counter(
            "visionops_monitor_events_dropped",
            "Prediction events not delivered to the monitor sidecar (queue full, monitor down), and prediction-log "
            "records not written (reason=prediction_log).",
            ["reason"],
        ),
        model_info=Gauge(
            "visionops_model_info",
            "The served model (value 1).",
            ["model_version", "architecture"],
            multiprocess_mode="livemax",
        ),
    )
