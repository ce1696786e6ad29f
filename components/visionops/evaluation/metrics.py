"""Pure metrics on labels and scores (numpy/scipy/scikit-learn): intervals, per-class figures, curves, calibration.

Nothing here touches a model; the gate and the tests use these on plain arrays.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from visionops.errors import ConfigError
from visionops.policy import CONFIDENCE

INTERVAL_METHODS = ("wilson", "clopper-pearson")
MAX_CURVE_POINTS = 200


def proportion_interval(
    k: int, n: int, *, confidence: float = CONFIDENCE, method: str = "wilson"
) -> tuple[float, float]:
    """Two-sided ``confidence`` interval for a binomial proportion ``k / n``.

    ``wilson`` is the Wilson score interval; ``clopper-pearson`` the exact (beta) interval, never narrower
    than it should be. With ``n == 0`` nothing is known: ``(0.0, 1.0)``.
    """
    from scipy import stats

    if method not in INTERVAL_METHODS:
        raise ConfigError(f"unknown interval method {method!r}; valid: {', '.join(INTERVAL_METHODS)}")
    if not 0.0 < confidence < 1.0:
        raise ConfigError(f"confidence must be in (0, 1), got {confidence}")
    k, n = int(k), int(n)
    if n < 0 or not 0 <= k <= n:
        raise ConfigError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return 0.0, 1.0
    alpha = 1.0 - confidence
    if method == "clopper-pearson":
        lo = 0.0 if k == 0 else float(stats.beta.ppf(alpha / 2, k, n - k + 1))
        hi = 1.0 if k == n else float(stats.beta.ppf(1 - alpha / 2, k + 1, n - k))
        return lo, hi
    z = float(stats.norm.ppf(1 - alpha / 2))
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def lower_bounds(k: np.ndarray, n: np.ndarray, *, confidence: float, method: str) -> np.ndarray:
    """Vectorised lower bounds of :func:`proportion_interval` (used by the threshold sweep)."""
    from scipy import stats

    if method not in INTERVAL_METHODS:
        raise ConfigError(f"unknown interval method {method!r}; valid: {', '.join(INTERVAL_METHODS)}")
    k = np.asarray(k, dtype=float)
    n = np.asarray(n, dtype=float)
    alpha = 1.0 - confidence
    out = np.zeros_like(k)
    ok = n > 0
    if method == "clopper-pearson":
        pos = ok & (k > 0)
        out[pos] = stats.beta.ppf(alpha / 2, k[pos], n[pos] - k[pos] + 1)
        return out
    z = float(stats.norm.ppf(1 - alpha / 2))
    nn, kk = n[ok], k[ok]
    p = kk / nn
    denom = 1 + z * z / nn
    centre = (p + z * z / (2 * nn)) / denom
    half = z / denom * np.sqrt(p * (1 - p) / nn + z * z / (4 * nn * nn))
    out[ok] = np.clip(centre - half, 0.0, 1.0)
    return out


def weighted_rate(hits, weights=None, *, confidence: float = CONFIDENCE) -> dict[str, Any]:
    """A proportion estimated from labelled items that were *sampled*, each weighted by the inverse of its
    selection probability (None = a uniform random sample), with a two-sided ``confidence`` interval.

    The one estimator of live quality from labels that represent traffic: the drift monitor's live precision
    (:mod:`visionops.drift.quality`) and experiment analysis use it. For live precision ``hits`` says, for each
    labelled item the model called positive, whether it really is positive; for recall, for each labelled
    positive, whether the model called it positive.

    The estimate is the weighted share (Hajek); the interval is Clopper-Pearson on Kish's effective sample
    size ``(sum w)^2 / sum w^2`` (Korn and Graubard): exact when all weights are equal, and it widens as the
    weights spread. Labels chosen by uncertainty sampling without their selection probability are biased and
    must not be passed here.
    """
    from scipy import stats

    h = np.asarray(hits, dtype=bool)
    w = np.ones(len(h)) if weights is None else np.asarray(weights, dtype=float)
    if w.shape != h.shape:
        raise ConfigError(f"got {len(w)} weights for {len(h)} items")
    if len(w) and (not np.all(np.isfinite(w)) or w.min() <= 0):
        raise ConfigError("weights must be finite and > 0 (1 / selection probability)")
    if len(h) == 0:
        return {"estimate": None, "lower": 0.0, "upper": 1.0, "n": 0, "effective_n": 0.0}
    estimate = float((w * h).sum() / w.sum())
    n_eff = float(w.sum() ** 2 / (w**2).sum())
    k_eff = estimate * n_eff
    alpha = (1.0 - confidence) / 2.0
    lower = 0.0 if k_eff <= 0 else float(stats.beta.ppf(alpha, k_eff, n_eff - k_eff + 1))
    upper = 1.0 if k_eff >= n_eff else float(stats.beta.ppf(1 - alpha, k_eff + 1, n_eff - k_eff))
    return {"estimate": estimate, "lower": lower, "upper": upper, "n": len(h), "effective_n": n_eff}


def two_proportion_pvalue(k1: int, n1: int, k2: int, n2: int) -> float:
    """One-sided p-value that proportion 1 is lower than proportion 2 (pooled two-proportion z-test)."""
    from scipy import stats

    if n1 == 0 or n2 == 0:
        return 1.0
    p1, p2 = k1 / n1, k2 / n2
    pooled = (k1 + k2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:
        return 1.0 if p1 >= p2 else 0.0
    return float(stats.norm.cdf((p1 - p2) / se))


def decide(probs: np.ndarray, positive_index: int, threshold: float) -> np.ndarray:
    """Predicted class indices with the bundle's own decision rule (:func:`visionops.bundle.decide_indices`)."""
    from visionops.bundle import decide_indices

    return decide_indices(probs, positive_index, threshold)


