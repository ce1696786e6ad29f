"""A plain registry of classifier architectures: name -> builder(num_classes) -> nn.Module.

Every entry also says how its inputs are prepared (its default :class:`PreprocessSpec`). Torchvision models
are built without downloading anything; pretrained weights come from a file/URI (see :func:`create_model`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from visionops.errors import ConfigError
from visionops.preprocess import PreprocessSpec


@dataclass(frozen=True)
class ModelEntry:
    name: str
    build: Callable[[int], object]
    preprocess: PreprocessSpec
    #: the final classification layer's attribute path, replaced when loading foreign pretrained weights
    head: str


REGISTRY: dict[str, ModelEntry] = {}


def register(name: str, *, head: str, preprocess: PreprocessSpec | None = None):
    """Decorator: add a builder ``fn(num_classes) -> nn.Module`` to the registry under ``name``."""

    def wrap(fn):
        REGISTRY[name] = ModelEntry(name, fn, preprocess or PreprocessSpec(), head)
        return fn

    return wrap


def get_entry(name: str) -> ModelEntry:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown architecture {name!r}; valid: {', '.join(sorted(REGISTRY))}") from None


def available() -> list[str]:
    return sorted(REGISTRY)


def _torchvision(name: str, num_classes: int):
    import torchvision

    return torchvision.models.get_model(name, weights=None, num_classes=num_classes)


for _name, _head in [
    ("mobilenet_v3_small", "classifier.3"),
    ("mobilenet_v3_large", "classifier.3"),
    ("resnet18", "fc"),
    ("resnet50", "fc"),
    ("efficientnet_b0", "classifier.1"),
    ("convnext_tiny", "classifier.2"),
]:
    register(_name, head=_head)(lambda n, _arch=_name: _torchvision(_arch, n))


def _conv_stack():
    """Four (conv-BN-ReLU x2, max-pool) blocks, 3 -> 96 channels, 1/16 resolution: the small CNNs' trunk."""
    from torch import nn

    def block(cin: int, cout: int) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )

    return nn.Sequential(block(3, 16), block(16, 32), block(32, 64), block(64, 96))


@register("tiny_cnn", head="head", preprocess=PreprocessSpec(image_size=64, resize_size=72))
def tiny_cnn(num_classes: int):
    """A small CNN (about 100k parameters) for fast tests and 2-core CPU demos."""
    from torch import nn

    class TinyCNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = _conv_stack()
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.dropout = nn.Dropout(0.2)
            self.head = nn.Linear(96, num_classes)

        def forward(self, x):
            return self.head(self.dropout(self.pool(self.features(x)).flatten(1)))

    return TinyCNN()


def _bin_matrix(size: int, bins: int, like):
    """(bins, size) averaging matrix (dtype/device of ``like``) of adaptive average pooling: bin i covers
    ``[floor(i*size/bins), ceil((i+1)*size/bins))``, exactly as ``nn.AdaptiveAvgPool2d`` cuts it."""
    import torch

    matrix = torch.zeros(bins, size, dtype=like.dtype, device=like.device)
    for i in range(bins):
        start, end = (i * size) // bins, -((-(i + 1) * size) // bins)
        matrix[i, start:end] = 1.0 / (end - start)
    return matrix


def _pooling_module():
    """``GridAvgPool2d``: adaptive average pooling written as two matrix products (built lazily: no torch
    import at module load)."""
    from torch import nn

    class GridAvgPool2d(nn.Module):
        """Adaptive average pooling to a fixed ``bins x bins`` grid, as ``P_h @ x @ P_w^T``.

        The same bins and weights as ``nn.AdaptiveAvgPool2d(bins)`` (equal up to float rounding, proven by
        tests/test_models_onnx.py), but exportable to ONNX for any input size: the classic exporter has no
        adaptive pooling whose output size does not divide the input (small_cnn's 6x6 map -> 4x4), and two
        MatMuls run everywhere. No parameters, so existing state dicts load unchanged.
        """

        def __init__(self, bins: int) -> None:
            super().__init__()
            self.bins = bins

        def forward(self, x):
            rows = _bin_matrix(x.shape[-2], self.bins, x)
            cols = _bin_matrix(x.shape[-1], self.bins, x)
            return rows @ x @ cols.T

    return GridAvgPool2d


