"""The drift reference profile: feature rows of a dataset split, stored in the model bundle's drift slot.

:func:`attach_reference` (called at the end of training, and by ``visionops drift reference``) writes::

    drift/projection.safetensors   mean (D,) and components (D, k): PCA of the penultimate features
    drift/reference.parquet        one feature row per reference image (see visionops.features)

and then records them in ``bundle.json`` under ``"drift"`` (last, so a reader never sees half a profile).

The rows carry the bundle's decision rule as it is when the profile is made: evaluation computes the profile
of the gated bundle again, with its final threshold, so that ``predicted_class`` and ``confidence`` match what
serving answers. With ``prevalence`` the rows are subsampled (seeded, by true label) so that the positive
class has the production share: a 50/50 reference against few-percent traffic flags every window.
"""

from __future__ import annotations

import io
import logging
import time
from pathlib import Path
from typing import Any

from visionops import storage
from visionops.errors import BundleError, DataError

log = logging.getLogger(__name__)

REFERENCE_FILE = "drift/reference.parquet"
PROJECTION_FILE = "drift/projection.safetensors"
DEFAULT_COMPONENTS = 6
BATCH = 64


def _image_uri(path: str, dataset_uri: str) -> str:
    """Manifest paths are URIs; a relative one is taken relative to the dataset."""
    if storage.is_remote(path) or Path(path).is_absolute():
        return path
    return storage.join(dataset_uri, path)


def fit_projection(embeddings, k: int = DEFAULT_COMPONENTS) -> tuple[Any, Any]:
    """PCA of embeddings (N, D): ``(mean (D,), components (D, k'))`` with k' = min(k, D, N - 1).

    Components are scaled by 1/sqrt(eigenvalue), so each projected column has unit variance on the
    reference (the drift scores are normalised anyway; this keeps the numbers readable).
    """
    import numpy as np

    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise DataError(f"need at least 2 embeddings to fit a projection, got shape {x.shape}")
    mean = x.mean(axis=0)
    _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
    k = max(1, min(k, x.shape[1], x.shape[0] - 1))
    scale = s[:k] / np.sqrt(x.shape[0] - 1)
    scale = np.where(scale > 1e-8, scale, 1.0)
    # contiguous: safetensors writes the raw buffer, a transposed view would be stored scrambled
    components = np.ascontiguousarray((vt[:k].T / scale).astype(np.float32))
    return np.ascontiguousarray(mean.astype(np.float32)), components


def compute_reference(bundle, uris: list[str], *, k: int = DEFAULT_COMPONENTS, progress: bool = True):
    """Feature rows (DataFrame) of the images at ``uris`` and the projection fitted on their embeddings.

    Only one batch of images is in memory at a time (:meth:`Bundle.score_uris`); the embedding columns are
    added once the projection has been fitted on every embedding.
    """
    import numpy as np
    import pandas as pd

    from visionops.features import feature_rows

    rows: list[dict] = []

    def add_rows(images, probs, _embeddings) -> None:
        # no projection yet: rows without emb_*, made by the code serving uses
        rows.extend(feature_rows(bundle, images, probs, projection=None))

    _, embeddings = bundle.score_uris(
        uris,
        batch_size=BATCH,
        with_embeddings=True,
        progress=progress,
        desc="reference features",
        on_batch=add_rows,
    )
    mean, components = fit_projection(embeddings, k)
    frame = pd.DataFrame(rows)
    projected = (embeddings - mean) @ components
    for j in range(projected.shape[1]):
        frame[f"emb_{j}"] = projected[:, j].astype(np.float64)
    return frame, mean, components


def _write(bundle_uri: str, name: str, data: bytes) -> None:
    storage.write_bytes(storage.join(bundle_uri, name), data)


