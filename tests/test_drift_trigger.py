"""The retraining trigger against a stand-in KFP v2beta1 API server that records every request (asserted
exactly): one run per episode, cooldown, dry-run, and Alertmanager's webhook through the same code path."""

from __future__ import annotations

import json
import time
from urllib.parse import parse_qs, urlparse

import numpy as np
import pytest
from visionops.auth import AuthSettings, ControlAuth
from visionops.drift.trigger import RetrainTrigger, TriggerSettings
from visionops.pipeline.client import create_run

from tests.test_drift_support import KfpStandIn, draw_rows, feature_bundle, next_result, start_monitor

pytestmark = pytest.mark.integration

WINDOW = 200


@pytest.fixture
def kfp():
    server = KfpStandIn()
    yield server
    server.close()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return feature_bundle(tmp_path_factory.mktemp("trigger"))


def expected_run_body(bundle_uri: str, model_version: str, run_name_prefix: str) -> dict:
    return {
        "experiment_id": KfpStandIn.EXPERIMENT_ID,
        "pipeline_version_reference": {
            "pipeline_id": KfpStandIn.PIPELINE_ID,
            "pipeline_version_id": KfpStandIn.VERSION_ID,
        },
        "runtime_config": {
            "parameters": {"champion_uri": bundle_uri, "warm_start": True, "data_uri": "s3://data/latest"}
        },
    }


def test_create_run_sends_exactly_these_requests():
    kfp = KfpStandIn(experiment_exists=False)
    try:
        run_id = create_run(
            kfp.url,
            pipeline_name="visionops-training",
            params={"warm_start": True},
            experiment="retraining",
            run_name="r1",
            token="tok-123",
        )
    finally:
        kfp.close()
    assert run_id == "run-1"
    methods_paths = [(m, urlparse(p).path) for m, p, _ in kfp.requests]
    assert methods_paths == [
        ("GET", "/apis/v2beta1/healthz"),
        ("GET", "/apis/v2beta1/pipelines"),
        ("GET", f"/apis/v2beta1/pipelines/{KfpStandIn.PIPELINE_ID}/versions"),
        ("GET", "/apis/v2beta1/experiments"),
        ("POST", "/apis/v2beta1/experiments"),
        ("POST", "/apis/v2beta1/runs"),
    ]
    pipeline_filter = json.loads(parse_qs(urlparse(kfp.requests[1][1]).query)["filter"][0])
    assert pipeline_filter["predicates"][0]["stringValue"] == "visionops-training"
    versions_query = parse_qs(urlparse(kfp.requests[2][1]).query)
    assert versions_query["page_size"] == ["1"] and versions_query["sort_by"] == ["created_at desc"]
    # no namespace given: the kfp context's, "" without one (the one client's rule, as `pipeline submit`)
    assert kfp.requests[4][2] == {"display_name": "retraining", "namespace": ""}
    assert kfp.requests[5][2] == {
        "experiment_id": KfpStandIn.EXPERIMENT_ID,
        "display_name": "r1",
        "pipeline_version_reference": {
            "pipeline_id": KfpStandIn.PIPELINE_ID,
            "pipeline_version_id": KfpStandIn.VERSION_ID,
        },
        "runtime_config": {"parameters": {"warm_start": True}},
    }
    assert set(kfp.auth) == {"Bearer tok-123"}


def test_trigger_unit_episode_cooldown_dry_run():
    now = [1000.0]
    outcomes: list[str] = []
    trigger = RetrainTrigger(
        TriggerSettings(dry_run=True, cooldown_s=600),
        model_uri="/m",
        model_version="m-1",
        on_outcome=outcomes.append,
        clock=lambda: now[0],
    )
    assert trigger.raise_("drift", "x")["outcome"] == "dry_run"
    assert trigger.alert == 1
    assert trigger.raise_("drift", "x")["outcome"] == "suppressed"  # same episode
    assert trigger.raise_("live_precision", "y")["outcome"] == "suppressed"  # another source, same episode
    trigger.clear("drift")
    assert trigger.alert == 1  # live_precision still holds
    trigger.clear("live_precision")
    assert trigger.alert == 0
    now[0] += 100
    assert trigger.raise_("drift", "x")["outcome"] == "cooldown"  # new episode inside the cooldown
    trigger.clear("drift")
    now[0] += 600
    event = trigger.raise_("drift", "x")
    assert event["outcome"] == "dry_run"
    assert event["params"] == {"champion_uri": "/m", "warm_start": True}
    assert outcomes == ["dry_run", "suppressed", "suppressed", "cooldown", "dry_run"]


