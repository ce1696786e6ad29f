"""Pre-label a selection with a model bundle (the champion): people then only correct it.

Each selected image gets the bundle's decision (its threshold on the positive class, see
:meth:`visionops.bundle.Bundle.decide`), the probability of that label (``confidence``), the positive-class
probability and all class probabilities. Preprocessing is rebuilt from the bundle, as in serving.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

from visionops import storage
from visionops.labeling.artifact import Selection, load_selection, parallel_map, write_selection

log = logging.getLogger(__name__)


def score_images(bundle, uris: list[str], *, batch_size: int = 64, workers: int = 8) -> Any:
    """Class probabilities (N, C) of the images at ``uris`` with ``bundle`` (batched, progress bar)."""
    import numpy as np
    from tqdm import tqdm

    from visionops.images import decode_image

    out = []
    starts = range(0, len(uris), batch_size)
    for start in tqdm(starts, desc="scoring", unit="batch", disable=len(starts) < 2):
        chunk = uris[start : start + batch_size]
        images = parallel_map(lambda u: decode_image(storage.read_bytes(u)), chunk, workers=workers)
        out.append(bundle.predict_proba(images))
    if not out:
        return np.zeros((0, len(bundle.classes)), dtype=np.float32)
    return np.concatenate(out)


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
    probs = score_images(bundle, list(frame["image"]), batch_size=batch_size)
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
