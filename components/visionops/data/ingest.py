"""Ingestion: raw images (ImageFolder or a labels CSV, local or ``s3://``) -> a versioned, split dataset.

For every image: sha256 of the bytes, a decode check (:func:`visionops.images.decode_image`; unusable files are
quarantined with the reason, never a crash), width/height/mode/format. Usable images are copied
content-addressed to ``<output>/images/<sha[:2]>/<sha>.<ext>``, so a dataset version never changes under you.
Exact duplicates (same bytes) are kept once; the same bytes with two labels is a conflict and both are
excluded. Splits are stratified by label with a fixed seed and group-aware (one person never in two splits).

Confinement: every image a labels CSV or an ImageFolder names must resolve under the source's root (``..``,
absolute paths and symlinks resolved) or, on S3, lie in the source's bucket; anything else refuses the
ingest with the offending path named, unless the caller opts in (``Confinement(allow_outside_source=True)``
or ``allowed_buckets``). Labels must match :data:`LABEL_PATTERN`. Every read is bounded (stat / HEAD first,
regular files only), and the first storage failure that means "the endpoint is down or stalled" stops the
whole ingest, removing the objects it had already written.

Golden set: with ``golden=URI`` (an earlier dataset, or its manifest.csv), every test image of it stays in
test with its label, and new images only go to train/val (unless ``extend_golden``), so the golden version
stays the same across re-ingests and every metric stays comparable.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import tempfile
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from visionops import storage
from visionops.data.manifest import CORE_COLUMNS, INFO_COLUMNS, SPLITS, Dataset, load_dataset, write_dataset
from visionops.errors import ConfigError, DataError, ImageError, StorageError, StorageUnreachable
from visionops.images import DEFAULT_LIMITS, ImageLimits, decode_image
from visionops.policy import NEGATIVE_CLASS, POSITIVE_CLASS

log = logging.getLogger(__name__)

LABELS_CSV = "labels.csv"
REPORT = "ingest_report.json"
_EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "BMP": "bmp"}
_RESERVED = (*CORE_COLUMNS, *INFO_COLUMNS)
#: What a class name may look like: letters, digits, ``_``, then also space, ``.``, ``-``; at most 64 characters.
#: It becomes a folder name, a CSV cell, a metric label and report text, so nothing that means markup, a path
#: or a spreadsheet formula.
LABEL_PATTERN = re.compile(r"\w[\w .-]{0,63}")
#: The largest labels CSV we read (a million rows fit easily).
MAX_LABELS_CSV_BYTES = 256 * 1024 * 1024
#: Side the decode check draws a JPEG at (draft mode): enough to find a truncated file, never 36 megapixels.
_CHECK_SIDE = 256


@dataclass(frozen=True)
class Confinement:
    """Where a source may point: under its own root (or bucket) only, unless the user opts in."""

    allow_outside_source: bool = False
    allowed_buckets: tuple[str, ...] = ()


#: For CSVs the library writes itself from earlier, already confined artifacts (labeling merge).
OPEN = Confinement(allow_outside_source=True)


@dataclass
class SourceItem:
    """One image to ingest: where its bytes are and what we know about it."""

    uri: str
    label: str
    group: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    golden: bool = False
    expected_sha: str | None = None


@dataclass
class Processed:
    """The outcome for one item: the facts of a usable image, or the reason it was refused."""

    item: SourceItem
    sha256: str | None = None
    width: int = 0
    height: int = 0
    mode: str = ""
    format: str = ""
    size: int = 0
    rel: str = ""  # images/<sha[:2]>/<sha>.<ext> once staged
    error: str | None = None


# -- discovering the source ---------------------------------------------------------------------------------
def _parent(uri: str) -> str:
    return uri.rsplit("/", 1)[0] if storage.is_remote(uri) else str(Path(uri).resolve().parent)


def read_labels_csv(uri: str) -> tuple[list[SourceItem], list[str]]:
    """Items of a labels CSV (``path,label[,group][,metadata...]``); relative paths are relative to the CSV."""
    import pandas as pd

    try:
        raw = storage.read_limited(uri, MAX_LABELS_CSV_BYTES)
    except StorageError as exc:
        raise DataError(f"cannot read labels CSV: {exc}") from exc
    try:
        frame = pd.read_csv(io.BytesIO(raw), dtype=str, keep_default_na=False)
    except Exception as exc:
        raise DataError(f"cannot parse labels CSV {uri}: {exc}") from exc
    frame.columns = [str(c).strip() for c in frame.columns]
    if "path" not in frame.columns or "label" not in frame.columns:
        raise DataError(
            f"labels CSV {uri} has columns {list(frame.columns)}; it needs 'path' and 'label' "
            "(format: path,label[,group][,metadata columns...])"
        )
    reserved = [c for c in frame.columns if c in _RESERVED and c not in ("path", "label", "group")]
    if reserved:
        raise DataError(
            f"labels CSV {uri} uses reserved column names {reserved}; ingestion computes those itself. "
            "Rename or drop them."
        )
    if frame.empty:
        raise DataError(f"no images found under {uri}: the labels CSV has no rows")
    base = _parent(uri)
    metadata = [c for c in frame.columns if c not in ("path", "label", "group")]
    items = []
    for row in frame.to_dict("records"):
        path = row["path"].strip()
        if not (storage.is_remote(path) or os.path.isabs(path)):
            path = storage.join(base, path)
        items.append(
            SourceItem(
                uri=path,
                label=row["label"].strip(),
                group=row.get("group", "").strip(),
                metadata={c: row[c] for c in metadata},
            )
        )
    return items, metadata


def _outside(uri: str, root: str, confinement: Confinement) -> str | None:
    """Why ``uri`` is outside the source rooted at ``root`` (None when it is inside or allowed)."""
    if confinement.allow_outside_source:
        return None
    if storage.is_remote(uri) or storage.is_remote(root):
        if not (storage.is_remote(uri) and storage.is_remote(root)):
            return (
                "a local path in an s3:// source"
                if storage.is_remote(root)
                else "an s3:// URI in a local source"
            )
        bucket, key = storage.split_s3(uri)
        if ".." in key.split("/"):
            return "a '..' segment"
        if bucket != storage.split_s3(root)[0] and bucket not in confinement.allowed_buckets:
            return f"another bucket ({bucket!r}; allow it with --allow-bucket {bucket})"
        return None
    real, real_root = os.path.realpath(uri), os.path.realpath(root)
    if os.path.commonpath([real, real_root]) != real_root:
        return "outside the source root" if real == os.path.abspath(uri) else f"it resolves to {real}"
    return None


def confine(uris: list[str], root: str, confinement: Confinement) -> None:
    """Refuse the source when any URI points outside ``root`` (naming up to five offending paths)."""
    bad = [(uri, why) for uri in uris if (why := _outside(uri, root, confinement))]
    if bad:
        examples = "; ".join(f"{uri} ({why})" for uri, why in bad[:5])
        raise DataError(
            f"{len(bad)} path(s) in source {root} point outside it: {examples}. Ingestion reads only under "
            "its source root or bucket; pass --allow-outside-source (or --allow-bucket NAME) to read them anyway"
        )


def check_labels(items: list[SourceItem]) -> None:
    """Refuse a label that is not a plain class name (markup, formulas, paths), naming it and the pattern."""
    for item in items:
        if item.label and not LABEL_PATTERN.fullmatch(item.label):
            raise DataError(
                f"label {item.label!r} of {item.uri} is not a valid class name: it must match "
                f"{LABEL_PATTERN.pattern!r} (letters, digits, '_', then also ' ', '.', '-'; at most 64 "
                "characters). Rename the class"
            )


def discover(
    source: str, confinement: Confinement = Confinement()
) -> tuple[list[SourceItem], list[str], str]:
    """List the images of ``source``: ``(items, metadata_columns, kind)``; kind is ``csv`` or ``imagefolder``.

    A directory/prefix with a ``labels.csv`` at its root is read through that CSV (it carries groups and
    metadata); otherwise the first folder level below ``source`` is the class. Hidden files are skipped.
    """
    source = str(source)
    if not storage.is_remote(source) and not Path(source).exists():
        raise DataError(f"source {source} does not exist: give an ImageFolder directory or a labels CSV")
    if source.endswith(".csv"):
        items, metadata = read_labels_csv(source)
        confine([i.uri for i in items], _parent(source), confinement)
        return items, metadata, "csv"
    if not storage.is_remote(source) and Path(source).is_file():
        raise DataError(
            f"source {source} is a file but not a .csv: give an ImageFolder directory or a labels CSV"
        )
    labels_csv = storage.join(source, LABELS_CSV)
    if storage.exists(labels_csv):
        log.info("reading labels from %s", labels_csv)
        items, metadata = read_labels_csv(labels_csv)
        confine([i.uri for i in items], _parent(labels_csv), confinement)
        return items, metadata, "csv"
    items = []
    root = source.rstrip("/") if storage.is_remote(source) else str(Path(source).resolve())
    for uri in storage.list_uris(root):
        parts = storage.relative(uri, root).split("/")
        if len(parts) < 2 or any(p.startswith(".") for p in parts):
            continue  # files beside the class folders (README, manifest...) and hidden files are not images
        items.append(SourceItem(uri=uri, label=parts[0]))
    confine([i.uri for i in items], root, confinement)  # a symlink in the folder may point anywhere
    if not items:
        raise DataError(
            f"no images found under {source}: expected one folder per class "
            f"(e.g. {storage.join(source, POSITIVE_CLASS)}/*.jpg and {storage.join(source, NEGATIVE_CLASS)}/*.jpg) "
            "or a labels CSV"
        )
    return items, [], "imagefolder"


def golden_items(golden: str) -> tuple[list[SourceItem], list[str], str]:
    """The test split of an earlier dataset (or of its manifest.csv) as golden items; and its golden version."""
    from visionops.data.manifest import golden_version, read_manifest_frame

    if str(golden).endswith(".csv"):
        frame = read_manifest_frame(golden)
    else:
        frame = load_dataset(golden).frame
    test = frame[frame["split"] == "test"]
    if test.empty:
        raise DataError(
            f"golden set {golden} has no test rows: the golden set is the test split of a dataset"
        )
    metadata = [c for c in frame.columns if c not in CORE_COLUMNS and c not in INFO_COLUMNS]
    items = [
        SourceItem(
            uri=str(row["path"]),
            label=str(row["label"]),
            group=str(row["group"]),
            metadata={c: str(row[c]) for c in metadata},
            golden=True,
            expected_sha=str(row["sha256"]),
        )
        for row in test.to_dict("records")
    ]
    return items, metadata, golden_version(frame)


# -- per image ----------------------------------------------------------------------------------------------
def _process(item: SourceItem, staging: Path, limits: ImageLimits) -> Processed:
    """Read, hash, check and stage one image; every failure becomes a reason, never an exception."""
    from PIL import Image

    if not item.label:
        return Processed(item, error="no label (empty 'label' cell)")
    try:
        data = storage.read_limited(item.uri, limits.max_bytes)
    except StorageUnreachable:
        raise  # the endpoint is down or stalled: the whole ingest stops (see _run_parallel)
    except StorageError as exc:
        return Processed(item, error=f"cannot read: {exc}")
    sha = hashlib.sha256(data).hexdigest()
    if item.expected_sha and sha != item.expected_sha:
        return Processed(
            item, sha, error=f"bytes changed: sha256 {sha[:12]} != manifest {item.expected_sha[:12]}"
        )
    try:
        img = decode_image(data, limits, target_side=_CHECK_SIDE)
    except ImageError as exc:
        return Processed(item, sha, size=len(data), error=str(exc))
    fmt = img.info.get("source_format", "")
    width, height = img.info["source_size"]
    with Image.open(io.BytesIO(data)) as header:
        mode = header.mode
    rel = f"images/{sha[:2]}/{sha}.{_EXTENSIONS.get(fmt, 'img')}"
    dest = staging / rel
    if not dest.exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.{id(item)}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, dest)
    return Processed(item, sha, width, height, mode, fmt, len(data), rel)


def previous_splits(golden: str) -> dict[str, str]:
    """sha256 -> split of every train/val row of an earlier dataset: a row keeps the split it was first given
    in every later version (a parent's training image never becomes a child's validation image)."""
    from visionops.data.manifest import read_manifest_frame

    frame = read_manifest_frame(golden) if str(golden).endswith(".csv") else load_dataset(golden).frame
    kept = frame[frame["split"].isin(["train", "val"])]
    return dict(zip(kept["sha256"].astype(str), kept["split"].astype(str), strict=True))


def golden_extension(new: list, counts: dict[str, int], seed: int) -> list:
    """The new images that join the golden set: ``counts[label]`` of each label, drawn with ``seed`` among
    those without a group (a person's other photos could be in train/val)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    chosen = []
    for label, count in sorted(counts.items()):
        pool = [p for p in new if p.item.label == label and not p.item.group]
        if count > len(pool):
            raise DataError(
                f"cannot add {count} {label!r} images to the golden set: only {len(pool)} new, never-trained-on "
                f"{label!r} images without a group are in this batch"
            )
        chosen += [pool[i] for i in sorted(rng.choice(len(pool), size=count, replace=False))]
    return chosen


# -- duplicates, conflicts, splits --------------------------------------------------------------------------
def _resolve_duplicates(done: list[Processed]) -> tuple[list[Processed], list[dict], list[dict], list[dict]]:
    """Keep one image per sha256. Returns (kept, duplicates, conflicts, quarantine rows for conflicts)."""
    by_sha: dict[str, list[Processed]] = defaultdict(list)
    for p in sorted(done, key=lambda p: (not p.item.golden, p.item.uri)):
        by_sha[p.sha256].append(p)
    kept, duplicates, conflicts, refused = [], [], [], []
    for sha, members in by_sha.items():
        golden = [p for p in members if p.item.golden]
        labels = sorted({p.item.label for p in members})
        if golden:
            first = golden[0]
            kept.append(first)
            others = [p for p in members if p is not first]
            clash = [p for p in others if p.item.label != first.item.label]
            if clash:
                conflicts.append(
                    {
                        "sha256": sha,
                        "golden": True,
                        "items": [{"path": p.item.uri, "label": p.item.label} for p in members],
                    }
                )
                for p in clash:
                    refused.append(
                        {
                            "path": p.item.uri,
                            "label": p.item.label,
                            "reason": f"label conflict with golden image {first.item.uri} "
                            f"(labelled {first.item.label!r}); the golden label is kept",
                        }
                    )
            same = [p for p in others if p.item.label == first.item.label]
            if same:
                duplicates.append(
                    {"sha256": sha, "kept": first.item.uri, "dropped": [p.item.uri for p in same]}
                )
            continue
        if len(labels) > 1:
            conflicts.append(
                {
                    "sha256": sha,
                    "golden": False,
                    "items": [{"path": p.item.uri, "label": p.item.label} for p in members],
                }
            )
            for p in members:
                others = ", ".join(f"{q.item.uri} ({q.item.label})" for q in members if q is not p)
                refused.append(
                    {
                        "path": p.item.uri,
                        "label": p.item.label,
                        "reason": f"label conflict: identical bytes labelled {p.item.label!r} here and "
                        f"elsewhere: {others}. Fix the label, then re-ingest",
                    }
                )
            continue
        kept.append(members[0])
        if len(members) > 1:
            duplicates.append(
                {"sha256": sha, "kept": members[0].item.uri, "dropped": [p.item.uri for p in members[1:]]}
            )
    return kept, duplicates, conflicts, refused


def assign_splits(labels: list[str], groups: list[str], fractions: dict[str, float], seed: int) -> list[str]:
    """Stratified, group-aware split assignment (deterministic in ``seed``).

    Each group (an empty group = the image alone) goes whole to one split: larger groups first, each to the
    split whose per-label counts are furthest below their targets. With singletons this is a plain stratified
    split (exact to one image per class).
    """
    import numpy as np

    splits = [s for s in SPLITS if fractions.get(s, 0.0) > 0]
    totals = Counter(labels)
    units: dict[str, list[int]] = defaultdict(list)
    for i, g in enumerate(groups):
        units[g if g else f"\0{i}"].append(i)
    keys = sorted(units)
    order = [keys[k] for k in np.random.default_rng(seed).permutation(len(keys))]
    order.sort(key=lambda k: -len(units[k]))  # stable: random order within a size
    current = {s: Counter() for s in splits}
    out = [""] * len(labels)
    for key in order:
        counts = Counter(labels[i] for i in units[key])

        def need(s: str, counts: Counter = counts) -> float:
            return sum(
                n * (fractions[s] * totals[lab] - current[s][lab]) / totals[lab] for lab, n in counts.items()
            )

        best = max(splits, key=need)  # ties go to the first split (train)
        current[best].update(counts)
        for i in units[key]:
            out[i] = best
    return out


# -- the stage ----------------------------------------------------------------------------------------------
def _check_fractions(val_fraction: float, test_fraction: float) -> None:
    """Refuse split fractions that leave no room for train."""
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ConfigError(
            f"val_fraction={val_fraction}, test_fraction={test_fraction}: each must be in [0, 1) and their "
            "sum below 1 (train gets the rest)"
        )


def _run_parallel(
    items: list[SourceItem], staging: Path, limits: ImageLimits, workers: int, progress: bool
) -> list[Processed]:
    """Process every item in threads (I/O and decoding release the GIL); results in completion order.

    The first :class:`StorageUnreachable` cancels the items not started yet and stops the ingest (the
    running ones end within the storage deadline): the endpoint is down, each further read would wait too.
    """
    from tqdm import tqdm

    results: list[Processed] = []
    with (
        ThreadPoolExecutor(max_workers=max(1, workers)) as pool,
        tqdm(total=len(items), desc="ingest", unit="img", disable=not progress, mininterval=1.0) as bar,
    ):
        futures = [pool.submit(_process, item, staging, limits) for item in items]
        try:
            for future in as_completed(futures):
                results.append(future.result())
                bar.update()
        except StorageUnreachable as exc:
            pool.shutdown(wait=True, cancel_futures=True)
            raise StorageUnreachable(
                f"ingest stopped after {len(results)} of {len(items)} images, nothing was published: {exc}"
            ) from exc
    return results


def _upload(staging: Path, rels: list[str], output: str, workers: int, progress: bool) -> list[str]:
    """Copy staged images to an s3:// output in parallel; returns the URIs this call wrote.

    Content-addressed keys never change, so images already there are skipped (one listing). On the first
    failure the remaining uploads are cancelled and the objects this call wrote are removed (no orphans).
    """
    from tqdm import tqdm

    store = storage.store_for(output)
    present = set(storage.list_uris(storage.join(output, "images")))
    todo = [storage.join(output, rel) for rel in rels if storage.join(output, rel) not in present]
    written: list[str] = []
    with (
        ThreadPoolExecutor(max_workers=max(1, workers)) as pool,
        tqdm(total=len(todo), desc="upload", unit="img", disable=not progress, mininterval=1.0) as bar,
    ):
        futures = {
            pool.submit(store.upload_file, staging / storage.relative(uri, output), uri): uri for uri in todo
        }
        try:
            for future in as_completed(futures):
                future.result()
                written.append(futures[future])
                bar.update()
        except StorageError as exc:
            pool.shutdown(wait=True, cancel_futures=True)
            # every upload that started, failed ones too: the server may have stored what the client lost
            written = [uri for f, uri in futures.items() if not f.cancelled()]
            _remove_written(written)
            raise StorageError(f"ingest upload to {output} failed, nothing was published: {exc}") from exc
    return written


def _remove_written(uris: list[str]) -> None:
    """Best-effort removal of the objects an interrupted ingest wrote; what cannot be removed is logged."""
    try:
        storage.delete_many(uris)
    except StorageError as exc:
        log.error(
            "ingest: %d object(s) written before the failure could not be removed: %s (%s)",
            len(uris),
            ", ".join(uris[:20]),
            exc,
        )


def _default_positive(classes: list[str]) -> str | None:
    """POSITIVE_CLASS when present; else the second of two classes; else None (the user must name it)."""
    if POSITIVE_CLASS in classes:
        return POSITIVE_CLASS
    return classes[1] if len(classes) == 2 else None


@dataclass
class Found:
    """What ingestion will look at: the source's items, the golden items, and where they came from."""

    items: list[SourceItem]
    gold: list[SourceItem]
    metadata_cols: list[str]
    kind: str  # csv or imagefolder
    old_golden_version: str | None
    pinned: dict[str, str] = field(default_factory=dict)  # sha256 -> split of the golden dataset's train/val


@dataclass
class Triage:
    """The processed images sorted out: those to place (golden, forced into test, new) and those refused."""

    results: list[Processed]
    golden: list[Processed]
    forced_test: list[Processed]
    new: list[Processed]
    quarantine: list[dict]
    duplicates: list[dict]
    conflicts: list[dict]
    kept_split: list[tuple[Processed, str]] = field(default_factory=list)  # earlier rows, in their old split


def _find_items(source: str, golden: str | None, confinement: Confinement = Confinement()) -> Found:
    """List the source's images (confined, valid labels, at least two classes) and the golden items."""
    items, metadata_cols, kind = discover(source, confinement)
    check_labels(items)
    found_classes = sorted({i.label for i in items if i.label})
    if len(found_classes) < 2:
        raise DataError(
            f"found {len(found_classes)} class(es) {found_classes} under {source}: a classifier needs at least 2 "
            "(one folder per class, or two distinct labels in the CSV)"
        )
    gold: list[SourceItem] = []
    old_golden_version = None
    pinned: dict[str, str] = {}
    if golden:
        gold, gold_meta_cols, old_golden_version = golden_items(golden)
        pinned = previous_splits(golden)
        metadata_cols += [c for c in gold_meta_cols if c not in metadata_cols]
    log.info("ingesting %d images (%d golden) from %s", len(items), len(gold), source)
    return Found(items, gold, metadata_cols, kind, old_golden_version, pinned)


def _require_intact_golden(results: list[Processed], golden: str | None) -> None:
    """Every golden image must still be usable: the golden set never silently shrinks."""
    bad_gold = [p for p in results if p.item.golden and p.error]
    if bad_gold:
        raise DataError(
            f"golden set {golden}: {len(bad_gold)} image(s) cannot be used, e.g. {bad_gold[0].item.uri}: "
            f"{bad_gold[0].error}. The golden set must stay intact; restore those files"
        )


def _triage(results: list[Processed], extend_golden: bool) -> Triage:
    """Quarantine unusable images and label conflicts, drop duplicates, and route new images.

    A new image of a person (group) in the golden set joins the test split with ``extend_golden`` and is
    quarantined otherwise (in train/val it would leak that person into training).
    """
    quarantine = [{"path": p.item.uri, "label": p.item.label, "reason": p.error} for p in results if p.error]
    kept, duplicates, conflicts, refused = _resolve_duplicates([p for p in results if not p.error])
    quarantine += refused
    golden_groups = {p.item.group for p in kept if p.item.golden and p.item.group}
    new, forced_test = [], []
    for p in kept:
        if p.item.golden:
            continue
        if p.item.group and p.item.group in golden_groups:
            if extend_golden:
                forced_test.append(p)
            else:
                quarantine.append(
                    {
                        "path": p.item.uri,
                        "label": p.item.label,
                        "reason": f"group {p.item.group!r} is in the golden test set; its new "
                        "images cannot go to train/val without leakage "
                        "(use --extend-golden to add them to the golden set)",
                    }
                )
            continue
        new.append(p)
    golden_kept = [p for p in kept if p.item.golden]
    return Triage(results, golden_kept, forced_test, new, quarantine, duplicates, conflicts)


def _keep_splits(
    triage: Triage, pinned: dict[str, str], golden_add: dict[str, int] | None, seed: int
) -> None:
    """Rows of an earlier version keep their split (matched by sha256); with ``golden_add`` exactly that many
    new, never-trained-on images per label join the golden set. Updates ``triage`` in place."""
    triage.kept_split = [(p, pinned[p.sha256]) for p in triage.new if p.sha256 in pinned]
    triage.new = [p for p in triage.new if p.sha256 not in pinned]
    if golden_add:
        extension = golden_extension(triage.new, golden_add, seed)
        chosen = {id(e) for e in extension}
        triage.forced_test += extension
        triage.new = [p for p in triage.new if id(p) not in chosen]


def _split_fractions(
    golden: str | None, extend_golden: bool, val_fraction: float, test_fraction: float
) -> dict[str, float]:
    """The shares new images are split by: train/val only while a golden set is kept as it is."""
    if golden and not extend_golden:
        rest = 1.0 - test_fraction
        return {"train": (1.0 - val_fraction - test_fraction) / rest, "val": val_fraction / rest}
    return {"train": 1.0 - val_fraction - test_fraction, "val": val_fraction, "test": test_fraction}


def _place(
    triage: Triage, fractions: dict[str, float], seed: int, source: str
) -> list[tuple[Processed, str]]:
    """(image, split) pairs: golden and forced images in test, new images split by ``fractions``."""
    new = triage.new
    new_splits = assign_splits([p.item.label for p in new], [p.item.group for p in new], fractions, seed)
    placed = (
        [(p, "test") for p in triage.golden]
        + [(p, "test") for p in triage.forced_test]
        + triage.kept_split
        + list(zip(new, new_splits, strict=True))
    )
    if not placed:
        quarantine = triage.quarantine
        raise DataError(
            f"no usable images under {source}: all {len(triage.results)} were quarantined "
            f"(e.g. {quarantine[0]['path']}: {quarantine[0]['reason']})"
        )
    return placed


def _ingest_report(
    source: str,
    found: Found,
    triage: Triage,
    frame,
    *,
    golden: str | None,
    extend_golden: bool,
    golden_add: dict[str, int] | None,
    started: float,
) -> dict[str, Any]:
    """The ingest_report.json content: counts, quarantine reasons, duplicates, conflicts, golden-set facts."""
    quarantine, duplicates = triage.quarantine, triage.duplicates
    return {
        "source": str(source),
        "source_kind": found.kind,
        "found": len(found.items),
        "usable": len(frame),
        "quarantined": len(quarantine),
        "quarantine_reasons": dict(Counter(_reason_kind(q["reason"]) for q in quarantine)),
        "duplicates": duplicates,
        "duplicates_dropped": sum(len(d["dropped"]) for d in duplicates),
        "conflicts": triage.conflicts,
        "golden": {
            "source": golden,
            "images": len(found.gold),
            "previous_version": found.old_golden_version,
            "extended": extend_golden or bool(golden_add),
            "added_by_label": dict(golden_add or {}),
            "kept_split": len(triage.kept_split),
            "added": int((frame["split"] == "test").sum()) - len(found.gold) if golden else 0,
        },
        "seconds": round(time.monotonic() - started, 3),
    }


def _dataset_meta(
    source: str,
    classes: list[str],
    report: dict[str, Any],
    frame,
    *,
    positive_class: str | None,
    golden: str | None,
    extend_golden: bool,
    val_fraction: float,
    test_fraction: float,
    seed: int,
) -> dict[str, Any]:
    """The dataset.json content (without the versions write_dataset adds); checks the positive class."""
    meta: dict[str, Any] = {
        "source": str(source),
        "classes": classes,
        "positive_class": positive_class or _default_positive(classes),
        "splits": {
            "val_fraction": val_fraction,
            "test_fraction": test_fraction,
            "seed": seed,
            "group_aware": bool((frame["group"] != "").any()),
        },
        "golden_source": golden,
        "extend_golden": extend_golden,
        "ingest": {k: report[k] for k in ("found", "usable", "quarantined", "duplicates_dropped")}
        | {"conflicts": len(report["conflicts"])},
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if meta["positive_class"] not in classes and meta["positive_class"] is not None:
        raise ConfigError(f"positive_class={positive_class!r} is not one of the classes {classes}")
    return meta


def _publish(
    frame,
    meta: dict[str, Any],
    quarantine: list[dict],
    placed: list[tuple[Processed, str]],
    staging: Path,
    output: str,
    *,
    workers: int,
    progress: bool,
) -> Dataset:
    """The staged images and the report go to ``output``, then the manifest (dataset.json last)."""
    import pandas as pd

    q_frame = pd.DataFrame(quarantine, columns=["path", "label", "reason"])
    rels = sorted({p.rel for p, _ in placed})
    extra = {REPORT: staging / REPORT}
    if not storage.is_remote(output):
        extra.update({rel: staging / rel for rel in rels})
        return write_dataset(frame, meta, _output_root(output), quarantine=q_frame, extra_files=extra)
    written = _upload(staging, rels, output, workers, progress)
    try:
        return write_dataset(frame, meta, _output_root(output), quarantine=q_frame, extra_files=extra)
    except StorageError:
        _remove_written(written)  # the images of a version that was never published
        raise


def ingest(
    source: str,
    output: str,
    *,
    golden: str | None = None,
    extend_golden: bool = False,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
    workers: int = 8,
    limits: ImageLimits = DEFAULT_LIMITS,
    positive_class: str | None = None,
    progress: bool = True,
    confinement: Confinement = Confinement(),
    golden_add: dict[str, int] | None = None,
) -> Dataset:
    """Ingest ``source`` into a new dataset version at ``output`` (see the module docstring). Returns it.

    Without ``golden`` the images are split train/val/test by the fractions. With ``golden`` its test images
    stay the test split, its train/val images keep their split (matched by sha256), and new images go to
    train/val only (``extend_golden=True`` lets a ``test_fraction`` of them, and new images of golden people,
    join the golden set; ``golden_add`` = {label: count} adds exactly that many new images per label instead,
    e.g. at the production prevalence).

    The steps: find the items, process them (hash, decode check, stage), sort them out (quarantine,
    duplicates, golden people), place them in splits, build the manifest and report, publish.
    ``confinement`` says whether the source may name images outside its root or bucket (default: never).
    """
    _check_fractions(val_fraction, test_fraction)
    started = time.monotonic()
    found = _find_items(source, golden, confinement)
    with tempfile.TemporaryDirectory(prefix="visionops-ingest-") as tmp:
        staging = Path(tmp)
        results = _run_parallel(found.gold + found.items, staging, limits, workers, progress)
        _require_intact_golden(results, golden)
        triage = _triage(results, extend_golden)
        _keep_splits(triage, found.pinned, golden_add, seed)
        fractions = _split_fractions(golden, extend_golden and not golden_add, val_fraction, test_fraction)
        placed = _place(triage, fractions, seed, source)
        frame = _build_frame(placed, output, found.metadata_cols)
        classes = sorted(frame["label"].unique())
        if len(classes) < 2:
            raise DataError(f"only class(es) {classes} have usable images after quarantine; need at least 2")
        report = _ingest_report(
            source,
            found,
            triage,
            frame,
            golden=golden,
            extend_golden=extend_golden,
            golden_add=golden_add,
            started=started,
        )
        (staging / REPORT).write_text(json.dumps(report, indent=2))
        meta = _dataset_meta(
            source,
            classes,
            report,
            frame,
            positive_class=positive_class,
            golden=golden,
            extend_golden=extend_golden or bool(golden_add),
            val_fraction=val_fraction,
            test_fraction=test_fraction,
            seed=seed,
        )
        dataset = _publish(
            frame, meta, triage.quarantine, placed, staging, output, workers=workers, progress=progress
        )
    if golden and not (extend_golden or golden_add) and dataset.golden_version != found.old_golden_version:
        raise DataError(
            f"golden version changed ({found.old_golden_version} -> {dataset.golden_version}) "
            "although extend_golden is off: please report this bug"
        )
    log.info("dataset %s (golden %s) written to %s", dataset.version, dataset.golden_version, output)
    return dataset


def _reason_kind(reason: str) -> str:
    """A short bucket for a quarantine reason (the text up to the first colon)."""
    return reason.split(":", 1)[0].strip()


def _output_root(output: str) -> str:
    return str(output).rstrip("/") if storage.is_remote(output) else str(Path(output).resolve())


def _build_frame(placed: list[tuple[Processed, str]], output: str, metadata_cols: list[str]):
    import pandas as pd

    root = _output_root(output)
    rows = []
    for p, split in placed:
        row = {
            "path": storage.join(root, p.rel),
            "label": p.item.label,
            "sha256": p.sha256,
            "width": p.width,
            "height": p.height,
            "split": split,
            "group": p.item.group,
            "source": p.item.uri,
            "mode": p.mode,
            "format": p.format,
            "bytes": p.size,
        }
        row.update({c: p.item.metadata.get(c, "") for c in metadata_cols})
        rows.append(row)
    frame = pd.DataFrame(rows, columns=[*CORE_COLUMNS, *INFO_COLUMNS, *metadata_cols])
    order = {s: i for i, s in enumerate(SPLITS)}
    frame = frame.sort_values(
        ["split", "label", "sha256"], key=lambda c: c.map(order) if c.name == "split" else c
    )
    return frame.reset_index(drop=True)
