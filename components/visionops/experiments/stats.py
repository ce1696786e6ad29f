"""Statistics for online experiments: sample-ratio mismatch, proportions, fixed-horizon and always-valid
sequential tests, sample sizes, and nonparametric comparisons for canary analysis.

Pure numpy/scipy, no I/O: every function here is tested against hand-computed or simulated values.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a proportion (``(0, 1)`` when n == 0): the evaluation's implementation."""
    from visionops.evaluation.metrics import proportion_interval

    return proportion_interval(successes, n, confidence=confidence, method="wilson")


@dataclass(frozen=True)
class SRMResult:
    """Sample-ratio mismatch check: is the observed split consistent with the configured weights?"""

    counts: dict[str, int]
    expected: dict[str, float]
    chi2: float
    p_value: float
    mismatch: bool

    def to_dict(self) -> dict:
        return asdict(self)


def srm_check(counts: dict[str, int], weights: dict[str, float], alpha: float = 0.001) -> SRMResult:
    """Chi-square goodness of fit of ``counts`` against ``weights``.

    The conventional alpha for SRM is strict (0.001): a true mismatch is usually glaring, and a false SRM
    alarm blocks an experiment.
    """
    names = sorted(weights)
    total_w = sum(weights[n] for n in names)
    n = sum(counts.get(name, 0) for name in names)
    observed = np.array([counts.get(name, 0) for name in names], dtype=float)
    expected = np.array([weights[name] / total_w * n for name in names])
    if n == 0:
        return SRMResult(
            {k: 0 for k in names}, dict(zip(names, expected.tolist(), strict=True)), 0.0, 1.0, False
        )
    chi2, p = stats.chisquare(observed, expected)
    return SRMResult(
        counts={k: int(counts.get(k, 0)) for k in names},
        expected=dict(zip(names, expected.round(3).tolist(), strict=True)),
        chi2=float(chi2),
        p_value=float(p),
        mismatch=bool(p < alpha),
    )


@dataclass(frozen=True)
class DiffResult:
    """A difference of two proportions (treatment - control)."""

    p_control: float
    p_treatment: float
    n_control: int
    n_treatment: int
    diff: float
    ci_low: float
    ci_high: float
    p_value: float
    significant: bool

    def to_dict(self) -> dict:
        return asdict(self)


def two_proportion_test(x_c: int, n_c: int, x_t: int, n_t: int, *, alpha: float = 0.05) -> DiffResult:
    """Fixed-horizon two-sided z-test (pooled SE for the test, unpooled for the interval)."""
    if n_c == 0 or n_t == 0:
        return DiffResult(0.0, 0.0, n_c, n_t, 0.0, -1.0, 1.0, 1.0, False)
    p_c, p_t = x_c / n_c, x_t / n_t
    pooled = (x_c + x_t) / (n_c + n_t)
    se_pooled = math.sqrt(max(pooled * (1 - pooled) * (1 / n_c + 1 / n_t), 1e-300))
    z = (p_t - p_c) / se_pooled if se_pooled > 0 else 0.0
    p_value = float(2 * stats.norm.sf(abs(z)))
    se = math.sqrt(p_c * (1 - p_c) / n_c + p_t * (1 - p_t) / n_t)
    zc = stats.norm.ppf(1 - alpha / 2)
    diff = p_t - p_c
    return DiffResult(p_c, p_t, n_c, n_t, diff, diff - zc * se, diff + zc * se, p_value, p_value < alpha)


@dataclass(frozen=True)
class SequentialResult:
    """Always-valid (mixture SPRT) test of a difference of proportions; safe to look at any time."""

    diff: float
    ci_low: float
    ci_high: float
    p_value: float
    significant: bool

    def to_dict(self) -> dict:
        return asdict(self)


def msprt_test(
    x_c: int, n_c: int, x_t: int, n_t: int, *, alpha: float = 0.05, tau: float = 0.05
) -> SequentialResult:
    """Mixture sequential probability ratio test with a normal mixing distribution N(0, tau^2).

    Johari, Pekelis and Walsh (2017), "Always valid inference": with the normal approximation of the
    difference ``d`` and its variance ``v``, the mixture likelihood ratio is
    ``sqrt(v / (v + tau^2)) * exp(d^2 tau^2 / (2 v (v + tau^2)))``; the always-valid p-value is
    ``min(1, 1 / LR)`` (here without the running minimum, which is a property of the monitoring loop),
    and the matching always-valid confidence interval is ``d +- sqrt(v (v + tau^2) / tau^2 *
    (log((v + tau^2) / v) - 2 log alpha))``. ``tau`` is the scale of effects we expect (5 points).
    """
    if n_c < 2 or n_t < 2:
        return SequentialResult(0.0, -1.0, 1.0, 1.0, False)
    p_c, p_t = x_c / n_c, x_t / n_t
    d = p_t - p_c
    v = max(p_c * (1 - p_c) / n_c + p_t * (1 - p_t) / n_t, 1e-12)
    t2 = tau * tau
    log_lr = 0.5 * math.log(v / (v + t2)) + d * d * t2 / (2 * v * (v + t2))
    p_value = float(min(1.0, math.exp(-log_lr)))
    half = math.sqrt(v * (v + t2) / t2 * (math.log((v + t2) / v) - 2 * math.log(alpha)))
    return SequentialResult(d, d - half, d + half, p_value, p_value < alpha)


def sample_size_per_arm(baseline: float, mde: float, *, alpha: float = 0.05, power: float = 0.8) -> int:
    """Units per arm to detect an absolute change ``mde`` from ``baseline`` (two-sided z-test)."""
    if not 0 < baseline < 1 or mde <= 0 or baseline + mde >= 1:
        raise ValueError(f"need 0 < baseline < baseline + mde < 1, got baseline={baseline}, mde={mde}")
    p1, p2 = baseline, baseline + mde
    z_a, z_b = stats.norm.ppf(1 - alpha / 2), stats.norm.ppf(power)
    pbar = (p1 + p2) / 2
    n = (
        z_a * math.sqrt(2 * pbar * (1 - pbar)) + z_b * math.sqrt(p1 * (1 - p1) + p2 * (1 - p2))
    ) ** 2 / mde**2
    return math.ceil(n)


def mann_whitney(control: np.ndarray, treatment: np.ndarray) -> tuple[float, float]:
    """Two-sided Mann-Whitney U p-value and the effect as P(treatment > control) - 0.5."""
    control, treatment = np.asarray(control, float), np.asarray(treatment, float)
    if len(control) == 0 or len(treatment) == 0:
        return 1.0, 0.0
    u, p = stats.mannwhitneyu(treatment, control, alternative="two-sided")
    return float(p), float(u / (len(control) * len(treatment)) - 0.5)
