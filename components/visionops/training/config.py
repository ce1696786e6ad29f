"""The training configuration: one dataclass whose fields map 1:1 onto CLI options, KFP parameters and YAML.

The defaults are the measured CPU recipe (``cpu-fast``): a small CNN at 96 px that trains on a 2-core laptop in
minutes. Named presets (:data:`PRESETS`) change a few fields; explicit values always win over a preset.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from visionops.errors import ConfigError

OPTIMIZERS = ("adamw", "sgd")
DEVICES = ("auto", "cpu", "cuda")
CLASS_WEIGHTING = ("balanced", "none")
STOP_METRICS = ("val_auc", "val_loss")


def _opt(default: Any, help: str) -> Any:
    """A dataclass field with its help text (the CLI reads it, so every option documents itself)."""
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides how a model is trained. ``to_dict``/``from_dict`` round-trip it exactly."""

    architecture: str = _opt("small_cnn", "Model architecture from the registry (visionops.models).")
    image_size: int | None = _opt(
        None, "Input size in pixels (the evaluation centre crop); empty = the architecture's default."
    )
    crop_pct: float | None = _opt(
        None, "Centre crop share of the resized image (image_size / resize_size); empty = the architecture's."
    )
    pretrained: str | None = _opt(
        None,
        "Pretrained weights (state dict: .safetensors or .pt, path or s3:// URI); a head of another size is replaced.",
    )
    warm_start: str | None = _opt(
        None, "Model bundle URI to fine-tune (the champion); its architecture and classes are used."
    )
    epochs: int = _opt(30, "Maximum number of epochs.")
    batch_size: int = _opt(32, "Images per batch and per process.")
    optimizer: str = _opt("adamw", "Optimizer: adamw or sgd (momentum, Nesterov).")
    lr: float = _opt(2e-3, "Peak learning rate (after warmup).")
    weight_decay: float = _opt(0.05, "Weight decay.")
    momentum: float = _opt(0.9, "SGD momentum (ignored by adamw).")
    warmup_epochs: float = _opt(1.0, "Linear warmup length in epochs (may be fractional).")
    min_lr_ratio: float = _opt(0.01, "Final learning rate of the cosine schedule, as a fraction of lr.")
    label_smoothing: float = _opt(0.05, "Label smoothing of the training loss (0 = off).")
    class_weighting: str = _opt("balanced", "Loss weights against class imbalance: balanced or none.")
    aug_scale_min: float = _opt(
        0.7, "Random-resized-crop: smallest area kept, relative to the evaluation crop region (+15%)."
    )
    aug_hflip: bool = _opt(True, "Random horizontal flips.")
    aug_color_jitter: float = _opt(
        0.0, "Brightness/contrast/saturation/hue jitter strength (0 = off; costly on CPU without workers)."
    )
    aug_rotation: float = _opt(5.0, "Random rotation range in degrees (0 = off).")
    early_stopping_metric: str = _opt(
        "val_auc", "Validation metric for early stopping and best epoch: val_auc or val_loss."
    )
    patience: int = _opt(10, "Stop after this many epochs without improvement (0 = never stop early).")
    seed: int = _opt(0, "Random seed (weights, shuffling, augmentation).")
    deterministic: bool = _opt(False, "Force deterministic kernels (slower on GPU).")
    device: str = _opt("auto", "auto (CUDA when present), cpu or cuda.")
    amp: bool = _opt(True, "Mixed precision on CUDA (bf16 where supported, else fp16 with a grad scaler).")
    channels_last: bool = _opt(True, "channels_last memory format on CUDA.")
    compile: bool = _opt(False, "torch.compile the model.")
    num_workers: int = _opt(-1, "DataLoader worker processes (-1 = auto: 0 on CPU, up to 8 on CUDA).")
    decode_workers: int = _opt(8, "Threads that fetch and decode images once into the cache.")
    cache_dir: str | None = _opt(
        None, "Local directory for the decoded+resized image cache (.npy); empty = in memory only."
    )
    checkpoint_dir: str | None = _opt(
        None, "Where checkpoints go (path or s3://); empty = OUTPUT + '.checkpoints'."
    )
    resume: bool = _opt(False, "Continue from the last checkpoint in the checkpoint directory.")
    progress: bool = _opt(True, "Show a tqdm progress bar per epoch.")
    drift_reference: bool = _opt(
        True, "Store the drift reference profile (val-split features, embedding projection) in the bundle."
    )

    def __post_init__(self) -> None:
        from visionops.models import get_entry

        get_entry(self.architecture)  # unknown names fail here, listing the valid ones
        for name, value, valid in (
            ("optimizer", self.optimizer, OPTIMIZERS),
            ("device", self.device, DEVICES),
            ("class_weighting", self.class_weighting, CLASS_WEIGHTING),
            ("early_stopping_metric", self.early_stopping_metric, STOP_METRICS),
        ):
            if value not in valid:
                raise ConfigError(f"{name} {value!r} unknown; valid: {', '.join(valid)}")
        checks = (
            (self.epochs >= 1, "epochs must be >= 1"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.lr > 0, "lr must be > 0"),
            (self.weight_decay >= 0, "weight_decay must be >= 0"),
            (self.warmup_epochs >= 0, "warmup_epochs must be >= 0"),
            (0 <= self.min_lr_ratio <= 1, "min_lr_ratio must be in [0, 1]"),
            (0 <= self.label_smoothing < 1, "label_smoothing must be in [0, 1)"),
            (0 < self.aug_scale_min <= 1, "aug_scale_min must be in (0, 1]"),
            (self.patience >= 0, "patience must be >= 0"),
            (self.num_workers >= -1, "num_workers must be >= -1 (-1 = auto)"),
            (self.decode_workers >= 1, "decode_workers must be >= 1"),
            (self.image_size is None or self.image_size >= 16, "image_size must be >= 16"),
            (self.crop_pct is None or 0.3 <= self.crop_pct <= 1, "crop_pct must be in [0.3, 1]"),
        )
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"bad training config: {message}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Build from a dict (KFP parameters, YAML, a bundle's saved config); unknown keys are refused."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown training config fields {unknown}; valid: {', '.join(sorted(known))}")
        try:
            return cls(**data)
        except TypeError as exc:
            raise ConfigError(f"bad training config: {exc}") from exc

    @classmethod
    def from_file(cls, path: str | Path, **overrides: Any) -> TrainConfig:
        """Read a YAML or JSON file of fields; ``overrides`` win."""
        import yaml

        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read training config {path}: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"training config {path} must be a mapping of field: value")
        return cls.from_dict({**data, **overrides})

    def replace(self, **changes: Any) -> TrainConfig:
        return replace(self, **changes)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


#: Named recipes: a few fields over the defaults. ``cpu-fast`` is the default (measured in docs/training.md).
PRESETS: dict[str, dict[str, Any]] = {
    "cpu-fast": {},
    "gpu": {
        "architecture": "mobilenet_v3_large",
        "image_size": 224,
        "batch_size": 128,
        "epochs": 30,
        "lr": 2e-3,
        "warmup_epochs": 2.0,
        "patience": 8,
        "aug_color_jitter": 0.3,
    },
    "finetune": {"lr": 3e-4, "epochs": 10, "warmup_epochs": 0.5, "patience": 4, "aug_scale_min": 0.8},
}


def preset(name: str, **overrides: Any) -> TrainConfig:
    """The config of a named preset, with ``overrides`` applied on top."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; valid: {', '.join(PRESETS)}")
    return TrainConfig.from_dict({**PRESETS[name], **overrides})


def field_help() -> dict[str, str]:
    """Field name -> help text (used by the CLI)."""
    return {f.name: f.metadata.get("help", "") for f in fields(TrainConfig)}
