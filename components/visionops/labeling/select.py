"""Choose which captured (or any unlabeled) images people should review next.

Two parts, so that review both improves the next model and measures the current one:

* **uncertainty sampling**: the images whose positive-class probability lies closest to the decision
  threshold (the ones production found hard, and where a label teaches the model most), taken whole: their
  selection probability is 1;
* a **random share**, drawn uniformly from all the other eligible images: each with selection probability
  ``n_random / (eligible - n_uncertain)``.

Every selected row records its ``selection_probability``, so that live quality weighs each label by its
inverse (:func:`visionops.evaluation.metrics.weighted_rate`): the two parts together then estimate the
precision/recall of all production traffic without bias, and the uncertainty-sampled labels alone are never
taken for it.

Every image is hashed (sha256 of its bytes): duplicates inside the source and images already labeled (any
dataset version, labeled batch or earlier selection passed as ``labeled``) are never sent twice. Images that
do not decode are left out too. Everything left out is listed in ``skipped.csv`` with the reason.

Probabilities come from the prediction serving stored next to each capture
(``<capture>/<date>/<request_id>.json``: request_id, time, model_version, label, probability, probs,
threshold) when it was made by the bundle in use (or when no bundle is given); otherwise the bundle scores the
image.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import PurePosixPath
from typing import Any

from visionops import storage
from visionops.data.ingest import Confinement, confine
from visionops.errors import ConfigError, DataError, ImageError, StorageError
from visionops.labeling.artifact import (
    IMAGE_SUFFIXES,
    Selection,
    load_selection,
    parallel_map,
    read_csv,
    resolve_path,
    sha256_hex,
    write_selection,
)
from visionops.policy import default_positive_class

log = logging.getLogger(__name__)

REASON_UNCERTAIN = "uncertain"
REASON_RANDOM = "random"


@dataclass
class Candidate:
    """One image found in the source."""

    image: str
    request_id: str
    record: dict[str, Any] | None = None  # the prediction serving stored with the capture
    captured_at: str = ""
    sha256: str = ""
    error: str = ""
    probability: float | None = None
    threshold: float = 0.5
    score_source: str = ""
    scored_by: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def _stem_key(uri: str) -> tuple[str, str, str]:
    parent, _, name = str(uri).replace("\\", "/").rpartition("/")
    path = PurePosixPath(name)
    return parent, path.stem, path.suffix.lower()


def _read_record(uri: str) -> dict[str, Any] | None:
    try:
        record = json.loads(storage.read_text(uri))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        log.warning("ignoring capture record %s: not valid JSON (%s)", uri, exc)
        return None
    return record if isinstance(record, dict) else None


def _csv_root(csv_uri: str) -> str:
    """The folder (or prefix) a CSV's paths must stay under."""
    return csv_uri.rsplit("/", 1)[0] if storage.is_remote(csv_uri) else os.path.dirname(csv_uri)


def _read_image(uri: str) -> bytes:
    """An image's bytes, refused from its size and type before reading (see storage.read_limited)."""
    from visionops.images import DEFAULT_LIMITS

    return storage.read_limited(uri, DEFAULT_LIMITS.max_bytes)


def discover(source: str, *, workers: int = 8, confinement: Confinement = Confinement()) -> list[Candidate]:
    """The images of ``source``: a folder/prefix (captures with their JSON records, or plain images) or a
    CSV with a ``path`` column (paths relative to the CSV or absolute URIs; optional ``request_id``).
    Every image must lie under the source (or its bucket) unless ``confinement`` allows more."""
    source = str(source)
    if not storage.is_remote(source):
        source = os.path.abspath(source)  # image URIs travel (selection, tasks, batch CSV): never relative
    if source.lower().endswith(".csv"):
        frame = read_csv(source)
        column = "path" if "path" in frame.columns else "image" if "image" in frame.columns else None
        if column is None:
            raise DataError(f"source CSV {source} needs a 'path' column; it has {list(frame.columns)}")
        out = []
        for row in frame.to_dict("records"):
            image = resolve_path(row[column], source)
            out.append(Candidate(image=image, request_id=row.get("request_id") or _stem_key(image)[1]))
        confine([c.image for c in out], _csv_root(source), confinement)
        return out
    try:
        uris = list(storage.list_uris(source))
    except StorageError as exc:
        raise DataError(f"cannot list source {source}: {exc}") from exc
    confine(uris, source, confinement)  # a symlink in the folder may point anywhere
    records = {_stem_key(u)[:2]: u for u in uris if _stem_key(u)[2] == ".json"}
    images = sorted(u for u in uris if _stem_key(u)[2] in IMAGE_SUFFIXES)
    if not images:
        raise DataError(
            f"no images under {source} (looked for {', '.join(IMAGE_SUFFIXES)}); "
            "point SOURCE at the capture prefix (VISIONOPS_CAPTURE_URI) or a folder of images"
        )
    record_uris = [records.get(_stem_key(u)[:2]) for u in images]
    loaded = parallel_map(lambda r: _read_record(r) if r else None, record_uris, workers=workers)
    out = []
    for image, record in zip(images, loaded, strict=True):
        record = record or None
        rid = str(record.get("request_id") or "") if record else ""
        out.append(
            Candidate(
                image=image,
                request_id=rid or _stem_key(image)[1],
                record=record,
                captured_at=str(record.get("time") or "") if record else "",
            )
        )
    return out


