"""Small helpers the KFP components use to turn library outputs into typed KFP artifacts.

They keep each component body to "paths in, one library call, outputs out": copying a report file into a
``Markdown``/``HTML`` artifact, logging scalars into ``Metrics``, the confusion matrix and ROC curve into
``ClassificationMetrics`` (what the Kubeflow UI draws), and turning an artifact's URI into one that
:mod:`visionops.storage` and the serving container can read.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from visionops.errors import ConfigError, StorageError

#: The Kubeflow UI draws every ROC point it is given; more than this is only noise in the run's metadata.
MAX_ROC_POINTS = 200


def storage_uri(uri: str, path: str) -> str:
    """The URI under which serving and :mod:`visionops.storage` find an artifact.

    KFP names artifacts ``minio://bucket/key`` (its bundled MinIO) or ``s3://bucket/key``; both are S3 objects
    reachable with the ``S3_ENDPOINT_URL`` credentials, so they become ``s3://bucket/key``. A local run's
    artifacts are plain directories: their local ``path`` is returned.
    """
    if uri.startswith(("minio://", "s3://")):
        return "s3://" + uri.split("://", 1)[1]
    if "://" in uri:
        scheme = uri.split("://", 1)[0]
        raise ConfigError(
            f"artifact URI {uri!r} uses {scheme}://, which VisionOps storage cannot read; "
            "set the KFP pipeline root to an s3:// or minio:// location"
        )
    return path


def publish_file(source: str | Path, target_path: str) -> str:
    """Copy one report file onto an artifact's local path (KFP uploads it after the step)."""
    source = Path(source)
    if not source.is_file():
        raise StorageError(f"expected report file {source} was not written by the step")
    Path(target_path).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target_path)
    return target_path


