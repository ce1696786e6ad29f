"""The model card (Markdown + self-contained HTML) and the output files of an evaluation."""

from __future__ import annotations

import json
from typing import Any

from visionops import storage
from visionops.reports import escape, figure_data_uri, fmt, html_page, html_table, markdown_table


def _figure(width: float = 5.0, height: float = 4.0, ncols: int = 1):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height))
    axes = [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]
    return fig, axes


def plot_confusion(metrics: dict[str, Any]) -> str:
    cm = metrics["test"]["confusion_matrix"]
    fig, (ax,) = _figure(4.5, 4.0)
    matrix = cm["matrix"]
    ax.imshow(matrix, cmap="Blues")
    top = max(max(row) for row in matrix) or 1
    for i, row in enumerate(matrix):
        for j, value in enumerate(row):
            ax.text(j, i, str(value), ha="center", va="center", color="white" if value > top / 2 else "black")
    ax.set_xticks(range(len(cm["labels"])), cm["labels"])
    ax.set_yticks(range(len(cm["labels"])), cm["labels"])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(
        f"Confusion matrix at threshold {metrics['threshold']['threshold']:.3g}\n"
        f"golden set {metrics['golden_version']}",
        fontsize=9,
    )
    return figure_data_uri(fig)


def plot_roc_pr(metrics: dict[str, Any]) -> str:
    test = metrics["test"]
    fig, (roc, pr) = _figure(4.5, 4.0, ncols=2)
    roc.plot(test["roc"]["fpr"], test["roc"]["tpr"], color="#2b6cb0")
    roc.plot([0, 1], [0, 1], ls="--", color="#999")
    roc.set_xlabel("false positive rate")
    roc.set_ylabel("true positive rate")
    roc.set_title(f"ROC (AUC {fmt(test['roc_auc'])})\ngolden set {metrics['golden_version']}", fontsize=9)
    pr.plot(test["pr"]["recall"], test["pr"]["precision"], color="#2b6cb0")
    target = metrics["policy"]["target_precision"]
    pr.axhline(target, ls="--", color="#c62828", label=f"target precision {target}")
    point = test["positive"]
    if point["precision"] is not None:
        pr.plot([point["recall"]], [point["precision"]], "o", color="#c62828", label="chosen threshold")
    pr.set_xlabel(f"recall ({metrics['positive_class']})")
    pr.set_ylabel(f"precision ({metrics['positive_class']})")
    pr.set_title(
        f"Precision-recall (AP {fmt(test['pr_auc'])})\ngolden set {metrics['golden_version']}", fontsize=9
    )
    pr.legend(fontsize=8, loc="lower left")
    return figure_data_uri(fig)


def plot_reliability(metrics: dict[str, Any]) -> str:
    cal = metrics["test"]["calibration"]
    bins = [b for b in cal["bins"] if b["count"]]
    fig, (ax,) = _figure(4.5, 4.0)
    ax.plot([0, 1], [0, 1], ls="--", color="#999", label="perfect calibration")
    ax.plot(
        [b["mean_predicted"] for b in bins],
        [b["fraction_positive"] for b in bins],
        "o-",
        color="#2b6cb0",
        label="model",
    )
    ax.set_xlabel(f"mean predicted P({metrics['positive_class']})")
    ax.set_ylabel("observed fraction positive")
    ax.set_title(f"Reliability (ECE {cal['ece']:.3f})\ngolden set {metrics['golden_version']}", fontsize=9)
    ax.legend(fontsize=8)
    return figure_data_uri(fig)


