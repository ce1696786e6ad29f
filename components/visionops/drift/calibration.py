"""Drift thresholds calibrated for the actual window and reference sizes.

A fixed score threshold (normed Wasserstein >= 0.25, Jensen-Shannon >= 0.1) means a different false-alarm rate
for every window size: windows of 50-150 rows false-alarm at 2-14%, windows of 10,000 almost never, and a
small reference adds noise of its own. Here the null distribution of every column's score is simulated from
the reference itself, when the reference is made: for each window size of :data:`WINDOW_SIZES`, ``draws``
pairs of (a pseudo-reference of the reference's size, a window of that size) are drawn with replacement from
the reference rows and scored exactly as a live window is (the same normed Wasserstein and Jensen-Shannon
distances Evidently computes). Each column's score is standardised by its null mean and standard deviation,
and a window's statistic is the largest standardised score over the columns; the threshold is its
``ceil((draws + 1) (1 - alarm_rate / 2))``-th smallest value over the draws: the rank that keeps the rate of
a window exchangeable with the draws at half the nominal rate, because bootstrap windows (made of the
reference's own values) sit closer to the reference than fresh traffic does (at the plain rank the measured
rate was 1.2-2.2% per window at a nominal 1%). A window of ``n`` rows uses the largest
calibrated size <= ``n`` (scores shrink as windows grow, so this errs towards fewer alarms).

The null scores are kept in the bundle (``drift/calibration.parquet``) next to the reference; the thresholds
in ``bundle.json``. benchmarks/bench_guarantees.py measures the false-alarm rate on fresh windows.

Bootstrap samples only hold reference values, so their scores are computed from counts per reference row
(a cumulative sum in each column's sorted order): a few seconds for every size, where sorting every sample
would take minutes.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np

from visionops.errors import ConfigError

log = logging.getLogger(__name__)

WINDOW_SIZES = (50, 100, 200, 500, 1000, 2000, 5000, 10000)
CALIBRATION_FILE = "drift/calibration.parquet"
DEFAULT_DRAWS = 400
DEFAULT_ALARM_RATE = 0.01
MIN_STD = 0.001  # Evidently's floor for the reference spread in the normed Wasserstein distance
BOOTSTRAP_SAFETY = 2.0  # the rank is taken at alarm_rate / this (see the module docstring)


def wasserstein_norm(reference: np.ndarray, current: np.ndarray) -> float:
    """Evidently's normed Wasserstein distance: W1(reference, current) / max(std(reference), 0.001)."""
    from scipy import stats

    return float(stats.wasserstein_distance(reference, current) / max(float(np.std(reference)), MIN_STD))


def jensenshannon(reference: np.ndarray, current: np.ndarray) -> float:
    """Evidently's Jensen-Shannon distance (natural log) between the category shares of two columns."""
    from scipy.spatial import distance

    keys = sorted(set(reference.tolist()) | set(current.tolist()))
    ref = np.array([np.sum(reference == k) for k in keys], dtype=float) / len(reference)
    cur = np.array([np.sum(current == k) for k in keys], dtype=float) / len(current)
    return float(distance.jensenshannon(ref, cur))


def window_scores(reference, current, columns: dict[str, str]) -> dict[str, float]:
    """Each monitored column's score of a window against the reference (the live side of the calibration)."""
    out = {}
    for name, kind in columns.items():
        ref = reference[name].to_numpy()
        cur = current[name].to_numpy()
        if kind == "num":
            out[name] = wasserstein_norm(ref.astype(float), cur.astype(float))
        else:
            out[name] = jensenshannon(ref.astype(str), cur.astype(str))
    return out


def _num_null(values: np.ndarray, ref_counts: np.ndarray, win_counts: np.ndarray) -> np.ndarray:
    """Normed W1 between count-weighted samples of ``values`` (rows: draws): the exact distance, from the
    cumulative shares in sorted order times the gaps between consecutive values.

    The distance is normed by the spread of the whole reference, as a live window's is
    (:func:`wasserstein_norm`), not by each pseudo-reference's: for a rare value (a binary column that is 1 on
    0.5% of the reference) many pseudo-references hold none of it, their spread falls to the 0.001 floor and
    the null's standard deviation explodes, so standardised, even a window that is 1 everywhere looked normal.
    """
    order = np.argsort(values, kind="stable")
    v = values[order]
    gaps = np.diff(v)
    a = ref_counts[:, order]
    b = win_counts[:, order]
    fa = np.cumsum(a, axis=1)[:, :-1] / a.sum(axis=1, keepdims=True)
    fb = np.cumsum(b, axis=1)[:, :-1] / b.sum(axis=1, keepdims=True)
    w1 = np.abs(fa - fb) @ gaps
    return w1 / max(float(np.std(values)), MIN_STD)


