"""The drift monitor's settings: one dataclass (:mod:`visionops.settings`) declares each ``VISIONOPS_*`` variable,
its check and its ``visionops monitor`` option. A Kubernetes ConfigMap sets the variables; CLI options override
them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from visionops.policy import TARGET_PRECISION
from visionops.settings import Settings, setting

DEFAULT_PORT = 8001


def _positive(v: float) -> bool:
    return v > 0


def _at_least_one(v: int) -> bool:
    return v >= 1


@dataclass(frozen=True)
class MonitorSettings(Settings):
    """The sidecar's settings. :meth:`from_env` reads ``VISIONOPS_*``; CLI options override them."""

    kind: ClassVar[str] = "monitor settings"

    model_uri: str = setting(
        "", "Model bundle URI whose reference is watched.", env="VISIONOPS_MODEL_URI", flags=("--model",)
    )
    host: str = setting("0.0.0.0", "Address to listen on.", env="VISIONOPS_MONITOR_HOST", flags=("--host",))
    port: int = setting(
        DEFAULT_PORT,
        "Port (0: any free port).",
        env="VISIONOPS_MONITOR_PORT",
        flags=("--port",),
        check=lambda v: 0 <= v < 65536,
        must="must be in 0..65535 (0: any free port)",
    )
    window_size: int = setting(
        1000,
        "Rows per drift window (the ring buffer's capacity).",
        env="VISIONOPS_WINDOW_SIZE",
        check=lambda v: v >= 2,
        must="must be a window size of at least 2 rows",
    )
    window_seconds: float | None = setting(
        None,
        "Only compare rows younger than this many seconds (default: no age limit).",
        env="VISIONOPS_WINDOW_SECONDS",
        check=_positive,
        must="must be > 0",
    )
    drift_every_rows: int | None = setting(
        None,
        "Compute drift after this many new rows (default: the window size, i.e. back-to-back windows).",
        env="VISIONOPS_DRIFT_EVERY_ROWS",
        check=_at_least_one,
        must="must be >= 1",
    )
    drift_every_seconds: float = setting(
        60.0,
        "... or after this many seconds when the window holds enough rows.",
        env="VISIONOPS_DRIFT_EVERY_SECONDS",
        check=_positive,
        must="must be > 0",
    )
    drift_share: float | None = setting(
        None,
        "Dataset drift when this share of columns drifts (default: the drift policy's, 0.3).",
        env="VISIONOPS_DRIFT_SHARE",
        check=lambda v: 0 < v <= 1,
        must="must be in (0, 1]",
    )
    report_uri: str = setting(
        "", "Upload the HTML/JSON report here (local dir or s3://...).", env="VISIONOPS_REPORT_URI"
    )
    report_every_seconds: float = setting(
        300.0,
        "Report upload period in seconds.",
        env="VISIONOPS_REPORT_EVERY_SECONDS",
        check=_positive,
        must="must be > 0",
    )
    kfp_host: str = setting(
        "",
        "Kubeflow Pipelines API, e.g. http://ml-pipeline.kubeflow:8888 (local://DIR runs locally).",
        env="VISIONOPS_KFP_HOST",
    )
    kfp_pipeline: str = setting("visionops-training", "Training pipeline name.", env="VISIONOPS_KFP_PIPELINE")
    kfp_experiment: str = setting(
        "visionops-retraining", "Experiment for retraining runs.", env="VISIONOPS_KFP_EXPERIMENT"
    )
    kfp_params: dict[str, Any] = setting(  # noqa: RUF009 - setting() returns a dataclasses.field
        default_factory=dict,
        help='Extra run parameters as JSON, e.g. \'{"data_uri": "s3://data/v2"}\'.',
        env="VISIONOPS_KFP_PARAMS",
    )
    kfp_token_path: str | None = setting(
        None,
        "Bearer token file for the KFP API (default: see docs/drift.md).",
        env="VISIONOPS_KFP_TOKEN_PATH",
    )
    kfp_namespace: str | None = setting(
        None, "Kubeflow namespace (profile) of the retraining runs.", env="VISIONOPS_KFP_NAMESPACE"
    )
    trigger_windows: int = setting(
        2,
        "Retrain after drift in this many consecutive windows.",
        env="VISIONOPS_TRIGGER_WINDOWS",
        check=_at_least_one,
        must="must be >= 1",
    )
    trigger_cooldown_s: float = setting(
        3600.0,
        "Seconds between two retraining runs.",
        env="VISIONOPS_TRIGGER_COOLDOWN_S",
        flags=("--cooldown",),
        check=lambda v: v >= 0,
        must="must be >= 0 seconds",
    )
    trigger_dry_run: bool = setting(
        False,
        "Log and count triggers but start no run.",
        env="VISIONOPS_TRIGGER_DRY_RUN",
        flags=("--dry-run/--no-dry-run",),
    )
    target_precision: float = setting(
        TARGET_PRECISION,
        "Retrain when live precision of the positive class falls below this.",
        env="VISIONOPS_TARGET_PRECISION",
        check=lambda v: 0 <= v <= 1,
        must="must be in [0, 1]",
    )
    quality_window: int = setting(
        500,
        "Labelled predictions kept for live precision/recall.",
        env="VISIONOPS_QUALITY_WINDOW",
        check=_at_least_one,
        must="must be >= 1",
    )
    min_labels: int = setting(
        50,
        "Labels needed before live precision can raise the trigger.",
        env="VISIONOPS_MIN_LABELS",
        check=_at_least_one,
        must="must be >= 1",
    )
    max_rows_per_request: int = setting(
        10_000,
        "Most feature rows in one /ingest request (more: 413).",
        check=_at_least_one,
        must="must be >= 1",
    )
    trigger_state_uri: str = setting(
        "",
        "JSON document (local path or s3://) holding the trigger's last run and active conditions, so a "
        "restart does not reset the cooldown ('' = memory only).",
        env="VISIONOPS_TRIGGER_STATE_URI",
    )
    alert_ttl_s: float = setting(
        86400.0,
        "A condition not raised again within this many seconds expires (longer than Alertmanager's "
        "repeatInterval).",
        env="VISIONOPS_ALERT_TTL_S",
        check=_positive,
        must="must be > 0 seconds",
    )
    max_alerts: int = setting(
        100,
        "Most alert names active at once; further names are refused (outcome 'overflow').",
        env="VISIONOPS_MAX_ALERTS",
        check=_at_least_one,
        must="must be >= 1",
    )
    # -- the HTTP server's own limits (hostile or broken clients) --
    socket_timeout_s: float = setting(
        10.0,
        "Seconds a connection may stay silent (a body shorter than its Content-Length gets 408).",
        env="VISIONOPS_MONITOR_SOCKET_TIMEOUT_S",
        check=_positive,
        must="must be > 0 seconds",
    )
    max_body_bytes: int = setting(
        16 * 1024 * 1024,
        "Largest request body in bytes (more: 413, nothing read).",
        env="VISIONOPS_MONITOR_MAX_BODY_BYTES",
        check=lambda v: v >= 1024,
        must="must be >= 1024",
    )
    max_connections: int = setting(
        64,
        "Most connections served at once (one thread each); more get 503 and are closed.",
        env="VISIONOPS_MONITOR_MAX_CONNECTIONS",
        check=_at_least_one,
        must="must be >= 1",
    )
    max_json_depth: int = setting(
        16, "Deepest JSON nesting accepted (deeper: 400).", check=_at_least_one, must="must be >= 1"
    )
    max_string_chars: int = setting(
        256,
        "Longest string value (and key) in a feature row or feedback item.",
        env="VISIONOPS_MONITOR_MAX_STRING_CHARS",
        check=lambda v: v >= 16,
        must="must be >= 16",
    )
    max_pending_bytes: int = setting(
        16 * 1024 * 1024,
        "Bytes of request ids kept for feedback (oldest forgotten first).",
        env="VISIONOPS_MONITOR_MAX_PENDING_BYTES",
        check=lambda v: v >= 4096,
        must="must be >= 4096",
    )

    @property
    def every_rows(self) -> int:
        """Rows between two drift computations."""
        return self.drift_every_rows or self.window_size
