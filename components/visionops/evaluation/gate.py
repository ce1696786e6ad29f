"""The promotion gate: its policy, its rules, and the decision record.

:func:`decide` is pure: it takes the challenger's (and optionally the champion's) evaluation summary and the
policy, and returns the decision record. Every rule says its value, its limit, how they compare, and whether
it passed; a rule whose limit is not set (``None``) or whose figure could not be measured is ``skipped`` and
never decides. The verdict is ``blessed`` when no rule failed.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from visionops import policy as product
from visionops.errors import ConfigError
from visionops.evaluation.metrics import INTERVAL_METHODS


@dataclass(frozen=True)
class GatePolicy:
    """What a model must show on the golden set to replace the champion.

    Quality: precision of ``positive_class`` (None = the bundle's) must be proven >= ``target_precision`` **at
    the production prevalence** ``positive_prevalence`` (the share of the positive class expected where the
    model is used; None = the validation split's own share, which the record then says). The threshold is
    certified on the validation split by fixed-sequence testing with a joint (TPR lower, FPR upper) exact
    bound at one-sided level ``(1 - confidence) / 2``; with ``require_golden_precision`` the same bound on
    the golden (test) set at that threshold must also reach the target. ``interval`` ("wilson" or
    "clopper-pearson") is the method of the two-sided intervals shown in the reports.

    Champion: a paired non-inferiority test on the same golden images; the challenger's recall may be at
    most ``recall_tolerance`` below the champion's and its FPR at most ``fpr_tolerance`` (None = not
    checked) above, each proven at the same one-sided level.

    Budget (None = no limit): ``max_p95_latency_ms`` (batch 1, preprocessing + forward), ``max_model_mb`` (weights
    on disk), ``max_memory_mb`` (peak during inference), ``min_throughput`` (images/s at the best batch size).
    The defaults serve the example load (100,000 images a day, each answered within 5 s) with room to spare.

    Behaviour (None = report only): minimum rates for invariance (golden images of every class, the
    no-positive -> positive flip reported on its own), directional (synthetic pairs, report only by default)
    and minimum functionality (only on ``functionality_set``, a curated ImageFolder of the model's own
    domain; skipped with the reason when not given: synthetic faces never judge a photo model).
    Slices: ``max_flagged_slices`` (None = report only) of significantly worse slices (one-sided
    two-proportion tests of slices with at least ``slice_min_n`` images, ``slice_correction`` "holm" or "bh"
    at ``slice_alpha``).
    """

    target_precision: float = product.TARGET_PRECISION
    confidence: float = product.CONFIDENCE
    interval: str = "wilson"
    positive_class: str | None = None
    positive_prevalence: float | None = None
    require_golden_precision: bool = True
    recall_tolerance: float = 0.05
    fpr_tolerance: float | None = 0.03
    max_p95_latency_ms: float | None = 1000.0
    max_model_mb: float | None = 200.0
    max_memory_mb: float | None = 2048.0
    min_throughput: float | None = 5.0
    min_invariance_rate: float | None = 0.9
    min_directional_rate: float | None = None
    min_functionality_rate: float | None = 0.8
    functionality_set: str | None = None
    max_flagged_slices: int | None = None
    slice_min_n: int = 30
    slice_alpha: float = 0.05
    slice_correction: str = "holm"
    behaviour_samples: int = 50
    brightness_delta: float = 0.1
    batch_size: int = 32
    latency_runs: int = 50
    throughput_batch_sizes: tuple[int, ...] = (1, 8, 32)

    @property
    def alpha(self) -> float:
        """The one-sided error of every proof the gate makes (0.025 at 95% confidence)."""
        return (1.0 - self.confidence) / 2.0

    def __post_init__(self) -> None:
        problems = []
        for name in ("target_precision", "confidence"):
            value = getattr(self, name)
            if not 0.0 < value < 1.0:
                problems.append(f"{name} must be in (0, 1), got {value}")
        if self.interval not in INTERVAL_METHODS:
            problems.append(f"interval {self.interval!r} unknown; valid: {', '.join(INTERVAL_METHODS)}")
        if self.positive_prevalence is not None and not 0.0 < self.positive_prevalence < 1.0:
            problems.append(
                f"positive_prevalence must be in (0, 1) or None (the validation share), got {self.positive_prevalence}"
            )
        if not 0.0 <= self.recall_tolerance <= 1.0:
            problems.append(f"recall_tolerance must be in [0, 1], got {self.recall_tolerance}")
        if self.fpr_tolerance is not None and not 0.0 <= self.fpr_tolerance <= 1.0:
            problems.append(f"fpr_tolerance must be in [0, 1] or None, got {self.fpr_tolerance}")
        if self.slice_correction not in ("holm", "bh"):
            problems.append(f"slice_correction {self.slice_correction!r} unknown; valid: holm, bh")
        for name in ("max_p95_latency_ms", "max_model_mb", "max_memory_mb", "min_throughput"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                problems.append(f"{name} must be > 0 or None (no limit), got {value}")
        for name in ("min_invariance_rate", "min_directional_rate", "min_functionality_rate"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                problems.append(f"{name} must be in [0, 1] or None (report only), got {value}")
        if not 0.0 < self.slice_alpha < 1.0:
            problems.append(f"slice_alpha must be in (0, 1), got {self.slice_alpha}")
        for name in ("slice_min_n", "behaviour_samples", "batch_size", "latency_runs"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.throughput_batch_sizes or min(self.throughput_batch_sizes) < 1:
            problems.append(
                f"throughput_batch_sizes must be positive integers, got {self.throughput_batch_sizes}"
            )
        if problems:
            raise ConfigError("bad gate policy: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["throughput_batch_sizes"] = list(self.throughput_batch_sizes)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GatePolicy:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown gate policy fields {sorted(unknown)}; valid: {sorted(known)}")
        values = dict(data)
        if "throughput_batch_sizes" in values:
            values["throughput_batch_sizes"] = tuple(int(b) for b in values["throughput_batch_sizes"])
        return cls(**values)


def recall_at_target(summary: dict[str, Any]) -> float:
    """Golden recall at the val-chosen threshold; 0 when the threshold does not meet the constraint (a model
    that cannot keep the precision promise has no usable recall)."""
    if not summary["threshold_choice"]["met"]:
        return 0.0
    return float(summary["test"]["positive"]["recall"] or 0.0)


def _rule(
    name: str, description: str, value: Any, limit: Any, op: str, *, detail: str = ""
) -> dict[str, Any]:
    if limit is None or value is None or (isinstance(value, float) and math.isnan(value)):
        why = "no limit set" if limit is None else "not measured"
        return {
            "name": name,
            "description": description,
            "value": value,
            "limit": limit,
            "op": op,
            "passed": None,
            "status": "skipped",
            "detail": f"{why}; {detail}" if detail else why,
        }
    passed = bool(value >= limit) if op == ">=" else bool(value <= limit)
    return {
        "name": name,
        "description": description,
        "value": value,
        "limit": limit,
        "op": op,
        "passed": passed,
        "status": "pass" if passed else "fail",
        "detail": detail,
    }


def _rate(behaviour: dict[str, Any], name: str) -> float | None:
    test = (behaviour or {}).get(name) or {}
    return test.get("rate") if test.get("status") == "ran" else None


def rules(
    challenger: dict[str, Any], champion: dict[str, Any] | None, policy: GatePolicy
) -> list[dict[str, Any]]:
    """Every rule of the gate, evaluated on the challenger's summary (and the champion's)."""
    choice = challenger["threshold_choice"]
    golden = challenger["test"]["positive"]
    ops = challenger.get("ops") or {}
    prevalence = choice["prevalence"]
    out = [
        _rule(
            "precision_constraint",
            f"validation precision at prevalence {prevalence:.4g}, lower bound (fixed-sequence, "
            f"{1 - policy.alpha:.1%} one-sided) >= target",
            choice["precision_lower"],
            policy.target_precision,
            ">=",
            detail=choice["reason"],
        ),
    ]
    if policy.require_golden_precision:
        bound = challenger["test"].get("precision_at_prevalence") or {}
        out.append(
            _rule(
                "golden_precision",
                f"golden-set precision at prevalence {prevalence:.4g}, lower bound at the chosen threshold "
                ">= target",
                bound.get("lower", 0.0),
                policy.target_precision,
                ">=",
                detail=f"{golden['tp']}/{golden['tp'] + golden['fn']} positives and {golden['fp']}/"
                f"{golden['fp'] + golden['tn']} negatives called positive on the golden set; point estimate "
                f"{_show(bound.get('precision'))}; FPR needed <= {_show(bound.get('fpr_needed'))}",
            )
        )
    out += _champion_rules(challenger, champion, policy)
    latency = (ops.get("latency_ms") or {}).get("p95")
    out += [
        _rule(
            "p95_latency_ms",
            "p95 latency at batch 1 (preprocess + forward) <= budget",
            latency,
            policy.max_p95_latency_ms,
            "<=",
            detail=f"device {ops.get('device', '?')}",
        ),
        _rule(
            "model_size_mb",
            "model size on disk <= budget",
            ops.get("model_size_mb"),
            policy.max_model_mb,
            "<=",
        ),
        _rule(
            "peak_memory_mb",
            "peak memory during inference <= budget",
            ops.get("peak_memory_mb"),
            policy.max_memory_mb,
            "<=",
            detail=ops.get("memory_method", ""),
        ),
        _rule(
            "throughput",
            "throughput at the best batch size (images/s) >= floor",
            ops.get("throughput_images_per_s"),
            policy.min_throughput,
            ">=",
            detail=f"batch size {ops.get('best_batch_size')}",
        ),
    ]
    behaviour = challenger.get("behaviour") or {}
    for name, limit, text in (
        (
            "invariance",
            policy.min_invariance_rate,
            "answers unchanged by a small brightness change, worst class (rate)",
        ),
        ("directional", policy.min_directional_rate, "same face: P(positive) higher with glasses (rate)"),
        (
            "minimum_functionality",
            policy.min_functionality_rate,
            "curated easy cases of the model's domain answered correctly (rate)",
        ),
    ):
        detail = (behaviour.get(name) or {}).get("detail", "")
        out.append(_rule(f"behaviour_{name}", text, _rate(behaviour, name), limit, ">=", detail=detail))
    flagged = (challenger.get("slices") or {}).get("flagged")
    out.append(
        _rule(
            "flagged_slices",
            "slices significantly worse than the rest <= maximum",
            None if flagged is None else len(flagged),
            policy.max_flagged_slices,
            "<=",
            detail=", ".join(f"{f['column']}={f['value']}" for f in flagged or []),
        )
    )
    return out


def _champion_rules(
    challenger: dict[str, Any], champion: dict[str, Any] | None, policy: GatePolicy
) -> list[dict[str, Any]]:
    """Paired non-inferiority on the same golden images: recall (lower bound of the difference >= -margin) and
    FPR (upper bound of the difference <= margin)."""
    recall_text = "golden recall - champion's, paired lower bound >= -tolerance"
    fpr_text = "golden FPR - champion's, paired upper bound <= tolerance"
    if champion is None:
        return [
            _rule("recall_vs_champion", recall_text, recall_at_target(challenger), None, ">=",
                  detail="no champion: first model"),
            _rule("fpr_vs_champion", fpr_text, None, None, "<=", detail="no champion: first model"),
        ]  # fmt: skip
    paired = challenger.get("paired") or {}
    who = f"champion {champion.get('model_version')}"
    if not champion["threshold_choice"]["met"]:
        note = f"{who} missed the precision constraint: its recall counts as 0"
        return [
            _rule("recall_vs_champion", recall_text, recall_at_target(challenger), 0.0, ">=", detail=note),
            _rule("fpr_vs_champion", fpr_text, None, None, "<=", detail=note),
        ]
    if not challenger["threshold_choice"]["met"]:
        note = "the challenger missed the precision constraint: its recall counts as 0"
        return [
            _rule("recall_vs_champion", recall_text, 0.0, round(recall_at_target(champion) - policy.recall_tolerance, 10), ">=", detail=note),
            _rule("fpr_vs_champion", fpr_text, None, policy.fpr_tolerance, "<=", detail=note),
        ]  # fmt: skip
    recall, fpr = paired["recall"], paired["fpr"]
    return [
        _rule(
            "recall_vs_champion", recall_text, recall["lower"], -policy.recall_tolerance, ">=",
            detail=f"{who}; difference {_show(recall['difference'])} on {recall['n']} golden positives "
            f"({recall['only_a']} found only by the challenger, {recall['only_b']} only by the champion; "
            f"McNemar p {recall['mcnemar_p']:.3g}); margin {policy.recall_tolerance}",
        ),
        _rule(
            "fpr_vs_champion", fpr_text, fpr["upper"], policy.fpr_tolerance, "<=",
            detail=f"{who}; difference {_show(fpr['difference'])} on {fpr['n']} golden negatives "
            f"({fpr['only_a']} false alarms only of the challenger, {fpr['only_b']} only of the champion); "
            f"margin {policy.fpr_tolerance}",
        ),
    ]  # fmt: skip


def decide(
    challenger: dict[str, Any], champion: dict[str, Any] | None, policy: GatePolicy, *, golden_version: str
) -> dict[str, Any]:
    """The decision record: each rule with value, limit and pass/fail, and the verdict with its reasons."""
    checked = rules(challenger, champion, policy)
    failed = [r for r in checked if r["status"] == "fail"]
    blessed = not failed
    if failed:
        reasons = [
            f"{r['name']}: {_show(r['value'])} {'<' if r['op'] == '>=' else '>'} limit {_show(r['limit'])}"
            + (f" ({r['detail']})" if r["detail"] else "")
            for r in failed
        ]
    else:
        passed = [r["name"] for r in checked if r["status"] == "pass"]
        reasons = [f"all {len(passed)} applied rules passed: {', '.join(passed)}"]
        if champion is None:
            reasons.append("no champion: the absolute rules decided (first model)")
    return {
        "blessed": blessed,
        "verdict": "blessed" if blessed else "refused",
        "reasons": reasons,
        "golden_version": golden_version,
        "challenger": _identity(challenger),
        "champion": _identity(champion) if champion else None,
        "rules": checked,
        "policy": policy.to_dict(),
        "decided_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def _show(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _identity(summary: dict[str, Any]) -> dict[str, Any]:
    return {
        "uri": summary.get("uri"),
        "model_version": summary.get("model_version"),
        "threshold": summary["threshold_choice"]["threshold"],
        "constraint_met": summary["threshold_choice"]["met"],
        "recall_at_target_precision": recall_at_target(summary),
        "golden_precision": summary["test"]["positive"].get("precision"),
        "golden_precision_at_prevalence": (summary["test"].get("precision_at_prevalence") or {}).get("lower"),
        "prevalence": summary["threshold_choice"]["prevalence"],
        "source": summary.get("source", "evaluated now"),
    }
