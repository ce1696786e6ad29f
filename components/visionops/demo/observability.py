"""Real Prometheus and Alertmanager processes on 127.0.0.1, configured from the project's manifests.

Used by the local loop demo and by the integration tests. The alerting rules are read from the same
PrometheusRule manifest that goes to the cluster (one source of truth).
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from visionops.errors import ConfigError

PROMETHEUS_BINARIES = ("prometheus",)
ALERTMANAGER_BINARIES = ("prometheus-alertmanager", "alertmanager")


def find_binary(names: tuple[str, ...]) -> str | None:
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rules_from_manifest(path: str | Path) -> dict[str, Any]:
    """The ``spec`` (rule groups) of the PrometheusRule object(s) in a manifest file, as a Prometheus rule file."""
    groups: list[dict] = []
    for doc in yaml.safe_load_all(Path(path).read_text()):
        if isinstance(doc, dict) and doc.get("kind") == "PrometheusRule":
            groups.extend(doc["spec"]["groups"])
    if not groups:
        raise ConfigError(f"no PrometheusRule with rule groups in {path}")
    return {"groups": groups}


def shorten_for(rules: dict[str, Any], max_for: str = "5s") -> dict[str, Any]:
    """A copy of ``rules`` whose ``for:`` durations are at most ``max_for`` (for a demo that cannot wait 30 min).

    The expressions, labels and annotations stay exactly those of the manifest.
    """
    import copy

    out = copy.deepcopy(rules)
    for group in out["groups"]:
        for rule in group["rules"]:
            if "alert" in rule and rule.get("for"):
                rule["for"] = max_for
    return out


def _wait_ready(url: str, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"{url} not ready after {timeout}s")


class _Process:
    """A managed child process with its own temporary working directory."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix=f"visionops-{self.__class__.__name__.lower()}-"))
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.log_path = self.dir / "process.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def get_json(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}{path}{query}", timeout=10) as r:
            return json.load(r)


class Prometheus(_Process):
    """``prometheus`` scraping ``targets`` every ``interval`` with the given rule groups and Alertmanager."""

    def __init__(
        self,
        targets: dict[str, str],
        *,
        rules: dict | None = None,
        alertmanager: str | None = None,
        interval: str = "1s",
        labels: dict[str, str] | None = None,
        binary: str | None = None,
    ) -> None:
        super().__init__()
        self.binary = binary or find_binary(PROMETHEUS_BINARIES)
        if self.binary is None:
            raise FileNotFoundError("prometheus is not installed (apt-get install prometheus)")
        config: dict[str, Any] = {
            "global": {"scrape_interval": interval, "evaluation_interval": interval},
            "scrape_configs": [
                {
                    "job_name": job,
                    "static_configs": [{"targets": [target], **({"labels": labels} if labels else {})}],
                    "metrics_path": "/metrics",
                }
                for job, target in targets.items()
            ],
        }
        if rules:
            (self.dir / "rules.yaml").write_text(yaml.safe_dump(rules))
            config["rule_files"] = [str(self.dir / "rules.yaml")]
        if alertmanager:
            config["alerting"] = {
                "alertmanagers": [{"static_configs": [{"targets": [alertmanager.removeprefix("http://")]}]}]
            }
        (self.dir / "prometheus.yml").write_text(yaml.safe_dump(config))

    def start(self) -> Prometheus:
        self.proc = subprocess.Popen(
            [
                self.binary,
                f"--config.file={self.dir / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--storage.tsdb.retention.time=1h",
            ],
            stdout=self.log_path.open("w"),
            stderr=subprocess.STDOUT,
        )
        _wait_ready(f"{self.url}/-/ready", self.proc)
        return self

    def query(self, expr: str) -> list[dict]:
        """Instant query; raises on a PromQL error."""
        body = self.get_json("/api/v1/query", query=expr)
        if body.get("status") != "success":
            raise ConfigError(f"PromQL error for {expr!r}: {body}")
        return body["data"]["result"]

    def alerts(self) -> list[dict]:
        return self.get_json("/api/v1/alerts")["data"]["alerts"]

    def targets_up(self) -> bool:
        active = self.get_json("/api/v1/targets")["data"]["activeTargets"]
        return bool(active) and all(t["health"] == "up" for t in active)


class Alertmanager(_Process):
    """``alertmanager`` routing alerts to one webhook receiver (our retraining trigger).

    With ``alertnames`` only those alerts reach the webhook (the others go to a receiver that does nothing),
    as the AlertmanagerConfig in manifests/observability routes them on a cluster. With ``credentials_file``
    (a file holding the sidecar's alert token) every notification carries ``Authorization: Bearer <token>``
    (the webhook's ``http_config.authorization``, as the AlertmanagerConfig's ``httpConfig`` on a cluster).
    """

    def __init__(
        self,
        webhook_url: str,
        *,
        group_wait: str = "1s",
        repeat_interval: str = "1h",
        alertnames: tuple[str, ...] | None = None,
        binary: str | None = None,
        credentials_file: str | Path | None = None,
    ) -> None:
        super().__init__()
        self.binary = binary or find_binary(ALERTMANAGER_BINARIES)
        if self.binary is None:
            raise FileNotFoundError("alertmanager is not installed (apt-get install prometheus-alertmanager)")
        self.cluster_port = free_port()
        webhook_config: dict[str, Any] = {"url": webhook_url, "send_resolved": True}
        if credentials_file is not None:
            webhook_config["http_config"] = {
                "authorization": {"type": "Bearer", "credentials_file": str(Path(credentials_file).resolve())}
            }
        webhook = {"name": "visionops-retrain", "webhook_configs": [webhook_config]}
        route: dict[str, Any] = {
            "receiver": "visionops-retrain",
            "group_by": ["alertname"],
            "group_wait": group_wait,
            "group_interval": "1s",
            "repeat_interval": repeat_interval,
        }
        receivers = [webhook]
        if alertnames:
            pattern = "|".join(alertnames)
            route["receiver"] = "ignore"
            route["routes"] = [{"receiver": "visionops-retrain", "matchers": [f'alertname=~"{pattern}"']}]
            receivers.append({"name": "ignore"})
        config = {"route": route, "receivers": receivers}
        (self.dir / "alertmanager.yml").write_text(yaml.safe_dump(config))

    def start(self) -> Alertmanager:
        self.proc = subprocess.Popen(
            [
                self.binary,
                f"--config.file={self.dir / 'alertmanager.yml'}",
                f"--storage.path={self.dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                f"--cluster.listen-address=127.0.0.1:{self.cluster_port}",
            ],
            stdout=self.log_path.open("w"),
            stderr=subprocess.STDOUT,
        )
        _wait_ready(f"{self.url}/-/ready", self.proc)
        return self
