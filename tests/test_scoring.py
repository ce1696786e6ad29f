"""The one batch-scoring call on a bundle: order, batches, embeddings from the same pass, named failures."""

from __future__ import annotations

import numpy as np
import pytest
from visionops.bundle import load_bundle
from visionops.errors import DataError

from tests.test_drift_support import tiny_bundle
from tests.test_features import noise_image


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    root = tmp_path_factory.mktemp("scoring")
    bundle = load_bundle(tiny_bundle(str(root / "bundle")))
    paths = []
    for seed in range(11):
        path = root / f"img-{seed:02d}.png"
        noise_image(seed, size=96 + 8 * seed).save(path)
        paths.append(str(path))
    return bundle, paths


def test_score_uris_matches_one_big_batch_in_input_order(scored):
    from PIL import Image

    bundle, paths = scored
    expected = bundle.predict_proba([Image.open(p).convert("RGB") for p in paths])
    seen: list[int] = []
    probs = bundle.score_uris(
        paths, batch_size=4, workers=3, on_batch=lambda imgs, p, e: seen.append(len(imgs))
    )
    assert seen == [4, 4, 3], "one callback per batch of at most batch_size images"
    np.testing.assert_allclose(probs, expected, atol=1e-6)
    probs2, emb = bundle.score_uris(paths, batch_size=5, with_embeddings=True)
    np.testing.assert_allclose(probs2, expected, atol=1e-6)
    assert emb.shape == (len(paths), 96) and emb.dtype == np.float32


def test_score_images_and_empty_inputs(scored):
    from PIL import Image

    bundle, paths = scored
    images = [Image.open(p).convert("RGB") for p in paths]
    np.testing.assert_allclose(
        bundle.score_images(images, batch_size=3), bundle.predict_proba(images), atol=1e-6
    )
    assert bundle.score_uris([]).shape == (0, 2)
    probs, emb = bundle.score_images([], with_embeddings=True)
    assert probs.shape == (0, 2) and len(emb) == 0


def test_unreadable_image_is_named(scored, tmp_path):
    bundle, paths = scored
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(DataError, match=r"cannot use image .*bad\.jpg"):
        bundle.score_uris([*paths[:2], str(bad)], batch_size=2)
    with pytest.raises(DataError, match="missing.png"):
        bundle.score_uris([str(tmp_path / "missing.png")])