def _hash_and_check(candidate: Candidate) -> Candidate:
    from visionops.images import DEFAULT_LIMITS, decode_image

    try:
        data = storage.read_limited(candidate.image, DEFAULT_LIMITS.max_bytes)
    except StorageError as exc:
        candidate.error = f"unreadable: {exc}"
        return candidate
    candidate.sha256 = sha256_hex(data)
    try:
        decode_image(data, target_side=256)  # a usability check: a pixel bomb is drawn small
    except ImageError as exc:
        candidate.error = f"not a usable image: {exc}"
    return candidate


def labeled_hashes(uris: list[str] | tuple[str, ...] | None, *, workers: int = 8) -> set[str]:
    """sha256 of every image in already-labeled data: dataset versions, manifests, labeled batches (CSV with
    ``sha256`` or ``path``), selections and import results (``reviews.csv``)."""
    hashes: set[str] = set()
    for uri in uris or ():
        uri = str(uri)
        frame = None
        csv_uri = uri
        for marker, name in (
            ("dataset.json", "manifest.csv"),
            ("selection.json", "selection.csv"),
            ("import.json", "reviews.csv"),
        ):
            if not uri.lower().endswith(".csv") and storage.exists(storage.join(uri, marker)):
                csv_uri = storage.join(uri, name)
                break
        else:
            if not uri.lower().endswith(".csv"):
                raise DataError(
                    f"--labeled {uri}: not a dataset (dataset.json), a selection (selection.json), an import "
                    "result (import.json) or a CSV; pass one of those"
                )
        frame = read_csv(csv_uri)
        if "sha256" in frame.columns:
            hashes.update(h for h in frame["sha256"] if h)
        elif "path" in frame.columns:
            paths = [resolve_path(p, csv_uri) for p in frame["path"] if p]
            hashes.update(parallel_map(lambda p: sha256_hex(_read_image(p)), paths, workers=workers))
        else:
            raise DataError(
                f"--labeled {csv_uri}: needs a 'sha256' or 'path' column, has {list(frame.columns)}"
            )
    return hashes


def stored_probability(record: dict[str, Any] | None, positive_class: str) -> float | None:
    """The positive-class probability from a capture record, or None where it does not say."""
    if not record:
        return None
    probs = record.get("probs") or record.get("probabilities")
    try:
        if isinstance(probs, dict) and positive_class in probs:
            return float(probs[positive_class])
        if record.get("probability") is not None and positive_class in (
            record.get("positive_class"),
            record.get("label"),
        ):
            return float(record["probability"])
    except (TypeError, ValueError):
        return None
    return None


def _classes_from_records(candidates: list[Candidate]) -> tuple[list[str], str | None]:
    """Class names and the positive class as the stored predictions name them."""
    for c in candidates:
        probs = (c.record or {}).get("probs") or (c.record or {}).get("probabilities")
        if isinstance(probs, dict):
            return [str(k) for k in probs], (c.record or {}).get("positive_class")
    return [], None


def capture_day(candidate: Candidate) -> date | None:
    """The day an image was captured: from its record's time, else its ``<YYYY-MM-DD>/`` folder."""
    if candidate.captured_at:
        try:
            return datetime.fromisoformat(candidate.captured_at.replace("Z", "+00:00")).date()
        except ValueError:
            pass
    folder = _stem_key(candidate.image)[0].rsplit("/", 1)[-1]
    try:
        return datetime.strptime(folder, "%Y-%m-%d").date()
    except ValueError:
        return None


