"""Training: learning on an easy synthetic pattern, exact resume, bundle round trip, train/serve transform parity,
warm start, pretrained weights, config/CLI, s3 datasets and 2-process DDP (gloo) under torchrun."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from typer.testing import CliRunner
from visionops.bundle import load_bundle, read_meta
from visionops.data.manifest import load_dataset, write_dataset
from visionops.errors import ConfigError
from visionops.images import decode_image
from visionops.models import create_model, load_pretrained
from visionops.preprocess import build_transform
from visionops.training import PRESETS, TrainConfig, preset, train
from visionops.training.data import resize_for_cache
from visionops.training.loop import resolve_preprocess, roc_auc

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ("glasses", "no_glasses")


def _face(rng: np.random.Generator, glasses: bool, width: int, height: int) -> Image.Image:
    """A face-like blob on a noisy background; 'glasses' adds a dark band across the eye region."""
    yy, xx = np.mgrid[0:height, 0:width]
    img = np.empty((height, width, 3), dtype=np.float32)
    img[:] = rng.uniform(40, 200, size=3)
    cx, cy = width / 2 + rng.normal(0, width * 0.03), height / 2 + rng.normal(0, height * 0.03)
    face = ((xx - cx) / (width * 0.3)) ** 2 + ((yy - cy) / (height * 0.38)) ** 2 <= 1
    img[face] = rng.uniform([170, 120, 90], [235, 190, 160])
    if glasses:
        eye_y = int(cy - height * 0.1)
        band = (abs(yy - eye_y) <= max(1, height // 16)) & (abs(xx - cx) <= width * 0.28)
        img[band] = rng.uniform(0, 40, size=3)
    img += rng.normal(0, 12, size=img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def make_dataset(
    root: Path,
    *,
    per_class: int = 40,
    size: int = 48,
    seed: int = 0,
    classes: tuple[str, ...] = CLASSES,
    storage_prefix: str | None = None,
) -> str:
    """A small learnable dataset (60/20/20 split per class) written with write_dataset; returns its URI."""
    rng = np.random.default_rng(seed)
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    rows = []
    for label in classes:
        for i in range(per_class):
            width = size if i % 3 else size + size // 4  # some non-square images
            img = _face(rng, label == "glasses", width, size)
            path = images / f"{label}_{i:03d}.png"
            img.save(path)
            data = path.read_bytes()
            uri = str(path)
            if storage_prefix is not None:
                from visionops import storage

                uri = storage.join(storage_prefix, "images", path.name)
                storage.write_bytes(uri, data)
            split = "train" if i < per_class * 0.6 else ("val" if i < per_class * 0.8 else "test")
            rows.append(
                {
                    "path": uri,
                    "label": label,
                    "sha256": hashlib.sha256(data).hexdigest(),
                    "width": img.width,
                    "height": img.height,
                    "split": split,
                    "group": "",
                }
            )
    target = storage_prefix + "/dataset" if storage_prefix is not None else str(root / "dataset")
    write_dataset(pd.DataFrame(rows), {"source": "synthetic-test", "classes": list(classes)}, target)
    return target


def fast_config(**changes) -> TrainConfig:
    base = {
        "architecture": "tiny_cnn",
        "image_size": 32,
        "epochs": 2,
        "batch_size": 16,
        "lr": 3e-3,
        "warmup_epochs": 0.5,
        "num_workers": 0,
        "decode_workers": 4,
        "progress": False,
        "patience": 0,
    }
    return TrainConfig.from_dict({**base, **changes})


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> str:
    return make_dataset(tmp_path_factory.mktemp("synthetic"))


@pytest.fixture(scope="module")
def trained(dataset, tmp_path_factory) -> str:
    """A bundle trained for a few epochs on the easy pattern (shared by several tests)."""
    out = tmp_path_factory.mktemp("trained") / "bundle"
    return train(dataset, str(out), fast_config(epochs=8, aug_rotation=0.0))


def _test_images(dataset_uri: str):
    test = load_dataset(dataset_uri).split("test")
    return [decode_image(Path(p).read_bytes()) for p in test["path"]], list(test["label"])


def test_tiny_cnn_learns_and_beats_chance_on_held_out_images(dataset, trained):
    bundle = load_bundle(trained)
    images, labels = _test_images(dataset)
    probs = bundle.predict_proba(images)
    auc = roc_auc(np.array(labels) == "glasses", probs[:, bundle.positive_index])
    assert auc is not None and auc > 0.8, f"held-out ROC AUC {auc}"
    meta = bundle.meta
    assert meta["architecture"] == "tiny_cnn" and meta["classes"] == list(CLASSES)
    assert meta["positive_class"] == "glasses" and meta["threshold"] == 0.5
    assert meta["preprocess"]["image_size"] == 32 and meta["preprocess"]["resize_size"] == 36
    assert meta["config"]["epochs"] == 8 and meta["config"]["image_size"] == 32
    lineage = meta["lineage"]
    ds = load_dataset(dataset)
    assert lineage["dataset_version"] == ds.version and lineage["golden_version"] == ds.golden_version
    assert lineage["torch"] == torch.__version__ and lineage["device"] == "cpu" and lineage["code_version"]
    assert [r["epoch"] for r in meta["history"]] == list(range(1, 9))
    assert {"train_loss", "val_loss", "val_auc", "val_acc", "images_per_s", "lr"} <= set(meta["history"][0])
    assert meta["history"][-1]["train_loss"] < meta["history"][0]["train_loss"]
    for name in (
        "config.json",
        "reports/history.json",
        "reports/training_curves.png",
        "reports/training.html",
        "reports/val_predictions.csv",
    ):
        assert bundle.file(name).stat().st_size > 0, name
    html = bundle.file("reports/training.html").read_text()
    assert "data:image/png;base64," in html and "http://" not in html and "https://" not in html
    assert json.loads(bundle.file("config.json").read_text()) == meta["config"]
    # the resolved config is written next to the checkpoints too
    assert json.loads(Path(trained + ".checkpoints", "config.json").read_text()) == meta["config"]


def test_bundle_round_trip_gives_identical_predictions(dataset, trained):
    """Predictions recorded by the training process == predictions of the model rebuilt from the bundle."""
    bundle = load_bundle(trained)
    recorded = pd.read_csv(bundle.file("reports/val_predictions.csv"))
    images = [decode_image(Path(p).read_bytes()) for p in recorded["path"]]
    probs = bundle.predict_proba(images)
    np.testing.assert_allclose(probs[:, 0], recorded["prob_glasses"], rtol=0, atol=1e-6)
    again = load_bundle(trained).predict_proba(images)
    np.testing.assert_array_equal(probs, again)


def test_training_eval_transform_equals_bundle_transform(dataset, trained):
    """The cached training/validation path and serving's bundle-rebuilt transform give identical tensors."""
    bundle = load_bundle(trained)
    frame = load_dataset(dataset).frame
    eval_transform = build_transform(bundle.preprocess, train=False)
    checked = 0
    for path in frame["path"][:6]:  # includes non-square images
        img = decode_image(Path(path).read_bytes())
        training_side = eval_transform(resize_for_cache(img, bundle.preprocess))
        serving_side = bundle.transform(img)
        assert training_side.shape == (3, 32, 32)
        assert torch.equal(training_side.as_subclass(torch.Tensor), serving_side.as_subclass(torch.Tensor))
        checked += 1
    assert checked == 6


