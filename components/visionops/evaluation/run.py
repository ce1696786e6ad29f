"""``evaluate``: one bundle on one dataset's golden set, against the champion, through the gate."""

from __future__ import annotations

import datetime as dt
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from visionops import storage
from visionops.errors import ConfigError, GateError
from visionops.evaluation.gate import GatePolicy, decide, recall_at_target
from visionops.onnx_runtime import as_runtime, runtime_verdicts

log = logging.getLogger(__name__)

OUTPUT_FILES = ("metrics.json", "model_card.md", "model_card.html", "decision.json")


def _resolve(path: str, dataset_uri: str) -> str:
    """Manifest paths are URIs; a relative local path is read relative to the dataset."""
    if storage.is_remote(path) or Path(path).is_absolute():
        return path
    return storage.join(dataset_uri, path)


def load_images(paths: list[str], workers: int = 8) -> list:
    """Decoded PIL images (threads: reads from object storage are I/O bound)."""
    from visionops.bundle import read_images

    return read_images(paths, workers=workers)


def _labels(frame, classes: list[str], split: str) -> np.ndarray:
    unknown = sorted(set(frame["label"]) - set(classes))
    if unknown:
        raise GateError(
            f"the {split} split has labels {unknown} that the model does not know (classes {classes})"
        )
    index = {c: i for i, c in enumerate(classes)}
    return frame["label"].map(index).to_numpy(dtype=int)


def _positive_index(bundle, policy: GatePolicy) -> int:
    positive = policy.positive_class or bundle.positive_class
    if positive not in bundle.classes:
        raise ConfigError(f"positive class {positive!r} is not one of the model's classes {bundle.classes}")
    return bundle.classes.index(positive)


def score_model(bundle, dataset, policy: GatePolicy, *, with_report: bool) -> dict[str, Any]:
    """Predict val and test, choose the threshold on val, measure the golden set at it."""
    from visionops.evaluation.metrics import classification_report
    from visionops.evaluation.threshold import choose_threshold, sweep_for_report

    pos = _positive_index(bundle, policy)
    result: dict[str, Any] = {
        "uri": bundle.uri,
        "model_version": bundle.version,
        "positive_class": bundle.classes[pos],
    }
    splits = {}
    for split in ("val", "test"):
        frame = dataset.split(split)
        if frame.empty:
            raise GateError(
                f"dataset {dataset.uri} has no {split!r} images; evaluation needs val and test splits"
            )
        y = _labels(frame, bundle.classes, split)
        paths = [_resolve(p, dataset.uri) for p in frame["path"]]
        probs = bundle.score_uris(
            paths, batch_size=policy.batch_size, progress=True, desc=f"{bundle.version} {split}"
        )
        splits[split] = (frame, y, probs, paths)
    _, y_val, p_val, _ = splits["val"]
    choice = choose_threshold(
        p_val[:, pos],
        y_val == pos,
        target=policy.target_precision,
        confidence=policy.confidence,
        method=policy.interval,
    )
    frame, y_test, p_test, paths = splits["test"]
    test = classification_report(
        y_test,
        p_test,
        bundle.classes,
        pos,
        choice.threshold,
        confidence=policy.confidence,
        method=policy.interval,
    )
    test["golden_version"] = dataset.golden_version
    result.update(threshold_choice=choice.to_dict(), test=test)
    if with_report:
        result["val_sweep"] = sweep_for_report(
            p_val[:, pos], y_val == pos, confidence=policy.confidence, method=policy.interval
        )
        result["_golden"] = {"frame": frame, "y": y_test, "probs": p_test, "paths": paths}
    return result


def _summary_from_meta(meta: dict[str, Any], dataset, policy: GatePolicy) -> dict[str, Any] | None:
    """The champion's stored evaluation, when it was made on this golden set under the same quality policy."""
    stored = meta.get("evaluation") or {}
    same_policy = all(
        stored.get("policy", {}).get(k) == getattr(policy, k)
        for k in ("target_precision", "confidence", "interval", "positive_class")
    )
    if stored.get("golden_version") != dataset.golden_version or not same_policy or "summary" not in stored:
        return None
    summary = dict(stored["summary"])
    summary["source"] = f"stored evaluation of {stored.get('evaluated_at', '?')}"
    return summary


