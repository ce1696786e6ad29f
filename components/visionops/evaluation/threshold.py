"""Choosing the decision threshold: precision of the positive class proven (not just estimated) above target.

A threshold ``t`` predicts the positive class when its probability is ``>= t``. For every distinct validation
score we count true and false positives; a threshold *qualifies* when the lower bound of the two-sided
``confidence`` interval of its precision (Wilson or Clopper-Pearson) is at least the target. Among the
qualifying thresholds the one with the most true positives (maximal recall) wins; on a tie, the higher one
(fewer false positives). When none qualifies, the choice is the threshold with the best lower bound and the
result says by how much it falls short.

Any threshold between the chosen score and the next lower validation score splits the validation set the
same way; the midpoint of that gap is used (the widest margin on both sides, so that a small change of an
image does not flip an answer that sat exactly on a validation score).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from visionops.errors import GateError
from visionops.evaluation.metrics import downsample, lower_bounds


@dataclass(frozen=True)
class ThresholdChoice:
    """The outcome of threshold selection on the validation split."""

    threshold: float
    #: the lowest validation score taken as positive (the threshold sits halfway to the next lower score)
    cut_score: float
    met: bool
    target: float
    confidence: float
    method: str
    precision: float
    precision_lower: float
    recall: float
    tp: int
    fp: int
    n_positive: int
    n: int
    best_lower_bound: float
    shortfall: float
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def sweep(scores: np.ndarray, is_pos: np.ndarray, *, confidence: float, method: str) -> dict[str, np.ndarray]:
    """Every candidate threshold (each distinct score, descending) with tp, fp, precision, its lower bound and
    recall of the positive class."""
    scores = np.asarray(scores, dtype=float)
    is_pos = np.asarray(is_pos).astype(bool)
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], is_pos[order]
    tp = np.cumsum(y)
    fp = np.cumsum(~y)
    last_of_group = np.r_[s[1:] != s[:-1], True]  # the threshold s[i] takes every score >= s[i]
    idx = np.flatnonzero(last_of_group)
    tp, fp = tp[idx], fp[idx]
    n_pred = tp + fp
    n_pos = int(is_pos.sum())
    return {
        "threshold": s[idx],
        "tp": tp,
        "fp": fp,
        "precision": tp / n_pred,
        "precision_lower": lower_bounds(tp, n_pred, confidence=confidence, method=method),
        "recall": tp / n_pos if n_pos else np.zeros_like(tp, dtype=float),
    }


def choose_threshold(
    scores: np.ndarray,
    is_pos: np.ndarray,
    *,
    target: float = 0.95,
    confidence: float = 0.95,
    method: str = "wilson",
) -> ThresholdChoice:
    """The threshold that maximises recall while the precision lower bound stays >= ``target``."""
    scores = np.asarray(scores, dtype=float)
    is_pos = np.asarray(is_pos).astype(bool)
    if scores.shape != is_pos.shape or scores.ndim != 1:
        raise GateError(
            f"scores and labels must be 1-d and of equal length, got {scores.shape} and {is_pos.shape}"
        )
    n_pos = int(is_pos.sum())
    if len(scores) == 0 or n_pos == 0:
        raise GateError(
            f"cannot choose a threshold: the validation split has {len(scores)} images and {n_pos} of the "
            "positive class; add labelled positive images to the val split"
        )
    table = sweep(scores, is_pos, confidence=confidence, method=method)
    lower = table["precision_lower"]
    best = float(lower.max())
    qualifying = np.flatnonzero(lower >= target)
    if len(qualifying):
        tp = table["tp"][qualifying]
        # most true positives; among those the first (= highest threshold, fewest false positives)
        i = int(qualifying[np.flatnonzero(tp == tp.max())[0]])
        met, shortfall = True, 0.0
        reason = (
            f"precision lower bound {lower[i]:.4f} >= target {target} ({method}, {confidence:.0%}) "
            f"with recall {table['recall'][i]:.4f} at validation score {table['threshold'][i]:.6g}"
        )
    else:
        candidates = np.flatnonzero(lower == best)
        i = int(candidates[np.argmax(table["tp"][candidates])])
        met, shortfall = False, float(target - best)
        reason = (
            f"no threshold reaches the target: the best {confidence:.0%} {method} lower bound of precision is "
            f"{best:.4f} ({int(table['tp'][i])} true / {int(table['fp'][i])} false positives at threshold "
            f"{table['threshold'][i]:.6g}), {shortfall:.4f} short of the target {target}; more validation "
            "positives narrow the interval, a better model raises the precision"
        )
    scores_at = table["threshold"]
    threshold = (scores_at[i] + scores_at[i + 1]) / 2 if i + 1 < len(scores_at) else scores_at[i]
    return ThresholdChoice(
        threshold=float(threshold),
        cut_score=float(scores_at[i]),
        met=met,
        target=float(target),
        confidence=float(confidence),
        method=method,
        precision=float(table["precision"][i]),
        precision_lower=float(lower[i]),
        recall=float(table["recall"][i]),
        tp=int(table["tp"][i]),
        fp=int(table["fp"][i]),
        n_positive=n_pos,
        n=len(scores),
        best_lower_bound=best,
        shortfall=shortfall,
        reason=reason,
    )


def sweep_for_report(
    scores: np.ndarray, is_pos: np.ndarray, *, confidence: float, method: str
) -> dict[str, list]:
    """The sweep as JSON-friendly lists of at most 200 points (for metrics.json and the threshold plot)."""
    table = sweep(scores, is_pos, confidence=confidence, method=method)
    keep = downsample(len(table["threshold"]))
    return {key: np.asarray(values)[keep].astype(float).tolist() for key, values in table.items()}
