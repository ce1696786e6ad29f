"""The weekly review batch as a KFP step: select + prelabel + export in one thin component, and a one-step
pipeline around it to schedule as a recurring run (e.g. every Monday).

The body imports the library (only the body is shipped to the pod / the local subprocess) and calls ONE
function, :func:`visionops.labeling.prepare_review_batch`. Its outputs: the batch folder as an ``Artifact``
(selection.csv, tasks.json for Label Studio, review.csv, labeling_config.xml) and the counts as ``Metrics``.

No ``from __future__ import annotations`` here: KFP reads the real annotation objects.
"""

from kfp import dsl
from kfp.dsl import Artifact, Metrics, Output

from visionops.pipeline.image import IMAGE

#: The Kubernetes Secret (and its keys = env var names) with the object-storage credentials; the same one
#: the training pipeline uses (visionops.pipeline.training). Not set by kfp.local, where the env is used.
S3_SECRET = "visionops-s3"
S3_SECRET_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "S3_ENDPOINT_URL")


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def prepare_review_batch(
    capture_uri: str,
    champion_uri: str,
    output_uri: str,
    budget: int,
    random_share: float,
    days: int,
    labeled_uris: list,
    seed: int,
    presign_endpoint: str,
    review_batch: Output[Artifact],
    counts: Output[Metrics],
):
    """Choose this week's images for review, pre-label them with the champion, write the review tasks."""
    from visionops.labeling import prepare_review_batch as prepare

    summary = prepare(
        capture_uri,
        output_uri or review_batch.path,
        bundle_uri=champion_uri,
        budget=budget,
        random_share=random_share,
        days=days or None,
        labeled=list(labeled_uris or []),
        seed=seed,
        presign_endpoint=presign_endpoint or None,
    )
    review_batch.metadata.update(summary)
    for key in (
        "found",
        "eligible",
        "selected",
        "uncertain",
        "random",
        "duplicates_in_source",
        "already_labeled",
    ):
        counts.log_metric(key, summary[key])


@dsl.pipeline(
    name="visionops-weekly-review",
    description="Prepare the week's review batch: captured images closest to the champion's threshold plus a "
    "random share, pre-labeled by the champion, as Label Studio tasks and a CSV.",
)
def weekly_review_pipeline(
    capture_uri: str,
    champion_uri: str,
    output_uri: str = "",
    budget: int = 200,
    random_share: float = 0.2,
    days: int = 7,
    labeled_uris: list = [],  # noqa: B006 (KFP reads the default from the signature)
    seed: int = 0,
    presign_endpoint: str = "",
):
    """``output_uri`` may hold ``{week}`` or ``{date}`` (e.g. ``s3://reviews/{week}``); empty = the artifact."""
    from kfp import kubernetes

    task = prepare_review_batch(
        capture_uri=capture_uri,
        champion_uri=champion_uri,
        output_uri=output_uri,
        budget=budget,
        random_share=random_share,
        days=days,
        labeled_uris=labeled_uris,
        seed=seed,
        presign_endpoint=presign_endpoint,
    )
    task.set_display_name("Prepare review batch")
    task.set_cpu_request("1").set_cpu_limit("4").set_memory_request("2Gi").set_memory_limit("8Gi")
    task.set_caching_options(enable_caching=False)  # new captures every week: never reuse an old batch
    task.set_retry(num_retries=2, backoff_duration="30s", backoff_factor=2.0)
    kubernetes.use_secret_as_env(
        task, secret_name=S3_SECRET, secret_key_to_env={k: k for k in S3_SECRET_KEYS}
    )
