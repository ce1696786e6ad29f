"""Experiment analysis as a KFP step (shadow, canary, A/B, A/A/B): a thin component over
:func:`visionops.experiments.analysis.analyze`, and a one-step pipeline to run it on demand or on a schedule.

The report is an ``HTML`` artifact (the Kubeflow UI shows it), the figures ``Metrics``, the verdict the output.
The pipeline is built by :func:`build_experiment_analysis_pipeline` from
:class:`~visionops.pipeline.cluster.ClusterSettings` (image, Secret, node selector, resources, retries), like
every pipeline; ``experiment_analysis_pipeline`` is the one with the defaults (built on first access).
No ``from __future__ import annotations`` here: KFP reads the real annotation objects.
"""

from kfp import dsl
from kfp.dsl import HTML, Artifact, Metrics, Output

from visionops import policy
from visionops.pipeline.cluster import ClusterSettings, configure_task, default_pipeline_getattr, with_image
from visionops.pipeline.image import IMAGE

PIPELINE_NAME = "visionops-experiment-analysis"


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


def build_experiment_analysis_pipeline(settings: ClusterSettings | None = None):
    """The one-step experiment-analysis pipeline for the given cluster settings."""
    settings = settings or ClusterSettings()
    analyze_op = with_image(analyze_experiment, settings.resolved_image)

    @dsl.pipeline(
        name=PIPELINE_NAME,
        description="Turn an online experiment's logs and feedback into a verdict and an HTML report.",
    )
    def experiment_analysis_pipeline(
        logs_uri: str,
        design: str = "canary",
        feedback_uri: str = "",
        weights: str = "",
        control: str = "",
        capture_uri: str = "",
        target_precision: float = policy.TARGET_PRECISION,
    ):
        task = analyze_op(
            logs_uri=logs_uri,
            design=design,
            feedback_uri=feedback_uri,
            weights=weights,
            control=control,
            capture_uri=capture_uri,
            target_precision=target_precision,
        )
        # logs grow: never reuse an old verdict
        configure_task(
            task, "analyze", settings, display_name="Analyse experiment", retried=True, cached=False
        )

    return experiment_analysis_pipeline


#: ``experiment_analysis_pipeline``: built with the default settings on first access (not at import).
__getattr__ = default_pipeline_getattr(
    __name__, "experiment_analysis_pipeline", build_experiment_analysis_pipeline
)
