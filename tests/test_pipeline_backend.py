"""The compiled pipelines read the way the KFP v2 backend reads them (tests/kfp_backend.py, from
kubeflow/pipelines backend/src/v2/driver and compiler/argocompiler at tag 2.17.0): every field we use must
reach the pod, and a GPU count the driver would drop fails the check.

No ``from __future__ import annotations``: KFP reads the test component's real annotations."""

from pathlib import Path

import pytest
import yaml

from tests.kfp_backend import KFP_TAG, BackendRejects, dropped_gpu_requests, emulate_run

DATA = {"data_uri": "s3://datasets/glasses/raw"}


def _compile(tmp_path: Path, name: str = "training", **settings) -> tuple[dict, dict]:
    from visionops.pipeline.cluster import ClusterSettings
    from visionops.pipeline.compile import compile_pipeline

    path = compile_pipeline(tmp_path / f"{name}.yaml", settings=ClusterSettings(**settings), pipeline=name)
    spec, platform = yaml.safe_load_all(path.read_text())
    return spec, platform


@pytest.fixture(scope="module")
def training(tmp_path_factory) -> tuple[dict, dict]:
    return _compile(
        tmp_path_factory.mktemp("backend"),
        node_selector={"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
        step_node_selector={"pool": "ml"},
    )


def test_train_pod_gets_the_gpus_the_run_asks_for(training):
    spec, platform = training
    assert KFP_TAG == "2.17.0"
    for arguments, expected in (({}, "1"), ({"gpu_count": "2"}, "2"), ({"gpu_count": "0"}, "0")):
        tasks = emulate_run(spec, platform, {**DATA, **arguments})
        assert tasks["train"].limits["nvidia.com/gpu"] == expected, arguments
        assert all("nvidia.com/gpu" not in t.limits for n, t in tasks.items() if n != "train")
    assert dropped_gpu_requests(spec, platform, {**DATA, "gpu_count": "4"}) == []


def test_the_golden_ir_keeps_its_gpu_request():
    spec, platform = yaml.safe_load_all(
        (Path(__file__).parent / "golden" / "training_pipeline.yaml").read_text()
    )
    assert dropped_gpu_requests(spec, platform, {**DATA, "gpu_count": "2"}) == []


def test_an_int_gpu_count_is_dropped_by_the_backend_and_caught(tmp_path):
    """The deliberately broken IR: the pipeline as it was before (gpu_count: int)."""
    from kfp import compiler, dsl, kubernetes

    @dsl.component(base_image="python:3.12", install_kfp_package=False)
    def train(gpu_count: int) -> int:
        return gpu_count

    @dsl.pipeline(name="broken")
    def broken(gpu_count: int = 1):
        task = train(gpu_count=gpu_count)
        task.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(gpu_count)
        kubernetes.add_toleration(task, key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")

    path = tmp_path / "broken.yaml"
    compiler.Compiler().compile(broken, str(path))
    spec, platform = yaml.safe_load_all(path.read_text())
    tasks = emulate_run(spec, platform, {"gpu_count": 2})
    assert "nvidia.com/gpu" not in tasks["train"].limits  # what the real driver does: no GPU, silently
    problems = dropped_gpu_requests(spec, platform, {"gpu_count": 2})
    assert len(problems) == 1 and "no GPU limit" in problems[0]
    with pytest.raises(BackendRejects, match="NUMBER_INTEGER"):
        emulate_run(spec, platform, {"gpu_count": "2"})  # nor can a run pass it as a string


def test_resources_secret_placement_and_shm_reach_the_pods(training):
    spec, platform = training
    tasks = emulate_run(spec, platform, DATA, outputs={("evaluate", "Output"): True})
    pods = {n: t for n, t in tasks.items() if t.executor}
    assert set(pods) == {"ingest", "validate", "train", "evaluate", "package", "deploy"}
    train = pods["train"]
    assert train.limits == {"memory": "32Gi", "cpu": "8", "nvidia.com/gpu": "1"}
    assert train.requests == {"memory": "16Gi", "cpu": "4"}
    assert train.node_selector == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3", "pool": "ml"}
    assert train.tolerations == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert train.volumes == {"dshm": {"emptyDir": {"medium": "Memory", "sizeLimit": "4Gi"}}}
    assert train.mounts == {"dshm": "/dev/shm"}
    for name, pod in pods.items():
        assert pod.env_from_secret == {
            key: ("visionops-s3", key)
            for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "S3_ENDPOINT_URL")
        }, name
        assert pod.node_selector.get("pool") == "ml", name
        assert pod.limits["memory"] and pod.requests["cpu"], name


def test_retries_caching_and_the_gate_condition(training):
    spec, platform = training
    blessed = emulate_run(spec, platform, DATA, outputs={("evaluate", "Output"): True})
    refused = emulate_run(spec, platform, DATA, outputs={("evaluate", "Output"): False})
    retried = {n for n, t in blessed.items() if t.retry}
    assert retried == {"ingest", "validate", "package", "deploy"}
    assert blessed["ingest"].retry == {"limit": 3, "backoff": "30s", "factor": 2.0}
    assert {n for n, t in blessed.items() if t.cache} == {"validate", "train", "package"}
    assert blessed["package"].runs and blessed["deploy"].runs
    assert not refused["package"].runs and not refused["deploy"].runs and refused["evaluate"].runs


@pytest.mark.parametrize("name", ["experiment-analysis", "weekly-review"])
def test_the_other_pipelines_survive_the_backend(tmp_path, name):
    spec, platform = _compile(tmp_path, name, step_node_selector={"pool": "batch"}, s3_secret="minio-creds")
    required = {
        key: "s3://x" if d["parameterType"] == "STRING" else None
        for key, d in spec["root"]["inputDefinitions"]["parameters"].items()
        if "defaultValue" not in d
    }
    (pod,) = emulate_run(spec, platform, required).values()
    assert pod.node_selector == {"pool": "batch"} and pod.retry["limit"] == 3 and not pod.cache
    assert {secret for secret, _ in pod.env_from_secret.values()} == {"minio-creds"}
    assert pod.limits["memory"] and pod.requests["cpu"]


def test_the_train_step_casts_the_string_count():
    from visionops.errors import ConfigError
    from visionops.pipeline.outputs import gpu_processes

    assert [gpu_processes(v) for v in ("2", " 1 ", "0", "", 3)] == [2, 1, 0, 0, 3]
    with pytest.raises(ConfigError, match="whole number"):
        gpu_processes("two")
    with pytest.raises(ConfigError, match=">= 0"):
        gpu_processes("-1")
