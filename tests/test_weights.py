"""Pretrained weights by name (issue 20 item 3), without network: a state dict written where torchvision's cache
looks for the weights file is loaded through torchvision's weights API; a mirror on the loopback S3 server loads
the same tensors and preprocessing; wrong names and other architectures' weights fail clearly."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from urllib.parse import urlparse

import pytest
import torch
import torchvision
from safetensors.torch import load_file
from typer.testing import CliRunner
from visionops import storage
from visionops.bundle import read_meta
from visionops.errors import ConfigError, StorageError
from visionops.preprocess import PreprocessSpec
from visionops.training import PRESETS, preset, train
from visionops.weights import MIRROR_META, MIRROR_WEIGHTS, mirror_weights, resolve_pretrained

from tests.test_training import fast_config, make_dataset

ARCH = "mobilenet_v3_small"
FULL_NAME = "MobileNet_V3_Small_Weights.IMAGENET1K_V1"


def _cache_weights(torch_home: Path, architecture: str, name: str, seed: int = 7) -> dict:
    """Write a freshly initialised 1000-class state dict where torch.hub's cache looks for ``name``'s file."""
    weight = torchvision.models.get_model_weights(architecture)[name]
    torch.manual_seed(seed)
    state = torchvision.models.get_model(architecture, weights=None, num_classes=1000).state_dict()
    checkpoints = torch_home / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    torch.save(state, checkpoints / os.path.basename(urlparse(weight.url).path))
    return state


@pytest.fixture
def torch_home(tmp_path, monkeypatch) -> Path:
    """TORCH_HOME under tmp_path, holding fake ImageNet weights of mobilenet_v3_small and resnet18."""
    home = tmp_path / "torch-home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert Path(torch.hub.get_dir()) == home / "hub"  # the cache torchvision's weights API reads
    return home


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> str:
    return make_dataset(tmp_path_factory.mktemp("weights-data"), per_class=10, size=40)


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_torchvision_name_loads_from_the_cache_with_the_weights_own_preprocessing(
    torch_home, dataset, tmp_path
):
    written = _cache_weights(torch_home, ARCH, "IMAGENET1K_V1")
    short = resolve_pretrained("torchvision:IMAGENET1K_V1", ARCH)
    full = resolve_pretrained(f"torchvision:{FULL_NAME}", ARCH)
    assert short.name == full.name == FULL_NAME and short.preprocess == full.preprocess
    expected = torchvision.models.get_weight(FULL_NAME).transforms()
    spec = short.preprocess
    assert (
        (spec.image_size, spec.resize_size) == (expected.crop_size[0], expected.resize_size[0]) == (224, 256)
    )
    assert list(spec.mean) == expected.mean and list(spec.std) == expected.std
    assert spec.interpolation == expected.interpolation.value
    assert _same(short.state_dict(), written)

    cfg = fast_config(architecture=ARCH, image_size=None, epochs=1, lr=1e-7, warmup_epochs=0.0, batch_size=8)
    uri = train(dataset, str(tmp_path / "bundle"), cfg.replace(pretrained="torchvision:IMAGENET1K_V1"))
    meta = read_meta(uri)
    assert (
        PreprocessSpec.from_dict(meta["preprocess"]) == spec
    )  # the bundle serves with the weights' own preprocessing
    assert meta["lineage"]["pretrained_weights"]["name"] == FULL_NAME
    assert sorted(meta["training"]["head_replaced"]) == ["classifier.3.bias", "classifier.3.weight"]
    tuned = load_file(str(Path(uri) / "model.safetensors"))
    assert tuned["classifier.3.weight"].shape == (2, 1024)
    first = "features.0.0.weight"
    assert torch.allclose(tuned[first], written[first], atol=1e-4)  # lr 1e-7: the loaded weights survive
    assert not torch.allclose(tuned[first], torchvision.models.get_model(ARCH).state_dict()[first], atol=1e-3)


@pytest.mark.slow
@pytest.mark.integration
def test_mirror_to_s3_then_train_from_the_mirror(torch_home, dataset, s3, tmp_path):
    written = _cache_weights(torch_home, ARCH, "IMAGENET1K_V1", seed=11)
    destination = s3.bucket + "/weights/mobilenet_v3_small-imagenet1k_v1"
    runner = CliRunner()
    from visionops.cli import app

    result = runner.invoke(app, ["weights", "mirror", ARCH, "IMAGENET1K_V1", destination, "--no-progress"])
    assert result.exit_code == 0, result.output
    meta = json.loads(storage.read_text(storage.join(destination, MIRROR_META)))
    assert meta["name"] == FULL_NAME and meta["architecture"] == ARCH
    assert meta["source"] == f"torchvision:{FULL_NAME}"
    assert storage.exists(storage.join(destination, MIRROR_WEIGHTS))

    mirrored = resolve_pretrained(destination, ARCH)
    assert mirrored.kind == "mirror"
    assert mirrored.preprocess == resolve_pretrained("torchvision:IMAGENET1K_V1", ARCH).preprocess
    assert _same(mirrored.state_dict(), written)

    # the cache is gone: training reads the mirror only
    for cached in (torch_home / "hub" / "checkpoints").iterdir():
        cached.unlink()
    out = str(tmp_path / "from-mirror")
    result = runner.invoke(
        app,
        [
            "train",
            dataset,
            out,
            "--pretrained",
            destination,
            "--architecture",
            ARCH,
            "--epochs",
            "1",
            "--lr",
            "1e-7",
            "--warmup-epochs",
            "0",
            "--batch-size",
            "8",
            "--num-workers",
            "0",
            "--no-progress",
            "--image-size",
            "64",
        ],
    )
    assert result.exit_code == 0, result.output
    bundle = PreprocessSpec.from_dict(read_meta(out)["preprocess"])
    # a smaller input keeps the weights' crop share (224/256), mean, std and interpolation
    assert bundle == dataclasses.replace(mirrored.preprocess, image_size=64, resize_size=73)
    assert read_meta(out)["lineage"]["pretrained_weights"]["kind"] == "mirror"
    tuned = load_file(str(Path(out) / "model.safetensors"))
    assert torch.allclose(tuned["features.0.0.weight"], written["features.0.0.weight"], atol=1e-4)

    # a mirror whose tensors changed after its JSON was written is refused
    storage.write_bytes(storage.join(destination, MIRROR_WEIGHTS), b"not the weights")
    with pytest.raises(StorageError, match="sha256"):
        mirrored.state_dict()


def test_a_wrong_name_fails_listing_the_valid_names(tmp_path):
    with pytest.raises(
        ConfigError,
        match=r"unknown torchvision weights 'IMAGENET9K' for resnet18; valid: "
        r"IMAGENET1K_V1, DEFAULT",
    ):
        resolve_pretrained("torchvision:IMAGENET9K", "resnet18")
    with pytest.raises(
        ConfigError, match=r"unknown torchvision weights 'ResNet18_Weights.V9'.*IMAGENET1K_V1"
    ):
        resolve_pretrained("torchvision:ResNet18_Weights.V9", "resnet18")
    with pytest.raises(ConfigError, match=r"'small_cnn' has no torchvision weights; .*mobilenet_v3_small"):
        resolve_pretrained("torchvision:IMAGENET1K_V1", "small_cnn")
    with pytest.raises(ConfigError, match="neither a state-dict file"):
        resolve_pretrained(str(tmp_path / "nothing-here"), "resnet18")
    from visionops.cli import app

    result = CliRunner().invoke(
        app,
        [
            "train",
            str(tmp_path / "data"),
            str(tmp_path / "out"),
            "--architecture",
            "resnet18",
            "--pretrained",
            "torchvision:IMAGENET9K",
        ],
    )  # refused by the config, before any data is read
    assert isinstance(result.exception, ConfigError) and "valid: IMAGENET1K_V1, DEFAULT" in str(
        result.exception
    )


def test_weights_of_another_architecture_fail_clearly(torch_home, tmp_path):
    with pytest.raises(
        ConfigError,
        match=r"ResNet18_Weights.IMAGENET1K_V1 belong to resnet18, not "
        r"'mobilenet_v3_small'; valid for mobilenet_v3_small: IMAGENET1K_V1, DEFAULT",
    ):
        resolve_pretrained("torchvision:ResNet18_Weights.IMAGENET1K_V1", ARCH)
    _cache_weights(torch_home, "resnet18", "IMAGENET1K_V1")
    mirror = mirror_weights("resnet18", "IMAGENET1K_V1", str(tmp_path / "resnet18-mirror"), progress=False)
    assert resolve_pretrained(mirror, "resnet18").name == "ResNet18_Weights.IMAGENET1K_V1"
    with pytest.raises(
        ConfigError,
        match=r"holds ResNet18_Weights.IMAGENET1K_V1 for 'resnet18', not "
        r"'mobilenet_v3_small'",
    ):
        resolve_pretrained(mirror, ARCH)


def test_a_cached_file_of_another_architecture_is_refused_before_mirroring(torch_home, tmp_path):
    """The cache file of resnet18's weights holding mobilenet tensors: the mirror is never published."""
    weight = torchvision.models.get_model_weights("resnet18")["IMAGENET1K_V1"]
    checkpoints = torch_home / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save(torchvision.models.get_model(ARCH).state_dict(), checkpoints / Path(weight.url).name)
    with pytest.raises(ConfigError, match="do not load into resnet18"):
        mirror_weights("resnet18", "IMAGENET1K_V1", str(tmp_path / "bad"), progress=False)
    assert not (tmp_path / "bad").exists()


def test_gpu_and_finetune_presets_start_from_imagenet_weights():
    for name in ("gpu", "finetune"):
        cfg = preset(name)
        resolved = resolve_pretrained(cfg.pretrained, cfg.architecture)
        assert resolved.kind == "torchvision" and "IMAGENET1K" in resolved.name, name
    assert PRESETS["cpu-fast"] == {}  # the CPU recipe still trains from scratch
