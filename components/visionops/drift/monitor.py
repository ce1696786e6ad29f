"""The drift monitor's logic: schema-checked ingestion into a bounded window, drift computation in a background
worker, live quality from ground-truth feedback and the retraining trigger. The HTTP layer
(:mod:`visionops.drift.service`) only maps requests to a :class:`Monitor`.

Ingestion only appends to a bounded ring buffer (:class:`~visionops.drift.window.FeatureWindow`); the worker
compares a snapshot of the window with the bundle's reference every K rows or T seconds, so a slow drift
computation never blocks ``/ingest``. Every store is bounded (window, pending predictions, labelled pairs,
event log), and bounded in bytes as well as in rows: every string in a row or a feedback item has a length
limit (``max_string_chars``, request ids ``MAX_REQUEST_ID_CHARS``) and the request ids kept for feedback a byte
budget (``max_pending_bytes``), so memory stays flat under a stream of any length or any content.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from http import HTTPStatus
from typing import Any

from visionops.auth import MAX_REQUEST_ID_CHARS, AuthError
from visionops.drift.metrics import MonitorMetrics
from visionops.drift.settings import MonitorSettings
from visionops.errors import ConfigError

log = logging.getLogger(__name__)


class Monitor:
    """The sidecar's state and logic (the HTTP layer in :class:`MonitorServer` only maps requests to it)."""

    def __init__(
        self, settings: MonitorSettings, *, meta: dict | None = None, reference=None, policy=None
    ) -> None:
        from visionops.drift.detect import DriftPolicy, monitored_columns
        from visionops.drift.quality import LiveQuality
        from visionops.drift.reference import read_reference
        from visionops.drift.trigger import RetrainTrigger, TriggerSettings
        from visionops.drift.trigger_state import TriggerState
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
        self._specs = {name: _spec(name) for name in self.columns}  # looked up once, not per row
        if not self.columns:
            raise ConfigError(f"the drift reference of {settings.model_uri} has no feature columns")
        self.window = FeatureWindow(self.columns, settings.window_size, max_age_s=settings.window_seconds)
        self.quality = LiveQuality(
            positive_class,
            window=settings.quality_window,
            max_pending_bytes=settings.max_pending_bytes,
            target_precision=settings.target_precision,
            min_labels=settings.min_labels,
        )
        self.metrics = MonitorMetrics(self.model_version)
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
            state=TriggerState(
                settings.trigger_state_uri, ttl_s=settings.alert_ttl_s, max_alerts=settings.max_alerts
            ),
        )
        if not settings.trigger_state_uri:
            log.warning(
                "no VISIONOPS_TRIGGER_STATE_URI: a restart of the sidecar resets the trigger's cooldown"
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
        problems = self._string_problems(row)
        if problems:
            return problems
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
            spec = self._specs[name]
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

    def _string_problems(self, item: dict) -> list[str]:
        """Keys and string values over their length limits (checked first: nothing long is kept or echoed)."""
        limit = self.settings.max_string_chars
        if len(item) > 4 * limit:
            return [f"{len(item)} keys in one object; at most {4 * limit}"]
        # comprehensions, not a loop with branches: this runs for every ingested row
        problems = [f"a key of {len(k)} characters; at most {limit}" for k in item if len(k) > limit]
        problems += [
            f"{k!r} is a string of {len(v)} characters; at most {limit}"
            for k, v in item.items()
            if type(v) is str and len(v) > limit and k != "request_id"
        ]
        rid = item.get("request_id")
        if type(rid) is str and len(rid) > MAX_REQUEST_ID_CHARS:
            problems.append(f"request_id of {len(rid)} characters; at most {MAX_REQUEST_ID_CHARS}")
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

    def feedback(self, items: list, auth) -> tuple[int, list[dict]]:
        """Ground-truth labels for earlier requests; returns (matched, problems).

        ``auth`` (:class:`~visionops.auth.ControlAuth`) checks that serving issued each request id (its
        signature verifies). Each problem carries the HTTP status it stands for (``status``): 403 for an id
        serving did not sign, 404 for an id the monitor never saw (or has forgotten), 422 for a malformed item
        or an unknown label.
        """
        matched, problems = 0, []
        for i, item in enumerate(items):
            if (
                not isinstance(item, dict)
                or not isinstance(item.get("request_id"), str)
                or not isinstance(item.get("label"), str)
            ):
                problems.append(_problem(i, "need {'request_id': str, 'label': class name}"))
                continue
            too_long = self._string_problems(item)
            if too_long:
                problems.append(_problem(i, too_long[0]))
                continue
            try:
                auth.check_request_id(item["request_id"])
            except AuthError as exc:
                problems.append(_problem(i, str(exc), HTTPStatus(exc.http_status)))
                continue
            label = item["label"]
            if label not in self.classes:
                problems.append(_problem(i, f"label {label!r} is not one of {self.classes}"))
                continue
            probability_problem = _selection_probability_problem(item)
            if probability_problem:
                problems.append(_problem(i, probability_problem))
                continue
            if self.quality.add_label(item["request_id"], label, item.get("selection_probability")):
                matched += 1
            else:
                problems.append(
                    _problem(i, f"unknown request_id {item['request_id']!r}", HTTPStatus.NOT_FOUND)
                )
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
        records the TPR and FPR of its threshold. A metric of its own, separate from drift."""
        from visionops.drift.quality import adjusted_count

        info = self.threshold_info
        if info.get("recall") is None or info.get("fpr") is None:
            return None
        called = result["class_shares"].get(self.quality.positive_class, 0.0)
        estimate = adjusted_count(called, float(info["recall"]), float(info["fpr"]))
        if estimate is not None:
            self.metrics.estimated_prevalence.set(estimate)
        return estimate

    def _count_window(self, result: dict) -> None:
        """Move the "N drifted windows in a row" count: only non-overlapping windows count. A window that
        shares rows with the last counted one (time-triggered runs) is reported but does not move it."""
        start, end = result.get("window_rows_span") or (self._counted_end, self._counted_end + 1)
        result["counted"] = start >= self._counted_end
        if result["counted"]:
            self.consecutive = self.consecutive + 1 if result["dataset_drift"] else 0
            self._counted_end = end

    def _apply(self, result: dict) -> None:
        m = self.metrics
        self._count_window(result)
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
                if self.trigger.expire():
                    self.metrics.retrain_alert.set(self.trigger.alert)
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


def _selection_probability_problem(item: dict) -> str | None:
    """Why a label's ``selection_probability`` cannot weight it, or None: an uncertainty-sampled label needs
    its probability (unweighted it biases live quality towards hard images), and a probability is in (0, 1]."""
    probability = item.get("selection_probability")
    if probability is None:
        if item.get("reason") == "uncertain":
            return "an uncertainty-sampled label needs its selection_probability"
        return None
    if isinstance(probability, bool) or not isinstance(probability, int | float) or not 0 < probability <= 1:
        return f"selection_probability must be in (0, 1], got {probability!r}"
    return None


def _problem(index: int, error: str, status: HTTPStatus = HTTPStatus.UNPROCESSABLE_ENTITY) -> dict:
    """One refused feedback item: its position, the reason and the HTTP status the reason stands for."""
    return {"index": index, "errors": [error], "status": int(status)}
