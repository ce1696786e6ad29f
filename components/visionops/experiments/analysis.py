"""``visionops experiment analyze``: turning prediction logs and feedback into a decision.

Input: JSON-lines logs (the router's experiment log, or the serving prediction logs of each variant), one
record per request with ``request_id``, ``variant``, and where known ``status``, ``latency_ms``, ``label``,
``confidence`` and feature columns; feedback as JSON lines ``{"request_id", "label"}`` (or ``feedback``
records inside the logs). Every analysis first checks the sample ratio: a broken split is reported before any
other figure, and its verdict is never "ship" or "promote".

The unit of analysis is the unit of randomisation: when the router assigned sticky units (cameras, sites), the
sample ratio is tested on units and every metric's interval treats the unit as the cluster (jackknife over
units).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from visionops import reports, storage
from visionops.errors import ConfigError, DataError
from visionops.experiments import stats
from visionops.policy import POSITIVE_CLASS, TARGET_PRECISION

DESIGNS = ("shadow", "canary", "ab", "aab")


@dataclass
class AnalysisConfig:
    """Knobs of the analysis; defaults are the documented ones."""

    design: str = "ab"
    weights: dict[str, float] | None = None  # configured split; None = equal
    control: str | None = None  # A/B control / canary baseline / shadow primary; default: first name
    positive_class: str = POSITIVE_CLASS
    target_precision: float = TARGET_PRECISION
    alpha: float = 0.05
    srm_alpha: float = 0.001
    mde: float = 0.02
    power: float = 0.8
    tau: float = 0.05
    min_samples: int = 200
    # "auto": the unit the logs say was randomised (the router's sticky ``unit``); "request": per request
    # (refused for a sticky experiment); any other name: that log column is the unit
    unit: str = "auto"
    # canary: the error rate may exceed the baseline's by at most this (non-inferiority margin, absolute)
    canary_max_error_increase: float = 0.01
    canary_max_latency_ratio: float = 1.2  # allowance on the geometric-mean latency ratio
    canary_class_share_allowance: float = 0.05  # allowance on each predicted class's share (absolute)
    canary_confidence_allowance: float = 0.05  # allowance on the mean confidence (absolute)
    # canary: the weights in force over time, [(unix time, {variant: weight}), ...] as the webhook's callers
    # reported them; a request gets the weights of the first report at or after its time
    weight_history: list[tuple[float, dict[str, float]]] | None = None

    def __post_init__(self) -> None:
        if self.design not in DESIGNS:
            raise ConfigError(f"unknown design {self.design!r}; valid: {', '.join(DESIGNS)}")


# -- loading ----------------------------------------------------------------------------------------------------
def _log_files(uri: str) -> list[str]:
    """A log file, or every ``.jsonl`` file under a folder / prefix."""
    suffixes = (".jsonl", ".json", ".log")
    if storage.is_remote(uri):
        return (
            [uri]
            if uri.endswith(suffixes)
            else sorted(u for u in storage.list_uris(uri) if u.endswith(suffixes))
        )
    path = Path(uri)
    if path.is_dir():
        return sorted(str(p) for p in path.rglob("*.jsonl"))
    if not path.exists():
        raise DataError(f"no such log file or folder: {uri}")
    return [uri]


def _read_jsonl(uri: str) -> list[dict]:
    records: list[dict] = []
    uris = _log_files(uri)
    for item in uris:
        text = storage.read_text(item)
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except ValueError as exc:
                raise DataError(f"{item}:{n}: not a JSON line ({exc})") from exc
    return records


def load_logs(logs: str | list[str], feedback: str | None = None):
    """(requests frame, feedback frame) from log URIs (files or folders of .jsonl files)."""
    import pandas as pd

    records: list[dict] = []
    for uri in [logs] if isinstance(logs, str) else logs:
        records.extend(_read_jsonl(uri))
    fb = [r for r in records if "feedback" in r]
    req = [r for r in records if "feedback" not in r]
    if feedback:
        fb.extend(
            {"request_id": r["request_id"], "feedback": r.get("label", r.get("feedback"))}
            | {k: r[k] for k in SELECTION_FIELDS if k in r}
            for r in _read_jsonl(feedback)
        )
    if not req:
        raise DataError(f"no request records in {logs}")
    frame = pd.DataFrame(req)
    if "variant" not in frame or "request_id" not in frame:
        raise DataError("log records need 'request_id' and 'variant' fields")
    columns = ["request_id", "feedback"] + [k for k in SELECTION_FIELDS if any(k in r for r in fb)]
    fb_frame = pd.DataFrame(fb, columns=columns).drop_duplicates("request_id", keep="last")
    return frame, fb_frame


#: Feedback fields saying how a labelled item was chosen for review: ``selection`` ("random" for the uniform
#: share, "uncertain" for uncertainty sampling) and ``selection_probability`` (its inclusion probability).
SELECTION_FIELDS = ("selection", "selection_probability")


# -- the unit of randomisation ----------------------------------------------------------------------------------
def randomisation_unit(frame, config: AnalysisConfig) -> str | None:
    """The log column that was randomised, or None when each request was drawn on its own.

    The router writes ``assignment`` (its policy) and ``unit`` (the sticky header) into every record. With
    sticky assignment every request of a camera goes to the same arm, so requests are not independent:
    the analysis must count and compare cameras, and a per-request analysis is refused.
    """
    sticky = "assignment" in frame and bool((frame["assignment"] == "sticky").any())
    if config.unit == "request":
        if sticky:
            raise ConfigError(
                "these logs come from sticky assignment (assignment=sticky): every request of a unit went "
                "to the same variant, so requests are not independent and a per-request analysis overstates "
                "the evidence; analyse by unit (unit='auto', CLI --unit auto)"
            )
        return None
    if config.unit != "auto":
        if config.unit not in frame:
            raise ConfigError(f"no column {config.unit!r} in the logs to use as the unit of analysis")
        return config.unit
    if sticky and "unit" in frame:
        return "unit"
    if "unit" in frame and _looks_sticky(frame["unit"], frame["variant"]):
        return "unit"
    return None


def _looks_sticky(units, variants) -> bool:
    """Logs without an ``assignment`` field: units that repeat and never change variant were sticky."""
    known = units.notna()
    if known.sum() < 2 or units[known].nunique() == known.sum():
        return False
    return bool((variants[known].groupby(units[known]).nunique() == 1).all())


def _with_units(frame, unit: str | None):
    """``frame`` with a ``_unit`` column: the unit, or the request id for requests randomised on their own
    (no unit header: the router then draws per request)."""
    frame = frame.copy()
    ids = "request:" + frame["request_id"].astype(str)
    frame["_unit"] = ids if unit is None else frame[unit].astype("string").fillna(ids).astype(str)
    return frame


# -- the designs ------------------------------------------------------------------------------------------------
def _srm(frame, config: AnalysisConfig, variants: list[str], unit: str | None = None) -> stats.SRMResult:
    """Always-valid sample-ratio check of requests, or of units when ``unit`` names the randomised column."""
    if unit is not None:
        frame = frame.drop_duplicates("_unit")
    counts = {k: int(v) for k, v in frame["variant"].value_counts().to_dict().items()}
    weights = config.weights or dict.fromkeys(variants, 1.0)
    if config.weight_history and "time" in frame:
        return _srm_over_time(frame, config, weights, counts)
    return stats.srm_check(counts, weights, alpha=config.srm_alpha)


def _srm_over_time(frame, config: AnalysisConfig, weights: dict[str, float], counts: dict[str, int]):
    """Sample-ratio check when the weights changed during the experiment (a canary's ramp): every request
    is expected under the weights in force at its time."""
    history = sorted(config.weight_history or [])
    names = sorted(weights)
    times = np.array([t for t, _w in history], dtype=float)
    period = np.searchsorted(times, frame["time"].astype(float).to_numpy(), side="left")
    period = np.minimum(period, len(history) - 1)
    probs = np.array([[w.get(n, 0.0) for n in names] for _t, w in history], dtype=float)
    probs = probs / probs.sum(axis=1, keepdims=True)
    arm = frame["variant"].map({n: i for i, n in enumerate(names)}).to_numpy()
    table = np.zeros((len(history), len(names)))
    np.add.at(table, (period, arm), 1.0)
    p_value = float(stats.srm_sequential_p(table, probs))
    expected = (table.sum(axis=1, keepdims=True) * probs).sum(axis=0)
    chi2 = float((((table.sum(axis=0) - expected) ** 2) / np.maximum(expected, 1e-9)).sum())
    return stats.SRMResult(
        counts={n: int(counts.get(n, 0)) for n in names},
        expected=dict(zip(names, expected.round(3).tolist(), strict=True)),
        chi2=chi2,
        p_value=p_value,
        mismatch=p_value < config.srm_alpha,
    )


def _variants(frame, config: AnalysisConfig) -> list[str]:
    names = sorted(set(frame["variant"].dropna()) | set(config.weights or {}))
    control = config.control or names[0]
    if control not in names:
        raise ConfigError(f"control {control!r} is not among the variants {names}")
    return [control] + [n for n in names if n != control]


def labelled_feedback(feedback) -> tuple[Any, str]:
    """The feedback to measure live quality on, and a note saying which labels these are.

    Reviewers' labels often come from uncertainty sampling, which picks hard cases: their precision is far
    below the traffic's. When the feedback marks how each item was chosen (``selection``: "random" for the
    uniform share), only the random share is used, because only it represents the traffic. (Inverse-propensity
    weighting by ``selection_probability`` belongs to the shared weighted estimator; until it is wired in,
    such labels are used unweighted and the note says so.)
    """
    if "selection" in feedback and feedback["selection"].notna().any():
        random = feedback[feedback["selection"] == "random"]
        return random, f"random share only: {len(random)} of {len(feedback)} labels"
    if "selection_probability" in feedback and feedback["selection_probability"].notna().any():
        return feedback, "all labels, unweighted (selection_probability recorded but not yet used)"
    return feedback, "all labels (the feedback does not say how they were chosen)"


def live_quality(
    frame, feedback, variant: str, positive: str, *, clustered: bool = False, note: str = ""
) -> dict[str, Any]:
    """Precision and recall of ``positive`` for one variant from the requests that got feedback.

    ``frame`` has a ``_unit`` column (see :func:`_with_units`). ``clustered``: the unit was randomised, so
    each metric is a ratio of per-unit sums with a jackknife (leave-one-unit-out) interval; otherwise
    Wilson intervals.
    """
    arm = frame[frame["variant"] == variant]
    rows = arm[["request_id", "label"] + (["_unit"] if clustered else [])].merge(feedback, on="request_id")
    pred_pos = (rows["label"] == positive).to_numpy()
    true_pos = (rows["feedback"] == positive).to_numpy()
    tp = int((pred_pos & true_pos).sum())
    n_pred, n_true = int(pred_pos.sum()), int(true_pos.sum())
    out: dict[str, Any] = {
        "variant": variant,
        "with_feedback": len(rows),
        "labels": note,
        "tp": tp,
        "predicted_positive": n_pred,
        "actual_positive": n_true,
        "precision": tp / n_pred if n_pred else math.nan,
        "precision_ci": stats.wilson_interval(tp, n_pred),
        "recall": tp / n_true if n_true else math.nan,
        "recall_ci": stats.wilson_interval(tp, n_true),
    }
    if clustered:
        units = arm["_unit"].nunique()
        per_unit = (
            rows.assign(tp=pred_pos & true_pos, pp=pred_pos, ap=true_pos)
            .groupby("_unit")[["tp", "pp", "ap"]]
            .sum()
        )
        out["units"] = int(units)
        for metric, denominator in (("precision", "pp"), ("recall", "ap")):
            ratio, var = stats.ratio_estimate(per_unit["tp"], per_unit[denominator], units)
            out[f"{metric}_var"] = float(var)
            out[f"{metric}_ci"] = stats.normal_interval(float(ratio), float(var))
    return out


def _compare(control: dict, treatment: dict, metric: str, denominator: str, config: AnalysisConfig):
    """(fixed-horizon, sequential) test of treatment - control on one metric: binomial per request, or
    the clusters' jackknife variances when the quality figures carry them."""
    if f"{metric}_var" not in control:
        counts = (control["tp"], control[denominator], treatment["tp"], treatment[denominator])
        return (stats.two_proportion_test(*counts, alpha=config.alpha),
                stats.msprt_test(*counts, alpha=config.alpha, tau=config.tau))  # fmt: skip
    d = treatment[metric] - control[metric]
    v = control[f"{metric}_var"] + treatment[f"{metric}_var"]
    if not (np.isfinite(d) and np.isfinite(v)):
        return (stats.DiffResult(0.0, 0.0, 0, 0, 0.0, -1.0, 1.0, 1.0, False),
                stats.SequentialResult(0.0, -1.0, 1.0, 1.0, False))  # fmt: skip
    df = control.get("units", 0) + treatment.get("units", 0) - 2
    fixed = stats.normal_diff_test(control[metric], treatment[metric], v, alpha=config.alpha, df=df)
    p_value, low, high = (float(x) for x in stats.always_valid(d, v, alpha=config.alpha, tau=config.tau))
    return fixed, stats.SequentialResult(float(d), low, high, p_value, p_value < config.alpha)


