"""Hostile and careless clients against the control plane, on real processes on 127.0.0.1 (issue 17).

- the drift sidecar (``visionops monitor`` subprocesses, a stand-in KFP API that records every run request):
  anonymous ``/alerts`` refused, the trigger's state survives a restart (no second run inside the cooldown),
  20,000 junk alert names neither grow it nor pin it, a wrong Content-Length is answered within the socket
  timeout, deep JSON gets 400, over-long strings and bodies are refused, every error is JSON;
- serving (``visionops serve``, the serving tests' fixture with secrets): request ids signed, feedback only
  from a reviewer and only for ids serving issued, forwarded to the sidecar with the reviewer token;
- the router (real HTTP, backends that sign ids with the same library): forged feedback refused and the
  shares unmoved, a failing variant ejected and re-probed.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from visionops.auth import AuthSettings, ControlAuth, RequestIdSigner

from tests.conftest import free_port, wait_for_port
from tests.test_drift_support import KfpStandIn, draw_rows, feature_bundle, wait_until

pytestmark = pytest.mark.integration

VISIONOPS = str(Path(sys.executable).with_name("visionops"))
ALERT_TOKEN = "alert-token-of-the-hostile-tests-0123"
REVIEWER_TOKEN = "reviewer-token-of-the-hostile-tests-0123"
FEEDBACK_KEY = "feedback-key-of-the-hostile-tests-0123456789"
INGEST_TOKEN = "ingest-token-of-the-hostile-tests-0123"
AS_ALERTMANAGER = {"Authorization": f"Bearer {ALERT_TOKEN}"}
AS_REVIEWER = {"Authorization": f"Bearer {REVIEWER_TOKEN}"}
AS_SERVING = {"Authorization": f"Bearer {INGEST_TOKEN}"}


@pytest.fixture(scope="module")
def secrets_dir(tmp_path_factory) -> Path:
    """The four Secrets as mounted files (what the manifests mount under /var/run/secrets/visionops)."""
    root = tmp_path_factory.mktemp("secrets")
    tokens = (
        ("alert-token", ALERT_TOKEN),
        ("reviewer-token", REVIEWER_TOKEN),
        ("ingest-token", INGEST_TOKEN),
    )
    for name, value in tokens:
        (root / name).write_text(value + "\n")
    (root / "feedback-key").write_text(FEEDBACK_KEY)
    return root


def secret_env(secrets: Path) -> dict[str, str]:
    return {
        "VISIONOPS_ALERT_TOKEN_FILE": str(secrets / "alert-token"),
        "VISIONOPS_REVIEWER_TOKEN_FILE": str(secrets / "reviewer-token"),
        "VISIONOPS_INGEST_TOKEN_FILE": str(secrets / "ingest-token"),
        "VISIONOPS_FEEDBACK_KEY_FILE": str(secrets / "feedback-key"),
    }


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> str:
    return feature_bundle(tmp_path_factory.mktemp("hostile"))


@pytest.fixture
def kfp():
    server = KfpStandIn()
    yield server
    server.close()


class Sidecar:
    """``visionops monitor`` as the container runs it (settings from the environment), in its own group."""

    def __init__(self, bundle: str, log_path: Path, env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        full_env = {
            **os.environ,
            "VISIONOPS_MODEL_URI": bundle,
            "VISIONOPS_MONITOR_HOST": "127.0.0.1",
            "VISIONOPS_MONITOR_PORT": str(self.port),
            "VISIONOPS_DRIFT_EVERY_SECONDS": "3600",
            **env,
        }
        with log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [VISIONOPS, "monitor"],
                env=full_env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            wait_for_port(self.port, timeout=180, proc=self.proc)
        except Exception:
            self.kill()
            raise AssertionError(f"the sidecar did not start: {log_path.read_text()[-3000:]}") from None
        self.client = httpx.Client(base_url=self.url, timeout=30)

    def alerts(self, payload: dict, headers: dict | None = AS_ALERTMANAGER) -> httpx.Response:
        return self.client.post("/alerts", json=payload, headers=headers)

    def counter(self, name: str) -> float:
        text = self.client.get("/metrics").text
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))

    def kill(self, sig: int = signal.SIGKILL) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=30)


@pytest.fixture
def start_sidecar(bundle, tmp_path, secrets_dir):
    started: list[Sidecar] = []

    def start(**env: str) -> Sidecar:
        sidecar = Sidecar(bundle, tmp_path / "monitor.log", {**secret_env(secrets_dir), **env})
        started.append(sidecar)
        return sidecar

    yield start
    for sidecar in started:
        sidecar.kill()


def webhook(*names: str, status: str = "firing") -> dict:
    """An Alertmanager webhook payload (version 4) with one alert per name."""
    alerts = [
        {"status": status, "labels": {"alertname": n}, "annotations": {"summary": f"{n} fired"}}
        for n in names
    ]
    return {"version": "4", "status": status, "receiver": "visionops-retrain", "alerts": alerts}


# -- the library pieces -----------------------------------------------------------------------------------------
def test_signed_ids_verify_only_unchanged_and_under_the_same_key():
    signer = RequestIdSigner(FEEDBACK_KEY)
    rid = signer.sign("cam7-000123")
    base, _, signature = rid.rpartition(".")
    assert base == "cam7-000123" and len(signature) == 22 and signer.verify(rid)
    flipped = signature[:5] + ("A" if signature[5] != "A" else "B") + signature[6:]
    assert not signer.verify(f"{base}.{flipped}")
    assert not signer.verify(f"cam7-000124.{signature}")  # the signature belongs to its id
    assert not RequestIdSigner("another-key-0123456789abcdef").verify(rid)
    assert not signer.verify("cam7-000123") and not signer.verify("x" * 10_000 + "." + signature)


def test_secrets_from_files_with_clear_errors(tmp_path):
    from visionops.errors import ConfigError

    good = tmp_path / "token"
    good.write_text(ALERT_TOKEN + "\n")
    settings = AuthSettings.from_env(
        {"VISIONOPS_ALERT_TOKEN_FILE": str(good), "VISIONOPS_REVIEWER_TOKEN": "x" * 20}
    )
    auth = ControlAuth(settings)
    assert auth.tokens == {"alert": ALERT_TOKEN, "reviewer": "x" * 20, "ingest": ""}
    assert ALERT_TOKEN not in repr(settings) and "x" * 20 not in repr(settings)  # secrets stay out of logs
    with pytest.raises(ConfigError, match="does not exist"):
        ControlAuth(AuthSettings(alert_token_file=str(tmp_path / "missing")))
    (tmp_path / "short").write_text("abc")
    with pytest.raises(ConfigError, match="at least 16"):
        ControlAuth(AuthSettings(feedback_key_file=str(tmp_path / "short")))
    from visionops.auth import AuthError

    with pytest.raises(AuthError, match="VISIONOPS_REVIEWER_TOKEN_FILE") as refused:
        ControlAuth(AuthSettings()).require("reviewer", f"Bearer {REVIEWER_TOKEN}")
    assert refused.value.http_status == 403
    ControlAuth(AuthSettings(insecure_control=True)).require("reviewer", None)  # the local opt-in


def test_unreadable_trigger_state_keeps_the_cooldown(tmp_path):
    from visionops.drift.trigger import RetrainTrigger, TriggerSettings
    from visionops.drift.trigger_state import TriggerState

    state = tmp_path / "state.json"
    state.write_text("{not json")
    trigger = RetrainTrigger(
        TriggerSettings(dry_run=True, cooldown_s=600), model_uri="/m", state=TriggerState(str(state))
    )
    assert trigger.raise_("drift", "x")["outcome"] == "cooldown", "a corrupt state must not start a run"


# -- authenticated control ------------------------------------------------------------------------------------
def test_alerts_need_the_alert_token(start_sidecar, kfp):
    sidecar = start_sidecar(VISIONOPS_KFP_HOST=kfp.url, VISIONOPS_TRIGGER_COOLDOWN_S="0")
    for headers, status in (
        (None, 401),  # anonymous
        ({"Authorization": "Bearer wrong-token-0123456789"}, 401),
        ({"Authorization": f"Basic {ALERT_TOKEN}"}, 401),  # another scheme
        (AS_REVIEWER, 401),  # another role's token
    ):
        r = sidecar.alerts(webhook("VisionOpsDriftPersisting"), headers=headers)
        assert r.status_code == status and "token" in r.json()["detail"], r.text
    assert kfp.run_requests() == [], "a refused /alerts must not start a run"
    r = sidecar.alerts(webhook("VisionOpsDriftPersisting"))
    assert r.status_code == 200 and r.json()["results"][0]["outcome"] == "created", r.text
    assert len(kfp.run_requests()) == 1


def test_alerts_refused_when_no_token_is_configured(bundle, tmp_path, kfp):
    sidecar = Sidecar(bundle, tmp_path / "monitor.log", {"VISIONOPS_KFP_HOST": kfp.url})
    try:
        r = sidecar.alerts(webhook("VisionOpsDriftPersisting"), headers=None)
        assert r.status_code == 403 and "VISIONOPS_ALERT_TOKEN_FILE" in r.json()["detail"]
        assert (
            sidecar.alerts(webhook("x"), headers={"Authorization": "Bearer anything-at-all"}).status_code
            == 403
        )
        assert kfp.run_requests() == []
    finally:
        sidecar.kill()


def test_a_run_survives_no_restart_replay(start_sidecar, kfp, s3):
    """Kill the sidecar after its run; the new process reads the state from S3 and starts nothing."""
    state_uri = f"{s3.bucket}/monitoring/trigger-state.json"
    env = {
        "VISIONOPS_KFP_HOST": kfp.url,
        "VISIONOPS_TRIGGER_COOLDOWN_S": "3600",
        "VISIONOPS_TRIGGER_STATE_URI": state_uri,
    }
    first = start_sidecar(**env)
    assert first.alerts(webhook("VisionOpsDriftPersisting")).json()["results"][0]["outcome"] == "created"
    first.kill()  # a crash: nothing is flushed on the way out
    stored = json.loads(
        s3.client().get_object(state_uri.split("/")[2], "monitoring/trigger-state.json").read()
    )
    assert stored["last_run_at"] > 0 and "alert:VisionOpsDriftPersisting" in stored["active"]

    second = start_sidecar(**env)
    outcomes = [
        second.alerts(webhook("VisionOpsDriftPersisting")).json()["results"][0][
            "outcome"
        ],  # Alertmanager repeats
        second.alerts(webhook("VisionOpsDriftPersisting", status="resolved")).json()["results"][0]["outcome"],
        second.alerts(webhook("VisionOpsLivePrecisionBelowTarget")).json()["results"][0][
            "outcome"
        ],  # new episode
    ]
    assert outcomes == ["suppressed", "cleared", "cooldown"]
    assert len(kfp.run_requests()) == 1, "a restart must not replay the run"
    assert second.counter('visionops_retrain_triggered_total{outcome="cooldown"}') == 1


def test_junk_alert_names_neither_grow_nor_pin_the_trigger(start_sidecar, kfp, tmp_path):
    state = tmp_path / "trigger-state.json"
    sidecar = start_sidecar(
        VISIONOPS_KFP_HOST=kfp.url,
        VISIONOPS_TRIGGER_COOLDOWN_S="0",
        VISIONOPS_TRIGGER_STATE_URI=str(state),
        VISIONOPS_MAX_ALERTS="50",
        VISIONOPS_ALERT_TTL_S="45",  # longer than the payload takes on a busy machine
    )
    junk = [f"junk-{i:05d}-{'x' * 40}" for i in range(20_000)]
    started = time.monotonic()
    r = sidecar.alerts(webhook(*junk))
    took = time.monotonic() - started
    assert r.status_code == 200, r.text
    outcomes = r.json()["outcomes"]
    print(
        f"\n20,000 junk alert names answered in {took:.2f}s: {outcomes}; state {state.stat().st_size} bytes"
    )
    assert outcomes == {"created": 1, "suppressed": 49, "overflow": 19_950}
    assert len(r.json()["results"]) == 100, "the answer is bounded too"
    assert r.json()["retrain_alert"] == 1  # the junk holds the episode open... until it expires
    assert len(json.loads(state.read_text())["active"]) == 50 and state.stat().st_size < 20_000
    assert sidecar.counter('visionops_retrain_triggered_total{outcome="overflow"}') == 19_950
    # nothing resolves them: they expire after the TTL and the trigger is free for a real episode
    wait_until(lambda: sidecar.counter("visionops_retrain_alert ") == 0, timeout=150, interval=0.5)
    assert json.loads(state.read_text())["active"] == {}
    again = sidecar.alerts(webhook("VisionOpsDriftPersisting")).json()["results"][0]
    assert again["outcome"] == "created", again
    assert len(kfp.run_requests()) == 2


# -- the sidecar's HTTP server under broken or hostile clients -------------------------------------------------
def raw_request(port: int, data: bytes, *, timeout: float = 15.0) -> tuple[float, int, dict]:
    """Send raw bytes; return (seconds until the answer, status, JSON body)."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                raise AssertionError(f"no answer within {timeout}s") from None
            if not chunk:
                break
            chunks.append(chunk)
            head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
            length = [
                int(v)
                for k, _, v in (h.partition(b":") for h in head.split(b"\r\n"))
                if k.lower() == b"content-length"
            ]
            if length and len(body) >= length[0]:
                break
    elapsed = time.monotonic() - started
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    return elapsed, int(head.split(b" ")[1]), json.loads(body)


