"""Choosing the decision threshold: precision of the positive class proven at the production prevalence.

Precision depends on how rare the positive class is. At a threshold ``t`` with true-positive rate TPR and
false-positive rate FPR, the precision where a share ``p`` of the images is positive is

    precision(p) = TPR p / (TPR p + FPR (1 - p)),

increasing in TPR and decreasing in FPR. A one-sided lower bound on TPR (from the positives) and an upper
bound on FPR (from the negatives), each exact (Clopper-Pearson) at ``alpha / 2``, hold jointly with
probability >= 1 - alpha (Bonferroni), so plugging them in gives a valid lower bound on precision(p)
(:func:`precision_lower_bound`). ``alpha`` is the one-sided error of the gate's promise:
``(1 - confidence) / 2`` (2.5% at the default 95%).

Keeping the best of hundreds of thresholds whose bound passes is *not* valid (the maximum of many noisy
bounds is biased upwards: 3-11% false certification where the precision curve is flat near the target). The
search here is **fixed-sequence testing** (as in Learn-then-Test): the validation split is cut, stratified by
class with a fixed seed, into an *ordering* part and a *testing* part. The ordering part fixes the candidate
thresholds and the order in which they are tested: from the threshold with the best bound on the ordering
part downwards. The testing part then tests them in that order, each at the full ``alpha``, and stops at the
first failure; the last threshold that passed is chosen (the lowest, so the highest recall). Because the
order does not depend on the testing data, the chance that any certified threshold has a true precision below
the target is at most ``alpha`` (benchmarks/bench_guarantees.py measures it).

When not even the first threshold passes, the choice is refused, and the result says by how much the bound
falls short and how many more validation negatives / positives (at the same error rates) would prove it, or
that no amount of data will, because the model's own FPR is above what the target allows at that prevalence.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from visionops.errors import GateError
from visionops.evaluation.metrics import downsample, lower_bounds
from visionops.policy import CONFIDENCE, TARGET_PRECISION

#: share of the validation split that fixes the order of the tested thresholds
ORDER_FRACTION = 0.3
BOUND_METHOD = "clopper-pearson (TPR lower, FPR upper, Bonferroni)"


def one_sided_alpha(confidence: float) -> float:
    """The one-sided error of a two-sided ``confidence`` interval's lower bound (0.025 at 95%)."""
    return (1.0 - confidence) / 2.0


def precision_at(tpr, fpr, prevalence: float):
    """Precision where a share ``prevalence`` of the images is positive (vectorised; 0 when nothing is called)."""
    tpr = np.asarray(tpr, dtype=float)
    fpr = np.asarray(fpr, dtype=float)
    called = tpr * prevalence + fpr * (1.0 - prevalence)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(called > 0, tpr * prevalence / np.where(called > 0, called, 1.0), 0.0)


def max_fpr_for(target: float, prevalence: float) -> float:
    """The FPR per unit of recall the target allows at ``prevalence``: precision >= target iff
    FPR <= this x TPR."""
    return prevalence * (1.0 - target) / ((1.0 - prevalence) * target)


def tpr_lower(tp, n_pos, alpha: float):
    """One-sided exact (Clopper-Pearson) lower bound of TPR at level ``alpha`` (vectorised)."""
    from scipy import stats

    tp = np.asarray(tp, dtype=float)
    n_pos = np.broadcast_to(np.asarray(n_pos, dtype=float), tp.shape)
    out = np.zeros_like(tp)
    ok = (tp > 0) & (n_pos > 0)
    out[ok] = stats.beta.ppf(alpha, tp[ok], n_pos[ok] - tp[ok] + 1)
    return out


def fpr_upper(fp, n_neg, alpha: float):
    """One-sided exact (Clopper-Pearson) upper bound of FPR at level ``alpha`` (vectorised)."""
    from scipy import stats

    fp = np.asarray(fp, dtype=float)
    n_neg = np.broadcast_to(np.asarray(n_neg, dtype=float), fp.shape)
    out = np.ones_like(fp)
    ok = (fp < n_neg) & (n_neg > 0)
    out[ok] = stats.beta.ppf(1.0 - alpha, fp[ok] + 1, n_neg[ok] - fp[ok])
    return out


