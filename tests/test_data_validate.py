"""Validation: planted spurious slices, leakage, conflicts, hard failures through the library and the CLI."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from visionops.data import synth
from visionops.data.ingest import ingest
from visionops.data.manifest import load_dataset, write_dataset
from visionops.data.validate import ValidationPolicy, validate
from visionops.errors import ValidationFailed


@pytest.fixture(scope="module")
def spurious_ds(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("spurious")
    synth.generate(str(root / "raw"), count=120, size=32, seed=0, spurious="red_hair")
    return ingest(str(root / "raw"), str(root / "ds"), progress=False).uri


@pytest.fixture(scope="module")
def clean_ds(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("clean")
    synth.generate(str(root / "raw"), count=120, size=32, seed=0)
    return ingest(str(root / "raw"), str(root / "ds"), progress=False).uri


def _derived(src: str, dest: Path, change) -> str:
    """A copy of a dataset whose manifest frame was changed by ``change(frame) -> frame``."""
    ds = load_dataset(src)
    meta = {k: v for k, v in ds.meta.items() if k not in ("version", "golden_version", "counts")}
    quarantine = pd.DataFrame(
        [{"path": "/raw/broken.jpg", "label": "glasses", "reason": "empty image: 0 bytes"}]
    )
    return write_dataset(change(ds.frame.copy()), meta, str(dest), quarantine=quarantine).uri


def test_planted_red_hair_slice_is_flagged(spurious_ds, tmp_path):
    report = validate(spurious_ds, str(tmp_path / "out"))
    assert report.passed  # dominated slices warn by default
    red = [w for w in report.warnings if "hair_colour=red" in w]
    assert len(red) == 1
    assert re.search(r"(\d+) of \1 images are 'glasses' \(100%", red[0])
    assert "Collect hair_colour=red images of the other class" in red[0]
    flagged = [s for s in report.stats["slices"] if s["flagged"]]
    assert [(s["column"], s["value"]) for s in flagged] == [("hair_colour", "red")]
    # the eyewear column describes the label itself and is not checked
    assert any(n["column"] == "eyewear" for n in report.stats["slice_notes"])
    strict = validate(spurious_ds, policy=ValidationPolicy(fail_on_dominated_slices=True))
    assert not strict.passed and "hair_colour=red" in strict.failures[0]
    with pytest.raises(ValidationFailed, match="hair_colour=red"):
        strict.raise_for_failures()


def test_clean_dataset_passes_and_reports_are_written(clean_ds, tmp_path):
    report = validate(clean_ds, str(tmp_path / "out"))
    assert report.passed and report.failures == [] and report.warnings == []
    st = report.stats
    assert st["totals"] == {"glasses": 60, "no_glasses": 60} and st["imbalance_ratio"] == 1.0
    assert sum(sum(c.values()) for c in st["counts"].values()) == 120
    assert st["sizes"]["glasses"]["width"] == {"min": 32, "median": 32.0, "max": 32}
    assert (
        0 < st["pixels"]["glasses"]["brightness"] < 1 and st["pixels"]["no_glasses"]["images_sampled"] == 60
    )
    assert {c["check"] for c in report.checks} >= {
        "images per class",
        "leakage across splits",
        "label conflicts",
        "slice coverage",
        "quarantined files",
    }
    saved = json.loads((tmp_path / "out" / "validation.json").read_text())
    assert saved["passed"] is True and saved["dataset_version"] == report.dataset_version
    html = (tmp_path / "out" / "validation.html").read_text()
    assert html.count("data:image/png;base64,") >= 2
    assert not re.search(r"""(src|href)=["']https?://""", html)  # self-contained
    md = (tmp_path / "out" / "validation.md").read_text()
    assert md.startswith("# Dataset validation: PASSED") and "| hair_colour |" in md
    # the manifest.csv path works too
    assert validate(str(Path(clean_ds) / "manifest.csv")).dataset_version == report.dataset_version