def ab_decision(control: dict, treatment: dict, config: AnalysisConfig) -> dict[str, Any]:
    """Compare live precision and recall of two variants; verdict ship / keep / inconclusive with a reason."""
    # recall: true positives among the actual positives; precision: among the answers "positive"
    rec_fixed, rec_seq = _compare(control, treatment, "recall", "actual_positive", config)
    prec_fixed, prec_seq = _compare(control, treatment, "precision", "predicted_positive", config)
    meets = treatment["precision_ci"][0] >= config.target_precision
    if (prec_seq.significant and prec_seq.diff < 0) or (rec_seq.significant and rec_seq.diff < 0):
        verdict, reason = "keep", "the treatment is significantly worse (sequential test)"
    elif rec_seq.significant and rec_seq.diff > 0 and meets:
        verdict, reason = "ship", "recall is significantly higher and precision meets the target"
    elif rec_seq.significant and rec_seq.diff > 0:
        verdict, reason = (
            "inconclusive",
            "recall is higher but precision does not credibly meet the target yet",
        )
    else:
        verdict, reason = (
            "inconclusive",
            "no significant difference yet (the sequential test allows looking again later)",
        )
    return {
        "control": control["variant"],
        "treatment": treatment["variant"],
        "recall": {"fixed_horizon": rec_fixed.to_dict(), "sequential": rec_seq.to_dict()},
        "precision": {"fixed_horizon": prec_fixed.to_dict(), "sequential": prec_seq.to_dict()},
        "treatment_meets_target": bool(meets),
        "verdict": verdict,
        "reason": reason,
    }


