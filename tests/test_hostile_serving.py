"""Hostile and careless input on the serving side, against real ``visionops serve`` processes on 127.0.0.1.

- A bundle no model can be served with fails fast: ``visionops serve`` exits non-zero with one line naming
  the field, before any server starts (no crash loop, no server answering nonsense).
- ``/feedback`` answers every client mistake with a 4xx (a multipart body, a chunked body over the limit),
  logs no traceback, and counts it; a 413 refused from the Content-Length is counted too.
- Two servers on one host keep their own counters (a metrics directory per instance).
- Every 503 carries ``Retry-After``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port
from tests.test_serving import image_bytes, run_server

VISIONOPS = str(Path(sys.executable).with_name("visionops"))


@pytest.fixture(scope="module")
def saved_bundle(tmp_path_factory) -> Path:
    """A real tiny bundle written by save_bundle (weights hash and model version consistent)."""
    import torch
    from visionops.bundle import save_bundle
    from visionops.models import create_model, get_entry

    torch.manual_seed(0)
    meta = {
        "architecture": "tiny_cnn",
        "classes": ["glasses", "no_glasses"],
        "preprocess": get_entry("tiny_cnn").preprocess,
    }
    uri = tmp_path_factory.mktemp("hostile-serving") / "bundle"
    return Path(save_bundle(create_model("tiny_cnn", 2), meta, str(uri)))


# Edits of bundle.json that keep the weights hash and the model version (which covers architecture, classes
# and weights) consistent, so that only the edited field is wrong.
BAD_BUNDLES = {
    "threshold 2.0": ({"threshold": 2.0}, "threshold"),
    "threshold NaN": ({"threshold": float("nan")}, "threshold"),
    "positive class not a class": ({"positive_class": "helmet"}, "positive_class"),
    "image_size 0": ({"preprocess": {"image_size": 0, "resize_size": 0}}, "preprocess"),
    "image_size a string": ({"preprocess": {"image_size": "224px", "resize_size": 256}}, "preprocess"),
    "image_size huge": ({"preprocess": {"image_size": 10**9, "resize_size": 10**9}}, "preprocess"),
}


@pytest.mark.integration
@pytest.mark.parametrize("case", sorted(BAD_BUNDLES))
def test_serve_exits_nonzero_naming_the_bad_field(saved_bundle, tmp_path, case):
    change, field = BAD_BUNDLES[case]
    bad = tmp_path / "bad-bundle"
    bad.mkdir()
    for item in saved_bundle.iterdir():
        if item.is_file():
            (bad / item.name).write_bytes(item.read_bytes())
    meta = json.loads((saved_bundle / "bundle.json").read_text())
    meta.update(change)
    (bad / "bundle.json").write_text(json.dumps(meta))
    env = {**os.environ, "BENTOML_DO_NOT_TRACK": "true", "VISIONOPS_INSECURE_CONTROL": "true"}
    done = subprocess.run(
        [VISIONOPS, "serve", "--model", str(bad), "--port", str(free_port())],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,  # a server that started would run until killed: failing fast means exiting in seconds
    )
    assert done.returncode == 2, (done.returncode, done.stdout[-2000:], done.stderr[-2000:])
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert f"field '{field}'" in lines[0] and str(bad) in lines[0]
    assert "serving" not in done.stdout  # the server was never started


def _requests_total(srv, endpoint: str, status: str) -> float:
    """``visionops_requests_total`` for one endpoint and status, read from the server's /metrics."""
    total = 0.0
    for line in srv.client.get("/metrics").text.splitlines():
        labels = (f'endpoint="{endpoint}"', f'status="{status}"')
        if line.startswith("visionops_requests_total{") and all(x in line for x in labels):
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.fixture(scope="module")
def servers(saved_bundle, tmp_path_factory):
    """TWO ``visionops serve`` processes of the same bundle on one host (each with its own monitor receiver)."""
    first = run_server(str(saved_bundle), tmp_path_factory.mktemp("a"), VISIONOPS_INSECURE_CONTROL="true")
    second = run_server(str(saved_bundle), tmp_path_factory.mktemp("b"), VISIONOPS_INSECURE_CONTROL="true")
    try:
        yield next(first), next(second)
    finally:
        first.close()
        second.close()


