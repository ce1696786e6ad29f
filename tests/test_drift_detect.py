"""Drift computation (Evidently), the bounded window, live quality and the settings: small in-memory frames."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from visionops.drift.detect import DriftPolicy, compute_drift, monitored_columns, public, render_html, verdict
from visionops.drift.quality import LiveQuality
from visionops.drift.settings import MonitorSettings
from visionops.drift.window import FeatureWindow
from visionops.errors import ConfigError

from tests.test_drift_support import draw_rows, numeric_reference


@pytest.fixture(scope="module")
def reference():
    return numeric_reference(1500, seed=0)


def window(seed: int, n: int = 1000, **shift) -> pd.DataFrame:
    return pd.DataFrame(draw_rows(np.random.default_rng(seed), n, **shift))


def test_unshifted_windows_do_not_drift(reference):
    for seed in range(1, 4):
        result = compute_drift(reference, window(seed))
        assert not result["dataset_drift"], result["drifted_features"]
        assert result["features"]["brightness"]["method"] == "wasserstein"
        assert result["features"]["predicted_class"]["method"] == "jensenshannon"


def test_darker_window_drifts(reference):
    result = compute_drift(reference, window(5, brightness=0.25))
    assert result["dataset_drift"]
    assert {"brightness", "mean_r", "mean_g", "mean_b"} <= set(result["drifted_features"])
    # 4 of 17 columns (< drift_share 0.3), but brightness moved by 2.5 reference standard deviations: severe
    assert not result["data_drift"] and "brightness" in result["severe_features"]
    mild = compute_drift(reference, window(5, brightness=0.45))  # half a standard deviation: not severe
    assert mild["severe_features"] == []
    assert result["share"] == pytest.approx(result["drifted_count"] / len(result["features"]))


def test_class_prior_shift_is_prediction_drift(reference):
    result = compute_drift(reference, window(6, glasses_share=0.9))
    assert result["prediction_drift"] and result["dataset_drift"]
    assert result["class_shares"]["glasses"] == pytest.approx(0.9, abs=0.04)
    assert result["features"]["predicted_class"]["score"] > 0.1


def test_constant_reference_column(reference):
    current = window(7)
    current.loc[: len(current) // 2, "is_greyscale"] = 1.0  # half the window greyscale; reference has none
    result = compute_drift(reference, current)
    feature = result["features"]["is_greyscale"]
    assert (
        feature["method"] == "constant"
        and feature["drifted"]
        and feature["score"] == pytest.approx(0.5, abs=0.01)
    )
    few = window(8)
    few.loc[:4, "is_greyscale"] = 1.0  # 5 greyscale rows in 1000: not drift
    assert not compute_drift(reference, few)["features"]["is_greyscale"]["drifted"]


def test_policy_pins_method_and_checks_input(reference):
    ks = compute_drift(reference, window(9), DriftPolicy(num_method="ks", num_threshold=0.05))
    assert ks["features"]["contrast"]["method"] == "ks"
    assert 0.0 <= ks["features"]["contrast"]["score"] <= 1.0  # a p-value
    assert ks["features"]["contrast"]["drifted"] == (ks["features"]["contrast"]["score"] < 0.05)
    with pytest.raises(ConfigError, match="num_method 'nope' unknown"):
        DriftPolicy(num_method="nope")
    with pytest.raises(ConfigError, match="lacks columns"):
        compute_drift(reference, window(1).drop(columns=["brightness"]))
    with pytest.raises(ConfigError, match="at least 50 rows"):
        compute_drift(reference, window(1, n=10))
    excluded = monitored_columns(reference.columns, DriftPolicy(exclude=("width", "height")))
    assert "width" not in excluded and "brightness" in excluded


def test_verdict_rule():
    policy = DriftPolicy(drift_share=0.5)
    feats = {name: {"drifted": d} for name, d in [("a", True), ("b", False), ("predicted_class", False)]}
    assert not verdict(feats, policy)["dataset_drift"]
    feats["b"]["drifted"] = True
    assert verdict(feats, policy)["data_drift"]
    only_pred = {"a": {"drifted": False}, "b": {"drifted": False}, "predicted_class": {"drifted": True}}
    out = verdict(only_pred, policy)
    assert out["prediction_drift"] and out["dataset_drift"] and not out["data_drift"]


def test_report_is_self_contained(reference):
    result = compute_drift(reference, window(10, n=300, brightness=0.3), keep_frames=True)
    result["model_version"] = "m-test"
    html = render_html(result)
    assert "DRIFT" in html and "m-test" in html and "brightness" in html
    external = re.findall(
        r"""<(?:script|link|img|iframe)[^>]+(?:src|href)\s*=\s*["']?(?:https?:)?//""", html, re.I
    )
    assert external == []
    assert "_frames" not in public(result)


