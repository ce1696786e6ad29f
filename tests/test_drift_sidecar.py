"""The sidecar as a real HTTP service on 127.0.0.1, fed feature rows computed from real images (synthetic
generator, planted shifts; real face photos), plus the endpoints, metrics, feedback, report upload and CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import ImageEnhance
from visionops import storage

from tests.conftest import free_port, wait_for_port
from tests.test_drift_support import (
    draw_rows,
    feature_bundle,
    image_dataset,
    load_images,
    next_result,
    start_monitor,
    tiny_bundle,
)

pytestmark = pytest.mark.integration

#: every sidecar metric name of docs/ARCHITECTURE.md (counters appear with their _total suffix)
METRICS = [
    "visionops_drift_share",
    "visionops_drift_detected",
    "visionops_feature_drift_score",
    "visionops_feature_drifted",
    "visionops_drift_window_rows",
    "visionops_drift_consecutive_windows",
    "visionops_monitor_rows_received_total",
    "visionops_monitor_rows_rejected_total",
    "visionops_monitor_rows_dropped_total",
    "visionops_drift_last_run_timestamp_seconds",
    "visionops_drift_last_duration_seconds",
    "visionops_prediction_class_share",
    "visionops_mean_confidence",
    "visionops_live_precision",
    "visionops_live_recall",
    "visionops_live_labels_window",
    "visionops_retrain_alert",
    "visionops_retrain_triggered_total",
]
SYNTH_WINDOW = 100
LIKE_WINDOW = 400


def jsonable(rows: list[dict]) -> list[dict]:
    return [{k: (v.item() if hasattr(v, "item") else v) for k, v in r.items()} for r in rows]


@pytest.fixture(scope="module")
def synth_setup(tmp_path_factory):
    """A bundle with a reference from a synthetic set; windows drawn like the reference (resampled from
    its rows) and feature rows of the generator's planted shifts."""
    from visionops.bundle import load_bundle
    from visionops.data import synth
    from visionops.drift.reference import attach_reference, load_reference
    from visionops.features import feature_rows

    root = tmp_path_factory.mktemp("sidecar")
    synth.generate(str(root / "ref"), count=200, size=64, seed=31)
    uri = tiny_bundle(str(root / "bundle"))
    attach_reference(uri, image_dataset(root / "ref", str(root / "ref-ds")))
    bundle = load_bundle(uri)
    reference = load_reference(bundle)
    rng = np.random.default_rng(0)
    rows = {
        "same": jsonable(reference.iloc[rng.integers(0, len(reference), 3 * LIKE_WINDOW)].to_dict("records"))
    }
    for name, seed in [("dark", 33), ("greyscale", 34), ("blur", 35)]:
        synth.generate(str(root / name), count=SYNTH_WINDOW, size=64, seed=seed, shift=name)
        rows[name] = jsonable(feature_rows(bundle, load_images(root / name)))
    return uri, rows


@pytest.fixture(scope="module")
def synth_monitor(synth_setup):
    uri, _ = synth_setup
    server, client = start_monitor(uri, window_size=SYNTH_WINDOW, trigger_dry_run=True)
    yield server, client
    server.stop()


def ingest_window(server, client, rows: list[dict]) -> dict:
    started = time.time()
    for i in range(0, len(rows), 50):
        r = client.post("/ingest", json={"rows": rows[i : i + 50]})
        assert r.status_code == 200, r.text
    try:
        return next_result(server, client, started)
    except TimeoutError:
        m = server.monitor
        raise AssertionError(
            f"no result: rows_since={m._rows_since} errors={m.errors} held={len(m.window)} "
            f"latest={None if m.latest is None else m.latest['timestamp']} started={started} "
            f"worker={m.worker_alive}"
        ) from None


