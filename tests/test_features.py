"""Per-image features: exact values on constructed images, directional checks, speed, and the model outputs."""

from __future__ import annotations

import time

import numpy as np
import pytest
from PIL import Image, ImageFilter
from visionops.features import (
    FEATURE_SCHEMA,
    IMAGE_STATS,
    feature_rows,
    image_stats,
    model_outputs,
    spec_for,
)

from tests.test_drift_support import CLASSES, tiny_bundle


def noise_image(seed: int = 0, size: int = 128) -> Image.Image:
    rng = np.random.default_rng(seed)
    base = rng.integers(40, 220, (size // 8, size // 8, 3), dtype=np.uint8)
    img = Image.fromarray(base).resize((size, size), Image.NEAREST)
    return img.filter(ImageFilter.GaussianBlur(0.6))


def test_image_stats_exact_values_on_flat_images():
    black = image_stats(Image.new("RGB", (40, 20), (0, 0, 0)))
    white = image_stats(Image.new("RGB", (40, 20), (255, 255, 255)))
    red = image_stats(Image.new("RGB", (30, 30), (255, 0, 0)))
    assert black["brightness"] == pytest.approx(0.0) and white["brightness"] == pytest.approx(1.0, abs=1e-5)
    assert black["contrast"] == pytest.approx(0.0) and black["sharpness"] == pytest.approx(0.0)
    assert black["width"] == 40 and black["height"] == 20 and black["aspect"] == pytest.approx(2.0)
    assert red["saturation"] == pytest.approx(1.0) and red["is_greyscale"] == 0.0
    assert red["mean_r"] == pytest.approx(1.0) and red["mean_g"] == pytest.approx(0.0)
    assert white["is_greyscale"] == 1.0 and white["saturation"] == pytest.approx(0.0)
    assert set(black) == set(IMAGE_STATS)


def test_image_stats_directional_dark_grey_blur():
    img = noise_image()
    base = image_stats(img)
    dark = image_stats(img.point(lambda v: int(v * 0.4)))
    grey = image_stats(img.convert("L"))  # mode L accepted
    blurred = image_stats(img.filter(ImageFilter.GaussianBlur(2)))
    assert dark["brightness"] < base["brightness"] * 0.5
    assert grey["is_greyscale"] == 1.0 and base["is_greyscale"] == 0.0 and grey["saturation"] < 0.01
    assert blurred["sharpness"] < base["sharpness"] * 0.5
    assert abs(blurred["brightness"] - base["brightness"]) < 0.02  # blur changes sharpness, not brightness
    rgba = image_stats(img.convert("RGBA"))
    assert rgba["brightness"] == pytest.approx(base["brightness"], abs=1e-6)


def test_image_stats_within_schema_and_fast():
    images = [noise_image(seed, size=256) for seed in range(40)]
    image_stats(images[0])
    started = time.perf_counter()
    rows = [image_stats(img) for img in images]
    per_image_ms = (time.perf_counter() - started) / len(images) * 1000
    # Measured ~1.2 ms on a busy 2-core machine; the bound leaves room for a noisy neighbour.
    assert per_image_ms < 5.0, per_image_ms
    for row in rows:
        for name, value in row.items():
            spec = FEATURE_SCHEMA[name]
            assert spec.low <= value <= spec.high, (name, value)


def test_schema_names():
    assert spec_for("emb_3").kind == "num" and spec_for("predicted_class").kind == "cat"
    assert spec_for("request_id") is None and spec_for("emb_x") is None


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    from visionops.bundle import load_bundle

    return load_bundle(tiny_bundle(str(tmp_path_factory.mktemp("features") / "bundle")))


def test_model_outputs_one_pass_matches_predict_proba(bundle):
    images = [noise_image(seed) for seed in range(5)]
    batch = bundle.to_tensor(images)
    probs, embeddings = model_outputs(bundle, batch)
    assert probs.shape == (5, 2) and embeddings.shape == (5, 96)
    np.testing.assert_allclose(probs, bundle.predict_proba(batch), atol=1e-6)


def test_feature_rows_without_projection(bundle):
    images = [noise_image(seed) for seed in range(4)]
    rows = feature_rows(bundle, images)
    probs = bundle.predict_proba(images)
    assert len(rows) == 4
    for row, p in zip(rows, probs, strict=True):
        assert not any(k.startswith("emb_") for k in row)  # no projection in this bundle yet
        assert row["predicted_class"] in CLASSES
        assert row["positive_prob"] == pytest.approx(float(p[bundle.positive_index]), abs=1e-6)
        assert row["confidence"] == pytest.approx(float(p[CLASSES.index(row["predicted_class"])]), abs=1e-6)
        assert set(row) == set(FEATURE_SCHEMA)
    # precomputed outputs give the same rows without another forward pass
    again = feature_rows(bundle, images, probs=probs)
    assert again == rows
    assert feature_rows(bundle, []) == []