def test_window_is_bounded_and_ordered():
    cols = {"x": "num", "predicted_class": "cat"}
    w = FeatureWindow(cols, capacity=5)
    w.append([{"x": float(i), "predicted_class": f"c{i}"} for i in range(12)])
    frame = w.snapshot()
    assert list(frame["x"]) == [7.0, 8.0, 9.0, 10.0, 11.0] and list(frame["predicted_class"])[-1] == "c11"
    assert len(w) == 5 and w.total == 12
    aged = FeatureWindow(cols, capacity=10, max_age_s=60)
    aged.append(
        [{"x": 1.0, "predicted_class": "a", "timestamp": 1000.0}, {"x": 2.0, "predicted_class": "b"}],
        now=1100.0,
    )
    assert list(aged.snapshot(now=1100.0)["x"]) == [2.0]  # the row with timestamp 1000 is too old
    with pytest.raises(ConfigError):
        FeatureWindow(cols, capacity=0)


def test_live_quality_exact():
    q = LiveQuality("glasses", window=200, max_pending=3, min_labels=2, target_precision=0.9)
    for rid, pred in [("a", "glasses"), ("b", "glasses"), ("c", "no_glasses"), ("d", "glasses")]:
        q.record_prediction(rid, pred)
    assert not q.add_label("a", "glasses")  # forgotten: only 3 pending predictions are kept
    assert q.add_label("b", "glasses") and q.add_label("c", "glasses") and q.add_label("d", "no_glasses")
    s = q.summary()
    assert s["precision"] == pytest.approx(0.5) and s["recall"] == pytest.approx(0.5)
    assert s["labels"] == 3 and s["unknown_labels"] == 1
    # 1 of 2: the upper bound (Clopper-Pearson, 97.5%) is far above 0.9: not proven below, no alarm
    assert s["precision_interval"][1] == pytest.approx(0.975**0.5)
    assert not s["below_target"]
    # 60 more labels at precision 0.7: proven below 0.9
    for i in range(60):
        q.record_prediction(f"r{i}", "glasses")
        q.add_label(f"r{i}", "glasses" if i % 10 < 7 else "no_glasses")
    s = q.summary()
    assert s["precision_interval"][1] < 0.9 and s["below_target"]


def test_live_quality_weights_labels_by_their_selection_probability():
    """Half the labels come from a 1-in-10 random sample (weight 10), half from a take-all stratum of hard
    images (weight 1): the weighted precision is the traffic's, the unweighted one is not."""
    q = LiveQuality("glasses", window=1000, max_pending=1000, min_labels=10, target_precision=0.9)
    for i in range(40):  # random sample of traffic: 39 of 40 called glasses are right
        q.record_prediction(f"s{i}", "glasses")
        q.add_label(f"s{i}", "glasses" if i else "no_glasses", 0.1)
    for i in range(40):  # take-all hard stratum: 20 of 40 right
        q.record_prediction(f"h{i}", "glasses")
        q.add_label(f"h{i}", "glasses" if i % 2 else "no_glasses", 1.0)
    s = q.summary()
    expected = (39 * 10 + 20) / (40 * 10 + 40)
    assert s["precision"] == pytest.approx(expected)
    assert s["precision_effective_n"] == pytest.approx(440**2 / (40 * 100 + 40))
    with pytest.raises(ConfigError, match="selection_probability"):
        q.add_label("x", "glasses", 0.0)


def test_settings_from_env():
    env = {
        "VISIONOPS_MODEL_URI": "s3://m/1",
        "VISIONOPS_WINDOW_SIZE": "500",
        "VISIONOPS_DRIFT_SHARE": "0.3",
        "VISIONOPS_TRIGGER_DRY_RUN": "true",
        "VISIONOPS_KFP_PARAMS": '{"data_uri": "s3://d"}',
        "VISIONOPS_TRIGGER_COOLDOWN_S": "60",
        "VISIONOPS_MONITOR_PORT": "9000",
    }
    s = MonitorSettings.from_env(env, window_size=700)
    assert s.model_uri == "s3://m/1" and s.window_size == 700 and s.drift_share == 0.3 and s.trigger_dry_run
    assert s.kfp_params == {"data_uri": "s3://d"} and s.trigger_cooldown_s == 60.0 and s.port == 9000
    assert s.every_rows == 700
    with pytest.raises(ConfigError, match="VISIONOPS_WINDOW_SIZE='x'"):
        MonitorSettings.from_env({"VISIONOPS_WINDOW_SIZE": "x"})
    with pytest.raises(ConfigError, match="window size"):
        MonitorSettings(window_size=1)


