"""Ingestion: ImageFolder and labels CSV sources, local and S3, quarantine, duplicates, splits, golden set."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import shutil
from pathlib import Path

import pytest
from PIL import Image
from visionops import storage
from visionops.data import synth
from visionops.data.ingest import OPEN, assign_splits, ingest
from visionops.data.manifest import load_dataset
from visionops.errors import ConfigError, DataError, StorageError


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory) -> Path:
    """40 synthetic images of 10 people, with labels.csv (groups + metadata)."""
    root = tmp_path_factory.mktemp("synth") / "faces"
    synth.generate(str(root), count=40, size=32, seed=0)
    return root


def _imagefolder(synth_dir: Path, dest: Path) -> Path:
    """The same images as a bare ImageFolder (no labels.csv)."""
    for cls in synth.CLASSES:
        shutil.copytree(synth_dir / cls, dest / cls)
    (dest / "README.md").write_text("not an image, beside the class folders: ignored")
    return dest


def _csv(path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _sha(path) -> str:
    return hashlib.sha256(storage.read_bytes(str(path))).hexdigest()


def test_imagefolder_local(synth_dir, tmp_path):
    src = _imagefolder(synth_dir, tmp_path / "src")
    ds = ingest(str(src), str(tmp_path / "ds"), progress=False)
    frame = ds.frame
    assert len(frame) == 40 and ds.classes == ["glasses", "no_glasses"]
    assert ds.meta["positive_class"] == "glasses"
    assert ds.version.startswith("ds-") and ds.golden_version.startswith("gs-")
    # stratified 70/15/15 on 20 + 20 images
    counts = frame.groupby(["split", "label"]).size().to_dict()
    assert counts == {
        ("train", "glasses"): 14,
        ("train", "no_glasses"): 14,
        ("val", "glasses"): 3,
        ("val", "no_glasses"): 3,
        ("test", "glasses"): 3,
        ("test", "no_glasses"): 3,
    }
    # content-addressed copies inside the dataset, hashes verified, facts recorded
    for row in frame.itertuples():
        assert row.path == str((tmp_path / "ds" / "images" / row.sha256[:2] / f"{row.sha256}.png").resolve())
        assert _sha(row.path) == row.sha256 == _sha(row.source)
        assert (row.width, row.height, row.mode, row.format) == (32, 32, "RGB", "PNG")
    assert load_dataset(str(tmp_path / "ds")).version == ds.version
    # same input and seed -> the same version
    again = ingest(str(src), str(tmp_path / "ds2"), progress=False)
    assert again.version == ds.version and again.golden_version == ds.golden_version


def test_labels_csv_gives_group_aware_splits_and_metadata(synth_dir, tmp_path):
    ds = ingest(str(synth_dir), str(tmp_path / "ds"), progress=False)  # reads synth_dir/labels.csv
    frame = ds.frame
    assert len(frame) == 40
    assert ds.meta["splits"]["group_aware"] is True
    assert frame.groupby("group")["split"].nunique().max() == 1  # one person never in two splits
    assert set(frame["split"]) == {"train", "val", "test"}
    assert ds.metadata_columns == list(synth.METADATA_COLUMNS)
    assert set(frame["eyewear"]) - {"none"} <= set(synth.EYEWEAR)
    # an explicit CSV elsewhere, with absolute paths and only path,label
    csv_path = tmp_path / "lists" / "mine.csv"
    csv_path.parent.mkdir()
    rows = _csv(synth_dir / "labels.csv")
    with open(csv_path, "w", newline="") as fh:
        fh.write("path,label\n" + "".join(f"{synth_dir / r['path']},{r['label']}\n" for r in rows[:20]))
    with pytest.raises(DataError, match="point outside it.*--allow-outside-source"):
        ingest(str(csv_path), str(tmp_path / "ds2"), progress=False)  # outside the CSV's own directory
    ds2 = ingest(str(csv_path), str(tmp_path / "ds2"), progress=False, confinement=OPEN)
    assert len(ds2.frame) == 20 and set(ds2.frame["group"]) == {""}


def test_group_aware_split_keeps_groups_whole_and_stratifies():
    labels = ["a"] * 60 + ["b"] * 40
    groups = [f"g{i // 5}" for i in range(100)]  # 20 groups of 5, each group one label
    splits = assign_splits(labels, groups, {"train": 0.7, "val": 0.15, "test": 0.15}, seed=1)
    per_group = {}
    for g, s in zip(groups, splits, strict=True):
        per_group.setdefault(g, set()).add(s)
    assert all(len(s) == 1 for s in per_group.values())
    for lab, total in (("a", 60), ("b", 40)):
        n_test = sum(1 for x, s in zip(labels, splits, strict=True) if x == lab and s == "test")
        assert abs(n_test - 0.15 * total) <= 5  # within one group of the target
    assert assign_splits(labels, groups, {"train": 0.7, "val": 0.15, "test": 0.15}, seed=1) == splits


def _bad_files(root: Path, good: bytes) -> None:
    cls = root / "glasses"
    (cls / "zero.jpg").write_bytes(b"")
    (cls / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (cls / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    (cls / "notes.txt").write_text("these are not pixels")
    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, format="PNG")
    (cls / "tiny.png").write_bytes(buf.getvalue())
    buf = io.BytesIO()
    Image.new("RGB", (32, 32)).save(buf, format="TIFF")
    (cls / "scan.tiff").write_bytes(buf.getvalue())


def test_unusable_files_are_quarantined_with_reasons(synth_dir, tmp_path):
    src = _imagefolder(synth_dir, tmp_path / "src")
    buf = io.BytesIO()
    Image.open(next((src / "glasses").glob("*.png"))).save(buf, format="JPEG", quality=90)
    _bad_files(src, buf.getvalue())
    ds = ingest(str(src), str(tmp_path / "ds"), progress=False)
    assert len(ds.frame) == 40
    q = {Path(r["path"]).name: r["reason"] for r in _csv(tmp_path / "ds" / "quarantine.csv")}
    assert set(q) == {"zero.jpg", "truncated.jpg", "corrupt.png", "notes.txt", "tiny.png", "scan.tiff"}
    assert "empty image" in q["zero.jpg"]
    assert "truncated" in q["truncated.jpg"]
    assert "corrupt" in q["corrupt.png"] or "not a decodable image" in q["corrupt.png"]
    assert "not a decodable image" in q["notes.txt"]
    assert "absurd image dimensions 4x4" in q["tiny.png"]
    assert "unsupported image format 'TIFF'" in q["scan.tiff"]
    assert ds.meta["ingest"]["quarantined"] == 6


def test_duplicates_kept_once_and_conflicts_excluded(synth_dir, tmp_path):
    src = _imagefolder(synth_dir, tmp_path / "src")
    glasses = sorted((src / "glasses").glob("*.png"))
    shutil.copy(glasses[0], src / "glasses" / "copy_of_first.png")  # exact duplicate, same label
    shutil.copy(glasses[1], src / "no_glasses" / "mislabelled.png")  # same bytes, other label: conflict
    ds = ingest(str(src), str(tmp_path / "ds"), progress=False)
    frame = ds.frame
    assert len(frame) == 39  # 40 - both sides of the conflict
    assert _sha(glasses[0]) in set(frame["sha256"])
    assert _sha(glasses[1]) not in set(frame["sha256"])
    assert frame["sha256"].is_unique
    report = json.loads((tmp_path / "ds" / "ingest_report.json").read_text())
    assert report["duplicates_dropped"] == 1
    assert report["duplicates"][0]["sha256"] == _sha(glasses[0])
    assert len(report["conflicts"]) == 1
    assert {i["label"] for i in report["conflicts"][0]["items"]} == {"glasses", "no_glasses"}
    q = _csv(tmp_path / "ds" / "quarantine.csv")
    assert len(q) == 2 and all("label conflict" in r["reason"] for r in q)
    assert ds.meta["ingest"]["conflicts"] == 1


def test_golden_set_is_kept_and_never_in_train_or_val(synth_dir, tmp_path):
    v1 = ingest(str(synth_dir), str(tmp_path / "v1"), progress=False)
    golden_shas = set(v1.split("test")["sha256"])
    # new images (other people) next to the old ones
    new_src = tmp_path / "new"
    synth.generate(str(new_src), count=24, size=32, seed=9)
    both = tmp_path / "both.csv"
    rows = [{**r, "path": str(synth_dir / r["path"])} for r in _csv(synth_dir / "labels.csv")]
    rows += [{**r, "path": str(new_src / r["path"])} for r in _csv(new_src / "labels.csv")]
    with open(both, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    v2 = ingest(
        str(both), str(tmp_path / "v2"), golden=str(tmp_path / "v1"), seed=5, progress=False, confinement=OPEN
    )
    assert v2.golden_version == v1.golden_version
    assert set(v2.split("test")["sha256"]) == golden_shas
    assert not golden_shas & (set(v2.split("train")["sha256"]) | set(v2.split("val")["sha256"]))
    assert len(v2.frame) == 64
    # the golden images now live in v2's own image store
    assert all(p.startswith(str((tmp_path / "v2").resolve())) for p in v2.split("test")["path"])
    # re-ingesting with yet another image keeps the golden version
    v3 = ingest(
        str(both),
        str(tmp_path / "v3"),
        golden=str(tmp_path / "v2" / "manifest.csv"),
        progress=False,
        confinement=OPEN,
    )
    assert v3.golden_version == v1.golden_version
    # extending the golden set is explicit and changes its version
    v4 = ingest(
        str(both),
        str(tmp_path / "v4"),
        golden=str(tmp_path / "v1"),
        extend_golden=True,
        progress=False,
        confinement=OPEN,
    )
    assert set(v4.split("test")["sha256"]) > golden_shas
    assert v4.golden_version != v1.golden_version


def test_golden_people_never_leak_into_train(synth_dir, tmp_path):
    v1 = ingest(str(synth_dir), str(tmp_path / "v1"), progress=False)
    golden_groups = set(v1.split("test")["group"])
    # a new photo of a golden person must not reach train/val
    person = sorted(golden_groups)[0]
    src = tmp_path / "src"
    shutil.copytree(synth_dir, src)
    img = Image.open(src / v1.split("test")["source"].iloc[0].split("/faces/")[-1]).rotate(90)
    img.save(src / "glasses" / "extra.png")
    with open(src / "labels.csv", "a") as fh:
        fh.write(f"glasses/extra.png,glasses,{person},I,black,none,plain,normal,round\n")
    v2 = ingest(str(src), str(tmp_path / "v2"), golden=str(tmp_path / "v1"), progress=False)
    assert v2.golden_version == v1.golden_version
    assert person not in set(v2.split("train")["group"]) | set(v2.split("val")["group"])
    q = _csv(tmp_path / "v2" / "quarantine.csv")
    assert len(q) == 1 and "is in the golden test set" in q[0]["reason"]


def test_clear_errors(tmp_path, synth_dir):
    with pytest.raises(DataError, match="does not exist"):
        ingest(str(tmp_path / "nope"), str(tmp_path / "out"), progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images found under"):
        ingest(str(tmp_path / "empty"), str(tmp_path / "out"), progress=False)
    one = tmp_path / "one"
    shutil.copytree(synth_dir / "glasses", one / "glasses")
    with pytest.raises(DataError, match=r"found 1 class\(es\) \['glasses'\].*at least 2"):
        ingest(str(one), str(tmp_path / "out"), progress=False)
    bad = tmp_path / "bad.csv"
    bad.write_text("file,class\na.png,glasses\n")
    with pytest.raises(DataError, match="needs 'path' and 'label'"):
        ingest(str(bad), str(tmp_path / "out"), progress=False)
    with pytest.raises(ConfigError, match="sum below 1"):
        ingest(str(synth_dir), str(tmp_path / "out"), val_fraction=0.5, test_fraction=0.5, progress=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.integration
def test_s3_source_and_output(s3, tmp_path):
    src = f"{s3.bucket}/raw/faces"
    synth.generate(src, count=24, size=32, seed=0)
    ds = ingest(src, f"{s3.bucket}/datasets/v1", progress=False)
    assert len(ds.frame) == 24
    loaded = load_dataset(f"{s3.bucket}/datasets/v1")
    assert loaded.version == ds.version
    row = loaded.frame.iloc[0]
    assert row["path"] == f"{s3.bucket}/datasets/v1/images/{row['sha256'][:2]}/{row['sha256']}.png"
    assert hashlib.sha256(storage.read_bytes(row["path"])).hexdigest() == row["sha256"]
    # an ImageFolder prefix without labels.csv, into a local output
    client = s3.client()
    bucket = s3.bucket.removeprefix("s3://")
    client.remove_object(bucket, "raw/faces/labels.csv")
    local = ingest(src, str(tmp_path / "ds"), progress=False)
    assert sorted(local.frame["sha256"]) == sorted(ds.frame["sha256"])


@pytest.mark.integration
def test_s3_missing_bucket_and_empty_prefix(s3, tmp_path):
    with pytest.raises(StorageError, match="bucket 'no-such-bucket-x' does not exist"):
        ingest("s3://no-such-bucket-x/raw", str(tmp_path / "out"), progress=False)
    with pytest.raises(DataError, match=f"no images found under {s3.bucket}/nothing-here"):
        ingest(f"{s3.bucket}/nothing-here", str(tmp_path / "out"), progress=False)


def test_cli_ingest(synth_dir, tmp_path):
    from typer.testing import CliRunner
    from visionops.cli import app

    result = CliRunner().invoke(
        app,
        [
            "data",
            "ingest",
            str(synth_dir),
            str(tmp_path / "ds"),
            "--seed",
            "1",
            "--val-fraction",
            "0.2",
            "--test-fraction",
            "0.2",
            "--workers",
            "2",
        ],
    )
    assert result.exit_code == 0, result.output
    ds = load_dataset(str(tmp_path / "ds"))
    assert f"dataset {ds.version} written to" in result.output
    assert "found 40, usable 40, quarantined 0" in result.output
    assert ds.meta["splits"] == {"val_fraction": 0.2, "test_fraction": 0.2, "seed": 1, "group_aware": True}


@pytest.mark.realdata
@pytest.mark.slow
def test_real_faces(faces_dir, tmp_path):
    ds = ingest(str(faces_dir), str(tmp_path / "faces"), workers=4, progress=False)
    assert len(ds.frame) == 2000
    assert ds.meta["ingest"]["quarantined"] == 0
    counts = ds.meta["counts"]
    assert counts == {
        "train": {"glasses": 700, "no_glasses": 700},
        "val": {"glasses": 150, "no_glasses": 150},
        "test": {"glasses": 150, "no_glasses": 150},
    }
    assert ds.frame["sha256"].is_unique
