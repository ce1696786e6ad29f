"""The synthetic face generator: determinism, class ratio, planted shifts and spurious slices, render_pair."""

from __future__ import annotations

import csv
import hashlib

import numpy as np
import pytest
from PIL import Image
from visionops import storage
from visionops.data import synth
from visionops.errors import ConfigError


def _digest(root) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _rows(root) -> list[dict]:
    with open(root / "labels.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _mean_stats(root) -> tuple[float, float]:
    """Mean brightness and mean saturation (HSV S, 0-255) over the dataset."""
    bright, sat = [], []
    for row in _rows(root):
        img = Image.open(root / row["path"])
        bright.append(np.asarray(img.convert("L"), dtype=float).mean())
        sat.append(np.asarray(img.convert("HSV"), dtype=float)[..., 1].mean())
    return float(np.mean(bright)), float(np.mean(sat))


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = synth.generate(str(tmp_path / "a"), count=12, size=48, seed=3)
    synth.generate(str(tmp_path / "b"), count=12, size=48, seed=3)
    synth.generate(str(tmp_path / "c"), count=12, size=48, seed=4)
    assert a == str(tmp_path / "a")
    da, db, dc = _digest(tmp_path / "a"), _digest(tmp_path / "b"), _digest(tmp_path / "c")
    assert da == db
    assert len(da) == 13  # 12 images + labels.csv
    assert da != dc


def test_layout_labels_csv_and_class_ratio(tmp_path):
    root = tmp_path / "d"
    synth.generate(str(root), count=40, size=48, positive_ratio=0.25, seed=1)
    rows = _rows(root)
    assert len(rows) == 40
    assert sum(r["label"] == "glasses" for r in rows) == 10
    assert set(rows[0]) == {"path", "label", "group", *synth.METADATA_COLUMNS}
    for r in rows:
        assert r["path"].startswith(r["label"] + "/") and (root / r["path"]).is_file()
        assert (r["eyewear"] == "none") == (r["label"] == "no_glasses")
    assert len(list((root / "glasses").glob("*.png"))) == 10
    # a few images per person, so group-aware splitting matters
    groups = {r["group"] for r in rows}
    assert len(groups) == 10
    with Image.open(root / rows[0]["path"]) as img:
        assert img.size == (48, 48) and img.mode == "RGB"


@pytest.mark.parametrize("shift", ["dark", "greyscale", "new_hair", "new_background", "blur"])
def test_shifts_move_statistics_in_the_expected_direction(tmp_path, shift):
    base = tmp_path / "base"
    synth.generate(str(base), count=16, size=48, seed=2)
    shifted = tmp_path / shift
    synth.generate(str(shifted), count=16, size=48, seed=2, shift=shift)
    b_bright, b_sat = _mean_stats(base)
    s_bright, s_sat = _mean_stats(shifted)
    rows = _rows(shifted)
    if shift == "dark":
        assert s_bright < 0.6 * b_bright
        assert {r["lighting"] for r in rows} == {"dark"}
    elif shift == "greyscale":
        assert s_sat == 0.0 < b_sat
    elif shift == "new_hair":
        assert {r["hair_colour"] for r in rows} <= set(synth.NEW_HAIR_COLOURS)
    elif shift == "new_background":
        assert {r["background"] for r in rows} == {"neon"}
        assert s_sat > b_sat
    else:  # blur removes high frequencies: smaller differences between neighbouring pixels

        def edges(root):
            return np.mean(
                [
                    np.abs(
                        np.diff(np.asarray(Image.open(root / r["path"]).convert("L"), float), axis=1)
                    ).mean()
                    for r in _rows(root)
                ]
            )

        assert edges(shifted) < 0.7 * edges(base)


def test_spurious_red_hair_is_few_people_all_with_glasses(tmp_path):
    root = tmp_path / "s"
    synth.generate(str(root), count=80, size=48, seed=0, spurious="red_hair")
    red = [r for r in _rows(root) if r["hair_colour"] == "red"]
    assert 5 <= len(red) <= 12
    assert {r["label"] for r in red} == {"glasses"}
    assert sum(r["label"] == "glasses" for r in _rows(root)) == 40  # the ratio is kept
    # without the plant, nobody has red hair
    clean = tmp_path / "c"
    synth.generate(str(clean), count=80, size=48, seed=0)
    assert not [r for r in _rows(clean) if r["hair_colour"] == "red"]


def test_render_pair_differs_only_around_the_eyes():
    for seed in range(6):
        with_glasses, without = synth.render_pair(seed, size=96)
        a = np.asarray(with_glasses, dtype=int)
        b = np.asarray(without, dtype=int)
        diff = np.abs(a - b).max(axis=2) > 8
        assert diff.sum() > 60, "the glasses must be clearly visible"
        rows = np.flatnonzero(diff.any(axis=1))
        assert rows.min() >= 0.25 * 96 and rows.max() <= 0.72 * 96, (seed, rows.min(), rows.max())
        assert not diff[: int(0.25 * 96)].any() and not diff[int(0.75 * 96) :].any()


def test_render_face_is_deterministic_and_checks_size():
    params = synth.random_params(11)
    assert synth.render_face(params, 64).tobytes() == synth.render_face(params, 64).tobytes()
    with pytest.raises(ConfigError, match="too small"):
        synth.render_face(params, 8)


def test_bad_arguments_are_explained(tmp_path):
    with pytest.raises(ConfigError, match="unknown shift 'foggy'; valid: dark, blur"):
        synth.generate(str(tmp_path), count=4, shift="foggy")
    with pytest.raises(ConfigError, match="positive_ratio"):
        synth.generate(str(tmp_path), count=4, positive_ratio=1.0)
    with pytest.raises(ConfigError, match="unknown spurious"):
        synth.generate(str(tmp_path), count=4, spurious="blue_eyes")


@pytest.mark.integration
def test_generate_to_s3(s3):
    uri = f"{s3.bucket}/synth"
    synth.generate(uri, count=6, size=32, seed=0)
    listed = sorted(storage.relative(u, uri) for u in storage.list_uris(uri))
    assert "labels.csv" in listed and len(listed) == 7
    assert storage.read_text(f"{uri}/labels.csv").startswith("path,label,group")


def test_cli_synth(tmp_path):
    from typer.testing import CliRunner
    from visionops.cli import app

    result = CliRunner().invoke(
        app,
        [
            "data",
            "synth",
            str(tmp_path / "x"),
            "--count",
            "8",
            "--size",
            "32",
            "--positive-ratio",
            "0.5",
            "--shift",
            "dark",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "wrote 8 images (4 glasses, 4 no_glasses, 32x32, shift dark)" in result.output
    assert (tmp_path / "x" / "labels.csv").is_file()
