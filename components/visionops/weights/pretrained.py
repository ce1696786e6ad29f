"""Resolve a ``--pretrained`` value to a state dict and, where the weights define one, their preprocessing.

Three forms (see docs/training.md):

- ``torchvision:NAME``: a member of the architecture's torchvision weights enum (``IMAGENET1K_V1``,
  ``DEFAULT``) or its full name (``ResNet18_Weights.IMAGENET1K_V1``); loaded through torchvision's weights API,
  which reads ``torch.hub.get_dir()/checkpoints/<file>`` and downloads only when that file is absent.
- a mirror written by :func:`mirror_weights` (a directory or ``s3://`` prefix holding ``weights.json`` and
  ``model.safetensors``): the same weights and preprocessing, for clusters without internet.
- a state-dict file (``.safetensors``, or ``.pt``/``.pth`` loaded with ``weights_only=True``): weights only; the
  architecture's own preprocessing applies.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from visionops import storage
from visionops.errors import ConfigError, StorageError
from visionops.preprocess import PreprocessSpec

TORCHVISION_PREFIX = "torchvision:"
MIRROR_META = "weights.json"
MIRROR_WEIGHTS = "model.safetensors"
MIRROR_FORMAT = "visionops-weights/1"
STATE_SUFFIXES = (".safetensors", ".pt", ".pth")


@dataclass(frozen=True)
class PretrainedWeights:
    """Where pretrained weights come from, which architecture they belong to and how their inputs are prepared.

    ``preprocess`` is None for a bare state-dict file (nothing says how it was trained: the architecture's
    default applies). :meth:`state_dict` does the (possibly slow) loading; resolving never downloads.
    """

    source: str
    kind: str  # "torchvision", "mirror" or "file"
    architecture: str | None
    preprocess: PreprocessSpec | None
    name: str | None = None  # the torchvision weights name, e.g. ResNet18_Weights.IMAGENET1K_V1
    url: str | None = None

    def state_dict(self, *, progress: bool = False) -> dict:
        """The weights as a ``{name: tensor}`` dict (never unpickled)."""
        if self.kind == "torchvision":
            return _torchvision_state(self.name, progress=progress)
        if self.kind == "mirror":
            return _mirror_state(self.source)
        return _file_state(self.source)

    def lineage(self) -> dict[str, Any]:
        """What the bundle records about these weights."""
        return {
            "source": self.source,
            "kind": self.kind,
            "name": self.name,
            "url": self.url,
            "architecture": self.architecture,
        }


# -- torchvision -------------------------------------------------------------------------------------------------
def torchvision_architectures() -> list[str]:
    """The registry's architectures for which torchvision publishes weights."""
    import torchvision

    from visionops.models import available

    known = set(torchvision.models.list_models(module=torchvision.models))
    return [name for name in available() if name in known]


def torchvision_weight_names(architecture: str) -> list[str]:
    """The weights enum members of ``architecture`` (``DEFAULT`` included), e.g. ``['IMAGENET1K_V1', 'DEFAULT']``."""
    return list(_weights_enum(architecture).__members__)


def _weights_enum(architecture: str):
    """torchvision's weights enum of a registry architecture; a clear error where it has none."""
    import torchvision

    from visionops.models import get_entry

    get_entry(architecture)  # an unknown architecture fails listing the valid ones
    if architecture not in torchvision_architectures():
        raise ConfigError(
            f"architecture {architecture!r} has no torchvision weights; architectures with weights: "
            f"{', '.join(torchvision_architectures())} (or pass a state-dict file / mirror URI)"
        )
    return torchvision.models.get_model_weights(architecture)


