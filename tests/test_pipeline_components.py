"""Component bodies and their output helpers, called directly (``component.python_func``) with artifacts that
point at ``tmp_path`` — the way KFP SDK tests its own components."""

from __future__ import annotations

import json
import math

import pytest
from kfp.dsl import ClassificationMetrics, Dataset, Metrics
from visionops.errors import ConfigError, StorageError


def test_storage_uri_maps_kfp_artifact_uris():
    from visionops.pipeline.outputs import storage_uri

    assert storage_uri("minio://mlpipeline/v2/artifacts/run/train/model", "/minio/x") == (
        "s3://mlpipeline/v2/artifacts/run/train/model"
    )
    assert storage_uri("s3://models/run/model", "/s3/models/run/model") == "s3://models/run/model"
    assert (
        storage_uri("/tmp/root/run/train/model", "/tmp/root/run/train/model") == "/tmp/root/run/train/model"
    )
    with pytest.raises(ConfigError, match="uses gs://, .*s3:// or minio://"):
        storage_uri("gs://bucket/model", "/gcs/bucket/model")


def test_classification_metrics_for_the_ui():
    from visionops.pipeline.outputs import MAX_ROC_POINTS, log_classification

    n = 1001
    fpr = [i / (n - 1) for i in range(n)]
    tpr = [min(1.0, 2 * f) for f in fpr]
    thresholds = [math.inf] + [1 - i / n for i in range(1, n)]
    artifact = ClassificationMetrics(uri="unused")
    log_classification(
        artifact,
        {
            "confusion_matrix": {"labels": ["glasses", "no_glasses"], "matrix": [[40, 2], [3, 55]]},
            "roc": {"fpr": fpr, "tpr": tpr, "thresholds": thresholds},
        },
    )
    matrix = artifact.metadata["confusionMatrix"]
    assert [a["displayName"] for a in matrix["annotationSpecs"]] == ["glasses", "no_glasses"]
    assert matrix["rows"] == [{"row": [40, 2]}, {"row": [3, 55]}]
    points = artifact.metadata["confidenceMetrics"]
    assert len(points) <= MAX_ROC_POINTS + 1
    assert points[0] == {"confidenceThreshold": 1.0, "recall": 0.0, "falsePositiveRate": 0.0}  # inf clipped
    assert points[-1]["falsePositiveRate"] == 1.0  # the curve still ends at (1, 1)
    json.dumps(artifact.metadata, allow_nan=False)  # run metadata must be strict JSON


def test_scalars_flatten_and_filter():
    from visionops.pipeline.outputs import log_scalars, scalars

    data = {
        "test": {"positive": {"precision": 0.97, "n": 12}, "roc_auc": 0.99},
        "ops": {"device": "cpu"},
        "bad": math.nan,
        "flag": True,
        "curve": [1, 2],
    }
    assert scalars(data) == {
        "test.positive.precision": 0.97,
        "test.positive.n": 12.0,
        "test.roc_auc": 0.99,
        "flag": 1.0,
    }
    metrics = Metrics(uri="unused")
    assert log_scalars(metrics, data, keys=("test.",)) == {
        "test.positive.precision": 0.97,
        "test.positive.n": 12.0,
        "test.roc_auc": 0.99,
    }
    assert metrics.metadata == {
        "test.positive.n": 12.0,
        "test.positive.precision": 0.97,
        "test.roc_auc": 0.99,
    }