def test_sidecar_http_limits(start_sidecar):
    # /ingest open here (no ingest token, the local opt-in): this test is about the HTTP server's limits,
    # which an authenticated client could hit just the same (test_ingest_needs_the_ingest_token covers auth)
    sidecar = start_sidecar(
        VISIONOPS_INGEST_TOKEN_FILE="",
        VISIONOPS_INSECURE_CONTROL="true",
        VISIONOPS_MONITOR_SOCKET_TIMEOUT_S="2",
        VISIONOPS_MONITOR_MAX_BODY_BYTES="1048576",
        VISIONOPS_MONITOR_MAX_CONNECTIONS="8",
    )
    port = sidecar.port
    # a Content-Length larger than the body: answered 408 once the socket timeout passes, not held forever
    elapsed, status, body = raw_request(
        port,
        b"POST /ingest HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
        b'{"rows": []}',
    )
    print(f"\nwrong Content-Length: {status} after {elapsed:.2f}s (socket timeout 2s)")
    assert status == 408 and "Content-Length" in body["detail"] and elapsed < 8
    # deep nesting: 400 with a JSON reason (the C decoder's RecursionError and the depth limit alike)
    for depth in (100_000, 17):
        r = sidecar.client.post("/ingest", content=b"[" * depth + b"]" * depth)
        assert r.status_code == 400 and "nested deeper" in r.json()["detail"], (depth, r.text)
    assert sidecar.client.post("/ingest", content=b'{"rows": [').status_code == 400
    # a body over the limit is refused from its Content-Length, before it is read
    elapsed, status, body = raw_request(
        port, b"POST /ingest HTTP/1.1\r\nHost: x\r\nContent-Length: 5000000000\r\n\r\n"
    )
    assert status == 413 and "limit" in body["detail"] and elapsed < 5
    # chunked bodies, bad lengths, unknown methods and paths: all answered as JSON
    _, status, body = raw_request(
        port, b"POST /ingest HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    )
    assert status == 411 and "Content-Length" in body["detail"]
    _, status, body = raw_request(port, b"POST /ingest HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n")
    assert status == 400 and "not a number" in body["detail"]
    _, status, body = raw_request(port, b"PUT /ingest HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
    assert status == 501 and body["detail"]
    assert sidecar.client.post("/nowhere", json={}).json()["detail"].startswith("no endpoint")
    # strings over their limits: the row is refused (422) and nothing of it is kept
    rows = draw_rows(np.random.default_rng(0), 3)
    rows[0]["request_id"] = "r" * 1_000_000
    rows[1]["variant"] = "v" * 10_000
    rows[2]["request_id"] = "ok-1"
    r = sidecar.client.post("/ingest", json={"rows": rows})
    assert r.status_code == 422 and r.json()["accepted"] == 1
    errors = [e["errors"][0] for e in r.json()["errors"]]
    assert "request_id of 1000000 characters" in errors[0] and "'variant' is a string of 10000" in errors[1]
    # slow clients cannot pile up threads: with every slot held by a silent connection, the next is answered
    # 503 at once; the silent ones are closed after the socket timeout and the sidecar answers again
    silent = [socket.create_connection(("127.0.0.1", port)) for _ in range(8)]
    try:
        time.sleep(0.3)
        elapsed, status, body = raw_request(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status == 503 and "too many connections" in body["detail"] and elapsed < 3
    finally:
        for sock in silent:
            sock.close()
    # and after all that the sidecar still answers
    wait_until(lambda: raw_request(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")[1] == 200, 10)
    assert sidecar.client.get("/healthz").json() == {"status": "ok"}


# -- feedback only from reviewers, only for ids serving signed --------------------------------------------------
def test_ingest_needs_the_ingest_token(start_sidecar):
    # rows posted by anyone could fake drift (or hide it): only serving's token is accepted
    sidecar = start_sidecar()
    rows = draw_rows(np.random.default_rng(2), 5)
    before = sidecar.counter("visionops_monitor_rows_received_total")
    for headers in (None, AS_REVIEWER, AS_ALERTMANAGER, {"Authorization": "Bearer " + "x" * 40}):
        r = sidecar.client.post("/ingest", json={"rows": rows}, headers=headers)
        assert r.status_code == 401 and r.json()["detail"], (headers, r.text)
    assert sidecar.counter("visionops_monitor_rows_received_total") == before  # nothing of them was kept
    assert sidecar.client.post("/ingest", json={"rows": rows}, headers=AS_SERVING).status_code == 200
    assert sidecar.counter("visionops_monitor_rows_received_total") == before + 5
    # with no ingest token configured /ingest is closed, unless a local run opts in
    closed = start_sidecar(VISIONOPS_INGEST_TOKEN_FILE="")
    r = closed.client.post("/ingest", json={"rows": rows}, headers=AS_SERVING)
    assert r.status_code == 403 and "VISIONOPS_INGEST_TOKEN_FILE" in r.json()["detail"]


@pytest.mark.integration
def test_serving_sends_its_rows_with_the_ingest_token(bundle, start_sidecar, secrets_dir, tmp_path):
    # the real pair, wired like the manifests: serving's monitor process authenticates to the real sidecar
    from tests.test_serving import image_bytes, run_server

    sidecar = start_sidecar()
    before = sidecar.counter("visionops_monitor_rows_received_total")
    server = run_server(
        bundle,
        tmp_path,
        VISIONOPS_MONITOR_URL=sidecar.url,
        **secret_env(secrets_dir),
    )
    srv = next(server)
    try:
        for seed in range(3):
            assert srv.classify(image_bytes(seed, True)).status_code == 200
        deadline = time.monotonic() + 30
        while sidecar.counter("visionops_monitor_rows_received_total") < before + 3:
            assert time.monotonic() < deadline, "serving's rows did not reach the sidecar"
            time.sleep(0.2)
        # the rows passed authentication (this stand-in bundle's rows may still fail its schema check: 422)
        log = (tmp_path / "server.log").read_text()
        assert "refused /ingest: 401" not in log and "refused /ingest: 403" not in log, log[-2000:]
    finally:
        server.close()


def test_sidecar_feedback_needs_a_reviewer_and_a_signed_id(start_sidecar):
    sidecar = start_sidecar()
    signer = RequestIdSigner(FEEDBACK_KEY)  # what serving does with the same Secret
    rows = draw_rows(np.random.default_rng(1), 2)
    signed = signer.sign("req-1")
    rows[0]["request_id"], rows[1]["request_id"] = signed, "req-2"  # an unsigned id can be ingested...
    assert sidecar.client.post("/ingest", json={"rows": rows}, headers=AS_SERVING).status_code == 200
    label = {"request_id": signed, "label": "glasses"}
    assert sidecar.client.post("/feedback", json=label).status_code == 401
    assert sidecar.client.post("/feedback", json=label, headers=AS_ALERTMANAGER).status_code == 401
    forged = [
        {"request_id": "req-2", "label": "glasses"},  # ...but feedback on it is refused
        {"request_id": signed[:-1] + ("A" if signed[-1] != "A" else "B"), "label": "glasses"},
        {"request_id": RequestIdSigner("another-key-0123456789abcdef").sign("req-1"), "label": "glasses"},
    ]
    for item in forged:
        r = sidecar.client.post("/feedback", json=item, headers=AS_REVIEWER)
        assert r.status_code == 403 and "not issued by this service" in r.json()["errors"][0]["errors"][0]
    r = sidecar.client.post("/feedback", json=label, headers=AS_REVIEWER)
    assert r.status_code == 200 and r.json()["matched"] == 1 and r.json()["quality"]["labels"] == 1


@pytest.fixture(scope="module")
def signing_server(tmp_path_factory, secrets_dir):
    """``visionops serve`` (the serving tests' fixture) with the feedback key and the reviewer token."""
    from tests.test_drift_support import tiny_bundle
    from tests.test_serving import run_server

    tmp = tmp_path_factory.mktemp("signing-server")
    yield from run_server(tiny_bundle(str(tmp / "bundle")), tmp, **secret_env(secrets_dir))


def test_serving_signs_ids_and_takes_feedback_only_for_them(signing_server):
    from tests.test_serving import image_bytes

    server = signing_server
    answer = server.classify(image_bytes(1, True), headers={"X-Request-ID": "cam-7"})
    rid = answer.json()["request_id"]
    auth = ControlAuth(AuthSettings(feedback_key=FEEDBACK_KEY))
    assert rid.startswith("cam-7.") and auth.signer.verify(rid) and answer.headers["x-request-id"] == rid
    batch = server.client.post(
        "/classify_batch",
        files=[("images", (f"{i}.jpg", image_bytes(i, True), "image/jpeg")) for i in range(3)],
    ).json()
    item_ids = [p["request_id"] for p in batch["predictions"]]
    assert all(auth.signer.verify(i) for i in item_ids) and len(set(item_ids)) == 3

    def feedback(request_id: str, headers: dict | None = AS_REVIEWER) -> httpx.Response:
        return server.client.post(
            "/feedback", json={"request_id": request_id, "label": "no_glasses"}, headers=headers
        )

    assert feedback(rid, headers=None).status_code == 401
    assert feedback(rid, headers={"Authorization": "Bearer not-the-reviewer-0123"}).status_code == 401
    for forged in ("cam-7", rid[:-2] + "xx", "cam-8" + rid[5:], RequestIdSigner("k" * 32).sign("cam-7")):
        r = feedback(forged)
        assert r.status_code == 403 and "not issued" in r.json()["error"], (forged, r.text)
    assert feedback(rid).status_code == 200 and feedback(item_ids[2]).status_code == 200
    forwarded = wait_until(
        lambda: server.receiver.received["/feedback"][1:] and server.receiver.received["/feedback"], 10
    )
    assert [f["request_id"] for f in forwarded] == [rid, item_ids[2]], (
        "only accepted feedback reaches the sidecar"
    )
    assert set(server.receiver.authorization["/feedback"]) == {AS_REVIEWER["Authorization"]}


# -- the router ---------------------------------------------------------------------------------------------------
def signing_backend(name: str, state: dict):
    """A variant that answers like serving (signed ids, with the feedback key) and can be made to fail."""
    from aiohttp import web
    from visionops.experiments.router import BackgroundServer

    signer = RequestIdSigner(FEEDBACK_KEY)
    received: list = []

    async def classify(request):
        await request.read()
        if state.get("fail"):
            return web.json_response({"error": "boom"}, status=500)
        rid = signer.sign(request.headers.get("X-Request-ID", "x"))
        return web.json_response(
            {"label": "glasses", "probability": 0.9, "request_id": rid}, headers={"X-Request-ID": rid}
        )

    async def feedback(request):
        received.append((request.headers.get("Authorization"), await request.json()))
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/classify", classify)
    app.router.add_post("/feedback", feedback)
    server = BackgroundServer(app).start()
    server.received, server.name = received, name
    return server


def test_router_takes_only_signed_feedback_from_reviewers(tmp_path):
    from visionops.experiments.router import BackgroundServer, Router, RouterSettings, build_app

    backends = {n: signing_backend(n, {}) for n in ("a", "b")}
    settings = RouterSettings(
        variants={n: b.url for n, b in backends.items()}, policy="thompson", refresh_seconds=0.2
    )
    auth = ControlAuth(AuthSettings(reviewer_token=REVIEWER_TOKEN, feedback_key=FEEDBACK_KEY))
    router = Router(settings, seed=0, auth=auth)
    server = BackgroundServer(build_app(router)).start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            answers = [client.post("/classify", content=b"x") for _ in range(100)]
            ids = [r.headers["X-Request-ID"] for r in answers]
            assert (
                all(auth.signer.verify(i) for i in ids) and [r.json()["request_id"] for r in answers] == ids
            )
            before = router.assigner.refresh()
            # 99 forged calls (the attack of issue 17): anonymous, unsigned, tampered
            statuses = []
            for i, rid in enumerate(ids[:99]):
                forged = [rid.rsplit(".", 1)[0], rid[:-1] + ("A" if rid[-1] != "A" else "B"), rid][i % 3]
                headers = AS_REVIEWER if i % 3 != 2 else None
                statuses.append(
                    client.post(
                        "/feedback", json={"request_id": forged, "label": "no_glasses"}, headers=headers
                    ).status_code
                )
            assert sorted(set(statuses)) == [401, 403]
            thompson = router.assigner.thompson
            assert sum(float(c.sum()) for c in thompson.counts.values()) == 0
            time.sleep(0.5)
            after = client.get("/router/state").json()["shares"]
            assert after == pytest.approx(before, abs=0.1), "forged feedback must not move the shares"
            # a reviewer with a signed id: counted and forwarded with the reviewer token
            r = client.post(
                "/feedback", json={"request_id": ids[99], "label": "glasses"}, headers=AS_REVIEWER
            )
            assert r.status_code == 200
            variant = r.json()["variant"]
            assert router.assigner.thompson.counts[variant].sum() > 0  # a positive label: a TP or an FN
            assert backends[variant].received == [
                (AS_REVIEWER["Authorization"], {"request_id": ids[99], "label": "glasses"})
            ]
    finally:
        server.stop()
        for backend in backends.values():
            backend.stop()


def test_router_ejects_a_failing_variant_and_reprobes_it(tmp_path):
    from visionops.experiments.router import (
        BackgroundServer,
        Router,
        RouterSettings,
        VariantHealth,
        build_app,
    )

    b_state = {"fail": True}
    backends = {"a": signing_backend("a", {}), "b": signing_backend("b", b_state)}
    settings = RouterSettings(
        variants={n: b.url for n, b in backends.items()},
        weights={"a": 1, "b": 2},
        eject_after=3,
        eject_seconds=30.0,
    )
    router = Router(settings, seed=1, auth=ControlAuth(AuthSettings()))
    now = [1000.0]  # the cool-off runs on this clock, so a slow machine cannot end it mid-test
    router.health = VariantHealth(settings.variants, eject_after=3, eject_seconds=30.0, clock=lambda: now[0])
    server = BackgroundServer(build_app(router)).start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:

            def route(n: int) -> list[tuple[str, int]]:
                return [
                    (r.headers["X-Variant"], r.status_code)
                    for r in (client.post("/classify", content=b"x") for _ in range(n))
                ]

            first = route(60)
            failures = [v for v, s in first if s == 500]
            print(f"\nvariant b failing: {len(failures)} of 60 requests reached it (ejected after 3)")
            assert failures == ["b"] * 3, "after 3 consecutive failures b gets no traffic"
            assert all(s == 200 for v, s in first if v == "a")
            metrics = client.get("/router/metrics").text
            assert 'visionops_router_ejections_total{variant="b"} 1' in metrics
            assert 'visionops_router_variant_ejected{variant="b"} 1' in metrics
            now[0] += 29.0  # inside the cool-off: still no traffic to b
            assert all(v == "a" for v, _ in route(20))
            now[0] += 1.5  # the cool-off is over: one request re-probes b, which still fails -> out again
            assert [v for v, s in route(40) if s == 500] == ["b"]
            b_state["fail"] = False
            now[0] += 30.5
            later = route(90)
            share_b = sum(v == "b" for v, _ in later) / len(later)
            print(f"b recovered: share {share_b:.2f} (weight 2/3)")
            assert all(s == 200 for _, s in later) and share_b > 0.4
            assert 'visionops_router_variant_ejected{variant="b"} 0' in client.get("/router/metrics").text
    finally:
        server.stop()
        for backend in backends.values():
            backend.stop()
