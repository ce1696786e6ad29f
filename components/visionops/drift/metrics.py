"""The drift monitor's Prometheus metrics, declared as a table (names: docs/ARCHITECTURE.md; the dashboard and
the alert rules use exactly these). Each monitor has its own registry, so two monitors in one process (tests)
never share a series.
"""

from __future__ import annotations

from typing import NamedTuple


class Metric(NamedTuple):
    """One metric: the attribute the monitor updates, its kind, Prometheus name, help text and labels."""

    attr: str
    kind: str  # "gauge" or "counter" (prometheus_client adds _total to counters)
    name: str
    help: str
    labels: tuple[str, ...] = ()


#: Every metric the sidecar exposes, in the order /metrics lists them.
METRICS: tuple[Metric, ...] = (
    Metric("share", "gauge", "visionops_drift_share",
           "Share of monitored columns that drifted in the last window", ("model_version",)),
    Metric("detected", "gauge", "visionops_drift_detected",
           "1 when the last window drifted (share >= drift_share or prediction drift)", ("model_version",)),
    Metric("feature_score", "gauge", "visionops_feature_drift_score",
           "Drift score of a column in the last window (normed Wasserstein / Jensen-Shannon distance)",
           ("feature",)),
    Metric("feature_drifted", "gauge", "visionops_feature_drifted",
           "1 when the column drifted in the last window", ("feature",)),
    Metric("window_rows", "gauge", "visionops_drift_window_rows", "Rows held in the window"),
    Metric("consecutive", "gauge", "visionops_drift_consecutive_windows", "Consecutive windows with drift"),
    Metric("received", "counter", "visionops_monitor_rows_received", "Feature rows received"),
    Metric("rejected", "counter", "visionops_monitor_rows_rejected", "Feature rows refused by the schema check"),
    Metric("dropped", "counter", "visionops_monitor_rows_dropped",
           "Rows pushed out of the window before any drift computation saw them"),
    Metric("last_run", "gauge", "visionops_drift_last_run_timestamp_seconds", "When drift was last computed"),
    Metric("last_duration", "gauge", "visionops_drift_last_duration_seconds",
           "How long the last drift computation took"),
    Metric("class_share", "gauge", "visionops_prediction_class_share",
           "Share of each predicted label in the last window", ("label",)),
    Metric("mean_confidence", "gauge", "visionops_mean_confidence", "Mean confidence in the last window"),
    Metric("live_precision", "gauge", "visionops_live_precision",
           "Precision of the positive class over the labelled window (NaN until defined)"),
    Metric("live_recall", "gauge", "visionops_live_recall",
           "Recall of the positive class over the labelled window"),
    Metric("live_labels", "gauge", "visionops_live_labels_window", "Ground-truth labels in the quality window"),
    Metric("estimated_prevalence", "gauge", "visionops_estimated_prevalence",
           "Share of the positive class in the last window, corrected for the model's TPR/FPR (adjusted count)"),
    Metric("retrain_alert", "gauge", "visionops_retrain_alert", "1 while a retraining condition holds"),
    Metric("triggered", "counter", "visionops_retrain_triggered", "Retraining trigger outcomes", ("outcome",)),
)  # fmt: skip


class MonitorMetrics:
    """The metrics of :data:`METRICS` as attributes (``metrics.share``, ``metrics.triggered``...)."""

    def __init__(self, model_version: str) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge

        kinds = {"gauge": Gauge, "counter": Counter}
        self.registry = CollectorRegistry(auto_describe=True)
        for m in METRICS:
            setattr(self, m.attr, kinds[m.kind](m.name, m.help, list(m.labels), registry=self.registry))
        # undefined until labels arrive (NaN, not a misleading 0); the model's drift series exist from the start
        self.live_precision.set(float("nan"))
        self.live_recall.set(float("nan"))
        self.share.labels(model_version=model_version).set(0)
        self.detected.labels(model_version=model_version).set(0)

    def __getattr__(self, name: str):  # pragma: no cover - only reached for a name missing from METRICS
        raise AttributeError(f"no metric {name!r}; the table METRICS lists them")

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        from prometheus_client import generate_latest

        return generate_latest(self.registry)
