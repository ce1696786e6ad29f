"""Champion vs challenger on the same golden images: paired differences with non-inferiority margins.

Both models answer every golden image, so their errors are correlated; comparing two point estimates with a
tolerance ignores that (and passes a challenger 5 points worse in recall 5-20% of the time). Here the
difference of two paired proportions ``a - b`` (each image gives one 0/1 for each model) gets a one-sided
bound from the discordant pairs: the Agresti-Min adjusted Wald interval (0.5 added to each cell of the 2x2
table), which holds its level down to a handful of discordant pairs; McNemar's exact p-value is reported
beside it.

Non-inferiority: the challenger passes on recall when the lower bound of ``recall_challenger -
recall_champion`` is above ``-margin``, and on FPR when the upper bound of ``fpr_challenger - fpr_champion``
is below ``margin``. At a true difference exactly at the margin it passes at most ``alpha`` of the time
(benchmarks/bench_guarantees.py measures it).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def paired_difference(a: np.ndarray, b: np.ndarray, *, alpha: float) -> dict[str, Any]:
    """``mean(a) - mean(b)`` for paired 0/1 outcomes with one-sided ``alpha`` lower and upper bounds."""
    from scipy import stats

    a = np.asarray(a, dtype=bool)
    b = np.asarray(b, dtype=bool)
    n = len(a)
    only_a = int((a & ~b).sum())
    only_b = int((~a & b).sum())
    if n == 0:
        return {
            "n": 0,
            "difference": None,
            "lower": -1.0,
            "upper": 1.0,
            "only_a": 0,
            "only_b": 0,
            "mcnemar_p": 1.0,
        }
    # Agresti-Min: add 0.5 to every cell of the paired 2x2 table
    n_adj = n + 2.0
    b_adj, c_adj = only_a + 0.5, only_b + 0.5
    diff_adj = (b_adj - c_adj) / n_adj
    var = ((b_adj + c_adj) - (b_adj - c_adj) ** 2 / n_adj) / n_adj**2
    z = float(stats.norm.ppf(1 - alpha))
    half = z * math.sqrt(max(var, 0.0))
    discordant = only_a + only_b
    mcnemar = 1.0 if discordant == 0 else float(stats.binomtest(only_a, discordant, 0.5).pvalue)
    return {
        "n": n,
        "difference": (only_a - only_b) / n,
        "lower": max(-1.0, diff_adj - half),
        "upper": min(1.0, diff_adj + half),
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
        "method": "paired difference, Agresti-Min adjusted Wald bound; McNemar exact p-value",
    }
