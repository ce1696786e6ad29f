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
from visionops.evaluation.report import write_reports
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
    from visionops.bundle import decide_indices
    from visionops.evaluation.metrics import classification_report
    from visionops.evaluation.threshold import choose_threshold, precision_vs_prevalence, sweep_for_report

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
        prevalence=policy.positive_prevalence,
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
    test["precision_at_prevalence"] = golden_bound(test["positive"], choice.prevalence, policy)
    test["precision_vs_prevalence"] = precision_vs_prevalence(
        choice.tp, choice.n_positive, choice.fp, choice.n_negative,
        target=policy.target_precision, confidence=policy.confidence,
        points=sorted({0.01, 0.02, 0.036, 0.05, 0.076, 0.1, 0.2, 0.5, round(choice.prevalence, 4)}),
    )  # fmt: skip
    result.update(threshold_choice=choice.to_dict(), test=test)
    if with_report:
        result["val_sweep"] = sweep_for_report(
            p_val[:, pos], y_val == pos, confidence=policy.confidence, method=policy.interval
        )
    called = decide_indices(p_test, pos, choice.threshold) == pos
    result["_golden"] = {"frame": frame, "y": y_test, "probs": p_test, "paths": paths, "called": called}
    return result


def golden_bound(positive: dict[str, Any], prevalence: float, policy: GatePolicy) -> dict[str, Any]:
    """Precision at ``prevalence`` on the golden set at the chosen threshold: point estimate and the joint
    (TPR lower, FPR upper) exact lower bound. One threshold, fixed before the golden set was looked at: no
    multiplicity."""
    from visionops.evaluation.threshold import max_fpr_for, precision_at, precision_lower_bound

    tp, fn, fp, tn = positive["tp"], positive["fn"], positive["fp"], positive["tn"]
    n_pos, n_neg = tp + fn, fp + tn
    recall = tp / n_pos if n_pos else 0.0
    fpr = fp / n_neg if n_neg else 1.0
    return {
        "prevalence": prevalence,
        "precision": float(precision_at(recall, fpr, prevalence)),
        "lower": float(precision_lower_bound(tp, n_pos, fp, n_neg, prevalence, policy.alpha)),
        "recall": recall,
        "fpr": fpr,
        "fpr_needed": max_fpr_for(policy.target_precision, prevalence) * recall,
        "one_sided_level": 1 - policy.alpha,
    }


def training_hashes(meta: dict[str, Any]) -> tuple[set[str] | None, str]:
    """The sha256 of every image the model was trained on (train and val: val picked its epoch), from the
    training dataset named in its lineage; (None, why) when that dataset cannot be read."""
    from visionops.data.manifest import load_dataset
    from visionops.errors import VisionOpsError

    uri = (meta.get("lineage") or {}).get("dataset_uri")
    if not uri:
        return None, "the bundle's lineage names no training dataset"
    try:
        frame = load_dataset(uri).frame
    except VisionOpsError as exc:
        return None, f"its training dataset {uri} cannot be read ({exc})"
    return set(frame.loc[frame["split"] != "test", "sha256"]), str(uri)


