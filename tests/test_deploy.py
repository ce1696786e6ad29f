"""The deploy step against a stand-in Kubernetes API server on 127.0.0.1 (there is no cluster here).

The stand-in records every request and answers like the API server does for a Deployment: a PATCH bumps
``metadata.generation`` and the status then moves through a scripted rollout. The tests assert the exact
requests the ``kubernetes`` client sends (path, content type, body) and how ``deploy`` reads the status.
"""

from __future__ import annotations

import copy
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner
from visionops import storage
from visionops.deploy import STATE_FILE, DeployError, deploy, read_current_model
from visionops.deploy import core as deploy_core

NS, NAME = "visionops", "visionops-serving"
PATH = f"/apis/apps/v1/namespaces/{NS}/deployments/{NAME}"
OLD, NEW = "s3://models/glasses/v6", "s3://models/glasses/v7"
SMP = "application/strategic-merge-patch+json"


def make_deployment(uri: str = OLD, generation: int = 3, replicas: int = 2) -> dict:
    def env(extra: list[dict] | None = None) -> list[dict]:
        return [{"name": "VISIONOPS_MODEL_URI", "value": uri}, *(extra or [])]

    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": NAME, "namespace": NS, "generation": generation},
        "spec": {
            "replicas": replicas,
            "selector": {
                "matchLabels": {"app.kubernetes.io/name": "visionops", "visionops.io/track": "stable"}
            },
            "template": {
                "metadata": {
                    "labels": {"app.kubernetes.io/name": "visionops", "visionops.io/track": "stable"}
                },
                "spec": {
                    "containers": [
                        {
                            "name": "serving",
                            "image": "x",
                            "env": env([{"name": "VISIONOPS_VARIANT", "value": "a"}]),
                        },
                        {"name": "drift-monitor", "image": "x", "env": env()},
                        {"name": "log-shipper", "image": "y"},
                    ]
                },
            },
        },
        "status": rollout_status(generation, replicas, replicas, replicas, replicas),
    }


def rollout_status(
    observed: int, replicas: int, updated: int, available: int, total: int | None = None
) -> dict:
    return {
        "observedGeneration": observed,
        "replicas": replicas if total is None else total,
        "updatedReplicas": updated,
        "availableReplicas": available,
        "readyReplicas": available,
    }


