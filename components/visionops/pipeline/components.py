"""The KFP components: one thin adapter per pipeline step.

Each body imports the library (only the body is shipped to the pod / the local subprocess), maps its
artifacts to paths, calls ONE library function and writes its outputs as typed artifacts, so the Kubeflow UI
shows them: ``Dataset`` (manifests), ``Model`` (bundles), ``Metrics`` (scalars), ``ClassificationMetrics``
(confusion matrix, ROC), ``Markdown``/``HTML`` (validation report, model card).

Every component runs the project image (:data:`visionops.pipeline.image.IMAGE`) and installs nothing at run
time (``install_kfp_package=False``; the image already has kfp).

No ``from __future__ import annotations`` here: KFP reads the real annotation objects.
"""

from kfp import dsl
from kfp.dsl import HTML, Artifact, ClassificationMetrics, Dataset, Input, Markdown, Metrics, Model, Output

from visionops.pipeline.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def ingest(
    source_uri: str,
    golden_uri: str,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    dataset: Output[Dataset],
):
    """Copy the source images into a versioned dataset (manifest.csv, splits; the test split = golden set)."""
    from visionops.data.ingest import ingest as ingest_images
    from visionops.pipeline.outputs import dataset_metadata, start_step

    start_step("ingest")
    result = ingest_images(
        source_uri,
        dataset.path,
        golden=golden_uri or None,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        seed=seed,
        progress=False,
    )
    dataset.metadata.update(dataset_metadata(result))


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def validate(
    dataset: Input[Dataset], report: Output[Markdown], report_html: Output[HTML], checks: Output[Metrics]
):
    """Check the dataset (schema, leakage, balance, slices); fail the run on a hard failure."""
    import tempfile

    from visionops.data.validate import ValidationPolicy
    from visionops.data.validate import validate as validate_dataset
    from visionops.pipeline.outputs import finish_validation, start_step

    start_step("validate")
    workdir = tempfile.mkdtemp(prefix="validation-")
    result = validate_dataset(dataset.path, workdir, policy=ValidationPolicy())
    finish_validation(result, workdir, report.path, report_html.path, checks)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def train(
    dataset: Input[Dataset],
    architecture: str,
    epochs: int,
    image_size: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
    champion_uri: str,
    warm_start: bool,
    pretrained_uri: str,
    overrides: dict,
    gpu_count: str,
    model: Output[Model],
):
    """Train a classifier on the dataset and write the model bundle (weights + preprocessing + lineage).

    With ``gpu_count`` > 1 it trains with DDP, one process per GPU of the pod (a string: see gpu_placement).
    """
    from visionops.pipeline.outputs import (
        bundle_metadata,
        gpu_processes,
        run_training,
        start_step,
        train_config,
    )

    start_step("train")
    config = train_config(
        architecture=architecture,
        epochs=epochs,
        image_size=image_size,
        batch_size=batch_size,
        lr=learning_rate,
        seed=seed,
        pretrained=pretrained_uri,
        champion_uri=champion_uri,
        warm_start=warm_start,
        overrides=overrides,
    )
    uri = run_training(dataset.path, model.path, config, processes=gpu_processes(gpu_count))
    model.metadata.update(bundle_metadata(uri))


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def evaluate(
    model: Input[Model],
    dataset: Input[Dataset],
    champion_uri: str,
    target_precision: float,
    positive_prevalence: float,
    max_p95_latency_ms: float,
    max_model_mb: float,
    policy_overrides: dict,
    candidate: Output[Model],
    metrics: Output[Metrics],
    classification: Output[ClassificationMetrics],
    model_card: Output[Markdown],
    model_card_html: Output[HTML],
    decision: Output[Artifact],
) -> bool:
    """Gate the model on the golden set: precision target at the production prevalence (0 = the validation
    split's share), champion comparison, serving budget. The trained bundle is never rewritten: the gated
    bundle (threshold, model card, drift reference) is published as a new version, ``candidate``.

    Returns the verdict (True = blessed) as the step's ``Output`` parameter, which the pipeline's gate reads.
    """
    import tempfile

    from visionops.evaluation import evaluate as evaluate_model
    from visionops.pipeline.outputs import finish_evaluation, gate_policy, start_step

    start_step("evaluate")
    workdir = tempfile.mkdtemp(prefix="visionops-evaluation-")  # also copied into the gated bundle's reports/
    overrides = dict(policy_overrides, positive_prevalence=positive_prevalence or None)
    policy = gate_policy(target_precision, max_p95_latency_ms, max_model_mb, overrides)
    record = evaluate_model(
        model.path,
        dataset.path,
        workdir,
        champion_uri=champion_uri or None,
        policy=policy,
        gated_uri=candidate.path,
    )
    return finish_evaluation(
        record, workdir, candidate, metrics, classification, model_card.path, model_card_html.path, decision
    )


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def package(model: Input[Model], dataset: Input[Dataset], bento: Output[Artifact]):
    """Export the blessed bundle to ONNX (parity on the dataset's golden images) and as a Bento archive."""
    from visionops.bundle import read_meta
    from visionops.pipeline.outputs import start_step
    from visionops.serving.package import package as package_bento

    start_step("package")
    uri = package_bento(model.path, bento.path, dataset_uri=dataset.path)
    onnx = read_meta(model.path).get("onnx") or {}
    bento.metadata.update(
        {
            "bento": uri,
            "model_version": model.metadata.get("model_version", ""),
            "onnx": onnx.get("status", "none"),
            "onnx_reason": onnx.get("reason", ""),
            "fastest_runtime": (onnx.get("speed") or {}).get("fastest", "torch"),
        }
    )


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def deploy(
    model: Input[Model],
    target: str,
    namespace: str,
    deployment: str,
    state_dir: str,
    registry_uri: str,
    record: Output[Artifact],
) -> str:
    """Copy the blessed bundle to the model registry (serving's own store; empty = serve the pipeline's
    artifact) and roll the serving Deployment forward to it (``target``: kubernetes, local or none)."""
    import json

    from visionops.deploy import deploy as deploy_model
    from visionops.pipeline.outputs import publish_to_registry, start_step, storage_uri

    start_step("deploy")
    if registry_uri:
        model_uri = publish_to_registry(model.path, registry_uri)
    else:
        model_uri = storage_uri(model.uri, model.path)
    result = deploy_model(
        model_uri, target=target, namespace=namespace, deployment=deployment, state_dir=state_dir or None
    )
    with open(record.path, "w") as handle:
        json.dump(result, handle, indent=2, sort_keys=True, default=str)
    record.metadata.update({"target": target, "model_uri": model_uri})
    return model_uri


#: The steps of the training pipeline, in order (the names are the KFP component names).
STEPS = (ingest, validate, train, evaluate, package, deploy)
