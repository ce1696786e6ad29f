"""``visionops experiment analyze``: turning prediction logs and feedback into a decision.

Input: JSON-lines logs (the router's experiment log, or the serving prediction logs of each variant), one
record per request with ``request_id``, ``variant``, and where known ``status``, ``latency_ms``, ``label``,
``confidence`` and feature columns; feedback as JSON lines ``{"request_id", "label"}`` (or ``feedback``
records inside the logs). Every analysis first checks the sample ratio: a broken split is reported before any
other figure, and its verdict is never "ship" or "promote".
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

DESIGNS = ("shadow", "canary", "ab", "aab")


@dataclass
class AnalysisConfig:
    """Knobs of the analysis; defaults are the documented ones."""

    design: str = "ab"
    weights: dict[str, float] | None = None  # configured split; None = equal
    control: str | None = None  # A/B control / canary baseline / shadow primary; default: first name
    positive_class: str = "glasses"
    target_precision: float = 0.95
    alpha: float = 0.05
    srm_alpha: float = 0.001
    mde: float = 0.02
    power: float = 0.8
    tau: float = 0.05
    min_samples: int = 200
    canary_max_error_increase: float = 0.01
    canary_max_latency_ratio: float = 1.2

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
            for r in _read_jsonl(feedback)
        )
    if not req:
        raise DataError(f"no request records in {logs}")
    frame = pd.DataFrame(req)
    if "variant" not in frame or "request_id" not in frame:
        raise DataError("log records need 'request_id' and 'variant' fields")
    fb_frame = pd.DataFrame(fb, columns=["request_id", "feedback"]).drop_duplicates("request_id", keep="last")
    return frame, fb_frame


# -- the designs ------------------------------------------------------------------------------------------------
def _srm(frame, config: AnalysisConfig, variants: list[str]) -> stats.SRMResult:
    counts = frame["variant"].value_counts().to_dict()
    weights = config.weights or dict.fromkeys(variants, 1.0)
    return stats.srm_check({k: int(v) for k, v in counts.items()}, weights, alpha=config.srm_alpha)


def _variants(frame, config: AnalysisConfig) -> list[str]:
    names = sorted(set(frame["variant"].dropna()) | set(config.weights or {}))
    control = config.control or names[0]
    if control not in names:
        raise ConfigError(f"control {control!r} is not among the variants {names}")
    return [control] + [n for n in names if n != control]


def live_quality(frame, feedback, variant: str, positive: str) -> dict[str, Any]:
    """Precision and recall of ``positive`` for one variant from the requests that got feedback."""
    rows = frame[frame["variant"] == variant][["request_id", "label"]].merge(feedback, on="request_id")
    pred_pos = rows["label"] == positive
    true_pos = rows["feedback"] == positive
    tp = int((pred_pos & true_pos).sum())
    n_pred, n_true = int(pred_pos.sum()), int(true_pos.sum())
    return {
        "variant": variant,
        "with_feedback": len(rows),
        "tp": tp,
        "predicted_positive": n_pred,
        "actual_positive": n_true,
        "precision": tp / n_pred if n_pred else math.nan,
        "precision_ci": stats.wilson_interval(tp, n_pred),
        "recall": tp / n_true if n_true else math.nan,
        "recall_ci": stats.wilson_interval(tp, n_true),
    }


def ab_decision(control: dict, treatment: dict, config: AnalysisConfig) -> dict[str, Any]:
    """Compare live precision and recall of two variants; verdict ship / keep / inconclusive with a reason."""

    def compare(denominator: str) -> tuple[stats.DiffResult, stats.SequentialResult]:
        counts = (control["tp"], control[denominator], treatment["tp"], treatment[denominator])
        return (stats.two_proportion_test(*counts, alpha=config.alpha),
                stats.msprt_test(*counts, alpha=config.alpha, tau=config.tau))  # fmt: skip

    rec_fixed, rec_seq = compare("actual_positive")  # recall: true positives among the actual positives
    prec_fixed, prec_seq = compare("predicted_positive")  # precision: among the answers "positive"
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


def analyze_ab(frame, feedback, config: AnalysisConfig) -> dict[str, Any]:
    variants = _variants(frame, config)
    srm = _srm(frame, config, variants)
    quality = {v: live_quality(frame, feedback, v, config.positive_class) for v in variants}
    control = variants[0]
    base_recall = quality[control]["recall"]
    baseline = base_recall if 0 < base_recall < 1 - config.mde else 0.8
    result: dict[str, Any] = {
        "design": config.design,
        "srm": srm.to_dict(),
        "quality": quality,
        "sample_size_per_arm": stats.sample_size_per_arm(
            baseline, config.mde, alpha=config.alpha, power=config.power
        ),
        "comparisons": [],
    }
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
    elif config.design == "aab" and not result["aa_check"]["fair"]:
        result["verdict"], result["reason"] = (
            "inconclusive",
            "the A/A arms differ: the split or the metric is not fair",
        )
    elif result["comparisons"]:
        result["verdict"] = result["comparisons"][0]["verdict"]
        result["reason"] = result["comparisons"][0]["reason"]
    return result


def analyze_canary(frame, config: AnalysisConfig) -> dict[str, Any]:
    """Automated canary analysis (in the manner of Kayenta): per-metric nonparametric checks -> score -> verdict."""
    from scipy import stats as sps

    variants = _variants(frame, config)
    if len(variants) != 2:
        raise ConfigError(f"canary analysis needs exactly two variants (baseline, canary), got {variants}")
    base_name, canary_name = variants
    srm = _srm(frame, config, variants)
    base, canary = frame[frame["variant"] == base_name], frame[frame["variant"] == canary_name]
    checks = []
    if "status" in frame:
        err_b, err_c = int((base["status"] >= 500).sum()), int((canary["status"] >= 500).sum())
        test = stats.two_proportion_test(err_b, len(base), err_c, len(canary), alpha=config.alpha)
        ok = not (test.significant and test.diff > 0) and test.diff <= config.canary_max_error_increase
        checks.append(
            {
                "metric": "error_rate",
                "baseline": test.p_control,
                "canary": test.p_treatment,
                "p_value": test.p_value,
                "pass": bool(ok),
                "critical": True,
            }
        )
    if "latency_ms" in frame:
        lb, lc = base["latency_ms"].dropna().to_numpy(), canary["latency_ms"].dropna().to_numpy()
        p, effect = stats.mann_whitney(lb, lc)
        ratio = float(np.median(lc) / max(np.median(lb), 1e-9)) if len(lb) and len(lc) else 1.0
        ok = not (p < config.alpha and effect > 0 and ratio > config.canary_max_latency_ratio)
        checks.append(
            {
                "metric": "latency_p50",
                "baseline": float(np.median(lb)) if len(lb) else math.nan,
                "canary": float(np.median(lc)) if len(lc) else math.nan,
                "p_value": p,
                "pass": bool(ok),
                "critical": False,
            }
        )
    if "label" in frame:
        table = (
            frame[frame["variant"].isin(variants)].groupby(["variant", "label"]).size().unstack(fill_value=0)
        )
        p = (
            float(sps.chi2_contingency(table.to_numpy())[1])
            if table.shape[1] > 1 and table.shape[0] == 2
            else 1.0
        )
        shares = (table.T / table.sum(axis=1)).T.round(4).to_dict(orient="index")
        checks.append(
            {
                "metric": "predicted_class_shares",
                "baseline": shares.get(base_name),
                "canary": shares.get(canary_name),
                "p_value": p,
                "pass": bool(p >= config.alpha),
                "critical": False,
            }
        )
    if "confidence" in frame:
        cb, cc = base["confidence"].dropna().to_numpy(), canary["confidence"].dropna().to_numpy()
        p, _ = stats.mann_whitney(cb, cc)
        checks.append(
            {
                "metric": "confidence_distribution",
                "baseline": float(np.mean(cb)) if len(cb) else math.nan,
                "canary": float(np.mean(cc)) if len(cc) else math.nan,
                "p_value": p,
                "pass": bool(p >= config.alpha),
                "critical": False,
            }
        )
    score = 100.0 * sum(c["pass"] for c in checks) / max(len(checks), 1)
    if srm.mismatch:
        verdict, reason = "abort", "sample ratio mismatch: traffic is not split as configured"
    elif any(c["critical"] and not c["pass"] for c in checks):
        verdict, reason = "abort", "a critical metric (error rate) is worse on the canary"
    elif len(canary) < config.min_samples or len(base) < config.min_samples:
        verdict, reason = "continue", f"fewer than {config.min_samples} requests per variant so far"
    elif score >= 95:
        verdict, reason = "promote", "every metric passes"
    elif score >= 75:
        verdict, reason = "continue", "most metrics pass; gather more traffic"
    else:
        verdict, reason = "abort", "several metrics are worse on the canary"
    return {
        "design": "canary",
        "srm": srm.to_dict(),
        "baseline": base_name,
        "canary": canary_name,
        "checks": checks,
        "score": score,
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
        sections.append(("Live quality of the positive class", reports.html_table(q)))
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
                reports.html_table(comp)
                + f"<p>Sample size per arm for an absolute effect of {result['config']['mde']}: "
                f"{result['sample_size_per_arm']}</p>",
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


def _ci(ci) -> str:
    return f"[{reports.fmt(ci[0], 3)}, {reports.fmt(ci[1], 3)}]"
