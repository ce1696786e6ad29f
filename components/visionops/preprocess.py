"""The preprocessing spec and the one transform factory.

The spec travels inside the model bundle; serving, drift and evaluation rebuild the transform from it with
``build_transform(spec, train=False)``, so no normalisation constant is ever copied by hand.
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


def build_transform(spec: PreprocessSpec, *, train: bool, augment: AugmentSpec | None = None):
    """PIL RGB image -> normalised float tensor (C, H, W).

    ``train=False`` is the deterministic evaluation/serving path: resize the short side to ``resize_size``,
    centre-crop ``image_size``, normalise. ``train=True`` adds random-resized-crop, flips, colour jitter and a
    small rotation drawn from ``augment``.
    """
    import torch
    from torchvision.transforms import v2

    interp = _interp(spec.interpolation)
    tail = [
        v2.ToImage(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean=list(spec.mean), std=list(spec.std)),
    ]
    if not train:
        return v2.Compose(
            [
                v2.Resize(spec.resize_size, interpolation=interp, antialias=True),
                v2.CenterCrop(spec.image_size),
                *tail,
            ]
        )
    aug = augment or AugmentSpec()
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
    return v2.Compose([*steps, *tail])
