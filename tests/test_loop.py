"""The closed loop end to end at tiny scale (what ``make demo`` runs, smaller): champion -> serving + sidecar +
Prometheus + Alertmanager -> unshifted traffic (no alarm) -> shifted traffic -> alert -> webhook -> a local
retraining run started through ``local://`` -> gate -> roll forward -> the served model version changes.
Plus the local launcher's parameter mapping and host dispatch."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest

from tests.conftest import ROOT, require_binary


def test_pipeline_command_maps_parameters(tmp_path):
    from visionops.pipeline.local_runs import pipeline_command

    argv = pipeline_command(
        tmp_path,
        {
            "data_uri": "s3://d/v2.csv",
            "golden_uri": "s3://d/v1",
            "champion_uri": "/m/1",
            "warm_start": True,
            "epochs": 2,
            "gate_overrides": {"confidence": 0.5},
            "pretrained_uri": "",
        },
    )
    tail = argv[argv.index("--output") + 2 :]
    assert tail == [
        "--champion", "/m/1",
        "--data", "s3://d/v2.csv",
        "--param", "epochs=2",
        "--param", 'gate_overrides={"confidence": 0.5}',
        "--golden", "s3://d/v1",
        "--param", "warm_start=true",
    ]  # fmt: skip


def test_local_hosts_dispatch_to_the_launcher(tmp_path):
    from visionops.errors import ConfigError
    from visionops.pipeline import client as kfp_client
    from visionops.pipeline.local_runs import runs_dir_of

    assert runs_dir_of(f"local://{tmp_path}") == str(tmp_path)
    with pytest.raises(ConfigError, match="local runner knows 'visionops-training'"):
        kfp_client.create_run(f"local://{tmp_path}", pipeline_name="other", params={}, experiment="e")
    with pytest.raises(ConfigError, match="local://"):
        runs_dir_of("http://ml-pipeline:8888")
    assert list(tmp_path.iterdir()) == []  # nothing started


def _port_closed(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


@pytest.mark.slow
def test_demo_loop_closes_the_loop_at_tiny_scale(tmp_path):
    require_binary("prometheus")
    require_binary("prometheus-alertmanager")
    out = tmp_path / "demo"
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "from visionops.cli import run; run()",
            "demo",
            "loop",
            "--fast",
            "--output",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=1500,
        cwd=ROOT,
    )
    summary = json.loads((out / "summary.json").read_text())
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert summary["ok"] is True
    for check in (
        "champion_blessed",
        "prometheus_scrapes",
        "no_false_alarm",
        "drift_detected",
        "alert_fired",
        "alert_path",
        "retrain_triggered",
        "retrain_succeeded",
        "golden_untouched",
        "deployed",
        "served_version_changed",
    ):
        assert summary["checks"].get(check) is True, (check, summary["checks"])
    # exactly one retraining run, started by the Alertmanager webhook, warm-started on the reviewed data
    runs = sorted((out / "runs").iterdir())
    assert len(runs) == 1
    request = json.loads((runs[0] / "request.json").read_text())
    assert "alert-VisionOpsDriftPersisting" in request["run_name"]
    params = request["params"]
    assert params["warm_start"] is True and params["champion_uri"] == summary["info"]["champion_uri"]
    assert (
        params["data_uri"].endswith("retrain-labels.csv")
        and params["golden_uri"] == summary["info"]["dataset_v1"]
    )
    assert json.loads((runs[0] / "status.json").read_text())["state"] == "succeeded"
    # the local deploy target points at the new model, which serving answered with
    state = json.loads((out / "deployment" / "current_model.json").read_text())
    assert state["model_uri"] == summary["info"]["new_model_uri"] != summary["info"]["champion_uri"]
    assert summary["info"]["new_version"] != summary["info"]["champion_version"]
    # the timeline was printed as it happened, and everything was cleaned up
    stages = [e["stage"] for e in summary["timeline"]]
    for stage in (
        "pipeline",
        "gate",
        "labeling",
        "serving",
        "monitor",
        "drift",
        "alert",
        "trigger",
        "deploy",
    ):
        assert stage in stages
        assert f"] {stage}" in proc.stdout
    assert (out / "summary.html").read_text().lstrip().lower().startswith("<!doctype html")
    assert (out / "reports" / "drift" / "latest.html").is_file()
    for port in (summary["info"]["serving_port"], summary["info"]["monitor_port"]):
        assert _port_closed(port), f"port {port} still open after the demo"


def test_demo_rules_only_shorten_for():
    from visionops.demo.loop import DEMO_FOR, RULES_MANIFEST
    from visionops.demo.observability import rules_from_manifest, shorten_for

    rules = rules_from_manifest(RULES_MANIFEST)
    demo = shorten_for(rules, DEMO_FOR)
    original = [r for g in rules["groups"] for r in g["rules"]]
    shortened = [r for g in demo["groups"] for r in g["rules"]]
    assert [r["expr"] for r in shortened] == [r["expr"] for r in original]
    assert [r.get("annotations") for r in shortened] == [r.get("annotations") for r in original]
    assert {r["for"] for r in shortened if "alert" in r} == {DEMO_FOR}
    assert "5s" not in {r.get("for") for r in original}  # the manifest itself is untouched


def test_demo_loop_cli_help():
    from typer.testing import CliRunner
    from visionops.cli import app

    result = CliRunner().invoke(app, ["demo", "loop", "--help"])
    assert result.exit_code == 0
    for option in ("--output", "--fast", "--observability", "--stage-timeout"):
        assert option in result.output
