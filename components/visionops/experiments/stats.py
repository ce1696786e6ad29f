"""Statistics for online experiments: sample-ratio mismatch (one look and always-valid), proportions,
fixed-horizon and always-valid sequential tests, cluster ratios (jackknife over units), sample sizes for the test
that decides, and nonparametric comparisons.

Pure numpy/scipy, no I/O: every function here is tested against hand-computed or simulated values.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

from visionops.policy import CONFIDENCE


def wilson_interval(successes: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
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


#: Scale (log odds of an arm's share) of the mismatches the sequential SRM test is tuned to detect: 0.1 is a
#: ~10% relative shift of an arm's share, the size of a broken filter or a crashing variant.
SRM_TILT_SCALE = 0.1


def srm_check(
    counts: dict[str, int], weights: dict[str, float], alpha: float = 0.001, *, sequential: bool = True
) -> SRMResult:
    """Is the observed split consistent with the configured weights?

    The conventional alpha for SRM is strict (0.001): a true mismatch is usually glaring, and a false SRM
    alarm blocks an experiment. ``sequential`` (the default) uses the always-valid test of
    :func:`srm_sequential_p`, so an experiment that is looked at every day keeps its false-alarm rate at
    ``alpha``; ``sequential=False`` is the classic one-look chi-square goodness of fit.
    """
    names = sorted(weights)
    total_w = sum(weights[n] for n in names)
    n = sum(counts.get(name, 0) for name in names)
    observed = np.array([counts.get(name, 0) for name in names], dtype=float)
    probs = np.array([weights[name] / total_w for name in names])
    expected = probs * n
    if n == 0:
        return SRMResult(
            {k: 0 for k in names}, dict(zip(names, expected.tolist(), strict=True)), 0.0, 1.0, False
        )
    chi2, p = stats.chisquare(observed, expected)
    if sequential:
        p = float(srm_sequential_p(observed[None, :], probs[None, :]))
    return SRMResult(
        counts={k: int(counts.get(k, 0)) for k in names},
        expected=dict(zip(names, expected.round(3).tolist(), strict=True)),
        chi2=float(chi2),
        p_value=float(p),
        mismatch=bool(p < alpha),
    )


def _tilt_grid(arms: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """The prior of the mixture: points (G, arms) and log weights (G,) of a discretised N(0, scale^2) on the
    log-share tilt of every arm but the first (only relative tilts change the shares). A discrete prior
    keeps the test exactly valid; the grid is fine enough (scale / 33 for two arms) that it also matches the
    continuous mixture's power up to millions of requests."""
    nodes = {2: 401, 3: 61}.get(arms, 21)
    x = np.linspace(-6.0, 6.0, nodes)
    log_w1 = -0.5 * x**2
    log_w1 -= np.log(np.exp(log_w1).sum())
    grids = np.meshgrid(*([x] * (arms - 1)), indexing="ij")
    weights = np.meshgrid(*([log_w1] * (arms - 1)), indexing="ij")
    betas = np.column_stack([np.zeros(grids[0].size)] + [g.ravel() * scale for g in grids])
    return betas, np.sum([w.ravel() for w in weights], axis=0)


def srm_sequential_p(counts, probs, *, scale: float = SRM_TILT_SCALE) -> np.ndarray:
    """Always-valid p-value of a sample-ratio mismatch, for fixed or changing split probabilities.

    ``counts`` (..., S, k): requests (or units) per arm in S periods; ``probs`` (..., S, k): the configured
    share of each arm in that period (a canary's ramp, a bandit's logged propensities). Under the null the
    arm of each request is multinomial(probs); the alternative tilts every period's shares by the same
    ``exp(beta)`` with beta ~ N(0, scale^2). The mixture likelihood ratio is a nonnegative martingale under the
    null (a mixture of likelihood ratios), so by Ville's inequality ``P(ever 1/LR <= alpha) <= alpha``: the
    test may be repeated after every new batch of traffic (Lindon & Malek 2020 use a Dirichlet mixture for
    fixed shares; the tilt mixture also covers shares that change). Vectorised over the leading axes.
    """
    counts = np.asarray(counts, dtype=float)
    probs = np.asarray(probs, dtype=float)
    probs = probs / probs.sum(axis=-1, keepdims=True)
    betas, log_w = _tilt_grid(counts.shape[-1], scale)
    gain = counts.sum(axis=-2) @ betas.T  # (..., G): sum of counts * tilt
    log_norm = np.log(np.maximum(probs @ np.exp(betas).T, 1e-300))  # (..., S, G)
    loglik = gain - np.einsum("...s,...sg->...g", counts.sum(axis=-1), log_norm)
    log_lr = _logsumexp(loglik + log_w, axis=-1)
    return np.minimum(1.0, np.exp(-log_lr))