def check_no_leak(meta: dict[str, Any], dataset, role: str, uri: str) -> dict[str, Any]:
    """Refuse to judge a model on golden images it was trained on; checked by hash against its training data.

    A model trained beside another golden version is fine when none of this golden set's images is in its
    training data (e.g. after a golden extension, which only takes never-trained-on rows). When the training
    data cannot be read, only a model recorded with this very golden version is accepted."""
    golden = set(dataset.split("test")["sha256"])
    recorded = (meta.get("lineage") or {}).get("golden_version")
    hashes, source = training_hashes(meta)
    if hashes is None:
        if recorded and recorded != dataset.golden_version:
            raise GateError(
                f"golden set versions differ: the {role} {uri} records golden set {recorded}, the dataset "
                f"{dataset.uri} has {dataset.golden_version}, and {source}, so it cannot be checked that no "
                "golden image was trained on; make the training dataset readable or evaluate on its golden set"
            )
        return {"role": role, "checked_by_hash": False, "detail": f"same golden version; {source}"}
    leaked = golden & hashes
    if leaked:
        raise GateError(
            f"{len(leaked)} of the {len(golden)} golden images of {dataset.uri} are in the training data of "
            f"the {role} {uri} ({source}); a model cannot be judged on images it was trained on"
        )
    return {
        "role": role,
        "checked_by_hash": True,
        "training_dataset": source,
        "golden_images": len(golden),
        "overlap": 0,
        "detail": f"0 of {len(golden)} golden images are in the {role}'s training data ({source})",
    }


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
    gated_uri: str | None = None,
) -> dict[str, Any]:
    """Evaluate ``bundle_uri`` on the golden set of ``dataset_uri`` and decide whether it replaces the champion.

    Writes ``metrics.json``, ``model_card.md``, ``model_card.html`` and ``decision.json`` (last) into
    ``output`` (a local directory or ``s3://`` prefix) and returns the decision record. The evaluated bundle is
    never modified: the gated bundle (the chosen threshold and how it was chosen, the evaluation summary, the
    model card, and a drift reference computed with the final decision rule at the production prevalence)
    is published as a new version at ``gated_uri`` (default ``<output>/bundle``); the record names it.

    ``runtime`` names the artifact judged: ``torch`` (the weights), or an ONNX artifact of the bundle
    (``onnx``, ``onnx-int8``), so that precision, golden figures and the ops budget are those of what will
    serve. A non-torch verdict goes into the gated bundle as ``runtime_evaluations.<runtime>`` beside the
    weights' own threshold and evaluation, which it leaves as they were (see :func:`publish_gated`).
    """
    from visionops.bundle import load_bundle, read_meta

    _check_device(device)
    dataset = load_dataset_checked(dataset_uri)
    meta = read_meta(bundle_uri)
    leaks = [check_no_leak(meta, dataset, "challenger", bundle_uri)]
    champion_meta = None
    if champion_uri:
        champion_meta = read_meta(champion_uri)
        leaks.append(check_no_leak(champion_meta, dataset, "champion", champion_uri))

    bundle = as_runtime(load_bundle(bundle_uri, device=device), runtime)
    log.info("evaluating %s (%s) on golden set %s", bundle.version, runtime, dataset.golden_version)
    summary = score_model(bundle, dataset, policy, with_report=True)
    golden = summary.pop("_golden")
    summary.update(_golden_checks(bundle, dataset, golden, summary, policy, device))

    champion = None
    if champion_meta is not None:
        log.info("scoring champion %s on golden set %s", champion_uri, dataset.golden_version)
        champion = score_model(load_bundle(champion_uri, device=device), dataset, policy, with_report=False)
        champion["source"] = f"scored now on golden set {dataset.golden_version}"
        summary["paired"] = _paired(golden, champion.pop("_golden"), bundle, policy)
    record = decide(summary, champion, policy, golden_version=dataset.golden_version)
    gated_uri = gated_uri or storage.join(output, "bundle")
    record.update(
        dataset_uri=str(dataset_uri),
        dataset_version=dataset.version,
        device=device,
        runtime=runtime,
        evaluated_bundle=str(bundle_uri),
        gated_bundle=str(gated_uri),
        no_training_image_in_golden=leaks,
    )
    metrics = _metrics_document(summary, dataset, policy, champion)
    write_reports(output, metrics, record)
    record["gated_model_version"] = publish_gated(
        bundle_uri, gated_uri, summary, dataset, policy, record, output, judged=bundle, runtime=runtime
    )
    storage.write_text(storage.join(output, "decision.json"), json.dumps(record, indent=2, default=str))
    return record


def load_dataset_checked(dataset_uri: str):
    from visionops.data.manifest import load_dataset

    return load_dataset(dataset_uri)


def _golden_checks(bundle, dataset, golden, summary, policy: GatePolicy, device: str) -> dict[str, Any]:
    """Slices, behavioural tests and the ops budget of the challenger on the golden set."""
    from visionops.evaluation.behaviour import run_behaviour
    from visionops.evaluation.metrics import decide as decide_labels
    from visionops.evaluation.ops import measure_ops
    from visionops.evaluation.slices import slice_metrics

    threshold = summary["threshold_choice"]["threshold"]
    pos = _positive_index(bundle, policy)
    y_pred = decide_labels(golden["probs"], pos, threshold)
    slices = slice_metrics(
        golden["frame"], golden["y"], y_pred, pos, dataset.metadata_columns,
        min_n=policy.slice_min_n, alpha=policy.slice_alpha, confidence=policy.confidence,
        method=policy.interval, correction=policy.slice_correction,
    )  # fmt: skip
    slices["golden_version"] = dataset.golden_version
    picked = stratified_sample(golden["frame"]["label"].tolist(), max(policy.behaviour_samples, 8))
    sample = load_images([golden["paths"][i] for i in picked])
    labels = [golden["frame"]["label"].iloc[i] for i in picked]
    if bundle.positive_index != pos:
        log.warning("policy positive class differs from the bundle's; behavioural tests use the bundle's")
    behaviour = run_behaviour(
        bundle, sample, threshold, samples=policy.behaviour_samples, delta=policy.brightness_delta,
        golden_labels=labels, curated=_curated_set(policy.functionality_set, bundle.classes),
    )  # fmt: skip
    behaviour["invariance"]["golden_version"] = dataset.golden_version
    log.info("measuring latency, throughput and memory on %s", device)
    ops = measure_ops(
        bundle, sample, device=device, latency_runs=policy.latency_runs,
        batch_sizes=policy.throughput_batch_sizes,
    )  # fmt: skip
    return {"slices": slices, "behaviour": behaviour, "ops": ops}


