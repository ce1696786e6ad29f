"""The preprocessing spec and the one transform factory.

The spec travels inside the model bundle; serving, drift and evaluation rebuild the transform from it with
``build_transform(spec, train=False)``, so no normalisation constant is ever copied by hand. Training takes its
transforms from the same factory (``train=True`` for the training split, ``train=False`` for validation) and
caches images after :func:`resize_short_side`, the first stage both paths share.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from visionops.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")


@dataclass(frozen=True)
class PreprocessSpec:
    """How an RGB image becomes the model's input tensor."""

    image_size: int = 224
    resize_size: int = 256
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        if self.interpolation not in INTERPOLATIONS:
            raise ConfigError(
                f"interpolation {self.interpolation!r} unknown; valid: {', '.join(INTERPOLATIONS)}"
            )
        if self.image_size < 8 or self.resize_size < self.image_size:
            raise ConfigError(
                f"need 8 <= image_size <= resize_size, got image_size={self.image_size}, "
                f"resize_size={self.resize_size}"
            )
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ConfigError("mean and std need 3 values each, std > 0")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> PreprocessSpec:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown preprocessing fields {sorted(unknown)}; valid: {sorted(known)}")
        values = dict(data)
        for key in ("mean", "std"):
            if key in values:
                values[key] = tuple(float(v) for v in values[key])
        return cls(**values)


@dataclass(frozen=True)
class AugmentSpec:
    """Train-time augmentation (never applied at evaluation or serving)."""

    hflip: bool = True
    scale: tuple[float, float] = (0.6, 1.0)
    color_jitter: float = 0.3
    rotation: float = 10.0
    grayscale_p: float = 0.05
    extra: dict = field(default_factory=dict)


def _interp(name: str):
    from torchvision.transforms import InterpolationMode

    return {
        "bilinear": InterpolationMode.BILINEAR,
        "bicubic": InterpolationMode.BICUBIC,
        "nearest": InterpolationMode.NEAREST,
    }[name]


#: Random-resized crops are drawn inside the evaluation crop plus this margin (not the whole resized image):
#: with a tight crop_pct, crops drawn anywhere would often miss the object that evaluation centres on.
TRAIN_CROP_MARGIN = 1.15


def train_region(spec: PreprocessSpec) -> int:
    """The side of the centre region training crops are drawn from: the evaluation crop plus a margin."""
    return min(spec.resize_size, round(spec.image_size * TRAIN_CROP_MARGIN))


def resize_short_side(spec: PreprocessSpec):
    """The first stage of both transforms: the short side to ``spec.resize_size`` (aspect ratio kept).

    Training caches its images after this stage (see :mod:`visionops.training.data`); on such an image the
    stage is a no-op, so a cached image and the original give identical tensors.
    """
    from torchvision.transforms import v2

    return v2.Resize(spec.resize_size, interpolation=_interp(spec.interpolation), antialias=True)


def _augmentations(spec: PreprocessSpec, aug: AugmentSpec) -> list:
    """The random steps of the training transform, drawn from ``aug``."""
    from torchvision.transforms import v2

    interp = _interp(spec.interpolation)
    steps = [v2.RandomResizedCrop(spec.image_size, scale=aug.scale, interpolation=interp, antialias=True)]
    if aug.hflip:
        steps.append(v2.RandomHorizontalFlip())
    if aug.rotation:
        steps.append(v2.RandomRotation(aug.rotation, interpolation=interp))
    if aug.color_jitter:
        c = aug.color_jitter
        steps.append(v2.ColorJitter(brightness=c, contrast=c, saturation=c, hue=min(0.05, c / 4)))
    if aug.grayscale_p:
        steps.append(v2.RandomGrayscale(p=aug.grayscale_p))
    return steps


def build_transform(spec: PreprocessSpec, *, train: bool, augment: AugmentSpec | None = None):
    """PIL RGB image (or uint8 CHW tensor) -> normalised float tensor (C, H, W): the one transform factory.

    Both paths first resize the short side to ``resize_size``. ``train=False`` is the deterministic
    evaluation/serving path: centre-crop ``image_size``, normalise. ``train=True`` takes the centre region
    (:func:`train_region`), then a random-resized crop, flips, colour jitter and a small rotation drawn from
    ``augment``, then normalises.
    """
    import torch
    from torchvision.transforms import v2

    tail = [
        v2.ToImage(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean=list(spec.mean), std=list(spec.std)),
    ]
    if not train:
        return v2.Compose([resize_short_side(spec), v2.CenterCrop(spec.image_size), *tail])
    steps = _augmentations(spec, augment or AugmentSpec())
    return v2.Compose([resize_short_side(spec), v2.CenterCrop(train_region(spec)), *steps, *tail])