def test_leakage_conflicts_and_small_classes_fail(clean_ds, tmp_path):
    def leak(frame):
        test_row = frame[frame["split"] == "test"].iloc[[0]].assign(split="train")  # same bytes in train
        conflict = frame[frame["split"] == "train"].iloc[[0]]
        conflict = conflict.assign(
            label=conflict["label"].map({"glasses": "no_glasses", "no_glasses": "glasses"})
        )
        group = frame[frame["split"] == "val"].iloc[0]["group"]
        frame.loc[frame[frame["split"] == "train"].index[-1], "group"] = group  # a person in train and val
        return pd.concat([frame, test_row, conflict], ignore_index=True)

    uri = _derived(clean_ds, tmp_path / "leaky", leak)
    report = validate(uri, policy=ValidationPolicy(min_images_per_class=100))
    assert not report.passed
    text = "\n".join(report.failures)
    assert "appear in more than one split by sha256" in text
    assert "group(s) appear in more than one split" in text
    assert "identical bytes but different labels" in text
    assert "class 'glasses' has 6" in text and "fewer than the required 100" in text
    leak_stats = report.stats["leakage"]
    assert len(leak_stats["label_conflicts"]) == 1 and len(leak_stats["groups_across_splits"]) >= 1
    assert report.stats["quarantine"]["files"] == 1
    relaxed = validate(uri, policy=ValidationPolicy(fail_on_leakage=False, fail_on_conflicts=False))
    assert relaxed.passed and any("by sha256" in w for w in relaxed.warnings)


def test_cli_validate_passes_and_fails(clean_ds, tmp_path):
    from typer.testing import CliRunner
    from visionops.cli import app

    runner = CliRunner()
    ok = runner.invoke(app, ["data", "validate", clean_ds, "--output", str(tmp_path / "ok")])
    assert ok.exit_code == 0, ok.output
    assert "validation passed" in ok.output and str(tmp_path / "ok" / "validation.html") in ok.output
    bad = runner.invoke(
        app, ["data", "validate", clean_ds, "--min-per-class", "500", "--output", str(tmp_path / "bad")]
    )
    assert isinstance(bad.exception, ValidationFailed)
    assert "class 'glasses' has 60 images, fewer than the required 500" in str(bad.exception)
    assert (tmp_path / "bad" / "validation.json").is_file()  # the report is written before failing


def test_cli_options_are_the_policy_fields(clean_ds, tmp_path):
    """Every ValidationPolicy field is an option; the policy recorded in validation.json is what was typed."""
    from dataclasses import fields

    from typer.testing import CliRunner
    from visionops.cli import app
    from visionops.errors import ConfigError

    runner = CliRunner()
    help_text = runner.invoke(app, ["data", "validate", "--help"], env={"COLUMNS": "200"}).output
    for flag in (
        "--min-per-class",
        "--allow-leakage",
        "--allow-conflicts",
        "--fail-on-slices",
        "--dominance",
        "--label-column",
        "--slice-alpha",
        "--workers",
    ):
        assert flag in help_text
    assert len(fields(ValidationPolicy)) == 14  # a new field gets an option without touching the CLI
    args = [
        "data",
        "validate",
        clean_ds,
        "--output",
        str(tmp_path / "r"),
        "--allow-leakage",
        "--dominance",
        "0.8",
        "--label-column",
        "eyewear",
        "--label-column",
        "hat",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    recorded = json.loads((tmp_path / "r" / "validation.json").read_text())["policy"]
    assert recorded["fail_on_leakage"] is False and recorded["fail_on_conflicts"] is True
    assert recorded["dominance_share"] == 0.8 and recorded["label_columns"] == ["eyewear", "hat"]
    bad = runner.invoke(app, ["data", "validate", clean_ds, "--dominance", "1.5"])
    assert isinstance(bad.exception, ConfigError) and "must be in (0, 1]" in str(bad.exception)


@pytest.mark.slow
def test_cli_exit_status_and_message(clean_ds, tmp_path):
    """Through the real entry point: a hard failure exits non-zero with the message on stderr."""
    exe = Path(sys.executable).parent / "visionops"
    proc = subprocess.run(
        [str(exe), "data", "validate", clean_ds, "--min-per-class", "500", "--output", str(tmp_path / "r")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "failed validation" in proc.stderr and "fewer than the required 500" in proc.stderr


@pytest.mark.integration
def test_validate_on_s3(s3):
    raw, ds_uri = f"{s3.bucket}/raw", f"{s3.bucket}/ds"
    synth.generate(raw, count=40, size=32, seed=0, spurious="red_hair")
    ingest(raw, ds_uri, progress=False)
    report = validate(ds_uri, f"{ds_uri}/validation")
    assert report.outputs["json"] == f"{ds_uri}/validation/validation.json"
    from visionops import storage

    saved = json.loads(storage.read_text(report.outputs["json"]))
    assert saved["stats"]["images"] == 40
    assert storage.read_text(report.outputs["html"]).startswith("<!DOCTYPE html>")
