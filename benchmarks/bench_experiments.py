"""Online-experiment benchmark: are the analyses right for the design in use?

    .venv/bin/python benchmarks/bench_experiments.py [--sims 2000] [--runs 100] [--json OUT]

Simulated in one run, vectorised with numpy, through the library's own decision functions
(``visionops.experiments.stats`` / ``analysis`` / ``assign``):

1. **per-request A/B** (each request drawn 50/50): labelled positives arrive at prevalence x feedback rate;
   the verdict's always-valid tests (mSPRT on recall and precision) are looked at 10 times up to the printed
   sample size (``stats.sample_size``, the n at which the mSPRT reaches 80% power);
2. **sticky A/B with heterogeneous cameras** (cameras hashed 50/50; volume, prevalence and recall differ
   per camera): the unit-level analysis (SRM on cameras, jackknife intervals over cameras) next to the per-request
   analysis the docs used to recommend; the printed units per arm come from a pilot's variances
   (``stats.cluster_units_per_arm``, what ``analyze`` prints);
3. **canary with 10 webhook looks** (Flagger-style ramp 5%..50%, the caller stating each weight): the
   always-valid checks with margins (``analysis.error_rate_state`` / ``interval_state`` /
   ``canary_verdict``) next to the old point-difference rule and next to SRM against fixed weights;
   power = a canary with the margin's worth of extra errors is aborted by the last look;
4. **bandit with a constraint** (``assign.ThompsonState``): share of traffic on the best feasible variant
   after a fixed budget vs a 50/50 split and vs the old precision-only bandit; the floor never broken;
   every variant infeasible: the cap still holds; A/A SRM against the logged shares; a recall drop halfway
   with and without a half-life.

Every rate is printed with its 95% Wilson interval next to the nominal value.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
from scipy.stats import chi2, norm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "components"))

from visionops.experiments import stats  # noqa: E402
from visionops.experiments.analysis import (  # noqa: E402
    AnalysisConfig,
    canary_sample_size,
    canary_verdict,
    error_rate_state,
    interval_state,
    mean_diff_variance,
)
from visionops.experiments.assign import ThompsonState, apply_floor_and_cap  # noqa: E402
from visionops.policy import TARGET_PRECISION  # noqa: E402

ALPHA, SRM_ALPHA, POWER, TAU = 0.05, 0.001, 0.8, 0.05
LOOKS = 10


def rate(hits, n: int) -> dict:
    """A measured rate with its 95% Wilson interval."""
    hits = int(np.sum(hits))
    lo, hi = stats.wilson_interval(hits, n)
    return {"rate": hits / n, "ci": [round(lo, 4), round(hi, 4)], "n": n}


def fp_rate_for(precision: float, recall: float, prevalence):
    """False-positive rate that gives ``precision`` at this recall and prevalence."""
    return recall * prevalence * (1 - precision) / (precision * (1 - prevalence))


def sequential_any(y_c, x_c, y_t, x_t, *, var_c=None, var_t=None):
    """Cumulative (.., looks) sums -> (significant at any look, significant and positive by the last look)."""
    r_c = np.divide(y_c, x_c, out=np.zeros_like(y_c, dtype=float), where=x_c > 0)
    r_t = np.divide(y_t, x_t, out=np.zeros_like(y_t, dtype=float), where=x_t > 0)
    if var_c is None:  # per request: binomial variances, as msprt_test
        var_c = r_c * (1 - r_c) / np.maximum(x_c, 1)
        var_t = r_t * (1 - r_t) / np.maximum(x_t, 1)
    p, _lo, _hi = stats.always_valid(r_t - r_c, var_c + var_t, alpha=ALPHA, tau=TAU)
    significant = (p < ALPHA) & (x_c > 1) & (x_t > 1)
    return significant.any(axis=-1), (significant & (r_t > r_c)).any(axis=-1)


# -- 1. per-request A/B ------------------------------------------------------------------------------------------
def per_request_ab(rng, sims: int, *, prevalence=0.05, feedback=0.1, recall=0.85, precision=0.97, mde=0.02):
    """A/A and A/B with per-request randomisation, 10 looks up to the printed sample size."""
    size = stats.sample_size(
        recall, mde, alpha=ALPHA, power=POWER, tau=TAU, prevalence=prevalence, feedback_rate=feedback
    )
    per_look = 2 * size["requests_per_arm"] // LOOKS

    def run(recall_t):
        arms = []
        arm_c = rng.binomial(per_look, 0.5, (sims, LOOKS))
        for n, r in ((arm_c, recall), (per_look - arm_c, recall_t)):
            pos = rng.binomial(n, prevalence * feedback)
            neg = rng.binomial(n - pos, (1 - prevalence) * feedback / (1 - prevalence * feedback))
            tp = rng.binomial(pos, r)
            fp = rng.binomial(neg, fp_rate_for(precision, r, prevalence))
            arms.append(
                {k: np.cumsum(v, axis=1) for k, v in (("n", n), ("pos", pos), ("tp", tp), ("fp", fp))}
            )
        return arms

    c, t = run(recall)
    rec_any, _ = sequential_any(c["tp"], c["pos"], t["tp"], t["pos"])
    prec_any, _ = sequential_any(c["tp"], c["tp"] + c["fp"], t["tp"], t["tp"] + t["fp"])
    counts = np.stack([np.diff(c["n"], prepend=0, axis=1), np.diff(t["n"], prepend=0, axis=1)], axis=-1)
    srm = np.stack(
        [stats.srm_sequential_p(counts[:, : k + 1], np.full((sims, k + 1, 2), 0.5)) for k in range(LOOKS)],
        axis=1,
    )
    c, t = run(recall + mde)
    _, shipped = sequential_any(c["tp"], c["pos"], t["tp"], t["pos"])
    return {
        "design": "per-request A/B",
        "aa_false_positive": rate(rec_any | prec_any, sims),
        "srm_false_alarm": rate((srm < SRM_ALPHA).any(axis=1), sims),
        "printed_n": f"{size['labelled_positives_per_arm']} labelled positives "
        f"({size['requests_per_arm']} requests) per arm",
        "power": rate(shipped, sims),
        "power_of": f"recall {recall} -> {recall + mde}",
    }


# -- 2. sticky A/B with heterogeneous cameras -----------------------------------------------------------------
def cameras(rng, sims: int, units: int, *, feedback=0.1, uplift=0.0):
    """Per camera and look: labelled positives, true positives, predicted positives; and the arm mask."""
    volume = rng.lognormal(math.log(2000), 1.0, (sims, units))  # requests over the experiment
    prevalence = rng.beta(2, 38, (sims, units))  # mean 5%, from 0.5% to 15%
    recall = rng.beta(17, 3, (sims, units))  # mean 0.85
    treated = rng.random((sims, units)) < 0.5
    recall = np.where(treated, np.minimum(recall + uplift, 0.999), recall)
    req = rng.poisson(volume[..., None] / LOOKS, (sims, units, LOOKS))
    pos = rng.binomial(req, (prevalence * feedback)[..., None])
    neg = rng.binomial(req - pos, ((1 - prevalence) * feedback / (1 - prevalence * feedback))[..., None])
    tp = rng.binomial(pos, recall[..., None])
    fp = rng.binomial(neg, fp_rate_for(0.97, recall, prevalence)[..., None])
    cum = {k: np.cumsum(v, axis=2) for k, v in (("req", req), ("pos", pos), ("tp", tp), ("pp", tp + fp))}
    return cum, treated


def _arm_ratio(cum, mask, num, den):
    """Per look: the arm's ratio and jackknife variance, units as clusters."""
    m = mask[..., None]
    y = np.moveaxis(cum[num] * m, 2, 1)  # (sims, looks, units)
    x = np.moveaxis(cum[den] * m, 2, 1)
    return stats.ratio_estimate(y, x, mask.sum(axis=1)[:, None])


