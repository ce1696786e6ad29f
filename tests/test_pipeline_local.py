"""The whole training pipeline through ``kfp.local`` (SubprocessRunner, this environment) on tiny synthetic
data: the blessed branch (package + deploy run, the local deploy target writes its state file) and the refused
branch (the run ends green, the decision record says why, package and deploy are skipped)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

#: Tiny on purpose: these tests prove the graph and both branches of the gate, not model quality.
TINY = {"architecture": "tiny_cnn", "image_size": 32, "epochs": 1, "batch_size": 32}
#: Rules a barely trained model passes for sure: predicting "glasses" for everything already has a precision
#: of about 0.5 >= 0.3; budgets and behaviour tests are report-only here (their own tests live elsewhere).
EASY_GATE = {
    "target_precision": 0.3,
    "max_p95_latency_ms": 0.0,
    "gate_overrides": {
        "confidence": 0.5,
        "require_golden_precision": False,
        "min_invariance_rate": "none",  # KFP parameters cannot carry null: "none" = report only
        "min_directional_rate": "none",
        "min_functionality_rate": "none",
        "min_throughput": "none",
        "max_memory_mb": "none",
        "behaviour_samples": 8,
        "latency_runs": 5,
    },
}


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory) -> str:
    from visionops.data.synth import generate

    return generate(str(tmp_path_factory.mktemp("synth") / "images"), count=120, size=32, seed=0)


def test_blessed_run_packages_and_deploys(demo_data, tmp_path):
    from visionops.deploy import STATE_FILE
    from visionops.pipeline.local import format_summary, run_local

    result = run_local(tmp_path, data_uri=demo_data, params={**TINY, **EASY_GATE})

    assert result.blessed, result.decision["reasons"]
    assert result.decision["verdict"] == "blessed"
    for name in (
        "dataset",
        "validation report",
        "model bundle",
        "model card",
        "decision",
        "bento",
        "deployment record",
    ):
        assert name in result.paths, name
    bundle = result.paths["model bundle"]
    meta = json.loads((bundle / "bundle.json").read_text())
    assert (
        meta["threshold"] == result.decision["challenger"]["threshold"]
    )  # evaluation wrote it into the bundle
    assert (bundle / "reports" / "evaluation" / "model_card.md").is_file()
    assert result.paths["validation report"].read_text().lstrip().lower().startswith("<!doctype html")
    assert result.paths["bento"].exists()
    state = json.loads((tmp_path / "deployment" / STATE_FILE).read_text())
    assert state["model_uri"] == str(bundle)  # locally the artifact path is the model URI
    assert result.deployment["target"] == "local"
    assert result.metrics["blessed"] == 1.0
    summary = format_summary(result)
    assert "verdict: BLESSED" in summary and str(bundle) in summary and "bento:" in summary


def test_refused_run_ends_green_and_skips_package_and_deploy(demo_data, tmp_path):
    from typer.testing import CliRunner
    from visionops.cli import app

    out = tmp_path / "run"
    result = CliRunner().invoke(
        app,
        [
            "pipeline",
            "run",
            "--local",
            "--data",
            demo_data,
            "--output",
            str(out),
            "--target-precision",
            "0.999999",
            "--architecture",
            "tiny_cnn",
            "--epochs",
            "1",
            "-p",
            "image_size=32",
            "-p",
            'gate_overrides={"behaviour_samples": 8, "latency_runs": 5}',
        ],
    )
    assert result.exit_code == 0, result.output
    assert "verdict: REFUSED" in result.output
    assert "package and deploy were skipped" in result.output
    (run_dir,) = (out / "pipeline_root").glob("visionops-training-*")
    decision = json.loads((run_dir / "evaluate" / "decision").read_text())
    assert decision["blessed"] is False and decision["verdict"] == "refused"
    failed = [rule["name"] for rule in decision["rules"] if rule["status"] == "fail"]
    assert "precision_constraint" in failed
    assert (run_dir / "evaluate" / "model_card").read_text().strip()  # the card explains the refusal
    assert not (run_dir / "package").exists() and not (run_dir / "deploy").exists()
    assert not (out / "deployment").exists()


def test_failing_step_fails_the_run_with_its_name(tmp_path):
    from visionops.pipeline.local import PipelineRunFailed, run_local

    empty = tmp_path / "no-images"
    empty.mkdir()
    with pytest.raises(
        PipelineRunFailed, match="the local pipeline run failed: .*Inner task failed: 'ingest'"
    ):
        run_local(tmp_path / "out", data_uri=str(empty), params=TINY)
    assert Path(tmp_path / "out" / "pipeline_root").is_dir()


def test_multi_gpu_train_step_runs_ddp_processes(tmp_path):
    """gpu_count > 1: the train step starts one DDP process per device with PyTorch's elastic launcher (gloo
    on CPU here; nccl with one process per GPU in a pod)."""
    from visionops.data.ingest import ingest
    from visionops.data.synth import generate
    from visionops.pipeline.outputs import run_training, train_config

    source = generate(str(tmp_path / "images"), count=60, size=32, seed=2)
    ingest(source, str(tmp_path / "dataset"), progress=False)
    config = train_config(architecture="tiny_cnn", image_size=32, epochs=1, batch_size=8, device="cpu")
    uri = run_training(str(tmp_path / "dataset"), str(tmp_path / "model"), config, processes=2)
    meta = json.loads((Path(uri) / "bundle.json").read_text())
    assert meta["lineage"]["world_size"] == 2
    assert (Path(uri) / "model.safetensors").is_file()