def plot_threshold_sweep(metrics: dict[str, Any]) -> str:
    sweep, choice = metrics["val_sweep"], metrics["threshold"]
    fig, (ax,) = _figure(6.0, 4.0)
    ax.plot(sweep["threshold"], sweep["precision"], color="#2b6cb0", label="precision")
    ax.plot(
        sweep["threshold"],
        sweep["precision_lower"],
        color="#2b6cb0",
        ls=":",
        label=f"precision lower bound on this split (two-sided {choice['confidence']:.0%})",
    )
    ax.plot(sweep["threshold"], sweep["recall"], color="#1a7f37", label="recall")
    ax.axhline(choice["target"], ls="--", color="#c62828", label=f"target {choice['target']}")
    ax.axvline(choice["threshold"], color="#b26a00", lw=1)
    ax.plot(
        [choice["threshold"]],
        [choice["precision_lower"]],
        "o",
        color="#b26a00",
        label=f"chosen {choice['threshold']:.3g}" + ("" if choice["met"] else " (target NOT met)"),
    )
    ax.set_xlabel(f"threshold on P({metrics['positive_class']})")
    ax.set_ylim(0, 1.02)
    ax.set_title(
        f"Threshold sweep on the validation split (dataset {metrics['dataset_version']})\n"
        f"golden set {metrics['golden_version']} is reported at the chosen point",
        fontsize=9,
    )
    ax.legend(fontsize=7, loc="lower left")
    return figure_data_uri(fig)


def _interval(values: list[float] | None) -> str:
    return "" if not values else f"[{values[0]:.4f}, {values[1]:.4f}]"


def _quality_rows(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    test = metrics["test"]
    pos = test["positive"]
    rows = [
        {
            "figure": f"precision ({metrics['positive_class']}) at threshold",
            "value": pos["precision"],
            "interval": _interval(pos["precision_interval"]),
        },
        {
            "figure": f"recall ({metrics['positive_class']}) at threshold",
            "value": pos["recall"],
            "interval": _interval(pos["recall_interval"]),
        },
        {"figure": "accuracy", "value": test["accuracy"], "interval": ""},
        {"figure": "balanced accuracy", "value": test["balanced_accuracy"], "interval": ""},
        {"figure": "macro F1", "value": test["macro_f1"], "interval": ""},
        {"figure": "ROC AUC", "value": test["roc_auc"], "interval": ""},
        {"figure": "PR AUC (average precision)", "value": test["pr_auc"], "interval": ""},
        {"figure": "ECE (10 bins)", "value": test["calibration"]["ece"], "interval": ""},
    ]
    for row in rows:
        row["golden set"] = metrics["golden_version"]
    return rows


def _per_class_rows(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"class": name, **values} for name, values in metrics["test"]["per_class"].items()]


