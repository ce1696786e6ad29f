"""The model bundle: the one artifact that carries a model and everything needed to use it.

A bundle is a directory (local or ``s3://``)::

    bundle.json              metadata (written LAST: its presence means the bundle is complete)
    model.safetensors        weights (safetensors: loading never unpickles code)
    drift/...                drift reference profile and embedding projection (filled by visionops.drift)
    reports/...              optional: training curves, evaluation reports

``bundle.json`` holds: format, model_version, architecture, classes, positive_class, preprocess (spec),
threshold (+ how it was chosen), config (resolved training config), lineage (dataset version, golden set
version, code version, torch/torchvision versions, device), history (per-epoch metrics), drift (slot) and
evaluation (summary, filled by the gate).

Serving, drift and evaluation rebuild everything from the bundle via :func:`load_bundle`; never from constants.

A version cannot lie: ``bundle.json`` records the sha256 of the weights (``weights_sha256``) and
:func:`load_bundle` checks the weights it loads against it and against the model version the marker names,
refusing a bundle whose marker belongs to other weights (an overwrite interrupted before the marker).
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from visionops import storage
from visionops.errors import BundleError, ConfigError, DataError, VisionOpsError
from visionops.policy import default_positive_class
from visionops.preprocess import PreprocessSpec

BUNDLE_FORMAT = 1
MARKER = "bundle.json"
WEIGHTS = "model.safetensors"
#: Images per forward pass when scoring many images (see :meth:`Bundle.score_uris`).
DEFAULT_BATCH = 64
REQUIRED_KEYS = ("format", "model_version", "architecture", "classes", "preprocess", "threshold")


def model_version_of(weights: bytes, meta: dict) -> str:
    """A content-derived model version: the same weights and labels give the same id."""
    digest = hashlib.sha256(weights)
    digest.update(json.dumps({"arch": meta.get("architecture"), "classes": meta.get("classes")}).encode())
    return f"m-{digest.hexdigest()[:12]}"


def rule_version_of(meta: dict[str, Any]) -> str:
    """The version of a gated bundle: its weights' version and its decision rule (threshold, positive class).

    Two bundles with the same weights but another threshold answer differently, so they are different
    versions; every record that names a version then means the same answers. The gate's verdicts on ONNX
    artifacts (``runtime_evaluations``: which file, its threshold, blessed or not) decide what serving may
    answer with, so they are part of the rule too."""
    rule: dict[str, Any] = {
        "weights": meta.get("weights_version") or meta["model_version"],
        "threshold": float(meta["threshold"]),
        "positive_class": meta.get("positive_class"),
        "classes": meta.get("classes"),
    }
    runtimes = meta.get("runtime_evaluations") or {}
    if runtimes:
        rule["runtimes"] = {
            name: [v.get("artifact_sha256"), v.get("threshold"), (v.get("evaluation") or {}).get("blessed")]
            for name, v in sorted(runtimes.items())
        }
    digest = hashlib.sha256(json.dumps(rule, sort_keys=True).encode())
    return f"m-{digest.hexdigest()[:12]}"


def copy_bundle(uri: str, local_dir: str | Path) -> Path:
    """Every file of the bundle at ``uri`` copied into ``local_dir`` (which must not exist yet, for local
    sources): the starting point of a derived bundle, published under a new URI with
    :func:`visionops.storage.publish_dir`. The source is never modified."""
    read_meta(uri)
    local_dir = Path(local_dir)
    if storage.is_remote(uri):
        storage.download_dir(uri, local_dir)
    else:
        shutil.copytree(uri, local_dir)
    return local_dir


def save_bundle(model, meta: dict[str, Any], uri: str, *, extra_files: dict[str, Path] | None = None) -> str:
    """Write ``model`` (its state dict, as safetensors) and ``meta`` as a bundle at ``uri``.

    ``meta`` needs at least architecture, classes and preprocess (a dict or PreprocessSpec); threshold
    defaults to 0.5 and positive_class to :func:`visionops.policy.default_positive_class` of the classes
    (the flagship positive class when present, else the last class). ``extra_files``
    maps relative names inside the bundle to local files (reports, drift profile...). Returns ``uri``.
    The write is atomic: readers never see a half-written bundle.
    """
    from safetensors.torch import save as save_safetensors

    meta = dict(meta)
    if isinstance(meta.get("preprocess"), PreprocessSpec):
        meta["preprocess"] = meta["preprocess"].to_dict()
    for key in ("architecture", "classes", "preprocess"):
        if key not in meta:
            raise BundleError(f"cannot save bundle: metadata lacks {key!r}")
    classes = list(meta["classes"])
    meta.setdefault("threshold", 0.5)
    meta.setdefault("positive_class", default_positive_class(classes))
    meta.setdefault("drift", None)
    meta.setdefault("evaluation", None)
    meta.setdefault("history", [])
    meta["format"] = BUNDLE_FORMAT
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    weights = save_safetensors(state)
    meta["model_version"] = model_version_of(weights, meta)
    meta["weights_sha256"] = hashlib.sha256(weights).hexdigest()
    with tempfile.TemporaryDirectory(prefix="visionops-bundle-") as tmp:
        root = Path(tmp)
        (root / WEIGHTS).write_bytes(weights)
        for name, src in (extra_files or {}).items():
            dst = root / name
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
        (root / MARKER).write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))
        return storage.publish_dir(root, uri, MARKER)


def read_meta(uri: str) -> dict[str, Any]:
    """The bundle's metadata, checked for completeness."""
    storage.require_marker(uri, MARKER, "model bundle")
    try:
        meta = json.loads(storage.read_text(storage.join(uri, MARKER)))
    except json.JSONDecodeError as exc:
        raise BundleError(f"model bundle at {uri}: {MARKER} is not valid JSON ({exc})") from exc
    missing = [k for k in REQUIRED_KEYS if k not in meta]
    if missing:
        raise BundleError(f"model bundle at {uri} is incomplete: {MARKER} lacks {missing}")
    if meta["format"] != BUNDLE_FORMAT:
        raise BundleError(
            f"model bundle at {uri} has format {meta['format']}, this version reads {BUNDLE_FORMAT}"
        )
    validate_meta(uri, meta)
    return meta


