"""``submit`` against a stand-in KFP API server on 127.0.0.1 that records the v2beta1 REST calls.

The KFP API server cannot run here, so this stand-in answers like it does (the JSON shapes of kfp_server_api)
and the tests assert the exact requests the real ``kfp.Client`` sends: method, path, query and key JSON fields.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest
from visionops.errors import ConfigError

API = "/apis/v2beta1"


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self) -> dict:
        return json.loads(self.body)

    def filter(self) -> dict:
        return json.loads(self.query["filter"][0])


@dataclass
class FakeKFP:
    """The little state a KFP API server keeps for these calls."""

    pipelines: dict[str, str] = field(default_factory=dict)  # display name -> id
    versions: dict[str, list[dict]] = field(default_factory=dict)  # pipeline id -> versions
    experiments: dict[str, str] = field(default_factory=dict)  # display name -> id
    requests: list[Request] = field(default_factory=list)
    fail_status: int | None = None

    def handle(self, req: Request) -> tuple[int, dict]:
        self.requests.append(req)
        if self.fail_status and req.path != f"{API}/healthz":
            return self.fail_status, {"error_message": "forbidden: no access to namespace", "code": 7}
        path, method = req.path, req.method
        if path == f"{API}/healthz":
            return 200, {"multi_user": False}
        if path == f"{API}/pipelines" and method == "GET":
            name = req.filter()["predicates"][0]["stringValue"]
            if name in self.pipelines:
                return 200, {
                    "pipelines": [{"pipeline_id": self.pipelines[name], "display_name": name}],
                    "total_size": 1,
                }
            return 200, {}
        if path == f"{API}/pipelines/upload" and method == "POST":
            name = req.query["name"][0]
            pid = f"p-{len(self.pipelines) + 1}"
            self.pipelines[name] = pid
            self.versions[pid] = [
                {"pipeline_id": pid, "pipeline_version_id": f"{pid}-v1", "display_name": name}
            ]
            return 200, {"pipeline_id": pid, "display_name": name}
        if path.startswith(f"{API}/pipelines/") and path.endswith("/versions") and method == "GET":
            pid = path.split("/")[-2]
            versions = self.versions.get(pid, [])
            if "filter" in req.query:
                wanted = req.filter()["predicates"][0]["stringValue"]
                versions = [v for v in versions if v["display_name"] == wanted]
            versions = list(reversed(versions))[: int(req.query.get("page_size", ["10"])[0])]
            return 200, ({"pipeline_versions": versions, "total_size": len(versions)} if versions else {})
        if path == f"{API}/pipelines/upload_version" and method == "POST":
            pid = req.query["pipelineid"][0]
            version = {
                "pipeline_id": pid,
                "pipeline_version_id": f"{pid}-v{len(self.versions[pid]) + 1}",
                "display_name": req.query["name"][0],
            }
            self.versions[pid].append(version)
            return 200, version
        if path == f"{API}/experiments" and method == "GET":
            name = req.filter()["predicates"][0]["stringValue"]
            if name in self.experiments:
                return 200, {"experiments": [{"experiment_id": self.experiments[name], "display_name": name}]}
            return 200, {}
        if path == f"{API}/experiments" and method == "POST":
            name = req.json()["display_name"]
            self.experiments[name] = f"e-{len(self.experiments) + 1}"
            return 200, {"experiment_id": self.experiments[name], "display_name": name}
        if path == f"{API}/runs" and method == "POST":
            return 200, {"run_id": "r-1", **req.json()}
        if path == f"{API}/recurringruns" and method == "POST":
            return 200, {"recurring_run_id": "rr-1", **req.json()}
        return 404, {"error_message": f"stand-in has no route {method} {path}"}

    def calls(self) -> list[tuple[str, str]]:
        return [(r.method, r.path) for r in self.requests]


@pytest.fixture
def kfp_server():
    state = FakeKFP()

    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            url = urlparse(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            headers = {k.lower(): v for k, v in self.headers.items()}
            req = Request(self.command, url.path, parse_qs(url.query), headers, self.rfile.read(length))
            status, payload = state.handle(req)
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _serve

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield state
    server.shutdown()
    server.server_close()


@pytest.fixture(autouse=True)
def _no_kfp_context(tmp_path, monkeypatch):
    # kfp.Client reads ~/.config/kfp/context.json; keep the developer's own out of the test
    monkeypatch.setenv("HOME", str(tmp_path))
    for name in (
        "KF_PIPELINES_ENDPOINT",
        "KF_PIPELINES_OVERRIDE_EXPERIMENT_NAME",
        "KF_PIPELINES_DEFAULT_EXPERIMENT_NAME",
    ):
        monkeypatch.delenv(name, raising=False)


def test_first_submit_uploads_pipeline_creates_experiment_and_run(kfp_server):
    from visionops.pipeline.submit import submit

    result = submit(
        kfp_server.url,
        experiment="glasses",
        params={"data_uri": "s3://datasets/glasses/raw", "epochs": "3", "gpu_count": 2},
        token="t0ken",
        run_name="nightly",
    )
    assert kfp_server.calls() == [
        ("GET", f"{API}/healthz"),
        ("GET", f"{API}/pipelines"),
        ("POST", f"{API}/pipelines/upload"),
        ("GET", f"{API}/pipelines/p-1/versions"),
        ("GET", f"{API}/experiments"),
        ("POST", f"{API}/experiments"),
        ("POST", f"{API}/runs"),
    ]
    reqs = kfp_server.requests
    assert [r.headers.get("authorization") for r in reqs] == ["Bearer t0ken"] * len(reqs)
    assert reqs[1].filter() == {  # kfp.Client sends the enum number (1 = EQUALS)
        "predicates": [{"operation": 1, "key": "display_name", "stringValue": "visionops-training"}]
    }
    upload = reqs[2]
    assert upload.query["name"] == ["visionops-training"]
    assert upload.headers["content-type"].startswith("multipart/form-data; boundary=")
    assert b'name="uploadfile"' in upload.body
    assert b"# PIPELINE DEFINITION\n# Name: visionops-training" in upload.body
    assert reqs[3].query["sort_by"] == ["created_at desc"] and reqs[3].query["page_size"] == ["1"]
    assert reqs[4].filter()["predicates"][0]["stringValue"] == "glasses"
    assert reqs[5].json() == {"display_name": "glasses", "namespace": ""}
    run = reqs[6].json()
    assert run["experiment_id"] == "e-1"
    assert run["display_name"] == "nightly"
    assert run["pipeline_version_reference"] == {"pipeline_id": "p-1", "pipeline_version_id": "p-1-v1"}
    assert run["runtime_config"]["parameters"] == {
        "data_uri": "s3://datasets/glasses/raw",
        "epochs": 3,
        "gpu_count": "2",  # a STRING parameter (the driver reads GPU counts as strings): 2 is sent as "2"
    }
    assert "pipeline_spec" not in run  # runs reference the uploaded version, not an inline copy
    assert result.run_id == "r-1" and result.recurring_run_id is None
    assert (result.pipeline_id, result.version_id, result.experiment_id) == ("p-1", "p-1-v1", "e-1")
    assert result.url == f"{kfp_server.url}/#/runs/details/r-1"


def test_existing_pipeline_gets_a_new_version_and_a_recurring_run(kfp_server):
    from visionops.pipeline.submit import submit

    kfp_server.pipelines["visionops-training"] = "p-9"
    kfp_server.versions["p-9"] = [
        {"pipeline_id": "p-9", "pipeline_version_id": "p-9-v1", "display_name": "old"}
    ]
    kfp_server.experiments["visionops"] = "e-7"
    result = submit(
        kfp_server.url,
        schedule="0 3 * * *",
        params={"data_uri": "s3://d/raw"},
        cookies="authservice_session=abc",
    )
    assert kfp_server.calls() == [
        ("GET", f"{API}/healthz"),
        ("GET", f"{API}/pipelines"),
        ("GET", f"{API}/pipelines/p-9/versions"),
        ("POST", f"{API}/pipelines/upload_version"),
        ("GET", f"{API}/experiments"),
        ("POST", f"{API}/recurringruns"),
    ]
    reqs = kfp_server.requests
    assert all(r.headers.get("cookie") == "authservice_session=abc" for r in reqs)
    version_name = result.version_name
    assert version_name.startswith("v0.1.0-") and len(version_name) == len("v0.1.0-") + 10
    assert reqs[2].filter() == {
        "predicates": [{"operation": "EQUALS", "key": "display_name", "stringValue": version_name}]
    }
    assert reqs[2].query["page_size"] == ["1"]
    assert reqs[3].query["name"] == [version_name] and reqs[3].query["pipelineid"] == ["p-9"]
    assert b'name="uploadfile"' in reqs[3].body
    job = reqs[5].json()
    assert job["experiment_id"] == "e-7"
    assert job["trigger"] == {"cron_schedule": {"cron": "0 0 3 * * *"}}  # 5-field cron gets seconds
    assert job["mode"] == "ENABLE"
    assert job["max_concurrency"] == 1 and job["no_catchup"] is True
    assert job["pipeline_version_reference"] == {"pipeline_id": "p-9", "pipeline_version_id": "p-9-v2"}
    assert job["runtime_config"]["parameters"] == {"data_uri": "s3://d/raw"}
    assert result.recurring_run_id == "rr-1" and result.run_id is None


def test_unchanged_pipeline_reuses_its_version(kfp_server):
    from visionops.pipeline.submit import submit

    first = submit(kfp_server.url, params={"data_uri": "s3://d/raw"})  # creates the pipeline (version p-1-v1)
    second = submit(kfp_server.url, params={"data_uri": "s3://d/raw"})  # uploads version v<ver>-<hash>
    kfp_server.requests.clear()
    third = submit(
        kfp_server.url, params={"data_uri": "s3://d/raw"}
    )  # same content: reused, nothing uploaded
    assert first.version_id == "p-1-v1" and second.version_id == third.version_id == "p-1-v2"
    assert ("POST", f"{API}/pipelines/upload_version") not in kfp_server.calls()
    assert ("POST", f"{API}/pipelines/upload") not in kfp_server.calls()
    assert kfp_server.calls()[-1] == ("POST", f"{API}/runs")


def test_refused_submission_says_why(kfp_server):
    from visionops.pipeline.submit import SubmitError, submit

    kfp_server.fail_status = 403
    with pytest.raises(
        SubmitError, match=r"refused the submission: 403 .*no access to namespace.*--token / --cookies"
    ):
        submit(kfp_server.url, params={"data_uri": "s3://d/raw"})


def test_bad_input_fails_before_any_request(kfp_server):
    from visionops.pipeline.submit import submit

    with pytest.raises(ConfigError, match="data_uri"):
        submit(kfp_server.url, params={"epochs": 3})
    with pytest.raises(ConfigError, match="5 fields"):
        submit(kfp_server.url, schedule="daily", params={"data_uri": "s3://d/raw"})
    with pytest.raises(ConfigError, match="unknown pipeline parameters"):
        submit(kfp_server.url, params={"data_uri": "s3://d/raw", "epohcs": 3})
    assert kfp_server.requests == []


def test_cli_submit(kfp_server):
    from typer.testing import CliRunner
    from visionops.cli import app

    result = CliRunner().invoke(
        app,
        [
            "pipeline",
            "submit",
            "--host",
            kfp_server.url,
            "--experiment",
            "retrain",
            "--data",
            "s3://d/raw",
            "--champion",
            "s3://models/champion",
            "-p",
            "warm_start=true",
            "--schedule",
            "0 0 3 * * 1",
            "--token",
            "abc",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "recurring run rr-1" in result.output
    job = kfp_server.requests[-1].json()
    assert job["trigger"]["cron_schedule"]["cron"] == "0 0 3 * * 1"
    assert job["runtime_config"]["parameters"] == {
        "data_uri": "s3://d/raw",
        "champion_uri": "s3://models/champion",
        "warm_start": True,
    }
    assert kfp_server.requests[-1].headers["authorization"] == "Bearer abc"


def test_token_file_is_read_like_the_trigger_reads_it(kfp_server, tmp_path, monkeypatch):
    """One client, one token lookup: a token file named by KF_PIPELINES_SA_TOKEN_PATH (or token_path)."""
    from visionops.pipeline.submit import submit

    token_file = tmp_path / "token"
    token_file.write_text("projected-token\n")
    monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", str(token_file))
    submit(kfp_server.url, params={"data_uri": "s3://d/raw"})
    assert {r.headers.get("authorization") for r in kfp_server.requests} == {"Bearer projected-token"}
    with pytest.raises(ConfigError, match="token file .* does not exist"):
        submit(kfp_server.url, params={"data_uri": "s3://d/raw"}, token_path=str(tmp_path / "missing"))