def _slice_rows(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for r in metrics["slices"]["rows"]:
        rows.append(
            {
                "column": r["column"],
                "value": r["value"],
                "n": r["n"],
                "n positive": r["n_positive"],
                "accuracy": r["accuracy"],
                "recall": r["recall"],
                "precision": r["precision"],
                "flagged": "fail" if r["flagged"] else "",
                "worse in": ", ".join(r["worse_in"]),
            }
        )
    return rows


def _ops_rows(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    ops = metrics["ops"]
    lat, fwd = ops["latency_ms"], ops["forward_latency_ms"]
    return [
        {"figure": "device", "value": ops["device_name"]},
        {
            "figure": "latency p50 / p95 / p99 (ms, batch 1, preprocess + forward)",
            "value": f"{lat['p50']:.2f} / {lat['p95']:.2f} / {lat['p99']:.2f}",
        },
        {"figure": "forward-only latency p50 / p95 (ms)", "value": f"{fwd['p50']:.2f} / {fwd['p95']:.2f}"},
        {
            "figure": "throughput (images/s, best batch size)",
            "value": f"{ops['throughput_images_per_s']:.1f} at batch {ops['best_batch_size']}",
        },
        {
            "figure": "throughput by batch size",
            "value": ", ".join(f"{k}: {v:.1f}" for k, v in ops["throughput_by_batch_size"].items()),
        },
        {"figure": "model size on disk (MB)", "value": ops["model_size_mb"]},
        {"figure": "parameters", "value": f"{ops['parameters']:,}"},
        {"figure": "peak memory during inference (MB)", "value": ops["peak_memory_mb"]},
        {"figure": "memory method", "value": ops["memory_method"]},
    ]


def _behaviour_rows(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {"test": name, "status": r["status"], "rate": r["rate"], "detail": r["detail"]}
        for name, r in metrics["behaviour"].items()
    ]


def _rule_rows(record: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {
            "rule": r["name"],
            "value": r["value"],
            "op": r["op"],
            "limit": r["limit"],
            "status": r["status"],
            "detail": r["detail"],
        }
        for r in record["rules"]
    ]


def _headline(metrics: dict[str, Any], record: dict[str, Any]) -> str:
    choice = metrics["threshold"]
    verdict = "BLESSED" if record["blessed"] else "REFUSED"
    constraint = "met" if choice["met"] else f"NOT met (short by {choice['shortfall']:.4f})"
    return (
        f"Verdict: {verdict}. Precision constraint ({metrics['positive_class']} >= {choice['target']} at "
        f"production prevalence {choice['prevalence']:.4g} ({choice['prevalence_source']}), "
        f"{choice['confidence']:.0%} lower bound on val, fixed-sequence): {constraint}. "
        f"Threshold {choice['threshold']:.4g}. Golden set {metrics['golden_version']}."
    )


def _prevalence_rows(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """Precision against prevalence at the chosen threshold (validation testing part) and the FPR needed."""
    target = metrics["threshold"]["target"]
    return [
        {
            "prevalence": r["prevalence"],
            "precision (point)": r["precision"],
            "precision lower bound": r["precision_lower"],
            "model FPR": r["fpr"],
            f"FPR needed for {target}": r["fpr_needed"],
            "proven": "pass" if r["precision_lower"] >= target else "fail",
        }
        for r in metrics["test"].get("precision_vs_prevalence", [])
    ]


def _prevalence_text(metrics: dict[str, Any]) -> str:
    golden = metrics["test"].get("precision_at_prevalence") or {}
    return (
        "Precision depends on how rare the positive class is: precision(p) = TPR p / (TPR p + FPR (1 - p)). "
        "The table shows it at the chosen threshold for a range of prevalences (lower bound: exact TPR lower "
        "and FPR upper bounds, jointly at the gate's confidence). On the golden set at the production "
        f"prevalence {fmt(golden.get('prevalence'))}: precision {fmt(golden.get('precision'))}, lower bound "
        f"{fmt(golden.get('lower'))}, FPR {fmt(golden.get('fpr'))} (needed <= {fmt(golden.get('fpr_needed'))})."
    )


def model_card_markdown(metrics: dict[str, Any], record: dict[str, Any]) -> str:
    """The model card as Markdown (tables only; the HTML card carries the plots)."""
    champion = metrics.get("champion")
    lines = [
        f"# Model card: {metrics['model_version']}",
        "",
        f"**{_headline(metrics, record)}**",
        "",
        f"- bundle: `{metrics['bundle_uri']}`",
        f"- dataset: `{metrics['dataset_uri']}` (version {metrics['dataset_version']}, "
        f"golden set {metrics['golden_version']})",
        f"- positive class: `{metrics['positive_class']}`; decision: positive when P >= threshold",
        f"- champion: {champion['model_version'] + ' (' + champion['source'] + ')' if champion else 'none (first model)'}",
        "",
        "## Decision record",
        "",
        *[f"- {reason}" for reason in record["reasons"]],
        "",
        markdown_table(_rule_rows(record)),
        "## Threshold (chosen on the validation split)",
        "",
        metrics["threshold"]["reason"],
        "",
        "## Precision against prevalence",
        "",
        _prevalence_text(metrics),
        "",
        markdown_table(_prevalence_rows(metrics)),
        f"## Quality on the golden set {metrics['golden_version']}",
        "",
        markdown_table(_quality_rows(metrics)),
        markdown_table(_per_class_rows(metrics)),
        "Confusion matrix (rows true, columns predicted): "
        + json.dumps(
            dict(
                zip(metrics["confusion_matrix"]["labels"], metrics["confusion_matrix"]["matrix"], strict=True)
            )
        ),
        "",
        f"## Slices (golden set {metrics['golden_version']})",
        "",
        f"{metrics['slices']['test']}; flagged when the adjusted p < {metrics['slices']['alpha']} with n >= "
        f"{metrics['slices']['min_n']}.",
        "",
        markdown_table(_slice_rows(metrics)),
        "## Operations",
        "",
        markdown_table(_ops_rows(metrics)),
        "## Behavioural tests",
        "",
        markdown_table(_behaviour_rows(metrics)),
        "Plots (confusion matrix, ROC/PR, reliability, threshold sweep) are in model_card.html.",
        "",
    ]
    return "\n".join(lines)


def model_card_html(metrics: dict[str, Any], record: dict[str, Any]) -> str:
    """The model card as one self-contained HTML page (plots inline as data: URIs)."""
    css = "pass" if record["blessed"] else "fail"
    champion = metrics.get("champion")
    header = (
        f'<div class="card"><p class="{css}">{escape(_headline(metrics, record))}</p><ul>'
        + "".join(f"<li>{escape(r)}</li>" for r in record["reasons"])
        + "</ul>"
        f"<p>bundle <code>{escape(metrics['bundle_uri'])}</code>; dataset <code>{escape(metrics['dataset_uri'])}"
        f"</code> (version {escape(metrics['dataset_version'])}, golden set {escape(metrics['golden_version'])})"
        f"; champion: {escape(champion['model_version'] + ' (' + champion['source'] + ')') if champion else 'none'}"
        "</p></div>"
    )
    img = '<img alt="{alt}" src="{src}">'
    sections = [
        ("", header),
        (
            "Decision record",
            html_table(_rule_rows(record), classes={"pass": "pass", "fail": "fail", "skipped": "muted"}),
        ),
        (
            "Threshold sweep (validation split)",
            f"<p>{escape(metrics['threshold']['reason'])}</p>"
            + img.format(alt="threshold sweep", src=plot_threshold_sweep(metrics)),
        ),
        (
            "Precision against prevalence",
            f"<p>{escape(_prevalence_text(metrics))}</p>"
            + html_table(_prevalence_rows(metrics), classes={"pass": "pass", "fail": "fail"}),
        ),
        (
            f"Quality on the golden set {metrics['golden_version']}",
            html_table(_quality_rows(metrics))
            + html_table(_per_class_rows(metrics))
            + img.format(alt="confusion matrix", src=plot_confusion(metrics))
            + img.format(alt="ROC and precision-recall curves", src=plot_roc_pr(metrics))
            + img.format(alt="reliability curve", src=plot_reliability(metrics)),
        ),
        (
            f"Slices (golden set {metrics['golden_version']})",
            f"<p>{escape(metrics['slices']['test'])}; flagged when the adjusted p &lt; {metrics['slices']['alpha']} with "
            f"n &ge; {metrics['slices']['min_n']}.</p>" + html_table(_slice_rows(metrics)),
        ),
        ("Operations", html_table(_ops_rows(metrics))),
        ("Behavioural tests", html_table(_behaviour_rows(metrics), classes={"skipped": "muted"})),
    ]
    return html_page(
        f"Model card: {metrics['model_version']}",
        sections,
        subtitle=f"VisionOps evaluation, golden set {metrics['golden_version']}",
    )


def write_reports(output: str, metrics: dict[str, Any], record: dict[str, Any]) -> None:
    """Write metrics.json, model_card.md, model_card.html and, last, decision.json into ``output``."""
    files = {
        "metrics.json": json.dumps(metrics, indent=2, default=str),
        "model_card.md": model_card_markdown(metrics, record),
        "model_card.html": model_card_html(metrics, record),
        "decision.json": json.dumps(record, indent=2, default=str),
    }
    for name, text in files.items():
        storage.write_text(storage.join(output, name), text)
