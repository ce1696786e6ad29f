"""One call for the weekly job: select + prelabel + export (Label Studio JSON and CSV) into one folder."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from visionops import storage
from visionops.labeling.export import MAX_PRESIGN_EXPIRY, export, labeling_config
from visionops.labeling.prelabel import prelabel
from visionops.labeling.select import select

log = logging.getLogger(__name__)

TASKS_JSON = "tasks.json"
REVIEW_CSV = "review.csv"
CONFIG_XML = "labeling_config.xml"


def prepare_review_batch(
    source: str,
    output: str,
    *,
    bundle_uri: str,
    budget: int,
    random_share: float = 0.2,
    labeled: list[str] | tuple[str, ...] | None = None,
    seed: int = 0,
    days: int | None = None,
    url_expiry: timedelta = MAX_PRESIGN_EXPIRY,
    presign_endpoint: str | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """Prepare a review batch at ``output``: the selection (pre-labeled by ``bundle_uri``), ``tasks.json``
    (Label Studio import), ``review.csv`` (any other tool) and ``labeling_config.xml``. Returns a summary.

    ``output`` may hold ``{date}`` (YYYY-MM-DD) or ``{week}`` (ISO week, YYYY-Www), filled with today's (UTC),
    so that one scheduled run writes each week's batch to its own folder; ``days`` limits the captures to
    the last ``days`` days.
    """
    today = datetime.now(UTC)
    output = output.replace("{date}", today.strftime("%Y-%m-%d")).replace("{week}", today.strftime("%G-W%V"))
    selection = select(
        source,
        output,
        budget=budget,
        bundle_uri=bundle_uri,
        random_share=random_share,
        labeled=labeled,
        seed=seed,
        days=days,
        device=device,
    )
    selection = prelabel(selection.uri, bundle_uri, device=device)
    tasks = export(
        selection.uri,
        storage.join(output, TASKS_JSON),
        format="label-studio",
        url_expiry=url_expiry,
        presign_endpoint=presign_endpoint,
    )
    review = export(
        selection.uri,
        storage.join(output, REVIEW_CSV),
        format="csv",
        url_expiry=url_expiry,
        presign_endpoint=presign_endpoint,
    )
    storage.write_text(storage.join(output, CONFIG_XML), labeling_config(selection.classes))
    summary = {
        "output": output,
        "selection": selection.uri,
        "tasks": tasks,
        "review_csv": review,
        "labeling_config": storage.join(output, CONFIG_XML),
        "model_version": selection.meta["prelabel"]["model_version"],
        **selection.meta["counts"],
    }
    log.info("review batch ready at %s: %d images", output, summary["selected"])
    return summary
