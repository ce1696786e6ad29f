"""Merge a reviewed batch into the next dataset version, through ``visionops.data.ingest`` (one ingestion path).

The previous version's train/val rows and the batch's rows are written as one labels CSV (``path,label,group,
metadata...``; absolute URIs) and ingested with ``golden=<previous dataset>``: ingestion carries the golden
set (the test split) over unchanged, every earlier row keeps its split (matched by sha256: a parent's
training image never becomes a child's validation image), and new rows only fill train/val.

Golden extension (``extend_golden=N``): N of the batch's new rows, never in any split of the previous version
(so never trained on by a model of it), join the golden set at the production prevalence (``prevalence``,
default the batch's own positive share, which is production's when the batch is a random review sample).
The golden version changes; evaluation then scores champion and challenger on the new golden set after
checking by hash that neither trained on it. Before that:

* a batch image that *is* a golden image (same sha256) is dropped, with a warning: the golden set is fixed;
* a batch image that is already a training/validation image takes the reviewed label (a correction).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from visionops import storage
from visionops.data.manifest import CORE_COLUMNS, INFO_COLUMNS, load_dataset
from visionops.errors import DataError
from visionops.labeling.artifact import csv_bytes, parallel_map, read_csv, resolve_path, sha256_hex

log = logging.getLogger(__name__)

#: Columns ingestion computes itself (and refuses in a labels CSV).
_COMPUTED = tuple(c for c in (*CORE_COLUMNS, *INFO_COLUMNS) if c not in ("path", "label", "group"))


def combined_labels(previous_dataset_uri: str, batch_csv_uri: str):
    """The labels CSV frame that :func:`merge_batch` ingests, and how many batch rows were dropped/replaced."""
    import pandas as pd

    previous = load_dataset(previous_dataset_uri)
    batch = read_csv(batch_csv_uri)
    missing = [c for c in ("path", "label") if c not in batch.columns]
    if missing:
        raise DataError(
            f"labeled batch {batch_csv_uri} lacks columns {missing}; it needs path,label[,group,...]"
        )
    if batch.empty:
        raise DataError(f"labeled batch {batch_csv_uri} has no rows")
    unknown = sorted(set(batch["label"]) - set(previous.classes))
    if unknown:
        raise DataError(
            f"labeled batch {batch_csv_uri} has labels {unknown} that dataset {previous_dataset_uri} does not know "
            f"(classes: {', '.join(previous.classes)})"
        )
    batch = batch.rename(columns={"source": "label_source"})
    batch = batch.drop(columns=[c for c in _COMPUTED if c in batch.columns])
    batch["path"] = [resolve_path(p, batch_csv_uri) for p in batch["path"]]
    batch_sha = parallel_map(lambda p: sha256_hex(storage.read_bytes(p)), list(batch["path"]))
    frame = previous.frame
    golden = set(frame.loc[frame["split"] == "test", "sha256"])
    in_golden = [s in golden for s in batch_sha]
    if any(in_golden):
        log.warning(
            "merge: %d reviewed images are golden-set images; the golden set is fixed, they are left out: %s",
            sum(in_golden),
            ", ".join(p for p, g in zip(batch["path"], in_golden, strict=True) if g)[:500],
        )
    keep = [not g for g in in_golden]
    batch = batch[keep]
    corrected = {s for s, k in zip(batch_sha, keep, strict=True) if k}
    replaced = frame["sha256"].isin(corrected) & (frame["split"] != "test")
    # golden rows stay out of the CSV: ingest(golden=previous) adds them, unchanged, as the test split
    old = frame[~replaced & (frame["split"] != "test")]
    old = old.drop(columns=[c for c in _COMPUTED if c in old.columns])
    combined = pd.concat([old, batch], ignore_index=True, sort=False).fillna("")
    if "group" not in combined.columns:
        combined["group"] = ""
    ordered = ["path", "label", "group"] + [
        c for c in combined.columns if c not in ("path", "label", "group")
    ]
    stats = {"golden_dropped": sum(in_golden), "replaced": int(replaced.sum()), "added": len(batch)}
    return combined[ordered], stats


def write_combined_labels(previous_dataset_uri: str, batch_csv_uri: str, output_csv: str) -> str:
    """Write the combined labels CSV only (no ingestion): the ``data_uri`` for a pipeline run whose ingest step
    gets ``golden_uri=<previous dataset>``. Returns ``output_csv``."""
    combined, stats = combined_labels(previous_dataset_uri, batch_csv_uri)
    storage.write_bytes(output_csv, csv_bytes(combined))
    log.info(
        "merge: %d rows -> %s (%s)",
        len(combined),
        output_csv,
        ", ".join(f"{k}={v}" for k, v in stats.items()),
    )
    return output_csv


def merge_batch(
    previous_dataset_uri: str,
    batch_csv_uri: str,
    output_uri: str,
    *,
    seed: int = 0,
    extend_golden: int = 0,
    prevalence: float | None = None,
):
    """Ingest the previous dataset's rows plus the labeled batch as a new version at ``output_uri``.

    Without ``extend_golden`` the golden set comes from ``previous_dataset_uri`` untouched (same
    ``golden_version``); with it, that many new rows join it at ``prevalence`` (see the module docstring).
    Returns the new :class:`visionops.data.manifest.Dataset`.
    """
    from visionops.data.ingest import OPEN, ingest

    combined, stats = combined_labels(previous_dataset_uri, batch_csv_uri)
    log.info("merge: %s rows in total (%s)", len(combined), ", ".join(f"{k}={v}" for k, v in stats.items()))
    add = golden_counts(previous_dataset_uri, combined, stats, extend_golden, prevalence)
    with tempfile.TemporaryDirectory(prefix="visionops-merge-") as tmp:
        labels = Path(tmp) / "labels.csv"
        labels.write_bytes(csv_bytes(combined))
        # the CSV is ours (rows of an earlier dataset + the reviewed batch) and lives in a temporary directory
        dataset = ingest(
            str(labels), output_uri, golden=previous_dataset_uri, seed=seed, golden_add=add, confinement=OPEN
        )
    if add:
        log.info("merge: golden set %s extended by %s", dataset.golden_version, add)
        return dataset
    if dataset.golden_version != load_golden_version(previous_dataset_uri):
        raise DataError(
            f"merge changed the golden set ({load_golden_version(previous_dataset_uri)} -> "
            f"{dataset.golden_version}); the new version at {output_uri} must not be used for gating"
        )
    return dataset


def golden_counts(previous_uri: str, combined, stats: dict, count: int, prevalence: float | None):
    """Images per label that join the golden set: ``count`` in all, the positive class at ``prevalence``
    (default: the batch's own share of it). None when nothing is added."""
    if not count:
        return None
    from visionops.policy import default_positive_class

    previous = load_dataset(previous_uri)
    positive = previous.meta.get("positive_class") or default_positive_class(previous.classes)
    batch = combined.tail(stats["added"])
    if prevalence is None:
        prevalence = float((batch["label"] == positive).mean())
    if not 0.0 < prevalence < 1.0:
        raise DataError(f"cannot extend the golden set at prevalence {prevalence}: it must be in (0, 1)")
    n_pos = max(1, round(count * prevalence))
    others = [c for c in previous.classes if c != positive]
    shares = batch["label"].value_counts()
    rest = count - n_pos
    total_other = sum(int(shares.get(c, 0)) for c in others) or 1
    counts = {positive: n_pos}
    for c in others:
        counts[c] = round(rest * int(shares.get(c, 0)) / total_other)
    return {k: v for k, v in counts.items() if v}


def load_golden_version(dataset_uri: str) -> str:
    return load_dataset(dataset_uri).golden_version
