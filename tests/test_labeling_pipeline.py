"""The labeling loop's adapters: the weekly KFP step (compiled, called directly, run by kfp.local) and the CLI."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner
from visionops import DEFAULT_IMAGE
from visionops.cli import app
from visionops.pipeline.image import IMAGE

from tests.test_labeling import (
    CLASSES,
    bundle_uri,
    scripted_reviewer,
    version_of,
    write_captures,
    write_images,
)

__all__ = ["bundle_uri"]  # the module-scoped fixture, shared


def test_weekly_review_pipeline_compiles(tmp_path):
    from kfp import compiler
    from visionops.pipeline.label_components import weekly_review_pipeline

    out = tmp_path / "weekly.yaml"
    compiler.Compiler().compile(weekly_review_pipeline, str(out))
    docs = list(yaml.safe_load_all(out.read_text()))
    spec, platform = docs[0], docs[1]
    executor = spec["deploymentSpec"]["executors"]["exec-prepare-review-batch"]["container"]
    assert executor["image"] == IMAGE  # visionops.DEFAULT_IMAGE unless VISIONOPS_IMAGE overrides it
    assert IMAGE == DEFAULT_IMAGE or os.environ.get("VISIONOPS_IMAGE")
    assert "pip install" not in " ".join(executor["command"])  # nothing installed at run time
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert params["budget"]["defaultValue"] == 200 and params["days"]["defaultValue"] == 7
    assert {"capture_uri", "champion_uri", "output_uri", "labeled_uris", "random_share"} <= set(params)
    outputs = spec["components"]["comp-prepare-review-batch"]["outputDefinitions"]["artifacts"]
    assert outputs["counts"]["artifactType"]["schemaTitle"] == "system.Metrics"
    secret = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-prepare-review-batch"]
    assert secret["secretAsEnv"][0]["secretName"] == "visionops-s3"
    task = spec["root"]["dag"]["tasks"]["prepare-review-batch"]
    assert task["cachingOptions"] == {} or not task["cachingOptions"].get("enableCache")


def test_component_body_runs_on_tmp_path(tmp_path, bundle_uri):
    from kfp.dsl import Artifact, Metrics
    from visionops.pipeline.label_components import prepare_review_batch

    write_captures(tmp_path / "cap", [0.1, 0.48, 0.55, 0.9], model_version=version_of(bundle_uri))
    batch = Artifact(name="review_batch", uri=str(tmp_path / "batch"), metadata={})
    counts = Metrics(name="counts", uri=str(tmp_path / "counts"), metadata={})
    prepare_review_batch.python_func(
        capture_uri=str(tmp_path / "cap"),
        champion_uri=bundle_uri,
        output_uri="",
        budget=2,
        random_share=0.0,
        days=0,
        labeled_uris=[],
        seed=0,
        presign_endpoint="",
        review_batch=batch,
        counts=counts,
    )
    tasks = json.loads((tmp_path / "batch" / "tasks.json").read_text())
    assert sorted(t["data"]["request_id"] for t in tasks) == ["req-001", "req-002"]
    assert (tmp_path / "batch" / "review.csv").is_file() and (
        tmp_path / "batch" / "labeling_config.xml"
    ).is_file()
    assert counts.metadata["selected"] == 2 and counts.metadata["found"] == 4
    assert batch.metadata["model_version"] == version_of(bundle_uri)


@pytest.mark.slow
def test_weekly_pipeline_runs_with_kfp_local(tmp_path, bundle_uri, monkeypatch):
    import warnings

    from kfp import local
    from visionops.pipeline.label_components import weekly_review_pipeline

    write_captures(tmp_path / "cap", [0.2, 0.5, 0.7], model_version=version_of(bundle_uri))
    monkeypatch.chdir(tmp_path)
    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(tmp_path / "root"),
        raise_on_error=True,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        weekly_review_pipeline(
            capture_uri=str(tmp_path / "cap"),
            champion_uri=bundle_uri,
            output_uri=str(tmp_path / "reviews" / "{week}"),
            budget=2,
            days=0,
        )
    weeks = list((tmp_path / "reviews").iterdir())
    assert len(weeks) == 1 and weeks[0].name.startswith("20") and "-W" in weeks[0].name
    assert len(json.loads((weeks[0] / "tasks.json").read_text())) == 2


def test_cli_loop(tmp_path, bundle_uri, monkeypatch):
    runner = CliRunner()
    write_images(tmp_path / "imgs", 5)

    def ok(*args):
        result = runner.invoke(app, ["label", *map(str, args)])
        assert result.exit_code == 0, result.output + repr(result.exception)
        return result.output

    monkeypatch.chdir(tmp_path)  # a relative SOURCE still gives absolute image URIs downstream
    out = ok(
        "select",
        "imgs",
        tmp_path / "sel",
        "--budget",
        4,
        "--model",
        bundle_uri,
        "--random-share",
        0.5,
    )
    assert "selected 4 of 5 eligible images (2 uncertain, 2 random" in out
    assert "pre-labeled 4 images" in ok("prelabel", tmp_path / "sel", "--model", bundle_uri)
    ok("export", tmp_path / "sel", tmp_path / "tasks.json", "--format", "label-studio")
    ok("export", tmp_path / "sel", tmp_path / "review.csv", "--format", "csv")
    tasks = json.loads((tmp_path / "tasks.json").read_text())
    flip = {tasks[0]["data"]["request_id"]}
    (tmp_path / "export.json").write_text(json.dumps(scripted_reviewer(tasks, flip)))
    out = ok(
        "import", tmp_path / "export.json", "--selection", tmp_path / "sel", "--output", tmp_path / "imp"
    )
    assert "reviewed 4 images, 1 changed by people" in out and "all (n=4): accuracy 0.750" in out
    batch = pd.read_csv(tmp_path / "imp" / "batch.csv")
    assert len(batch) == 4 and all(Path(p).is_absolute() and Path(p).is_file() for p in batch["path"])
    xml = ok("config", "--model", bundle_uri)
    assert xml.startswith("<View>") and all(f'<Choice value="{c}"/>' in xml for c in CLASSES)

    bad = runner.invoke(
        app, ["label", "export", str(tmp_path / "sel"), str(tmp_path / "x"), "--format", "xml"]
    )
    assert bad.exit_code != 0 and "unknown export format 'xml'" in str(bad.exception)


def test_cli_errors_are_one_line_with_exit_status_2(tmp_path):
    import subprocess
    import sys

    missing = tmp_path / "nothing"
    missing.mkdir()
    proc = subprocess.run(
        [
            str(Path(sys.executable).with_name("visionops")),
            "label",
            "select",
            str(missing),
            str(tmp_path / "s"),
            "--budget",
            "3",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: no images under") and "Traceback" not in proc.stderr


def test_cli_merge_csv_only(tmp_path):
    import hashlib

    from visionops.data.manifest import write_dataset

    paths = write_images(tmp_path / "old", 4, first_seed=700)
    frame = pd.DataFrame(
        {
            "path": [str(p) for p in paths],
            "label": ["glasses", "no_glasses"] * 2,
            "sha256": [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths],
            "width": 24,
            "height": 24,
            "split": ["train", "val", "test", "test"],
            "group": "",
        }
    )
    write_dataset(frame, {}, str(tmp_path / "ds"))
    new = write_images(tmp_path / "new", 1, first_seed=750)
    pd.DataFrame([{"path": str(new[0]), "label": "glasses", "group": "", "label_source": "review"}]).to_csv(
        tmp_path / "batch.csv", index=False
    )
    result = CliRunner().invoke(
        app,
        [
            "label",
            "merge",
            str(tmp_path / "ds"),
            str(tmp_path / "batch.csv"),
            str(tmp_path / "l.csv"),
            "--csv-only",
        ],
    )
    assert result.exit_code == 0, result.output
    assert f"ingest with --golden {tmp_path / 'ds'}" in result.output
    combined = pd.read_csv(tmp_path / "l.csv", keep_default_na=False)
    assert sorted(combined["path"]) == sorted([str(paths[0]), str(paths[1]), str(new[0])])