def _chunks(total: int, size: int = 8192):
    sent = 0
    while sent < total:
        yield b" " * min(size, total - sent)  # whitespace: valid JSON padding, so only the size is wrong
        sent += size


@pytest.mark.integration
def test_feedback_client_errors_are_4xx_counted_and_never_logged_as_errors(servers):
    srv, _ = servers
    before_415 = _requests_total(srv, "feedback", "415")
    before_413 = _requests_total(srv, "feedback", "413")
    multipart = srv.client.post("/feedback", files={"request_id": ("id.txt", b"x", "text/plain")})
    assert multipart.status_code == 415, multipart.text
    # a chunked body (no Content-Length) of 200 KB: refused while it streams, not after reading it all
    chunked = srv.client.post(
        "/feedback", content=_chunks(200_000), headers={"Content-Type": "application/json"}
    )
    assert chunked.status_code == 413, chunked.text
    deep = srv.client.post("/feedback", content=b"[" * 50_000, headers={"Content-Type": "application/json"})
    assert deep.status_code == 400, deep.text
    wrong_shape = srv.client.post("/feedback", json={"request_id": 7, "label": ["glasses"]})
    assert wrong_shape.status_code == 422, wrong_shape.text
    assert _requests_total(srv, "feedback", "415") == before_415 + 1
    assert _requests_total(srv, "feedback", "413") == before_413 + 1
    # a good request afterwards is still answered
    rid = srv.classify(image_bytes(1, True)).headers["x-request-id"]
    assert srv.client.post("/feedback", json={"request_id": rid, "label": "glasses"}).status_code == 200
    log = (srv.tmp / "server.log").read_text()
    assert "Traceback" not in log and " ERROR " not in log, log[-3000:]


@pytest.mark.integration
def test_oversized_body_refused_from_content_length_is_counted(servers):
    srv, _ = servers
    before = _requests_total(srv, "classify", "413")
    body = b"x" * 2_000_000  # over MAX_BYTES + multipart slack: refused before the body is read
    response = srv.client.post("/classify", content=body, headers={"Content-Type": "image/jpeg"})
    assert response.status_code == 413, response.text
    assert _requests_total(srv, "classify", "413") == before + 1


@pytest.mark.integration
def test_two_servers_on_one_host_keep_their_own_counters(servers):
    first, second = servers
    base_first = _requests_total(first, "classify", "200")
    base_second = _requests_total(second, "classify", "200")
    for seed in range(5):
        assert first.classify(image_bytes(seed, seed % 2 == 0)).status_code == 200
    assert second.classify(image_bytes(9, True)).status_code == 200
    assert _requests_total(first, "classify", "200") == base_first + 5
    assert _requests_total(second, "classify", "200") == base_second + 1


@pytest.mark.integration
def test_every_503_carries_retry_after(saved_bundle, tmp_path):
    # a 10 ms latency bound (the smallest allowed) sheds a burst: the batcher answers 503, and each one must say when to retry
    server = run_server(
        str(saved_bundle), tmp_path, VISIONOPS_INSECURE_CONTROL="true", VISIONOPS_MAX_LATENCY_MS="10"
    )
    srv = next(server)
    try:
        data = image_bytes(3, True)
        answers: list[httpx.Response] = []

        def burst() -> None:
            with httpx.Client(base_url=srv.url, timeout=30) as client:
                for _ in range(10):
                    answers.append(client.post("/classify", files={"image": ("x.jpg", data, "image/jpeg")}))

        threads = [threading.Thread(target=burst) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        shed = [r for r in answers if r.status_code == 503]
        print(f"{len(shed)} of {len(answers)} answers were 503")
        assert shed, "the burst was not shed; the test cannot check Retry-After"
        assert all(r.headers.get("retry-after") == "1" for r in shed)
        assert {r.status_code for r in answers} <= {200, 503}
    finally:
        server.close()