def _drifted_window(monitor_client, server, rng, *, brightness=0.15):
    started = time.time()
    r = monitor_client.post("/ingest", json={"rows": draw_rows(rng, WINDOW, brightness=brightness)})
    assert r.status_code == 200
    return next_result(server, monitor_client, started)


def test_sidecar_drift_creates_one_run_per_episode(bundle, kfp):
    server, client = start_monitor(
        bundle,
        window_size=WINDOW,
        trigger_windows=2,
        trigger_cooldown_s=0,
        kfp_host=kfp.url,
        kfp_params={"data_uri": "s3://data/latest"},
    )
    rng = np.random.default_rng(1)
    try:
        first = _drifted_window(client, server, rng)
        assert first["dataset_drift"] and first["consecutive_windows"] == 1
        assert kfp.run_requests() == []  # one drifted window is not enough (trigger_windows=2)
        for _ in range(3):  # drift holds: exactly one run for the whole episode
            _drifted_window(client, server, rng)
        runs = kfp.run_requests()
        assert len(runs) == 1
        body = runs[0][2]
        assert body["display_name"].startswith(f"retrain-{server.monitor.model_version}-drift-")
        del body["display_name"]
        assert body == expected_run_body(bundle, server.monitor.model_version, "retrain")
        metrics = client.get("/metrics").text
        assert "visionops_retrain_alert 1.0" in metrics
        assert 'visionops_retrain_triggered_total{outcome="created"} 1.0' in metrics
        # the episode ends with a clean window; a new episode (cooldown 0) starts one more run
        clean = _drifted_window(client, server, rng, brightness=0.5)
        assert not clean["dataset_drift"]
        assert "visionops_retrain_alert 0.0" in client.get("/metrics").text
        _drifted_window(client, server, rng)
        _drifted_window(client, server, rng)
        assert len(kfp.run_requests()) == 2
    finally:
        server.stop()


def test_sidecar_cooldown_and_dry_run(bundle, kfp):
    server, client = start_monitor(
        bundle,
        window_size=WINDOW,
        trigger_windows=1,
        trigger_cooldown_s=3600,
        kfp_host=kfp.url,
        trigger_dry_run=True,
    )
    rng = np.random.default_rng(2)
    try:
        _drifted_window(client, server, rng)
        _drifted_window(client, server, rng, brightness=0.5)  # episode ends
        _drifted_window(client, server, rng)  # new episode inside the cooldown
        assert kfp.requests == []  # dry-run: nothing reaches KFP
        metrics = client.get("/metrics").text
        assert 'visionops_retrain_triggered_total{outcome="dry_run"} 1.0' in metrics
        assert 'visionops_retrain_triggered_total{outcome="cooldown"} 1.0' in metrics
        assert "visionops_retrain_alert 1.0" in metrics  # the alert metric is set either way
    finally:
        server.stop()


def _alertmanager(status: str) -> dict:
    alert = {
        "status": status,
        "labels": {"alertname": "VisionOpsDriftPersisting", "severity": "warning"},
        "annotations": {"summary": "drift in 2 consecutive windows"},
        "fingerprint": "abc",
    }
    return {
        "version": "4",
        "status": status,
        "receiver": "visionops-retrain",
        "groupKey": "{}:{}",
        "alerts": [alert],
        "commonLabels": alert["labels"],
    }