def stratified_sample(labels: list[str], count: int, seed: int = 0) -> list[int]:
    """Indices of up to ``count`` items, as even across the labels as they allow (seeded): behavioural tests
    on the first rows of a label-sorted manifest would see one class only."""
    rng = np.random.default_rng(seed)
    by_label = {
        c: list(rng.permutation(np.flatnonzero(np.asarray(labels) == c))) for c in sorted(set(labels))
    }
    picked: list[int] = []
    while len(picked) < min(count, len(labels)):
        for members in by_label.values():
            if members and len(picked) < count:
                picked.append(int(members.pop()))
    return picked


def _curated_set(uri: str | None, classes: list[str]) -> tuple[list, list[str], str] | None:
    """The minimum-functionality set: an ImageFolder (one folder per class) of clear cases of the model's own
    domain, given by the user; None when not given."""
    if not uri:
        return None
    items = [
        (u, storage.relative(u, uri).split("/")[0])
        for u in storage.list_uris(uri)
        if "/" in storage.relative(u, uri) and u.lower().endswith((".jpg", ".jpeg", ".png", ".webp", ".bmp"))
    ]
    unknown = sorted({label for _, label in items} - set(classes))
    if not items or unknown:
        raise ConfigError(
            f"functionality set {uri} must be an ImageFolder of the model's classes {classes}; found "
            f"{len(items)} images" + (f" and unknown folders {unknown}" if unknown else "")
        )
    return load_images([u for u, _ in items]), [label for _, label in items], str(uri)


def _paired(golden, champion_golden, bundle, policy: GatePolicy) -> dict[str, Any]:
    """Recall and FPR of challenger vs champion on the same golden images (paired, non-inferiority)."""
    from visionops.evaluation.paired import compare

    pos = _positive_index(bundle, policy)
    return compare(golden["y"] == pos, golden["called"], champion_golden["called"], alpha=policy.alpha)


def publish_gated(
    bundle_uri: str, gated_uri: str, summary: dict[str, Any], dataset, policy: GatePolicy,
    record: dict[str, Any], output: str, *, judged=None, runtime: str = "torch",
) -> str:  # fmt: skip
    """Publish the gated bundle as a new version at ``gated_uri``; the evaluated bundle stays byte-identical.

    The new version covers the weights and the decision rule. For the weights (``runtime="torch"``) its drift
    reference is recomputed with the final threshold (what serving answers) and its class shares reweighted
    to the production prevalence. For an ONNX artifact (``judged`` is the bundle evaluated through it) the
    verdict goes to ``runtime_evaluations.<runtime>``, pinned to the artifact's sha256, and the weights'
    threshold, evaluation and drift reference stay those of the evaluated bundle."""
    import tempfile

    from visionops.bundle import MARKER, copy_bundle, read_meta, rule_version_of

    meta = read_meta(bundle_uri)
    with tempfile.TemporaryDirectory(prefix="visionops-gated-") as tmp:
        root = copy_bundle(bundle_uri, Path(tmp) / "bundle")
        meta.update(
            weights_version=meta.get("weights_version") or meta["model_version"],
            parent_version=meta["model_version"],
        )
        verdict = {
            "threshold": summary["threshold_choice"]["threshold"],
            "threshold_info": _threshold_info(summary, dataset),
            "positive_prevalence": summary["threshold_choice"]["prevalence"],
            "evaluation": _evaluation_meta(summary, dataset, policy, record, output),
        }
        if runtime == "torch":
            meta.update(verdict)
        else:
            meta["runtime_evaluations"] = runtime_verdicts(meta, judged, runtime, verdict)
        meta["model_version"] = rule_version_of(meta)
        _copy_reports(output, root)
        (root / MARKER).write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))
        if meta.get("drift") and runtime == "torch":
            _gated_reference(root, meta, dataset, summary["threshold_choice"]["prevalence"])
        storage.publish_dir(root, gated_uri, MARKER)
    log.info("gated bundle %s published at %s", meta["model_version"], gated_uri)
    return meta["model_version"]


def _copy_reports(output: str, root: Path) -> None:
    """The evaluation's reports (model card, metrics, decision) travel inside the gated bundle."""
    for name in OUTPUT_FILES:
        src = storage.join(output, name)
        if storage.exists(src):
            target = root / "reports" / "evaluation" / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(storage.read_bytes(src))


def _gated_reference(root: Path, meta: dict[str, Any], dataset, prevalence: float) -> None:
    """The drift reference of the gated bundle: same images, the final decision rule, production prevalence."""
    from visionops.drift.reference import attach_reference

    drift = meta["drift"]
    source = drift.get("dataset_uri") or dataset.uri
    split = drift.get("split", "val")
    attach_reference(str(root), source, split=split, prevalence=prevalence, progress=False)


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
        "paired": summary.get("paired"),
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
            "test": {
                "positive": test["positive"],
                "accuracy": test["accuracy"],
                "precision_at_prevalence": test["precision_at_prevalence"],
            },
        },
    }


def read_decision(output: str) -> dict[str, Any]:
    """The decision record written by :func:`evaluate` into ``output``."""
    return json.loads(storage.read_text(storage.join(output, "decision.json")))
