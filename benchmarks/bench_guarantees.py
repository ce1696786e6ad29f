"""Every statistical promise of the gate and the monitor, measured by simulation in one run.

    .venv/bin/python benchmarks/bench_guarantees.py [--quick] [--json PATH]

Each line prints the measured error rate (with its 95% Wilson interval over the simulated trials) next to the
nominal one; the run fails (exit 1) when a measured rate is above its nominal value:

1. false certification of the threshold: the fixed-sequence search certifies a threshold whose true precision
   (at the stated prevalence) is below the target; on a *flat* precision curve (precision 0.948 over half the
   score range: every certification is false) at 50/50 and at 7.6% prevalence, and on a *steep* one (two
   normal score distributions). The previous search (best of all thresholds whose Wilson bound passes, at the
   validation split's balance) is measured beside it;
2. the golden rule: the bound at the production prevalence passes a threshold whose true precision is 0.945;
3. champion false pass: the paired non-inferiority test passes a challenger whose recall is exactly the
   margin (5 points) worse, or 10 points worse, or whose FPR is the margin (3 points) higher; the pass rate at
   equal recall (the power) is shown for information;
4. slice false flags on a sound model (no slice differs): Holm-adjusted at 0.05, and the same tests
   uncorrected beside it (the previous rule, which also used a z-test that is liberal on small slices);
5. drift false alarms per window for windows of 50, 100, 200 and 1,000 rows drawn fresh from the reference's
   population, with thresholds calibrated at reference time, and the previous fixed thresholds beside them;
6. live-precision trigger false fires per check at a true precision of 0.95 (the boundary) and 0.97: 50
   random labels, and a stratified review design (uncertain images taken whole + a random share, weighted by
   1 / selection probability); the previous point-estimate rule beside them.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "components"))

from visionops.evaluation.metrics import lower_bounds, proportion_interval, weighted_rate  # noqa: E402
from visionops.evaluation.paired import paired_difference  # noqa: E402
from visionops.evaluation.threshold import choose_threshold, precision_at, precision_lower_bound  # noqa: E402
from visionops.policy import CONFIDENCE, TARGET_PRECISION  # noqa: E402

ALPHA = (1 - CONFIDENCE) / 2  # the one-sided error of every proof: 0.025


def rate(hits: int, n: int, nominal: float, name: str, condition: str, *, baseline: bool = False) -> dict:
    """One result row: the measured rate with its 95% Wilson interval next to the nominal one."""
    low, high = proportion_interval(hits, n)
    return {
        "guarantee": name,
        "condition": condition,
        "measured": hits / n,
        "interval": [low, high],
        "trials": n,
        "nominal": nominal,
        "ok": baseline or hits / n <= nominal,
        "baseline": baseline,
    }


# -- 1. threshold certification --------------------------------------------------------------------------------
def flat_scores(rng, n_pos: int, n_neg: int, prevalence: float, level: float = 0.948):
    """Scores whose precision at ``prevalence`` is ``level`` for every threshold in [0.5, 1): above 0.5,
    TPR and FPR both fall linearly, in a fixed ratio."""
    ratio = level * (1 - prevalence) / ((1 - level) * prevalence)  # TPR / FPR
    a = 0.9  # share of positives above 0.5
    b = a / ratio
    pos = np.where(rng.random(n_pos) < a, rng.uniform(0.5, 1, n_pos), rng.uniform(0, 0.5, n_pos))
    neg = np.where(rng.random(n_neg) < b, rng.uniform(0.5, 1, n_neg), rng.uniform(0, 0.5, n_neg))

    def true_precision(t):
        t = np.clip(t, 0, 1)
        above = t >= 0.5
        tpr = np.where(above, a * (1 - t) / 0.5, a + (1 - a) * (0.5 - t) / 0.5)
        fpr = np.where(above, b * (1 - t) / 0.5, b + (1 - b) * (0.5 - t) / 0.5)
        return precision_at(tpr, fpr, prevalence)

    return np.r_[pos, neg], np.r_[np.ones(n_pos, bool), np.zeros(n_neg, bool)], true_precision


def steep_scores(rng, n_pos: int, n_neg: int, prevalence: float, shift: float = 2.5):
    """Normal scores (positives shifted by ``shift``): precision rises steeply with the threshold."""
    from scipy import stats

    pos, neg = rng.normal(shift, 1, n_pos), rng.normal(0, 1, n_neg)

    def true_precision(t):
        return precision_at(stats.norm.sf(t - shift), stats.norm.sf(t), prevalence)

    return np.r_[pos, neg], np.r_[np.ones(n_pos, bool), np.zeros(n_neg, bool)], true_precision


def previous_search(scores, is_pos):
    """The search this replaces: the most-recall threshold among all whose Wilson bound of precision (on the
    split as it is) passes; None when none does."""
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], is_pos[order]
    tp, fp = np.cumsum(y), np.cumsum(~y)
    lower = lower_bounds(tp, tp + fp, confidence=CONFIDENCE, method="wilson")
    ok = np.flatnonzero(lower >= TARGET_PRECISION)
    return None if not len(ok) else s[ok[np.argmax(tp[ok])]]


def simulate_threshold(
    kind: str, prevalence: float, n_pos: int, n_neg: int, reps: int, seed: int, **curve: float
) -> list:
    """False certification of the fixed-sequence search (and of the previous search at 50/50); ``curve`` goes to
    the score generator (e.g. ``shift`` of the steep curve)."""
    rng = np.random.default_rng(seed)
    make = functools.partial(flat_scores if kind == "flat" else steep_scores, **curve)
    false_new = false_old = certified = 0
    for _ in range(reps):
        scores, is_pos, truth = make(rng, n_pos, n_neg, prevalence)
        choice = choose_threshold(scores, is_pos, prevalence=prevalence)
        if choice.met:
            certified += 1
            false_new += bool(truth(choice.threshold) < TARGET_PRECISION)
        if prevalence == 0.5:
            old = previous_search(scores, is_pos)
            false_old += old is not None and bool(truth(old) < TARGET_PRECISION)
    condition = f"{kind} precision curve, prevalence {prevalence}, val {n_pos}+{n_neg}"
    rows = [rate(false_new, reps, ALPHA, "threshold false certification", condition)]
    rows[-1]["certified_share"] = certified / reps
    if prevalence == 0.5:
        rows.append(rate(false_old, reps, ALPHA, "  previous search (best of all)", condition, baseline=True))
    return rows


# -- 2. golden rule ---------------------------------------------------------------------------------------------
def simulate_golden(prevalence: float, n_pos: int, n_neg: int, reps: int, seed: int) -> dict:
    """The golden rule passes a threshold whose true precision at ``prevalence`` is 0.945."""
    rng = np.random.default_rng(seed)
    tpr = 0.9
    fpr = tpr * prevalence * (1 - 0.945) / (0.945 * (1 - prevalence))
    tp = rng.binomial(n_pos, tpr, reps)
    fp = rng.binomial(n_neg, fpr, reps)
    bound = precision_lower_bound(tp, n_pos, fp, n_neg, prevalence, ALPHA)
    passes = int((bound >= TARGET_PRECISION).sum())
    return rate(passes, reps, ALPHA, "golden rule false pass",
                f"true precision 0.945 at prevalence {prevalence}, golden {n_pos}+{n_neg}")  # fmt: skip


# -- 3. champion vs challenger ---------------------------------------------------------------------------------
def paired_outcomes(rng, n: int, p_champion: float, p_challenger: float, agreement: float = 0.85):
    """Paired 0/1 outcomes with the given marginal rates and strong positive correlation."""
    both = min(p_champion, p_challenger) * agreement + (1 - agreement) * p_champion * p_challenger
    only_ch = p_challenger - both
    only_cp = p_champion - both
    cells = np.array([both, only_ch, only_cp, 1 - both - only_ch - only_cp])
    draw = rng.choice(4, size=n, p=cells / cells.sum())
    return np.isin(draw, (0, 1)), np.isin(draw, (0, 2))  # challenger, champion


def simulate_champion(reps: int, seed: int, *, n: int = 150, margin: float = 0.05, fpr_margin: float = 0.03):
    """False passes of the paired non-inferiority tests at and beyond their margins."""
    rng = np.random.default_rng(seed)
    rows = []
    for worse, name, nominal in ((margin, "at the margin", ALPHA), (0.10, "10 points worse", ALPHA),
                                 (0.0, "equal recall (power, not an error)", 1.0)):  # fmt: skip
        passes = 0
        for _ in range(reps):
            ch, cp = paired_outcomes(rng, n, 0.9, 0.9 - worse)
            passes += paired_difference(ch, cp, alpha=ALPHA)["lower"] > -margin
        rows.append(rate(passes, reps, nominal, "champion false pass (recall)",
                         f"challenger recall {name}, {n} golden positives, margin {margin}",
                         baseline=nominal == 1.0))  # fmt: skip
    passes = 0
    for _ in range(reps):
        ch, cp = paired_outcomes(rng, n, 0.02, 0.02 + fpr_margin)
        passes += paired_difference(ch, cp, alpha=ALPHA)["upper"] < fpr_margin
    rows.append(rate(passes, reps, ALPHA, "champion false pass (FPR)",
                     f"challenger FPR {fpr_margin} higher, {n} golden negatives"))  # fmt: skip
    # the rule this replaces: point estimates, recall within 0.01 of the champion's
    passes = 0
    for _ in range(reps):
        ch, cp = paired_outcomes(rng, n, 0.9, 0.85)
        passes += ch.mean() >= cp.mean() - 0.01
    rows.append(rate(passes, reps, ALPHA, "  previous rule (point, tolerance 0.01)",
                     "challenger recall 5 points worse", baseline=True))  # fmt: skip
    return rows


# -- 4. slices --------------------------------------------------------------------------------------------------
def simulate_slices(reps: int, seed: int, *, n: int = 400, columns: int = 4, values: int = 4) -> list:
    """Any flagged slice on a sound model (errors independent of every slice column)."""
    import pandas as pd
    from visionops.evaluation.slices import slice_metrics

    rng = np.random.default_rng(seed)
    holm = plain = 0
    for _ in range(reps):
        frame = pd.DataFrame({f"c{j}": rng.integers(0, values, n).astype(str) for j in range(columns)})
        y = rng.integers(0, 2, n)
        y_pred = np.where(rng.random(n) < 0.9, y, 1 - y)
        out = slice_metrics(frame, y, y_pred, 0, list(frame.columns), min_n=30, alpha=0.05)
        holm += bool(out["flagged"])
        plain += any(
            r.get(f"{m}_pvalue", 1.0) < 0.05 for r in out["rows"] for m in ("accuracy", "recall", "precision")
        )
    condition = f"{columns} columns x {values} values, {n} golden images, no real difference"
    return [
        rate(holm, reps, 0.05, "slice false flag (any slice, Holm)", condition),
        rate(plain, reps, 0.05, "  uncorrected (p < 0.05 per test)", condition, baseline=True),
    ]


# -- 5. drift ---------------------------------------------------------------------------------------------------
def population(rng, n: int):
    """Feature rows like the monitor's: skewed, bounded, discrete and categorical columns (8% positive)."""
    import pandas as pd

    positive = rng.random(n) < 0.08
    frame = pd.DataFrame(
        {
            "brightness": rng.beta(5, 4, n),
            "contrast": rng.gamma(4, 0.05, n),
            "saturation": rng.beta(2, 6, n),
            "sharpness": rng.lognormal(0, 0.8, n),
            "mean_r": rng.beta(5, 4, n),
            "mean_g": rng.beta(4, 5, n),
            "mean_b": rng.beta(3, 5, n),
            "width": rng.choice([250.0, 320.0, 640.0], n, p=[0.6, 0.3, 0.1]),
            "confidence": np.clip(1 - rng.beta(1, 12, n), 0.5, 1),
            "positive_prob": np.where(positive, rng.beta(8, 2, n), rng.beta(1, 15, n)),
            "predicted_class": np.where(positive, "glasses", "no_glasses"),
        }
    )
    for j in range(6):
        frame[f"emb_{j}"] = rng.standard_normal(n)
    return frame