def _sample_size(frame, labelled, quality: dict, config: AnalysisConfig, unit: str | None) -> dict:
    """What the test that decides (the mSPRT on recall) needs per arm to detect ``config.mde``.

    Per request: labelled positives (by simulation), and requests at the observed prevalence and feedback
    rate. Per unit: units, from the observed between-unit variance of each arm's recall.
    """
    control = next(iter(quality.values()))
    base = control["recall"]
    baseline = base if 0 < base < 1 - config.mde else 0.8
    if unit is None:
        prevalence = float((labelled["feedback"] == config.positive_class).mean()) if len(labelled) else 0.0
        feedback_rate = frame["request_id"].isin(labelled["request_id"]).mean() if len(frame) else 0.0
        known = 0 < prevalence <= 1 and 0 < feedback_rate <= 1
        return stats.sample_size(
            baseline,
            config.mde,
            alpha=config.alpha,
            power=config.power,
            tau=config.tau,
            prevalence=prevalence if known else None,
            feedback_rate=float(feedback_rate) if known else None,
        )
    rows = frame[frame["variant"] == control["variant"]][["request_id", "_unit", "label"]]
    rows = rows.merge(labelled, on="request_id")
    actual = rows["feedback"] == config.positive_class
    per_unit = (
        rows.assign(tp=actual & (rows["label"] == config.positive_class), ap=actual)
        .groupby("_unit")[["tp", "ap"]]
        .sum()
        .reindex(frame.loc[frame["variant"] == control["variant"], "_unit"].unique(), fill_value=0)
    )
    size = stats.cluster_sample_size(
        per_unit["tp"].to_numpy(), per_unit["ap"].to_numpy(), config.mde,
        alpha=config.alpha, power=config.power, tau=config.tau,
    )  # fmt: skip
    return {
        "test": "msprt",
        "unit": unit,
        "units_per_arm": size and size["units_per_arm"],
        "simulated_power": size and size["simulated_power"],
        "pilot": f"the control arm's {per_unit.shape[0]} units over the logs' duration",
        "labelled_positives_per_arm": None,
    }