def _logsumexp(a: np.ndarray, axis: int) -> np.ndarray:
    top = np.max(a, axis=axis, keepdims=True)
    return np.squeeze(top, axis) + np.log(np.sum(np.exp(a - top), axis=axis))


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


def normal_diff_test(
    p_c: float, p_t: float, v: float, *, alpha: float = 0.05, df: float | None = None
) -> DiffResult:
    """Fixed-horizon two-sided test of ``p_t - p_c`` with a given variance (e.g. a clustered one): z, or
    Student t with ``df`` degrees of freedom (units - 2 for clusters)."""
    diff = p_t - p_c
    se = math.sqrt(max(v, 1e-300))
    dist = stats.norm if df is None else stats.t(max(df, 1))
    p_value = float(2 * dist.sf(abs(diff) / se))
    zc = dist.ppf(1 - alpha / 2)
    return DiffResult(p_c, p_t, 0, 0, diff, diff - zc * se, diff + zc * se, p_value, p_value < alpha)


def normal_interval(estimate: float, var: float, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """``estimate +- z sqrt(var)`` clipped to [0, 1]; ``(0, 1)`` when the variance is unknown."""
    if not (np.isfinite(estimate) and np.isfinite(var)):
        return 0.0, 1.0
    half = float(stats.norm.ppf(0.5 + confidence / 2) * math.sqrt(max(var, 0.0)))
    return max(0.0, float(estimate) - half), min(1.0, float(estimate) + half)


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


def always_valid(d, v, *, alpha: float = 0.05, tau: float = 0.05):
    """The mixture SPRT on an estimate ``d`` with variance ``v``: (p-value, ci_low, ci_high), vectorised.

    Johari, Pekelis and Walsh (2017), "Always valid inference": with a normal mixing distribution N(0, tau^2)
    the mixture likelihood ratio is ``sqrt(v / (v + tau^2)) * exp(d^2 tau^2 / (2 v (v + tau^2)))``; the
    always-valid p-value is ``min(1, 1 / LR)`` (without the running minimum, which belongs to the monitoring
    loop) and the matching confidence sequence is ``d +- sqrt(v (v + tau^2) / tau^2 * (log((v + tau^2) / v)
    - 2 log alpha))``. The interval excludes 0 exactly when p < alpha; a one-sided decision on it ("worse
    by more than a margin") errs with probability <= alpha at every look. ``tau`` is the scale of effects
    we expect.
    """
    d = np.asarray(d, dtype=float)
    v = np.maximum(np.asarray(v, dtype=float), 1e-12)
    t2 = tau * tau
    log_lr = 0.5 * np.log(v / (v + t2)) + d * d * t2 / (2 * v * (v + t2))
    p_value = np.minimum(1.0, np.exp(-np.minimum(log_lr, 700.0)))
    half = np.sqrt(v * (v + t2) / t2 * (np.log((v + t2) / v) - 2 * math.log(alpha)))
    return p_value, d - half, d + half


def msprt_test(
    x_c: int, n_c: int, x_t: int, n_t: int, *, alpha: float = 0.05, tau: float = 0.05
) -> SequentialResult:
    """Mixture sequential probability ratio test of a difference of proportions (see :func:`always_valid`)."""
    if n_c < 2 or n_t < 2:
        return SequentialResult(0.0, -1.0, 1.0, 1.0, False)
    p_c, p_t = x_c / n_c, x_t / n_t
    d = p_t - p_c
    v = p_c * (1 - p_c) / n_c + p_t * (1 - p_t) / n_t
    p_value, low, high = (float(x) for x in always_valid(d, v, alpha=alpha, tau=tau))
    return SequentialResult(d, low, high, p_value, p_value < alpha)


def ratio_estimate(y, x, units):
    """A ratio of sums over clusters and its leave-one-unit-out (jackknife) variance, vectorised.

    ``y`` and ``x`` (..., U) hold each unit's numerator and denominator (e.g. a camera's true positives and
    its actual positives with feedback; zero for units not in the arm, which leave the ratio unchanged),
    ``units`` (...) how many units the arm has. With sticky assignment the unit, not the request, is the
    independent draw: requests of one camera share its prevalence and difficulty, so the per-request
    binomial variance understates the real one. Variance: ``(U-1)/U * sum((R_-i - R)^2)`` with ``R_-i`` the
    ratio without unit i. It equals the delta method's linearisation for many similar units; with few
    units of very unequal volume the linearisation is too small (an A/A test at 5% rejects 8-10% of the
    time with 60 units a side) and the jackknife is not (about 5%).
    """
    y, x = np.asarray(y, dtype=float), np.asarray(x, dtype=float)
    units = np.asarray(units, dtype=float)
    sx, sy = x.sum(axis=-1), y.sum(axis=-1)
    ratio = np.divide(sy, sx, out=np.full(np.shape(sx), np.nan), where=sx > 0)
    rest = sx[..., None] - x
    loo = np.divide(sy[..., None] - y, rest, out=np.full(np.shape(x), np.inf), where=rest > 0)
    dev = np.where(x > 0, (loo - np.nan_to_num(ratio)[..., None]) ** 2, 0.0).sum(axis=-1)
    scale = np.divide(units - 1, units, out=np.zeros(np.shape(units)), where=units > 1)
    var = np.where(units > 1, scale * dev, np.inf)
    return ratio, var


def sample_size_per_arm(baseline: float, mde: float, *, alpha: float = 0.05, power: float = 0.8) -> int:
    """Units per arm to detect an absolute change ``mde`` from ``baseline`` with the fixed-horizon two-sided
    z-test at a single look (the verdict uses the mSPRT: see :func:`sample_size`)."""
    if not 0 < baseline < 1 or mde <= 0 or baseline + mde >= 1:
        raise ValueError(f"need 0 < baseline < baseline + mde < 1, got baseline={baseline}, mde={mde}")
    p1, p2 = baseline, baseline + mde
    z_a, z_b = stats.norm.ppf(1 - alpha / 2), stats.norm.ppf(power)
    pbar = (p1 + p2) / 2
    n = (
        z_a * math.sqrt(2 * pbar * (1 - pbar)) + z_b * math.sqrt(p1 * (1 - p1) + p2 * (1 - p2))
    ) ** 2 / mde**2
    return math.ceil(n)


def msprt_power(effect: float, var_per_unit: float, n, *, alpha: float = 0.05, tau: float = 0.05):
    """Power of one mSPRT look at ``n`` units per arm, normal approximation.

    ``var_per_unit``: variance of the difference times n (e.g. ``r_c (1 - r_c) + r_t (1 - r_t)``). The test
    rejects when ``|d| > half(v)`` (the confidence sequence excludes 0), so power is
    ``P(|N(effect, v)| > half(v))``. A single look at n is the least power a monitored test has at n.
    """
    v = var_per_unit / np.asarray(n, dtype=float)
    _p, _low, high = always_valid(0.0, v, alpha=alpha, tau=tau)
    half, sd = high, np.sqrt(v)
    return stats.norm.sf((half - effect) / sd) + stats.norm.cdf((-half - effect) / sd)


def msprt_units(
    effect: float, var_per_unit: float, *, alpha: float = 0.05, power: float = 0.8, tau: float = 0.05
) -> int:
    """Smallest n per arm at which one mSPRT look reaches ``power`` (bisection on :func:`msprt_power`)."""
    if effect <= 0 or var_per_unit <= 0:
        raise ValueError(f"need a positive effect and variance, got {effect}, {var_per_unit}")
    low, high = 2, 4
    while msprt_power(effect, var_per_unit, high, alpha=alpha, tau=tau) < power:
        low, high = high, high * 2
        if high > 10**12:
            raise ValueError("the effect is too small to detect with any realistic sample")
    while high - low > 1:
        mid = (low + high) // 2
        if msprt_power(effect, var_per_unit, mid, alpha=alpha, tau=tau) >= power:
            high = mid
        else:
            low = mid
    return high


def cluster_sample_size(
    y,
    x,
    mde: float,
    *,
    alpha: float = 0.05,
    power: float = 0.8,
    tau: float = 0.05,
    sims: int = 2000,
    seed: int = 0,
) -> dict | None:
    """Units per arm at which the mSPRT on a clustered ratio reaches ``power``, by resampling a pilot.

    ``y``, ``x``: each pilot unit's numerator and denominator over the planned duration (e.g. a camera's true
    positives and actual positives with feedback). A start from the normal approximation with the per-unit
    variance at the ``power`` quantile of 200 bootstrap replicates of the pilot (a pilot that happened to
    miss the largest units must not under-size the experiment), then simulated
    experiments: units drawn with replacement from the pilot for both arms, the treatment's numerator raised
    by ``mde`` times its denominator, the clustered mSPRT at one look; n grows in 5% steps until the
    simulated power reaches ``power``. Resampling keeps what the normal approximation misses with few,
    unequal units (heavy-tailed volumes make the variance estimate itself noisy). None without a usable
    pilot.
    """
    y, x = np.asarray(y, dtype=float), np.asarray(x, dtype=float)
    units = len(x)
    if units < 2 or x.sum() <= 0:
        return None
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, units, (200, units))
    _ratio, var = ratio_estimate(y[picks], x[picks], units)
    per_unit = float(2 * units * np.quantile(var[np.isfinite(var)], power)) if np.isfinite(var).any() else 0.0
    if not np.isfinite(per_unit) or per_unit <= 0:
        return None
    n = msprt_units(mde, per_unit, alpha=alpha, power=power, tau=tau)
    if n > 20 * units:  # resampling far beyond the pilot's size is extrapolation: report the approximation
        return {"units_per_arm": n, "simulated_power": None, "pilot_units": units}
    measured = _cluster_power(y, x, n, mde, alpha=alpha, tau=tau, sims=sims, rng=rng)
    while measured < power and n <= 20 * units:
        n = math.ceil(n * 1.05)
        measured = _cluster_power(y, x, n, mde, alpha=alpha, tau=tau, sims=sims, rng=rng)
    return {"units_per_arm": n, "simulated_power": measured, "pilot_units": units}