# -- calibrated thresholds and non-overlapping windows ------------------------------------------------------------
def _rows(rng, n: int, shift: float = 0.0):
    """Feature rows of one population (``shift`` darkens every image by that much brightness)."""
    glasses = rng.random(n) < 0.08
    return pd.DataFrame(
        {
            "brightness": np.clip(rng.beta(5, 4, n) - shift, 0, 1),
            "contrast": np.clip(rng.gamma(4, 0.05, n), 0, 1),
            "sharpness": rng.lognormal(0, 0.8, n),
            "confidence": np.clip(1 - rng.beta(1, 12, n), 0.5, 1),
            "positive_prob": np.where(glasses, rng.beta(8, 2, n), rng.beta(1, 15, n)),
            "predicted_class": np.where(glasses, "glasses", "no_glasses"),
        }
    )


@pytest.fixture(scope="module")
def calibrated_reference():
    from visionops.drift.reference import calibrate_reference

    reference = _rows(np.random.default_rng(0), 800)
    calibration, null = calibrate_reference(reference)
    return reference, calibration, null


def test_adjusted_count_prevalence():
    from visionops.drift.quality import adjusted_count

    # 10% true prevalence, TPR 0.9, FPR 0.02: 0.9 * 0.1 + 0.02 * 0.9 = 0.108 of traffic called glasses
    assert adjusted_count(0.108, 0.9, 0.02) == pytest.approx(0.1)
    assert adjusted_count(0.001, 0.9, 0.02) == 0.0 and adjusted_count(0.5, 0.3, 0.4) is None


def test_calibrated_thresholds_per_window_size(calibrated_reference):
    from visionops.drift.calibration import size_for

    reference, calibration, null = calibrated_reference
    assert set(null["window_size"]) == set(calibration["window_sizes"])
    assert len(null) == len(calibration["window_sizes"]) * calibration["draws"]
    assert size_for(calibration, 49) is None and size_for(calibration, 120) == 100
    # a null score's mean shrinks as windows grow (the window's own noise), so fixed thresholds cannot fit all
    means = [calibration["sizes"][str(n)]["mean"]["brightness"] for n in (50, 1000)]
    assert means[0] > 1.5 * means[1]
    rng = np.random.default_rng(1)
    same = compute_drift(reference, _rows(rng, 150), calibration=calibration)
    assert same["calibrated"]["calibrated_size"] == 100 and not same["dataset_drift"]
    dark = compute_drift(reference, _rows(rng, 150, shift=0.15), calibration=calibration)
    assert dark["dataset_drift"] and "brightness" in dark["drifted_features"]
    assert dark["features"]["brightness"]["standardised"] > dark["calibrated"]["threshold"]


def test_only_non_overlapping_windows_count_towards_the_trigger(calibrated_reference):
    from visionops.drift.monitor import Monitor

    reference, calibration, _ = calibrated_reference
    meta = {"model_version": "m-1", "classes": ["glasses", "no_glasses"], "positive_class": "glasses",
            "drift": {"calibration": calibration}, "threshold_info": {"recall": 0.9, "fpr": 0.01}}  # fmt: skip
    settings = MonitorSettings(model_uri="unused", window_size=100, trigger_windows=3, trigger_dry_run=True)
    monitor = Monitor(settings, meta=meta, reference=reference)
    rng = np.random.default_rng(2)
    dark = _rows(rng, 400, shift=0.2).to_dict("records")
    monitor.ingest(dark[:100])
    first = monitor.run_drift()
    assert first["dataset_drift"] and first["counted"] and first["consecutive_windows"] == 1
    called = first["class_shares"].get("glasses", 0.0)
    assert first["estimated_prevalence"] == pytest.approx(max(0.0, (called - 0.01) / 0.89))
    monitor.ingest(dark[100:150])  # the time rule looks again after 50 rows: half the window seen before
    again = monitor.run_drift()
    assert again["dataset_drift"] and not again["counted"] and again["consecutive_windows"] == 1
    monitor.ingest(dark[150:200])  # rows 100-199: no row of the last counted window
    second = monitor.run_drift()
    assert second["counted"] and second["consecutive_windows"] == 2


def test_a_rare_binary_column_that_turns_on_everywhere_drifts():
    """A column that is 1 on 0.5% of the reference and 1 on every row of the window is drift (the null is
    normed by the reference's spread, as the live score is, so rare pseudo-references do not blow it up)."""
    from visionops.drift.reference import calibrate_reference

    rng = np.random.default_rng(3)
    reference = _rows(rng, 400)
    reference["is_greyscale"] = (np.arange(400) < 2).astype(float)
    calibration, _ = calibrate_reference(reference)
    window = _rows(rng, 300)
    window["is_greyscale"] = 0.0
    assert not compute_drift(reference, window, calibration=calibration)["dataset_drift"]
    window["is_greyscale"] = 1.0
    result = compute_drift(reference, window, calibration=calibration)
    assert "is_greyscale" in result["drifted_features"], result["features"]["is_greyscale"]