def _score_with_model(candidates: list[Candidate], bundle_uri: str, *, batch_size: int, device: str) -> None:
    from visionops.bundle import load_bundle

    bundle = load_bundle(bundle_uri, device=device)
    probs = bundle.score_uris([c.image for c in candidates], batch_size=batch_size, progress=True)
    for c, row in zip(candidates, probs, strict=True):
        c.probability = float(row[bundle.positive_index])
        c.threshold = bundle.threshold
        c.score_source = "model"
        c.scored_by = bundle.version


def _partition(
    candidates: list[Candidate], done_before: set[str]
) -> tuple[list[Candidate], list[dict[str, str]]]:
    """Eligible images (first copy of each hash, not labeled before, decodable) and the skipped ones."""
    skipped: list[dict[str, str]] = []
    pool: list[Candidate] = []
    first_of: dict[str, Candidate] = {}
    for c in sorted(candidates, key=lambda c: (c.captured_at, c.image)):
        if c.error:
            skipped.append({"image": c.image, "sha256": c.sha256, "reason": c.error})
        elif c.sha256 in first_of:
            reason = f"duplicate of {first_of[c.sha256].image}"
            skipped.append({"image": c.image, "sha256": c.sha256, "reason": reason})
        elif c.sha256 in done_before:
            first_of[c.sha256] = c
            skipped.append({"image": c.image, "sha256": c.sha256, "reason": "already labeled"})
        else:
            first_of[c.sha256] = c
            pool.append(c)
    pool.sort(key=lambda c: c.image)
    return pool, skipped


def _attach_scores(
    pool: list[Candidate], source: str, bundle_uri: str | None, *, batch_size: int, device: str
) -> tuple[list[str], str, dict[str, Any] | None, list[Candidate]]:
    """Give every candidate its positive-class probability and threshold: the stored prediction when it
    came from the bundle in use (or no bundle is given), else the bundle's own score.
    Returns (classes, positive class, bundle metadata or None, the candidates the model scored)."""
    bundle_meta = None
    if bundle_uri:
        from visionops.bundle import read_meta

        bundle_meta = read_meta(bundle_uri)
        classes = list(bundle_meta["classes"])
        positive = bundle_meta.get("positive_class") or classes[-1]
    else:
        classes, named = _classes_from_records(pool)
        positive = named or default_positive_class(classes)

    need_model = []
    for c in pool:
        record = c.record or {}
        same_model = bundle_meta is None or record.get("model_version") == bundle_meta["model_version"]
        p = stored_probability(c.record, positive) if same_model else None
        if p is None:
            need_model.append(c)
            continue
        c.probability, c.score_source, c.scored_by = p, "capture", str(record.get("model_version") or "")
        c.threshold = float(bundle_meta["threshold"] if bundle_meta else record.get("threshold", 0.5))
    if need_model:
        if not bundle_uri:
            raise DataError(
                f"{len(need_model)} images of {source} carry no stored prediction (e.g. {need_model[0].image}); "
                "pass --model BUNDLE to score them"
            )
        log.info("select: scoring %d images with %s", len(need_model), bundle_uri)
        _score_with_model(need_model, bundle_uri, batch_size=batch_size, device=device)
    return classes, positive, bundle_meta, need_model


def _choose(
    pool: list[Candidate], budget: int, random_share: float, seed: int
) -> list[tuple[Candidate, str, float]]:
    """The most uncertain images (selection probability 1), then a uniform random share of the rest (each
    with probability n_random / len(rest)): a stratified design whose probabilities are known exactly."""
    import numpy as np

    budget = min(budget, len(pool))
    n_random = min(budget, math.floor(budget * random_share + 0.5))
    ranked = sorted(
        range(len(pool)), key=lambda i: (abs(pool[i].probability - pool[i].threshold), pool[i].sha256)
    )
    uncertain_idx = ranked[: budget - n_random]
    rest = sorted(set(range(len(pool))) - set(uncertain_idx))
    rng = np.random.default_rng(seed)
    picked = sorted(rng.choice(rest, size=n_random, replace=False).tolist()) if n_random else []
    share = n_random / len(rest) if rest else 1.0
    uncertain = [(pool[i], REASON_UNCERTAIN, 1.0) for i in uncertain_idx]
    return uncertain + [(pool[i], REASON_RANDOM, share) for i in picked]


