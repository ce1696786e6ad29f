"""The dataset manifest: the one description of a dataset version that every later stage reads.

A dataset is a directory (local or ``s3://``)::

    manifest.csv     one row per usable image (columns below + any metadata columns)
    quarantine.csv   files that were refused, with the reason
    dataset.json     metadata, written LAST (its presence means the dataset is complete)

``manifest.csv`` columns: ``path`` (URI the image bytes are read from), ``label`` (class name), ``sha256``,
``width``, ``height``, ``split`` (train/val/test), ``group`` (may be empty), then metadata columns.
The ``test`` split is the golden set; ``dataset.json`` names its version (``golden_version``) and the
dataset's content version (``version``); every metric later names the golden version it was computed on.

A version cannot lie: ``dataset.json`` also records the sha256 of ``manifest.csv``, and :func:`load_dataset`
recomputes both the file hash and the content version from the manifest it read, refusing a mismatch (e.g. an
overwrite interrupted before the marker, by a writer that did not remove it first).
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from visionops import storage
from visionops.errors import DataError
from visionops.reports import neutralise_frame, restore_frame

MANIFEST = "manifest.csv"
QUARANTINE = "quarantine.csv"
MARKER = "dataset.json"
CORE_COLUMNS = ("path", "label", "sha256", "width", "height", "split", "group")
#: Per-file facts written by ingestion (original URI, PIL mode, format, byte size): not metadata to slice on.
INFO_COLUMNS = ("source", "mode", "format", "bytes")
SPLITS = ("train", "val", "test")


def content_version(frame, prefix: str) -> str:
    """A version id derived from content: sorted (sha256, label, split) rows; paths don't matter."""
    rows = sorted(zip(frame["sha256"], frame["label"], frame["split"], strict=True))
    digest = hashlib.sha256("\n".join(",".join(map(str, r)) for r in rows).encode())
    return f"{prefix}-{digest.hexdigest()[:12]}"


def golden_version(frame) -> str:
    """Version of the golden set = the content of the test split."""
    return content_version(frame[frame["split"] == "test"], "gs")


@dataclass
class Dataset:
    """A loaded dataset version."""

    uri: str
    frame: Any  # pandas.DataFrame
    meta: dict[str, Any]

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])

    @property
    def version(self) -> str:
        return self.meta["version"]

    @property
    def golden_version(self) -> str:
        return self.meta["golden_version"]

    @property
    def metadata_columns(self) -> list[str]:
        return [c for c in self.frame.columns if c not in CORE_COLUMNS and c not in INFO_COLUMNS]

    def split(self, name: str):
        if name not in SPLITS:
            raise DataError(f"unknown split {name!r}; valid: {', '.join(SPLITS)}")
        return self.frame[self.frame["split"] == name].reset_index(drop=True)


def read_manifest_frame(uri: str, data: bytes | None = None):
    """Read a manifest CSV (the dataset directory or the CSV itself; ``data``: its bytes, when already read)
    into a DataFrame."""
    import pandas as pd

    csv_uri = uri if str(uri).endswith(".csv") else storage.join(uri, MANIFEST)
    try:
        raw = storage.read_bytes(csv_uri) if data is None else data
        frame = restore_frame(pd.read_csv(io.BytesIO(raw), dtype={"group": str}, keep_default_na=False))
    except DataError:
        raise
    except Exception as exc:
        if exc.__class__.__name__ == "StorageError":
            raise
        raise DataError(f"cannot parse manifest {csv_uri}: {exc}") from exc
    missing = [c for c in CORE_COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(f"manifest {csv_uri} lacks columns {missing}; a manifest has {list(CORE_COLUMNS)}")
    return frame


def load_dataset(uri: str) -> Dataset:
    """Load a complete dataset version: refuses one whose dataset.json is missing, and one whose
    manifest.csv is not the content the marker's version names."""
    storage.require_marker(uri, MARKER, "dataset")
    try:
        meta = json.loads(storage.read_text(storage.join(uri, MARKER)))
    except json.JSONDecodeError as exc:
        raise DataError(f"dataset at {uri}: {MARKER} is not valid JSON ({exc})") from exc
    raw = storage.read_bytes(storage.join(uri, MANIFEST))
    frame = read_manifest_frame(uri, data=raw)
    if frame.empty:
        raise DataError(f"dataset at {uri} has no images")
    verify_content(uri, meta, raw)
    return Dataset(uri=str(uri), frame=frame, meta=meta)


def verify_content(uri: str, meta: dict[str, Any], raw: bytes) -> None:
    """Refuse a manifest that is not the one ``dataset.json`` names (its sha256 and its content version)."""
    recorded = meta.get("manifest_sha256")
    actual = hashlib.sha256(raw).hexdigest()
    if recorded and recorded != actual:
        raise DataError(
            f"dataset at {uri}: {MANIFEST} has sha256 {actual[:12]} but {MARKER} (version "
            f"{meta.get('version')}) records {recorded[:12]}: the manifest was replaced after the marker was "
            "written (an interrupted overwrite?). Re-publish the dataset"
        )
    import pandas as pd

    # as text, as write_dataset saw them (a label "007" must not come back as the number 7)
    columns = pd.read_csv(
        io.BytesIO(raw), usecols=["sha256", "label", "split"], dtype=str, keep_default_na=False
    )
    version = content_version(columns, "ds")
    if meta.get("version") and version != meta["version"]:
        raise DataError(
            f"dataset at {uri}: {MARKER} names version {meta['version']} but {MANIFEST} holds {version}: "
            "the marker and the manifest belong to different versions (an interrupted overwrite?). "
            "Re-publish the dataset"
        )


def write_dataset(
    frame, meta: dict[str, Any], uri: str, *, quarantine=None, extra_files: dict[str, Path] | None = None
) -> Dataset:
    """Write a dataset version atomically; fills ``version``, ``golden_version`` and ``classes`` in meta."""
    import shutil
    import tempfile

    import pandas as pd

    meta = dict(meta)
    meta["version"] = content_version(frame, "ds")
    meta["golden_version"] = golden_version(frame)
    meta.setdefault("classes", sorted(frame["label"].unique()))
    meta["counts"] = {
        split: {
            str(k): int(v)
            for k, v in frame[frame["split"] == split]["label"].value_counts().sort_index().items()
        }
        for split in SPLITS
    }
    with tempfile.TemporaryDirectory(prefix="visionops-dataset-") as tmp:
        root = Path(tmp)
        # spreadsheets run cells that start with = + - @: neutralised, and restored by read_manifest_frame
        neutralise_frame(frame).to_csv(root / MANIFEST, index=False)
        meta["manifest_sha256"] = hashlib.sha256((root / MANIFEST).read_bytes()).hexdigest()
        q = quarantine if quarantine is not None else pd.DataFrame(columns=["path", "reason"])
        neutralise_frame(q).to_csv(root / QUARANTINE, index=False)
        for name, src in (extra_files or {}).items():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, root / name)
        (root / MARKER).write_text(json.dumps(meta, indent=2, sort_keys=True))
        storage.publish_dir(root, uri, MARKER)
    return Dataset(uri=str(uri), frame=frame, meta=meta)