def test_publish_file_and_read_json_errors(tmp_path):
    from visionops.pipeline.outputs import publish_file, read_json

    source = tmp_path / "card.md"
    source.write_text("# Model card")
    target = tmp_path / "out" / "model_card"
    publish_file(source, str(target))
    assert target.read_text() == "# Model card"
    with pytest.raises(StorageError, match="was not written by the step"):
        publish_file(tmp_path / "missing.md", str(target))
    with pytest.raises(StorageError, match="metrics.json"):
        read_json(tmp_path / "metrics.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(StorageError, match="not valid JSON"):
        read_json(tmp_path / "bad.json")


def test_train_config_from_run_parameters():
    from visionops.pipeline.outputs import train_config

    config = train_config(
        architecture="tiny_cnn",
        epochs=2,
        image_size=64,
        pretrained="",
        champion_uri="s3://m/c",
        warm_start=True,
        overrides={"patience": 0.0},
    )
    assert (config.architecture, config.epochs, config.image_size) == ("tiny_cnn", 2, 64)
    assert config.pretrained is None and config.warm_start == "s3://m/c"
    assert config.patience == 0 and isinstance(config.patience, int) and config.progress is False
    assert train_config(architecture="tiny_cnn", champion_uri="s3://m/c", warm_start=False).warm_start is None
    with pytest.raises(ConfigError, match="set champion_uri"):
        train_config(architecture="tiny_cnn", warm_start=True)
    with pytest.raises(ConfigError, match="unknown training config fields \\['epochz'\\]"):
        train_config(architecture="tiny_cnn", overrides={"epochz": 1})


def test_gate_policy_from_run_parameters():
    from visionops.pipeline.outputs import gate_policy

    policy = gate_policy(0.9, 0, 50.0, {"max_memory_mb": 512, "min_throughput": "None", "latency_runs": 5.0})
    assert policy.latency_runs == 5 and isinstance(
        policy.latency_runs, int
    )  # Struct numbers arrive as floats
    assert policy.target_precision == 0.9
    assert policy.max_p95_latency_ms is None  # 0 = no limit
    assert (policy.max_model_mb, policy.max_memory_mb) == (50.0, 512)
    assert policy.min_throughput is None  # "none" = no limit (KFP parameters cannot be null)
    with pytest.raises(ConfigError, match="unknown gate policy fields"):
        gate_policy(0.95, 100, 100, {"max_latency": 1})


def test_ingest_and_validate_bodies_write_typed_outputs(tmp_path):
    from kfp.dsl import HTML, Markdown
    from visionops.data.synth import generate
    from visionops.pipeline.components import ingest, validate

    source = generate(str(tmp_path / "images"), count=60, size=32, seed=1)
    dataset = Dataset(uri=str(tmp_path / "dataset"))
    ingest.python_func(
        source_uri=source, golden_uri="", val_fraction=0.2, test_fraction=0.2, seed=0, dataset=dataset
    )
    assert (tmp_path / "dataset" / "manifest.csv").is_file() and (
        tmp_path / "dataset" / "dataset.json"
    ).is_file()
    meta = dataset.metadata
    assert meta["classes"] == ["glasses", "no_glasses"] and meta["images"] == 60
    assert meta["train_images"] + meta["val_images"] + meta["test_images"] == 60
    assert meta["version"].startswith("ds-") and meta["golden_version"].startswith("gs-")

    report, report_html, checks = (
        Markdown(uri=str(tmp_path / "v.md")),
        HTML(uri=str(tmp_path / "v.html")),
        Metrics(uri="x"),
    )
    validate.python_func(dataset=dataset, report=report, report_html=report_html, checks=checks)
    assert (tmp_path / "v.md").read_text().strip()
    assert "<html" in (tmp_path / "v.html").read_text().lower()
    assert checks.metadata["passed"] == 1.0 and checks.metadata["failures"] == 0.0


def test_validate_body_fails_the_step_on_a_hard_failure(tmp_path):
    from kfp.dsl import HTML, Markdown
    from visionops.data.synth import generate
    from visionops.errors import ValidationFailed
    from visionops.pipeline.components import ingest, validate

    # 12 images: fewer than the policy's 10 per class -> a hard failure
    source = generate(str(tmp_path / "images"), count=12, size=32, seed=1)
    dataset = Dataset(uri=str(tmp_path / "dataset"))
    ingest.python_func(
        source_uri=source, golden_uri="", val_fraction=0.2, test_fraction=0.2, seed=0, dataset=dataset
    )
    report, report_html, checks = (
        Markdown(uri=str(tmp_path / "v.md")),
        HTML(uri=str(tmp_path / "v.html")),
        Metrics(uri="x"),
    )
    with pytest.raises(ValidationFailed):
        validate.python_func(dataset=dataset, report=report, report_html=report_html, checks=checks)
    assert (tmp_path / "v.html").is_file()  # the report is written before the step fails
    assert checks.metadata["passed"] == 0.0 and checks.metadata["failures"] >= 1


def test_component_artifact_types_are_the_ui_types():
    from visionops.pipeline import components

    spec = components.evaluate.component_spec
    types = {name: out.type for name, out in spec.outputs.items()}
    assert types["metrics"] == "system.Metrics@0.0.1"
    assert types["classification"] == "system.ClassificationMetrics@0.0.1"
    assert types["model_card"] == "system.Markdown@0.0.1" and types["model_card_html"] == "system.HTML@0.0.1"
    assert types["candidate"] == "system.Model@0.0.1" and types["Output"] == "Boolean"


def test_deploy_copies_the_blessed_bundle_to_the_model_registry(tmp_path):
    """Serving reads its own store: deploy publishes <registry>/<model version> and points serving there."""
    from kfp.dsl import Artifact, Model
    from visionops.bundle import read_meta, update_meta
    from visionops.pipeline.components import deploy

    from tests.test_drift_support import tiny_bundle

    bundle = tiny_bundle(str(tmp_path / "artifact"))
    version = read_meta(bundle)["model_version"]
    model = Model(name="candidate", uri=str(tmp_path / "artifact"), metadata={})
    model.path = bundle
    record = Artifact(name="record", uri=str(tmp_path / "record"), metadata={})
    record.path = str(tmp_path / "record.json")
    registry = str(tmp_path / "registry")
    uri = deploy.python_func(
        model=model, target="none", namespace="visionops", deployment="visionops-serving", state_dir="",
        registry_uri=registry, record=record,
    )  # fmt: skip
    assert uri == f"{registry}/{version}"
    assert read_meta(uri)["model_version"] == version and record.metadata["model_uri"] == uri
    # the same bundle again: reused; another bundle under the same version: refused (versions never change)
    assert deploy.python_func(
        model=model, target="none", namespace="visionops", deployment="visionops-serving", state_dir="",
        registry_uri=registry, record=record,
    ) == uri  # fmt: skip
    update_meta(bundle, threshold=0.123)
    with pytest.raises(StorageError, match="different bundle"):
        deploy.python_func(
            model=model, target="none", namespace="visionops", deployment="visionops-serving", state_dir="",
            registry_uri=registry, record=record,
        )  # fmt: skip