def analyze_ab(frame, feedback, config: AnalysisConfig) -> dict[str, Any]:
    """A/B (or A/A/B): SRM first (on units when units were randomised), live quality per arm, comparisons."""
    variants = _variants(frame, config)
    unit = randomisation_unit(frame, config)
    frame = _with_units(frame, unit)
    srm = _srm(frame, config, variants, unit)
    labelled, note = labelled_feedback(feedback)
    quality = {
        v: live_quality(frame, labelled, v, config.positive_class, clustered=unit is not None, note=note)
        for v in variants
    }
    control = variants[0]
    size = _sample_size(frame, labelled, quality, config, unit)
    result: dict[str, Any] = {
        "design": config.design,
        "unit": unit or "request",
        "srm": srm.to_dict(),
        "quality": quality,
        "sample_size": size,
        "sample_size_per_arm": size["labelled_positives_per_arm"] or size.get("units_per_arm"),
        "comparisons": [],
    }
    crossing = int((frame.groupby("_unit")["variant"].nunique() > 1).sum()) if unit else 0
    if config.design == "aab":
        if len(variants) < 3:
            raise ConfigError("an A/A/B design needs three variants: two controls and a treatment")
        aa = ab_decision(quality[variants[0]], quality[variants[1]], config)
        result["aa_check"] = {
            "variants": variants[:2],
            "recall_p": aa["recall"]["fixed_horizon"]["p_value"],
            "precision_p": aa["precision"]["fixed_horizon"]["p_value"],
            "fair": not (
                aa["recall"]["fixed_horizon"]["significant"]
                or aa["precision"]["fixed_horizon"]["significant"]
            ),
        }
        treatments = variants[2:]
    else:
        treatments = variants[1:]
    for t in treatments:
        result["comparisons"].append(ab_decision(quality[control], quality[t], config))
    if srm.mismatch:
        result["verdict"], result["reason"] = (
            "inconclusive",
            "sample ratio mismatch: the split is broken; fix it first",
        )
    elif crossing:
        result["verdict"], result["reason"] = (
            "inconclusive",
            f"{crossing} units saw more than one variant: the assignment was not sticky",
        )
    elif config.design == "aab" and not result["aa_check"]["fair"]:
        result["verdict"], result["reason"] = (
            "inconclusive",
            "the A/A arms differ: the split or the metric is not fair",
        )
    elif result["comparisons"]:
        result["verdict"] = result["comparisons"][0]["verdict"]
        result["reason"] = result["comparisons"][0]["reason"]
    return result


# -- canary checks -----------------------------------------------------------------------------------------------
# Each check is (baseline rows, canary rows, config) -> a record, or None when the logs lack the field. The
# decisions are vectorised functions of summary figures, so the benchmark simulates thousands of rollouts
# through exactly the code the webhook runs.
def interval_state(d, v, *, tau: float, alpha: float, upper=None, lower=None):
    """States of always-valid intervals of ``d`` (canary - baseline) with variance ``v``, vectorised.

    ``"fail"`` when the interval lies wholly above ``upper`` or wholly below ``lower`` (credibly beyond an
    allowance), ``"pass"`` when it lies wholly between them, else ``"undecided"`` (gather more traffic).
    Always-valid: a webhook may look after every step and still errs with probability <= alpha.
    Returns (state, p_value, low, high).
    """
    p_value, low, high = stats.always_valid(d, v, alpha=alpha, tau=tau)
    upper = np.inf if upper is None else upper
    lower = -np.inf if lower is None else lower
    state = np.where(
        (low > upper) | (high < lower), "fail", np.where((low > lower) & (high < upper), "pass", "undecided")
    )
    return state, p_value, low, high


