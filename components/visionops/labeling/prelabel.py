"""Pre-label a selection with a model bundle (the champion): people then only correct it.

Each selected image gets the bundle's decision (its threshold on the positive class, see
:meth:`visionops.bundle.Bundle.decide`), the probability of that label (``confidence``), the positive-class
probability and all class probabilities. Preprocessing is rebuilt from the bundle, as in serving.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

from visionops import storage
from visionops.labeling.artifact import Selection, load_selection, write_selection

log = logging.getLogger(__name__)


def prelabel(
    selection_uri: str,
    bundle_uri: str,
    *,
    output: str | None = None,
    batch_size: int = 64,
    device: str = "cpu",
) -> Selection:
    """Add the bundle's predictions to every row of the selection; write it back (or to ``output``)."""
    from visionops.bundle import load_bundle

    selection = load_selection(selection_uri)
    bundle = load_bundle(bundle_uri, device=device)
    frame = selection.frame.copy()
    log.info("prelabel: %d images with %s (%s)", len(frame), bundle.version, bundle_uri)
    probs = bundle.score_uris(list(frame["image"]), batch_size=batch_size, progress=True)
    labels = bundle.decide(probs) if len(frame) else []
    classes = bundle.classes
    frame["predicted_label"] = labels
    frame["confidence"] = [
        round(float(p[classes.index(lab)]), 6) for p, lab in zip(probs, labels, strict=True)
    ]
    frame["prelabel_probability"] = [round(float(p[bundle.positive_index]), 6) for p in probs]
    frame["probs"] = [
        json.dumps({c: round(float(v), 6) for c, v in zip(classes, p, strict=True)}, sort_keys=True)
        for p in probs
    ]
    frame["prelabel_model"] = bundle.version
    meta = dict(selection.meta)
    meta.update(
        classes=classes,
        positive_class=bundle.positive_class,
        prelabel={
            "bundle_uri": str(bundle_uri),
            "model_version": bundle.version,
            "threshold": bundle.threshold,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "counts": {c: labels.count(c) for c in classes},
        },
    )
    target = output or selection.uri
    skipped = None
    if target != selection.uri and storage.exists(storage.join(selection.uri, "skipped.csv")):
        from visionops.labeling.artifact import read_csv

        skipped = read_csv(storage.join(selection.uri, "skipped.csv"))
    return write_selection(frame, meta, target, skipped=skipped)