def _cluster_power(y, x, n: int, mde: float, *, alpha: float, tau: float, sims: int, rng) -> float:
    """Share of resampled two-arm experiments of ``n`` units each in which the mSPRT finds the effect
    (in chunks of about two million resampled units, to bound memory)."""
    hits, done, chunk = 0, 0, max(1, 2_000_000 // n)
    while done < sims:
        size = min(chunk, sims - done)
        picks = rng.integers(0, len(x), (2, size, n))
        r_c, v_c = ratio_estimate(y[picks[0]], x[picks[0]], n)
        r_t, v_t = ratio_estimate(y[picks[1]] + mde * x[picks[1]], x[picks[1]], n)
        p_value, _low, _high = always_valid(r_t - r_c, v_c + v_t, alpha=alpha, tau=tau)
        hits += int(np.sum(p_value < alpha))
        done += size
    return hits / sims


def simulated_msprt_power(
    baseline: float, mde: float, n: int, *, alpha: float = 0.05, tau: float = 0.05, sims: int = 20_000, seed=0
) -> float:
    """Share of simulated A/B experiments (binomial arms of n positives) the mSPRT declares significant."""
    rng = np.random.default_rng(seed)
    p_c = rng.binomial(n, baseline, sims) / n
    p_t = rng.binomial(n, baseline + mde, sims) / n
    v = (p_c * (1 - p_c) + p_t * (1 - p_t)) / n
    p_value, _low, _high = always_valid(p_t - p_c, v, alpha=alpha, tau=tau)
    return float(np.mean(p_value < alpha))


def sample_size(
    baseline: float,
    mde: float,
    *,
    alpha: float = 0.05,
    power: float = 0.8,
    tau: float = 0.05,
    test: str = "msprt",
    prevalence: float | None = None,
    feedback_rate: float | None = None,
    sims: int = 20_000,
    seed: int = 0,
) -> dict:
    """Labelled positives (and requests) per arm for the test that decides, with its simulated power.

    ``test="msprt"`` (what the verdict uses): n from the normal approximation, then raised in 2% steps until
    ``sims`` simulated experiments reach ``power``; ``test="fixed"``: the z-test formula. The metric is
    recall, so n counts positives with feedback; requests per arm = n / (prevalence * feedback_rate).
    """
    if test not in ("msprt", "fixed"):
        raise ValueError(f"unknown test {test!r}; valid: msprt, fixed")
    if not 0 < baseline < 1 or mde <= 0 or baseline + mde >= 1:
        raise ValueError(f"need 0 < baseline < baseline + mde < 1, got baseline={baseline}, mde={mde}")
    if test == "fixed":
        n = sample_size_per_arm(baseline, mde, alpha=alpha, power=power)
        measured = None
    else:
        var = baseline * (1 - baseline) + (baseline + mde) * (1 - baseline - mde)
        n = msprt_units(mde, var, alpha=alpha, power=power, tau=tau)
        measured = simulated_msprt_power(baseline, mde, n, alpha=alpha, tau=tau, sims=sims, seed=seed)
        while measured < power:
            n = math.ceil(n * 1.02)
            measured = simulated_msprt_power(baseline, mde, n, alpha=alpha, tau=tau, sims=sims, seed=seed)
    out = {"test": test, "labelled_positives_per_arm": n, "simulated_power": measured}
    if prevalence is not None and feedback_rate is not None:
        if not (0 < prevalence <= 1 and 0 < feedback_rate <= 1):
            raise ValueError(
                f"prevalence and feedback rate must be in (0, 1], got {prevalence}, {feedback_rate}"
            )
        out["requests_per_arm"] = math.ceil(n / (prevalence * feedback_rate))
        out["prevalence"], out["feedback_rate"] = prevalence, feedback_rate
    return out


def mann_whitney(control: np.ndarray, treatment: np.ndarray) -> tuple[float, float]:
    """Two-sided Mann-Whitney U p-value and the effect as P(treatment > control) - 0.5."""
    control, treatment = np.asarray(control, float), np.asarray(treatment, float)
    if len(control) == 0 or len(treatment) == 0:
        return 1.0, 0.0
    u, p = stats.mannwhitneyu(treatment, control, alternative="two-sided")
    return float(p), float(u / (len(control) * len(treatment)) - 0.5)
