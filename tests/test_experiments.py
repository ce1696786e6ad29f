"""Online experiments: assignment, SRM, A/A false-positive rate, A/B power, canary and shadow analysis."""

from __future__ import annotations

import json

import numpy as np
import pytest
from visionops.errors import ConfigError
from visionops.experiments import stats
from visionops.experiments.analysis import AnalysisConfig, ab_decision, analyze
from visionops.experiments.assign import (
    Assigner,
    ThompsonState,
    apply_floor_and_cap,
    parse_weights,
    unit_fraction,
)


def test_srm_flags_a_skewed_split_and_not_a_fair_one():
    assert stats.srm_check({"a": 5000, "b": 5500}, {"a": 1, "b": 1}).mismatch
    assert not stats.srm_check({"a": 5000, "b": 5030}, {"a": 1, "b": 1}).mismatch
    # against 90/10 weights, 9000/1000 is fair and 5000/5000 is not
    assert not stats.srm_check({"a": 9000, "b": 1000}, {"a": 90, "b": 10}).mismatch
    assert stats.srm_check({"a": 5000, "b": 5000}, {"a": 90, "b": 10}).mismatch


def test_wilson_interval_matches_reference_values():
    lo, hi = stats.wilson_interval(95, 100)
    assert lo == pytest.approx(0.8882, abs=1e-4) and hi == pytest.approx(0.9785, abs=1e-4)
    assert stats.wilson_interval(0, 0) == (0.0, 1.0)


def test_sticky_assignment_is_stable_per_unit_and_balanced():
    assigner = Assigner({"a": 1, "b": 1}, policy="sticky", salt="exp-1")
    first = {f"camera-{i}": assigner.choose(f"camera-{i}") for i in range(10_000)}
    again = {unit: assigner.choose(unit) for unit in first}
    assert first == again
    share_a = sum(v == "a" for v in first.values()) / len(first)
    assert 0.48 < share_a < 0.52
    # a new salt reshuffles units independently of the old assignment
    other = Assigner({"a": 1, "b": 1}, policy="sticky", salt="exp-2")
    same = sum(other.choose(u) == v for u, v in first.items()) / len(first)
    assert 0.47 < same < 0.53
    assert 0 <= unit_fraction("x", "s") < 1


def test_weights_policy_routes_within_tolerance():
    assigner = Assigner(parse_weights("champion=90,challenger=10"), seed=1)
    picks = [assigner.choose() for _ in range(20_000)]
    assert abs(picks.count("challenger") / len(picks) - 0.10) < 0.01
    with pytest.raises(ConfigError, match="unknown routing policy 'epsilon'"):
        Assigner({"a": 1}, policy="epsilon")


def test_thompson_moves_traffic_to_the_better_variant_and_caps_a_failing_one():
    state = ThompsonState(["a", "b"], target=0.95, floor=0.05, cap=0.05)
    rng = np.random.default_rng(0)
    for _ in range(400):
        state.record("a", True, bool(rng.random() < 0.80))  # a's precision 0.80: fails the 0.95 constraint
        state.record("b", True, bool(rng.random() < 0.99))
    shares = state.shares(seed=0)
    assert state.failing("a") and not state.failing("b")
    assert shares["a"] <= 0.05 + 1e-9 and shares["b"] >= 0.95 - 1e-9
    # with no feedback at all, both get a fair share
    fresh = ThompsonState(["a", "b"]).shares(seed=0)
    assert 0.4 < fresh["a"] < 0.6


def test_floor_and_cap_keep_shares_a_distribution():
    out = apply_floor_and_cap({"a": 0.0, "b": 0.3, "c": 0.7}, floor=0.1, caps={"c": 0.2})
    assert out["a"] >= 0.1 - 1e-9 and out["c"] == pytest.approx(0.2)
    assert sum(out.values()) == pytest.approx(1.0)