def _torchvision_weight(name: str, architecture: str):
    """The weights enum member ``name`` (short or full form) of ``architecture``."""
    import torchvision

    enum = _weights_enum(architecture)
    valid = ", ".join(enum.__members__)
    if "." in name:
        try:
            weight = torchvision.models.get_weight(name)
        except (KeyError, ValueError) as exc:
            raise ConfigError(
                f"unknown torchvision weights {name!r}; valid for {architecture}: {valid} "
                f"(or {enum.__name__}.<name>)"
            ) from exc
        if type(weight) is not enum:
            owner = _owner(type(weight))
            raise ConfigError(
                f"torchvision weights {name} belong to {owner or 'another architecture'}, not {architecture!r}; "
                f"valid for {architecture}: {valid} (or train with --architecture {owner})"
            )
        return weight
    try:
        return enum[name]
    except KeyError as exc:
        raise ConfigError(f"unknown torchvision weights {name!r} for {architecture}; valid: {valid}") from exc


def _owner(enum) -> str | None:
    """The registry architecture whose weights enum is ``enum``."""
    import torchvision

    for arch in torchvision_architectures():
        if torchvision.models.get_model_weights(arch) is enum:
            return arch
    return None


def spec_from_transforms(weight) -> PreprocessSpec:
    """The weights' own inference preprocessing (``weights.transforms()``) as a :class:`PreprocessSpec`."""
    transform = weight.transforms()
    try:
        crop, resize = transform.crop_size, transform.resize_size
        return PreprocessSpec(
            image_size=int(crop[0]),
            resize_size=int(resize[0]),
            mean=tuple(float(v) for v in transform.mean),
            std=tuple(float(v) for v in transform.std),
            interpolation=transform.interpolation.value,
        )
    except (AttributeError, IndexError, TypeError) as exc:
        raise ConfigError(
            f"torchvision weights {weight!r} have a preprocessing ({type(transform).__name__}) that is not "
            "resize + centre crop + normalise; it cannot be recorded in a bundle"
        ) from exc


def _torchvision_state(name: str, *, progress: bool) -> dict:
    """Load through torchvision's weights API (torch.hub's cache; download only when the file is absent)."""
    import torchvision

    weight = torchvision.models.get_weight(name)
    try:
        return weight.get_state_dict(
            progress=progress, check_hash=True, map_location="cpu", weights_only=True
        )
    except OSError as exc:  # URLError and HTTPError are OSErrors
        raise StorageError(
            f"cannot load torchvision weights {name} from {_cache_file(weight)} or {weight.url}: {exc}; without "
            f"internet, mirror them where there is (visionops weights mirror ARCH {name.split('.')[-1]} s3://...) "
            "and pass the mirror URI, or put the file at that cache path"
        ) from exc
    except Exception as exc:  # torch.load's refusals (pickled objects, corrupt files)
        raise StorageError(
            f"cannot read torchvision weights {name} from {_cache_file(weight)}: {exc}"
        ) from exc


def _cache_file(weight) -> Path:
    """Where torch.hub caches the weights file (TORCH_HOME / XDG_CACHE_HOME decide the directory)."""
    import os
    from urllib.parse import urlparse

    import torch

    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(weight.url).path)


# -- mirror and files --------------------------------------------------------------------------------------------
def _read_mirror_meta(uri: str) -> dict:
    meta_uri = storage.join(uri, MIRROR_META)
    try:
        meta = json.loads(storage.read_text(meta_uri))
    except (StorageError, ValueError) as exc:
        raise ConfigError(
            f"pretrained {uri!r} is neither a state-dict file ({', '.join(STATE_SUFFIXES)}), nor a "
            f"torchvision name ({TORCHVISION_PREFIX}NAME), nor a weights mirror ({MIRROR_META} unreadable: {exc})"
        ) from exc
    if meta.get("format") != MIRROR_FORMAT:
        raise ConfigError(
            f"{meta_uri} is not a weights mirror (format {meta.get('format')!r}, need {MIRROR_FORMAT})"
        )
    return meta


def _mirror_state(uri: str) -> dict:
    """The mirrored safetensors, checked against the sha256 its JSON recorded."""
    from safetensors.torch import load

    meta = _read_mirror_meta(uri)
    data = storage.read_bytes(storage.join(uri, MIRROR_WEIGHTS))
    digest = hashlib.sha256(data).hexdigest()
    if digest != meta["sha256"]:
        raise StorageError(
            f"weights mirror {uri}: {MIRROR_WEIGHTS} has sha256 {digest[:12]}..., its {MIRROR_META} says "
            f"{meta['sha256'][:12]}...; mirror it again"
        )
    return load(data)