def error_rate_state(e_b, n_b, e_c, n_c, *, margin: float, alpha: float):
    """Critical, one-sided error-rate check: ``"fail"`` when the canary's error rate is credibly above the
    baseline's, ``"pass"`` when it is credibly below baseline + ``margin`` (non-inferiority), else
    ``"undecided"``. Vectorised; returns (state, diff, p_value, low, high)."""
    e_b, n_b, e_c, n_c = (np.asarray(x, dtype=float) for x in (e_b, n_b, e_c, n_c))
    # the variance with half a pseudo-error per arm: 0 errors in n requests is not a variance of 0
    p_b, p_c = (e_b + 0.5) / (n_b + 1), (e_c + 0.5) / (n_c + 1)
    v = p_b * (1 - p_b) / np.maximum(n_b, 1) + p_c * (1 - p_c) / np.maximum(n_c, 1)
    d = e_c / np.maximum(n_c, 1) - e_b / np.maximum(n_b, 1)
    state, p_value, low, high = interval_state(d, v, tau=margin, alpha=alpha, upper=0.0)
    state = np.where(state == "fail", "fail", np.where(high < margin, "pass", "undecided"))
    return state, d, p_value, low, high


def mean_diff_variance(var_b, n_b, var_c, n_c):
    """Variance of a difference of two means (Welch), inf where an arm has fewer than two values."""
    n_b, n_c = np.asarray(n_b, dtype=float), np.asarray(n_c, dtype=float)
    ok = (n_b > 1) & (n_c > 1)
    return np.where(ok, var_b / np.maximum(n_b, 1) + var_c / np.maximum(n_c, 1), np.inf)


def canary_verdict(srm_mismatch, states: dict[str, np.ndarray], enough, critical=("error_rate",)):
    """Verdicts from the SRM flag and the checks' states, vectorised: abort on SRM, a failing critical check
    or two failing others; promote when every check passes on enough traffic; else continue."""
    stack = np.array(list(states.values()))  # (checks, ...)
    crit = np.array([name in critical for name in states]).reshape((-1,) + (1,) * (stack.ndim - 1))
    critical_fail = ((stack == "fail") & crit).any(axis=0)
    others_failing = ((stack == "fail") & ~crit).sum(axis=0)
    all_pass = (stack == "pass").all(axis=0)
    abort = np.asarray(srm_mismatch) | critical_fail | (others_failing >= 2)
    return np.where(abort, "abort", np.where(all_pass & np.asarray(enough), "promote", "continue"))


def _record(metric, state, p_value, low, high, d, *, critical=False, **figures) -> dict:
    state = str(state)
    return {
        "metric": metric,
        **figures,
        "diff": float(d),
        "ci": (float(low), float(high)),
        "p_value": float(p_value),
        "state": state,
        "pass": state == "pass",
        "critical": critical,
    }


def check_error_rate(base, canary, config: AnalysisConfig) -> dict | None:
    """Critical: the canary's 5xx rate, one-sided with the non-inferiority margin."""
    if "status" not in base:
        return None
    n_b, n_c = len(base), len(canary)
    e_b, e_c = int((base["status"] >= 500).sum()), int((canary["status"] >= 500).sum())
    margin = config.canary_max_error_increase
    state, d, p, low, high = error_rate_state(e_b, n_b, e_c, n_c, margin=margin, alpha=config.alpha)
    return _record(
        "error_rate", state, p, low, high, d, critical=True,
        baseline=e_b / max(n_b, 1), canary=e_c / max(n_c, 1), margin=margin,
    )  # fmt: skip


def check_latency(base, canary, config: AnalysisConfig) -> dict | None:
    """Fail when the canary is credibly slower than the allowed ratio (geometric mean of latency)."""
    if "latency_ms" not in base:
        return None
    lb = np.log(np.maximum(base["latency_ms"].dropna().to_numpy(float), 1e-3))
    lc = np.log(np.maximum(canary["latency_ms"].dropna().to_numpy(float), 1e-3))
    if not len(lb) or not len(lc):
        return None
    v = mean_diff_variance(
        np.var(lb, ddof=1) if len(lb) > 1 else 0, len(lb), np.var(lc, ddof=1) if len(lc) > 1 else 0, len(lc)
    )
    allowance = math.log(config.canary_max_latency_ratio)
    d = lc.mean() - lb.mean()
    state, p, low, high = interval_state(d, v, tau=allowance, alpha=config.alpha, upper=allowance)
    return _record(
        "latency_ratio", state, p, low, high, d, baseline=float(np.exp(lb.mean())),
        canary=float(np.exp(lc.mean())), allowance=config.canary_max_latency_ratio, scale="log",
    )  # fmt: skip