def _check_threshold(meta: dict[str, Any]) -> str | None:
    value = meta["threshold"]
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"must be a number, got {value!r}"
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        return f"must be a finite number in [0, 1], got {value!r}"
    return None


def _check_classes(meta: dict[str, Any]) -> str | None:
    classes = meta["classes"]
    if not isinstance(classes, list) or len(classes) < 2:
        return f"must be a list of at least two class names, got {classes!r:.120}"
    if not all(isinstance(c, str) and c for c in classes):
        return f"must hold non-empty strings, got {classes!r:.120}"
    if len(set(classes)) != len(classes):
        return f"has duplicates: {classes!r:.120}"
    return None


def _check_positive_class(meta: dict[str, Any]) -> str | None:
    positive = meta.get("positive_class")
    if positive is not None and positive not in meta["classes"]:
        return f"{positive!r:.80} is not one of the classes {meta['classes']!r:.120}"
    return None


def _check_preprocess(meta: dict[str, Any]) -> str | None:
    spec = meta["preprocess"]
    if not isinstance(spec, dict):
        return f"must be a mapping, got {spec!r:.120}"
    for key in ("image_size", "resize_size"):
        value = spec.get(key, 8)
        if isinstance(value, bool) or not isinstance(value, int) or not 8 <= value <= 4096:
            return f"{key} must be an integer in [8, 4096], got {value!r:.80}"
    try:
        PreprocessSpec.from_dict(spec)
    except (ConfigError, TypeError, ValueError) as exc:
        return str(exc)
    return None


#: Load-time checks of ``bundle.json``, as (field, check): a check returns what is wrong, or None. A bundle
#: that fails one is refused on load, so that serving fails fast instead of serving nonsense.
META_CHECKS: tuple[tuple[str, Callable[[dict[str, Any]], str | None]], ...] = (
    ("classes", _check_classes),
    ("positive_class", _check_positive_class),
    ("threshold", _check_threshold),
    ("preprocess", _check_preprocess),
)


def validate_meta(uri: str, meta: dict[str, Any]) -> None:
    """Refuse metadata no model can be served with (:class:`BundleError` naming the field)."""
    for name, check in META_CHECKS:
        problem = check(meta)
        if problem:
            raise BundleError(f"model bundle at {uri}: {MARKER} field {name!r} {problem}")


def update_meta(uri: str, **changes: Any) -> dict[str, Any]:
    """Rewrite selected metadata fields of a bundle that is being built (not yet published: a published
    bundle is never rewritten; evaluation publishes a new version instead). Weights are untouched."""
    meta = read_meta(uri)
    meta.update(changes)
    storage.write_text(storage.join(uri, MARKER), json.dumps(meta, indent=2, sort_keys=True, default=str))
    return meta