def _check_golden(meta: dict[str, Any], dataset, role: str, uri: str) -> None:
    """Refuse a model whose recorded golden set differs from this dataset's.

    The record is the golden version in the training lineage (a model trained beside another golden set may
    have trained on this one's images); for the champion, failing that, the one its stored evaluation used.
    """
    recorded = (meta.get("lineage") or {}).get("golden_version")
    if not recorded and role == "champion":
        recorded = (meta.get("evaluation") or {}).get("golden_version")
    if recorded and recorded != dataset.golden_version:
        raise GateError(
            f"golden set versions differ: the {role} {uri} records golden set {recorded}, the dataset "
            f"{dataset.uri} has {dataset.golden_version}; both models must be judged on the same golden set. "
            f"Evaluate against the dataset version with golden set {recorded}, or retrain on this one"
        )


def _check_device(device: str) -> None:
    import torch

    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but CUDA is not available here; use --device cpu")


def evaluate(
    bundle_uri: str,
    dataset_uri: str,
    output: str,
    *,
    champion_uri: str | None = None,
    policy: GatePolicy = GatePolicy(),
    device: str = "cpu",
    runtime: str = "torch",
) -> dict[str, Any]:
    """Evaluate ``bundle_uri`` on the golden set of ``dataset_uri`` and decide whether it replaces the champion.

    Writes ``metrics.json``, ``model_card.md``, ``model_card.html`` and ``decision.json`` (last) into
    ``output`` (a local directory or ``s3://`` prefix), writes the chosen threshold, how it was chosen and an
    evaluation summary into the bundle, and returns the decision record.

    ``runtime`` names the artifact judged: ``torch`` (the weights), or an ONNX artifact of the bundle
    (``onnx``, ``onnx-int8``), so that precision, golden figures and the ops budget are those of what will
    serve. A non-torch verdict is kept beside the torch one (``runtime_evaluations`` in bundle.json).
    """
    from visionops.bundle import load_bundle, read_meta, update_meta
    from visionops.data.manifest import load_dataset
    from visionops.evaluation.behaviour import run_behaviour
    from visionops.evaluation.metrics import decide as decide_labels
    from visionops.evaluation.ops import measure_ops
    from visionops.evaluation.report import write_reports
    from visionops.evaluation.slices import slice_metrics

    _check_device(device)
    dataset = load_dataset(dataset_uri)
    meta = read_meta(bundle_uri)
    _check_golden(meta, dataset, "challenger", bundle_uri)
    champion_meta = None
    if champion_uri:
        champion_meta = read_meta(champion_uri)
        _check_golden(champion_meta, dataset, "champion", champion_uri)

    bundle = as_runtime(load_bundle(bundle_uri, device=device), runtime)
    log.info("evaluating %s (%s) on golden set %s", bundle.version, runtime, dataset.golden_version)
    summary = score_model(bundle, dataset, policy, with_report=True)
    golden = summary.pop("_golden")
    threshold = summary["threshold_choice"]["threshold"]
    pos = _positive_index(bundle, policy)
    y_pred = decide_labels(golden["probs"], pos, threshold)
    summary["slices"] = slice_metrics(
        golden["frame"],
        golden["y"],
        y_pred,
        pos,
        dataset.metadata_columns,
        min_n=policy.slice_min_n,
        alpha=policy.slice_alpha,
        confidence=policy.confidence,
        method=policy.interval,
    )
    summary["slices"]["golden_version"] = dataset.golden_version
    sample = load_images(golden["paths"][: max(policy.behaviour_samples, 8)])
    if bundle.positive_index != pos:
        log.warning("policy positive class differs from the bundle's; behavioural tests use the bundle's")
    summary["behaviour"] = run_behaviour(
        bundle, sample, threshold, samples=policy.behaviour_samples, delta=policy.brightness_delta
    )
    summary["behaviour"]["invariance"]["golden_version"] = dataset.golden_version
    log.info("measuring latency, throughput and memory on %s", device)
    summary["ops"] = measure_ops(
        bundle,
        sample,
        device=device,
        latency_runs=policy.latency_runs,
        batch_sizes=policy.throughput_batch_sizes,
    )

    champion = None
    if champion_meta is not None:
        champion = _summary_from_meta(champion_meta, dataset, policy)
        if champion is None:
            log.info(
                "champion %s has no stored evaluation on %s: evaluating it now",
                champion_uri,
                dataset.golden_version,
            )
            champion_bundle = load_bundle(champion_uri, device=device)
            champion = score_model(champion_bundle, dataset, policy, with_report=False)
            champion["source"] = "evaluated now"
    record = decide(summary, champion, policy, golden_version=dataset.golden_version)
    record.update(
        dataset_uri=str(dataset_uri), dataset_version=dataset.version, device=device, runtime=runtime
    )

    metrics = _metrics_document(summary, dataset, policy, champion)
    write_reports(output, metrics, record)
    verdict = {
        "threshold": threshold,
        "threshold_info": _threshold_info(summary, dataset),
        "evaluation": _evaluation_meta(summary, dataset, policy, record, output),
    }
    if runtime == "torch":
        update_meta(bundle_uri, **verdict)
    else:
        update_meta(bundle_uri, runtime_evaluations=runtime_verdicts(meta, bundle, runtime, verdict))
    return record