def check_class_shares(base, canary, config: AnalysisConfig) -> dict | None:
    """Fail when a predicted class's share moved credibly beyond the allowance (either way); each class is
    tested at alpha / classes. Reports the worst class."""
    if "label" not in base:
        return None
    classes = sorted(set(base["label"].dropna()) | set(canary["label"].dropna()))
    if len(classes) < 2 or not len(base) or not len(canary):
        return None
    allowance = config.canary_class_share_allowance
    shown = classes[1:] if len(classes) == 2 else classes  # two classes: one share says it all
    s_b = np.array([(base["label"] == c).mean() for c in shown])
    s_c = np.array([(canary["label"] == c).mean() for c in shown])
    v = s_b * (1 - s_b) / len(base) + s_c * (1 - s_c) / len(canary)
    states, p, low, high = interval_state(
        s_c - s_b, v, tau=allowance, alpha=config.alpha / len(shown), upper=allowance, lower=-allowance
    )
    order = {"fail": 0, "undecided": 1, "pass": 2}
    i = min(range(len(shown)), key=lambda k: order[str(states[k])])
    return _record(
        "predicted_class_shares", states[i], p[i], low[i], high[i], s_c[i] - s_b[i], label=shown[i],
        baseline=float(s_b[i]), canary=float(s_c[i]), allowance=allowance,
        by_class={c: str(st) for c, st in zip(shown, states, strict=True)},
    )  # fmt: skip


def check_confidence(base, canary, config: AnalysisConfig) -> dict | None:
    """Fail when the mean confidence moved credibly beyond the allowance (either way)."""
    if "confidence" not in base:
        return None
    cb, cc = base["confidence"].dropna().to_numpy(float), canary["confidence"].dropna().to_numpy(float)
    if not len(cb) or not len(cc):
        return None
    v = mean_diff_variance(
        np.var(cb, ddof=1) if len(cb) > 1 else 0, len(cb), np.var(cc, ddof=1) if len(cc) > 1 else 0, len(cc)
    )
    allowance = config.canary_confidence_allowance
    d = cc.mean() - cb.mean()
    state, p, low, high = interval_state(
        d, v, tau=allowance, alpha=config.alpha, upper=allowance, lower=-allowance
    )
    return _record(
        "mean_confidence", state, p, low, high, d, baseline=float(cb.mean()), canary=float(cc.mean()),
        allowance=allowance,
    )  # fmt: skip


#: The canary checks, in report order.
CANARY_CHECKS = (check_error_rate, check_latency, check_class_shares, check_confidence)


def canary_sample_size(baseline_error_rate: float, config: AnalysisConfig) -> int:
    """Canary requests at which a canary with the margin's worth of extra errors is aborted with
    ``config.power`` at one look (one as good as the baseline then proves non-inferiority at least as often:
    its variance is smaller); the baseline arm is assumed at least as large as the canary's."""
    p = min(max(baseline_error_rate, 0.001), 0.5)
    margin = config.canary_max_error_increase
    var = p * (1 - p) + (p + margin) * (1 - p - margin)
    return stats.msprt_units(margin, var, alpha=config.alpha, power=config.power, tau=margin)


def analyze_canary(frame, config: AnalysisConfig) -> dict[str, Any]:
    """Automated canary analysis: always-valid checks with margins -> score -> verdict.

    Every check uses an always-valid interval, so a webhook that looks at every step of a rollout keeps its
    false-abort rate at alpha. Critical checks (error rate) abort when the canary is credibly worse;
    the others fail only beyond their allowance (any real model change moves class shares a little).
    """
    variants = _variants(frame, config)
    if len(variants) != 2:
        raise ConfigError(f"canary analysis needs exactly two variants (baseline, canary), got {variants}")
    base_name, canary_name = variants
    srm = _srm(frame, config, variants)
    base, canary = frame[frame["variant"] == base_name], frame[frame["variant"] == canary_name]
    checks = [c for c in (check(base, canary, config) for check in CANARY_CHECKS) if c is not None]
    score = 100.0 * sum(c["pass"] for c in checks) / max(len(checks), 1)
    enough = len(canary) >= config.min_samples and len(base) >= config.min_samples
    states = {c["metric"]: np.array(c["state"]) for c in checks}
    verdict = (
        str(canary_verdict(srm.mismatch, states, enough))
        if checks
        else ("abort" if srm.mismatch else "continue")
    )
    failed = [c["metric"] for c in checks if c["state"] == "fail"]
    if srm.mismatch:
        reason = "sample ratio mismatch: traffic is not split as configured"
    elif verdict == "abort" and any(c["critical"] and c["state"] == "fail" for c in checks):
        reason = "a critical metric (error rate) is credibly worse on the canary"
    elif verdict == "abort":
        reason = f"several metrics are credibly beyond their allowance: {', '.join(failed)}"
    elif verdict == "promote":
        reason = "every metric is credibly within its margin"
    elif not enough:
        reason = f"fewer than {config.min_samples} requests per variant so far"
    else:
        undecided = [c["metric"] for c in checks if c["state"] != "pass"]
        reason = f"not yet credibly within the margin: {', '.join(undecided)}; gather more traffic"
    base_errors = float((base["status"] >= 500).mean()) if "status" in base and len(base) else 0.01
    return {
        "design": "canary",
        "srm": srm.to_dict(),
        "baseline": base_name,
        "canary": canary_name,
        "checks": checks,
        "score": score,
        "canary_requests_needed": canary_sample_size(base_errors, config),
        "verdict": verdict,
        "reason": reason,
    }