def _file_state(uri: str) -> dict:
    """A state dict from a file or URI (.safetensors or a torch state dict loaded with weights_only)."""
    from visionops.bundle import load_state_dict

    suffix = ".safetensors" if str(uri).endswith(".safetensors") else ".pt"
    with tempfile.TemporaryDirectory(prefix="visionops-weights-") as tmp:
        path = Path(tmp) / f"weights{suffix}"
        path.write_bytes(storage.read_bytes(uri))
        return load_state_dict(path)


# -- resolving and mirroring -------------------------------------------------------------------------------------
def resolve_pretrained(source: str, architecture: str) -> PretrainedWeights:
    """What ``--pretrained SOURCE`` means for ``architecture``; names and architectures are checked, nothing loads.

    Raises :class:`ConfigError` for an unknown weights name (listing the valid ones) or for weights of another
    architecture.
    """
    source = str(source).strip()
    if source.startswith(TORCHVISION_PREFIX):
        weight = _torchvision_weight(source[len(TORCHVISION_PREFIX) :], architecture)
        return PretrainedWeights(
            source=source,
            kind="torchvision",
            architecture=architecture,
            preprocess=spec_from_transforms(weight),
            name=f"{type(weight).__name__}.{weight.name}",
            url=weight.url,
        )
    if source.endswith(STATE_SUFFIXES):
        return PretrainedWeights(source=source, kind="file", architecture=None, preprocess=None)
    meta = _read_mirror_meta(source)
    if meta["architecture"] != architecture:
        raise ConfigError(
            f"weights mirror {source} holds {meta['name']} for {meta['architecture']!r}, not {architecture!r}; "
            f"train with --architecture {meta['architecture']} or mirror weights of {architecture}"
        )
    return PretrainedWeights(
        source=source,
        kind="mirror",
        architecture=meta["architecture"],
        preprocess=PreprocessSpec.from_dict(meta["preprocess"]),
        name=meta["name"],
        url=meta.get("url"),
    )


def mirror_weights(architecture: str, weights: str, destination: str, *, progress: bool = True) -> str:
    """Copy torchvision weights of ``architecture`` to ``destination`` (path or s3://) as safetensors + JSON.

    The weights are loaded through torchvision (its cache, or a download), checked to fit the architecture,
    and written as ``model.safetensors`` then ``weights.json`` (last, so a half-written mirror never resolves).
    Returns ``destination``.
    """
    from safetensors.torch import save

    name = weights.removeprefix(TORCHVISION_PREFIX)
    resolved = resolve_pretrained(TORCHVISION_PREFIX + name, architecture)
    state = resolved.state_dict(progress=progress)
    _check_fits(state, architecture, resolved.name)
    data = save({key: value.contiguous() for key, value in state.items()})
    meta = {
        "format": MIRROR_FORMAT,
        "source": f"{TORCHVISION_PREFIX}{resolved.name}",
        "name": resolved.name,
        "architecture": architecture,
        "url": resolved.url,
        "preprocess": resolved.preprocess.to_dict(),
        "sha256": hashlib.sha256(data).hexdigest(),
        "tensors": len(state),
    }
    storage.write_bytes(storage.join(destination, MIRROR_WEIGHTS), data)
    storage.write_text(storage.join(destination, MIRROR_META), json.dumps(meta, indent=2, sort_keys=True))
    return destination


def _check_fits(state: dict, architecture: str, name: str | None) -> None:
    """Fail before publishing a mirror whose tensors do not fit the architecture (any head size accepted)."""
    from visionops.models import create_model, load_pretrained

    try:
        load_pretrained(create_model(architecture, 2), architecture, state)
    except ConfigError as exc:
        raise ConfigError(f"torchvision weights {name} do not load into {architecture}: {exc}") from exc
