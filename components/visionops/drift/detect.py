"""Every Evidently call of the project lives here (Evidently 0.7 API, pinned ``evidently>=0.7,<0.8``).

Evidently 0.7 facts this module relies on (see DESIGN.md pitfalls):

- ``Report([DataDriftPreset(...)]).run(current, reference)``: *current first*;
- without a pinned method the per-column score silently changes meaning at 1,000 reference rows (K-S p-value
  below, normed Wasserstein above), so :class:`DriftPolicy` always pins the method and threshold; the
  drifted flag is Evidently's own per-column test status;
- there is no dataset-level flag: :func:`compute_drift` computes ``share >= drift_share`` itself;
- ``Report.run`` builds the plotly widgets of every column even when no HTML is wanted (about 2 s for 20
  columns on 2 cores: most of the cost), so :func:`compute_drift` calls Evidently's registered stat tests
  directly (the functions the preset calls; ~0.1 s) and :func:`render_html` runs the full
  ``Report([DataDriftPreset(...)])`` only when a report is asked for (``/report``, uploads);
- the import takes seconds and ~300 MB: it happens inside the functions, never at module import.

The decision rule (tuned with ``benchmarks/bench_drift.py``; see docs/drift.md): a window drifts when

- the share of drifted columns reaches ``drift_share`` (broad drift: many statistics moved a little), or
- the prediction distribution drifts on its own (``predicted_class``): a class-prior shift changes what the
  model answers long before it moves many image statistics, or
- one numeric column moved severely (score >= ``severe_threshold``, about one reference standard deviation),
  e.g. every image blurred: only sharpness moves, but by a lot.
"""

from __future__ import annotations

import math
import re
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

from visionops.errors import ConfigError
from visionops.features import FEATURE_SCHEMA, spec_for

NUM_METHODS = (
    "wasserstein",
    "ks",
    "psi",
    "kl_div",
    "hellinger",
    "ed",
    "anderson",
    "cramer_von_mises",
    "mannw",
    "t_test",
    "empirical_mmd",
)
CAT_METHODS = (
    "jensenshannon",
    "chisquare",
    "z",
    "psi",
    "kl_div",
    "hellinger",
    "TVD",
    "fisher_exact",
    "g_test",
)
PREDICTION_COLUMNS = ("predicted_class",)
#: calibrated mode: share of a window's rows with another value that makes a reference-constant column drift
CONSTANT_SHARE = 0.1


