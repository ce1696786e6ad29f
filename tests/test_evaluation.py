"""Evaluation and gate logic on plain arrays: intervals, threshold choice, metrics, slices, rules, policy."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from visionops.errors import ConfigError, GateError
from visionops.evaluation import GatePolicy, decide
from visionops.evaluation.metrics import (
    at_threshold,
    calibration,
    classification_report,
    lower_bounds,
    proportion_interval,
    two_proportion_pvalue,
)
from visionops.evaluation.slices import slice_metrics
from visionops.evaluation.threshold import choose_threshold, sweep

Z = 1.959963984540054  # two-sided 95% normal quantile


# -- intervals ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("k,n", [(0, 10), (3, 10), (10, 10), (72, 72), (80, 81), (450, 500), (1, 1)])
def test_intervals_match_statsmodels(k, n):
    proportion = pytest.importorskip("statsmodels.stats.proportion")
    for ours, theirs in (("wilson", "wilson"), ("clopper-pearson", "beta")):
        expected = proportion.proportion_confint(k, n, alpha=0.05, method=theirs)
        got = proportion_interval(k, n, confidence=0.95, method=ours)
        assert got == pytest.approx(expected, abs=1e-10), (ours, k, n)
        vec = lower_bounds(np.array([k]), np.array([n]), confidence=0.95, method=ours)
        assert vec[0] == pytest.approx(expected[0], abs=1e-10)


def test_intervals_closed_forms_for_all_correct():
    # k == n: Wilson lower bound is n / (n + z^2); Clopper-Pearson's is (alpha/2)^(1/n)
    for n in (10, 72, 73, 200):
        assert proportion_interval(n, n)[0] == pytest.approx(n / (n + Z * Z), abs=1e-12)
        assert proportion_interval(n, n, method="clopper-pearson")[0] == pytest.approx(
            0.025 ** (1 / n), abs=1e-12
        )
    assert proportion_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ConfigError, match="unknown interval method 'exact'; valid: wilson, clopper-pearson"):
        proportion_interval(1, 2, method="exact")
    with pytest.raises(ConfigError, match="0 <= k <= n"):
        proportion_interval(5, 3)


def test_two_proportion_pvalue_against_scipy_reference():
    from scipy import stats

    k1, n1, k2, n2 = 30, 50, 180, 200
    p = (k1 + k2) / (n1 + n2)
    z = (k1 / n1 - k2 / n2) / math.sqrt(p * (1 - p) * (1 / n1 + 1 / n2))
    assert two_proportion_pvalue(k1, n1, k2, n2) == pytest.approx(stats.norm.cdf(z))
    assert two_proportion_pvalue(k1, n1, k2, n2) < 1e-4
    assert two_proportion_pvalue(45, 50, 180, 200) > 0.4  # same rate: no evidence


# -- threshold selection ---------------------------------------------------------------------------------------
def _ranked(*blocks: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Scores descending from 0.99 with labels given as (label, count) blocks, in rank order."""
    labels = np.concatenate([np.full(count, label) for label, count in blocks])
    return np.linspace(0.99, 0.01, len(labels)), labels


def test_threshold_hand_built_72_clean_positives_clopper_pearson_yes_wilson_no():
    # 72 positives ranked first, then 30 negatives. All-correct 72/72: CP lower bound 0.025^(1/72) = 0.950056
    # >= 0.95, Wilson 72 / (72 + 1.96^2) = 0.949349 < 0.95 (Wilson needs 73 clean positives).
    scores, labels = _ranked((1, 72), (0, 30))
    cp = choose_threshold(scores, labels, target=0.95, method="clopper-pearson")
    assert (
        cp.met and cp.cut_score == scores[71] and cp.threshold == pytest.approx((scores[71] + scores[72]) / 2)
    )
    assert cp.recall == 1.0 and cp.tp == 72 and cp.fp == 0
    assert cp.precision_lower == pytest.approx(0.025 ** (1 / 72))
    wilson = choose_threshold(scores, labels, target=0.95, method="wilson")
    assert not wilson.met
    assert wilson.best_lower_bound == pytest.approx(72 / (72 + Z * Z))
    assert wilson.shortfall == pytest.approx(0.95 - 72 / (72 + Z * Z))
    assert "0.0007 short of the target 0.95" in wilson.reason
    scores, labels = _ranked((1, 73), (0, 30))
    assert choose_threshold(scores, labels, target=0.95, method="wilson").cut_score == scores[72]


