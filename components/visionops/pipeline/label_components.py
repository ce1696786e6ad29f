"""The weekly review batch as a KFP step: select + prelabel + export in one thin component, and a one-step
pipeline around it to schedule as a recurring run (e.g. every Monday).

The body imports the library (only the body is shipped to the pod / the local subprocess) and calls ONE
function, :func:`visionops.labeling.prepare_review_batch`. Its outputs: the batch folder as an ``Artifact``
(selection.csv, tasks.json for Label Studio, review.csv, labeling_config.xml) and the counts as ``Metrics``.

The pipeline is built by :func:`build_weekly_review_pipeline` from
:class:`~visionops.pipeline.cluster.ClusterSettings` (image, the object-storage Secret, node selector,
resources, retries), like every pipeline; ``weekly_review_pipeline`` is the one with the defaults (built on
first access, not at import).

No ``from __future__ import annotations`` here: KFP reads the real annotation objects.
"""

from kfp import dsl
from kfp.dsl import Artifact, Metrics, Output

from visionops.pipeline.cluster import ClusterSettings, configure_task, default_pipeline_getattr, with_image
from visionops.pipeline.image import IMAGE

PIPELINE_NAME = "visionops-weekly-review"


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


def build_weekly_review_pipeline(settings: ClusterSettings | None = None):
    """The one-step weekly-review pipeline for the given cluster settings."""
    settings = settings or ClusterSettings()
    prepare_op = with_image(prepare_review_batch, settings.resolved_image)

    @dsl.pipeline(
        name=PIPELINE_NAME,
        description="Prepare the week's review batch: captured images closest to the champion's threshold plus "
        "a random share, pre-labeled by the champion, as Label Studio tasks and a CSV.",
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
        task = prepare_op(
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
        # new captures every week: never reuse an old batch
        configure_task(
            task, "review", settings, display_name="Prepare review batch", retried=True, cached=False
        )

    return weekly_review_pipeline


#: ``weekly_review_pipeline``: built with the default settings on first access (not at import).
__getattr__ = default_pipeline_getattr(__name__, "weekly_review_pipeline", build_weekly_review_pipeline)