def create_model(name: str, num_classes: int):
    """Build ``name`` with a ``num_classes``-way head, randomly initialised."""
    if num_classes < 2:
        raise ConfigError(f"need at least 2 classes, got {num_classes}")
    return get_entry(name).build(num_classes)


def penultimate(model, name: str):
    """A callable ``x -> features`` that returns the input of the classification head (for embeddings)."""
    import torch

    head = model.get_submodule(get_entry(name).head)
    captured: dict[str, torch.Tensor] = {}

    def hook(_module, inputs, _output):
        captured["x"] = inputs[0]

    def run(x):
        handle = head.register_forward_hook(hook)
        try:
            logits = model(x)
        finally:
            handle.remove()
        return captured["x"].flatten(1), logits

    return run


def load_pretrained(model, name: str, state: dict) -> list[str]:
    """Load a foreign state dict into ``model`` (architecture ``name``); the head is kept fresh when it differs.

    Keys prefixed by DDP (``module.``) or ``torch.compile`` (``_orig_mod.``) are accepted. Tensors of the
    classification head whose shapes differ (another number of classes) are skipped, so the head stays
    randomly initialised; any other missing or mismatched tensor fails with a :class:`ConfigError`.
    Returns the names of the skipped head tensors.
    """
    head = get_entry(name).head + "."
    own = model.state_dict()
    cleaned = {}
    for key, value in state.items():
        for prefix in ("module.", "_orig_mod."):
            if key.startswith(prefix):
                key = key[len(prefix) :]
        cleaned[key] = value
    replaced = [k for k in own if k.startswith(head) and k in cleaned and cleaned[k].shape != own[k].shape]
    bad_shape = [
        k for k in own if not k.startswith(head) and k in cleaned and cleaned[k].shape != own[k].shape
    ]
    missing = [k for k in own if k not in cleaned and not k.startswith(head)]
    unexpected = [k for k in cleaned if k not in own]
    if bad_shape or missing or unexpected:
        problems = []
        for label, keys in (("wrong shape", bad_shape), ("missing", missing), ("unexpected", unexpected)):
            if keys:
                problems.append(f"{label}: {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}")
        raise ConfigError(
            f"pretrained weights do not fit architecture {name!r} ({'; '.join(problems)}); "
            "pass a state dict saved from the same architecture"
        )
    model.load_state_dict({k: v for k, v in cleaned.items() if k not in replaced}, strict=False)
    return replaced


@register("small_cnn", head="head", preprocess=PreprocessSpec(image_size=96, resize_size=148))
def small_cnn(num_classes: int):
    """A compact CNN (about 0.3M parameters) whose head keeps a coarse 4x4 spatial layout.

    Global average pooling (tiny_cnn, torchvision models) throws away *where* a feature is; on roughly aligned
    crops (faces: the eyes are always in the same band) a spatial head learns much faster from few images.
    This is the default 2-core CPU recipe's model (see docs/training.md); its default input is a tight centre
    crop (96 of 148 px, crop_pct 0.65): on loosely centred crops it zooms onto the object.
    """
    from torch import nn

    class SmallCNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = _conv_stack()
            self.pool = _pooling_module()(4)
            self.neck = nn.Sequential(
                nn.Flatten(), nn.Dropout(0.3), nn.Linear(96 * 16, 128), nn.ReLU(inplace=True), nn.Dropout(0.3)
            )
            self.head = nn.Linear(128, num_classes)

        def forward(self, x):
            return self.head(self.neck(self.pool(self.features(x))))

    return SmallCNN()
