"""The reference profile in the bundle's drift slot: files, metadata, and the same rows online and offline."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner
from visionops import storage
from visionops.bundle import load_bundle, read_meta
from visionops.drift.reference import (
    PROJECTION_FILE,
    REFERENCE_FILE,
    attach_reference,
    fit_projection,
    load_reference,
)
from visionops.errors import BundleError, DataError
from visionops.features import feature_rows

from tests.test_drift_support import image_dataset, load_images, tiny_bundle


@pytest.fixture(scope="module")
def synth_images(tmp_path_factory) -> Path:
    from visionops.data import synth

    out = tmp_path_factory.mktemp("ref") / "images"
    synth.generate(str(out), count=48, size=64, seed=11)
    return out


@pytest.fixture(scope="module")
def dataset(synth_images, tmp_path_factory) -> str:
    return image_dataset(synth_images, str(tmp_path_factory.mktemp("ref-ds") / "dataset"))


def test_attach_reference_local(dataset, synth_images, tmp_path):
    uri = tiny_bundle(str(tmp_path / "bundle"))
    entry = attach_reference(uri, dataset, components=4)
    assert (tmp_path / "bundle" / REFERENCE_FILE).is_file() and (
        tmp_path / "bundle" / PROJECTION_FILE
    ).is_file()
    meta = read_meta(uri)
    assert meta["drift"] == json.loads(json.dumps(entry))
    assert entry["rows"] == 48 and entry["embedding_dim"] == 4 and entry["penultimate_dim"] == 96
    assert entry["model_version"] == meta["model_version"]
    bundle = load_bundle(uri)
    ref = load_reference(bundle)
    assert len(ref) == 48 and [f"emb_{i}" for i in range(4)] == [
        c for c in ref.columns if c.startswith("emb_")
    ]
    # whitened projection: unit variance, zero mean on the reference
    np.testing.assert_allclose(ref[[f"emb_{i}" for i in range(4)]].std(), 1.0, atol=1e-3)
    # online rows (serving path) equal the stored reference rows for the same images
    frame = pd.read_csv(Path(dataset) / "manifest.csv")
    by_path = dict(zip(frame["path"], range(len(frame)), strict=True))
    paths = sorted(by_path)[:6]
    from PIL import Image

    online = pd.DataFrame(feature_rows(bundle, [Image.open(p).convert("RGB") for p in paths]))
    offline = ref.set_index(frame["path"]).loc[paths].reset_index(drop=True)
    assert offline["label"].tolist() == frame.set_index("path").loc[paths, "label"].tolist()
    offline = offline.drop(columns=["label"])  # the true label: reference only, for reweighting
    pd.testing.assert_frame_equal(online[offline.columns], offline, check_dtype=False, atol=1e-4)
    # thresholds calibrated per window size are kept with the reference
    calibration = entry["calibration"]
    assert calibration["window_sizes"][0] == 50 and calibration["window_sizes"][-1] == 10_000
    assert (tmp_path / "bundle" / calibration["file"]).is_file()
    assert all(size["threshold"] > 0 for size in calibration["sizes"].values())
    assert len(load_images(synth_images)) == 48


def test_attach_reference_s3(s3, dataset):
    uri = tiny_bundle(f"{s3.bucket}/models/m1")
    entry = attach_reference(uri, dataset, max_rows=20, components=3)
    assert entry["rows"] == 20
    assert storage.exists(f"{uri}/{REFERENCE_FILE}") and storage.exists(f"{uri}/{PROJECTION_FILE}")
    bundle = load_bundle(uri)
    assert len(load_reference(bundle)) == 20
    assert bundle.meta["drift"]["reference"] == REFERENCE_FILE


def test_errors(dataset, tmp_path):
    uri = tiny_bundle(str(tmp_path / "bundle"))
    with pytest.raises(BundleError, match="no drift reference"):
        load_reference(load_bundle(uri))
    with pytest.raises(DataError, match="no 'test' images"):
        attach_reference(uri, dataset, split="test")
    with pytest.raises(DataError, match="at least 2 embeddings"):
        fit_projection(np.zeros((1, 8)))


def test_cli_reference(dataset, tmp_path):
    from visionops.cli import app

    uri = tiny_bundle(str(tmp_path / "bundle"))
    result = CliRunner().invoke(
        app, ["drift", "reference", "--model", uri, "--data", dataset, "--max-rows", "10"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output[result.output.index("{") :])["rows"] == 10
    assert read_meta(uri)["drift"]["rows"] == 10
