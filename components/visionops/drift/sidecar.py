"""The drift monitor sidecar: a small HTTP service beside ``visionops serve`` (same pod, its own port).

Endpoints::

    POST /ingest     {"rows": [feature rows]}   schema-checked; good rows are kept, bad ones -> 422 + reasons
    POST /feedback   {"request_id", "label"} or {"labels": [...]}   ground truth -> live precision/recall
    POST /alerts     Alertmanager webhook payload -> the retraining trigger (same code path as drift)
    GET  /metrics    Prometheus text (names: docs/ARCHITECTURE.md)
    GET  /drift      the latest drift result (JSON)
    GET  /report     the latest drift report (one self-contained HTML file)
    GET  /healthz    the process is up
    GET  /readyz     the reference is loaded and the drift worker runs

Ingestion only appends to a bounded ring buffer (:class:`~visionops.drift.window.FeatureWindow`); a
background worker compares a snapshot of the window with the bundle's reference every K rows or T seconds,
so a slow drift computation never blocks ``/ingest``. Every store is bounded (window, pending predictions,
labelled pairs, event log), so memory stays flat under a stream of any length.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from dataclasses import dataclass, field, fields
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from visionops.errors import ConfigError, VisionOpsError

log = logging.getLogger(__name__)

DEFAULT_PORT = 8001
MAX_BODY_BYTES = 32 * 1024 * 1024
META_COLUMNS = ("request_id", "timestamp", "model_version")


def _env_bool(value: str) -> bool:
    return value.strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class MonitorSettings:
    """The sidecar's settings. :meth:`from_env` reads ``VISIONOPS_*``; CLI options override them."""

    model_uri: str = ""
    host: str = "0.0.0.0"
    port: int = DEFAULT_PORT
    #: rows compared per window (the ring buffer's capacity)
    window_size: int = 1000
    #: optional age limit: only rows younger than this are compared
    window_seconds: float | None = None
    #: compare after this many new rows (default: window_size, i.e. back-to-back windows)
    drift_every_rows: int | None = None
    #: ... or after this many seconds when the window holds at least min_rows rows
    drift_every_seconds: float = 60.0
    drift_share: float | None = None
    report_uri: str = ""
    report_every_seconds: float = 300.0
    kfp_host: str = ""
    kfp_pipeline: str = "visionops-training"
    kfp_experiment: str = "visionops-retraining"
    kfp_params: dict[str, Any] = field(default_factory=dict)
    kfp_token_path: str | None = None
    kfp_namespace: str | None = None
    trigger_windows: int = 2
    trigger_cooldown_s: float = 3600.0
    trigger_dry_run: bool = False
    target_precision: float = 0.95
    quality_window: int = 500
    min_labels: int = 50
    max_rows_per_request: int = 10_000

    def __post_init__(self) -> None:
        checks = [
            (self.window_size >= 2, f"window size must be at least 2 rows, got {self.window_size}"),
            (self.drift_every_rows is None or self.drift_every_rows >= 1, "drift_every_rows must be >= 1"),
            (
                self.drift_every_seconds > 0,
                f"drift_every_seconds must be > 0, got {self.drift_every_seconds}",
            ),
            (self.trigger_windows >= 1, f"trigger_windows must be >= 1, got {self.trigger_windows}"),
            (0 <= self.port < 65536, f"port must be in 0..65535 (0: any free port), got {self.port}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    @property
    def every_rows(self) -> int:
        return self.drift_every_rows or self.window_size

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **overrides: Any) -> MonitorSettings:
        """Settings from ``VISIONOPS_*`` variables; ``overrides`` that are not None win."""
        env = dict(os.environ if env is None else env)
        names = {
            "model_uri": "VISIONOPS_MODEL_URI",
            "host": "VISIONOPS_MONITOR_HOST",
            "port": "VISIONOPS_MONITOR_PORT",
            "window_size": "VISIONOPS_WINDOW_SIZE",
            "window_seconds": "VISIONOPS_WINDOW_SECONDS",
            "drift_every_rows": "VISIONOPS_DRIFT_EVERY_ROWS",
            "drift_every_seconds": "VISIONOPS_DRIFT_EVERY_SECONDS",
            "drift_share": "VISIONOPS_DRIFT_SHARE",
            "report_uri": "VISIONOPS_REPORT_URI",
            "report_every_seconds": "VISIONOPS_REPORT_EVERY_SECONDS",
            "kfp_host": "VISIONOPS_KFP_HOST",
            "kfp_pipeline": "VISIONOPS_KFP_PIPELINE",
            "kfp_experiment": "VISIONOPS_KFP_EXPERIMENT",
            "kfp_params": "VISIONOPS_KFP_PARAMS",
            "kfp_token_path": "VISIONOPS_KFP_TOKEN_PATH",
            "kfp_namespace": "VISIONOPS_KFP_NAMESPACE",
            "trigger_windows": "VISIONOPS_TRIGGER_WINDOWS",
            "trigger_cooldown_s": "VISIONOPS_TRIGGER_COOLDOWN_S",
            "trigger_dry_run": "VISIONOPS_TRIGGER_DRY_RUN",
            "target_precision": "VISIONOPS_TARGET_PRECISION",
            "quality_window": "VISIONOPS_QUALITY_WINDOW",
            "min_labels": "VISIONOPS_MIN_LABELS",
        }
        types = {f.name: f.type for f in fields(cls)}
        values: dict[str, Any] = {}
        for name, var in names.items():
            raw = env.get(var)
            if raw is None or raw == "":
                continue
            values[name] = _parse(var, raw, types[name])
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


def _parse(var: str, raw: str, kind: str) -> Any:
    try:
        if "bool" in kind:
            return _env_bool(raw)
        if kind.startswith("int"):
            return int(raw)
        if kind.startswith("float"):
            return float(raw)
        if kind.startswith("dict"):
            value = json.loads(raw)
            if not isinstance(value, dict):
                raise ValueError("expected a JSON object")
            return value
    except ValueError as exc:
        raise ConfigError(f"{var}={raw!r} is not valid: {exc}") from exc
    return raw


class Monitor:
    """The sidecar's state and logic (the HTTP layer in :class:`MonitorServer` only maps requests to it)."""

    def __init__(
        self, settings: MonitorSettings, *, meta: dict | None = None, reference=None, policy=None
    ) -> None:
        from visionops.drift.detect import DriftPolicy, monitored_columns
        from visionops.drift.quality import LiveQuality
        from visionops.drift.reference import read_reference
        from visionops.drift.trigger import RetrainTrigger, TriggerSettings
        from visionops.drift.window import FeatureWindow

        if not settings.model_uri:
            raise ConfigError("no model given: pass --model URI or set VISIONOPS_MODEL_URI")
        if meta is None:
            from visionops.bundle import read_meta

            meta = read_meta(
                settings.model_uri
            )  # the sidecar needs the metadata and the reference, not the model
        self.settings = settings
        self.model_version = meta["model_version"]
        self.classes = list(meta["classes"])
        positive_class = meta.get("positive_class") or self.classes[-1]
        self.reference = reference if reference is not None else read_reference(settings.model_uri, meta)
        if policy is None:
            policy = (
                DriftPolicy()
                if settings.drift_share is None
                else DriftPolicy(drift_share=settings.drift_share)
            )
        self.policy = policy
        #: thresholds calibrated per window size at reference time (None for bundles made before them)
        self.calibration = (meta.get("drift") or {}).get("calibration")
        self.threshold_info = meta.get("threshold_info") or {}
        self.columns = monitored_columns(self.reference.columns, policy)
        if not self.columns:
            raise ConfigError(f"the drift reference of {settings.model_uri} has no feature columns")
        self.window = FeatureWindow(self.columns, settings.window_size, max_age_s=settings.window_seconds)
        self.quality = LiveQuality(
            positive_class,
            window=settings.quality_window,
            target_precision=settings.target_precision,
            min_labels=settings.min_labels,
        )
        self.metrics = _Metrics(self.model_version)
        self.trigger = RetrainTrigger(
            TriggerSettings(
                kfp_host=settings.kfp_host,
                pipeline=settings.kfp_pipeline,
                experiment=settings.kfp_experiment,
                params=dict(settings.kfp_params),
                cooldown_s=settings.trigger_cooldown_s,
                dry_run=settings.trigger_dry_run,
                token_path=settings.kfp_token_path,
                namespace=settings.kfp_namespace,
            ),
            model_uri=settings.model_uri,
            model_version=self.model_version,
            on_outcome=lambda outcome: self.metrics.triggered.labels(outcome=outcome).inc(),
        )
        self.latest: dict | None = None
        self.consecutive = 0
        self._counted_end = 0  # rows ever appended when the last counted window ended
        self._html: str | None = None
        self._rows_since = 0
        self._last_run = time.monotonic()
        self._last_upload = 0.0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._state_lock = threading.Lock()
        self._worker: threading.Thread | None = None
        self.ready = False
        self.errors = 0

    # -- ingestion ------------------------------------------------------------------------------------------
    def check_row(self, row: Any) -> list[str]:
        """The reasons a row is refused (empty when it is good)."""
        if not isinstance(row, dict):
            return [f"a row must be a JSON object, got {type(row).__name__}"]
        problems = []
        for name, kind in self.columns.items():
            if name not in row:
                problems.append(f"missing {name!r}")
                continue
            value = row[name]
            if kind == "cat":
                if not isinstance(value, str):
                    problems.append(f"{name!r} must be a string, got {value!r}")
                elif name == "predicted_class" and value not in self.classes:
                    problems.append(
                        f"predicted_class {value!r} is not one of the model's classes {self.classes}"
                    )
                continue
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                problems.append(f"{name!r} must be a finite number, got {value!r}")
                continue
            spec = _spec(name)
            if spec is not None and spec.low is not None and not spec.low <= value <= spec.high:
                problems.append(f"{name!r}={value} is outside [{spec.low}, {spec.high}]")
        version = row.get("model_version")
        if version not in (None, "", self.model_version):
            problems.append(f"model_version {version!r} is not the monitored model {self.model_version!r}")
        ts = row.get("timestamp")
        if ts is not None and (
            isinstance(ts, bool) or not isinstance(ts, int | float) or not math.isfinite(ts)
        ):
            problems.append(f"timestamp must be seconds since the epoch, got {ts!r}")
        rid = row.get("request_id")
        if rid is not None and not isinstance(rid, str):
            problems.append(f"request_id must be a string, got {rid!r}")
        return problems

    def ingest(self, rows: list) -> tuple[int, list[dict]]:
        """Keep the good rows; return (accepted, [{index, errors}] for the bad ones)."""
        good, bad = [], []
        for i, row in enumerate(rows):
            problems = self.check_row(row)
            if problems:
                bad.append({"index": i, "errors": problems})
            else:
                good.append(row)
        if good:
            self.window.append(good)
            for row in good:
                rid = row.get("request_id")
                if rid:
                    self.quality.record_prediction(rid, row.get("predicted_class", ""))
        self.metrics.received.inc(len(rows))
        if bad:
            self.metrics.rejected.inc(len(bad))
        self.metrics.window_rows.set(len(self.window))
        with self._state_lock:
            self._rows_since += len(good)
            due = self._rows_since >= self.settings.every_rows
        if due:
            self._wake.set()
        return len(good), bad

    def feedback(self, items: list) -> tuple[int, list[dict]]:
        """Ground-truth labels for earlier requests; returns (matched, problems)."""
        matched, problems = 0, []
        for i, item in enumerate(items):
            if (
                not isinstance(item, dict)
                or not isinstance(item.get("request_id"), str)
                or "label" not in item
            ):
                problems.append({"index": i, "errors": ["need {'request_id': str, 'label': class name}"]})
                continue
            label = str(item["label"])
            if label not in self.classes:
                problems.append({"index": i, "errors": [f"label {label!r} is not one of {self.classes}"]})
                continue
            probability = item.get("selection_probability")
            if probability is None and item.get("reason") == "uncertain":
                problems.append(
                    {"index": i, "errors": ["an uncertainty-sampled label needs its selection_probability"]}
                )
                continue
            if probability is not None and (
                isinstance(probability, bool)
                or not isinstance(probability, int | float)
                or not 0 < probability <= 1
            ):
                problems.append(
                    {"index": i, "errors": [f"selection_probability must be in (0, 1], got {probability!r}"]}
                )
                continue
            if self.quality.add_label(item["request_id"], label, probability):
                matched += 1
            else:
                problems.append({"index": i, "errors": [f"unknown request_id {item['request_id']!r}"]})
        self._update_quality()
        return matched, problems

    def _update_quality(self) -> None:
        summary = self.quality.summary()
        m = self.metrics
        m.live_precision.set(summary["precision"] if summary["precision"] is not None else float("nan"))
        m.live_recall.set(summary["recall"] if summary["recall"] is not None else float("nan"))
        m.live_labels.set(summary["labels"])
        if summary["below_target"]:
            self.trigger.raise_(
                "live_precision",
                f"live precision {summary['precision']:.3f} (upper bound {summary['precision_interval'][1]:.3f})"
                f" < target {summary['target_precision']} over {summary['labels']} labels",
            )
        elif summary["precision"] is not None and summary["labels"] >= summary["min_labels"]:
            self.trigger.clear("live_precision")
        m.retrain_alert.set(self.trigger.alert)

    # -- drift ----------------------------------------------------------------------------------------------
    def run_drift(self) -> dict | None:
        """Compare a snapshot of the window with the reference now (the worker calls this)."""
        from visionops.drift.detect import compute_drift

        with self._state_lock:
            since, self._rows_since = self._rows_since, 0
            self._last_run = time.monotonic()
        current = self.window.snapshot()
        if since > self.window.capacity:
            self.metrics.dropped.inc(since - self.window.capacity)
        if len(current) < self.policy.min_rows:
            return None
        end = self.window.total
        result = compute_drift(
            self.reference, current, self.policy, keep_frames=True, calibration=self.calibration
        )
        result["model_version"] = self.model_version
        result["window_rows_span"] = [end - len(current), end]
        result["estimated_prevalence"] = self._estimated_prevalence(result)
        self._apply(result)
        return result

    def _estimated_prevalence(self, result: dict) -> float | None:
        """The window's positive share corrected for the model's errors (adjusted count), when the bundle
        records the TPR and FPR of its threshold."""
        from visionops.drift.quality import adjusted_count

        info = self.threshold_info
        if info.get("recall") is None or info.get("fpr") is None:
            return None
        called = result["class_shares"].get(self.quality.positive_class, 0.0)
        estimate = adjusted_count(called, float(info["recall"]), float(info["fpr"]))
        if estimate is not None:
            self.metrics.estimated_prevalence.set(estimate)
        return estimate

    def _apply(self, result: dict) -> None:
        m = self.metrics
        start, end = result.get("window_rows_span") or (self._counted_end, self._counted_end + 1)
        # "N drifted windows in a row" counts non-overlapping windows: a window that shares rows with the
        # last counted one (time-triggered runs) is reported but does not move the count
        result["counted"] = start >= self._counted_end
        if result["counted"]:
            self.consecutive = self.consecutive + 1 if result["dataset_drift"] else 0
            self._counted_end = end
        result["consecutive_windows"] = self.consecutive
        m.share.labels(model_version=self.model_version).set(result["share"])
        m.detected.labels(model_version=self.model_version).set(1 if result["dataset_drift"] else 0)
        for name, f in result["features"].items():
            m.feature_score.labels(feature=name).set(f["score"] if f["score"] is not None else float("nan"))
            m.feature_drifted.labels(feature=name).set(1 if f["drifted"] else 0)
        m.consecutive.set(self.consecutive)
        m.last_run.set(result["timestamp"])
        m.last_duration.set(result["duration_s"])
        for label in self.classes:
            m.class_share.labels(label=label).set(result["class_shares"].get(label, 0.0))
        if result["mean_confidence"] is not None:
            m.mean_confidence.set(result["mean_confidence"])
        if self.consecutive >= self.settings.trigger_windows:
            why = ", ".join(result["drifted_features"][:6])
            result["trigger"] = self.trigger.raise_(
                "drift",
                f"drift in {self.consecutive} consecutive windows (share {result['share']:.2f}: {why})",
            )
        elif not result["dataset_drift"]:
            self.trigger.clear("drift")
        m.retrain_alert.set(self.trigger.alert)
        with self._state_lock:
            self.latest = result
            self._html = None

    def latest_public(self) -> dict:
        from visionops.drift.detect import public

        with self._state_lock:
            latest = self.latest
        if latest is None:
            return {
                "status": "waiting",
                "window_rows": len(self.window),
                "min_rows": self.policy.min_rows,
                "every_rows": self.settings.every_rows,
            }
        out = public(latest)
        out["status"] = "drift" if latest["dataset_drift"] else "ok"
        out["retrain_alert"] = self.trigger.alert
        return out

    def report_html(self) -> str | None:
        from visionops.drift.detect import render_html

        with self._state_lock:
            latest, html = self.latest, self._html
        if latest is None:
            return None
        if html is None:
            html = render_html(latest, title=f"VisionOps drift report: model {self.model_version}")
            with self._state_lock:
                if self.latest is latest:
                    self._html = html
        return html

    def upload_report(self) -> str | None:
        """Write the latest report (HTML + JSON) under ``report_uri``; returns the HTML URI."""
        from visionops import storage

        html = self.report_html()
        if html is None or not self.settings.report_uri:
            return None
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        base = self.settings.report_uri
        uri = storage.join(base, f"drift-{self.model_version}-{stamp}.html")
        storage.write_text(uri, html)
        storage.write_text(storage.join(base, "latest.html"), html)
        storage.write_text(storage.join(base, "latest.json"), json.dumps(self.latest_public(), indent=2))
        self._last_upload = time.monotonic()
        log.info("drift report uploaded to %s", uri)
        return uri

    def _due(self) -> bool:
        with self._state_lock:
            if self._rows_since >= self.settings.every_rows:
                return True
            waited = time.monotonic() - self._last_run
            return (
                self._rows_since > 0
                and waited >= self.settings.drift_every_seconds
                and (len(self.window) >= self.policy.min_rows)
            )

    def _loop(self) -> None:
        try:  # import once up front (seconds), not at the first window
            import evidently.legacy.calculations.stattests  # noqa: F401
        except Exception:  # pragma: no cover - the first computation reports it again
            log.exception("cannot import evidently")
        self.ready = True
        while not self._stop.is_set():
            self._wake.wait(timeout=min(1.0, self.settings.drift_every_seconds))
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                if self._due():
                    self.run_drift()
                if (
                    self.settings.report_uri
                    and self.latest is not None
                    and time.monotonic() - self._last_upload >= self.settings.report_every_seconds
                ):
                    self.upload_report()
            except Exception:
                # The sidecar keeps serving; the error is logged and counted, the next window tries again.
                self.errors += 1
                log.exception("drift computation failed")

    def start(self) -> None:
        if self._worker is None:
            self._worker = threading.Thread(target=self._loop, name="visionops-drift-worker", daemon=True)
            self._worker.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._worker is not None:
            self._worker.join(timeout=30)

    @property
    def worker_alive(self) -> bool:
        return self._worker is not None and self._worker.is_alive()


def _spec(name: str):
    from visionops.features import spec_for

    return spec_for(name)


class _Metrics:
    """The sidecar's Prometheus metrics (names: docs/ARCHITECTURE.md), in their own registry."""

    def __init__(self, model_version: str) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge

        r = self.registry = CollectorRegistry(auto_describe=True)
        self.share = Gauge(
            "visionops_drift_share",
            "Share of monitored columns that drifted in the last window",
            ["model_version"],
            registry=r,
        )
        self.detected = Gauge(
            "visionops_drift_detected",
            "1 when the last window drifted (share >= drift_share or prediction drift)",
            ["model_version"],
            registry=r,
        )
        self.feature_score = Gauge(
            "visionops_feature_drift_score",
            "Drift score of a column in the last window (normed Wasserstein / Jensen-Shannon distance)",
            ["feature"],
            registry=r,
        )
        self.feature_drifted = Gauge(
            "visionops_feature_drifted",
            "1 when the column drifted in the last window",
            ["feature"],
            registry=r,
        )
        self.window_rows = Gauge("visionops_drift_window_rows", "Rows held in the window", registry=r)
        self.consecutive = Gauge(
            "visionops_drift_consecutive_windows", "Consecutive windows with drift", registry=r
        )
        self.received = Counter("visionops_monitor_rows_received", "Feature rows received", registry=r)
        self.rejected = Counter(
            "visionops_monitor_rows_rejected", "Feature rows refused by the schema check", registry=r
        )
        self.dropped = Counter(
            "visionops_monitor_rows_dropped",
            "Rows pushed out of the window before any drift computation saw them",
            registry=r,
        )
        self.last_run = Gauge(
            "visionops_drift_last_run_timestamp_seconds", "When drift was last computed", registry=r
        )
        self.last_duration = Gauge(
            "visionops_drift_last_duration_seconds", "How long the last drift computation took", registry=r
        )
        self.class_share = Gauge(
            "visionops_prediction_class_share",
            "Share of each predicted label in the last window",
            ["label"],
            registry=r,
        )
        self.mean_confidence = Gauge(
            "visionops_mean_confidence", "Mean confidence in the last window", registry=r
        )
        self.live_precision = Gauge(
            "visionops_live_precision",
            "Precision of the positive class over the labelled window (NaN until defined)",
            registry=r,
        )
        self.live_recall = Gauge(
            "visionops_live_recall", "Recall of the positive class over the labelled window", registry=r
        )
        self.live_labels = Gauge(
            "visionops_live_labels_window", "Ground-truth labels in the quality window", registry=r
        )
        self.estimated_prevalence = Gauge(
            "visionops_estimated_prevalence",
            "Share of the positive class in the last window, corrected for the model's TPR/FPR (adjusted count)",
            registry=r,
        )
        self.retrain_alert = Gauge(
            "visionops_retrain_alert", "1 while a retraining condition holds", registry=r
        )
        self.triggered = Counter(
            "visionops_retrain_triggered", "Retraining trigger outcomes", ["outcome"], registry=r
        )
        self.live_precision.set(float("nan"))
        self.live_recall.set(float("nan"))
        self.share.labels(model_version=model_version).set(0)
        self.detected.labels(model_version=model_version).set(0)

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # headers and body go out in separate writes: without TCP_NODELAY, Nagle + delayed ACK add ~40 ms
    # to every keep-alive request
    disable_nagle_algorithm = True
    monitor: Monitor  # set on the subclass made by MonitorServer

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, data: Any) -> None:
        self._send(status, json.dumps(data, default=str).encode(), "application/json")

    def _body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            self.rfile.read(length)
            raise _HttpError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body over {MAX_BODY_BYTES} bytes")
        raw = self.rfile.read(length)
        try:
            return json.loads(raw or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise _HttpError(HTTPStatus.BAD_REQUEST, f"body is not JSON: {exc}") from exc

    def do_GET(self) -> None:
        m = self.monitor
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            m.metrics.window_rows.set(len(m.window))
            self._send(200, m.metrics.render(), "text/plain; version=0.0.4; charset=utf-8")
        elif path == "/drift":
            self._json(200, m.latest_public())
        elif path == "/report":
            html = m.report_html()
            if html is None:
                self._json(
                    404, {"detail": "no drift computed yet; the first report comes with the first window"}
                )
            else:
                self._send(200, html.encode(), "text/html; charset=utf-8")
        elif path == "/healthz":
            self._json(200, {"status": "ok"})
        elif path == "/readyz":
            ready = m.ready and m.worker_alive
            self._json(
                200 if ready else 503,
                {"ready": ready, "model_version": m.model_version, "reference_rows": len(m.reference)},
            )
        else:
            self._json(404, {"detail": f"no endpoint {path}"})

    def do_POST(self) -> None:
        m = self.monitor
        path = self.path.split("?", 1)[0]
        try:
            body = self._body()
            if path == "/ingest":
                rows = body.get("rows") if isinstance(body, dict) else None
                if not isinstance(rows, list):
                    raise _HttpError(422, 'expected {"rows": [feature rows]}')
                if len(rows) > m.settings.max_rows_per_request:
                    raise _HttpError(
                        413, f"{len(rows)} rows in one request; at most {m.settings.max_rows_per_request}"
                    )
                accepted, bad = m.ingest(rows)
                if bad:
                    self._json(422, {"accepted": accepted, "rejected": len(bad), "errors": bad[:20]})
                else:
                    self._json(200, {"accepted": accepted})
            elif path == "/feedback":
                items = body.get("labels", [body]) if isinstance(body, dict) else None
                if not isinstance(items, list):
                    raise _HttpError(422, 'expected {"request_id": ..., "label": ...} or {"labels": [...]}')
                matched, problems = m.feedback(items)
                quality = m.quality.summary()
                status = (
                    200
                    if not problems
                    else (404 if all("unknown" in p["errors"][0] for p in problems) else 422)
                )
                self._json(status, {"matched": matched, "errors": problems[:20], "quality": quality})
            elif path == "/alerts":
                results = m.trigger.handle_alertmanager(body)
                m.metrics.retrain_alert.set(m.trigger.alert)
                self._json(200, {"results": results, "retrain_alert": m.trigger.alert})
            else:
                self._json(404, {"detail": f"no endpoint {path}"})
        except _HttpError as exc:
            self._json(exc.status, {"detail": exc.detail})
        except VisionOpsError as exc:
            self._json(422, {"detail": str(exc)})


class _HttpError(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = int(status), detail


class MonitorServer:
    """The HTTP server around a :class:`Monitor`; ``start()`` runs it in a thread, ``serve_forever()`` here."""

    def __init__(self, monitor: Monitor, host: str | None = None, port: int | None = None) -> None:
        handler = type("MonitorHandler", (_Handler,), {"monitor": monitor})
        self.monitor = monitor
        try:
            self.httpd = ThreadingHTTPServer(
                (host or monitor.settings.host, monitor.settings.port if port is None else port), handler
            )
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {host or monitor.settings.host}:{port}: {exc.strerror}"
            ) from exc
        self.httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> MonitorServer:
        self.monitor.start()
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, name="visionops-monitor-http", daemon=True
        )
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self.monitor.start()
        try:
            self.httpd.serve_forever()
        finally:
            self.stop()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.monitor.stop()


def serve(settings: MonitorSettings) -> None:
    """Run the sidecar until interrupted (what ``visionops monitor`` calls)."""
    monitor = Monitor(settings)
    server = MonitorServer(monitor)
    log.info(
        "drift monitor for model %s on %s:%d (window %d rows, drift every %d rows or %.0fs)",
        monitor.model_version,
        settings.host,
        server.port,
        settings.window_size,
        settings.every_rows,
        settings.drift_every_seconds,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        log.info("drift monitor stopped")
