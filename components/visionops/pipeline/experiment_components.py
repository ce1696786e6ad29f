"""Experiment analysis as a KFP step (shadow, canary, A/B, A/A/B): a thin component over
:func:`visionops.experiments.analysis.analyze`, and a one-step pipeline to run it on demand or on a schedule.

The report is an ``HTML`` artifact (the Kubeflow UI shows it), the figures ``Metrics``, the verdict the output.
No ``from __future__ import annotations`` here: KFP reads the real annotation objects.
"""

from kfp import dsl
from kfp.dsl import HTML, Artifact, Metrics, Output

from visionops.pipeline.image import IMAGE
from visionops.pipeline.label_components import S3_SECRET, S3_SECRET_KEYS


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def analyze_experiment(
    logs_uri: str,
    design: str,
    feedback_uri: str,
    weights: str,
    control: str,
    capture_uri: str,
    target_precision: float,
    analysis: Output[Artifact],
    report: Output[HTML],
    figures: Output[Metrics],
) -> str:
    """Analyse an experiment's logs; returns the verdict (ship/keep/inconclusive, promote/continue/abort)."""
    import shutil

    from visionops.experiments.analysis import AnalysisConfig, analyze
    from visionops.experiments.assign import parse_weights

    config = AnalysisConfig(
        design=design,
        weights=parse_weights(weights) if weights else None,
        control=control or None,
        target_precision=target_precision,
    )
    result = analyze(
        logs_uri,
        config=config,
        feedback=feedback_uri or None,
        capture=capture_uri or None,
        output=analysis.path,
    )
    shutil.copyfile(f"{analysis.path}/analysis.html", report.path)
    for key in ("score", "agreement", "paired_requests", "sample_size_per_arm"):
        if isinstance(result.get(key), int | float):
            figures.log_metric(key, result[key])
    if "srm" in result:
        figures.log_metric("srm_p_value", result["srm"]["p_value"])
    analysis.metadata.update(
        {"design": design, "verdict": result.get("verdict", ""), "reason": result.get("reason", "")}
    )
    return result.get("verdict", "")


@dsl.pipeline(
    name="visionops-experiment-analysis",
    description="Turn an online experiment's logs and feedback into a verdict and an HTML report.",
)
def experiment_analysis_pipeline(
    logs_uri: str,
    design: str = "canary",
    feedback_uri: str = "",
    weights: str = "",
    control: str = "",
    capture_uri: str = "",
    target_precision: float = 0.95,
):
    from kfp import kubernetes

    task = analyze_experiment(
        logs_uri=logs_uri,
        design=design,
        feedback_uri=feedback_uri,
        weights=weights,
        control=control,
        capture_uri=capture_uri,
        target_precision=target_precision,
    )
    task.set_display_name("Analyse experiment")
    task.set_cpu_request("1").set_memory_request("2Gi").set_memory_limit("4Gi")
    task.set_caching_options(enable_caching=False)  # logs grow: never reuse an old verdict
    task.set_retry(num_retries=2, backoff_duration="30s", backoff_factor=2.0)
    kubernetes.use_secret_as_env(
        task, secret_name=S3_SECRET, secret_key_to_env={k: k for k in S3_SECRET_KEYS}
    )