def simulate_drift(
    references: int, windows: int, seed: int, *, reference_rows: int = 1000, baseline: bool = True
) -> list:
    """False alarms per window on windows drawn fresh from the reference's population."""
    from visionops.drift.calibration import calibrate
    from visionops.drift.detect import DriftPolicy, compute_drift, monitored_columns

    rng = np.random.default_rng(seed)
    sizes = (50, 100, 200, 1000)
    calibrated = dict.fromkeys(sizes, 0)
    fixed = dict.fromkeys(sizes, 0)
    for _ in range(references):
        reference = population(rng, reference_rows)
        columns = monitored_columns(reference.columns, DriftPolicy())
        calibration, _ = calibrate(reference, columns, seed=int(rng.integers(1 << 30)))
        for n in sizes:
            for _ in range(windows):
                window = population(rng, n)
                calibrated[n] += compute_drift(reference, window, calibration=calibration)["dataset_drift"]
                if baseline and (n < 1000 or _ < windows // 4):  # the fixed rule (Evidently is slow)
                    fixed[n] += compute_drift(reference, window)["dataset_drift"]
    rows = []
    for n in sizes:
        total = references * windows
        condition = f"window {n} rows, reference {reference_rows} rows, {references} references"
        rows.append(rate(calibrated[n], total, 0.01, "drift false alarm per window (calibrated)", condition))
        base_total = total if n < 1000 else references * (windows // 4)
        if baseline:
            rows.append(
                rate(fixed[n], base_total, 0.01, "  previous fixed thresholds", condition, baseline=True)
            )
    return rows


# -- 6. live precision trigger ------------------------------------------------------------------------------------
def simulate_live(reps: int, seed: int, *, labels: int = 50) -> list:
    """False fires of the live-precision trigger per check (fires when the upper bound < target)."""
    rng = np.random.default_rng(seed)
    rows = []
    for true in (TARGET_PRECISION, 0.97):
        fires = old = 0
        for _ in range(reps):
            hits = rng.random(labels) < true
            fires += weighted_rate(hits, confidence=CONFIDENCE)["upper"] < TARGET_PRECISION
            old += hits.mean() < TARGET_PRECISION
        condition = f"true precision {true}, {labels} random labels of images called glasses"
        rows.append(rate(fires, reps, ALPHA, "live trigger false fire (random labels)", condition))
        rows.append(rate(old, reps, ALPHA, "  previous rule (point < 0.95)", condition, baseline=True))
    rows.append(simulate_live_stratified(reps, seed + 1))
    return rows


def simulate_live_stratified(
    reps: int, seed: int, *, traffic: int = 4000, uncertain: int = 40, random: int = 60
):
    """The review design of `visionops label select`: the most uncertain images taken whole (precision 0.6
    among them), a random share of the rest; weighted by 1 / selection probability. Traffic precision of the
    images called glasses is exactly 0.95."""
    rng = np.random.default_rng(seed)
    fires = 0
    for _ in range(reps):
        # traffic called glasses: the hard stratum (precision 0.6) and the rest tuned so that all is 0.95
        n_rest = traffic - uncertain
        rest_precision = (TARGET_PRECISION * traffic - 0.6 * uncertain) / n_rest
        hard = rng.random(uncertain) < 0.6
        pick = rng.random(n_rest)[:random] < rest_precision
        hits = np.r_[hard, pick]
        weights = np.r_[np.ones(uncertain), np.full(random, n_rest / random)]
        fires += weighted_rate(hits, weights, confidence=CONFIDENCE)["upper"] < TARGET_PRECISION
    return rate(fires, reps, ALPHA, "live trigger false fire (weighted)",
                f"true precision 0.95; {uncertain} uncertain (p=1) + {random} random of {traffic}")  # fmt: skip


PARTS = ("threshold", "golden", "champion", "slices", "drift", "live")


def run(quick: bool, only: tuple[str, ...] = PARTS) -> list[dict]:
    k = 4 if quick else 1
    rows: list[dict] = []
    started = time.perf_counter()
    if "threshold" in only:
        rows += simulate_threshold("flat", 0.5, 150, 150, 2000 // k, 1)
        rows += simulate_threshold("flat", 0.076, 300, 3000, 1000 // k, 2)
        rows += simulate_threshold("steep", 0.5, 150, 150, 2000 // k, 3)
    if "golden" in only:
        rows.append(simulate_golden(0.5, 150, 150, 200_000 // k, 4))
        rows.append(simulate_golden(0.076, 300, 3000, 200_000 // k, 5))
    if "champion" in only:
        rows += simulate_champion(4000 // k, 6)
    if "slices" in only:
        rows += simulate_slices(400 // k, 7)
    if "drift" in only:
        rows += simulate_drift(4 if not quick else 2, 150 // k, 8)
    if "live" in only:
        rows += simulate_live(20_000 // k, 9)
    print(f"({time.perf_counter() - started:.0f} s)")
    return rows


def show(rows: list[dict]) -> None:
    print(f"{'guarantee':44} {'measured':>9} {'95% interval':>17} {'nominal':>8}  condition")
    for r in rows:
        flag = "" if r["baseline"] else ("  ok" if r["ok"] else "  ABOVE NOMINAL")
        low, high = r["interval"]
        print(
            f"{r['guarantee']:44} {r['measured']:9.4f} [{low:.4f}, {high:.4f}] {r['nominal']:8.3f}  "
            f"{r['condition']}{flag}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a quarter of the trials")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    parser.add_argument(
        "--only", action="append", choices=PARTS, help="run only these parts (repeatable; default: all)"
    )
    args = parser.parse_args()
    rows = run(args.quick, tuple(args.only or PARTS))
    show(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    failed = [r for r in rows if not r["ok"]]
    print("every rate at or below nominal" if not failed else f"{len(failed)} rate(s) above nominal")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