def _arm(name, tp, actual_pos, pred_pos):
    return {
        "variant": name,
        "tp": tp,
        "actual_positive": actual_pos,
        "predicted_positive": pred_pos,
        "precision": tp / pred_pos,
        "precision_ci": stats.wilson_interval(tp, pred_pos),
        "recall": tp / actual_pos,
        "recall_ci": stats.wilson_interval(tp, actual_pos),
    }


def _simulate(rng, n_pos, recall_a, recall_b, precision=0.97):
    arms = []
    for name, recall in (("a", recall_a), ("b", recall_b)):
        tp = int(rng.binomial(n_pos, recall))
        false_pos = int(rng.binomial(tp, (1 - precision) / precision))
        arms.append(_arm(name, tp, n_pos, tp + false_pos))
    return arms


def test_aa_experiments_false_positive_rate_is_within_alpha():
    """1,000 simulated A/A experiments through the same decision code: FPR within the nominal 5%."""
    rng = np.random.default_rng(42)
    config = AnalysisConfig(design="ab")
    fixed = seq = 0
    for _ in range(1000):
        a, b = _simulate(rng, 800, 0.85, 0.85)
        decision = ab_decision(a, b, config)
        fixed += decision["recall"]["fixed_horizon"]["significant"]
        seq += decision["recall"]["sequential"]["significant"]
    lo, hi = stats.wilson_interval(fixed, 1000)
    assert lo <= 0.05 <= hi + 0.01, f"fixed-horizon FPR {fixed / 1000} (95% CI {lo:.3f}-{hi:.3f})"
    assert seq / 1000 <= 0.05  # the always-valid test is conservative at a single look


def test_ab_experiments_with_a_planted_effect_reach_the_stated_power():
    n = stats.sample_size_per_arm(0.80, 0.05, alpha=0.05, power=0.8)
    assert 900 < n < 1200  # textbook value for 0.80 -> 0.85 is about 1,000 per arm
    rng = np.random.default_rng(7)
    hits = sum(
        ab_decision(*_simulate(rng, n, 0.80, 0.85), AnalysisConfig(design="ab"))["recall"]["fixed_horizon"][
            "significant"
        ]
        for _ in range(500)
    )
    lo, hi = stats.wilson_interval(hits, 500)
    assert lo <= 0.8 <= hi or hits / 500 > 0.8, f"power {hits / 500:.3f} (95% CI {lo:.3f}-{hi:.3f})"


def test_sequential_test_stays_valid_under_repeated_looks():
    """Peeking after every 100 units: the fixed test inflates the FPR, the mSPRT does not exceed alpha."""
    rng = np.random.default_rng(3)
    fixed_any = seq_any = 0
    trials = 300
    for _ in range(trials):
        xa = rng.random(2000) < 0.85
        xb = rng.random(2000) < 0.85
        f = s = False
        for n in range(100, 2001, 100):
            f |= stats.two_proportion_test(int(xa[:n].sum()), n, int(xb[:n].sum()), n).significant
            s |= stats.msprt_test(int(xa[:n].sum()), n, int(xb[:n].sum()), n).significant
        fixed_any += f
        seq_any += s
    assert fixed_any / trials > 0.1  # peeking breaks the fixed-horizon test...
    assert seq_any / trials <= 0.05  # ...and not the always-valid one


