"""A shadow run of two real served models on real face photos: the primary answers, the shadow gets the same
requests (same request id, as a mesh mirror sends them) and records; the analysis pairs them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.conftest import free_port

pytestmark = [pytest.mark.integration, pytest.mark.realdata, pytest.mark.slow]
VISIONOPS = str(Path(sys.executable).parent / "visionops")


def _bundle(tmp: Path, name: str, seed: int) -> str:
    import torch
    from visionops.bundle import save_bundle
    from visionops.models import create_model
    from visionops.preprocess import PreprocessSpec

    torch.manual_seed(seed)
    model = create_model("tiny_cnn", 2)
    spec = PreprocessSpec(image_size=32, resize_size=36)
    return save_bundle(
        model,
        {"architecture": "tiny_cnn", "classes": ["glasses", "no_glasses"], "preprocess": spec},
        str(tmp / name),
    )


def _serve(
    bundle: str, variant: str, tmp: Path, threshold: float | None = None
) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {
        **os.environ,
        "VISIONOPS_VARIANT": variant,
        "VISIONOPS_PREDICTION_LOG": str(tmp / "logs" / variant),
        "VISIONOPS_MAX_LATENCY_MS": "5000",
        "BENTOML_DO_NOT_TRACK": "true",
        "VISIONOPS_TORCH_THREADS": "1",
    }
    if variant == "shadow":
        env.update({"VISIONOPS_CAPTURE_URI": str(tmp / "capture"), "VISIONOPS_CAPTURE_RATE": "1.0"})
    if threshold is not None:
        env["VISIONOPS_THRESHOLD"] = str(threshold)
    proc = subprocess.Popen(
        [VISIONOPS, "serve", "--model", bundle, "--port", str(port)],
        env=env,
        stdout=(tmp / f"{variant}.log").open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    return proc, f"http://127.0.0.1:{port}"


def _ready(url: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(log.read_text()[-2000:])
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise TimeoutError(log.read_text()[-2000:])


def test_shadow_run_of_two_served_models_on_real_photos(faces_dir, tmp_path):
    from visionops.bundle import load_bundle
    from visionops.experiments.analysis import AnalysisConfig, analyze
    from visionops.images import decode_image

    images = (
        sorted((faces_dir / "glasses").glob("*.jpg"))[:30]
        + sorted((faces_dir / "no_glasses").glob("*.jpg"))[:30]
    )
    primary_uri, shadow_uri = _bundle(tmp_path, "primary", 0), _bundle(tmp_path, "shadow", 1)
    # the shadow's threshold at the median of its own scores, so that the two models surely disagree somewhere
    shadow = load_bundle(shadow_uri)
    scores = shadow.predict_proba([decode_image(p.read_bytes()) for p in images])[:, shadow.positive_index]
    procs = [
        _serve(primary_uri, "primary", tmp_path),
        _serve(shadow_uri, "shadow", tmp_path, float(np.median(scores))),
    ]
    try:
        for (proc, url), name in zip(procs, ("primary", "shadow"), strict=True):
            _ready(url, proc, tmp_path / f"{name}.log")
        answers: dict[str, dict[str, str]] = {"primary": {}, "shadow": {}}
        with httpx.Client(timeout=60) as client:
            for i, path in enumerate(images):
                rid = f"req-{i:03d}"
                for (_, url), name in zip(procs, ("primary", "shadow"), strict=True):
                    r = client.post(
                        url + "/classify",
                        files={"image": (path.name, path.read_bytes(), "image/jpeg")},
                        headers={"X-Request-ID": rid},
                    )
                    assert r.status_code == 200, r.text
                    answers[name][rid] = r.json()["label"]
        time.sleep(3)  # the prediction logs and the capture are written off the request path
    finally:
        for proc, _ in procs:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
    disagreeing = sorted(r for r in answers["primary"] if answers["primary"][r] != answers["shadow"][r])
    assert disagreeing, "the two models agree everywhere: the test would prove nothing"
    result = analyze(
        str(tmp_path / "logs"),
        config=AnalysisConfig(design="shadow", control="primary"),
        capture=str(tmp_path / "capture"),
        output=str(tmp_path / "report"),
    )
    assert result["paired_requests"] == len(images)
    assert result["agreement"] == pytest.approx(1 - len(disagreeing) / len(images))
    assert sorted(result["disagreeing_request_ids"]) == disagreeing
    assert sorted(item["request_id"] for item in result["gallery"]) == disagreeing
    html = (tmp_path / "report" / "analysis.html").read_text()
    assert html.count('<img src="data:image/jpeg;base64,') == len(disagreeing)
    assert "Only traffic the primary received" in html