@dataclass(frozen=True)
class DriftPolicy:
    """How a window is compared with the reference. Defaults are tuned by benchmarks/bench_drift.py."""

    num_method: str = "wasserstein"
    num_threshold: float = 0.25
    cat_method: str = "jensenshannon"
    cat_threshold: float = 0.1
    #: dataset drift when at least this share of the monitored columns drift ...
    drift_share: float = 0.3
    #: ... or when any of these columns drifts on its own (prediction drift)
    prediction_columns: tuple[str, ...] = PREDICTION_COLUMNS
    #: columns never monitored (e.g. width/height when every client resizes before sending)
    exclude: tuple[str, ...] = ()
    #: per-column threshold overrides
    thresholds: dict[str, float] = field(default_factory=dict)
    #: ... or when any numeric column's score reaches this (severe drift of one column: with normed
    #: Wasserstein, a shift of about one reference standard deviation, e.g. every image blurred); None = off
    severe_threshold: float | None = 1.0
    #: a window with fewer rows is not compared (too noisy to mean anything)
    min_rows: int = 50

    def __post_init__(self) -> None:
        if self.num_method not in NUM_METHODS:
            raise ConfigError(f"num_method {self.num_method!r} unknown; valid: {', '.join(NUM_METHODS)}")
        if self.cat_method not in CAT_METHODS:
            raise ConfigError(f"cat_method {self.cat_method!r} unknown; valid: {', '.join(CAT_METHODS)}")
        if not 0.0 < self.drift_share <= 1.0:
            raise ConfigError(f"drift_share must be in (0, 1], got {self.drift_share}")
        if self.min_rows < 2:
            raise ConfigError(f"min_rows must be at least 2, got {self.min_rows}")

    def method_for(self, kind: str) -> tuple[str, float]:
        return (
            (self.num_method, self.num_threshold) if kind == "num" else (self.cat_method, self.cat_threshold)
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def monitored_columns(reference_columns, policy: DriftPolicy) -> dict[str, str]:
    """Column -> kind ("num"/"cat") for every feature column of the reference that is monitored."""
    out = {}
    for name in reference_columns:
        spec = spec_for(name)
        if spec is not None and name not in policy.exclude:
            out[name] = spec.kind
    return out


def _column_test(ref, cur, kind: str, method: str, threshold: float) -> tuple[float, bool]:
    """Evidently's registered stat test for one column: (score, drifted as Evidently's test status says)."""
    import evidently.legacy.calculations.stattests  # noqa: F401 -- registers every stat test
    import numpy as np
    from evidently.legacy.calculations.stattests.registry import get_stattest
    from evidently.legacy.core import ColumnType

    column_type = ColumnType.Numerical if kind == "num" else ColumnType.Categorical
    test = get_stattest(ref, cur, column_type, method)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        result = test(ref, cur, column_type, threshold)
    return float(result.drift_score), bool(result.drifted)


def _evidently_report(reference, current, columns: dict[str, str], policy: DriftPolicy):
    """The full Evidently report (widgets included), ``Report.run(current, reference)``: for rendering."""
    import numpy as np
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    num = [c for c, k in columns.items() if k == "num"]
    cat = [c for c, k in columns.items() if k == "cat"]
    definition = DataDefinition(numerical_columns=num, categorical_columns=cat)
    preset = DataDriftPreset(
        columns=list(columns),
        num_method=policy.num_method,
        num_threshold=policy.num_threshold,
        cat_method=policy.cat_method,
        cat_threshold=policy.cat_threshold,
        per_column_threshold=dict(policy.thresholds) or None,
        drift_share=policy.drift_share,
    )
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        # constant columns (e.g. is_greyscale = 0 everywhere) make the correlation widgets divide by 0
        warnings.simplefilter("ignore", RuntimeWarning)
        return Report([preset]).run(
            Dataset.from_pandas(current, data_definition=definition),
            Dataset.from_pandas(reference, data_definition=definition),
        )


def _constant_column_score(ref, cur) -> float:
    """A reference column with one value: any other value in the window is drift (Wasserstein divides by
    the reference's spread, which is 0 here). The score is the share of rows with another value."""
    value = ref.iloc[0]
    return float((cur != value).mean()) if len(cur) else 0.0


def compute_drift(
    reference,
    current,
    policy: DriftPolicy | None = None,
    *,
    keep_frames: bool = False,
    calibration: dict | None = None,
) -> dict:
    """Compare a window (DataFrame of feature rows) with the reference; the result is JSON-ready.

    With ``calibration`` (the reference's, from :mod:`visionops.drift.calibration`, kept in the bundle) a
    column drifts when its standardised score passes the threshold calibrated for this window size, and the
    window drifts when any column does: a false-alarm rate per window that holds from the smallest window to
    10,000 rows. Without it, the fixed thresholds of ``policy`` decide (see the module docstring).

    With ``keep_frames=True`` the compared frames are kept under ``"_frames"`` (for :func:`render_html`);
    private entries are never serialised (see :func:`public`).
    """
    import pandas as pd

    policy = policy or DriftPolicy()
    started = time.perf_counter()
    columns = monitored_columns(reference.columns, policy)
    missing = [c for c in columns if c not in current.columns]
    if missing:
        raise ConfigError(
            f"the window lacks columns the reference has: {missing}; serving and the reference must use the "
            "same feature code (visionops.features) and the same bundle"
        )
    if len(current) < policy.min_rows:
        raise ConfigError(f"a window needs at least {policy.min_rows} rows to compare, got {len(current)}")
    ref = reference[list(columns)].copy()
    cur = current[list(columns)].copy()
    for name, kind in columns.items():
        if kind == "cat":
            ref[name] = ref[name].astype(str)
            cur[name] = cur[name].astype(str)
        else:
            ref[name] = pd.to_numeric(ref[name], errors="coerce").astype(float)
            cur[name] = pd.to_numeric(cur[name], errors="coerce").astype(float)
    if calibration is not None:
        features, extra = _calibrated_features(ref, cur, columns, calibration)
    else:
        features, extra = _fixed_features(ref, cur, columns, policy), {}
    result: dict[str, Any] = {
        "timestamp": time.time(),
        "rows": len(current),
        "reference_rows": len(reference),
        **verdict(features, policy),
        **extra,
        "class_shares": _shares(current, "predicted_class"),
        "reference_class_shares": _shares(reference, "predicted_class"),
        "mean_confidence": _mean(current, "confidence"),
        "policy": policy.to_dict(),
    }
    if calibration is not None:
        result["dataset_drift"] = bool(result["drifted_features"])
        result["severe_features"] = []
    result["duration_s"] = round(time.perf_counter() - started, 4)
    if keep_frames:
        # for render_html: the window and the reference, as compared (one window: bounded)
        result["_frames"] = (ref, cur, columns)
    return result


def _calibrated_features(ref, cur, columns: dict[str, str], calibration: dict) -> tuple[dict, dict]:
    """Per-column results at the thresholds calibrated for this window size."""
    from visionops.drift.calibration import calibrated_verdict, window_scores

    calibrated = {c: k for c, k in columns.items() if c in calibration["columns"]}
    scores = window_scores(ref, cur, calibrated)
    judged = calibrated_verdict(scores, calibration, len(cur))
    features = {
        name: {
            "score": round(float(scores[name]), 6),
            "standardised": judged["standardised"].get(name),
            "drifted": name in judged["flagged"],
            "method": ("wasserstein" if kind == "num" else "jensenshannon") + " (calibrated)",
            "threshold": judged["threshold"],
            "kind": kind,
        }
        for name, kind in calibrated.items()
    }
    # a column constant on the reference stays constant in every null draw, so the bootstrap cannot calibrate
    # it: a window drifts there when at least CONSTANT_SHARE of its rows hold another value
    for name, kind in columns.items():
        if name not in calibrated:
            score = _constant_column_score(ref[name].astype(str), cur[name].astype(str))
            features[name] = {
                "score": round(score, 6),
                "standardised": None,
                "drifted": score >= CONSTANT_SHARE,
                "method": "constant",
                "threshold": CONSTANT_SHARE,
                "kind": kind,
            }
    extra = {
        "calibrated": {k: judged[k] for k in ("calibrated_size", "threshold", "statistic", "alarm_rate")}
    }
    return features, extra


def _fixed_features(ref, cur, columns: dict[str, str], policy: DriftPolicy) -> dict:
    """Per-column results at the policy's fixed thresholds (Evidently's own test status)."""
    constant = [c for c, k in columns.items() if k == "num" and ref[c].nunique(dropna=True) <= 1]
    features = {}
    for name, kind in columns.items():
        method, threshold = policy.method_for(kind)
        threshold = float(policy.thresholds.get(name, threshold))
        if name in constant:
            method, score = "constant", _constant_column_score(ref[name], cur[name])
            drifted = score >= threshold
        else:
            score, drifted = _column_test(ref[name], cur[name], kind, method, threshold)
        features[name] = {
            "score": None if math.isnan(score) else round(float(score), 6),
            "drifted": bool(drifted),
            "method": method,
            "threshold": threshold,
            "kind": kind,
        }
    return features


def verdict(features: dict[str, dict], policy: DriftPolicy) -> dict[str, Any]:
    """The window's verdict from per-column results: the share of drifted columns, data drift
    (``share >= drift_share``), prediction drift (a prediction column drifted), severely drifted columns, and
    dataset drift (any of the three)."""
    drifted = sorted(n for n, f in features.items() if f["drifted"])
    share = len(drifted) / len(features) if features else 0.0
    prediction_drift = any(features.get(c, {}).get("drifted", False) for c in policy.prediction_columns)
    severe = sorted(
        n
        for n, f in features.items()
        if policy.severe_threshold is not None
        and f.get("kind") == "num"
        and f.get("method") != "constant"
        and f.get("score") is not None
        and f["score"] >= policy.severe_threshold
    )
    return {
        "features": features,
        "drifted_features": drifted,
        "drifted_count": len(drifted),
        "share": round(share, 6),
        "drift_share": policy.drift_share,
        "data_drift": share >= policy.drift_share,
        "prediction_drift": bool(prediction_drift),
        "severe_features": severe,
        "dataset_drift": bool(share >= policy.drift_share or prediction_drift or severe),
    }


def _shares(frame, column: str) -> dict[str, float]:
    if column not in frame.columns or frame.empty:
        return {}
    return {
        str(k): round(float(v), 6) for k, v in frame[column].astype(str).value_counts(normalize=True).items()
    }


def _mean(frame, column: str) -> float | None:
    if column not in frame.columns or frame.empty:
        return None
    return round(float(frame[column].astype(float).mean()), 6)


def public(result: dict) -> dict:
    """The result without private entries (the compared frames)."""
    return {k: v for k, v in result.items() if not k.startswith("_")}


def render_html(result: dict, *, title: str = "VisionOps drift report") -> str:
    """A self-contained HTML page: our summary table on top of Evidently's own report (when kept).

    Evidently's page inlines its scripts; the summary uses :mod:`visionops.reports`.
    """
    from visionops import reports

    rows = [
        {
            "feature": name,
            "method": f["method"],
            "score": f["score"],
            "threshold": f["threshold"],
            "drifted": "fail" if f["drifted"] else "pass",
        }
        for name, f in sorted(result.get("features", {}).items())
    ]
    verdict = "DRIFT" if result.get("dataset_drift") else "no drift"
    summary = (
        f"<div class='card'><b>{reports.escape(verdict)}</b>: {result.get('drifted_count', 0)} of "
        f"{len(rows)} columns drifted (share {reports.fmt(result.get('share', 0.0))}, dataset drift at "
        f">= {reports.fmt(result.get('drift_share', 0.0))}); prediction drift: "
        f"{reports.fmt(bool(result.get('prediction_drift')))}; window of {result.get('rows')} rows vs a "
        f"reference of {result.get('reference_rows')} rows; model {reports.escape(result.get('model_version', ''))}."
        "</div>"
    )
    shares = [
        {
            "label": k,
            "window share": v,
            "reference share": result.get("reference_class_shares", {}).get(k, 0.0),
        }
        for k, v in sorted(result.get("class_shares", {}).items())
    ]
    page = reports.html_page(
        title,
        [
            ("Verdict", summary),
            ("Columns", reports.html_table(rows)),
            ("Predicted classes", reports.html_table(shares)),
        ],
        subtitle=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(result.get("timestamp", time.time()))),
    )
    frames = result.get("_frames")
    if frames is None:
        return page
    ref, cur, columns = frames
    policy = DriftPolicy(**{k: tuple(v) if isinstance(v, list) else v for k, v in result["policy"].items()})
    varying = {c: k for c, k in columns.items() if result["features"][c]["method"] != "constant"}
    snapshot = _evidently_report(ref[list(varying)], cur[list(varying)], varying, policy)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        evidently_html = snapshot.get_html_str(as_iframe=False)
    # One file: Evidently's (self-contained) page with our summary on top.
    page = page.replace(
        "</body>",
        "<h2>Evidently data drift report</h2><p class='muted'>Per-column distributions of the window (current) "
        "and the reference, as computed by Evidently with the pinned methods above.</p></body>",
    )
    return _inject(evidently_html, page)


def _inject(document: str, page: str) -> str:
    """Put ``page``'s styles and body at the top of ``document``'s body."""
    style = re.search(r"<style>.*?</style>", page, flags=re.S)
    body = re.search(r"<body>(.*)</body>", page, flags=re.S)
    head_end = document.find("</head>")
    if style and head_end >= 0:
        document = document[:head_end] + style.group(0) + document[head_end:]
    match = re.search(r"<body[^>]*>", document)
    if body is None or match is None:
        return document
    return document[: match.end()] + body.group(1) + document[match.end() :]


__all__ = ["FEATURE_SCHEMA", "DriftPolicy", "compute_drift", "public", "render_html"]