def _metrics_document(
    summary: dict[str, Any], dataset, policy: GatePolicy, champion: dict[str, Any] | None
) -> dict[str, Any]:
    test = summary["test"]
    return {
        "golden_version": dataset.golden_version,
        "dataset_version": dataset.version,
        "dataset_uri": dataset.uri,
        "model_version": summary["model_version"],
        "bundle_uri": summary["uri"],
        "positive_class": summary["positive_class"],
        "policy": policy.to_dict(),
        "threshold": summary["threshold_choice"],
        "recall_at_target_precision": recall_at_target(summary),
        "val_sweep": summary["val_sweep"],
        "test": test,
        # top level copies in the shapes KFP's ClassificationMetrics takes
        "confusion_matrix": test["confusion_matrix"],
        "roc": test["roc"],
        "slices": summary["slices"],
        "ops": summary["ops"],
        "behaviour": summary["behaviour"],
        "champion": None
        if champion is None
        else {
            "model_version": champion.get("model_version"),
            "uri": champion.get("uri"),
            "source": champion.get("source"),
            "threshold": champion["threshold_choice"]["threshold"],
            "constraint_met": champion["threshold_choice"]["met"],
            "recall_at_target_precision": recall_at_target(champion),
            "golden_precision": champion["test"]["positive"].get("precision"),
        },
    }


def _threshold_info(summary: dict[str, Any], dataset) -> dict[str, Any]:
    info = dict(summary["threshold_choice"])
    info.update(
        chosen_on="val",
        dataset_version=dataset.version,
        golden_version=dataset.golden_version,
        rule="positive class when P(positive) >= threshold",
    )
    return info


def _evaluation_meta(
    summary: dict[str, Any], dataset, policy: GatePolicy, record: dict[str, Any], output: str
) -> dict[str, Any]:
    """The summary kept in bundle.json: enough to act as a champion later without re-evaluating."""
    test = summary["test"]
    ops = summary["ops"]
    return {
        "golden_version": dataset.golden_version,
        "dataset_version": dataset.version,
        "evaluated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "policy": policy.to_dict(),
        "blessed": record["blessed"],
        "reasons": record["reasons"],
        "output": str(output),
        "recall_at_target_precision": recall_at_target(summary),
        "key_figures": {
            "precision": test["positive"]["precision"],
            "recall": test["positive"]["recall"],
            "accuracy": test["accuracy"],
            "balanced_accuracy": test["balanced_accuracy"],
            "roc_auc": test["roc_auc"],
            "pr_auc": test["pr_auc"],
            "ece": test["calibration"]["ece"],
            "p95_latency_ms": ops["latency_ms"]["p95"],
            "throughput_images_per_s": ops["throughput_images_per_s"],
            "model_size_mb": ops["model_size_mb"],
            "peak_memory_mb": ops["peak_memory_mb"],
        },
        "summary": {
            "uri": summary["uri"],
            "model_version": summary["model_version"],
            "threshold_choice": summary["threshold_choice"],
            "test": {"positive": test["positive"], "accuracy": test["accuracy"]},
        },
    }


def read_decision(output: str) -> dict[str, Any]:
    """The decision record written by :func:`evaluate` into ``output``."""
    return json.loads(storage.read_text(storage.join(output, "decision.json")))