class Preempted(Exception):
    pass


def test_resume_equals_uninterrupted_run(dataset, tmp_path):
    cfg = fast_config(epochs=3, aug_color_jitter=0.2)
    straight = train(dataset, str(tmp_path / "straight"), cfg)

    def preempt_after_two(record):
        if record["epoch"] == 2:
            raise Preempted

    with pytest.raises(Preempted):
        train(dataset, str(tmp_path / "resumed"), cfg, on_epoch_end=preempt_after_two)
    assert not (tmp_path / "resumed" / "bundle.json").exists()
    checkpoint = tmp_path / "resumed.checkpoints" / "last.pt"
    assert torch.load(checkpoint, weights_only=True)["epoch"] == 1  # epochs 0 and 1 done
    # resume with a DataLoader worker this time: augmentation does not depend on where it runs
    resumed = train(dataset, str(tmp_path / "resumed"), cfg.replace(resume=True, num_workers=1))
    a = load_file(str(Path(straight) / "model.safetensors"))
    b = load_file(str(Path(resumed) / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    drop = ("images_per_s", "train_seconds")
    ha = [{k: v for k, v in r.items() if k not in drop} for r in read_meta(straight)["history"]]
    hb = [{k: v for k, v in r.items() if k not in drop} for r in read_meta(resumed)["history"]]
    assert ha == hb and len(ha) == 3


def test_resume_refuses_a_different_recipe(dataset, tmp_path):
    train(dataset, str(tmp_path / "a"), fast_config(epochs=1))
    with pytest.raises(ConfigError, match=r"cannot resume .*lr: 0.003 -> 0.01"):
        train(dataset, str(tmp_path / "a"), fast_config(epochs=2, lr=0.01, resume=True))


def test_unknown_architecture_lists_valid_names(dataset, tmp_path):
    with pytest.raises(
        ConfigError, match=r"unknown architecture 'vgg99'; valid: .*mobilenet_v3_small.*tiny_cnn"
    ):
        TrainConfig(architecture="vgg99")
    result = CliRunner().invoke(
        _cli_app(), ["train", dataset, str(tmp_path / "x"), "--architecture", "vgg99"]
    )
    assert result.exit_code != 0
    assert isinstance(result.exception, ConfigError) and "resnet50" in str(result.exception)


def test_warm_start_fine_tunes_the_champion(dataset, trained, tmp_path):
    champion = load_bundle(trained)
    # a tiny lr: the fine-tuned weights must stay next to the champion's (not a fresh random init)
    cfg = fast_config(epochs=1, lr=1e-7, warmup_epochs=0.0, architecture="resnet18", image_size=None)
    uri = train(dataset, str(tmp_path / "ft"), cfg.replace(warm_start=trained))
    meta = read_meta(uri)
    assert meta["architecture"] == "tiny_cnn"  # the champion's, not the config's
    assert meta["preprocess"] == champion.meta["preprocess"]
    assert meta["lineage"]["parent_model"] == {"uri": trained, "model_version": champion.version}
    tuned = load_file(str(Path(uri) / "model.safetensors"))
    first_conv = "features.0.0.weight"
    assert torch.allclose(tuned[first_conv], champion.model.state_dict()[first_conv], atol=1e-4)
    other = make_dataset(tmp_path / "other", per_class=6, classes=("goggles", "no_goggles"))
    with pytest.raises(ConfigError, match="fine-tuning needs the same classes"):
        train(other, str(tmp_path / "ft2"), cfg.replace(warm_start=trained))


def test_pretrained_weights_with_another_head_size_load_with_the_head_replaced(dataset, tmp_path):
    torch.manual_seed(123)
    foreign = create_model("tiny_cnn", 5)
    torch.save({"module." + k: v for k, v in foreign.state_dict().items()}, tmp_path / "weights.pt")
    uri = train(
        dataset,
        str(tmp_path / "pt"),
        fast_config(epochs=1, lr=1e-7, warmup_epochs=0.0, pretrained=str(tmp_path / "weights.pt")),
    )
    meta = read_meta(uri)
    assert sorted(meta["training"]["head_replaced"]) == ["head.bias", "head.weight"]
    assert meta["lineage"]["pretrained"] == str(tmp_path / "weights.pt")
    tuned = load_file(str(Path(uri) / "model.safetensors"))
    assert tuned["head.weight"].shape == (2, 96)
    assert torch.allclose(
        tuned["features.0.0.weight"], foreign.state_dict()["features.0.0.weight"], atol=1e-4
    )
    with pytest.raises(ConfigError, match="do not fit architecture 'resnet18'"):
        load_pretrained(create_model("resnet18", 2), "resnet18", foreign.state_dict())


def test_config_round_trip_presets_and_errors(tmp_path):
    cfg = TrainConfig(epochs=3, pretrained="s3://b/w.safetensors")
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ConfigError, match=r"unknown training config fields \['epoch'\]; valid: .*epochs"):
        TrainConfig.from_dict({"epoch": 3})
    with pytest.raises(ConfigError, match="optimizer 'adam' unknown; valid: adamw, sgd"):
        TrainConfig(optimizer="adam")
    assert preset("gpu").architecture == "mobilenet_v3_large" and preset("gpu", epochs=2).epochs == 2
    assert set(PRESETS) >= {"cpu-fast", "gpu", "finetune"} and preset("cpu-fast") == TrainConfig()
    spec = resolve_preprocess("resnet18", 160)  # keeps the registry's 224/256 crop share
    assert (spec.image_size, spec.resize_size) == (160, 183)
    assert resolve_preprocess("tiny_cnn", 96, crop_pct=0.5).resize_size == 192
    with pytest.raises(ConfigError, match="crop_pct must be in"):
        TrainConfig(crop_pct=0.1)
    (tmp_path / "c.yaml").write_text("epochs: 4\nlr: 0.01\n")
    assert TrainConfig.from_file(tmp_path / "c.yaml", seed=3) == TrainConfig(epochs=4, lr=0.01, seed=3)


def _cli_app():
    from visionops.cli import app

    return app


def test_cli_trains_and_prints_the_bundle_and_metrics(dataset, tmp_path):
    (tmp_path / "cfg.yaml").write_text("aug_rotation: 0.0\nbatch_size: 8\n")
    out = tmp_path / "cli-bundle"
    args = [
        "train",
        dataset,
        str(out),
        "--preset",
        "cpu-fast",
        "--config",
        str(tmp_path / "cfg.yaml"),
        "--image-size",
        "32",
        "--epochs",
        "1",
        "--num-workers",
        "0",
        "--no-progress",
        "--lr",
        "0.002",
    ]
    result = CliRunner().invoke(_cli_app(), args)
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert lines[-2] == str(out)
    assert lines[-1].startswith("val_auc=") and "val_loss=" in lines[-1]
    config = read_meta(str(out))["config"]
    assert (config["lr"], config["batch_size"], config["aug_rotation"], config["epochs"]) == (
        0.002,
        8,
        0.0,
        1,
    )
    assert config["progress"] is False and config["architecture"] == "small_cnn"


@pytest.mark.integration
def test_trains_from_an_s3_dataset_into_an_s3_bundle(s3, tmp_path):
    dataset = make_dataset(tmp_path, per_class=8, size=40, storage_prefix=f"{s3.bucket}/data")
    assert load_dataset(dataset).frame["path"].str.startswith("s3://").all()
    uri = train(dataset, f"{s3.bucket}/models/m1", fast_config(epochs=1))
    assert uri == f"{s3.bucket}/models/m1"
    bundle = load_bundle(uri)
    assert bundle.meta["lineage"]["dataset_uri"] == dataset
    assert bundle.file("reports/history.json").is_file()
    # the checkpoint went to object storage beside the bundle and loads without unpickling
    client = s3.client()
    names = [o.object_name for o in client.list_objects(s3.bucket[5:], "models/", recursive=True)]
    assert "models/m1.checkpoints/last.pt" in names and "models/m1/bundle.json" in names


@pytest.mark.slow
def test_two_process_ddp_with_gloo_produces_a_valid_bundle(dataset, tmp_path):
    out = tmp_path / "ddp"
    torchrun = ROOT / ".venv" / "bin" / "torchrun"
    if not torchrun.exists():
        torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [
        str(torchrun),
        "--nproc_per_node=2",
        "--master_addr=127.0.0.1",
        f"--master_port={free_port()}",
        str(Path(sys.executable).with_name("visionops")),
        "train",
        dataset,
        str(out),
        "--image-size",
        "32",
        "--epochs",
        "2",
        "--batch-size",
        "8",
        "--num-workers",
        "0",
        "--no-progress",
        "--device",
        "cpu",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-2] == str(out)  # only rank 0 prints
    bundle = load_bundle(str(out))
    assert bundle.meta["lineage"]["world_size"] == 2
    assert len(bundle.meta["history"]) == 2
    # every val image evaluated exactly once across the two ranks
    assert len(pd.read_csv(bundle.file("reports/val_predictions.csv"))) == len(
        load_dataset(dataset).split("val")
    )
    images, _ = _test_images(dataset)
    assert bundle.predict_proba(images).shape == (len(images), 2)