def select(
    source: str,
    output: str,
    *,
    budget: int,
    bundle_uri: str | None = None,
    random_share: float = 0.2,
    labeled: list[str] | tuple[str, ...] | None = None,
    seed: int = 0,
    days: int | None = None,
    batch_size: int = 64,
    device: str = "cpu",
    workers: int = 8,
    confinement: Confinement = Confinement(),
) -> Selection:
    """Choose up to ``budget`` images of ``source`` for review and write the selection to ``output``.

    ``round(budget * random_share)`` of them are a uniform random sample of the images not taken by
    uncertainty sampling, which takes the images closest to the decision threshold; each row records its
    selection probability (see the module docstring). Duplicates (by sha256) within the source and
    against ``labeled`` (URIs of datasets, labeled batches, selections, import results) are left out.
    ``days`` keeps only images captured in the last ``days`` days (UTC; by record time or date folder).
    """
    if budget < 1:
        raise ConfigError(f"--budget must be at least 1, got {budget}")
    if not 0.0 <= random_share <= 1.0:
        raise ConfigError(f"--random-share must be within [0, 1], got {random_share}")
    candidates = discover(source, workers=workers, confinement=confinement)
    if days:
        since = datetime.now(UTC).date() - timedelta(days=days - 1)
        candidates = [c for c in candidates if (capture_day(c) or date.min) >= since]
        if not candidates:
            raise DataError(f"no images under {source} were captured in the last {days} days (since {since})")
    log.info("select: %d images in %s; hashing and checking them", len(candidates), source)
    candidates = parallel_map(_hash_and_check, candidates, workers=workers)
    done_before = labeled_hashes(labeled, workers=workers)

    pool, skipped = _partition(candidates, done_before)
    classes, positive, bundle_meta, need_model = _attach_scores(
        pool, source, bundle_uri, batch_size=batch_size, device=device
    )

    chosen = _choose(pool, budget, random_share, seed)
    frame = _frame(chosen)
    import pandas as pd

    skipped_frame = pd.DataFrame(skipped, columns=["image", "sha256", "reason"])
    counts = {
        "found": len(candidates),
        "unusable": sum(1 for c in candidates if c.error),
        "duplicates_in_source": sum(1 for s in skipped if s["reason"].startswith("duplicate of")),
        "already_labeled": sum(1 for s in skipped if s["reason"] == "already labeled"),
        "eligible": len(pool),
        "selected": len(frame),
        REASON_UNCERTAIN: int((frame["reason"] == REASON_UNCERTAIN).sum()) if len(frame) else 0,
        REASON_RANDOM: int((frame["reason"] == REASON_RANDOM).sum()) if len(frame) else 0,
        "scored_by_model": len(need_model),
    }
    meta = {
        "kind": "review-selection",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "source": str(source),
        "budget": budget,
        "random_share": random_share,
        "seed": seed,
        "days": days,
        "labeled": [str(u) for u in labeled or ()],
        "bundle_uri": bundle_uri,
        "model_version": bundle_meta["model_version"] if bundle_meta else None,
        "classes": classes,
        "positive_class": positive,
        "counts": counts,
        "prelabel": None,
    }
    log.info("select: %s", ", ".join(f"{k}={v}" for k, v in counts.items()))
    return write_selection(frame, meta, output, skipped=skipped_frame)


def _frame(chosen: list[tuple[Candidate, str, float]]):
    import pandas as pd

    rows, used = [], set()
    for c, reason, probability in chosen:
        rid = c.request_id if c.request_id not in used else f"{c.request_id}-{c.sha256[:8]}"
        used.add(rid)
        rows.append(
            {
                "request_id": rid,
                "image": c.image,
                "sha256": c.sha256,
                "captured_at": c.captured_at,
                "reason": reason,
                "selection_probability": round(probability, 9),
                "score_source": c.score_source,
                "probability": round(float(c.probability), 6),
                "threshold": c.threshold,
                "distance": round(abs(float(c.probability) - c.threshold), 6),
                "scored_by": c.scored_by,
            }
        )
    columns = [
        "request_id",
        "image",
        "sha256",
        "captured_at",
        "reason",
        "selection_probability",
        "score_source",
        "probability",
        "threshold",
        "distance",
        "scored_by",
    ]
    return pd.DataFrame(rows, columns=columns)


__all__ = ["Candidate", "discover", "labeled_hashes", "load_selection", "select", "stored_probability"]
