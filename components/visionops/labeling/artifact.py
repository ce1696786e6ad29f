"""The review selection: the artifact that select, prelabel, export and import share.

A selection is a directory (local or ``s3://``)::

    selection.csv    one row per image sent for review (columns below)
    skipped.csv      source files left out, with the reason (unreadable, duplicate, already labeled)
    selection.json   metadata, written LAST (its presence means the selection is complete)

``selection.csv`` columns: ``request_id`` (unique key of the review item), ``image`` (URI of the bytes),
``sha256``, ``captured_at``, ``reason`` (``uncertain`` or ``random``), ``score_source`` (``capture``: the
prediction stored by serving; ``model``: scored by the bundle at selection time), ``probability`` (of the
positive class), ``threshold``, ``distance`` (``|probability - threshold|``), ``scored_by`` (model version).
``label prelabel`` adds ``predicted_label``, ``confidence`` (probability of the predicted label),
``prelabel_probability`` (of the positive class), ``probs`` (JSON) and ``prelabel_model``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import posixpath
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from visionops import storage
from visionops.errors import DataError

SELECTION_CSV = "selection.csv"
SKIPPED_CSV = "skipped.csv"
MARKER = "selection.json"
SELECTION_FORMAT = 1
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
PRELABEL_COLUMNS = ("predicted_label", "confidence", "prelabel_probability", "probs", "prelabel_model")

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class Selection:
    """A loaded review selection."""

    uri: str
    frame: Any  # pandas.DataFrame
    meta: dict[str, Any]

    @property
    def prelabeled(self) -> bool:
        return self.meta.get("prelabel") is not None and "predicted_label" in self.frame.columns

    @property
    def classes(self) -> list[str]:
        return list(self.meta.get("classes") or [])

    @property
    def positive_class(self) -> str | None:
        return self.meta.get("positive_class")

    def require_prelabels(self) -> None:
        """Raise a clear error unless ``label prelabel`` ran on this selection."""
        if not self.prelabeled or not self.classes:
            raise DataError(
                f"selection at {self.uri} has no pre-labels; run "
                f"`visionops label prelabel {self.uri} --model BUNDLE` first"
            )


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def parallel_map(fn: Callable[[T], R], items: Iterable[T], *, workers: int = 8) -> list[R]:
    """``[fn(x) for x in items]`` on a thread pool (object storage reads are I/O bound); order kept."""
    items = list(items)
    if workers <= 1 or len(items) <= 1:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(fn, items))


def read_csv(uri: str):
    """A CSV from a local path or ``s3://`` URI as a DataFrame of strings (empty cells stay '')."""
    import pandas as pd

    try:
        return pd.read_csv(io.BytesIO(storage.read_bytes(uri)), dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        return pd.DataFrame()
    except (ValueError, pd.errors.ParserError) as exc:
        raise DataError(f"cannot parse CSV {uri}: {exc}") from exc


def csv_bytes(frame) -> bytes:
    buf = io.StringIO()
    frame.to_csv(buf, index=False)
    return buf.getvalue().encode("utf-8")


def resolve_path(path: str, base_uri: str) -> str:
    """A path from a CSV: absolute URIs/paths as they are, relative ones against the CSV's folder."""
    path = str(path).strip()
    if storage.is_remote(path) or Path(path).is_absolute():
        return path
    base = str(base_uri)
    if storage.is_remote(base):
        bucket, key = storage.split_s3(base)
        return f"s3://{bucket}/" + posixpath.normpath(posixpath.join(posixpath.dirname(key), path)).lstrip(
            "/"
        )
    return os.path.normpath(os.path.join(Path(base).resolve().parent, path))


def write_selection(frame, meta: dict[str, Any], uri: str, *, skipped=None) -> Selection:
    """Write (or rewrite) a selection at ``uri``: the CSVs first, ``selection.json`` last."""
    meta = {**meta, "format": SELECTION_FORMAT, "count": len(frame)}
    storage.write_bytes(storage.join(uri, SELECTION_CSV), csv_bytes(frame))
    if skipped is not None:
        storage.write_bytes(storage.join(uri, SKIPPED_CSV), csv_bytes(skipped))
    storage.write_text(storage.join(uri, MARKER), json.dumps(meta, indent=2, sort_keys=True, default=str))
    return Selection(uri=str(uri), frame=frame, meta=meta)


def load_selection(uri: str) -> Selection:
    """Load a complete selection (refuses one whose selection.json is missing)."""
    uri = str(uri).rstrip("/") if storage.is_remote(str(uri)) else str(uri)
    storage.require_marker(uri, MARKER, "review selection")
    try:
        meta = json.loads(storage.read_text(storage.join(uri, MARKER)))
    except json.JSONDecodeError as exc:
        raise DataError(f"review selection at {uri}: {MARKER} is not valid JSON ({exc})") from exc
    frame = read_csv(storage.join(uri, SELECTION_CSV))
    for column in ("request_id", "image", "sha256"):
        if column not in frame.columns:
            raise DataError(f"review selection at {uri}: {SELECTION_CSV} lacks column {column!r}")
    return Selection(uri=uri, frame=frame, meta=meta)