def test_like_reference_no_drift_then_planted_shifts_drift(synth_setup, synth_monitor):
    uri, rows = synth_setup
    server, client = synth_monitor
    same = rows["same"]
    like_server, like_client = start_monitor(uri, window_size=LIKE_WINDOW, trigger_dry_run=True)
    try:
        for start in range(0, 3 * LIKE_WINDOW, LIKE_WINDOW):  # several windows drawn like the reference
            result = ingest_window(like_server, like_client, same[start : start + LIKE_WINDOW])
            assert result["rows"] == LIKE_WINDOW
            assert not result["dataset_drift"], (result["drifted_features"], result["share"])
    finally:
        like_server.stop()
    for shift, expected in [("dark", "brightness"), ("greyscale", "is_greyscale"), ("blur", "sharpness")]:
        result = ingest_window(server, client, rows[shift])  # one window of the planted shift
        assert result["dataset_drift"], (shift, result["drifted_features"])
        assert expected in result["drifted_features"], (shift, result["drifted_features"])
    metrics = client.get("/metrics").text
    for name in METRICS:
        assert (
            f"\n{name}" in metrics
            or metrics.startswith(name)
            or f"# TYPE {name.removesuffix('_total')} " in metrics
        ), name
    assert 'visionops_feature_drifted{feature="sharpness"} 1.0' in metrics
    assert "visionops_drift_detected{model_version=" in metrics
    report = client.get("/report")
    assert report.status_code == 200 and report.headers["content-type"].startswith("text/html")
    assert "sharpness" in report.text and "Evidently" in report.text


def test_bad_rows_are_refused_and_counted(synth_setup, synth_monitor):
    _, rows = synth_setup
    server, client = synth_monitor
    before = server.monitor.metrics.rejected._value.get()
    good = rows["same"][0]
    bad = [
        {**good, "brightness": 7.0},
        {**good, "predicted_class": "cat"},
        "not a row",
        {k: v for k, v in good.items() if k != "sharpness"},
        {**good, "confidence": float("nan")},
    ]
    # NaN is not JSON, but Python clients send it (allow_nan): it must be refused, not stored
    r = client.post(
        "/ingest", content=json.dumps({"rows": [good, *bad]}), headers={"content-type": "application/json"}
    )
    assert r.status_code == 422
    body = r.json()
    assert body["accepted"] == 1 and body["rejected"] == 5
    reasons = [e["errors"][0] for e in body["errors"]]
    assert "'brightness'=7.0 is outside [0.0, 1.0]" in reasons[0]
    assert "not one of the model's classes" in reasons[1]
    assert "must be a JSON object" in reasons[2] and "missing 'sharpness'" in reasons[3]
    assert server.monitor.metrics.rejected._value.get() == before + 5
    assert (
        client.post("/ingest", content=b"{not json", headers={"content-type": "application/json"}).status_code
        == 400
    )
    assert client.post("/ingest", json={"rows": "x"}).status_code == 422
    assert client.post("/ingest", json={"rows": [{**good, "model_version": "m-other"}]}).status_code == 422
    # the service keeps working
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.post("/ingest", json={"rows": [good]}).json() == {"accepted": 1}
    assert client.get("/nope").status_code == 404


def test_feedback_live_precision_recall(tmp_path):
    uri = feature_bundle(tmp_path)
    server, client = start_monitor(
        uri, window_size=1000, min_labels=4, target_precision=0.9, trigger_dry_run=True
    )
    try:
        rows = draw_rows(np.random.default_rng(3), 6)
        for i, row in enumerate(rows):
            row["request_id"] = f"r{i}"
        assert client.post("/ingest", json={"rows": rows}).status_code == 200
        predicted = [r["predicted_class"] for r in rows]
        # label every request with the opposite of what was predicted: precision 0 where defined
        flipped = ["no_glasses" if p == "glasses" else "glasses" for p in predicted]
        r = client.post(
            "/feedback",
            json={"labels": [{"request_id": f"r{i}", "label": lab} for i, lab in enumerate(flipped)]},
        )
        assert r.status_code == 200 and r.json()["matched"] == 6
        q = r.json()["quality"]
        n_pred_pos = predicted.count("glasses")
        assert q["labels"] == 6 and (q["precision"] == 0.0 if n_pred_pos else q["precision"] is None)
        metrics = client.get("/metrics").text
        assert "visionops_live_labels_window 6.0" in metrics
        if n_pred_pos:
            assert "visionops_live_precision 0.0" in metrics and "visionops_retrain_alert 1.0" in metrics
        assert client.post("/feedback", json={"request_id": "unknown", "label": "glasses"}).status_code == 404
        assert client.post("/feedback", json={"request_id": "r0", "label": "dog"}).status_code == 422
    finally:
        server.stop()


