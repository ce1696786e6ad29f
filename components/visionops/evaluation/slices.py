"""Per-slice metrics: one row per value of each metadata column, flagging slices significantly worse.

A slice is compared with the rest of the golden set (its complement, so the slice does not pull the reference
towards itself) by a one-sided Fisher exact test on accuracy, on recall of the positive class and on its
precision (the safety figure). Only tests with at least ``min_n`` relevant images (images, positives,
predicted positives) enter the family; small slices are reported, never flagged. The family's p-values are
adjusted for multiplicity (``correction``: "holm" controls the chance of any false flag on a sound model at
``alpha``; "bh", Benjamini-Hochberg, the expected share of false flags among the flagged), and a slice is
flagged when an adjusted p-value is below ``alpha``. Testing a dozen slices x three metrics at p < 0.05 each
flags at least one slice of a sound model most of the time; benchmarks/bench_guarantees.py measures both.
The exact test, not the two-proportion z-test: with a few dozen images per slice the z-test's one-sided
p-values are too small, and even Holm's correction then flagged 12% of sound models at a nominal 5%.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from visionops.evaluation.metrics import proportion_interval
from visionops.policy import CONFIDENCE

#: columns with more distinct values than this are identifiers, not slices
MAX_SLICE_VALUES = 30
CORRECTIONS = ("holm", "bh")


def fisher_pvalue(k1: int, n1: int, k2: int, n2: int) -> float:
    """One-sided Fisher exact p-value that proportion 1 (``k1 / n1``) is lower than proportion 2."""
    from scipy import stats

    if n1 == 0 or n2 == 0:
        return 1.0
    return float(stats.fisher_exact([[k1, n1 - k1], [k2, n2 - k2]], alternative="less").pvalue)


def adjust_pvalues(pvalues, method: str = "holm") -> np.ndarray:
    """Multiplicity-adjusted p-values: Holm's step-down (family-wise error) or Benjamini-Hochberg (FDR)."""
    p = np.asarray(pvalues, dtype=float)
    m = len(p)
    if m == 0:
        return p
    order = np.argsort(p)
    ranked = p[order]
    if method == "holm":
        adjusted = np.maximum.accumulate((m - np.arange(m)) * ranked)
    elif method == "bh":
        adjusted = np.minimum.accumulate(m / np.arange(m, 0, -1) * ranked[::-1])[::-1]
    else:
        raise ValueError(f"unknown correction {method!r}; valid: {', '.join(CORRECTIONS)}")
    out = np.empty(m)
    out[order] = np.minimum(adjusted, 1.0)
    return out


def _counts(correct: np.ndarray, is_pos: np.ndarray, pred_pos: np.ndarray) -> dict[str, tuple[int, int]]:
    return {
        "accuracy": (int(correct.sum()), len(correct)),
        "recall": (int((pred_pos & is_pos).sum()), int(is_pos.sum())),
        "precision": (int((pred_pos & is_pos).sum()), int(pred_pos.sum())),
    }


def slice_metrics(
    frame,
    y_true: np.ndarray,
    y_pred: np.ndarray,
    positive_index: int,
    columns: list[str],
    *,
    min_n: int = 20,
    alpha: float = 0.05,
    confidence: float = CONFIDENCE,
    method: str = "wilson",
    correction: str = "holm",
) -> dict[str, Any]:
    """Rows (column, value, n, accuracy, recall, precision with intervals, p-values, flagged) and the flagged list."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    correct = y_true == y_pred
    is_pos = y_true == positive_index
    pred_pos = y_pred == positive_index
    rows, skipped, family = [], [], []
    for column in columns:
        values = frame[column].astype(str).to_numpy()
        distinct = sorted(set(values))
        if len(distinct) > MAX_SLICE_VALUES or len(distinct) < 2:
            skipped.append({"column": column, "distinct_values": len(distinct)})
            continue
        for value in distinct:
            mask = values == value
            inside = _counts(correct[mask], is_pos[mask], pred_pos[mask])
            outside = _counts(correct[~mask], is_pos[~mask], pred_pos[~mask])
            row: dict[str, Any] = {
                "column": column,
                "value": value,
                "n": int(mask.sum()),
                "n_positive": inside["recall"][1],
            }
            for metric, (k, n) in inside.items():
                ko, no = outside[metric]
                row[metric] = k / n if n else None
                row[f"{metric}_interval"] = list(
                    proportion_interval(k, n, confidence=confidence, method=method)
                )
                row[f"{metric}_rest"] = ko / no if no else None
                p = fisher_pvalue(k, n, ko, no)
                row[f"{metric}_pvalue"] = p
                if n >= min_n:
                    family.append((len(rows), metric, p))
            rows.append(row)
    adjusted = adjust_pvalues([p for _, _, p in family], correction)
    for row in rows:
        row["worse_in"] = []
    for (i, metric, _), q in zip(family, adjusted, strict=True):
        rows[i][f"{metric}_pvalue_adjusted"] = float(q)
        if q < alpha:
            rows[i]["worse_in"].append(metric)
    for row in rows:
        row["flagged"] = bool(row["worse_in"])
    flagged = [
        {"column": r["column"], "value": r["value"], "n": r["n"], "worse_in": r["worse_in"]}
        for r in rows
        if r["flagged"]
    ]
    return {
        "rows": rows,
        "flagged": flagged,
        "skipped_columns": skipped,
        "min_n": min_n,
        "alpha": alpha,
        "correction": correction,
        "tests": len(family),
        "test": f"one-sided Fisher exact test, slice vs the rest of the golden set; {correction} adjusted",
    }
