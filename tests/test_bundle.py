"""The model bundle, the architecture registry and the preprocessing factory."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from visionops import bundle as bundle_mod
from visionops.errors import BundleError, ConfigError, ImageError
from visionops.images import ImageLimits, decode_image, encode_image
from visionops.models import available, create_model, get_entry
from visionops.preprocess import PreprocessSpec, build_transform


def _save_tiny(tmp_path, **meta):
    torch.manual_seed(0)
    model = create_model("tiny_cnn", 2)
    spec = get_entry("tiny_cnn").preprocess
    uri = bundle_mod.save_bundle(
        model,
        {"architecture": "tiny_cnn", "classes": ["glasses", "no_glasses"], "preprocess": spec, **meta},
        str(tmp_path / "bundle"),
    )
    return model, uri


def test_registry_lists_required_architectures():
    for name in [
        "mobilenet_v3_small",
        "mobilenet_v3_large",
        "resnet18",
        "resnet50",
        "efficientnet_b0",
        "convnext_tiny",
        "tiny_cnn",
    ]:
        assert name in available()
    with pytest.raises(ConfigError, match="unknown architecture 'vgg99'; valid: .*resnet18"):
        create_model("vgg99", 2)


def test_bundle_round_trip_gives_identical_predictions(tmp_path):
    model, uri = _save_tiny(tmp_path)
    loaded = bundle_mod.load_bundle(uri)
    x = torch.randn(4, 3, 64, 64)
    model.eval()
    with torch.inference_mode():
        expected = torch.softmax(model(x), 1).numpy()
    np.testing.assert_array_equal(loaded.predict_proba(x), expected)
    assert loaded.positive_class == "glasses" and loaded.threshold == 0.5
    assert loaded.version.startswith("m-")


def test_bundle_from_s3_round_trip(tmp_path, s3):
    model, local = _save_tiny(tmp_path)
    remote = bundle_mod.save_bundle(model, bundle_mod.read_meta(local), f"{s3.bucket}/models/a")
    loaded = bundle_mod.load_bundle(remote)
    assert loaded.version == bundle_mod.read_meta(local)["model_version"]


def test_decide_uses_threshold_on_positive_class(tmp_path):
    _, uri = _save_tiny(tmp_path, threshold=0.8)
    b = bundle_mod.load_bundle(uri)
    probs = np.array([[0.79, 0.21], [0.81, 0.19], [0.1, 0.9]])
    assert b.decide(probs) == ["no_glasses", "glasses", "no_glasses"]


def test_incomplete_or_mismatched_bundle_fails_clearly(tmp_path):
    _, uri = _save_tiny(tmp_path)
    (tmp_path / "bundle" / "model.safetensors").unlink()
    with pytest.raises(BundleError, match="model.safetensors is missing"):
        bundle_mod.load_bundle(uri)
    _, uri = _save_tiny(tmp_path)
    meta = json.loads((tmp_path / "bundle" / "bundle.json").read_text())
    meta["classes"] = ["glasses", "no_glasses", "c"]
    (tmp_path / "bundle" / "bundle.json").write_text(json.dumps(meta))
    # a marker edited by hand names another model than its weights: refused before the weights are used
    with pytest.raises(BundleError, match="belong to different versions"):
        bundle_mod.load_bundle(uri)
    weights = (tmp_path / "bundle" / "model.safetensors").read_bytes()
    meta["model_version"] = bundle_mod.model_version_of(weights, meta)
    (tmp_path / "bundle" / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="do not fit architecture 'tiny_cnn' with 3 classes"):
        bundle_mod.load_bundle(uri)


def test_eval_transform_is_deterministic_and_rebuilt_from_spec(tmp_path):
    _, uri = _save_tiny(tmp_path)
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (90, 120, 3), dtype=np.uint8))
    direct = build_transform(PreprocessSpec(image_size=64, resize_size=72), train=False)(img)
    rebuilt = bundle_mod.load_bundle(uri).transform(img)
    assert torch.equal(direct, rebuilt) and rebuilt.shape == (3, 64, 64)


def test_decode_image_refuses_bad_input():
    good = encode_image(Image.new("RGB", (32, 32), "red"))
    assert decode_image(good).size == (32, 32)
    with pytest.raises(ImageError, match="empty"):
        decode_image(b"")
    with pytest.raises(ImageError, match="not a decodable image"):
        decode_image(b"hello world")
    with pytest.raises(ImageError, match="corrupt or truncated"):
        decode_image(good[: len(good) // 2])
    with pytest.raises(ImageError, match="too many pixels"):
        decode_image(encode_image(Image.new("RGB", (400, 400))), ImageLimits(max_pixels=1000))
    with pytest.raises(ImageError, match="too large"):
        decode_image(good, ImageLimits(max_bytes=10))


BAD_FIELDS = [
    ({"threshold": 2.0}, "threshold"),
    ({"threshold": float("nan")}, "threshold"),
    ({"threshold": "0.5"}, "threshold"),
    ({"positive_class": "helmet"}, "positive_class"),
    ({"preprocess": {"image_size": 0, "resize_size": 0}}, "preprocess"),
    ({"preprocess": {"image_size": "big"}}, "preprocess"),
    ({"classes": ["glasses", "glasses"]}, "classes"),
    ({"classes": "glasses,no_glasses"}, "classes"),
]


@pytest.mark.parametrize(("change", "field"), BAD_FIELDS)
def test_load_refuses_unusable_metadata_naming_the_field(tmp_path, change, field):
    # built through save_bundle, so weights hash and model version stay consistent: only the field is wrong
    torch.manual_seed(0)
    meta = {"architecture": "tiny_cnn", "classes": ["glasses", "no_glasses"]}
    meta["preprocess"] = get_entry("tiny_cnn").preprocess.to_dict()
    meta.update(change)
    uri = bundle_mod.save_bundle(create_model("tiny_cnn", 2), meta, str(tmp_path / "bundle"))
    with pytest.raises(BundleError, match=f"field '{field}'"):
        bundle_mod.load_bundle(uri)