def at_threshold(
    y_true: np.ndarray, scores: np.ndarray, threshold: float, *, confidence: float, method: str
) -> dict[str, Any]:
    """Precision and recall of the positive class (``y_true`` is 0/1) at ``threshold``, with intervals."""
    y_true = np.asarray(y_true).astype(bool)
    pred = np.asarray(scores) >= threshold
    tp, fp = int((pred & y_true).sum()), int((pred & ~y_true).sum())
    fn = int((~pred & y_true).sum())
    n_pred, n_pos = tp + fp, tp + fn
    return {
        "threshold": float(threshold),
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": int((~pred & ~y_true).sum()),
        "precision": tp / n_pred if n_pred else None,
        "precision_interval": list(proportion_interval(tp, n_pred, confidence=confidence, method=method)),
        "recall": tp / n_pos if n_pos else None,
        "recall_interval": list(proportion_interval(tp, n_pos, confidence=confidence, method=method)),
        "n_predicted_positive": n_pred,
        "n_positive": n_pos,
    }


def downsample(n: int, max_points: int = MAX_CURVE_POINTS) -> np.ndarray:
    """At most ``max_points`` evenly spread indices into a length-``n`` curve, first and last kept."""
    if n <= max_points:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, max_points).round().astype(int))


def _finite(values: np.ndarray) -> list[float]:
    """JSON-safe floats: sklearn's leading ``inf`` threshold becomes 1.0 (nothing is predicted positive)."""
    return [float(min(v, 1.0)) if np.isfinite(v) else 1.0 for v in values]


def calibration(y_true: np.ndarray, scores: np.ndarray, *, bins: int = 10) -> dict[str, Any]:
    """Reliability curve (equal-width bins) and expected calibration error of the positive-class probability."""
    y_true = np.asarray(y_true, dtype=float)
    scores = np.asarray(scores, dtype=float)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(scores, edges[1:-1], right=False), 0, bins - 1)
    rows, ece = [], 0.0
    for b in range(bins):
        mask = which == b
        count = int(mask.sum())
        if count:
            conf, freq = float(scores[mask].mean()), float(y_true[mask].mean())
            ece += count / len(scores) * abs(conf - freq)
        else:
            conf = freq = None
        rows.append(
            {
                "bin_low": float(edges[b]),
                "bin_high": float(edges[b + 1]),
                "count": count,
                "mean_predicted": conf,
                "fraction_positive": freq,
            }
        )
    return {"bins": rows, "ece": float(ece), "n_bins": bins}


def classification_report(
    y_true: np.ndarray,
    probs: np.ndarray,
    classes: list[str],
    positive_index: int,
    threshold: float,
    *,
    confidence: float = CONFIDENCE,
    method: str = "wilson",
) -> dict[str, Any]:
    """Every quality figure of one split: per-class precision/recall/F1, accuracy, balanced accuracy,
    ROC AUC and PR AUC (positive class vs the rest), confusion matrix, ROC/PR curves (<= 200 points each),
    calibration, and precision/recall of the positive class at ``threshold`` with intervals.

    ``y_true`` holds class indices into ``classes``; ``probs`` is (N, C).
    """
    from sklearn import metrics as skm

    y_true = np.asarray(y_true, dtype=int)
    probs = np.asarray(probs, dtype=float)
    labels = list(range(len(classes)))
    y_pred = decide(probs, positive_index, threshold)
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    per_class = {
        name: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, name in enumerate(classes)
    }
    is_pos = (y_true == positive_index).astype(int)
    scores = probs[:, positive_index]
    both = 0 < is_pos.sum() < len(is_pos)
    out: dict[str, Any] = {
        "n": len(y_true),
        "threshold": float(threshold),
        "per_class": per_class,
        "accuracy": float(skm.accuracy_score(y_true, y_pred)),
        "balanced_accuracy": float(skm.balanced_accuracy_score(y_true, y_pred)) if len(y_true) else None,
        "macro_f1": float(np.mean(f1)),
        "roc_auc": float(skm.roc_auc_score(is_pos, scores)) if both else None,
        "pr_auc": float(skm.average_precision_score(is_pos, scores)) if both else None,
        "confusion_matrix": {
            "labels": list(classes),
            "matrix": skm.confusion_matrix(y_true, y_pred, labels=labels).astype(int).tolist(),
        },
        "positive": at_threshold(is_pos, scores, threshold, confidence=confidence, method=method),
        "calibration": calibration(is_pos, scores),
    }
    if both:
        fpr, tpr, thr = skm.roc_curve(is_pos, scores)
        keep = downsample(len(fpr))
        out["roc"] = {"fpr": fpr[keep].tolist(), "tpr": tpr[keep].tolist(), "thresholds": _finite(thr[keep])}
        prec, rec, thr = skm.precision_recall_curve(is_pos, scores)
        keep = downsample(len(thr))
        out["pr"] = {
            "precision": prec[keep].tolist(),
            "recall": rec[keep].tolist(),
            "thresholds": _finite(thr[keep]),
        }
    else:
        out["roc"] = {"fpr": [], "tpr": [], "thresholds": []}
        out["pr"] = {"precision": [], "recall": [], "thresholds": []}
    return out
