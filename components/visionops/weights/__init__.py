"""Pretrained weights by name or URI: torchvision's weights API, an object-storage mirror, or a state-dict file.

``resolve_pretrained("torchvision:IMAGENET1K_V1", "resnet18")`` names a torchvision weights enum member of the
architecture (or ``torchvision:ResNet18_Weights.IMAGENET1K_V1`` in full); the weights come from torchvision's
own cache/download (``torch.hub.get_dir()/checkpoints``) and carry their own preprocessing
(``weights.transforms()``). ``mirror_weights`` copies them to object storage as safetensors plus a small JSON
(preprocessing, source name, sha256), for clusters without internet; ``resolve_pretrained("s3://...")`` then
loads that copy. Nothing is ever unpickled: safetensors, or ``torch.load(weights_only=True)``.
"""

from visionops.weights.pretrained import (
    MIRROR_META,
    MIRROR_WEIGHTS,
    TORCHVISION_PREFIX,
    PretrainedWeights,
    mirror_weights,
    resolve_pretrained,
    torchvision_architectures,
    torchvision_weight_names,
)

__all__ = [
    "MIRROR_META",
    "MIRROR_WEIGHTS",
    "TORCHVISION_PREFIX",
    "PretrainedWeights",
    "mirror_weights",
    "resolve_pretrained",
    "torchvision_architectures",
    "torchvision_weight_names",
]