def test_alertmanager_webhook_same_code_path(bundle, kfp):
    token = "alert-token-for-this-test-0123456789"
    server, client = start_monitor(
        bundle,
        window_size=WINDOW,
        trigger_cooldown_s=0,
        kfp_host=kfp.url,
        auth=ControlAuth(AuthSettings(alert_token=token)),
        headers={"Authorization": f"Bearer {token}"},
    )
    try:
        r = client.post("/alerts", json=_alertmanager("firing"))
        assert r.status_code == 200 and r.json()["results"][0]["outcome"] == "created"
        assert len(kfp.run_requests()) == 1
        body = kfp.run_requests()[0][2]
        assert body["runtime_config"]["parameters"] == {"champion_uri": bundle, "warm_start": True}
        assert body["display_name"].startswith(f"retrain-{server.monitor.model_version}-alert-VisionOpsDrift")
        # Alertmanager repeats a firing notification: same episode, no new run
        assert (
            client.post("/alerts", json=_alertmanager("firing")).json()["results"][0]["outcome"]
            == "suppressed"
        )
        # resolved: no run, the alert metric drops
        r = client.post("/alerts", json=_alertmanager("resolved"))
        assert r.status_code == 200 and r.json()["retrain_alert"] == 0
        assert len(kfp.run_requests()) == 1
        # not a webhook payload -> 422, service still fine
        assert client.post("/alerts", json={"nope": 1}).status_code == 422
        assert client.get("/healthz").status_code == 200
    finally:
        server.stop()


def test_kfp_down_counts_failure_and_retries(bundle):
    kfp = KfpStandIn()
    url = kfp.url
    kfp.close()  # nothing listens there any more
    trigger = RetrainTrigger(TriggerSettings(kfp_host=url), model_uri="/m")
    event = trigger.raise_("drift", "x")
    assert event["outcome"] == "failed" and "Kubeflow Pipelines" in event["why"]
    assert trigger.alert == 0  # not counted as this episode's run: the next window retries


def test_a_fleet_of_sidecars_starts_one_run_per_episode(bundle, kfp, tmp_path):
    """Three replicas' sidecars (same model) see the same drift at different moments, and Alertmanager's
    notification lands on one of them: the KFP API gets one run for the episode, read with the projected token."""
    token = tmp_path / "token"  # what the kfp-token projected volume mounts (manifests/base/deployment)
    token.write_text("projected-sa-token\n")
    fleet = [
        start_monitor(
            bundle,
            window_size=WINDOW,
            trigger_windows=1,
            trigger_cooldown_s=3600,
            kfp_host=kfp.url,
            kfp_params={"data_uri": "s3://data/latest"},
            kfp_token_path=str(token),
        )
        for _ in range(3)
    ]
    rng = np.random.default_rng(5)
    try:
        for server, client in fleet:
            result = _drifted_window(client, server, rng)
            assert result["dataset_drift"]
        r = fleet[1][1].post("/alerts", json=_alertmanager("firing"))
        assert r.status_code == 200
        outcomes = [
            [e["outcome"] for e in server.monitor.trigger.events if e["outcome"] != "cleared"]
            for server, _ in fleet
        ]
        assert outcomes == [["created"], ["joined", "suppressed"], ["joined"]]
        run_ids = {e["run_id"] for server, _ in fleet for e in server.monitor.trigger.events if "run_id" in e}
        assert len(kfp.stored) == 1 and set(kfp.stored) == run_ids
        assert len(kfp.run_requests()) == 1
        assert set(kfp.auth) == {"Bearer projected-sa-token"}
        metrics = fleet[2][1].get("/metrics").text
        assert 'visionops_retrain_triggered_total{outcome="joined"} 1.0' in metrics
    finally:
        for server, _ in fleet:
            server.stop()


def test_replicas_that_create_at_the_same_moment_leave_one_run(kfp):
    """The race: four replicas pass the "no run yet" check together; the later creators delete theirs."""
    import threading

    from visionops.pipeline.client import create_run_once

    barrier = threading.Barrier(4)
    results: list[tuple[str, bool]] = []

    def replica(i: int) -> None:
        barrier.wait()
        results.append(
            create_run_once(
                kfp.url,
                pipeline_name="visionops-training",
                params={"warm_start": True},
                experiment="retraining",
                run_name=f"retrain-m-1-drift-{i}",
                episode="retrain-m-1",
                window_s=3600,
            )
        )

    threads = [threading.Thread(target=replica, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 4
    assert len(kfp.stored) == 1
    (survivor,) = kfp.stored
    assert {run_id for run_id, _ in results} == {survivor}
    assert sum(created for _, created in results) == 1
    creates = len(kfp.run_requests())
    deletes = [p for m, p, _ in kfp.requests if m == "DELETE"]
    assert len(deletes) == creates - 1  # every extra run was deleted by its creator
    print(f"race of 4 replicas: {creates} runs created, {len(deletes)} deleted, 1 left (nominal: 1)")