def test_threshold_maximises_recall_under_the_bound():
    # 80 positives, 1 negative, 5 positives, 50 negatives. Going below the negative gives 85/86 with a Wilson
    # lower bound of 0.9370 (< 0.95), so the best threshold stops at the 80th positive: recall 80/85.
    scores, labels = _ranked((1, 80), (0, 1), (1, 5), (0, 50))
    choice = choose_threshold(scores, labels, target=0.95)
    assert choice.met and choice.cut_score == scores[79] and choice.recall == pytest.approx(80 / 85)
    assert proportion_interval(85, 86)[0] == pytest.approx(0.93703, abs=1e-5)
    # a looser target admits the lower threshold: all 85 positives found with one false positive
    loose = choose_threshold(scores, labels, target=0.93)
    assert loose.cut_score == scores[85] and loose.recall == 1.0 and loose.fp == 1


def test_threshold_ties_are_taken_together():
    scores = np.array([0.9, 0.8, 0.8, 0.8, 0.1])
    labels = np.array([1, 1, 0, 1, 0])
    table = sweep(scores, labels, confidence=0.95, method="wilson")
    assert table["threshold"].tolist() == [0.9, 0.8, 0.1]
    assert table["tp"].tolist() == [1, 3, 3] and table["fp"].tolist() == [0, 1, 2]


def test_impossible_target_fails_with_reason_and_shortfall():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 400)
    scores = rng.random(400)  # a useless model
    choice = choose_threshold(scores, labels, target=0.95)
    assert not choice.met and choice.shortfall > 0.2
    assert choice.shortfall == pytest.approx(0.95 - choice.best_lower_bound)
    assert "no threshold reaches the target" in choice.reason
    record = decide(_summary(choice=choice.to_dict()), None, GatePolicy(), golden_version="gs-1")
    assert not record["blessed"]
    assert record["reasons"][0].startswith("precision_constraint: ")
    assert f"{choice.shortfall:.4f} short of the target" in record["reasons"][0]


def test_threshold_refuses_val_without_positives():
    with pytest.raises(GateError, match="0 of the positive class"):
        choose_threshold(np.array([0.2, 0.4]), np.array([0, 0]))


# -- metrics ------------------------------------------------------------------------------------------------------
def test_classification_report_known_values():
    classes = ["glasses", "no_glasses"]
    p = np.array([0.9, 0.8, 0.7, 0.6, 0.3, 0.2, 0.1, 0.65])  # P(glasses)
    y = np.array([0, 0, 1, 0, 0, 1, 1, 1])  # 0 = glasses
    probs = np.c_[p, 1 - p]
    rep = classification_report(y, probs, classes, 0, 0.62)
    # predicted glasses: 0.9, 0.8, 0.7, 0.65 -> TP 2 (0.9, 0.8), FP 2 (0.7, 0.65); FN 2 (0.6, 0.3)
    assert rep["confusion_matrix"] == {"labels": classes, "matrix": [[2, 2], [2, 2]]}
    assert rep["per_class"]["glasses"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 4}
    assert rep["accuracy"] == 0.5 and rep["balanced_accuracy"] == 0.5
    assert rep["positive"]["tp"] == 2 and rep["positive"]["fp"] == 2
    assert rep["positive"]["precision_interval"] == pytest.approx(list(proportion_interval(2, 4)))
    assert rep["roc_auc"] == pytest.approx(12 / 16)  # 12 of 16 (pos, neg) pairs ranked correctly
    assert rep["roc"]["thresholds"][0] == 1.0  # sklearn's inf, made JSON-safe


def test_curves_are_sampled_to_at_most_200_points():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 5000)
    p = np.clip(rng.normal(0.3 + 0.4 * (y == 0), 0.2), 0, 1)
    rep = classification_report(y, np.c_[p, 1 - p], ["glasses", "no_glasses"], 0, 0.5)
    for curve in (rep["roc"], rep["pr"]):
        lengths = {len(v) for v in curve.values()}
        assert len(lengths) == 1 and 2 < lengths.pop() <= 200
    assert rep["roc"]["fpr"][0] == 0.0 and rep["roc"]["fpr"][-1] == 1.0