def _cat_null(codes: np.ndarray, ref_counts: np.ndarray, win_counts: np.ndarray) -> np.ndarray:
    """Jensen-Shannon distance between the category shares of count-weighted samples (rows: draws)."""
    k = int(codes.max()) + 1
    onehot = np.zeros((len(codes), k))
    onehot[np.arange(len(codes)), codes] = 1.0
    p = ref_counts @ onehot
    q = win_counts @ onehot
    p /= p.sum(axis=1, keepdims=True)
    q /= q.sum(axis=1, keepdims=True)
    mid = (p + q) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        kl_p = np.where(p > 0, p * np.log(p / mid), 0.0).sum(axis=1)
        kl_q = np.where(q > 0, q * np.log(q / mid), 0.0).sum(axis=1)
    return np.sqrt(np.maximum((kl_p + kl_q) / 2, 0.0))


def null_scores(reference, columns: dict[str, str], window: int, *, draws: int, seed: int) -> np.ndarray:
    """(draws, columns) scores of windows of ``window`` rows drawn from the reference, each against a
    pseudo-reference drawn the same way (both with replacement)."""
    rng = np.random.default_rng(seed)
    m = len(reference)
    ref_counts = np.stack([np.bincount(rng.integers(0, m, m), minlength=m) for _ in range(draws)]).astype(
        float
    )
    win_counts = np.stack([np.bincount(rng.integers(0, m, window), minlength=m) for _ in range(draws)])
    win_counts = win_counts.astype(float)
    out = np.empty((draws, len(columns)))
    for j, (name, kind) in enumerate(columns.items()):
        if kind == "num":
            out[:, j] = _num_null(reference[name].to_numpy(dtype=float), ref_counts, win_counts)
        else:
            codes = np.unique(reference[name].astype(str).to_numpy(), return_inverse=True)[1]
            out[:, j] = _cat_null(codes, ref_counts, win_counts)
    return out


def calibrate(
    reference,
    columns: dict[str, str],
    *,
    window_sizes=WINDOW_SIZES,
    draws: int = DEFAULT_DRAWS,
    alarm_rate: float = DEFAULT_ALARM_RATE,
    seed: int = 0,
) -> tuple[dict[str, Any], Any]:
    """The calibration of a reference: per window size, each column's null mean and standard deviation and
    the threshold of the largest standardised score. Returns (the JSON entry, the null scores as a frame)."""
    import pandas as pd

    if not 0.0 < alarm_rate < 1.0:
        raise ConfigError(f"alarm_rate must be in (0, 1), got {alarm_rate}")
    if draws < 1 / alarm_rate:
        raise ConfigError(
            f"{draws} draws cannot resolve a {alarm_rate} false-alarm rate; use >= {1 / alarm_rate:.0f}"
        )
    names = list(columns)
    sizes, frames = {}, []
    # windows drawn from the reference's own rows sit closer to it than fresh traffic does: calibrated at the
    # nominal rate the bootstrap gave 1.2-2.2% false alarms per window at a nominal 1%, so the rank is taken
    # at half the nominal rate (benchmarks/bench_guarantees.py measures the result)
    rank_rate = alarm_rate / BOOTSTRAP_SAFETY
    for i, n in enumerate(sorted(window_sizes)):
        scores = null_scores(reference, columns, n, draws=draws, seed=seed + i)
        mean, std = scores.mean(axis=0), np.maximum(scores.std(axis=0, ddof=1), 1e-12)
        stat = ((scores - mean) / std).max(axis=1)
        sizes[str(n)] = {
            "mean": dict(zip(names, mean.round(8).tolist(), strict=True)),
            "std": dict(zip(names, std.round(8).tolist(), strict=True)),
            "threshold": float(np.sort(stat)[min(draws, math.ceil((draws + 1) * (1.0 - rank_rate))) - 1]),
        }
        frame = pd.DataFrame(scores, columns=names)
        frame.insert(0, "window_size", n)
        frames.append(frame)
    entry = {
        "file": CALIBRATION_FILE,
        "alarm_rate": alarm_rate,
        "draws": draws,
        "reference_rows": len(reference),
        "columns": columns,
        "window_sizes": sorted(int(n) for n in window_sizes),
        "statistic": "max over columns of (score - null mean) / null std",
        "sizes": sizes,
    }
    return entry, pd.concat(frames, ignore_index=True)


def size_for(calibration: dict[str, Any], rows: int) -> int | None:
    """The calibrated window size a window of ``rows`` uses: the largest one <= rows (None below the
    smallest: too few rows to compare)."""
    fitting = [n for n in calibration["window_sizes"] if n <= rows]
    return max(fitting) if fitting else None


def calibrated_verdict(scores: dict[str, float], calibration: dict[str, Any], rows: int) -> dict[str, Any]:
    """Per-column standardised scores and flags, and the window's verdict, at the calibrated threshold."""
    n = size_for(calibration, rows)
    if n is None:
        raise ConfigError(
            f"a window needs at least {min(calibration['window_sizes'])} rows to compare, got {rows}"
        )
    entry = calibration["sizes"][str(n)]
    z = {c: (s - entry["mean"][c]) / entry["std"][c] for c, s in scores.items() if c in entry["mean"]}
    flagged = sorted(c for c, v in z.items() if v > entry["threshold"])
    return {
        "calibrated_size": n,
        "threshold": entry["threshold"],
        "standardised": {c: round(float(v), 4) for c, v in z.items()},
        "statistic": max(z.values()) if z else 0.0,
        "flagged": flagged,
        "alarm_rate": calibration["alarm_rate"],
    }