def sticky_tests(cum, treated):
    """(unit-level: any significant, shipped), (per-request: any significant), for recall and precision."""
    out = {}
    for metric, den in (("recall", "pos"), ("precision", "pp")):
        r_c, v_c = _arm_ratio(cum, ~treated, "tp", den)
        r_t, v_t = _arm_ratio(cum, treated, "tp", den)
        p, _lo, _hi = stats.always_valid(r_t - r_c, v_c + v_t, alpha=ALPHA, tau=TAU)
        sig = p < ALPHA
        out[metric] = (sig.any(axis=1), (sig & (r_t > r_c)).any(axis=1), v_c, v_t)
        sums = [(cum["tp"] * m[..., None]).sum(axis=1) for m in (~treated, treated)]
        dens = [(cum[den] * m[..., None]).sum(axis=1) for m in (~treated, treated)]
        naive, _ = sequential_any(sums[0], dens[0], sums[1], dens[1])
        out[f"{metric}_per_request"] = naive
    return out


def sticky_ab(rng, sims: int, *, units=200, mde=0.05):
    """A/A with heterogeneous cameras: unit-level vs per-request analysis; power at the printed units."""
    cum, treated = cameras(rng, sims, units)
    tests = sticky_tests(cum, treated)
    unit_counts = np.stack([(~treated).sum(axis=1), treated.sum(axis=1)], axis=-1)[:, None, :]
    srm_units = stats.srm_sequential_p(unit_counts, np.full((sims, 1, 2), 0.5))
    req = cum["req"][..., -1]
    req_counts = np.stack([(req * ~treated).sum(axis=1), (req * treated).sum(axis=1)], axis=-1)[:, None, :]
    # the previous analysis: a one-look chi-square on request counts
    observed = req_counts[:, 0, :]
    expected = observed.sum(axis=1, keepdims=True) / 2
    srm_requests = chi2.sf((((observed - expected) ** 2) / expected).sum(axis=1), 1)
    # the printed size: what `analyze` prints from a pilot (here a large A/A run of the same traffic)
    pilot, _pilot_treated = cameras(rng, 1, 2000)
    size = stats.cluster_sample_size(
        pilot["tp"][0, :, -1], pilot["pos"][0, :, -1], mde, alpha=ALPHA, power=POWER, tau=TAU
    )
    printed = size["units_per_arm"]
    power_sims = max(sims // 2, 200)
    cum_b, treated_b = cameras(rng, power_sims, 2 * printed, uplift=mde)
    shipped = sticky_tests(cum_b, treated_b)["recall"][1]
    return {
        "design": f"sticky A/B, {units} heterogeneous cameras",
        "aa_false_positive": rate(tests["recall"][0] | tests["precision"][0], sims),
        "srm_false_alarm": rate(srm_units < SRM_ALPHA, sims),
        "printed_n": f"{printed} cameras per arm",
        "power": rate(shipped, power_sims),
        "power_of": f"recall +{mde} on every camera",
        "old_per_request": {
            "aa_false_positive": rate(tests["recall_per_request"] | tests["precision_per_request"], sims),
            "srm_false_alarm": rate(srm_requests < SRM_ALPHA, sims),
        },
    }


# -- 3. canary with 10 webhook looks -------------------------------------------------------------------------
def _arm_stream(rng, n, *, error, log_latency=(math.log(20), 0.5), confidence=(0.85, 0.1), positive=0.3):
    """Per interval sufficient statistics of one arm: errors, positives, and (sum, sum of squares) of
    log latency and of confidence, drawn exactly for normal values."""
    out = {"n": n, "errors": rng.binomial(n, error), "positive": rng.binomial(n, positive)}
    for name, (mu, sd) in (("lat", log_latency), ("conf", confidence)):
        total = rng.normal(n * mu, sd * np.sqrt(np.maximum(n, 1)))
        within = sd**2 * rng.chisquare(np.maximum(n - 1, 1))
        out[f"{name}_sum"] = total
        out[f"{name}_sq"] = within + np.divide(total**2, n, out=np.zeros_like(total), where=n > 0)
    return {k: np.cumsum(v, axis=1) for k, v in out.items()}


def _mean_var(arm, name):
    n = arm["n"].astype(float)
    mean = arm[f"{name}_sum"] / np.maximum(n, 1)
    var = (arm[f"{name}_sq"] - n * mean**2) / np.maximum(n - 1, 1)
    return mean, var, n


def canary_rollout(rng, sims: int, *, base_error=0.01, bad_error=None):
    """Abort / promote rates of simulated rollouts (weights 5%..50%, a webhook look after each step)."""
    config = AnalysisConfig(design="canary")
    weights = np.arange(1, LOOKS + 1) * 0.05
    printed = canary_sample_size(base_error, config)
    per_interval = math.ceil(printed / weights.sum())
    canary_n = rng.binomial(per_interval, np.broadcast_to(weights, (sims, LOOKS)))
    base = _arm_stream(rng, per_interval - canary_n, error=base_error)
    canary = _arm_stream(rng, canary_n, error=base_error if bad_error is None else bad_error)
    states = {}
    states["error_rate"] = error_rate_state(
        base["errors"],
        base["n"],
        canary["errors"],
        canary["n"],
        margin=config.canary_max_error_increase,
        alpha=ALPHA,
    )[0]
    mb, vb, nb = _mean_var(base, "lat")
    mc, vc, nc = _mean_var(canary, "lat")
    allowance = math.log(config.canary_max_latency_ratio)
    states["latency_ratio"] = interval_state(
        mc - mb, mean_diff_variance(vb, nb, vc, nc), tau=allowance, alpha=ALPHA, upper=allowance
    )[0]
    s_b, s_c = base["positive"] / np.maximum(nb, 1), canary["positive"] / np.maximum(nc, 1)
    a = config.canary_class_share_allowance
    v = s_b * (1 - s_b) / np.maximum(nb, 1) + s_c * (1 - s_c) / np.maximum(nc, 1)
    states["predicted_class_shares"] = interval_state(s_c - s_b, v, tau=a, alpha=ALPHA, upper=a, lower=-a)[0]
    mb, vb, nb = _mean_var(base, "conf")
    mc, vc, nc = _mean_var(canary, "conf")
    a = config.canary_confidence_allowance
    states["mean_confidence"] = interval_state(
        mc - mb, mean_diff_variance(vb, nb, vc, nc), tau=a, alpha=ALPHA, upper=a, lower=-a
    )[0]
    counts = np.stack([np.diff(base["n"], prepend=0, axis=1), np.diff(canary["n"], prepend=0, axis=1)], -1)
    probs = np.broadcast_to(np.stack([1 - weights, weights], -1), counts.shape)
    srm = np.stack([stats.srm_sequential_p(counts[:, : k + 1], probs[:, : k + 1]) for k in range(LOOKS)], 1)
    fixed = np.stack(
        [
            stats.srm_sequential_p(counts[:, : k + 1], np.full((sims, k + 1, 2), [0.9, 0.1]))
            for k in range(LOOKS)
        ],
        1,
    )
    enough = (nb >= config.min_samples) & (nc >= config.min_samples)
    verdict = canary_verdict(srm < SRM_ALPHA, states, enough)
    # the old rule: abort when the error rate's z-test is significant upwards or the point difference > 0.01
    p_b, p_c = base["errors"] / np.maximum(nb, 1), canary["errors"] / np.maximum(nc, 1)
    pooled = (base["errors"] + canary["errors"]) / np.maximum(nb + nc, 1)
    se = np.sqrt(np.maximum(pooled * (1 - pooled) * (1 / np.maximum(nb, 1) + 1 / np.maximum(nc, 1)), 1e-300))
    old_abort = ((2 * norm.sf(np.abs(p_c - p_b) / se) < ALPHA) & (p_c > p_b)) | (p_c - p_b > 0.01)
    return {
        "printed": printed,
        "abort": (verdict == "abort").any(axis=1),
        "promoted_last": verdict[:, -1] == "promote",
        "srm": (srm < SRM_ALPHA).any(axis=1),
        "srm_fixed_weights": (fixed < SRM_ALPHA).any(axis=1),
        "old_abort": old_abort.any(axis=1),
    }


def canary(rng, sims: int, *, base_error=0.01):
    """A/A rollouts and rollouts of a canary with the margin's worth of extra errors."""
    aa = canary_rollout(rng, sims, base_error=base_error)
    margin = AnalysisConfig(design="canary").canary_max_error_increase
    bad = canary_rollout(rng, sims, base_error=base_error, bad_error=base_error + margin)
    return {
        "design": "canary, 10 webhook looks (5%..50%)",
        "aa_false_positive": rate(aa["abort"], sims),
        "srm_false_alarm": rate(aa["srm"], sims),
        "printed_n": f"{aa['printed']} canary requests",
        "power": rate(bad["abort"], sims),
        "power_of": f"errors {base_error} -> {base_error + margin} aborted by the last look",
        "healthy_promoted_at_last_look": rate(aa["promoted_last"], sims),
        "old_per_look_rule": {
            "aa_false_positive": rate(aa["old_abort"], sims),
            "srm_false_alarm_fixed_weights": rate(aa["srm_fixed_weights"], sims),
        },
    }


# -- 4. bandit with a constraint ---------------------------------------------------------------------------------
def _old_shares(state: ThompsonState, rng) -> dict[str, float]:
    """The previous router's rule, for contrast: Thompson on precision alone; every variant failing the
    target: floor and cap dropped."""
    post = np.array([state.posterior(v) for v in state.variants])
    samples = rng.beta(post[:, 0, None], post[:, 1, None], (len(state.variants), 2000))
    wins = np.bincount(samples.argmax(axis=0), minlength=len(state.variants)) / 2000
    caps = {v: state.cap for v in state.variants if state.failing(v)}
    shares = dict(zip(state.variants, wins.tolist(), strict=True))
    if len(caps) == len(state.variants):
        total = sum(max(s, state.floor) for s in shares.values())
        return {v: max(s, state.floor) / total for v, s in shares.items()}
    return apply_floor_and_cap(shares, state.floor, caps)


def bandit_run(
    rng,
    variants,
    *,
    refreshes=50,
    requests=400,
    prevalence=0.3,
    feedback=0.5,
    delay=2,
    old=False,
    half_life=None,
    change=None,
):
    """One bandit run; variants = {name: (precision, recall)}; ``change`` = (refresh, name, (p, r)).
    Returns the shares used at each refresh (refreshes, k) and the requests each variant got."""
    names = list(variants)
    state = ThompsonState(names, target=TARGET_PRECISION, half_life=half_life)
    truth = dict(variants)
    queue: list[tuple[int, str, int, int, int]] = []
    used, routed = [], []
    for step in range(refreshes):
        if change and step == change[0]:
            truth[change[1]] = change[2]
        shares = _old_shares(state, rng) if old else state.shares(seed=int(rng.integers(2**32)))
        used.append([shares[v] for v in names])
        counts = rng.multinomial(requests, [shares[v] for v in names])
        routed.append(counts)
        for name, n in zip(names, counts, strict=True):
            precision, recall = truth[name]
            pos = rng.binomial(rng.binomial(n, feedback), prevalence)
            neg = rng.binomial(n, feedback) - pos
            tp = rng.binomial(pos, recall)
            fp = rng.binomial(max(neg, 0), fp_rate_for(precision, recall, prevalence))
            queue.append((step + delay, name, tp, fp, pos - tp))
        for item in [q for q in queue if q[0] <= step]:
            state.record_counts(item[1], tp=item[2], fp=item[3], fn=item[4])
        queue = [q for q in queue if q[0] > step]
    return np.array(used), np.array(routed)


def bandit(rng, runs: int):
    """Traffic on the best feasible variant, the floor, the cap when all fail, A/A SRM, a recall drop."""
    feasible = {"a": (0.96, 0.90), "b": (0.99, 0.55)}  # a meets the target with the better recall
    new, final, old, floor_min = [], [], [], 1.0
    for _ in range(runs):
        used, routed = bandit_run(rng, feasible)
        new.append(routed[:, 0].sum() / routed.sum())
        final.append(used[-1, 0])
        floor_min = min(floor_min, used.min())
        _used, routed = bandit_run(rng, feasible, old=True)
        old.append(routed[:, 0].sum() / routed.sum())
    failing = {"a": (0.90, 0.90), "b": (0.85, 0.95)}  # nobody meets the target; a is the control
    caps = [bandit_run(rng, failing, refreshes=30)[0][-1] for _ in range(max(runs // 5, 10))]
    aa_srm = []
    for _ in range(runs):
        used, routed = bandit_run(rng, {"a": (0.97, 0.85), "b": (0.97, 0.85)})
        p = [stats.srm_sequential_p(routed[None, : k + 1], used[None, : k + 1])[0] for k in range(len(used))]
        aa_srm.append(min(p) < SRM_ALPHA)
    drift = {}
    for label, half_life in (("no discount", None), ("half-life 500 labels", 500)):
        shares = []
        for _ in range(max(runs // 5, 10)):
            _u, routed = bandit_run(
                rng, feasible, refreshes=80, change=(40, "a", (0.96, 0.40)), half_life=half_life
            )
            shares.append(routed[40:, 1].sum() / routed[40:].sum())  # b is the best feasible after the drop
        drift[label] = round(float(np.mean(shares)), 3)
    return {
        "design": "bandit, recall s.t. precision >= target",
        "best_feasible_share": round(float(np.mean(new)), 3),
        "best_feasible_share_range": [round(float(np.min(new)), 3), round(float(np.max(new)), 3)],
        "best_feasible_share_at_end": round(float(np.mean(final)), 3),
        "fixed_split_share": 0.5,
        "old_precision_only_share": round(float(np.mean(old)), 3),
        "lowest_share_any_refresh": round(float(floor_min), 4),
        "floor": ThompsonState(["a"]).floor,
        "all_failing_final_shares": {
            "control a": round(float(np.mean([c[0] for c in caps])), 3),
            "b (capped)": round(float(np.max([c[1] for c in caps])), 3),
        },
        "aa_srm_false_alarm_logged_shares": rate(aa_srm, runs),
        "share_on_new_best_after_drop": drift,
        "budget": "50 refreshes x 400 requests, half reviewed, feedback 2 refreshes late",
    }


def _fmt(r: dict) -> str:
    return f"{r['rate']:.3f} [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sims", type=int, default=2000, help="Simulated experiments per design.")
    parser.add_argument("--runs", type=int, default=60, help="Simulated bandit runs.")
    parser.add_argument("--seed", type=int, default=19)
    parser.add_argument("--json", help="Also write the figures to this JSON file.")
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    rows, started = [], time.perf_counter()
    for fn in (per_request_ab, sticky_ab, canary):
        t = time.perf_counter()
        rows.append(fn(rng, args.sims) | {"seconds": round(time.perf_counter() - t, 1)})
    t = time.perf_counter()
    bandit_row = bandit(rng, args.runs) | {"seconds": round(time.perf_counter() - t, 1)}
    print(
        f"\nA/A false positives (nominal <= {ALPHA}), SRM false alarms (nominal <= {SRM_ALPHA}), power at the "
        f"printed sample size (nominal >= {POWER}); 95% Wilson intervals; {args.sims} experiments each\n"
    )
    print("| design | A/A false positives | SRM false alarms | printed sample size | power | power of |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['design']} | {_fmt(r['aa_false_positive'])} | {_fmt(r['srm_false_alarm'])} | "
            f"{r['printed_n']} | {_fmt(r['power'])} | {r['power_of']} |"
        )
    sticky, canary_row = rows[1], rows[2]
    print(
        f"\nsticky A/B analysed per request (the old way): A/A false positives "
        f"{_fmt(sticky['old_per_request']['aa_false_positive'])}, SRM on requests "
        f"{_fmt(sticky['old_per_request']['srm_false_alarm'])}"
    )
    print(
        f"canary, old rule (z-test or point difference > 0.01 at each look): A/A aborts "
        f"{_fmt(canary_row['old_per_look_rule']['aa_false_positive'])}; SRM against fixed 90/10 weights "
        f"{_fmt(canary_row['old_per_look_rule']['srm_false_alarm_fixed_weights'])}; healthy canary promoted "
        f"at the last look {_fmt(canary_row['healthy_promoted_at_last_look'])}"
    )
    b = bandit_row
    print(
        f"\nbandit ({b['budget']}; a: precision 0.96 recall 0.90, b: precision 0.99 recall 0.55; "
        f"{args.runs} runs):"
    )
    print(
        f"  traffic on the best feasible variant over the budget: {b['best_feasible_share']} (runs "
        f"{b['best_feasible_share_range'][0]}-{b['best_feasible_share_range'][1]}) vs 50/50 split "
        f"{b['fixed_split_share']} vs old precision-only bandit {b['old_precision_only_share']}; at the end "
        f"of the budget it gets {b['best_feasible_share_at_end']}"
    )
    print(
        f"  lowest share of any variant at any refresh: {b['lowest_share_any_refresh']} (floor {b['floor']})"
    )
    print(f"  every variant infeasible: final shares {b['all_failing_final_shares']}")
    print(
        f"  A/A bandit, SRM against the logged shares at every refresh: "
        f"{_fmt(b['aa_srm_false_alarm_logged_shares'])} (nominal <= {SRM_ALPHA})"
    )
    print(f"  a's recall drops to 0.40 halfway: share on b afterwards {b['share_on_new_best_after_drop']}")
    parts = ", ".join(f"{r['design'].split(',')[0]} {r['seconds']} s" for r in [*rows, b])
    print(f"\ntotal {time.perf_counter() - started:.1f} s ({parts})")
    if args.json:
        Path(args.json).write_text(json.dumps({"designs": rows, "bandit": bandit_row}, indent=2))


if __name__ == "__main__":
    main()
