"""Training: torchvision classifiers (or a tiny CNN) on CPU or CUDA (AMP, channels_last, DDP under torchrun),
from a dataset manifest to a self-describing model bundle. See docs/training.md.

Public API: :class:`TrainConfig`, :func:`train`, :data:`PRESETS`, :func:`preset`.
"""

from visionops.training.config import PRESETS, TrainConfig, preset
from visionops.training.loop import train

__all__ = ["PRESETS", "TrainConfig", "preset", "train"]
