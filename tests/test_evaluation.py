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
from visionops.evaluation.paired import paired_difference
from visionops.evaluation.slices import adjust_pvalues, slice_metrics
from visionops.evaluation.threshold import (
    choose_threshold,
    fixed_sequence,
    max_fpr_for,
    precision_at,
    precision_lower_bound,
    sweep,
)

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


def test_precision_bound_closed_form_and_prevalence():
    # all positives found, no false positive: TPR >= (a/2)^(1/n_pos), FPR <= 1 - (a/2)^(1/n_neg), a = 0.025
    a = 0.0125
    tpr, fpr = a ** (1 / 100), 1 - a ** (1 / 400)
    for p in (0.5, 0.076, 0.036):
        expected = tpr * p / (tpr * p + fpr * (1 - p))
        assert precision_lower_bound(100, 100, 0, 400, p, 0.025) == pytest.approx(expected, rel=1e-9)
    assert precision_at(0.9, 0.008, 0.036) == pytest.approx(0.9 * 0.036 / (0.9 * 0.036 + 0.008 * 0.964))
    # the figure: at 8% prevalence precision >= 0.95 needs FPR <= 0.0046 x recall
    assert max_fpr_for(0.95, 0.08) == pytest.approx(0.0046, abs=5e-5)


def test_threshold_certified_at_half_refused_at_rare_prevalence_with_shortfall():
    # 150 clean positives ranked above 150 negatives: proven at 50/50, not at 5% (too few negatives)
    scores, labels = _ranked((1, 150), (0, 150))
    half = choose_threshold(scores, labels, prevalence=0.5)
    # candidate thresholds come from the ordering part's scores: the lowest of its positives
    assert half.met and half.recall > 0.98 and half.fp == 0 and half.prevalence == 0.5
    assert scores[149] <= half.threshold < scores[140] and half.precision_lower >= 0.95
    rare = choose_threshold(scores, labels, prevalence=0.05)
    assert not rare.met and rare.shortfall > 0.1 and rare.more_negatives_alone > 1000
    assert "no threshold proves precision >= 0.95 at prevalence 0.05" in rare.reason
    assert f"or about {rare.more_negatives_alone} more negative images alone" in rare.reason
    # the proposed amount of negatives really proves it (same error rates: still no false positive)
    n_neg = rare.n_negative + math.ceil(rare.more_negatives_alone * 0.7)
    assert precision_lower_bound(rare.tp, rare.n_positive, 0, n_neg, 0.05, 0.025) >= 0.95
    unstated = choose_threshold(scores, labels)
    assert unstated.prevalence == 0.5 and unstated.prevalence_source.startswith("validation split")


def test_fixed_sequence_stops_at_the_first_failure():
    # ordering part: two positives on top, so the sequence starts at 0.98 and walks down in steps of 0.01.
    # testing part: 150 positives above 0.98 (the first thresholds pass), 25 negatives at 0.955 (0.95 fails),
    # 50 more positives down to 0.6 (there the bound would pass again): the sequence never gets there.
    order_scores = np.r_[[0.99, 0.98], np.linspace(0.97, 0.0, 98)]
    order_pos = np.r_[[True, True], np.zeros(98, bool)]
    test_scores = np.r_[
        np.full(150, 0.985), np.linspace(0.9, 0.6, 50), np.full(25, 0.955), np.linspace(0.49, 0, 400)
    ]
    test_pos = np.r_[np.ones(200, bool), np.zeros(425, bool)]
    seq = fixed_sequence(
        order_scores, order_pos, test_scores, test_pos, target=0.9, prevalence=0.5, alpha=0.025
    )
    assert seq["thresholds"][0] == 0.98
    failed = np.flatnonzero(seq["lower"] < 0.9)
    assert seq["thresholds"][failed[0]] == pytest.approx(0.95)
    assert seq["last_passed"] == failed[0] - 1
    assert (seq["lower"][failed[0] + 1 :] >= 0.9).any()  # a later threshold would have passed
    assert (seq["lower"][: seq["last_passed"] + 1] >= 0.9).all()


def test_useless_model_is_refused_and_told_data_will_not_help():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 400)
    scores = rng.random(400)  # a useless model
    choice = choose_threshold(scores, labels, target=0.95)
    assert not choice.met and choice.shortfall > 0.2
    assert choice.shortfall == pytest.approx(0.95 - choice.precision_lower)
    assert choice.more_negatives is None and "more data will not help" in choice.reason
    record = decide(_summary(choice=choice.to_dict()), None, GatePolicy(), golden_version="gs-1")
    assert not record["blessed"]
    assert record["reasons"][0].startswith("precision_constraint: ")
    assert f"{choice.shortfall:.4f} short of the target" in record["reasons"][0]