def precision_lower_bound(tp, n_pos, fp, n_neg, prevalence: float, alpha: float):
    """A lower bound on precision at ``prevalence`` holding with probability >= 1 - ``alpha`` (vectorised):
    the TPR lower and FPR upper bounds at ``alpha / 2`` each, plugged into :func:`precision_at`."""
    return precision_at(tpr_lower(tp, n_pos, alpha / 2), fpr_upper(fp, n_neg, alpha / 2), prevalence)


@dataclass(frozen=True)
class ThresholdChoice:
    """The outcome of threshold selection on the validation split."""

    threshold: float
    met: bool
    target: float
    confidence: float
    method: str
    #: the share of positives in production the promise is made for
    prevalence: float
    prevalence_source: str
    #: figures at ``threshold`` on the testing part of val: precision (point, at ``prevalence``), its bound
    precision: float
    precision_lower: float
    recall: float
    fpr: float
    tp: int
    fp: int
    n_positive: int
    n_negative: int
    n: int
    #: thresholds tested in the fixed sequence (including the one that failed) and how many passed
    tested: int
    passed: int
    #: the FPR the target allows at the observed recall (precision >= target iff FPR <= this)
    fpr_needed: float
    best_lower_bound: float
    shortfall: float
    #: on refusal: more val images (same error rates) the proof needs; None when data cannot help
    more_negatives: int | None
    more_positives: int | None
    more_negatives_alone: int | None
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def ordering_split(is_pos: np.ndarray, fraction: float = ORDER_FRACTION, seed: int = 0) -> np.ndarray:
    """A boolean mask of the ordering part: ``fraction`` of each class, drawn with a fixed seed."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(len(is_pos), dtype=bool)
    for value in (True, False):
        idx = np.flatnonzero(is_pos == value)
        take = round(fraction * len(idx))
        mask[rng.permutation(idx)[:take]] = True
    return mask


def counts_at(
    scores: np.ndarray, is_pos: np.ndarray, thresholds: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """True and false positives (score >= threshold) at each threshold (vectorised by sorting)."""
    pos = np.sort(scores[is_pos])
    neg = np.sort(scores[~is_pos])
    tp = len(pos) - np.searchsorted(pos, thresholds, side="left")
    fp = len(neg) - np.searchsorted(neg, thresholds, side="left")
    return tp, fp


def fixed_sequence(
    order_scores: np.ndarray,
    order_pos: np.ndarray,
    test_scores: np.ndarray,
    test_pos: np.ndarray,
    *,
    target: float,
    prevalence: float,
    alpha: float,
) -> dict[str, Any]:
    """The fixed-sequence search: candidates and order from the ordering part, tests on the testing part.

    Returns the tested thresholds (in order) with their testing-part counts and bounds, and the index of the
    last one that passed (-1 when the first failed)."""
    candidates = np.unique(order_scores)[::-1]  # descending
    o_tp, o_fp = counts_at(order_scores, order_pos, candidates)
    o_lower = precision_lower_bound(o_tp, order_pos.sum(), o_fp, (~order_pos).sum(), prevalence, alpha)
    start = int(np.argmax(o_lower))  # first of the best: the highest threshold among ties
    sequence = candidates[start:]
    tp, fp = counts_at(test_scores, test_pos, sequence)
    n_pos, n_neg = int(test_pos.sum()), int((~test_pos).sum())
    lower = precision_lower_bound(tp, n_pos, fp, n_neg, prevalence, alpha)
    failed = np.flatnonzero(lower < target)
    last = (int(failed[0]) if len(failed) else len(sequence)) - 1
    return {
        "thresholds": sequence,
        "tp": tp,
        "fp": fp,
        "lower": lower,
        "n_pos": n_pos,
        "n_neg": n_neg,
        "last_passed": last,
    }


def data_needed(
    tp: int, n_pos: int, fp: int, n_neg: int, *, target: float, prevalence: float, alpha: float
) -> tuple[int | None, int | None, int | None]:
    """How many more images the bound needs to reach ``target`` at the same error rates: (negatives,
    positives) when both grow by one factor, and negatives when only they grow. None where the point estimate
    itself misses the target (no amount of data helps: the model must get better)."""
    tpr, fpr = tp / n_pos if n_pos else 0.0, fp / n_neg if n_neg else 1.0
    if tpr == 0.0 or float(precision_at(tpr, fpr, prevalence)) < target:
        return None, None, None

    def passes(kp: float, kn: float) -> bool:
        p, q = max(1, round(n_pos * kp)), max(1, round(n_neg * kn))
        return float(precision_lower_bound(round(tpr * p), p, round(fpr * q), q, prevalence, alpha)) >= target

    both = _smallest_factor(lambda k: passes(k, k))
    alone = _smallest_factor(lambda k: passes(1.0, k))
    return (
        None if both is None else math.ceil(n_neg * (both - 1)),
        None if both is None else math.ceil(n_pos * (both - 1)),
        None if alone is None else math.ceil(n_neg * (alone - 1)),
    )


def _smallest_factor(passes, limit: float = 1e5) -> float | None:
    """The smallest factor k >= 1 (to 0.1%) with passes(k), assuming monotonicity; None beyond ``limit``."""
    high = 2.0
    while not passes(high):
        high *= 2
        if high > limit:
            return None
    low = high / 2 if high > 2 else 1.0
    while high - low > 1e-3 * high:
        mid = (low + high) / 2
        low, high = (low, mid) if passes(mid) else (mid, high)
    return high


def choose_threshold(
    scores: np.ndarray,
    is_pos: np.ndarray,
    *,
    target: float = TARGET_PRECISION,
    confidence: float = CONFIDENCE,
    prevalence: float | None = None,
    order_fraction: float = ORDER_FRACTION,
    seed: int = 0,
) -> ThresholdChoice:
    """The lowest threshold (highest recall) certified by fixed-sequence testing to have precision >=
    ``target`` at ``prevalence`` (None = the validation split's own share, said so in the result)."""
    scores = np.asarray(scores, dtype=float)
    is_pos = np.asarray(is_pos).astype(bool)
    if scores.shape != is_pos.shape or scores.ndim != 1:
        raise GateError(
            f"scores and labels must be 1-d and of equal length, got {scores.shape} and {is_pos.shape}"
        )
    n_pos = int(is_pos.sum())
    if len(scores) == 0 or n_pos == 0 or n_pos == len(scores):
        raise GateError(
            f"cannot choose a threshold: the validation split has {len(scores)} images, {n_pos} of the "
            "positive class; it needs labelled images of both the positive class and the others"
        )
    source = (
        "stated" if prevalence is not None else "validation split's share (production prevalence not stated)"
    )
    prevalence = float(n_pos / len(scores) if prevalence is None else prevalence)
    alpha = one_sided_alpha(confidence)
    order = ordering_split(is_pos, order_fraction, seed)
    seq = fixed_sequence(
        scores[order], is_pos[order], scores[~order], is_pos[~order],
        target=target, prevalence=prevalence, alpha=alpha,
    )  # fmt: skip
    last = seq["last_passed"]
    met = last >= 0
    i = last if met else 0  # the chosen threshold, or the first (most promising) one that failed
    tp, fp, n_p, n_n = int(seq["tp"][i]), int(seq["fp"][i]), seq["n_pos"], seq["n_neg"]
    recall, fpr = tp / n_p, fp / n_n
    lower = float(seq["lower"][i])
    needed = max_fpr_for(target, prevalence) * recall
    more_neg = more_pos = neg_alone = None
    if met:
        shortfall = 0.0
        reason = (
            f"precision at prevalence {prevalence:.4g} proven >= {target} (lower bound {lower:.4f}, "
            f"{1 - alpha:.1%} one-sided) at threshold {seq['thresholds'][i]:.6g}: recall {recall:.4f}, FPR "
            f"{fpr:.4f} (the target allows FPR <= {needed:.4f} at this recall); {last + 1} thresholds "
            "passed the fixed sequence"
        )
    else:
        shortfall = float(target - lower)
        more = data_needed(tp, n_p, fp, n_n, target=target, prevalence=prevalence, alpha=alpha)
        more_neg, more_pos, neg_alone = (
            None if m is None else math.ceil(m / (1 - order_fraction)) for m in more
        )
        reason = _refusal(tp, fp, n_p, n_n, lower, shortfall, needed, prevalence, target, order_fraction)
        if more_neg is not None:
            reason += (
                f"; at the same error rates the validation split needs about {more_neg} more negative and "
                f"{more_pos} more positive images to prove it"
            )
        if neg_alone is not None:
            reason += f" (or about {neg_alone} more negative images alone)"
    return ThresholdChoice(
        threshold=float(seq["thresholds"][i]),
        met=met,
        target=float(target),
        confidence=float(confidence),
        method=BOUND_METHOD,
        prevalence=prevalence,
        prevalence_source=source,
        precision=float(precision_at(recall, fpr, prevalence)),
        precision_lower=lower,
        recall=recall,
        fpr=fpr,
        tp=tp,
        fp=fp,
        n_positive=n_p,
        n_negative=n_n,
        n=len(scores),
        tested=min(last + 2, len(seq["thresholds"])),
        passed=last + 1,
        fpr_needed=needed,
        best_lower_bound=float(seq["lower"].max()) if not met else lower,
        shortfall=shortfall,
        more_negatives=more_neg,
        more_positives=more_pos,
        more_negatives_alone=neg_alone,
        reason=reason,
    )


def _refusal(tp, fp, n_p, n_n, lower, shortfall, needed, prevalence, target, order_fraction) -> str:
    """Why no threshold is certified, in figures."""
    head = (
        f"no threshold proves precision >= {target} at prevalence {prevalence:.4g}: the first threshold of the "
        f"fixed sequence has {tp}/{n_p} positives and {fp}/{n_n} negatives called positive on the testing "
        f"part of val ({1 - order_fraction:.0%} of it), precision lower bound {lower:.4f}, {shortfall:.4f} "
        f"short of the target; the target needs FPR <= {needed:.4f} at recall {tp / n_p:.4f}"
    )
    fpr = fp / n_n
    if fpr > needed or tp == 0:
        return (
            head
            + f"; the model's FPR ({fpr:.4f}) is above that: more data will not help, a better model will"
        )
    return head


def sweep(scores: np.ndarray, is_pos: np.ndarray, *, confidence: float, method: str) -> dict[str, np.ndarray]:
    """Every candidate threshold (each distinct score, descending) with tp, fp, precision on this split, its
    two-sided interval's lower bound and recall (for the report's threshold plot)."""
    scores = np.asarray(scores, dtype=float)
    is_pos = np.asarray(is_pos).astype(bool)
    thresholds = np.unique(scores)[::-1]
    tp, fp = counts_at(scores, is_pos, thresholds)
    n_pos = int(is_pos.sum())
    return {
        "threshold": thresholds,
        "tp": tp,
        "fp": fp,
        "precision": tp / (tp + fp),
        "precision_lower": lower_bounds(tp, tp + fp, confidence=confidence, method=method),
        "recall": tp / n_pos if n_pos else np.zeros_like(tp, dtype=float),
        "fpr": fp / max(1, len(scores) - n_pos),
    }


def sweep_for_report(
    scores: np.ndarray, is_pos: np.ndarray, *, confidence: float, method: str
) -> dict[str, list]:
    """The sweep as JSON-friendly lists of at most 200 points (for metrics.json and the threshold plot)."""
    table = sweep(scores, is_pos, confidence=confidence, method=method)
    keep = downsample(len(table["threshold"]))
    return {key: np.asarray(values)[keep].astype(float).tolist() for key, values in table.items()}


def precision_vs_prevalence(
    tp: int, n_pos: int, fp: int, n_neg: int, *, target: float, confidence: float, points=None
) -> list[dict[str, float]]:
    """Precision (point and lower bound) at a range of prevalences for one threshold's counts, and the FPR
    the target would need there: the model card's precision-vs-prevalence table."""
    alpha = one_sided_alpha(confidence)
    recall, fpr = (tp / n_pos if n_pos else 0.0), (fp / n_neg if n_neg else 0.0)
    rows = []
    for p in points or (0.01, 0.02, 0.036, 0.05, 0.076, 0.1, 0.2, 0.3, 0.5):
        rows.append(
            {
                "prevalence": float(p),
                "precision": float(precision_at(recall, fpr, p)),
                "precision_lower": float(precision_lower_bound(tp, n_pos, fp, n_neg, p, alpha)),
                "fpr_needed": float(max_fpr_for(target, p) * recall),
                "fpr": fpr,
            }
        )
    return rows