def test_calibration_ece_known_value():
    # bin [0.8, 0.9): mean predicted 0.85, 1 of 2 positive -> gap 0.35; bin [0.1, 0.2): 0.15 vs 0 -> 0.15
    cal = calibration(np.array([1, 0, 0, 0]), np.array([0.85, 0.85, 0.15, 0.15]))
    assert cal["ece"] == pytest.approx(0.5 * 0.35 + 0.5 * 0.15)
    assert sum(b["count"] for b in cal["bins"]) == 4
    assert (
        at_threshold(np.array([1, 0]), np.array([0.9, 0.1]), 0.5, confidence=0.95, method="wilson")[
            "precision"
        ]
        == 1.0
    )


# -- slices -------------------------------------------------------------------------------------------------------
def test_slices_flag_a_significantly_worse_slice_but_not_a_small_one():
    rng = np.random.default_rng(0)
    n = 400
    hair = np.array(["red"] * 60 + ["brown"] * 330 + ["grey"] * 10)
    y = rng.integers(0, 2, n)  # 0 = glasses (positive)
    y_pred = y.copy()
    red = np.flatnonzero((hair == "red") & (y == 0))
    y_pred[red[: len(red) // 2]] = 1  # the model misses half the red-haired glasses wearers
    grey = np.flatnonzero(hair == "grey")
    y_pred[grey] = 1 - y[grey]  # all wrong, but only 10 images: reported, not flagged (min_n 20)
    frame = pd.DataFrame({"hair_colour": hair, "site": [f"id{i}" for i in range(n)]})
    out = slice_metrics(frame, y, y_pred, 0, ["hair_colour", "site"], min_n=20)
    flagged = {(f["column"], f["value"]) for f in out["flagged"]}
    assert flagged == {("hair_colour", "red")}
    red_row = next(r for r in out["rows"] if r["value"] == "red")
    assert "recall" in red_row["worse_in"] and red_row["recall"] == pytest.approx(0.5, abs=0.05)
    assert next(r for r in out["rows"] if r["value"] == "grey")["accuracy"] == 0.0
    assert out["skipped_columns"] == [{"column": "site", "distinct_values": n}]


# -- the gate -----------------------------------------------------------------------------------------------------
def _summary(
    *,
    recall: float = 0.8,
    met: bool = True,
    precision: float = 0.97,
    p95: float = 20.0,
    size: float = 1.0,
    memory: float = 100.0,
    throughput: float = 500.0,
    choice: dict | None = None,
    version: str = "m-challenger",
) -> dict:
    """An evaluation summary as :func:`visionops.evaluation.run.score_model` + ops/behaviour produce it."""
    choice = choice or {
        "threshold": 0.7,
        "met": met,
        "precision_lower": 0.955 if met else 0.9,
        "best_lower_bound": 0.955 if met else 0.9,
        "reason": "hand-made",
    }
    return {
        "uri": f"/models/{version}",
        "model_version": version,
        "threshold_choice": choice,
        "test": {"positive": {"precision": precision, "recall": recall, "tp": 80, "fp": 2}},
        "ops": {
            "latency_ms": {"p95": p95},
            "model_size_mb": size,
            "peak_memory_mb": memory,
            "throughput_images_per_s": throughput,
            "best_batch_size": 32,
            "device": "cpu",
            "memory_method": "cpu rss",
        },
        "behaviour": {
            "invariance": {"status": "ran", "rate": 0.98, "detail": ""},
            "directional": {"status": "ran", "rate": 0.9, "detail": ""},
            "minimum_functionality": {"status": "skipped", "rate": None, "detail": "no generator"},
        },
        "slices": {"flagged": []},
    }


def _by_name(record: dict) -> dict:
    return {r["name"]: r for r in record["rules"]}


def test_worse_challenger_refused_better_blessed():
    policy = GatePolicy(recall_tolerance=0.01)
    champion = _summary(recall=0.80, version="m-champion")
    worse = decide(_summary(recall=0.78), champion, policy, golden_version="gs-1")
    assert not worse["blessed"] and worse["verdict"] == "refused"
    rule = _by_name(worse)["recall_vs_champion"]
    assert rule["status"] == "fail" and rule["value"] == 0.78 and rule["limit"] == pytest.approx(0.79)
    assert any(r.startswith("recall_vs_champion: 0.78 < limit 0.79") for r in worse["reasons"])
    within = decide(_summary(recall=0.795), champion, policy, golden_version="gs-1")
    assert within["blessed"]  # 0.005 worse: inside the tolerance
    better = decide(_summary(recall=0.86), champion, policy, golden_version="gs-1")
    assert better["blessed"] and better["champion"]["model_version"] == "m-champion"
    assert better["champion"]["recall_at_target_precision"] == 0.80
    assert all(r["status"] in ("pass", "skipped") for r in better["rules"])


def test_champion_that_misses_the_constraint_counts_as_zero_recall():
    champion = _summary(recall=0.95, met=False, version="m-champion")
    record = decide(_summary(recall=0.5), champion, GatePolicy(), golden_version="gs-1")
    assert record["blessed"] and _by_name(record)["recall_vs_champion"]["limit"] == pytest.approx(-0.01)


def test_ops_budget_refuses_an_otherwise_better_model():
    champion = _summary(recall=0.80, version="m-champion")
    policy = GatePolicy(max_model_mb=50.0, max_p95_latency_ms=100.0, max_memory_mb=500.0, min_throughput=20.0)
    big = decide(
        _summary(recall=0.90, size=97.5, p95=250.0, memory=900.0, throughput=8.0),
        champion,
        policy,
        golden_version="gs-1",
    )
    rules = _by_name(big)
    assert not big["blessed"] and rules["recall_vs_champion"]["status"] == "pass"
    for name, value, limit in (
        ("model_size_mb", 97.5, 50.0),
        ("p95_latency_ms", 250.0, 100.0),
        ("peak_memory_mb", 900.0, 500.0),
        ("throughput", 8.0, 20.0),
    ):
        assert rules[name] | {"value": value, "limit": limit, "status": "fail"} == rules[name]
    assert "model_size_mb: 97.5 > limit 50" in big["reasons"]


def test_no_champion_absolute_rules_decide_and_none_limits_are_skipped():
    policy = GatePolicy(max_memory_mb=None, min_functionality_rate=0.9)
    record = decide(_summary(memory=1e9), None, policy, golden_version="gs-7")
    rules = _by_name(record)
    assert record["blessed"] and record["champion"] is None and record["golden_version"] == "gs-7"
    assert rules["peak_memory_mb"]["status"] == "skipped" and rules["peak_memory_mb"]["detail"].startswith(
        "no limit set"
    )
    assert rules["recall_vs_champion"]["status"] == "skipped"
    assert rules["behaviour_minimum_functionality"]["status"] == "skipped"  # not run: never decides
    assert "no champion: the absolute rules decided (first model)" in record["reasons"]


def test_golden_precision_and_behaviour_rules():
    low = decide(_summary(precision=0.93), None, GatePolicy(), golden_version="gs-1")
    assert _by_name(low)["golden_precision"]["status"] == "fail" and not low["blessed"]
    lenient = decide(
        _summary(precision=0.93), None, GatePolicy(require_golden_precision=False), golden_version="gs-1"
    )
    assert "golden_precision" not in _by_name(lenient) and lenient["blessed"]
    strict = decide(_summary(), None, GatePolicy(min_directional_rate=0.95), golden_version="gs-1")
    assert _by_name(strict)["behaviour_directional"]["status"] == "fail"
    slices = _summary()
    slices["slices"]["flagged"] = [{"column": "hair_colour", "value": "red", "n": 60, "worse_in": ["recall"]}]
    assert not decide(slices, None, GatePolicy(max_flagged_slices=0), golden_version="gs-1")["blessed"]
    assert decide(slices, None, GatePolicy(), golden_version="gs-1")["blessed"]  # reported, not gated


def test_policy_round_trip_and_validation():
    policy = GatePolicy(
        target_precision=0.9, interval="clopper-pearson", max_model_mb=None, throughput_batch_sizes=(1, 4)
    )
    data = policy.to_dict()
    assert data["throughput_batch_sizes"] == [1, 4]
    assert GatePolicy.from_dict(data) == policy
    with pytest.raises(ConfigError, match=r"unknown gate policy fields \['max_gpus'\]"):
        GatePolicy.from_dict({"max_gpus": 1})
    with pytest.raises(ConfigError, match="target_precision must be in \\(0, 1\\), got 1.5"):
        GatePolicy(target_precision=1.5)
    with pytest.raises(ConfigError, match="interval 'exact' unknown"):
        GatePolicy(interval="exact")