def test_threshold_ties_are_taken_together():
    scores = np.array([0.9, 0.8, 0.8, 0.8, 0.1])
    labels = np.array([1, 1, 0, 1, 0])
    table = sweep(scores, labels, confidence=0.95, method="wilson")
    assert table["threshold"].tolist() == [0.9, 0.8, 0.1]
    assert table["tp"].tolist() == [1, 3, 3] and table["fp"].tolist() == [0, 1, 2]


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
    golden_lower: float = 0.96,
    p95: float = 20.0,
    size: float = 1.0,
    memory: float = 100.0,
    throughput: float = 500.0,
    choice: dict | None = None,
    version: str = "m-challenger",
    paired: dict | None = None,
) -> dict:
    """An evaluation summary as :func:`visionops.evaluation.run.score_model` + ops/behaviour produce it."""
    choice = choice or {
        "threshold": 0.7,
        "met": met,
        "prevalence": 0.5,
        "precision_lower": 0.955 if met else 0.9,
        "reason": "hand-made",
    }
    return {
        "uri": f"/models/{version}",
        "model_version": version,
        "threshold_choice": choice,
        "test": {
            "positive": {"precision": 0.97, "recall": recall, "tp": 80, "fn": 20, "fp": 2, "tn": 98},
            "precision_at_prevalence": {"lower": golden_lower, "precision": 0.97, "fpr_needed": 0.04},
        },
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
            "minimum_functionality": {"status": "skipped", "rate": None, "detail": "no curated set"},
        },
        "slices": {"flagged": []},
        "paired": paired,
    }


def _by_name(record: dict) -> dict:
    return {r["name"]: r for r in record["rules"]}


def _paired(challenger_hits: int, champion_hits: int, both: int, n: int = 150, fp=(2, 2, 2)) -> dict:
    """A paired comparison from counts: positives found by each model (``both`` by both) and false alarms."""
    y = np.ones(n, bool)
    ch, cp = np.zeros(n, bool), np.zeros(n, bool)
    ch[:both] = cp[:both] = True
    ch[both:challenger_hits] = True
    cp[challenger_hits : challenger_hits + champion_hits - both] = True
    neg = np.zeros(n, bool)
    ch_fp, cp_fp = neg.copy(), neg.copy()
    ch_fp[: fp[0]] = True
    cp_fp[fp[0] - fp[2] : fp[0] - fp[2] + fp[1]] = True
    from visionops.evaluation.paired import compare

    return compare(np.r_[y, ~y], np.r_[ch, ch_fp], np.r_[cp, cp_fp], alpha=0.025)


def test_paired_non_inferiority_refuses_worse_blesses_equal():
    policy = GatePolicy(recall_tolerance=0.05)
    champion = _summary(version="m-champion")
    # 20 points worse (60 vs 80 of 100 positives): the lower bound is far below -0.05
    worse = decide(_summary(paired=_paired(60, 80, 60)), champion, policy, golden_version="gs-1")
    rule = _by_name(worse)["recall_vs_champion"]
    assert not worse["blessed"] and rule["status"] == "fail" and rule["limit"] == -0.05
    assert "20 only by the champion" in rule["detail"]
    # 2 false alarms each, the same images: proven within the default FPR margin on 150 negatives
    # identical answers: difference 0 with a tight bound: passes
    same = decide(_summary(paired=_paired(80, 80, 80)), champion, policy, golden_version="gs-1")
    assert same["blessed"], same["reasons"]
    assert _by_name(same)["fpr_vs_champion"]["status"] == "pass"


def test_paired_difference_matches_counts_and_mcnemar():
    a = np.r_[np.ones(30, bool), np.zeros(10, bool), np.ones(5, bool)]
    b = np.r_[np.ones(30, bool), np.ones(10, bool), np.zeros(5, bool)]
    out = paired_difference(a, b, alpha=0.025)
    assert out["only_a"] == 5 and out["only_b"] == 10 and out["difference"] == pytest.approx(-5 / 45)
    assert out["lower"] < out["difference"] < out["upper"]
    from scipy import stats

    assert out["mcnemar_p"] == pytest.approx(stats.binomtest(5, 15, 0.5).pvalue)


