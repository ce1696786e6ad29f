"""Champion vs challenger on the same golden images: paired differences with non-inferiority margins.

Both models answer every golden image, so their errors are correlated; comparing two point estimates with a
tolerance ignores that (and passes a challenger 5 points worse in recall 5-20% of the time). Here the
difference of two paired proportions ``a - b`` (each image gives one 0/1 for each model) gets one-sided
bounds from the discordant pairs by inverting Tango's score test (the variance taken under the tested
difference, with the restricted maximum-likelihood cell probabilities), which holds its level where a Wald
interval does not (an adjusted Wald bound passed 3.8% of challengers exactly at the margin at a nominal
2.5%); McNemar's exact p-value is reported beside it.

Non-inferiority: the challenger passes on recall when the lower bound of ``recall_challenger -
recall_champion`` is above ``-margin``, and on FPR when the upper bound of ``fpr_challenger - fpr_champion``
is below ``margin``. At a true difference exactly at the margin it passes at most ``alpha`` of the time
(benchmarks/bench_guarantees.py measures it).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def _score_z(b: int, c: int, n: int, d0: float) -> float:
    """Tango's score statistic for H0: p_b - p_c = d0 (b, c: the two kinds of discordant pairs of n)."""
    r = n - b - c
    # restricted MLE of p_c (q) under p_b = q + d0: -2n q^2 + q (b(1 - d0) + c(1 - 3 d0) - 2 r d0) + c d0 (1 - d0) = 0
    roots = np.roots([-2.0 * n, b * (1 - d0) + c * (1 - 3 * d0) - 2 * r * d0, c * d0 * (1 - d0)])
    lo = max(0.0, -d0)
    feasible = [q.real for q in roots if abs(q.imag) < 1e-9 and lo - 1e-12 <= q.real <= (1 - d0) / 2 + 1e-12]
    q = max(feasible) if feasible else lo
    var = max(2 * q + d0 - d0 * d0, 1e-12) / n
    return ((b - c) / n - d0) / math.sqrt(var)


def _bound(b: int, c: int, n: int, z: float, side: str) -> float:
    """The tested difference where the score statistic equals ``z`` (lower) or ``-z`` (upper), by bisection."""
    observed = (b - c) / n
    low, high = (-1.0, observed) if side == "lower" else (observed, 1.0)
    target = z if side == "lower" else -z
    for _ in range(60):
        mid = (low + high) / 2
        # the statistic falls as d0 grows: above the target means d0 is still too small
        if _score_z(b, c, n, mid) > target:
            low = mid
        else:
            high = mid
    return (low + high) / 2


def paired_difference(a: np.ndarray, b: np.ndarray, *, alpha: float) -> dict[str, Any]:
    """``mean(a) - mean(b)`` for paired 0/1 outcomes with one-sided ``alpha`` lower and upper bounds."""
    from scipy import stats

    a = np.asarray(a, dtype=bool)
    b = np.asarray(b, dtype=bool)
    n = len(a)
    only_a = int((a & ~b).sum())
    only_b = int((~a & b).sum())
    if n == 0:
        return {"n": 0, "difference": None, "lower": -1.0, "upper": 1.0, "only_a": 0, "only_b": 0,
                "mcnemar_p": 1.0}  # fmt: skip
    z = float(stats.norm.ppf(1 - alpha))
    discordant = only_a + only_b
    mcnemar = 1.0 if discordant == 0 else float(stats.binomtest(only_a, discordant, 0.5).pvalue)
    return {
        "n": n,
        "difference": (only_a - only_b) / n,
        "lower": _bound(only_a, only_b, n, z, "lower"),
        "upper": _bound(only_a, only_b, n, z, "upper"),
        "only_a": only_a,
        "only_b": only_b,
        "mcnemar_p": mcnemar,
    }


def compare(
    y_pos: np.ndarray, challenger_pos: np.ndarray, champion_pos: np.ndarray, *, alpha: float
) -> dict[str, Any]:
    """Recall and FPR differences (challenger - champion) on the same golden images.

    ``y_pos`` says which images are of the positive class; the two others which images each model calls
    positive (at its own threshold)."""
    y_pos = np.asarray(y_pos, dtype=bool)
    ch = np.asarray(challenger_pos, dtype=bool)
    cp = np.asarray(champion_pos, dtype=bool)
    return {
        "recall": paired_difference(ch[y_pos], cp[y_pos], alpha=alpha),
        "fpr": paired_difference(ch[~y_pos], cp[~y_pos], alpha=alpha),
        "alpha": alpha,
        "method": "paired difference, Tango score bounds; McNemar exact p-value",
    }