def _write_logs(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return str(path)


def test_ab_analysis_end_to_end_ships_a_better_treatment(tmp_path):
    rng = np.random.default_rng(0)
    rows, feedback = [], []
    for i in range(6000):
        variant = "a" if i % 2 else "b"
        truth = "glasses" if rng.random() < 0.5 else "no_glasses"
        recall = 0.80 if variant == "a" else 0.92
        if truth == "glasses":
            label = "glasses" if rng.random() < recall else "no_glasses"
        else:
            label = "glasses" if rng.random() < 0.005 else "no_glasses"
        rows.append({"request_id": f"r{i}", "variant": variant, "label": label, "status": 200})
        feedback.append({"request_id": f"r{i}", "label": truth})
    logs = _write_logs(tmp_path / "logs.jsonl", rows)
    fb = _write_logs(tmp_path / "feedback.jsonl", feedback)
    result = analyze(
        logs, config=AnalysisConfig(design="ab", control="a"), feedback=fb, output=str(tmp_path / "out")
    )
    assert not result["srm"]["mismatch"]
    assert result["verdict"] == "ship", result["reason"]
    html = (tmp_path / "out" / "analysis.html").read_text()
    assert "Sample ratio check" in html and "http://" not in html and "https://" not in html
    assert json.loads((tmp_path / "out" / "analysis.json").read_text())["verdict"] == "ship"


def test_broken_split_is_reported_before_anything_else(tmp_path):
    rows = [
        {"request_id": f"r{i}", "variant": "a" if i % 3 else "b", "label": "glasses"} for i in range(3000)
    ]
    result = analyze(_write_logs(tmp_path / "l.jsonl", rows), config=AnalysisConfig(design="ab"))
    assert result["srm"]["mismatch"] and result["verdict"] == "inconclusive"
    assert "sample ratio mismatch" in result["reason"]


def test_aab_detects_unfair_control_arms(tmp_path):
    rng = np.random.default_rng(1)
    rows, fb = [], []
    for i in range(9000):
        variant = ("a1", "a2", "b")[i % 3]
        recall = {"a1": 0.9, "a2": 0.7, "b": 0.9}[variant]  # a2 is broken: the A/A check must catch it
        rows.append(
            {
                "request_id": f"r{i}",
                "variant": variant,
                "label": "glasses" if rng.random() < recall else "no_glasses",
            }
        )
        fb.append({"request_id": f"r{i}", "label": "glasses"})
    result = analyze(
        _write_logs(tmp_path / "l.jsonl", rows),
        feedback=_write_logs(tmp_path / "f.jsonl", fb),
        config=AnalysisConfig(design="aab", control="a1"),
    )
    assert not result["aa_check"]["fair"] and result["verdict"] == "inconclusive"


def _canary_rows(rng, n, canary_error=0.0, canary_latency=20.0):
    rows = []
    for i in range(n):
        variant = "canary" if i % 10 == 0 else "baseline"
        bad = variant == "canary" and rng.random() < canary_error
        rows.append(
            {
                "request_id": f"r{i}",
                "variant": variant,
                "status": 500 if bad else 200,
                "latency_ms": float(rng.gamma(4, (canary_latency if variant == "canary" else 20.0) / 4)),
                "label": "glasses" if rng.random() < 0.5 else "no_glasses",
                "confidence": float(rng.beta(8, 2)),
            }
        )
    return rows


def test_canary_analysis_promotes_a_healthy_canary_and_aborts_a_failing_one(tmp_path):
    rng = np.random.default_rng(5)
    config = AnalysisConfig(design="canary", weights={"baseline": 90, "canary": 10}, control="baseline")
    healthy = analyze(_write_logs(tmp_path / "h.jsonl", _canary_rows(rng, 20_000)), config=config)
    assert healthy["verdict"] == "promote" and healthy["score"] == 100
    failing = analyze(
        _write_logs(tmp_path / "f.jsonl", _canary_rows(rng, 5000, canary_error=0.05)), config=config
    )
    assert failing["verdict"] == "abort" and "error rate" in failing["reason"]
    slow = analyze(
        _write_logs(tmp_path / "s.jsonl", _canary_rows(rng, 5000, canary_latency=60.0)), config=config
    )
    assert next(c for c in slow["checks"] if c["metric"] == "latency_ratio")["state"] == "fail"


def test_shadow_analysis_agreement_and_disagreements(tmp_path):
    rows = []
    for i in range(1000):
        bright = 0.2 if i < 100 else 0.6
        rows.append({"request_id": f"r{i}", "variant": "primary", "label": "glasses", "brightness": bright})
        rows.append(
            {
                "request_id": f"r{i}",
                "variant": "shadow",
                "label": "no_glasses" if i < 100 else "glasses",
                "brightness": bright,
            }
        )
    result = analyze(
        _write_logs(tmp_path / "s.jsonl", rows),
        config=AnalysisConfig(design="shadow", control="primary"),
        output=str(tmp_path / "out"),
    )
    assert result["agreement"] == pytest.approx(0.9)
    assert result["disagreements_by_class"] == [{"primary": "glasses", "shadow": "no_glasses", "count": 100}]
    feature = next(f for f in result["disagreements_by_feature"] if f["feature"] == "brightness")
    assert feature["mean_disagreeing"] == pytest.approx(0.2) and feature["p_value"] < 1e-6
    assert (
        "selection" in result["selection_bias"].lower() or "only traffic" in result["selection_bias"].lower()
    )


def test_canary_webhook_answers_like_flagger_expects(tmp_path):
    import httpx
    from visionops.experiments.router import BackgroundServer
    from visionops.experiments.webhook import build_app

    rng = np.random.default_rng(9)
    good = _write_logs(tmp_path / "good.jsonl", _canary_rows(rng, 20_000))
    bad = _write_logs(tmp_path / "bad.jsonl", _canary_rows(rng, 4000, canary_error=0.08))
    config = AnalysisConfig(design="canary", weights={"baseline": 90, "canary": 10}, control="baseline")
    server = BackgroundServer(build_app(good, config)).start()
    try:
        payload = {"name": "visionops", "namespace": "visionops", "phase": "Progressing", "metadata": {}}
        ok = httpx.post(server.url + "/canary/check", json=payload)
        assert ok.status_code == 200 and ok.json()["verdict"] == "promote"
        payload["metadata"] = {"logs": bad}
        failed = httpx.post(server.url + "/canary/check", json=payload)
        assert failed.status_code == 412 and failed.json()["verdict"] == "abort"
        payload["metadata"] = {"logs": str(tmp_path / "missing.jsonl")}
        missing = httpx.post(server.url + "/canary/check", json=payload)
        assert missing.status_code == 422 and "no such log" in missing.json()["reason"]
    finally:
        server.stop()


def test_cli_analyze_and_sample_size(tmp_path):
    from typer.testing import CliRunner
    from visionops.cli import app

    rows = [{"request_id": f"r{i}", "variant": "a" if i % 2 else "b", "label": "glasses"} for i in range(400)]
    logs = _write_logs(tmp_path / "l.jsonl", rows)
    result = CliRunner().invoke(
        app, ["experiment", "analyze", logs, "--design", "ab", "--output", str(tmp_path / "o")]
    )
    assert result.exit_code == 0, result.output
    assert "sample ratio: ok" in result.output and (tmp_path / "o" / "analysis.html").exists()
    size = CliRunner().invoke(app, ["experiment", "sample-size", "--baseline", "0.8", "--mde", "0.05"])
    assert size.exit_code == 0 and json.loads(size.output)["per_arm"] > 900


def test_kfp_component_compiles_and_runs(tmp_path):
    from kfp import compiler
    from kfp.dsl import HTML, Artifact, Metrics
    from visionops.pipeline.experiment_components import analyze_experiment, experiment_analysis_pipeline

    package = tmp_path / "exp.yaml"
    compiler.Compiler().compile(experiment_analysis_pipeline, str(package))
    spec = package.read_text()
    assert "analyze-experiment" in spec and "visionops-s3" in spec
    rng = np.random.default_rng(2)
    logs = _write_logs(tmp_path / "l.jsonl", _canary_rows(rng, 20_000))
    outputs = {
        name: cls(name=name, uri=str(tmp_path / name))
        for name, cls in (("analysis", Artifact), ("report", HTML), ("figures", Metrics))
    }
    for art in outputs.values():
        art.path = str(tmp_path / art.name)
    verdict = analyze_experiment.python_func(
        logs_uri=logs,
        design="canary",
        feedback_uri="",
        weights="baseline=90,canary=10",
        control="baseline",
        capture_uri="",
        target_precision=0.95,
        **outputs,
    )
    assert verdict == "promote"
    assert "<html" in (tmp_path / "report").read_text()
    assert outputs["figures"].metadata["score"] == 100