def scalars(data: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Flatten the finite numbers (and booleans, as 0/1) of a nested dict into ``{"a.b": value}``."""
    out: dict[str, float] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, bool):
            out[name] = float(value)
        elif isinstance(value, int | float):
            if math.isfinite(float(value)):
                out[name] = float(value)
        elif isinstance(value, Mapping):
            out.update(scalars(value, prefix=f"{name}."))
    return out


def log_scalars(metrics, data: Mapping[str, Any], *, keys: tuple[str, ...] | None = None) -> dict[str, float]:
    """Log the scalars of ``data`` (optionally only those whose flattened name starts with one of ``keys``)."""
    flat = scalars(data)
    if keys is not None:
        flat = {k: v for k, v in flat.items() if k.startswith(keys)}
    for name, value in sorted(flat.items()):
        metrics.log_metric(name, value)
    return flat


def _finite(values: list[Any], fallback: float) -> list[float]:
    return [float(v) if v is not None and math.isfinite(float(v)) else fallback for v in values]


def log_classification(artifact, metrics_json: Mapping[str, Any]) -> None:
    """Log the confusion matrix and ROC curve of an evaluation's ``metrics.json`` for the Kubeflow UI.

    Expects ``confusion_matrix: {labels, matrix}`` and ``roc: {fpr, tpr, thresholds}``; the ROC is thinned to
    :data:`MAX_ROC_POINTS` and non-finite thresholds (scikit-learn's leading ``inf``) are clipped to 1.0,
    because run metadata is JSON and JSON has no infinity.
    """
    matrix = metrics_json.get("confusion_matrix") or {}
    labels = [str(label) for label in matrix.get("labels", [])]
    if labels:
        artifact.log_confusion_matrix(labels, [[int(v) for v in row] for row in matrix.get("matrix", [])])
    roc = metrics_json.get("roc") or {}
    fpr, tpr, thresholds = roc.get("fpr") or [], roc.get("tpr") or [], roc.get("thresholds") or []
    if fpr and len(fpr) == len(tpr) == len(thresholds):
        step = max(1, math.ceil(len(fpr) / MAX_ROC_POINTS))
        keep = sorted(set(range(0, len(fpr), step)) | {len(fpr) - 1})
        artifact.log_roc_curve(
            _finite([fpr[i] for i in keep], 0.0),
            _finite([tpr[i] for i in keep], 0.0),
            _finite([min(float(thresholds[i]), 1.0) for i in keep], 1.0),
        )


def read_json(path: str | Path) -> dict[str, Any]:
    """Read a JSON file a library step wrote, with a clear error when it is missing."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise StorageError(f"expected {path.name} at {path}, but the step did not write it") from exc
    except json.JSONDecodeError as exc:
        raise StorageError(f"{path} is not valid JSON ({exc})") from exc


# -- per-step helpers (called from the component bodies) ---------------------------------------------------------
def start_step(name: str) -> None:
    """Log lines from the library show in the step's log (KFP UI "Logs" tab / the local console)."""
    import logging

    from visionops.settings import ProcessSettings

    logging.basicConfig(
        level=ProcessSettings.from_env().log_level,
        format=f"%(asctime)s %(levelname)s [{name}] %(name)s: %(message)s",
        force=True,
    )


def dataset_metadata(dataset) -> dict[str, Any]:
    """What the Kubeflow UI shows next to a Dataset artifact: versions, classes and split sizes."""
    frame = dataset.frame
    splits = frame["split"].value_counts().to_dict() if "split" in frame.columns else {}
    return {
        "version": dataset.version,
        "golden_version": dataset.golden_version,
        "classes": list(dataset.classes),
        "images": len(frame),
        **{f"{split}_images": int(count) for split, count in sorted(splits.items())},
    }


def finish_validation(report, workdir: str, markdown_path: str, html_path: str, checks) -> None:
    """Publish the validation report and its check counts; raise when a hard check failed."""
    publish_file(Path(workdir) / "validation.md", markdown_path)
    publish_file(Path(workdir) / "validation.html", html_path)
    checks.log_metric("passed", float(bool(report.passed)))
    checks.log_metric("failures", float(len(report.failures)))
    checks.log_metric("warnings", float(len(report.warnings)))
    report.raise_for_failures()


def _ints_back(cls, values: Mapping[str, Any]) -> dict[str, Any]:
    """KFP carries dict parameters as protobuf Structs, whose numbers are all doubles: 8 arrives as 8.0.
    Turn whole floats back into ints where the dataclass field is an int (e.g. ``patience``, ``latency_runs``)."""
    import dataclasses

    kinds = {f.name: str(f.type) for f in dataclasses.fields(cls)}
    out = dict(values)
    for key, value in out.items():
        kind = kinds.get(key, "")
        if isinstance(value, float) and value.is_integer() and "int" in kind and "float" not in kind:
            out[key] = int(value)
    return out


def train_config(
    *,
    champion_uri: str = "",
    warm_start: bool = False,
    overrides: Mapping[str, Any] | None = None,
    **values: Any,
):
    """The :class:`~visionops.training.TrainConfig` of a train step: the run parameters, then ``overrides``.

    ``warm_start`` fine-tunes the champion (``champion_uri``). Empty strings mean "not set" (KFP parameters
    cannot be None); logs go to the step log, not a progress bar.
    """
    from visionops.training import TrainConfig

    if warm_start and not champion_uri:
        raise ConfigError("warm_start=True fine-tunes the champion: set champion_uri to its model bundle")
    fields = {key: (value if value != "" else None) for key, value in values.items()}
    fields["warm_start"] = champion_uri if warm_start else None
    fields["progress"] = False
    return TrainConfig.from_dict(_ints_back(TrainConfig, {**fields, **dict(overrides or {})}))


def gpu_processes(gpu_count: str | int) -> int:
    """The training processes for the ``gpu_count`` run parameter (a string on the cluster): "2" -> 2."""
    try:
        count = int(str(gpu_count).strip() or "0")
    except ValueError as exc:
        raise ConfigError(f"gpu_count must be a whole number of GPUs, got {gpu_count!r}") from exc
    if count < 0:
        raise ConfigError(f"gpu_count must be >= 0, got {count}")
    return count


def run_training(dataset_path: str, model_path: str, config, *, processes: int = 1) -> str:
    """Train in this process, or with ``processes`` > 1 as a single-node DDP job (one process per GPU).

    Several processes are started by PyTorch's own elastic launcher (what ``torchrun --standalone`` runs),
    which sets ``RANK``/``WORLD_SIZE``/``MASTER_ADDR`` for :func:`visionops.training.train`.
    """
    from visionops.training import train

    if processes <= 1:
        return train(dataset_path, model_path, config)
    import uuid

    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    launch = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=processes,
        run_id=f"visionops-{uuid.uuid4().hex[:8]}",
        rdzv_backend="c10d",
        rdzv_endpoint="127.0.0.1:0",
        max_restarts=0,
        monitor_interval=1,
    )
    results = elastic_launch(launch, train)(dataset_path, model_path, config)
    return results[0]


def publish_to_registry(bundle_path: str | Path, registry_uri: str) -> str:
    """Copy a blessed bundle to ``<registry_uri>/<model version>`` and return that URI (what serving loads).

    The registry is serving's own store (e.g. ``s3://visionops/models/glasses``), so serving never needs to
    read KFP's artifact store. A published version never changes: the same bundle again is reused, another
    bundle under an existing version is refused.
    """
    from visionops import storage
    from visionops.bundle import read_meta

    version = read_meta(str(bundle_path)).get("model_version")
    if not version:
        raise StorageError(f"bundle {bundle_path} has no model_version; cannot publish it to {registry_uri}")
    target = storage.join(registry_uri, version)
    marker = Path(bundle_path) / "bundle.json"
    if storage.exists(storage.join(target, "bundle.json")):
        if storage.read_bytes(storage.join(target, "bundle.json")) == marker.read_bytes():
            return target
        raise StorageError(f"{target} already holds a different bundle of version {version}")
    return storage.publish_dir(bundle_path, target, marker="bundle.json")


def bundle_metadata(uri: str) -> dict[str, Any]:
    """What the Kubeflow UI shows next to a Model artifact."""
    from visionops.bundle import read_meta

    meta = read_meta(uri)
    lineage = meta.get("lineage") or {}
    out = {
        "model_version": meta.get("model_version"),
        "architecture": meta.get("architecture"),
        "classes": meta.get("classes"),
        "positive_class": meta.get("positive_class"),
        "threshold": meta.get("threshold"),
        "dataset_version": lineage.get("dataset_version"),
        "golden_version": lineage.get("golden_version"),
    }
    return {key: value for key, value in out.items() if value is not None}


def gate_policy(target_precision: float, max_p95_latency_ms: float, max_model_mb: float, overrides=None):
    """The :class:`~visionops.evaluation.GatePolicy` of an evaluate step.

    The two budget parameters use 0 (or less) for "no limit"; in ``overrides`` the string ``"none"`` stands
    for None (no limit / report only), because KFP parameters cannot carry JSON null.
    """
    from visionops.evaluation import GatePolicy

    values = {
        "target_precision": target_precision,
        "max_p95_latency_ms": max_p95_latency_ms if max_p95_latency_ms > 0 else None,
        "max_model_mb": max_model_mb if max_model_mb > 0 else None,
    }
    for key, value in dict(overrides or {}).items():
        values[key] = None if isinstance(value, str) and value.strip().lower() == "none" else value
    return GatePolicy.from_dict(_ints_back(GatePolicy, values))


#: Scalars of metrics.json / the decision record shown in the run's Metrics tab (prefixes of flattened names).
METRIC_KEYS = ("test.", "threshold", "ops.", "val.", "golden")


def finish_evaluation(
    record: Mapping[str, Any],
    workdir: str,
    candidate,
    metrics,
    classification,
    markdown_path: str,
    html_path: str,
    decision,
) -> bool:
    """Publish the model card, decision record and metrics of an evaluation; return the verdict."""
    work = Path(workdir)
    publish_file(work / "model_card.md", markdown_path)
    publish_file(work / "model_card.html", html_path)
    publish_file(work / "decision.json", decision.path)
    measured = read_json(work / "metrics.json")
    log_scalars(metrics, measured, keys=METRIC_KEYS)
    for rule in record.get("rules", []):
        if isinstance(rule.get("value"), int | float) and not isinstance(rule.get("value"), bool):
            metrics.log_metric(f"rule.{rule['name']}", float(rule["value"]))
    blessed = bool(record.get("blessed"))
    metrics.log_metric("blessed", float(blessed))
    log_classification(classification, measured)
    summary = f"{record.get('verdict', 'blessed' if blessed else 'refused')}: " + "; ".join(
        str(reason) for reason in record.get("reasons", [])
    )
    decision.metadata.update({"blessed": blessed, "verdict": record.get("verdict", ""), "summary": summary})
    candidate.metadata.update({**bundle_metadata(candidate.path), "blessed": blessed})
    return blessed