FEATURE_COLUMNS = (
    "brightness",
    "contrast",
    "saturation",
    "sharpness",
    "mean_r",
    "mean_g",
    "mean_b",
    "aspect",
    "is_greyscale",
    "width",
    "height",
)


def analyze_shadow(frame, config: AnalysisConfig, capture: str | None = None) -> dict[str, Any]:
    """Agreement of the shadow with the primary on the same requests, disagreements by class and feature."""
    variants = _variants(frame, config)
    if len(variants) != 2:
        raise ConfigError(f"shadow analysis needs two variants (primary, shadow), got {variants}")
    primary, shadow = variants
    p = frame[frame["variant"] == primary].drop_duplicates("request_id").set_index("request_id")
    s = frame[frame["variant"] == shadow].drop_duplicates("request_id").set_index("request_id")
    joined = p.join(s[["label"] + [c for c in ("confidence",) if c in s]], rsuffix="_shadow", how="inner")
    n = len(joined)
    agree = int((joined["label"] == joined["label_shadow"]).sum())
    disagreeing = joined[joined["label"] != joined["label_shadow"]]
    by_class = (
        disagreeing.groupby(["label", "label_shadow"])
        .size()
        .rename("count")
        .reset_index()
        .rename(columns={"label": primary, "label_shadow": shadow})
        .to_dict(orient="records")
    )
    by_feature = []
    for col in FEATURE_COLUMNS:
        if col in joined and joined[col].notna().any() and len(disagreeing) and agree:
            agreeing_vals = joined.loc[joined["label"] == joined["label_shadow"], col].dropna().to_numpy()
            pval, effect = stats.mann_whitney(agreeing_vals, disagreeing[col].dropna().to_numpy())
            by_feature.append(
                {
                    "feature": col,
                    "mean_agreeing": float(np.mean(agreeing_vals)),
                    "mean_disagreeing": float(disagreeing[col].mean()),
                    "p_value": pval,
                    "effect": effect,
                }
            )
    result = {
        "design": "shadow",
        "primary": primary,
        "shadow": shadow,
        "paired_requests": n,
        "unpaired": {primary: int(len(p) - n), shadow: int(len(s) - n)},
        "agreement": agree / n if n else math.nan,
        "agreement_ci": stats.wilson_interval(agree, n),
        "disagreements_by_class": by_class,
        "disagreements_by_feature": by_feature,
        "disagreeing_request_ids": disagreeing.index.tolist()[:1000],
        "selection_bias": (
            "Only traffic the primary received is compared: the shadow is judged on today's "
            "population, not on the one it would attract or the cases the primary never saw."
        ),
    }
    if capture:
        result["gallery"] = _gallery(capture, disagreeing, primary, shadow)
    return result


def _gallery(capture: str, disagreeing, primary: str, shadow: str, limit: int = 60) -> list[dict]:
    """Captured images of disagreeing requests (serving's payload capture: ``<capture>/<date>/<id>.jpg``)."""
    wanted = set(disagreeing.index[: limit * 4])
    found: list[dict] = []
    for uri in storage.list_uris(capture):
        stem = uri.rsplit("/", 1)[-1].rsplit(".", 1)
        if len(stem) == 2 and stem[0] in wanted and stem[1].lower() in ("jpg", "jpeg", "png", "webp"):
            row = disagreeing.loc[stem[0]]
            found.append(
                {"request_id": stem[0], "uri": uri, primary: row["label"], shadow: row["label_shadow"]}
            )
            if len(found) >= limit:
                break
    return found


# -- entry point and reports ------------------------------------------------------------------------------------
def analyze(
    logs: str | list[str],
    *,
    config: AnalysisConfig,
    feedback: str | None = None,
    capture: str | None = None,
    output: str | None = None,
) -> dict[str, Any]:
    """Run the analysis of ``config.design`` and write ``analysis.json`` + ``analysis.html`` into ``output``."""
    frame, fb = load_logs(logs, feedback)
    if config.design in ("ab", "aab"):
        result = analyze_ab(frame, fb, config)
    elif config.design == "canary":
        result = analyze_canary(frame, config)
    else:
        result = analyze_shadow(frame, config, capture)
    result["config"] = asdict(config)
    if output:
        write_report(result, output)
    return result


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    return value


def write_report(result: dict[str, Any], output: str) -> None:
    """JSON for machines, a self-contained HTML page for people."""
    result = _jsonable(result)
    storage.write_text(storage.join(output, "analysis.json"), json.dumps(result, indent=2))
    storage.write_text(storage.join(output, "analysis.html"), render_html(result))


