"""The training configuration: one settings dataclass (:mod:`visionops.settings`) whose fields map 1:1 onto CLI
options, KFP parameters and YAML.

The defaults are the measured CPU recipe (``cpu-fast``): a small CNN at 96 px that trains on a 2-core laptop in
minutes. Named presets (:data:`PRESETS`) change a few fields; explicit values always win over a preset.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

from visionops.errors import ConfigError
from visionops.settings import Settings, setting

OPTIMIZERS = ("adamw", "sgd")
DEVICES = ("auto", "cpu", "cuda")
CLASS_WEIGHTING = ("balanced", "none")
STOP_METRICS = ("val_auc", "val_loss")


@dataclass(frozen=True)
class TrainConfig(Settings):
    """Everything that decides how a model is trained. ``to_dict``/``from_dict`` round-trip it exactly."""

    kind: ClassVar[str] = "training config"

    architecture: str = setting("small_cnn", "Model architecture from the registry (visionops.models).")
    image_size: int | None = setting(
        None,
        "Input size in pixels (the evaluation centre crop); empty = the architecture's default.",
        check=lambda v: v >= 16,
        must="must be >= 16",
    )
    crop_pct: float | None = setting(
        None,
        "Centre crop share of the resized image (image_size / resize_size); empty = the architecture's.",
        check=lambda v: 0.3 <= v <= 1,
        must="must be in [0.3, 1]",
    )
    pretrained: str | None = setting(
        None,
        "Pretrained weights: torchvision:NAME (a weights enum of the architecture, e.g. torchvision:IMAGENET1K_V1, "
        "with its own preprocessing), a mirror from `visionops weights mirror` (path or s3://), or a state-dict "
        "file (.safetensors or .pt); a head of another size is replaced.",
    )
    warm_start: str | None = setting(
        None, "Model bundle URI to fine-tune (the champion); its architecture and classes are used."
    )
    epochs: int = setting(30, "Maximum number of epochs.", check=lambda v: v >= 1, must="must be >= 1")
    batch_size: int = setting(
        32, "Images per batch and per process.", check=lambda v: v >= 1, must="must be >= 1"
    )
    optimizer: str = setting("adamw", "Optimizer: adamw or sgd (momentum, Nesterov).", choices=OPTIMIZERS)
    lr: float = setting(1e-3, "Peak learning rate (after warmup).", check=lambda v: v > 0, must="must be > 0")
    weight_decay: float = setting(0.05, "Weight decay.", check=lambda v: v >= 0, must="must be >= 0")
    momentum: float = setting(0.9, "SGD momentum (ignored by adamw).")
    warmup_epochs: float = setting(
        1.0,
        "Linear warmup length in epochs (may be fractional).",
        check=lambda v: v >= 0,
        must="must be >= 0",
    )
    min_lr_ratio: float = setting(
        0.01,
        "Final learning rate of the cosine schedule, as a fraction of lr.",
        check=lambda v: 0 <= v <= 1,
        must="must be in [0, 1]",
    )
    label_smoothing: float = setting(
        0.05,
        "Label smoothing of the training loss (0 = off).",
        check=lambda v: 0 <= v < 1,
        must="must be in [0, 1)",
    )
    class_weighting: str = setting(
        "balanced", "Loss weights against class imbalance: balanced or none.", choices=CLASS_WEIGHTING
    )
    aug_scale_min: float = setting(
        0.7,
        "Random-resized-crop: smallest area kept, relative to the evaluation crop region (+15%).",
        check=lambda v: 0 < v <= 1,
        must="must be in (0, 1]",
    )
    aug_hflip: bool = setting(True, "Random horizontal flips.")
    aug_color_jitter: float = setting(
        0.0, "Brightness/contrast/saturation/hue jitter strength (0 = off; costly on CPU without workers)."
    )
    aug_rotation: float = setting(5.0, "Random rotation range in degrees (0 = off).")
    early_stopping_metric: str = setting(
        "val_auc",
        "Validation metric for early stopping and best epoch: val_auc or val_loss.",
        choices=STOP_METRICS,
    )
    patience: int = setting(
        10,
        "Stop after this many epochs without improvement (0 = never stop early).",
        check=lambda v: v >= 0,
        must="must be >= 0",
    )
    seed: int = setting(0, "Random seed (weights, shuffling, augmentation).")
    deterministic: bool = setting(False, "Force deterministic kernels (slower on GPU).")
    device: str = setting("auto", "auto (CUDA when present), cpu or cuda.", choices=DEVICES)
    amp: bool = setting(True, "Mixed precision on CUDA (bf16 where supported, else fp16 with a grad scaler).")
    channels_last: bool = setting(True, "channels_last memory format on CUDA.")
    compile: bool = setting(False, "torch.compile the model.")
    num_workers: int = setting(
        -1,
        "DataLoader worker processes (-1 = auto: 0 on CPU, up to 8 on CUDA).",
        check=lambda v: v >= -1,
        must="must be >= -1 (-1 = auto)",
    )
    decode_workers: int = setting(
        8,
        "Threads that fetch and decode images once into the cache.",
        check=lambda v: v >= 1,
        must="must be >= 1",
    )
    cache_dir: str | None = setting(
        None, "Local directory for the decoded+resized image cache (.npy); empty = in memory only."
    )
    checkpoint_dir: str | None = setting(
        None, "Where checkpoints go (path or s3://); empty = OUTPUT + '.checkpoints'."
    )
    resume: bool = setting(False, "Continue from the last checkpoint in the checkpoint directory.")
    progress: bool = setting(True, "Show a tqdm progress bar per epoch.")
    drift_reference: bool = setting(
        True, "Store the drift reference profile (val-split features, embedding projection) in the bundle."
    )

    def __post_init__(self) -> None:
        from visionops.models import get_entry

        get_entry(self.architecture)  # unknown names fail here, listing the valid ones
        super().__post_init__()  # field choices and checks (visionops.settings)
        if self.pretrained and self.pretrained.startswith("torchvision:") and not self.warm_start:
            from visionops.weights import resolve_pretrained

            resolve_pretrained(
                self.pretrained, self.architecture
            )  # a wrong name fails here, listing valid ones

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

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


#: Named recipes: a few fields over the defaults. ``cpu-fast`` is the default (measured in docs/training.md).
PRESETS: dict[str, dict[str, Any]] = {
    "cpu-fast": {},
    "gpu": {
        "architecture": "mobilenet_v3_large",
        "pretrained": "torchvision:IMAGENET1K_V2",
        "image_size": 224,
        "batch_size": 128,
        "epochs": 30,
        "lr": 2e-3,
        "warmup_epochs": 2.0,
        "patience": 8,
        "aug_color_jitter": 0.3,
    },
    "finetune": {
        "architecture": "mobilenet_v3_small",
        "pretrained": "torchvision:IMAGENET1K_V1",
        "lr": 3e-4,
        "epochs": 10,
        "warmup_epochs": 0.5,
        "patience": 4,
        "aug_scale_min": 0.8,
    },
}


def preset(name: str, **overrides: Any) -> TrainConfig:
    """The config of a named preset, with ``overrides`` applied on top."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; valid: {', '.join(PRESETS)}")
    return TrainConfig.from_dict({**PRESETS[name], **overrides})


def field_help() -> dict[str, str]:
    """Field name -> help text (used by the CLI)."""
    return {f.name: f.metadata.get("help", "") for f in fields(TrainConfig)}
