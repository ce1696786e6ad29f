"""Serving runtimes: the package-time ONNX export in a real bundle, the runtime switch, the fallback to torch
for a missing or corrupt ``model.onnx``, the gate judging the int8 artifact (and refusing one that misses the
precision target), and one real ``visionops serve`` answering from ONNX Runtime.

The bundles are the gate tests' hand-set tiny_cnn on their generated dataset (the red channel decides), so a
good model is known to pass the gate and every refusal here comes from the artifact, not the model.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from visionops import onnx_runtime as ox
from visionops.bundle import load_bundle, read_meta
from visionops.data.manifest import load_dataset
from visionops.errors import ConfigError
from visionops.evaluation import GatePolicy, evaluate
from visionops.images import encode_image
from visionops.serving.predictor import Predictor
from visionops.serving.runtime import choose
from visionops.serving.settings import ServingSettings

from tests.conftest import free_port
from tests.test_evaluation_gate import FAST, dataset, make_bundle  # noqa: F401 (dataset: a fixture)

VISIONOPS = str(Path(sys.executable).with_name("visionops"))


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, dataset):  # noqa: F811
    """The good hand-set model, packaged: model.onnx + model.int8.onnx (calibrated on the train split)."""
    uri = make_bundle(tmp_path_factory.mktemp("runtime") / "bundle", channel=0)
    report = ox.export_bundle(uri, dataset, int8=True, max_calibration=64)
    return uri, report


def golden_images(dataset_uri: str, n: int = 12) -> list:
    from PIL import Image

    frame = load_dataset(dataset_uri).split("test")
    return [Image.open(p).convert("RGB") for p in frame["path"].head(n)]


def copy_bundle(uri: str, dst: Path) -> str:
    shutil.copytree(uri, dst)
    return str(dst)


# -- export -----------------------------------------------------------------------------------------------------
def test_export_stores_graph_parity_and_speed_in_the_bundle(exported, dataset):  # noqa: F811
    uri, report = exported
    golden = len(load_dataset(dataset).split("test"))
    meta = read_meta(uri)
    assert meta["onnx"] == report and report["status"] == "ok"
    parity = report["parity"]
    print("parity on golden images:", parity)
    assert (
        parity["passed"]
        and parity["images"] == min(golden, 256)
        and parity["max_prob_diff"] <= ox.MAX_PROB_DIFF
    )
    assert parity["decisions_differ"] == 0 and parity["max_embedding_diff"] < 1e-4
    for name in (ox.ONNX_FILE, ox.INT8_FILE):
        assert ox.sha256_file(Path(uri) / name) == report["files"][name]["sha256"]
    speed = report["speed"]
    print("images/s at package time:", speed["images_per_s"], "machine", speed["machine"])
    assert set(speed["images_per_s"]) == {"torch", "onnx", "onnx-int8"}
    assert speed["fastest"] == max(speed["best_images_per_s"], key=speed["best_images_per_s"].get)
    assert report["int8"]["status"] == "ok" and report["int8"]["calibration_images"] == 4  # 2 per class


def test_export_without_golden_images_is_reported_and_serving_stays_on_torch(tmp_path):
    uri = make_bundle(tmp_path / "bundle", channel=0)  # no lineage: no dataset to prove parity on
    report = ox.export_bundle(uri)
    assert report["status"] == "skipped" and "--dataset" in report["reason"]
    assert not (Path(uri) / ox.ONNX_FILE).exists()
    predictor = Predictor.load(uri, device="cpu", runtime="onnx")
    assert predictor.runtime.name == "torch" and "--dataset" in predictor.runtime.reason


# -- the runtime switch -----------------------------------------------------------------------------------------
def test_runtime_switch_gives_the_same_answers_and_embeddings(exported, dataset):  # noqa: F811
    uri, report = exported
    images = golden_images(dataset)
    outputs = {}
    for runtime in ("torch", "onnx"):
        predictor = Predictor.load(uri, device="cpu", runtime=runtime, threads=1)
        assert predictor.runtime.name == runtime and predictor.runtime.reason == "requested"
        batch = torch.stack([predictor.to_tensor(img) for img in images])
        outputs[runtime] = (predictor.infer(batch), predictor.predict(images))
    (t_out, t_answers), (o_out, o_answers) = outputs["torch"], outputs["onnx"]
    assert np.abs(t_out.probs - o_out.probs).max() <= ox.MAX_PROB_DIFF
    assert o_out.embeddings is not None and o_out.embeddings.shape == t_out.embeddings.shape
    np.testing.assert_allclose(o_out.embeddings, t_out.embeddings, atol=1e-5)
    assert [a["label"] for a in t_answers] == [a["label"] for a in o_answers]
    auto = Predictor.load(uri, device="cpu", runtime="auto", threads=1)
    servable_speeds = {k: v for k, v in report["speed"]["best_images_per_s"].items() if k != "onnx-int8"}
    assert auto.runtime.name == max(servable_speeds, key=servable_speeds.get)  # int8 not gated yet
    assert auto.runtime.reason.startswith("auto: fastest at package time")


def test_auto_chooses_the_fastest_servable_runtime():
    meta = {
        "onnx": {
            "status": "ok",
            "files": {ox.ONNX_FILE: {"sha256": "a"}, ox.INT8_FILE: {"sha256": "b"}},
            "speed": {"best_images_per_s": {"torch": 50.0, "onnx": 120.0, "onnx-int8": 300.0}},
        }
    }
    assert choose(meta, "auto")[0] == "onnx"  # int8 is faster but the gate has not judged it
    blessed = {"evaluation": {"blessed": True}, "threshold": 0.7, "artifact_sha256": "b"}
    assert choose({**meta, "runtime_evaluations": {"onnx-int8": blessed}}, "auto")[0] == "onnx-int8"
    stale = {**blessed, "artifact_sha256": "other"}
    name, reason = choose({**meta, "runtime_evaluations": {"onnx-int8": stale}}, "onnx-int8")
    assert name == "torch" and "re-run the gate" in reason
    slower = {**meta["onnx"], "speed": {"best_images_per_s": {"torch": 200.0, "onnx": 120.0}}}
    assert choose({"onnx": slower}, "auto")[0] == "torch"
    assert choose({}, "auto") == ("torch", "auto: no speed measured at package time")
    with pytest.raises(ConfigError, match="valid: auto, torch, onnx, onnx-int8"):
        choose(meta, "tensorrt")


def test_runtime_setting_is_read_from_the_environment():
    assert ServingSettings.from_env({}).runtime == "auto"
    settings = ServingSettings.from_env({"VISIONOPS_RUNTIME": "onnx"})
    assert settings.runtime == "onnx" and settings.to_env()["VISIONOPS_RUNTIME"] == "onnx"


# -- fallback ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "damage,reason",
    [
        ("delete", "model.onnx is missing"),
        ("truncate", "model.onnx is corrupt: its sha256 differs"),
        ("garble_and_rehash", "ONNX Runtime cannot load model.onnx"),
    ],
)
def test_missing_or_corrupt_onnx_falls_back_to_torch_with_a_logged_reason(
    exported,
    dataset,  # noqa: F811
    tmp_path,
    caplog,
    damage,
    reason,
):
    uri = copy_bundle(exported[0], tmp_path / "bundle")
    path = Path(uri) / ox.ONNX_FILE
    if damage == "delete":
        path.unlink()
    else:
        path.write_bytes(path.read_bytes()[:1000])
    if damage == "garble_and_rehash":  # the record matches the bad file: ONNX Runtime itself must refuse it
        meta = json.loads((Path(uri) / "bundle.json").read_text())
        meta["onnx"]["files"][ox.ONNX_FILE]["sha256"] = ox.sha256_file(path)
        (Path(uri) / "bundle.json").write_text(json.dumps(meta))
    with caplog.at_level(logging.WARNING, logger="visionops.serving.runtime"):
        predictor = Predictor.load(uri, device="cpu", runtime="onnx", threads=1)
    assert predictor.runtime.name == "torch" and predictor.runtime.fell_back
    assert reason in predictor.runtime.reason
    assert any(reason in r.getMessage() and "serving with torch" in r.getMessage() for r in caplog.records)
    reference = Predictor.load(exported[0], device="cpu", runtime="torch")
    images = golden_images(dataset, 4)  # the fallback serves, with torch's answers
    assert [a["label"] for a in predictor.predict(images)] == [a["label"] for a in reference.predict(images)]


# -- the gate judges the artifact that serves -------------------------------------------------------------------
def test_gate_refuses_an_int8_artifact_that_misses_the_precision_target(dataset, tmp_path):  # noqa: F811
    """int8 calibrated on images unlike production (red channel 0: every "glasses" activation saturates at the
    no-glasses level) loses the precision target: the gate refuses THAT artifact while the same bundle's
    weights pass, and serving refuses to serve it (falls back to torch with the gate's reason). Bundles are
    immutable: each verdict is published in a new gated bundle, the torch one evaluated on the int8 one."""
    uri = make_bundle(tmp_path / "bundle", channel=0)
    bundle = load_bundle(uri)
    golden = bundle.to_tensor(golden_images(dataset, 10_000))  # both classes: the manifest is sorted by label
    calibration = golden.numpy().copy()
    calibration[:, 0] = calibration[:, 0].min()  # the darkest red everywhere: not what production sends
    with tempfile_dir() as tmp:
        ox.attach_export(uri, ox.build_export(bundle, golden, tmp, calibration=calibration, measure=False))
    policy = GatePolicy(**FAST)
    int8_record = evaluate(uri, dataset, str(tmp_path / "eval-int8"), policy=policy, runtime="onnx-int8")
    rules = {r["name"]: r for r in int8_record["rules"]}
    print("int8 gate:", int8_record["blessed"], int8_record["reasons"])
    assert int8_record["runtime"] == "onnx-int8" and not int8_record["blessed"]
    assert rules["precision_constraint"]["status"] == "fail"
    ops = json.loads((tmp_path / "eval-int8" / "metrics.json").read_text())["ops"]
    assert ops["model_size_mb"] == pytest.approx((Path(uri) / ox.INT8_FILE).stat().st_size / 2**20)
    assert "runtime_evaluations" not in read_meta(uri)  # the evaluated bundle is never rewritten
    int8_gated = int8_record["gated_bundle"]
    torch_record = evaluate(int8_gated, dataset, str(tmp_path / "eval-torch"), policy=policy)
    assert torch_record["blessed"], torch_record["reasons"]  # the weights pass: the artifact is what fails
    uri = torch_record["gated_bundle"]
    meta = read_meta(uri)
    assert (
        meta["evaluation"]["blessed"]
        and not meta["runtime_evaluations"]["onnx-int8"]["evaluation"]["blessed"]
    )
    predictor = Predictor.load(uri, device="cpu", runtime="onnx-int8")
    assert (
        predictor.runtime.name == "torch" and "the gate refused the int8 artifact" in predictor.runtime.reason
    )
    assert Predictor.load(uri, device="cpu", runtime="auto").runtime.name in ("torch", "onnx")


def test_gate_blesses_a_good_int8_artifact_and_serving_uses_its_threshold(exported, dataset):  # noqa: F811
    uri, _ = exported
    record = evaluate(
        uri, dataset, str(Path(uri).parent / "eval-int8"), policy=GatePolicy(**FAST), runtime="onnx-int8"
    )
    assert record["blessed"], record["reasons"]
    uri = record["gated_bundle"]  # the verdict is published in the gated bundle, never in the evaluated one
    verdict = read_meta(uri)["runtime_evaluations"]["onnx-int8"]
    assert verdict["artifact_sha256"] == ox.sha256_file(Path(uri) / ox.INT8_FILE)
    predictor = Predictor.load(uri, device="cpu", runtime="onnx-int8", threads=1)
    assert predictor.runtime.name == "onnx-int8"
    assert predictor.threshold == verdict["threshold"]
    answers = predictor.predict(golden_images(dataset, 60))
    truth = list(load_dataset(dataset).split("test")["label"].head(60))
    assert sum(a["label"] == t for a, t in zip(answers, truth, strict=True)) >= 57


def tempfile_dir():
    import tempfile

    return tempfile.TemporaryDirectory()


# -- one real server --------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.integration
def test_served_onnx_answers_equal_in_process_torch(exported, dataset, tmp_path):  # noqa: F811
    uri, _ = exported
    port = free_port()
    env = {**os.environ, "VISIONOPS_RUNTIME": "onnx", "VISIONOPS_MAX_LATENCY_MS": "3000"}
    env["BENTOML_DO_NOT_TRACK"] = "true"
    log_path = tmp_path / "server.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [VISIONOPS, "serve", "--model", uri, "--port", str(port), "--torch-threads", "1"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, log_path.read_text()[-3000:]
            try:
                if client.get("/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.3)
        images = golden_images(dataset, 6)
        reference = Predictor.load(uri, device="cpu", runtime="torch").predict(images)
        files = [
            ("images", (f"{i}.png", encode_image(img, "PNG"), "image/png")) for i, img in enumerate(images)
        ]
        body = client.post("/classify_batch", files=files).json()
        for served, local in zip(body["predictions"], reference, strict=True):
            assert served["label"] == local["label"]
            assert served["probability"] == pytest.approx(local["probability"], abs=ox.MAX_PROB_DIFF)
        assert "runtime onnx (requested), 1 threads" in log_path.read_text()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


@pytest.mark.slow
@pytest.mark.integration
def test_cli_package_exports_onnx_into_bundle_and_bento(dataset, tmp_path):  # noqa: F811
    """`visionops package --dataset` exports, proves parity, and the Bento carries model.onnx beside the weights."""
    import tarfile

    uri = make_bundle(tmp_path / "bundle", channel=0)
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "bentoml"), "BENTOML_DO_NOT_TRACK": "true"}
    result = subprocess.run(
        [VISIONOPS, "package", uri, str(tmp_path / "out"), "--dataset", dataset],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    archive = Path(result.stdout.strip().splitlines()[-1])
    onnx = read_meta(uri)["onnx"]
    assert onnx["status"] == "ok" and onnx["parity"]["passed"] and onnx["golden_version"].startswith("gs-")
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
        bundled = json.loads(tar.extractfile("./src/model/bundle.json").read())
    assert {"./src/model/model.onnx", "./src/model/model.safetensors"} <= names
    assert bundled["onnx"]["files"] == onnx["files"]