def render_html(result: dict[str, Any]) -> str:
    design = result["design"]
    srm = result.get("srm")
    sections: list[tuple[str, str]] = []
    verdict = result.get("verdict")
    if verdict:
        css = {"ship": "pass", "promote": "pass", "keep": "fail", "abort": "fail"}.get(verdict, "warn")
        sections.append(
            (
                "Verdict",
                f'<p class="{css}">{reports.escape(verdict)}</p>'
                f"<p>{reports.escape(result.get('reason', ''))}</p>",
            )
        )
    if srm:
        rows = [
            {"variant": k, "observed": v, "expected": srm["expected"].get(k)}
            for k, v in srm["counts"].items()
        ]
        state = (
            '<p class="fail">Sample ratio mismatch</p>' if srm["mismatch"] else '<p class="pass">Split OK</p>'
        )
        sections.append(
            (
                "Sample ratio check (first)",
                state
                + reports.html_table(rows)
                + f"<p>chi2 = {reports.fmt(srm['chi2'])}, p = {reports.fmt(srm['p_value'])}</p>",
            )
        )
    if design in ("ab", "aab"):
        q = [
            {
                "variant": v["variant"],
                "with feedback": v["with_feedback"],
                "precision": v["precision"],
                "precision 95% CI": _ci(v["precision_ci"]),
                "recall": v["recall"],
                "recall 95% CI": _ci(v["recall_ci"]),
            }
            for v in result["quality"].values()
        ]
        labels = next(iter(result["quality"].values()), {}).get("labels", "")
        sections.append(
            (
                "Live quality of the positive class",
                f"<p>Unit of analysis: {reports.escape(result.get('unit', 'request'))}. "
                f"Labels: {reports.escape(labels)}.</p>" + reports.html_table(q),
            )
        )
        if "aa_check" in result:
            sections.append(("A/A check", reports.html_table([result["aa_check"]])))
        comp = [
            {
                "treatment": c["treatment"],
                "recall diff": c["recall"]["fixed_horizon"]["diff"],
                "fixed p": c["recall"]["fixed_horizon"]["p_value"],
                "sequential p": c["recall"]["sequential"]["p_value"],
                "precision diff": c["precision"]["fixed_horizon"]["diff"],
                "verdict": c["verdict"],
            }
            for c in result["comparisons"]
        ]
        sections.append(
            (
                "Comparisons against the control",
                reports.html_table(comp) + f"<p>{reports.escape(_sample_size_text(result))}</p>",
            )
        )
    elif design == "canary":
        checks = [
            {k: (reports.fmt(v) if not isinstance(v, dict) else json.dumps(v)) for k, v in c.items()}
            for c in result["checks"]
        ]
        sections.append(
            (
                f"Metrics (score {reports.fmt(result['score'])})",
                reports.html_table(
                    checks, classes={"True": "pass", "False": "fail", "yes": "pass", "no": "fail"}
                ),
            )
        )
    else:
        sections.append(
            (
                "Agreement",
                f"<p>{reports.fmt(result['agreement'])} on {result['paired_requests']} paired "
                f"requests (95% CI {_ci(result['agreement_ci'])})</p>"
                f'<p class="muted">{reports.escape(result["selection_bias"])}</p>',
            )
        )
        sections.append(("Disagreements by class", reports.html_table(result["disagreements_by_class"])))
        sections.append(
            ("Disagreements by drift feature", reports.html_table(result["disagreements_by_feature"]))
        )
        if result.get("gallery"):
            cells = []
            for item in result["gallery"]:
                data = storage.read_bytes(item["uri"])
                caption = " / ".join(f"{k}: {v}" for k, v in item.items() if k not in ("uri",))
                cells.append(
                    f'<figure style="display:inline-block;margin:4px;width:180px">'
                    f'<img src="{reports.image_data_uri(data)}" alt="{reports.escape(item["request_id"])}">'
                    f'<figcaption class="muted">{reports.escape(caption)}</figcaption></figure>'
                )
            sections.append(("Disagreeing images", "".join(cells)))
    return reports.html_page(f"Experiment analysis: {design}", sections)


def _sample_size_text(result: dict[str, Any]) -> str:
    """What the test that decides needs per arm, and in which unit it is counted."""
    size, mde = result.get("sample_size") or {}, result["config"]["mde"]
    if size.get("units_per_arm"):
        return (f"Units ({size['unit']}) per arm for the mSPRT to detect a recall change of {mde} with "
                f"{result['config']['power']:.0%} power: {size['units_per_arm']}.")  # fmt: skip
    text = (f"Labelled positives per arm for the mSPRT to detect a recall change of {mde} with "
            f"{result['config']['power']:.0%} power: {size.get('labelled_positives_per_arm')}")  # fmt: skip
    if size.get("requests_per_arm"):
        text += (f" ({size['requests_per_arm']} requests per arm at the observed prevalence "
                 f"{size['prevalence']:.3g} and feedback rate {size['feedback_rate']:.3g})")  # fmt: skip
    return text + "."


def _ci(ci) -> str:
    return f"[{reports.fmt(ci[0], 3)}, {reports.fmt(ci[1], 3)}]"
