"""The router over real HTTP on 127.0.0.1: two backends, policies, headers, feedback and the log."""

from __future__ import annotations

import json
import time

import httpx
import pytest
from visionops.auth import AuthSettings, ControlAuth
from visionops.experiments.router import BackgroundServer, Router, RouterSettings, build_app

pytestmark = pytest.mark.integration


def backend(name: str, label: str):
    from aiohttp import web

    feedback = []

    async def classify(request):
        await request.read()
        return web.json_response(
            {
                "label": label,
                "probability": 0.9,
                "served_by": name,
                "request_id": request.headers.get("X-Request-ID"),
            }
        )

    async def fb(request):
        feedback.append(await request.json())
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/classify", classify)
    app.router.add_post("/feedback", fb)
    server = BackgroundServer(app).start()
    server.feedback = feedback
    return server


@pytest.fixture
def backends():
    servers = {"a": backend("a", "glasses"), "b": backend("b", "glasses")}
    yield servers
    for s in servers.values():
        s.stop()


def start_router(backends, tmp_path, **kw):
    settings = RouterSettings(
        variants={k: v.url for k, v in backends.items()},
        weights=kw.pop("weights", {"a": 1, "b": 1}),
        log_path=str(tmp_path / "log.jsonl"),
        refresh_seconds=0.2,
        **kw,
    )
    # control open (no secrets): these tests script feedback on the backends' unsigned ids; signed feedback
    # and the reviewer token are tested in tests/test_hostile_control.py
    router = Router(settings, seed=0, auth=ControlAuth(AuthSettings(insecure_control=True)))
    return router, BackgroundServer(build_app(router)).start()


def test_weighted_routing_headers_and_log(backends, tmp_path):
    _router, server = start_router(backends, tmp_path, weights={"a": 80, "b": 20})
    try:
        with httpx.Client(base_url=server.url) as client:
            served = []
            for i in range(1000):
                r = client.post("/classify", content=b"img", headers={"X-Request-ID": f"req-{i}"})
                assert r.status_code == 200
                body = r.json()
                assert r.headers["X-Variant"] == body["served_by"] and body["request_id"] == f"req-{i}"
                served.append(body["served_by"])
        assert abs(served.count("b") / len(served) - 0.2) < 0.04
    finally:
        server.stop()
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert len(records) == 1000 and {r["variant"] for r in records} == {"a", "b"}
    assert all(r["label"] == "glasses" and r["status"] == 200 and r["latency_ms"] > 0 for r in records)


def test_sticky_units_always_reach_the_same_variant(backends, tmp_path):
    _router, server = start_router(backends, tmp_path, policy="sticky", salt="s1")
    try:
        with httpx.Client(base_url=server.url) as client:
            for unit in ("cam-1", "cam-2", "cam-3", "cam-4"):
                seen = {
                    client.post("/classify", content=b"x", headers={"X-Unit-ID": unit}).headers["X-Variant"]
                    for _ in range(20)
                }
                assert len(seen) == 1
    finally:
        server.stop()


def test_thompson_shifts_traffic_under_scripted_feedback(backends, tmp_path):
    _router, server = start_router(backends, tmp_path, policy="thompson", target_precision=0.95)
    try:
        with httpx.Client(base_url=server.url) as client:
            for i in range(600):
                r = client.post("/classify", content=b"x", headers={"X-Request-ID": f"q{i}"})
                variant = r.headers["X-Variant"]
                # scripted reviewers: a's "glasses" answers are right 80% of the time, b's 99%
                correct = (i % 5 != 0) if variant == "a" else (i % 100 != 0)
                fb = client.post(
                    "/feedback", json={"request_id": f"q{i}", "label": "glasses" if correct else "no_glasses"}
                )
                assert fb.status_code == 200 and fb.json()["variant"] == variant
            time.sleep(0.5)  # let the refresher recompute the shares
            state = client.get("/router/state").json()
            assert state["shares"]["a"] <= 0.05 + 1e-9, state  # a fails the constraint: capped
            later = [client.post("/classify", content=b"x").headers["X-Variant"] for _ in range(400)]
            assert later.count("a") / len(later) < 0.1
            assert (
                client.post("/feedback", json={"request_id": "unknown", "label": "glasses"}).status_code
                == 404
            )
            assert client.post("/feedback", content=b"not json").status_code == 422
            metrics = client.get("/router/metrics").text
            assert 'visionops_router_requests_total{variant="b",status="200"}' in metrics
    finally:
        server.stop()
    assert backends["b"].feedback and backends["b"].feedback[0]["label"] in ("glasses", "no_glasses")


def test_unreachable_variant_gives_502_not_a_crash(tmp_path):
    from tests.conftest import free_port

    settings = RouterSettings(variants={"a": f"http://127.0.0.1:{free_port()}"}, weights={"a": 1})
    server = BackgroundServer(build_app(Router(settings))).start()
    try:
        r = httpx.post(server.url + "/classify", content=b"x")
        assert r.status_code == 502 and "unreachable" in r.json()["error"]
    finally:
        server.stop()