def attach_reference(
    bundle_uri: str,
    dataset_uri: str,
    *,
    split: str = "val",
    max_rows: int = 2000,
    components: int = DEFAULT_COMPONENTS,
    seed: int = 0,
    progress: bool = True,
    prevalence: float | None = None,
) -> dict:
    """Compute the reference profile of ``split`` of a dataset with the bundle's model and store it in the
    bundle's drift slot. Returns the ``drift`` entry written to ``bundle.json``.

    At most ``max_rows`` images are used (a seeded random sample). Files go to ``drift/`` in the bundle
    (local or s3); ``bundle.json`` is updated last.
    """
    from safetensors.numpy import save as save_safetensors

    from visionops.bundle import load_bundle, update_meta
    from visionops.data.manifest import load_dataset

    started = time.perf_counter()
    dataset = load_dataset(dataset_uri)
    frame = dataset.split(split)
    if frame.empty:
        raise DataError(
            f"dataset {dataset_uri} has no {split!r} images to build a drift reference from; "
            "pass another split (e.g. split='train')"
        )
    if max_rows < 2:
        raise DataError(f"max_rows must be at least 2, got {max_rows}")
    if len(frame) > max_rows:
        frame = frame.sample(n=max_rows, random_state=seed).reset_index(drop=True)
    bundle = load_bundle(bundle_uri)
    uris = [_image_uri(p, dataset_uri) for p in frame["path"]]
    log.info(
        "drift reference: %d %s images of %s with model %s", len(uris), split, dataset_uri, bundle.version
    )
    ref, mean, comps = compute_reference(bundle, uris, k=components, progress=progress)
    ref["label"] = frame["label"].astype(str).to_numpy()
    if prevalence is not None:
        ref = reweight(ref, bundle.positive_class, prevalence, seed=seed)
    calibration, null = calibrate_reference(ref, seed=seed)
    buf = io.BytesIO()
    ref.to_parquet(buf, index=False)
    _write(bundle_uri, PROJECTION_FILE, save_safetensors({"mean": mean, "components": comps}))
    _write(bundle_uri, REFERENCE_FILE, buf.getvalue())
    null_buf = io.BytesIO()
    null.to_parquet(null_buf, index=False)
    _write(bundle_uri, calibration["file"], null_buf.getvalue())
    shares = ref["predicted_class"].value_counts(normalize=True).sort_index()
    entry = {
        "reference": REFERENCE_FILE,
        "projection": PROJECTION_FILE,
        "rows": len(ref),
        "split": split,
        "dataset_uri": str(dataset_uri),
        "dataset_version": dataset.version,
        "model_version": bundle.version,
        "embedding_dim": int(comps.shape[1]),
        "penultimate_dim": int(comps.shape[0]),
        "columns": list(ref.columns),
        "class_shares": {str(k): round(float(v), 4) for k, v in shares.items()},
        "label_shares": {
            str(k): round(float(v), 4)
            for k, v in ref["label"].value_counts(normalize=True).sort_index().items()
        },
        "prevalence": prevalence,
        "threshold": bundle.threshold,
        "calibration": calibration,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    update_meta(bundle_uri, drift=entry)
    log.info("drift reference written to %s/drift in %.1fs", bundle_uri, time.perf_counter() - started)
    return entry


def calibrate_reference(ref, *, seed: int = 0):
    """The reference's drift thresholds per window size (:mod:`visionops.drift.calibration`): the JSON entry
    and the null scores."""
    from visionops.drift.calibration import calibrate
    from visionops.drift.detect import DriftPolicy, monitored_columns

    columns = monitored_columns(ref.columns, DriftPolicy())
    varying = {c: k for c, k in columns.items() if ref[c].astype(str).nunique() > 1}
    return calibrate(ref, varying, seed=seed)


def reweight(ref, positive_class: str, prevalence: float, *, seed: int = 0):
    """The largest seeded subsample of ``ref`` (rows with a ``label``) whose positive share is ``prevalence``."""
    if not 0.0 < prevalence < 1.0:
        raise DataError(f"prevalence must be in (0, 1), got {prevalence}")
    is_pos = (ref["label"] == positive_class).to_numpy()
    n_pos, n_neg = int(is_pos.sum()), int((~is_pos).sum())
    if n_pos == 0 or n_neg == 0:
        raise DataError(
            f"cannot reweight the drift reference to prevalence {prevalence}: it has {n_pos} images of "
            f"{positive_class!r} and {n_neg} others"
        )
    total = min(n_pos / prevalence, n_neg / (1.0 - prevalence))
    keep_pos = max(1, round(total * prevalence))
    keep_neg = max(1, round(total * (1.0 - prevalence)))
    pos_rows = ref[is_pos].sample(n=min(keep_pos, n_pos), random_state=seed)
    neg_rows = ref[~is_pos].sample(n=min(keep_neg, n_neg), random_state=seed)
    return pd_concat([pos_rows, neg_rows]).sample(frac=1.0, random_state=seed).reset_index(drop=True)


def pd_concat(frames):
    import pandas as pd

    return pd.concat(frames, ignore_index=True)


def read_reference(bundle_uri: str, meta: dict):
    """The reference feature rows of the bundle at ``bundle_uri`` straight from storage (no model loaded)."""
    import pandas as pd

    name = (meta.get("drift") or {}).get("reference")
    if not name:
        raise BundleError(
            f"model bundle at {bundle_uri} has no drift reference; compute one with "
            f"`visionops drift reference --model {bundle_uri} --data DATASET_URI`"
        )
    data = storage.read_bytes(storage.join(bundle_uri, name))
    try:
        return (
            pd.read_parquet(io.BytesIO(data)) if name.endswith(".parquet") else pd.read_csv(io.BytesIO(data))
        )
    except Exception as exc:
        raise BundleError(f"model bundle at {bundle_uri}: cannot read drift reference {name}: {exc}") from exc


def load_reference(bundle):
    """The reference feature rows (DataFrame) of a loaded bundle; a clear error when it has none."""
    import pandas as pd

    entry = bundle.meta.get("drift") or {}
    name = entry.get("reference")
    if not name:
        raise BundleError(
            f"model bundle at {bundle.uri} has no drift reference; compute one with "
            f"`visionops drift reference --model {bundle.uri} --data DATASET_URI`"
        )
    path = bundle.file(name)
    try:
        return pd.read_parquet(path) if str(path).endswith(".parquet") else pd.read_csv(path)
    except Exception as exc:
        raise BundleError(f"model bundle at {bundle.uri}: cannot read drift reference {name}: {exc}") from exc