def test_champion_that_misses_the_constraint_counts_as_zero_recall():
    champion = _summary(recall=0.95, met=False, version="m-champion")
    record = decide(_summary(recall=0.5), champion, GatePolicy(), golden_version="gs-1")
    assert record["blessed"] and _by_name(record)["recall_vs_champion"]["limit"] == 0.0


def test_ops_budget_refuses_an_otherwise_better_model():
    champion = _summary(recall=0.80, version="m-champion")
    policy = GatePolicy(max_model_mb=50.0, max_p95_latency_ms=100.0, max_memory_mb=500.0, min_throughput=20.0)
    big = decide(
        _summary(recall=0.90, size=97.5, p95=250.0, memory=900.0, throughput=8.0, paired=_paired(90, 80, 80)),
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


def test_golden_rule_uses_the_bound_and_behaviour_rules():
    low = decide(_summary(golden_lower=0.93), None, GatePolicy(), golden_version="gs-1")
    rule = _by_name(low)["golden_precision"]
    assert rule["status"] == "fail" and rule["value"] == 0.93 and not low["blessed"]
    lenient = decide(
        _summary(golden_lower=0.93), None, GatePolicy(require_golden_precision=False), golden_version="gs-1"
    )
    assert "golden_precision" not in _by_name(lenient) and lenient["blessed"]
    strict = decide(_summary(), None, GatePolicy(min_directional_rate=0.95), golden_version="gs-1")
    assert _by_name(strict)["behaviour_directional"]["status"] == "fail"
    slices = _summary()
    slices["slices"]["flagged"] = [{"column": "hair_colour", "value": "red", "n": 60, "worse_in": ["recall"]}]
    assert not decide(slices, None, GatePolicy(max_flagged_slices=0), golden_version="gs-1")["blessed"]
    assert decide(slices, None, GatePolicy(), golden_version="gs-1")["blessed"]  # reported, not gated


def test_holm_and_bh_adjustments_match_statsmodels():
    multitest = pytest.importorskip("statsmodels.stats.multitest")
    p = np.array([0.001, 0.01, 0.02, 0.04, 0.3, 0.03])
    for ours, theirs in (("holm", "holm"), ("bh", "fdr_bh")):
        expected = multitest.multipletests(p, method=theirs)[1]
        assert adjust_pvalues(p, ours) == pytest.approx(expected)


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
    with pytest.raises(ConfigError, match="positive_prevalence must be in"):
        GatePolicy(positive_prevalence=0.0)
    assert GatePolicy.from_dict({"positive_prevalence": 0.076}).positive_prevalence == 0.076


def test_gate_policy_is_declared_once_with_help_and_checks_per_field():
    """GatePolicy is a settings dataclass: every field has help text (its --option's), KFP's doubles and YAML
    lists read back, and every check lives on its field (the message names the field and the value)."""
    from dataclasses import fields

    from visionops.policy import CONFIDENCE, TARGET_PRECISION
    from visionops.settings import Settings, spec_of

    assert issubclass(GatePolicy, Settings)
    assert all(spec_of(f).help for f in fields(GatePolicy)), "every GatePolicy field needs its help text"
    assert (GatePolicy().target_precision, GatePolicy().confidence) == (TARGET_PRECISION, CONFIDENCE)
    from_kfp = GatePolicy.from_dict({"throughput_batch_sizes": [1.0, 8.0], "latency_runs": 5})
    assert from_kfp.throughput_batch_sizes == (1, 8)
    with pytest.raises(
        ConfigError, match=r"throughput_batch_sizes must be whole numbers, e.g. 1,8,32, got \[1.5\]"
    ):
        GatePolicy.from_dict({"throughput_batch_sizes": [1.5]})
    with pytest.raises(ConfigError, match=r"throughput_batch_sizes must be positive integers, got \(0, 8\)"):
        GatePolicy(throughput_batch_sizes=(0, 8))
    with pytest.raises(ConfigError, match="max_flagged_slices must be >= 0 or None"):
        GatePolicy(max_flagged_slices=-1)
    with pytest.raises(ConfigError, match="brightness_delta must be in \\(0, 1\\), got 1.5"):
        GatePolicy(brightness_delta=1.5)
    assert GatePolicy(max_model_mb=None, fpr_tolerance=None).max_model_mb is None  # None: the rule is off
