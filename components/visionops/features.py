"""Per-image features for drift monitoring: the same code offline (reference profile) and online (serving).

A feature row describes one image by

- cheap image statistics (:func:`image_stats`): brightness, contrast, saturation, sharpness, colour channel
  means, width/height/aspect and a greyscale flag, computed on a :class:`Thumbnail` (a ``STATS_SIDE`` square
  copy plus the original size; well under 2 ms). Serving makes the thumbnail on the request thread and ships
  only it to the monitoring process, where :class:`RowMaker` builds the rows with the reference's code;
- the model's outputs: ``confidence`` (probability of the predicted label), ``predicted_class`` (the label
  the bundle's decision rule gives) and ``positive_prob`` (probability of the positive class);
- a compact embedding ``emb_0..emb_{k-1}``: the model's penultimate features projected with the projection
  stored in the bundle's drift slot (``drift/projection.safetensors``: a mean vector and a D x k matrix,
  computed by :mod:`visionops.drift.reference`). Bundles without a projection give rows without ``emb_*``.

:data:`FEATURE_SCHEMA` says what each column may hold; the drift sidecar checks incoming rows against it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from visionops.errors import BundleError, ConfigError

#: Side of the square grey copy the statistics are computed on. Small enough to be fast on a 4k photo,
#: big enough that a blur of a couple of pixels at serving resolution still shows in the Laplacian.
STATS_SIDE = 96
#: Mean per-pixel channel spread (0..1) below which an image counts as greyscale (JPEG chroma noise stays
#: well under it; the palest colour photos are well above it).
GREYSCALE_CHROMA = 0.02
PROJECTION_FILE = "drift/projection.safetensors"
DEFAULT_BATCH = 64


@dataclass(frozen=True)
class FeatureSpec:
    """One column of a feature row: ``kind`` is "num" (float) or "cat" (string); bounds are inclusive."""

    kind: str
    low: float | None = None
    high: float | None = None
    description: str = ""


#: Column name -> spec. ``emb_<i>`` columns are matched by :func:`spec_for`.
FEATURE_SCHEMA: dict[str, FeatureSpec] = {
    "brightness": FeatureSpec("num", 0.0, 1.0, "mean luma (0 = black, 1 = white)"),
    "contrast": FeatureSpec("num", 0.0, 1.0, "standard deviation of luma"),
    "saturation": FeatureSpec("num", 0.0, 1.0, "mean HSV saturation"),
    "sharpness": FeatureSpec(
        "num", 0.0, 1e6, "variance of the Laplacian of the downscaled grey image (x1000)"
    ),
    "mean_r": FeatureSpec("num", 0.0, 1.0, "mean red channel"),
    "mean_g": FeatureSpec("num", 0.0, 1.0, "mean green channel"),
    "mean_b": FeatureSpec("num", 0.0, 1.0, "mean blue channel"),
    "width": FeatureSpec("num", 1.0, 1e6, "image width in pixels"),
    "height": FeatureSpec("num", 1.0, 1e6, "image height in pixels"),
    "aspect": FeatureSpec("num", 1e-6, 1e6, "width / height"),
    "is_greyscale": FeatureSpec("num", 0.0, 1.0, "1 when the image has (almost) no colour"),
    "confidence": FeatureSpec("num", 0.0, 1.0, "probability of the predicted label"),
    "predicted_class": FeatureSpec("cat", description="label given by the bundle's decision rule"),
    "positive_prob": FeatureSpec("num", 0.0, 1.0, "probability of the positive class"),
}
EMBEDDING_SPEC = FeatureSpec(
    "num", -1e9, 1e9, "penultimate features projected on the reference's principal axes"
)
IMAGE_STATS = tuple(k for k in FEATURE_SCHEMA if k not in ("confidence", "predicted_class", "positive_prob"))
MODEL_OUTPUTS = ("confidence", "predicted_class", "positive_prob")
_EMB = re.compile(r"^emb_(\d{1,3})$")


def spec_for(name: str) -> FeatureSpec | None:
    """The spec of a feature column (``emb_<i>`` included), or None for a column that is not a feature."""
    if name in FEATURE_SCHEMA:
        return FEATURE_SCHEMA[name]
    if _EMB.match(name):
        return EMBEDDING_SPEC
    return None


def embedding_columns(k: int) -> list[str]:
    return [f"emb_{i}" for i in range(k)]


@dataclass(frozen=True)
class Thumbnail:
    """What the image statistics need of an image: a ``STATS_SIDE`` square RGB copy (uint8, about 27 KB
    whatever the photo's size) and the original width and height. Serving makes it on the request's worker
    thread and hands only this (never the decoded image) to the monitoring path."""

    pixels: Any
    width: int
    height: int


def thumbnail(img) -> Thumbnail:
    """The :class:`Thumbnail` of a PIL image (any mode)."""
    import numpy as np
    from PIL import Image

    width, height = img.info.get("source_size", img.size)  # the size sent, not the draft-decoded one
    if width < 1 or height < 1:
        raise ConfigError(f"image has no pixels ({width}x{height})")
    small = img.convert("RGB") if img.mode != "RGB" else img
    # reducing_gap makes a big photo cheap: PIL first shrinks by an integer factor, then resamples.
    small = small.resize((STATS_SIDE, STATS_SIDE), Image.BILINEAR, reducing_gap=2.0)
    return Thumbnail(np.asarray(small, dtype=np.uint8), int(width), int(height))


def thumbnail_stats(thumb: Thumbnail) -> dict[str, float]:
    """The statistics of :func:`image_stats` from a :class:`Thumbnail` (identical values)."""
    import numpy as np

    rgb = thumb.pixels.astype(np.float32) * (1.0 / 255.0)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    grey = 0.299 * r + 0.587 * g + 0.114 * b
    cmax = rgb.max(axis=2)
    chroma = cmax - rgb.min(axis=2)
    saturation = np.divide(chroma, cmax, out=np.zeros_like(chroma), where=cmax > 1e-6)
    lap = grey[1:-1, :-2] + grey[1:-1, 2:] + grey[:-2, 1:-1] + grey[2:, 1:-1] - 4.0 * grey[1:-1, 1:-1]
    width, height = float(thumb.width), float(thumb.height)
    return {
        "brightness": float(grey.mean()),
        "contrast": float(grey.std()),
        "saturation": float(saturation.mean()),
        "sharpness": float(lap.var() * 1000.0),
        "mean_r": float(r.mean()),
        "mean_g": float(g.mean()),
        "mean_b": float(b.mean()),
        "width": width,
        "height": height,
        "aspect": width / height,
        "is_greyscale": float(chroma.mean() < GREYSCALE_CHROMA),
    }


def image_stats(img) -> dict[str, float]:
    """Cheap statistics of a PIL image (any mode), computed on a small downscaled copy (:func:`thumbnail`).

    Values are in 0..1 except sharpness (variance of a 4-neighbour Laplacian on a ``STATS_SIDE`` square grey
    copy, x1000), width/height (pixels) and aspect (width / height).
    """
    return thumbnail_stats(thumbnail(img))


def load_projection(bundle) -> tuple[Any, Any] | None:
    """The bundle's embedding projection ``(mean (D,), components (D, k))`` as numpy arrays, or None.

    Cached on the bundle object, so serving reads the file once.
    """
    cached = bundle.__dict__.get("_drift_projection", False)
    if cached is not False:
        return cached
    projection = None
    try:
        path = bundle.file(PROJECTION_FILE)
    except BundleError:
        path = None
    if path is not None:
        from safetensors.numpy import load_file

        try:
            tensors = load_file(str(path))
            projection = (tensors["mean"].astype("float32"), tensors["components"].astype("float32"))
        except Exception as exc:
            raise BundleError(
                f"model bundle at {bundle.uri}: {PROJECTION_FILE} is unreadable ({exc}); "
                "recompute it with `visionops drift reference`"
            ) from exc
        if projection[0].shape[0] != projection[1].shape[0]:
            raise BundleError(
                f"model bundle at {bundle.uri}: {PROJECTION_FILE} has mean of size {projection[0].shape[0]} "
                f"but components of shape {projection[1].shape}"
            )
    bundle.__dict__["_drift_projection"] = projection
    return projection


def model_outputs(bundle, batch) -> tuple[Any, Any]:
    """One forward pass: ``(probs (N, C), embeddings (N, D))`` as float32 numpy arrays.

    ``batch`` is a tensor made with ``bundle.to_tensor``; embeddings are the inputs of the classification head.
    """
    return bundle.forward(batch, with_embeddings=True)


def project_with(projection: tuple[Any, Any], embeddings) -> Any:
    """Embeddings (N, D) projected to (N, k) with ``projection = (mean (D,), components (D, k))``."""
    import numpy as np

    mean, components = projection
    embeddings = np.asarray(embeddings, dtype=np.float32)
    if embeddings.ndim != 2 or embeddings.shape[1] != mean.shape[0]:
        raise ConfigError(
            f"embeddings of shape {embeddings.shape} do not fit the bundle's projection "
            f"(expects (N, {mean.shape[0]}))"
        )
    return (embeddings - mean) @ components


def project(bundle, embeddings) -> Any | None:
    """Embeddings (N, D) projected to (N, k) with the bundle's projection; None when it has none."""
    projection = load_projection(bundle)
    return None if projection is None else project_with(projection, embeddings)


#: ``projection=`` default of :func:`feature_rows`: use the projection stored in the bundle (if any).
FROM_BUNDLE = "bundle"


@dataclass(frozen=True)
class RowMaker:
    """Everything a feature row needs besides the image and the model outputs: the decision rule and the
    projection. Small and picklable, so rows can be built away from the model (another thread or process)
    with exactly the code the reference uses."""

    classes: tuple[str, ...]
    positive_index: int
    threshold: float
    projection: tuple[Any, Any] | None

    @classmethod
    def of(cls, bundle, projection: Any = FROM_BUNDLE) -> RowMaker:
        """The row maker of ``bundle``; ``projection`` None leaves out ``emb_*`` (the reference, before it
        has fitted its projection), a ``(mean, components)`` pair overrides the bundle's."""
        if isinstance(projection, str) and projection == FROM_BUNDLE:
            projection = load_projection(bundle)
        return cls(tuple(bundle.classes), bundle.positive_index, bundle.threshold, projection)

    def rows(self, thumbs: list[Thumbnail], probs, embeddings=None) -> list[dict]:
        """Feature rows from thumbnails, probabilities (N, C) and (with a projection) embeddings (N, D)."""
        import numpy as np

        from visionops.bundle import decide_indices

        rows = [thumbnail_stats(t) for t in thumbs]
        if not rows:
            return rows
        probs = np.asarray(probs, dtype=np.float32)
        label_index = decide_indices(probs, self.positive_index, self.threshold)
        emb = None if self.projection is None else project_with(self.projection, embeddings)
        for i, row in enumerate(rows):
            row["confidence"] = float(probs[i, label_index[i]])
            row["predicted_class"] = self.classes[label_index[i]]
            row["positive_prob"] = float(probs[i, self.positive_index])
            if emb is not None:
                row.update({f"emb_{j}": float(v) for j, v in enumerate(emb[i])})
        return rows


def feature_rows(
    bundle,
    images: list,
    probs=None,
    embeddings=None,
    *,
    projection: Any = FROM_BUNDLE,
    batch_size: int = DEFAULT_BATCH,
) -> list[dict]:
    """Feature rows (image stats + model outputs + projected embedding) for PIL images or thumbnails.

    Pass ``probs`` (N, C) and ``embeddings`` (N, D) when the caller already ran the model (serving does, with
    :func:`model_outputs`); otherwise they are computed here with :meth:`Bundle.score_images` in batches of
    ``batch_size`` (PIL images only). ``projection`` is the bundle's by default; pass None for rows without
    ``emb_*`` or a ``(mean, components)`` pair (see :meth:`RowMaker.of`).
    """
    n = len(images)
    if probs is not None and len(probs) != n:
        raise ConfigError(f"got {len(probs)} probability rows for {n} images")
    if embeddings is not None and len(embeddings) != n:
        raise ConfigError(f"got {len(embeddings)} embeddings for {n} images")
    maker = RowMaker.of(bundle, projection)
    if n and (probs is None or (maker.projection is not None and embeddings is None)):
        scored, scored_emb = bundle.score_images(images, batch_size=batch_size, with_embeddings=True)
        probs = scored if probs is None else probs
        embeddings = scored_emb if embeddings is None else embeddings
    thumbs = [img if isinstance(img, Thumbnail) else thumbnail(img) for img in images]
    return maker.rows(thumbs, probs, embeddings)
