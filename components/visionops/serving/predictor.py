"""Bundle -> predictions for image bytes: the library part of serving, usable in-process without HTTP.

The service validates and decodes each request with :meth:`Predictor.decode`, turns it into a tensor with
:meth:`Predictor.to_tensor` (the bundle's own eval transform), runs batches through :meth:`Predictor.infer`
and shapes each answer with :meth:`Predictor.describe`. :meth:`Predictor.predict` chains the same steps for
a list of images, so train/serve parity is testable without a server.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from visionops.errors import ImageError
from visionops.images import ImageLimits, PixelBudget, decode_image
from visionops.onnx_runtime import softmax
from visionops.serving.runtime import Runtime, gated_threshold, load_runtime

log = logging.getLogger(__name__)


def image_error_status(exc: ImageError) -> int:
    """The HTTP status for an image refused by :func:`decode_image`: the status its type carries."""
    return exc.http_status


def resolve_device(device: str = "auto") -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _features_module():
    """``visionops.features`` (drift features), or None where this build lacks it."""
    try:
        from visionops import features
    except ModuleNotFoundError as exc:  # the drift stage is optional in a build
        if exc.name != "visionops.features":
            raise
        return None
    return features


@dataclass
class Outputs:
    """Model outputs for one batch: class probabilities (N, C) and embeddings (N, D) or None."""

    probs: Any
    embeddings: Any = None


class Predictor:
    """A loaded bundle plus the serving decision rule (threshold, possibly overridden) and input limits."""

    def __init__(
        self,
        bundle,
        *,
        threshold: float | None = None,
        limits: ImageLimits | None = None,
        runtime: Runtime | None = None,
    ) -> None:
        if threshold is not None:
            # The override replaces the bundle's threshold for this process only; the bundle is untouched.
            bundle.meta = {**bundle.meta, "threshold": float(threshold)}
        self.bundle = bundle
        self.limits = limits or ImageLimits()
        self.runtime = runtime or Runtime("torch", "default")
        self._features = _features_module()

    @classmethod
    def load(
        cls,
        uri: str,
        *,
        threshold: float | None = None,
        limits: ImageLimits | None = None,
        device: str = "auto",
        runtime: str = "auto",
        threads: int | None = None,
    ) -> Predictor:
        """Load the bundle at ``uri`` (local or s3://, downloaded once) on ``device`` and open the runtime that
        serves it (``runtime``: auto, torch, onnx, onnx-int8; see :mod:`visionops.serving.runtime`).

        ONNX Runtime serves on CPU only: on a GPU device ``auto`` keeps torch.
        """
        from visionops.bundle import load_bundle

        device = resolve_device(device)
        bundle = load_bundle(uri, device=device)
        if device != "cpu" and runtime == "auto":
            chosen = Runtime("torch", f"auto: torch on {device}", requested=runtime)
        else:
            chosen = load_runtime(bundle, runtime, threads=threads)
        if threshold is None:  # an int8 artifact decides at the threshold the gate chose on its own outputs
            threshold = gated_threshold(bundle.meta, chosen.name)
        return cls(bundle, threshold=threshold, limits=limits, runtime=chosen)

    # -- what the answers carry -------------------------------------------------------------------------------
    @property
    def version(self) -> str:
        return self.bundle.version

    @property
    def architecture(self) -> str:
        return self.bundle.architecture

    @property
    def classes(self) -> list[str]:
        return self.bundle.classes

    @property
    def threshold(self) -> float:
        return self.bundle.threshold

    # -- the steps --------------------------------------------------------------------------------------------
    def decode(self, data: bytes, budget: PixelBudget | None = None):
        """Validated RGB PIL image, or :class:`ImageError` (see :func:`image_error_status` for the status).

        A big JPEG is decoded in draft mode down to what the bundle's transform needs (its resize size);
        ``budget`` (``self.limits.request_budget()``, one per request) bounds a whole batch's pixels.
        """
        target = self.bundle.preprocess.resize_size
        return decode_image(data, self.limits, target_side=target, budget=budget)

    def to_tensor(self, image) -> Any:
        """One image -> the model's input tensor (C, H, W), with the bundle's eval transform."""
        return self.bundle.transform(image)

    def infer(self, batch) -> Outputs:
        """A batch tensor (N, C, H, W) -> probabilities and (when the drift features exist) embeddings.

        With an ONNX runtime both come from the graph's one forward pass (it outputs logits and embeddings).
        """
        if self.runtime.model is not None:
            logits, embeddings = self.runtime.model.outputs(batch)
            probs = softmax(logits).astype("float32")
            return Outputs(probs, embeddings if self._features is not None else None)
        if self._features is not None:
            probs, embeddings = self._features.model_outputs(self.bundle, batch)
            return Outputs(probs, embeddings)
        return Outputs(self.bundle.predict_proba(batch))

    def describe(self, probs_row) -> dict[str, Any]:
        """One probability row -> the answer: label, probability (positive class), per-class, threshold."""
        import numpy as np

        row = np.asarray(probs_row, dtype=np.float64).reshape(1, -1)
        label = self.bundle.decide(row)[0]
        probabilities = {c: float(p) for c, p in zip(self.classes, row[0], strict=True)}
        return {
            "label": label,
            "probability": probabilities[self.bundle.positive_class],
            "confidence": probabilities[label],
            "probabilities": probabilities,
            "positive_class": self.bundle.positive_class,
            "threshold": self.threshold,
            "model_version": self.version,
        }

    def thumbnail(self, image):
        """The small copy the drift statistics are computed from (None where features are absent)."""
        return None if self._features is None else self._features.thumbnail(image)

    def row_maker(self):
        """What builds feature rows away from the model (decision rule + projection), or None."""
        return None if self._features is None else self._features.RowMaker.of(self.bundle)

    def feature_rows(self, images: list, outputs: Outputs) -> list[dict[str, Any]]:
        """Drift feature rows for decoded images and their outputs (empty dicts when features are absent)."""
        if self._features is None:
            return [{} for _ in images]
        return self._features.feature_rows(self.bundle, images, outputs.probs, outputs.embeddings)

    def predict(self, images: list) -> list[dict[str, Any]]:
        """Image bytes or PIL images -> answers, in one batch (what the service does, without HTTP)."""
        import torch

        if not images:
            return []
        decoded = [self.decode(img) if isinstance(img, bytes | bytearray) else img for img in images]
        batch = torch.stack([self.to_tensor(img) for img in decoded])
        outputs = self.infer(batch)
        return [self.describe(row) for row in outputs.probs]