def decide_indices(probs, positive_index: int, threshold: float):
    """The decision rule, in one place: the positive class when its probability reaches the threshold,
    otherwise the most probable other class. ``probs`` is (N, C); returns class indices (N,)."""
    import numpy as np

    probs = np.asarray(probs, dtype=float)
    others = probs.copy()
    others[:, positive_index] = -1.0
    return np.where(probs[:, positive_index] >= threshold, positive_index, others.argmax(axis=1))


@dataclass
class Bundle:
    """A loaded bundle: the model in eval mode plus everything needed to use it."""

    uri: str
    meta: dict[str, Any]
    model: Any
    local_dir: Path | None = None
    _transform: Any = field(default=None, repr=False)

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])

    @property
    def positive_class(self) -> str:
        return self.meta.get("positive_class") or self.classes[-1]

    @property
    def positive_index(self) -> int:
        return self.classes.index(self.positive_class)

    @property
    def threshold(self) -> float:
        return float(self.meta["threshold"])

    @property
    def version(self) -> str:
        return self.meta["model_version"]

    @property
    def architecture(self) -> str:
        return self.meta["architecture"]

    @property
    def preprocess(self) -> PreprocessSpec:
        return PreprocessSpec.from_dict(self.meta["preprocess"])

    @property
    def transform(self):
        """The evaluation/serving transform, rebuilt from the bundle's spec."""
        if self._transform is None:
            from visionops.preprocess import build_transform

            self._transform = build_transform(self.preprocess, train=False)
        return self._transform

    def file(self, name: str) -> Path:
        """A file stored inside the bundle (e.g. ``drift/reference.parquet``), as a local path."""
        if self.local_dir is None or not (self.local_dir / name).exists():
            raise BundleError(f"model bundle at {self.uri} has no file {name!r}")
        return self.local_dir / name

    def to_tensor(self, images) -> Any:
        """Stack PIL images into a batch tensor with the bundle's transform."""
        import torch

        return torch.stack([self.transform(img) for img in images])

    def predict_proba(self, batch) -> Any:
        """Class probabilities (N, C) as a numpy array for a batch tensor or a list of PIL images."""
        return self.forward(batch)[0]

    def forward(self, batch, *, with_embeddings: bool = False) -> tuple[Any, Any]:
        """One forward pass: ``(probs (N, C), embeddings (N, D) or None)`` as float32 numpy arrays.

        ``batch`` is a tensor made with :meth:`to_tensor` or a list of PIL images; embeddings (asked for with
        ``with_embeddings``) are the inputs of the classification head, taken from the same pass.
        """
        import torch

        if isinstance(batch, list | tuple):
            batch = self.to_tensor(batch)
        device = next(self.model.parameters()).device
        with torch.inference_mode():
            if with_embeddings:
                from visionops.models import penultimate

                emb, logits = penultimate(self.model, self.architecture)(batch.to(device))
                emb = emb.float().cpu().numpy().astype("float32")
            else:
                emb, logits = None, self.model(batch.to(device))
            probs = torch.softmax(logits.float(), dim=1).cpu().numpy().astype("float32")
        return probs, emb

    def score_images(
        self,
        images: list,
        *,
        batch_size: int = DEFAULT_BATCH,
        with_embeddings: bool = False,
        on_batch: Callable[[list, Any, Any], None] | None = None,
    ) -> Any:
        """Probabilities (N, C) of decoded PIL images, in batches of ``batch_size`` with the bundle's own
        preprocessing; ``(probs, embeddings (N, D))`` when ``with_embeddings``. See :meth:`score_uris`."""
        return self._score(_chunks(images, batch_size), len(images), with_embeddings, on_batch)

    def score_uris(
        self,
        uris: list[str],
        *,
        batch_size: int = DEFAULT_BATCH,
        workers: int = 8,
        with_embeddings: bool = False,
        progress: bool = False,
        desc: str = "scoring",
        on_batch: Callable[[list, Any, Any], None] | None = None,
    ) -> Any:
        """Probabilities (N, C) of the images at ``uris`` (local paths or ``s3://``), in input order.

        The one batch-scoring loop of the library (evaluation, pre-labeling, behavioural tests and the drift
        reference use it): images are read and decoded on ``workers`` threads (object storage reads are I/O
        bound), one batch of ``batch_size`` at a time, so only one batch is in memory; preprocessing is the
        bundle's own. With ``with_embeddings`` returns ``(probs, embeddings (N, D))`` from the same forward
        pass. ``on_batch(images, probs, embeddings)`` sees each batch's decoded images before they are freed
        (the drift reference computes image statistics there). An unreadable image raises :class:`DataError`
        naming it.
        """
        from tqdm import tqdm

        chunks = list(_chunks(uris, batch_size))
        bar = tqdm(chunks, desc=desc, unit="batch", leave=False, disable=not progress or len(chunks) < 2)
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            batches = (list(pool.map(read_image, chunk)) for chunk in bar)
            return self._score(batches, len(uris), with_embeddings, on_batch)

    def _score(self, batches, n: int, with_embeddings: bool, on_batch) -> Any:
        """Forward every batch of images; concatenated probs (and embeddings when asked)."""
        import numpy as np

        probs, embs = [], []
        for images in batches:
            p, e = self.forward(images, with_embeddings=with_embeddings)
            if on_batch is not None:
                on_batch(images, p, e)
            probs.append(p)
            embs.append(e)
        probs = np.concatenate(probs) if n else np.zeros((0, len(self.classes)), dtype=np.float32)
        if not with_embeddings:
            return probs
        return probs, (np.concatenate(embs) if n else np.zeros((0, 0), dtype=np.float32))

    def decide(self, probs) -> list[str]:
        """Labels from probabilities with the bundle's decision rule.

        The positive class is predicted when its probability reaches the threshold; otherwise the most
        probable other class. (With two classes and threshold 0.5 this is argmax.)
        """
        idx = decide_indices(probs, self.positive_index, self.threshold)
        return [self.classes[i] for i in idx]