class FakeApiServer:
    """Answers GET/PATCH for one Deployment; ``statuses`` are served one per GET after a PATCH (last repeats)."""

    def __init__(self, deployment: dict | None, statuses: list[dict] | None = None, fail: int | None = None):
        self.deployment = deployment
        self.statuses = list(statuses or [])
        self.fail = fail
        self.requests: list[dict] = []
        self.patched = False
        self.patches_allowed: int | None = None  # after this many PATCHes, answer 500
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def _reply(self, code: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _record(self) -> dict:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                entry = {
                    "method": self.command,
                    "path": self.path,
                    "content_type": self.headers.get("Content-Type"),
                    "body": json.loads(raw) if raw else None,
                }
                server.requests.append(entry)
                return entry

            def do_GET(self):
                self._record()
                if server.fail or server.deployment is None or self.path.split("?")[0] != PATH:
                    code = server.fail or 404
                    return self._reply(code, {"kind": "Status", "code": code, "reason": "NotFound"})
                if server.patched and server.statuses:
                    status = server.statuses.pop(0) if len(server.statuses) > 1 else server.statuses[0]
                    server.deployment["status"] = status
                return self._reply(200, server.deployment)

            def do_PATCH(self):
                entry = self._record()
                if self.path.split("?")[0] != PATH or entry["content_type"] != SMP:
                    return self._reply(415, {"kind": "Status", "code": 415})
                if server.patches_allowed is not None:
                    if server.patches_allowed == 0:
                        return self._reply(500, {"kind": "Status", "code": 500, "reason": "InternalError"})
                    server.patches_allowed -= 1
                server.apply_patch(entry["body"])
                return self._reply(200, server.deployment)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def apply_patch(self, body: dict) -> None:
        """Strategic merge of what deploy sends: containers and env entries merge by name; null deletes."""
        dep = self.deployment
        dep["metadata"].setdefault("annotations", {}).update(body["metadata"]["annotations"])
        by_name = {c["name"]: c for c in dep["spec"]["template"]["spec"]["containers"]}
        for patch in body["spec"]["template"]["spec"]["containers"]:
            env = by_name[patch["name"]].setdefault("env", [])
            for var in patch["env"]:
                current = next((e for e in env if e["name"] == var["name"]), None)
                if current is None:
                    current = {"name": var["name"]}
                    env.append(current)
                for key, value in var.items():
                    if value is None:
                        current.pop(key, None)
                    else:
                        current[key] = value
        dep["metadata"]["generation"] += 1
        self.patched = True

    def configuration(self):
        from kubernetes import client

        cfg = client.Configuration()
        cfg.host = f"http://127.0.0.1:{self.port}"
        return cfg

    def __enter__(self) -> FakeApiServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def expected_patch(uri: str, containers=("serving", "drift-monitor")) -> dict:
    env = [{"name": "VISIONOPS_MODEL_URI", "value": uri, "valueFrom": None}]
    return {
        "metadata": {"annotations": {"kubernetes.io/change-cause": f"visionops deploy {uri}"}},
        "spec": {"template": {"spec": {"containers": [{"name": c, "env": env} for c in containers]}}},
    }


def run_deploy(api: FakeApiServer, uri: str = NEW, **kwargs):
    kwargs.setdefault("timeout_s", 10)
    kwargs.setdefault("poll_s", 0.01)
    return deploy(
        uri,
        namespace=NS,
        deployment=NAME,
        check_bundle=False,
        client_configuration=api.configuration(),
        **kwargs,
    )


def test_kubernetes_patches_model_uri_and_waits_for_rollout():
    statuses = [
        rollout_status(3, 2, 0, 2),  # controller has not seen generation 4 yet
        rollout_status(4, 2, 1, 2, total=3),  # one new pod, old ones still there
        rollout_status(4, 2, 2, 1, total=3),  # all updated, an old one terminating
        rollout_status(4, 2, 2, 1),  # updated but not yet available
        rollout_status(4, 2, 2, 2),  # done
    ]
    with FakeApiServer(make_deployment(), statuses) as api:
        record = run_deploy(api)
    methods = [(r["method"], r["path"].split("?")[0]) for r in api.requests]
    assert methods == [("GET", PATH), ("PATCH", PATH)] + [("GET", PATH)] * 5
    patch = api.requests[1]
    assert patch["content_type"] == SMP
    assert patch["body"] == expected_patch(NEW)
    containers = {c["name"]: c for c in api.deployment["spec"]["template"]["spec"]["containers"]}
    assert containers["serving"]["env"] == [
        {"name": "VISIONOPS_MODEL_URI", "value": NEW},
        {"name": "VISIONOPS_VARIANT", "value": "a"},
    ]
    assert "env" not in containers["log-shipper"]
    assert record["changed"] is True
    assert record["previous_model_uri"] == OLD
    assert record["containers"] == ["serving", "drift-monitor"]
    assert (record["generation"], record["replicas"], record["available_replicas"]) == (4, 2, 2)


def test_kubernetes_patch_replaces_a_configmap_reference_and_honours_container():
    dep = make_deployment()
    dep["spec"]["template"]["spec"]["containers"][0]["env"][0] = {
        "name": "VISIONOPS_MODEL_URI",
        "valueFrom": {"configMapKeyRef": {"name": "visionops-config", "key": "VISIONOPS_MODEL_URI"}},
    }
    with FakeApiServer(dep, [rollout_status(4, 2, 2, 2)]) as api:
        record = run_deploy(api, container="serving")
    assert api.requests[1]["body"] == expected_patch(NEW, containers=("serving",))
    serving = api.deployment["spec"]["template"]["spec"]["containers"][0]
    assert serving["env"][0] == {"name": "VISIONOPS_MODEL_URI", "value": NEW}  # valueFrom removed
    assert record["containers"] == ["serving"]


def test_kubernetes_same_uri_sends_no_patch():
    with FakeApiServer(make_deployment(uri=NEW)) as api:
        record = run_deploy(api)
    assert [r["method"] for r in api.requests] == ["GET", "GET"]
    assert record["changed"] is False


def test_kubernetes_rollout_that_never_completes_times_out_and_rolls_back():
    with (
        FakeApiServer(make_deployment(), [rollout_status(4, 2, 1, 2, total=3)]) as api,
        pytest.raises(
            DeployError,
            match=r"timeout ran out \(1 of 2 replicas updated\).*rolled back to s3://models/glasses/v6",
        ),
    ):
        run_deploy(api, timeout_s=0.3, poll_s=0.02)
    patches = [r for r in api.requests if r["method"] == "PATCH"]
    assert [p["body"] for p in patches] == [expected_patch(NEW), expected_patch(OLD)]
    gets_after_patch = [r for r in api.requests[2:] if r["method"] == "GET"]
    assert len(gets_after_patch) >= 3  # it polled, then gave up


def test_kubernetes_failed_rollback_is_reported_with_the_manual_fix():
    with FakeApiServer(make_deployment(), [rollout_status(4, 2, 1, 2, total=3)]) as api:
        api.patches_allowed = 1
        with pytest.raises(
            DeployError, match=r"timeout ran out.*the rollback failed too .*500.*rollout undo"
        ):
            run_deploy(api, timeout_s=0.2)
    assert [r["method"] for r in api.requests].count("PATCH") == 2


def test_kubernetes_timeout_without_rollback_says_how_to_undo():
    expected = r"observe generation 4.*kubectl -n visionops rollout undo"
    with (
        FakeApiServer(make_deployment(), [rollout_status(3, 2, 2, 2)]) as api,
        pytest.raises(DeployError, match=expected),
    ):
        run_deploy(api, timeout_s=0.2, rollback_on_failure=False)
    assert [r["method"] for r in api.requests].count("PATCH") == 1


def test_kubernetes_progress_deadline_fails_at_once():
    stuck = rollout_status(4, 2, 1, 2, total=3)
    stuck["conditions"] = [
        {
            "type": "Progressing",
            "status": "False",
            "reason": "ProgressDeadlineExceeded",
            "message": 'ReplicaSet "visionops-serving-7d9" has timed out progressing.',
        }
    ]
    expected = "progress deadline.*timed out progressing"
    with FakeApiServer(make_deployment(), [stuck]) as api, pytest.raises(DeployError, match=expected):
        run_deploy(api, timeout_s=30)
    assert [r["method"] for r in api.requests] == ["GET", "PATCH", "GET", "PATCH"]


@pytest.mark.parametrize(
    ("fail", "message"),
    [(404, "not found; apply the manifests"), (403, r"forbidden \(403\).*manifests/rbac")],
)
def test_kubernetes_api_errors_are_explained(fail, message):
    with FakeApiServer(make_deployment(), fail=fail) as api, pytest.raises(DeployError, match=message):
        run_deploy(api)


def test_kubernetes_unknown_container_and_unreachable_api():
    with FakeApiServer(make_deployment()) as api:
        with pytest.raises(
            DeployError, match="no container named gpu-serving; its containers: serving, drift"
        ):
            run_deploy(api, container=["gpu-serving"])
        port = api.port
    from kubernetes import client

    cfg = client.Configuration()
    cfg.host = f"http://127.0.0.1:{port}"  # the server is gone now
    with pytest.raises(DeployError, match="cannot reach the Kubernetes API server"):
        deploy(NEW, check_bundle=False, client_configuration=cfg)


def test_uri_and_target_checks():
    with pytest.raises(DeployError, match="not an s3:// URI"):
        deploy("/tmp/bundle", target="kubernetes", check_bundle=False)
    with pytest.raises(
        DeployError, match="unknown deploy target 'helm'; valid targets: kubernetes, local, none"
    ):
        deploy(NEW, target="helm")
    with pytest.raises(DeployError, match="model URI is empty"):
        deploy("  ", target="none")
    with pytest.raises(DeployError, match="needs state_dir"):
        deploy(NEW, target="local", check_bundle=False)
    assert deploy(NEW, target="none") == {"target": "none", "model_uri": NEW, "changed": False}


def test_check_bundle_refuses_an_incomplete_bundle(s3, tmp_path):
    uri = f"{s3.bucket}/models/v7"
    storage.write_text(f"{uri}/model.safetensors", "weights")
    with pytest.raises(DeployError, match=r"refusing to deploy .*bundle\.json not found"):
        deploy(uri, target="local", state_dir=tmp_path)
    assert read_current_model(tmp_path) is None
    storage.write_text(f"{uri}/bundle.json", "{}")
    assert deploy(uri, target="local", state_dir=tmp_path)["model_uri"] == uri


def test_local_target_writes_state_atomically(tmp_path, monkeypatch):
    first = deploy(OLD, target="local", state_dir=tmp_path, check_bundle=False)
    second = deploy(NEW, target="local", state_dir=tmp_path, check_bundle=False)
    state = json.loads((tmp_path / STATE_FILE).read_text())
    assert state["model_uri"] == NEW and state["previous_model_uri"] == OLD
    assert [h["model_uri"] for h in state["history"]] == [OLD, NEW]
    assert first["changed"] and second["changed"] and second["state_file"] == str(tmp_path / STATE_FILE)
    assert read_current_model(tmp_path) == state

    # A crash between writing and renaming leaves the old record whole and no temp file behind.
    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(deploy_core.os, "replace", broken_replace)
    with pytest.raises(DeployError, match="cannot write .*current_model.json: disk full"):
        deploy("s3://models/glasses/v8", target="local", state_dir=tmp_path, check_bundle=False)
    assert json.loads((tmp_path / STATE_FILE).read_text()) == state
    assert sorted(p.name for p in tmp_path.iterdir()) == [STATE_FILE]


def test_cli_local_and_kubernetes_via_kubeconfig(tmp_path, monkeypatch):
    from visionops.cli import app

    runner = CliRunner()
    result = runner.invoke(
        app, ["deploy", NEW, "--target", "local", "--state-dir", str(tmp_path), "--no-check-bundle"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["model_uri"] == NEW
    assert read_current_model(tmp_path)["model_uri"] == NEW

    with FakeApiServer(make_deployment(), [rollout_status(4, 2, 2, 2)]) as api:
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{api.port}"}}],
                    "users": [{"name": "u", "user": {"token": "not-a-real-token"}}],
                    "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                    "current-context": "x",
                }
            )
        )
        monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
        result = runner.invoke(app, ["deploy", NEW, "--no-check-bundle", "-n", NS, "--timeout", "10"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["deployment"] == NAME
    assert api.requests[1]["body"] == expected_patch(NEW)
    assert api.requests[1]["path"].startswith(PATH)

    result = runner.invoke(app, ["deploy", NEW, "--target", "helm"])
    assert isinstance(result.exception, DeployError)


def test_rollout_state_rules():
    from kubernetes import client

    api_client = client.ApiClient()

    def dep(status: dict, replicas: int = 2):
        raw = copy.deepcopy(make_deployment(replicas=replicas))
        raw["status"] = status

        class Resp:
            data = json.dumps(raw)

        return api_client.deserialize(Resp(), "V1Deployment")

    assert deploy_core.rollout_state(dep(rollout_status(4, 2, 2, 2)), 4) == (
        True,
        "2 of 2 replicas updated and available",
    )
    assert deploy_core.rollout_state(dep(rollout_status(4, 0, 0, 0), replicas=0), 4)[0] is True
    assert deploy_core.rollout_state(dep(rollout_status(4, 2, 2, 2, total=3)), 4) == (
        False,
        "1 old replicas pending termination",
    )
    assert deploy_core.rollout_state(dep(rollout_status(5, 2, 2, 2)), 4)[0] is True


def test_deploy_module_imports_no_kubernetes():
    import subprocess
    import sys

    code = "import sys, visionops.deploy, visionops.deploy.cli; print('kubernetes' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=Path(__file__).parent
    )
    assert out.stdout.strip() == "False"
