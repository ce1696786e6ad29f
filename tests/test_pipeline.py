"""The compiled training pipeline: task graph, gate, cluster settings, image, golden copy, CLI compile."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import visionops
import yaml
from visionops.errors import ConfigError

GOLDEN = Path(__file__).parent / "golden" / "training_pipeline.yaml"
STEPS = ("ingest", "validate", "train", "evaluate", "package", "deploy")


def _load(path: Path) -> tuple[dict, dict]:
    spec, platform = yaml.safe_load_all(path.read_text())
    return spec, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> Path:
    from visionops.pipeline.compile import compile_pipeline

    return compile_pipeline(tmp_path_factory.mktemp("ir") / "training_pipeline.yaml")


@pytest.fixture(scope="module")
def ir(compiled) -> tuple[dict, dict]:
    return _load(compiled)


def _tasks(spec: dict) -> dict:
    return spec["root"]["dag"]["tasks"]


def _branch(spec: dict) -> dict:
    return spec["components"]["comp-condition-1"]["dag"]["tasks"]


def _all_tasks(spec: dict) -> dict:
    return {**_tasks(spec), **_branch(spec)}


def test_task_graph_and_dependencies(ir):
    spec, _ = ir
    root = _tasks(spec)
    assert set(root) == {"ingest", "validate", "train", "evaluate", "condition-1"}
    assert "dependentTasks" not in root["ingest"]
    assert root["validate"]["dependentTasks"] == ["ingest"]
    assert sorted(root["train"]["dependentTasks"]) == ["ingest", "validate"]  # train waits for validation
    assert sorted(root["evaluate"]["dependentTasks"]) == ["ingest", "train"]
    assert root["evaluate"]["inputs"]["artifacts"]["model"]["taskOutputArtifact"] == {
        "outputArtifactKey": "model",
        "producerTask": "train",
    }
    assert (
        root["evaluate"]["inputs"]["artifacts"]["dataset"]["taskOutputArtifact"]["producerTask"] == "ingest"
    )
    assert root["evaluate"]["inputs"]["parameters"]["champion_uri"] == {
        "componentInputParameter": "champion_uri"
    }


def test_gate_runs_package_and_deploy_only_when_blessed(ir):
    spec, _ = ir
    condition = _tasks(spec)["condition-1"]
    # ingest: the package step proves ONNX parity on the dataset's golden images
    assert condition["dependentTasks"] == ["evaluate", "ingest"]
    assert condition["triggerPolicy"]["condition"] == (
        "inputs.parameter_values['pipelinechannel--evaluate-Output'] == true"
    )
    assert condition["inputs"]["parameters"]["pipelinechannel--evaluate-Output"]["taskOutputParameter"] == {
        "outputParameterKey": "Output",  # evaluate's return value: the verdict
        "producerTask": "evaluate",
    }
    branch = _branch(spec)
    assert set(branch) == {"package", "deploy"}
    assert branch["deploy"]["dependentTasks"] == ["package"]  # package -> deploy
    for step in ("package", "deploy"):  # both ship the evaluated bundle (with its chosen threshold)
        assert branch[step]["inputs"]["artifacts"]["model"] == {
            "componentInputArtifact": "pipelinechannel--evaluate-candidate"
        }
    assert branch["package"]["inputs"]["artifacts"]["dataset"] == {
        "componentInputArtifact": "pipelinechannel--ingest-dataset"
    }
    assert condition["inputs"]["artifacts"]["pipelinechannel--evaluate-candidate"]["taskOutputArtifact"] == {
        "outputArtifactKey": "candidate",
        "producerTask": "evaluate",
    }


def test_parameters_and_defaults(ir):
    spec, _ = ir
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert "defaultValue" not in params["data_uri"]  # required: no silent default data
    expected = {
        "golden_uri": "",
        "champion_uri": "",
        "architecture": "mobilenet_v3_large",
        "target_precision": 0.95,
        "gpu_count": "1",  # a string: the KFP driver drops a numeric GPU count (test_pipeline_backend.py)
        "warm_start": False,
        "deploy_target": "kubernetes",
        "max_p95_latency_ms": 1000.0,
        "max_model_mb": 200.0,
    }
    for name, default in expected.items():
        assert params[name]["defaultValue"] == default, name
    assert params["gate_overrides"]["parameterType"] == "STRUCT"


def test_typed_artifacts_for_the_ui(ir):
    spec, _ = ir
    comps = spec["components"]

    def out(comp, name):
        return comps[comp]["outputDefinitions"]["artifacts"][name]["artifactType"]["schemaTitle"]

    assert out("comp-ingest", "dataset") == "system.Dataset"
    assert out("comp-validate", "report") == "system.Markdown"
    assert out("comp-validate", "report_html") == "system.HTML"
    assert out("comp-train", "model") == "system.Model"
    assert out("comp-evaluate", "metrics") == "system.Metrics"
    assert out("comp-evaluate", "classification") == "system.ClassificationMetrics"
    assert out("comp-evaluate", "model_card") == "system.Markdown"
    assert out("comp-evaluate", "model_card_html") == "system.HTML"
    assert comps["comp-evaluate"]["outputDefinitions"]["parameters"] == {
        "Output": {"parameterType": "BOOLEAN"}
    }


def test_gpu_request_on_train_only(ir):
    spec, _ = ir
    executors = spec["deploymentSpec"]["executors"]
    accelerator = executors["exec-train"]["container"]["resources"]["accelerator"]
    assert accelerator["resourceType"] == "nvidia.com/gpu"
    assert accelerator["resourceCount"] == "{{$.inputs.parameters['pipelinechannel--gpu_count']}}"
    assert _tasks(spec)["train"]["inputs"]["parameters"]["pipelinechannel--gpu_count"] == {
        "componentInputParameter": "gpu_count"
    }
    for name, executor in executors.items():
        if name != "exec-train":
            assert "accelerator" not in executor["container"]["resources"], name


def test_train_placement_and_shm(ir):
    _, k8s = ir
    train = k8s["exec-train"]
    assert train["emptyDirMounts"] == [
        {"medium": "Memory", "mountPath": "/dev/shm", "sizeLimit": "4Gi", "volumeName": "dshm"}
    ]
    assert train["tolerations"] == [{"effect": "NoSchedule", "key": "nvidia.com/gpu", "operator": "Exists"}]
    for name, executor in k8s.items():
        if name != "exec-train":
            assert "emptyDirMounts" not in executor and "tolerations" not in executor, name


def test_every_step_reads_storage_credentials_from_the_secret(ir):
    spec, k8s = ir
    assert set(k8s) == {f"exec-{step}" for step in STEPS}
    for name, executor in k8s.items():
        (secret,) = executor["secretAsEnv"]
        assert secret["secretNameParameter"] == {"runtimeValue": {"constant": "visionops-s3"}}, name
        assert secret["optional"] is False
        assert [(m["secretKey"], m["envVar"]) for m in secret["keyToEnv"]] == [
            ("AWS_ACCESS_KEY_ID", "AWS_ACCESS_KEY_ID"),
            ("AWS_SECRET_ACCESS_KEY", "AWS_SECRET_ACCESS_KEY"),
            ("S3_ENDPOINT_URL", "S3_ENDPOINT_URL"),
        ]
    # never a credential among the run parameters
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert not [p for p in params if "secret" in p or "key" in p.lower() or "token" in p]


def test_retries_and_caching(ir):
    spec, _ = ir
    tasks = _all_tasks(spec)
    for step in ("ingest", "validate", "package", "deploy"):
        policy = tasks[step]["retryPolicy"]
        assert policy["maxRetryCount"] == 3 and policy["backoffDuration"] == "30s", step
    for step in ("train", "evaluate"):
        assert "retryPolicy" not in tasks[step], step
    cached = {step: tasks[step]["cachingOptions"].get("enableCache", False) for step in STEPS}
    assert cached == {
        "ingest": False,  # the source URI's content changes between runs
        "validate": True,
        "train": True,
        "evaluate": False,  # measures latency; the champion behind its URI changes
        "package": True,
        "deploy": False,  # acts on the cluster
    }


def test_display_names_and_resources(ir):
    spec, _ = ir
    tasks = _all_tasks(spec)
    names = {step: tasks[step]["taskInfo"]["name"] for step in STEPS}
    assert names == {
        "ingest": "Ingest images",
        "validate": "Validate data",
        "train": "Train model",
        "evaluate": "Evaluate and gate",
        "package": "Package Bento",
        "deploy": "Deploy model",
    }
    for step in STEPS:
        resources = spec["deploymentSpec"]["executors"][f"exec-{step}"]["container"]["resources"]
        for key in ("resourceCpuRequest", "resourceCpuLimit", "resourceMemoryRequest", "resourceMemoryLimit"):
            assert resources[key], (step, key)
    train = spec["deploymentSpec"]["executors"]["exec-train"]["container"]["resources"]
    assert (train["resourceCpuRequest"], train["resourceMemoryLimit"]) == ("4", "32Gi")


def test_image_is_the_package_version_and_nothing_is_installed(ir, monkeypatch):
    spec, _ = ir
    from visionops.pipeline.image import IMAGE

    assert IMAGE == visionops.DEFAULT_IMAGE == f"ghcr.io/visionops/visionops:{visionops.__version__}"
    for name, executor in spec["deploymentSpec"]["executors"].items():
        container = executor["container"]
        assert container["image"] == visionops.DEFAULT_IMAGE, name
        command = " ".join(container["command"])
        assert "pip install" not in command, name  # install_kfp_package=False, no packages_to_install
        assert "from visionops" in command  # the body imports the library in the pod


def test_compile_is_deterministic_and_matches_golden(compiled, tmp_path):
    from visionops.pipeline.compile import compile_pipeline

    again = compile_pipeline(tmp_path / "again.yaml")
    assert again.read_bytes() == compiled.read_bytes()
    assert GOLDEN.exists(), "tests/golden/training_pipeline.yaml is missing: run `make golden`"
    assert compiled.read_text() == GOLDEN.read_text(), (
        "the compiled pipeline differs from tests/golden/training_pipeline.yaml; if the change is intended, "
        "regenerate it with `make golden` and review the diff"
    )


def test_compile_settings_image_selector_tolerations(tmp_path):
    from visionops.pipeline.compile import compile_pipeline
    from visionops.pipeline.training import ClusterSettings, parse_node_selector, parse_toleration

    settings = ClusterSettings(
        image="registry.example.com/team/visionops:dev",
        s3_secret="minio-creds",
        node_selector=parse_node_selector(["cloud.google.com/gke-accelerator=nvidia-h100-80gb"]),
        tolerations=(parse_toleration("dedicated=ml:NoSchedule"), parse_toleration("nvidia.com/gpu")),
        shm_size="8Gi",
    )
    spec, k8s = _load(compile_pipeline(tmp_path / "custom.yaml", settings=settings))
    images = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}
    assert images == {"registry.example.com/team/visionops:dev"}
    train = k8s["exec-train"]
    assert train["nodeSelector"] == {"labels": {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"}}
    assert train["tolerations"] == [
        {"effect": "NoSchedule", "key": "dedicated", "operator": "Equal", "value": "ml"},
        {"key": "nvidia.com/gpu", "operator": "Exists"},
    ]
    assert train["emptyDirMounts"][0]["sizeLimit"] == "8Gi"
    assert {e["secretAsEnv"][0]["secretName"] for e in k8s.values()} == {"minio-creds"}


def test_bad_settings_are_refused(tmp_path):
    from visionops.pipeline.compile import compile_pipeline
    from visionops.pipeline.training import ClusterSettings, parse_node_selector, parse_toleration

    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_node_selector(["gpu"])
    with pytest.raises(ConfigError, match="effect 'NoRun' unknown"):
        parse_toleration("a=b:NoRun")
    with pytest.raises(ConfigError, match="Secret"):
        ClusterSettings(s3_secret="")
    with pytest.raises(ConfigError, match=r"\.yaml"):
        compile_pipeline(tmp_path / "pipeline.json")


def test_parameters_are_coerced_and_checked():
    from visionops.pipeline.training import coerce_parameters, parse_param_items

    raw = parse_param_items(
        ["epochs=3", "warm_start=true", "learning_rate=0.01", 'gate_overrides={"max_memory_mb": 512}']
    )
    assert coerce_parameters(raw) == {
        "epochs": 3,
        "warm_start": True,
        "learning_rate": 0.01,
        "gate_overrides": {"max_memory_mb": 512},
    }
    with pytest.raises(ConfigError, match="unknown pipeline parameters \\['epoch'\\]; valid: .*epochs"):
        coerce_parameters({"epoch": "3"})
    with pytest.raises(ConfigError, match="epochs='three' is not a valid integer"):
        coerce_parameters({"epochs": "three"})
    with pytest.raises(ConfigError, match="NAME=VALUE"):
        parse_param_items(["epochs"])


def test_cli_compile(tmp_path):
    from typer.testing import CliRunner
    from visionops.cli import app

    out = tmp_path / "pipelines" / "training_pipeline.yaml"
    result = CliRunner().invoke(
        app, ["pipeline", "compile", str(out), "--image", "my.registry/visionops:1", "--secret", "s3-creds"]
    )
    assert result.exit_code == 0, result.output
    assert f"compiled pipeline: {out}" in result.output
    spec, k8s = _load(out)
    assert (
        spec["deploymentSpec"]["executors"]["exec-train"]["container"]["image"] == "my.registry/visionops:1"
    )
    assert k8s["exec-ingest"]["secretAsEnv"][0]["secretName"] == "s3-creds"


def test_cli_compile_options_are_the_cluster_settings_fields(tmp_path):
    """`visionops pipeline compile` has one option per ClusterSettings field (generated, not declared a second
    time), and each reaches the compiled IR."""
    from dataclasses import fields

    from typer.testing import CliRunner
    from visionops.cli import app
    from visionops.pipeline.cluster import ClusterSettings
    from visionops.settings import spec_of

    runner = CliRunner()
    help_text = runner.invoke(app, ["pipeline", "compile", "--help"], env={"COLUMNS": "200"}).output
    for f in fields(ClusterSettings):
        flag = (spec_of(f).flags or ("--" + f.name.replace("_", "-"),))[0]
        assert (flag in help_text) == spec_of(f).cli, flag
    out = tmp_path / "custom.yaml"
    result = runner.invoke(
        app,
        [
            "pipeline", "compile", str(out), "--image", "registry.example.com/visionops:2",
            "--secret", "minio-creds", "--node-selector", "gpu=h100", "--node-selector", "zone=a",
            "--step-node-selector", "pool=batch", "--toleration", "dedicated=ml:NoSchedule",
            "--toleration", "nvidia.com/gpu", "--shm-size", "16Gi", "--retries", "1", "--retry-backoff", "10s",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    spec, k8s = _load(out)
    images = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}
    assert images == {"registry.example.com/visionops:2"}
    assert {e["secretAsEnv"][0]["secretName"] for e in k8s.values()} == {"minio-creds"}
    assert k8s["exec-train"]["nodeSelector"] == {"labels": {"pool": "batch", "gpu": "h100", "zone": "a"}}
    assert k8s["exec-ingest"]["nodeSelector"] == {"labels": {"pool": "batch"}}
    assert k8s["exec-train"]["tolerations"] == [
        {"effect": "NoSchedule", "key": "dedicated", "operator": "Equal", "value": "ml"},
        {"key": "nvidia.com/gpu", "operator": "Exists"},
    ]
    assert k8s["exec-train"]["emptyDirMounts"][0]["sizeLimit"] == "16Gi"
    retry = _tasks(spec)["ingest"]["retryPolicy"]
    assert retry["maxRetryCount"] == 1 and retry["backoffDuration"] == "10s"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--toleration", "gpu:NoRun"], "toleration effect 'NoRun' unknown"),
        (["--node-selector", "gpu"], "must look like KEY=VALUE"),
        (["--retries", "-1"], "retries must be >= 0, got -1"),
        (["--secret", ""], "s3_secret must name the Kubernetes Secret"),
    ],
)
def test_a_bad_cluster_option_is_one_clear_line(args, message, tmp_path, monkeypatch, capsys):
    from visionops.cli import run

    out = tmp_path / "x.yaml"
    monkeypatch.setattr(sys, "argv", ["visionops", "pipeline", "compile", str(out), *args])
    with pytest.raises(SystemExit) as exit_info:
        run()
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err and "Traceback" not in err
    assert not out.exists()


def test_user_script_compiles_the_same_pipeline(tmp_path):
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[1] / "pipelines" / "training_pipeline.py"
    out = tmp_path / "training_pipeline.yaml"
    proc = subprocess.run(
        [sys.executable, str(script), "--output", str(out)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert out.read_text() == GOLDEN.read_text()


def test_cli_run_needs_local():
    from typer.testing import CliRunner
    from visionops.cli import app

    result = CliRunner().invoke(app, ["pipeline", "run"])
    assert result.exit_code != 0
    assert isinstance(result.exception, ConfigError)
    assert "only --local runs happen here" in str(result.exception)


def test_visionops_image_env_overrides_the_image_at_compile_time(tmp_path):
    import os
    import subprocess
    import sys

    out = tmp_path / "env.yaml"
    env = {**os.environ, "VISIONOPS_IMAGE": "registry.internal/visionops:rc1"}
    code = (
        "import sys; from visionops.pipeline.compile import compile_pipeline; compile_pipeline(sys.argv[1])"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(out)], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    spec, _ = _load(out)
    images = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}
    assert images == {"registry.internal/visionops:rc1"}


@pytest.mark.parametrize(
    ("name", "executor"),
    [("experiment-analysis", "exec-analyze-experiment"), ("weekly-review", "exec-prepare-review-batch")],
)
def test_every_pipeline_takes_the_cluster_settings(tmp_path, name, executor):
    """--image, --secret and the step node selector reach the experiment and labeling pipelines too."""
    from typer.testing import CliRunner
    from visionops.cli import app

    out = tmp_path / f"{name}.yaml"
    result = CliRunner().invoke(
        app,
        [
            "pipeline", "compile", str(out), "--pipeline", name,
            "--image", "registry.example.com/visionops:dev", "--secret", "minio-creds",
            "--step-node-selector", "pool=batch",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    spec, k8s = _load(out)
    assert spec["deploymentSpec"]["executors"][executor]["container"]["image"] == (
        "registry.example.com/visionops:dev"
    )
    assert k8s[executor]["secretAsEnv"][0]["secretName"] == "minio-creds"
    assert k8s[executor]["nodeSelector"] == {"labels": {"pool": "batch"}}
    task = next(iter(spec["root"]["dag"]["tasks"].values()))
    assert task["retryPolicy"]["maxRetryCount"] == 3  # ClusterSettings.retries, as the training steps


def test_unknown_pipeline_is_refused(tmp_path):
    from visionops.pipeline.compile import compile_pipeline

    with pytest.raises(ConfigError, match="valid: training, experiment-analysis, weekly-review"):
        compile_pipeline(tmp_path / "x.yaml", pipeline="nightly")


def test_the_library_never_imports_the_demo():
    """Dependencies point one way: only demo/ itself imports visionops.demo (the sidecar's trigger included)."""
    import ast

    package = Path(visionops.__file__).parent
    offenders = []
    for path in package.rglob("*.py"):
        if path.is_relative_to(package / "demo"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else []
            )
            offenders += [
                f"{path.relative_to(package)}: {n}" for n in names if n.startswith("visionops.demo")
            ]
    assert offenders == []