def read_image(uri: str):
    """The decoded RGB image at ``uri`` (local path or ``s3://``); :class:`DataError` naming it when it cannot
    be read or decoded."""
    from visionops.images import decode_image

    try:
        return decode_image(storage.read_bytes(uri))
    except VisionOpsError as exc:
        raise DataError(f"cannot use image {uri}: {exc}") from exc


def read_images(uris: list[str], *, workers: int = 8) -> list:
    """Decoded images at ``uris``, in order, read on ``workers`` threads (see :func:`read_image`)."""
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(read_image, uris))


def _chunks(items: list, size: int):
    if size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {size}")
    return (items[i : i + size] for i in range(0, len(items), size))


def load_state_dict(path: Path) -> dict:
    """Weights from a safetensors file, or a torch state dict loaded with ``weights_only=True``."""
    import torch

    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise BundleError(f"cannot load weights from {path}: {exc}") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise BundleError(f"{path} does not hold a state dict")
    return state


def verify_weights(uri: str, meta: dict[str, Any], weights: bytes) -> None:
    """Refuse weights that are not the ones the marker names: their recorded sha256 and the weights' version
    (``weights_version`` where a derived bundle carries one, else ``model_version``)."""
    recorded = meta.get("weights_sha256")
    actual = hashlib.sha256(weights).hexdigest()
    if recorded and recorded != actual:
        raise BundleError(
            f"model bundle at {uri}: {WEIGHTS} has sha256 {actual[:12]} but {MARKER} (model "
            f"{meta.get('model_version')}) records {recorded[:12]}: the weights were replaced after the marker "
            "was written (an interrupted overwrite?). Re-publish the bundle"
        )
    named = meta.get("weights_version") or meta.get("model_version")
    version = model_version_of(weights, meta)
    if named != version:
        raise BundleError(
            f"model bundle at {uri}: {MARKER} names model {named} but {WEIGHTS} (with its architecture and "
            f"classes) is model {version}: the marker and the weights belong to different versions. "
            "Re-publish the bundle"
        )


def load_bundle(uri: str, *, device: str = "cpu", cache_dir: str | Path | None = None) -> Bundle:
    """Load a bundle from a local path or ``s3://`` URI and rebuild its model (eval mode) on ``device``.

    Remote bundles are downloaded once into ``cache_dir`` (a temporary directory when not given; it is kept
    for the life of the process so that :meth:`Bundle.file` works).
    """
    from visionops.models import create_model

    meta = read_meta(uri)
    if storage.is_remote(uri):
        local = Path(cache_dir or tempfile.mkdtemp(prefix="visionops-bundle-"))
        storage.download_dir(uri, local)
    else:
        local = Path(uri)
    weights = local / WEIGHTS
    if not weights.is_file():
        raise BundleError(f"model bundle at {uri} is incomplete: {WEIGHTS} is missing")
    verify_weights(uri, meta, weights.read_bytes())
    model = create_model(meta["architecture"], len(meta["classes"]))
    state = load_state_dict(weights)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise BundleError(
            f"weights in {uri} do not fit architecture {meta['architecture']!r} "
            f"with {len(meta['classes'])} classes: {str(exc).splitlines()[0]}"
        ) from exc
    model.eval().to(device)
    return Bundle(uri=str(uri), meta=meta, model=model, local_dir=local)