def test_report_upload_to_s3(s3, tmp_path):
    uri = feature_bundle(tmp_path)
    reports = f"{s3.bucket}/drift-reports"
    server, client = start_monitor(
        uri, window_size=200, report_uri=reports, report_every_seconds=0.1, trigger_dry_run=True
    )
    try:
        started = time.time()
        client.post("/ingest", json={"rows": draw_rows(np.random.default_rng(4), 200, brightness=0.2)})
        next_result(server, client, started)
        from tests.test_drift_support import wait_until

        wait_until(lambda: storage.exists(f"{reports}/latest.json"), timeout=60)
        uploaded = list(storage.list_uris(reports))
        assert any(u.endswith(".html") and "/drift-m-" in u for u in uploaded)
        assert '"dataset_drift": true' in storage.read_text(f"{reports}/latest.json")
        html = storage.read_text(f"{reports}/latest.html")
        assert html.lstrip().startswith("<!DOCTYPE html>") and "Verdict" in html
    finally:
        server.stop()


@pytest.mark.realdata
@pytest.mark.slow
def test_real_photos_heldout_vs_darkened_greyscale(faces_dir, tmp_path):
    """Held-out real photos vs the reference: no drift; the same photos darkened and greyscale: drift."""
    from PIL import Image
    from visionops.bundle import load_bundle
    from visionops.data.manifest import write_dataset
    from visionops.drift.reference import attach_reference
    from visionops.features import feature_rows

    paths = sorted(faces_dir.glob("*/*.jpg"))
    rng = np.random.default_rng(0)
    rng.shuffle(paths)
    ref_paths, held_out = paths[:400], paths[400:700]
    import hashlib

    import pandas as pd

    frame = pd.DataFrame(
        [
            {
                "path": str(p),
                "label": p.parent.name,
                "sha256": hashlib.sha256(p.read_bytes()).hexdigest(),
                "width": 0,
                "height": 0,
                "split": "val",
                "group": "",
            }
            for p in ref_paths
        ]
    )
    write_dataset(frame, {"source": "faces"}, str(tmp_path / "faces-ref"))
    uri = tiny_bundle(str(tmp_path / "bundle"))
    attach_reference(uri, str(tmp_path / "faces-ref"))
    bundle = load_bundle(uri)
    images = [Image.open(p).convert("RGB") for p in held_out]
    plain = jsonable(feature_rows(bundle, images))
    shifted = jsonable(
        feature_rows(
            bundle, [ImageEnhance.Brightness(img).enhance(0.5).convert("L").convert("RGB") for img in images]
        )
    )
    server, client = start_monitor(uri, window_size=len(images), trigger_dry_run=True)
    try:
        result = ingest_window(server, client, plain)
        assert not result["dataset_drift"], (result["drifted_features"], result["share"])
        result = ingest_window(server, client, shifted)
        assert result["dataset_drift"]
        assert {"brightness", "saturation", "is_greyscale"} <= set(result["drifted_features"])
    finally:
        server.stop()


def test_cli_monitor_subprocess(tmp_path):
    """`visionops monitor` as the container runs it: env settings, real port, ingest, metrics, readiness."""
    uri = feature_bundle(tmp_path)
    port = free_port()
    env = {
        **os.environ,
        "VISIONOPS_MODEL_URI": uri,
        "VISIONOPS_MONITOR_PORT": str(port),
        "VISIONOPS_MONITOR_HOST": "127.0.0.1",
        "VISIONOPS_WINDOW_SIZE": "100",
        "VISIONOPS_TRIGGER_DRY_RUN": "1",
        "VISIONOPS_INSECURE_CONTROL": "true",  # a local run: /ingest open without the ingest token
    }
    exe = Path(sys.executable).parent / "visionops"
    proc = subprocess.Popen(
        [str(exe), "monitor", "--drift-every-seconds", "3600"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for_port(port, timeout=120, proc=proc)
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
        from tests.test_drift_support import wait_until

        wait_until(lambda: client.get("/readyz").status_code == 200, timeout=120)
        assert client.get("/drift").json()["status"] == "waiting"
        assert client.post("/ingest", json={"rows": draw_rows(np.random.default_rng(5), 100)}).json() == {
            "accepted": 100
        }
        result = wait_until(lambda: client.get("/drift").json().get("rows"), timeout=60)
        assert result == 100
        assert "visionops_monitor_rows_received_total 100.0" in client.get("/metrics").text
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_cli_monitor_refuses_bad_settings(tmp_path):
    from typer.testing import CliRunner
    from visionops.cli import app

    result = CliRunner().invoke(app, ["monitor", "--model", str(tmp_path / "missing")])
    assert result.exit_code != 0
    assert "model bundle" in str(result.exception) or "model bundle" in result.output
    result = CliRunner().invoke(app, ["monitor", "--model", "x", "--kfp-params", "[1]"])
    assert "--kfp-params must be a JSON object" in str(result.exception)
